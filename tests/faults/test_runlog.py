"""Unit tests of scaled.runlog: run_info.json, metrics.jsonl, TensorBoard, progress output."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scaled.runlog import RunLogger, git_state, write_run_info

REPO = Path(__file__).resolve().parents[2]


def test_write_run_info_records_config_code_and_machine(tmp_path):
    config = {"preset": "demo", "lr": 0.3, "data_dir": tmp_path}  # a Path is written with str
    info = write_run_info(tmp_path / "run", config, world_size=2, device="cpu")
    on_disk = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert on_disk == info
    assert info["config"] == {"preset": "demo", "lr": 0.3, "data_dir": str(tmp_path)}
    assert info["world_size"] == 2 and info["device"] == "cpu"
    assert info["versions"]["torch"] == torch.__version__
    assert set(info["versions"]) >= {
        "python",
        "torch",
        "torchvision",
        "numpy",
        "reference",
        "scaled",
    }
    assert info["devices"]["cpu"] and isinstance(info["devices"]["cuda"], list)
    assert info["hostname"] and info["start_time"] and info["command"][0] == sys.executable
    # The SHA is a commit of this checkout: HEAD when written, so an ancestor of HEAD now (other
    # people may commit in between), and a 40-digit hex name.
    sha = info["git"]["sha"]
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", sha), sha
        ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", sha, "HEAD"], cwd=REPO)
        assert ancestor.returncode == 0, f"{sha} is not a commit of this checkout"
        assert isinstance(info["git"]["dirty"], bool)


def test_write_run_info_keeps_earlier_starts(tmp_path):
    first = write_run_info(tmp_path, {"run": 1}, world_size=1, device="cpu")
    write_run_info(tmp_path, {"run": 2}, world_size=1, device="cpu")
    write_run_info(tmp_path, {"run": 3}, world_size=1, device="cpu")
    assert json.loads((tmp_path / "run_info.1.json").read_text()) == first
    assert json.loads((tmp_path / "run_info.2.json").read_text())["config"] == {"run": 2}
    assert json.loads((tmp_path / "run_info.json").read_text())["config"] == {"run": 3}


def test_git_state_outside_a_checkout_is_unknown(monkeypatch, tmp_path):
    import scaled.runlog as runlog

    monkeypatch.setattr(runlog, "_REPO_ROOT", tmp_path)  # not a git checkout
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_state() == {"sha": "unknown", "dirty": "unknown"}
    monkeypatch.setenv("PATH", "")  # no git executable at all
    assert git_state() == {"sha": "unknown", "dirty": "unknown"}
    info = write_run_info(tmp_path / "run", {}, world_size=1, device="cpu")
    assert info["git"]["sha"] == "unknown"


def _read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_log_appends_flushed_json_lines_and_resume_appends(tmp_path):
    logger = RunLogger(tmp_path, enabled=True, total_steps=10, tensorboard=False)
    logger.log(1, {"loss": 2.5, "lr": torch.tensor(0.1)})
    # Flushed before close: a crash now would keep the line.
    lines = _read_lines(tmp_path / "metrics.jsonl")
    assert len(lines) == 1
    assert lines[0]["step"] == 1 and lines[0]["loss"] == 2.5
    assert lines[0]["lr"] == pytest.approx(0.1) and lines[0]["time"] > 0
    logger.log(2, {"loss": float("nan")})
    logger.close()
    logger.close()  # twice is fine

    resumed = RunLogger(tmp_path, enabled=True, total_steps=10, initial_step=2, tensorboard=False)
    resumed.log(3, {"loss": 1.0})
    resumed.close()
    lines = _read_lines(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert lines[1]["loss"] != lines[1]["loss"]  # NaN round-trips


def test_log_rejects_non_numbers_with_a_clear_message(tmp_path):
    with RunLogger(tmp_path, enabled=True, total_steps=1, tensorboard=False) as logger:
        with pytest.raises(ValueError, match="'name' is 'abc', not a number"):
            logger.log(1, {"name": "abc"})


def test_tensorboard_scalars_are_written(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLogger(tmp_path, enabled=True, total_steps=3) as logger:
        for step in (1, 2, 3):
            logger.log(step, {"loss": 1.0 / step})
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    events = acc.Scalars("loss")
    assert [e.step for e in events] == [1, 2, 3]
    assert [e.value for e in events] == pytest.approx([1.0, 0.5, 1 / 3])


def test_missing_tensorboard_warns_once_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.warns(UserWarning, match="TensorBoard logging is off") as record:
        logger = RunLogger(tmp_path, enabled=True, total_steps=2)
    logger.log(1, {"loss": 1.0})
    logger.log(2, {"loss": 0.5})
    logger.close()
    assert len(record) == 1
    assert len(_read_lines(tmp_path / "metrics.jsonl")) == 2


def test_disabled_logger_touches_nothing(tmp_path, capsys):
    logger = RunLogger(tmp_path / "run", enabled=False, total_steps=10)
    logger.log(1, {"loss": 1.0})
    logger.update_progress(1, loss=1.0)
    logger.write("hello")
    logger.close()
    assert not (tmp_path / "run").exists()
    assert capsys.readouterr() == ("", "")


def test_plain_progress_lines_without_a_terminal(tmp_path, capsys):
    logger = RunLogger(
        tmp_path, enabled=True, total_steps=100, initial_step=40, tty=False, tensorboard=False
    )
    for step in range(41, 101):
        logger.update_progress(step, epoch=0, loss=0.123456, lr=2.5e-4, img_s=812.0)
    logger.write("saved checkpoint")
    logger.close()
    err = capsys.readouterr().err
    lines = err.splitlines()
    # First step, last step, and nothing in between (the 30 s interval has not passed): no \r spam.
    assert "\r" not in err
    assert lines[0].startswith("pretrain step 41/100 (41.0%) | epoch 0 | loss 0.1235 | lr 0.00025")
    assert "img/s 812" in lines[0] and "eta " in lines[0]
    assert lines[1].startswith("pretrain step 100/100 (100.0%)")
    assert lines[2] == "saved checkpoint"
    assert len(lines) == 3


def test_tqdm_bar_starts_at_initial_step(tmp_path, capsys):
    logger = RunLogger(
        tmp_path, enabled=True, total_steps=50, initial_step=20, tty=True, tensorboard=False
    )
    logger.update_progress(21, loss=1.5, lr=0.1)
    assert logger._bar.n == 21 and logger._bar.total == 50 and logger._bar.initial == 20
    logger.update_progress(25, loss=1.25, lr=0.1)
    logger.write("message between bar updates")
    logger.close()
    err = capsys.readouterr().err
    assert "25/50" in err and "loss=1.25" in err
    assert "message between bar updates" in err
