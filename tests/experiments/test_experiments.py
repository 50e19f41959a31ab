"""Plumbing of scaled/tools/experiments.py: files, keys, seeds and config recorded, finite numbers.

No assertion here says which method wins: any honest outcome must pass.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from scaled.tools import experiments as ex


def test_summarise_mean_std_and_values():
    s = ex.summarise([1.0, 3.0])
    assert {k: s[k] for k in ("values", "mean", "std")} == {
        "values": [1.0, 3.0],
        "mean": 2.0,
        "std": 1.0,
    }
    # 95% half-width t_{0.975, 1} s / sqrt(2) with s = sqrt(2): the t quantile itself (12.706)
    assert s["ci95"] == pytest.approx(12.7062047, rel=1e-6)
    # five values 1..5: s = sqrt(2.5), t_{0.975, 4} = 2.7764451
    five = ex.summarise([1.0, 2.0, 3.0, 4.0, 5.0])
    assert five["ci95"] == pytest.approx(2.7764451 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert math.isnan(ex.summarise([1.0])["ci95"])
    assert math.isnan(ex.summarise([1.0, math.nan])["mean"])


@pytest.mark.parametrize(
    ("alpha", "k", "estimator", "m"),
    [(2.0, 32, "moment", "m = 2"), (1.5, 32, "moment", "m = 3"), (1.25, 32, "pairwise", "m = 5")],
)
def test_alpha_estimator_integer_exponents(alpha, k, estimator, m):
    est, why = ex.alpha_estimator(alpha, k)
    assert est == estimator and why.startswith(m)


def test_alpha_estimator_non_integer_uses_pairwise_with_max():
    est, why = ex.alpha_estimator(3.0, 32)
    assert est == "pairwise" and "max(s, 0)" in why


def test_graph_run_metrics_are_finite_and_named():
    budget = ex.GraphBudget(steps=20)
    m = ex.graph_run(budget, seed=0, batch_size=32)
    assert set(m) >= {"subspace_distance", "mean_col_cos", "min_col_cos", "diverged"}
    assert m["diverged"] == 0.0
    assert all(math.isfinite(v) for v in m.values())
    assert 0.0 <= m["mean_col_cos"] <= 1.0 + 1e-12


def test_span_distance_defined_for_a_collapsed_table(rng):
    V = np.linalg.qr(rng.standard_normal((10, 3)))[0]
    F = np.outer(rng.standard_normal(10), np.ones(3))  # rank one: all columns equal
    d = ex._span_distance(F, V)
    assert math.isfinite(d) and d > 0


def _fake_result() -> dict:
    row = ex.Row("graph", {"method": "minc"}, {"subspace_distance": ex.summarise([0.1, 0.3])})
    return {
        "experiment": "aux_ema",
        "command": "python -m scaled.tools.experiments aux_ema",
        "seeds": [0, 1],
        "digits_seeds": [0],
        "config": {"quick": True},
        "elapsed_seconds": 1.0,
        "git": {"sha": "abc"},
        "devices": {"cpu_count": 2, "cpu": "test"},
        "rows": [row.to_json()],
    }


def test_markdown_table_shows_mean_and_std():
    table = ex.markdown_tables(_fake_result())
    assert "| method | subspace_distance |" in table
    assert "0.200 ± 1.271" in table  # 95% half-width of two seeds 0.1, 0.3


def test_paired_differences_are_taken_seed_by_seed_against_the_reference_row():
    """spectral - minc per seed: +0.02, +0.025, +0.03 (mean 0.025, half-width t_{0.975,2} 0.005 /
    sqrt(3) = 0.0124: resolved, bold), while the unpaired intervals of the two rows overlap; the
    reference row itself and cost metrics get no row or column."""
    minc = [0.90, 0.95, 0.80]
    rows = [
        ex.Row("digits", {"method": "minc"}, {"probe_top1": ex.summarise(minc)}),
        ex.Row(
            "digits",
            {"method": "spectral"},
            {
                "probe_top1": ex.summarise([m + d for m, d in zip(minc, (0.02, 0.025, 0.03))]),
                "train_seconds": ex.summarise([1.0, 2.0, 3.0]),
            },
        ),
    ]
    result = {**_fake_result(), "experiment": "minc_vs_spectral", "digits_seeds": [0, 1, 2]}
    result["rows"] = [r.to_json() for r in rows]
    lines = ex.paired_differences(result, "digits")
    assert "| difference | Δ probe_top1 |" in lines
    assert lines[-2] == "| method spectral − method minc | **0.025 ± 0.012** |"
    a, b = (r.metrics["probe_top1"] for r in rows)
    assert b["mean"] - b["ci95"] < a["mean"] + a["ci95"]  # unpaired: not resolved
    assert ex.paired_differences({**result, "digits_seeds": [0]}, "digits") == []
    assert "Paired by seed (digits)" in ex.markdown_tables(result)


def test_paired_differences_match_within_the_group_keys():
    rows = [
        ex.Row("graph", {"method": m, "batch_size": b}, {"d": ex.summarise(v)})
        for m, b, v in (
            ("minc", 32, [1.0, 2.0]),
            ("minc", 64, [5.0, 5.0]),
            ("spectral", 32, [2.0, 3.0]),
            ("spectral", 64, [6.0, 7.0]),
        )
    ]
    result = {**_fake_result(), "experiment": "batch_size", "rows": [r.to_json() for r in rows]}
    lines = ex.paired_differences(result, "graph")
    assert (
        "| method spectral, batch_size 32 − method minc, batch_size 32 | **1.000 ± 0.000** |"
        in lines
    )
    assert any(
        line.startswith("| method spectral, batch_size 64 − method minc, batch_size 64 | 1.500")
        for line in lines
    )


def test_write_docs_replaces_only_between_markers(tmp_path):
    (tmp_path / "aux_ema.json").write_text(json.dumps(_fake_result()))
    docs = tmp_path / "results.md"
    docs.write_text(f"before\n\n{ex.DOCS_BEGIN}\nold\n{ex.DOCS_END}\nafter\n")
    ex.write_docs(tmp_path, docs)
    text = docs.read_text()
    assert text.startswith("before\n") and text.endswith("after\n")
    assert "old" not in text and "0.200 ± 1.271" in text
    ex.write_docs(tmp_path, docs)  # idempotent
    assert docs.read_text() == text


@pytest.mark.parametrize("argv", [["nonsense"], ["alpha", "--seeds", "0"]])
def test_cli_user_errors_are_one_line(argv, capsys):
    assert ex.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


@pytest.mark.parametrize("argv", [["docs"], ["aux_ema", "--quick", "--write-docs"]])
def test_docs_outside_a_checkout_is_one_line_error(argv, monkeypatch, tmp_path, capsys):
    from scaled.tools import provenance

    monkeypatch.setattr(provenance, "PACKAGE_PARENT", tmp_path)  # like an installed package
    assert ex.main([*argv, "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--write-docs needs a source checkout" in err[0]
    assert not (tmp_path / "out").exists(), "it ran before refusing"


def test_docs_section_of_the_committed_results_is_replaced_in_place(tmp_path):
    """Regenerating the section from docs/results/*.json keeps one section, the text around it,
    and every table that is in the docs now."""
    root = Path(__file__).resolve().parents[2]
    docs = tmp_path / "results.md"
    before = (root / "docs" / "results.md").read_text()
    docs.write_text(before)
    ex.write_docs(root / "docs" / "results", docs)
    after = docs.read_text()
    assert after.count(ex.DOCS_BEGIN) == 1 and after.count(ex.DOCS_END) == 1
    assert after.split(ex.DOCS_BEGIN)[0] == before.split(ex.DOCS_BEGIN)[0]
    assert after.split(ex.DOCS_END)[1] == before.split(ex.DOCS_END)[1]
    tables = [line for line in before.split(ex.DOCS_BEGIN)[1].splitlines() if line.startswith("|")]
    assert tables and all(line in after for line in tables)


@pytest.mark.slow
def test_quick_run_writes_json_and_png(tmp_path):
    assert ex.main(["gha_target", "--quick", "--output-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gha_target.json").read_text())
    assert (tmp_path / "gha_target.png").stat().st_size > 0
    assert set(result) >= {"experiment", "command", "seeds", "config", "rows", "git", "versions"}
    assert result["seeds"] == [0] and result["digits_seeds"] == [0]
    assert result["config"]["quick"] is True
    assert {"graph", "digits"} <= set(result["config"])
    problems = {r["problem"] for r in result["rows"]}
    assert problems == {"graph", "digits"}
    assert len(result["rows"]) == 8  # 4 cells on each problem
    for row in result["rows"]:
        diverged = row["metrics"]["diverged"]["values"]
        for name, summary in row["metrics"].items():
            assert len(summary["values"]) == 1
            for value, bad in zip(summary["values"], diverged):
                assert bad == 1.0 or math.isfinite(value), (row["setting"], name)


def test_every_full_budget_setting_builds_a_valid_config(monkeypatch, tmp_path):
    """Each experiment's full-budget settings reach a valid trainer config (no training run).

    The runs are replaced by stubs that build the real `PretrainConfig` (validated) and return
    placeholder metrics, so a setting the trainer would reject fails here in a second.
    """
    from scaled.tools import experiments as ex

    built = []

    def fake_digits_run(budget, seed, *, random_init=False, **overrides):
        built.append(ex.digits_config(budget, seed, str(tmp_path), **overrides))
        return {"probe_top1": 0.5, "knn_top1": 0.5, "effective_rank": 1.0, "diverged": 0.0}

    def fake_graph_run(budget, seed, **kwargs):
        return {"subspace_distance": 0.1, "mean_col_cos": 0.9, "effective_rank": 1.0}

    monkeypatch.setattr(ex, "digits_run", fake_digits_run)
    monkeypatch.setattr(ex, "graph_run", fake_graph_run)
    budget = ex.make_budget(quick=False, seeds=1, digits_seeds=1)
    for name in ex.EXPERIMENT_NAMES:
        rows = ex.EXPERIMENTS[name](budget)
        assert rows, name
    assert {c.method for c in built} >= {"minc", "spectral", "alpha", "simclr", "byol"}


def test_digits_budget_uses_the_demo_batch():
    """The ablations run the demo's recipe: its batch, and its optimiser through `digits_config`."""
    from scaled.presets import demo

    assert ex.DigitsBudget().batch_size == demo().batch_size
    cfg = ex.digits_config(ex.DigitsBudget(), seed=1, output_dir="unused")
    assert (cfg.optimizer, cfg.lr, cfg.feature_norm) == (
        demo().optimizer,
        demo().lr,
        demo().feature_norm,
    )


def test_digits_runs_train_whole_epochs_and_report_the_steps_that_ran(tmp_path):
    """The budget's 1000 steps become whole epochs of the 3500 training digits (no truncated
    cosine); what a run reports is read from its own log and checkpoints, not from the config."""
    cfg = ex.digits_config(ex.DigitsBudget(), seed=1, output_dir="unused")
    per_epoch = 3500 // cfg.batch_size
    assert cfg.max_steps == 0 and cfg.epochs == round(1000 / per_epoch)
    (tmp_path / "metrics.jsonl").write_text('{"step": 10}\n{"step": 1020}\n')
    (tmp_path / "ckpt_00001026.pt").write_bytes(b"")
    assert ex.steps_ran(tmp_path) == 1026
    assert ex.steps_ran(tmp_path / "missing") == 0
