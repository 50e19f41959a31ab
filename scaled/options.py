"""The command line of `scaled/pretrain.py`: `--preset NAME` plus one `--field-name` per field.

`--help` lists the options in the groups of `scaled.config.GROUPS`, each with its preset default;
a mistake (an unknown option, a bad value) is a `UserError` with one line and the fix.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

from scaled.config import GROUPS, PretrainConfig, config_to_dict, validate
from scaled.errors import UserError
from scaled.presets import PRESETS


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors raise UserError (CLIs print one line and exit 2).

    Built with `allow_abbrev=False` (a prefix such as `--max-step` is an unknown option, not
    silently `--max-steps`); an unknown option gets a "did you mean" from the valid ones.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        options = sorted(o for a in self._actions for o in a.option_strings)
        hints = []
        if message.startswith("unrecognized arguments:"):
            for word in message.split(":", 1)[1].split():
                flag = word.split("=", 1)[0]
                close = difflib.get_close_matches(flag, options, n=1, cutoff=0.6)
                if flag.startswith("--") and close:
                    hints.append(f"{flag}: did you mean {close[0]}?")
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise UserError(f"{message}{hint}; valid options: {' '.join(options)} (see --help)")


def build_parser(defaults: PretrainConfig, prog: str | None = None) -> argparse.ArgumentParser:
    """The pretrain.py parser: `--preset` plus one `--field-name` per config field."""
    parser = _OneLineParser(
        prog=prog,
        description="Self-supervised pretraining (MINC and baselines). Run as "
        "`torchrun --nproc_per_node=N scaled/pretrain.py --preset NAME [options]`. "
        "Presets: "
        + "; ".join(f"{n}: {(f.__doc__ or '').splitlines()[0]}" for n, f in PRESETS.items())
        + ". Exit status: 0 done or preempted (SIGTERM/SIGUSR1 -> checkpoint, exit 0), "
        "2 user error, 3 non-finite loss, 4 checkpoint write failed, 130 SIGINT/Ctrl-C "
        "(checkpoint written); under torchrun, torchrun exits 1 and its summary shows the "
        "worker's status (docs/scaling.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="imagenet_r50_minc", help="named defaults")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (preset + overrides) as JSON and exit 0",
    )
    groups = {name: parser.add_argument_group(title) for name, title in GROUPS.items()}
    for f in fields(PretrainConfig):
        default = getattr(defaults, f.name)
        flag = f"--{f.name.replace('_', '-')}"
        kwargs: dict = {"default": default, "help": f.metadata["help"]}
        if f.metadata["choices"]:
            kwargs["choices"] = f.metadata["choices"]
        add = groups[f.metadata["group"]].add_argument
        if isinstance(default, bool) or f.metadata["auto_bool"]:  # "auto" until given
            add(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            add(flag, type=type(default), **kwargs)
    return parser


def parse_config(argv: Sequence[str] | None = None, prog: str | None = None) -> PretrainConfig:
    """Parse pretrain.py's command line into a validated config (raises UserError / exits 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--preset", default="imagenet_r50_minc")
    known, _ = pre.parse_known_args(argv)
    if known.preset not in PRESETS:
        close = difflib.get_close_matches(known.preset, PRESETS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(
            f"unknown preset {known.preset!r}{hint}; valid presets: {', '.join(PRESETS)}"
        )
    defaults = PRESETS[known.preset]()
    args = build_parser(defaults, prog=prog).parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(PretrainConfig)}
    cfg = replace(defaults, **values)
    validate(cfg, defaults)
    if cfg.data_dir:  # stored resolved: linear_eval reads it back from any working directory
        cfg = replace(cfg, data_dir=str(Path(cfg.data_dir).expanduser().resolve()))
    return cfg


def print_config_requested(argv: Sequence[str] | None = None) -> bool:
    """Whether the command line asks for `--print-config` (pretrain.py prints and exits 0)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--print-config", action="store_true")
    return pre.parse_known_args(argv)[0].print_config


def config_json(cfg: PretrainConfig) -> str:
    """The config as indented JSON (what `--print-config` prints)."""
    return json.dumps(config_to_dict(cfg), indent=2, sort_keys=False)
