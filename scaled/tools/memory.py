"""``python -m scaled.tools.memory``: peak memory of one training step per ImageNet preset.

No GPU has been lent to this project, so the memory a preset needs per GPU is measured on the
CPU: the trainer's own run state (`scaled.pretrain.build_run_state`, one process) and two of its
own steps (`train_step`; the peak is taken over the second, which holds the optimiser's state)
under bf16 autocast, with every tensor the step allocates counted by `LiveBytes`, a
`TorchDispatchMode` that adds each new storage's bytes when an op returns it and subtracts them
when the storage is freed (weights, gradients, optimiser state and its temporaries, activations,
the two views). torch's `MemTracker` (torch.distributed._tools.mem_tracker) cannot be used: it
registers gradient hooks on every parameter, the EMA target's included (which need none), and
refuses modules called twice in one step (the target runs on both views); tried, both raise.
The steps run on fake tensors (`FakeTensorMode`: each op allocates a storage of the size it
would, and computes nothing): the same bytes as a computed step (tests/perf/test_memory.py
compares both on a small ResNet) in seconds instead of hours of CPU time. The peak is measured at
two small per-GPU batches, the line through them (fixed part + bytes per image) is checked at a
third batch (by default the preset's per-GPU batch itself, the global batch over 8 GPUs: 512 at
4096), and extrapolated to the per-GPU batch; a card fits when the larger of the line's value
and the measured peak is at most `FIT_FRACTION` of it.

What the CPU figure leaves out, and what differs on a GPU: the CUDA context and cuDNN/cuBLAS
workspaces (about 0.5-1 GiB), NCCL buffers, the caching allocator's fragmentation; and CPU
autocast's op lists are not CUDA's (which ops run in bf16 and so what the saved activations
weigh); `FIT_FRACTION` leaves 10% of a card for the first four. `bench step --device cuda`
measures the real peak on a card (docs/results.md).

    python -m scaled.tools.memory --output-dir runs/memory --write-docs

writes ``memory.json`` and, with ``--write-docs``, docs/results/memory.json and the "memory"
section of docs/scaling.md (`render_memory_section`, also called by ``scaled.tools.results``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

GIB = 2**30
GPUS = 8  # the presets' node: 8 GPUs (their docstrings' commands)
CARDS_GB = (40, 80)  # A100-40GB, A100/H100-80GB (decimal GB as sold: 40e9, 80e9 bytes)
FIT_FRACTION = 0.9  # of a card for the step: the rest for the CUDA context, workspaces, slack
# Per-GPU batches measured for the line. Below ~32 images the peak of a step is at the optimiser
# (weights, gradients, momentum and LARS's temporaries), not at the end of the forward, and the
# line through 4 and 8 underestimates (measured: -6.6% for imagenet_r50_minc, -42% for
# imagenet_r50x2_minc at 512 per GPU); through 32 and 64 it matches the peak measured at 512.
BATCHES = (32, 64)
IMAGE_SIZE = 224


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage alive now (`live`) and at most (`peak`), for ops run inside.

    A storage is counted once (views and in-place results share it) from the op that returns it
    until Python frees it (a weakref finalizer). Tensors made before entering are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key, n = storage._cdata, storage.nbytes()
                if n and key not in self._sizes:
                    self._sizes[key] = n
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key)
        return out


def imagenet_presets() -> list[str]:
    from scaled.presets import PRESETS

    return [name for name in PRESETS if name.startswith("imagenet_")]


def per_gpu_batch(cfg) -> int:
    """The preset's per-GPU batch on `GPUS` GPUs without accumulation."""
    return cfg.batch_size // GPUS


def _batch(b: int, size: int) -> list:
    x1, x2 = torch.rand(b, 3, size, size), torch.rand(b, 3, size, size)
    return [(x1, x2, torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long))]


def _config(preset: str, batch: int, arch: str | None = None):
    from scaled.presets import PRESETS

    cfg = replace(PRESETS[preset](), amp="bf16", device="cpu", batch_size=batch, sync_bn=False)
    return cfg if arch is None else replace(cfg, arch=arch)


def step_peak(
    preset: str, batch: int, image_size: int = IMAGE_SIZE, *, fake: bool = True, arch=None
) -> int:
    """Peak live bytes during one steady-state training step of `preset` at `batch` per GPU,
    bf16 autocast, one process: the run state's tensors plus everything the step allocates.

    A first step at batch 2 creates the optimiser's state; the peak is taken over the second.
    `fake=True` runs both steps on fake tensors (`FakeTensorMode`: every op allocates the
    storage it would, of the same size, and computes nothing), so ResNet-50 at 512 images takes
    seconds; `fake=False` computes on the CPU (the test checks that both agree).
    """
    from scaled.optim import build_optimizer, build_scheduler
    from scaled.pretrain import METERS, build_run_state, train_step

    cfg = _config(preset, batch, arch)
    torch.manual_seed(0)
    tracker = LiveBytes()
    if not fake:
        with tracker:
            run = build_run_state(cfg, 3, 1000, device=torch.device("cpu"), steps_per_epoch=10)
            train_step(run, _batch(2, image_size))
            data = _batch(batch, image_size)
            tracker.peak = tracker.live
            train_step(run, data)
        return tracker.peak
    from torch._subclasses.fake_tensor import FakeTensorMode

    run = build_run_state(cfg, 3, 1000, device=torch.device("cpu"), steps_per_epoch=10)
    mode = FakeTensorMode()
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)  # fakes need new params
    try:
        modules = {k: getattr(run, k)._apply(mode.from_tensor) for k in ("model", "objective")}
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)
    held = sum(  # the converted weights and buffers: not made by an op inside the tracker
        t.untyped_storage().nbytes()
        for m in modules.values()
        for t in [*m.parameters(), *m.buffers()]
    )
    with mode, tracker:
        optimizer = build_optimizer(modules["model"].online, cfg)
        run = replace(
            run, **modules, online=modules["model"].online, optimizer=optimizer,
            scheduler=build_scheduler(optimizer, 10, 0),
            acc={k: torch.zeros(()) for k in METERS}, bad_step=torch.zeros((), dtype=torch.long),
        )  # fmt: skip
        train_step(run, _batch(2, image_size))
        data = _batch(batch, image_size)
        tracker.peak = tracker.live
        train_step(run, data)
    return tracker.peak + held


def line(points: dict[int, int]) -> tuple[float, float]:
    """(fixed bytes, bytes per image) of the line through two (batch, peak) points."""
    (b1, p1), (b2, p2) = sorted(points.items())
    slope = (p2 - p1) / (b2 - b1)
    return p1 - slope * b1, slope


def accum_for(
    fixed: float, per_image: float, batch: int, card_gb: int, measured: float = 0.0
) -> int | None:
    """The smallest accumulation (1, 2, 4 ... dividing `batch`) whose micro-batch fits
    `FIT_FRACTION` of a `card_gb` card by the line (and, for the whole batch, by its `measured`
    peak too); None when even a micro-batch of one image does not."""
    budget = FIT_FRACTION * card_gb * 1e9
    accum = 1
    while accum <= batch:
        need = fixed + per_image * batch / accum
        if accum == 1:
            need = max(need, measured)
        if batch % accum == 0 and need <= budget:
            return accum
        accum *= 2
    return None


def measure_preset(preset: str, batches=BATCHES, check: int | None = None, size=IMAGE_SIZE):
    """One row: the peaks at `batches`, their line, the line checked at `check` (default: the
    preset's per-GPU batch, measured too), and the prediction at the per-GPU batch."""
    from scaled.presets import PRESETS

    cfg = PRESETS[preset]()
    target = per_gpu_batch(cfg)
    check = target if check is None else check
    t0 = time.perf_counter()
    points = {b: step_peak(preset, b, size) for b in batches}
    fixed, per_image = line(points)
    measured_check = step_peak(preset, check, size)
    predicted_check = fixed + per_image * check
    predicted = fixed + per_image * target
    return {
        "preset": preset,
        "arch": cfg.arch,
        "method": cfg.method,
        "global_batch": cfg.batch_size,
        "per_gpu_batch": target,
        "peaks_bytes": {str(b): p for b, p in points.items()},
        "fixed_bytes": fixed,
        "bytes_per_image": per_image,
        "check_batch": check,
        "check_measured_bytes": measured_check,
        "check_predicted_bytes": predicted_check,
        "check_rel_error": (predicted_check - measured_check) / measured_check,
        "predicted_bytes": predicted,
        "accum_steps": {
            str(gb): accum_for(fixed, per_image, target, gb, measured_check * (check == target))
            for gb in CARDS_GB
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }


def run_all(presets: list[str], batches=BATCHES, check=None, size=IMAGE_SIZE) -> dict:
    from scaled.tools.provenance import environment, finished

    env = environment("cpu")
    rows = []
    for p in presets:
        row = measure_preset(p, batches, check, size)
        rows.append(row)
        print(
            f"{p}: {row['predicted_bytes'] / GIB:.1f} GiB at {row['per_gpu_batch']} per GPU "
            f"(line vs measured at {row['check_batch']}: {100 * row['check_rel_error']:+.1f}%; "
            f"{row['seconds']} s)",
            flush=True,
        )
    return {
        "command": "python -m scaled.tools.memory " + " ".join(sys.argv[1:]),
        "batches": list(batches),
        "check_batch": check or "per-GPU batch",
        "image_size": size,
        "gpus": GPUS,
        "fit_fraction": FIT_FRACTION,
        "env": finished(env),
        "rows": rows,
    }


def _fit_cell(row: dict, gb: int) -> str:
    accum = row["accum_steps"][str(gb)]
    if accum is None:
        return "no"
    return "yes" if accum == 1 else f"`--accum-steps {accum}`"


def render_memory_section(result: dict[str, Any]) -> str:
    """The "memory" section of docs/scaling.md from a memory.json record."""
    from scaled.tools.bench.common import markdown_table
    from scaled.tools.provenance import provenance_line

    b1, b2 = result["batches"]
    rows = []
    for r in result["rows"]:
        peaks = r["peaks_bytes"]
        rows.append(
            [
                f"`{r['preset']}`",
                f"{r['global_batch']} / {r['per_gpu_batch']}",
                f"{peaks[str(b1)] / GIB:.2f} / {peaks[str(b2)] / GIB:.2f}",
                f"{r['fixed_bytes'] / GIB:.2f} + {r['bytes_per_image'] / 2**20:.0f} MiB/img",
                f"{r['check_measured_bytes'] / GIB:.2f} ({100 * r['check_rel_error']:+.1f}%)",
                f"**{r['predicted_bytes'] / GIB:.1f}**",
                _fit_cell(r, 40),
                _fit_cell(r, 80),
            ]
        )
    header = [
        "preset",
        "global / per-GPU batch",
        f"peak at {b1} / {b2} (GiB)",
        "line: fixed + per image",
        f"at {result['check_batch']}: measured (line's error)",
        "per-GPU batch: predicted (GiB)",
        "40 GB card",
        "80 GB card",
    ]
    pct = round(100 * result["fit_fraction"])
    lines = [
        f"Command: `{result['command']}`  ",
        f"Measured on: {provenance_line(result['env'])}",
        "",
        markdown_table(header, rows),
        "",
        f"Peak bytes of tensor storage in one bf16-autocast training step ({result['image_size']}"
        " px, two views, the optimiser's state held), measured on the CPU at two per-GPU batches,"
        " the line through them checked at a third and extrapolated to the global batch over "
        f'{result["gpus"]} GPUs. "yes": the larger of prediction and measurement is at most '
        f"{pct}% of the card (decimal GB as sold); otherwise the smallest `--accum-steps` whose "
        "micro-batch is (the global batch unchanged). Not included: the CUDA context, cuDNN "
        f"workspaces, NCCL buffers and allocator fragmentation (the other {100 - pct}%).",
    ]
    return "\n".join(lines)


def write_docs(result: dict[str, Any]) -> None:
    from scaled.tools.provenance import docs_file, replace_section

    store = docs_file().parent / "results"
    store.mkdir(exist_ok=True)
    (store / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    replace_section(docs_file("scaling.md"), "memory", render_memory_section(result))
    print("wrote docs/results/memory.json, docs/scaling.md (memory)")


def main(argv: list[str] | None = None) -> int:
    from scaled.config import UserError

    parser = argparse.ArgumentParser(
        prog="python -m scaled.tools.memory",
        description="Peak memory of one training step per ImageNet preset (CPU, bf16 autocast), "
        "extrapolated to the preset's per-GPU batch.",
    )
    parser.add_argument("--presets", nargs="+", default=None, help="default: every imagenet_*")
    parser.add_argument("--batches", nargs=2, type=int, default=list(BATCHES))
    parser.add_argument(
        "--check-batch", type=int, default=None, help="default: each preset's per-GPU batch"
    )
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/memory"))
    parser.add_argument("--write-docs", action="store_true", help="docs/results/, docs/scaling.md")
    args = parser.parse_args(argv)
    try:
        presets = args.presets or imagenet_presets()
        unknown = sorted(set(presets) - set(imagenet_presets()))
        if unknown:
            raise UserError(
                f"unknown ImageNet preset(s) {', '.join(unknown)}; use some of "
                f"{', '.join(imagenet_presets())}"
            )
        b1, b2 = args.batches
        check = args.check_batch
        if not 1 < b1 < b2 or (check is not None and (check in (b1, b2) or check < 2)):
            raise UserError(
                f"--batches {b1} {b2} --check-batch {args.check_batch}: pass two increasing "
                "batches >= 2 (batch norm needs 2) and a third, different one"
            )
        if args.write_docs:
            from scaled.tools.provenance import checkout_root

            checkout_root()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = run_all(presets, (b1, b2), args.check_batch, args.image_size)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print(render_memory_section(result))
    if args.write_docs:
        write_docs(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
