"""Process group set-up and the collectives the losses need (Eq. 15, Eq. 22).

Everything here also works in a single process without `torchrun`: every helper checks
`torch.distributed.is_initialized()` and falls back to the one-process answer.

Convention for per-rank losses (see `scaled.losses`): with R ranks holding equal shares of a
global batch, each rank's loss is R times its share of the global loss. Then the mean of the
per-rank losses is the global loss, and DDP's gradient *averaging* over ranks gives exactly the
one-process gradient of the global batch.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_with_grad",
    "cleanup",
    "global_second_moment",
    "init_distributed",
    "rank",
]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(device_type: str | None = None) -> tuple[int, int, int, torch.device]:
    """Join the process group described by the torchrun environment, for `device_type`.

    Reads RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR / MASTER_PORT through the default
    ``env://`` init). `device_type` is "cuda" or "cpu" (None: cuda when available); the backend
    follows it in this one place: NCCL for CUDA tensors, gloo for CPU tensors (also on a machine
    that has GPUs). A single process started without torchrun (no RANK / WORLD_SIZE in the
    environment) does not initialise a group and gets ``(0, 1, 0, device)``.

    Returns
    -------
    rank, world_size, local_rank, device
    """
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device_type == "cuda"
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0, torch.device("cuda:0" if cuda else "cpu")
    try:
        rank = int(os.environ["RANK"])
        size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as err:
        raise ValueError(
            f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({err}); launch with torchrun"
        ) from None
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not _initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", rank=rank, world_size=size)
    return rank, size, local_rank, device


def rank() -> int:
    """Rank of this process in the default group (0 without one)."""
    return dist.get_rank() if _initialized() else 0


def cleanup() -> None:
    """Destroy the default process group if there is one."""
    if _initialized():
        dist.destroy_process_group()


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's rows; backward returns each row's gradient to its owner (Eq. 22).

    The gradient of the gathered tensor is summed over ranks (every rank's loss may depend on
    every row) and the owner keeps its slice. Works with any backend (all_reduce only).
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t)
        ctx.rows = t.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """All ranks' `t` concatenated along dim 0 in rank order, differentiable (Eq. 22).

    Every rank must pass the same shape. Rank r's rows sit at ``r * t.shape[0]``. The backward
    pass sums the gathered gradient over ranks and returns to each rank the slice of its own
    rows. Without a process group (or with one rank) returns `t` itself.
    """
    if not _initialized() or dist.get_world_size() == 1:
        return t
    return _AllGatherWithGrad.apply(t)


def global_second_moment(z: torch.Tensor, *, local: bool = False) -> torch.Tensor:
    """Second moment of the rows of `z` over the global batch, in float32 or wider (Eq. 15, 22).

    ``C_batch = (sum over ranks of z^T z) / (sum over ranks of rows)``: one all-reduce of the
    per-rank sums and row counts, so the answer is exact for unequal per-rank batches too and
    identical on every rank. It is a statistic used under stop-gradient: the result carries no
    gradient. Accumulated in float32 (float64 inputs stay float64), with autocast disabled.

    Parameters
    ----------
    z : (B, k) tensor, this rank's rows.
    local : if True, the per-rank estimate ``z^T z / B`` (a different estimator, only for tests
        that show it differs; never the default).
    """
    if z.ndim != 2:
        raise ValueError(f"z must be a (B, k) matrix, got shape {tuple(z.shape)}")
    dtype = torch.promote_types(z.dtype, torch.float32)
    with torch.autocast(device_type=z.device.type, enabled=False):
        zf = z.detach().to(dtype)
        k = zf.shape[1]
        packed = torch.empty(k * k + 1, dtype=dtype, device=z.device)
        packed[: k * k] = (zf.T @ zf).reshape(-1)
        packed[k * k] = zf.shape[0]
        if not local and _initialized():
            dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        return packed[: k * k].reshape(k, k) / packed[k * k]
