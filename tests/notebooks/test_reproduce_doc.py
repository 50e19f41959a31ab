"""Every pretraining command in docs/reproduce.md parses with the current scaled/config.py.

The ImageNet commands cannot run here (no GPU, no ImageNet), but their presets and flags can be
checked: a renamed preset or flag fails this test instead of a reader's 8-GPU job.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from scaled.options import parse_config
from scaled.presets import PRESETS

DOC = Path(__file__).resolve().parents[2] / "docs" / "reproduce.md"
PREFIX = "torchrun --nproc_per_node=8 scaled/pretrain.py "


def _commands() -> list[str]:
    return re.findall(r"`(" + re.escape(PREFIX) + r"[^`]*)`", DOC.read_text())


def test_reproduce_names_the_commands() -> None:
    commands = _commands()
    assert len(commands) >= 20, f"expected the comparison and ablation commands in {DOC}"
    named = {shlex.split(c)[shlex.split(c).index("--preset") + 1] for c in commands}
    assert named <= set(PRESETS), named - set(PRESETS)


@pytest.mark.parametrize("command", _commands())
def test_reproduce_command_parses(command: str) -> None:
    argv = shlex.split(command)[len(shlex.split(PREFIX)) :]
    cfg = parse_config([*argv, "--data-dir", "/path/to/imagenet"])
    assert cfg.data_dir == "/path/to/imagenet"
    for flag, value in zip(argv, argv[1:]):
        if flag == "--output-dir":
            assert cfg.output_dir == value


def test_every_imagenet_preset_has_a_row_and_an_imagenet100_counterpart() -> None:
    commands = _commands()
    named = {shlex.split(c)[shlex.split(c).index("--preset") + 1] for c in commands}
    assert {p for p in PRESETS if p.startswith("imagenet_")} <= named
    comparison = DOC.read_text().split("## The comparison", 1)[1].split("## Ablations", 1)[0]
    for line in (x for x in comparison.splitlines() if PREFIX in x):
        full, small = re.findall(r"`(" + re.escape(PREFIX) + r"[^`]*)`", line)
        assert small.replace(" --subset imagenet100", "").replace("in100_", "") == full, line
        assert parse_config([*shlex.split(small)[3:], "--data-dir", "/x"]).subset == "imagenet100"
