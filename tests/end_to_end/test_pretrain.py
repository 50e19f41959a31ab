"""The trainer end to end: every method runs, resume is exact, faults exit with their codes,
1 and 2 processes give the same first-step gradients, linear_eval reads the checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from scaled.checkpoint import list_checkpoints, load_checkpoint
from scaled.linear_eval import main as linear_eval_main
from scaled.pretrain import main

from .grad_worker import first_step_gradients
from .helpers import REPO, TINY, make_image_folder, read_metrics, torchrun

METHODS = [
    ["--method", "minc"],
    ["--method", "noncontrastive"],
    ["--method", "minc", "--no-target-network"],
    ["--method", "spectral"],
    ["--method", "alpha", "--alpha", "1.5"],
    ["--method", "simclr"],
    ["--method", "byol"],
    ["--method", "byol", "--predictor", "linear"],
]


@pytest.mark.parametrize("extra", METHODS, ids=lambda a: "-".join(a[1::2]))
def test_every_method_runs_one_process(extra, tmp_path):
    run = tmp_path / "run"
    assert main([*TINY, *extra, "--max-steps", "2", "--output-dir", str(run)]) == 0
    losses = [r["loss"] for r in read_metrics(run)]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    ckpt = load_checkpoint(list_checkpoints(run)[-1])
    assert ckpt["step"] == 2 and ckpt["config"]["method"] == extra[1]


def test_resume_is_bitwise_exact(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = [*TINY, "--checkpoint-every", "0"]
    assert main([*common, "--max-steps", "6", "--output-dir", str(a)]) == 0
    assert main([*common, "--max-steps", "3", "--output-dir", str(b)]) == 0
    assert main([*common, "--max-steps", "6", "--output-dir", str(b), "--resume", "auto"]) == 0
    sa = load_checkpoint(list_checkpoints(a)[-1])
    sb = load_checkpoint(list_checkpoints(b)[-1])
    assert sa["step"] == sb["step"] == 6
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert sa["objective"]["Cbar"].abs().sum() > 0


def test_resume_auto_skips_an_unreadable_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main([*TINY, "--max-steps", "2", "--checkpoint-every", "1", "--output-dir", str(run)]) == 0
    )
    newest = list_checkpoints(run)[-1]
    newest.write_bytes(b"garbage")
    capsys.readouterr()
    assert main([*TINY, "--max-steps", "3", "--output-dir", str(run), "--resume", "auto"]) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is unreadable" in err and "at step 1" in err


def test_nan_exits_3_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    argv = [*TINY, "--max-steps", "6", "--checkpoint-every", "2", "--log-every", "3"]
    code = main([*argv, "--fault-inject", "nan@4", "--output-dir", str(run)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 3
    assert err == f"error: loss is nan at step 4; last good checkpoint: {run / 'ckpt_00000002.pt'}"
    assert [p.name for p in list_checkpoints(run)] == ["ckpt_00000002.pt"]


def test_existing_run_needs_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TINY, "--max-steps", "1", "--output-dir", str(run)]) == 0
    assert main([*TINY, "--max-steps", "1", "--output-dir", str(run)]) == 2
    assert "--resume auto" in capsys.readouterr().err


@pytest.mark.distributed
def test_one_and_two_processes_give_the_same_first_step(tmp_path):
    methods = ["minc", "spectral", "alpha", "simclr", "byol"]
    proc = torchrun(["tests/end_to_end/grad_worker.py", str(tmp_path), *methods])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for method in methods:
        two = torch.load(tmp_path / f"grads_{method}.pt", weights_only=True)
        one = first_step_gradients(method)
        for name in one:
            torch.testing.assert_close(two[name], one[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.distributed
def test_two_process_jpeg_run_then_linear_eval(tmp_path):
    data = make_image_folder(tmp_path / "data", n_classes=3, per_class=8)
    run = tmp_path / "run"
    args = [
        "scaled/pretrain.py", *TINY, "--data-dir", str(data), "--image-size", "32",
        "--batch-size", "8", "--max-steps", "4", "--output-dir", str(run),
    ]  # fmt: skip
    proc = torchrun(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [r["loss"] for r in read_metrics(run)]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    info = json.loads((run / "run_info.json").read_text())
    assert info["world_size"] == 2
    ckpt = list_checkpoints(run)[-1]
    assert linear_eval_main(["--checkpoint", str(run), "--mode", "fast", "--epochs", "5"]) == 0
    result = json.loads(ckpt.with_suffix(".linear_eval.json").read_text())
    assert 0.0 <= result["top1"] <= 1.0 and result["checkpoint"] == str(ckpt)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("extra", METHODS, ids=lambda a: "-".join(a[1::2]))
def test_every_method_two_processes_embedded(extra, tmp_path):
    run = tmp_path / "run"
    proc = torchrun(
        ["scaled/pretrain.py", *TINY, *extra, "--max-steps", "3", "--output-dir", str(run)]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(torch.isfinite(torch.tensor([r["loss"] for r in read_metrics(run)])))


def test_script_path_runs_as_a_file(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "scaled/pretrain.py", "--preset", "bogus"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown preset")


@pytest.mark.distributed
def test_resume_with_a_changed_world_size_says_what_changed(tmp_path):
    run = tmp_path / "run"
    common = [*TINY, "--checkpoint-every", "0", "--output-dir", str(run)]
    assert main([*common, "--max-steps", "2"]) == 0
    proc = torchrun(["scaled/pretrain.py", *common, "--max-steps", "4", "--resume", "auto"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world size 1 -> 2" in proc.stderr
    last = load_checkpoint(list_checkpoints(run)[-1])
    assert last["step"] == 4 and last["world_size"] == 2
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == [1, 2, 3, 4], "the resumed run continues the metrics log where it stopped"
