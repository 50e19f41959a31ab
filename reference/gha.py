"""The Generalized Hebbian Algorithm (Sanger 1989), the model of the MINC update (Eq. 11)."""

from __future__ import annotations

import numpy as np

from reference.losses import lower_triangular


def sanger_step(M: np.ndarray, x_batch: np.ndarray, eta: float) -> np.ndarray:
    """One step of Sanger's rule for ``y = M x`` (Eq. 11), averaged over a batch.

    ``M <- M + eta (E[y x^T] - LT(E[y y^T]) M)``, with ``M`` k x d and ``x_batch`` B x d; the
    rows of ``M`` converge to the top-k eigenvectors of ``E[x x^T]``, in order.
    """
    M = np.asarray(M, dtype=np.float64)
    X = np.asarray(x_batch, dtype=np.float64)
    if M.ndim != 2 or X.ndim != 2 or M.shape[1] != X.shape[1]:
        raise ValueError(f"need M (k, d) and x_batch (B, d), got {M.shape} and {X.shape}")
    Y = X @ M.T  # B x k, rows y_b = M x_b
    B = X.shape[0]
    return M + eta * (Y.T @ X / B - lower_triangular(Y.T @ Y / B) @ M)


def sanger(
    X: np.ndarray,
    k: int,
    steps: int,
    eta: float,
    rng: np.random.Generator,
    *,
    batch_size: int | None = None,
) -> np.ndarray:
    """Run Sanger's rule on the rows of ``X`` (n x d) from a small random ``M`` (k x d).

    ``batch_size=None`` uses all rows every step (the exact expectation, deterministic given the
    start); otherwise ``batch_size`` rows are sampled with replacement each step. Returns ``M``
    whose rows approach ``+- u_1, ..., u_k``, the top eigenvectors of ``X^T X / n`` (the principal
    components when ``X`` is centred), in order of decreasing eigenvalue.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or not 1 <= k <= X.shape[1]:
        raise ValueError(f"need X (n, d) and 1 <= k <= d, got X {X.shape}, k={k}")
    M = 0.01 * rng.standard_normal((k, X.shape[1]))
    for _ in range(steps):
        batch = X if batch_size is None else X[rng.integers(0, X.shape[0], size=batch_size)]
        M = sanger_step(M, batch, eta)
    return M
