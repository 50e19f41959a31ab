"""The DALI loader (`scaled.dali_loader`, `--loader dali`) run on the CPU (`device_id=None`):
its views, labels and indices; the file order (the trainer's sampler: seeded by the run seed, a
new order per epoch, the same global batches for any number of ranks); a mid-epoch resume; an
epoch whose micro-batches the accumulation does not divide; and through the trainer's loop.

Skipped, visibly, where DALI is not installed (`pip install ".[dali]"`, in the dev extra)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("nvidia.dali", reason='DALI is not installed (pip install ".[dali]")')

from scaled import dali_loader as D  # noqa: E402
from scaled.data import GlobalBatchSampler, scan_image_folder  # noqa: E402
from tests.end_to_end.helpers import TINY, make_image_folder  # noqa: E402

CPU = {"device_id": None, "num_threads": 1, "crop": 32}


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[tuple[str, int]]:
    root = make_image_folder(tmp_path_factory.mktemp("data"), n_classes=3, per_class=8, size=48)
    return scan_image_folder(root, "train")[0]  # 24 images, labels 0..2


def loader(samples, batch: int, global_batch: int, rank: int = 0, world: int = 1, seed: int = 0):
    sampler = GlobalBatchSampler(len(samples), global_batch, rank, world, seed)
    dl = D.DaliTwoViewLoader(samples, batch_size=batch, sampler=sampler, shard_id=rank, **CPU)
    return dl, sampler


def indices(batches) -> list[list[int]]:
    return [b[3].tolist() for b in batches]


def test_views_labels_and_indices_on_the_cpu(samples):
    dl, _ = loader(samples, batch=4, global_batch=8)
    batches = list(dl)
    assert len(dl) == len(batches) == 6  # 24 // 8 steps x 2 micro-batches
    for x1, x2, y, index, skipped in batches:
        for x in (x1, x2):
            assert x.device.type == "cpu" and x.dtype == torch.float32 and x.shape == (4, 3, 32, 32)
            assert torch.isfinite(x).all() and x.mean().abs() < 3.0  # normalised
        assert not torch.equal(x1, x2)  # two augmentations
        assert y.tolist() == [samples[i][1] for i in index.tolist()]  # the file's own label
        assert int(skipped.sum()) == 0
    seen = sorted(i for b in indices(batches) for i in b)
    assert seen == list(range(24))  # one epoch: every image once


def test_order_is_seeded_new_each_epoch_and_the_same_for_any_world_size(samples):
    dl, sampler = loader(samples, batch=4, global_batch=8, seed=1)
    epoch0 = indices(dl)
    assert indices(dl) == epoch0  # the same epoch again: the same order (seeded)
    sampler.set_epoch(1)
    assert indices(dl) != epoch0  # a new order per epoch
    other, _ = loader(samples, batch=4, global_batch=8, seed=2)
    assert indices(other) != epoch0  # from the run seed
    # 2 ranks: rank r reads rows [4r, 4r + 4) of each global batch of 8 -> same global batches
    ranks = [indices(loader(samples, 4, 8, rank=r, world=2, seed=1)[0]) for r in (0, 1)]
    one = indices(loader(samples, 8, 8, seed=1)[0])
    assert [a + b for a, b in zip(*ranks, strict=True)] == one


def test_mid_epoch_resume_continues_at_the_step(samples):
    dl, sampler = loader(samples, batch=4, global_batch=8, seed=3)
    sampler.set_epoch(2)
    full = indices(dl)
    sampler.set_start_step(1)  # resume at step 1 of epoch 2: micro-batches 2.. of the epoch
    assert indices(dl) == full[2:]
    sampler.set_start_step(0)
    sampler.set_epoch(3)
    assert len(list(dl)) == len(dl)  # the next epoch runs whole: nothing left over


def test_accumulation_that_does_not_divide_the_epoch(samples):
    """20 images, global batch 6 = 3 micro-batches of 2: 3 steps, 9 micro-batches an epoch (2
    images dropped), every epoch; no StopIteration one epoch later."""
    dl, sampler = loader(samples[:20], batch=2, global_batch=6)
    assert len(dl) == 9
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(dl)
        assert len(batches) == 9 and len({i for b in indices(batches) for i in b}) == 18


def test_without_a_sampler_each_iter_is_the_next_epoch(samples):
    dl = D.DaliTwoViewLoader(samples, batch_size=4, seed=5, **CPU)
    first, second = indices(dl), indices(dl)
    assert first != second and sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(24))
    dl.set_epoch(0)
    assert indices(dl) == first


def test_trainer_loop_with_the_dali_loader_on_the_cpu(tmp_path, monkeypatch):
    """`--loader dali` through `scaled.pretrain.train` on the CPU with accumulation, an epoch
    the steps do not divide evenly (24 images, global batch 8 = 2 x 4), and a run interrupted
    at step 2 and resumed: the resumed run trains on the same images at every step as the
    uninterrupted one. The loader is the trainer's own `build_dali_loader` (the trainer's sampler,
    `device_id=None` on a CPU); only its thread count is pinned to one."""
    import scaled.pretrain as P
    from scaled.options import parse_config

    folder = make_image_folder(tmp_path / "data", n_classes=3, per_class=8, size=48)
    seen = []
    real = D.DaliTwoViewLoader

    def one_thread(*args, **kw):
        return real(*args, **{**kw, "num_threads": 1})

    monkeypatch.setattr(D, "DaliTwoViewLoader", one_thread)
    step = P.train_step

    def recording_step(run, micro_batches):
        seen.append([i for b in micro_batches for i in b[3].tolist()])
        return step(run, micro_batches)

    monkeypatch.setattr(P, "train_step", recording_step)
    common = [*TINY, "--data-dir", str(folder), "--loader", "dali", "--image-size", "32"]
    common += ["--batch-size", "8", "--accum-steps", "2", "--checkpoint-every", "1"]
    assert (
        P.train(parse_config([*common, "--max-steps", "5", "--output-dir", str(tmp_path / "a")]))
        == 0
    )
    straight, seen[:] = list(seen), []
    b = str(tmp_path / "b")
    assert P.train(parse_config([*common, "--max-steps", "2", "--output-dir", b])) == 0
    assert (
        P.train(parse_config([*common, "--max-steps", "5", "--output-dir", b, "--resume", "auto"]))
        == 0
    )
    assert len(straight) == 5 and seen == straight  # epoch 0: 3 steps, epoch 1: 2 steps
    assert sorted(sum(straight[:3], [])) == list(range(24))
