"""Issue 32: runs that survive, round 3 -- nothing silently wrong, no command that destroys its
input, every output checked before any work.

Each test names the item of issue 32 it covers. Everything runs in this process (demo preset,
32 px ImageFolders, fake or 2-step checkpoints, CPU); nothing needs a second process.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import scaled.export as ex
import scaled.linear_eval as le
from scaled.checkpoint import atomic_save, checkpoint_path, newest_valid_checkpoint
from scaled.config import PretrainConfig, UserError, validate
from scaled.data import DecodedFiles, ImageFiles
from scaled.options import build_parser, parse_config
from scaled.presets import PRESETS
from tests.end_to_end.eval_helpers import fake_checkpoint
from tests.end_to_end.helpers import make_image_folder
from tests.faults.test_pretrain_faults import IMAGE_ARGS, REPO, TINY, main_in_process, write_jpegs
from tests.faults.test_run_survival import copy_run, user_error

pytestmark = pytest.mark.timeout(600)

FAST = ["--mode", "fast", "--epochs", "2", "--device", "cpu", "--num-workers", "0"]
FULL = ["--mode", "full", "--epochs", "1", "--device", "cpu", "--num-workers", "0",
        "--batch-size", "8", "--no-knn"]  # fmt: skip


@pytest.fixture(scope="module")
def evalset(tmp_path_factory):
    """A 3-class ImageFolder (8 train, 4 val images per class) and a checkpoint for it."""
    root = tmp_path_factory.mktemp("round3")
    data = make_image_folder(root / "data", n_classes=3, per_class=8)
    ckpt = fake_checkpoint(root / "run", ["--data-dir", str(data), "--image-size", "32"])
    return root, data, ckpt


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(lines) == 1 and "; " in lines[0], err
    return lines[0]


def eval_main(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = le.main(list(argv))
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------- silently wrong


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith("imagenet")])
def test_imagenet_preset_without_data_dir_is_refused(name, tmp_path, capsys):
    """An imagenet_* preset without --data-dir trained ResNet-50 on the 28 px digits. It is
    refused when it is to train; --print-config still shows the preset."""
    out = tmp_path / "r"
    code, err = main_in_process(["--preset", name, "--output-dir", str(out)], capsys)
    user_error(code, err, f"--preset {name}", "--data-dir")
    assert not out.exists()
    code, _ = main_in_process([f"--preset={name}", "--print-config"], capsys)
    assert code == 0


def test_no_preset_is_the_imagenet_preset_and_demo_needs_no_data(tmp_path, capsys):
    from scaled.presets import check_preset_data

    code, err = main_in_process(["--output-dir", str(tmp_path / "r")], capsys)
    user_error(code, err, "--preset imagenet_r50_minc", "--data-dir", "--preset demo")
    check_preset_data(["--preset", "demo"], parse_config(["--preset", "demo"]))
    cfg = parse_config(["--preset", "imagenet_r50_minc", "--data-dir", "/data/imagenet"])
    check_preset_data(["--preset", "imagenet_r50_minc", "--data-dir", "/data/imagenet"], cfg)


def corrupt(paths: list[Path]) -> None:
    for p in paths:
        p.write_bytes(b"not a jpeg at all")


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_unreadable_val_images_are_left_out_and_counted(evalset, tmp_path, capsys, mode):
    """Unreadable val images were scored as copies of their neighbours (n_val 14 for 12)."""
    _, data, ckpt = evalset
    copy = Path(shutil.copytree(data, tmp_path / "data"))
    corrupt(sorted((copy / "val" / "class1").glob("*.JPEG"))[:2])
    corrupt(sorted((copy / "train" / "class2").glob("*.JPEG"))[:1])
    out = tmp_path / "r.json"
    args = FAST if mode == "fast" else FULL
    code, err = eval_main(capsys, "--checkpoint", str(ckpt), "--data-dir", str(copy), *args,
                          "--output", str(out), "--output-dir", str(tmp_path / "lin"))  # fmt: skip
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["n_val"] == 10 and result["n_skipped_val"] == 2, result
    assert result["n_train"] == 23 and result["n_skipped_train"] == 1, result
    assert result["n_skipped"] == 3
    assert "left out of the evaluation" in err and "neighbouring sample" not in err


def test_export_over_its_own_input_is_refused(tmp_path, two_step_run, capsys):
    """`minc-export RUN RUN/ckpt_00000002.pt` replaced the run's checkpoint with a state dict."""
    run = copy_run(two_step_run, tmp_path / "run")
    ckpt = run / "ckpt_00000002.pt"
    before = ckpt.read_bytes()
    for out in (ckpt, Path(os.path.relpath(ckpt)), run / "." / "ckpt_00000002.pt"):
        capsys.readouterr()
        assert ex.main([str(run), str(out)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "being exported" in line and "destroy the input" in line, line
    os.link(ckpt, run / "hard.pt")  # another name of the same file: same inode
    assert ex.main([str(ckpt), str(run / "hard.pt")]) == 2
    assert "is the checkpoint being exported" in one_error_line(capsys.readouterr().err)
    assert ckpt.read_bytes() == before
    # OUT.json is written too: an input named like it is refused as well
    shutil.copy(ckpt, tmp_path / "model.json")
    assert ex.main([str(tmp_path / "model.json"), str(tmp_path / "model.pt")]) == 2
    assert "is the checkpoint being exported" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "model.pt").exists()


def test_export_json_path_checked_before_any_work(tmp_path, two_step_run, capsys, monkeypatch):
    (tmp_path / "b.json").mkdir()  # OUT.json cannot be written

    def no_work(*args, **kwargs):
        raise AssertionError("the checkpoint was read before OUT.json was checked")

    monkeypatch.setattr("scaled.checkpoint.find_checkpoint", no_work)
    assert ex.main([str(two_step_run), str(tmp_path / "b.pt")]) == 2
    assert "b.json is a folder" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "b.pt").exists()


def test_export_on_a_full_disk_keeps_the_previous_file(tmp_path, two_step_run, capsys,
                                                       monkeypatch):  # fmt: skip
    """minc-export wrote with torch.save in place: a full disk truncated OUT.pt (traceback)."""
    out = tmp_path / "backbone.pt"
    assert ex.main([str(two_step_run), str(out)]) == 0
    good = out.read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if hasattr(f, "truncate"):
            f.truncate(100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    capsys.readouterr()
    assert ex.main([str(two_step_run), str(out)]) == 4
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and str(out) in line and "intact" in line
    assert out.read_bytes() == good
    assert not [p for p in tmp_path.iterdir() if ".tmp." in p.name]


def test_linear_eval_output_over_its_checkpoint_is_refused(evalset, tmp_path, capsys):
    _, data, ckpt = evalset
    copy = shutil.copy(ckpt, tmp_path / "ckpt_00000001.pt")
    before = Path(copy).read_bytes()
    code, err = eval_main(capsys, "--checkpoint", str(copy), "--data-dir", str(data), *FAST,
                          "--output", str(copy))  # fmt: skip
    assert code == 2 and "is the --checkpoint" in one_error_line(err)
    assert Path(copy).read_bytes() == before


# --------------------------------------------------------------------------- crashes after work


def test_per_rank_micro_batch_of_one_is_refused_at_validation(tmp_path, capsys, monkeypatch):
    """--batch-size 8 --accum-steps 8 passed validation and failed at step 1 (BatchNorm)."""
    code, err = main_in_process([*TINY, "--batch-size", "8", "--accum-steps", "8",
                                 "--output-dir", str(tmp_path / "r")], capsys)  # fmt: skip
    user_error(code, err, "per-rank micro-batch of 1", "--accum-steps", "--batch-size")
    assert not (tmp_path / "r").exists()
    # under 2 ranks, checked before the process group exists (the trainer calls it first)
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, err = main_in_process([*TINY, "--batch-size", "4", "--accum-steps", "2",
                                 "--output-dir", str(tmp_path / "r2")], capsys)  # fmt: skip
    user_error(code, err, "per-rank micro-batch of 1", "world size 2")
    from scaled.config import check_rank_batch

    cfg = PretrainConfig(batch_size=4, accum_steps=1)
    check_rank_batch(cfg, 2)  # 2 per rank: trains
    with pytest.raises(UserError, match="micro-batch of 1"):
        check_rank_batch(cfg, 4)


def test_linear_eval_checkpoint_folder_checked_before_training(evalset, tmp_path, capsys,
                                                               monkeypatch):  # fmt: skip
    """--mode full trained an epoch, then died writing its unwritable checkpoint folder."""
    _, data, ckpt = evalset

    def no_work(*args, **kwargs):
        raise AssertionError("trained before the checkpoint folder was checked")

    monkeypatch.setattr(le, "train_epoch", no_work)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, err = eval_main(capsys, "--checkpoint", str(ckpt), "--data-dir", str(data), *FULL,
                          "--output", str(tmp_path / "r.json"),
                          "--output-dir", str(blocker / "lin"))  # fmt: skip
    assert code == 2, err
    assert "--output-dir" in one_error_line(err)
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).startswith(str(tmp_path)))
    code, err = eval_main(capsys, "--checkpoint", str(ckpt), "--data-dir", str(data), *FULL,
                          "--output", "/tmp/r3.json",
                          "--output-dir", str(tmp_path / "ro" / "lin"))  # fmt: skip
    assert code == 2 and "--output-dir" in one_error_line(err), err


# --------------------------------------------------------------------------- rough edges


def test_debris_of_killed_writers_is_removed_on_the_next_start(tmp_path, capsys, image_root):
    """SIGKILL left full-size .tmp checkpoints that no later run removed. The rule: a
    `.NAME.tmp.PID` whose PID is not alive on this machine is removed; a live PID's is kept."""
    from scaled.checkpoint import remove_stale_temporaries

    run = tmp_path / "run"
    run.mkdir()
    dead = run / ".ckpt_00000001.pt.tmp.999999999"
    live = run / f".ckpt_00000099.pt.tmp.{os.getpid()}"  # a step this run never writes
    other = run / ".notes.tmp.999999999"  # not a checkpoint temporary: not ours to delete
    for p in (dead, live, other):
        p.write_bytes(b"x" * 1000)
    code, err = main_in_process([*TINY, "--max-steps", "1", "--output-dir", str(run)], capsys)
    assert code == 0, err
    assert not dead.exists() and live.exists() and other.exists()
    assert f"removed 1 partial file(s) left by killed writers in {run}" in err
    assert remove_stale_temporaries(run) == []  # the live one stays


def test_killed_writer_debris_rule_on_atomic_save_names(tmp_path):
    from scaled.checkpoint import remove_stale_temporaries

    path = tmp_path / "lincls_last.pt"
    atomic_save({"a": torch.zeros(1)}, path)
    stale = tmp_path / ".lincls_last.pt.tmp.999999999"
    stale.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [stale] and path.exists()


def test_unreadable_checkpoint_warning_never_advises_weights_only_false(tmp_path, capsys,
                                                                         two_step_run):  # fmt: skip
    run = copy_run(two_step_run, tmp_path / "run")
    torch.save({"model": argparse.Namespace(a=1)}, checkpoint_path(run, 3))  # a pickle payload
    capsys.readouterr()
    path, _ = newest_valid_checkpoint(run)
    assert path == run / "ckpt_00000002.pt"
    err = capsys.readouterr().err
    assert "ckpt_00000003.pt is unreadable" in err
    assert "weights_only=False" not in err and "can still be loaded" not in err, err
    assert "not loaded" in err


def test_validation_default_is_the_presets_and_helps(capsys):
    """The "(default X)" of a validation error is the preset's, as --help shows it."""
    demo = PRESETS["demo"]()
    assert demo.batch_size != PretrainConfig().batch_size  # else the test could not fail
    with pytest.raises(UserError) as info:
        parse_config(["--preset", "demo", "--batch-size", "0"])
    assert f"(default {demo.batch_size!r})" in str(info.value)
    help_text = build_parser(demo).format_help()
    assert f"(default: {demo.batch_size})" in " ".join(help_text.split())
    with pytest.raises(UserError, match=f"default {PretrainConfig().batch_size!r}"):
        validate(PretrainConfig(batch_size=0))


def test_warm_up_longer_than_the_schedule_warns_with_what_applies(capsys):
    capsys.readouterr()
    parse_config(["--preset", "demo", "--epochs", "2", "--warmup-epochs", "8"])
    err = capsys.readouterr().err
    assert "warning: --warmup-epochs 8" in err and "--epochs 2" in err
    assert "25% of the peak" in err, err  # the lr at the last step: 2/8 of the peak
    parse_config(["--preset", "demo", "--epochs", "2", "--warmup-epochs", "1"])
    assert "warmup" not in capsys.readouterr().err


def test_augment_on_the_digits_says_it_is_not_used(capsys):
    capsys.readouterr()
    parse_config(["--preset", "demo", "--augment", "simclr"])
    err = capsys.readouterr().err
    assert "warning: --augment simclr is not used on the embedded digits" in err, err
    parse_config(["--preset", "demo"])
    parse_config(["--preset", "demo", "--augment", "simclr", "--data-dir", "/data"])
    assert "not used" not in capsys.readouterr().err


def test_one_class_linear_eval_is_refused(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_classes=1, per_class=6)
    ckpt = fake_checkpoint(tmp_path / "run", ["--data-dir", str(data), "--image-size", "32"],
                           num_classes=1)  # fmt: skip
    code, err = eval_main(capsys, "--checkpoint", str(ckpt), "--data-dir", str(data), *FAST,
                          "--output", str(tmp_path / "r.json"))  # fmt: skip
    assert code == 2 and "has 1 class" in one_error_line(err), err
    assert not (tmp_path / "r.json").exists()


def test_knn_with_fewer_train_images_than_k_says_the_k_used(evalset, tmp_path, capsys):
    """The "knn200" of 24 train images is k = 24: the JSON and a warning say so."""
    _, data, ckpt = evalset
    out = tmp_path / "r.json"
    code, err = eval_main(capsys, "--checkpoint", str(ckpt), "--data-dir", str(data), *FAST,
                          "--output", str(out))  # fmt: skip
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["knn200_k"] == 24 and result["knn20_k"] == 20, result
    assert "knn200 uses k = 24" in err, err


def test_knn_every_on_unlabelled_data_is_one_line(tmp_path, capsys):
    root = tmp_path / "data"
    write_jpegs(root / "train", 16, np.random.default_rng(3))
    code, err = main_in_process([*TINY, *IMAGE_ARGS, "--data-dir", str(root), "--knn-every",
                                 "1", "--output-dir", str(tmp_path / "r")], capsys)  # fmt: skip
    user_error(code, err, "--knn-every 1", "class folders", "--knn-every 0")
    assert "note:" not in err  # not "the probe is off" and then an error


def test_resume_with_another_projector_names_the_flag(tmp_path, capsys, image_root, two_step_run):
    run = copy_run(two_step_run, tmp_path / "run")
    code, err = main_in_process([*TINY, *IMAGE_ARGS, "--data-dir", str(image_root),
                                 "--output-dir", str(run), "--resume", "auto", "--max-steps", "3",
                                 "--projector", "simclr"], capsys)  # fmt: skip
    user_error(code, err, "--projector 'byol' -> 'simclr'")


def test_linear_eval_resume_by_another_path_to_the_same_checkpoint(evalset, tmp_path, capsys,
                                                                   monkeypatch):  # fmt: skip
    _, data, ckpt = evalset
    lin = tmp_path / "lin"
    common = ["--data-dir", str(data), *FULL, "--output", str(tmp_path / "r.json"),
              "--output-dir", str(lin)]  # fmt: skip
    code, err = eval_main(capsys, "--checkpoint", str(ckpt), *common)
    assert code == 0, err
    monkeypatch.chdir(ckpt.parent.parent)
    relative = os.path.join(ckpt.parent.name, ".", ckpt.name)
    code, err = eval_main(capsys, "--checkpoint", relative, *common, "--resume", "auto")
    assert code == 0, err
    assert f"resuming linear eval from {lin / 'lincls_last.pt'} after epoch 1" in err


def exif_rotated_jpeg(path: Path) -> np.ndarray:
    """A 40 x 24 (w x h) JPEG whose EXIF says "rotate 90 clockwise to view" (orientation 6);
    returns the upright pixels a viewer shows (24 wide, 40 high): the stored pixels, decoded
    by PIL without the orientation, turned."""
    rng = np.random.default_rng(7)
    pixels = np.kron(rng.integers(0, 256, (3, 5, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, quality=95, exif=exif)
    with Image.open(path) as stored:
        assert stored.size == (40, 24)
        return np.asarray(stored.convert("RGB").transpose(Image.Transpose.ROTATE_270))


def test_exif_orientation_is_applied_by_both_loaders_alike(tmp_path):
    upright = exif_rotated_jpeg(tmp_path / "phone.jpg")
    samples = [(str(tmp_path / "phone.jpg"), 0)]
    pil = np.asarray(ImageFiles(samples).load(0)[0])
    two_stage = DecodedFiles(samples).load(0)[0].permute(1, 2, 0).numpy()
    assert pil.shape == two_stage.shape == upright.shape == (40, 24, 3)
    assert np.array_equal(pil, upright)
    assert np.abs(two_stage.astype(int) - upright.astype(int)).max() <= 1  # libjpeg-turbo twice
    assert np.abs(upright[:, ::-1].astype(int) - upright.astype(int)).mean() > 20  # not symmetric
    readme = (REPO / "README.md").read_text()
    paragraph = readme[readme.index("**Your own images") :].split("\n\n")[0]
    assert "EXIF orientation" in paragraph and "applied" in paragraph
