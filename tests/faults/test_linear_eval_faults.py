"""linear_eval.py on bad input: one `error: <problem>; <fix>` line and exit 2, never a traceback
or a silently wrong result (issue 16's error list and issue 18 items 2, 8, 13)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import scaled.linear_eval as le
from tests.end_to_end.eval_helpers import fake_checkpoint
from tests.end_to_end.helpers import make_image_folder

FAST = ["--mode", "fast", "--epochs", "2", "--device", "cpu", "--num-workers", "0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data = make_image_folder(root / "data", n_classes=3, per_class=8)
    ckpt = fake_checkpoint(root / "run", ["--data-dir", str(data), "--image-size", "32"])
    return root, data, ckpt


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "; " in err[0], err
    return err[0]


@pytest.mark.parametrize("epochs", ["0", "-3"])
def test_epochs_below_one_is_an_error_not_the_preset(setup, capsys, epochs):
    root, data, ckpt = setup
    argv = ["--checkpoint", str(ckpt), "--data-dir", str(data), *FAST, "--epochs", epochs]
    assert le.main([*argv, "--output", str(root / "e.json")]) == 2
    assert f"--epochs {epochs} must be >= 1" in one_error_line(capsys)


def test_unwritable_output_fails_before_any_work(setup, capsys, monkeypatch):
    root, data, ckpt = setup

    def no_work(*args, **kwargs):
        raise AssertionError("the evaluation ran before --output was checked")

    monkeypatch.setattr(le, "fast_linear_eval", no_work)
    out = root / "missing" / "folder" / "r.json"
    argv = ["--checkpoint", str(ckpt), "--data-dir", str(data), *FAST, "--output", str(out)]
    assert le.main(argv) == 2
    assert "does not exist or is not writable" in one_error_line(capsys)
    assert le.main([*argv[:-1], str(root)]) == 2  # a folder, not a file
    assert "is a folder" in one_error_line(capsys)


def test_run_folder_without_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_info.json").write_text("{}")
    assert le.main(["--checkpoint", str(run), *FAST]) == 2
    assert f"run folder {run} has no ckpt_*.pt checkpoints" in one_error_line(capsys)


def test_checkpoint_channels_must_match_the_data(setup, tmp_path, capsys):
    _, data, _ = setup
    grey = fake_checkpoint(tmp_path / "digits", in_channels=1, num_classes=10)
    assert le.main(["--checkpoint", str(grey), "--data-dir", str(data), *FAST]) == 2
    line = one_error_line(capsys)
    assert "takes 1-channel images" in line and "3-channel" in line


def test_checkpoint_of_another_architecture(setup, tmp_path, capsys):
    _, data, ckpt = setup
    state = torch.load(ckpt, weights_only=True)
    state["config"]["arch"] = "resnet18"  # the weights are a small_resnet's
    bad = tmp_path / "ckpt_00000001.pt"
    torch.save(state, bad)
    assert le.main(["--checkpoint", str(bad), "--data-dir", str(data), *FAST]) == 2
    assert "does not match the network" in one_error_line(capsys)


def test_train_split_smaller_than_the_batch_gives_a_result(setup, capsys):
    root, data, ckpt = setup
    out = root / "small.json"
    argv = ["--checkpoint", str(ckpt), "--data-dir", str(data), "--mode", "full", "--epochs", "1"]
    argv += ["--device", "cpu", "--num-workers", "0", "--batch-size", "256"]
    assert le.main([*argv, "--output", str(out), "--output-dir", str(root / "small")]) == 0
    assert "exceeds the 24 labelled training images" in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["n_train"] == 24 and 0.0 <= result["top1"] <= 1.0


def test_val_class_unknown_to_train(setup, tmp_path, capsys):
    _, data, ckpt = setup
    copy = shutil.copytree(data, tmp_path / "data")
    (copy / "val" / "class2").rename(copy / "val" / "zebra")
    assert le.main(["--checkpoint", str(ckpt), "--data-dir", str(copy), *FAST]) == 2
    assert "class folder(s) that train does not have (zebra)" in one_error_line(capsys)


def test_val_missing_a_class_warns_and_keeps_train_indices(setup, tmp_path, capsys):
    _, data, ckpt = setup
    copy = shutil.copytree(data, tmp_path / "data")
    shutil.rmtree(copy / "val" / "class0")
    out = tmp_path / "r.json"
    assert le.main(["--checkpoint", str(ckpt), "--data-dir", str(copy), *FAST,
                    "--output", str(out)]) == 0  # fmt: skip
    assert "val has no images of 1 train class(es) (class0)" in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["classes"] == ["class0", "class1", "class2"] and result["n_val"] == 8
