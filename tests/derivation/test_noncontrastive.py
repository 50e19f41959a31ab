"""Non-contrastive rearrangement (Eq. 8-9), MINC graph form (Eq. 12), power iteration (Eq. 10)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from reference import graphs, losses
from reference.metrics import subspace_distance
from reference.power_iteration import (
    orthogonal_iteration,
    power_iteration_step,
    run_power_iteration,
)
from reference.tolerances import tol
from tests.derivation.finite_differences import assert_gradient
from tests.gradient_checks import assert_gradient_close


def random_phi(W, k, seed):
    return np.random.default_rng(seed).standard_normal((W.shape[0], k))


@pytest.mark.parametrize("seed", [0, 1])
def test_rearrangement_identity(any_graph, seed):
    """E_{x,x'}[(phi^T phi')^2] = E_x[phi^T C phi] = ||C||_F^2 (Eq. 8), C by an explicit sum."""
    W, k = any_graph
    phi = random_phi(W, k, seed)
    w = graphs.marginal(W)
    N = W.shape[0]
    C_sum = sum(w[i] * np.outer(phi[i], phi[i]) for i in range(N))
    C = losses.second_moment(phi, W)
    np.testing.assert_allclose(C, C_sum, **tol("float64"))
    pairwise = sum(w[i] * w[j] * (phi[i] @ phi[j]) ** 2 for i in range(N) for j in range(N))
    per_point = sum(w[i] * phi[i] @ C @ phi[i] for i in range(N))
    np.testing.assert_allclose(per_point, pairwise, **tol("float64"))
    np.testing.assert_allclose(np.sum(C * C), pairwise, **tol("float64"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noncontrastive_value_equal_gradient_half(any_graph, seed):
    W, k = any_graph
    phi = random_phi(W, k, seed)
    np.testing.assert_allclose(
        losses.noncontrastive_loss(phi, W), losses.spectral_loss(phi, W), **tol("float64")
    )
    np.testing.assert_allclose(
        losses.noncontrastive_loss_grad(phi, W),
        0.5 * losses.spectral_loss_grad(phi, W),
        rtol=1e-10,
        atol=1e-12,
    )


def stopped_minc(phi, W, phibar, Cbar, gha):
    """Eq. 12 with the sg(...) made explicit: only the first factor phi carries the gradient."""
    w = graphs.marginal(W)
    L = np.tril(Cbar) if gha else Cbar
    return lambda p: float(-2 * np.sum(p * (W @ phibar)) + 2 * np.sum(w[:, None] * p * (phi @ L.T)))


@pytest.mark.parametrize("gha", [True, False])
def test_minc_gradient_is_the_stop_gradient_one(graph, gha):
    W, k = graph
    phi, phibar = random_phi(W, k, 0), random_phi(W, k, 1)
    Cbar = losses.second_moment(random_phi(W, k, 2), W)
    g = losses.minc_loss_grad(phi, W, phibar=phibar, Cbar=Cbar, gha=gha)
    assert_gradient(g, stopped_minc(phi, W, phibar, Cbar, gha), phi)
    np.testing.assert_allclose(
        losses.minc_loss(phi, W, phibar=phibar, Cbar=Cbar, gha=gha),
        stopped_minc(phi, W, phibar, Cbar, gha)(phi),
        **tol("float64"),
    )


def test_minc_without_gha_is_the_noncontrastive_gradient(any_graph):
    W, k = any_graph
    phi = random_phi(W, k, 3)
    assert_gradient_close(
        losses.minc_loss_grad(phi, W, gha=False), losses.noncontrastive_loss_grad(phi, W), "float64"
    )


def test_differentiating_through_lt_c_phi_gives_c_plus_diag_c(graph):
    """Removing the sg around LT(C) phi gives (C + diag C) phi, not LT(C) phi (Eq. 12)."""
    W, k = graph
    phi = random_phi(W, k, 4)
    C = losses.second_moment(phi, W)
    w = graphs.marginal(W)
    through = lambda p: float(  # sg on phibar = phi and on C, but not on the product's phi
        -2 * np.sum(p * (W @ phi)) + 2 * np.sum(w[:, None] * p * (p @ np.tril(C).T))
    )
    wrong = -2 * W @ phi + 2 * w[:, None] * (phi @ (C + np.diag(np.diag(C))))
    assert_gradient(wrong, through, phi)
    right = losses.minc_loss_grad(phi, W)
    assert np.linalg.norm(wrong - right) > 0.1 * np.linalg.norm(right)


def test_stationary_points_are_power_iteration_fixed_points(any_graph):
    W, k = any_graph
    vals, vecs = graphs.spectral_embedding(W, k)
    w = graphs.marginal(W)
    for seed in range(3):
        R = ortho_group.rvs(k, random_state=seed)
        F = vecs * np.sqrt(vals) @ R
        phi = F / np.sqrt(w)[:, None]
        np.testing.assert_allclose(power_iteration_step(phi, W), phi, **tol("float64"))
        # the two faces of the fixed point: F^T F = C and A F = F C
        C = losses.second_moment(phi, W)
        np.testing.assert_allclose(F.T @ F, C, **tol("float64"))
        np.testing.assert_allclose(graphs.normalized_adjacency(W) @ F, F @ C, atol=1e-12)
    # a non-stationary point moves
    phi = random_phi(W, k, 0)
    assert np.linalg.norm(power_iteration_step(phi, W) - phi) > 1e-3 * np.linalg.norm(phi)


def test_orthogonal_iteration_converges_to_spectral_embedding(any_graph):
    W, k = any_graph
    _, vecs = graphs.spectral_embedding(W, k)
    Q = orthogonal_iteration(graphs.normalized_adjacency(W), k, 2000, np.random.default_rng(0))
    assert subspace_distance(Q, vecs) < 1e-8


def test_damped_power_iteration_reaches_the_minimiser(any_graph):
    """Iterating Eq. 10 (damped, see run_power_iteration) ends at F F^T = V_k Lambda V_k^T."""
    W, k = any_graph
    vals, vecs = graphs.spectral_embedding(W, k)
    phi = run_power_iteration(W, k, steps=3000, rng=np.random.default_rng(1))
    F = np.sqrt(graphs.marginal(W))[:, None] * phi
    np.testing.assert_allclose(F @ F.T, (vecs * vals) @ vecs.T, atol=1e-9)
    np.testing.assert_allclose(losses.spectral_loss(phi, W), -np.sum(vals**2), **tol("float64"))


def test_undamped_power_iteration_two_cycle():
    """k = 1, F = c v: the plain step maps c -> lambda / c, so it oscillates unless c^2 = lambda."""
    W, _ = graphs.grid_graph(3, 4), 1
    vals, vecs = graphs.spectral_embedding(W, 1)
    w = graphs.marginal(W)
    phi = 2.0 * vecs / np.sqrt(w)[:, None]
    once = power_iteration_step(phi, W)
    np.testing.assert_allclose(once, (vals[0] / 2.0) * vecs / np.sqrt(w)[:, None], atol=1e-12)
    np.testing.assert_allclose(power_iteration_step(once, W), phi, atol=1e-12)
