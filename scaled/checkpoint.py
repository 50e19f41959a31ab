"""Checkpoints: atomic writes, keep the newest K, find the newest readable one.

A checkpoint holds only tensors and primitives (nested dicts / lists / tuples of them), so it
loads with `torch.load(..., weights_only=True)`: online and target weights and `Cbar` (C5),
optimiser, scheduler and grad-scaler states, step, epoch, position inside the epoch, RNG states,
the config, the git SHA and package versions.
"""

from __future__ import annotations

import os
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_RE = re.compile(r"^ckpt_(\d{8})\.pt$")


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """`run_dir/ckpt_<step:08d>.pt`."""
    return Path(run_dir) / f"ckpt_{step:08d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints in `run_dir`, oldest first (by step)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def atomic_save(obj: dict, path: str | os.PathLike) -> None:
    """`torch.save` to a temporary file in the same folder, fsync, rename over `path`.

    A crash (or a full disk) at any point leaves either the old file or the new one, never a
    partial one. On OSError the temporary file is removed and the error re-raised.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """`torch.load(path, weights_only=True)` on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def newest_valid_checkpoint(run_dir: str | os.PathLike) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads; unreadable ones are named on stderr and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            ckpt = load_checkpoint(path)
            if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
                raise ValueError("not a pretrain.py checkpoint")
            return path, ckpt
        except Exception as err:  # noqa: BLE001 - any failure means "not usable"
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            print(
                f"warning: checkpoint {path} is unreadable ({msg}); "
                "falling back to the previous one",
                file=sys.stderr,
            )
    return None


def rng_state() -> dict:
    """torch (CPU and CUDA), numpy-global and python `random` states, as tensors/primitives."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of `rng_state` (CUDA states only when CUDA is up and the count matches)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    random.setstate(_to_tuples(state["python"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, (tuple, list)) else x
