"""Throughput, loss-cost and gradient-variance benchmarks: ``python -m scaled.bench SUBCOMMAND``.

Subcommands (each measures everything it compares side by side in one run, prints a table, writes
``OUT/<name>.json`` with the device, versions and threads, and with ``--write-docs`` replaces its
own marked section of docs/results.md with the table and the exact command that made it):

- ``losses``   forward+backward time of the pairwise spectral loss (Eq. 19, B x B) against MINC
               (Eq. 15 + 20, k x k) as the batch B grows, at several widths k: ratio, log-log
               slopes and the crossover batch.
- ``variance`` gradient variance of the minibatch estimators against the exact graph gradient
               (Eq. 4, 9, 12) on a stochastic block model, as B grows, over several seeds.
- ``step``     one synthetic-data SSL step (two views, target forward, loss, LARS, EMA updates)
               against a supervised step of the same backbone, with the time of the loss and
               statistics and of the EMA updates as a share of the step.
- ``loader``   decoded + augmented images per second per CPU core of the default loader.
- ``profile``  torch.profiler of one SSL step: the top operators ("where the time goes").
- ``all``      losses, variance, step and loader (CPU: about 5-8 minutes on 2 cores).

Timings on a shared machine are noisy: every ratio here is taken from measurements made in the
same process, interleaved, so that a slow-down of the machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_MD = REPO_ROOT / "docs" / "results.md"
FIGURES_DIR = REPO_ROOT / "docs" / "bench"


# ----------------------------------------------------------------------------------------------
# Environment, output, docs
# ----------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """Device name, versions, threads and git SHA: recorded with every benchmark result."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = "unknown"
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_sha": sha,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def env_line(env: dict[str, Any]) -> str:
    """One line describing where a table was measured."""
    load = env.get("load_average_1min")
    load_txt = f", 1-min load average at start {load:.1f}" if load is not None else ""
    return (
        f"{env['device_name']} ({env['device']}), torch {env['torch']}, "
        f"{env['torch_threads']} threads, {env['cpu_count']} CPU cores{load_txt}, "
        f"git {env['git_sha']}, {env['time_utc']} UTC"
    )


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(out_dir: Path, name: str, payload: dict[str, Any]) -> Path:
    """Write ``out_dir/name.json`` and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def replace_docs_section(name: str, body: str, path: Path = RESULTS_MD) -> None:
    """Replace the text between ``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->`` in
    `path` with `body` (appending the marked section when it is not there yet)."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = path.read_text() if path.exists() else ""
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def command_line() -> str:
    """The command that is running, as a user would type it."""
    return "python -m scaled.bench " + " ".join(sys.argv[1:])


def docs_body(title: str, env: dict[str, Any], table: str, notes: str, figure: str | None) -> str:
    """The markdown of one benchmark section of docs/results.md."""
    parts = [
        f"### {title}",
        "",
        f"Command: `{command_line()}`  ",
        f"Measured on: {env_line(env)}.",
        "",
        table,
        "",
        notes.strip(),
    ]
    if figure:
        parts += ["", f"![{title}]({figure})"]
    return "\n".join(parts) + "\n"


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU) so that wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 1
) -> list[float]:
    """Wall-clock seconds of `reps` calls of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; a CUDA request without CUDA exits cleanly."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"error: --device {name} but CUDA is not available; use --device cpu")
    return torch.device(name)


def save_figure(fig, out_dir: Path, name: str, write_docs: bool) -> str | None:
    """Save a matplotlib figure to OUT (and docs/bench/ with --write-docs); the docs-relative
    path when it went to docs/, else None."""
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / f"{name}.png", dpi=110, bbox_inches="tight")
    rel = None
    if write_docs:
        FIGURES_DIR.mkdir(parents=True, exist_ok=True)
        fig.savefig(FIGURES_DIR / f"{name}.png", dpi=110, bbox_inches="tight")
        rel = f"bench/{name}.png"
    plt.close(fig)
    return rel


# ----------------------------------------------------------------------------------------------
# losses: pairwise spectral (B x B) against MINC (k x k)
# ----------------------------------------------------------------------------------------------


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


def run_losses(args: argparse.Namespace) -> dict[str, Any]:
    """The `losses` benchmark; returns its JSON payload."""
    device = pick_device(args.device)
    env = environment(device)
    on_gpu = device.type == "cuda"
    if args.quick:
        widths, batches, reps, max_call_s = [16, 32], [64, 128, 256], 2, 0.5
    else:
        widths = args.widths
        batches = args.batches or [2**p for p in range(8, 17 if on_gpu else 14)]
        reps = args.reps or (10 if on_gpu else 3)
        max_call_s = args.max_call_s or (5.0 if on_gpu else 1.5)
    gen = torch.Generator().manual_seed(args.seed)
    rows: list[dict[str, Any]] = []
    for k in widths:
        for B in batches:
            try:
                fns = loss_step_functions(B, k, device, gen)
                # interleave the variants so that a change in machine load hits all alike
                times: dict[str, list[float]] = {name: [] for name in fns}
                for rep in range(reps):
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
            if on_gpu:
                torch.cuda.empty_cache()
            if max(row[f"{n}_s"] for n in LOSS_VARIANTS) > max_call_s:
                break  # the next B would take about twice as long: stop this width here
    summary = []
    for k in widths:
        r = [row for row in rows if row["k"] == k]
        bs = [row["B"] for row in r]
        summary.append(
            {"k": k}
            | {f"slope_{n}": loglog_slope(bs, [row[f"{n}_s"] for row in r]) for n in LOSS_VARIANTS}
            | {"crossover": crossover(bs, [row["pairwise_over_minc"] for row in r])}
        )
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
    print(table + "\n\n" + summary_table)
    payload = {
        "benchmark": "losses",
        "env": env,
        "command": command_line(),
        "settings": {"widths": widths, "batches": batches, "reps": reps, "max_call_s": max_call_s},
        "rows": rows,
        "summary": summary,
    }
    path = write_json(args.out, "losses", payload)
    print(f"wrote {path}")
    figure = None
    if args.plot or args.write_docs:
        figure = plot_losses(rows, widths, args.out, args.write_docs)
    if args.write_docs:
        notes = f"""
Median of {reps} interleaved calls per cell, float32, forward + backward. "pairwise" is the
spectral estimator (Eq. 19) through the B x B similarity matrix
(`alpha_loss_batch(z1, z2, 2.0, estimator="pairwise")`, O(B^2 k)); "spectral, k x k form" is
`spectral_loss_batch`, the **same estimator** computed as `<z1^T z1, z2^T z2>` minus the diagonal
(O(B k^2), no B x B matrix); "MINC" is what a MINC step runs for its loss: `C_batch` of the target
features of both views (Eq. 15), the EMA into `Cbar`, and the symmetrised `minc_loss_batch`
(Eq. 20). Each width stops at the first B where one call took more than {max_call_s} s. Slopes are
fitted over the three largest B of each width (asymptotically 2 for pairwise, 1 for the k x k
forms); the pairwise/MINC crossover sits near B ~ k. On a CPU the small-B timings are dominated by
per-call overhead. The paper's O(B^2) cost argument holds for the pairwise form only: the spectral
loss itself can be evaluated through k x k statistics too; MINC's advantage over it is then in
gradient variance (next section), not in cost.

{summary_table}
"""
        if not on_gpu:
            notes += (
                "\nCPU run: B is capped so that the whole benchmark stays within ~2-3 minutes; "
                "the GPU command (B up to 65536) is `python -m scaled.bench losses --device cuda "
                "--write-docs` (not run: no GPU was lent to this project's sessions).\n"
            )
        replace_docs_section(
            "losses",
            docs_body("Loss cost: pairwise spectral vs MINC", env, table, notes, figure),
        )
    return payload


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


# ----------------------------------------------------------------------------------------------
# variance: minibatch gradient against the exact graph gradient
# ----------------------------------------------------------------------------------------------

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


def run_variance(args: argparse.Namespace) -> dict[str, Any]:
    """The `variance` benchmark; returns its JSON payload."""
    from reference.graphs import stochastic_block_model

    env = environment(torch.device("cpu"))
    if args.quick:
        batches, draws, seeds, sizes = [16, 64], 20, [0, 1], (12, 9, 6)
    else:
        batches, draws, seeds, sizes = (
            args.batches or [8, 32, 128, 512],
            args.draws,
            args.seeds,
            (
                40,
                30,
                20,
                10,
            ),
        )
    k = len(sizes)
    graph_rng = np.random.default_rng(args.seed)
    W = stochastic_block_model(sizes, 0.4, 0.03, graph_rng)
    points = variance_points(W, k, graph_rng)
    rows: list[dict[str, Any]] = []
    for point_name, phi in points.items():
        exact = exact_gradients(phi, W)
        for B in batches:
            per_seed: dict[str, list[tuple[float, float]]] = {n: [] for n in VARIANCE_ESTIMATORS}
            for seed in seeds:
                grads = estimator_gradients(phi, W, B, draws, np.random.default_rng([seed, B]))
                for name in VARIANCE_ESTIMATORS:
                    g, g_star = grads[name], exact[name]
                    norm2 = float(np.sum(g_star**2))
                    mse = float(np.mean(np.sum((g - g_star) ** 2, axis=(1, 2)))) / norm2
                    var = float(np.mean(np.sum((g - g.mean(0)) ** 2, axis=(1, 2)))) / norm2
                    per_seed[name].append((mse, var))
            for name in VARIANCE_ESTIMATORS:
                mse, var = np.asarray(per_seed[name]).T
                rows.append(
                    {
                        "point": point_name,
                        "B": B,
                        "estimator": name,
                        "rel_mse_mean": float(mse.mean()),
                        "rel_mse_std": float(mse.std(ddof=1)) if len(seeds) > 1 else 0.0,
                        "rel_var_mean": float(var.mean()),
                    }
                )
            print(f"  {point_name}, B={B}: done")
    headers = ["point", "B"] + [f"{n}" for n in VARIANCE_ESTIMATORS]
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
    table = markdown_table(headers, table_rows)
    verdict = variance_verdict(rows, points, batches)
    print(table + "\n\n" + verdict)
    payload = {
        "benchmark": "variance",
        "env": env,
        "command": command_line(),
        "settings": {
            "graph": f"stochastic_block_model({sizes}, 0.4, 0.03), seed {args.seed}",
            "k": k,
            "batches": batches,
            "draws_per_seed": draws,
            "seeds": seeds,
        },
        "rows": rows,
        "verdict": verdict,
    }
    path = write_json(args.out, "variance", payload)
    print(f"wrote {path}")
    figure = None
    if args.plot or args.write_docs:
        figure = plot_variance(rows, points, batches, args.out, args.write_docs)
    if args.write_docs:
        notes = f"""
Each cell: E||g_hat - g||^2 / ||g||^2, the mean squared error of a minibatch gradient `g_hat`
(w.r.t. the whole embedding table) around the exact population gradient `g` it estimates, relative
to ||g||^2 (so that the spectral gradient, twice the non-contrastive one, is comparable); mean ±
std over {len(seeds)} seeds of {draws} batches each. Graph: stochastic block model with blocks
{sizes} (N = {sum(sizes)}), k = {k}; pairs drawn from W. Targets: Eq. 4 for "spectral" (Eq. 19),
Eq. 9 for "nc" (Eq. 20 without GHA), Eq. 12 at the exact C for "minc" (Eq. 20 with GHA). "batch C":
`Cbar` is C_batch of the same batch (the error then includes a bias); "EMA C": Eq. 15 with
beta = 0.8 over the preceding batches at the same phi; "exact C": the population C. MINC/nc are
symmetrised as in training and use phibar = phi.

{verdict}
"""
        replace_docs_section(
            "variance",
            docs_body("Gradient variance of the minibatch estimators", env, table, notes, figure),
        )
    return payload


def variance_verdict(
    rows: list[dict[str, Any]], points: dict[str, np.ndarray], batches: list[int]
) -> str:
    """A sentence per point comparing spectral with MINC (EMA C and batch C), computed from rows."""

    def get(point: str, B: int, name: str) -> float:
        return next(
            r["rel_mse_mean"]
            for r in rows
            if r["point"] == point and r["B"] == B and r["estimator"] == name
        )

    lines = []
    for point in points:
        parts = []
        for name in ("minc, batch C", "minc, EMA C", "minc, exact C"):
            ratios = [get(point, B, "spectral") / get(point, B, name) for B in batches]
            lo, hi = min(ratios), max(ratios)
            word = "lower" if lo > 1 else ("higher" if hi < 1 else "mixed")
            parts.append(f"{name}: {word} error than spectral (spectral/MINC {lo:.2g}-{hi:.2g})")
        lines.append(f"- {point}: " + "; ".join(parts) + ".")
    return "Measured verdict (relative MSE ratio over the B above):\n" + "\n".join(lines)


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


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `python -m scaled.bench` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m scaled.bench", description=__doc__.split("\n\n")[0]
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, default=Path("runs/bench"), help="JSON/PNG folder")
    common.add_argument(
        "--write-docs",
        action="store_true",
        help="replace this benchmark's section of docs/results.md",
    )
    common.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, no timing")
    common.add_argument("--plot", action="store_true", help="also write a PNG into --out")
    common.add_argument(
        "--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N"
    )
    common.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--draws", type=_positive_int, default=200, help="batches per seed and B")
    p.add_argument("--seeds", type=_int_list, default=[0, 1, 2], help="seeds, e.g. 0,1,2")
    return parser


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
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m scaled.bench`."""
    args = build_parser().parse_args(argv)
    COMMANDS[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
