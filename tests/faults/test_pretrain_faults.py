"""Fault tests of the training CLI (issue #6): each failure ends with a known status and one line.

Each test runs ``python -m scaled.pretrain`` as a subprocess on tiny settings (the demo preset,
2 steps, batch 16, CPU) and checks the exit status, the one-line ``error: <problem>; <fix>``
message (no traceback), and that the last checkpoint still loads. Exit statuses (pretrain.py):
0 done or preempted, 2 user error, 3 non-finite loss, 4 checkpoint write failed.

The user-error cases that fail before any training call ``scaled.pretrain.main(argv)`` in this
process (one Python + torch start-up each would cost more than the rest of the folder); one of
them also runs through the real command line to pin the exit status and the absent traceback.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240  # hard limit per subprocess: a hang fails the test instead of the suite
TINY = ["--preset", "demo", "--max-steps", "2", "--batch-size", "16", "--device", "cpu"]
IMAGE_ARGS = ["--image-size", "32", "--num-workers", "0"]

pytestmark = pytest.mark.timeout(600)


# --------------------------------------------------------------------------- helpers


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"  # several processes share a small machine
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(extra)
    return env


def pretrain(*args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``python -m scaled.pretrain ARGS`` to completion (fails the test on a hang)."""
    return subprocess.run(
        [sys.executable, "-m", "scaled.pretrain", *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_line(stderr: str) -> str:
    """The single ``error: ...`` line of ``stderr``; fails on a traceback or several errors."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    line = error_line(proc.stderr)
    assert "; " in line, f"no '<problem>; <fix>' form: {line}"
    for fragment in fragments:
        assert fragment in line, (fragment, line)


def load_ok(path: Path) -> dict:
    """Load a checkpoint the way resume does and check that every tensor in it is finite."""
    from scaled.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    for name, value in ckpt["model"].items():
        if torch.is_floating_point(value):
            assert torch.isfinite(value).all(), f"{path}: {name} is not finite"
    return ckpt


def write_jpegs(folder: Path, n: int, rng: np.random.Generator) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:03d}.jpg"
        pixels = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


# --------------------------------------------------------------------------- user errors: exit 2


def main_in_process(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``scaled.pretrain.main(argv)`` run in this process."""
    from scaled.pretrain import main

    capsys.readouterr()
    with torch.random.fork_rng(devices=[]):  # main seeds the global generator
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse errors
            code = exit_.code
    return code, capsys.readouterr().err


def _bad_data_dir(root: Path, image_root: Path, case: str) -> list[str]:
    """Make the broken data folder of `case` at `root`; return what the error must name."""
    if case == "empty":
        root.mkdir()
    elif case == "no_train":
        shutil.copytree(image_root / "train", root / "training")  # misnamed split
    elif case == "empty_class":
        shutil.copytree(image_root / "train", root / "train")
        (root / "train" / "zebra").mkdir()
    return {
        "missing": [str(root), "does not exist"],
        "empty": [str(root / "train"), "not found"],
        "no_train": [str(root / "train"), "not found"],
        "empty_class": [str(root / "train" / "zebra"), "has no images"],
    }[case]


@pytest.mark.parametrize("case", ["missing", "empty", "no_train", "empty_class"])
def test_bad_data_dir_is_a_one_line_user_error(tmp_path, image_root, capsys, case):
    root = tmp_path / "data"
    expected = _bad_data_dir(root, image_root, case)
    argv = [*TINY, *IMAGE_ARGS, "--data-dir", str(root), "--output-dir", str(tmp_path / "r")]
    code, err = main_in_process(argv, capsys)
    assert_user_error(subprocess.CompletedProcess(argv, code, "", err), *expected)
    assert not list((tmp_path / "r").glob("ckpt_*.pt"))


def test_user_error_through_the_command_line(tmp_path, image_root):
    root = tmp_path / "data"
    expected = _bad_data_dir(root, image_root, "empty_class")
    proc = pretrain(
        *TINY, *IMAGE_ARGS, "--data-dir", str(root), "--output-dir", str(tmp_path / "r")
    )
    assert_user_error(proc, *expected)


def test_unknown_preset_lists_the_valid_ones(tmp_path, capsys):
    code, err = main_in_process(["--preset", "dmeo", "--output-dir", str(tmp_path / "r")], capsys)
    proc = subprocess.CompletedProcess([], code, "", err)
    assert_user_error(proc, "unknown preset 'dmeo'", "demo", "imagenet_r50_minc")


def test_unknown_option_lists_the_valid_ones(tmp_path, capsys):
    code, err = main_in_process([*TINY, "--batch-sise", "16"], capsys)
    assert code == 2, err
    line = error_line(err)
    assert "--batch-sise" in line and "--batch-size" in line and "--max-steps" in line


@pytest.mark.distributed
@pytest.mark.xdist_group("distributed")  # serialised with the other multi-process tests
def test_batch_not_divisible_by_world_size(tmp_path, image_root):
    """torchrun, 2 gloo ranks, global batch 15: exit 2 with one line, no traceback on any rank.

    torchrun turns a failed worker into its own exit status 1, prints its failure summary, and
    sends SIGTERM to the workers still running; so a rank either exits 2 itself or is stopped
    by that SIGTERM (-15). Each worker's stderr is captured separately (--redirects 3).
    """
    logs = tmp_path / "logs"
    args = [*TINY, *IMAGE_ARGS, "--data-dir", str(image_root), "--output-dir", str(tmp_path / "r")]
    args[args.index("--batch-size") + 1] = "15"
    proc = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            f"--master_port={free_port()}", "--redirects", "3", "--log-dir", str(logs),
            "-m", "scaled.pretrain", *args,
        ],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode != 0
    codes = [int(c) for c in re.findall(r"exitcode\s*:\s*(-?\d+)", proc.stderr)]
    assert 2 in codes and set(codes) <= {2, -signal.SIGTERM}, proc.stderr
    rank_err = {
        int(p.parent.name): p.read_text() for p in logs.rglob("stderr.log")
    }  # {local_rank: stderr}
    assert sorted(rank_err) == [0, 1], list(logs.rglob("*"))
    for text in rank_err.values():
        assert "Traceback" not in text, text
    line = error_line(rank_err[0])
    assert "--batch-size 15 is not divisible by world size 2" in line and "; " in line


# --------------------------------------------------------------------------- bad images: exit 0


def test_corrupt_and_truncated_jpegs_are_skipped_counted_and_warned_once(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "data"
    write_jpegs(root / "train" / "cat", 7, rng)
    write_jpegs(root / "train" / "dog", 7, rng)
    good = (root / "train" / "cat" / "img_000.jpg").read_bytes()
    truncated = root / "train" / "cat" / "img_003_truncated.jpg"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = root / "train" / "dog" / "img_003_garbage.jpg"
    garbage.write_bytes(b"this is not a JPEG" * 20)
    # 16 files, global batch 16: one step is one epoch and reads every file once.
    run = tmp_path / "run"
    proc = pretrain(*TINY, *IMAGE_ARGS, "--data-dir", str(root), "--output-dir", str(run))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for bad in (truncated, garbage):
        assert proc.stderr.count(f"warning: skipping unreadable image {bad}") == 1, proc.stderr
    last = metrics(run)[-1]
    assert last["step"] == 2
    assert last["skipped_images"] == 2 * 2  # 2 bad files, read in each of the 2 steps
    assert load_ok(run / "ckpt_00000002.pt")["step"] == 2


# --------------------------------------------------------------------------- checkpoints


def test_unreadable_checkpoint_falls_back_to_the_previous_one(tmp_path, image_root, two_step_run):
    run = tmp_path / "run"
    shutil.copytree(two_step_run, run)
    newest = run / "ckpt_00000002.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])  # a checkpoint cut short (e.g. copied mid-write)
    proc = pretrain(
        *TINY, *IMAGE_ARGS, "--data-dir", str(image_root), "--output-dir", str(run),
        "--resume", "auto", "--max-steps", "3", "--checkpoint-every", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if str(newest) in line]
    assert warnings and "unreadable" in warnings[0] and "previous" in warnings[0], proc.stderr
    assert f"resume: {run / 'ckpt_00000001.pt'} at step 1" in proc.stderr
    assert load_ok(run / "ckpt_00000003.pt")["step"] == 3
    assert load_ok(run / "ckpt_00000002.pt")["step"] == 2  # rewritten by the resumed run


def test_nan_loss_exits_3_and_saves_no_nan_checkpoint(tmp_path, image_root):
    run = tmp_path / "run"
    proc = pretrain(
        *TINY, *IMAGE_ARGS, "--data-dir", str(image_root), "--output-dir", str(run),
        "--max-steps", "3", "--checkpoint-every", "1", "--fault-inject", "nan@2",
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    line = error_line(proc.stderr)
    assert line == f"error: loss is nan at step 2; last good checkpoint: {run / 'ckpt_00000001.pt'}"
    assert sorted(p.name for p in run.glob("ckpt_*.pt")) == ["ckpt_00000001.pt"]
    assert load_ok(run / "ckpt_00000001.pt")["step"] == 1


def test_atomic_save_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    """Unit level: the write of the new file fails with ENOSPC half-way through."""
    import scaled.checkpoint as checkpoint

    path = tmp_path / "ckpt_00000001.pt"
    checkpoint.atomic_save({"model": {"w": torch.ones(3)}, "step": 1}, path)
    real_save = torch.save

    def save_then_disk_full(obj, fh, *args, **kwargs):
        real_save(obj, fh, *args, **kwargs)
        fh.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", save_then_disk_full)
    with pytest.raises(OSError) as info:
        checkpoint.atomic_save({"model": {"w": torch.zeros(1000)}, "step": 2}, path)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    assert torch.equal(checkpoint.load_checkpoint(path)["model"]["w"], torch.ones(3))


_DISK_FULL_ON_SECOND_SAVE = """
import errno, os, sys
import torch
real_save, calls = torch.save, []
def save(obj, f, *args, **kwargs):
    calls.append(1)
    real_save(obj, f, *args, **kwargs)
    if len(calls) >= 2:  # the first checkpoint is written, the second finds the disk full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
torch.save = save
from scaled.pretrain import main
sys.exit(main(sys.argv[1:]))
"""


def test_disk_full_while_saving_exits_4_and_keeps_the_previous_checkpoint(tmp_path, image_root):
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable, "-c", _DISK_FULL_ON_SECOND_SAVE,
            *TINY, *IMAGE_ARGS, "--data-dir", str(image_root), "--output-dir", str(run),
            "--checkpoint-every", "1",
        ],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == 4, proc.stderr
    line = error_line(proc.stderr)
    previous = run / "ckpt_00000001.pt"
    assert str(run / "ckpt_00000002.pt") in line and "No space left on device" in line, line
    assert f"previous checkpoint {previous} is intact" in line, line
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(("ckpt", ".ckpt"))) == [
        previous.name
    ]
    assert load_ok(previous)["step"] == 1


# --------------------------------------------------------------------------- preemption


def _launch_ranks(run: Path, world: int, extra: list[str]) -> list[subprocess.Popen]:
    """Start `world` ranks of pretrain.py with the environment torchrun would give them."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = _env(
            RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
        )  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "scaled.pretrain", *extra, "--output-dir", str(run)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """(exit status, stderr) of each process; kills all of them and fails after `timeout`."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((p.returncode, err))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        errs = [p.communicate()[1][-2000:] for p in procs]
        pytest.fail(f"ranks still running after {timeout:.0f} s (a hang); stderr tails: {errs}")
    return results


@pytest.mark.distributed
@pytest.mark.xdist_group("distributed")  # serialised with the other multi-process tests
@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "targets"),
    [(signal.SIGTERM, [1]), (signal.SIGUSR1, [0, 1])],
    ids=["sigterm-rank1", "sigusr1-all"],
)
def test_preemption_saves_at_the_next_step_and_resumes(tmp_path, sig, targets):
    """SLURM-style: the signal reaches some ranks; all agree, checkpoint, exit 0; resume works.

    The embedded digits (4000 images, 250 steps per epoch at batch 16) keep the regular
    checkpoints far away, so the checkpoint found here can only be the preemption one.
    """
    run = tmp_path / "run"
    args = [*TINY, "--max-steps", "200", "--checkpoint-every", "0", "--log-every", "1"]
    procs = _launch_ranks(run, 2, args)
    deadline = time.monotonic() + TIMEOUT_S
    while len(metrics(run)) < 2:  # rank 0 has logged step 2: the loop is running on both
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            errs = [p.communicate()[1][-2000:] for p in procs]
            pytest.fail(f"training did not reach step 2: {errs}")
        time.sleep(0.2)
    for rank in targets:
        procs[rank].send_signal(sig)
    results = _finish(procs, timeout=TIMEOUT_S)
    for rank, (code, err) in enumerate(results):
        assert code == 0, (rank, code, err[-3000:])
        assert "Traceback" not in err, err
    ckpts = sorted(run.glob("ckpt_*.pt"))
    assert len(ckpts) == 1, ckpts
    saved = load_ok(ckpts[0])
    step = saved["step"]
    assert 2 <= step < 200 and saved["world_size"] == 2
    assert f"preempted: checkpoint {ckpts[0]} at step {step}; exit 0" in results[0][1]

    proc = pretrain(
        *TINY, "--output-dir", str(run), "--resume", "auto", "--max-steps", str(step + 1)
    )
    assert proc.returncode == 0, proc.stderr
    assert f"resume: {ckpts[0]} at step {step}" in proc.stderr, proc.stderr
    assert load_ok(run / f"ckpt_{step + 1:08d}.pt")["step"] == step + 1
