"""scaled/linear_eval.py end to end: 1 and 2 gloo processes agree, resume is exact, val labels
follow train's class list (the small split and the other faults: tests/faults)."""

from __future__ import annotations

import json

import pytest
import torch

import scaled.linear_eval as le
from scaled.checkpoint import load_checkpoint
from tests.conftest import tol

from .eval_helpers import fake_checkpoint
from .helpers import make_image_folder, torchrun

# 24 train images, batch 10: global batches 10, 10, 4 (per rank 5, 5, 2 with two ranks).
FULL = ["--mode", "full", "--epochs", "2", "--batch-size", "10", "--optimizer", "sgd",
        "--lr", "20", "--device", "cpu", "--num-workers", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = make_image_folder(root / "data", n_classes=3, per_class=8)
    ckpt = fake_checkpoint(root / "run", ["--data-dir", str(data), "--image-size", "32"])
    return root, data, ckpt


def run_one(setup, name: str, extra: list[str]) -> tuple[dict, dict]:
    """linear_eval in this process; (result JSON, head checkpoint)."""
    root, data, ckpt = setup
    out, outdir = root / f"{name}.json", root / name
    argv = ["--checkpoint", str(ckpt.parent), "--data-dir", str(data), *extra]
    assert le.main([*argv, "--output", str(out), "--output-dir", str(outdir)]) == 0
    head = outdir / "lincls_last.pt"
    return json.loads(out.read_text()), load_checkpoint(head) if head.exists() else {}


@pytest.mark.distributed
@pytest.mark.xdist_group("distributed")
@pytest.mark.parametrize("mode", ["full", "fast"])
def test_one_and_two_processes_agree(setup, mode):
    root, data, ckpt = setup
    extra = [*FULL[:1], mode, *FULL[2:]]
    one, head_one = run_one(setup, f"one_{mode}", extra)
    out, outdir = root / f"two_{mode}.json", root / f"two_{mode}"
    proc = torchrun(
        ["scaled/linear_eval.py", "--checkpoint", str(ckpt.parent), "--data-dir", str(data),
         *extra, "--output", str(out), "--output-dir", str(outdir)]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(out.read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["n_val"] == one["n_val"] == 12
    for key in ("top1", "top5", "knn20_top1", "knn20_top5", "knn200_top1", "knn200_top5"):
        assert two[key] == one[key], key
    if mode == "full":  # the same optimisation steps: the same head, to float32 round-off
        head_two = load_checkpoint(outdir / "lincls_last.pt")
        assert head_two["epoch"] == head_one["epoch"] == 2
        for name, w in head_one["head"].items():
            torch.testing.assert_close(head_two["head"][name], w, **tol("float32"))
        assert not torch.equal(head_one["head"]["weight"], torch.zeros_like(w))


@pytest.mark.slow
def test_resume_auto_continues_exactly(setup, monkeypatch):
    _, whole = run_one(setup, "whole", FULL)
    real, calls = le.train_epoch, []

    def stop_after_first(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # the run is killed during its second epoch
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(le, "train_epoch", stop_after_first)
    root, data, ckpt = setup
    argv = ["--checkpoint", str(ckpt), "--data-dir", str(data), *FULL]
    argv += ["--output", str(root / "cut.json"), "--output-dir", str(root / "cut")]
    with pytest.raises(KeyboardInterrupt):
        le.main(argv)
    assert load_checkpoint(root / "cut" / "lincls_last.pt")["epoch"] == 1
    monkeypatch.setattr(le, "train_epoch", real)
    assert le.main(argv) == 2  # an earlier run is there: --resume auto is needed
    assert le.main([*argv, "--resume", "auto"]) == 0
    resumed = load_checkpoint(root / "cut" / "lincls_last.pt")
    for name, w in whole["head"].items():
        assert torch.equal(resumed["head"][name], w), name


def test_val_labels_follow_train_classes(tmp_path):
    data = make_image_folder(tmp_path / "data", n_classes=3, per_class=4)
    (data / "val" / "class0").rename(tmp_path / "gone")  # val lacks class0: indices would shift
    from scaled.data import eval_dataset
    from scaled.options import parse_config

    cfg = parse_config(["--preset", "demo", "--data-dir", str(data), "--image-size", "32"])
    train = eval_dataset(cfg, "train")
    val = eval_dataset(cfg, "val", train_classes=train.classes)
    assert val.classes == train.classes == ["class0", "class1", "class2"]
    names = {path.split("/")[-2] for path, _ in val.source.samples}
    assert names == {"class1", "class2"}
    for path, label in val.source.samples:
        assert train.classes[label] == path.split("/")[-2]


@pytest.mark.slow
def test_knn_monitor_is_logged_at_epoch_ends(setup):
    from scaled.pretrain import main

    from .helpers import TINY, read_metrics

    root, data, _ = setup
    run = root / "monitored"
    argv = [*TINY, "--data-dir", str(data), "--image-size", "32", "--batch-size", "8"]
    argv += ["--knn-every", "1", "--knn-samples", "10", "--output-dir", str(run)]
    assert main(argv) == 0  # 24 images / 8: 3 steps per epoch, 2 epochs
    records = {r["step"]: r for r in read_metrics(run)}
    monitored = sorted(s for s, r in records.items() if "knn20_top1" in r)
    assert monitored == [3, 6]
    for s in monitored:
        assert 0.0 <= records[s]["knn20_top1"] <= 1.0 and "knn200_top1" in records[s]
        assert "online_probe_acc" in records[s]  # the online probe stays
