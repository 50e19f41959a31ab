"""Minibatch estimators (Eq. 15, 19-21): unbiased for the graph expectations, exact gradients.

Unbiasedness is a statistical statement: the average over n sampled batches must match the exact
graph expectation within Z standard errors of that average. With Z = 5 a correct estimator fails
with probability ~6e-7 per comparison (normal approximation; the seeds are fixed anyway), while a
wrong normalisation (e.g. B^2 instead of B(B-1)) is off by many standard errors.
"""

from __future__ import annotations

import numpy as np
import pytest

from reference import graphs, losses
from reference.graph_train import sample_pairs
from reference.tolerances import tol
from tests.conftest import make_graph
from tests.derivation.finite_differences import assert_gradient

Z = 5.0
N_BATCHES = 4000
B = 8


def batches(W, rng, n=N_BATCHES, b=B):
    i, j = sample_pairs(W, n * b, rng)
    return i.reshape(n, b), j.reshape(n, b)


def assert_unbiased(samples, exact, z=Z):
    samples = np.asarray(samples)
    mean = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / np.sqrt(len(samples))
    assert np.all(np.abs(mean - exact) < z * se + 1e-12), (
        f"max |mean - exact| / se = {np.max(np.abs(mean - exact) / se):.2f}"
    )


@pytest.mark.parametrize("name", ["sbm", "geometric", "augmentation"])
def test_spectral_batch_is_unbiased(name):
    W, k = make_graph(name)
    rng = np.random.default_rng(10)
    phi = rng.standard_normal((W.shape[0], k))
    I, J = batches(W, rng)
    values = [losses.spectral_loss_batch(phi[i], phi[j]) for i, j in zip(I, J)]
    assert_unbiased(values, losses.spectral_loss(phi, W))


def test_spectral_batch_with_diagonal_has_the_stated_bias():
    """include_diagonal=True estimates -2 E_W[s] + E_W[s^2] / B + (B-1)/B E_ww[s^2]."""
    W, k = make_graph("sbm")
    rng = np.random.default_rng(11)
    phi = rng.standard_normal((W.shape[0], k))
    I, J = batches(W, rng)
    values = [
        losses.spectral_loss_batch(phi[i], phi[j], include_diagonal=True) for i, j in zip(I, J)
    ]
    S = phi @ phi.T
    w = graphs.marginal(W)
    expected = (
        -2 * np.sum(W * S) + np.sum(W * S**2) / B + (B - 1) / B * np.sum(np.outer(w, w) * S**2)
    )
    assert_unbiased(values, expected)
    # ... and the unbiasedness check has the power to see that bias (measured ~22 SE here)
    se = np.std(values, ddof=1) / np.sqrt(len(values))
    assert abs(np.mean(values) - losses.spectral_loss(phi, W)) > Z * se


@pytest.mark.parametrize("name", ["sbm", "augmentation"])
def test_spectral_batch_gradient_is_unbiased(name):
    W, k = make_graph(name)
    rng = np.random.default_rng(12)
    phi = rng.standard_normal((W.shape[0], k))
    I, J = batches(W, rng, n=3000)
    grads = []
    for i, j in zip(I, J):
        g1, g2 = losses.spectral_loss_batch_grad(phi[i], phi[j])
        g = np.zeros_like(phi)
        np.add.at(g, i, g1)
        np.add.at(g, j, g2)
        grads.append(g)
    # N*k comparisons at once: Z = 6 keeps the family-wise false-failure rate ~1e-7.
    assert_unbiased(grads, losses.spectral_loss_grad(phi, W), z=6.0)


@pytest.mark.parametrize("alpha", [2.0, 1.5, 1.7])
def test_alpha_batch_is_unbiased(alpha):
    W, k = make_graph("geometric")
    rng = np.random.default_rng(13)
    phi = rng.random((W.shape[0], k))  # non-negative: max(s, 0) is exact (C9)
    I, J = batches(W, rng)
    values = [losses.alpha_loss_batch(phi[i], phi[j], alpha) for i, j in zip(I, J)]
    assert_unbiased(values, -losses.alpha_mi_bound(phi, W, alpha))


def test_minc_batch_and_second_moment_are_unbiased():
    W, k = make_graph("augmentation")
    rng = np.random.default_rng(14)
    phi, phibar = rng.standard_normal((2, W.shape[0], k))
    Cbar = losses.second_moment(rng.standard_normal((W.shape[0], k)), W)
    I, J = batches(W, rng)
    values = [losses.minc_loss_batch(phi[i], phibar[j], Cbar) for i, j in zip(I, J)]
    assert_unbiased(values, losses.minc_loss(phi, W, phibar=phibar, Cbar=Cbar))
    moments = [losses.second_moment_batch(phibar[i]) for i in I]
    assert_unbiased(moments, losses.second_moment(phibar, W), z=6.0)


@pytest.mark.parametrize("include_diagonal", [False, True])
def test_spectral_batch_gradient_matches_finite_differences(include_diagonal):
    rng = np.random.default_rng(20)
    z1, z2 = rng.standard_normal((2, 7, 3))
    g1, g2 = losses.spectral_loss_batch_grad(z1, z2, include_diagonal=include_diagonal)
    f = losses.spectral_loss_batch
    assert_gradient(g1, lambda z: f(z, z2, include_diagonal=include_diagonal), z1)
    assert_gradient(g2, lambda z: f(z1, z, include_diagonal=include_diagonal), z2)


@pytest.mark.parametrize("gha", [True, False])
def test_minc_batch_gradient_matches_finite_differences(gha):
    rng = np.random.default_rng(21)
    z1, z2 = rng.standard_normal((2, 6, 4))
    Cbar = losses.second_moment_batch(rng.standard_normal((6, 4)))
    L = np.tril(Cbar) if gha else Cbar
    stopped = lambda z: float(-2 * np.sum(z * z2) / 6 + 2 * np.sum(z * (z1 @ L.T)) / 6)  # Eq. 20
    g = losses.minc_loss_batch_grad(z1, z2, Cbar, gha=gha)
    assert_gradient(g, stopped, z1)
    np.testing.assert_allclose(
        losses.minc_loss_batch(z1, z2, Cbar, gha=gha), stopped(z1), **tol("float64")
    )


@pytest.mark.parametrize("include_diagonal", [False, True])
@pytest.mark.parametrize(
    "alpha,estimator",
    [
        (2.0, "pairwise"),
        (2.0, "moment"),
        (1.5, "pairwise"),
        (1.5, "moment"),
        (1.25, "moment"),
        (1.7, "pairwise"),
        (3.0, "pairwise"),
    ],
)
def test_alpha_batch_gradient_matches_finite_differences(alpha, estimator, include_diagonal):
    rng = np.random.default_rng(22)
    z1, z2 = rng.random((2, 6, 3)) if estimator == "pairwise" else rng.standard_normal((2, 6, 3))
    kw = {"include_diagonal": include_diagonal, "estimator": estimator}
    g1, g2 = losses.alpha_loss_batch_grad(z1, z2, alpha, **kw)
    assert_gradient(g1, lambda z: losses.alpha_loss_batch(z, z2, alpha, **kw), z1)
    assert_gradient(g2, lambda z: losses.alpha_loss_batch(z1, z, alpha, **kw), z2)


@pytest.mark.parametrize("include_diagonal", [False, True])
@pytest.mark.parametrize("alpha", [2.0, 1.5, 1.25])
def test_moment_estimator_equals_pairwise(alpha, include_diagonal):
    rng = np.random.default_rng(23)
    z1, z2 = rng.standard_normal((2, 9, 3))
    kw = {"include_diagonal": include_diagonal}
    pairwise = losses.alpha_loss_batch(z1, z2, alpha, **kw)
    moment = losses.alpha_loss_batch(z1, z2, alpha, estimator="moment", **kw)
    np.testing.assert_allclose(moment, pairwise, rtol=1e-10, atol=1e-12)
    for a, b in zip(
        losses.alpha_loss_batch_grad(z1, z2, alpha, estimator="moment", **kw),
        losses.alpha_loss_batch_grad(z1, z2, alpha, **kw),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_alpha_two_batch_is_half_spectral_batch_plus_constant():
    rng = np.random.default_rng(24)
    z1, z2 = rng.standard_normal((2, 5, 3))
    np.testing.assert_allclose(
        losses.alpha_loss_batch(z1, z2, 2.0),
        (losses.spectral_loss_batch(z1, z2) + 1) / 2,
        **tol("float64"),
    )
