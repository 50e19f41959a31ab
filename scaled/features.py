"""Features of a frozen backbone over a dataset, sharded over ranks and gathered.

Used by the linear probe (`scaled/linear_eval.py`), the kNN classifier and the kNN monitor of
pretraining (`scaled.knn`) and the tools. Rank r extracts the contiguous `shard_range` of the
rows and `gather_shards` concatenates them on every rank in dataset order.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset


def loader_workers(device: torch.device | str, local_world: int, *, cap: int = 8) -> int:
    """Data-loader workers for one rank: the CPUs this process may use (`sched_getaffinity`)
    split over the ranks of this node (LOCAL_WORLD_SIZE), at most `cap`; 0 on the CPU (the
    main process decodes: workers would compete with the model for the same cores)."""
    if torch.device(device).type != "cuda":
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cap, cpus // max(local_world, 1)))


def local_world_size() -> int:
    """The ranks on this node (torchrun's LOCAL_WORLD_SIZE; 1 outside torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def shard_range(n: int, rank: int, world: int) -> range:
    """Rank `rank`'s contiguous share of `n` rows (shares differ by at most one row)."""
    return range(n * rank // world, n * (rank + 1) // world)


def gather_shards(t: torch.Tensor, n: int, world: int) -> torch.Tensor:
    """Concatenate every rank's `shard_range` rows of an `n`-row tensor, on every rank."""
    if world == 1:
        return t
    rows = max(len(shard_range(n, r, world)) for r in range(world))
    padded = t.new_zeros(rows, *t.shape[1:])
    padded[: len(t)] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: len(shard_range(n, r, world))] for r, p in enumerate(parts)])


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    rank: int = 0,
    world: int = 1,
    amp_dtype: torch.dtype | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features (eval mode) and labels of every item of a one-view dataset, on `device`.

    Rank r extracts its `shard_range` and the shards are gathered in `dtype` (float16 halves
    the bytes: 1.28M x 2048 ImageNet features are 5.2 GB), so every rank gets all rows in order.
    """
    backbone.eval().to(device)
    device = torch.device(device)
    mine = shard_range(len(dataset), rank, world)
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    feats, labels = [], []
    if getattr(dataset, "batched_transform", None) is not None:  # in-memory digits: one call
        x = dataset.batched_transform(dataset.source.images[mine.start : mine.stop])
        for c in x.split(batch_size):
            with autocast:
                feats.append(backbone(c.to(device)).to(dtype))
        labels = [dataset.source.labels[mine.start : mine.stop].to(device)]
    else:
        loader = DataLoader(
            Subset(dataset, mine), batch_size=batch_size, shuffle=False,
            num_workers=num_workers, pin_memory=device.type == "cuda",
        )  # fmt: skip
        for x, y, *_ in loader:
            with autocast:
                feats.append(backbone(x.to(device, non_blocking=True)).to(dtype))
            labels.append(y.to(device))
    width = getattr(backbone, "num_features", None)
    f = torch.cat(feats) if feats else torch.zeros(0, width or 0, dtype=dtype, device=device)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    return gather_shards(f, len(dataset), world), gather_shards(y, len(dataset), world)


def pixel_features(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw pixels (flattened, normalised) and labels: the no-learning baseline."""
    return extract_features(nn.Flatten(), dataset)
