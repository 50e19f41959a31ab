"""Checkpoints for the evaluation tests, written without training (weights at their init).

`fake_checkpoint` saves what `scaled.checkpoint.training_state` writes for a model that took no
optimiser step: every key `load_model` and `newest_valid_checkpoint` read, in a second instead
of the ten a real pretraining step takes on this machine.
"""

from __future__ import annotations

from pathlib import Path

import torch

from scaled.checkpoint import checkpoint_path, training_state
from scaled.options import parse_config
from scaled.pretrain import build_run_state

from .helpers import TINY


def fake_checkpoint(
    run_dir: Path, extra: list[str] = (), in_channels: int = 3, num_classes: int = 3
) -> Path:
    """`run_dir/ckpt_00000001.pt` of TINY (+ `extra`): seeded weights, random BN statistics,
    written by the trainer's own `training_state` (so every key a real checkpoint has)."""
    cfg = parse_config([*TINY, "--output-dir", str(run_dir), *extra])
    torch.manual_seed(cfg.seed)
    run = build_run_state(cfg, in_channels, num_classes, device=torch.device("cpu"))
    with torch.no_grad():  # non-trivial running statistics, so eval-mode BN matters
        for m in run.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    run.step = 1
    run_dir.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(run_dir, 1)
    torch.save(training_state(run), path)
    return path
