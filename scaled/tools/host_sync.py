"""Host-sync detector on the CPU: the ops of a training step that would wait for a CUDA GPU.

On CUDA, a step that reads a device value on the host (``.item()``, ``float(t)``, ``bool(t)``),
asks for a data-dependent shape (``nonzero``, boolean-mask indexing, ``unique``), copies a
tensor to the host (``.cpu()``, ``.tolist()``, ``.numpy()``) or builds a tensor from Python data
(``torch.tensor([...], device=...)``: a pageable host-to-device copy) stalls until the GPU has
drained its queue, and with it the input pipeline. ``torch.cuda.set_sync_debug_mode("error")``
finds them on a GPU (`make gpu-check`); this module finds the same ops on the CPU, so a test can
run without a GPU:

- a `TorchDispatchMode` records every aten op of `SYNC_OPS` (what ``.item()``, ``nonzero`` and
  ``torch.tensor`` dispatch to, whatever the device) and of `MASK_INDEXING` with a boolean
  index, and
- the tensor methods of `SYNC_METHODS` (``.cpu()``, ``.tolist()``, ``.numpy()``), which on a CPU
  tensor return without dispatching anything, are wrapped while recording.

Each record names the op and the innermost frame of this checkout that called it. What the CPU
cannot see: a CPU factory (``torch.arange(n)``, no ``device=``) later moved with ``.to(device)``
looks like a device factory here; the trainer's code builds its constants on the device (or
caches them per device), and gpu_check's CUDA run under sync-debug catches the rest.

    with record_host_syncs() as syncs:
        train_step(run, batches)
    assert not syncs, format_syncs(syncs)
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "MASK_INDEXING",
    "SYNC_METHODS",
    "SYNC_OPS",
    "HostSync",
    "format_syncs",
    "record_host_syncs",
    "step_host_syncs",
]

SYNC_OPS = {  # aten op -> what calls it (each waits for the GPU on CUDA)
    "aten::_local_scalar_dense": ".item() / float() / int() / bool() of a tensor",
    "aten::nonzero": "nonzero / boolean-mask indexing (data-dependent shape)",
    "aten::masked_select": "masked_select (data-dependent shape)",
    "aten::_unique2": "unique (data-dependent shape)",
    "aten::unique_dim": "unique (data-dependent shape)",
    "aten::unique_consecutive": "unique_consecutive (data-dependent shape)",
    "aten::lift_fresh": "a tensor built from Python data (torch.tensor / as_tensor)",
    "aten::lift_fresh_copy": "a tensor built from Python data (torch.tensor / as_tensor)",
}
MASK_INDEXING = {  # ops that sync only with a boolean index (nonzero inside on CUDA)
    "aten::index": "indexing with a boolean mask (data-dependent shape)",
    "aten::index_put": "assignment through a boolean mask (data-dependent shape)",
    "aten::index_put_": "assignment through a boolean mask (data-dependent shape)",
    "aten::_index_put_impl_": "assignment through a boolean mask (data-dependent shape)",
}
SYNC_METHODS = ("cpu", "tolist", "numpy")  # host copies that do not dispatch on a CPU tensor

_ROOT = Path(__file__).resolve().parents[2]  # the checkout
_OWN = tuple(_ROOT / d for d in ("scaled", "tests", "reference"))  # its code (not .venv/)
_THIS = Path(__file__).resolve()


@dataclass(frozen=True)
class HostSync:
    """One recorded op: its name, why it syncs, and where it was called from."""

    op: str
    why: str
    where: str  # "path/file.py:line function" of the innermost caller in this checkout

    def __str__(self) -> str:
        return f"{self.op} ({self.why}) at {self.where}"


def _caller() -> str:
    """The innermost frame of this checkout outside this module (else the innermost frame)."""
    stack = traceback.extract_stack()[:-1]
    fallback = stack[-1] if stack else None
    for frame in reversed(stack):
        path = Path(frame.filename).resolve()
        if path == _THIS or not any(d in path.parents for d in _OWN):
            continue
        return f"{path.relative_to(_ROOT)}:{frame.lineno} {frame.name}"
    if fallback is None:
        return "?"
    return f"{fallback.filename}:{fallback.lineno} {fallback.name}"


def _has_mask(indices) -> bool:
    return any(
        isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)
        for t in (indices or ())
    )


def _op_name(func) -> str:
    schema = getattr(func, "_schema", None)
    return schema.name if schema is not None else str(func)


class _Recorder(TorchDispatchMode):
    def __init__(self, syncs: list[HostSync]) -> None:
        super().__init__()
        self.syncs = syncs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = _op_name(func)
        if name in SYNC_OPS:
            self.syncs.append(HostSync(name, SYNC_OPS[name], _caller()))
        elif name in MASK_INDEXING and _has_mask(args[1] if len(args) > 1 else ()):
            self.syncs.append(HostSync(name, MASK_INDEXING[name], _caller()))
        return func(*args, **(kwargs or {}))


@contextmanager
def record_host_syncs() -> Iterator[list[HostSync]]:
    """Record the host-sync ops run inside the block; yields the (growing) list of records."""
    syncs: list[HostSync] = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

    def wrap(name, original):
        def recorded(self, *args, **kwargs):
            syncs.append(HostSync(f"Tensor.{name}", "a copy to the host", _caller()))
            return original(self, *args, **kwargs)

        return recorded

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        with _Recorder(syncs):
            yield syncs
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def step_host_syncs(step_fn, run, batches: list, warmup: int = 2) -> list[HostSync]:
    """`step_fn(run, micro_batches)` on each of `batches`; the host syncs of the steps after the
    first `warmup` (set-up work on step 1, such as ``Cbar``'s first fill, is not per-step)."""
    if len(batches) <= warmup:
        raise ValueError(f"need more than warmup = {warmup} batches, got {len(batches)}")
    for micro_batches in batches[:warmup]:
        step_fn(run, micro_batches)
    with record_host_syncs() as syncs:
        for micro_batches in batches[warmup:]:
            step_fn(run, micro_batches)
    return list(syncs)


def format_syncs(syncs: list[HostSync]) -> str:
    """One line per distinct (op, caller) with its count; "none" when empty."""
    if not syncs:
        return "none"
    counts: dict[str, int] = {}
    for s in syncs:
        counts[str(s)] = counts.get(str(s), 0) + 1
    return "; ".join(f"{n} x {what}" for what, n in counts.items())
