"""Backbone sizes, the EMA target, LARS, presets and the command line (fast, single process)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torchvision

from scaled.config import UserError
from scaled.model import SSLModel, build_backbone, count_parameters, target_tau
from scaled.optim import LARS, build_optimizer, warmup_cosine
from scaled.options import parse_config
from scaled.presets import PRESETS, demo
from scaled.pretrain import main


def test_resnet50_is_torchvisions_without_fc():
    ours = count_parameters(build_backbone(replace(demo(), arch="resnet50")))
    tv = torchvision.models.resnet50(weights=None)
    assert ours == count_parameters(tv) - count_parameters(tv.fc) == 23_508_032


def test_resnet50x2_doubles_every_layer():
    net = build_backbone(replace(demo(), arch="resnet50x2"))
    assert 93_000_000 < count_parameters(net) < 95_000_000  # SimCLR/BYOL: ~94M
    assert net.conv1.out_channels == 128 and net.num_features == 4096
    wide = count_parameters(torchvision.models.wide_resnet50_2(weights=None))
    assert count_parameters(net) != wide - 2048 * 1000 - 1000  # not torchvision's wide net


def test_resnet18_and_small_shapes():
    assert count_parameters(build_backbone(replace(demo(), arch="resnet18"))) == 11_176_512
    net = build_backbone(demo(), in_channels=1)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, net.num_features)


def test_target_is_ema_of_online_and_copies_buffers():
    cfg = replace(demo(), width=8, proj_hidden=16, proj_out=8)
    model = SSLModel(cfg, 1, 10)
    before = [p.clone() for p in model.target.parameters()]
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(1.0)
        model.online.backbone.bn1.running_mean.fill_(3.0)
    model.update_target(0.9)
    online = [*model.online.backbone.parameters(), *model.online.projector.parameters()]
    for t, b, o in zip(model.target.parameters(), before, online):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    assert torch.all(model.target.backbone.bn1.running_mean == 3.0)
    assert not any(p.requires_grad for p in model.target.parameters())


def test_schedules():
    assert target_tau(0, 100, 0.996) == pytest.approx(0.996)
    assert target_tau(100, 100, 0.996) == pytest.approx(1.0)
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)


def test_lars_skips_biases_and_norms_and_matches_formula():
    cfg = replace(demo(), width=8, proj_hidden=16, proj_out=8, weight_decay=0.1, optimizer="lars")
    model = SSLModel(cfg, 1, 10)
    opt = build_optimizer(model.online, cfg)
    assert isinstance(opt, LARS)
    excluded = [g for g in opt.param_groups if g["lars_exclude"]]
    assert all(p.ndim == 1 or g["weight_decay"] == 0 for g in excluded for p in g["params"])
    assert all(g["weight_decay"] == 0 for g in excluded)
    w = model.online.projector[0].weight
    w.grad = torch.ones_like(w)
    for p in model.online.parameters():
        if p is not w:
            p.grad = None
    w0 = w.detach().clone()
    opt.step()
    d = torch.ones_like(w0) + 0.1 * w0
    trust = 1e-3 * w0.norm() / d.norm()
    lr = opt.param_groups[0]["lr"]
    torch.testing.assert_close(w.detach(), w0 - lr * trust * d)


def test_every_preset_is_valid_and_documented():
    for name, make in PRESETS.items():
        cfg = parse_config(["--preset", name])
        assert cfg == make()
        doc = make.__doc__ or ""
        assert "Command:" in doc and "Hardware:" in doc and "Expected result:" in doc
        if name.startswith("imagenet"):
            assert "not run here" in doc


def test_overrides_and_bool_flags():
    cfg = parse_config(["--preset", "demo", "--lr", "0.5", "--no-target-network"])
    assert cfg.lr == 0.5 and cfg.target_network is False


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--preset", "nope"], "valid presets: imagenet_r50_minc"),
        (["--preset", "demo", "--no-such-option"], "--no-such-option"),
        (["--preset", "demo", "--method", "bogus"], "invalid choice"),
        (["--preset", "demo", "--batch-size", "30", "--accum-steps", "4"], "not divisible"),
        (["--preset", "demo", "--data-dir", "/nonexistent/x"], "/nonexistent/x"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, needle, capsys, tmp_path):
    code = main([*argv, "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err
    assert "Traceback" not in err


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--preset", "--method", "--batch-size", "--resume", "--fault-inject", "--beta"):
        assert flag in out


def test_usererror_is_the_library_error():
    with pytest.raises(UserError):
        parse_config(["--preset", "demo", "--alpha", "1.0", "--method", "alpha"])
