"""Gradient descent on a free N x k embedding table ``phi`` of a graph (Eq. 3, 9, 12, 14, 15).

Twin: `scaled.graph_train` (same function names; `fit` follows the same trajectory in float64).

A free table is the most expressive "network": every node has its own row, so the learned
features can be compared exactly with the spectrum of ``A``. The fixed point is stated in terms of
``F = D^{1/2} phi`` (Eq. 13): compare ``sqrt(w)[:, None] * phi`` column by column with
``sqrt(lambda_i) v_i`` (up to sign).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from reference.ema import ema_update
from reference.graphs import marginal, validate_joint
from reference.losses import (
    minc_loss_batch_grad,
    minc_loss_grad,
    noncontrastive_loss_grad,
    second_moment,
    second_moment_batch,
    spectral_loss_batch_grad,
    spectral_loss_grad,
)

METHODS = ("spectral", "noncontrastive", "minc")


def sample_pairs(
    W: np.ndarray, batch_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``batch_size`` pairs ``(i_b, j_b)``, drawn independently with probability ``W_ij``."""
    N = W.shape[0]
    flat = rng.choice(N * N, size=batch_size, p=W.ravel() / W.sum())
    return flat // N, flat % N


def _scatter(N: int, rows: np.ndarray, grads: np.ndarray) -> np.ndarray:
    out = np.zeros((N, grads.shape[1]))
    np.add.at(out, rows, grads)
    return out


def fit(
    W: np.ndarray,
    k: int,
    *,
    method: str = "minc",
    steps: int,
    lr: float,
    batch_size: int | None = None,
    tau: float = 0.0,
    beta: float = 0.0,
    gha: bool = True,
    seed: int = 0,
    phi0: np.ndarray | None = None,
    callback: Callable[[int, np.ndarray], None] | None = None,
    init_scale: float = 0.1,
) -> np.ndarray:
    """Train ``phi`` (N x k) by plain gradient descent ``phi <- phi - lr * g``; returns ``phi``.

    Parameters
    ----------
    method
        ``"spectral"`` (Eq. 3 / Eq. 19), ``"noncontrastive"`` (Eq. 9: no target network, no EMA,
        so ``tau`` and ``beta`` must be 0) or ``"minc"`` (Eq. 12 / Eq. 20).
    batch_size
        ``None``: exact expectations through the graph-form gradients. Otherwise each step draws
        ``batch_size`` positive pairs ``(i, j)`` with probability ``W_ij``; the per-row gradients
        of the minibatch loss are added into the rows ``i`` (and ``j``) of the table.
        For ``minc``/``noncontrastive`` the loss is symmetrised over the two views: half with
        ``z1 = phi[i]`` against targets ``phibar[j]``, half with ``z1 = phi[j]`` against
        ``phibar[i]``.
    tau
        Target EMA (Eq. 14): ``phibar <- tau phibar + (1 - tau) phi`` after each step;
        ``tau = 0`` means ``phibar = phi``.
    beta
        Auxiliary EMA of the second moment (Eq. 15). ``C_batch`` comes from the target rows of
        both views (C4; exact ``phibar^T D phibar`` in full batch); ``Cbar`` starts at the first
        ``C_batch`` (C11) and is updated before it is used in each step.
    gha
        MINC only: ``LT(Cbar)`` (True) or ``Cbar`` (False).
    seed, phi0, init_scale
        ``phi0`` if given, else ``init_scale * N(0, 1)`` from ``np.random.default_rng(seed)``; the
        same generator samples the minibatches.
    callback
        Called as ``callback(step, phi)`` after every step.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    W = np.asarray(W, dtype=np.float64)
    validate_joint(W)
    N = W.shape[0]
    if not (isinstance(k, int | np.integer) and 1 <= k <= N):
        raise ValueError(f"k must be an integer in [1, N={N}], got {k!r}")
    if steps < 0 or lr <= 0:
        raise ValueError(f"need steps >= 0 and lr > 0, got steps={steps}, lr={lr}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be None or >= 1, got {batch_size}")
    if not (0.0 <= tau < 1.0 and 0.0 <= beta < 1.0):
        raise ValueError(f"tau and beta must be in [0, 1), got tau={tau}, beta={beta}")
    if method != "minc" and (tau != 0.0 or beta != 0.0):
        raise ValueError(
            f"method={method!r} has no target network or EMA (tau={tau}, beta={beta}); "
            "use method='minc' (gha=False for the non-contrastive update with EMAs)"
        )
    if method == "spectral" and batch_size == 1:
        raise ValueError("the unbiased pairwise spectral estimator needs batch_size >= 2")
    use_lt = gha if method == "minc" else False
    rng = np.random.default_rng(seed)
    if phi0 is None:
        phi = init_scale * rng.standard_normal((N, k))
    else:
        phi = np.array(phi0, dtype=np.float64)
        if phi.shape != (N, k):
            raise ValueError(f"phi0 must have shape ({N}, {k}), got {phi.shape}")
    phibar = phi.copy()
    Cbar = None
    for step in range(steps):
        if batch_size is None:
            if method == "spectral":
                g = spectral_loss_grad(phi, W)
            elif method == "noncontrastive":
                g = noncontrastive_loss_grad(phi, W)
            else:
                C_new = second_moment(phibar, W)
                Cbar = C_new if Cbar is None else ema_update(Cbar, C_new, beta)
                g = minc_loss_grad(phi, W, phibar=phibar, Cbar=Cbar, gha=use_lt)
        else:
            i, j = sample_pairs(W, batch_size, rng)
            if method == "spectral":
                g1, g2 = spectral_loss_batch_grad(phi[i], phi[j])
                g = _scatter(N, i, g1) + _scatter(N, j, g2)
            else:
                C_new = second_moment_batch(np.concatenate([phibar[i], phibar[j]]))
                Cbar = C_new if Cbar is None else ema_update(Cbar, C_new, beta)
                g_i = minc_loss_batch_grad(phi[i], phibar[j], Cbar, gha=use_lt)
                g_j = minc_loss_batch_grad(phi[j], phibar[i], Cbar, gha=use_lt)
                g = 0.5 * (_scatter(N, i, g_i) + _scatter(N, j, g_j))
        phi = phi - lr * g
        phibar = phi.copy() if tau == 0.0 else ema_update(phibar, phi, tau)
        if callback is not None:
            callback(step, phi)
    return phi


def features_to_eigenvectors(phi: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``F = D^{1/2} phi`` (Eq. 13); MINC fixed point: ``F[:, i] = +- sqrt(lambda_i) v_i``."""
    return np.sqrt(marginal(W))[:, None] * np.asarray(phi, dtype=np.float64)
