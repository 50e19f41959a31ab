# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 8. From reference to scale
#
# The project has two implementations of the same math: `reference/` (NumPy, exact, hand-written
# gradients) and `scaled/` (PyTorch, batched, autograd with `.detach()` as the stop-gradient,
# multi-GPU). This notebook compares twins of the same name live, runs one step of the trainer on a
# tiny batch, shows how the global-batch `C` is computed across processes (Eq. 22), and prints the
# ImageNet command.

# %%
# Run from the repository root, also when Jupyter was started inside notebooks/.
import os
from pathlib import Path

if Path.cwd().name == "notebooks":
    os.chdir(Path.cwd().parent)

# %%
import json
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import torch

import reference.losses as rl
import scaled.losses as sl
from reference.graphs import augmentation_graph
from reference.tolerances import tol
from scaled.checkpoint import checkpoint_cbar, load_model
from scaled.distributed import global_second_moment
from scaled.options import parse_config
from scaled.presets import PRESETS
from scaled.pretrain import train

REPO = Path.cwd()
rng = np.random.default_rng(0)
torch.manual_seed(0)

# %% [markdown]
# ## The same function on both sides
#
# `minc_loss_batch` (Eq. 20): the reference returns a float and `minc_loss_batch_grad` returns the
# gradient with the stop-gradient of Eq. 20 written out by hand; the torch twin returns a tensor
# whose autograd gradient is the same, because `sg(z2bar - LT(Cbar) z1)` is a `.detach()`.
# In float64 they agree to the tolerance table of `reference/tolerances.py`.

# %%
B, k = 64, 8
z1, z2 = rng.standard_normal((B, k)), rng.standard_normal((B, k))
A = rng.standard_normal((k, k))
Cbar = A @ A.T / k

t1 = torch.tensor(z1, requires_grad=True)
loss_t = sl.minc_loss_batch(t1, torch.tensor(z2), torch.tensor(Cbar))
loss_t.backward()
np.testing.assert_allclose(loss_t.item(), rl.minc_loss_batch(z1, z2, Cbar), **tol("float64"))
np.testing.assert_allclose(t1.grad.numpy(), rl.minc_loss_batch_grad(z1, z2, Cbar), **tol("float64"))
print(
    f"minc_loss_batch: reference {rl.minc_loss_batch(z1, z2, Cbar):+.12f}, torch {loss_t.item():+.12f}"
)

# pairwise spectral loss (Eq. 19): gradients w.r.t. both views
t1, t2 = torch.tensor(z1, requires_grad=True), torch.tensor(z2, requires_grad=True)
sl.spectral_loss_batch(t1, t2).backward()
g1, g2 = rl.spectral_loss_batch_grad(z1, z2)
np.testing.assert_allclose(t1.grad.numpy(), g1, **tol("float64"))
np.testing.assert_allclose(t2.grad.numpy(), g2, **tol("float64"))

# alpha = 1.5 (m = 3) through the third-moment tensor (Eq. 21), on both sides
for estimator in ("pairwise", "moment"):
    value_t = sl.alpha_loss_batch(torch.tensor(z1), torch.tensor(z2), 1.5, estimator=estimator)
    np.testing.assert_allclose(
        value_t.item(), rl.alpha_loss_batch(z1, z2, 1.5, estimator=estimator), **tol("float64")
    )
print("spectral_loss_batch gradients and alpha_loss_batch (pairwise, moment): equal")

# %% [markdown]
# The graph form too: the torch `minc_loss` puts `.detach()` around the whole product
# `phi LT(Cbar)^T` (notebook 5 showed what happens otherwise), so autograd gives the reference
# `minc_loss_grad`.

# %%
W, _ = augmentation_graph(np.random.default_rng(0))
phi = rng.standard_normal((W.shape[0], 3))
phi_t = torch.tensor(phi, requires_grad=True)
sl.minc_loss(phi_t, torch.tensor(W)).backward()
np.testing.assert_allclose(phi_t.grad.numpy(), rl.minc_loss_grad(phi, W), **tol("float64"))
phi_t = torch.tensor(phi, requires_grad=True)
sl.noncontrastive_loss(phi_t, torch.tensor(W)).backward()
np.testing.assert_allclose(
    phi_t.grad.numpy(), 0.5 * rl.spectral_loss_grad(phi, W), **tol("float64")
)
print("graph form: autograd of the torch twins = the reference's hand-written gradients")

# %% [markdown]
# ## The global-batch `C` across processes (Eq. 22)
#
# With `R` processes each holding `B/R` rows, MINC needs `C_batch` of the **global** batch, so
# that `Cbar` is identical on every rank and equal to the one-process value.
# `scaled.distributed.global_second_moment` packs the per-rank sum `z^T z` and the row count into
# one buffer, all-reduces it (sum), and divides. The per-rank estimate (`local=True`) is a
# different, noisier estimator and is never the default.
#
# Below, two real gloo processes (started with `torchrun`) each take half of one global batch.
# The pairwise spectral loss needs the other ranks' rows: `spectral_loss_batch(...,
# distributed=True)` all-gathers `z2`; the mean of the per-rank losses is the global-batch loss.

# %%
script = textwrap.dedent(
    """
    import json, sys
    import torch
    from scaled.distributed import cleanup, global_second_moment, init_distributed
    from scaled.losses import spectral_loss_batch

    rank, world, _, _ = init_distributed()
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(16, 4, generator=g, dtype=torch.float64)  # the same global batch everywhere
    z2 = torch.randn(16, 4, generator=g, dtype=torch.float64)
    mine = slice(rank * 16 // world, (rank + 1) * 16 // world)
    out = {
        "C_global": global_second_moment(torch.cat([z1[mine], z2[mine]])).tolist(),
        "C_local": global_second_moment(torch.cat([z1[mine], z2[mine]]), local=True).tolist(),
        "spectral": spectral_loss_batch(z1[mine], z2[mine], distributed=True).item(),
    }
    with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
        json.dump(out, f)
    cleanup()
    """
)
with tempfile.TemporaryDirectory() as tmp:
    Path(tmp, "ranks.py").write_text(script)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, f"{tmp}/ranks.py", tmp], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(2)]

g = torch.Generator().manual_seed(0)
z1 = torch.randn(16, 4, generator=g, dtype=torch.float64)
z2 = torch.randn(16, 4, generator=g, dtype=torch.float64)
C_one = global_second_moment(torch.cat([z1, z2])).numpy()  # one process, whole batch
np.testing.assert_allclose(
    C_one, rl.second_moment_batch(np.concatenate([z1.numpy(), z2.numpy()])), **tol("float64")
)
for r, out in enumerate(ranks):
    np.testing.assert_allclose(np.array(out["C_global"]), C_one, **tol("float64"))
    gap = np.abs(np.array(out["C_local"]) - C_one).max()
    assert gap > 1e-3
    print(f"rank {r}: global C = one-process C; per-rank C differs by up to {gap:.3f}")
spectral_one = sl.spectral_loss_batch(z1, z2).item()
np.testing.assert_allclose(
    np.mean([out["spectral"] for out in ranks]), spectral_one, **tol("float64")
)
print(
    f"spectral loss: mean over 2 ranks {np.mean([o['spectral'] for o in ranks]):.12f}, one process {spectral_one:.12f}"
)

# %% [markdown]
# ## One step of the trainer on a tiny batch
#
# `scaled/pretrain.py` is one trainer for every method. The `demo` preset trains MINC on the
# embedded MNIST digits with a small ResNet (nothing downloads). Here, in this process (no
# `torchrun`: one rank), one optimiser step on a batch of 32 images from a 256-image split. The
# step computes target features of both views, `C_batch` over the global batch, `Cbar` (the first
# `C_batch`, C11), and the MINC loss of Eq. 20, then writes a checkpoint with `Cbar` in it (C5).

# %%
with tempfile.TemporaryDirectory() as run_dir:
    cfg = parse_config(
        [
            "--preset",
            "demo",
            "--max-steps",
            "1",
            "--batch-size",
            "32",
            "--n-train",
            "256",
            "--val-digits",
            "32",
            "--num-workers",
            "0",
            "--output-dir",
            run_dir,
            "--log-every",
            "1",
        ]
    )
    assert train(cfg) == 0
    metrics = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    ckpt_path = sorted(Path(run_dir).glob("ckpt_*.pt"))[-1]
    cfg_saved, model, ckpt = load_model(ckpt_path)

Cbar_t = checkpoint_cbar(ckpt).double()  # the loss module's state (scaled.objective)
eig = torch.linalg.eigvalsh(Cbar_t)
assert np.isfinite(metrics[-1]["loss"])
assert cfg_saved.method == "minc" and Cbar_t.shape == (cfg.proj_out, cfg.proj_out)
np.testing.assert_allclose(Cbar_t, Cbar_t.T, atol=1e-6)  # a second moment: symmetric ...
assert eig.min() > -1e-5  # ... and positive semi-definite
np.testing.assert_allclose(torch.trace(Cbar_t).item(), metrics[-1]["cbar_trace"], rtol=1e-5)
print(
    f"step {metrics[-1]['step']}: loss {metrics[-1]['loss']:.4f}, Cbar {tuple(Cbar_t.shape)}, "
    f"trace {torch.trace(Cbar_t).item():.4f}, top eigenvalues {eig.flip(0)[:3].numpy().round(3)}"
)

# %% [markdown]
# ## The ImageNet command
#
# The presets live in `scaled/presets.py`; each docstring states the command, the hardware it was
# sized for and the expected result. **No ImageNet run has been made by this project** (no GPU,
# no ImageNet here): the expected numbers are the public reference points, not measurements.
# `docs/reproduce.md` has one command per row of the paper's comparison and per ablation, with
# GPU-hour estimates.
#
#     torchrun --nproc_per_node=8 scaled/pretrain.py --preset imagenet_r50_minc --data-dir /path/to/imagenet
#     python scaled/linear_eval.py --checkpoint runs/pretrain --data-dir /path/to/imagenet   # run folder: newest ckpt

# %%
assert "imagenet_r50_minc" in PRESETS
cfg = parse_config(["--preset", "imagenet_r50_minc", "--data-dir", "/path/to/imagenet"])
print(PRESETS["imagenet_r50_minc"].__doc__)
print(
    f"method {cfg.method}, arch {cfg.arch}, global batch {cfg.batch_size}, optimizer {cfg.optimizer}, "
    f"base lr {cfg.lr}, beta {cfg.beta}, tau_base {cfg.tau_base}, k = proj_out {cfg.proj_out}"
)
