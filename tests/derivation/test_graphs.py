"""Graph generators (Eq. 2): valid joints, connected, positive distinct top-k spectrum."""

from __future__ import annotations

import numpy as np
import pytest

from reference import graphs
from reference.tolerances import tol
from tests.conftest import GRAPH_CASES, make_graph


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", GRAPH_CASES)
def test_graph_cases_have_positive_distinct_top_k(name, seed):
    W, k = make_graph(name, seed)
    graphs.validate_joint(W)
    vals, _ = graphs.spectral_embedding(W, k)
    assert vals[-1] > 0.05
    assert graphs.spectral_gap(W, k) > 1e-3
    np.testing.assert_allclose(vals[0], 1.0, **tol("float64"))


def test_cycle_has_a_gap_after_odd_k_only():
    W = graphs.cycle_graph(12)
    assert graphs.spectral_gap(W, 3) < 1e-12  # lambda_2 == lambda_3
    vals, _ = graphs.spectral_embedding(W, 4)
    assert vals[2] - vals[3] > 0.1  # but the top-3 span is separated


def test_top_eigenvector_is_sqrt_marginal(graph):
    W, k = graph
    w = graphs.marginal(W)
    A = graphs.normalized_adjacency(W)
    np.testing.assert_allclose(A @ np.sqrt(w), np.sqrt(w), **tol("float64"))
    vals, vecs = graphs.spectral_embedding(W, k)
    assert np.all(np.diff(vals) <= 0)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(k), atol=1e-12)
    np.testing.assert_allclose(A @ vecs, vecs * vals, atol=1e-12)


def test_lazy_term_makes_spectrum_non_negative():
    rng = np.random.default_rng(3)
    for W in (graphs.grid_graph(3, 5), graphs.random_geometric_graph(20, 0.4, rng)):
        assert np.linalg.eigvalsh(graphs.normalized_adjacency(W)).min() > -1e-12
    A_plain = graphs.normalized_adjacency(graphs.cycle_graph(8, lazy=False))
    assert np.linalg.eigvalsh(A_plain).min() < -0.99  # a bipartite cycle has -1 without it


def test_augmentation_graph_is_two_augmentations_of_one_sample():
    rng = np.random.default_rng(0)
    W, points = graphs.augmentation_graph(rng, sizes=(4, 3), aug_std=0.7)
    M = points.shape[0]
    assert W.shape == (M, M) and points.shape == (M, 2)
    # Explicit double loop over sources: W_ij = sum_s p(s) p(i|s) p(j|s).
    kernel = np.exp(-np.sum((points[:, None] - points[None]) ** 2, -1) / (2 * 0.7**2))
    p_given = kernel / kernel.sum(axis=1, keepdims=True)  # p_given[s, i] = p(i | x_s)
    expected = np.zeros((M, M))
    for s in range(M):
        for i in range(M):
            for j in range(M):
                expected[i, j] += p_given[s, i] * p_given[s, j] / M
    np.testing.assert_allclose(W, expected, **tol("float64"))
    assert np.linalg.eigvalsh(W).min() > -1e-15  # P^T diag(p) P is PSD


def test_sbm_is_reproducible_from_rng():
    a = graphs.stochastic_block_model((5, 4), 0.8, 0.2, np.random.default_rng(7))
    b = graphs.stochastic_block_model((5, 4), 0.8, 0.2, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_sample_pairs_follows_W():
    """Positive pairs drawn by the reference (Eq. 2) have frequencies W_ij: within 4 binomial sd."""
    from reference.graph_train import sample_pairs

    W = graphs.grid_graph(4, 6)
    n = 200_000
    i, j = sample_pairs(W, n, np.random.default_rng(0))
    counts = np.zeros_like(W)
    np.add.at(counts, (i, j), 1.0)
    assert np.abs(counts / n - W).max() < 4 * np.sqrt(W.max() / n)
    assert counts[W == 0].sum() == 0  # never a pair the graph does not have
