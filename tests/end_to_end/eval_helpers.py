"""Checkpoints for the evaluation tests, written without training (weights at their init).

`fake_checkpoint` saves what `scaled.checkpoint.training_state` would for a model that took no
step: the same keys `load_model` and `newest_valid_checkpoint` read, in a second instead of
the ten a real pretraining step takes on this machine.
"""

from __future__ import annotations

from pathlib import Path

import torch

from scaled.checkpoint import SCHEMA_VERSION, checkpoint_path
from scaled.config import config_to_dict, parse_config
from scaled.model import SSLModel

from .helpers import TINY


def fake_checkpoint(
    run_dir: Path, extra: list[str] = (), in_channels: int = 3, num_classes: int = 3
) -> Path:
    """`run_dir/ckpt_00000001.pt` of TINY (+ `extra`): seeded weights, random BN statistics."""
    cfg = parse_config([*TINY, "--output-dir", str(run_dir), *extra])
    torch.manual_seed(cfg.seed)
    model = SSLModel(cfg, in_channels, num_classes)
    with torch.no_grad():  # non-trivial running statistics, so eval-mode BN matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(run_dir, 1)
    state = {
        "schema": SCHEMA_VERSION, "model": model.state_dict(), "step": 1,
        "config": config_to_dict(cfg), "arch": cfg.arch,
        "in_channels": in_channels, "num_classes": num_classes,
    }  # fmt: skip
    torch.save(state, path)
    return path
