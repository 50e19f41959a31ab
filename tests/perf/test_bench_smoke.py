"""Smoke tests of `python -m scaled.tools.bench`: it runs and writes its JSON (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scaled.tools.bench import cli as bench

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_losses_quick_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "scaled.tools.bench", "losses", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    payload = json.loads((out / "losses.json").read_text())
    assert payload["benchmark"] == "losses"
    assert payload["env"]["torch"] and payload["env"]["device_name"]
    assert {(r["k"], r["B"]) for r in payload["rows"]} <= {
        (k, B) for k in (16, 32) for B in (64, 128, 256)
    }
    assert payload["rows"], "no cell was measured"
    for row in payload["rows"]:
        for name in bench.LOSS_VARIANTS:
            assert row[f"{name}_s"] > 0
    assert "| k | B |" in proc.stdout


def test_bad_argument_is_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scaled.tools.bench", "losses", "--widths", "abc", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "comma-separated integers" in proc.stderr


def test_replace_docs_section_replaces_only_its_block(tmp_path: Path) -> None:
    md = tmp_path / "results.md"
    md.write_text("# head\n\nkept text\n")
    bench.replace_docs_section("losses", "first body", md)
    bench.replace_docs_section("variance", "other", md)
    bench.replace_docs_section("losses", "second body", md)
    text = md.read_text()
    assert "kept text" in text and "other" in text and "second body" in text
    assert "first body" not in text
    assert text.count("<!-- bench:losses:start -->") == 1


def test_crossover_interpolates_in_log_log() -> None:
    assert bench.crossover([256, 1024], [0.5, 2.0]) == "B ~ 512"
    assert bench.crossover([256, 512], [0.2, 0.5]).startswith("not reached")
    assert bench.crossover([256, 512], [1.5, 3.0]).startswith("MINC cheaper at every B")


@pytest.mark.parametrize("slope", [1.0, 2.0])
def test_loglog_slope_recovers_power_law(slope: float) -> None:
    batches = [256, 512, 1024, 2048]
    assert bench.loglog_slope(batches, [1e-6 * b**slope for b in batches]) == pytest.approx(slope)
