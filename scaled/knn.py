"""Weighted k-nearest-neighbour classification of frozen features, as DINO evaluates it.

DINO (facebookresearch/dino, eval_knn.py, `knn_classifier`; the rule is Wu et al. 2018): the
features are L2-normalised, each test feature's k most cosine-similar train features vote for
their labels with weight exp(similarity / T), T = 0.07, and the class with the largest summed
vote is the prediction; DINO reports k = 20 (and 10, 100, 200), we report k = 20 and k = 200.

Memory: the similarities are computed for `test_chunk` test rows against `train_chunk` train
rows at a time, on the features' device, and a running top-k is merged chunk by chunk, so the
n_test x n_train similarity matrix never exists (1.28M ImageNet train features would make it
1.28M x 50k x 4 bytes = 256 GB). Peak extra memory is test_chunk x (train_chunk + k) values.
Several ranks split the test rows (`rank`, `world`) and add their counts with one all-reduce.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
import torch.nn.functional as nnf
from torch.utils.data import Subset

from scaled.data import eval_dataset
from scaled.features import extract_features, loader_workers, local_world_size

KS = (20, 200)
TEMPERATURE = 0.07


@torch.no_grad()
def knn_neighbours(
    train_x: torch.Tensor,
    test_x: torch.Tensor,
    k: int,
    *,
    test_chunk: int = 1024,
    train_chunk: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, train indices) of the `k` nearest train rows of each test row, sorted.

    Both inputs are L2-normalised here (cosine similarity) and compared in float32 or wider;
    `train_x` may be stored in float16 (it is widened one chunk at a time). The result equals
    `(test @ train.T).topk(k)` up to the order of exactly tied similarities.
    """
    dtype = torch.promote_types(train_x.dtype, torch.float32)
    b = nnf.normalize(test_x.to(dtype), dim=1)
    n = len(train_x)
    k = min(k, n)
    sims, idxs = [], []
    for i in range(0, len(b), test_chunk):
        q = b[i : i + test_chunk]
        best_s = q.new_empty(len(q), 0)
        best_i = torch.empty(len(q), 0, dtype=torch.long, device=q.device)
        for j in range(0, n, train_chunk):  # widened and normalised per chunk: no full copy
            block = nnf.normalize(train_x[j : j + train_chunk].to(dtype), dim=1)
            s, idx = (q @ block.T).topk(min(k, len(block)), dim=1)
            best_s, order = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), 1)
            best_i = torch.cat([best_i, idx + j], 1).gather(1, order)
        sims.append(best_s)
        idxs.append(best_i)
    return torch.cat(sims), torch.cat(idxs)


def knn_votes(
    sims: torch.Tensor, labels: torch.Tensor, num_classes: int, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """Summed votes (rows: test samples) of the neighbours `labels`, weighted exp(sim / T)."""
    votes = sims.new_zeros(len(sims), num_classes)
    return votes.scatter_add_(1, labels, (sims / temperature).exp())


@torch.no_grad()
def knn_classify(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    ks: tuple[int, ...] = KS,
    temperature: float = TEMPERATURE,
    num_classes: int | None = None,
    rank: int = 0,
    world: int = 1,
    test_chunk: int = 1024,
    train_chunk: int = 65536,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy of the weighted kNN for every k in `ks`.

    Returns ``{"knn{k}_top1": ..., "knn{k}_top5": ...}``. The neighbours are searched once for
    max(ks) and reused for the smaller k (the top-k list is sorted). With `world` > 1 (a process
    group must exist) rank r classifies the test rows r, r + world, ... and the counts are
    all-reduced, so every rank returns the accuracy over the whole test set.
    """
    if num_classes is None:
        num_classes = int(torch.cat([train_y, test_y]).max()) + 1
    mine = slice(rank, None, world)
    xs, ys = test_x[mine], test_y[mine].to(train_x.device)
    sims, idx = knn_neighbours(train_x, xs, max(ks), test_chunk=test_chunk, train_chunk=train_chunk)
    neighbour_labels = train_y.to(train_x.device)[idx]
    counts = []
    for k in ks:
        votes = knn_votes(sims[:, :k], neighbour_labels[:, :k], num_classes, temperature)
        top = votes.topk(min(5, num_classes), dim=1).indices
        counts += [float((top[:, 0] == ys).sum()), float((top == ys[:, None]).any(1).sum())]
    totals = torch.tensor([*counts, float(len(ys))], dtype=torch.float64, device=sims.device)
    if world > 1:
        dist.all_reduce(totals)
    n = max(float(totals[-1]), 1.0)
    out = {}
    for i, k in enumerate(ks):
        out[f"knn{k}_top1"] = float(totals[2 * i]) / n
        out[f"knn{k}_top5"] = float(totals[2 * i + 1]) / n
        out[f"knn{k}_k"] = min(k, len(train_x))  # the k that applies: at most the train rows
    return out


def readable(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(features, labels, number dropped) without the rows of unreadable images: evaluation
    sets give them the label `scaled.data.UNREADABLE` (< 0) instead of a neighbour's image."""
    keep = y >= 0
    dropped = int((~keep).sum())
    return (x[keep], y[keep], dropped) if dropped else (x, y, 0)


# --------------------------------------------------------------------------- pretraining monitor


@functools.lru_cache(maxsize=2)
def monitor_sets(cfg):
    """(train subset, val subset) of the kNN monitor: `knn_samples` images of each, fixed.

    The first `knn_samples` of a permutation seeded by MONITOR_SEED (never by --seed, so runs
    with different seeds are monitored on the same images); labels follow train's class list.
    Cached: built once per run (the scan of an ImageFolder, the load of the digits).
    """
    train = eval_dataset(cfg, "train")
    # the digits' validation split, never their test split (read only by final tables)
    held_out = "val" if cfg.data_dir or cfg.val_digits else "test"
    val = eval_dataset(cfg, held_out, train_classes=train.classes)
    g = torch.Generator().manual_seed(MONITOR_SEED)
    pick = [torch.randperm(len(s), generator=g)[: cfg.knn_samples].tolist() for s in (train, val)]
    return Subset(train, pick[0]), Subset(val, pick[1]), len(train.classes)


MONITOR_SEED = 16


def check_monitor_labels(cfg, num_classes: int) -> None:
    """`--knn-every N` on unlabelled images (no class folders): one UserError naming the flag
    (the monitor needs labelled train/ and val/ class folders), before any work."""
    from scaled.errors import UserError

    if cfg.knn_every and num_classes == 0:
        raise UserError(
            f"--knn-every {cfg.knn_every} needs labelled images, but {cfg.data_dir}/train has "
            "no class folders (unlabelled images); pass --knn-every 0, or put the images in "
            "class folders under train/ and val/"
        )


def knn_due(cfg, step: int, steps_per_epoch: int) -> bool:
    """Whether optimiser step `step` ends an epoch that `--knn-every N` monitors."""
    epoch, inside = divmod(step, steps_per_epoch)
    return bool(cfg.knn_every) and inside == 0 and epoch > 0 and epoch % cfg.knn_every == 0


@torch.no_grad()
def knn_monitor(model, cfg, *, rank: int, world: int, device, amp_dtype=None) -> dict:
    """kNN accuracies (k = 20, 200; k is at most the readable train images, `knn{k}_k` in
    `knn_classify`) of `model.online.backbone` on the monitor subsets; unreadable images are
    left out.

    Every rank extracts its shard of the features (gathered, float16 on CUDA) and classifies its
    share of the val rows (`knn_classify`), so the cost is split over ranks; the backbone is put
    back in train mode. Returns ``{"knn20_top1": ..., ...}`` for `log_metrics`.
    """
    train, val, n_classes = monitor_sets(cfg)
    backbone = model.online.backbone
    was_training = backbone.training
    kw = dict(
        device=device, rank=rank, world=world, amp_dtype=amp_dtype,
        num_workers=loader_workers(device, local_world_size()),
        dtype=torch.float16 if torch.device(device).type == "cuda" else torch.float32,
    )  # fmt: skip
    try:
        tx, ty = extract_features(backbone, train, **kw)
        vx, vy = extract_features(backbone, val, **kw)
    finally:
        backbone.train(was_training)
    (tx, ty, _), (vx, vy, _) = readable(tx, ty), readable(vx, vy)
    result = knn_classify(tx, ty, vx, vy, num_classes=n_classes, rank=rank, world=world)
    return {k: v for k, v in result.items() if k.endswith("top1")}
