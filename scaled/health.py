"""Is the representation alive? Effective rank, feature spread and the spectrum of Cbar.

Called by the trainer at log intervals only (an SVD of a B x k matrix and an eigendecomposition of
the k x k ``Cbar``), on the local batch of each rank; inputs may live on the GPU and be bf16: all
the math here is float32 on the input's device, and only the returned Python floats leave it.

What the numbers mean:

- ``feature_std``: mean over dimensions of the per-dimension standard deviation (over the batch)
  of the L2-normalised features, SimSiam's collapse monitor (Chen & He 2021). Features spread
  evenly over the unit sphere of R^k give about ``1/sqrt(k)``; complete collapse (every input mapped
  to one point) gives 0. ``feature_std_ratio = feature_std * sqrt(k)`` is the same on a 0..1 scale.
- ``eff_rank``: :func:`scaled.metrics.effective_rank` (re-exported here), between 1 (one
  direction) and k (all directions equally).
- ``cbar_eig_i``: the largest eigenvalues of ``Cbar``, the EMA of the second moment (Eq. 15).
  On a graph they estimate the top eigenvalues of ``A`` (Eq. 13); the first is 1 there.
- Under GHA, ``cbar_diag_i``, ``cbar_diag_eig_relerr`` and ``cbar_offdiag_rel``: the MINC fixed
  point (Eq. 13) has ``C = F^T F = diag(lambda_1, ..., lambda_k)`` with the eigenvalues in
  decreasing order, so ``diag(Cbar)`` should approach the sorted eigenvalues and the off-diagonal
  part should vanish. Without GHA only the span is fixed and ``Cbar`` stays an arbitrary rotation of
  that diagonal, so these are not reported.
"""

from __future__ import annotations

import math

import torch

from scaled.metrics import effective_rank

__all__ = ["CollapseMonitor", "effective_rank", "representation_health"]

_N_EIG = 4  # how many of the largest eigenvalues / diagonal entries of Cbar to report


def representation_health(
    z: torch.Tensor, Cbar: torch.Tensor | None, *, gha: bool
) -> dict[str, float]:
    """Collapse and convergence diagnostics of one batch of features and of ``Cbar``.

    Parameters
    ----------
    z
        Features of one batch, shape (B, k) (e.g. the projector output of one view).
    Cbar
        EMA second-moment matrix, shape (k, k) (Eq. 15), or None for methods that keep none.
    gha
        Whether the loss uses ``LT(Cbar)`` (Eq. 12); then the diagonal of ``Cbar`` is reported
        and compared with its sorted eigenvalues (Eq. 13).

    Returns
    -------
    dict[str, float]
        ``feature_dim``, ``feature_std``, ``feature_std_ratio``, ``eff_rank``; with ``Cbar``:
        ``cbar_trace`` and ``cbar_eig_0..3``; with ``Cbar`` and GHA also ``cbar_diag_0..3``,
        ``cbar_diag_eig_relerr = ||diag(Cbar) - eig_desc(Cbar)|| / ||eig(Cbar)||`` and
        ``cbar_offdiag_rel = ||Cbar - diag(Cbar)||_F / ||Cbar||_F``. Entries are nan where the
        input is not finite.
    """
    if z.ndim != 2:
        raise ValueError(
            f"representation_health needs features of shape (batch, k), got {tuple(z.shape)}"
        )
    z = z.detach().float()
    k = z.shape[1]
    zn = torch.nn.functional.normalize(z, dim=1)
    std = float(zn.std(dim=0).mean()) if z.shape[0] > 1 else math.nan
    out = {
        "feature_dim": float(k),
        "feature_std": std,
        "feature_std_ratio": std * math.sqrt(k),
        "eff_rank": effective_rank(z),
    }
    if Cbar is None:
        return out
    if Cbar.shape != (k, k):
        raise ValueError(
            f"Cbar has shape {tuple(Cbar.shape)} but the features have k={k}; "
            "pass the Cbar of the same projector output"
        )
    C = Cbar.detach().float()
    n_eig = min(_N_EIG, k)
    if not bool(torch.isfinite(C).all()):
        out["cbar_trace"] = math.nan
        out.update({f"cbar_eig_{i}": math.nan for i in range(n_eig)})
        if gha:
            out.update({f"cbar_diag_{i}": math.nan for i in range(n_eig)})
            out["cbar_diag_eig_relerr"] = math.nan
            out["cbar_offdiag_rel"] = math.nan
        return out
    C = 0.5 * (C + C.T)  # an EMA of symmetric matrices is symmetric up to round-off
    eig = torch.linalg.eigvalsh(C).flip(0)  # decreasing
    out["cbar_trace"] = float(torch.diagonal(C).sum())
    out.update({f"cbar_eig_{i}": float(eig[i]) for i in range(n_eig)})
    if gha:
        diag = torch.diagonal(C)
        out.update({f"cbar_diag_{i}": float(diag[i]) for i in range(n_eig)})
        eig_norm = float(torch.linalg.vector_norm(eig))
        off_norm = float(torch.linalg.matrix_norm(C - torch.diag(diag)))
        c_norm = float(torch.linalg.matrix_norm(C))
        out["cbar_diag_eig_relerr"] = (
            float(torch.linalg.vector_norm(diag - eig)) / eig_norm if eig_norm > 0 else math.nan
        )
        out["cbar_offdiag_rel"] = off_norm / c_norm if c_norm > 0 else math.nan
    return out


class CollapseMonitor:
    """Warn when the effective rank of the features falls too low.

    Parameters
    ----------
    threshold_fraction
        Warn below ``max(min_rank, threshold_fraction * k)``, with ``k = metrics["feature_dim"]``.
    min_rank
        Floor of the threshold (a 2-dimensional representation is already nearly useless).
    repeat_every
        After a warning, stay quiet for this many checks (every check counts, low or not), so a
        collapsed run warns every ``repeat_every`` log intervals instead of at each one.
    """

    def __init__(
        self, threshold_fraction: float = 0.05, *, min_rank: float = 2.0, repeat_every: int = 50
    ) -> None:
        if not 0.0 <= threshold_fraction <= 1.0:
            raise ValueError(
                f"threshold_fraction={threshold_fraction} is outside [0, 1]; "
                "it is a fraction of the feature dimension k"
            )
        if repeat_every < 1:
            raise ValueError(f"repeat_every={repeat_every} must be at least 1 check")
        self.threshold_fraction = threshold_fraction
        self.min_rank = min_rank
        self.repeat_every = repeat_every
        self._checks_since_warning: int | None = None  # None: never warned

    def threshold(self, k: float | None) -> float:
        """Effective rank below which :meth:`check` warns, for feature dimension ``k``."""
        if k is None or not math.isfinite(k):
            return self.min_rank
        return max(self.min_rank, self.threshold_fraction * k)

    def check(self, step: int, metrics: dict) -> str | None:
        """Return a one-line warning if ``metrics["eff_rank"]`` is below the threshold, else None.

        The line has no ``warning:`` prefix; the caller adds its own (``f"warning: {msg}"``).

        ``metrics`` is the dict of :func:`representation_health` (or any dict with ``eff_rank``
        and, optionally, ``feature_dim``); without ``eff_rank`` nothing is checked.
        """
        if self._checks_since_warning is not None:
            self._checks_since_warning += 1
        rank = metrics.get("eff_rank")
        if rank is None:
            return None
        rank = float(rank)
        k = metrics.get("feature_dim")
        k = None if k is None else float(k)
        limit = self.threshold(k)
        if not rank < limit:  # also False for nan: a nan loss is reported elsewhere
            return None
        if (
            self._checks_since_warning is not None
            and self._checks_since_warning < self.repeat_every
        ):
            return None
        self._checks_since_warning = 0
        of_k = f" of k={k:.0f}" if k is not None else ""
        return (
            f"step {step}: representation collapsing: effective rank {rank:.2f}{of_k} "
            f"is below {limit:.2f} (the features span only ~{max(rank, 1.0):.0f} direction(s), so "
            "they carry almost no information about the input); try an auxiliary EMA of Cbar "
            "(--beta 0.8), GHA on (--method minc), or a lower --lr / longer --warmup-epochs"
        )
