"""Stationary points of the spectral loss as power-iteration fixed points (Eq. 10)."""

from __future__ import annotations

import numpy as np

from reference.graphs import marginal
from reference.losses import _features, second_moment


def orthogonal_iteration(A: np.ndarray, k: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Orthogonal (subspace) iteration ``Q <- qr(A Q)`` from a random start (Eq. 10).

    Converges to the span of the top-k eigenvectors of a symmetric ``A`` whose top-k eigenvalues
    dominate in absolute value, at the rate ``|lambda_{k+1} / lambda_k|`` per step.
    """
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be square, got shape {A.shape}")
    if not 1 <= k <= A.shape[0]:
        raise ValueError(f"k must be in [1, N={A.shape[0]}], got {k}")
    Q, _ = np.linalg.qr(rng.standard_normal((A.shape[0], k)))
    for _ in range(steps):
        Q, _ = np.linalg.qr(A @ Q)
    return Q


def power_iteration_step(phi: np.ndarray, W: np.ndarray) -> np.ndarray:
    """One step of normalised power iteration ``phi <- T phi C^{-1}`` (Eq. 10).

    ``T = D^{-1} W`` is the augmentation Markov operator and ``C = phi^T D phi`` (Eq. 8). In
    ``F = D^{1/2} phi`` coordinates this is ``F <- A F (F^T F)^{-1}``. Stationary points of
    (Eq. 3), ``A F = F C``, are exactly its fixed points.
    """
    phi, W = _features(phi, W)
    w = marginal(W)
    C = second_moment(phi, W)
    Tphi = (W @ phi) / w[:, None]
    return np.linalg.solve(C, Tphi.T).T  # T phi C^{-1}, C symmetric


def run_power_iteration(
    W: np.ndarray,
    k: int,
    *,
    steps: int,
    rng: np.random.Generator,
    damping: float = 0.5,
    phi0: np.ndarray | None = None,
) -> np.ndarray:
    """Iterate (Eq. 10) to a fixed point: ``phi <- (1 - damping) phi + damping T phi C^{-1}``.

    The undamped map (``damping = 1``) moves the *span* like orthogonal iteration but, inside the
    span, flips the scale: for ``k = 1`` and ``F = c v`` it maps ``c -> lambda / c``, a 2-cycle
    unless ``c^2 = lambda``. ``damping = 1/2`` turns that into ``c -> (c + lambda / c) / 2``,
    Newton's iteration for ``sqrt(lambda)``, which converges; the fixed points are unchanged.
    """
    if not 0.0 < damping <= 1.0:
        raise ValueError(f"damping must be in (0, 1], got {damping}")
    W = np.asarray(W, dtype=np.float64)
    phi = rng.standard_normal((W.shape[0], k)) if phi0 is None else np.array(phi0, float)
    phi, W = _features(phi, W)
    for _ in range(steps):
        phi = (1.0 - damping) * phi + damping * power_iteration_step(phi, W)
    return phi
