"""``step``: the trainer's SSL step (``scaled.pretrain.train_step``: two views, target forward,
statistics, loss, optimizer, target EMA) on synthetic data against a supervised step of the same
backbone, with the time of the loss and statistics and of the EMA update as a share of the step."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scaled.tools.bench.common import (
    docs_body,
    markdown_table,
    pick_device,
    publish,
    ran_on_cuda,
    stored_record,
    synchronize,
    time_calls,
    write_json,
)
from scaled.tools.provenance import environment


def step_functions(
    method: str, arch: str, B: int, size: int, device: torch.device, *, amp: bool, compile: bool
) -> dict[str, Callable[[], None]]:
    """Closures timing the trainer's own pieces for `method` on one synthetic batch of B images.

    step: ``scaled.pretrain.train_step`` on one micro-batch (the trainer's step: both views through
    the online net, target forward, statistics and loss, backward, optimizer, target EMA).
    loss: the loss module (``scaled.objective``) alone on fixed projector outputs and cached
    target features (C_batch, Cbar EMA, Eq. 15, 20), with its backward.
    ema: ``update_target`` (Eq. 14).
    """
    from dataclasses import replace

    from scaled.config import PretrainConfig, traits
    from scaled.objective import ssl_loss
    from scaled.pretrain import build_run_state, train_step

    cfg = replace(
        PretrainConfig(),
        method=method,
        arch=arch,
        batch_size=B,
        online_probe=False,
        device=device.type,
        amp="bf16" if amp else "none",
        compile=compile,
    )
    run = build_run_state(cfg, 3, 1000, device=device)
    gen = torch.Generator().manual_seed(0)
    x1, x2 = (
        torch.randn(B, 3, size, size, generator=gen).to(device, memory_format=run.memory_format)
        for _ in range(2)
    )
    labels = torch.zeros(B, dtype=torch.long, device=device)
    batch = [(x1, x2, labels, torch.zeros((), dtype=torch.long, device=device))]
    feats = [torch.randn(B, cfg.proj_out, generator=gen).to(device) for _ in range(4)]
    p1, p2 = (f.requires_grad_() for f in feats[:2])
    targets = (feats[2], feats[3]) if traits(cfg).phibar else None

    def step() -> None:
        train_step(run, batch)

    def loss_only() -> None:
        p1.grad = p2.grad = None
        with run.autocast():
            out = {"z1": p1, "z2": p2, "p1": p1, "p2": p2}
            loss = ssl_loss(run.objective, out, targets)
        loss.backward()

    def ema() -> None:
        run.model.update_target(0.996)

    return {"step": step, "loss": loss_only, "ema": ema}


def supervised_step_function(
    arch: str, B: int, size: int, device: torch.device, *, amp: bool, compile: bool
) -> Callable[[], None]:
    """One supervised step of the same backbone: one view, linear classifier (1000 classes),
    cross entropy, SGD with momentum."""
    from dataclasses import replace

    from scaled.config import PretrainConfig
    from scaled.model import build_backbone

    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    backbone = build_backbone(replace(PretrainConfig(), arch=arch))
    net = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.num_features, 1000))
    net = net.to(device, memory_format=fmt)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    forward = torch.compile(net) if compile else net
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, 3, size, size, generator=gen).to(device, memory_format=fmt)
    y = torch.randint(0, 1000, (B,), generator=gen).to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and amp):
            loss = torch.nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()

    return step


def step_settings(args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    """Architectures, methods, batch, image size and repetitions of this run."""
    if args.quick:
        return {"archs": ["small_resnet"], "methods": ["minc"], "batch_size": 4, "image_size": 32}
    return {
        "archs": args.archs or (["resnet50", "resnet50x2"] if cuda else ["resnet18"]),
        "methods": args.methods,
        "batch_size": args.batch_size or (256 if cuda else 32),
        "image_size": args.image_size or (224 if cuda else 64),
    }


def measure_arch(arch: str, s: dict[str, Any], device: torch.device, amp: bool, compile: bool):
    """One row per method for `arch`: SSL step, supervised step, loss and EMA shares, memory."""
    B, size, reps, methods = s["batch_size"], s["image_size"], s["reps"], s["methods"]
    cuda = device.type == "cuda"
    sup = supervised_step_function(arch, B, size, device, amp=amp, compile=compile)
    fns = {m: step_functions(m, arch, B, size, device, amp=amp, compile=compile) for m in methods}
    times: dict[str, list[float]] = {"supervised": []} | {m: [] for m in methods}
    for rep in range(reps):  # interleaved: machine-load changes hit every column alike
        times["supervised"] += time_calls(sup, device, reps=1, warmup=int(rep == 0))
        for m in methods:
            times[m] += time_calls(fns[m]["step"], device, reps=1, warmup=int(rep == 0))
    t_sup = float(np.median(times["supervised"]))
    rows = []
    for m in methods:
        t_step = float(np.median(times[m]))
        t_loss = float(np.median(time_calls(fns[m]["loss"], device, reps=max(reps, 5))))
        t_ema = float(np.median(time_calls(fns[m]["ema"], device, reps=max(reps, 5))))
        peak_gib = None
        if cuda:  # memory per GPU at this batch: one more step after resetting the peak
            torch.cuda.reset_peak_memory_stats(device)
            fns[m]["step"]()
            synchronize(device)
            peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
        rows.append(
            {
                "arch": arch,
                "method": m,
                "B": B,
                "image_size": size,
                "supervised_s": t_sup,
                "ssl_step_s": t_step,
                "ratio": t_step / t_sup,
                "loss_stats_s": t_loss,
                "ema_s": t_ema,
                "loss_stats_pct": 100 * t_loss / t_step,
                "ema_pct": 100 * t_ema / t_step,
                "img_per_s": B / t_step,
                "peak_memory_gib": peak_gib,
            }
        )
        print(f"  {arch} {m}: step {t_step * 1e3:.1f} ms, supervised {t_sup * 1e3:.1f} ms")
    return rows


def step_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of the step benchmark."""
    return markdown_table(
        [
            "arch",
            "method",
            "B",
            "px",
            "SSL step (ms)",
            "supervised step (ms)",
            "SSL / supervised",
            "loss + statistics (% of step)",
            "target EMA (% of step)",
            "images/s",
            "peak GPU memory (GiB)",
        ],
        [
            [
                r["arch"],
                r["method"],
                r["B"],
                r["image_size"],
                f"{r['ssl_step_s'] * 1e3:.1f}",
                f"{r['supervised_s'] * 1e3:.1f}",
                f"{r['ratio']:.2f}",
                f"{r['loss_stats_pct']:.2f}",
                f"{r['ema_pct']:.2f}",
                f"{r['img_per_s']:.1f}",
                "—" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}",
            ]
            for r in rows
        ],
    )


def step_notes(reps: int, cuda: bool) -> str:
    """The text under the table in docs/results.md."""
    notes = f"""
Synthetic data (random tensors, no loader), median of {reps} interleaved steps after one warm-up.
"SSL step" is the trainer's own step, `scaled.pretrain.train_step`: both views through the online
network, the target forward of both views, the loss module (`C_batch` and the `Cbar` EMA
for MINC, the loss), the backward, the optimizer step (LARS), the lr schedule and the target EMA
(Eq. 14). "supervised" is one view through the same backbone with a 1000-class linear head, cross
entropy, SGD. By operation count an SSL step with a target network (minc, byol) is about 2.7x a
supervised one (two views forward + backward, two target forwards: 8 vs 3 forward-equivalents);
spectral and simclr have no target network (6 vs 3: about 2x); byol adds an MLP predictor.
"loss + statistics" is the loss module alone on fixed projector outputs and cached target
features, "target EMA" is `update_target`, each timed on its own and given as a share of the
step. Targets on a GPU at B 256, k 256: loss + statistics < 3%, EMA < 2%.
"""
    if not cuda:
        notes += """
**CPU run**: a small backbone and batch so that it finishes fast (above); no bf16 or
channels_last. The GPU figures come from
`python -m scaled.tools.bench step --device cuda --write-docs` (ResNet-50 1x and 2x at 224 px,
B 256, bf16 autocast + channels_last; add `--compile`), not run: no GPU was lent to this
project's sessions.
"""
    return notes


def run_step(args: argparse.Namespace) -> dict[str, Any]:
    """The `step` benchmark; returns its JSON payload."""
    device = pick_device(args.device)
    env = environment(device)
    cuda = device.type == "cuda"
    s = step_settings(args, cuda)
    s["reps"] = 1 if args.quick else (args.reps or (10 if cuda else 3))
    amp = cuda and not args.no_amp
    rows = [row for arch in s["archs"] for row in measure_arch(arch, s, device, amp, args.compile)]
    table = step_table(rows)
    print(table)
    settings = s | {"bf16_autocast": amp, "channels_last": cuda, "compile": args.compile}
    payload = {"benchmark": "step", "env": env, "command": args.command_line, "settings": settings}
    payload["rows"] = rows
    write_json(args.output_dir, "step", payload)
    if args.write_docs:
        publish("step", payload, docs_section)
    return payload


def docs_section(root: Path) -> str:
    """docs/results.md's "Training step" section from docs/results/bench_step.json."""
    record = stored_record(root, "step")
    notes = step_notes(record["settings"]["reps"], ran_on_cuda(record))
    title = "Training step: SSL vs supervised"
    return docs_body(
        title, record["command"], record["env"], step_table(record["rows"]), notes, None
    )
