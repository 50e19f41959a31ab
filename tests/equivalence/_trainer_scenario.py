"""A few real `scaled.pretrain.train_step`s of MINC in float64, recorded for the reference check.

`run_steps` builds the trainer's own run state (`build_run_state`) and calls the trainer's own
step (`train_step`) on this process's rows of fixed global batches; hooks record what the
reference needs: the projector outputs and the gradient of the loss with respect to them, the
target features, `Cbar`, and the online and target weights before and after each step.
`worker` is the same as one rank of a gloo group.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch

B_GLOBAL, STEPS, SIZE = 8, 3, 16


def config():
    """The demo preset shrunk to a float64 CPU test: raw features (Eq. 20 exactly), SGD."""
    from scaled.presets import demo

    return replace(
        demo(), width=8, stem_stride=2, proj_hidden=16, proj_out=6, batch_size=B_GLOBAL,
        online_probe=False, feature_norm=0.0, optimizer="sgd", lr=0.5, weight_decay=0.0,
        warmup_epochs=0.0, epochs=STEPS, tau_base=0.7, beta=0.8, device="cpu",
    )  # fmt: skip


def global_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """STEPS global batches of two views, identical in every process (seeded)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(STEPS):
        x1 = torch.rand(B_GLOBAL, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
        x2 = (x1 + 0.2 * torch.randn(x1.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
        out.append((x1, x2))
    return out


def _weights(modules) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


def run_steps(rank: int = 0, world: int = 1) -> list[dict]:
    """STEPS trainer steps on rows [rank * b, (rank + 1) * b) of each global batch (float64)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _run_steps(rank, world)
    finally:
        torch.set_default_dtype(previous)  # the test process goes on with other tests


def _run_steps(rank: int, world: int) -> list[dict]:
    from scaled.pretrain import build_run_state, train_step

    torch.manual_seed(0)  # the same initial weights on every rank (as train() seeds them)
    cfg = config()
    run = build_run_state(
        cfg, 1, 10, device=torch.device("cpu"), world=world, rank=rank, steps_per_epoch=1
    )
    model, b = run.model, B_GLOBAL // world
    seen: dict = {}

    def on_online(module, inputs, out):
        seen["p"] = [out["p1"], out["p2"]]
        seen["grad"] = [None, None]
        for i in (0, 1):
            out[f"p{i + 1}"].register_hook(lambda g, i=i: seen["grad"].__setitem__(i, g.clone()))

    def on_target(module, inputs, out):
        seen.setdefault("t", []).append(out.detach().clone())

    model.online.register_forward_hook(on_online)
    model.target.register_forward_hook(on_target)
    records = []
    for x1, x2 in global_batches():
        rows = slice(rank * b, (rank + 1) * b)
        seen.pop("t", None)
        parts = (model.online.backbone, model.online.projector)
        before = {
            "target": _weights((model.target.backbone, model.target.projector)),
            "Cbar": run.objective.Cbar.clone(),
            "step": run.step,
        }
        labels, skipped = torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long)
        train_step(run, [(x1[rows], x2[rows], labels, skipped)])
        records.append(
            before
            | {
                "p1": seen["p"][0].detach().clone(),
                "p2": seen["p"][1].detach().clone(),
                "grad_p1": seen["grad"][0],
                "grad_p2": seen["grad"][1],
                "t1": seen["t"][0],
                "t2": seen["t"][1],
                "Cbar_after": run.objective.Cbar.clone(),
                "online_after": _weights(parts),
                "target_after": _weights((model.target.backbone, model.target.projector)),
                "online_buffers": [t.clone() for m in parts for t in m.buffers()],
                "target_buffers": [
                    t.clone()
                    for m in (model.target.backbone, model.target.projector)
                    for t in m.buffers()
                ],  # fmt: skip
                "total_steps": run.total_steps,
            }
        )
    return records


def worker(rank: int, world: int, port: int, outdir: str) -> None:
    """One spawned gloo rank: the environment torchrun would give it, then `run_steps`."""
    from scaled.distributed import cleanup, init_distributed

    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    init_distributed("cpu")
    torch.save(run_steps(rank, world), f"{outdir}/rank{rank}.pt")
    cleanup()
