"""Issue #18: runs that survive what users and clusters do to them.

Each test names the item of issue #18 it covers (1-12 numbered; "edge" for the rough edges).
Runs that need no second process call ``scaled.pretrain.main(argv)`` in this process (demo
preset, 32 px ImageFolders, 2-3 steps, CPU); signals and several ranks use subprocesses.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scaled.checkpoint import atomic_save, list_checkpoints, prune_checkpoints
from scaled.config import UserError
from scaled.data import ImageFiles, scan_image_folder
from scaled.presets import demo
from scaled.pretrain import world_size_change
from tests.faults.test_pretrain_faults import (
    IMAGE_ARGS,
    REPO,
    TIMEOUT_S,
    TINY,
    _env,
    _finish,
    _launch_ranks,
    error_line,
    load_ok,
    main_in_process,
    metrics,
    write_jpegs,
)

pytestmark = pytest.mark.timeout(600)


def run_main(capsys, *argv: str) -> tuple[int, str]:
    return main_in_process(list(argv), capsys)


def user_error(code: int, err: str, *fragments: str) -> str:
    """The one error line of a status-2 run, checked for `fragments` and the `; fix` form."""
    assert code == 2, (code, err)
    line = error_line(err)
    assert "; " in line, line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def images(root: Path, n_cat: int = 8, n_dog: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    write_jpegs(root / "train" / "cat", n_cat, rng)
    write_jpegs(root / "train" / "dog", n_dog, rng)
    return root


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


# --------------------------------------------------------------------------- 1: pruning


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path, capsys, image_root,
                                                           two_step_run):  # fmt: skip
    """Item 1: an unreadable ckpt_00000500.pt with --keep-checkpoints 1 used to win the prune."""
    run = copy_run(two_step_run, tmp_path / "run")
    (run / "ckpt_00000500.pt").write_bytes(b"not a checkpoint at all")
    code, err = run_main(
        capsys, *TINY, *IMAGE_ARGS, "--data-dir", str(image_root), "--output-dir", str(run),
        "--resume", "auto", "--keep-checkpoints", "1", "--max-steps", "3",
        "--checkpoint-every", "1",
    )  # fmt: skip
    assert code == 0, err
    newest = run / "ckpt_00000003.pt"
    assert f"done: 3 steps; checkpoint {newest}" in err, err
    assert load_ok(newest)["step"] == 3
    assert [p.name for p in list_checkpoints(run)] == ["ckpt_00000003.pt", "ckpt_00000500.pt"]


def test_pruning_keeps_the_newest_readable_older_checkpoint(tmp_path):
    """Item 1, unit level: a cut-short file does not count as one of the kept ones."""
    for step in (1, 2, 3, 4):
        atomic_save({"model": {"w": torch.full((3,), float(step))}, "step": step},
                    tmp_path / f"ckpt_{step:08d}.pt")  # fmt: skip
    cut = tmp_path / "ckpt_00000003.pt"
    cut.write_bytes(cut.read_bytes()[:100])
    prune_checkpoints(tmp_path, 2, tmp_path / "ckpt_00000004.pt")
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["ckpt_00000002.pt", "ckpt_00000003.pt", "ckpt_00000004.pt"], names
    assert torch.load(tmp_path / "ckpt_00000002.pt")["step"] == 2  # newest readable older one


# --------------------------------------------------------------------------- 3: SIGTERM, group

_GROUP_LAUNCHER = """
import json, os, signal, subprocess, sys
# Stand-in for the job step's shell: it survives the signal; its children (the ranks and their
# data-loader workers) are in its process group and get the default SIGTERM disposition.
signal.signal(signal.SIGTERM, signal.SIG_IGN)
logs, world, port, argv = sys.argv[1], 2, sys.argv[2], sys.argv[3:]
procs = []
for rank in range(world):
    env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
               LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "scaled.pretrain", *argv], env=env,
        stderr=open(os.path.join(logs, f"rank{rank}.err"), "w"),
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL)))
print(json.dumps([p.wait() for p in procs]))
"""


@pytest.mark.distributed
@pytest.mark.xdist_group("distributed")
@pytest.mark.slow
def test_sigterm_to_the_process_group_with_loader_workers_checkpoints_and_exits_0(tmp_path):
    """Item 3: SLURM's time limit / scancel signal the whole group, data-loader workers too.

    2 gloo ranks with 2 workers each; os.killpg(SIGTERM) once both ranks are stepping.
    """
    from tests.faults.test_pretrain_faults import free_port

    run, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    args = [*TINY, "--max-steps", "200", "--checkpoint-every", "0", "--log-every", "1",
            "--num-workers", "2", "--output-dir", str(run)]  # fmt: skip
    launcher = subprocess.Popen(
        [sys.executable, "-c", _GROUP_LAUNCHER, str(logs), str(free_port()), *args],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + TIMEOUT_S
    while len(metrics(run)) < 2:
        if time.monotonic() > deadline or launcher.poll() is not None:
            os.killpg(launcher.pid, signal.SIGKILL)
            pytest.fail(f"not stepping: {[p.read_text()[-2000:] for p in logs.glob('*.err')]}")
        time.sleep(0.2)
    os.killpg(launcher.pid, signal.SIGTERM)
    try:
        out, _ = launcher.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        pytest.fail("ranks did not stop after SIGTERM")
    errs = [(logs / f"rank{r}.err").read_text() for r in range(2)]
    assert json.loads(out) == [0, 0], errs
    for err in errs:
        assert "Traceback" not in err and "killed by signal" not in err, err
    (ckpt,) = list_checkpoints(run)
    step = load_ok(ckpt)["step"]
    assert 2 <= step < 200
    assert f"preempted: checkpoint {ckpt} at step {step}; exit 0" in errs[0]


# --------------------------------------------------------------------------- 4: disk full


def test_disk_full_as_torch_really_reports_it_exits_4(tmp_path, capsys, image_root, monkeypatch):
    """Item 4: torch.save to a full device raises RuntimeError ('[enforce fail at
    inline_container.cc] ... unexpected pos'), not OSError. The second save here writes to
    /dev/full, so the exception is torch's own."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 2:
            real_save(obj, "/dev/full")  # raises what a full disk raises
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    code, err = run_main(
        capsys, *TINY, *IMAGE_ARGS, "--data-dir", str(image_root), "--output-dir", str(run),
        "--checkpoint-every", "1",
    )  # fmt: skip
    monkeypatch.undo()
    assert code == 4, err
    line = error_line(err)
    previous = run / "ckpt_00000001.pt"
    assert f"could not write checkpoint {run / 'ckpt_00000002.pt'} (" in line, line
    assert "unexpected pos" in line and "MiB free there" in line, line
    assert f"previous checkpoint {previous} is intact" in line, line
    assert [p.name for p in run.iterdir() if "ckpt" in p.name] == [previous.name]
    assert load_ok(previous)["step"] == 1


# --------------------------------------------------------------------------- 5: 16-bit images


def test_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    """Item 5: convert('RGB') clips I;16 at 255 (a gradient became 99.6% white)."""
    gradient = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(gradient).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(ImageFiles([(str(path), 0)]).load(0)[0])
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    expected = np.rint(gradient / 257.0).astype(np.uint8)
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1
    assert (rgb == 255).mean() < 0.01


# --------------------------------------------------------------------------- 6, 7: resume


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (["--arch", "resnet18"], "--arch 'small_resnet' -> 'resnet18'"),
        (["--method", "byol"], "--method 'minc' -> 'byol'"),
        (["--classes"], "data classes 2 -> 3"),
        (["--optimizer", "sgd"], "holds adamw optimiser state, not --optimizer sgd"),
    ],
    ids=["arch", "method", "classes", "optimizer"],
)
def test_resume_with_a_different_model_is_one_line(tmp_path, capsys, image_root, two_step_run,
                                                   change, expected):  # fmt: skip
    """Item 6: --resume auto after changing --arch, --method, the class count (or the
    optimiser, whose state would load and fail at the first step)."""
    run = copy_run(two_step_run, tmp_path / "run")
    data = image_root
    if change == ["--classes"]:
        data = Path(shutil.copytree(image_root, tmp_path / "data"))
        write_jpegs(data / "train" / "bird", 4, np.random.default_rng(5))
        change = []
    code, err = run_main(
        capsys, *TINY, *IMAGE_ARGS, "--data-dir", str(data), "--output-dir", str(run),
        "--resume", "auto", "--max-steps", "3", *change,
    )  # fmt: skip
    line = user_error(code, err, str(run / "ckpt_00000002.pt"), expected)
    assert "--output-dir" in line


def test_resume_file_that_is_not_our_checkpoint_is_one_line(tmp_path, capsys, image_root):
    """Item 7: a loadable file without our keys (used to be KeyError: 'model')."""
    other = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    code, err = run_main(
        capsys, *TINY, *IMAGE_ARGS, "--data-dir", str(image_root),
        "--output-dir", str(tmp_path / "run"), "--resume", str(other),
    )  # fmt: skip
    user_error(code, err, f"{other} is not a pretrain.py checkpoint (no model, optimizer")


# --------------------------------------------------------------------------- 9, 10: odd files


def decompression_bomb_png(path: Path, side: int = 14000) -> None:
    """A PNG whose header says side x side pixels (over twice PIL's limit); no pixel data."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_oversized_image_is_skipped_counted_and_warned(tmp_path, capsys):
    """Item 9: a 14000x14000 PNG (DecompressionBombError) used to kill the run."""
    root = images(tmp_path / "data", n_cat=7)
    bomb = root / "train" / "cat" / "huge.png"
    decompression_bomb_png(bomb)
    with pytest.raises(Image.DecompressionBombError):  # PIL's limit is kept
        Image.open(bomb)
    run = tmp_path / "run"  # 16 files, batch 16: every step reads every file
    code, err = run_main(capsys, *TINY, *IMAGE_ARGS, "--data-dir", str(root),
                         "--output-dir", str(run))  # fmt: skip
    assert code == 0, err
    assert err.count(f"warning: skipping unreadable image {bomb}") == 1, err
    assert metrics(run)[-1]["skipped_images"] == 2  # read (and replaced) in each of 2 steps
    assert load_ok(run / "ckpt_00000002.pt")["step"] == 2


def test_symlink_loop_and_dot_folders_are_skipped_by_the_scan(tmp_path, capsys):
    """Item 10 (a symlink loop raised OSError in the scan) and the dot-folder edge
    (.ipynb_checkpoints counted as an empty class)."""
    root = images(tmp_path / "data", n_cat=3, n_dog=3)
    cat = root / "train" / "cat"
    os.symlink("b.jpg", cat / "a.jpg")
    os.symlink("a.jpg", cat / "b.jpg")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (cat / ".hidden.jpg").write_bytes(b"macOS resource fork")
    capsys.readouterr()
    samples, classes = scan_image_folder(root, "train")
    assert classes == ["cat", "dog"]
    assert len(samples) == 6 and not any(
        Path(p).name.startswith((".", "a.", "b.")) for p, _ in samples
    )
    err = capsys.readouterr().err
    for link in ("a.jpg", "b.jpg"):
        assert f"warning: skipping {cat / link} (Too many levels of symbolic links)" in err, err


# --------------------------------------------------------------------------- 11: output dir


def test_output_dir_under_a_file_is_one_line(tmp_path, capsys, image_root):
    """Item 11: --output-dir /etc/passwd/x (a path under a file) raised NotADirectoryError."""
    a_file = tmp_path / "passwd"
    a_file.write_text("root:x:0:0\n")
    code, err = run_main(capsys, *TINY, *IMAGE_ARGS, "--data-dir", str(image_root),
                         "--output-dir", str(a_file / "x"))  # fmt: skip
    user_error(code, err, f"--output-dir {a_file / 'x'} cannot be used (Not a directory)")


def test_a_second_run_in_the_same_output_dir_is_refused_and_a_stale_lock_is_not(
    tmp_path, capsys, image_root
):
    """Edge: two runs in one --output-dir interleaved their files. A live lock holder (here:
    this process, as another run would) refuses the run; a lock file left by a dead process
    (no flock held: the kernel dropped it) does not."""
    run = tmp_path / "run"
    run.mkdir()
    argv = [*TINY, *IMAGE_ARGS, "--data-dir", str(image_root), "--output-dir", str(run)]
    with open(run / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"otherhost pid {os.getpid()}\n")  # what OutputDirLock writes: its owner
        held.flush()
        code, err = run_main(capsys, *argv)
        user_error(
            code, err, f"--output-dir {run} is in use by another run (otherhost pid {os.getpid()}"
        )
    assert not list_checkpoints(run)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    (run / ".lock").write_text(f"{dead}\n")  # stale: its process is gone
    code, err = run_main(capsys, *argv)
    assert code == 0, err
    assert load_ok(run / "ckpt_00000002.pt")["step"] == 2


# --------------------------------------------------------------------------- rough edges


def test_worker_user_error_is_one_line_without_the_worker_traceback(tmp_path, capsys):
    """Edge: with --num-workers, a data UserError arrived as the worker's whole traceback."""
    root = tmp_path / "data"
    for name in ("cat", "dog"):
        (root / "train" / name).mkdir(parents=True)
        for i in range(8):
            (root / "train" / name / f"{i}.jpg").write_bytes(b"not an image")
    argv = [*TINY, "--image-size", "32", "--num-workers", "1", "--data-dir", str(root),
            "--output-dir", str(tmp_path / "run")]  # fmt: skip
    code, err = run_main(capsys, *argv)
    assert code == 2, err
    assert error_line(err) == (
        "error: no readable image in the data set; check the files under --data-dir"
    )


def test_resume_accepts_a_run_folder(tmp_path, capsys, image_root, two_step_run):
    """Edge: --resume DIR said the folder 'does not exist'."""
    source = copy_run(two_step_run, tmp_path / "source")
    run = tmp_path / "run"
    code, err = run_main(
        capsys, *TINY, *IMAGE_ARGS, "--data-dir", str(image_root), "--output-dir", str(run),
        "--resume", str(source), "--max-steps", "3",
    )  # fmt: skip
    assert code == 0, err
    assert f"resume: {source / 'ckpt_00000002.pt'} at step 2" in err, err
    assert load_ok(run / "ckpt_00000003.pt")["step"] == 3


def test_world_size_change_states_both_runs_batches():
    """Edge: the resume line used the new --batch-size for the old run and ignored
    --accum-steps."""
    cfg = replace(demo(), batch_size=256)  # global batch 256
    old = {"world_size": 8, "config": {"batch_size": 256, "accum_steps": 2}}
    line = world_size_change(old, cfg, 2)
    assert line == (
        "resume: world size 8 -> 2; per-rank micro-batch 16 x 2 accumulation -> 128 x 1; "
        "global batch 256 unchanged: data order and augmentations too"
    )
    old = {"world_size": 4, "config": {"batch_size": 512, "accum_steps": 1}}
    assert world_size_change(old, cfg, 2).endswith(
        "per-rank micro-batch 128 x 1 accumulation -> 128 x 1; "
        "global batch 512 -> 256: the batches differ from here"
    )
    assert world_size_change({"world_size": 2, "config": {}}, cfg, 2) is None


def test_flat_folder_is_one_unlabelled_set_for_pretraining_only(tmp_path):
    """Edge: images directly in train/ were rejected, and the message did not say that
    train/any_name/ works. Pretraining takes them (label 0, no classes); evaluation, which
    needs labels, says how to make a class folder."""
    root = tmp_path / "data"
    paths = write_jpegs(root / "train", 3, np.random.default_rng(2))
    samples, classes = scan_image_folder(root, "train", unlabelled_ok=True)
    assert classes == [] and samples == [(str(p), 0) for p in paths]
    with pytest.raises(UserError) as info:
        scan_image_folder(root, "train")
    message = str(info.value)
    assert "has images but no class folders" in message and "ROOT/train/all/" in message


@pytest.mark.slow
def test_ctrl_c_to_the_foreground_group_checkpoints_and_exits_130(tmp_path):
    """Edge: Ctrl-C (SIGINT to the whole foreground group, loader workers included) left a
    traceback and no checkpoint; now it saves at the next step boundary and exits 130."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "scaled.pretrain", *TINY, "--max-steps", "200",
         "--checkpoint-every", "0", "--log-every", "1", "--num-workers", "2",
         "--output-dir", str(run)],
        cwd=REPO, env=_env(), stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + TIMEOUT_S
    while len(metrics(run)) < 2:
        if time.monotonic() > deadline or proc.poll() is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"not stepping: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    ((code, err),) = _finish([proc], timeout=TIMEOUT_S)
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and "killed by signal" not in err, err
    (ckpt,) = list_checkpoints(run)
    step = load_ok(ckpt)["step"]
    assert f"interrupted: checkpoint {ckpt} at step {step}; exit 130" in err


@pytest.mark.distributed
@pytest.mark.xdist_group("distributed")
@pytest.mark.slow
def test_flat_folder_of_unlabelled_images_pretrains_on_two_ranks(tmp_path):
    """Edge (and a "done when" item): images directly in train/, 2 gloo ranks, end to end."""
    root = tmp_path / "data"
    write_jpegs(root / "train", 16, np.random.default_rng(3))
    run = tmp_path / "run"
    args = [*TINY, *IMAGE_ARGS, "--data-dir", str(root)]
    results = _finish(_launch_ranks(run, 2, args), timeout=TIMEOUT_S)
    for code, err in results:
        assert code == 0, err[-3000:]
        assert "Traceback" not in err
    note = f"note: {root / 'train'} has no class folders: pretraining on unlabelled images"
    assert results[0][1].count(note) == 1 and note not in results[1][1]
    saved = load_ok(run / "ckpt_00000002.pt")
    assert saved["step"] == 2 and saved["world_size"] == 2 and saved["num_classes"] == 0
    assert not any(k.startswith("online.probe") for k in saved["model"])
    assert "online_probe_acc" not in metrics(run)[-1]
