"""Spectral, non-contrastive, MINC and alpha losses, exact, with analytic gradients.

Two forms of each loss:

- **graph form** (``phi, W``): ``phi`` is the N x k table whose row ``i`` is ``phi(i)``, ``W`` the
  joint of positive pairs (Eq. 2). Expectations are exact sums over the graph:
  ``E_{x,x+}[g] = sum_ij W_ij g(i, j)`` and ``E_{x,x'}[g] = sum_ij w_i w_j g(i, j)``.
- **minibatch form** (``z1, z2``): B x k rows, row ``b`` of ``z1`` and of ``z2`` are the two views
  of sample ``b`` (Eq. 19-21).

Every loss returns a Python float; every ``*_grad`` returns the gradient that automatic
differentiation would give **with the stated stop-gradients** (``sg``), as ndarray(s) of the
input's shape. Every public function here has a PyTorch twin of the same name in
``scaled/losses.py`` (docs/design.md); private helpers start with an underscore.
"""

from __future__ import annotations

import numpy as np

from reference.graphs import validate_joint

# An exponent m = alpha / (alpha - 1) this close to an integer is treated as that integer.
_INTEGER_ATOL = 1e-9


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _features(phi: np.ndarray, W: np.ndarray, name: str = "phi") -> tuple[np.ndarray, np.ndarray]:
    """Validate a graph-form pair (N x k table, N x N joint) and return float64 copies."""
    W = np.asarray(W, dtype=np.float64)
    validate_joint(W)
    phi = np.asarray(phi, dtype=np.float64)
    if phi.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, k), got shape {phi.shape}")
    N, k = phi.shape
    if N != W.shape[0]:
        raise ValueError(f"{name} has {N} rows but W is {W.shape}: need one row per node")
    if k < 1 or k > N:
        raise ValueError(f"{name} has k={k} columns; need 1 <= k <= N={N} (shape {phi.shape})")
    if not np.all(np.isfinite(phi)):
        raise ValueError(f"{name} contains NaN or inf")
    return phi, W


def _batch(z: np.ndarray, name: str) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"{name} must be 2-D (B, k), got shape {z.shape}")
    if z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"{name} must have B >= 1 rows and k >= 1 columns, got {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{name} contains NaN or inf")
    return z


def _pair(z1: np.ndarray, z2: np.ndarray, names: tuple[str, str] = ("z1", "z2")):
    z1, z2 = _batch(z1, names[0]), _batch(z2, names[1])
    if z1.shape != z2.shape:
        raise ValueError(f"{names[0]} {z1.shape} and {names[1]} {z2.shape} must have equal shapes")
    return z1, z2


def _square_k(Cbar: np.ndarray, k: int) -> np.ndarray:
    Cbar = np.asarray(Cbar, dtype=np.float64)
    if Cbar.shape != (k, k):
        raise ValueError(f"Cbar must be ({k}, {k}) to match k={k} features, got {Cbar.shape}")
    return Cbar


def _off_diagonal_count(B: int, include_diagonal: bool) -> int:
    if include_diagonal:
        return B * B
    if B < 2:
        raise ValueError(
            "B = 1 leaves no b != c pairs for the unbiased estimator; "
            "use B >= 2 or include_diagonal=True"
        )
    return B * (B - 1)


def _exponent(alpha: float) -> tuple[float, bool]:
    """``m = alpha / (alpha - 1)`` of (Eq. 18) and whether it is an integer."""
    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha <= 1:
        raise ValueError(
            f"alpha must be > 1 (got {alpha}): the parameterisation r^(alpha-1) = phi^T phi' "
            "of Eq. 18 needs the exponent m = alpha/(alpha-1) > 1"
        )
    m = alpha / (alpha - 1.0)
    r = round(m)
    if abs(m - r) < _INTEGER_ATOL:
        return float(r), True
    return m, False


def _power(s: np.ndarray, m: float, integer: bool) -> np.ndarray:
    """``s^m`` for integer ``m``; ``max(s, 0)^m`` otherwise (C9)."""
    return s**m if integer else np.maximum(s, 0.0) ** m


def _dpower(s: np.ndarray, m: float, integer: bool) -> np.ndarray:
    """Derivative of ``_power`` with respect to ``s`` (``m > 1``, so it is continuous at 0)."""
    return m * s ** (m - 1) if integer else m * np.maximum(s, 0.0) ** (m - 1)


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


def second_moment(phi: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``C = E_x[phi(x) phi(x)^T] = phi^T D phi`` (Eq. 8), k x k."""
    phi, W = _features(phi, W)
    w = W.sum(axis=1)
    C = phi.T @ (w[:, None] * phi)
    return (C + C.T) / 2.0


def second_moment_batch(z: np.ndarray) -> np.ndarray:
    """Batch second moment ``C_batch = z^T z / B`` (Eq. 15), k x k; diagonal terms included."""
    z = _batch(z, "z")
    C = z.T @ z / z.shape[0]
    return (C + C.T) / 2.0


def lower_triangular(C: np.ndarray) -> np.ndarray:
    """``LT(C)``: lower triangle of ``C`` including the diagonal (Eq. 11, 12)."""
    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"LT needs a square k x k matrix, got shape {C.shape}")
    return np.tril(C)


# --------------------------------------------------------------------------------------------
# graph form
# --------------------------------------------------------------------------------------------


def spectral_loss(phi: np.ndarray, W: np.ndarray) -> float:
    """Spectral contrastive loss, graph form (Eq. 3): ``-2 tr(phi^T W phi) + ||phi^T D phi||_F^2``.

    Exact expectation; the ``x = x'`` terms are part of ``E_{x,x'}`` (nothing excluded).
    """
    phi, W = _features(phi, W)
    C = second_moment(phi, W)
    return float(-2.0 * np.sum(phi * (W @ phi)) + np.sum(C * C))


def spectral_loss_grad(phi: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Gradient of (Eq. 3): ``-4 W phi + 4 D phi C`` (Eq. 4)."""
    phi, W = _features(phi, W)
    w = W.sum(axis=1)
    C = second_moment(phi, W)
    return -4.0 * (W @ phi) + 4.0 * w[:, None] * (phi @ C)


def noncontrastive_loss(phi: np.ndarray, W: np.ndarray) -> float:
    """Non-contrastive loss (Eq. 9): ``-2 tr(phi^T W sg(phi)) + tr(phi^T D phi sg(C))``.

    Its value equals ``spectral_loss`` (Eq. 8); its gradient is half of (Eq. 4).
    """
    phi, W = _features(phi, W)
    w = W.sum(axis=1)
    C = second_moment(phi, W)
    return float(-2.0 * np.sum(phi * (W @ phi)) + np.sum((phi.T @ (w[:, None] * phi)) * C))


def noncontrastive_loss_grad(phi: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Gradient of (Eq. 9) with ``phi(x+)`` and ``C`` stopped: ``-2 W phi + 2 D phi C``."""
    phi, W = _features(phi, W)
    w = W.sum(axis=1)
    C = second_moment(phi, W)
    return -2.0 * (W @ phi) + 2.0 * w[:, None] * (phi @ C)


def _minc_parts(phi, W, phibar, Cbar, gha):
    phi, W = _features(phi, W)
    phibar = phi if phibar is None else _features(phibar, W, name="phibar")[0]
    if phibar.shape != phi.shape:
        raise ValueError(f"phibar {phibar.shape} must have the shape of phi {phi.shape}")
    if Cbar is None:
        Cbar = second_moment(phi, W)
    Cbar = _square_k(Cbar, phi.shape[1])
    L = lower_triangular(Cbar) if gha else Cbar
    return phi, W, phibar, L


def minc_loss(
    phi: np.ndarray,
    W: np.ndarray,
    *,
    phibar: np.ndarray | None = None,
    Cbar: np.ndarray | None = None,
    gha: bool = True,
) -> float:
    """MINC loss, graph form (Eq. 12).

    ``L = -2 E[phi(x)^T sg(phibar(x+) - LT(Cbar) phi(x))]
        = -2 tr(phi^T W phibar) + 2 tr(phi^T D phi LT(Cbar)^T)``.

    Defaults ``phibar = phi``, ``Cbar = C = phi^T D phi`` (no target network, no EMA);
    ``gha=False`` replaces ``LT(Cbar)`` by ``Cbar``. Exact expectation.
    """
    phi, W, phibar, L = _minc_parts(phi, W, phibar, Cbar, gha)
    w = W.sum(axis=1)
    return float(-2.0 * np.sum(phi * (W @ phibar)) + 2.0 * np.sum(w[:, None] * phi * (phi @ L.T)))


def minc_loss_grad(
    phi: np.ndarray,
    W: np.ndarray,
    *,
    phibar: np.ndarray | None = None,
    Cbar: np.ndarray | None = None,
    gha: bool = True,
) -> np.ndarray:
    """Gradient of (Eq. 12), the whole ``sg(...)`` stopped: ``-2 W phibar + 2 D phi LT(Cbar)^T``.

    Rows: ``-2 E[phibar(x+) | x] w(x) + 2 w(x) LT(Cbar) phi(x)``, the Sanger analogue (Eq. 11).
    """
    phi, W, phibar, L = _minc_parts(phi, W, phibar, Cbar, gha)
    w = W.sum(axis=1)
    return -2.0 * (W @ phibar) + 2.0 * w[:, None] * (phi @ L.T)


def _pairwise_scores(phi: np.ndarray, W: np.ndarray):
    """``s_ij = phi(i)^T phi(j)`` with the joint ``W`` and the product of marginals ``w w^T``."""
    w = W.sum(axis=1)
    return phi @ phi.T, np.outer(w, w)


def chi2_mi_bound(phi: np.ndarray, W: np.ndarray) -> float:
    """Variational chi^2 mutual-information bound (Eq. 6-7), from the generic formula.

    ``E_{x,x+}[t] - E_{x,x'}[f*(t)]`` with critic ``t = 2 (s - 1)``, ``s = phi(x)^T phi(x')``
    and the conjugate of ``f(u) = (u - 1)^2``, ``f*(t) = t + t^2 / 4``. Exact double sums over
    the graph (no shortcut through ``C``); it equals ``-spectral_loss - 1`` (tested).
    """
    phi, W = _features(phi, W)
    S, P = _pairwise_scores(phi, W)
    t = 2.0 * (S - 1.0)
    f_star = t + t**2 / 4.0
    return float(np.sum(W * t) - np.sum(P * f_star))


def chi2_mi_bound_grad(phi: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Gradient of ``chi2_mi_bound`` by the chain rule through every ``s_ij``.

    ``dJ/ds_ij = 2 W_ij - 2 w_i w_j s_ij`` (since ``f*'(t) = 1 + t/2 = s``), and
    ``dJ/dphi = (G + G^T) phi``.
    """
    phi, W = _features(phi, W)
    S, P = _pairwise_scores(phi, W)
    G = 2.0 * W - 2.0 * P * S
    return (G + G.T) @ phi


def alpha_mi_bound(phi: np.ndarray, W: np.ndarray, alpha: float) -> float:
    """alpha-divergence bound, graph form (Eq. 18), ``alpha > 1``.

    ``J = E_{x,x+}[(s - 1)/(alpha - 1)] - E_{x,x'}[(s^m - 1)/alpha]``, ``m = alpha/(alpha-1)``,
    ``s = phi(x)^T phi(x')``. For non-integer ``m`` the power is of ``max(s, 0)`` (C9). Exact
    double sums (all pairs, nothing excluded). ``alpha = 2`` gives ``-(spectral_loss + 1) / 2``.
    """
    m, integer = _exponent(alpha)
    phi, W = _features(phi, W)
    S, P = _pairwise_scores(phi, W)
    alpha = float(alpha)
    positive = np.sum(W * (S - 1.0)) / (alpha - 1.0)
    negative = np.sum(P * (_power(S, m, integer) - 1.0)) / alpha
    return float(positive - negative)


def alpha_mi_bound_grad(phi: np.ndarray, W: np.ndarray, alpha: float) -> np.ndarray:
    """Gradient of ``alpha_mi_bound``: ``(G + G^T) phi``.

    ``G_ij = W_ij / (alpha - 1) - w_i w_j m s_ij^(m-1) / alpha``.
    """
    m, integer = _exponent(alpha)
    phi, W = _features(phi, W)
    S, P = _pairwise_scores(phi, W)
    alpha = float(alpha)
    G = W / (alpha - 1.0) - P * _dpower(S, m, integer) / alpha
    return (G + G.T) @ phi


# --------------------------------------------------------------------------------------------
# minibatch form
# --------------------------------------------------------------------------------------------


def spectral_loss_batch(z1: np.ndarray, z2: np.ndarray, *, include_diagonal: bool = False) -> float:
    """Pairwise spectral loss on B positive pairs (Eq. 19).

    ``-2/B sum_b z1_b^T z2_b + 1/(B(B-1)) sum_{b != c} (z1_b^T z2_c)^2``: diagonal excluded,
    unbiased for (Eq. 1) (C2). ``include_diagonal=True``: sum over all ``b, c`` divided by
    ``B^2`` (biased). B = 1 without the diagonal raises ValueError.
    """
    z1, z2 = _pair(z1, z2)
    B = z1.shape[0]
    n = _off_diagonal_count(B, include_diagonal)
    S = z1 @ z2.T
    sq = S**2
    if not include_diagonal:
        np.fill_diagonal(sq, 0.0)
    return float(-2.0 * np.trace(S) / B + sq.sum() / n)


def spectral_loss_batch_grad(
    z1: np.ndarray, z2: np.ndarray, *, include_diagonal: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients ``(dL/dz1, dL/dz2)`` of (Eq. 19); nothing is stopped."""
    z1, z2 = _pair(z1, z2)
    B = z1.shape[0]
    n = _off_diagonal_count(B, include_diagonal)
    S = z1 @ z2.T
    G = 2.0 * S / n
    if not include_diagonal:
        np.fill_diagonal(G, 0.0)
    G -= 2.0 * np.eye(B) / B
    return G @ z2, G.T @ z1


def minc_loss_batch(
    z1: np.ndarray, z2_target: np.ndarray, Cbar: np.ndarray, *, gha: bool = True
) -> float:
    """MINC minibatch loss (Eq. 20): ``-2/B sum_b z1_b^T sg(z2bar_b - LT(Cbar) z1_b)``.

    ``z2_target`` are target-network features of the second views, ``Cbar`` the EMA second
    moment (Eq. 15); both are stop-gradient. Per-sample terms only (no pairs, no diagonal
    question). ``gha=False`` uses ``Cbar`` in place of ``LT(Cbar)``.
    """
    z1, z2 = _pair(z1, z2_target, ("z1", "z2_target"))
    B, k = z1.shape
    Cbar = _square_k(Cbar, k)
    L = lower_triangular(Cbar) if gha else Cbar
    return float(-2.0 * np.sum(z1 * z2) / B + 2.0 * np.sum(z1 * (z1 @ L.T)) / B)


def minc_loss_batch_grad(
    z1: np.ndarray, z2_target: np.ndarray, Cbar: np.ndarray, *, gha: bool = True
) -> np.ndarray:
    """Gradient of (Eq. 20) in ``z1`` only: ``(-2 z2bar + 2 z1 LT(Cbar)^T) / B``."""
    z1, z2 = _pair(z1, z2_target, ("z1", "z2_target"))
    B, k = z1.shape
    Cbar = _square_k(Cbar, k)
    L = lower_triangular(Cbar) if gha else Cbar
    return (-2.0 * z2 + 2.0 * z1 @ L.T) / B


def _moment_tensor(z: np.ndarray, m: int) -> np.ndarray:
    """``S_m = sum_b z_b^{(x)m}`` (Eq. 21), a k^m tensor."""
    B, k = z.shape
    T = z
    for _ in range(m - 1):
        T = (T[:, :, None] * z[:, None, :]).reshape(B, -1)
    return T.sum(axis=0)


def _contract(S: np.ndarray, z: np.ndarray, times: int) -> np.ndarray:
    """Contract the flattened k^(times+1) tensor ``S`` with row ``z_b``, ``times`` times."""
    B, k = z.shape
    T = np.broadcast_to(S, (B, S.size))
    for _ in range(times):
        T = np.einsum("bj,bjr->br", z, T.reshape(B, k, -1))
    return T


def _alpha_check(z1, z2, alpha, include_diagonal, estimator):
    z1, z2 = _pair(z1, z2)
    m, integer = _exponent(alpha)
    if estimator not in ("pairwise", "moment"):
        raise ValueError(f"estimator must be 'pairwise' or 'moment', got {estimator!r}")
    if estimator == "moment" and not integer:
        raise ValueError(
            f"estimator='moment' needs an integer m = alpha/(alpha-1); alpha={alpha} gives "
            f"m={m:.6g}: use estimator='pairwise'"
        )
    n = _off_diagonal_count(z1.shape[0], include_diagonal)
    return z1, z2, m, integer, n


def alpha_loss_batch(
    z1: np.ndarray,
    z2: np.ndarray,
    alpha: float,
    *,
    include_diagonal: bool = False,
    estimator: str = "pairwise",
) -> float:
    """Minus the minibatch alpha bound (Eq. 21), ``-Jhat_alpha``, ``alpha > 1``.

    ``Jhat = 1/B sum_b (s_bb - 1)/(alpha-1) - (1/n sum_{b != c} s_bc^m - 1)/alpha``,
    ``s_bc = z1_b^T z2_c``, ``n = B(B-1)`` (diagonal excluded, unbiased; C2) or, with
    ``include_diagonal=True``, all pairs and ``n = B^2``. ``estimator="moment"`` (integer ``m``
    only) computes the same sum through the m-th moment tensors,
    ``<S1_m, S2_m> - sum_b s_bb^m``, without the B x B matrix.
    """
    z1, z2, m, integer, n = _alpha_check(z1, z2, alpha, include_diagonal, estimator)
    alpha = float(alpha)
    B = z1.shape[0]
    diag = np.sum(z1 * z2, axis=1)
    if estimator == "pairwise":
        Pm = _power(z1 @ z2.T, m, integer)
        if not include_diagonal:
            np.fill_diagonal(Pm, 0.0)
        total = Pm.sum()
    else:
        mi = int(m)
        total = float(_moment_tensor(z1, mi) @ _moment_tensor(z2, mi))
        if not include_diagonal:
            total -= np.sum(diag**mi)
    J = np.sum(diag - 1.0) / (B * (alpha - 1.0)) - (total / n - 1.0) / alpha
    return float(-J)


def alpha_loss_batch_grad(
    z1: np.ndarray,
    z2: np.ndarray,
    alpha: float,
    *,
    include_diagonal: bool = False,
    estimator: str = "pairwise",
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients ``(dL/dz1, dL/dz2)`` of ``alpha_loss_batch`` (Eq. 21); nothing is stopped.

    The moment estimator differentiates ``<S1_m, S2_m>`` through the tensors (same numbers).
    """
    z1, z2, m, integer, n = _alpha_check(z1, z2, alpha, include_diagonal, estimator)
    alpha = float(alpha)
    B = z1.shape[0]
    pos = 1.0 / (B * (alpha - 1.0))  # dJ/ds_bb from the positive term
    if estimator == "pairwise":
        G = _dpower(z1 @ z2.T, m, integer) / (alpha * n)  # -dJ/ds_bc from the negative term
        if not include_diagonal:
            np.fill_diagonal(G, 0.0)
        G -= pos * np.eye(B)
        return G @ z2, G.T @ z1
    mi = int(m)
    g1 = mi * _contract(_moment_tensor(z2, mi), z1, mi - 1) / (alpha * n)
    g2 = mi * _contract(_moment_tensor(z1, mi), z2, mi - 1) / (alpha * n)
    diag = np.sum(z1 * z2, axis=1)
    d = np.full(B, -pos)
    if not include_diagonal:  # the b == c terms were subtracted from <S1_m, S2_m>
        d -= mi * diag ** (mi - 1) / (alpha * n)
    d = d[:, None]
    return g1 + d * z2, g2 + d * z1
