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
# # 2. The spectral contrastive loss
#
# The spectral contrastive loss (HaoChen et al. 2021) is
#
#     L_spec(phi) = -2 E_{x,x+}[phi(x)^T phi(x+)] + E_{x,x'}[(phi(x)^T phi(x'))^2]      (Eq. 1)
#
# On the augmentation graph of notebook 1 it becomes a low-rank matrix approximation (Eq. 3),
# whose minimisers are known in closed form (Eq. 5). This notebook checks each step numerically,
# draws the loss landscape under rotations, and trains a free embedding table until it reaches the
# eigenvectors.

# %%
# Run from the repository root, also when Jupyter was started inside notebooks/.
import os
from pathlib import Path

if Path.cwd().name == "notebooks":
    os.chdir(Path.cwd().parent)

# %%
import matplotlib.pyplot as plt
import numpy as np

from reference.graph_train import features_to_eigenvectors, fit
from reference.graphs import augmentation_graph, marginal, normalized_adjacency, spectral_embedding
from reference.losses import spectral_loss, spectral_loss_grad
from reference.metrics import column_cosines, principal_angles, subspace_distance
from reference.tolerances import tol

rng = np.random.default_rng(0)
W, points = augmentation_graph(rng, sizes=(12, 9, 7), aug_std=0.8)
N, k = W.shape[0], 3
w = marginal(W)
A = normalized_adjacency(W)
lam, V = spectral_embedding(W, k + 1)

# %% [markdown]
# ## Expectation form = graph form (Eq. 1 = Eq. 3)
#
# On a graph, `E_{x,x+}[g] = sum_ij W_ij g(i, j)` and `E_{x,x'}[g] = sum_ij w_i w_j g(i, j)`.
# Written out literally, Eq. 1 is a double sum over all pairs. `spectral_loss` computes instead
# `-2 tr(phi^T W phi) + ||phi^T D phi||_F^2`, and with `F = D^{1/2} phi` both equal
# `||A - F F^T||_F^2 - ||A||_F^2`: learning `phi` is a rank-k approximation of `A`.

# %%
phi = rng.standard_normal((N, k))
S = phi @ phi.T  # s_ij = phi(i)^T phi(j)
eq1 = -2 * np.sum(W * S) + np.sum(np.outer(w, w) * S**2)  # Eq. 1, literally
F = features_to_eigenvectors(phi, W)  # F = D^{1/2} phi
low_rank = np.linalg.norm(A - F @ F.T) ** 2 - np.linalg.norm(A) ** 2
np.testing.assert_allclose(spectral_loss(phi, W), eq1, **tol("float64"))
np.testing.assert_allclose(spectral_loss(phi, W), low_rank, **tol("float64"))
print(
    f"Eq. 1 double sum {eq1:.10f}\nEq. 3 graph form  {spectral_loss(phi, W):.10f}\n"
    f"low-rank form     {low_rank:.10f}"
)

# %% [markdown]
# ## The closed-form minimiser (Eq. 5)
#
# By Eckart-Young the best rank-k approximation of `A` keeps its top-k eigenpairs:
# `F* = V_k diag(lambda_k)^{1/2} R` for any orthogonal `R`, and `min L_spec = -sum lambda_i^2`.
# The gradient (Eq. 4) vanishes there.

# %%
sqrt_w = np.sqrt(w)[:, None]
phi_star = V[:, :k] * np.sqrt(lam[:k]) / sqrt_w
L_min = -np.sum(lam[:k] ** 2)
np.testing.assert_allclose(spectral_loss(phi_star, W), L_min, **tol("float64"))
assert np.abs(spectral_loss_grad(phi_star, W)).max() < 1e-12
Q, _ = np.linalg.qr(rng.standard_normal((k, k)))  # any rotation R
np.testing.assert_allclose(spectral_loss(phi_star @ Q, W), L_min, **tol("float64"))
print(f"min L_spec = -sum lambda_i^2 = {L_min:.6f}")

# %% [markdown]
# ## The loss landscape: flat under rotation, curved away from the eigenspace
#
# Rotating the last two columns of `F*` by an angle `theta` leaves the loss at its minimum: the
# loss sees only the span. Mixing the third column with the 4th eigenvector `v_4` (leaving the
# span) raises it. This flat direction is what MINC removes with the GHA ordering (notebook 5).

# %%
thetas = np.linspace(0, np.pi, 61)
rotate, leave = [], []
for t in thetas:
    R = np.eye(k)
    R[1:, 1:] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    rotate.append(spectral_loss(phi_star @ R, W))
    F_out = V[:, :k] * np.sqrt(lam[:k])
    F_out[:, 2] = np.sqrt(lam[2]) * (np.cos(t) * V[:, 2] + np.sin(t) * V[:, 3])
    leave.append(spectral_loss(F_out / sqrt_w, W))
np.testing.assert_allclose(rotate, L_min, **tol("float64"))
assert min(leave) >= L_min - 1e-12 and max(leave) > L_min + 0.1 * lam[2] ** 2

fig, ax = plt.subplots(figsize=(6.5, 4))
ax.plot(thetas, rotate, label="rotate columns 2, 3 inside the span (R)")
ax.plot(thetas, leave, label="turn column 3 towards v_4 (leave the span)")
ax.axhline(L_min, color="k", ls=":", label="-sum lambda_i^2 (Eq. 5)")
ax.set_xlabel("angle theta (rad)")
ax.set_ylabel("L_spec")
ax.set_title("spectral loss around its minimiser, k = 3")
ax.legend()
fig.tight_layout()

# %% [markdown]
# ## Training a free embedding table
#
# `reference.graph_train.fit` runs gradient descent on an `N x k` table `phi` (each view its own row:
# the most expressive "network"). With exact (full-graph) gradients the loss goes to
# `-sum lambda_i^2` and the span of `F = D^{1/2} phi` to the span of `V_k`. The columns, however,
# are an arbitrary rotation of the eigenvectors: the per-column cosines are not 1.

# %%
history = {"loss": [], "dist": []}


def record(step: int, phi: np.ndarray) -> None:
    history["loss"].append(spectral_loss(phi, W))
    history["dist"].append(subspace_distance(features_to_eigenvectors(phi, W), V[:, :k]))


phi_fit = fit(W, k, method="spectral", steps=300, lr=2.0, seed=1, callback=record)
F_fit = features_to_eigenvectors(phi_fit, W)
assert history["dist"][-1] < 1e-4
np.testing.assert_allclose(history["loss"][-1], L_min, rtol=1e-6)
print("principal angles to V_k (rad):", principal_angles(F_fit, V[:, :k]))
print("per-column |cos| with v_1..v_3:", np.round(column_cosines(F_fit, V[:, :k]), 3))

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
axes[0].semilogy(np.array(history["loss"]) - L_min)
axes[0].set_title("L_spec - min L_spec")
axes[1].semilogy(history["dist"])
axes[1].set_title("subspace distance ||P_F - P_V||_F")
for ax in axes:
    ax.set_xlabel("gradient step (full graph)")
axes[0].set_ylabel("excess loss")
axes[1].set_ylabel("projector distance")
fig.tight_layout()

# %% [markdown]
# ## The learned features on the points
#
# The learned span equals the eigenvector span, so `phi` separates the three clusters; but each
# learned column is a mixture of `phi_1, phi_2, phi_3` of notebook 1 (compare the colours).

# %%
fig, axes = plt.subplots(1, k, figsize=(12, 3.6))
for i, ax in enumerate(axes):
    vmax = np.abs(phi_fit[:, i]).max()
    sc = ax.scatter(
        *points.T, c=phi_fit[:, i], cmap="coolwarm", vmin=-vmax, vmax=vmax, s=50, ec="k"
    )
    ax.set_title(f"learned column {i + 1}")
    ax.set_xlabel("x_1")
    ax.set_aspect("equal")
    fig.colorbar(sc, ax=ax, shrink=0.8)
axes[0].set_ylabel("x_2")
fig.tight_layout()
