"""`scaled/pretrain.py` as a torchrun worker script, with the faults the multi-node tests need.

Run as ``torchrun ... tests/distributed/_worker.py PRETRAIN_ARGS``. Environment (tests only):

- ``MINC_TEST_RECORD=DIR``: each rank appends ``attempt first_step last_step code`` to
  ``DIR/rank<R>.txt`` when it leaves the step loop (first_step: the first step it trained in
  this attempt, so ``first_step - 1`` is the step it resumed from);
- ``MINC_TEST_KILL=R:S``: rank R sends itself SIGKILL after step S, in attempt 0 only (a
  crash between checkpoints; torchrun's restarted attempt runs on);
- ``MINC_TEST_TERM=R:S``: rank R sends itself SIGTERM after step S (a preemption that reaches
  one rank only), in attempt 0 only;
- ``MINC_TEST_STALL=R:S``: rank R writes ``DIR/stalled<R>`` and sleeps after step S, in
  attempt 0 only (so that a test can kill its node at a known step);
- ``MINC_TEST_AGREE_EVERY=N``: the stop flag is agreed every N steps instead of the trainer's
  `STOP_AGREE_EVERY` (a test can then stop within a few steps).

Only wraps the trainer's public step-boundary function, `scaled.pretrain.end_of_step`; the
training itself is untouched.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import scaled.pretrain as pretrain  # noqa: E402
from scaled.distributed import agree_every  # noqa: E402

ATTEMPT = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
_SEEN: dict = {}


def _fault(name: str) -> tuple[int, int] | None:
    value = os.environ.get(name, "")
    if not value or ATTEMPT:
        return None
    rank, step = value.split(":")
    return int(rank), int(step)


def _stop_signals(args) -> object | None:
    """The StopSignals argument of end_of_step (its position may change)."""
    return next((a for a in args if hasattr(a, "agreed") and hasattr(a, "flag")), None)


def _record(run, code) -> None:
    folder = os.environ.get("MINC_TEST_RECORD")
    if folder:
        line = f"{ATTEMPT} {_SEEN['first']} {run.step} {code}\n"
        with open(Path(folder) / f"rank{run.rank}.txt", "a") as fh:
            fh.write(line)


def end_of_step(run, *args, **kwargs):
    _SEEN.setdefault("first", run.step)
    every = int(os.environ.get("MINC_TEST_AGREE_EVERY", "0"))
    stop = _stop_signals(args)
    if every and stop is not None:
        stop.agreed = lambda group=None, **_: agree_every(stop.flag, run.step, every, group)
    if _fault("MINC_TEST_TERM") == (run.rank, run.step):
        os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler sets its stop flag
    code = _original(run, *args, **kwargs)
    if _fault("MINC_TEST_KILL") == (run.rank, run.step):
        print(f"test: rank {run.rank} SIGKILLs itself after step {run.step}", file=sys.stderr)
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    if _fault("MINC_TEST_STALL") == (run.rank, run.step):
        (Path(os.environ["MINC_TEST_RECORD"]) / f"stalled{run.rank}").write_text(str(run.step))
        time.sleep(3600)
    last = args[0] if args else kwargs.get("last_step")
    if code is not None or run.step >= last:
        _record(run, code)
    return code


_original = pretrain.end_of_step
pretrain.end_of_step = end_of_step

if __name__ == "__main__":
    sys.exit(pretrain.main(sys.argv[1:]))
