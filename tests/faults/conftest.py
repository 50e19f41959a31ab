"""Fixtures shared by the fault tests: a small ImageFolder and a finished 2-step run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.faults.test_pretrain_faults import IMAGE_ARGS, TINY, pretrain, write_jpegs


@pytest.fixture(scope="session")
def image_root(tmp_path_factory) -> Path:
    """ImageFolder with train/<2 classes>/12 real JPEGs each."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        write_jpegs(root / "train" / name, 12, rng)
    return root


@pytest.fixture(scope="session")
def two_step_run(image_root, tmp_path_factory) -> Path:
    """A finished 2-step run with a checkpoint after each step (copy it before changing it)."""
    run = tmp_path_factory.mktemp("two_step") / "run"
    proc = pretrain(
        *TINY, *IMAGE_ARGS, "--data-dir", str(image_root), "--output-dir", str(run),
        "--checkpoint-every", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (run / "ckpt_00000001.pt").is_file() and (run / "ckpt_00000002.pt").is_file()
    return run
