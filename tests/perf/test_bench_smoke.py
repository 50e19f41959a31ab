"""Smoke tests of `python -m scaled.tools.bench`: it runs and writes its JSON (no timing
assertions), and its docs sections are found and replaced, never duplicated."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from scaled.config import UserError
from scaled.tools import provenance
from scaled.tools.bench import cli, losses
from scaled.tools.provenance import markers, replace_section

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_losses_quick_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "scaled.tools.bench", "losses", "--quick", "--output-dir", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    payload = json.loads((out / "losses.json").read_text())
    assert payload["benchmark"] == "losses"
    assert payload["env"]["versions"]["torch"] and payload["env"]["device_name"]
    assert {(r["k"], r["B"]) for r in payload["rows"]} <= {
        (k, B) for k in (16, 32) for B in (64, 128, 256)
    }
    assert payload["rows"], "no cell was measured"
    for row in payload["rows"]:
        for name in losses.LOSS_VARIANTS:
            assert row[f"{name}_s"] > 0
    assert "| k | B |" in proc.stdout


def test_step_quick_times_the_trainers_step(tmp_path: Path) -> None:
    assert cli.main(["step", "--quick", "--output-dir", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "step.json").read_text())
    (row,) = payload["rows"]
    assert row["method"] == "minc" and row["arch"] == "small_resnet"
    for key in ("ssl_step_s", "supervised_s", "loss_stats_s", "ema_s"):
        assert row[key] > 0, key


def test_loader_quick_times_both_cpu_pipelines_and_the_device_stage(tmp_path: Path) -> None:
    argv = ["loader", "--quick", "--device", "cpu", "--image-size", "64", "--output-dir"]
    assert cli.main([*argv, str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "loader.json").read_text())
    dali = {"dali_cpu"} if importlib.util.find_spec("nvidia.dali") else set()
    assert set(payload["per_core"]) == {"torch", "device", "decode", "decode_tv", "floor"} | dali
    assert all(v > 0 for v in payload["per_core"].values())
    assert payload["device_stage"]["ms_per_batch"] > 0 and payload["device_stage"]["batch"] == 8
    assert set(payload["device_stage"]["ms"]) == {"v1", "this"}  # old and new, side by side
    assert payload["stage_bytes"]["bytes"] > 0 and payload["step_flops"]["flops"] > 0
    assert 0 < payload["h100_share"]["eager"]["share"] < 1
    assert {r["loader"] for r in payload["dataloader"]} == {"torch", "device"}


def test_bad_argument_is_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "scaled.tools.bench", "losses"),
            *("--widths", "abc", "--output-dir", str(tmp_path)),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "comma-separated integers" in proc.stderr


def test_write_docs_outside_a_checkout_is_one_line_error(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(provenance, "PACKAGE_PARENT", tmp_path)  # like an installed package
    argv = ["losses", "--quick", "--write-docs", "--output-dir", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: --write-docs needs a source checkout (docs/results.md not found); "
        "run from a git clone"
    ]
    assert not (tmp_path / "out").exists(), "it measured before refusing"


def test_replace_docs_section_replaces_only_its_block(tmp_path: Path) -> None:
    md = tmp_path / "results.md"
    md.write_text("# head\n\nkept text\n")
    replace_section(md, "bench-losses", "first body")
    replace_section(md, "bench-variance", "other")
    replace_section(md, "bench-losses", "second body")
    text = md.read_text()
    assert "kept text" in text and "other" in text and "second body" in text
    assert "first body" not in text
    assert text.count("<!-- bench-losses:begin -->") == 1


def test_replace_section_refuses_broken_markers(tmp_path: Path) -> None:
    md = tmp_path / "results.md"
    begin, _ = markers("demo")
    md.write_text(f"{begin}\nno end marker\n")
    with pytest.raises(UserError, match="keep exactly one of each"):
        replace_section(md, "demo", "body")
    assert md.read_text() == f"{begin}\nno end marker\n"


@pytest.mark.parametrize(
    ("doc", "section"),
    [
        *(("results.md", f"bench-{n}") for n in ("losses", "variance", "step", "loader")),
        ("results.md", "experiments"),
        ("results.md", "demo"),
        ("scaling.md", "bench-profile"),
    ],
)
def test_every_docs_section_is_marked_once(doc: str, section: str) -> None:
    """Each section a tool writes exists once, so --write-docs replaces it instead of appending."""
    text = (REPO_ROOT / "docs" / doc).read_text()
    begin, end = markers(section)
    assert text.count(begin) == 1 and text.count(end) == 1
    assert text.index(begin) < text.index(end)


def test_crossover_interpolates_in_log_log() -> None:
    assert losses.crossover([256, 1024], [0.5, 2.0]) == "B ~ 512"
    assert losses.crossover([256, 512], [0.2, 0.5]).startswith("not reached")
    assert losses.crossover([256, 512], [1.5, 3.0]).startswith("MINC cheaper at every B")


@pytest.mark.parametrize("slope", [1.0, 2.0])
def test_loglog_slope_recovers_power_law(slope: float) -> None:
    batches = [256, 512, 1024, 2048]
    assert losses.loglog_slope(batches, [1e-6 * b**slope for b in batches]) == pytest.approx(slope)
