"""Gradient variance of the estimators on the digits network: ``python -m scaled.tools.gradvar``.

The paper's central argument (Sec. 4, Eq. 9 vs Eq. 19-20): the non-contrastive estimator has a
lower gradient variance than the pairwise spectral one, so it needs smaller batches. On graphs
``scaled/tools/bench/variance.py`` measures it exactly; this tool measures it on the network
the demo trains (preset ``demo``: the small ResNet, projector, ``--feature-norm`` as in the
preset), at fixed weights:

- at initialisation (``torch.manual_seed(seed)``), and
- after training (``--checkpoint``: a ``scaled.pretrain`` run folder or ``ckpt_*.pt``, e.g. the
  demo's ``runs/demo``).

For each batch size B and each of ``--batches`` independent batches (two augmented views of B
training digits, BatchNorm in training mode as in the trainer) it takes the gradient of the
online parameters for three estimators, all from the same forward pass:

- ``spectral``: the pairwise spectral contrastive loss (Eq. 19, ``spectral_loss_batch``),
- ``minc_batch_C``: MINC (Eq. 20) with ``Cbar`` = this batch's ``C`` (beta = 0),
- ``minc_ema_Cbar``: MINC with the EMA ``Cbar <- beta Cbar + (1 - beta) C`` (Eq. 15, beta of the
  preset) carried over the stream of batches, after a burn-in of ``--burn-in`` batches (what the
  trainer does at a fixed point of the weights).

``phibar`` is the target network of the checkpoint (at init: a copy of the online network).
The reported number is the relative variance ``E ||g - E g||^2 / ||E g||^2`` over the batches
(scale-free, so the factor 2 between the spectral and the MINC gradient (Eq. 9) drops out), and
the absolute variance in MINC-gradient units (spectral / 4). The ratios of absolute variances
carry a 95% paired bootstrap interval over the batches (`ratio_interval`).
Writes ``OUTPUT_DIR/gradvar.json`` and ``gradvar.png`` (relative variance vs B, log-log).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scaled.config import UserError
from scaled.tools.provenance import (
    add_output_options,
    checkout_root,
    environment,
    publish_results,
    run_or_publish,
)

ESTIMATORS = ("spectral", "minc_batch_C", "minc_ema_Cbar")
FULL = {"batch_sizes": (32, 64, 128, 256, 512), "batches": 64, "burn_in": 20}
QUICK = {"batch_sizes": (8, 16), "batches": 3, "burn_in": 2}


def fixed_model(checkpoint: str | None, seed: int):
    """(cfg, SSLModel) at fixed weights: the checkpoint's, or the demo preset's initialisation."""
    from scaled.checkpoint import load_model
    from scaled.linear_eval import resolve_checkpoint
    from scaled.model import SSLModel
    from scaled.presets import demo

    if checkpoint is not None:
        cfg, model, _ = load_model(resolve_checkpoint(checkpoint))
    else:
        cfg = demo()
        torch.manual_seed(seed)
        model = SSLModel(cfg, 1, 10)
    if model.target is None:  # phibar = sg(phi): a frozen copy gives the same values
        model.target = copy.deepcopy(model.online)
    return cfg, model


def draw_batch(dataset, B: int, rng: np.random.Generator, epoch: int):
    """Two augmented views of B training digits drawn independently (without replacement)."""
    idx = rng.choice(len(dataset), size=B, replace=False)
    items = [dataset[(epoch, int(i))] for i in idx]
    return torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])


def loss_features(cfg, z: torch.Tensor) -> torch.Tensor:
    """Features as the loss sees them: ``--feature-norm`` applied (Eq. 23)."""
    from scaled.losses import normalized_features

    return normalized_features(z, cfg.feature_norm) if cfg.feature_norm > 0 else z


@torch.no_grad()
def target_statistics(cfg, model, x1, x2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """phibar of both views and their batch second moment ``C`` (Eq. 15, 22)."""
    t1, t2 = loss_features(cfg, model.target(x1)), loss_features(cfg, model.target(x2))
    T = torch.cat([t1, t2])
    return t1, t2, T.T @ T / T.shape[0]


def batch_gradients(cfg, model, x1, x2, targets, C, Cbar) -> dict[str, torch.Tensor]:
    """Flattened online-parameter gradients of the three estimators, from one forward pass."""
    from scaled.losses import minc_loss_batch, spectral_loss_batch

    params = [p for p in model.online.parameters() if p.requires_grad]
    out = model.online(x1, x2)
    z1, z2 = loss_features(cfg, out["p1"]), loss_features(cfg, out["p2"])
    t1, t2 = targets
    losses = {
        "spectral": spectral_loss_batch(z1, z2),
        "minc_batch_C": 0.5 * (minc_loss_batch(z1, t2, C) + minc_loss_batch(z2, t1, C)),
        "minc_ema_Cbar": 0.5 * (minc_loss_batch(z1, t2, Cbar) + minc_loss_batch(z2, t1, Cbar)),
    }
    grads = {}
    for i, (name, loss) in enumerate(losses.items()):
        g = torch.autograd.grad(loss, params, retain_graph=i < len(losses) - 1, allow_unused=True)
        flat = [
            (gi if gi is not None else torch.zeros_like(p)).reshape(-1) for gi, p in zip(g, params)
        ]
        grads[name] = torch.cat(flat).double()
    return grads


def relative_variance(samples: list[torch.Tensor]) -> float:
    """``E ||g - E g||^2 / ||E g||^2`` over the rows of ``samples`` (unbiased variance)."""
    G = torch.stack(samples)
    mean = G.mean(0)
    var = ((G - mean) ** 2).sum() / max(len(samples) - 1, 1)
    return float(var / (mean @ mean).clamp_min(1e-300))


def absolute_variance(samples: list[torch.Tensor]) -> float:
    """``E ||g - E g||^2`` over the rows of ``samples`` (unbiased)."""
    G = torch.stack(samples)
    return float(((G - G.mean(0)) ** 2).sum() / max(len(samples) - 1, 1))


BOOTSTRAP_RESAMPLES = 2000


def centred_gram(samples: list[torch.Tensor]) -> np.ndarray:
    """``K_ij = <g_i - gbar, g_j - gbar>`` of the batches' gradients (float64)."""
    G = torch.stack(samples)
    X = G - G.mean(0)
    return (X @ X.T).numpy()


def variance_from_counts(K: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``E ||g - E g||^2`` (unbiased) of the batches drawn ``counts[r, i]`` times in resample r,
    from the Gram matrix alone: ``(sum_i c_i K_ii - c^T K c / n) / (n - 1)``, n = sum_i c_i."""
    n = counts.sum(1)
    quad = np.einsum("ri,ij,rj->r", counts, K, counts)
    return (counts @ np.diag(K) - quad / n) / (n - 1)


def ratio_interval(K_num: np.ndarray, K_den: np.ndarray, seed: int) -> list[float]:
    """95% percentile bootstrap interval of ``var(num) / var(den)``: the batches resampled with
    replacement, the same resample for both estimators (they share their batches: paired)."""
    n = len(K_num)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=BOOTSTRAP_RESAMPLES).astype(float)
    den = variance_from_counts(K_den, counts)
    spread = den > 0  # a resample of one batch drawn n times has no variance (few batches only)
    ratios = variance_from_counts(K_num, counts)[spread] / den[spread]
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return [float(lo), float(hi)]


# The spectral gradient is twice the non-contrastive one in expectation (Eq. 9): its absolute
# variance is divided by 2^2 to be read in the units of the MINC gradient.
ABS_SCALE = {"spectral": 0.25, "minc_batch_C": 1.0, "minc_ema_Cbar": 1.0}


def measure(cfg, model, dataset, B: int, batches: int, burn_in: int, seed: int) -> dict[str, float]:
    """Relative variance of each estimator at batch size B over ``batches`` batches.

    The EMA ``Cbar`` runs over the whole stream (burn-in batches give statistics only); as in
    the trainer it takes the batch's ``C`` before the loss (``scaled.objective.MINCLoss``).
    """
    from scaled.ema import ema_update

    rng = np.random.default_rng(seed + B)
    model.train()
    Cbar = None
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in ESTIMATORS}
    for t in range(burn_in + batches):
        x1, x2 = draw_batch(dataset, B, rng, epoch=t)
        t1, t2, C = target_statistics(cfg, model, x1, x2)
        Cbar = C if Cbar is None else ema_update(Cbar, C, cfg.beta)
        if t < burn_in:
            continue
        grads = batch_gradients(cfg, model, x1, x2, (t1, t2), C, Cbar)
        for name in ESTIMATORS:
            samples[name].append(grads[name])
    rel = {name: relative_variance(s) for name, s in samples.items()}
    grams = {name: centred_gram(s) for name, s in samples.items()}
    scale = {n: ABS_SCALE[n] / ABS_SCALE["minc_ema_Cbar"] for n in ESTIMATORS}  # of a ratio
    intervals = {
        f"{num}_over_ema_abs_ci": [
            scale[name] * v for v in ratio_interval(grams[name], grams["minc_ema_Cbar"], seed)
        ]
        for num, name in (("spectral", "spectral"), ("batch_C", "minc_batch_C"))
    }
    return {
        **rel,
        **{f"{n}_abs": ABS_SCALE[n] * absolute_variance(s) for n, s in samples.items()},
        **intervals,
    }


def run(checkpoint: str | None, sizes, batches: int, burn_in: int, seed: int) -> dict[str, Any]:
    """Every (weights, B) cell: {"init": {B: {estimator: rel. var.}}, "trained": ...}."""
    from scaled.data import pretrain_dataset

    points = {"init": None, "trained": checkpoint} if checkpoint else {"init": None}
    result: dict[str, Any] = {}
    for label, ckpt in points.items():
        cfg, model = fixed_model(ckpt, seed)
        dataset = pretrain_dataset(cfg)[0]
        result[label] = {}
        for B in sizes:
            t0 = time.perf_counter()
            result[label][str(B)] = measure(cfg, model, dataset, B, batches, burn_in, seed)
            shown = ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else "{} {:.3g}-{:.3g}".format(k, *v)
                for k, v in result[label][str(B)].items()
            )
            print(f"  [{label}] B={B}: {shown} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return result


def ema_advantage(cells: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per B: rel. var. of spectral / MINC-EMA and of MINC-batch-C / MINC-EMA (> 1: EMA lower)."""
    return {
        B: {
            "spectral_over_ema": c["spectral"] / c["minc_ema_Cbar"],
            "batch_C_over_ema": c["minc_batch_C"] / c["minc_ema_Cbar"],
            **(
                {
                    "spectral_over_ema_abs": c["spectral_abs"] / c["minc_ema_Cbar_abs"],
                    "batch_C_over_ema_abs": c["minc_batch_C_abs"] / c["minc_ema_Cbar_abs"],
                }
                if "spectral_abs" in c
                else {}
            ),
            **{k: c[k] for k in ("spectral_over_ema_abs_ci", "batch_C_over_ema_abs_ci") if k in c},
        }
        for B, c in cells.items()
    }


def markdown_table(result: dict[str, Any]) -> str:
    """One row per (weights, B): the three relative variances, and the variance ratios to MINC
    with the EMA ``Cbar`` (relative, and absolute in MINC-gradient units where recorded, with
    the 95% bootstrap interval in brackets where recorded)."""
    lines = [
        "| weights | B | rel. var. spectral | MINC, batch C | MINC, EMA Cbar | spectral / EMA "
        "| batch C / EMA | abs.: spectral/4 / EMA | abs.: batch C / EMA |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, cells in result["cells"].items():
        ratios = ema_advantage(cells)
        for B, c in cells.items():
            r = ratios[B]
            a = [
                (f"{r[k]:.2f}" if k in r else "—")
                + (" ({:.2f}-{:.2f})".format(*r[k + "_ci"]) if k + "_ci" in r else "")
                for k in ("spectral_over_ema_abs", "batch_C_over_ema_abs")
            ]
            lines.append(
                f"| {label} | {B} | {c['spectral']:.3g} | {c['minc_batch_C']:.3g} | "
                f"{c['minc_ema_Cbar']:.3g} | {r['spectral_over_ema']:.2f} | "
                f"{r['batch_C_over_ema']:.2f} | {a[0]} | {a[1]} |"
            )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Relative variance vs B (log-log), one panel per weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = result["cells"]
    kinds = [("", "E||g - Eg||^2 / ||Eg||^2")]
    if all("spectral_abs" in c for by_b in cells.values() for c in by_b.values()):
        kinds.append(("_abs", "E||g - Eg||^2 (spectral / 4, Eq. 9)"))
    fig, axes = plt.subplots(
        len(kinds), len(cells), figsize=(5 * len(cells), 3.8 * len(kinds)), squeeze=False
    )
    for row, (suffix, ylabel) in enumerate(kinds):
        for ax, (label, by_b) in zip(axes[row], cells.items()):
            sizes = [int(b) for b in by_b]
            for name in ESTIMATORS:
                ax.loglog(sizes, [by_b[str(b)][name + suffix] for b in sizes], "o-", label=name)
            first = by_b[str(sizes[0])]["spectral" + suffix]
            ax.loglog(sizes, [first * sizes[0] / b for b in sizes], "k:", label="1/B")
            ax.set_xlabel("batch size B")
            ax.set_ylabel(ylabel, fontsize=8)
            ax.set_title(f"digits network, weights at {label}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize="small")
    fig.suptitle(f"gradient variance ({result['batches']} batches per point)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """``python -m scaled.tools.gradvar [--checkpoint RUN] [--batches N] [--quick]``."""
    parser = argparse.ArgumentParser(
        prog="python -m scaled.tools.gradvar", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--checkpoint", default=None, help="trained weights (run folder or ckpt_*.pt)"
    )
    parser.add_argument(
        "--batches", type=int, default=None, help=f"batches per point ({FULL['batches']})"
    )
    parser.add_argument("--batch-sizes", default=None, help="comma-separated (32,64,128,256,512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--burn-in", type=int, default=None, help="EMA history batches (20)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes (tests; numbers mean nothing)"
    )
    add_output_options(parser, "gradvar")
    args = parser.parse_args(argv)
    return run_or_publish(args, "gradvar", gradvar_command, publish, markdown_table)


def gradvar_command(args: argparse.Namespace) -> dict[str, Any]:
    """Check the arguments, measure, write gradvar.json and gradvar.png."""
    if getattr(args, "write_docs", False):
        checkout_root()  # before the runs: an installed package has no docs/
    budget = QUICK if args.quick else FULL
    batches = args.batches if args.batches is not None else budget["batches"]
    if batches < 2:
        raise UserError(f"--batches {batches} must be >= 2; a variance needs two batches")
    try:
        sizes = (
            tuple(int(b) for b in args.batch_sizes.split(","))
            if args.batch_sizes
            else budget["batch_sizes"]
        )
    except ValueError:
        raise UserError(
            f"--batch-sizes {args.batch_sizes!r} is not a list of integers; pass e.g. 32,128"
        ) from None
    if min(sizes) < 2:
        raise UserError("every batch size must be >= 2; the spectral loss needs pairs")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    t0 = time.perf_counter()
    burn_in = args.burn_in if getattr(args, "burn_in", None) is not None else budget["burn_in"]
    if burn_in < 0:
        raise UserError(f"--burn-in {burn_in} must be >= 0; pass a number of batches")
    cells = run(args.checkpoint, sizes, batches, burn_in, args.seed)
    argv = " ".join(sys.argv[1:])
    result = {
        "command": f"python -m scaled.tools.gradvar {argv}".strip(),
        "quick": args.quick,
        "batches": batches,
        "burn_in": burn_in,
        "checkpoint": args.checkpoint,
        "seed": args.seed,
        "elapsed_seconds": round(time.perf_counter() - t0, 1),
        "cells": cells,
        "ratios": {label: ema_advantage(c) for label, c in cells.items()},
        **environment("cpu"),
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "gradvar.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.output_dir / "gradvar.png")
    return result


def _tag(result: dict[str, Any]) -> str:
    """File tag of a result: quick, or the number of batches per point."""
    return "quick" if result["quick"] else f"{result['batches']}_batches"


def publish(result: dict[str, Any], out: Path) -> None:
    """Put ``out/gradvar.json`` and its figure into docs/results/ and rewrite the ``gradvar``
    section of docs/results.md (`provenance.publish_results`)."""
    publish_results(
        "gradvar",
        "### Gradient variance on the digits network (`scaled/tools/gradvar.py`)",
        result,
        out,
        tag=_tag,
        plot=plot,
        table=markdown_table,
    )


if __name__ == "__main__":
    sys.exit(main())
