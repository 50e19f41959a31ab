"""What a run writes beside its checkpoints: run_info.json, metrics.jsonl, TensorBoard, progress.

Every run records the resolved config, the git SHA, the package versions and the hardware next to
its logs (docs/design.md, "Habits"), so a number in docs/results.md can always be traced back to
the code and the machine that made it.

Files in the run directory:

- ``run_info.json``: written once per start by :func:`write_run_info`. A resumed run keeps the
  previous starts as ``run_info.1.json``, ``run_info.2.json``, ... (oldest first).
- ``metrics.jsonl``: one JSON object per log step,
  ``{"step": 100, "time": 1732550000.1, "loss": ...}`` (``time``: Unix seconds),
  flushed line by line, so a crash loses at most the line being written. A resumed run appends; the
  steps it repeats after its checkpoint appear twice, and readers (``scaled.tools.plot``) keep the
  later ones. Non-finite values are written as the ``NaN`` / ``Infinity`` tokens that Python's
  ``json`` reads back.
- ``tb/``: TensorBoard event files of the same scalars (``tensorboard --logdir RUN_DIR/tb``).

Only rank 0 should write: build :class:`RunLogger` with ``enabled=(rank == 0)`` and every method
is a cheap no-op on the other ranks.
"""

from __future__ import annotations

import datetime
import importlib
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    """Output of ``git args`` in the checkout that holds this file; None when that fails."""
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=_REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> dict[str, Any]:
    """Git SHA and dirty flag of the source tree; ``"unknown"`` outside a git checkout.

    Returns
    -------
    dict
        ``{"sha": str, "dirty": bool | "unknown"}``. ``dirty`` is True when tracked files differ
        from the commit (untracked files are ignored: they do not change what ran).
    """
    sha = _git("rev-parse", "HEAD")
    if not sha:
        return {"sha": "unknown", "dirty": "unknown"}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": "unknown" if status is None else bool(status)}


def package_versions() -> dict[str, str]:
    """Versions of python, torch, torchvision, numpy and this project's two packages."""
    versions = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "numpy", "reference", "scaled"):
        try:
            versions[name] = str(importlib.import_module(name).__version__)
        except Exception:  # a broken optional install must not stop a run from starting
            versions[name] = "not installed"
    return versions


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_names() -> dict[str, Any]:
    """CPU model and core count, and the name of every visible CUDA device."""
    names: dict[str, Any] = {"cpu": _cpu_model(), "cpu_count": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            names["cuda"] = [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ]
            names["cuda_version"] = torch.version.cuda
        else:
            names["cuda"] = []
    except Exception:  # CUDA driver errors: record them rather than fail the run
        names["cuda"] = "unavailable"
    return names


def write_run_info(
    run_dir: str | os.PathLike, config: dict, *, world_size: int, device: str
) -> dict:
    """Write ``run_dir/run_info.json``: config, code version, packages, hardware, command line.

    Parameters
    ----------
    run_dir
        Directory of the run (created if missing).
    config
        The resolved configuration (after presets and command-line overrides). Values that JSON
        cannot hold (paths, dtypes, ...) are written with ``str``.
    world_size
        Number of processes of the run.
    device
        The device string the run trains on (``"cuda"``, ``"cpu"``, ...).

    Returns
    -------
    dict
        What was written. An earlier ``run_info.json`` (a resumed run) is kept as
        ``run_info.N.json`` with the smallest free N.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "config": config,
        "git": git_state(),
        "versions": package_versions(),
        "devices": device_names(),
        "device": device,
        "world_size": world_size,
        "hostname": socket.gethostname(),
        "command": [sys.executable, *sys.argv],
        "cwd": os.getcwd(),
        "start_time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = run_dir / "run_info.json"
    if path.exists():
        n = 1
        while (run_dir / f"run_info.{n}.json").exists():
            n += 1
        path.rename(run_dir / f"run_info.{n}.json")
    text = json.dumps(info, indent=2, default=str)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return json.loads(text)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3g}"
        return f"{value:.4g}"
    return str(value)


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class RunLogger:
    """Metrics file, TensorBoard scalars and a progress bar for one run (rank 0 only).

    Parameters
    ----------
    run_dir
        Directory of the run; ``metrics.jsonl`` and ``tb/`` go there.
    enabled
        False on every rank but 0: then every method returns at once and nothing is opened.
    total_steps
        Last step of the run (the bar's total).
    initial_step
        Step the run starts from (non-zero after ``--resume``); the bar starts there and the ETA
        counts only the steps of this start.
    desc
        Label of the bar and of the plain progress lines.
    tty
        Draw a tqdm bar (True) or print plain lines (False). Default: whether stderr is a terminal,
        so CI logs get readable lines instead of thousands of carriage returns.
    plain_interval_s
        Without a terminal, the least time between two plain progress lines (the first and the last
        step are always printed).
    tensorboard
        Write TensorBoard scalars as well as metrics.jsonl.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        enabled: bool,
        total_steps: int,
        initial_step: int = 0,
        desc: str = "pretrain",
        tty: bool | None = None,
        plain_interval_s: float = 30.0,
        tensorboard: bool = True,
    ) -> None:
        self.enabled = enabled
        if not enabled:
            return
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.total_steps = int(total_steps)
        self.initial_step = int(initial_step)
        self.desc = desc
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.plain_interval_s = plain_interval_s
        self._metrics_file = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._writer = self._open_tensorboard() if tensorboard else None
        self._bar = None
        self._start_time = time.monotonic()
        self._last_plain_time = -math.inf
        self._closed = False

    def _open_tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as exc:  # tensorboard missing or broken: metrics.jsonl is enough
            warnings.warn(
                f"TensorBoard logging is off ({exc}); metrics still go to metrics.jsonl. "
                "Install it with `pip install tensorboard` to get event files.",
                stacklevel=3,
            )
            return None
        # purge_step drops events a crashed earlier start wrote after the resumed checkpoint.
        return SummaryWriter(
            log_dir=str(self.run_dir / "tb"),
            purge_step=self.initial_step if self.initial_step > 0 else None,
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one line to metrics.jsonl (flushed) and write the TensorBoard scalars.

        Parameters
        ----------
        step
            Optimiser step the metrics belong to.
        metrics
            Name -> number. 0-d tensors are accepted (converted with ``float``).
        """
        if not self.enabled:
            return
        values: dict[str, float] = {}
        for name, value in metrics.items():
            try:
                values[name] = float(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"metric {name!r} is {value!r}, not a number; log only scalars "
                    "(use .item() on a tensor, and .write() for text)"
                ) from exc
        record = {"step": int(step), "time": time.time(), **values}
        self._metrics_file.write(json.dumps(record) + "\n")
        self._metrics_file.flush()
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, global_step=int(step))
            self._writer.flush()

    def update_progress(self, step: int, **postfix: Any) -> None:
        """Move the bar (or print a plain line) to ``step``, showing ``postfix`` (loss, lr, img/s).

        Call it with the number of steps completed; keyword names become labels
        (``img_s`` is shown as ``img/s``).
        """
        if not self.enabled:
            return
        shown = {k.replace("img_s", "img/s"): _format_value(v) for k, v in postfix.items()}
        if self.tty:
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(
                    total=self.total_steps,
                    initial=self.initial_step,
                    desc=self.desc,
                    unit="step",
                    dynamic_ncols=True,
                    file=sys.stderr,
                )
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(int(step) - self._bar.n)
            return
        now = time.monotonic()
        last = int(step) >= self.total_steps
        if not last and now - self._last_plain_time < self.plain_interval_s:
            return
        self._last_plain_time = now
        print(self._plain_line(int(step), shown, now), file=sys.stderr, flush=True)

    def _plain_line(self, step: int, shown: dict[str, str], now: float) -> str:
        elapsed = now - self._start_time
        done = step - self.initial_step
        eta = (self.total_steps - step) * elapsed / done if done > 0 else math.inf
        percent = 100.0 * step / self.total_steps if self.total_steps else 100.0
        parts = [f"{self.desc} step {step}/{self.total_steps} ({percent:.1f}%)"]
        parts += [f"{k} {v}" for k, v in shown.items()]
        parts += [f"elapsed {_format_duration(elapsed)}", f"eta {_format_duration(eta)}"]
        return " | ".join(parts)

    def write(self, msg: str) -> None:
        """Print one line without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Close the bar, metrics.jsonl and the TensorBoard writer (safe to call twice)."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        self._metrics_file.close()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
