"""Bad input raises a ValueError whose message names the problem."""

from __future__ import annotations

import numpy as np
import pytest

from reference import graphs, losses
from reference.ema import ema_update
from reference.graph_train import fit

W_OK = graphs.cycle_graph(5)
PHI = np.ones((5, 2))


@pytest.mark.parametrize(
    "W,match",
    [
        (np.ones((3, 4)) / 12, "square"),
        (np.ones(9) / 9, "square"),
        (np.array([[0.5, 0.2], [0.1, 0.2]]), "symmetric"),
        (np.array([[0.6, -0.1], [-0.1, 0.6]]), "non-negative"),
        (np.ones((3, 3)) / 8, "sum to 1"),
        (np.array([[np.nan, 0.5], [0.5, 0.0]]), "NaN"),
    ],
)
def test_validate_joint(W, match):
    with pytest.raises(ValueError, match=match):
        graphs.validate_joint(W)
    with pytest.raises(ValueError, match=match):
        losses.spectral_loss(np.ones((W.shape[0], 1)) if W.ndim == 2 else np.ones((3, 1)), W)


def test_sum_tolerance_is_1e_8():
    W = W_OK.copy()
    graphs.validate_joint(W * (1 + 1e-10))
    with pytest.raises(ValueError, match="sum to 1"):
        graphs.validate_joint(W * (1 + 1e-6))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: losses.spectral_loss(np.ones(5), W_OK), r"2-D \(N, k\).*\(5,\)"),
        (lambda: losses.spectral_loss(np.ones((4, 2)), W_OK), r"4 rows but W is \(5, 5\)"),
        (lambda: losses.spectral_loss(np.ones((5, 6)), W_OK), r"k=6.*N=5"),
        (lambda: losses.noncontrastive_loss_grad(np.full((5, 2), np.nan), W_OK), "NaN"),
        (lambda: losses.minc_loss(PHI, W_OK, phibar=np.ones((5, 3))), r"phibar"),
        (lambda: losses.minc_loss(PHI, W_OK, Cbar=np.eye(3)), r"Cbar must be \(2, 2\)"),
        (
            lambda: losses.spectral_loss_batch(np.ones((4, 2)), np.ones((4, 3))),
            r"\(4, 2\).*\(4, 3\)",
        ),
        (lambda: losses.spectral_loss_batch(np.ones((1, 2)), np.ones((1, 2))), "B = 1"),
        (lambda: losses.alpha_loss_batch(np.ones((1, 2)), np.ones((1, 2)), 2.0), "B = 1"),
        (lambda: losses.spectral_loss_batch(np.ones(4), np.ones(4)), r"2-D \(B, k\)"),
        (lambda: losses.minc_loss_batch(np.ones((3, 2)), np.ones((3, 2)), np.eye(3)), "Cbar"),
        (lambda: losses.alpha_mi_bound(PHI, W_OK, 1.0), "alpha must be > 1"),
        (lambda: losses.alpha_mi_bound_grad(PHI, W_OK, 0.5), "alpha must be > 1"),
        (lambda: losses.alpha_loss_batch(np.ones((3, 2)), np.ones((3, 2)), 1.0), "m = alpha"),
        (
            lambda: losses.alpha_loss_batch(
                np.ones((3, 2)), np.ones((3, 2)), 1.7, estimator="moment"
            ),
            "integer m",
        ),
        (lambda: losses.alpha_loss_batch(PHI, PHI, 2.0, estimator="tensor"), "estimator"),
        (lambda: losses.lower_triangular(np.ones((2, 3))), "square"),
        (lambda: graphs.spectral_embedding(W_OK, 6), r"k must be .* N=5"),
        (lambda: ema_update(np.ones(2), np.ones(3), 0.5), "equal shapes"),
        (lambda: ema_update(np.ones(2), np.ones(2), 1.5), r"\[0, 1\]"),
        (lambda: fit(W_OK, 2, method="simclr", steps=1, lr=1.0), "method"),
        (lambda: fit(W_OK, 2, method="spectral", steps=1, lr=1.0, tau=0.5), "no target"),
        (lambda: fit(W_OK, 2, steps=1, lr=1.0, phi0=np.ones((4, 2))), "phi0"),
        (lambda: graphs.cycle_graph(2), "n >= 3"),
    ],
)
def test_bad_input_names_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()
