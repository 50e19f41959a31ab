"""Data: global batches independent of world size, per-sample seeded views, bad folders."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from scaled.config import UserError
from scaled.data import (
    DigitView,
    GlobalBatchSampler,
    RandomDigitWarp,
    RandomStrokeWidth,
    pretrain_dataset,
    sample_seed,
    scan_image_folder,
    seed_sequence_state,
)
from scaled.presets import demo

from .helpers import make_image_folder


def test_global_batch_is_the_same_for_any_world_size():
    one = list(GlobalBatchSampler(100, 20, 0, 1, seed=3))
    two = [list(GlobalBatchSampler(100, 20, r, 2, seed=3)) for r in range(2)]
    for s in range(5):
        assert (
            one[20 * s : 20 * s + 20] == two[0][10 * s : 10 * s + 10] + two[1][10 * s : 10 * s + 10]
        )
    resumed = GlobalBatchSampler(100, 20, 0, 1, seed=3)
    resumed.set_start_step(2)
    assert list(resumed) == one[40:]


def test_views_depend_only_on_seed_epoch_index():
    ds, _, _ = pretrain_dataset(demo())
    a = ds[(1, 7)]
    torch.rand(10)  # global RNG use in between must not matter
    b = ds[(1, 7)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1])  # two different views
    assert not torch.equal(ds[(2, 7)][0], a[0])  # a new epoch, new views


def test_batched_digit_views_equal_per_sample_views():
    """`__getitems__` (one grid_sample per batch, what the DataLoader calls) gives the views,
    labels and indices of `__getitem__` bit for bit, and leaves the global RNG alone."""
    ds, _, _ = pretrain_dataset(demo())
    items = [(3, i) for i in (0, 5, 17, 3499, 42)]  # 3500 training digits
    state = torch.get_rng_state()
    batched = ds.__getitems__(items)
    assert torch.equal(torch.get_rng_state(), state)
    for got, want in zip(batched, (ds[item] for item in items), strict=True):
        assert got[2:] == want[2:]
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])  # bit for bit


def _filter3x3(x: torch.Tensor, pick) -> torch.Tensor:
    """Each pixel's 3x3 neighbourhood (inside the image) reduced by `pick`, by explicit loops."""
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            patch = x[..., max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
            out[..., i, j] = pick(patch.flatten(-2), -1).values
    return out


def test_stroke_width_is_the_blend_of_a_3x3_dilation_or_erosion():
    """`RandomStrokeWidth.apply` = x + s (max3x3(x) - x) for s > 0 and x + |s| (min3x3(x) - x)
    for s < 0, the filters written out pixel by pixel; s = 0 leaves the digit as it is."""
    ds, _, _ = pretrain_dataset(replace(demo(), digit_stroke=0.0))
    x = ds.source.load(0)[0][None].double().div(255).repeat(3, 1, 1, 1)
    s = torch.tensor([0.7, -0.3, 0.0], dtype=torch.float64)
    got = RandomStrokeWidth.apply(x, s)
    dilated, eroded = _filter3x3(x, torch.max), _filter3x3(x, torch.min)
    assert torch.allclose(got[0], x[0] + 0.7 * (dilated[0] - x[0]), rtol=0, atol=1e-15)
    assert torch.allclose(got[1], x[1] + 0.3 * (eroded[1] - x[1]), rtol=0, atol=1e-15)
    assert torch.equal(got[2], x[2])
    assert got[0].sum() > x[0].sum() > got[1].sum()  # thicker, thinner: ink added, removed


def test_stroke_draws_thicken_half_the_digits_within_their_ranges():
    torch.manual_seed(0)
    s = torch.tensor([RandomStrokeWidth(0.8).draw() for _ in range(2000)])
    thick = s > 0
    assert 0.45 < thick.float().mean() < 0.55  # binomial sd 0.011: 4.5 sd either side
    assert s.max() <= 0.8 and s.min() >= -0.4
    assert 0.37 < s[thick].mean() < 0.43 and -0.215 < s[~thick].mean() < -0.185  # U means


def test_stroke_off_keeps_the_warp_only_views():
    """`digit_stroke` 0 draws and applies the warp alone: the views of runs made before the
    option existed (six draws per view, nothing more taken from the generator)."""
    torch.manual_seed(5)
    want = RandomDigitWarp(0.5).draw().flatten()
    after_want = torch.rand(1)
    torch.manual_seed(5)
    got = DigitView(0.5, stroke=0.0).draw()
    assert torch.equal(got, want) and torch.equal(torch.rand(1), after_want)
    ds_on, _, _ = pretrain_dataset(demo())
    ds_off, _, _ = pretrain_dataset(replace(demo(), digit_stroke=0.0))
    assert demo().digit_stroke > 0
    assert not torch.equal(ds_on[(0, 3)][0], ds_off[(0, 3)][0])


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        scan_image_folder(tmp_path / "missing", "train")
    with pytest.raises(UserError, match="train"):
        scan_image_folder(tmp_path, "train")
    (tmp_path / "train" / "empty_class").mkdir(parents=True)
    with pytest.raises(UserError, match="empty_class"):
        scan_image_folder(tmp_path, "train")


def test_corrupt_image_is_skipped_and_counted(tmp_path, capfd):
    root = make_image_folder(tmp_path / "data", n_classes=2, per_class=3)
    bad = root / "train" / "class0" / "1.JPEG"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated JPEG
    cfg = replace(demo(), data_dir=str(root), image_size=32)
    ds, in_ch, n_cls = pretrain_dataset(cfg)
    assert (in_ch, n_cls, len(ds)) == (3, 2, 6)
    items = [ds[(0, i)] for i in range(len(ds))] + [ds[(1, 1)]]
    assert [it[4] for it in items] == [0, 1, 0, 0, 0, 0, 1]
    err = capfd.readouterr().err
    assert err.count("1.JPEG") == 1  # warned once per file
    assert items[0][0].shape == (3, 32, 32)


def test_sample_seed_is_numpys_seed_sequence_bit_for_bit():
    """`seed_sequence_state` (plain integers) equals `np.random.SeedSequence(...)
    .generate_state(1, np.uint64)` on words of every width (0, 32-bit edges, several words,
    more entropy than the pool); a one-bit change of the input changes it (the check bites)."""
    rng = np.random.default_rng(0)
    cases = [[0, 0, 0], [0, 1, 2], [2**32 - 1, 2**32, 2**64 + 5], [12345678901234567890, 3, 7]]
    cases += [[5, 0, 0, 0, 0, 9], [1], [0]]
    cases += [[int(x) for x in rng.integers(0, 2**63, size=rng.integers(1, 6))] for _ in range(300)]
    for entropy in cases:
        want = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])
        assert seed_sequence_state(entropy) == want, entropy
    assert seed_sequence_state([0, 1, 3]) != seed_sequence_state([0, 1, 2])
    assert sample_seed(4, 2, 9) == seed_sequence_state([4, 2, 9]) >> 1
