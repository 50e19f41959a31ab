"""Resuming a pretraining run: which checkpoint, chosen once for all ranks, and what changed.

`--resume auto` takes the newest readable checkpoint of `--output-dir`, `--resume DIR` the newest
of DIR, `--resume FILE` that file. Rank 0 makes the choice and broadcasts it (over the gloo
control group); a rank that sees another set of checkpoints, or cannot read the chosen one, stops
every rank with one line (a shared file system that is not shared, or not yet in sync).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from scaled.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    missing_training_keys,
    newest_valid_checkpoint,
    restore,
)
from scaled.config import PretrainConfig, config_to_dict
from scaled.errors import UserError

# Fields whose change on resume is expected (not reported): how the run is driven, not what it is.
UNREPORTED_CHANGES = {
    "resume",
    "max_steps",
    "output_dir",
    "fault_inject",
    "num_workers",
    "log_every",
}


def find_resume_checkpoint(cfg: PretrainConfig) -> tuple[Path, dict] | None:
    """The checkpoint `--resume` names (auto: the newest readable one in --output-dir; a run
    folder: the newest readable one there; a file: that file), or None."""
    existing = list_checkpoints(cfg.output_dir)
    if existing and not cfg.resume:
        raise UserError(
            f"{cfg.output_dir} already holds checkpoints (newest {existing[-1].name}); pass "
            "--resume auto to continue that run or a new --output-dir"
        )
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        return newest_valid_checkpoint(cfg.output_dir)
    if Path(cfg.resume).is_dir():
        found = newest_valid_checkpoint(cfg.resume)
        if found is None:
            raise UserError(
                f"--resume {cfg.resume} holds no readable checkpoint (ckpt_*.pt); pass a "
                "checkpoint file, another run folder or --resume auto"
            )
        return found
    if not Path(cfg.resume).is_file():
        raise UserError(
            f"--resume {cfg.resume} does not exist; pass a checkpoint, a run folder or auto"
        )
    return Path(cfg.resume), read_training_checkpoint(cfg.resume)


def read_training_checkpoint(path: str | Path) -> dict:
    """A checkpoint that pretrain.py wrote, or a one-line UserError naming the file."""
    try:
        ckpt = load_checkpoint(path)
    except Exception as err:  # any failure to load: say which file and what to do
        raise UserError(
            f"checkpoint {path} is unreadable ({type(err).__name__}); "
            "pass another --resume path or --resume auto"
        ) from None
    missing = missing_training_keys(ckpt)
    if missing:
        raise UserError(
            f"{path} is not a pretrain.py checkpoint (no {', '.join(missing)}); pass a "
            "ckpt_*.pt file that pretrain.py wrote, its run folder or --resume auto"
        )
    return ckpt


def _agree(problem: str, world: int, group) -> str:
    """Every rank's `problem` ("" for none) becomes every rank's: the first non-empty one."""
    if world == 1:
        return problem
    problems: list = [None] * world
    dist.all_gather_object(problems, problem, group=group)
    return next((p for p in problems if p), "")


def agreed_resume_checkpoint(
    cfg: PretrainConfig, rank: int, world: int, group=None
) -> tuple[Path, dict] | None:
    """`find_resume_checkpoint` decided on rank 0 and broadcast; each rank then reads that file.

    Ranks list the checkpoints they see first: different lists (a folder that is not shared, or
    not in sync) stop every rank with one line instead of resuming them at different steps.
    """
    if world == 1:
        return find_resume_checkpoint(cfg)
    seen: list = [None] * world
    dist.all_gather_object(seen, [p.name for p in list_checkpoints(cfg.output_dir)], group=group)
    if any(s != seen[0] for s in seen):
        differ = next(r for r, s in enumerate(seen) if s != seen[0])
        raise UserError(
            f"ranks see different checkpoints in {cfg.output_dir} (rank 0: {seen[0][-3:]}, rank "
            f"{differ}: {seen[differ][-3:]}); put --output-dir on a file system all nodes share"
        )
    choice, problem, found = [None], "", None
    if rank == 0:
        try:
            found = find_resume_checkpoint(cfg)
            choice = [None if found is None else str(found[0])]
        except UserError as err:
            problem = str(err)
    problem = _agree(problem, world, group)
    if problem:
        raise UserError(problem)
    dist.broadcast_object_list(choice, src=0, group=group)
    if choice[0] is None:
        return None
    path, ckpt, problem = Path(choice[0]), None, ""
    try:  # rank 0 has read it already
        ckpt = found[1] if found is not None else read_training_checkpoint(path)
    except UserError as err:
        problem = f"rank {rank}: {err}"
    problem = _agree(problem, world, group)
    if problem:
        raise UserError(problem)
    return path, ckpt


def config_changes(old: dict, new: PretrainConfig) -> list[str]:
    """Fields that differ between a checkpoint's config and this run's (resume report)."""
    new_d = config_to_dict(new)
    return [
        f"{k}: {old.get(k)!r} -> {v!r}"
        for k, v in new_d.items()
        if k not in UNREPORTED_CHANGES and k in old and old[k] != v
    ]


def world_size_change(ckpt: dict, cfg: PretrainConfig, world: int) -> str | None:
    """The resume line for a run continued on a different number of ranks (None: same).

    Per-rank micro-batch = global batch / (world x accumulation), each side from its own run;
    the global batch (and with it the composition of every global batch) is unchanged only
    when --batch-size is.
    """
    old_world = int(ckpt["world_size"])
    if old_world == world:
        return None
    old = ckpt.get("config", {})
    old_batch = int(old.get("batch_size", cfg.batch_size))
    old_accum = int(old.get("accum_steps", cfg.accum_steps))
    old_micro = old_batch // (old_world * old_accum)
    new_micro = cfg.batch_size // (world * cfg.accum_steps)
    if old_batch == cfg.batch_size:
        batch = f"global batch {cfg.batch_size} unchanged: data order and augmentations too"
    else:
        batch = f"global batch {old_batch} -> {cfg.batch_size}: the batches differ from here"
    return (
        f"resume: world size {old_world} -> {world}; per-rank micro-batch {old_micro} x "
        f"{old_accum} accumulation -> {new_micro} x {cfg.accum_steps}; {batch}"
    )


def resume(run, say) -> None:
    """Continue `run` (a `scaled.pretrain.RunState`) from `--resume`: weights, loss state,
    optimiser, schedules, RNG, step; every change is reported through `say`."""
    cfg = run.cfg
    found = agreed_resume_checkpoint(cfg, run.rank, run.world, run.control)
    if found is None:
        if cfg.resume == "auto":
            say(f"resume: no readable checkpoint in {cfg.output_dir}; starting from step 0")
        return
    path, ckpt = found
    restore(run, ckpt, path)
    run.last_good = path
    say(f"resume: {path} at step {run.step} (epoch {ckpt['epoch']})")
    change = world_size_change(ckpt, cfg, run.world)
    if change:
        say(change)
    for change in config_changes(ckpt["config"], cfg):
        say(f"resume: config changed: {change}")
    if run.world > 1:  # the step every rank resumed at, checked (a cheap CPU all-reduce)
        steps = torch.tensor([run.step, -run.step], dtype=torch.long)
        dist.all_reduce(steps, op=dist.ReduceOp.MAX, group=run.control)
        if int(steps[0]) != -int(steps[1]):
            raise UserError(
                f"ranks resumed at different steps ({-int(steps[1])} .. {int(steps[0])}) from "
                f"{path}; put --output-dir on a file system all nodes share"
            )
