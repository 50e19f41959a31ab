"""Clip vs sphere vs none: the feature map of the loss (Eq. 23, 24), measured on the digits.

For each method (minc, spectral), each feature map (`--feature-norm 0`: none; `sphere`, Eq. 23;
`clip`, Eq. 24, HaoChen et al.'s) and each seed, pretrain the `demo` preset (one CPU process,
shortened by the options below) and score the encoder with the fast linear probe and kNN of
`scaled/linear_eval.py` on the 1000 held-out digits. Prints one table (mean and 95% t-interval
over the seeds, and the number of runs that stopped on a non-finite loss) and writes
OUTPUT_DIR/feature_norm.json; `--write-docs` puts the table into docs/results.md.

    python -m scaled.tools.feature_norm --seeds 0 1 2 --epochs 2 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from scaled.checkpoint import load_model
from scaled.config import UserError
from scaled.data import eval_dataset
from scaled.linear_eval import evaluate_features, extract_features, resolve_checkpoint
from scaled.presets import PRESETS
from scaled.tools.provenance import (
    checkout_root,
    docs_file,
    environment,
    provenance_line,
    replace_section,
)

PRETRAIN = Path(__file__).resolve().parents[1] / "pretrain.py"
NORMS = ("none", "sphere", "clip")
METHODS = ("minc", "spectral")


def norm_options(norm: str, mu: float) -> list[str]:
    """pretrain.py options of one feature map: none is ``--feature-norm 0``."""
    if norm == "none":
        return ["--feature-norm", "0"]
    return ["--feature-norm", str(mu), "--feature-norm-kind", norm]


def finished(run_dir: Path, args) -> bool:
    """Whether run_dir holds this sweep's final checkpoint and its probe (then nothing reruns)."""
    total = args.epochs * (PRESETS["demo"]().n_train // args.batch_size)
    ckpt = run_dir / f"ckpt_{total:08d}.pt"
    cache = run_dir / "probe.json"
    return (
        ckpt.exists()
        and cache.exists()
        and json.loads(cache.read_text())["checkpoint"] == str(ckpt)
    )


def pretrain(run_dir: Path, method: str, norm: str, seed: int, args) -> int:
    """One single-process demo-preset run; returns pretrain.py's exit status (3: non-finite).

    A finished run (`finished`) is not started again: 0.
    """
    if finished(run_dir, args):
        return 0
    cmd = [
        sys.executable, str(PRETRAIN), "--preset", "demo", "--method", method,
        *norm_options(norm, args.mu), "--seed", str(seed), "--output-dir", str(run_dir),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--warmup-epochs", str(args.warmup_epochs), "--log-every", "1000", "--resume", "auto",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print("+ " + " ".join(cmd[1:]), flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "pretrain.log", "a") as log:  # the run's own messages
        return subprocess.call(cmd, env=env, stdout=log, stderr=log)


def probe(run_dir: Path) -> dict[str, float]:
    """Fast linear probe top-1 and kNN top-1 of the run's encoder on the held-out digits.

    Kept in RUN_DIR/probe.json next to the checkpoint it scored, and reused when the checkpoint
    is unchanged (a rerun resumes the finished pretraining with 0 steps).
    """
    ckpt = resolve_checkpoint(run_dir)
    cache = run_dir / "probe.json"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("checkpoint") == str(ckpt):
            return {"top1": cached["top1"], "knn_top1": cached["knn_top1"]}
    result = _probe_checkpoint(ckpt)
    cache.write_text(json.dumps({**result, "checkpoint": str(ckpt)}) + "\n")
    return result


def _probe_checkpoint(ckpt: Path) -> dict[str, float]:
    cfg, model, _ = load_model(ckpt)
    backbone = model.online.backbone
    tr = extract_features(backbone, eval_dataset(cfg, "train"))
    te = extract_features(backbone, eval_dataset(cfg, "test"))
    r = evaluate_features(*tr, *te, epochs=cfg.eval_epochs, seed=cfg.seed)
    return {"top1": r["top1"], "knn_top1": r["knn_top1"]}


def interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% Student-t interval); half-width nan for one value."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()) if len(x) else math.nan, math.nan
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (method, norm): mean +- 95% interval of probe and kNN over finished seeds."""
    rows = []
    for method in dict.fromkeys(r["method"] for r in runs):
        for norm in dict.fromkeys(r["norm"] for r in runs):
            mine = [r for r in runs if r["method"] == method and r["norm"] == norm]
            if not mine:
                continue
            done = [r for r in mine if r["status"] == 0]
            rows.append(
                {
                    "method": method,
                    "norm": norm,
                    "seeds": len(mine),
                    "non_finite": sum(r["status"] == 3 for r in mine),
                    "top1": interval([100 * r["top1"] for r in done]),
                    "knn_top1": interval([100 * r["knn_top1"] for r in done]),
                }
            )
    return rows


def format_table(rows: list[dict]) -> str:
    """The result table: mean +- 95% half-width, in percent."""

    def cell(m_h: tuple[float, float]) -> str:
        m, h = m_h
        if math.isnan(m):
            return "n/a"
        return f"{m:5.1f} (one run)" if math.isnan(h) else f"{m:5.1f} +- {h:4.1f}"

    lines = [
        "| method | feature map | runs | non-finite | linear probe top-1 (%) | kNN top-1 (%) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['norm']} | {r['seeds']} | {r['non_finite']} | "
            f"{cell(r['top1'])} | {cell(r['knn_top1'])} |"
        )
    return "\n".join(lines)


def write_docs_section(method: str, table: str, argv: list[str] | None, seconds: float) -> None:
    """Replace the section feature-norm-METHOD of docs/results.md with this sweep's table."""
    args = " ".join(sys.argv[1:] if argv is None else argv)
    body = "\n".join(
        [
            f"#### {method}",
            "",
            f"Command: `python -m scaled.tools.feature_norm {args}`  ",
            f"Measured on: {provenance_line(environment('cpu'))}; {seconds:.0f} s in all.",
            "",
            table,
            "",
            "Each run: the `demo` preset (small ResNet, AdamW) in one CPU process, shortened as "
            "in the command; scored by the fast linear probe and kNN (k = 20) of "
            "`scaled/linear_eval.py` on the 1000 held-out digits. Mean +- the half-width of the "
            "95% Student-t interval over the seeds that finished; `non-finite`: runs that "
            "stopped on a non-finite loss (exit 3).",
        ]
    )
    replace_section(docs_file(), f"feature-norm-{method}", body)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m scaled.tools.feature_norm`."""
    parser = argparse.ArgumentParser(
        prog="python -m scaled.tools.feature_norm", description=__doc__
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--norms", nargs="+", choices=NORMS, default=list(NORMS))
    parser.add_argument("--mu", type=float, default=1.0, help="radius^2 of sphere and clip")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup-epochs", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--output-dir", default="runs/feature_norm")
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="start no run: tabulate the runs of this grid that finished (their 'runs' count)",
    )
    parser.add_argument("--write-docs", action="store_true", help="into docs/results.md")
    args = parser.parse_args(argv)
    try:
        if args.write_docs:
            checkout_root()
        return run(args, argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Every (method, norm, seed) run, then the table (and the docs with --write-docs)."""
    out = Path(args.output_dir)
    torch.set_num_threads(args.threads)
    t0, runs = time.perf_counter(), []
    grid = [(s, m, n) for s in args.seeds for m in args.methods for n in args.norms]
    for seed, method, norm in grid:  # seeds outermost: an interrupted sweep has whole seeds
        run_dir = out / f"{method}_{norm}_seed{seed}"
        if args.finished_only and not finished(run_dir, args):
            continue  # a report of what a (stopped) sweep finished: start nothing
        status = pretrain(run_dir, method, norm, seed, args)
        row = {"method": method, "norm": norm, "seed": seed, "status": status}
        if status == 0:
            row.update(probe(run_dir))
        elif status != 3:
            raise UserError(
                f"pretraining {run_dir} exited with {status}; see {run_dir}/pretrain.log"
            )
        print(json.dumps(row), flush=True)
        runs.append(row)
    seconds = time.perf_counter() - t0
    rows = summarise(runs)
    print(format_table(rows))
    out.mkdir(parents=True, exist_ok=True)
    (out / "feature_norm.json").write_text(
        json.dumps({"args": vars(args), "runs": runs, "rows": rows}, indent=2) + "\n"
    )
    if args.write_docs:  # one section per method, so a method's sweep can be rerun alone
        for method in args.methods:
            table = format_table([r for r in rows if r["method"] == method])
            write_docs_section(method, table, argv, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
