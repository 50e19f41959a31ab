"""The trainer's GPU-path settings on the CPU: a few real `train_step`s per setting, recorded.

`run_variants` builds the trainer's own run state (`scaled.pretrain.build_run_state`) once per
setting (float32, `--amp bf16`, `--amp fp16` with its GradScaler at `FP16_INIT_SCALE` and at
its default, `--channels-last`, `--compile`), from the same
seed, and calls the trainer's own step (`train_step`) on this process's rows of the same global
batches. It records what the test compares: each step's loss, the gradient of the first step,
the dtype of the online network's outputs, of `C_batch`, `Cbar` and the loss, the memory format
of the first convolution's weight, and (compiled runs) the number of graphs dynamo compiled
after each step, and the GradScaler's scale before and after each step. `worker` is one rank
of a gloo group, as torchrun would start it.
"""

from __future__ import annotations

import getpass
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

B_GLOBAL, STEPS, SIZE = 16, 3, 32
VARIANTS = {  # name -> config overrides (the CPU default is float32, contiguous, eager)
    "fp32": {},
    "bf16": {"amp": "bf16"},
    "fp16": {"amp": "fp16"},  # GradScaler started at FP16_INIT_SCALE: step 1 is compared
    "fp16_overflow": {"amp": "fp16"},  # GradScaler's default 65536: step 1 overflows, skipped
    "channels_last": {"channels_last": True},
    "bf16_channels_last": {"amp": "bf16", "channels_last": True},
    "compile": {"compile": True},
}
# The loss scale the "fp16" variant starts at. GradScaler's default, 2^16, overflows the fp16
# gradient of step 1 here for both methods (the step is skipped and nothing is compared);
# from 2^10 down to 1 step 1 is finite and its gradient the same (relative error 0.0739 minc,
# 0.0731 spectral against float32 at each of 1024, 128, 16, 1: no underflow either).
FP16_INIT_SCALE = 1024.0


def config(method: str, **overrides):
    """The demo preset shrunk to a CPU test: 8-channel small ResNet, k = 16, SGD, RGB 32 px."""
    from scaled.config import validate
    from scaled.presets import demo

    cfg = replace(
        demo(), method=method, width=8, stem_stride=2, proj_hidden=32, proj_out=16,
        pred_hidden=32, batch_size=B_GLOBAL, online_probe=False, optimizer="sgd", lr=0.1,
        weight_decay=0.0, warmup_epochs=0.0, epochs=STEPS, device="cpu", amp="none",
        channels_last="auto",
    )  # fmt: skip
    cfg = replace(cfg, **overrides)
    validate(cfg)
    return cfg


def global_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """STEPS global batches of two RGB views, identical in every process (seeded)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(STEPS):
        x1 = torch.rand(B_GLOBAL, 3, SIZE, SIZE, generator=g)
        x2 = (x1 + 0.2 * torch.randn(x1.shape, generator=g)).clamp(0, 1)
        out.append((x1, x2))
    return out


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def run_variant(method: str, variant: str, rank: int = 0, world: int = 1) -> dict:
    """STEPS trainer steps of `method` under the settings `VARIANTS[variant]`."""
    from scaled.pretrain import build_run_state, train_step

    torch.manual_seed(0)  # the same initial weights in every variant and on every rank
    cfg = config(method, **VARIANTS[variant])
    run = build_run_state(
        cfg, 3, 10, device=torch.device("cpu"), world=world, rank=rank, steps_per_epoch=STEPS
    )
    if variant == "fp16":
        run.scaler = torch.amp.GradScaler("cpu", init_scale=FP16_INIT_SCALE)
    seen: dict = {"stat_dtypes": []}
    run.model.online.register_forward_hook(
        lambda module, inputs, out: seen.__setitem__("out_dtype", out["p1"].dtype)
    )
    if hasattr(run.objective, "update_cbar"):
        update_cbar = run.objective.update_cbar

        def recording_update_cbar(C_batch, *args, **kwargs):
            update_cbar(C_batch, *args, **kwargs)
            seen["stat_dtypes"].append((C_batch.dtype, run.objective.Cbar.dtype))

        run.objective.update_cbar = recording_update_cbar
    b = B_GLOBAL // world
    rows = slice(rank * b, (rank + 1) * b)
    record: dict = {"loss": [], "graphs": [], "scales": []}
    scaling = run.scaler.is_enabled()
    record["init_scale"] = run.scaler.get_scale() if scaling else None
    for s, (x1, x2) in enumerate(global_batches()):
        labels, skipped = torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long)
        result = train_step(run, [(x1[rows], x2[rows], labels, skipped)])
        record["loss"].append(float(result["loss"]))
        record["loss_dtype"] = result["loss"].dtype
        record["graphs"].append(_compiled_graphs())
        record["scales"].append(run.scaler.get_scale() if scaling else None)
        if s == 0:  # the gradients of step 1 (unscaled by GradScaler.step under fp16)
            grads = [p.grad.reshape(-1) for p in run.model.online.parameters()]
            record["grad"] = torch.cat(grads).detach().float().clone()
    conv = next(m for m in run.model.online.modules() if isinstance(m, torch.nn.Conv2d))
    record["channels_last_weights"] = conv.weight.is_contiguous(memory_format=torch.channels_last)
    record["out_dtype"] = seen["out_dtype"]
    record["stat_dtypes"] = seen["stat_dtypes"]
    record["scale"] = run.scaler.get_scale() if run.scaler.is_enabled() else None
    return record


def run_variants(methods, variants, rank: int = 0, world: int = 1) -> dict:
    """{(method, variant): record} for every pair."""
    return {(m, v): run_variant(m, v, rank, world) for m in methods for v in variants}


def worker(rank: int, world: int, port: int, outdir: str, methods, variants) -> None:
    """One spawned gloo rank: the environment torchrun would give it, then `run_variants`."""
    from scaled.distributed import cleanup, init_distributed

    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    # One inductor cache per rank: two ranks compiling the same kernel into one shared cache
    # raced here ("main.so: file too short"); a per-rank folder kept across runs stays warm.
    cache = Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}_minc_rank{rank}"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    init_distributed("cpu")
    torch.save(run_variants(methods, variants, rank, world), f"{outdir}/rank{rank}.pt")
    cleanup()
