"""Two gloo processes run `--method simsiam` and every baseline preset, shrunk, on JPEGs.

The presets keep their recipe (loss, projector and predictor kind, optimiser, feature map) and
lose only their size: ResNet-18 at 32 px, global batch 8, 3 steps, narrow heads. Each run must
finish with a finite loss at every step.
"""

from __future__ import annotations

import pytest
import torch

from .helpers import TINY, make_image_folder, read_metrics, torchrun

SHRINK = [
    "--arch", "resnet18", "--batch-size", "8", "--max-steps", "3", "--image-size", "32",
    "--device", "cpu", "--num-workers", "0", "--proj-hidden", "32", "--proj-out", "16",
    "--pred-hidden", "8", "--log-every", "1", "--amp", "none",
]  # fmt: skip
PRESETS = [
    "imagenet_r50_simsiam",
    "imagenet_r50_spectral_haochen",
    "imagenet_r50_simclr",
    "imagenet_r50_byol",
    "imagenet_r50_linear_byol",
]


def _finite_run(args: list[str], run) -> None:
    proc = torchrun(["scaled/pretrain.py", *args, "--output-dir", str(run)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [r["loss"] for r in read_metrics(run)]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses))), losses


@pytest.mark.distributed
@pytest.mark.xdist_group("distributed")
def test_simsiam_two_processes_on_jpegs(tmp_path):
    data = make_image_folder(tmp_path / "data", n_classes=3, per_class=8)
    args = [*TINY, "--method", "simsiam", "--data-dir", str(data), "--image-size", "32"]
    _finite_run([*args, "--batch-size", "8", "--max-steps", "3"], tmp_path / "run")


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.xdist_group("distributed")
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_two_processes_on_jpegs(preset, tmp_path):
    data = make_image_folder(tmp_path / "data", n_classes=3, per_class=8)
    _finite_run(["--preset", preset, *SHRINK, "--data-dir", str(data)], tmp_path / "run")
