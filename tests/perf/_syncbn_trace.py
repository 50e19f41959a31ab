"""dynamo's view of SyncBatchNorm's synchronising path, traced on the CPU (2 gloo ranks).

torch's `SyncBatchNorm` synchronises only on CUDA: its forward refuses CPU input, and three of
its kernels (``batch_norm_stats``, ``batch_norm_gather_stats_with_counts``,
``batch_norm_elemt``) have no CPU implementation. To let dynamo trace the very code a DDP run
on GPUs executes, `enable_cpu_sync_bn` (test processes only) registers CPU implementations of
those three kernels with `torch.library` and re-compiles `SyncBatchNorm.forward` from its own
source with the device list extended by "cpu" (the one edit: that list is a constant to
dynamo, measured in `device_check_breaks`). The gathered statistics go over gloo's
``all_gather`` (NCCL's ``all_gather_single`` path differs only before the mask that breaks).
"""

from __future__ import annotations

import inspect
import os
import textwrap

import torch


def _stats(x, eps):
    dims = [0, *range(2, x.dim())]
    return x.mean(dims), (x.var(dims, unbiased=False) + eps).rsqrt()


def _gather(x, mean, invstd, running_mean, running_var, momentum, eps, counts):
    w = (counts / counts.sum())[:, None]
    m = (mean * w).sum(0)
    var = ((invstd.pow(-2) - eps + (mean - m) ** 2) * w).sum(0)
    return m, (var + eps).rsqrt()


def _elemt(x, weight, bias, mean, invstd, eps):
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x - mean.view(shape)) * invstd.view(shape)
    return y * weight.view(shape) + bias.view(shape)


_LIB: list = []


def enable_cpu_sync_bn() -> None:
    """CPU kernels for SyncBN's three CUDA-only ops; SyncBN's forward accepting CPU input."""
    import torch.nn.modules.batchnorm as bn

    lib = torch.library.Library("aten", "IMPL")
    lib.impl("batch_norm_stats", _stats, "CPU")
    lib.impl("batch_norm_gather_stats_with_counts", _gather, "CPU")
    lib.impl("batch_norm_elemt", _elemt, "CPU")
    _LIB.append(lib)
    src = textwrap.dedent(inspect.getsource(torch.nn.SyncBatchNorm.forward))
    marker = "torch._C._get_privateuse1_backend_name(),"
    assert marker in src, "SyncBatchNorm.forward changed: update enable_cpu_sync_bn"
    namespace: dict = {}
    exec(compile(src.replace(marker, '"cpu",'), bn.__file__, "exec"), vars(bn), namespace)
    torch.nn.SyncBatchNorm.forward = namespace["forward"]


def device_check_breaks() -> int:
    """Graph breaks of SyncBN's device check alone (the line `enable_cpu_sync_bn` edits)."""
    from scaled.compile_plan import graph_breaks

    def check(x):
        names = ["cuda", "hpu", "xpu", torch._C._get_privateuse1_backend_name()]
        return x * (x.device.type in names)

    return graph_breaks(check, torch.ones(2))[1]


def online_network(sync: bool):
    """A small_resnet online network of MINC (the demo preset shrunk), SyncBN or plain BN."""
    from dataclasses import replace

    from scaled.model import SSLModel
    from scaled.presets import demo

    cfg = replace(demo(), width=8, stem_stride=2, proj_hidden=32, proj_out=16, pred_hidden=32)
    online = SSLModel(cfg, 3, 3).online.train()
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(online) if sync else online


def measure(sync: bool) -> dict:
    """graphs, breaks, reasons and SyncBN layer count of the online network's forward."""
    from scaled.compile_plan import graph_breaks, sync_bn_layers

    torch.manual_seed(0)
    online = online_network(sync)
    x1, x2 = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    graphs, breaks, reasons = graph_breaks(online, x1, x2)
    layers = sync_bn_layers(online)
    return {"graphs": graphs, "breaks": breaks, "reasons": reasons, "layers": layers}


def worker(rank: int, world: int, port: int, outdir: str) -> None:
    """One gloo rank: SyncBN synchronising over `world` ranks, traced by dynamo."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        enable_cpu_sync_bn()
        record = {"sync": measure(True), "plain": measure(False), "check": device_check_breaks()}
        torch.save(record, f"{outdir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
