"""Spawn R gloo ranks of a test worker, with a hang detector; shared by the multi-process tests."""

from __future__ import annotations

import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

TIMEOUT_S = 300.0  # a hang detector, not a speed gate: imports of 4 ranks take minutes when busy


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(worker, world: int, tmp_path, monkeypatch, *extra, timeout: float = TIMEOUT_S):
    """Run `worker(rank, world, port, str(tmp_path), *extra)` on `world` spawned ranks (one
    thread each); return each rank's `tmp_path/rank{r}.pt`. A hang past `timeout` kills them and
    fails the test."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the spawned ranks
    ctx = mp.start_processes(
        worker, args=(world, free_port(), str(tmp_path), *extra), nprocs=world, join=False,
        start_method="spawn",
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"{world} gloo processes did not finish within {timeout} s")
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
