"""Linear evaluation of a frozen backbone: `scaled/linear_eval.py --checkpoint PATH`.

Two modes:
- `fast` (default for the demo): extract features once (no augmentation), standardise them and
  fit a linear classifier with SGD on the fixed features.
- `full` (default for ImageNet presets): the standard protocol, SGD on a linear layer over the
  frozen backbone with RandomResizedCrop + flip, cosine lr, `--epochs` (90 for the presets).
Both report top-1 / top-5 and a kNN accuracy (k = 20, cosine similarity, votes weighted by
exp(sim / 0.07)) as a second monitor. The result is written as JSON next to the checkpoint.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: find `scaled`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import math
import time
from dataclasses import replace

import torch
import torch.nn.functional as nnf
from torch import nn
from torch.utils.data import DataLoader

from scaled.checkpoint import load_model, newest_valid_checkpoint
from scaled.config import PretrainConfig, UserError
from scaled.data import eval_dataset

# --------------------------------------------------------------------------- features


@torch.no_grad()
def extract_features(
    backbone: nn.Module, dataset, *, batch_size: int = 256, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features (eval mode) and labels of every item of a one-view `ViewsDataset`."""
    backbone.eval().to(device)
    if getattr(dataset, "batched_transform", None) is not None:  # in-memory digits: one call
        x = dataset.batched_transform(dataset.source.images)
        chunks = x.split(batch_size)
        feats = [backbone(c.to(device)).float().cpu() for c in chunks]
        return torch.cat(feats), dataset.source.labels.clone()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    feats, labels = [], []
    for x, y, *_ in loader:
        feats.append(backbone(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def pixel_features(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw pixels (flattened, normalised) and labels: the no-learning baseline."""
    return extract_features(nn.Flatten(), dataset)


# --------------------------------------------------------------------------- classifiers


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the `k` largest logits."""
    k = min(k, logits.shape[1])
    return float((logits.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean())


def fit_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    *,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
) -> nn.Module:
    """Multinomial logistic regression on standardised features, SGD + cosine lr.

    Returns a module mapping raw features to logits (the standardisation is part of it).
    """
    g = torch.Generator().manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    n_classes = int(train_y.max()) + 1
    linear = nn.Linear(train_x.shape[1], n_classes)
    with torch.no_grad():
        linear.weight.normal_(0.0, 0.01, generator=g)
        linear.bias.zero_()
    xs = (train_x - mean) / std
    opt = torch.optim.SGD(
        linear.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    steps_per_epoch = math.ceil(len(xs) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    for _ in range(epochs):
        perm = torch.randperm(len(xs), generator=g)
        for i in range(0, len(xs), batch_size):
            idx = perm[i : i + batch_size]
            loss = nnf.cross_entropy(linear(xs[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()

    class Standardised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)
            self.linear = linear

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear((x - self.mean) / self.std)

    return Standardised()


@torch.no_grad()
def knn_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Weighted kNN top-1 (Wu et al. 2018): cosine similarity, votes exp(sim / temperature)."""
    a, b = nnf.normalize(train_x, dim=1), nnf.normalize(test_x, dim=1)
    n_classes = int(train_y.max()) + 1
    correct = 0
    for i in range(0, len(b), 1024):
        sim = b[i : i + 1024] @ a.T
        top, idx = sim.topk(min(k, len(a)), dim=1)
        votes = torch.zeros(len(top), n_classes)
        votes.scatter_add_(1, train_y[idx], (top / temperature).exp())
        correct += int((votes.argmax(1) == test_y[i : i + 1024]).sum())
    return correct / len(b)


def evaluate_features(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    epochs: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """Fast linear probe (top-1, top-5) and kNN top-1 on fixed features."""
    probe = fit_linear_probe(train_x, train_y, epochs=epochs, seed=seed)
    with torch.no_grad():
        logits = probe(test_x)
    return {
        "top1": topk_accuracy(logits, test_y, 1),
        "top5": topk_accuracy(logits, test_y, 5),
        "knn_top1": knn_accuracy(train_x, train_y, test_x, test_y),
    }


def full_linear_eval(
    backbone: nn.Module,
    cfg: PretrainConfig,
    *,
    epochs: int,
    batch_size: int = 256,
    lr: float = 0.1,
    device: str = "cpu",
    num_workers: int = 0,
) -> dict[str, float]:
    """Standard protocol: frozen backbone (eval mode), linear layer trained with augmentation."""
    train_set = eval_dataset(cfg, "train", augment=True)
    test_set = eval_dataset(cfg, "val" if cfg.data_dir else "test")
    backbone.eval().to(device)
    for p in backbone.parameters():
        p.requires_grad_(False)
    n_classes = 10 if not cfg.data_dir else len({y for _, y in train_set.source.samples})
    head = nn.Linear(backbone.num_features, n_classes).to(device)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    opt = torch.optim.SGD(head.parameters(), lr=lr * batch_size / 256, momentum=0.9)
    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        generator=g,
        num_workers=num_workers,
        drop_last=True,
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * max(len(loader), 1))
    for epoch in range(epochs):
        for x, y, *_ in loader:
            with torch.no_grad():
                h = backbone(x.to(device, non_blocking=True))
            loss = nnf.cross_entropy(head(h), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"linear eval epoch {epoch + 1}/{epochs} loss {loss.item():.4f}", file=sys.stderr)
    test_loader = DataLoader(test_set, batch_size=batch_size, num_workers=num_workers)
    logits, labels, feats = [], [], []
    with torch.no_grad():
        for x, y, *_ in test_loader:
            h = backbone(x.to(device))
            feats.append(h.float().cpu())
            logits.append(head(h).float().cpu())
            labels.append(y)
    logits, labels = torch.cat(logits), torch.cat(labels)
    train_x, train_y = extract_features(backbone, eval_dataset(cfg, "train"), device=device)
    return {
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "knn_top1": knn_accuracy(train_x, train_y, torch.cat(feats), labels),
    }


# --------------------------------------------------------------------------- checkpoints


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the newest readable checkpoint of a run folder."""
    path = Path(path)
    if path.is_dir():
        found = newest_valid_checkpoint(path)
        if found is None:
            raise UserError(
                f"no readable checkpoint in {path}; pass a ckpt_*.pt file or run folder"
            )
        return found[0]
    if not path.is_file():
        raise UserError(f"--checkpoint {path} does not exist; pass a ckpt_*.pt file or run folder")
    return path


def load_backbone(
    path: str | os.PathLike, *, random_init: bool = False
) -> tuple[PretrainConfig, nn.Module]:
    """(config, backbone) from a pretrain.py checkpoint (`random_init`: same net, fresh weights)."""
    cfg, model, _ = load_model(path, random_init=random_init)
    return cfg, model.online.backbone


def main(argv: list[str] | None = None) -> int:
    """Console entry point `minc-linear-eval`; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="scaled/linear_eval.py",
        description="Linear probe (and kNN) of a frozen backbone from a pretrain.py checkpoint. "
        "Writes <checkpoint>.linear_eval.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="ckpt_*.pt file or run folder")
    parser.add_argument(
        "--data-dir", default=None, help="ImageFolder root (default: the checkpoint's data)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--mode", choices=("fast", "full"), default=None, help="default: preset's")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--random-init", action="store_true", help="same net, untrained (baseline)")
    parser.add_argument("--output", default=None, help="JSON path (default: next to checkpoint)")
    args = parser.parse_args(argv)
    try:
        path = resolve_checkpoint(args.checkpoint)
        cfg, backbone = load_backbone(path, random_init=args.random_init)
        if args.data_dir is not None:
            cfg = replace(cfg, data_dir=args.data_dir)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda but no CUDA device is visible; pass --device cpu")
        mode = args.mode or cfg.eval_mode
        epochs = args.epochs or cfg.eval_epochs
        t0 = time.perf_counter()
        if mode == "fast":
            tr = extract_features(backbone, eval_dataset(cfg, "train"), device=device)
            te = extract_features(
                backbone, eval_dataset(cfg, "val" if cfg.data_dir else "test"), device=device
            )
            result = evaluate_features(*tr, *te, epochs=epochs, seed=cfg.seed)
        else:
            result = full_linear_eval(
                backbone,
                cfg,
                epochs=epochs,
                batch_size=args.batch_size,
                device=device,
                num_workers=args.num_workers,
            )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result.update(
        checkpoint=str(path),
        mode=mode,
        epochs=epochs,
        random_init=args.random_init,
        data=cfg.data_dir or "embedded digits",
        seconds=round(time.perf_counter() - t0, 2),
    )
    suffix = ".random_init.linear_eval.json" if args.random_init else ".linear_eval.json"
    out = Path(args.output) if args.output else path.with_suffix(suffix)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
