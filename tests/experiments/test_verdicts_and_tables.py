"""The table and verdict functions that claims rest on, each fed inputs with a known answer.

- `signature.markdown_table` (scaled/tools/signature.py): one row per setting, the steps, the
  first and last `offdiag_rel` (logged where recorded), Spearman first -> last and the mean of
  the second half's checkpoints; a diverged setting gets its own row.
- the bench variance verdict (scaled/tools/bench/variance.py): "lower" / "higher" only where the
  95% paired t interval over seeds of the spectral / MINC error ratio excludes 1, else "not
  resolved" (it used to compare the means only, and called a 1-sd difference "lower").
- gradvar's `ABS_SCALE` (scaled/tools/gradvar.py): the spectral gradient is twice the MINC one
  (Eq. 9), so its absolute variance is divided by 4; `measure` applies it to the variances and
  to both ends of the ratio's bootstrap interval.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from reference import losses as ref
from reference.tolerances import tol
from scaled.tools import gradvar, signature
from scaled.tools.bench import variance
from tests.conftest import make_graph
from tests.gradient_checks import assert_gradient_close

# --- signature.markdown_table -----------------------------------------------------------------

SETTING = {"method": "minc", "feature_norm": 1.0, "proj_out": 8}
TRAJECTORY = [
    {"step": 100, "offdiag_rel": 0.5, "spearman": 0.1},
    {"step": 200, "offdiag_rel": 0.3, "spearman": -0.5},
    {"step": 400, "offdiag_rel": 0.2, "spearman": -0.9},
]


def test_signature_table_rows_come_from_the_trajectory_and_the_log():
    logged = [{"step": 10, "offdiag_rel": 0.9}, {"step": 390, "offdiag_rel": 0.25}]
    runs = [
        {"setting": SETTING, "diverged": False, "trajectory": TRAJECTORY, "logged_offdiag": logged},
        {"setting": {**SETTING, "method": "noncontrastive", "run": "r2"}, "diverged": False,
         "trajectory": TRAJECTORY, "logged_offdiag": []},
        {"setting": {**SETTING, "proj_out": 64, "target": False}, "diverged": True},
    ]  # fmt: skip
    lines = signature.markdown_table({"runs": runs}).splitlines()
    assert len(lines) == 2 + len(runs)
    assert lines[0].count("|") == lines[1].count("|") == 6
    # logged offdiag from its first log step; Spearman of the checkpoints; second half: steps
    # >= 400 / 2, i.e. -0.5 and -0.9, mean -0.70 (all three would give -0.43, the last -0.90)
    assert lines[2] == "| minc, fn 1, k 8 | 10 → 400 | 0.90 → 0.25 | +0.10 → -0.90 | -0.70 |"
    assert lines[3] == (
        "| noncontrastive, fn 1, k 8 (run r2) | 100 → 400 | 0.50 → 0.20 | +0.10 → -0.90 | -0.70 |"
    )  # nothing logged: the checkpoints' offdiag
    assert lines[4] == "| minc, fn 1, k 64, no target | diverged | — | — | — |"


def test_signature_table_second_half_mean_skips_undefined_spearman():
    trajectory = [
        {**r, "spearman": math.nan if r["step"] == 200 else r["spearman"]} for r in TRAJECTORY
    ]
    run = {"setting": SETTING, "diverged": False, "trajectory": trajectory}
    assert signature.markdown_table({"runs": [run]}).splitlines()[2].endswith("| -0.90 |")


# --- the bench variance verdict -----------------------------------------------------------


def verdict_rows(spectral: list[float], minc: list[float]) -> list[dict]:
    """Rows of one point and one B: spectral and every MINC estimator with the given seeds."""
    names = ("spectral", "minc, batch C", "minc, EMA C", "minc, exact C")
    return [
        {"point": "p", "B": 8, "estimator": n, "rel_mse_seeds": v, "rel_mse_mean": np.mean(v)}
        for n, v in zip(names, [spectral, minc, minc, minc])
    ]


def test_variance_verdict_says_lower_only_when_the_paired_interval_excludes_one():
    # every seed: spectral 20% above MINC (paired): resolved
    text = variance.variance_verdict(verdict_rows([1.2, 2.4, 1.8], [1.0, 2.0, 1.5]), ["p"], [8])
    assert (
        "minc, EMA C: lower error than spectral at every B (spectral/MINC error ratio 1.2" in text
    )
    # means 1 sd apart (spectral 1.1 +- 0.1 vs MINC 1.0 +- 0.1) but not in the same direction
    # on every seed: the old verdict said "lower", the paired interval holds 1
    spectral, minc = [1.2, 1.0, 1.1], [0.9, 1.1, 1.0]
    assert np.mean(spectral) - np.mean(minc) == pytest.approx(np.std(minc, ddof=1))
    text = variance.variance_verdict(verdict_rows(spectral, minc), ["p"], [8])
    assert "minc, EMA C: not resolved at any B" in text and "lower" not in text.split(":\n")[1]
    text = variance.variance_verdict(verdict_rows([1.0, 2.0, 1.5], [1.2, 2.4, 1.8]), ["p"], [8])
    assert "higher error than spectral at every B" in text
    rows = verdict_rows([1.2, 2.4, 1.8], [1.0, 2.0, 1.5])
    rows += [{**r, "B": 32, "rel_mse_seeds": s} for r, s in zip(rows, [spectral] + 3 * [minc])]
    text = variance.variance_verdict(rows, ["p"], [8, 32])
    assert "minc, EMA C: lower at B = 8 and not resolved at B = 32 (spectral/MINC" in text


def test_paired_ratio_interval_is_a_t_interval_of_the_log_ratios():
    ratio, lo, hi = variance.paired_ratio_interval([2.0, 4.0, 8.0], [1.0, 1.0, 1.0])
    d = np.log([2.0, 4.0, 8.0])
    half = 4.302652729911275 * d.std(ddof=1) / math.sqrt(3)  # t_{0.975, 2}
    np.testing.assert_allclose(
        [ratio, lo, hi], np.exp([d.mean(), d.mean() - half, d.mean() + half]), **tol("float64")
    )
    one = variance.paired_ratio_interval([2.0], [1.0])
    assert (
        one[0] == 2.0
        and math.isnan(one[1])
        and variance.ratio_word(one[1], one[2]) == "not resolved"
    )


def test_variance_verdict_of_rows_without_seeds_is_not_resolved():
    rows = verdict_rows([1.9, 3.8], [1.0, 2.0])
    rows = [{k: v for k, v in r.items() if k != "rel_mse_seeds"} for r in rows]
    text = variance.variance_verdict(rows, ["p"], [8])
    assert "not resolved at any B (spectral/MINC error ratio 1.9 to 1.9)" in text


# --- gradvar's ABS_SCALE ------------------------------------------------------------------


def test_abs_scale_is_the_square_of_eq9s_factor_two():
    """The spectral gradient is twice the non-contrastive (MINC without GHA) one (Eq. 9): in
    MINC-gradient units its variance is divided by 2^2 = 4, the MINC ones by 1."""
    W, k = make_graph("sbm")
    phi = np.random.default_rng(0).standard_normal((W.shape[0], k))
    g_spec, g_nc = ref.spectral_loss_grad(phi, W), ref.minc_loss_grad(phi, W, gha=False)
    assert_gradient_close(0.5 * g_spec, g_nc, "float64", "Eq. 9")
    ratio = np.sum(g_nc**2) / np.sum(g_spec**2)
    assert gradvar.ABS_SCALE["spectral"] == pytest.approx(ratio, rel=tol("float64")["rtol"])
    assert gradvar.ABS_SCALE["minc_batch_C"] == gradvar.ABS_SCALE["minc_ema_Cbar"] == 1.0


def test_measure_reports_a_spectral_gradient_of_twice_minc_as_equal(monkeypatch):
    """Batches whose spectral gradient is exactly 2x the EMA one: `measure` reports equal
    absolute variances and a ratio interval of exactly [1, 1] (a wrong ABS_SCALE, or an interval
    scaled by one factor only, would not); the batch-C one, 3x, reads 9."""
    g = np.random.default_rng(0)
    stream = iter(torch.from_numpy(g.standard_normal(50)) for _ in range(100))

    def gradients(cfg, model, x1, x2, targets, C, Cbar):
        base = next(stream)
        return {"spectral": 2.0 * base, "minc_batch_C": 3.0 * base, "minc_ema_Cbar": base}

    monkeypatch.setattr(gradvar, "draw_batch", lambda dataset, B, rng, epoch: (None, None))
    monkeypatch.setattr(gradvar, "target_statistics", lambda *a: (None, None, torch.eye(2)))
    monkeypatch.setattr(gradvar, "batch_gradients", gradients)
    model = SimpleNamespace(train=lambda: None)
    cells = gradvar.measure(SimpleNamespace(beta=0.8), model, None, 8, 20, 2, seed=0)
    rtol = tol("float64")["rtol"]
    assert cells["spectral_abs"] == pytest.approx(cells["minc_ema_Cbar_abs"], rel=rtol)
    assert cells["minc_batch_C_abs"] == pytest.approx(9 * cells["minc_ema_Cbar_abs"], rel=rtol)
    np.testing.assert_allclose(cells["spectral_over_ema_abs_ci"], [1.0, 1.0], **tol("float64"))
    np.testing.assert_allclose(cells["batch_C_over_ema_abs_ci"], [9.0, 9.0], **tol("float64"))
    assert cells["spectral"] == pytest.approx(cells["minc_ema_Cbar"], rel=rtol)  # scale-free
