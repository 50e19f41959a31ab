"""Self-supervised pretraining: `torchrun --nproc_per_node=N scaled/pretrain.py --preset NAME`.

One trainer for every method; only the loss module differs (`scaled.objective`). Read top to
bottom: the run state, `train_step`, logs and checkpoints, set-up, `train`. MINC's step (Eq. 15,
20, 22), inside `MINCLoss`:

    t1, t2 = target(x1), target(x2)                      # phibar, no gradient
    C_batch = global_second_moment(cat(t1, t2))          # all-reduce over the global batch
    Cbar <- beta Cbar + (1 - beta) C_batch               # identical on every rank
    loss = (minc(phi(x1), t2, Cbar) + minc(phi(x2), t1, Cbar)) / 2

Exit status (`scaled.lifecycle`): 0 done or preempted (SIGTERM/SIGUSR1: every rank checkpoints
at the same step, then exits 0), 2 user error, 3 non-finite loss, 4 checkpoint write failed, 130
interrupted by SIGINT / Ctrl-C (checkpoint, as for SIGTERM). One process stops at the next step;
several agree on the stop flag every `STOP_AGREE_EVERY` (10) steps through a CPU/gloo
all-reduce, which does not wait for the GPU. No other host synchronisation happens per step
except at log intervals and checkpoints.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (`torchrun scaled/pretrain.py`): find `scaled`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib
import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import torch
import torch.distributed as dist
import torch.nn.functional as nnf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from scaled.augment import device_stage
from scaled.checkpoint import atomic_save, checkpoint_path, prune_checkpoints, training_state
from scaled.compile_plan import check_compile_plan, compile_online
from scaled.config import (
    PretrainConfig,
    check_rank_batch,
    config_to_dict,
    nan_fault_step,
    resolved_amp,
    resolved_channels_last,
    traits,
)
from scaled.data import (
    GlobalBatchSampler,
    crop_scale_min,
    pretrain_dataset,
    resolved_loader,
    worker_error_text,
)
from scaled.distributed import STOP_AGREE_EVERY, cleanup, init_distributed
from scaled.errors import UserError
from scaled.faults import with_nan_fault
from scaled.health import CollapseMonitor, representation_health
from scaled.knn import check_monitor_labels, knn_due, knn_monitor, monitor_sets
from scaled.lifecycle import (
    EXIT_INTERRUPTED,
    EXIT_NONFINITE,
    EXIT_USER,
    EXIT_WRITE,
    RunError,
    StopSignals,
    check_folder_writable,
    claim_output_dir,
    exit_code,
    ignore_stop_signals,
    write_failure,
)
from scaled.model import SSLModel, target_tau
from scaled.objective import build_objective, ssl_loss, target_features
from scaled.optim import build_optimizer, build_scheduler
from scaled.options import config_json, parse_config, print_config_requested
from scaled.presets import check_preset_data
from scaled.resume import resume, world_size_change  # noqa: F401  (world_size_change: tests)

__all__ = ["RunError", "RunState", "build_run_state", "main", "train", "train_step"]


# --------------------------------------------------------------------------- the run state


@dataclass
class RunState:
    """What the step, the log and the checkpoint share: the modules, the position, the meters.

    `online` is what the step calls (DDP / compiled wrapper of `model.online`), `objective` the
    loss module that `build_objective` made for the method; the meters in
    `acc` and `bad_step` are device tensors, read only at log intervals and checkpoints.
    """

    cfg: PretrainConfig
    model: SSLModel
    objective: torch.nn.Module  # the loss module (`scaled.objective`), with its state (Cbar)
    online: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    in_channels: int
    num_classes: int
    steps_per_epoch: int
    total_steps: int
    world: int = 1
    rank: int = 0
    control: object = None  # gloo group for host-side flags (None: the default group)
    step: int = 0
    acc: dict[str, torch.Tensor] = dataclass_field(default_factory=dict)
    bad_step: torch.Tensor | None = None  # first non-finite step (1-based), 0: none
    last_z: torch.Tensor | None = None
    last_good: Path | None = None
    logger: object = None
    monitor: object = None
    t_log: float = 0.0
    steps_since_log: int = 0
    extra_metrics: dict[str, float] = dataclass_field(default_factory=dict)  # the kNN monitor's
    lock: object = None  # rank 0's `OutputDirLock` on --output-dir

    def release(self) -> None:
        """Let go of the output folder's lock (rank 0; a no-op elsewhere or when released)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def autocast(self):
        """bf16/fp16 autocast on the run's device (CUDA or CPU) when the run uses it, else a
        no-op context (`resolved_amp`: `--amp auto` is bf16 on CUDA, float32 on the CPU)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def reset_meters(self) -> None:
        """Zero the device-side accumulators (after each log)."""
        for v in self.acc.values():
            v.zero_()
        self.t_log, self.steps_since_log = time.perf_counter(), 0


METERS = ("loss", "probe_correct", "probe_count", "skipped")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def precision_and_format(
    cfg: PretrainConfig, device_type: str
) -> tuple[torch.memory_format, torch.dtype | None]:
    """(memory format, autocast dtype or None) of a run on `device_type`.

    `--amp auto` and `--channels-last` left unset mean bf16 + channels_last on CUDA and float32
    contiguous on the CPU; explicit values are honoured on both (scaled.config.resolved_amp).
    """
    channels_last = resolved_channels_last(cfg, device_type)
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    return memory_format, AMP_DTYPES[resolved_amp(cfg, device_type)]


def build_run_state(
    cfg: PretrainConfig,
    in_channels: int,
    num_classes: int,
    *,
    device: torch.device,
    world: int = 1,
    rank: int = 0,
    local_rank: int = 0,
    steps_per_epoch: int = 1,
) -> RunState:
    """Model, loss module, optimiser, schedules, grad scaler and wrappers for `cfg` (no data,
    no logger)."""
    cuda = device.type == "cuda"
    total_steps = cfg.epochs * steps_per_epoch
    model = SSLModel(cfg, in_channels, num_classes)
    if cfg.sync_bn and world > 1 and not cuda:
        if rank == 0:
            print("warning: --sync-bn ignored on CPU (no CPU kernel)", file=sys.stderr)
    elif cfg.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format, amp_dtype = precision_and_format(cfg, device.type)
    model.to(device, memory_format=memory_format)
    objective = build_objective(cfg).to(device)
    optimizer = build_optimizer(model.online, cfg)
    scheduler = build_scheduler(optimizer, total_steps, round(cfg.warmup_epochs * steps_per_epoch))
    # fp16 has 5 exponent bits: small gradients underflow without loss scaling (CPU and CUDA).
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    online = model.online
    if world > 1:
        online = DistributedDataParallel(
            model.online, device_ids=[local_rank] if cuda else None, gradient_as_bucket_view=True
        )
    online = compile_online(online, cfg, world=world, device_type=device.type)  # or UserError
    zero = torch.zeros((), device=device)
    return RunState(
        cfg=cfg,
        model=model,
        objective=objective,
        online=online,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        device=device,
        amp_dtype=amp_dtype,
        memory_format=memory_format,
        in_channels=in_channels,
        num_classes=num_classes,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        world=world,
        rank=rank,
        acc={k: zero.clone() for k in METERS},
        bad_step=torch.zeros((), dtype=torch.long, device=device),
        t_log=time.perf_counter(),
    )


# --------------------------------------------------------------------------- the step


def probe_loss(run: RunState, out: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy of the online linear probe on detached features; counts its hits."""
    if "probe_logits" not in out:
        return torch.zeros((), device=run.device)
    both = torch.cat([labels, labels])
    logits = out["probe_logits"].float()
    run.acc["probe_correct"] += (logits.argmax(1) == both).sum()
    run.acc["probe_count"] += both.numel()
    return nnf.cross_entropy(logits, both)


def train_step(run: RunState, micro_batches) -> dict[str, torch.Tensor]:
    """One optimiser step over the micro-batches of a global batch.

    Each micro-batch is what the loader yields: (x1, x2, labels, [indices,] skipped); a view is
    a tensor, or with the two-stage loader uint8 pixels and parameters that `device_stage`
    augments on the device, batched.

    For each micro-batch: both views through the online network, the target forward, the
    loss module (its statistics first: MINC's global C_batch and Cbar EMA), backward (DDP
    syncs on the last one only); then the optimiser, the lr schedule and the target EMA
    (Eq. 14). No host synchronisation: the loss and the meters stay on the device.
    """
    cfg, model = run.cfg, run.model
    n = len(micro_batches)
    run.optimizer.zero_grad(set_to_none=True)
    for k, (x1, x2, labels, *_, skipped) in enumerate(micro_batches):
        x1, x2 = (device_stage(v, run.device, run.memory_format, run.amp_dtype) for v in (x1, x2))
        labels = labels.to(run.device, non_blocking=True)
        sync = k == n - 1 or run.world == 1
        with contextlib.nullcontext() if sync else run.online.no_sync():
            with run.autocast():
                out = run.online(x1, x2)
                targets = target_features(model, out, x1, x2)
                loss = ssl_loss(run.objective, out, targets)
                total = loss + probe_loss(run, out, labels)
            run.scaler.scale(total / n).backward()
        run.acc["loss"] += loss.detach().float() / n
        run.acc["skipped"] += skipped.to(run.device, non_blocking=True).sum()
        bad = ~torch.isfinite(loss.detach())
        run.bad_step.copy_(torch.where(bad & (run.bad_step == 0), run.step + 1, run.bad_step))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    model.update_target(target_tau(run.step, run.total_steps, cfg.tau_base))  # (Eq. 14)
    run.step += 1
    run.steps_since_log += 1
    run.last_z = out["z1"].detach()
    return {"loss": loss.detach(), "z1": run.last_z}


# --------------------------------------------------------------------------- logs and checkpoints


def say(run: RunState, msg: str) -> None:
    """Print `msg` to stderr on rank 0."""
    if run.rank == 0:
        print(msg, file=sys.stderr, flush=True)


def check_finite(run: RunState) -> None:
    """RunError (exit 3) when any rank saw a non-finite loss since the start (a host sync)."""
    flag = run.bad_step.clone()
    if run.world > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    n = int(flag.item())
    if n:
        raise RunError(
            EXIT_NONFINITE,
            f"loss is nan at step {n}; last good checkpoint: {run.last_good or 'none'}",
        )


def save_checkpoint(run: RunState) -> None:
    """Atomic checkpoint of `run` on rank 0, agreed by every rank; RunError 4 when it fails.

    torch reports a full disk as OSError(ENOSPC) or as a RuntimeError from its zip writer
    ("[enforce fail at inline_container.cc] ... unexpected pos"); both are a failed write.
    Pruning (`prune_checkpoints`) never deletes the file just written; a failed delete is a
    warning, not a failed checkpoint.
    """
    check_finite(run)  # never save a non-finite checkpoint
    cfg = run.cfg
    path = checkpoint_path(cfg.output_dir, run.step)
    ok, reason = 1, ""
    if run.rank == 0:
        state = training_state(run)  # outside the try: only the write is a write failure
        try:
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
            atomic_save(state, path)
        except (OSError, RuntimeError) as err:
            ok, reason = 0, write_failure(err, cfg.output_dir)
        if ok:
            try:
                prune_checkpoints(cfg.output_dir, cfg.keep_checkpoints, path)
            except OSError as err:
                say(run, f"warning: could not delete old checkpoints ({err}); delete them by hand")
    if run.world > 1:
        flag = torch.tensor([ok], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=run.control)
        ok = int(flag.item())
    if not ok:
        raise RunError(
            EXIT_WRITE,
            f"could not write checkpoint {path} ({reason or 'failed on rank 0'}); "
            f"previous checkpoint {run.last_good or 'none'} is intact",
        )
    run.last_good = path


def log_metrics(run: RunState) -> None:
    """Reduce the meters over ranks, add the health metrics, write one log line (a host sync)."""
    check_finite(run)
    cfg, step, spe = run.cfg, run.step, run.steps_per_epoch
    vals = torch.stack([run.acc[k] for k in METERS])
    if run.world > 1:
        dist.all_reduce(vals)
    loss_sum, correct, count, skipped = vals.tolist()
    elapsed = time.perf_counter() - run.t_log
    metrics = {
        "loss": loss_sum / (run.world * max(run.steps_since_log, 1)),
        "lr": run.scheduler.get_last_lr()[0],
        "tau": target_tau(step, run.total_steps, cfg.tau_base),
        "epoch": step / spe,
        "img_per_s": run.steps_since_log * cfg.batch_size / max(elapsed, 1e-9),
        "skipped_images": skipped,
    }
    if count:
        metrics["online_probe_acc"] = correct / count
    metrics.update(run.extra_metrics)
    run.extra_metrics.clear()
    if run.rank == 0 and run.last_z is not None:
        Cbar = getattr(run.objective, "Cbar", None)
        health = representation_health(run.last_z, Cbar, gha=traits(cfg).gha)
        metrics.update(health)
        warning = run.monitor.check(step, health)
        if warning:
            run.logger.write(f"warning: {warning}")
    run.logger.log(step, metrics)
    run.logger.update_progress(
        step, epoch=f"{step / spe:.2f}", loss=metrics["loss"], lr=metrics["lr"],
        img_s=metrics["img_per_s"],
    )  # fmt: skip
    run.reset_meters()


# --------------------------------------------------------------------------- set-up helpers


def resolve_device(cfg: PretrainConfig) -> str:
    """'cuda' or 'cpu' (UserError when cuda is asked for and absent)."""
    want = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible; pass --device cpu")
    return want


def build_dali_loader(cfg: PretrainConfig, micro: int, rank: int, local_rank: int, sampler, device):
    """`--loader dali`: the pipeline of scaled/dali_loader.py (on the GPU; `device_id=None` runs it
    on the CPU), fed by the trainer's own `sampler`, or a one-line UserError."""
    from scaled.dali_loader import DaliTwoViewLoader, DaliUnavailableError

    if not cfg.data_dir:
        raise UserError("--loader dali needs an ImageFolder --data-dir; use --loader torch")
    if cfg.augment != "byol":  # scaled/dali_loader.py builds BYOL's views only
        raise UserError(
            f"--loader dali has only BYOL's views, not --augment {cfg.augment}; "
            "use --loader device or --loader torch"
        )
    try:
        return DaliTwoViewLoader(
            Path(cfg.data_dir) / "train",
            batch_size=micro,
            sampler=sampler,  # the trainer's: set_epoch / set_start_step drive DALI's order
            crop=cfg.image_size,
            scale_min=crop_scale_min(cfg),
            num_threads=max(cfg.num_workers, 1),
            device_id=local_rank if device.type == "cuda" else None,
            shard_id=rank,
            seed=cfg.seed,
        )
    except DaliUnavailableError as err:
        raise UserError(str(err)) from None


def start_logging(run: RunState, last_step: int, device_type: str) -> None:
    """run_info.json, the printed config, the metrics logger and the collapse monitor."""
    from scaled.runlog import RunLogger, write_run_info

    cfg = run.cfg
    micro = cfg.batch_size // (run.world * cfg.accum_steps)
    if run.rank == 0:
        cfg_dict = config_to_dict(cfg)
        write_run_info(cfg.output_dir, cfg_dict, world_size=run.world, device=device_type)
        say(run, "config:\n" + "\n".join(f"  {k} = {v!r}" for k, v in cfg_dict.items()))
        say(
            run,
            f"world size {run.world}, per-rank micro-batch {micro} x {cfg.accum_steps} "
            f"accumulation, {run.steps_per_epoch} steps/epoch, {last_step} steps (schedule: "
            f"{run.total_steps}), lr {cfg.lr * cfg.batch_size / 256:g}",
        )
    run.logger = RunLogger(
        cfg.output_dir, enabled=run.rank == 0, total_steps=last_step, initial_step=run.step
    )
    run.monitor = CollapseMonitor()


# --------------------------------------------------------------------------- training


def set_up(cfg: PretrainConfig) -> tuple[RunState, object, GlobalBatchSampler, int]:
    """Device, process group, data, run state, the output folder's lock, resume and logging;
    returns (run, loader, sampler, last step). On failure the lock is released again."""
    device_type = resolve_device(cfg)
    # Checked before the process group exists, so every rank fails alike with one line instead
    # of a peer crashing inside init_process_group after rank 0 has left.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_rank_batch(cfg, world)  # even split over ranks and accumulation, micro-batches >= 2
    check_compile_plan(cfg, world, device_type)
    check_folder_writable(cfg.output_dir, "--output-dir")  # before the data scan, not after
    rank, world, local_rank, device = init_distributed(device_type)
    micro = cfg.batch_size // (world * cfg.accum_steps)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)

    loader_kind = resolved_loader(cfg, device.type)
    dataset, in_channels, num_classes = pretrain_dataset(cfg, two_stage=loader_kind == "device")
    check_monitor_labels(cfg, num_classes)  # --knn-every needs class folders: one line
    if num_classes == 0 and rank == 0:
        print(
            f"note: {Path(cfg.data_dir) / 'train'} has no class folders: pretraining on "
            "unlabelled images, the online probe is off",
            file=sys.stderr,
        )
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, rank, world, cfg.seed)
    steps_per_epoch = sampler.steps_per_epoch
    dali = None
    if loader_kind == "dali":
        dali = build_dali_loader(cfg, micro, rank, local_rank, sampler, device)
    run = build_run_state(
        cfg, in_channels, num_classes, device=device, world=world, rank=rank,
        local_rank=local_rank, steps_per_epoch=steps_per_epoch,
    )  # fmt: skip
    if world > 1 and dist.get_backend() != "gloo":
        run.control = dist.new_group(backend="gloo")  # host-side flags without GPU syncs
    run.lock = claim_output_dir(cfg.output_dir, rank, world, run.control)
    try:
        resume(run, lambda msg: say(run, msg))
        if cfg.knn_every:
            monitor_sets(cfg)  # scan the labelled data now: a missing val/ fails before step 1
        last_step = min(run.total_steps, cfg.max_steps) if cfg.max_steps else run.total_steps
        start_logging(run, last_step, device_type)
    except BaseException:
        run.release()
        raise
    say(run, f"input pipeline: --loader {cfg.loader} -> {loader_kind}")
    loader = dali or DataLoader(
        dataset,
        batch_size=micro,
        sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        drop_last=False,
        worker_init_fn=ignore_stop_signals,
    )
    return run, loader, sampler, last_step


def train_one_epoch(run: RunState, loader, sampler, last_step: int, stop, step_fn) -> int | None:
    """The steps from `run.step` to the end of its epoch (or to `last_step`); the exit status
    when a stop signal ended the run (checkpoint written), else None."""
    spe = run.steps_per_epoch
    sampler.set_epoch(run.step // spe)
    sampler.set_start_step(run.step % spe)  # a resumed run continues inside its epoch
    batches = iter(loader)
    for _ in range(run.step % spe, spe):
        step_fn(run, [next(batches) for _ in range(run.cfg.accum_steps)])
        code = end_of_step(run, last_step, stop)
        if code is not None:
            return code
        if run.step >= last_step:
            break
    return None


def train(cfg: PretrainConfig) -> int:
    """Run pretraining with `cfg`; returns the exit status (0, or 130 after SIGINT) or raises
    RunError / UserError."""
    run, loader, sampler, last_step = set_up(cfg)
    nan_step = nan_fault_step(cfg)
    step_fn = train_step if nan_step is None else with_nan_fault(train_step, nan_step)
    try:
        with StopSignals() as stop:
            while run.step < last_step:
                code = train_one_epoch(run, loader, sampler, last_step, stop, step_fn)
                if code is not None:
                    return code
        say(run, f"done: {run.step} steps; checkpoint {run.last_good}")
        return 0
    finally:
        run.logger.close()
        run.release()


def end_of_step(run: RunState, last_step: int, stop: StopSignals) -> int | None:
    """Log and checkpoint when due; when a stop signal was agreed, the checkpoint is written
    and the exit status returned (0 preempted, 130 SIGINT); else None."""
    cfg, step = run.cfg, run.step
    # agreed every STOP_AGREE_EVERY steps: one gloo round trip per 10 steps, not per step
    preempt = stop.agreed(run.control, step=step, every=STOP_AGREE_EVERY)
    if knn_due(cfg, step, run.steps_per_epoch):
        kw = dict(rank=run.rank, world=run.world, device=run.device, amp_dtype=run.amp_dtype)
        run.extra_metrics.update(knn_monitor(run.model, cfg, **kw))
    if step % cfg.log_every == 0 or step == last_step or preempt or run.extra_metrics:
        log_metrics(run)
    checkpoint_due = (
        (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
        or step % run.steps_per_epoch == 0
        or step == last_step
    )
    if checkpoint_due or preempt:
        save_checkpoint(run)
    if preempt:
        code = exit_code(preempt)
        what = "interrupted" if code == EXIT_INTERRUPTED else "preempted"
        run.logger.write(f"{what}: checkpoint {run.last_good} at step {step}; exit {code}")
        return code
    return None


def main(argv: list[str] | None = None) -> int:
    """Console entry point `minc-pretrain`; returns the exit status."""
    prog = "torchrun scaled/pretrain.py"
    code = 0
    try:
        cfg = parse_config(argv, prog=prog)
        if print_config_requested(argv):
            print(config_json(cfg), flush=True)
            return 0
        check_preset_data(argv, cfg)  # an imagenet_* preset never trains on the digits
        code = train(cfg)
    except UserError as err:  # from a data-loader worker too: its message without its traceback
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {worker_error_text(err)}", file=sys.stderr, flush=True)
        code = EXIT_USER
    except RunError as err:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {err}", file=sys.stderr, flush=True)
        code = err.code
    except KeyboardInterrupt:  # Ctrl-C before the stop handlers are installed (set-up)
        if int(os.environ.get("RANK", "0")) == 0:
            print(
                "error: interrupted during set-up, before the first step (no checkpoint); "
                "run the command again",
                file=sys.stderr,
                flush=True,
            )
        code = EXIT_INTERRUPTED
    finally:
        with contextlib.suppress(Exception):
            cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
