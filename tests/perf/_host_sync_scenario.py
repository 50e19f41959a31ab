"""A few real `train_step`s per method and loader, for the CPU host-sync detector.

`step_syncs(method, loader, data_dir)` builds the trainer's own run state
(`scaled.pretrain.build_run_state`) for a tiny ImageNet-preset-like config (LARS, the presets'
optimiser; `--loader torch`, `device` or `dali`), draws real batches from the trainer's own dataset
(`scaled.data.pretrain_dataset`, two-stage for `device`) outside the recording, and returns the
host-sync ops (`scaled.tools.host_sync`) of the steps after the warm-up.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

B, STEPS, WARMUP, SIZE = 8, 4, 2, 32


def config(method: str, loader: str, data_dir: Path, tmp: Path):
    from scaled.options import parse_config

    preset = {"simclr": "imagenet_r50_simclr", "simsiam": "imagenet_r50_simsiam"}.get(
        method, "imagenet_r50_byol" if method == "byol" else "imagenet_r50_minc"
    )
    return parse_config(
        [
            "--preset", preset, "--method", method, "--arch", "small_resnet", "--width", "8",
            "--stem-stride", "2", "--proj-hidden", "32", "--proj-out", "16",
            "--pred-hidden", "32", "--data-dir", str(data_dir), "--image-size", str(SIZE),
            "--batch-size", str(B), "--loader", loader, "--device", "cpu",
            "--num-workers", "0", "--output-dir", str(tmp / "run"), "--epochs", "1",
            "--warmup-epochs", "0",
            *(["--augment", "byol"] if loader == "dali" else []),  # DALI builds BYOL's views
        ]
    )  # fmt: skip


def batches(cfg, loader: str) -> list:
    """STEPS lists of one micro-batch each, from the trainer's own dataset."""
    from scaled.data import pretrain_dataset

    dataset, _, _ = pretrain_dataset(cfg, two_stage=loader == "device")
    loader_ = DataLoader(dataset, batch_size=B, shuffle=False, num_workers=0, drop_last=True)
    if loader == "dali":  # the trainer's own builder: DALI on the CPU (device_id=None)
        from scaled.data import GlobalBatchSampler
        from scaled.pretrain import build_dali_loader

        sampler = GlobalBatchSampler(len(dataset), B, 0, 1, cfg.seed)
        loader_ = build_dali_loader(cfg, B, 0, 0, sampler, torch.device("cpu"))
    out: list = []
    while len(out) < STEPS:  # as many passes over a small folder as it takes
        out += [[b] for b in loader_][: STEPS - len(out)]
    return out


def step_syncs(method: str, loader: str, data_dir: Path, tmp: Path, step_fn=None):
    """The host syncs of STEPS - WARMUP trainer steps (after WARMUP) of `method` / `loader`."""
    from scaled.pretrain import build_run_state, train_step
    from scaled.tools.host_sync import step_host_syncs

    torch.manual_seed(0)
    cfg = config(method, loader, data_dir, tmp)
    data = batches(cfg, loader)
    run = build_run_state(cfg, 3, 3, device=torch.device("cpu"), steps_per_epoch=STEPS)
    return step_host_syncs(step_fn or train_step, run, data, warmup=WARMUP)
