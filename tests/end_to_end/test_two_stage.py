"""The two-stage loader (`--loader device`) in the data pipeline and the trainer: determinism
(seed, epoch, index only: any worker count), corrupt files, loader choice, crop scale, exact
resume, no per-step host sync, and 2-process gloo runs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils.data import DataLoader

from scaled.augment import RECIPES
from scaled.checkpoint import list_checkpoints, load_checkpoint
from scaled.config import PretrainConfig, UserError, validate
from scaled.data import (
    CPU_IMAGEFOLDER_LOADER,
    GlobalBatchSampler,
    crop_scale_min,
    pretrain_dataset,
    resolved_loader,
)
from scaled.presets import demo
from scaled.pretrain import main
from tests.perf.test_no_host_sync import count_sync_calls, per_step_calls

from .helpers import TINY, make_image_folder, read_metrics, torchrun

JPEG = ["--image-size", "32", "--batch-size", "4", "--epochs", "4", "--loader", "device"]


@pytest.fixture
def folder(tmp_path):
    return make_image_folder(tmp_path / "data", n_classes=2, per_class=6)


def two_stage(folder, **kw):
    cfg = replace(demo(), data_dir=str(folder), image_size=32, **kw)
    return pretrain_dataset(cfg, two_stage=True)[0]


def same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_cpu_stage_depends_only_on_seed_epoch_index(folder):
    ds = two_stage(folder)
    a = ds[(1, 5)]
    torch.rand(10)  # global RNG use in between must not matter
    b = ds[(1, 5)]
    assert same(a[0], b[0]) and same(a[1], b[1])
    assert a[0]["pixels"].dtype == torch.uint8 and a[0]["pixels"].shape == (32, 32, 3)  # HWC
    assert not same(a[0], a[1])  # two different views
    assert not same(ds[(2, 5)][0], a[0])  # a new epoch, new views


def test_cpu_stage_is_independent_of_the_number_of_workers(folder):
    ds = two_stage(folder)
    sampler = GlobalBatchSampler(len(ds), 4, 0, 1, seed=0)
    runs = [list(DataLoader(ds, batch_size=4, sampler=sampler, num_workers=w)) for w in (0, 2)]
    assert len(runs[0]) == 3
    for b0, b2 in zip(*runs):
        assert same(b0[0], b2[0]) and same(b0[1], b2[1]) and torch.equal(b0[3], b2[3])


def test_corrupt_image_is_skipped_and_counted_in_the_two_stage_path(folder, capfd):
    bad = folder / "train" / "class0" / "1.JPEG"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated JPEG
    ds = two_stage(folder)
    items = [ds[(0, i)] for i in range(len(ds))] + [ds[(1, 1)]]
    assert [it[4] for it in items] == [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert capfd.readouterr().err.count("1.JPEG") == 1  # warned once per file


def test_loader_auto_and_its_errors(folder, tmp_path, capsys):
    images = replace(PretrainConfig(), data_dir=str(folder))
    assert resolved_loader(images, "cuda") == "device"
    assert resolved_loader(images, "cpu") == CPU_IMAGEFOLDER_LOADER == "torch"  # measured
    assert resolved_loader(replace(images, data_dir=""), "cuda") == "torch"  # digits
    assert resolved_loader(replace(images, loader="device"), "cpu") == "device"
    run = tmp_path / "run"
    assert main([*TINY, "--loader", "device", "--output-dir", str(run)]) == 2  # digits
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --loader device needs ImageFolder data")


def test_crop_scale_is_the_recipes_unless_passed(folder):
    base = replace(PretrainConfig(), data_dir=str(folder))
    assert crop_scale_min(base) == RECIPES["byol"][0].scale[0] == 0.08
    assert crop_scale_min(replace(base, augment="simsiam")) == 0.2
    assert crop_scale_min(replace(base, augment="simsiam", crop_scale_min=0.5)) == 0.5
    assert crop_scale_min(replace(base, data_dir="")) == 0.5  # the digits' warp
    with pytest.raises(UserError, match="crop-scale-min"):
        validate(replace(base, crop_scale_min=1.5))


@pytest.mark.slow  # ~40 s here: three short runs
def test_resume_is_bitwise_exact_with_the_device_loader(folder, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = [*TINY, *JPEG, "--data-dir", str(folder), "--checkpoint-every", "0"]
    assert main([*common, "--max-steps", "3", "--output-dir", str(a)]) == 0
    assert main([*common, "--max-steps", "1", "--output-dir", str(b)]) == 0
    assert main([*common, "--max-steps", "3", "--output-dir", str(b), "--resume", "auto"]) == 0
    sa, sb = (load_checkpoint(list_checkpoints(r)[-1]) for r in (a, b))
    assert sa["step"] == sb["step"] == 3
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k


def test_nan_fault_exits_3_with_the_device_loader(folder, tmp_path, capsys):
    argv = [*TINY, *JPEG, "--data-dir", str(folder), "--max-steps", "3", "--log-every", "3"]
    assert main([*argv, "--fault-inject", "nan@2", "--output-dir", str(tmp_path / "r")]) == 3
    assert "loss is nan at step 2" in capsys.readouterr().err


def test_no_host_sync_in_the_step_with_the_device_loader(folder, tmp_path):
    argv = [*TINY, *JPEG, "--data-dir", str(folder), "--optimizer", "lars", "--max-steps", "3"]
    argv += ["--log-every", "2", "--output-dir", str(tmp_path / "run")]
    from scaled.options import parse_config
    from scaled.pretrain import train

    with count_sync_calls() as calls:
        assert train(parse_config(argv)) == 0
    assert [kind for _, kind, _ in calls].count("log") > 0
    assert per_step_calls(calls) == []


@pytest.mark.distributed
@pytest.mark.xdist_group("distributed")
@pytest.mark.slow
def test_two_processes_device_loader_corrupt_file_and_exact_resume(folder, tmp_path):
    bad = folder / "train" / "class1" / "2.JPEG"
    bad.write_bytes(bad.read_bytes()[:100])
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["scaled/pretrain.py", *TINY, *JPEG, "--data-dir", str(folder)]
    common += ["--checkpoint-every", "0"]
    procs = [torchrun([*common, "--max-steps", "4", "--output-dir", str(a)])]
    procs.append(torchrun([*common, "--max-steps", "2", "--output-dir", str(b)]))
    procs.append(
        torchrun([*common, "--max-steps", "4", "--output-dir", str(b), "--resume", "auto"])
    )
    for p in procs:
        assert p.returncode == 0, p.stderr[-3000:]
    assert "input pipeline: --loader device -> device" in procs[0].stderr
    assert "2.JPEG" in procs[0].stderr
    records = read_metrics(a)
    assert len(records) == 4 and all(torch.isfinite(torch.tensor([r["loss"] for r in records])))
    assert sum(r["skipped_images"] for r in records) >= 1  # 12 images, 4 a step: all seen by step 3
    sa, sb = (load_checkpoint(list_checkpoints(r)[-1]) for r in (a, b))
    assert sa["step"] == sb["step"] == 4 and sa["world_size"] == 2
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
