"""Curves of runs: ``python -m scaled.tools.plot RUN_DIR [RUN_DIR ...] [--output-dir DIR]``.

Reads each run's ``metrics.jsonl`` (written by :class:`scaled.runlog.RunLogger`) and, if present,
its linear-probe results (``*.json`` files with ``probe`` or ``linear_eval`` in their name holding a
top-1 accuracy), and draws one PNG per group of metrics into ``--output-dir``:

    loss.png        every metric whose name contains "loss"
    accuracy.png    online-probe / kNN accuracies ("acc", "top1", "top5"), linear-probe results as
                    horizontal lines
    lr.png          learning rate(s) ("lr")
    throughput.png  images per second ("img_per_s", "img_s", "img/s", "throughput")
    health.png      feature std, effective rank, Cbar eigenvalues (scaled.health), one panel each
    other.png       every remaining numeric metric, so nothing logged is silently dropped

Several runs are overlaid on the same axes, one colour per run, labelled by directory name.
Default ``--output-dir``: ``RUN_DIR/plots`` for one run, ``./plots`` for several.

``--report`` draws instead one picture of a single run, ``RUN_DIR/report.png`` (what
``make demo`` writes, :func:`report`): the training curves (loss, online probe, effective rank),
the eigen-spectrum and the diagonal of the final ``Cbar`` (Eq. 15; under GHA the diagonal
approaches the eigenvalues in decreasing order, Eq. 13), ``|Cbar|`` as an image, and a 2-D scatter
of the held-out digits on the first two non-constant features of the online network (the
features the loss sees), coloured by class.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

from scaled.config import UserError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_SKIP = {"step", "time"}


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl``, in step order, with resumed steps de-duplicated.

    A resumed run appends the steps after its checkpoint again; when a record's step is not larger
    than the previous one, the earlier records from that step on are dropped (the later start is
    the one that produced the checkpoints that followed). A truncated last line (a crash while
    writing) is ignored.

    Raises
    ------
    FileNotFoundError
        The directory or its ``metrics.jsonl`` does not exist.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl")
    records: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if not isinstance(record, dict) or "step" not in record:
                continue
            while records and records[-1]["step"] >= record["step"]:
                records.pop()
            records.append(record)
    return records


def read_probe_results(run_dir: str | Path) -> dict[str, float]:
    """Linear-probe accuracies found in ``run_dir`` (``*probe*.json`` / ``*linear_eval*.json``).

    Returns name -> accuracy for each numeric entry whose key contains ``top1``, ``top5`` or
    ``acc`` (nested one level deep, e.g. ``{"linear": {"top1": 71.2}}`` -> ``linear/top1``).
    """
    results: dict[str, float] = {}
    run_dir = Path(run_dir)
    paths = sorted({*run_dir.glob("*probe*.json"), *run_dir.glob("*linear_eval*.json")})
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict):
            continue
        flat: dict[str, object] = {}
        for key, value in data.items():
            if isinstance(value, dict):
                flat.update({f"{key}/{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        for key, value in flat.items():
            if (
                _is_accuracy(key)
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
            ):
                results[f"{path.stem}:{key}"] = float(value)
    return results


def _is_accuracy(name: str) -> bool:
    name = name.lower()
    return any(t in name for t in ("acc", "top1", "top5", "top-1", "top-5"))


def _is_loss(name: str) -> bool:
    return "loss" in name.lower()


def _is_lr(name: str) -> bool:
    name = name.lower()
    return name == "lr" or name.startswith("lr") or name.endswith("lr") or "learning_rate" in name


def _is_throughput(name: str) -> bool:
    name = name.lower()
    return any(t in name for t in ("img_s", "img/s", "img_per_s", "images_per_s", "throughput"))


def _is_health(name: str) -> bool:
    name = name.lower()
    return name.startswith(("feature_std", "eff_rank", "cbar_"))


GROUPS: list[tuple[str, str, str, Callable[[str], bool]]] = [
    # file stem, title, y label, which metric names
    ("loss", "Training loss", "loss", _is_loss),
    ("accuracy", "Probe accuracy", "accuracy", _is_accuracy),
    ("lr", "Learning rate", "learning rate", _is_lr),
    ("throughput", "Throughput", "images / s", _is_throughput),
]


def _health_panel(name: str) -> str:
    """Panel of the health figure that metric ``name`` belongs to."""
    if name.startswith("cbar_eig"):
        return "cbar_eig"
    if name.startswith("cbar_diag_") and name[len("cbar_diag_") :].isdigit():
        return "cbar_diag"
    return name


def _series(records: list[dict], name: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for r in records:
        if name in r and isinstance(r[name], (int, float)):
            steps.append(r["step"])
            values.append(float(r[name]))
    return steps, values


def _metric_names(records: list[dict]) -> list[str]:
    names: dict[str, None] = {}
    for r in records:
        for key, value in r.items():
            if key not in _SKIP and isinstance(value, (int, float)) and not isinstance(value, bool):
                names[key] = None
    return list(names)


def _label(run: str, name: str, n_runs: int) -> str:
    return name if n_runs == 1 else f"{run}: {name}"


def _finish(fig, ax, title: str, ylabel: str, path: Path, *, log_y: bool = False) -> None:
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _read_runs(run_dirs: list[str | Path]) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Records and probe results of each run, keyed by its label (folder name, or path when two
    runs share a name)."""
    runs: dict[str, list[dict]] = {}
    probes: dict[str, dict[str, float]] = {}
    labels = [Path(d).resolve().name for d in run_dirs]
    if len(set(labels)) < len(labels):
        labels = [str(d) for d in run_dirs]
    for label, run_dir in zip(labels, run_dirs):
        records = read_metrics(run_dir)
        if not records:
            raise ValueError(f"{run_dir}/metrics.jsonl is empty")
        runs[label] = records
        probes[label] = read_probe_results(run_dir)
    return runs, probes


_STYLES = ["-", "--", ":", "-."]


def _colours() -> list[str]:
    return plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _draw(ax, records: list[dict], name: str, run: str, r: int, j: int, n_runs: int) -> None:
    """Curve `name` of run number `r`: one colour per run when overlaying, else per metric j."""
    colours = _colours()
    steps, values = _series(records, name)
    colour = colours[r % len(colours)] if n_runs > 1 else colours[j % len(colours)]
    style = _STYLES[j % len(_STYLES)] if n_runs > 1 else "-"
    ax.plot(steps, values, style, color=colour, label=_label(run, name, n_runs))


def _plot_group(runs, probes, group, used: set[str], out_dir: Path) -> Path | None:
    """One figure of `GROUPS` (metrics not drawn by an earlier group); None when it is empty."""
    stem, title, ylabel, matches = group
    n_runs = len(runs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for r, (run, records) in enumerate(runs.items()):
        names = [n for n in _metric_names(records) if matches(n) and n not in used]
        for j, name in enumerate(names):
            _draw(ax, records, name, run, r, j, n_runs)
            drawn = True
        if stem == "accuracy":
            for j, (name, acc) in enumerate(probes[run].items()):
                ax.axhline(
                    acc,
                    color=_colours()[(r if n_runs > 1 else j) % len(_colours())],
                    linestyle=":",
                    label=_label(run, f"{name} = {acc:.4g}", n_runs),
                )
                drawn = True
    for records in runs.values():
        used.update(n for n in _metric_names(records) if matches(n))
    if not drawn:
        plt.close(fig)
        return None
    positive = all(
        v > 0
        for records in runs.values()
        for n in _metric_names(records)
        if matches(n)
        for v in _series(records, n)[1]
        if math.isfinite(v)
    )
    path = out_dir / f"{stem}.png"
    _finish(fig, ax, title, ylabel, path, log_y=(stem == "lr" and positive))
    return path


def _plot_health(runs, used: set[str], out_dir: Path) -> Path | None:
    """health.png: one panel per health metric (Cbar eigenvalues and diagonal share a panel)."""
    health = sorted(
        {_health_panel(n) for recs in runs.values() for n in _metric_names(recs) if _is_health(n)}
    )
    if not health:
        return None
    ncols = min(3, len(health))
    nrows = math.ceil(len(health) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.3 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, health):
        for r, (run, records) in enumerate(runs.items()):
            names = [
                n for n in _metric_names(records) if _is_health(n) and _health_panel(n) == panel
            ]
            for j, name in enumerate(sorted(names)):
                _draw(ax, records, name, run, r, j, len(runs))
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.set_ylabel(panel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[len(health) :]:
        ax.set_visible(False)
    fig.suptitle("Representation health (scaled.health)")
    fig.tight_layout()
    path = out_dir / "health.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    for records in runs.values():
        used.update(n for n in _metric_names(records) if _is_health(n))
    return path


def _plot_rest(runs, used: set[str], out_dir: Path) -> Path | None:
    """other.png: every numeric metric no other figure drew."""
    rest = sorted({n for recs in runs.values() for n in _metric_names(recs)} - used)
    if not rest:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r, (run, records) in enumerate(runs.items()):
        for j, name in enumerate(n for n in rest if n in _metric_names(records)):
            _draw(ax, records, name, run, r, j, len(runs))
    path = out_dir / "other.png"
    _finish(fig, ax, "Other metrics", "value", path)
    return path


def plot_runs(run_dirs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Draw the figures of module docstring for ``run_dirs`` into ``out_dir``; return the PNG paths.

    Raises
    ------
    FileNotFoundError
        A run directory or its metrics.jsonl is missing.
    ValueError
        A run's metrics.jsonl holds no records.
    """
    runs, probes = _read_runs(run_dirs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()  # metrics already drawn: each goes into one figure only
    written = [_plot_group(runs, probes, group, used, out_dir) for group in GROUPS]
    written += [_plot_health(runs, used, out_dir), _plot_rest(runs, used, out_dir)]
    return [path for path in written if path is not None]


# --------------------------------------------------------------------------- the report of one run


def final_state(run_dir: str | Path, n_points: int = 1000) -> dict:
    """From the newest checkpoint of ``run_dir``: ``Cbar``, its eigenvalues (descending), and the
    loss-side features (projector output, ``--feature-norm`` applied, Eq. 23) and labels of the
    first ``n_points`` held-out images.

    Raises ``UserError`` (via :func:`scaled.checkpoint.load_model`) for an unreadable checkpoint,
    ``FileNotFoundError`` when the folder holds none.
    """
    import torch

    from scaled.checkpoint import checkpoint_cbar, list_checkpoints, load_model
    from scaled.data import eval_dataset
    from scaled.features import extract_features
    from scaled.losses import normalized_features

    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise FileNotFoundError(f"{run_dir} has no checkpoint (ckpt_*.pt)")
    cfg, model, ckpt = load_model(ckpts[-1])
    test_set = eval_dataset(cfg, "test")
    h, labels = extract_features(model.online.backbone, test_set)
    model.online.projector.eval()
    with torch.no_grad():
        z = model.online.projector(h[:n_points])
        if cfg.feature_norm > 0:
            z = normalized_features(z, cfg.feature_norm)
    C = checkpoint_cbar(ckpt).double()
    return {
        "checkpoint": str(ckpts[-1]),
        "method": cfg.method,
        "feature_norm": cfg.feature_norm,
        "Cbar": C.numpy(),
        "eig": torch.linalg.eigvalsh(C).flip(0).numpy(),
        "z": z.double().numpy(),
        "labels": labels[:n_points].numpy(),
    }


def non_constant_features(z, count: int = 2, rel: float = 1e-3) -> list[int]:
    """Indices of the first ``count`` columns of ``z`` whose std exceeds ``rel`` x the largest
    (a collapsed or dead feature carries no picture); fewer when fewer qualify."""
    import numpy as np

    std = np.asarray(z).std(axis=0)
    keep = [i for i in range(len(std)) if std[i] > rel * max(float(std.max()), 1e-300)]
    return keep[:count]


def _curve_panel(ax, records: list[dict], names: list[str], title: str) -> None:
    for j, name in enumerate(names):
        steps, values = _series(records, name)
        if steps:
            ax.plot(steps, values, color=_colours()[j % len(_colours())], label=name)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="x-small")


def _spectrum_panel(ax, state: dict) -> None:
    """Eigenvalues of Cbar (descending) and diag(Cbar) by feature index, log scale."""
    import numpy as np

    k = len(state["eig"])
    idx = np.arange(k)
    ax.semilogy(idx, np.maximum(state["eig"], 1e-12), "o-", ms=3, label="eigenvalues (sorted)")
    ax.semilogy(idx, np.maximum(np.diag(state["Cbar"]), 1e-12), "s", ms=3, label="diag(Cbar)")
    ax.set_title("final Cbar: GHA order = diagonal on the spectrum", fontsize=9)
    ax.set_xlabel("feature index i")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small")


def _matrix_panel(fig, ax, state: dict) -> None:
    import numpy as np

    C = np.abs(state["Cbar"])
    im = ax.imshow(C / max(C.max(), 1e-300), cmap="viridis")
    ax.set_title("|Cbar| / max (ordered, decorrelated = diagonal)", fontsize=9)
    ax.set_xlabel("j")
    ax.set_ylabel("i")
    fig.colorbar(im, ax=ax, fraction=0.046)


def _scatter_panel(ax, state: dict) -> None:
    cols = non_constant_features(state["z"])
    if len(cols) < 2:
        ax.text(0.5, 0.5, "fewer than two non-constant features", ha="center", va="center")
        ax.set_title("held-out digits", fontsize=9)
        return
    z, y = state["z"], state["labels"]
    sc = ax.scatter(z[:, cols[0]], z[:, cols[1]], c=y, cmap="tab10", s=5, vmin=-0.5, vmax=9.5)
    ax.set_xlabel(f"feature {cols[0]}")
    ax.set_ylabel(f"feature {cols[1]}")
    ax.set_title(f"held-out digits on features {cols[0]}, {cols[1]} (colour: class)", fontsize=9)
    ax.legend(*sc.legend_elements(), fontsize="xx-small", ncol=2, loc="best")


def report(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Draw the one-picture report of ``run_dir`` (module docstring) into ``path``
    (default ``run_dir/report.png``); return its path."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir}/metrics.jsonl is empty")
    state = final_state(run_dir)
    names = _metric_names(records)
    fig, axes = plt.subplots(2, 3, figsize=(14, 8.5))
    _curve_panel(axes[0, 0], records, [n for n in names if _is_loss(n)], "training loss")
    _curve_panel(
        axes[0, 1], records, [n for n in names if "probe" in n.lower()], "online linear probe"
    )
    _curve_panel(axes[0, 2], records, [n for n in names if n.startswith("eff_rank")], "eff. rank")
    _spectrum_panel(axes[1, 0], state)
    _matrix_panel(fig, axes[1, 1], state)
    _scatter_panel(axes[1, 2], state)
    fig.suptitle(
        f"{run_dir.name}: {state['method']}, feature_norm {state['feature_norm']:g} "
        f"({Path(state['checkpoint']).name})"
    )
    fig.tight_layout()
    path = Path(path) if path is not None else run_dir / "report.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m scaled.tools.plot RUN_DIR [RUN_DIR ...] [--output-dir DIR]``
    (``--report``: ``RUN_DIR/report.png`` of one run)."""
    parser = argparse.ArgumentParser(
        prog="python -m scaled.tools.plot",
        description="Plot loss, probe accuracy, lr, throughput and health curves of training runs.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to overlay")
    parser.add_argument(
        "--output-dir",
        default=None,
        help="folder for the PNGs (default: RUN_DIR/plots for one run, ./plots for several)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="one picture of one run: curves, final Cbar, 2-D feature scatter (RUN_DIR/report.png)",
    )
    args = parser.parse_args(argv)
    out = args.output_dir
    if args.report:
        try:
            print(report_command(args.run_dirs, out))
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if out is None:
        out = Path(args.run_dirs[0]) / "plots" if len(args.run_dirs) == 1 else Path("plots")
    try:
        written = plot_command(args.run_dirs, out)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


def plot_command(run_dirs: list[str], out: str | Path) -> list[Path]:
    """:func:`plot_runs`, its errors turned into ``UserError`` (``<problem>; <fix>``)."""
    try:
        return plot_runs(run_dirs, out)
    except FileNotFoundError as exc:
        raise UserError(
            f"{exc}; pass the --output-dir of a scaled.pretrain run "
            "(it writes metrics.jsonl at every log interval)"
        ) from None
    except ValueError as exc:
        raise UserError(
            f"{exc}; the run has not reached its first log interval yet "
            "(wait for it, or lower --log-every)"
        ) from None


def report_command(run_dirs: list[str], out: str | Path | None) -> Path:
    """:func:`report` of the one run in ``run_dirs``, errors as ``UserError``."""
    if len(run_dirs) != 1:
        raise UserError(f"--report draws one run, got {len(run_dirs)}; pass one RUN_DIR")
    try:
        return report(run_dirs[0], None if out is None else Path(out) / "report.png")
    except FileNotFoundError as exc:
        raise UserError(
            f"{exc}; pass the --output-dir of a finished scaled.pretrain run "
            "(metrics.jsonl and a ckpt_*.pt)"
        ) from None
    except ValueError as exc:
        raise UserError(f"{exc}; wait for the run's first log interval") from None


if __name__ == "__main__":
    sys.exit(main())
