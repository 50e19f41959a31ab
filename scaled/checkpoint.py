"""Checkpoints: atomic writes (and the debris of killed writers), keep the newest K, find the
newest readable one.

A checkpoint holds only tensors and primitives (nested dicts / lists / tuples of them), so it
loads with `torch.load(..., weights_only=True)`: online and target weights, the loss module's
state (`Cbar`, C5), optimiser, scheduler and grad-scaler states, step, epoch, position inside
the epoch, RNG states, the config, the git SHA and package versions.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_RE = re.compile(r"^ckpt_(\d{8})\.pt$")


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """`run_dir/ckpt_<step:08d>.pt`."""
    return Path(run_dir) / f"ckpt_{step:08d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints in `run_dir`, oldest first (by step)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def _atomic_write(path: str | os.PathLike, mode: str, write) -> None:
    """`write(fh)` into a temporary file beside `path`, fsync, rename over `path`, fsync the folder.

    A crash (or a full disk) at any point leaves either the old file or the new one, never a
    partial one. On any error the temporary file is removed and the error re-raised.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_save(obj: dict, path: str | os.PathLike) -> None:
    """`torch.save` of `obj` to `path`, atomically (`_atomic_write`)."""
    _atomic_write(path, "wb", lambda fh: torch.save(obj, fh))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """`text` written to `path`, atomically (`_atomic_write`)."""
    _atomic_write(path, "w", lambda fh: fh.write(text))


# The temporary files of `atomic_save` / `atomic_write_text`: `.NAME.tmp.PID` (.pt and .json).
TEMPORARY_RE = re.compile(r"^\.(.+\.(?:pt|json))\.tmp\.(\d+)$")


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this machine (signal 0: nothing is sent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, ValueError, OSError):
        return False
    return True


def remove_stale_temporaries(folder: str | os.PathLike, names=None) -> list[Path]:
    """Delete the temporary files that killed writers left in `folder`; returns them.

    A writer killed inside `atomic_save` (SIGKILL, the OOM killer, a node failure) leaves its
    full-size `.NAME.tmp.PID`. The rule: such a file is deleted when no process with its PID is
    alive on this machine; a live PID's file is kept (it may be a writer now, or a reused PID:
    then it goes at a later start). The callers hold the folder (the run's lock, or their own
    output names `names`), so no writer on another machine shares it. Undeletable files are
    left where they are.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        match = TEMPORARY_RE.match(path.name)
        if not match or (names is not None and match.group(1) not in names):
            continue
        if pid_alive(int(match.group(2))) or not path.is_file():
            continue
        try:
            path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def looks_complete(path: str | os.PathLike) -> bool:
    """Whether `path` is a whole torch zip archive (its central directory, at the end of the
    file, reads and names a pickle): a cheap test that catches a file cut short or overwritten,
    without loading the tensors."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("data.pkl") for n in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def prune_checkpoints(run_dir: str | os.PathLike, keep: int, written: str | os.PathLike) -> None:
    """Keep `written` (the checkpoint just saved) and the newest `keep - 1` complete ones older
    than it; delete the other older ones.

    Never deleted: `written` itself, and checkpoints with a higher step than `written` (left by
    another timeline, e.g. an unreadable `ckpt_00000500.pt` that `--resume auto` skipped; they
    are not counted as kept). Incomplete older files (`looks_complete` False) are not counted
    either, so `keep` readable checkpoints survive; they are deleted once `keep - 1` complete
    ones newer than them exist.
    """
    written = Path(written)
    step = _step(written)
    older = [p for p in list_checkpoints(run_dir) if _step(p) < step]
    kept = 0
    for path in reversed(older):  # newest first
        if kept < keep - 1:
            kept += looks_complete(path)
        else:
            path.unlink(missing_ok=True)


def _step(path: Path) -> int:
    return int(CHECKPOINT_RE.match(path.name).group(1))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """`torch.load(path, weights_only=True)` on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


TRAINING_KEYS = ("model", "optimizer", "scheduler", "scaler", "step", "epoch", "world_size",
                 "rng", "config")  # fmt: skip


def missing_training_keys(ckpt) -> list[str]:
    """The keys a resume needs that `ckpt` lacks (all of them when it is not a dict)."""
    if not isinstance(ckpt, dict):
        return list(TRAINING_KEYS)
    return [k for k in TRAINING_KEYS if k not in ckpt]


def newest_valid_checkpoint(run_dir: str | os.PathLike) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads; unreadable ones are named on stderr and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            ckpt = load_checkpoint(path)
            missing = missing_training_keys(ckpt)
            if missing:
                raise ValueError(f"not a pretrain.py checkpoint: no {', '.join(missing)}")
            return path, ckpt
        except Exception as err:  # any failure means "not usable"
            msg = unreadable_reason(err)
            print(
                f"warning: checkpoint {path} is unreadable ({msg}); "
                "falling back to the previous one",
                file=sys.stderr,
            )
    return None


def unreadable_reason(err: Exception) -> str:
    """Why a checkpoint did not load, in a few words. torch's refusal of a pickle payload
    advises retrying with weights_only=False, which runs that payload's code: never passed on."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in text:
        return (
            "it holds pickled objects other than tensors and primitives, which are not loaded "
            "(weights_only=True)"
        )
    return text.splitlines()[0] if text.strip() else type(err).__name__


def rng_state() -> dict:
    """torch (CPU and CUDA), numpy-global and python `random` states, as tensors/primitives."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of `rng_state` (CUDA states only when CUDA is up and the count matches)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    random.setstate(_to_tuples(state["python"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, (tuple, list)) else x


# --------------------------------------------------------------------------- the schema
# One place writes, restores and loads checkpoints: pretrain.py (`training_state`, `restore`),
# linear_eval.py and the tools (`load_model`). Version 2 adds `in_channels`, `num_classes` and
# `arch` so evaluation never guesses them; version 3 moves `Cbar` from the model's state into
# "objective" (the loss module's state, `scaled.objective`). Older files still load.
SCHEMA_VERSION = 3


def split_legacy_cbar(ckpt: dict) -> tuple[dict, dict]:
    """(model state, objective state) of `ckpt`: a version-1/2 file keeps `Cbar` in the model's
    state; it becomes the objective's (with one update counted when the run had taken a step)."""
    model = dict(ckpt["model"])
    objective = dict(ckpt.get("objective", {}))
    legacy = model.pop("Cbar", None)
    if legacy is not None and "objective" not in ckpt:
        objective = {"Cbar": legacy, "updates": torch.tensor(int(int(ckpt.get("step", 0)) > 0))}
    return model, objective


def checkpoint_cbar(ckpt: dict) -> torch.Tensor | None:
    """MINC's `Cbar` (Eq. 15) from a checkpoint of any version; None for methods without it."""
    return split_legacy_cbar(ckpt)[1].get("Cbar")


def training_state(run) -> dict:
    """Everything a resumed run needs, from a `scaled.pretrain.RunState` (C5: Cbar included).

    Only tensors and primitives, so `load_checkpoint` reads it with `weights_only=True`.
    """
    from scaled.config import config_to_dict
    from scaled.runlog import git_state, package_versions

    spe = run.steps_per_epoch
    return {
        "schema": SCHEMA_VERSION,
        "model": run.model.state_dict(),
        "objective": run.objective.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "step": run.step,
        "epoch": run.step // spe,
        "step_in_epoch": run.step % spe,
        "samples_seen_in_epoch": (run.step % spe) * run.cfg.batch_size,
        "world_size": run.world,
        "rng": rng_state(),
        "config": config_to_dict(run.cfg),
        "arch": run.cfg.arch,
        "in_channels": run.in_channels,
        "num_classes": run.num_classes,
        "git_sha": str(git_state().get("sha")),
        "versions": package_versions(),
    }


def checkpoint_shapes(ckpt: dict) -> tuple[int, int]:
    """(in_channels, num_classes) of a checkpoint; read from the weights for version-1 files."""
    if "in_channels" in ckpt and "num_classes" in ckpt:
        return int(ckpt["in_channels"]), int(ckpt["num_classes"])
    weights = ckpt["model"]
    in_channels = int(weights["online.backbone.conv1.weight"].shape[1])
    probe = weights.get("online.probe.weight")
    return in_channels, int(probe.shape[0]) if probe is not None else 10


def model_differences(run, ckpt: dict) -> list[str]:
    """What differs between the model of `ckpt` and the one `run` built (resume report)."""
    old = ckpt.get("config", {})
    keys = ("method", "arch", "width", "small_blocks", "stem_stride", "projector", "proj_out",
            "proj_hidden", "pred_hidden", "predictor", "target_network", "online_probe",
            "exclude_bias_bn", "fix_pred_lr")  # fmt: skip
    diff = [
        f"--{k.replace('_', '-')} {old.get(k)!r} -> {getattr(run.cfg, k)!r}"
        for k in keys
        if k in old and old[k] != getattr(run.cfg, k)
    ]
    in_ch, n_cls = checkpoint_shapes(ckpt)
    if in_ch != run.in_channels:
        diff.append(f"data input channels {in_ch} -> {run.in_channels}")
    if n_cls != run.num_classes:
        diff.append(f"data classes {n_cls} -> {run.num_classes}")
    return diff


def option_differences(run, ckpt: dict) -> list[str]:
    """Every option that differs between `ckpt`'s run and `run` (but the run's own bookkeeping):
    the flags to look at when a state does not fit and `model_differences` knows no reason."""
    old, new = ckpt.get("config", {}), dataclasses.asdict(run.cfg)
    own = ("output_dir", "resume", "max_steps", "log_every", "checkpoint_every", "device")
    return [f"--{k.replace('_', '-')} {old[k]!r} -> {v!r}" for k, v in new.items()
            if k in old and k not in own and old[k] != v]  # fmt: skip


def restore(run, ckpt: dict, path: str | os.PathLike) -> None:
    """Load `ckpt` into `run` (weights, optimiser, schedules, RNG, step); UserError on mismatch.

    A model or optimiser that does not fit (changed --arch, --method, predictor, data classes)
    is a one-line UserError naming what differs and how to start a new run.
    """
    from scaled.errors import UserError

    old_optimizer = ckpt.get("config", {}).get("optimizer", run.cfg.optimizer)
    if old_optimizer != run.cfg.optimizer:  # its state would load and fail at the first step
        raise UserError(
            f"checkpoint {path} holds {old_optimizer} optimiser state, not "
            f"--optimizer {run.cfg.optimizer}; resume with --optimizer {old_optimizer} or pass "
            "a new --output-dir to start a new run"
        )
    model_state, objective_state = split_legacy_cbar(ckpt)
    try:
        run.model.load_state_dict(model_state)
        run.objective.load_state_dict(objective_state)
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        what = ", ".join(model_differences(run, ckpt) or option_differences(run, ckpt)) or (
            str(err).splitlines()[0])  # fmt: skip
        raise UserError(
            f"checkpoint {path} was written by a different model ({what}); resume with the "
            "original options or pass a new --output-dir to start a new run"
        ) from None
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    run.step = int(ckpt["step"])


def load_model(path: str | os.PathLike, *, random_init: bool = False, ckpt: dict | None = None):
    """(config, `SSLModel` with the checkpoint's weights, checkpoint) for evaluation.

    `random_init`: the same network with fresh weights (seeded by the run's seed), a baseline.
    `ckpt`: the checkpoint already read from `path` (one read per evaluation).
    Raises UserError when `path` is not a readable pretrain.py checkpoint.
    """
    from scaled.config import config_from_dict
    from scaled.errors import UserError
    from scaled.model import SSLModel

    try:
        ckpt = load_checkpoint(path) if ckpt is None else ckpt
        cfg = config_from_dict(ckpt["config"])
        in_channels, num_classes = checkpoint_shapes(ckpt)
    except Exception as err:  # any failure: not a checkpoint we can use
        raise UserError(
            f"checkpoint {path} is unreadable or not a pretrain.py checkpoint "
            f"({type(err).__name__}); pass a ckpt_*.pt file that pretrain.py wrote"
        ) from None
    torch.manual_seed(cfg.seed)
    model = SSLModel(cfg, in_channels, num_classes)
    if not random_init:
        model.load_state_dict(split_legacy_cbar(ckpt)[0])
    return cfg, model, ckpt


def find_checkpoint(path: str | os.PathLike) -> tuple[Path, dict]:
    """(file, loaded checkpoint) for a checkpoint file or a run folder (its newest readable
    checkpoint), read once: evaluation and export use the dict, never re-reading the file."""
    from scaled.errors import UserError

    path = Path(path)
    if path.is_dir():
        if not list_checkpoints(path):
            raise UserError(
                f"run folder {path} has no ckpt_*.pt checkpoints (pretraining wrote none yet); "
                "pass a run folder with checkpoints or a ckpt_*.pt file"
            )
        found = newest_valid_checkpoint(path)
        if found is None:
            raise UserError(
                f"no readable checkpoint in {path}; pass a ckpt_*.pt file or run folder"
            )
        return found
    if not path.is_file():
        raise UserError(f"--checkpoint {path} does not exist; pass a ckpt_*.pt file or run folder")
    try:
        return path, load_checkpoint(path)
    except Exception as err:  # any failure: not a checkpoint we can use
        raise UserError(
            f"checkpoint {path} is unreadable or not a pretrain.py checkpoint "
            f"({type(err).__name__}); pass a ckpt_*.pt file that pretrain.py wrote"
        ) from None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint file `find_checkpoint` picks (a file, or a run folder's newest)."""
    return find_checkpoint(path)[0]


def load_backbone(path: str | os.PathLike, *, random_init: bool = False, ckpt: dict | None = None):
    """(config, backbone) from a pretrain.py checkpoint (`random_init`: same net, fresh weights);
    `ckpt`: the checkpoint already read from `path`."""
    from scaled.errors import UserError

    try:
        cfg, model, _ = load_model(path, random_init=random_init, ckpt=ckpt)
    except RuntimeError as err:  # weights that do not fit the network the config describes
        raise UserError(
            f"checkpoint {path} does not match the network its config describes "
            f"({str(err).splitlines()[0][:120]}); pass a checkpoint written by pretrain.py"
        ) from None
    return cfg, model.online.backbone
