"""``profile``: torch.profiler of one MINC step (the trainer's ``train_step``): the top operators,
"where the time goes", on CPU and on CUDA when present."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from scaled.tools.bench.common import (
    markdown_table,
    pick_device,
    publish,
    stored_record,
    synchronize,
    write_json,
)
from scaled.tools.bench.step import step_functions
from scaled.tools.provenance import environment, provenance_line


def profile_device(device: torch.device, quick: bool, top: int) -> dict[str, Any]:
    """Profile one MINC step on `device`; the top operators by self time, and the environment."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    arch = "small_resnet" if quick else ("resnet50" if cuda else "resnet18")
    B, size = (4, 32) if quick else ((256, 224) if cuda else (32, 64))
    fns = step_functions("minc", arch, B, size, device, amp=cuda, compile=False)
    for _ in range(2):  # warm-up (cudnn autotuning, allocator)
        fns["step"]()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fns["step"]()
        synchronize(device)
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    averages = prof.key_averages()
    print(f"== {device} ({arch}, B {B}, {size} px), sorted by {sort_by}")
    print(averages.table(sort_by=sort_by, row_limit=top))
    events = sorted(averages, key=lambda e: -getattr(e, sort_by))
    total = sum(getattr(e, sort_by) for e in averages)
    ops = [
        {"op": e.key, "self_us": getattr(e, sort_by), "pct": 100 * getattr(e, sort_by) / total}
        for e in events[:top]
    ]
    return {"env": environment(device), "arch": arch, "B": B, "image_size": size, "top": ops}


def profile_body(payload: dict[str, Any]) -> str:
    """The markdown of the profile section of docs/scaling.md: one table per device."""
    parts = []
    for run in payload["runs"]:
        rows = [[r["op"], f"{r['self_us'] / 1e3:.1f}", f"{r['pct']:.1f}"] for r in run["top"]]
        parts += [
            f"One MINC step, {run['arch']}, B {run['B']}, {run['image_size']} px, "
            f"on {provenance_line(run['env'])}:",
            "",
            markdown_table(["operator", "self time (ms)", "% of step"], rows),
            "",
        ]
    return f"Command: `{payload['command']}`\n\n" + "\n".join(parts)


def run_profile(args: argparse.Namespace) -> dict[str, Any]:
    """The `profile` benchmark: one MINC step on CPU (and CUDA when present) or on --device."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if args.device != "auto":
        devices = [pick_device(args.device)]
    runs = [profile_device(device, args.quick, args.top) for device in devices]
    payload = {"benchmark": "profile", "command": args.command_line, "runs": runs}
    write_json(args.output_dir, "profile", payload)
    if args.write_docs:
        publish("profile", payload, docs_section, "scaling.md")
    return payload


def docs_section(root: Path) -> str:
    """docs/scaling.md's step profile from docs/results/bench_profile.json."""
    return profile_body(stored_record(root, "profile"))
