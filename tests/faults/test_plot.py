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


def _fake_checkpointed_run(run_dir: Path) -> None:
    """A run folder with metrics.jsonl and one checkpoint of the demo network (untrained)."""
    import dataclasses

    import torch

    from scaled.checkpoint import SCHEMA_VERSION, checkpoint_path
    from scaled.config import config_to_dict
    from scaled.model import SSLModel
    from scaled.presets import demo

    _fake_run(run_dir)
    cfg = dataclasses.replace(
        demo(), width=8, proj_out=8, proj_hidden=32, feature_norm=1.0, output_dir=str(run_dir)
    )
    torch.manual_seed(0)
    model = SSLModel(cfg, 1, 10)
    ckpt = {
        "schema": SCHEMA_VERSION,
        "model": model.state_dict(),
        "objective": {"Cbar": torch.diag(torch.linspace(1.0, 0.1, 8)), "updates": torch.tensor(20)},
        "config": config_to_dict(cfg),
        "arch": cfg.arch,
        "in_channels": 1,
        "num_classes": 10,
        "step": 20,
    }
    torch.save(ckpt, checkpoint_path(run_dir, 20))


def test_report_draws_one_picture_with_the_final_cbar(tmp_path):
    from scaled.tools.plot import final_state, report

    _fake_checkpointed_run(tmp_path / "run")
    state = final_state(tmp_path / "run", n_points=50)
    assert np.allclose(np.diag(state["Cbar"]), np.linspace(1.0, 0.1, 8), atol=1e-6)
    assert np.allclose(state["eig"], np.linspace(1.0, 0.1, 8), atol=1e-6)  # descending
    assert state["z"].shape == (50, 8) and np.allclose((state["z"] ** 2).sum(1), 1.0, atol=1e-5)
    path = report(tmp_path / "run")
    assert path == tmp_path / "run" / "report.png"
    h, w = matplotlib.image.imread(path).shape[:2]
    assert w > 1000 and h > 600


def test_non_constant_features_skip_dead_columns():
    from scaled.tools.plot import non_constant_features

    z = np.zeros((20, 5))
    z[:, 2] = np.arange(20)
    z[:, 4] = np.sin(np.arange(20))
    assert non_constant_features(z) == [2, 4]
    assert non_constant_features(np.ones((5, 3))) == []


def test_report_of_a_run_without_checkpoint_is_one_error_line(tmp_path, capsys):
    _fake_run(tmp_path / "run")
    assert main([str(tmp_path / "run"), "--report"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no checkpoint" in err and len(err.splitlines()) == 1
