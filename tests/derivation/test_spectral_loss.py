"""The spectral contrastive loss (Eq. 1-5) and its chi^2 and alpha MI bounds (Eq. 6-7, 18)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from reference import graphs, losses
from reference.tolerances import tol
from tests.conftest import make_graph
from tests.derivation.finite_differences import assert_gradient
from tests.gradient_checks import assert_gradient_close


def expectation_form(phi, W):
    """(Eq. 1) with explicit double sums over the graph (Eq. 3's expectations)."""
    w = W.sum(axis=1)
    N = W.shape[0]
    positive = sum(W[i, j] * phi[i] @ phi[j] for i in range(N) for j in range(N))
    negative = sum(w[i] * w[j] * (phi[i] @ phi[j]) ** 2 for i in range(N) for j in range(N))
    return -2.0 * positive + negative


def minimiser(W, k, R=None):
    """phi* = D^{-1/2} V_k diag(lambda)^{1/2} R (Eq. 5)."""
    vals, vecs = graphs.spectral_embedding(W, k)
    F = vecs * np.sqrt(vals)
    if R is not None:
        F = F @ R
    return F / np.sqrt(graphs.marginal(W))[:, None], vals


@pytest.mark.parametrize("seed", [0, 1])
def test_graph_form_equals_expectation_form(any_graph, seed):
    W, k = any_graph
    phi = np.random.default_rng(seed).standard_normal((W.shape[0], k))
    value = losses.spectral_loss(phi, W)
    np.testing.assert_allclose(value, expectation_form(phi, W), **tol("float64"))
    # second equality of Eq. 3: || A - F F^T ||^2 - || A ||^2
    A = graphs.normalized_adjacency(W)
    F = np.sqrt(graphs.marginal(W))[:, None] * phi
    frob = np.sum((A - F @ F.T) ** 2) - np.sum(A**2)
    np.testing.assert_allclose(value, frob, **tol("float64"))


def test_closed_form_minimiser(any_graph):
    W, k = any_graph
    phi, vals = minimiser(W, k)
    np.testing.assert_allclose(losses.spectral_loss(phi, W), -np.sum(vals**2), **tol("float64"))
    grad = losses.spectral_loss_grad(phi, W)
    assert np.max(np.abs(grad)) < 1e-12 * np.max(np.abs(losses.spectral_loss_grad(0 * phi + 1, W)))
    # Random rotations keep the value and stationarity (Eq. 5: any orthogonal R).
    for seed in range(3):
        R = ortho_group.rvs(k, random_state=seed) if k > 1 else np.array([[-1.0]])
        phi_r, _ = minimiser(W, k, R)
        np.testing.assert_allclose(
            losses.spectral_loss(phi_r, W), -np.sum(vals**2), **tol("float64")
        )
        assert np.max(np.abs(losses.spectral_loss_grad(phi_r, W))) < 1e-12
    # ... and it is a minimum: random perturbations only increase the loss.
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert losses.spectral_loss(phi + 1e-3 * rng.standard_normal(phi.shape), W) > -np.sum(
            vals**2
        )


def test_eigenvalue_one_is_the_constant_feature(graph):
    W, k = graph
    phi, vals = minimiser(W, 1)
    np.testing.assert_allclose(vals[0], 1.0, **tol("float64"))
    np.testing.assert_allclose(np.abs(phi[:, 0]), np.ones(W.shape[0]), **tol("float64"))


@pytest.mark.parametrize("seed", [0, 1])
def test_spectral_gradient_matches_finite_differences(graph, seed):
    W, k = graph
    phi = np.random.default_rng(seed).standard_normal((W.shape[0], k))
    assert_gradient(losses.spectral_loss_grad(phi, W), lambda p: losses.spectral_loss(p, W), phi)


@pytest.mark.parametrize("seed", [0, 1])
def test_chi2_bound_is_minus_spectral_loss_minus_one(any_graph, seed):
    W, k = any_graph
    phi = np.random.default_rng(seed).standard_normal((W.shape[0], k))
    L = losses.spectral_loss(phi, W)
    np.testing.assert_allclose(losses.chi2_mi_bound(phi, W), -L - 1.0, **tol("float64"))
    assert_gradient_close(
        losses.chi2_mi_bound_grad(phi, W), -losses.spectral_loss_grad(phi, W), "float64"
    )
    assert_gradient(losses.chi2_mi_bound_grad(phi, W), lambda p: losses.chi2_mi_bound(p, W), phi)


def test_alpha_two_is_half_the_chi2_bound(any_graph):
    W, k = any_graph
    phi = np.random.default_rng(5).standard_normal((W.shape[0], k))
    L = losses.spectral_loss(phi, W)
    np.testing.assert_allclose(losses.alpha_mi_bound(phi, W, 2.0), -(L + 1) / 2, **tol("float64"))


@pytest.mark.parametrize("alpha", [2.0, 1.5, 1.25, 3.0, 1.7])
def test_alpha_gradient_matches_finite_differences(graph, alpha):
    W, k = graph
    rng = np.random.default_rng(2)
    # non-negative features for non-integer m, so that s >= 0 and max(s, 0) is smooth (C9)
    phi = (
        rng.random((W.shape[0], k)) if alpha in (3.0, 1.7) else rng.standard_normal((W.shape[0], k))
    )
    assert_gradient(
        losses.alpha_mi_bound_grad(phi, W, alpha), lambda p: losses.alpha_mi_bound(p, W, alpha), phi
    )


def test_alpha_non_integer_power_clips_negative_scores():
    W = graphs.cycle_graph(5)
    phi = np.zeros((5, 1))
    phi[:, 0] = [1.0, -1.0, 1.0, -1.0, 1.0]  # neighbours have s = -1
    alpha = 1.7  # m = 17/7, non-integer
    m = alpha / (alpha - 1)
    w = W.sum(1)
    S = phi @ phi.T
    expected = (
        np.sum(W * (S - 1)) / (alpha - 1)
        - np.sum(np.outer(w, w) * (np.maximum(S, 0) ** m - 1)) / alpha
    )
    np.testing.assert_allclose(losses.alpha_mi_bound(phi, W, alpha), expected, **tol("float64"))


def f_alpha(u, alpha):
    """(Eq. 16)."""
    return (u**alpha - alpha * u - (1 - alpha)) / (alpha * (alpha - 1))


def critic_features(S: np.ndarray) -> np.ndarray:
    """phi (N x N) with phi phi^T = S, for a PSD S (the critic s_ij = phi_i^T phi_j = S_ij)."""
    vals, vecs = np.linalg.eigh(S)
    assert vals.min() > -1e-10 * vals.max(), "S is not PSD: no features give this critic"
    phi = vecs * np.sqrt(np.maximum(vals, 0))
    np.testing.assert_allclose(phi @ phi.T, S, rtol=1e-10, atol=1e-10 * np.abs(S).max())
    return phi


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.0])
def test_alpha_bound_at_the_optimal_critic_is_the_divergence(graph, alpha):
    """(Eq. 17) with the true density ratio r = W_ij / (w_i w_j) equals D_{f_alpha} (Eq. 16), and
    so does `losses.alpha_mi_bound` (Eq. 18) at the features whose critic is the optimal one,
    phi_i^T phi_j = r_ij^(alpha - 1). That critic is PSD for integer alpha - 1: r is PSD on
    these lazy graphs and elementwise powers of a PSD matrix are PSD (Schur product theorem).
    """
    W, _ = graph
    w = graphs.marginal(W)
    P = np.outer(w, w)
    r = W / P
    divergence = np.sum(P * f_alpha(r, alpha))
    J = np.sum(W * (r ** (alpha - 1) - 1)) / (alpha - 1) - np.sum(P * (r**alpha - 1)) / alpha
    np.testing.assert_allclose(J, divergence, **tol("float64"))
    phi = critic_features(r ** (alpha - 1))
    np.testing.assert_allclose(losses.alpha_mi_bound(phi, W, alpha), divergence, **tol("float64"))
    np.testing.assert_allclose(f_alpha(r, 2.0), (r - 1) ** 2 / 2, **tol("float64"))  # chi^2 / 2


def random_critics(N: int, seed: int, count: int = 30):
    """Features of random, non-optimal critics: random k in 1..N and scales 0.1-3."""
    g = np.random.default_rng(seed)
    for _ in range(count):
        k = int(g.integers(1, N + 1))
        yield g.uniform(0.1, 3.0) * g.standard_normal((N, k)) / np.sqrt(k)


def near_optimal_critics(phi_star: np.ndarray, seed: int = 0):
    """The optimal features moved by a random direction of relative size 1e-3 to 0.3."""
    g = np.random.default_rng(seed)
    for eps in (1e-3, 1e-2, 0.1, 0.3):
        for _ in range(3):
            yield phi_star + eps * np.abs(phi_star).mean() * g.standard_normal(phi_star.shape)


def test_chi2_bound_is_below_the_divergence_for_any_critic(graph):
    """(Eq. 6) as the inequality it is: E_p[t] - E_q[f*(t)] <= D_f for every critic t, here
    chi^2 (Eq. 7): on random features, and on features near the optimum, where the gap is of
    second order and a wrong conjugate would show; equality only at the optimum."""
    W, _ = graph
    w = graphs.marginal(W)
    P = np.outer(w, w)
    r = W / P
    chi2 = np.sum(P * (r - 1) ** 2)
    critics = [*random_critics(W.shape[0], 0), *near_optimal_critics(critic_features(r))]
    gaps = [chi2 - losses.chi2_mi_bound(phi, W) for phi in critics]
    assert min(gaps) > 0, min(gaps)
    np.testing.assert_allclose(losses.chi2_mi_bound(critic_features(r), W), chi2, rtol=1e-10)


@pytest.mark.parametrize("alpha", [2.0, 3.0, 1.7, 1.5, 1.25])
def test_alpha_bound_is_below_the_divergence_for_any_critic(any_graph, alpha):
    """(Eq. 6) for the alpha family (Eq. 16-18): `alpha_mi_bound` <= D_{f_alpha} for random
    features; non-negative ones for every alpha, signed ones where m = alpha / (alpha - 1) is
    even or non-integer. With f*(t) = (s^m - 1) / alpha for s >= 0 and -1 / alpha below, the
    clip max(s, 0) (non-integer m) and s^m >= 0 (even m) give at least f*(t): the bound holds.
    For odd m (alpha 1.5, 1.25) s^m < 0 for s < 0 undercuts f*, so signed features may exceed
    D_f (docs/derivation.md, Eq. 18): test_odd_moment_exceeds_the_divergence_on_signed_scores."""
    W, _ = any_graph
    w = graphs.marginal(W)
    P = np.outer(w, w)
    divergence = np.sum(P * f_alpha(W / P, alpha))
    m = alpha / (alpha - 1)
    odd = abs(m - round(m)) < 1e-9 and round(m) % 2 == 1
    for phi in random_critics(W.shape[0], 1):
        assert losses.alpha_mi_bound(np.abs(phi), W, alpha) < divergence
        if not odd:
            assert losses.alpha_mi_bound(phi, W, alpha) < divergence
    if alpha in (2.0, 3.0):  # near the optimum (integer alpha - 1)
        S = (W / P) ** (alpha - 1)
        if np.linalg.eigvalsh(S).min() > -1e-10 * np.abs(S).max():  # not the cycle's r
            for phi in near_optimal_critics(critic_features(S)):
                assert losses.alpha_mi_bound(phi, W, alpha) < divergence


@pytest.mark.parametrize("name", ["sbm", "grid", "geometric"])
def test_odd_moment_exceeds_the_divergence_on_signed_scores(name):
    """alpha = 1.5 (m = 3) with one feature of alternating sign, phi_i = 3 (-1)^i: the scores
    s_ij = +-9 make (s^3 - 1) / alpha far below f*(t) = -1 / alpha, and the value exceeds D_f
    (on these graphs; on the augmentation graph the positive pairs outweigh it)."""
    W, _ = make_graph(name)
    w = graphs.marginal(W)
    P = np.outer(w, w)
    divergence = np.sum(P * f_alpha(W / P, 1.5))
    phi = 3.0 * (-1.0) ** np.arange(W.shape[0])[:, None]
    assert losses.alpha_mi_bound(phi, W, 1.5) > divergence + 1.0
    assert losses.alpha_mi_bound(np.abs(phi), W, 1.5) < divergence  # s >= 0: a bound again


def test_bounds_are_tight_when_phi_models_the_density_ratio(graph):
    """k = N features with F F^T = A make phi_i^T phi_j = r_ij: the chi^2 bound (Eq. 7) is the
    chi^2 divergence and alpha = 2 (Eq. 18) is half of it. (A is PSD for these lazy graphs.)"""
    W, _ = graph
    N = W.shape[0]
    vals, vecs = graphs.spectral_embedding(W, N)
    assert vals.min() > -1e-12
    w = graphs.marginal(W)
    phi = vecs * np.sqrt(np.maximum(vals, 0)) / np.sqrt(w)[:, None]
    r = W / np.outer(w, w)
    np.testing.assert_allclose(phi @ phi.T, r, rtol=1e-10, atol=1e-10)
    chi2 = np.sum(np.outer(w, w) * (r - 1) ** 2)
    np.testing.assert_allclose(losses.chi2_mi_bound(phi, W), chi2, rtol=1e-10)
    np.testing.assert_allclose(losses.alpha_mi_bound(phi, W, 2.0), chi2 / 2, rtol=1e-10)
