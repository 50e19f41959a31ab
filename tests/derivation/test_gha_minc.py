"""GHA (Eq. 11) and MINC training to the ordered eigenvectors (Eq. 12-15).

Features are compared in F = D^{1/2} phi coordinates (Eq. 13): column i of F must be
+- sqrt(lambda_i) v_i, so the column cosines with V_k are ~1 and ||f_i||^2 = lambda_i.
"""

from __future__ import annotations

import numpy as np
import pytest

from reference import graphs, losses
from reference.gha import sanger, sanger_step
from reference.graph_train import features_to_eigenvectors, fit
from reference.metrics import column_cosines, subspace_distance

# lr in units of 1 / max_i w_i: plain gradient descent moves row i at the rate lr * w_i.
LR = 0.5
FULL_STEPS = 3000


def learned(W, k, **kwargs):
    w = graphs.marginal(W)
    lr = kwargs.pop("lr", LR) / w.max()
    phi = fit(W, k, lr=lr, **kwargs)
    vals, vecs = graphs.spectral_embedding(W, k)
    return features_to_eigenvectors(phi, W), vals, vecs


def test_sanger_recovers_ordered_principal_components():
    rng = np.random.default_rng(0)
    d, k = 6, 4
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    X = rng.standard_normal((400, d)) * np.array([1.0, 0.8, 0.6, 0.45, 0.3, 0.2]) @ basis.T
    X -= X.mean(axis=0)
    vals, vecs = np.linalg.eigh(X.T @ X / len(X))
    U = vecs[:, ::-1][:, :k]
    M = sanger(X, k, steps=4000, eta=0.5, rng=np.random.default_rng(1))
    np.testing.assert_allclose(column_cosines(M.T, U), np.ones(k), atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(M, axis=1), np.ones(k), atol=1e-10)
    # the fixed point is a fixed point of the step
    np.testing.assert_allclose(sanger_step(U.T, X, 0.5), U.T, atol=1e-12)


def test_sanger_minibatch_recovers_principal_components():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((2000, 4)) * np.array([1.0, 0.7, 0.4, 0.2])
    M = sanger(X, 2, steps=3000, eta=0.05, rng=rng, batch_size=32)
    vals, vecs = np.linalg.eigh(X.T @ X / len(X))
    # Stochastic: constant eta leaves O(sqrt(eta)) jitter, stated 0.99 on |cos|.
    assert np.all(column_cosines(M.T, vecs[:, ::-1][:, :2]) > 0.99)


def test_minc_full_batch_reaches_ordered_eigenvectors(graph):
    W, k = graph
    F, vals, vecs = learned(W, k, method="minc", steps=FULL_STEPS, seed=1)
    assert subspace_distance(F, vecs) < 1e-6
    np.testing.assert_allclose(column_cosines(F, vecs), np.ones(k), atol=1e-9)
    np.testing.assert_allclose(np.sum(F**2, axis=0), vals, atol=1e-9)
    # the first feature is the constant eigenfunction (lambda_1 = 1)
    phi0 = F[:, 0] / np.sqrt(graphs.marginal(W))
    np.testing.assert_allclose(np.abs(phi0), np.ones(W.shape[0]), atol=1e-8)


@pytest.mark.parametrize("seed", [0, 1])
def test_minc_full_batch_with_target_and_aux_ema(seed):
    W, k = graphs.stochastic_block_model((10, 8, 6), 0.7, 0.08, np.random.default_rng(seed)), 3
    # the EMAs slow the approach (measured 1.5e-6 subspace distance at 3000 steps, 2e-8 at 5000)
    F, vals, vecs = learned(W, k, method="minc", steps=6000, tau=0.9, beta=0.8, seed=seed)
    assert subspace_distance(F, vecs) < 1e-6
    np.testing.assert_allclose(column_cosines(F, vecs), np.ones(k), atol=1e-9)
    np.testing.assert_allclose(np.sum(F**2, axis=0), vals, atol=1e-8)


@pytest.mark.parametrize("name_seed", [("sbm", 0), ("augmentation", 1)])
def test_minc_minibatch_with_target_and_aux_ema(name_seed):
    """B = 256 sampled pairs, tau = 0.9, beta = 0.8, constant lr: stochastic, so the stated
    tolerances are those of the noise floor at this lr (measured ~0.05-0.1 subspace distance,
    |cos| > 0.998, norms within 3%), with margin."""
    name, seed = name_seed
    from tests.conftest import make_graph

    W, k = make_graph(name, seed)
    F, vals, vecs = learned(
        W, k, method="minc", steps=3000, lr=0.1, batch_size=256, tau=0.9, beta=0.8, seed=seed
    )
    assert subspace_distance(F, vecs) < 0.25
    assert np.all(column_cosines(F, vecs) > 0.99)
    np.testing.assert_allclose(np.sum(F**2, axis=0), vals, rtol=0.06)


def test_without_gha_only_the_span_is_learned(graph):
    W, k = graph
    F, vals, vecs = learned(W, k, method="minc", gha=False, steps=FULL_STEPS, seed=1)
    assert subspace_distance(F, vecs) < 1e-6  # the span is right ...
    assert column_cosines(F, vecs).min() < 0.9  # ... but the columns are a rotation of V_k
    # F F^T is the minimiser of Eq. 5 (rotation invariant)
    np.testing.assert_allclose(F @ F.T, (vecs * vals) @ vecs.T, atol=1e-9)


def test_noncontrastive_and_spectral_training_reach_the_span(graph):
    W, k = graph
    for method, lr in (("noncontrastive", LR), ("spectral", LR / 2)):  # spectral grad is 2x
        F, vals, vecs = learned(W, k, method=method, lr=lr, steps=FULL_STEPS, seed=2)
        assert subspace_distance(F, vecs) < 1e-6
        np.testing.assert_allclose(F @ F.T, (vecs * vals) @ vecs.T, atol=1e-9)


def test_differentiating_through_lt_c_phi_fails(graph):
    """Gradient descent with (C + diag C) phi (no sg around LT(C) phi): not the eigenvectors."""
    W, k = graph
    w = graphs.marginal(W)
    vals, vecs = graphs.spectral_embedding(W, k)
    phi = 0.1 * np.random.default_rng(1).standard_normal((W.shape[0], k))
    for _ in range(FULL_STEPS):
        C = losses.second_moment(phi, W)
        wrong = -2 * W @ phi + 2 * w[:, None] * (phi @ (C + np.diag(np.diag(C))))
        phi = phi - LR / w.max() * wrong
    F = features_to_eigenvectors(phi, W)
    assert column_cosines(F, vecs).min() < 0.9
    assert np.max(np.abs(np.sum(F**2, axis=0) - vals)) > 0.1 * vals.min()
