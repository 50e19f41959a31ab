"""The optional DALI loader: its missing-dependency message on CPU; a real pipeline run on GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from scaled import dali_loader

HAVE_DALI = importlib.util.find_spec("nvidia") is not None and (
    importlib.util.find_spec("nvidia.dali") is not None
)


@pytest.mark.skipif(HAVE_DALI and torch.cuda.is_available(), reason="DALI and CUDA are present")
def test_missing_dali_or_cuda_gives_one_line_install_hint(tmp_path: Path) -> None:
    with pytest.raises(dali_loader.DaliUnavailableError) as err:
        dali_loader.DaliTwoViewLoader(tmp_path, batch_size=2)
    message = str(err.value)
    assert "\n" not in message
    assert 'pip install ".[dali]"' in message
    assert "--loader torch" in message


def _write_jpegs(root: Path, n_per_class: int = 8) -> None:
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(n_per_class):
            pixels = torch.randint(0, 256, (96, 128, 3), generator=rng, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / f"class{c}" / f"{i}.jpg", quality=90)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAVE_DALI and torch.cuda.is_available()), reason="needs CUDA and DALI")
def test_dali_two_views_shapes_and_statistics(tmp_path: Path) -> None:
    _write_jpegs(tmp_path)
    loader = dali_loader.DaliTwoViewLoader(tmp_path, batch_size=4, crop=64, num_threads=2)
    assert len(loader) == 4
    batches = list(loader)
    assert len(batches) == 4
    x1, x2, y, index, skipped = batches[0]
    for x in (x1, x2):
        assert x.is_cuda and x.dtype == torch.float32 and x.shape == (4, 3, 64, 64)
        assert torch.isfinite(x).all()
        # normalised uniform-noise JPEGs: per-channel means within a few std of zero
        assert x.mean().abs().item() < 3.0
    assert not torch.equal(x1, x2), "the two views must be different augmentations"
    assert y.shape == (4,) and y.dtype == torch.long and set(y.tolist()) <= {0, 1}
    assert index.shape == skipped.shape == (4,) and int(skipped.sum()) == 0
