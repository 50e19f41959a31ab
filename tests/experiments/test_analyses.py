"""scaled/tools/gradvar.py and scaled/tools/signature.py: the numbers they compute, quick modes.

No assertion says which estimator or method wins: any honest outcome must pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from reference.tolerances import tol
from scaled.tools import gradvar, signature


def test_relative_variance_of_known_samples():
    mean = torch.tensor([3.0, 4.0], dtype=torch.float64)  # |mean|^2 = 25
    noise = [torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])]
    samples = [mean + n.double() for n in noise]
    # unbiased: sum of squared deviations 2 over (2 - 1) batches, divided by 25
    assert gradvar.relative_variance(samples) == pytest.approx(2.0 / 25.0, rel=1e-12)
    assert gradvar.relative_variance([mean, mean, mean]) == 0.0


def test_cbar_signature_of_an_ordered_diagonal_and_of_a_full_matrix(rng):
    ordered = signature.cbar_signature(np.diag([4.0, 3.0, 2.0, 1.0]))
    assert ordered == {"offdiag_rel": 0.0, "spearman": pytest.approx(-1.0)}
    A = rng.standard_normal((6, 6))
    full = signature.cbar_signature(A @ A.T)
    assert 0.0 < full["offdiag_rel"] < 1.0 and -1.0 <= full["spearman"] <= 1.0
    assert math.isnan(signature.cbar_signature(np.eye(3))["spearman"])  # no order to rank


def test_signature_settings_cover_methods_norms_and_small_k():
    grid = signature.settings(extra=False)
    assert {s["method"] for s in grid} == {"minc", "noncontrastive"}
    assert {s["proj_out"] for s in grid} == {64, 8} and len({s["feature_norm"] for s in grid}) == 2
    extra = signature.settings(extra=True)
    assert any(s.get("target") is False for s in extra) and any("lr_scale" in s for s in extra)
    bn = [s for s in extra if "projector" in s]
    assert {s["proj_out"] for s in bn} == {64, 8}
    cfg = signature.run_config(bn[0], steps=300, points=6, seed=1, out="unused")
    assert cfg.projector == "simclr"
    assert signature.run_config(grid[0], 300, 6, 1, "unused").projector == "byol"


def test_signature_config_checkpoints_along_the_run(tmp_path):
    s = {"method": "noncontrastive", "feature_norm": 0.0, "proj_out": 8, "lr_scale": 0.5}
    cfg = signature.run_config(s, steps=300, points=6, seed=1, out=str(tmp_path))
    assert (cfg.method, cfg.proj_out, cfg.max_steps, cfg.checkpoint_every) == (
        "noncontrastive",
        8,
        300,
        50,
    )
    assert cfg.keep_checkpoints >= 300 // 15 + 6 and cfg.seed == 1  # epoch-end saves too
    assert cfg.lr == pytest.approx(
        0.5 * signature.run_config({**s, "lr_scale": 1.0}, 300, 6, 1, str(tmp_path)).lr
    )


def test_gradvar_measures_three_finite_estimators_at_init():
    from scaled.data import pretrain_dataset
    from scaled.model import SSLModel
    from scaled.presets import demo

    cfg = dataclasses.replace(demo(), width=8, proj_hidden=32, proj_out=8)
    torch.manual_seed(0)
    model = SSLModel(cfg, 1, 10)
    dataset = pretrain_dataset(cfg)[0]
    cells = gradvar.measure(cfg, model, dataset, B=8, batches=3, burn_in=2, seed=0)
    abs_keys = {f"{n}_abs" for n in gradvar.ESTIMATORS}
    ci_keys = {"spectral_over_ema_abs_ci", "batch_C_over_ema_abs_ci"}
    assert set(cells) == set(gradvar.ESTIMATORS) | abs_keys | ci_keys
    assert all(math.isfinite(v) and v > 0 for k, v in cells.items() if k not in ci_keys)
    lo, hi = cells["batch_C_over_ema_abs_ci"]
    assert 0 < lo <= hi


def test_variance_from_the_gram_matrix_and_its_bootstrap_interval(rng):
    """All batches drawn once: the Gram form equals `absolute_variance` (float64 row); the
    paired bootstrap interval of a ratio holds the ratio of two estimators whose noise differs
    by a known factor, and is narrow when they share their batches."""
    noise = rng.standard_normal((64, 50))
    a = [torch.from_numpy(3.0 + n) for n in noise]  # a mean, then unit noise
    b = [
        torch.from_numpy(3.0 + 2.0 * n + 0.1 * m)
        for n, m in zip(noise, rng.standard_normal((64, 50)))
    ]
    K_a, K_b = gradvar.centred_gram(a), gradvar.centred_gram(b)
    once = np.ones((1, 64))
    assert gradvar.variance_from_counts(K_a, once)[0] == pytest.approx(
        gradvar.absolute_variance(a), rel=tol("float64")["rtol"]
    )
    lo, hi = gradvar.ratio_interval(K_b, K_a, seed=0)
    ratio = gradvar.absolute_variance(b) / gradvar.absolute_variance(a)
    assert lo < ratio < hi and 3.9 < lo and hi < 4.2  # 4 + 0.01, the batches shared


def test_gradvar_refuses_one_batch(tmp_path, capsys):
    assert gradvar.main(["--batches", "1", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --batches 1") and len(err.splitlines()) == 1


def test_gradvar_table_and_ratios_come_from_the_cells():
    cells = {"init": {"32": {"spectral": 4.0, "minc_batch_C": 2.0, "minc_ema_Cbar": 1.0}}}
    result = {"cells": cells, "batches": 2}
    assert gradvar.ema_advantage(cells["init"]) == {
        "32": {"spectral_over_ema": 4.0, "batch_C_over_ema": 2.0}
    }
    assert "| init | 32 | 4 | 2 | 1 | 4.00 | 2.00 | — | — |" in gradvar.markdown_table(result)


def test_signature_refuses_an_unknown_budget(tmp_path, capsys):
    args = argparse.Namespace(budget="huge", steps=None, seed=0, only_k=None, output_dir=tmp_path)
    with pytest.raises(Exception, match="unknown"):
        signature.signature_command(args)
    assert signature.main(["--budget", "huge", "--output-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: --budget")
    assert not (tmp_path / "signature.json").exists()
    json.dumps(signature.settings(False))  # the settings go into the JSON as they are


@pytest.mark.slow
def test_gradvar_quick_run_writes_json_and_png(tmp_path):
    assert gradvar.main(["--quick", "--output-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gradvar.json").read_text())
    assert result["quick"] and set(result["cells"]) == {"init"}
    assert set(result["cells"]["init"]) == {"8", "16"}
    assert (tmp_path / "gradvar.png").stat().st_size > 0


@pytest.mark.slow
def test_signature_quick_run_reads_cbar_from_its_checkpoints(tmp_path):
    assert signature.main(["--budget", "quick", "--output-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "signature.json").read_text())
    assert len(result["runs"]) == 2 and not any(r["diverged"] for r in result["runs"])
    for run in result["runs"]:
        assert [r["step"] for r in run["trajectory"]][-1] == 4
        assert all(0.0 <= r["offdiag_rel"] <= 1.0 for r in run["trajectory"])
        assert len(run["final_diag"]) == run["setting"]["proj_out"]
    assert (tmp_path / "signature.png").stat().st_size > 0


def test_signature_refuses_a_run_without_cbar(tmp_path, capsys):
    """A SimCLR run keeps no Cbar: a one-line error, not a row of NaNs."""
    from scaled.pretrain import main as pretrain

    run = tmp_path / "simclr"
    argv = ["--preset", "demo", "--max-steps", "1", "--batch-size", "16", "--device", "cpu"]
    assert pretrain([*argv, "--method", "simclr", "--output-dir", str(run)]) == 0
    capsys.readouterr()
    assert signature.main(["--runs", str(run), "--output-dir", str(tmp_path / "sig")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "simclr run, which keeps no Cbar" in err
    assert err.count("\n") == 1
