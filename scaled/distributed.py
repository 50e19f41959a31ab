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
from datetime import timedelta

import torch
import torch.distributed as dist

from scaled.errors import UserError

__all__ = [
    "STOP_AGREE_EVERY",
    "agree_every",
    "check_elastic_launch",
    "all_gather_with_grad",
    "cleanup",
    "global_second_moment",
    "init_distributed",
    "rank",
    "restart_store",
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

    Under torchrun, the group's store is `restart_store` (the agent's store, its keys
    prefixed by the restart attempt), so a group restarted by ``--max-restarts`` does not read
    the addresses of the workers it replaces; `check_elastic_launch` first refuses the one
    launch where that prefix is not enough (several nodes sharing the agent's store).

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
        check_elastic_launch()
        backend = "nccl" if cuda else "gloo"
        store = restart_store(size)
        if store is None:  # env://: MASTER_ADDR / MASTER_PORT, rank 0 hosts the store
            dist.init_process_group(backend=backend, rank=rank, world_size=size)
        else:
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=size)
    return rank, size, local_rank, device


def check_elastic_launch() -> None:
    """UserError for ``--max-restarts`` on several nodes with the agent's shared store.

    On several nodes a restart is not one event: the agent whose worker failed restarts it
    (its TORCHELASTIC_RESTART_COUNT goes up), the other agents restart theirs because a node
    re-joined the rendezvous (their count does not go up), and a node may restart twice in one
    recovery. The count is then no name for the new group, and its workers read addresses of
    earlier workers from the shared store and wait in gloo's ``connectFullMesh`` (tried: two
    agents, one worker SIGKILLed, the restarted pair waits until the group timeout). With
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` in the agents' environment, rank 0 of each new
    group hosts a new store on a port the rendezvous picks for that round, and a restart works.
    """
    env = os.environ
    shared = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    nodes = int(env.get("GROUP_WORLD_SIZE", "1") or 1)
    restarts = int(env.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)
    if shared and nodes > 1 and restarts > 0:
        raise UserError(
            f"torchrun --max-restarts={restarts} on {nodes} nodes with the agents' shared store "
            "would restart workers that hang in gloo's connectFullMesh; export "
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 on every node before torchrun "
            "(scripts/slurm/torchrun_node.sh does), or pass --max-restarts=0"
        )


def restart_store(world_size: int, timeout: timedelta | None = None) -> dist.Store | None:
    """The torchrun agent's store seen through a prefix naming the restart attempt, or None
    when the workers were not started by a torchrun agent that shares its store.

    torchrun (c10d rendezvous) hosts one TCPStore at MASTER_ADDR:MASTER_PORT for the whole job
    and tells the workers to use it (``TORCHELASTIC_USE_AGENT_STORE=True``). torch's
    ``env://`` rendezvous then keys the default group as ``default_pg/...`` in every attempt,
    so after an elastic restart (``--max-restarts``) the new workers find the gloo addresses
    of the dead attempt in the store, connect to them and fail in ``connectFullMesh``
    ("Connection refused"), or wait until the group timeout. The prefix
    ``minc/attempt_<TORCHELASTIC_RESTART_COUNT>/`` gives every attempt keys of its own.
    That count is each agent's own: on one node it numbers the restarts of the job, on several
    nodes it does not (`check_elastic_launch`).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=False,
        timeout=timeout or dist.constants.default_pg_timeout,
    )
    return dist.PrefixStore(f"minc/attempt_{attempt}", store)


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
        packed[k * k :].fill_(zf.shape[0])  # a fill, not a tensor built from Python data
        if not local and _initialized():
            dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        return packed[: k * k].reshape(k, k) / packed[k * k]


# How often the trainer agrees on stop signals (`agree_every`). One gloo all-reduce of one int
# between 2 local processes took a median 180 us, 0.12% of the all-reduce of a ResNet-50's
# float32 gradients measured side by side (156.4 ms; `python -m tests.distributed._agree`,
# docs/results/stop_flag_allreduce.json). Every 10 steps it costs 0.012% of that: an order of
# magnitude under 0.1%, kept for a cross-node round trip slower than loopback or NCCL
# gradients faster than gloo's, for a stop that waits at most 9 more steps.
STOP_AGREE_EVERY = 10


def agree_every(flag: int, step: int, every: int, group=None) -> int:
    """The largest stop `flag` over ranks, agreed only at steps that are multiples of `every`.

    At other steps it returns 0 without a collective, so a stop request costs one CPU
    all-reduce (`group`: the gloo control group, no GPU sync) every `every` steps instead of
    one per step. Every rank calls it with the same `step` and `every`, so all of them see the
    same answer at the same step: a signal that reached any rank at step s stops all of them
    at the first multiple of `every` at or after s, with the same checkpoint. Without a
    process group (one process) there is no one to agree with: `flag` is returned at once.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if not _initialized():
        return int(flag)
    if step % every:
        return 0
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return int(t.item())
