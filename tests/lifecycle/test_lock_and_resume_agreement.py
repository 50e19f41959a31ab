"""The run folder's lock on file systems without flock, and ranks that agree on the resume.

Issue 29: a mount without working `flock` (some Lustre / NFS: ENOLCK, EOPNOTSUPP) falls back to
an O_EXCL lock file naming its owner, with one warning; rank 0 chooses the resume checkpoint and
broadcasts it, and a rank that sees another set of checkpoints stops every rank with one line.
"""

from __future__ import annotations

import errno
import os

import pytest
import torch

from scaled.errors import UserError
from scaled.lifecycle import OutputDirLock, StopSignals, exit_code
from tests.gloo import spawn_ranks


def no_flock(*args, **kwargs):
    raise OSError(errno.ENOLCK, "No locks available")


def test_a_mount_without_flock_falls_back_to_an_exclusive_lock_file(tmp_path, monkeypatch, capsys):
    import fcntl

    monkeypatch.setattr(fcntl, "flock", no_flock)
    run = tmp_path / "run"
    first = OutputDirLock(run).acquire()
    err = capsys.readouterr().err
    assert "does not support flock" in err and ".lock.excl" in err
    assert (run / ".lock.excl").read_text().strip().endswith(f"pid {os.getpid()}")
    with pytest.raises(UserError, match=r"in use by another run \(.* pid \d+, lock "):
        OutputDirLock(run).acquire()
    first.release()
    assert not (run / ".lock.excl").exists()
    OutputDirLock(run).acquire().release()  # free again


def test_a_held_flock_is_in_use_and_other_errors_are_not_mistaken_for_it(tmp_path):
    run = tmp_path / "run"
    held = OutputDirLock(run).acquire()
    with pytest.raises(UserError, match="in use by another run"):
        OutputDirLock(run).acquire()
    held.release()
    OutputDirLock(run).acquire().release()


def test_stop_signals_return_their_flag_and_restore_the_handlers():
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert stop.flag == 0
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.agreed() == 1 and exit_code(stop.agreed()) == 0
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.agreed() == 2 and exit_code(2) == 130
    assert signal.getsignal(signal.SIGTERM) is before


def resume_worker(rank: int, world: int, port: int, outdir: str, hide: bool) -> None:
    """Two ranks resuming one run folder; with `hide`, rank 1 does not see the newest file."""
    from dataclasses import replace

    import scaled.resume as resume_module
    from scaled.distributed import cleanup, init_distributed
    from scaled.presets import demo

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    init_distributed("cpu")
    if hide and rank == 1:
        real = resume_module.list_checkpoints
        resume_module.list_checkpoints = lambda d: real(d)[:-1]
    cfg = replace(demo(), output_dir=f"{outdir}/run", resume="auto")
    try:
        found = resume_module.agreed_resume_checkpoint(cfg, rank, world)
        result = {"path": str(found[0]), "step": int(found[1]["step"])}
    except UserError as err:
        result = {"error": str(err)}
    torch.save(result, f"{outdir}/rank{rank}.pt")
    cleanup()


def write_fake_checkpoints(run, steps):
    from scaled.checkpoint import TRAINING_KEYS, atomic_save, checkpoint_path

    run.mkdir(parents=True)
    for step in steps:
        ckpt = {k: {} for k in TRAINING_KEYS} | {"step": step, "epoch": 0, "world_size": 2}
        atomic_save(ckpt, checkpoint_path(run, step))


@pytest.mark.distributed
def test_rank_zero_chooses_the_checkpoint_and_every_rank_resumes_it(tmp_path, monkeypatch):
    write_fake_checkpoints(tmp_path / "run", [2, 4])
    results = spawn_ranks(resume_worker, 2, tmp_path, monkeypatch, False)
    assert [r["step"] for r in results] == [4, 4]
    assert results[0]["path"] == results[1]["path"]


@pytest.mark.distributed
def test_a_rank_that_sees_other_checkpoints_stops_every_rank_with_one_line(tmp_path, monkeypatch):
    write_fake_checkpoints(tmp_path / "run", [2, 4])
    results = spawn_ranks(resume_worker, 2, tmp_path, monkeypatch, True)
    for r in results:
        assert "error" in r and "ranks see different checkpoints" in r["error"], r
        assert "\n" not in r["error"] and "; put --output-dir on a file system" in r["error"]
