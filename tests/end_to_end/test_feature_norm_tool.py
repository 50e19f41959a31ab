"""scaled/tools/feature_norm.py: its options, interval and table (no training here)."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from scaled.options import parse_config
from scaled.tools.feature_norm import finished, format_table, interval, norm_options, summarise


def test_norm_options_reach_the_config():
    for norm in ("none", "sphere", "clip"):
        cfg = parse_config(["--preset", "demo", *norm_options(norm, 2.0)])
        assert cfg.feature_norm == (0.0 if norm == "none" else 2.0)
        if norm != "none":
            assert cfg.feature_norm_kind == norm


def test_interval_is_the_student_t_95_percent_half_width():
    mean, half = interval([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.302652729911275 / math.sqrt(3))  # t(0.975, 2) * s / sqrt(n)
    assert math.isnan(interval([5.0])[1])


def test_summary_counts_non_finite_runs_and_tabulates_the_rest():
    runs = [
        {"method": "minc", "norm": "clip", "seed": 0, "status": 0, "top1": 0.5, "knn_top1": 0.4},
        {"method": "minc", "norm": "clip", "seed": 1, "status": 3},
        {"method": "minc", "norm": "none", "seed": 0, "status": 0, "top1": 0.7, "knn_top1": 0.6},
    ]
    rows = summarise(runs)
    assert [(r["norm"], r["seeds"], r["non_finite"]) for r in rows] == [
        ("clip", 2, 1),
        ("none", 1, 0),
    ]
    table = format_table(rows)
    assert "| minc | clip | 2 | 1 |  50.0 (one run) |" in table


def test_a_run_is_finished_only_with_its_last_checkpoint_and_probe(tmp_path):
    args = argparse.Namespace(epochs=2, batch_size=1000)  # 4000 digits: 8 steps
    assert not finished(tmp_path, args)
    (tmp_path / "ckpt_00000008.pt").write_bytes(b"")
    assert not finished(tmp_path, args)
    probe = {"top1": 0.1, "knn_top1": 0.1, "checkpoint": str(tmp_path / "ckpt_00000008.pt")}
    (tmp_path / "probe.json").write_text(json.dumps(probe))
    assert finished(tmp_path, args)
