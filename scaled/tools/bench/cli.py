"""The command line of ``python -m scaled.tools.bench SUBCOMMAND``.

Subcommands (each measures everything it compares side by side in one run, prints a table, writes
``OUTPUT_DIR/<name>.json`` with the device, versions and threads, and with ``--write-docs``, from a
git checkout only, replaces its own marked section of docs/results.md with the table and the exact
command that made it):

- ``losses``   forward+backward time of the pairwise spectral loss (Eq. 19, B x B) against MINC
               (Eq. 15 + 20, k x k) as the batch B grows, at several widths k: ratio, log-log
               slopes and the crossover batch (:mod:`.losses`).
- ``variance`` gradient variance of the minibatch estimators against the exact graph gradient
               (Eq. 4, 9, 12) on a stochastic block model, as B grows, over several seeds
               (:mod:`.variance`).
- ``step``     the trainer's SSL step (``scaled.pretrain.train_step``) on synthetic data against a
               supervised step of the same backbone, with the time of the loss and statistics and
               of the EMA update as a share of the step (:mod:`.step`).
- ``loader``   images/s per CPU core of decode only, the floor (decode + two crop-resizes),
               today's loader, the two-stage pipeline's CPU stage and DALI's CPU path; the device
               stage's ms per batch, bytes and estimated H100 share (:mod:`.loader`).
- ``profile``  torch.profiler of one SSL step: the top operators ("where the time goes"), into
               docs/scaling.md (:mod:`.profile`).
- ``all``      losses, variance, step and loader (CPU: about 5-8 minutes on 2 cores).

Timings on a shared machine are noisy: every ratio here is taken from measurements made in the
same process, interleaved, so that a slow-down of the machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scaled.config import UserError
from scaled.tools.bench.common import command_line
from scaled.tools.bench.loader import run_loader
from scaled.tools.bench.losses import run_losses
from scaled.tools.bench.profile import run_profile
from scaled.tools.bench.step import run_step
from scaled.tools.bench.variance import run_variance
from scaled.tools.provenance import checkout_root


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """losses, variance, step and loader with their defaults (each writes its own docs section)."""
    parser = build_parser()
    common = ["--output-dir", str(args.output_dir), "--device", args.device]
    common += ["--seed", str(args.seed)]
    common += ["--threads", str(args.threads)] if args.threads else []
    common += ["--write-docs"] * args.write_docs + ["--quick"] * args.quick + ["--plot"] * args.plot
    results = {}
    for name in ("losses", "variance", "step", "loader"):
        t0 = time.perf_counter()
        print(f"== {name}")
        sub = parser.parse_args([name, *common])
        sub.command_line = args.command_line  # the docs show the command that was typed
        results[name] = COMMANDS[name](sub)
        print(f"== {name}: {time.perf_counter() - t0:.0f} s")
    return results


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def common_options() -> argparse.ArgumentParser:
    """The options every subcommand takes (one flag name across the tools: ``--output-dir``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--output-dir", type=Path, default=Path("runs/bench"), help="JSON/PNG folder (runs/bench)"
    )
    common.add_argument(
        "--write-docs",
        action="store_true",
        help="also replace this benchmark's section of docs/results.md (git checkout only)",
    )
    common.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, no timing")
    common.add_argument("--plot", action="store_true", help="also write a PNG into --output-dir")
    common.add_argument(
        "--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N"
    )
    common.add_argument("--seed", type=int, default=0)
    common.add_argument(
        "--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The `python -m scaled.tools.bench` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m scaled.tools.bench",
        description="Throughput, loss-cost and gradient-variance benchmarks (scaled/tools/bench/).",
    )
    common = common_options()
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("losses", parents=[common], help="spectral vs MINC loss cost as B grows")
    p.add_argument(
        "--widths", type=_int_list, default=[128, 256, 2048], help="k values, e.g. 128,256"
    )
    p.add_argument("--batches", type=_int_list, default=None, help="B values (default 256..)")
    p.add_argument("--reps", type=_positive_int, default=None, help="timed calls per cell")
    p.add_argument("--max-call-s", type=float, default=None, help="stop a width past this")

    p = sub.add_parser("variance", parents=[common], help="gradient variance vs the exact gradient")
    p.add_argument(
        "--batches", type=_int_list, default=None, help="B values (default 8,32,128,512)"
    )
    p.add_argument("--draws", type=_positive_int, default=100, help="batches per seed and B")
    p.add_argument("--seeds", type=_int_list, default=[0, 1, 2], help="seeds, e.g. 0,1,2")

    p = sub.add_parser("step", parents=[common], help="SSL step vs supervised step")
    p.add_argument(
        "--archs", type=_str_list, default=None, help="default resnet50,resnet50x2 (GPU)"
    )
    p.add_argument("--methods", type=_str_list, default=["minc", "spectral", "byol"])
    p.add_argument("--batch-size", type=_positive_int, default=None, help="GPU 256, CPU 32")
    p.add_argument("--image-size", type=_positive_int, default=None, help="GPU 224, CPU 64")
    p.add_argument("--reps", type=_positive_int, default=None, help="timed steps per column")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks")

    p = sub.add_parser("loader", parents=[common], help="CPU loaders per core, device stage")
    p.add_argument("--data-dir", default="", help="ImageFolder root with train/ (default: JPEGs)")
    p.add_argument("--images", type=_positive_int, default=256, help="images to time per setting")
    p.add_argument("--workers", type=_int_list, default=[1, 2], help="worker counts, e.g. 1,2")
    p.add_argument("--image-size", type=_positive_int, default=224, help="crop size")
    p.add_argument(
        "--device-batch", type=_positive_int, default=64, help="device stage batch (per view)"
    )
    p.add_argument(
        "--batch", type=_positive_int, default=16, help="DataLoader batch timed per pipeline"
    )
    p.add_argument("--rounds", type=_positive_int, default=2, help="timed passes over the images")

    p = sub.add_parser("profile", parents=[common], help="torch.profiler of one MINC step")
    p.add_argument("--top", type=_positive_int, default=15, help="rows of the operator table")

    sub.add_parser("all", parents=[common], help="losses, variance, step and loader")
    return parser


def _str_list(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return values


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    (value,) = _int_list(text)
    return value


COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "losses": run_losses,
    "variance": run_variance,
    "step": run_step,
    "loader": run_loader,
    "profile": run_profile,
    "all": run_all,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m scaled.tools.bench`."""
    args = build_parser().parse_args(argv)
    args.command_line = command_line(argv)
    try:
        if args.write_docs:
            checkout_root()  # before measuring: an installed package has no docs/ to write
        if args.threads:
            torch.set_num_threads(args.threads)
        COMMANDS[args.command](args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
