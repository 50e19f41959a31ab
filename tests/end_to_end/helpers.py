"""Shared helpers of the end-to-end tests: tiny configs, a JPEG ImageFolder, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]

# A small_resnet small enough for a CPU step in well under a second.
TINY = [
    "--preset", "demo", "--width", "8", "--stem-stride", "2", "--proj-hidden", "32",
    "--proj-out", "16", "--pred-hidden", "32", "--batch-size", "32", "--log-every", "1",
    "--epochs", "2", "--warmup-epochs", "0.5", "--device", "cpu", "--num-workers", "0",
]  # fmt: skip


def make_image_folder(root: Path, n_classes: int = 3, per_class: int = 8, size: int = 32) -> Path:
    """Real JPEG files in root/{train,val}/<class>/: class c is a noisy colour/stripe pattern."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", max(2, per_class // 2))):
        for c in range(n_classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((size, size, 3))
                base[..., c % 3] = 200
                base[:: 2 + c, :, :] += 50
                img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.JPEG", quality=90)
    return root


def torchrun(args: list[str], nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc_per_node=N args` from the repo root."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of run_dir/metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]
