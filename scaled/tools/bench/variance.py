"""``variance``: gradient variance of the minibatch estimators against the exact graph gradient
(Eq. 4, 9, 12) on a stochastic block model, as B grows, over several seeds."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scaled.tools.bench.common import (
    docs_body,
    markdown_table,
    publish,
    save_figure,
    stored_record,
    write_json,
)
from scaled.tools.provenance import environment

VARIANCE_ESTIMATORS = (
    "spectral",  # Eq. 19, pairwise; target: Eq. 4
    "nc, batch C",  # Eq. 20 with gha=False, Cbar = C_batch of this batch; target: Eq. 9
    "nc, exact C",  # Eq. 20 with gha=False, Cbar = exact C (Eq. 8); target: Eq. 9
    "minc, batch C",  # Eq. 20 with GHA, Cbar = C_batch; target: Eq. 12 at the exact C
    "minc, EMA C",  # Eq. 20 with GHA, Cbar = EMA (Eq. 15, beta 0.8) over the previous batches
    "minc, exact C",  # Eq. 20 with GHA, Cbar = exact C; target: Eq. 12
)


def sample_pairs(W: np.ndarray, B: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """B positive pairs (i_b, j_b) drawn independently from the joint W (Eq. 2)."""
    flat = rng.choice(W.size, size=B, p=W.ravel())
    return np.divmod(flat, W.shape[1])


def estimator_gradients(
    phi: np.ndarray, W: np.ndarray, B: int, draws: int, rng: np.random.Generator, beta: float = 0.8
) -> dict[str, np.ndarray]:
    """`draws` minibatch gradients of each estimator w.r.t. the embedding table `phi` (N x k).

    The MINC / non-contrastive losses are symmetrised (each view once as the online side, the other
    as the stop-gradient target), as in a training step; with the target network equal to the
    online one (phibar = phi). The EMA of C runs over the sequence of draws, after 20 warm-up
    batches, as `Cbar` does during training at a fixed phi.
    """
    from scaled.losses import minc_loss_batch, second_moment_batch, spectral_loss_batch

    N, k = phi.shape
    w = W.sum(axis=1)
    C_exact = torch.from_numpy(phi.T @ (w[:, None] * phi))
    table = torch.from_numpy(phi).requires_grad_()
    out = {name: np.empty((draws, N, k)) for name in VARIANCE_ESTIMATORS}
    C_ema = None
    for d in range(-20, draws):
        i, j = sample_pairs(W, B, rng)
        z1, z2 = table[torch.from_numpy(i)], table[torch.from_numpy(j)]
        t1, t2 = z1.detach(), z2.detach()
        C_batch = 0.5 * (second_moment_batch(t1) + second_moment_batch(t2))
        C_ema = C_batch if C_ema is None else beta * C_ema + (1 - beta) * C_batch
        if d < 0:
            continue
        cbar = {"batch": C_batch, "EMA": C_ema, "exact": C_exact}
        for name in VARIANCE_ESTIMATORS:
            if name == "spectral":
                loss = spectral_loss_batch(z1, z2)
            else:
                Cbar, gha = cbar[name.split(", ")[1].removesuffix(" C")], name.startswith("minc")
                loss = 0.5 * (
                    minc_loss_batch(z1, t2, Cbar, gha=gha) + minc_loss_batch(z2, t1, Cbar, gha=gha)
                )
            (grad,) = torch.autograd.grad(loss, table, retain_graph=True)
            out[name][d] = grad.numpy()
    return out


def exact_gradients(phi: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """The population gradient each estimator targets, from the exact reference (Eq. 4, 9, 12)."""
    from reference.losses import minc_loss_grad, spectral_loss_grad

    C = phi.T @ (W.sum(axis=1)[:, None] * phi)  # Eq. 8
    nc = minc_loss_grad(phi, W, phibar=phi, Cbar=C, gha=False)
    minc = minc_loss_grad(phi, W, phibar=phi, Cbar=C, gha=True)
    return {
        "spectral": spectral_loss_grad(phi, W),
        "nc, batch C": nc,
        "nc, exact C": nc,
        "minc, batch C": minc,
        "minc, EMA C": minc,
        "minc, exact C": minc,
    }


def variance_points(W: np.ndarray, k: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Two embedding tables at which to measure: a random initialisation, and halfway between it
    and the MINC fixed point (Eq. 13, columns of D^-1/2 V_k diag(lambda)^1/2)."""
    from reference.graphs import spectral_embedding

    w = W.sum(axis=1)
    vals, vecs = spectral_embedding(W, k)
    phi_star = vecs * np.sqrt(vals)[None, :] / np.sqrt(w)[:, None]
    phi_init = rng.normal(size=phi_star.shape) / math.sqrt(k)
    return {"random init": phi_init, "halfway to the optimum": 0.5 * (phi_init + phi_star)}


def variance_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Batches, draws per seed, seeds and the block sizes of the graph of this run."""
    if args.quick:
        return {"batches": [16, 64], "draws": 20, "seeds": [0, 1], "sizes": (12, 9, 6)}
    return {
        "batches": args.batches or [8, 32, 128, 512],
        "draws": args.draws,
        "seeds": args.seeds,
        "sizes": (40, 30, 20, 10),
    }


def relative_errors(
    phi: np.ndarray, W: np.ndarray, exact: dict[str, np.ndarray], B: int, s: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per estimator at batch B: relative MSE (mean and std over seeds) and variance."""
    per_seed: dict[str, list[tuple[float, float]]] = {n: [] for n in VARIANCE_ESTIMATORS}
    for seed in s["seeds"]:
        grads = estimator_gradients(phi, W, B, s["draws"], np.random.default_rng([seed, B]))
        for name in VARIANCE_ESTIMATORS:
            g, g_star = grads[name], exact[name]
            norm2 = float(np.sum(g_star**2))
            mse = float(np.mean(np.sum((g - g_star) ** 2, axis=(1, 2)))) / norm2
            var = float(np.mean(np.sum((g - g.mean(0)) ** 2, axis=(1, 2)))) / norm2
            per_seed[name].append((mse, var))
    rows = []
    for name in VARIANCE_ESTIMATORS:
        mse, var = np.asarray(per_seed[name]).T
        rows.append(
            {
                "B": B,
                "estimator": name,
                "rel_mse_mean": float(mse.mean()),
                "rel_mse_std": float(mse.std(ddof=1)) if len(s["seeds"]) > 1 else 0.0,
                "rel_mse_seeds": [float(x) for x in mse],  # paired: same batches per seed
                "rel_var_mean": float(var.mean()),
            }
        )
    return rows


def variance_table(rows: list[dict[str, Any]], points, batches: list[int]) -> str:
    """Relative MSE ± std of each estimator (columns) per point and B (rows)."""
    table_rows = []
    for point_name in points:
        for B in batches:
            cells = []
            for name in VARIANCE_ESTIMATORS:
                r = next(
                    x
                    for x in rows
                    if x["point"] == point_name and x["B"] == B and x["estimator"] == name
                )
                cells.append(f"{r['rel_mse_mean']:.3g} ± {r['rel_mse_std']:.2g}")
            table_rows.append([point_name, B, *cells])
    return markdown_table(["point", "B", *VARIANCE_ESTIMATORS], table_rows)


def variance_notes(s: dict[str, Any], verdict: str) -> str:
    """The text under the table in docs/results.md."""
    sizes, k = s["sizes"], len(s["sizes"])
    return f"""
Each cell: E||g_hat - g||^2 / ||g||^2, the mean squared error of a minibatch gradient `g_hat`
(w.r.t. the whole embedding table) around the exact population gradient `g` it estimates, relative
to ||g||^2 (so that the spectral gradient, twice the non-contrastive one, is comparable); mean ±
std over {len(s["seeds"])} seeds of {s["draws"]} batches each. Graph: stochastic block model with
blocks {sizes} (N = {sum(sizes)}), k = {k}; pairs drawn from W. Targets: Eq. 4 for "spectral"
(Eq. 19), Eq. 9 for "nc" (Eq. 20 without GHA), Eq. 12 at the exact C for "minc" (Eq. 20 with GHA).
"batch C": `Cbar` is C_batch of the same batch (the error then includes a bias); "EMA C": Eq. 15
with beta = 0.8 over the preceding batches at the same phi; "exact C": the population C. MINC/nc
are symmetrised as in training and use phibar = phi.

Why the columns are close: the gradient of the unbiased pairwise estimator (Eq. 19) w.r.t. z1_b is
`-2/B z2_b + 2/B C_(-b) z1_b`, with `C_(-b)` the second moment of the other B - 1 rows of z2, i.e.
the non-contrastive gradient (Eq. 9) with a leave-one-out batch C. At a fixed phi the estimators
differ only in which C they use, and the noise of the attractive term `z2_b` (which pairs were
drawn) dominates all of them. An EMA or exact C removes the noise of C but not that term.

{verdict}
"""


def run_variance(args: argparse.Namespace) -> dict[str, Any]:
    """The `variance` benchmark (one torch thread: k x k tensors); returns its JSON payload."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # k x k tensors: more threads only add contention on a shared CPU
    try:
        return _run_variance(args)
    finally:
        torch.set_num_threads(threads)


def _run_variance(args: argparse.Namespace) -> dict[str, Any]:
    from reference.graphs import stochastic_block_model

    env = environment("cpu")
    s = variance_settings(args)
    batches, k = s["batches"], len(s["sizes"])
    graph_rng = np.random.default_rng(args.seed)
    W = stochastic_block_model(s["sizes"], 0.4, 0.03, graph_rng)
    points = variance_points(W, k, graph_rng)
    rows: list[dict[str, Any]] = []
    for point_name, phi in points.items():
        exact = exact_gradients(phi, W)
        for B in batches:
            rows += [{"point": point_name} | r for r in relative_errors(phi, W, exact, B, s)]
            print(f"  {point_name}, B={B}: done")
    table = variance_table(rows, points, batches)
    verdict = variance_verdict(rows, points, batches)
    print(table + "\n\n" + verdict)
    settings = {
        "graph": f"stochastic_block_model({s['sizes']}, 0.4, 0.03), seed {args.seed}",
        "k": k,
        "batches": batches,
        "draws_per_seed": s["draws"],
        "seeds": s["seeds"],
        "sizes": list(s["sizes"]),
    }
    payload = {
        "benchmark": "variance",
        "env": env,
        "command": args.command_line,
        "settings": settings,
    }
    payload |= {"rows": rows, "verdict": verdict}
    if args.plot or args.write_docs:
        payload["figure"] = plot_variance(rows, points, batches, args.output_dir, args.write_docs)
    write_json(args.output_dir, "variance", payload)
    if args.write_docs:
        publish("variance", payload, docs_section)
    return payload


def docs_section(root: Path) -> str:
    """docs/results.md's "Gradient variance" section from docs/results/bench_variance.json:
    the table and the verdict recomputed from the stored rows."""
    record = stored_record(root, "variance")
    rows, s = record["rows"], record["settings"]
    points = list(dict.fromkeys(r["point"] for r in rows))
    table = variance_table(rows, points, s["batches"])
    verdict = variance_verdict(rows, dict.fromkeys(points), s["batches"])
    notes = variance_notes({**s, "draws": s["draws_per_seed"]}, verdict)
    title = "Gradient variance of the minibatch estimators"
    return docs_body(title, record["command"], record["env"], table, notes, record.get("figure"))


def paired_ratio_interval(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """Geometric mean of ``num_s / den_s`` over seeds and its 95% t interval (lo, hi).

    The estimators of one seed share their batches (`estimator_gradients`), so the seeds give
    paired log-ratios; the interval is mean +- t_{0.975, n-1} sd / sqrt(n) of those, mapped
    back by exp. One seed: no interval (nan, nan).
    """
    from scipy.stats import t

    d = np.log(np.asarray(num, dtype=float)) - np.log(np.asarray(den, dtype=float))
    centre = float(d.mean())
    if len(d) < 2:
        return math.exp(centre), math.nan, math.nan
    half = float(t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return math.exp(centre), math.exp(centre - half), math.exp(centre + half)


def ratio_word(lo: float, hi: float) -> str:
    """The word for MINC against spectral from the interval (lo, hi) of spectral / MINC: lower
    (MINC's error below spectral's, lo > 1), higher (hi < 1), or not resolved (it holds 1, or
    there is no interval)."""
    if lo > 1:
        return "lower"
    if hi < 1:
        return "higher"
    return "not resolved"


def variance_verdict(
    rows: list[dict[str, Any]], points: dict[str, np.ndarray], batches: list[int]
) -> str:
    """A sentence per point comparing spectral with MINC (EMA C and batch C), computed from rows.

    "lower" / "higher" only where the 95% paired t interval over seeds of the spectral / MINC
    error ratio excludes 1 (`paired_ratio_interval`); otherwise "not resolved". Rows without
    per-seed values (`rel_mse_seeds`, older records) are not resolved.
    """

    def row(point: str, B: int, name: str) -> dict[str, Any]:
        return next(
            r for r in rows if r["point"] == point and r["B"] == B and r["estimator"] == name
        )

    lines = []
    for point in points:
        parts = []
        for name in ("minc, batch C", "minc, EMA C", "minc, exact C"):
            words, ratios = {}, []
            for B in batches:
                spec, minc = row(point, B, "spectral"), row(point, B, name)
                if "rel_mse_seeds" in spec and "rel_mse_seeds" in minc:
                    ratio, lo, hi = paired_ratio_interval(
                        spec["rel_mse_seeds"], minc["rel_mse_seeds"]
                    )
                else:  # an older record: the ratio of the means, without an interval
                    ratio, lo, hi = spec["rel_mse_mean"] / minc["rel_mse_mean"], math.nan, math.nan
                ratios.append(ratio)
                words[B] = ratio_word(lo, hi)
            distinct = sorted(set(words.values()))
            if len(distinct) == 1:
                word = {
                    "lower": "lower error than spectral at every B",
                    "higher": "higher error than spectral at every B",
                    "not resolved": "not resolved at any B",
                }[distinct[0]]
            else:
                word = " and ".join(
                    f"{w} at B = {', '.join(str(B) for B in batches if words[B] == w)}"
                    for w in ("lower", "higher", "not resolved")
                    if w in distinct
                )
            shown = f"spectral/MINC error ratio {min(ratios):.2g} to {max(ratios):.2g}"
            parts.append(f"{name}: {word} ({shown})")
        lines.append(f"- {point}: " + "; ".join(parts) + ".")
    n = max(len(r.get("rel_mse_seeds", ())) for r in rows)
    return (
        "Measured verdict (relative MSE ratio over the B above; lower / higher only where the "
        f"95% paired t interval over the {n} seeds excludes 1, else not resolved):\n"
        + "\n".join(lines)
    )


def plot_variance(rows, points, batches, out_dir: Path, write_docs: bool):
    """Relative MSE against B, one panel per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(points), figsize=(5 * len(points), 3.8), squeeze=False)
    for ax, point in zip(axes[0], points):
        for i, name in enumerate(VARIANCE_ESTIMATORS):
            r = [x for x in rows if x["point"] == point and x["estimator"] == name]
            ax.errorbar(
                [x["B"] for x in r],
                [x["rel_mse_mean"] for x in r],
                yerr=[x["rel_mse_std"] for x in r],
                marker="o",
                color=f"C{i}",
                label=name,
                capsize=2,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
        ax.set_ylabel("relative gradient MSE")
        ax.set_title(point)
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, out_dir, "variance", write_docs)
