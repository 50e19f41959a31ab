"""Self-supervised pretraining: `torchrun --nproc_per_node=N scaled/pretrain.py --preset NAME`.

One trainer for every method; only the loss differs (`ssl_loss`). Read top to bottom: set-up,
resume, the step loop, logging, checkpoints. MINC's step (Eq. 15, 20, 22):

    t1, t2 = target(x1), target(x2)                      # phibar, no gradient
    C_batch = global_second_moment(cat(t1, t2))          # all-reduce over the global batch
    Cbar <- beta Cbar + (1 - beta) C_batch               # identical on every rank
    loss = (minc(phi(x1), t2, Cbar) + minc(phi(x2), t1, Cbar)) / 2

Exit status: 0 done or preempted (SIGTERM/SIGUSR1: checkpoint at the next step boundary on
every rank, then exit 0), 2 user error, 3 non-finite loss, 4 checkpoint write failed.
No host synchronisation happens per step except at log intervals and checkpoints (the
preemption flag is agreed through a CPU/gloo all-reduce, which does not wait for the GPU).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (`torchrun scaled/pretrain.py`): find `scaled`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib
import signal
import time

import torch
import torch.distributed as dist
import torch.nn.functional as nnf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from scaled.checkpoint import (
    atomic_save,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    newest_valid_checkpoint,
    prune_checkpoints,
    rng_state,
    set_rng_state,
)
from scaled.config import (
    PretrainConfig,
    UserError,
    config_from_dict,
    config_to_dict,
    nan_fault_step,
    parse_config,
)
from scaled.data import GlobalBatchSampler, pretrain_dataset
from scaled.distributed import cleanup, global_second_moment, init_distributed, update_cbar
from scaled.losses import (
    alpha_loss_batch,
    byol_loss_batch,
    minc_loss_batch,
    normalized_features,
    simclr_loss_batch,
    spectral_loss_batch,
)
from scaled.model import SSLModel, target_tau
from scaled.optim import build_optimizer, build_scheduler

EXIT_USER, EXIT_NONFINITE, EXIT_WRITE = 2, 3, 4


class RunError(Exception):
    """A run that must stop with exit status `code` and the one-line `error: ...` message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- preemption

_PREEMPT = {"flag": False}


def _on_preempt_signal(signum, frame) -> None:  # noqa: ARG001
    _PREEMPT["flag"] = True


def preemption_requested(group) -> bool:
    """Whether any rank got SIGTERM/SIGUSR1 (a CPU all-reduce of the flags; no GPU sync)."""
    if not dist.is_initialized():
        return _PREEMPT["flag"]
    flag = torch.tensor([int(_PREEMPT["flag"])], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return bool(flag.item())


# --------------------------------------------------------------------------- the loss


def ssl_loss(
    cfg: PretrainConfig,
    model: SSLModel,
    out: dict[str, torch.Tensor],
    x1: torch.Tensor,
    x2: torch.Tensor,
    *,
    first_step: bool,
    distributed: bool,
) -> torch.Tensor:
    """The self-supervised loss of `cfg.method` for one (micro-)batch; updates `Cbar` for MINC.

    `out` is the online network's output (z: projector, p: predictor, identity by default C3).
    """
    p1, p2 = out["p1"], out["p2"]
    if cfg.feature_norm > 0 and cfg.method not in ("byol", "simclr"):
        p1, p2 = (
            normalized_features(p1, cfg.feature_norm),
            normalized_features(p2, cfg.feature_norm),
        )
    if cfg.method in ("minc", "noncontrastive", "byol"):
        with torch.no_grad():
            if model.target is not None:
                t1, t2 = model.target(x1), model.target(x2)
            else:  # no target network: phibar = sg(phi) (Eq. 12 defaults)
                t1, t2 = out["z1"].detach(), out["z2"].detach()
            if cfg.feature_norm > 0 and cfg.method != "byol":
                t1 = normalized_features(t1, cfg.feature_norm)
                t2 = normalized_features(t2, cfg.feature_norm)
        if cfg.method == "byol":
            return byol_loss_batch(p1, t2) + byol_loss_batch(p2, t1)
        with torch.no_grad():
            source = (t1, t2) if cfg.cbar_source == "target" else (p1.detach(), p2.detach())
            C_batch = global_second_moment(torch.cat(source))  # (Eq. 15, 22)
            if first_step:  # C11: Cbar starts at the first C_batch
                model.Cbar.copy_(C_batch)
            else:
                update_cbar(model.Cbar, C_batch, cfg.beta)
        gha = cfg.method == "minc"
        loss1 = minc_loss_batch(p1, t2, model.Cbar, gha=gha)  # (Eq. 20)
        loss2 = minc_loss_batch(p2, t1, model.Cbar, gha=gha)
        return 0.5 * (loss1 + loss2)
    if cfg.method == "spectral":  # (Eq. 19)
        return spectral_loss_batch(
            p1, p2, include_diagonal=cfg.include_diagonal, distributed=distributed
        )
    if cfg.method == "alpha":  # (Eq. 21)
        return alpha_loss_batch(
            p1,
            p2,
            cfg.alpha,
            include_diagonal=cfg.include_diagonal,
            estimator=cfg.alpha_estimator,
            distributed=distributed,
        )
    if cfg.method == "simclr":
        return simclr_loss_batch(p1, p2, temperature=cfg.temperature, distributed=distributed)
    raise ValueError(f"unknown method {cfg.method!r}")


# --------------------------------------------------------------------------- set-up helpers


def resolve_device(cfg: PretrainConfig) -> str:
    """'cuda' or 'cpu' (UserError when cuda is asked for and absent)."""
    want = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible; pass --device cpu")
    return want


def config_changes(old: dict, new: PretrainConfig) -> list[str]:
    """Fields that differ between a checkpoint's config and this run's (resume report)."""
    ignore = {"resume", "max_steps", "output_dir", "fault_inject", "num_workers", "log_every"}
    new_d = config_to_dict(new)
    return [
        f"{k}: {old.get(k)!r} -> {v!r}"
        for k, v in new_d.items()
        if k not in ignore and k in old and old[k] != v
    ]


def _run_metadata() -> tuple[dict, dict]:
    from scaled.runlog import git_state, package_versions

    return git_state(), package_versions()


# --------------------------------------------------------------------------- training


def check_batch_divisible(cfg: PretrainConfig, world: int) -> None:
    """The global batch must split evenly over ranks and accumulation steps."""
    if cfg.batch_size % (world * cfg.accum_steps):
        m = world * cfg.accum_steps
        raise UserError(
            f"--batch-size {cfg.batch_size} is not divisible by world size {world} x "
            f"--accum-steps {cfg.accum_steps}; pass a multiple of {m}"
        )


def build_dali_loader(cfg: PretrainConfig, micro: int, rank: int, world: int, local_rank: int):
    """`--loader dali`: the GPU pipeline of scaled/dali_loader.py, or a one-line UserError."""
    from scaled.dali_loader import DaliTwoViewLoader, DaliUnavailableError

    if not cfg.data_dir:
        raise UserError("--loader dali needs an ImageFolder --data-dir; use --loader torch")
    try:
        return DaliTwoViewLoader(
            Path(cfg.data_dir) / "train",
            batch_size=micro,
            crop=cfg.image_size,
            scale_min=cfg.crop_scale_min,
            num_threads=max(cfg.num_workers, 1),
            device_id=local_rank,
            shard_id=rank,
            num_shards=world,
            seed=cfg.seed + rank,
        )
    except DaliUnavailableError as err:
        raise UserError(str(err)) from None


def train(cfg: PretrainConfig) -> int:
    """Run pretraining with `cfg`; returns the exit status (0) or raises RunError/UserError."""
    device_type = resolve_device(cfg)
    # Checked before the process group exists, so every rank fails alike with one line instead
    # of a peer crashing inside init_process_group after rank 0 has left.
    check_batch_divisible(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        if device_type == "cpu":  # gloo for CPU tensors even on a machine with GPUs
            dist.init_process_group(backend="gloo")
    rank, world, local_rank, device = init_distributed()
    if device_type == "cpu":
        device = torch.device("cpu")
    cuda = device.type == "cuda"
    main = rank == 0
    check_batch_divisible(cfg, world)
    micro = cfg.batch_size // (world * cfg.accum_steps)
    control = None
    if world > 1 and dist.get_backend() != "gloo":
        control = dist.new_group(backend="gloo")  # host-side flags without GPU syncs
    if cuda:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)

    dataset, in_channels, num_classes = pretrain_dataset(cfg)
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, rank, world, cfg.seed)
    steps_per_epoch = sampler.steps_per_epoch
    dali = build_dali_loader(cfg, micro, rank, world, local_rank) if cfg.loader == "dali" else None
    if dali is not None:  # DALI shards its own file list
        steps_per_epoch = len(dali) // cfg.accum_steps
    total_steps = cfg.epochs * steps_per_epoch
    last_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)

    model = SSLModel(cfg, in_channels, num_classes)
    if cfg.sync_bn and world > 1 and not cuda:
        if main:
            print("warning: --sync-bn ignored on CPU (no CPU kernel)", file=sys.stderr)
    elif cfg.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if (cuda and cfg.channels_last) else torch.preserve_format
    model.to(device, memory_format=memory_format)
    optimizer = build_optimizer(model.online, cfg)
    scheduler = build_scheduler(optimizer, total_steps, warmup_steps)
    use_fp16 = cuda and cfg.amp == "fp16"
    scaler = torch.amp.GradScaler("cuda", enabled=use_fp16)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=amp_dtype))
        if cuda and amp_dtype is not None
        else contextlib.nullcontext
    )

    def say(msg: str) -> None:
        if main:
            print(msg, file=sys.stderr, flush=True)

    # ---- resume
    step, last_good = 0, None
    existing = list_checkpoints(cfg.output_dir)
    if existing and not cfg.resume:
        raise UserError(
            f"{cfg.output_dir} already holds checkpoints (newest {existing[-1].name}); pass "
            "--resume auto to continue that run or a new --output-dir"
        )
    if cfg.resume:
        if cfg.resume == "auto":
            found = newest_valid_checkpoint(cfg.output_dir)
            if found is None:
                say(f"resume: no readable checkpoint in {cfg.output_dir}; starting from step 0")
        else:
            if not Path(cfg.resume).is_file():
                raise UserError(f"--resume {cfg.resume} does not exist; pass a checkpoint or auto")
            try:
                found = (Path(cfg.resume), load_checkpoint(cfg.resume))
            except Exception as err:  # noqa: BLE001
                raise UserError(
                    f"checkpoint {cfg.resume} is unreadable ({type(err).__name__}); "
                    "pass another --resume path or --resume auto"
                ) from None
        if found is not None:
            last_good, ckpt = found
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
            step = int(ckpt["step"])
            say(f"resume: {last_good} at step {step} (epoch {ckpt['epoch']})")
            if ckpt["world_size"] != world:
                say(
                    f"resume: world size {ckpt['world_size']} -> {world}; per-rank batch "
                    f"{cfg.batch_size // ckpt['world_size']} -> {cfg.batch_size // world}; the "
                    "global batch, data order and augmentations are unchanged"
                )
            for change in config_changes(ckpt["config"], cfg):
                say(f"resume: config changed: {change}")
            del ckpt

    online = model.online
    if world > 1:
        online = DistributedDataParallel(
            model.online,
            device_ids=[local_rank] if cuda else None,
            gradient_as_bucket_view=True,
        )
    if cfg.compile:
        online = torch.compile(online)

    git, versions = _run_metadata()
    if main:
        from scaled.runlog import write_run_info

        cfg_dict = config_to_dict(cfg)
        write_run_info(cfg.output_dir, cfg_dict, world_size=world, device=device_type)
        say("config:\n" + "\n".join(f"  {k} = {v!r}" for k, v in cfg_dict.items()))
        say(
            f"world size {world}, per-rank micro-batch {micro} x {cfg.accum_steps} accumulation, "
            f"{steps_per_epoch} steps/epoch, {last_step} steps (schedule: {total_steps}), "
            f"lr {cfg.lr * cfg.batch_size / 256:g}"
        )
    from scaled.health import CollapseMonitor, representation_health
    from scaled.runlog import RunLogger

    logger = RunLogger(cfg.output_dir, enabled=main, total_steps=last_step, initial_step=step)
    monitor = CollapseMonitor()
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, _on_preempt_signal)

    loader = dali or DataLoader(
        dataset,
        batch_size=micro,
        sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=cuda,
        persistent_workers=cfg.num_workers > 0,
        drop_last=False,
    )

    # ---- device-side accumulators: read only at log intervals and before checkpoints
    zero = torch.zeros((), device=device)
    acc = {k: zero.clone() for k in ("loss", "probe_correct", "probe_count", "skipped")}
    bad_step = torch.zeros((), dtype=torch.long, device=device)  # first non-finite step, 0: none
    nan_step = nan_fault_step(cfg)
    last_z = None
    t_log, steps_since_log = time.perf_counter(), 0

    def check_finite() -> None:
        flag = bad_step.clone()
        if world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        n = int(flag.item())
        if n:
            raise RunError(
                EXIT_NONFINITE,
                f"loss is nan at step {n}; last good checkpoint: {last_good or 'none'}",
            )

    def save(step: int) -> None:
        nonlocal last_good
        check_finite()  # never save a non-finite checkpoint
        path = checkpoint_path(cfg.output_dir, step)
        ok, reason = 1, ""
        if main:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "epoch": step // steps_per_epoch,
                "step_in_epoch": step % steps_per_epoch,
                "samples_seen_in_epoch": (step % steps_per_epoch) * cfg.batch_size,
                "world_size": world,
                "rng": rng_state(),
                "config": config_to_dict(cfg),
                "git_sha": str(git.get("sha")),
                "versions": versions,
            }
            try:
                Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
                atomic_save(state, path)
                prune_checkpoints(cfg.output_dir, cfg.keep_checkpoints)
            except OSError as err:
                ok, reason = 0, err.strerror or str(err)
        if world > 1:
            flag = torch.tensor([ok], dtype=torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=control)
            ok = int(flag.item())
        if not ok:
            raise RunError(
                EXIT_WRITE,
                f"could not write checkpoint {path} ({reason or 'failed on rank 0'}); "
                f"previous checkpoint {last_good or 'none'} is intact",
            )
        last_good = path

    def log(step: int, epoch: int) -> None:
        nonlocal t_log, steps_since_log
        check_finite()
        vals = torch.stack([acc[k] for k in ("loss", "probe_correct", "probe_count", "skipped")])
        if world > 1:
            dist.all_reduce(vals)
        loss_sum, correct, count, skipped = vals.tolist()
        elapsed = time.perf_counter() - t_log
        metrics = {
            "loss": loss_sum / (world * max(steps_since_log, 1)),
            "lr": scheduler.get_last_lr()[0],
            "tau": target_tau(step, total_steps, cfg.tau_base),
            "epoch": step / steps_per_epoch,
            "img_per_s": steps_since_log * cfg.batch_size / max(elapsed, 1e-9),
            "skipped_images": skipped,
        }
        if count:
            metrics["online_probe_acc"] = correct / count
        if main and last_z is not None:
            gha = cfg.method == "minc"
            uses_cbar = cfg.method in ("minc", "noncontrastive")
            health = representation_health(last_z, model.Cbar if uses_cbar else None, gha=gha)
            metrics.update(health)
            warning = monitor.check(step, health)
            if warning:
                logger.write(f"warning: {warning}")
        logger.log(step, metrics)
        logger.update_progress(
            step,
            epoch=f"{step / steps_per_epoch:.2f}",
            loss=metrics["loss"],
            lr=metrics["lr"],
            img_s=metrics["img_per_s"],
        )
        for v in acc.values():
            v.zero_()
        t_log, steps_since_log = time.perf_counter(), 0

    # ---- the loop
    try:
        while step < last_step:
            epoch = step // steps_per_epoch
            sampler.set_epoch(epoch)
            sampler.set_start_step(step % steps_per_epoch)
            batches = iter(loader)
            for _ in range(step % steps_per_epoch, steps_per_epoch):
                optimizer.zero_grad(set_to_none=True)
                for k in range(cfg.accum_steps):
                    x1, x2, labels, _, skipped = next(batches)
                    x1 = x1.to(device, non_blocking=True, memory_format=memory_format)
                    x2 = x2.to(device, non_blocking=True, memory_format=memory_format)
                    labels = labels.to(device, non_blocking=True)
                    sync = k == cfg.accum_steps - 1 or world == 1
                    ctx = contextlib.nullcontext() if sync else online.no_sync()
                    with ctx:
                        with autocast():
                            out = online(x1, x2)
                            loss = ssl_loss(
                                cfg,
                                model,
                                out,
                                x1,
                                x2,
                                first_step=(step == 0 and k == 0),
                                distributed=world > 1,
                            )
                            total = loss
                            if "probe_logits" in out:
                                both = torch.cat([labels, labels])
                                logits = out["probe_logits"].float()
                                total = total + nnf.cross_entropy(logits, both)
                                acc["probe_correct"] += (logits.argmax(1) == both).sum()
                                acc["probe_count"] += both.numel()
                        if nan_step is not None and step + 1 == nan_step:  # tests only
                            total = total * float("nan")
                            loss = loss * float("nan")
                        scaler.scale(total / cfg.accum_steps).backward()
                    acc["loss"] += loss.detach().float() / cfg.accum_steps
                    acc["skipped"] += skipped.to(device, non_blocking=True).sum()
                    bad = ~torch.isfinite(loss.detach())
                    bad_step.copy_(torch.where(bad & (bad_step == 0), step + 1, bad_step))
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                model.update_target(target_tau(step, total_steps, cfg.tau_base))  # (Eq. 14)
                step += 1
                steps_since_log += 1
                last_z = out["z1"].detach()

                preempt = preemption_requested(control)
                if step % cfg.log_every == 0 or step == last_step or preempt:
                    log(step, epoch)
                checkpoint_due = (
                    (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                    or step % steps_per_epoch == 0
                    or step == last_step
                )
                if checkpoint_due or preempt:
                    save(step)
                if preempt:
                    logger.write(f"preempted: checkpoint {last_good} at step {step}; exit 0")
                    return 0
                if step >= last_step:
                    break
        say(f"done: {step} steps; checkpoint {last_good}")
        return 0
    finally:
        logger.close()


def main(argv: list[str] | None = None) -> int:
    """Console entry point `minc-pretrain`; returns the exit status."""
    prog = "torchrun scaled/pretrain.py"
    code = 0
    try:
        cfg = parse_config(argv, prog=prog)
        code = train(cfg)
    except UserError as err:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {err}", file=sys.stderr, flush=True)
        code = EXIT_USER
    except RunError as err:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {err}", file=sys.stderr, flush=True)
        code = err.code
    finally:
        with contextlib.suppress(Exception):
            cleanup()
    return code


def load_pretrained(path: str | os.PathLike) -> tuple[PretrainConfig, SSLModel, dict]:
    """(config, model with the checkpoint's weights, checkpoint) for evaluation."""
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"])
    in_channels = 3 if cfg.data_dir else 1
    probe_w = ckpt["model"].get("online.probe.weight")
    num_classes = probe_w.shape[0] if probe_w is not None else 10
    model = SSLModel(cfg, in_channels, num_classes)
    model.load_state_dict(ckpt["model"])
    return cfg, model, ckpt


if __name__ == "__main__":
    sys.exit(main())
