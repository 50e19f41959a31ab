"""minc-export: the exported backbone, loaded where a user loads it, gives our features."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from scaled.export import main
from scaled.linear_eval import load_backbone
from tests.conftest import tol

from .eval_helpers import fake_checkpoint


def features(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode float64 features of `x`."""
    return module.double().eval()(x.double())


def exported(tmp_path, extra: list[str], in_channels: int = 3):
    """(our backbone, OUT.pt state dict, OUT.json) of a fresh checkpoint of `extra`."""
    ckpt = fake_checkpoint(tmp_path / "run", ["--no-target-network", *extra], in_channels)
    out = tmp_path / "backbone.pt"
    assert main([str(ckpt), str(out)]) == 0
    info = json.loads(out.with_suffix(".json").read_text())
    state = torch.load(out, weights_only=True)
    return load_backbone(ckpt)[1], state, info


@pytest.mark.slow  # 31 s on the shared 2-core machine (a ResNet-50 built, saved, loaded)
def test_resnet50_loads_into_torchvision_with_the_same_features(tmp_path, capsys):
    ours, state, info = exported(tmp_path, ["--arch", "resnet50"])
    assert "m.fc = torch.nn.Identity()" in capsys.readouterr().out
    assert info["torchvision"] == "resnet50" and info["num_features"] == 2048
    tv = torchvision.models.resnet50()
    tv.fc = torch.nn.Identity()
    tv.load_state_dict(state, strict=True)
    missing = torchvision.models.resnet50().load_state_dict(state, strict=False)
    assert set(missing.missing_keys) == {"fc.weight", "fc.bias"} and not missing.unexpected_keys
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ref = features(ours, x)
    torch.testing.assert_close(features(tv, x), ref, **tol("float64"))
    assert ref.abs().max() > 0


def test_small_resnet_rebuilds_from_the_build_line(tmp_path):
    ours, state, info = exported(tmp_path, [], in_channels=1)  # the digits' grey small_resnet
    assert info["torchvision"] is None and "small_stem=True" in info["build"]
    scope: dict = {}
    exec(info["build"], scope)
    scope["m"].load_state_dict(state, strict=True)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(features(scope["m"], x), features(ours, x), **tol("float64"))


@pytest.mark.slow
def test_resnet50x2_rebuilds_from_the_build_line(tmp_path):
    ours, state, info = exported(tmp_path, ["--arch", "resnet50x2"])
    assert info["torchvision"] is None and "width_mult=2.0" in info["build"]
    scope: dict = {}
    exec(info["build"], scope)
    scope["m"].load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(features(scope["m"], x), features(ours, x), **tol("float64"))


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nothing"), str(tmp_path / "b.pt")]) == 2
    assert main([str(tmp_path), str(tmp_path / "b.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
