"""The named presets of `scaled/pretrain.py --preset NAME`: each only changes the defaults.

Each preset is a function whose docstring says what it is, where its values come from (the
authors' public code, file named, for the baselines), the command, the hardware it was sized for
and the expected result. ImageNet presets have **not been run by this project**; their docstrings
quote the public reference points of docs/method.md section 7 and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

from scaled.config import PretrainConfig


def imagenet_r50_minc() -> PretrainConfig:
    """MINC, ResNet-50, ImageNet, 100 epochs, global batch 4096, LARS.

    Command: ``torchrun --nproc_per_node=8 scaled/pretrain.py --preset imagenet_r50_minc
    --data-dir /path/to/imagenet`` (then ``scaled/linear_eval.py --checkpoint RUN_DIR
    --data-dir /path/to/imagenet``).
    Hardware: 8 GPUs, bf16; one step at 512 images per GPU holds about 45 GB of tensors
    (docs/scaling.md, "Memory"): 80 GB cards fit it, on 40 GB cards pass ``--accum-steps 2``.
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
    Hardware: 8 GPUs, bf16; one step at 512 images per GPU holds about 90 GB of tensors
    (docs/scaling.md, "Memory"): pass ``--accum-steps 2`` on 80 GB cards, ``--accum-steps 4``
    on 40 GB cards.
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
    Hardware: 8 GPUs, bf16; one step at 512 images per GPU holds about 43 GB of tensors
    (docs/scaling.md, "Memory"): 80 GB cards fit it, on 40 GB cards pass ``--accum-steps 2``.
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
    Hardware: 8 GPUs; 48 images per GPU hold about 7 GB of tensors (docs/scaling.md,
    "Memory"): any card with 16 GB or more.
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
    Hardware: 8 GPUs; 64 images per GPU hold about 6 GB of tensors (docs/scaling.md,
    "Memory"): any card with 16 GB or more.
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
    Hardware: 8 GPUs, bf16; one step at 512 images per GPU holds about 43 GB of tensors
    (docs/scaling.md, "Memory"): 80 GB cards fit it, on 40 GB cards pass ``--accum-steps 2``.
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
    Hardware: 8 GPUs, bf16; one step at 512 images per GPU holds about 45 GB of tensors
    (docs/scaling.md, "Memory"): 80 GB cards fit it, on 40 GB cards pass ``--accum-steps 2``.
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
    Hardware: 8 GPUs, bf16; one step at 512 images per GPU holds about 45 GB of tensors
    (docs/scaling.md, "Memory"): 80 GB cards fit it, on 40 GB cards pass ``--accum-steps 2``.
    Expected result: not run here; published 100-epoch number: none in the authors' repository;
    the paper reports MINC competitive with it.
    """
    return _byol_100_epochs("linear")


def demo() -> PretrainConfig:
    """MINC on the embedded MNIST digits, small ResNet, 2 CPU processes (gloo): `make demo`.

    Command: ``make demo`` (= ``python -m scaled.tools.demo``, which runs ``torchrun
    --nproc_per_node=2 scaled/pretrain.py --preset demo``, then the fast linear probe and a kNN,
    and writes ``runs/demo/report.png``); another seed: ``make demo ARGS="--seed 1"``.
    Hardware: 2 CPU cores, no GPU; a few minutes (the measured times are in docs/results.md,
    "The demo").
    Where the values come from: the recipe of issue 19's search (AdamW, the feature map of Eq. 23
    at mu 4, batch 64 for 50 epochs, the random stroke thickness of choice C15), re-scored on the
    digits' validation split, where no candidate beat it by the rule fixed before the run
    (docs/results.md, "The recipe choice on the validation digits").
    Expected result: the pretrained encoder above the same encoder at random initialisation and
    above raw pixels on both columns (linear probe, kNN) of the test digits; the measured tables,
    per seed, are in docs/results.md, "The demo".
    """
    return PretrainConfig(
        method="minc",
        arch="small_resnet",
        width=16,
        small_blocks=1,
        stem_stride=2,
        data_dir="",
        output_dir="runs/demo",
        epochs=50,  # 2700 steps of the 3500 training digits
        batch_size=64,  # 62 steps an epoch: 4x the updates of 256 at about the same cost
        # LARS (trust coefficient 1e-3) moves weights ~5e-5 relative per step at lr 0.05: the
        # network barely leaves its initialisation in 300 steps (probe below random init).
        # AdamW learns in that budget (issue 19's recipe search, in git history).
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
        digit_stroke=1.0,  # C15: random stroke thickness (docs/derivation.md)
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

# The presets that describe ImageFolder runs (ImageNet): without --data-dir they would train a
# ResNet-50 on the embedded 28 px digits, so the trainer refuses them (`check_preset_data`).
DATA_PRESETS = frozenset(name for name in PRESETS if name.startswith("imagenet"))
DEFAULT_PRESET = "imagenet_r50_minc"  # the preset of a command line without --preset


def preset_name(argv: list[str]) -> str:
    """The `--preset NAME` (or `--preset=NAME`) of a pretrain.py command line."""
    name = DEFAULT_PRESET
    for i, word in enumerate(argv):
        if word == "--preset" and i + 1 < len(argv):
            name = argv[i + 1]
        elif word.startswith("--preset="):
            name = word.partition("=")[2]
    return name


def check_preset_data(argv: list[str] | None, cfg: PretrainConfig) -> None:
    """UserError when an ImageNet preset is to train without --data-dir (one line, the flag)."""
    import sys

    from scaled.errors import UserError

    name = preset_name(list(sys.argv[1:] if argv is None else argv))
    if name in DATA_PRESETS and not cfg.data_dir:
        raise UserError(
            f"--preset {name} trains on ImageNet but no --data-dir is given (it would train on "
            "the embedded 28 px digits); pass --data-dir /path/to/imagenet, or --preset demo "
            "for the digits"
        )
