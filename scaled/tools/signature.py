"""MINC's signature on images: does GHA order the features? ``python -m scaled.tools.signature``.

On an augmentation graph MINC reaches the top-k eigenvectors *in order* (Eq. 13): at the fixed
point ``Cbar`` is diagonal and ``diag(Cbar)`` decreases with the feature index. This tool trains
the digits network (preset ``demo``, one CPU process, ``scaled.pretrain.train``) and reads
``Cbar`` (Eq. 15) from checkpoints taken along the run, for each setting of

- method: ``minc`` (GHA) vs ``noncontrastive`` (the same loss without GHA, Eq. 9),
- ``--feature-norm``: 0 (raw projector outputs) vs the preset's sphere (Eq. 23),
- k (``--proj-out``): the preset's 64 and a small 8, where GHA's column-by-column convergence
  is short,
- (full budget) what may break the ordering: no target network (``phibar = sg(phi)``, no lag),
  a quarter of the learning rate, and a BatchNorm on the projector's output (``--projector
  simclr``: BN standardises each feature over the batch, which pulls diag(C) towards equal
  values unless its learned scales order them).

Two numbers per checkpoint: ``offdiag_rel = ||Cbar - diag(Cbar)||_F / ||Cbar||_F`` (0:
decorrelated) and ``spearman``, the Spearman rank correlation of ``diag(Cbar)`` with the feature
index (-1: strictly decreasing, the GHA order; about 0: no order). Writes
``OUTPUT_DIR/signature.json`` and ``signature.png`` (both numbers vs step, one curve a setting).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from scaled.config import METHOD_TABLE, UserError
from scaled.tools.provenance import (
    add_output_options,
    checkout_root,
    environment,
    publish_results,
    run_or_publish,
)

FULL = {"steps": 1500, "points": 10, "extra": True}  # 14 settings
REDUCED = {"steps": 300, "points": 6, "extra": False}
QUICK = {"steps": 4, "points": 2, "extra": False}


def settings(extra: bool) -> list[dict[str, Any]]:
    """The (method, feature_norm, k) grid; ``extra`` adds, for MINC, target-off and lr / 4 at
    k = 8 and an output-BN projector at k = 64 and 8."""
    from scaled.presets import demo

    mu = demo().feature_norm
    grid = [
        {"method": m, "feature_norm": fn, "proj_out": k}
        for k in (64, 8)
        for fn in (0.0, mu)
        for m in ("minc", "noncontrastive")
    ]
    if extra:
        for fn in (0.0, mu):
            grid.append({"method": "minc", "feature_norm": fn, "proj_out": 8, "target": False})
            grid.append({"method": "minc", "feature_norm": fn, "proj_out": 8, "lr_scale": 0.25})
        for k in (64, 8):
            grid.append(
                {"method": "minc", "feature_norm": mu, "proj_out": k, "projector": "simclr"}
            )
    return grid


def cbar_signature(C: np.ndarray) -> dict[str, float]:
    """``offdiag_rel`` and the Spearman correlation of diag(C) with the index (docstring)."""
    from scipy.stats import spearmanr

    d = np.diag(C)
    norm = float(np.linalg.norm(C))
    off = float(np.linalg.norm(C - np.diag(d)))
    rho = spearmanr(np.arange(len(d)), d).statistic if np.ptp(d) > 0 else math.nan
    return {"offdiag_rel": off / norm if norm > 0 else math.nan, "spearman": float(rho)}


def run_config(setting: dict[str, Any], steps: int, points: int, seed: int, out: str):
    """Preset ``demo`` with the setting applied, ``steps`` steps, a checkpoint every
    ``steps / points`` steps, all kept, the cosine schedules ending at ``steps``."""
    from scaled.config import validate
    from scaled.presets import demo

    base = demo()
    epochs = max(1, math.ceil(steps * base.batch_size / base.n_train))
    cfg = dataclasses.replace(
        base,
        seed=seed,
        output_dir=out,
        method=setting["method"],
        feature_norm=setting["feature_norm"],
        proj_out=setting["proj_out"],
        target_network=setting.get("target", True),
        projector=setting.get("projector", base.projector),
        lr=base.lr * setting.get("lr_scale", 1.0),
        epochs=epochs,
        max_steps=steps,
        warmup_epochs=min(base.warmup_epochs, 0.1 * epochs),
        checkpoint_every=max(1, steps // points),
        keep_checkpoints=points + steps // 10 + 2,  # the trainer also saves at each epoch end
        log_every=max(1, steps // points),
        online_probe=False,
    )
    validate(cfg)
    return cfg


def trajectory(setting: dict[str, Any], steps: int, points: int, seed: int) -> dict[str, Any]:
    """Train one setting and read Cbar's signature from each of its checkpoints."""
    import torch

    from scaled.checkpoint import checkpoint_cbar, list_checkpoints, load_checkpoint
    from scaled.pretrain import RunError, train

    with tempfile.TemporaryDirectory(prefix="minc-sig-") as tmp:
        cfg = run_config(setting, steps, points, seed, tmp)
        t0 = time.perf_counter()
        try:
            train(cfg)
        except RunError as err:
            return {"setting": setting, "diverged": True, "error": str(err)}
        rows = []
        for path in list_checkpoints(tmp):
            ckpt = load_checkpoint(path)
            C = checkpoint_cbar(ckpt).to(torch.float64).numpy()
            rows.append({"step": int(ckpt["step"]), **cbar_signature(C)})
        last = checkpoint_cbar(load_checkpoint(list_checkpoints(tmp)[-1])).double().numpy()
        logged = _logged_offdiag(Path(tmp))
    return {
        "setting": setting,
        "diverged": False,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "trajectory": rows,
        "logged_offdiag": logged,
        "final_diag": np.diag(last).tolist(),
        "final_eig": np.sort(np.linalg.eigvalsh(last))[::-1].tolist(),
    }


def _logged_offdiag(run_dir: Path) -> list[dict[str, float]]:
    """``cbar_offdiag_rel`` at every log step of a run (``scaled.health``, in metrics.jsonl)."""
    from scaled.tools.plot import read_metrics

    return [
        {"step": r["step"], "offdiag_rel": r["cbar_offdiag_rel"]}
        for r in read_metrics(run_dir)
        if isinstance(r.get("cbar_offdiag_rel"), (int, float))
    ]


def existing_run(run_dir: Path) -> dict[str, Any]:
    """The signature of a finished ``scaled.pretrain`` run folder: ``Cbar`` of each checkpoint
    kept there, and the logged ``cbar_offdiag_rel`` (``scaled.health``) along the run."""
    import torch

    from scaled.checkpoint import checkpoint_cbar, list_checkpoints, load_checkpoint

    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise UserError(f"{run_dir} has no checkpoint; pass the folder of a finished run")
    first = load_checkpoint(ckpts[-1])
    cfg = first["config"]
    if not METHOD_TABLE[cfg["method"]].cbar:
        raise UserError(
            f"{run_dir} is a {cfg['method']} run, which keeps no Cbar; pass MINC-family runs"
        )
    setting = {
        "method": cfg["method"],
        "feature_norm": float(cfg["feature_norm"]),
        "proj_out": int(cfg["proj_out"]),
        "run": run_dir.name,
    }
    rows = []
    for path in ckpts:
        ckpt = load_checkpoint(path)
        rows.append(
            {"step": int(ckpt["step"]), **cbar_signature(checkpoint_cbar(ckpt).double().numpy())}
        )
    logged = _logged_offdiag(run_dir)
    last = checkpoint_cbar(first).to(torch.float64).numpy()
    return {
        "setting": setting,
        "diverged": False,
        "trajectory": rows,
        "logged_offdiag": logged,
        "final_diag": np.diag(last).tolist(),
        "final_eig": np.sort(np.linalg.eigvalsh(last))[::-1].tolist(),
    }


def label(setting: dict[str, Any]) -> str:
    """Short name of a setting for tables and legends."""
    extra = "" if setting.get("target", True) else ", no target"
    extra += f", lr x{setting['lr_scale']:g}" if "lr_scale" in setting else ""
    extra += f", {setting['projector']} projector (output BN)" if "projector" in setting else ""
    extra += f" (run {setting['run']})" if "run" in setting else ""
    return f"{setting['method']}, fn {setting['feature_norm']:g}, k {setting['proj_out']}{extra}"


def markdown_table(result: dict[str, Any]) -> str:
    """One row per setting: the signature at the first and the last checkpoint."""
    lines = [
        "| setting | steps | offdiag_rel first → last | Spearman(diag, index) at the "
        "checkpoints kept, first → last | Spearman, mean of the second half's checkpoints |",
        "|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        if run["diverged"]:
            lines.append(f"| {label(run['setting'])} | diverged | — | — | — |")
            continue
        a, b = run["trajectory"][0], run["trajectory"][-1]
        late = [r["spearman"] for r in run["trajectory"] if r["step"] >= b["step"] / 2]
        off = run.get("logged_offdiag") or run["trajectory"]  # logged: from the first log step
        lines.append(
            f"| {label(run['setting'])} | {off[0]['step']} → {b['step']} | "
            f"{off[0]['offdiag_rel']:.2f} → {off[-1]['offdiag_rel']:.2f} | "
            f"{a['spearman']:+.2f} → {b['spearman']:+.2f} | {np.nanmean(late):+.2f} |"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """offdiag_rel and Spearman vs step, one curve per setting (solid: minc, dashed: no GHA)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    colours = plt.cm.tab20(np.linspace(0, 1, 20))  # one colour a setting (up to 20)
    for i, run in enumerate(result["runs"]):
        if run["diverged"]:
            continue
        style = "-" if run["setting"]["method"] == "minc" else "--"
        for ax, key in zip(axes, ("offdiag_rel", "spearman")):
            points = run["trajectory"]
            if key == "offdiag_rel" and run.get("logged_offdiag"):  # every log step of the run
                points = run["logged_offdiag"]
            steps = [r["step"] for r in points]
            ax.plot(
                steps,
                [r[key] for r in points],
                style,
                marker=".",
                color=colours[i % len(colours)],
                label=label(run["setting"]),
            )
    axes[0].set_title("||Cbar - diag||_F / ||Cbar||_F (0: decorrelated)", fontsize=9)
    axes[1].set_title("Spearman(diag(Cbar), index) (-1: GHA order)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    axes[1].axhline(-1, color="k", lw=0.5)
    axes[1].legend(fontsize="xx-small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(
        f"MINC signature on the digits ({result['budget']} budget: "
        f"{result['steps']} steps, seed {result['seed']})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """``python -m scaled.tools.signature [--budget full|reduced|quick] [--output-dir DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m scaled.tools.signature", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--budget",
        default="full",
        help="full (1500 steps, 14 settings), reduced (300 steps, 8 settings) or quick (tests)",
    )
    parser.add_argument("--steps", type=int, default=None, help="override the budget's steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only-k", type=int, default=None, help="run the settings of one k")
    parser.add_argument("--only-method", default=None, help="run the settings of one method")
    parser.add_argument(
        "--only-feature-norm", type=float, default=None, help="run the settings of one mu"
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        type=Path,
        default=None,
        help="read finished run folders instead of training (their checkpoints and metrics)",
    )
    add_output_options(parser, "signature")
    args = parser.parse_args(argv)
    return run_or_publish(args, "signature", signature_command, publish, markdown_table)


def signature_command(args: argparse.Namespace) -> dict[str, Any]:
    """Check the arguments, train every setting, write signature.json and signature.png."""
    if getattr(args, "write_docs", False):
        checkout_root()  # before the runs: an installed package has no docs/
    budgets = {"full": FULL, "reduced": REDUCED, "quick": QUICK}
    if args.budget not in budgets:
        raise UserError(f"--budget {args.budget!r} is unknown; use one of full, reduced, quick")
    budget = budgets[args.budget]
    steps = args.steps if args.steps is not None else budget["steps"]
    if steps < budget["points"]:
        raise UserError(f"--steps {steps} is below {budget['points']} checkpoints; pass more")
    grid = settings(budget["extra"])
    for key, value in (
        ("proj_out", args.only_k),
        ("method", getattr(args, "only_method", None)),
        ("feature_norm", getattr(args, "only_feature_norm", None)),
    ):
        if value is not None:
            grid = [s for s in grid if s[key] == value]
    if not grid and not getattr(args, "runs", None):
        raise UserError("no setting left after the --only-* filters; widen them")
    if args.budget == "quick":
        grid = grid[:2]
    t0 = time.perf_counter()
    runs = []
    if getattr(args, "runs", None):
        runs = [existing_run(d) for d in args.runs]
        steps = max(r["trajectory"][-1]["step"] for r in runs)
        grid = []
    for s in grid:
        runs.append(trajectory(s, steps, budget["points"], args.seed))
        print(f"  {label(s)}: {runs[-1].get('trajectory', ['diverged'])[-1]}", file=sys.stderr)
    result = {
        "command": "python -m scaled.tools.signature " + " ".join(sys.argv[1:]),
        "budget": "existing runs" if getattr(args, "runs", None) else args.budget,
        "steps": steps,
        "seed": args.seed,
        "elapsed_seconds": round(time.perf_counter() - t0, 1),
        "runs": runs,
        **environment("cpu"),
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "signature.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.output_dir / "signature.png")
    return result


def _tag(result: dict[str, Any]) -> str:
    """File tag of a result: its budget and steps (``reduced_300``, ``existing_runs_300``)."""
    return f"{result['budget'].replace(' ', '_')}_{result['steps']}"


def publish(result: dict[str, Any], out: Path) -> None:
    """Put ``out/signature.json`` and its figure into docs/results/ and rewrite the ``signature``
    section of docs/results.md (`provenance.publish_results`)."""
    publish_results(
        "signature",
        "### MINC's signature on the digits: ordering and decorrelation of `Cbar`",
        result,
        out,
        tag=_tag,
        plot=plot,
        table=markdown_table,
    )


if __name__ == "__main__":
    sys.exit(main())
