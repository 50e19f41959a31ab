"""Issue #18 item 12 and the option rough edges: every PretrainConfig field is validated in one
place (`scaled.config.validate`, from each field's own `option` metadata) with the field named;
unknown or abbreviated options get one line and a suggestion; a relative --data-dir is stored
resolved.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import pytest

from scaled.config import GROUPS, PretrainConfig, UserError, validate
from scaled.options import parse_config

# One value per field that no run can use. A new field without a row here (and an `option` with
# its group, help and check) fails `test_every_field_has_a_bad_value_here_and_a_check`.
BAD_VALUE = {
    "method": "mnic",
    "arch": "resnet5",
    "width": 0,
    "small_blocks": 0,
    "stem_stride": 0,
    "data_dir": "data\0dir",
    "output_dir": "",
    "epochs": 0,
    "max_steps": -1,
    "batch_size": 0,
    "accum_steps": 0,
    "lr": 1e45,
    "optimizer": "adam",
    "weight_decay": -1.0,
    "momentum": 1.0,
    "warmup_epochs": -5.0,
    "tau_base": 1.5,
    "target_network": "yes",
    "beta": 1.0,
    "feature_norm": float("nan"),
    "cbar_source": "both",
    "loader": "ffcv",
    "augment": "mocov3",
    "predictor": "deep",
    "proj_hidden": 0,
    "proj_out": -3,
    "pred_hidden": 0,
    "alpha": 1.0,
    "alpha_estimator": "exact",
    "include_diagonal": 1,
    "temperature": 0.0,
    "image_size": 0,
    "crop_scale_min": 2.0,
    "digit_stroke": 1.5,
    "num_workers": -1,
    "seed": -1,
    "device": "tpu",
    "amp": "fp8",
    "channels_last": "no",
    "compile": None,
    "sync_bn": 0,
    "checkpoint_every": -1,
    "keep_checkpoints": 0,
    "log_every": 0,
    "resume": "a\0b",
    "online_probe": "off",
    "probe_lr": 0.0,
    "eval_epochs": 0,
    "eval_mode": "slow",
    "knn_every": -1,
    "knn_samples": 0,
    "n_train": 0,
    "val_digits": -1,
    "fault_inject": "nan@x",
    "zero_init_residual": "yes",
    "exclude_bias_bn": 1,
    "fix_pred_lr": "no",
    "feature_norm_kind": "ball",
    "projector": "mlp3",
    "subset": "imagenet10",
}


def test_every_field_has_a_bad_value_here_and_a_check():
    names = {f.name for f in fields(PretrainConfig)}
    assert set(BAD_VALUE) == names, set(BAD_VALUE) ^ names
    for f in fields(PretrainConfig):
        assert f.metadata["group"] in GROUPS and f.metadata["help"], f.name
        ok, what = f.metadata["check"]
        assert callable(ok) and what, f.name


def test_the_defaults_and_every_preset_are_valid():
    from scaled.presets import PRESETS

    validate(PretrainConfig())
    for make in PRESETS.values():
        validate(make())


@pytest.mark.parametrize("name", sorted(BAD_VALUE))
def test_a_bad_value_of_each_field_is_a_one_line_error_naming_it(name):
    cfg = replace(PretrainConfig(), **{name: BAD_VALUE[name]})
    with pytest.raises(UserError) as info:
        validate(cfg)
    message = str(info.value)
    assert message.startswith(f"--{name.replace('_', '-')} "), message
    assert "; " in message and "\n" not in message


@pytest.mark.parametrize(
    "argv",
    [
        ["--image-size", "0"], ["--crop-scale-min", "2"], ["--num-workers", "-1"],
        ["--seed", "-1"], ["--stem-stride", "0"], ["--temperature", "0"], ["--lr", "1e45"],
        ["--warmup-epochs", "-5"], ["--output-dir", ""], ["--lr", "nan"],
    ],
)  # fmt: skip
def test_the_filed_command_lines_are_refused(argv):
    """The options issue #18 item 12 lists, through the parser."""
    with pytest.raises(UserError, match=f"^{argv[0]} "):
        parse_config(["--preset", "demo", *argv])


def test_unknown_option_gets_a_suggestion():
    with pytest.raises(UserError) as info:
        parse_config(["--preset", "demo", "--batchsize", "16"])
    assert "--batchsize: did you mean --batch-size?" in str(info.value)


def test_abbreviated_options_are_not_accepted():
    """argparse's default allow_abbrev would read --max-step as --max-steps, silently."""
    with pytest.raises(UserError) as info:
        parse_config(["--preset", "demo", "--max-step", "3"])
    assert "unrecognized arguments: --max-step 3" in str(info.value)
    assert "did you mean --max-steps?" in str(info.value)
    with pytest.raises(UserError):
        parse_config(["--pre", "demo"])  # not --preset


def test_relative_data_dir_is_stored_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = parse_config(["--preset", "demo", "--data-dir", "data/images"])
    assert cfg.data_dir == str(tmp_path.resolve() / "data" / "images")
    assert Path(cfg.data_dir).is_absolute()
    assert parse_config(["--preset", "demo"]).data_dir == ""  # empty: the embedded digits
