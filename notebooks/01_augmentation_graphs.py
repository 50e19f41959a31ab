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
# # 1. Augmentation graphs
#
# Self-supervised learning sees pairs of *views* `(x, x+)`: two augmentations of one source
# image. On a finite set of views this is a graph: `W_ij` is the probability that `(i, j)` is a
# positive pair (Eq. 2 of `docs/derivation.md`). Everything else in the derivation is a function
# of `W`: the marginal `w = W 1`, `D = diag(w)`, the normalised adjacency
# `A = D^{-1/2} W D^{-1/2}` and the Markov operator `T = D^{-1} W`.
#
# This notebook builds the augmentation graph of a toy 2-D data set, draws its kernel, and shows
# the top eigenvectors of `A` on the points: those are what the spectral loss, and MINC, learn.

# %%
# Run from the repository root, also when Jupyter was started inside notebooks/.
import os
from pathlib import Path

if Path.cwd().name == "notebooks":
    os.chdir(Path.cwd().parent)

# %%
import matplotlib.pyplot as plt
import numpy as np

from reference.graphs import (
    augmentation_graph,
    cycle_graph,
    marginal,
    normalized_adjacency,
    spectral_embedding,
    spectral_gap,
    stochastic_block_model,
)

rng = np.random.default_rng(0)

# %% [markdown]
# ## A toy data set and its augmentation kernel
#
# `augmentation_graph` draws source points from three Gaussian clusters and augments each source
# with a Gaussian kernel restricted to the same points, `p(i | x_s)`. Two independent
# augmentations of one source give the joint `W_ij = sum_s p(x_s) p(i | x_s) p(j | x_s)` (Eq. 2).
# It is a joint distribution: symmetric, non-negative, summing to one.

# %%
W, points = augmentation_graph(rng, sizes=(12, 9, 7), aug_std=0.8)
N = W.shape[0]
w = marginal(W)
A = normalized_adjacency(W)
T = W / w[:, None]  # Markov operator T = D^{-1} W (Eq. 2): row i is p(x+ | x = i)

assert np.allclose(W, W.T) and (W >= 0).all() and np.isclose(W.sum(), 1.0)
assert np.allclose(T.sum(axis=1), 1.0)
print(f"N = {N} views, marginal w in [{w.min():.4f}, {w.max():.4f}]")

# %%
anchor = 0
fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
im = axes[0].imshow(W, cmap="viridis")
axes[0].set_title("joint W of positive pairs (Eq. 2)")
axes[0].set_xlabel("view j")
axes[0].set_ylabel("view i")
fig.colorbar(im, ax=axes[0], label="W_ij")
sc = axes[1].scatter(points[:, 0], points[:, 1], c=T[anchor], cmap="magma_r", s=60, ec="k")
axes[1].scatter(*points[anchor], marker="*", s=300, c="cyan", ec="k", label=f"view {anchor}")
axes[1].set_title(f"where the positives of view {anchor} land: T[{anchor}, :]")
axes[1].set_xlabel("x_1")
axes[1].set_ylabel("x_2")
axes[1].set_aspect("equal")
axes[1].legend(loc="lower right")
fig.colorbar(sc, ax=axes[1], label="p(x+ = j | x = 0)")
fig.tight_layout()

# %% [markdown]
# ## The spectrum of `A`
#
# Because `W = P^T diag(p) P` is positive semi-definite, every eigenvalue of `A` is in `[0, 1]`.
# The top eigenvalue is exactly 1 with eigenvector `sqrt(w)`: the constant function (Eq. 5).
# Three clusters give three eigenvalues near 1, then a gap: the top eigenvectors are nearly
# constant on each cluster.

# %%
lam, V = spectral_embedding(W, N)
assert np.allclose(A @ V, V * lam)  # eigenpairs of A
assert lam.min() > -1e-12 and np.isclose(lam[0], 1.0)
v1 = V[:, 0] * np.sign(V[0, 0])
assert np.allclose(v1, np.sqrt(w))  # top eigenvector is sqrt(w) (Eq. 5)
print("top eigenvalues:", np.round(lam[:6], 4))
print(f"smallest gap among the top 3 and the 4th: {spectral_gap(W, 3):.4f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.bar(np.arange(1, N + 1), lam, color=["C1"] * 3 + ["C0"] * (N - 3))
ax.set_title("eigenvalues of A (descending); orange: one per cluster")
ax.set_xlabel("index i")
ax.set_ylabel("lambda_i")
fig.tight_layout()

# %% [markdown]
# ## The eigenvectors, drawn on the points
#
# A representation `phi` is a function on the views. The eigenvector `v_i` of `A` is the function
# `phi_i = v_i / sqrt(w)` (the rows of `F = D^{1/2} phi` are `u_i = sqrt(w_i) phi(i)`, Eq. 3).
# The first is constant; the next two separate the clusters; later ones vary inside clusters.
# (Panels: `phi_i = v_i / sqrt(w)` coloured on the points.)

# %%
phi_eig = V / np.sqrt(w)[:, None]
assert np.allclose(phi_eig[:, 0] * np.sign(phi_eig[0, 0]), 1.0)  # constant eigenfunction

fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
for i, ax in enumerate(axes):
    vmax = np.abs(phi_eig[:, i]).max()
    sc = ax.scatter(
        *points.T, c=phi_eig[:, i], cmap="coolwarm", vmin=-vmax, vmax=vmax, s=50, ec="k"
    )
    ax.set_title(f"phi_{i + 1}, lambda_{i + 1} = {lam[i]:.3f}")
    ax.set_xlabel("x_1")
    ax.set_aspect("equal")
    fig.colorbar(sc, ax=ax, shrink=0.8)
axes[0].set_ylabel("x_2")
fig.tight_layout()

# %% [markdown]
# ## Other graphs used by the tests
#
# The cycle has a closed-form spectrum: with the lazy self-loop that `reference.graphs` adds,
# `lambda_j = (1 + cos(2 pi j / n)) / 2`, in equal pairs (so only odd `k` has a gap). A stochastic
# block model with unequal blocks has one large eigenvalue per block, all distinct.

# %%
n = 12
lam_cycle, _ = spectral_embedding(cycle_graph(n), n)
closed_form = np.sort((1 + np.cos(2 * np.pi * np.arange(n) / n)) / 2)[::-1]
assert np.allclose(lam_cycle, closed_form)
W_sbm = stochastic_block_model((10, 8, 6), 0.8, 0.05, np.random.default_rng(1))
lam_sbm, _ = spectral_embedding(W_sbm, W_sbm.shape[0])
assert spectral_gap(W_sbm, 3) > 0

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
axes[0].plot(lam_cycle, "o", label="eigh(A)")
axes[0].plot(closed_form, "x", ms=10, label="(1 + cos(2 pi j/n)) / 2")
axes[0].set_title(f"cycle, n = {n}")
axes[1].plot(lam_sbm, "o", label="eigh(A)")
axes[1].set_title("block model, sizes (10, 8, 6)")
for ax in axes:
    ax.set_xlabel("index (descending)")
    ax.set_ylabel("eigenvalue of A")
    ax.legend()
fig.tight_layout()
