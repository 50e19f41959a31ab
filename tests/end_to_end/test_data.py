"""Data: global batches independent of world size, per-sample seeded views, bad folders."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from scaled.config import UserError, demo
from scaled.data import GlobalBatchSampler, pretrain_dataset, scan_image_folder

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
    items = [(3, i) for i in (0, 5, 17, 3999, 42)]
    state = torch.get_rng_state()
    batched = ds.__getitems__(items)
    assert torch.equal(torch.get_rng_state(), state)
    for got, want in zip(batched, (ds[item] for item in items), strict=True):
        assert got[2:] == want[2:]
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])  # bit for bit


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
