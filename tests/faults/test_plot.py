"""Unit tests of scaled.tools.plot: reading metrics.jsonl, the PNGs, the command line's errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from scaled.runlog import RunLogger
from scaled.tools.plot import main, plot_runs, read_metrics, read_probe_results

REPO = Path(__file__).resolve().parents[2]


def _fake_run(run_dir: Path, n_steps: int = 20, *, seed: int = 0) -> None:
    """A run directory written through RunLogger, as the trainer does."""
    rng = np.random.default_rng(seed)
    with RunLogger(run_dir, enabled=True, total_steps=n_steps, tensorboard=False) as logger:
        for step in range(1, n_steps + 1):
            logger.log(
                step,
                {
                    "loss": 2.0 / step + 0.01 * rng.standard_normal(),
                    "lr": 0.1 * min(1.0, step / 5),
                    "img_per_s": 800 + 10 * rng.standard_normal(),
                    "online_probe_acc": min(60.0, 3.0 * step),
                    "feature_std": 0.08,
                    "eff_rank": 10.0 + step,
                    "cbar_eig_0": 1.0,
                    "cbar_eig_1": 0.5,
                    "grad_norm": 1.0 / step,
                },
            )


def test_read_metrics_keeps_the_later_start_of_resumed_steps(tmp_path):
    lines = [
        {"step": 1, "loss": 3.0},
        {"step": 2, "loss": 2.0},
        {"step": 3, "loss": 1.0},  # written, then the run crashed; checkpoint was at step 2
        {"step": 3, "loss": 1.5},  # the resumed start
        {"step": 4, "loss": 1.2},
    ]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"step": 5, "lo'  # cut short
    (tmp_path / "metrics.jsonl").write_text(text)
    records = read_metrics(tmp_path)
    assert [(r["step"], r["loss"]) for r in records] == [(1, 3.0), (2, 2.0), (3, 1.5), (4, 1.2)]


def test_plot_one_run_writes_every_group(tmp_path):
    _fake_run(tmp_path / "run")
    (tmp_path / "run" / "linear_eval.json").write_text(json.dumps({"top1": 55.5, "epochs": 10}))
    assert read_probe_results(tmp_path / "run") == {"linear_eval:top1": 55.5}
    written = plot_runs([tmp_path / "run"], tmp_path / "plots")
    names = sorted(p.name for p in written)
    assert names == [
        "accuracy.png", "health.png", "loss.png", "lr.png", "other.png", "throughput.png",
    ]  # fmt: skip
    for path in written:
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert image.std() > 0.01  # something was drawn


def test_cli_overlays_several_runs(tmp_path):
    _fake_run(tmp_path / "a", seed=1)
    _fake_run(tmp_path / "b", n_steps=10, seed=2)
    argv = [str(tmp_path / "a"), str(tmp_path / "b"), "--output-dir", str(tmp_path / "cmp")]
    assert main(argv) == 0
    assert (tmp_path / "cmp" / "loss.png").is_file()
    assert main([str(tmp_path / "a")]) == 0  # default --output-dir: RUN_DIR/plots
    assert (tmp_path / "a" / "plots" / "health.png").is_file()


@pytest.mark.parametrize("case", ["missing", "no_metrics", "empty"])
def test_cli_errors_are_one_line(tmp_path, case):
    run = tmp_path / "run"
    if case != "missing":
        run.mkdir()
    if case == "empty":
        (run / "metrics.jsonl").write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "scaled.tools.plot", str(run)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    expected = {"missing": "does not exist", "no_metrics": "no metrics.jsonl", "empty": "is empty"}
    assert expected[case] in lines[0] and "Traceback" not in proc.stderr
