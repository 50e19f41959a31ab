"""A run's life outside the step: stop signals, the output-folder lock and the exit codes.

Exit status of `scaled/pretrain.py` (and the meaning of `RunError.code`):

    0    done, or preempted (SIGTERM / SIGUSR1: checkpoint at the step all ranks agree on)
    2    a user error (one line `error: <problem>; <fix>`)
    3    a non-finite loss (the last good checkpoint is named)
    4    a checkpoint write failed (the previous one is intact)
    130  interrupted by SIGINT / Ctrl-C (checkpoint at the step all ranks agree on)

Nothing here is a module global: `StopSignals` holds the flag its handlers set and
`OutputDirLock` the lock file it holds, and both are returned to the trainer that owns them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from scaled.distributed import agree_every
from scaled.errors import UserError

EXIT_OK, EXIT_USER, EXIT_NONFINITE, EXIT_WRITE, EXIT_INTERRUPTED = 0, 2, 3, 4, 130

# What each stop signal asks for: 1 preempted (exit 0), 2 interrupted (exit 130).
STOP_SIGNALS = {signal.SIGTERM: 1, signal.SIGUSR1: 1, signal.SIGINT: 2}


class RunError(Exception):
    """A run that must stop with exit status `code` and the one-line `error: ...` message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- stop signals


class StopSignals:
    """SIGTERM, SIGUSR1 and SIGINT set `flag` (0 none, 1 preempt, 2 interrupt); the trainer
    checkpoints at the step the ranks agree on (`agreed`). A context manager: the previous
    handlers come back on exit."""

    def __init__(self) -> None:
        self.flag = 0
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.flag = max(self.flag, STOP_SIGNALS.get(signum, 1))

    def __enter__(self) -> StopSignals:
        self.flag = 0
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def agreed(self, group=None, *, step: int = 0, every: int = 1) -> int:
        """The largest flag over ranks, agreed at steps that are multiples of `every` (a CPU
        all-reduce on `group`, no GPU sync; `scaled.distributed.agree_every`); 0: go on."""
        return agree_every(self.flag, step, every, group)


def exit_code(stop: int) -> int:
    """The exit status of a run stopped by an agreed stop flag (1: preempted, 2: SIGINT)."""
    return EXIT_INTERRUPTED if stop == 2 else EXIT_OK


def ignore_stop_signals(worker_id: int) -> None:
    """Data-loader `worker_init_fn`: workers ignore SIGTERM/SIGINT/SIGUSR1.

    SLURM's time limit and `scancel` signal the whole process group and Ctrl-C signals the
    foreground group: workers that died of it first would make the main process raise
    "DataLoader worker ... killed by signal" before it could checkpoint. The main process
    handles the signal at the next step boundary and then shuts its workers down.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


# --------------------------------------------------------------------------- the output folder

# errno values of a file system that has no (working) `flock`: some Lustre / NFS mounts.
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class OutputDirLock:
    """An exclusive lock on a run folder, held until `release` (or the process's death).

    `fcntl.flock` on ``out/.lock`` (holding host and pid): the kernel drops it when the process
    dies, so a stale file never blocks a new run. On a file system without `flock` (errno in
    `NO_LOCKS`) it falls back, with one warning, to creating ``out/.lock.excl`` with O_EXCL; that
    file is removed on `release`, and one left by a killed run is reported with its owner so the
    user can delete it.
    """

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self.fh = None
        self.excl: Path | None = None

    @staticmethod
    def owner() -> str:
        return f"{socket.gethostname()} pid {os.getpid()}"

    def acquire(self) -> OutputDirLock:
        import fcntl

        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fh = open(self.out / ".lock", "a+")  # held open for the whole run
        except OSError as err:
            raise UserError(
                f"--output-dir {self.out} cannot be used ({err.strerror or err}); "
                "pass an --output-dir you can write"
            ) from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            fh.seek(0)
            who = fh.read().strip() or "?"
            fh.close()
            if err.errno in NO_LOCKS:
                return self._acquire_excl(err)
            raise UserError(
                f"--output-dir {self.out} is in use by another run ({who}, lock "
                f"{self.out / '.lock'}); wait for it to finish or pass another --output-dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{self.owner()}\n")
        fh.flush()
        self.fh = fh
        return self

    def _acquire_excl(self, err: OSError) -> OutputDirLock:
        path = self.out / ".lock.excl"
        print(
            f"warning: {self.out} does not support flock ({err.strerror}); locking with "
            f"{path} instead (delete it by hand if a killed run left it)",
            file=sys.stderr,
        )
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            who = path.read_text().strip() or "?"
            raise UserError(
                f"--output-dir {self.out} is in use by another run ({who}, lock {path}); wait "
                "for it to finish, or delete the lock file if that run is dead"
            ) from None
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{self.owner()}\n")
        self.excl = path
        return self

    def release(self) -> None:
        if self.fh is not None:
            self.fh.close()  # closing the file releases the flock
            self.fh = None
        if self.excl is not None:
            with contextlib.suppress(OSError):
                self.excl.unlink()
            self.excl = None


def claim_output_dir(out: str, rank: int, world: int, group=None) -> OutputDirLock | None:
    """Rank 0 creates and locks `out` (`OutputDirLock`); every rank agrees on the outcome (a CPU
    all-reduce), so all of them stop with exit 2 when it fails. Returns rank 0's lock."""
    problem, lock = "", None
    if rank == 0:
        try:
            lock = OutputDirLock(out).acquire()
        except UserError as err:
            problem = str(err)
    if world > 1:
        flag = torch.tensor([int(not problem)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
        if not flag.item() and not problem:
            problem = f"rank 0 could not claim --output-dir {out}; see its error"
    if problem:
        if lock is not None:
            lock.release()
        raise UserError(problem)
    if lock is not None:  # the folder is ours: clear what killed writers left in it
        report_stale_temporaries(out)
    return lock


def report_stale_temporaries(folder, names=None) -> None:
    """`scaled.checkpoint.remove_stale_temporaries(folder, names)`, said on stderr when any."""
    from scaled.checkpoint import remove_stale_temporaries

    removed = remove_stale_temporaries(folder, names)
    if removed:
        print(
            f"note: removed {len(removed)} partial file(s) left by killed writers in {folder} "
            f"({', '.join(p.name for p in removed[:3])}{' ...' if len(removed) > 3 else ''})",
            file=sys.stderr,
        )


def check_not_input(path: Path, flag: str, inputs: dict) -> None:
    """UserError when the output `path` is one of the command's `inputs` ({path: what it is}):
    the same file by resolved path or by inode (a hard link, `./x`, a relative path)."""
    path = Path(path)
    for given, what in inputs.items():
        same = Path(os.path.abspath(path)).resolve() == Path(os.path.abspath(given)).resolve()
        with contextlib.suppress(OSError):
            same = same or os.path.samefile(path, given)
        if same:
            raise UserError(
                f"{flag} {path} is {what} {given}: writing it would destroy the input; pass "
                "another output path"
            )


def check_writable(path: Path, flag: str, inputs: dict | None = None) -> None:
    """UserError unless the file `path` can be created or overwritten (checked before any work)
    and is none of the command's `inputs` ({path: what it is}, `check_not_input`)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if inputs:
        check_not_input(path, flag, inputs)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; pass a file path such as {path}/result.json")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(
            f"{flag} {path}: folder {parent} does not exist or is not writable; "
            "pass a path in a writable folder"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path} is not writable; pass another path")


def check_folder_writable(folder: Path, flag: str) -> None:
    """UserError unless the folder `folder` exists and is writable, or can be created (its
    nearest existing ancestor is a writable folder); nothing is created."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(
            f"{flag} {folder} cannot be used (Not a directory): {probe} is a file; pass a "
            "folder path"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(
            f"{flag} {folder} cannot be used (folder {probe} is not writable); pass a folder "
            "you can write"
        )


def write_failure(err: Exception, folder: str) -> str:
    """Why a checkpoint write failed, in a few words, with the free space left in `folder`."""
    text = getattr(err, "strerror", None) or (str(err).splitlines() or [type(err).__name__])[0]
    with contextlib.suppress(OSError):
        text += f"; {shutil.disk_usage(folder).free / 2**20:.0f} MiB free there"
    return text
