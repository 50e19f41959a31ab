"""Synthetic augmentation graphs (Eq. 2) and their exact spectra.

A graph is a joint distribution over pairs of nodes: ``W`` is N x N, symmetric, non-negative and
sums to 1, ``W_ij`` being the probability that (i, j) is a positive pair. Every generator here
returns such a ``W``. Generators built from an adjacency matrix add a *lazy* self-loop term
(``W = (Adj + Deg) / sum``), which maps the eigenvalues of ``A`` from ``[-1, 1]`` to ``[0, 1]``
(``A_lazy = (A + I) / 2``), so that the top-k eigenvalues used by the tests are positive
(Eq. 5 needs ``lambda_i > 0``). ``spectral_gap`` says whether the top-k are distinct.

Which k the generators support with a *distinct* top-k (checked in tests/derivation/test_graphs.py):
- ``stochastic_block_model`` with unequal block sizes: k up to the number of blocks.
- ``cycle_graph``: eigenvalues come in equal pairs, so only odd k (1, 3, 5, ...) has a gap
  ``lambda_k > lambda_{k+1}``; inside the top-k they are *not* distinct (span tests only).
- ``grid_graph`` with ``rows != cols``: small k (the tests use k <= 4).
- ``random_geometric_graph`` and ``augmentation_graph``: generic, distinct with probability 1.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

JOINT_ATOL = 1e-8


def validate_joint(W: np.ndarray) -> None:
    """Raise ValueError naming the problem unless ``W`` is a joint distribution (Eq. 2).

    Checks: 2-D square, finite (no NaN/inf), symmetric, non-negative, sums to 1 (tolerance 1e-8).
    """
    W = np.asarray(W)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be a square N x N matrix, got shape {W.shape}")
    if W.shape[0] == 0:
        raise ValueError("W must have at least one node, got shape (0, 0)")
    if not np.all(np.isfinite(W)):
        raise ValueError("W contains NaN or inf; pass a finite matrix of pair probabilities")
    asym = float(np.max(np.abs(W - W.T)))
    if asym > JOINT_ATOL:
        raise ValueError(
            f"W must be symmetric (max |W - W^T| = {asym:.3g}); use (W + W.T) / 2 for pairs"
        )
    if np.any(W < 0):
        raise ValueError(f"W must be non-negative (min entry {W.min():.3g})")
    total = float(W.sum())
    if abs(total - 1.0) > JOINT_ATOL:
        raise ValueError(f"W must sum to 1 (sum = {total:.12g}); divide W by W.sum()")


def marginal(W: np.ndarray) -> np.ndarray:
    """Marginal ``w = W 1`` of the joint (Eq. 2); ``D = diag(w)``."""
    validate_joint(W)
    return np.asarray(W, dtype=np.float64).sum(axis=1)


def normalized_adjacency(W: np.ndarray) -> np.ndarray:
    """Normalised adjacency ``A = D^{-1/2} W D^{-1/2}`` (Eq. 2).

    Raises ValueError if a node has zero marginal (an isolated node makes ``D`` singular).
    """
    w = marginal(W)
    if np.any(w <= 0):
        raise ValueError(
            f"W has {int(np.sum(w <= 0))} node(s) with zero marginal; remove isolated nodes"
        )
    s = 1.0 / np.sqrt(w)
    A = s[:, None] * np.asarray(W, dtype=np.float64) * s[None, :]
    return (A + A.T) / 2.0


def spectral_embedding(W: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenpairs of ``A`` (Eq. 5), descending, from ``scipy.linalg.eigh``.

    Returns
    -------
    eigenvalues : ndarray (k,)
        ``lambda_1 >= ... >= lambda_k``; ``lambda_1 = 1`` for a connected graph.
    eigenvectors : ndarray (N, k)
        Orthonormal columns ``v_i`` (signs as eigh returns them). The minimiser of the spectral
        loss is ``F = V diag(lambda)^{1/2} R``, ``phi = D^{-1/2} F`` (Eq. 5).
    """
    A = normalized_adjacency(W)
    N = A.shape[0]
    if not (isinstance(k, int | np.integer) and 1 <= k <= N):
        raise ValueError(f"k must be an integer in [1, N={N}], got {k!r}")
    vals, vecs = scipy.linalg.eigh(A)
    order = np.argsort(vals)[::-1][:k]
    return vals[order], vecs[:, order]


def spectral_gap(W: np.ndarray, k: int) -> float:
    """Smallest gap among ``lambda_1 > ... > lambda_k > lambda_{k+1}`` (``lambda_{N+1} = 0``).

    Positive iff the top-k eigenvalues of ``A`` are distinct and separated from the rest, which
    makes the ordered eigenvectors of (Eq. 13) unique up to sign.
    """
    N = np.asarray(W).shape[0]
    vals, _ = spectral_embedding(W, min(k + 1, N))
    vals = np.append(vals, 0.0) if k == N else vals
    return float(np.min(vals[:-1] - vals[1:]))


def _lazy_joint(adjacency: np.ndarray, lazy: bool) -> np.ndarray:
    """Joint from a symmetric adjacency; ``lazy`` adds the degree on the diagonal."""
    adjacency = np.asarray(adjacency, dtype=np.float64)
    if lazy:
        adjacency = adjacency + np.diag(adjacency.sum(axis=1))
    W = adjacency / adjacency.sum()
    W = (W + W.T) / 2.0
    validate_joint(W)
    return W


def _is_connected(adjacency: np.ndarray) -> bool:
    """Breadth-first search from node 0 over the non-zero pattern."""
    N = adjacency.shape[0]
    seen = np.zeros(N, dtype=bool)
    seen[0] = True
    frontier = [0]
    while frontier:
        nxt = np.flatnonzero((adjacency[frontier] > 0).any(axis=0) & ~seen)
        seen[nxt] = True
        frontier = list(nxt)
    return bool(seen.all())


def stochastic_block_model(
    sizes: tuple[int, ...] | list[int],
    p_in: float,
    p_out: float,
    rng: np.random.Generator,
    *,
    lazy: bool = True,
    max_tries: int = 100,
) -> np.ndarray:
    """Sampled stochastic block model: an edge within a block with prob ``p_in``, across ``p_out``.

    Resamples (up to ``max_tries``) until the graph is connected. With unequal ``sizes`` the top
    ``len(sizes)`` eigenvalues are distinct (equal blocks give a degenerate cluster eigenspace).
    """
    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be positive block sizes, got {sizes}")
    if not (0 <= p_out <= 1 and 0 < p_in <= 1):
        raise ValueError(f"need 0 < p_in <= 1 and 0 <= p_out <= 1, got {p_in}, {p_out}")
    labels = np.repeat(np.arange(len(sizes)), sizes)
    P = np.where(labels[:, None] == labels[None, :], p_in, p_out)
    N = len(labels)
    for _ in range(max_tries):
        upper = np.triu(rng.random((N, N)) < P, k=1)
        adjacency = (upper | upper.T).astype(np.float64)
        if _is_connected(adjacency):
            return _lazy_joint(adjacency, lazy)
    raise ValueError(f"no connected SBM in {max_tries} draws; increase p_in or p_out")


def cycle_graph(n: int, *, lazy: bool = True) -> np.ndarray:
    """Cycle on ``n >= 3`` nodes. Eigenvalues ``(1 + cos(2 pi j / n)) / 2`` (lazy) come in pairs."""
    if n < 3:
        raise ValueError(f"a cycle needs n >= 3 nodes, got {n}")
    idx = np.arange(n)
    adjacency = np.zeros((n, n))
    adjacency[idx, (idx + 1) % n] = 1.0
    adjacency[(idx + 1) % n, idx] = 1.0
    return _lazy_joint(adjacency, lazy)


def grid_graph(rows: int, cols: int, *, lazy: bool = True) -> np.ndarray:
    """4-neighbour grid of ``rows x cols`` nodes (row-major). Use ``rows != cols`` for a gap."""
    if rows < 1 or cols < 1 or rows * cols < 2:
        raise ValueError(f"grid needs at least 2 nodes, got {rows} x {cols}")
    N = rows * cols
    adjacency = np.zeros((N, N))
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            if c + 1 < cols:
                adjacency[i, i + 1] = adjacency[i + 1, i] = 1.0
            if r + 1 < rows:
                adjacency[i, i + cols] = adjacency[i + cols, i] = 1.0
    return _lazy_joint(adjacency, lazy)


def random_geometric_graph(
    n: int,
    radius: float,
    rng: np.random.Generator,
    *,
    lazy: bool = True,
    max_tries: int = 100,
) -> np.ndarray:
    """``n`` uniform points in the unit square, an edge when closer than ``radius``.

    Resamples the points (up to ``max_tries``) until the graph is connected.
    """
    if n < 2 or radius <= 0:
        raise ValueError(f"need n >= 2 and radius > 0, got n={n}, radius={radius}")
    for _ in range(max_tries):
        x = rng.random((n, 2))
        dist = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)
        adjacency = ((dist < radius) & ~np.eye(n, dtype=bool)).astype(np.float64)
        if _is_connected(adjacency):
            return _lazy_joint(adjacency, lazy)
    raise ValueError(f"no connected geometric graph in {max_tries} draws; increase radius")


def augmentation_graph(
    rng: np.random.Generator,
    *,
    sizes: tuple[int, ...] = (12, 9, 7),
    centers: np.ndarray | None = None,
    cluster_std: float = 0.35,
    aug_std: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Augmentation graph of a toy 2-D data set with an explicit augmentation kernel.

    Source samples ``x_s`` are drawn from Gaussian clusters (``sizes[c]`` points around
    ``centers[c]``), ``p(x_s) = 1/M``. The augmented views are the same M points ``y_i = x_i``,
    and the augmentation kernel is a Gaussian restricted to them,
    ``p(i | x_s) = exp(-|y_i - x_s|^2 / (2 aug_std^2)) / Z_s``. The joint of a positive pair
    (two augmentations of one source) is

        W_ij = sum_s p(x_s) p(i | x_s) p(j | x_s)          (Eq. 2)

    so ``W = P^T diag(p) P`` is positive semi-definite: every eigenvalue of ``A`` is >= 0 and the
    graph is connected (the kernel is positive everywhere).

    Returns
    -------
    W : ndarray (M, M)
    points : ndarray (M, 2)
        The coordinates, for plotting.
    """
    sizes = tuple(int(s) for s in sizes)
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be positive cluster sizes, got {sizes}")
    if centers is None:
        angles = 2 * np.pi * np.arange(len(sizes)) / len(sizes)
        centers = 1.5 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    centers = np.asarray(centers, dtype=np.float64)
    if centers.shape != (len(sizes), 2):
        raise ValueError(f"centers must have shape ({len(sizes)}, 2), got {centers.shape}")
    points = np.concatenate(
        [c + cluster_std * rng.standard_normal((s, 2)) for c, s in zip(centers, sizes)]
    )
    M = points.shape[0]
    sq = np.sum((points[:, None, :] - points[None, :, :]) ** 2, axis=-1)
    logits = -sq / (2 * aug_std**2)
    P = np.exp(logits - logits.max(axis=1, keepdims=True))  # P[s, i] = p(i | x_s)
    P /= P.sum(axis=1, keepdims=True)
    W = P.T @ (P / M)
    W = (W + W.T) / 2.0
    W /= W.sum()
    validate_joint(W)
    return W, points
