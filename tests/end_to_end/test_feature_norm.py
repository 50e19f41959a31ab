"""Eq. 23 (choice C12): normalised features have norm sqrt(mu) and a second moment of trace mu."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scaled.losses import minc_loss_batch, normalized_features, second_moment_batch
from scaled.options import parse_config
from tests.conftest import tol


@pytest.mark.parametrize("mu", [0.5, 1.0, 16.0])
def test_normalized_features_norm_and_trace(mu: float):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(33, 8, generator=g, dtype=torch.float64) * 5.0
    phi = normalized_features(z, mu)
    np.testing.assert_allclose(phi.norm(dim=1).numpy(), np.full(33, np.sqrt(mu)), **tol("float32"))
    np.testing.assert_allclose(float(torch.trace(second_moment_batch(phi))), mu, **tol("float32"))


def test_normalized_features_pass_gradients_and_ignore_scale():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(16, 4, generator=g, requires_grad=True)
    phi = normalized_features(z, 1.0)
    minc_loss_batch(phi, phi.detach().flip(0), second_moment_batch(phi.detach())).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # A scale-invariant map: the gradient is orthogonal to each row (the radial direction).
    radial = (z.grad * z.detach()).sum(dim=1)
    np.testing.assert_allclose(radial.numpy(), np.zeros(16), atol=1e-5)


def test_feature_norm_option_reaches_the_config():
    assert parse_config(["--preset", "demo"]).feature_norm == 4.0
    assert parse_config(["--preset", "demo", "--feature-norm", "0"]).feature_norm == 0.0
