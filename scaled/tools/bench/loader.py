"""``loader``: images/s per CPU core of today's loader and of the two-stage pipeline's CPU stage,
and the device stage's time per batch, measured side by side in one run.

- today's loader (`--loader torch`): PIL decode + the `--augment` recipe's two views with
  torchvision PIL ops (`scaled.data.view_transform`);
- the CPU stage (`--loader device`): PIL decode + two RandomResizedCrops and flips to uint8 views
  and their colour parameters (`scaled.data.TwoStageView`);
- the device stage (`scaled.augment.device_stage`): colour jitter, grayscale, blur, solarize and
  normalisation of a batch (default 256) of both views, on `--device` (CPU here; CUDA when there
  is one: `time_device_stage` is what `make gpu-check` calls).

Per core: one process, one torch thread, the two CPU pipelines interleaved image by image over
the same files (so a slow-down of the shared machine hits both alike); then each in a
`DataLoader` with `--workers` worker processes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scaled.tools.bench.common import (
    docs_body,
    markdown_table,
    pick_device,
    synchronize,
    write_docs_section,
    write_json,
)
from scaled.tools.provenance import environment

GPU_RATE = 2000  # images/s one GPU consumes (ResNet-50 two-view SSL step, order of magnitude)


def write_jpeg_folder(root: Path, n_images: int, seed: int, size: tuple[int, int] = (500, 375)):
    """An ImageFolder of real JPEGs (ImageNet-like size and quality) under root/train/<class>/.

    Smooth random colour fields plus noise, saved at quality 90: about ImageNet's average size.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n_images):
        folder = root / "train" / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        low = rng.integers(0, 256, size=(h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.int16)
        pixels = np.clip(base + rng.integers(-20, 21, size=base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:04d}.jpg", quality=90)


def time_in_process(datasets: dict[str, Any], n: int) -> dict[str, float]:
    """Images/s of each dataset's `__getitem__` in this process, interleaved image by image."""
    seconds = dict.fromkeys(datasets, 0.0)
    for ds in datasets.values():
        ds[(0, 0)]  # warm-up (imports, first decode): not timed
    for i in range(n):
        for name, ds in datasets.items():
            t0 = time.perf_counter()
            ds[(1, i)]
            seconds[name] += time.perf_counter() - t0
    return {name: n / s for name, s in seconds.items()}


class DecodeOnly:
    """A source's `load` alone: `ImageFiles` (PIL decode to RGB, today's loader) or
    `DecodedFiles` (torchvision's JPEG decoder, the CPU stage): the floor under each pipeline."""

    def __init__(self, source) -> None:
        self.source = source

    def __getitem__(self, item):
        return self.source.load(item[1])


def time_loader(dataset, n: int, batch: int, workers: int, seed: int) -> dict[str, Any]:
    """Images per second of a DataLoader with `workers` processes over the first `n` images."""
    from torch.utils.data import DataLoader

    from scaled.data import GlobalBatchSampler

    sampler = GlobalBatchSampler(n, batch, 0, 1, seed)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers)
    it = iter(loader)
    next(it)  # start-up of the workers and the first batch are not counted
    t0 = time.perf_counter()
    count = sum(b[-1].shape[0] for b in it)
    elapsed = time.perf_counter() - t0
    return {"workers": workers, "images": count, "img_per_s": count / elapsed}


def synthetic_views(batch: int, image_size: int, augment: str = "byol", seed: int = 0):
    """Two collated CPU-stage view batches: random uint8 pixels, colour parameters drawn per
    sample from `sample_seed(seed, 0, index)` as the CPU stage draws them."""
    from torch.utils.data import default_collate

    from scaled.augment import RECIPES, draw_colour_params
    from scaled.data import sample_seed

    state = torch.get_rng_state()
    views: list[list[dict]] = [[], []]
    try:
        for i in range(batch):
            torch.manual_seed(sample_seed(seed, 0, i))
            pixels = torch.randint(0, 256, (2, 3, image_size, image_size), dtype=torch.uint8)
            for v, recipe in enumerate(RECIPES[augment]):
                views[v].append({"pixels": pixels[v], **draw_colour_params(recipe)})
    finally:
        torch.set_rng_state(state)
    return [default_collate(v) for v in views]


def time_device_stage(
    device: torch.device | str, batch: int = 256, image_size: int = 224, reps: int = 3
) -> dict[str, Any]:
    """Milliseconds of the device stage on `device` for one batch of `batch` samples, both views
    (median of `reps` after a warm-up on 2 samples), from (pinned, on CUDA) uint8 views: the
    host-to-device copy is included. What `make gpu-check` calls on CUDA. On a CPU it runs with
    one torch thread (per core, as the loaders are timed)."""
    device = torch.device(device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        times = _device_stage_seconds(device, batch, image_size, reps)
    finally:
        torch.set_num_threads(threads)
    ms = 1000 * float(np.median(times))
    return {"device": str(device), "batch": batch, "image_size": image_size, "ms_per_batch": ms}


def _device_stage_seconds(device, batch: int, image_size: int, reps: int) -> list[float]:
    from scaled.augment import device_stage

    fmt = torch.channels_last if device.type == "cuda" else torch.preserve_format
    warm, views = synthetic_views(2, image_size), synthetic_views(batch, image_size)
    if device.type == "cuda":
        views = [{k: t.pin_memory() for k, t in v.items()} for v in views]

    def run(vs):
        return [device_stage(v, device, fmt) for v in vs]

    run(warm)
    times = []
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        run(views)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def loader_rows(per_core: dict[str, float], device_ms: float, batch: int) -> list[list[Any]]:
    """The table: images/s per core, the ratio to today's loader, cores per GPU."""
    old, new = per_core["torch"], per_core["device"]
    both = 1.0 / (1.0 / new + device_ms / 1000 / batch)  # CPU stage + device stage on one core

    def row(name: str, rate: float) -> list[Any]:
        return [name, f"{rate:.1f}", f"{rate / old:.1f}", f"{GPU_RATE / rate:.1f}"]

    return [
        row("decode only, PIL (`ImageFiles.load`)", per_core["decode"]),
        row("decode only, torchvision (`DecodedFiles.load`)", per_core["decode_tv"]),
        row("today's loader (`--loader torch`)", old),
        row("CPU stage (`--loader device`)", new),
        ["both stages on one CPU core", f"{both:.1f}", f"{both / old:.2f}", "-"],
    ]


def run_loader(args: argparse.Namespace) -> dict[str, Any]:
    """The `loader` benchmark; returns its JSON payload."""
    import tempfile
    from dataclasses import replace

    from scaled.config import PretrainConfig
    from scaled.data import pretrain_dataset

    device = pick_device(args.device)
    env = environment(device.type)
    n_images = 8 if args.quick else args.images
    batch = 8 if args.quick else args.device_batch
    workers = [1] if args.quick else args.workers
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp)
        if not args.data_dir:
            write_jpeg_folder(data_dir, n_images, args.seed)
        cfg = replace(PretrainConfig(), data_dir=str(data_dir), image_size=args.image_size)
        datasets = {
            k: pretrain_dataset(cfg, two_stage=k == "device")[0] for k in ("torch", "device")
        }
        datasets["decode"] = DecodeOnly(datasets["torch"].source)
        datasets["decode_tv"] = DecodeOnly(datasets["device"].source)
        n = min(len(datasets["torch"]), n_images)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            per_core = time_in_process(datasets, n)
        finally:
            torch.set_num_threads(threads)
        print(f"  per core: {per_core}")
        dl = [
            {"loader": k, **time_loader(ds, n, max(1, min(8, n // 4)), w, args.seed)}
            for w in workers
            for k, ds in datasets.items()
            if not k.startswith("decode")
        ]
    reps = 1 if args.quick or device.type == "cpu" else 3  # CPU: one batch of 256 is minutes
    stage = time_device_stage(device, batch, args.image_size, reps=reps)
    print(f"  device stage: {stage}")
    table = markdown_table(
        [f"pipeline (two views, {args.image_size} px)", "images/s per core", "x today's",
         f"cores per GPU at {GPU_RATE} images/s"],
        loader_rows(per_core, stage["ms_per_batch"], batch),
    )  # fmt: skip
    table += "\n\n" + markdown_table(
        [f"device stage on {device.type}", "batch (both views)", "ms per batch", "ms per image"],
        [["`scaled.augment.device_stage`", batch, f"{stage['ms_per_batch']:.0f}",
          f"{stage['ms_per_batch'] / batch:.2f}"]],
    )  # fmt: skip
    table += "\n\n" + markdown_table(
        ["DataLoader workers", "loader", "images timed", "images/s"],
        [[r["workers"], r["loader"], r["images"], f"{r['img_per_s']:.1f}"] for r in dl],
    )
    print(table)
    source = args.data_dir or f"{n_images} generated 500x375 JPEGs (quality 90)"
    payload = {"benchmark": "loader", "env": env, "command": args.command_line}
    payload.update(per_core=per_core, device_stage=stage, dataloader=dl)
    payload["settings"] = {"data": source, "image_size": args.image_size, "gpu_rate": GPU_RATE}
    write_json(args.output_dir, "loader", payload)
    if args.write_docs:
        notes = loader_notes(args.image_size, source, device.type)
        title = "Input pipeline: images/s per core, CPU stage and device stage"
        write_docs_section("loader", docs_body(title, args.command_line, env, table, notes, None))
    return payload


def loader_notes(image_size: int, source: str, device_type: str) -> str:
    """The text under the tables in docs/results.md."""
    gpu = (
        "No GPU was lent to the session that measured this: the device stage ran on the CPU; "
        "its CUDA time comes from `make gpu-check` (`time_device_stage('cuda')`)."
        if device_type == "cpu"
        else "The device stage ran on CUDA."
    )
    return f"""
On {source}, {image_size} px, two views per image. "Per core": one process and one torch thread
calls each dataset's `__getitem__` (decode + its CPU work), the two pipelines interleaved image
by image over the same files. Today's loader (`--loader torch`) decodes with PIL and does all of
BYOL's augmentations with torchvision's PIL ops; the CPU stage (`--loader device`) decodes with
torchvision's JPEG decoder, crops, resizes (torchvision's uint8 tensor resize), flips and draws
the colour parameters, and hands uint8 views to the device stage, which augments the batch at
once (time includes the host-to-device copy). Issue 14's target: the CPU stage at >= 20x today's
loader and >= 250 images/s per core. "Cores per GPU" is {GPU_RATE} images/s divided by the
rate per core. "Both stages on one CPU core" charges the device stage's time per image to the
same core: it decides `--loader auto` on a CPU (`scaled.data.CPU_IMAGEFOLDER_LOADER`). The
DataLoader rows are worker processes on this shared 2-core machine (a lower bound). {gpu}
"""
