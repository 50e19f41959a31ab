"""Metrics used by every comparison (rotation / sign invariance) and the EMA (Eq. 14-15)."""

from __future__ import annotations

import numpy as np
from scipy.stats import ortho_group

from reference.ema import ema_update
from reference.metrics import column_cosines, effective_rank, principal_angles, subspace_distance


def test_subspace_distance_is_rotation_and_sign_invariant():
    rng = np.random.default_rng(0)
    U = rng.standard_normal((10, 3))
    R = ortho_group.rvs(3, random_state=1)
    assert subspace_distance(U, U @ R * np.array([-1, 1, 2.0])) < 1e-14
    np.testing.assert_allclose(principal_angles(U, -U @ R), np.zeros(3), atol=1e-7)
    V = rng.standard_normal((10, 3))
    theta = principal_angles(U, V)
    np.testing.assert_allclose(subspace_distance(U, V), np.sqrt(2 * np.sum(np.sin(theta) ** 2)))


def test_column_cosines_are_sign_but_not_rotation_invariant():
    U = np.linalg.qr(np.random.default_rng(2).standard_normal((8, 3)))[0]
    np.testing.assert_allclose(column_cosines(U, -U), np.ones(3))
    R = ortho_group.rvs(3, random_state=3)
    assert column_cosines(U, U @ R).min() < 0.99


def test_effective_rank():
    rng = np.random.default_rng(4)
    assert abs(effective_rank(np.outer(rng.standard_normal(6), rng.standard_normal(4))) - 1) < 1e-6
    np.testing.assert_allclose(effective_rank(np.eye(5)), 5.0)


def test_ema_update():
    old, new = np.array([1.0, 2.0]), np.array([3.0, 6.0])
    np.testing.assert_allclose(ema_update(old, new, 0.8), 0.8 * old + 0.2 * new)
    np.testing.assert_allclose(ema_update(old, new, 0.0), new)
