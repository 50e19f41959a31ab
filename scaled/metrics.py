"""Measurements of learned features (twin of `reference.metrics` where the math is the same).

`effective_rank` is the one twin: `scaled.health` logs it during training. The other reference
metrics (principal angles, subspace distance, column cosines) compare features with the closed-form
eigenvectors of a graph and exist on the reference side only.
"""

from __future__ import annotations

import math

import torch

__all__ = ["effective_rank"]


def effective_rank(z: torch.Tensor, *, center: bool = False, eps: float = 1e-12) -> float:
    """Effective rank of a batch of features (Roy & Vetterli 2007).

    ``exp(H(p))`` with ``p_i = s_i / sum_j s_j`` the normalised singular values of the **uncentred**
    B x k feature matrix (by default), as RankMe (Garrido et al. 2023) does. Uncentred, because
    the MINC statistics are uncentred second moments (``C = E[phi phi^T]``, Eq. 15) and because
    centring hides complete collapse: features ``c + noise`` have a centred spectrum of pure noise
    (high rank) while the uncentred spectrum is dominated by ``c`` (rank near 1).

    The same quantity as `reference.metrics.effective_rank` (tested in float64, within ``k * eps``
    of it); this twin is a logging diagnostic, so where the reference raises it returns a number:
    0.0 for an all-zero matrix, nan for a non-finite entry.

    Parameters
    ----------
    z
        Features, shape (B, k), any float dtype and device; computed in float32, or in float64
        for float64 input.
    center
        Subtract the batch mean first (the spectrum of the covariance instead of the second moment).
    eps
        Guards ``log 0`` for exactly zero singular values.

    Returns
    -------
    float
        In ``[1, min(B, k)]``; 0.0 for an all-zero matrix, nan if ``z`` has a non-finite entry.
    """
    if z.ndim != 2:
        raise ValueError(
            f"effective_rank needs a (batch, features) matrix, got shape {tuple(z.shape)}; "
            "flatten the features first"
        )
    z = z.detach().to(torch.promote_types(z.dtype, torch.float32))
    if not bool(torch.isfinite(z).all()):
        return math.nan
    if center:
        z = z - z.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(z)
    total = s.sum()
    if float(total) == 0.0:
        return 0.0
    p = s / total
    entropy = -(p * torch.log(p + eps)).sum()
    return float(torch.exp(entropy))
