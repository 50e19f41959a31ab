"""One MINC-trainer step on a fixed global batch; saves the gradients (1 or N processes).

Run as `torchrun --nproc_per_node=2 tests/end_to_end/grad_worker.py OUT METHOD...` or call
`first_step_gradients` in-process. BatchNorm runs in eval mode (its init statistics) so that the
forward of a sample does not depend on how the global batch is split: everything else (the
global-batch sampler, Cbar's all-reduce, the distributed losses, DDP's averaging) is the real path.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
from torch.nn.parallel import DistributedDataParallel

from scaled.data import GlobalBatchSampler, pretrain_dataset
from scaled.distributed import init_distributed
from scaled.model import SSLModel
from scaled.objective import build_objective, ssl_loss, target_features
from scaled.presets import demo


def first_step_gradients(method: str, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    """Gradients of the online network after one step of `method` on global batch 0."""
    cfg = replace(
        demo(), method=method, width=8, stem_stride=2, proj_hidden=32, proj_out=16,
        pred_hidden=32, batch_size=16, online_probe=False, alpha=1.5,
        alpha_estimator="pairwise",
    )  # fmt: skip
    torch.manual_seed(0)
    dataset, in_ch, n_cls = pretrain_dataset(cfg)
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, rank, world, cfg.seed)
    items = [dataset[i] for i in sampler][: cfg.batch_size // world]
    x1 = torch.stack([it[0] for it in items]).double()
    x2 = torch.stack([it[1] for it in items]).double()
    model = SSLModel(cfg, in_ch, n_cls).double()
    objective = build_objective(cfg).double()
    model.eval()  # BatchNorm: per-sample forward (see module docstring)
    online = DistributedDataParallel(model.online) if world > 1 else model.online
    out = online(x1, x2)
    targets = target_features(model, out, x1, x2)
    loss = ssl_loss(objective, out, targets)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.online.named_parameters()}
    if hasattr(objective, "Cbar"):
        grads["Cbar"] = objective.Cbar.clone()
    return grads


if __name__ == "__main__":
    rank, world, _, _ = init_distributed()
    out_dir = Path(sys.argv[1])
    for method in sys.argv[2:]:
        g = first_step_gradients(method, rank, world)
        if rank == 0:
            torch.save(g, out_dir / f"grads_{method}.pt")
