"""Linear evaluation of a frozen backbone, on one or many processes.

    torchrun --nproc_per_node=N scaled/linear_eval.py --checkpoint RUN_OR_CKPT [--data-dir ROOT]

Two modes (the preset's `eval_mode` is the default):

- `full`, the standard protocol of SimSiam (facebookresearch/simsiam, main_lincls.py): the
  backbone frozen in eval mode (BatchNorm uses its running statistics), a linear layer
  (weights N(0, 0.01), bias 0) trained 90 epochs with batch 4096 and lr 0.1 x B / 256 (= 1.6),
  momentum 0.9, no weight decay, cosine decay per epoch, LARS (`--optimizer lars`, SimSiam's
  `--lars`, default) or plain SGD; RandomResizedCrop(224) + flip for training, Resize(256) +
  CenterCrop(224) for testing (DINO's eval_linear.py uses the same transforms). The batch is
  global: rank r takes rows r, r + R, ... of every global batch, each rank's summed
  cross-entropy is divided by the global batch size and the head's gradient is all-reduced, so
  R processes take exactly the steps of one (the last, smaller batch included). A checkpoint is
  written after every epoch; `--resume auto` continues from it.
- `fast`: features extracted once without augmentation (each rank a contiguous shard, gathered
  in float16 on CUDA), then a logistic-regression probe on the standardised features.

Both report top-1 / top-5 over the whole validation set (gathered over ranks) and DINO's
weighted kNN (`scaled.knn`, k = 20 and 200, T = 0.07). Validation labels are indices into the
TRAIN split's class list (saved in the result). The result is JSON, by default next to the
checkpoint (`<ckpt>.linear_eval.json`). bf16 autocast, pinned memory and data-loader workers
are on by default on CUDA.
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
import torch.distributed as dist
import torch.nn.functional as nnf
from torch import nn
from torch.utils.data import DataLoader

from scaled.checkpoint import (
    atomic_save,
    atomic_write_text,
    checkpoint_shapes,
    find_checkpoint,
    load_backbone,
    load_checkpoint,
    resolve_checkpoint,  # noqa: F401  (re-exported for the tools)
)
from scaled.config import PretrainConfig
from scaled.data import UNREADABLE, eval_dataset, eval_in_channels
from scaled.distributed import cleanup, init_distributed
from scaled.errors import UserError
from scaled.features import (
    extract_features,
    loader_workers,
    local_world_size,
)
from scaled.knn import KS, knn_classify, readable
from scaled.lifecycle import (
    EXIT_WRITE,
    check_folder_writable,
    check_writable,
    report_stale_temporaries,
    write_failure,
)
from scaled.optim import LARS

# SimSiam main_lincls.py defaults (see the module docstring).
FULL_BATCH, FAST_BATCH, BASE_LR = 4096, 256, 0.1

# --------------------------------------------------------------------------- fast probe


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the `k` largest logits."""
    k = min(k, logits.shape[1])
    return float((logits.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean())


class Standardised(nn.Module):
    """`linear((x - mean) / std)`: the fast probe with its feature standardisation."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x.float() - self.mean) / self.std)


def fit_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    *,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
    num_classes: int | None = None,
) -> nn.Module:
    """Multinomial logistic regression on standardised features, SGD + cosine lr.

    Returns a module mapping raw features to logits (the standardisation is part of it). A
    training set smaller than `batch_size` is one (smaller) batch per epoch.
    """
    g = torch.Generator().manual_seed(seed)
    x = train_x.to(torch.float32, copy=True)  # standardised in place below: one float32 copy
    mean, std = x.mean(0), x.std(0).nan_to_num(1.0).clamp_min(1e-6)
    n_classes = num_classes or int(train_y.max()) + 1
    linear = nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():
        linear.weight.normal_(0.0, 0.01, generator=g)  # on the CPU: the seeded generator's
        linear.bias.zero_()
    linear = linear.to(x.device)
    xs = x.sub_(mean).div_(std)  # ImageNet: 1.28M x 2048 float32 is 10.5 GB, held once
    opt = torch.optim.SGD(
        linear.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    steps_per_epoch = math.ceil(len(xs) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    for _ in range(epochs):
        perm = torch.randperm(len(xs), generator=g).to(xs.device)
        for i in range(0, len(xs), batch_size):
            idx = perm[i : i + batch_size]
            loss = nnf.cross_entropy(linear(xs[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return Standardised(mean, std, linear)


def evaluate_features(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    epochs: int = 100,
    seed: int = 0,
    batch_size: int = FAST_BATCH,
    num_classes: int | None = None,
    rank: int = 0,
    world: int = 1,
) -> dict[str, float]:
    """Fast linear probe (top-1, top-5) and kNN (k = 20, 200; `knn_top1` is k = 20).

    Every rank fits the same probe on the same gathered features (no rank waits on another);
    the kNN splits the test rows over ranks.
    """
    n_classes = num_classes or int(torch.cat([train_y, test_y]).max()) + 1
    probe = fit_linear_probe(
        train_x, train_y, epochs=epochs, seed=seed, batch_size=batch_size, num_classes=n_classes
    )
    with torch.no_grad():
        logits = probe(test_x)
    knn = knn_classify(
        train_x, train_y, test_x, test_y, num_classes=n_classes, rank=rank, world=world
    )
    return {
        "top1": topk_accuracy(logits, test_y, 1),
        "top5": topk_accuracy(logits, test_y, 5),
        "knn_top1": knn["knn20_top1"],
        **knn,
    }


# --------------------------------------------------------------------------- full protocol


def global_batch_shares(
    n: int, batch: int, epoch: int, seed: int, rank: int, world: int
) -> list[tuple[list[tuple[int, int]], int]]:
    """One epoch of (this rank's `(epoch, index)` items, global batch size) pairs.

    One seeded permutation per epoch cut into global batches of `batch` (the last one smaller,
    never dropped); rank r takes positions r, r + world, ... of each. A rank's share may be
    empty in a last batch smaller than `world`.
    """
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    shares = []
    for lo in range(0, n, batch):
        rows = perm[lo : lo + batch]
        shares.append(([(epoch, i) for i in rows[rank::world]], len(rows)))
    return shares


def build_head(num_features: int, num_classes: int, device) -> nn.Linear:
    """The linear classifier, initialised as SimSiam's main_lincls.py: N(0, 0.01), bias 0."""
    head = nn.Linear(num_features, num_classes)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return head.to(device)


def build_head_optimizer(head: nn.Linear, kind: str, lr: float) -> torch.optim.Optimizer:
    """LARS (bias excluded, as SimSiam's LARS skips 1-d parameters) or SGD; momentum 0.9, wd 0."""
    if kind == "lars":
        groups = [
            {"params": [head.weight]},
            {"params": [head.bias], "lars_exclude": True},
        ]
        return LARS(groups, lr=lr, momentum=0.9, weight_decay=0.0)
    return torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """SimSiam's per-epoch schedule: base_lr * (1 + cos(pi * epoch / epochs)) / 2."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def head_step(backbone, head, opt, x, y, global_batch: int, ctx: dict) -> torch.Tensor:
    """One step on this rank's share: summed CE / global batch, head gradient all-reduced."""
    opt.zero_grad(set_to_none=False)
    loss = torch.zeros((), device=ctx["device"])
    if x is not None:
        with torch.no_grad(), ctx["autocast"]():
            h = backbone(x.to(ctx["device"], non_blocking=True))
        ce = nnf.cross_entropy(head(h.float()), y.to(ctx["device"]), reduction="sum")
        loss = ce / global_batch
        loss.backward()
    else:  # empty share of a short last batch: contribute zero gradient
        for p in head.parameters():
            p.grad = torch.zeros_like(p)
    if ctx["world"] > 1:
        grads = [head.weight.grad, head.bias.grad]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        head.weight.grad.copy_(flat[: head.weight.numel()].view_as(head.weight))
        head.bias.grad.copy_(flat[head.weight.numel() :])
    opt.step()
    return loss.detach()


def train_epoch(backbone, head, opt, train_set, epoch: int, ctx: dict) -> tuple[float, int]:
    """One epoch of the full protocol: (mean per-step loss, unreadable images left out, over
    all ranks). An unreadable image's label is `UNREADABLE`, which the cross-entropy ignores."""
    args = ctx["args"]
    shares = global_batch_shares(
        len(train_set), ctx["batch"], epoch, ctx["seed"], ctx["rank"], ctx["world"]
    )
    loader = DataLoader(
        train_set,
        batch_sampler=[items for items, _ in shares if items],
        num_workers=args.num_workers,
        pin_memory=ctx["device"].type == "cuda",
    )
    batches = iter(loader)
    bar = ctx["progress"](len(shares), f"epoch {epoch + 1}/{ctx['epochs']}")
    total = torch.zeros(2, device=ctx["device"])  # summed loss, unreadable images
    for items, global_batch in shares:
        x, y = next(batches)[:2] if items else (None, None)
        total[0] += head_step(backbone, head, opt, x, y, global_batch, ctx)
        total[1] += 0 if y is None else int((y == UNREADABLE).sum())
        bar.update(1)
    bar.close()
    if ctx["world"] > 1:
        dist.all_reduce(total)
    return float(total[0]) / max(len(shares), 1), int(total[1])


@torch.no_grad()
def evaluate_head(backbone, head, val_set, ctx: dict) -> tuple[torch.Tensor, ...]:
    """(logits, features, labels) of the readable validation images, gathered on every rank."""
    feats, labels = ctx_features(backbone, val_set, ctx, "val")
    return head(feats.float()), feats, labels


def lincls_state(head, opt, epoch: int, classes: list[str], ctx: dict) -> dict:
    """The linear-eval checkpoint: head and optimiser, epochs done, the class list, the setup,
    the unreadable train images left out."""
    return {
        "kind": "linear_eval",
        "head": head.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": epoch,
        "classes": classes,
        "setup": ctx["setup"],
        "skipped_train": ctx["skipped"]["train"],
    }


def same_setup(old: dict | None, new: dict) -> bool:
    """Whether a head checkpoint's setup is `new`: the checkpoint (and data folder) compared as
    files, so another path to the same checkpoint (relative, absolute, a link) is the same."""
    if not isinstance(old, dict) or set(old) != set(new):
        return False
    for key in new:
        a, b = old[key], new[key]
        if key in ("checkpoint", "data") and a != b and a != "digits" and b != "digits":
            try:
                if not os.path.samefile(a, b):
                    return False
            except OSError:
                return False
        elif a != b:
            return False
    return True


def resume_head(head, opt, ctx: dict) -> int:
    """Epochs already done (0 for a fresh start); loads the head checkpoint under --resume auto."""
    path = ctx["lincls_path"]
    if not path.exists():
        return 0
    if ctx["args"].resume != "auto":
        raise UserError(
            f"{path} exists (an earlier linear eval); pass --resume auto to continue it or a new "
            "--output-dir"
        )
    state = load_checkpoint(path)
    if not same_setup(state.get("setup"), ctx["setup"]):
        raise UserError(
            f"{path} was written with other settings ({state.get('setup')}); resume with the "
            "same options or pass a new --output-dir"
        )
    head.load_state_dict(state["head"])
    opt.load_state_dict(state["optimizer"])
    ctx["skipped"]["train"] = int(state.get("skipped_train", 0))
    if ctx["rank"] == 0:
        print(f"resuming linear eval from {path} after epoch {state['epoch']}", file=sys.stderr)
    return int(state["epoch"])


def labelled_sets(cfg: PretrainConfig, augment: bool) -> tuple:
    """(train set, val set, class list) of the evaluation; UserError for fewer than 2 classes
    (a probe over one class scores 100% whatever the features)."""
    train_set = eval_dataset(cfg, "train", augment=augment)
    classes = train_set.classes
    if len(classes) < 2:
        where = f"{cfg.data_dir}/train" if cfg.data_dir else "the data"
        raise UserError(
            f"{where} has {len(classes)} class folder(s) ({', '.join(classes)}); a linear probe "
            "needs at least 2 classes: add class folders under train/ and val/"
        )
    return train_set, eval_dataset(cfg, val_split(cfg), train_classes=classes), classes


def full_linear_eval(backbone: nn.Module, cfg: PretrainConfig, ctx: dict) -> dict:
    """The standard protocol (module docstring); returns top-1/top-5 and the kNN accuracies."""
    train_set, val_set, classes = labelled_sets(cfg, augment=True)
    warn_small_split(len(train_set), ctx)
    for p in backbone.parameters():
        p.requires_grad_(False)
    backbone.eval().to(ctx["device"])
    torch.manual_seed(ctx["seed"])
    head = build_head(backbone.num_features, len(classes), ctx["device"])
    base_lr = ctx["args"].lr * ctx["batch"] / 256
    opt = build_head_optimizer(head, ctx["args"].optimizer, base_lr)
    start = resume_head(head, opt, ctx)
    for epoch in range(start, ctx["epochs"]):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(base_lr, epoch, ctx["epochs"])
        loss, ctx["skipped"]["train"] = train_epoch(backbone, head, opt, train_set, epoch, ctx)
        if ctx["rank"] == 0:
            print(f"linear eval epoch {epoch + 1}/{ctx['epochs']} loss {loss:.4f}", file=sys.stderr)
            ctx["lincls_path"].parent.mkdir(parents=True, exist_ok=True)
            atomic_save(lincls_state(head, opt, epoch + 1, classes, ctx), ctx["lincls_path"])
    logits, val_x, val_y = evaluate_head(backbone, head, val_set, ctx)
    result = {"top1": topk_accuracy(logits, val_y, 1), "top5": topk_accuracy(logits, val_y, 5)}
    if not ctx["args"].no_knn:
        train_x, train_y = ctx_features(backbone, eval_dataset(cfg, "train"), ctx, "train")
        knn = knn_classify(
            train_x, train_y, val_x, val_y, num_classes=len(classes),
            rank=ctx["rank"], world=ctx["world"],
        )  # fmt: skip
        result.update(knn_top1=knn["knn20_top1"], **knn)
    n_train = len(train_set) - ctx["skipped"]["train"]
    return {**result, "classes": classes, "n_train": n_train, "n_val": len(val_y)}


def fast_linear_eval(backbone: nn.Module, cfg: PretrainConfig, ctx: dict) -> dict:
    """Features once (sharded, gathered), then the fast probe and the kNN on them."""
    train_set, val_set, classes = labelled_sets(cfg, augment=False)
    warn_small_split(len(train_set), ctx)
    train_x, train_y = ctx_features(backbone, train_set, ctx, "train")
    val_x, val_y = ctx_features(backbone, val_set, ctx, "val")
    result = evaluate_features(
        train_x, train_y, val_x, val_y, epochs=ctx["epochs"], seed=ctx["seed"],
        batch_size=ctx["batch"], num_classes=len(classes), rank=ctx["rank"], world=ctx["world"],
    )  # fmt: skip
    return {**result, "classes": classes, "n_train": len(train_y), "n_val": len(val_y)}


def ctx_features(backbone, dataset, ctx: dict, split: str):
    """`extract_features` with the run's device, shards, autocast and gather dtype, without the
    unreadable images (counted in `ctx["skipped"][split]`: evaluation never substitutes)."""
    x, y = extract_features(
        backbone, dataset, batch_size=ctx["batch_eval"], device=ctx["device"],
        num_workers=ctx["args"].num_workers, rank=ctx["rank"], world=ctx["world"],
        amp_dtype=ctx["amp_dtype"], dtype=ctx["feature_dtype"],
    )  # fmt: skip
    x, y, dropped = readable(x, y)
    ctx["skipped"][split] = dropped
    return x, y


def warn_knn_k(result: dict, ctx: dict) -> None:
    """Say when "knn200" (or any k) is really k = the readable train images."""
    for k in KS:
        used = result.get(f"knn{k}_k")
        if used is not None and used < k and ctx["rank"] == 0:
            print(
                f"warning: knn{k} uses k = {used} (all {used} readable train images), not {k}; "
                f"its result is knn{k}_k = {used} in the JSON",
                file=sys.stderr,
            )


def val_split(cfg: PretrainConfig) -> str:
    """`val` of an ImageFolder, `test` of the embedded digits."""
    return "val" if cfg.data_dir else "test"


def warn_small_split(n: int, ctx: dict) -> None:
    """A labelled train split smaller than the batch is one smaller batch per epoch: say so."""
    if n < ctx["batch"] and ctx["rank"] == 0:
        print(
            f"warning: --batch-size {ctx['batch']} exceeds the {n} labelled training images; "
            f"each epoch is one batch of {n} (pass --batch-size {n} or less to silence this)",
            file=sys.stderr,
        )


# --------------------------------------------------------------------------- checkpoints


def check_channels(path: Path, ckpt: dict, cfg: PretrainConfig) -> None:
    """The backbone's input channels must match the evaluation images (one line, not conv2d)."""
    ckpt_channels, _ = checkpoint_shapes(ckpt)
    data_channels = eval_in_channels(cfg)
    if ckpt_channels != data_channels:
        data = f"--data-dir {cfg.data_dir} (RGB)" if cfg.data_dir else "the embedded digits (grey)"
        raise UserError(
            f"checkpoint {path} takes {ckpt_channels}-channel images but {data} gives "
            f"{data_channels}-channel ones; evaluate on the kind of data it was pretrained on"
        )


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The linear_eval.py options."""
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node=N scaled/linear_eval.py",
        description="Linear probe and kNN of a frozen backbone from a pretrain.py checkpoint "
        "(protocol: the module docstring). Writes <checkpoint>.linear_eval.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--checkpoint", required=True, help="ckpt_*.pt file or run folder (newest checkpoint)")
    add("--data-dir", default=None, help="ImageFolder root (default: the checkpoint's data)")
    add("--epochs", type=int, default=None, help="default: the preset's eval_epochs (90)")
    add("--mode", choices=("fast", "full"), default=None, help="default: the preset's")
    add("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    add("--batch-size", type=int, default=None, help=f"global; default {FULL_BATCH} full, "
        f"{FAST_BATCH} fast")  # fmt: skip
    add("--lr", type=float, default=BASE_LR, help="full mode: base lr, scaled by batch / 256")
    add("--optimizer", choices=("lars", "sgd"), default="lars", help="full mode")
    add("--num-workers", type=int, default=None, help="per rank; default 8 on CUDA, 0 on CPU")
    add("--random-init", action="store_true", help="same net, untrained (baseline)")
    add("--no-knn", action="store_true", help="full mode: skip the kNN (one pass over train)")
    add("--output", default=None, help="JSON path (default: next to the checkpoint)")
    add("--output-dir", default=None, help="full mode checkpoints (default <ckpt>.linear_eval/)")
    add("--resume", choices=("", "auto"), default="", help="auto: continue a full-mode run")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """One-line errors for values no evaluation can use."""
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs {args.epochs} must be >= 1; pass e.g. --epochs 90")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be >= 1; pass e.g. 256")
    if args.lr <= 0:
        raise UserError(f"--lr {args.lr} must be > 0; pass e.g. --lr 0.1")
    if args.num_workers is not None and args.num_workers < 0:
        raise UserError(f"--num-workers {args.num_workers} must be >= 0; pass e.g. 8")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible; pass --device cpu")


def make_context(args, cfg: PretrainConfig, path: Path, rank: int, world: int, device) -> dict:
    """What the evaluation functions share: shards, device, autocast, batch, paths, progress."""
    cuda = device.type == "cuda"
    mode = args.mode or cfg.eval_mode
    batch = args.batch_size or (FULL_BATCH if mode == "full" else FAST_BATCH)
    if args.num_workers is None:  # the CPUs of this process over the ranks of this node
        args.num_workers = loader_workers(device, local_world_size())
    out_dir = lincls_dir(args, path)
    amp_dtype = torch.bfloat16 if cuda else None

    def progress(total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=rank != 0, file=sys.stderr, leave=False)

    return {
        "args": args, "mode": mode, "rank": rank, "world": world, "device": device,
        "epochs": args.epochs or cfg.eval_epochs, "batch": batch, "seed": cfg.seed,
        "batch_eval": max(1, min(256, batch // world)) if mode == "full" else 256,
        "amp_dtype": amp_dtype, "feature_dtype": torch.float16 if cuda else torch.float32,
        "autocast": lambda: torch.autocast(device.type, dtype=amp_dtype, enabled=cuda),
        "lincls_path": out_dir / "lincls_last.pt", "progress": progress,
        "skipped": {"train": 0, "val": 0},  # unreadable images left out (never substituted)
        "setup": {
            "checkpoint": str(path.resolve()), "epochs": args.epochs or cfg.eval_epochs,
            "batch": batch, "lr": args.lr, "optimizer": args.optimizer,
            "data": str(Path(cfg.data_dir).resolve()) if cfg.data_dir else "digits",
        },
    }  # fmt: skip


def lincls_dir(args: argparse.Namespace, path: Path) -> Path:
    """The folder of the full mode's head checkpoint (`--output-dir`, default beside `path`)."""
    return Path(args.output_dir) if args.output_dir else path.with_suffix(".linear_eval")


def check_outputs(args, cfg: PretrainConfig, path: Path, out: Path) -> None:
    """Every file the evaluation will write, checked before any work: writable, and never the
    checkpoint it reads (`check_writable`); the full mode's checkpoint folder too, whose debris
    of a killed writer is removed."""
    inputs = {path: "the --checkpoint"}
    check_writable(out, "--output", inputs)
    if (args.mode or cfg.eval_mode) != "full":
        return
    folder = lincls_dir(args, path)
    check_folder_writable(folder, "--output-dir")
    if folder.is_dir():
        check_writable(folder / "lincls_last.pt", "--output-dir", inputs)
        if os.environ.get("RANK", "0") == "0":
            report_stale_temporaries(folder)


def evaluate(args: argparse.Namespace) -> tuple[dict, Path, int]:
    """Run the evaluation `args` describe; returns (result, output path, rank).

    The checkpoint is read once (`find_checkpoint`); its config, weights and shapes all come
    from that one dict.
    """
    check_args(args)
    path, ckpt = find_checkpoint(args.checkpoint)
    suffix = ".random_init.linear_eval.json" if args.random_init else ".linear_eval.json"
    out = Path(args.output) if args.output else path.with_suffix(suffix)
    cfg, backbone = load_backbone(path, random_init=args.random_init, ckpt=ckpt)
    if args.data_dir is not None:
        cfg = replace(cfg, data_dir=args.data_dir)
    check_outputs(args, cfg, path, out)
    check_channels(path, ckpt, cfg)
    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rank, world, _, device = init_distributed(device_type)
    ctx = make_context(args, cfg, path, rank, world, device)
    t0 = time.perf_counter()
    run = full_linear_eval if ctx["mode"] == "full" else fast_linear_eval
    result = run(backbone, cfg, ctx)
    warn_knn_k(result, ctx)
    skipped = ctx["skipped"]
    result.update(n_skipped=skipped["train"] + skipped["val"], n_skipped_train=skipped["train"],
                  n_skipped_val=skipped["val"])  # fmt: skip
    pretrain = ckpt.get("config", {})
    result.update(
        checkpoint=str(path), mode=ctx["mode"], epochs=ctx["epochs"], batch_size=ctx["batch"],
        world_size=world, random_init=args.random_init, data=cfg.data_dir or "embedded digits",
        seconds=round(time.perf_counter() - t0, 2),
        pretrain={"method": pretrain.get("method"), "arch": pretrain.get("arch"),
                  "step": int(ckpt.get("step", -1)), "epochs": pretrain.get("epochs")},
    )  # fmt: skip
    return result, out, rank


def main(argv: list[str] | None = None, publish=None) -> int:
    """Console entry point `minc-linear-eval`; returns the exit status.

    `publish(result)`, when given, runs on rank 0 after the result is saved (the docs writer of
    `scaled.tools.linear_eval_docs`: the entry point returns results, tools publish them).
    """
    args = build_parser().parse_args(argv)
    try:
        result, out, rank = evaluate(args)
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr)
        cleanup()
        return 2
    if rank == 0:
        try:
            atomic_write_text(json.dumps(result, indent=2) + "\n", out)
        except OSError as err:
            print(f"error: could not write --output {out} ({write_failure(err, str(out.parent))}); "
                  "free space and run again", file=sys.stderr)  # fmt: skip
            cleanup()
            return EXIT_WRITE
        print(json.dumps({k: v for k, v in result.items() if k != "classes"}))
        if publish is not None:
            publish(result)
    cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
