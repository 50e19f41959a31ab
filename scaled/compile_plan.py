"""What `--compile` compiles: the online network whole, or nothing (with a one-line error).

Measured on the CPU (tests/perf/test_compile_plan.py, `torch._dynamo.explain`, torch 2.14.1):
with `SyncBatchNorm` layers synchronising over a process group of 2 ranks (the presets' SyncBN
under DDP), dynamo breaks the graph **at every SyncBN layer**, 24 breaks at the 13 layers of a
small ResNet's online network. Two reasons, both in torch's own SyncBN forward
(torch/nn/modules/_functions.py): ``count_all[mask]`` drops the gathered statistics of empty
ranks with a boolean mask, an output shape that depends on tensor data (``aten::nonzero``; on
CUDA also a host sync per layer, pytorch/pytorch#78549), and its CUDA kernels
(``batch_norm_stats`` ...) have no meta implementation, which fake tensors cannot run once
dynamo has made the shapes dynamic (the layers share one forward with different channel
counts). The presets' online networks hold 54-57 SyncBN layers (ResNet-50 and its heads), so
`torch.compile` would compile a hundred-odd pieces and return to Python between each. Without
a process group (one process, or the CPU, where the trainer drops SyncBN) the same modules take
plain batch norm and the network compiles as one graph (0 breaks, measured).

No part of the network both compiles whole and keeps SyncBN (every residual block has SyncBN
layers), so the plan is: compile the online network when no SyncBN layer synchronises (one
process, `--no-sync-bn`, the CPU), and refuse ``--compile --sync-bn`` on several CUDA
processes with a one-line `UserError` that names the fix.
"""

from __future__ import annotations

import torch

from scaled.config import UserError

__all__ = ["check_compile_plan", "compile_online", "graph_breaks", "sync_bn_layers"]


def sync_bn_layers(module: torch.nn.Module) -> int:
    """How many `SyncBatchNorm` layers `module` holds."""
    return sum(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules())


def syncs_batch_norm(sync_bn: bool, world: int, device_type: str) -> bool:
    """Whether SyncBN would synchronise (the trainer converts only on CUDA with world > 1)."""
    return sync_bn and world > 1 and device_type == "cuda"


def check_compile_plan(cfg, world: int, device_type: str) -> None:
    """UserError for ``--compile`` with SyncBN synchronising over `world` CUDA processes."""
    if cfg.compile and syncs_batch_norm(cfg.sync_bn, world, device_type):
        raise UserError(
            f"--compile with --sync-bn on {world} processes breaks the graph at every "
            "SyncBatchNorm layer (torch's SyncBN filters its gathered statistics with a "
            "data-dependent mask), so nothing would compile whole; pass --no-sync-bn to "
            "compile, or drop --compile to keep SyncBN"
        )


def compile_online(online: torch.nn.Module, cfg, *, world: int, device_type: str):
    """`online` compiled whole under ``--compile`` (after `check_compile_plan`), else as is."""
    check_compile_plan(cfg, world, device_type)
    return torch.compile(online) if cfg.compile else online


def graph_breaks(fn, *args, **kwargs) -> tuple[int, int, list[str]]:
    """(graphs, graph breaks, break reasons) of `fn(*args, **kwargs)` by `torch._dynamo.explain`
    (runs `fn` once; dynamo's caches are reset before and after)."""
    import torch._dynamo

    torch._dynamo.reset()
    try:
        out = torch._dynamo.explain(fn)(*args, **kwargs)
    finally:
        torch._dynamo.reset()
    reasons = [str(getattr(r, "reason", r)).splitlines()[0] for r in out.break_reasons]
    return out.graph_count, out.graph_break_count, reasons
