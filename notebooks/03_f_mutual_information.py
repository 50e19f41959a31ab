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
# # 3. The f-mutual-information view
#
# MINC is sold as *mutual-information* learning. This notebook shows why the spectral loss is one:
# the variational lower bound on an f-mutual information (Eq. 6) with the Pearson chi^2
# divergence and the critic `t = 2 (phi(x)^T phi(x') - 1)` equals `-L_spec - 1` exactly (Eq. 7).
# Then it looks at the alpha family (Eq. 16-18), of which chi^2 is `alpha = 2`, and at the two
# minibatch estimators of its negative term (Eq. 21).

# %%
# Run from the repository root, also when Jupyter was started inside notebooks/.
import os
from pathlib import Path

if Path.cwd().name == "notebooks":
    os.chdir(Path.cwd().parent)

# %%
import matplotlib.pyplot as plt
import numpy as np

from reference.graphs import augmentation_graph, marginal, spectral_embedding
from reference.losses import (
    alpha_loss_batch,
    alpha_mi_bound,
    alpha_mi_bound_grad,
    chi2_mi_bound,
    chi2_mi_bound_grad,
    spectral_loss,
    spectral_loss_batch,
    spectral_loss_grad,
)
from reference.metrics import subspace_distance
from reference.tolerances import tol

rng = np.random.default_rng(0)
W, points = augmentation_graph(rng, sizes=(12, 9, 7), aug_std=0.8)
N = W.shape[0]
w = marginal(W)
lam, V = spectral_embedding(W, N)

# %% [markdown]
# ## The chi^2 bound is the negative spectral loss (Eq. 7)
#
# `chi2_mi_bound` evaluates `E_{x,x+}[t] - E_{x,x'}[f*(t)]` by brute-force double sums over the
# graph, with `f*(t) = t + t^2/4`; `spectral_loss` uses the `k x k` shortcut of Eq. 8. They agree
# for *any* `phi`, and so do their gradients (with opposite signs).

# %%
for k in (1, 3, 5):
    phi = rng.standard_normal((N, k))
    bound, loss = chi2_mi_bound(phi, W), spectral_loss(phi, W)
    np.testing.assert_allclose(bound, -loss - 1.0, **tol("float64"))
    np.testing.assert_allclose(
        chi2_mi_bound_grad(phi, W), -spectral_loss_grad(phi, W), **tol("float64")
    )
    print(f"k = {k}: chi2 bound = {bound:+.6f}, -L_spec - 1 = {-loss - 1:+.6f}")

# %% [markdown]
# ## How tight is the bound?
#
# The chi^2 mutual information of the graph is
# `I = sum_ij W_ij^2 / (w_i w_j) - 1 = ||A||_F^2 - 1` (the definition of the chi^2 divergence
# between `W` and `w w^T`). At the minimiser of Eq. 5 the bound is `sum_{i<=k} lambda_i^2 - 1`:
# it grows with `k` and reaches `I` at `k = N`. With `k = 1` (a constant `phi`) it is 0: a
# constant representation carries no information.

# %%
I_chi2 = float(np.sum(W**2 / np.outer(w, w)) - 1.0)
ks = np.arange(1, N + 1)
bounds = []
for k in ks:
    phi_star = V[:, :k] * np.sqrt(lam[:k]) / np.sqrt(w)[:, None]  # Eq. 5, R = I
    bounds.append(chi2_mi_bound(phi_star, W))
bounds = np.array(bounds)
np.testing.assert_allclose(bounds, np.cumsum(lam**2) - 1.0, **tol("float64"))
np.testing.assert_allclose(bounds[-1], I_chi2, **tol("float64"))
assert abs(bounds[0]) < 1e-10

fig, ax = plt.subplots(figsize=(6, 3.8))
ax.plot(ks, bounds, "o-", label="bound at the minimiser, sum lambda_i^2 - 1")
ax.axhline(I_chi2, color="k", ls="--", label="chi^2 mutual information ||A||_F^2 - 1")
ax.set_xlabel("representation dimension k")
ax.set_ylabel("nats (chi^2)")
ax.set_title("the chi^2 bound (Eq. 7) tightens with k")
ax.legend()
fig.tight_layout()

# %% [markdown]
# ## The alpha family (Eq. 16-18)
#
# With the parameterisation `r^(alpha-1) = s = phi^T phi'` ([CHOICE] C8), the bound is
# `J_alpha = E[(s - 1)/(alpha - 1)] - E[(s^m - 1)/alpha]`, `m = alpha/(alpha - 1)`.
# At `alpha = 2`, `J_2 = -(L_spec + 1)/2`: half the chi^2 bound, because `f_2 = chi^2 / 2`.

# %%
phi = rng.standard_normal((N, 3))
np.testing.assert_allclose(
    alpha_mi_bound(phi, W, 2.0), -(spectral_loss(phi, W) + 1) / 2, **tol("float64")
)
np.testing.assert_allclose(alpha_mi_bound(phi, W, 2.0), chi2_mi_bound(phi, W) / 2, **tol("float64"))

# %% [markdown]
# ## Maximising `J_alpha` on the graph
#
# Gradient ascent on `J_alpha` with `alpha_mi_bound_grad`, `k = 3`, the same start for every alpha,
# full-graph (exact) gradients. For `alpha = 2` the maximiser spans the top-3 eigenvectors (Eq. 5);
# for other alpha nothing guarantees that, and the plot shows how far the learned span ends up.
# The start is the constant function plus a small perturbation, so that `s = phi^T phi' > 0`
# (the non-integer powers of C9 use `max(s, 0)`).

# %%
k, steps, lr = 3, 400, 2.0
phi0 = np.ones((N, k)) / np.sqrt(k) + 0.05 * rng.standard_normal((N, k))
alphas = [1.5, 2.0, 3.0, 5.0]
curves = {}
for alpha in alphas:
    phi, dist = phi0.copy(), []
    for _ in range(steps):
        phi = phi + lr * alpha_mi_bound_grad(phi, W, alpha)
        dist.append(subspace_distance(np.sqrt(w)[:, None] * phi, V[:, :k]))
    curves[alpha] = (np.array(dist), alpha_mi_bound(phi, W, alpha))
assert curves[2.0][0][-1] < 1e-3  # alpha = 2 reaches the eigenspace (Eq. 5)

fig, ax = plt.subplots(figsize=(6.5, 4))
for alpha, (dist, J) in curves.items():
    ax.semilogy(dist, label=f"alpha = {alpha}  (final J = {J:.3f})")
ax.set_xlabel("gradient-ascent step")
ax.set_ylabel("distance to top-3 eigenspace")
ax.set_title("only alpha = 2 is guaranteed to learn the eigenvectors")
ax.legend()
fig.tight_layout()
for alpha, (dist, J) in curves.items():
    print(f"alpha = {alpha}: final subspace distance {dist[-1]:.2e}, J_alpha = {J:.4f}")

# %% [markdown]
# ## Minibatch estimators of the negative term (Eq. 19, 21)
#
# On a batch of `B` positive pairs `(z1_b, z2_b)`, the pairwise estimator sums `s_bc^m` over the
# `B(B-1)` off-diagonal pairs. For integer `m` (`alpha = 2 -> m = 2`, `alpha = 1.5 -> m = 3`) the
# same number comes from the m-th moment tensors without the `B x B` matrix:
# that is the *non-contrastive* form. And `alpha_loss_batch` at `alpha = 2` is
# `(spectral_loss_batch + 1)/2`.

# %%
B = 64
flat = rng.choice(N * N, size=B, p=W.ravel())  # B positive pairs drawn from the joint W
i, j = np.unravel_index(flat, W.shape)
phi = rng.standard_normal((N, 3))
z1, z2 = phi[i], phi[j]
for alpha in (2.0, 1.5, 1.25):
    pw = alpha_loss_batch(z1, z2, alpha, estimator="pairwise")
    mo = alpha_loss_batch(z1, z2, alpha, estimator="moment")
    np.testing.assert_allclose(pw, mo, **tol("float64"))
    print(f"alpha = {alpha} (m = {alpha / (alpha - 1):.0f}): pairwise {pw:+.6f}, moment {mo:+.6f}")
np.testing.assert_allclose(
    alpha_loss_batch(z1, z2, 2.0), (spectral_loss_batch(z1, z2) + 1) / 2, **tol("float64")
)
