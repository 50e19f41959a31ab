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
# # 4. The non-contrastive rearrangement and power iteration
#
# The second term of the spectral loss compares every view with every other view: `O(B^2 k)` per
# batch of `B`. It can be rearranged around the `k x k` second moment `C` (Eq. 8):
#
#     E_{x,x'}[(phi(x)^T phi(x'))^2] = E_x[phi(x)^T C phi(x)] = ||C||_F^2,   C = E[phi phi^T]
#
# so the cost falls to `O(B k^2)`. With stop-gradients this gives the non-contrastive loss (Eq. 9),
# whose gradient is exactly half of the spectral gradient, and whose stationary points are the
# fixed points of one step of normalised power iteration (Eq. 10).

# %%
# Run from the repository root, also when Jupyter was started inside notebooks/.
import os
from pathlib import Path

if Path.cwd().name == "notebooks":
    os.chdir(Path.cwd().parent)

# %%
import matplotlib.pyplot as plt
import numpy as np

from reference.graph_train import features_to_eigenvectors
from reference.graphs import cycle_graph, marginal, normalized_adjacency, spectral_embedding
from reference.losses import (
    noncontrastive_loss,
    noncontrastive_loss_grad,
    second_moment,
    spectral_loss,
    spectral_loss_grad,
)
from reference.metrics import subspace_distance
from reference.power_iteration import (
    orthogonal_iteration,
    power_iteration_step,
    run_power_iteration,
)
from reference.tolerances import tol

rng = np.random.default_rng(0)
n, k = 20, 3
W = cycle_graph(n)  # lazy cycle: lambda = (1 + cos(2 pi j / n)) / 2; k = 3 has a gap
w = marginal(W)
A = normalized_adjacency(W)
lam, V = spectral_embedding(W, k + 1)
print("top eigenvalues of A:", np.round(lam, 5))

# %% [markdown]
# ## The k x k summary (Eq. 8)
#
# The double sum over all pairs `(x, x')` equals a single sum through `C = phi^T D phi`.

# %%
phi = rng.standard_normal((n, k))
C = second_moment(phi, W)
pairwise = np.sum(np.outer(w, w) * (phi @ phi.T) ** 2)  # E_{x,x'}[(phi^T phi')^2], all N^2 pairs
rearranged = np.sum(w * np.einsum("ia,ab,ib->i", phi, C, phi))  # E_x[phi^T C phi]
np.testing.assert_allclose(pairwise, rearranged, **tol("float64"))
np.testing.assert_allclose(pairwise, np.sum(C * C), **tol("float64"))
print(f"pairwise {pairwise:.10f} = through C {rearranged:.10f} = ||C||_F^2 {np.sum(C * C):.10f}")

# %% [markdown]
# ## Same value, half the gradient (Eq. 9)
#
# `L_nc = -2 E[phi(x)^T sg(phi(x+))] + E[phi(x)^T sg(C) phi(x)]`. Stopping the gradient through
# `phi(x+)` and through `C` drops exactly one of the two equal halves of each term, so the value is
# `L_spec` and the gradient `-2 W phi + 2 D phi C` is half of Eq. 4, at every `phi`: same
# stationary points, same trajectory at twice the learning rate.

# %%
for _ in range(3):
    phi = rng.standard_normal((n, k))
    np.testing.assert_allclose(noncontrastive_loss(phi, W), spectral_loss(phi, W), **tol("float64"))
    np.testing.assert_allclose(
        noncontrastive_loss_grad(phi, W), 0.5 * spectral_loss_grad(phi, W), **tol("float64")
    )
print("value equal, gradient exactly one half: checked on 3 random tables")

# %% [markdown]
# ## Stationary points are power-iteration fixed points (Eq. 10)
#
# Setting the gradient to zero gives `W phi = D phi C`, i.e. `T phi = phi C` with the Markov
# operator `T = D^{-1} W`: the update `phi <- T phi C^{-1}` (one step of normalised power
# iteration, `power_iteration_step`) leaves every stationary point where it is. At the minimiser
# of Eq. 5, in any rotation `R`, also `F^T F = C` and `A F = F C`.

# %%
phi_star = V[:, :k] * np.sqrt(lam[:k]) / np.sqrt(w)[:, None]
R, _ = np.linalg.qr(rng.standard_normal((k, k)))
for phi_fp in (phi_star, phi_star @ R):
    F = features_to_eigenvectors(phi_fp, W)
    C = second_moment(phi_fp, W)
    np.testing.assert_allclose(power_iteration_step(phi_fp, W), phi_fp, **tol("float64"))
    np.testing.assert_allclose(F.T @ F, C, **tol("float64"))
    np.testing.assert_allclose(A @ F, F @ C, **tol("float64"))
    assert np.abs(noncontrastive_loss_grad(phi_fp, W)).max() < 1e-12
print("phi* and phi* R are fixed points of phi <- T phi C^{-1}")

# %% [markdown]
# ## Power iteration from a random start
#
# `run_power_iteration` applies the update with damping 1/2,
# `phi <- (phi + T phi C^{-1}) / 2` (the undamped map flips the scale of each direction,
# `c -> lambda / c`, a 2-cycle; halving it is Newton's iteration for `sqrt(lambda)`; the fixed
# points are the same). Orthogonal iteration `Q <- qr(A Q)` converges to the same span at the rate
# `lambda_{k+1} / lambda_k` per step; the damped map, which moves only half way each step, is
# slower (the second plot).
#
# The strip shows the rows `phi(i)` of the table for the 20 nodes of the cycle, projected on their
# top-2 principal directions, consecutive nodes joined: from noise, power iteration unrolls the
# cycle into a circle (the pair of eigenvectors `cos`, `sin` of the lowest frequency).

# %%
frames = [0, 3, 20, 60, 150, 500]
phi = rng.standard_normal((n, k))
snapshots, dist = {}, []
for step in range(frames[-1] + 1):
    if step in frames:
        snapshots[step] = phi.copy()
    dist.append(subspace_distance(features_to_eigenvectors(phi, W), V[:, :k]))
    phi = run_power_iteration(W, k, steps=1, rng=rng, phi0=phi)
phi_end = snapshots[frames[-1]]
assert dist[-1] < 1e-3
np.testing.assert_allclose(power_iteration_step(phi_end, W), phi_end, atol=1e-6)

orth_steps = np.arange(0, frames[-1] + 1, 10)
dist_orth = [
    subspace_distance(orthogonal_iteration(A, k, s, np.random.default_rng(1)), V[:, :k])
    for s in orth_steps
]

fig, axes = plt.subplots(1, len(frames), figsize=(16, 3))
for ax, step in zip(axes, frames):
    rows = snapshots[step] - snapshots[step].mean(axis=0)
    _, _, Vt = np.linalg.svd(rows, full_matrices=False)
    xy = rows @ Vt[:2].T
    ax.plot(*np.vstack([xy, xy[:1]]).T, "-", color="0.6", lw=1)
    ax.scatter(*xy.T, c=np.arange(n), cmap="hsv", s=18)
    ax.set_title(f"step {step}")
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
axes[0].set_ylabel("rows of phi (top-2 PCs)")
fig.suptitle("power iteration (Eq. 10) on a 20-node cycle; colour = node index")
fig.tight_layout()

fig, ax = plt.subplots(figsize=(6.5, 3.8))
ax.semilogy(dist, label="damped power iteration on phi (Eq. 10)")
ax.semilogy(orth_steps, dist_orth, "--", label="orthogonal iteration Q <- qr(A Q)")
ax.set_xlabel("iteration")
ax.set_ylabel("distance to top-3 eigenspace")
ax.set_title(f"span convergence, rate lambda_4/lambda_3 = {lam[3] / lam[2]:.4f}")
ax.legend()
fig.tight_layout()
