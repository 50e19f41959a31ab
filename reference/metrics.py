"""Comparisons of learned features with eigenvectors: sign- and rotation-aware (docs/design.md).

`effective_rank` has a twin, `scaled.metrics.effective_rank` (logged during training); the
subspace and column comparisons are reference-only tools of the tests and notebooks.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def _orthonormal_basis(U: np.ndarray, name: str) -> np.ndarray:
    U = np.asarray(U, dtype=np.float64)
    if U.ndim != 2 or U.shape[1] > U.shape[0]:
        raise ValueError(f"{name} must be (N, k) with k <= N, got shape {U.shape}")
    Q, R = np.linalg.qr(U)
    if np.min(np.abs(np.diag(R))) <= 1e-12 * max(np.max(np.abs(np.diag(R))), 1e-300):
        raise ValueError(f"{name} {U.shape} has (numerically) dependent columns")
    return Q


def _same_shape(U: np.ndarray, V: np.ndarray) -> None:
    if np.shape(U) != np.shape(V):
        raise ValueError(f"U {np.shape(U)} and V {np.shape(V)} must have the same shape")


def principal_angles(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between the column spans of ``U`` and ``V``.

    ``scipy.linalg.subspace_angles`` (sine-based for small angles, accurate near 0).
    """
    _same_shape(U, V)
    Qu, Qv = _orthonormal_basis(U, "U"), _orthonormal_basis(V, "V")
    return np.sort(scipy.linalg.subspace_angles(Qu, Qv))


def subspace_distance(U: np.ndarray, V: np.ndarray) -> float:
    """Projector distance ``|| P_U - P_V ||_F`` of the column spans (rotation and sign invariant).

    Equals ``sqrt(2 sum_i sin^2 theta_i)`` over the principal angles; 0 iff the spans agree.
    """
    _same_shape(U, V)
    Qu, Qv = _orthonormal_basis(U, "U"), _orthonormal_basis(V, "V")
    return float(np.linalg.norm(Qu @ Qu.T - Qv @ Qv.T))


def column_cosines(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Per-column ``|cos|`` between ``U[:, i]`` and ``V[:, i]`` (sign invariant, not rotation)."""
    _same_shape(U, V)
    U = np.asarray(U, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    if U.ndim != 2:
        raise ValueError(f"U and V must be 2-D (N, k), got shape {U.shape}")
    nu, nv = np.linalg.norm(U, axis=0), np.linalg.norm(V, axis=0)
    if np.any(nu == 0) or np.any(nv == 0):
        raise ValueError("column_cosines needs non-zero columns")
    return np.abs(np.sum(U * V, axis=0)) / (nu * nv)


def effective_rank(z: np.ndarray) -> float:
    """Effective rank (Roy & Vetterli 2007): ``exp`` of the entropy of normalised singular values.

    ``k`` for ``k`` equal singular values, 1 for a rank-one (collapsed) ``z`` (B x k, uncentred).
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"z must be 2-D, got shape {z.shape}")
    s = np.linalg.svd(z, compute_uv=False)
    if s.sum() == 0:
        raise ValueError("effective_rank of an all-zero matrix is undefined")
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))
