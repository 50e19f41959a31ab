"""One global batch, every method, run either in one process or as one rank of a gloo group.

`run_methods` is the single definition of what is compared: the test calls it once on the whole
batch without a process group, and each spawned rank calls it on its slice inside DDP.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist
from torch import nn

from scaled import distributed as sd
from scaled import losses as sl
from scaled.ema import ema_update

B_GLOBAL = 12  # divisible by 2 and 4
D_IN = 5
K = 4
BETA = 0.8
METHODS = ("minc", "noncontrastive", "spectral", "alpha", "alpha_moment", "alpha_frac", "simclr")
METHODS += ("byol",)


def global_batch() -> dict[str, torch.Tensor | nn.Module]:
    """The same data, nets and initial Cbar in every process (seeded generator)."""
    g = torch.Generator().manual_seed(1234)
    x1 = torch.randn(B_GLOBAL, D_IN, generator=g, dtype=torch.float64)
    x2 = x1 + 0.3 * torch.randn(B_GLOBAL, D_IN, generator=g, dtype=torch.float64)
    online = nn.Linear(D_IN, K).double()
    target = nn.Linear(D_IN, K).double()
    predictor = nn.Linear(K, K).double()
    for i, p in enumerate([*online.parameters(), *target.parameters(), *predictor.parameters()]):
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / (1 + i % 2))
    A = torch.randn(K, K, generator=g, dtype=torch.float64)
    return {
        "x1": x1,
        "x2": x2,
        "online": online,
        "target": target,
        "predictor": predictor,
        "Cbar0": A @ A.T / K,
    }


def _loss(method: str, z1, z2, p1, t1, t2, Cbar0, distributed: bool):
    """(loss, Cbar or None) of one method on this process's rows."""
    if method == "minc":
        C_batch = sd.global_second_moment(torch.cat([t1, t2]))
        Cbar = ema_update(Cbar0.clone(), C_batch, BETA, inplace=True)
        return sl.minc_loss_batch(z1, t2, Cbar), Cbar
    if method == "noncontrastive":
        C = sd.global_second_moment(torch.cat([z1, z2]))
        return sl.minc_loss_batch(z1, z2.detach(), C, gha=False), C
    if method == "spectral":
        return sl.spectral_loss_batch(z1, z2, distributed=distributed), None
    if method == "alpha":
        return sl.alpha_loss_batch(z1, z2, 1.5, distributed=distributed), None
    if method == "alpha_moment":
        loss = sl.alpha_loss_batch(z1, z2, 1.5, estimator="moment", distributed=distributed)
        return loss, None
    if method == "alpha_frac":  # m = 5/3, clamp at 0, diagonal included
        loss = sl.alpha_loss_batch(z1, z2, 2.5, include_diagonal=True, distributed=distributed)
        return loss, None
    if method == "simclr":
        return sl.simclr_loss_batch(z1, z2, temperature=0.5, distributed=distributed), None
    if method == "byol":
        return sl.byol_loss_batch(p1, t2), None
    raise ValueError(method)


class Online(nn.Module):
    """Encoder (a Linear) and, for BYOL only, a predictor; returns (z, p)."""

    def __init__(self, encoder: nn.Module, predictor: nn.Module | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, (z if self.predictor is None else self.predictor(z))


def run_methods(rows: slice, ddp: bool) -> dict[str, dict[str, torch.Tensor]]:
    """Loss, gradient w.r.t. this process's z rows, parameter gradients and Cbar per method."""
    data = global_batch()
    x1, x2 = data["x1"][rows], data["x2"][rows]
    b = x1.shape[0]
    with torch.no_grad():
        t1, t2 = data["target"](x1), data["target"](x2)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for method in METHODS:
        predictor = copy.deepcopy(data["predictor"]) if method == "byol" else None
        net = Online(copy.deepcopy(data["online"]), predictor)
        model = nn.parallel.DistributedDataParallel(net) if ddp else net
        z, p = model(torch.cat([x1, x2]))  # one forward for both views
        z.retain_grad()
        loss, Cbar = _loss(method, z[:b], z[b:], p[:b], t1, t2, data["Cbar0"], ddp)
        loss.backward()
        rec = {
            "loss": loss.detach(),
            "zgrad": z.grad.detach(),
            "params": torch.cat([q.grad.reshape(-1) for q in net.parameters()]),
        }
        if Cbar is not None:
            rec["Cbar"] = Cbar.detach()
        out[method] = rec
    return out


# Checks of the process group itself (test-only: the library needs none of them).


def _all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over the ranks of the default group, as a new tensor."""
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def worker(rank: int, world: int, port: int, outdir: str) -> None:
    """One spawned rank: init from torchrun-style env, run every check, save the results."""
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    r, size, _, _ = sd.init_distributed()
    assert (r, size) == (rank, world)
    b = B_GLOBAL // world
    result: dict = {"methods": run_methods(slice(rank * b, (rank + 1) * b), ddp=True)}

    # all_gather_with_grad: every rank's loss sum(Y * c) is the same, so the gradient returned
    # to the owner of row i is world * c[i].
    g = torch.Generator().manual_seed(7)
    c = torch.randn(B_GLOBAL, K, generator=g, dtype=torch.float64)
    x = (torch.arange(b * K, dtype=torch.float64).reshape(b, K) + 100 * rank).requires_grad_()
    Y = sd.all_gather_with_grad(x)
    (Y * c).sum().backward()
    result["gather"] = {"Y": Y.detach(), "xgrad": x.grad}

    # Unequal per-rank batches: rank r holds r + 1 rows of a fixed (sum_r (r+1)) x K matrix.
    n = world * (world + 1) // 2
    Z = torch.randn(n, K, generator=g, dtype=torch.float64)
    start = rank * (rank + 1) // 2
    mine = Z[start : start + rank + 1]
    result["moment"] = {
        "global": sd.global_second_moment(mine),
        "local": sd.global_second_moment(mine, local=True),
        "mean": _all_reduce_mean(torch.tensor(float(rank), dtype=torch.float64)),
        "rank": torch.tensor(sd.rank()),
        "world": torch.tensor(dist.get_world_size()),
    }
    dist.barrier()
    torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
    sd.cleanup()
