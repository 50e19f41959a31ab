"""Each baseline preset is its authors' published recipe, as `--print-config` shows it.

The authors' numbers are written ONCE below, one dict per source file (values read from the
authors' public code, see the preset docstrings in scaled/config.py); the test compares the
JSON that ``pretrain.py --print-config`` prints. Also: the networks and optimiser groups those
recipes need (SimSiam's non-affine last BN and fixed predictor lr, HaoChen's BN-without-ReLU
output, weight decay on every parameter).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from scaled.model import OnlineNetwork
from scaled.optim import build_optimizer, build_scheduler
from scaled.options import parse_config
from scaled.presets import PRESETS
from scaled.pretrain import main

# facebookresearch/simsiam: main_simsiam.py (--lr 0.05, -b 512, --wd 1e-4, --momentum 0.9,
# --epochs 100, SGD, no warm-up, --fix-pred-lr of the README command, MoCo v2 crop 0.2) and
# simsiam/builder.py (dim 2048, pred_dim 512, zero_init_residual=True).
SIMSIAM = {
    "method": "simsiam", "lr": 0.05, "batch_size": 512, "weight_decay": 1e-4, "momentum": 0.9,
    "epochs": 100, "optimizer": "sgd", "warmup_epochs": 0.0, "fix_pred_lr": True,
    "exclude_bias_bn": False, "proj_hidden": 2048, "proj_out": 2048, "pred_hidden": 512,
    "projector": "simsiam", "zero_init_residual": True, "augment": "simsiam",
    "crop_scale_min": 0.2, "sync_bn": True,
}  # fmt: skip
# jhaochenz96/spectral_contrastive_learning:
# configs/spectral_resnet_mlp8192_norelu_3layer_imagenet_lr005_mu10_bs384_100eps.yaml
# (mu 10, sgd, wd 0.0001, momentum 0.9, warmup 0, base_lr 0.05, num_epochs 101, batch 384),
# models/spectral.py (clip), resnet_mlp_norelu_3layer.py (8192, 3 layers, zero-init residual).
HAOCHEN = {
    "method": "spectral", "feature_norm": 10.0, "feature_norm_kind": "clip", "optimizer": "sgd",
    "weight_decay": 1e-4, "momentum": 0.9, "warmup_epochs": 0.0, "lr": 0.05, "epochs": 101,
    "batch_size": 384, "proj_hidden": 8192, "proj_out": 8192, "projector": "haochen",
    "zero_init_residual": True, "exclude_bias_bn": False, "augment": "simsiam",
    "crop_scale_min": 0.2, "include_diagonal": False,
}  # fmt: skip
# deepmind/deepmind-research byol/configs/byol.py: the 100-epoch presets (lr 0.45, wd 1e-6,
# ema 0.99), warm-up 10 epochs, LARS momentum 0.9, widths 4096 / 256 / 4096;
# byol/main_loop.py: batch 4096.
BYOL_100 = {
    "method": "byol", "lr": 0.45, "weight_decay": 1e-6, "tau_base": 0.99, "warmup_epochs": 10.0,
    "optimizer": "lars", "momentum": 0.9, "proj_hidden": 4096, "proj_out": 256,
    "pred_hidden": 4096, "batch_size": 4096, "epochs": 100, "exclude_bias_bn": True,
    "augment": "byol", "crop_scale_min": 0.08,
}  # fmt: skip
# google-research/simclr README at 85e8552 L61-63 (batch 4096, 100 epochs, lr 0.3, wd 1e-6,
# temperature 0.1) and run.py (warm-up 10, LARS, momentum 0.9, proj_out_dim 128).
SIMCLR = {
    "method": "simclr", "batch_size": 4096, "epochs": 100, "lr": 0.3, "weight_decay": 1e-6,
    "temperature": 0.1, "warmup_epochs": 10.0, "optimizer": "lars", "momentum": 0.9,
    "proj_hidden": 2048, "proj_out": 128, "projector": "simclr", "exclude_bias_bn": True,
    "augment": "simclr", "crop_scale_min": 0.08, "sync_bn": True,
}  # fmt: skip

EXPECTED = {
    "imagenet_r50_simsiam": SIMSIAM,
    "imagenet_r50_spectral_haochen": HAOCHEN,
    "imagenet_r50_byol": {**BYOL_100, "predictor": "mlp"},
    "imagenet_r50_linear_byol": {**BYOL_100, "predictor": "linear"},
    "imagenet_r50_simclr": SIMCLR,
}


def printed_config(capsys, argv: list[str]) -> dict:
    assert main([*argv, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_print_config_shows_the_published_recipe(preset, capsys):
    printed = printed_config(capsys, ["--preset", preset])
    assert printed["arch"] == "resnet50"
    wrong = {k: (printed[k], v) for k, v in EXPECTED[preset].items() if printed[k] != v}
    assert not wrong, f"{preset}: (printed, published) {wrong}"


def test_print_config_applies_overrides_and_trains_nothing(capsys, tmp_path):
    out = tmp_path / "never"
    argv = ["--preset", "imagenet_r50_simsiam", "--batch-size", "256", "--output-dir", str(out)]
    printed = printed_config(capsys, argv)
    assert printed["batch_size"] == 256 and printed["lr"] == 0.05
    assert not out.exists()


def test_apples_to_apples_spectral_shares_mincs_recipe():
    minc, spec = PRESETS["imagenet_r50_minc"](), PRESETS["imagenet_r50_spectral"]()
    differ = {f for f in minc.__dataclass_fields__ if getattr(minc, f) != getattr(spec, f)}
    assert differ == {"method"}


def _tiny(preset: str, **over) -> OnlineNetwork:
    argv = ["--preset", preset, "--arch", "resnet18", "--proj-hidden", "32", "--proj-out", "16"]
    argv += ["--pred-hidden", "8"]
    for k, v in over.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    cfg = parse_config(argv)
    return cfg, OnlineNetwork(cfg, 3, 0)


def test_simsiam_networks_and_fixed_predictor_lr():
    cfg, net = _tiny("imagenet_r50_simsiam")
    last = net.projector[-1]
    assert isinstance(last, nn.BatchNorm1d) and not last.affine
    assert len([m for m in net.projector if isinstance(m, nn.Linear)]) == 3
    assert [m.out_features for m in net.predictor if isinstance(m, nn.Linear)] == [8, 16]
    assert isinstance(net.predictor[1], nn.BatchNorm1d)
    bn3 = net.backbone.layer1[0].bn2  # BasicBlock's last BN: zero-init residual
    assert torch.count_nonzero(bn3.weight) == 0
    opt = build_optimizer(net, cfg)
    sched = build_scheduler(opt, total_steps=10, warmup_steps=0)
    peak = cfg.lr * cfg.batch_size / 256
    for _ in range(5):
        opt.step()
        sched.step()
    pred_ids = {id(p) for p in net.predictor.parameters()}
    for g in opt.param_groups:
        is_pred = all(id(p) in pred_ids for p in g["params"])
        assert (g["lr"] == pytest.approx(peak)) == is_pred, g["lr"]
    assert all(g["weight_decay"] == cfg.weight_decay for g in opt.param_groups)  # BN included


def test_haochen_projector_ends_in_bn_without_relu():
    _, net = _tiny("imagenet_r50_spectral_haochen")
    kinds = [type(m) for m in net.projector]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear, nn.BatchNorm1d]
    assert net.projector[-1].affine


def test_byol_and_simclr_exclude_bias_and_bn_from_decay_and_lars():
    for preset in ("imagenet_r50_byol", "imagenet_r50_simclr"):
        cfg, net = _tiny(preset)
        opt = build_optimizer(net, cfg)
        for g in opt.param_groups:  # no online probe here (0 classes)
            one_d = all(p.ndim == 1 for p in g["params"])
            assert g["lars_exclude"] == one_d and (g["weight_decay"] == 0.0) == one_d
