"""Throughput, loss-cost and gradient-variance benchmarks: ``python -m scaled.tools.bench SUBCOMMAND``.

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

REPO_ROOT = Path(__file__).resolve().parents[3]
RESULTS_MD = REPO_ROOT / "docs" / "results.md"
SCALING_MD = REPO_ROOT / "docs" / "scaling.md"
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
    return "python -m scaled.tools.bench " + " ".join(sys.argv[1:])


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
                "\nCPU run: rows where the three columns sit at the same floor of tens to hundreds "
                "of ms are per-call overhead and other processes sharing the two cores (load "
                "average above), not arithmetic; the large-B rows and the slopes carry the signal. "
                "B is capped so that the whole benchmark stays within ~2-3 minutes; "
                "the GPU command (B up to 65536) is `python -m scaled.tools.bench losses --device cuda "
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

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # k x k tensors: more threads only add contention on a shared CPU
    try:
        return _run_variance(args, stochastic_block_model)
    finally:
        torch.set_num_threads(threads)


def _run_variance(args: argparse.Namespace, stochastic_block_model) -> dict[str, Any]:
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

Why the columns are close: the gradient of the unbiased pairwise estimator (Eq. 19) w.r.t. z1_b is
`-2/B z2_b + 2/B C_(-b) z1_b`, with `C_(-b)` the second moment of the other B - 1 rows of z2, i.e.
the non-contrastive gradient (Eq. 9) with a leave-one-out batch C. At a fixed phi the estimators
differ only in which C they use, and the noise of the attractive term `z2_b` (which pairs were
drawn) dominates all of them. An EMA or exact C removes the noise of C but not that term.

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
            word = (
                "lower error than spectral at every B"
                if lo > 1
                else (
                    "higher error than spectral at every B"
                    if hi < 1
                    else "lower at some B, higher at others"
                )
            )
            parts.append(f"{name}: {word} (spectral/MINC error ratio {lo:.2g} to {hi:.2g})")
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
# step: one SSL training step against a supervised step of the same backbone
# ----------------------------------------------------------------------------------------------


class _CachedTarget(torch.nn.Module):
    """Stand-in for the target network that returns precomputed features (to time the loss and
    its statistics without the target forward)."""

    def __init__(self, x1: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> None:
        super().__init__()
        self.x1, self.t1, self.t2 = x1, t1, t2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.t1 if x is self.x1 else self.t2


def step_functions(
    method: str, arch: str, B: int, size: int, device: torch.device, *, amp: bool, compile: bool
) -> dict[str, Callable[[], None]]:
    """Closures timing one synthetic-data step of `scaled.pretrain`'s pieces for `method`.

    step: the trainer's step body (two views through the online net, `ssl_loss` with the target
    forward and the statistics, backward, optimizer step, EMA of the target).
    loss: `ssl_loss` alone on fixed projector outputs, the target forward replaced by cached
    features (loss + statistics: C_batch, Cbar EMA, Eq. 15, 20). ema: `update_target` (Eq. 14).
    """
    from dataclasses import replace

    from scaled.config import PretrainConfig
    from scaled.model import SSLModel
    from scaled.optim import build_optimizer
    from scaled.pretrain import ssl_loss

    cfg = replace(PretrainConfig(), method=method, arch=arch, batch_size=B, online_probe=False)
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = SSLModel(cfg, 3, 0).to(device, memory_format=fmt)
    optimizer = build_optimizer(model.online, cfg)
    online = torch.compile(model.online) if compile else model.online
    gen = torch.Generator().manual_seed(0)
    x1, x2 = (
        torch.randn(B, 3, size, size, generator=gen).to(device, memory_format=fmt) for _ in range(2)
    )

    def autocast():
        if cuda and amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast(device.type, enabled=False)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            out = online(x1, x2)
            loss = ssl_loss(cfg, model, out, x1, x2, first_step=False, distributed=False)
        loss.backward()
        optimizer.step()
        model.update_target(0.996)

    k = cfg.proj_out
    feats = [torch.randn(B, k, generator=gen).to(device) for _ in range(4)]
    p1, p2 = (f.requires_grad_() for f in feats[:2])
    cached = _CachedTarget(x1, feats[2], feats[3])

    def loss_only() -> None:
        saved = model.target
        if saved is not None:  # the target forward is not part of the loss: use cached features
            model.target = cached
        p1.grad = p2.grad = None
        with autocast():
            out = {"z1": p1, "z2": p2, "p1": p1, "p2": p2}
            loss = ssl_loss(cfg, model, out, x1, x2, first_step=False, distributed=False)
        loss.backward()
        model.target = saved

    def ema() -> None:
        model.update_target(0.996)

    return {"step": step, "loss": loss_only, "ema": ema}


def supervised_step_function(
    arch: str, B: int, size: int, device: torch.device, *, amp: bool, compile: bool
) -> Callable[[], None]:
    """One supervised step of the same backbone: one view, linear classifier (1000 classes),
    cross entropy, SGD with momentum."""
    from dataclasses import replace

    from scaled.config import PretrainConfig
    from scaled.model import build_backbone

    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    backbone = build_backbone(replace(PretrainConfig(), arch=arch))
    net = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.num_features, 1000))
    net = net.to(device, memory_format=fmt)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    forward = torch.compile(net) if compile else net
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, 3, size, size, generator=gen).to(device, memory_format=fmt)
    y = torch.randint(0, 1000, (B,), generator=gen).to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and amp):
            loss = torch.nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()

    return step


def run_step(args: argparse.Namespace) -> dict[str, Any]:
    """The `step` benchmark; returns its JSON payload."""
    device = pick_device(args.device)
    env = environment(device)
    cuda = device.type == "cuda"
    if args.quick:
        archs, methods, B, size, reps = ["small_resnet"], ["minc"], 4, 32, 1
    else:
        archs = args.archs or (["resnet50", "resnet50x2"] if cuda else ["resnet18"])
        methods = args.methods
        B = args.batch_size or (256 if cuda else 32)
        size = args.image_size or (224 if cuda else 64)
        reps = args.reps or (10 if cuda else 3)
    amp = cuda and not args.no_amp
    rows: list[dict[str, Any]] = []
    for arch in archs:
        sup = supervised_step_function(arch, B, size, device, amp=amp, compile=args.compile)
        fns = {
            m: step_functions(m, arch, B, size, device, amp=amp, compile=args.compile)
            for m in methods
        }
        times: dict[str, list[float]] = {"supervised": []} | {m: [] for m in methods}
        for rep in range(reps):  # interleaved: machine-load changes hit every column alike
            times["supervised"] += time_calls(sup, device, reps=1, warmup=int(rep == 0))
            for m in methods:
                times[m] += time_calls(fns[m]["step"], device, reps=1, warmup=int(rep == 0))
        t_sup = float(np.median(times["supervised"]))
        for m in methods:
            t_step = float(np.median(times[m]))
            t_loss = float(np.median(time_calls(fns[m]["loss"], device, reps=max(reps, 5))))
            t_ema = float(np.median(time_calls(fns[m]["ema"], device, reps=max(reps, 5))))
            peak_gib = None
            if cuda:  # memory per GPU at this batch: one more step after resetting the peak
                torch.cuda.reset_peak_memory_stats(device)
                fns[m]["step"]()
                synchronize(device)
                peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
            rows.append(
                {
                    "arch": arch,
                    "method": m,
                    "B": B,
                    "image_size": size,
                    "supervised_s": t_sup,
                    "ssl_step_s": t_step,
                    "ratio": t_step / t_sup,
                    "loss_stats_s": t_loss,
                    "ema_s": t_ema,
                    "loss_stats_pct": 100 * t_loss / t_step,
                    "ema_pct": 100 * t_ema / t_step,
                    "img_per_s": B / t_step,
                    "peak_memory_gib": peak_gib,
                }
            )
            print(f"  {arch} {m}: step {t_step * 1e3:.1f} ms, supervised {t_sup * 1e3:.1f} ms")
        del sup, fns
    table = markdown_table(
        [
            "arch",
            "method",
            "B",
            "px",
            "SSL step (ms)",
            "supervised step (ms)",
            "SSL / supervised",
            "loss + statistics (% of step)",
            "target EMA (% of step)",
            "images/s",
            "peak GPU memory (GiB)",
        ],
        [
            [
                r["arch"],
                r["method"],
                r["B"],
                r["image_size"],
                f"{r['ssl_step_s'] * 1e3:.1f}",
                f"{r['supervised_s'] * 1e3:.1f}",
                f"{r['ratio']:.2f}",
                f"{r['loss_stats_pct']:.2f}",
                f"{r['ema_pct']:.2f}",
                f"{r['img_per_s']:.1f}",
                "—" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}",
            ]
            for r in rows
        ],
    )
    print(table)
    settings = {
        "archs": archs,
        "methods": methods,
        "batch_size": B,
        "image_size": size,
        "reps": reps,
        "bf16_autocast": amp,
        "channels_last": cuda,
        "compile": args.compile,
    }
    payload = {"benchmark": "step", "env": env, "command": command_line(), "settings": settings}
    payload["rows"] = rows
    path = write_json(args.out, "step", payload)
    print(f"wrote {path}")
    if args.write_docs:
        notes = f"""
Synthetic data (random tensors, no loader), median of {reps} interleaved steps after one warm-up.
"SSL step" is the body of the `scaled/pretrain.py` loop: both views through the online network,
`ssl_loss` (target forward of both views, `C_batch` and the `Cbar` EMA for MINC, the loss), the
backward, the optimizer step (LARS) and the target EMA (Eq. 14). "supervised" is one view through
the same backbone with a 1000-class linear head, cross entropy, SGD. By operation count an SSL
step with a target network (minc, byol) is about 2.7x a supervised one (two views forward +
backward, two target forwards: 8 vs 3 forward-equivalents); spectral and simclr have no target
network (6 vs 3: about 2x); byol adds an MLP predictor. "loss + statistics" is `ssl_loss` alone
on fixed projector outputs (target forward replaced by cached features), "target EMA" is
`update_target`, each timed on its own and given as a share of the step. Targets on a GPU at
B 256, k 256: loss + statistics < 3%, EMA < 2%.
"""
        if not cuda:
            notes += """
**CPU run**: a small backbone and batch so that it finishes fast (above); no bf16 or
channels_last. The GPU figures come from
`python -m scaled.tools.bench step --device cuda --write-docs` (ResNet-50 1x and 2x at 224 px, B 256,
bf16 autocast + channels_last; add `--compile`), not run: no GPU was lent to this project's
sessions.
"""
        replace_docs_section(
            "step", docs_body("Training step: SSL vs supervised", env, table, notes, None)
        )
    return payload


# ----------------------------------------------------------------------------------------------
# loader: decoded + augmented images per second of the default (torch) loader
# ----------------------------------------------------------------------------------------------


def write_jpeg_folder(root: Path, n_images: int, seed: int, size: tuple[int, int] = (500, 375)):
    """An ImageFolder of real JPEGs (ImageNet-like size and quality) under root/train/<class>/.

    Smooth random colour fields plus noise, saved at quality 90: about ImageNet's average size.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n_images):
        folder = root / "train" / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        low = rng.integers(0, 256, size=(h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.int16)
        pixels = np.clip(base + rng.integers(-20, 21, size=base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:04d}.jpg", quality=90)


def run_loader(args: argparse.Namespace) -> dict[str, Any]:
    """The `loader` benchmark; returns its JSON payload."""
    import tempfile
    from dataclasses import replace

    from torch.utils.data import DataLoader

    from scaled.config import PretrainConfig
    from scaled.data import GlobalBatchSampler, pretrain_dataset

    env = environment(torch.device("cpu"))
    n_images = 16 if args.quick else args.images
    batch = 8 if args.quick else 16
    workers = [1] if args.quick else args.workers
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp)
        if not args.data_dir:
            write_jpeg_folder(data_dir, n_images, args.seed)
        cfg = replace(PretrainConfig(), data_dir=str(data_dir), image_size=args.image_size)
        dataset, _, _ = pretrain_dataset(cfg)
        n = min(len(dataset), n_images)
        rows = []
        for w in workers:
            sampler = GlobalBatchSampler(n, batch, 0, 1, args.seed)
            loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=w)
            it = iter(loader)
            next(it)  # start-up of the workers and the first batch are not counted
            t0 = time.perf_counter()
            count = sum(x1.shape[0] for x1, *_ in it)
            elapsed = time.perf_counter() - t0
            rows.append(
                {
                    "workers": w,
                    "images": count,
                    "seconds": elapsed,
                    "img_per_s": count / elapsed,
                    "img_per_s_per_worker": count / elapsed / w,
                }
            )
            print(f"  {w} worker(s): {count / elapsed:.1f} images/s (two views each)")
            del it, loader
    table = markdown_table(
        ["workers", "images timed", "images/s (two views each)", "images/s per worker (core)"],
        [
            [r["workers"], r["images"], f"{r['img_per_s']:.1f}", f"{r['img_per_s_per_worker']:.1f}"]
            for r in rows
        ],
    )
    print(table)
    source = args.data_dir or f"{n_images} generated 500x375 JPEGs (quality 90)"
    payload = {"benchmark": "loader", "env": env, "command": command_line(), "rows": rows}
    payload["settings"] = {"data": source, "batch": batch, "image_size": args.image_size}
    path = write_json(args.out, "loader", payload)
    print(f"wrote {path}")
    if args.write_docs:
        notes = f"""
The default loader (`scaled.data.pretrain_dataset`: PIL decode + BYOL's two augmented views at
{args.image_size} px, torchvision transforms) in a `DataLoader` with 1 and 2 worker processes, on
{source}; the first batch (worker start-up) is not timed. Each image yields two views. A worker is
one process, so "per worker" is per CPU core when the cores are not shared; on this 2-core machine
the main process and other users share the cores, so the 2-worker row is a lower bound. Feeding
one GPU that runs ~1000-2500 images/s (ResNet-50 SSL, bf16) needs the cores that this rate
implies; `scaled/dali_loader.py` (`--loader dali`) moves decode and augmentation to the GPU.
"""
        replace_docs_section(
            "loader", docs_body("Input pipeline: images/s per core", env, table, notes, None)
        )
    return payload


# ----------------------------------------------------------------------------------------------
# profile: where the time of one SSL step goes
# ----------------------------------------------------------------------------------------------


def run_profile(args: argparse.Namespace) -> dict[str, Any]:
    """The `profile` benchmark: torch.profiler of one MINC step on CPU (and CUDA when present)."""
    from torch.profiler import ProfilerActivity, profile

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if args.device != "auto":
        devices = [pick_device(args.device)]
    payload: dict[str, Any] = {"benchmark": "profile", "command": command_line(), "runs": []}
    for device in devices:
        cuda = device.type == "cuda"
        arch = "small_resnet" if args.quick else ("resnet50" if cuda else "resnet18")
        B, size = (4, 32) if args.quick else ((256, 224) if cuda else (32, 64))
        fns = step_functions("minc", arch, B, size, device, amp=cuda, compile=False)
        for _ in range(2):  # warm-up (cudnn autotuning, allocator)
            fns["step"]()
        synchronize(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            fns["step"]()
            synchronize(device)
        sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
        averages = prof.key_averages()
        table = averages.table(sort_by=sort_by, row_limit=args.top)
        print(f"== {device} ({arch}, B {B}, {size} px), sorted by {sort_by}\n{table}")
        events = sorted(averages, key=lambda e: -getattr(e, sort_by))
        total = sum(getattr(e, sort_by) for e in averages)
        top = [
            {"op": e.key, "self_us": getattr(e, sort_by), "pct": 100 * getattr(e, sort_by) / total}
            for e in events[: args.top]
        ]
        payload["runs"].append(
            {"env": environment(device), "arch": arch, "B": B, "image_size": size, "top": top}
        )
    path = write_json(args.out, "profile", payload)
    print(f"wrote {path}")
    if args.write_docs:
        parts = []
        for run in payload["runs"]:
            env = run["env"]
            rows = [[r["op"], f"{r['self_us'] / 1e3:.1f}", f"{r['pct']:.1f}"] for r in run["top"]]
            parts += [
                f"One MINC step, {run['arch']}, B {run['B']}, {run['image_size']} px, "
                f"on {env_line(env)}:",
                "",
                markdown_table(["operator", "self time (ms)", "% of step"], rows),
                "",
            ]
        body = f"Command: `{command_line()}`\n\n" + "\n".join(parts)
        replace_docs_section("profile", body, SCALING_MD)
    return payload


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """losses, variance, step and loader with their defaults (each writes its own docs section)."""
    parser = build_parser()
    common = ["--out", str(args.out), "--device", args.device, "--seed", str(args.seed)]
    common += ["--threads", str(args.threads)] if args.threads else []
    common += ["--write-docs"] * args.write_docs + ["--quick"] * args.quick + ["--plot"] * args.plot
    results = {}
    for name in ("losses", "variance", "step", "loader"):
        t0 = time.perf_counter()
        print(f"== {name}")
        sub = parser.parse_args([name, *common])
        results[name] = COMMANDS[name](sub)
        print(f"== {name}: {time.perf_counter() - t0:.0f} s")
    return results


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `python -m scaled.tools.bench` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m scaled.tools.bench", description=__doc__.split("\n\n")[0]
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
    common.add_argument(
        "--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)"
    )
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

    p = sub.add_parser("loader", parents=[common], help="images/s per core of the torch loader")
    p.add_argument("--data-dir", default="", help="ImageFolder root with train/ (default: JPEGs)")
    p.add_argument("--images", type=_positive_int, default=96, help="images to time per setting")
    p.add_argument("--workers", type=_int_list, default=[1, 2], help="worker counts, e.g. 1,2")
    p.add_argument("--image-size", type=_positive_int, default=224, help="crop size")

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
    if args.threads:
        torch.set_num_threads(args.threads)
    COMMANDS[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
