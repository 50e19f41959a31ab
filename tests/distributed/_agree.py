"""Gloo ranks for `scaled.distributed.agree_every`: its answers, and the cost it saves.

`worker` is one rank of test_agree_every.py (spawned by tests.gloo.spawn_ranks). `main` times
a gloo all-reduce of one int32 between 2 local processes, the collective `agree_every` runs
every N steps instead of every step, side by side with the all-reduce of a ResNet-50's
float32 gradients (what every DDP step sends anyway), and prints one JSON record:

    python -m tests.distributed._agree [--calls 2000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scaled import distributed as sd
from tests.gloo import free_port

EVERY = 3
RESNET50_PARAMS = 25_557_032  # torchvision resnet50's parameter count (float32 gradients)
GRAD_CALLS = 10
STEPS = range(1, 10)


def flag_at(rank: int, step: int) -> int:
    """Rank 1 is signalled (flag 1) from step 4 on and rank 0 gets a SIGINT (2) at step 8."""
    return max(int(rank == 1 and step >= 4), 2 * int(rank == 0 and step >= 8))


def _join(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )  # fmt: skip
    sd.init_distributed("cpu")


def worker(rank: int, world: int, port: int, outdir: str) -> None:
    """agree_every(flag_at(rank, step), step, EVERY) for each step; saved to rank<R>.pt."""
    _join(rank, world, port)
    answers = [sd.agree_every(flag_at(rank, s), s, EVERY) for s in STEPS]
    dist.barrier()
    torch.save({"answers": answers}, os.path.join(outdir, f"rank{rank}.pt"))
    sd.cleanup()


def _time_worker(rank: int, world: int, port: int, outdir: str, calls: int) -> None:
    _join(rank, world, port)
    flag = torch.zeros(1, dtype=torch.int32)
    for _ in range(200):  # warm-up: connections, allocator
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        times.append(time.perf_counter() - t0)
    # Side by side: the gradient all-reduce every DDP step already does, at ResNet-50's size.
    grads = torch.zeros(RESNET50_PARAMS, dtype=torch.float32)
    dist.all_reduce(grads)
    grad_times = []
    for _ in range(GRAD_CALLS):
        t0 = time.perf_counter()
        dist.all_reduce(grads)
        grad_times.append(time.perf_counter() - t0)
    torch.save({"flag": times, "grads": grad_times}, os.path.join(outdir, f"time{rank}.pt"))
    sd.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--out", default=None, help="also write the record here")
    args = parser.parse_args(argv)
    import tempfile

    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["OMP_NUM_THREADS"] = "1"
        mp.start_processes(
            _time_worker, args=(2, free_port(), tmp, args.calls), nprocs=2, start_method="spawn"
        )
        got = [torch.load(Path(tmp) / f"time{r}.pt") for r in range(2)]
    times = sorted(t for g in got for t in g["flag"])
    grads = statistics.median(t for g in got for t in g["grads"])
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.strip()  # fmt: skip
    record = {
        "command": "python -m tests.distributed._agree " + " ".join(argv or sys.argv[1:]),
        "what": "gloo all_reduce(MAX) of one int32, 2 local processes, loopback",
        "calls_per_rank": args.calls,
        "median_us": round(statistics.median(times) * 1e6, 1),
        "p99_us": round(times[int(0.99 * len(times))] * 1e6, 1),
        "resnet50_gradient_all_reduce_median_ms": round(grads * 1e3, 1),
        "flag_over_gradients": round(statistics.median(times) / grads, 5),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
        "load_average_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "git": sha,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
