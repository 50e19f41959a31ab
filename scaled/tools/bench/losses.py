"""``losses``: forward + backward time of the pairwise spectral loss (Eq. 19, B x B) against
MINC (Eq. 15 + 20, k x k) as the batch B grows, at several widths k: ratio, log-log slopes and the
crossover batch."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scaled.tools.bench.common import (
    docs_body,
    markdown_table,
    pick_device,
    publish,
    ran_on_cuda,
    save_figure,
    stored_record,
    time_calls,
    write_json,
)
from scaled.tools.provenance import environment

LOSS_VARIANTS = ("pairwise", "spectral", "minc")


def loss_step_functions(
    B: int, k: int, device: torch.device, gen: torch.Generator, beta: float = 0.8
) -> dict[str, Callable[[], None]]:
    """Closures, each one loss forward+backward at batch B and width k as a training step runs it.

    pairwise: the spectral estimator (Eq. 19) through the B x B similarity matrix, i.e.
        ``alpha_loss_batch(z1, z2, 2.0, estimator="pairwise")`` (alpha = 2 is -(Eq. 19 + 1)/2,
        Eq. 18): the O(B^2 k) form of the paper's cost argument.
    spectral: ``spectral_loss_batch(z1, z2)``, the same estimator computed through the k x k
        products ``<z1^T z1, z2^T z2>`` (O(B k^2), scaled/losses.py).
    minc: ``C_batch`` of the target features of both views (Eq. 15), the EMA into ``Cbar``, the
        symmetrised MINC loss (Eq. 20, each view once as the online side) and its backward.
    """
    from scaled.losses import (
        alpha_loss_batch,
        minc_loss_batch,
        second_moment_batch,
        spectral_loss_batch,
    )

    def features() -> torch.Tensor:
        return (torch.randn(B, k, generator=gen) / math.sqrt(k)).to(device)

    z1, z2 = features().requires_grad_(), features().requires_grad_()
    t1, t2 = features(), features()  # target-network features of the two views
    Cbar = torch.eye(k, device=device) / k

    def pairwise() -> None:
        z1.grad = z2.grad = None
        alpha_loss_batch(z1, z2, 2.0, estimator="pairwise").backward()

    def spectral() -> None:
        z1.grad = z2.grad = None
        spectral_loss_batch(z1, z2).backward()

    def minc() -> None:
        z1.grad = z2.grad = None
        with torch.no_grad():
            C_batch = 0.5 * (second_moment_batch(t1) + second_moment_batch(t2))
            Cbar.mul_(beta).add_(C_batch, alpha=1 - beta)
        loss = 0.5 * (minc_loss_batch(z1, t2, Cbar) + minc_loss_batch(z2, t1, Cbar))
        loss.backward()

    return {"pairwise": pairwise, "spectral": spectral, "minc": minc}


def crossover(batches: list[int], ratio: list[float]) -> str:
    """Where ratio = t_spectral / t_minc first reaches 1, interpolated in log-log."""
    if not batches:
        return "-"
    if ratio[0] >= 1:
        return f"MINC cheaper at every B measured (from {batches[0]})"
    for i in range(1, len(batches)):
        if ratio[i] >= 1:
            r0, r1 = math.log(ratio[i - 1]), math.log(ratio[i])
            b0, b1 = math.log(batches[i - 1]), math.log(batches[i])
            b = math.exp(b0 + (0 - r0) * (b1 - b0) / (r1 - r0))
            return f"B ~ {b:.0f}"
    return f"not reached up to B = {batches[-1]}"


def loglog_slope(batches: list[int], times: list[float], last: int = 3) -> float:
    """Slope of log(time) against log(B) over the `last` largest batches (nan with fewer than 2)."""
    if len(batches) < 2:
        return float("nan")
    x = np.log(np.asarray(batches[-last:], dtype=float))
    y = np.log(np.asarray(times[-last:], dtype=float))
    return float(np.polyfit(x, y, 1)[0])


def losses_settings(args: argparse.Namespace, on_gpu: bool) -> dict[str, Any]:
    """Widths, batches, repetitions and the per-call time limit of this run."""
    if args.quick:
        return {"widths": [16, 32], "batches": [64, 128, 256], "reps": 2, "max_call_s": 0.5}
    return {
        "widths": args.widths,
        "batches": args.batches or [2**p for p in range(8, 17 if on_gpu else 14)],
        "reps": args.reps or (10 if on_gpu else 3),
        "max_call_s": args.max_call_s or (5.0 if on_gpu else 1.5),
    }


def measure_width(
    k: int, settings: dict[str, Any], device: torch.device, gen: torch.Generator
) -> list[dict[str, Any]]:
    """One row per batch B at width k, until one call takes longer than ``max_call_s``."""
    rows = []
    for B in settings["batches"]:
        try:
            fns = loss_step_functions(B, k, device, gen)
            # interleave the variants so that a change in machine load hits all alike
            times: dict[str, list[float]] = {name: [] for name in fns}
            for rep in range(settings["reps"]):
                for name, fn in fns.items():
                    times[name] += time_calls(fn, device, reps=1, warmup=int(rep == 0))
        except torch.OutOfMemoryError:
            print(f"  k={k} B={B}: out of memory, larger B skipped")
            break
        row = {"k": k, "B": B} | {f"{n}_s": float(np.median(t)) for n, t in times.items()}
        row["pairwise_over_minc"] = row["pairwise_s"] / row["minc_s"]
        row["spectral_over_minc"] = row["spectral_s"] / row["minc_s"]
        rows.append(row)
        print(
            f"  k={k:5d} B={B:6d}  "
            + "  ".join(f"{n} {row[n + '_s'] * 1e3:9.2f} ms" for n in LOSS_VARIANTS)
        )
        del fns
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if max(row[f"{n}_s"] for n in LOSS_VARIANTS) > settings["max_call_s"]:
            break  # the next B would take about twice as long: stop this width here
    return rows


def summarise_widths(rows: list[dict[str, Any]], widths: list[int]) -> list[dict[str, Any]]:
    """Per width: the log-log slope of each variant and the pairwise/MINC crossover."""
    summary = []
    for k in widths:
        r = [row for row in rows if row["k"] == k]
        bs = [row["B"] for row in r]
        summary.append(
            {"k": k}
            | {f"slope_{n}": loglog_slope(bs, [row[f"{n}_s"] for row in r]) for n in LOSS_VARIANTS}
            | {"crossover": crossover(bs, [row["pairwise_over_minc"] for row in r])}
        )
    return summary


def losses_tables(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> tuple[str, str]:
    """The markdown of the timings and of the slopes / crossover per width."""
    table = markdown_table(
        [
            "k",
            "B",
            "pairwise B x B (ms)",
            "spectral, k x k form (ms)",
            "MINC (ms)",
            "pairwise / MINC",
            "spectral k x k / MINC",
        ],
        [
            [r["k"], r["B"]]
            + [f"{r[n + '_s'] * 1e3:.2f}" for n in LOSS_VARIANTS]
            + [f"{r['pairwise_over_minc']:.2f}", f"{r['spectral_over_minc']:.2f}"]
            for r in rows
        ],
    )
    summary_table = markdown_table(
        [
            "k",
            "slope pairwise",
            "slope spectral k x k",
            "slope MINC",
            "MINC cheaper than pairwise from",
        ],
        [
            [s["k"]] + [f"{s['slope_' + n]:.2f}" for n in LOSS_VARIANTS] + [s["crossover"]]
            for s in summary
        ],
    )
    return table, summary_table


def losses_notes(settings: dict[str, Any], summary_table: str, on_gpu: bool) -> str:
    """The text under the table in docs/results.md."""
    notes = f"""
Median of {settings["reps"]} interleaved calls per cell, float32, forward + backward. "pairwise" is
the spectral estimator (Eq. 19) through the B x B similarity matrix
(`alpha_loss_batch(z1, z2, 2.0, estimator="pairwise")`, O(B^2 k)); "spectral, k x k form" is
`spectral_loss_batch`, the **same estimator** computed as `<z1^T z1, z2^T z2>` minus the diagonal
(O(B k^2), no B x B matrix); "MINC" is what a MINC step runs for its loss: `C_batch` of the target
features of both views (Eq. 15), the EMA into `Cbar`, and the symmetrised `minc_loss_batch`
(Eq. 20). Each width stops at the first B where one call took more than {settings["max_call_s"]} s.
Slopes are fitted over the three largest B of each width (asymptotically 2 for pairwise, 1 for the
k x k forms); the pairwise/MINC crossover of each width is in the last column below. On a CPU
the small-B timings are dominated by per-call overhead. The paper's O(B^2) cost argument holds
for the pairwise form only: the spectral loss itself can be evaluated through k x k statistics
too, so what MINC could gain over it is not cost but gradient variance (next section, whose
verdict is computed from its rows).

{summary_table}
"""
    if not on_gpu:
        notes += (
            "\nCPU run: rows where the three columns sit at the same floor of tens to hundreds "
            "of ms are per-call overhead and other processes sharing the two cores (load "
            "average above), not arithmetic; the large-B rows and the slopes carry the signal. "
            "B is capped so that the whole benchmark stays within ~2-3 minutes; "
            "the GPU command (B up to 65536) is `python -m scaled.tools.bench losses --device cuda "
            "--write-docs` (not run: no GPU was lent to this project's sessions).\n"
        )
    return notes


def run_losses(args: argparse.Namespace) -> dict[str, Any]:
    """The `losses` benchmark; returns its JSON payload."""
    device = pick_device(args.device)
    env = environment(device)
    on_gpu = device.type == "cuda"
    settings = losses_settings(args, on_gpu)
    gen = torch.Generator().manual_seed(args.seed)
    rows = [row for k in settings["widths"] for row in measure_width(k, settings, device, gen)]
    summary = summarise_widths(rows, settings["widths"])
    table, summary_table = losses_tables(rows, summary)
    print(table + "\n\n" + summary_table)
    payload = {
        "benchmark": "losses",
        "env": env,
        "command": args.command_line,
        "settings": settings,
    }
    payload |= {"rows": rows, "summary": summary}
    if args.plot or args.write_docs:
        payload["figure"] = plot_losses(rows, settings["widths"], args.output_dir, args.write_docs)
    write_json(args.output_dir, "losses", payload)
    if args.write_docs:
        publish("losses", payload, docs_section)
    return payload


def docs_section(root: Path) -> str:
    """docs/results.md's "Loss cost" section from docs/results/bench_losses.json."""
    record = stored_record(root, "losses")
    table, summary_table = losses_tables(record["rows"], record["summary"])
    notes = losses_notes(record["settings"], summary_table, ran_on_cuda(record))
    title = "Loss cost: pairwise spectral vs MINC"
    return docs_body(title, record["command"], record["env"], table, notes, record.get("figure"))


def plot_losses(rows: list[dict[str, Any]], widths: list[int], out_dir: Path, write_docs: bool):
    """Log-log plot of time against B, one colour per width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, k in enumerate(widths):
        r = [row for row in rows if row["k"] == k]
        bs = [row["B"] for row in r]
        color = f"C{i}"
        for n, style in zip(LOSS_VARIANTS, ("o-", "^:", "s--")):
            ax.loglog(bs, [row[f"{n}_s"] for row in r], style, color=color, label=f"{n} k={k}")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("seconds per loss fwd+bwd")
    ax.legend(fontsize=6, ncol=2)
    ax.set_title("pairwise B x B (solid), spectral k x k (dotted), MINC (dashed)")
    return save_figure(fig, out_dir, "losses", write_docs)
