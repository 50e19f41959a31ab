"""``loader``: decoded + augmented images per second per CPU core of the default loader."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from scaled.tools.bench.common import (
    docs_body,
    markdown_table,
    write_docs_section,
    write_json,
)
from scaled.tools.provenance import environment


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


def time_loader(dataset, n: int, batch: int, workers: int, seed: int) -> dict[str, Any]:
    """Images per second of a DataLoader with `workers` processes over the first `n` images."""
    from torch.utils.data import DataLoader

    from scaled.data import GlobalBatchSampler

    sampler = GlobalBatchSampler(n, batch, 0, 1, seed)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers)
    it = iter(loader)
    next(it)  # start-up of the workers and the first batch are not counted
    t0 = time.perf_counter()
    count = sum(x1.shape[0] for x1, *_ in it)
    elapsed = time.perf_counter() - t0
    print(f"  {workers} worker(s): {count / elapsed:.1f} images/s (two views each)")
    return {
        "workers": workers,
        "images": count,
        "seconds": elapsed,
        "img_per_s": count / elapsed,
        "img_per_s_per_worker": count / elapsed / workers,
    }


def loader_notes(image_size: int, source: str) -> str:
    """The text under the table in docs/results.md."""
    return f"""
The default loader (`scaled.data.pretrain_dataset`: PIL decode + BYOL's two augmented views at
{image_size} px, torchvision transforms) in a `DataLoader` with 1 and 2 worker processes, on
{source}; the first batch (worker start-up) is not timed. Each image yields two views. A worker is
one process, so "per worker" is per CPU core when the cores are not shared; on this 2-core machine
the main process and other users share the cores, so the 2-worker row is a lower bound. Feeding
one GPU that runs ~1000-2500 images/s (ResNet-50 SSL, bf16) needs the cores that this rate
implies; `scaled/dali_loader.py` (`--loader dali`) moves decode and augmentation to the GPU.
"""


def run_loader(args: argparse.Namespace) -> dict[str, Any]:
    """The `loader` benchmark; returns its JSON payload."""
    import tempfile
    from dataclasses import replace

    from scaled.config import PretrainConfig
    from scaled.data import pretrain_dataset

    env = environment("cpu")
    n_images = 16 if args.quick else args.images
    batch = 8 if args.quick else 16
    workers = [1] if args.quick else args.workers
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp)
        if not args.data_dir:
            write_jpeg_folder(data_dir, n_images, args.seed)
        cfg = replace(PretrainConfig(), data_dir=str(data_dir), image_size=args.image_size)
        dataset, _, _ = pretrain_dataset(cfg)
        n = min(len(dataset), n_images)
        rows = [time_loader(dataset, n, batch, w, args.seed) for w in workers]
    table = markdown_table(
        ["workers", "images timed", "images/s (two views each)", "images/s per worker (core)"],
        [
            [r["workers"], r["images"], f"{r['img_per_s']:.1f}", f"{r['img_per_s_per_worker']:.1f}"]
            for r in rows
        ],
    )
    print(table)
    source = args.data_dir or f"{n_images} generated 500x375 JPEGs (quality 90)"
    payload = {"benchmark": "loader", "env": env, "command": args.command_line, "rows": rows}
    payload["settings"] = {"data": source, "batch": batch, "image_size": args.image_size}
    write_json(args.output_dir, "loader", payload)
    if args.write_docs:
        notes = loader_notes(args.image_size, source)
        title = "Input pipeline: images/s per core"
        write_docs_section("loader", docs_body(title, args.command_line, env, table, notes, None))
    return payload
