"""PyTorch twins of `reference.losses`, batched for ImageNet-scale training.

Every public function of `reference.losses` (except the ``*_grad`` ones) has a twin here with the
same name and the same positional arguments; extras are keyword-only. The reference returns
floats and arrays with hand-written gradients; these return 0-dim tensors whose autograd
gradient (stop-gradient = ``.detach()``) equals the reference ``*_grad``.

Precision: the batch losses cast their inputs to float32 (float64 stays float64) and run with
autocast disabled, so under bf16 autocast the k x k statistics and B x B similarities are
accumulated in float32. No Python loops over the batch, no host synchronisation.

Distributed convention (``distributed=True`` on `spectral_loss_batch`, `alpha_loss_batch`,
`simclr_loss_batch`): the second views are gathered over the default process group with
`scaled.distributed.all_gather_with_grad` (each row's gradient goes back to the rank that owns it)
and every rank must hold the same number of rows B (global batch R * B). The loss returned on a
rank is **R times its share** of the global loss (the terms whose first view it owns). So

- the mean over ranks of the returned losses is the global-batch loss, and
- DDP's gradient averaging over ranks gives exactly the one-process gradient of the global
  batch (the gradient w.r.t. a rank's own rows of z is R times the one-process gradient).

`minc_loss_batch` and `byol_loss_batch` need no gather: their per-rank mean over equal per-rank
batches follows the same convention as is (MINC's `Cbar` must come from
`scaled.distributed.global_second_moment`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf

from scaled.distributed import all_gather_with_grad, rank

__all__ = [
    "alpha_loss_batch",
    "alpha_mi_bound",
    "byol_loss_batch",
    "chi2_mi_bound",
    "clipped_features",
    "loss_features",
    "lower_triangular",
    "minc_loss",
    "minc_loss_batch",
    "noncontrastive_loss",
    "second_moment",
    "second_moment_batch",
    "simclr_loss_batch",
    "simsiam_loss_batch",
    "spectral_loss",
    "spectral_loss_batch",
]


# ---------------------------------------------------------------------------------------------
# Shared checks and precision
# ---------------------------------------------------------------------------------------------


def _wide(*ts: torch.Tensor) -> list[torch.Tensor]:
    """Cast to float32, or keep float64: the accumulation dtype of every statistic."""
    dtype = torch.float32
    for t in ts:
        dtype = torch.promote_types(dtype, t.dtype)
    return [t.to(dtype) for t in ts]


def _no_autocast(t: torch.Tensor) -> torch.autocast:
    return torch.autocast(device_type=t.device.type, enabled=False)


def _check_graph(phi: torch.Tensor, W: torch.Tensor) -> None:
    if phi.ndim != 2:
        raise ValueError(f"phi must be an (N, k) matrix, got shape {tuple(phi.shape)}")
    if W.ndim != 2 or W.shape[0] != W.shape[1] or W.shape[0] != phi.shape[0]:
        raise ValueError(
            f"W must be N x N with N = phi.shape[0] = {phi.shape[0]}, got shape {tuple(W.shape)}"
        )


def _check_pair(z1: torch.Tensor, z2: torch.Tensor, names: str = "z1, z2") -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"{names} must be (B, k) matrices of the same shape, got {tuple(z1.shape)} and "
            f"{tuple(z2.shape)}"
        )


def _exponent(alpha: float) -> tuple[float, bool]:
    """m = alpha / (alpha - 1) of (Eq. 18) and whether it is an integer."""
    if not alpha > 1.0:
        raise ValueError(
            f"alpha must be > 1 (the parameterisation of Eq. 18 needs m = alpha/(alpha-1) > 1), "
            f"got {alpha}"
        )
    m = alpha / (alpha - 1.0)
    integer = abs(m - round(m)) < 1e-9
    return (float(round(m)) if integer else m), integer


def _power(s: torch.Tensor, m: float, integer: bool) -> torch.Tensor:
    """s^m, of max(s, 0) when m is not an integer [CHOICE C9]."""
    if integer:
        return s.pow(int(m))
    return s.clamp(min=0.0).pow(m)


# ---------------------------------------------------------------------------------------------
# Graph forms (Eq. 3 - 18): phi is N x k, W the N x N augmentation graph
# ---------------------------------------------------------------------------------------------


def second_moment(phi: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """C = E_x[phi(x) phi(x)^T] = phi^T D phi, D = diag(W 1) (Eq. 8)."""
    _check_graph(phi, W)
    w = W.sum(dim=1)
    return phi.T @ (w[:, None] * phi)


def second_moment_batch(z: torch.Tensor) -> torch.Tensor:
    """C_batch = (1/B) sum_b z_b z_b^T, accumulated in float32 or wider (Eq. 15).

    Differentiable (the single-process statistic); `scaled.distributed.global_second_moment` is
    its all-reduced, no-gradient form across ranks.
    """
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"z must be a non-empty (B, k) matrix, got shape {tuple(z.shape)}")
    with _no_autocast(z):
        (zf,) = _wide(z)
        return zf.T @ zf / zf.shape[0]


def lower_triangular(C: torch.Tensor) -> torch.Tensor:
    """LT(C): the lower triangle of C including the diagonal (Eq. 11)."""
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"C must be a square k x k matrix, got shape {tuple(C.shape)}")
    return torch.tril(C)


def spectral_loss(phi: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """L_spec = -2 tr(phi^T W phi) + ||phi^T D phi||_F^2 (Eq. 3); gradient (Eq. 4)."""
    C = second_moment(phi, W)
    return -2.0 * torch.sum(phi * (W @ phi)) + torch.sum(C * C)


def noncontrastive_loss(phi: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """L_nc = -2 tr(phi^T W sg(phi)) + tr(phi^T D phi sg(C)) (Eq. 9).

    Same value as `spectral_loss`; gradient exactly one half of it.
    """
    C = second_moment(phi, W)
    return -2.0 * torch.sum(phi * (W @ phi.detach())) + torch.sum(C * C.detach())


def minc_loss(
    phi: torch.Tensor,
    W: torch.Tensor,
    *,
    phibar: torch.Tensor | None = None,
    Cbar: torch.Tensor | None = None,
    gha: bool = True,
) -> torch.Tensor:
    """L_minc = -2 tr(phi^T W sg(phibar)) + 2 tr(phi^T D sg(phi LT(Cbar)^T)) (Eq. 12).

    `sg` wraps the whole product ``phi LT(Cbar)^T``. Defaults: ``phibar = phi``,
    ``Cbar = second_moment(phi, W)``. ``gha=False`` replaces LT by the identity.
    """
    _check_graph(phi, W)
    phibar = phi if phibar is None else phibar
    if phibar.shape != phi.shape:
        raise ValueError(f"phibar must have phi's shape {tuple(phi.shape)}, got {phibar.shape}")
    Cbar = second_moment(phi, W) if Cbar is None else Cbar
    k = phi.shape[1]
    if Cbar.shape != (k, k):
        raise ValueError(f"Cbar must be k x k = {k} x {k}, got shape {tuple(Cbar.shape)}")
    L = lower_triangular(Cbar) if gha else Cbar
    w = W.sum(dim=1)
    target = (phi @ L.T).detach()
    return -2.0 * torch.sum(phi * (W @ phibar.detach())) + 2.0 * torch.sum(
        phi * (w[:, None] * target)
    )


def chi2_mi_bound(phi: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """chi^2 variational bound E_W[t] - E_{w w}[t + t^2/4], t = 2(phi^T phi' - 1) (Eq. 6, 7).

    Computed from the bound itself (no N x N matrix): equals ``-spectral_loss - 1`` when W sums
    to 1.
    """
    _check_graph(phi, W)
    w = W.sum(dim=1)
    total = w.sum()
    mu = phi.T @ w  # E_x[phi] (unnormalised by total mass)
    C = second_moment(phi, W)
    pos = 2.0 * torch.sum(phi * (W @ phi)) - 2.0 * total  # E_W[t]
    mean_t = 2.0 * mu.dot(mu) - 2.0 * total**2  # E_ww[t]
    mean_t2_over_4 = torch.sum(C * C) - 2.0 * mu.dot(mu) + total**2  # E_ww[(s - 1)^2]
    return pos - mean_t - mean_t2_over_4


def alpha_mi_bound(phi: torch.Tensor, W: torch.Tensor, alpha: float) -> torch.Tensor:
    """J_alpha = E_W[(s - 1)/(alpha - 1)] - E_{w w}[(s^m - 1)/alpha], s = phi^T phi' (Eq. 17, 18).

    m = alpha/(alpha - 1); for non-integer m, s^m of max(s, 0) [CHOICE C9]. Exact (N x N).
    """
    _check_graph(phi, W)
    m, integer = _exponent(alpha)
    w = W.sum(dim=1)
    S = phi @ phi.T
    pos = torch.sum(W * (S - 1.0)) / (alpha - 1.0)
    neg = torch.sum(w[:, None] * w[None, :] * (_power(S, m, integer) - 1.0)) / alpha
    return pos - neg


# ---------------------------------------------------------------------------------------------
# Minibatch estimators (Eq. 19 - 22): rows z1_b, z2_b are the two views of sample b
# ---------------------------------------------------------------------------------------------


def _global_rows(z2: torch.Tensor, distributed: bool) -> tuple[torch.Tensor, int, int]:
    """(z2 over the global batch, global batch size, row offset of this rank)."""
    if not distributed:
        return z2, z2.shape[0], 0
    Z2 = all_gather_with_grad(z2)
    return Z2, Z2.shape[0], rank() * z2.shape[0]


def spectral_loss_batch(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    include_diagonal: bool = False,
    distributed: bool = False,
) -> torch.Tensor:
    """Pairwise spectral contrastive loss of a batch (Eq. 19), in O(B k^2).

    ``-2/B sum_b z1_b.z2_b + 1/(B(B-1)) sum_{b != c} (z1_b.z2_c)^2``; the pair sum is
    ``<z1^T z1, z2^T z2>_F - sum_b (z1_b.z2_b)^2`` (no B x B matrix). With
    ``include_diagonal=True`` all (b, c) count and the divisor is B^2.
    ``distributed=True``: z2 gathered over ranks, per-rank loss scaled as in the module
    docstring (Eq. 22).
    """
    _check_pair(z1, z2)
    with _no_autocast(z1):
        z1, z2 = _wide(z1, z2)
        Z2, B, _ = _global_rows(z2, distributed)
        R = B // z1.shape[0]
        if not include_diagonal and B < 2:
            raise ValueError(
                "spectral_loss_batch needs B >= 2 to exclude the diagonal; "
                "pass include_diagonal=True for B = 1"
            )
        diag = torch.sum(z1 * z2, dim=1)
        pairs = torch.sum((z1.T @ z1) * (Z2.T @ Z2))
        if include_diagonal:
            neg = pairs / (B * B)
        else:
            neg = (pairs - torch.sum(diag * diag)) / (B * (B - 1))
        return R * (-2.0 * diag.sum() / B + neg)


def minc_loss_batch(
    z1: torch.Tensor, z2_target: torch.Tensor, Cbar: torch.Tensor, *, gha: bool = True
) -> torch.Tensor:
    """MINC minibatch loss ``-2/B sum_b z1_b^T sg(z2bar_b - LT(Cbar) z1_b)`` (Eq. 20).

    `z2_target` and the whole product ``LT(Cbar) z1_b`` are under stop-gradient (detached here).
    ``gha=False``: LT is the identity (gradient of Eq. 9). Across ranks, pass the `Cbar` built
    from `scaled.distributed.global_second_moment`; the per-rank mean needs no other change.
    """
    _check_pair(z1, z2_target, "z1, z2_target")
    k = z1.shape[1]
    if Cbar.shape != (k, k):
        raise ValueError(f"Cbar must be k x k = {k} x {k}, got shape {tuple(Cbar.shape)}")
    with _no_autocast(z1):
        z1, z2_target, Cbar = _wide(z1, z2_target, Cbar)
        L = lower_triangular(Cbar) if gha else Cbar
        target = (z2_target - z1 @ L.T).detach()
        return -2.0 * torch.sum(z1 * target) / z1.shape[0]


def _moment_tensor(z: torch.Tensor, m: int) -> torch.Tensor:
    """S_m = sum_b z_b^{(x)m} as a (k^(m-1), k) matrix (Eq. 21); memory B k^(m-1)."""
    B, k = z.shape
    T = z
    for _ in range(m - 2):
        T = (T[:, :, None] * z[:, None, :]).reshape(B, -1)
    return T.T @ z


def alpha_loss_batch(
    z1: torch.Tensor,
    z2: torch.Tensor,
    alpha: float,
    *,
    include_diagonal: bool = False,
    estimator: str = "pairwise",
    distributed: bool = False,
) -> torch.Tensor:
    """-Jhat_alpha of a batch (Eq. 18, 21), s_bc = z1_b.z2_c, m = alpha/(alpha-1).

    ``Jhat = 1/B sum_b (s_bb - 1)/(alpha-1) - (1/(B(B-1)) sum_{b != c} s_bc^m - 1)/alpha``
    (all (b, c) and B^2 with ``include_diagonal=True``). ``estimator="pairwise"`` forms the
    B x B similarities (any alpha > 1; non-integer m uses max(s, 0) [CHOICE C9]).
    ``estimator="moment"`` (integer m only) gives the same number through the m-th moment
    tensors, ``sum_{b,c} s_bc^m = <S1_m, S2_m>`` with k^m entries and no B x B matrix; memory
    B k^(m-1), so it is for small k or m. ``distributed=True``: z2 gathered over ranks,
    per-rank loss scaled as in the module docstring (Eq. 22).
    """
    _check_pair(z1, z2)
    m, integer = _exponent(alpha)
    if estimator not in ("pairwise", "moment"):
        raise ValueError(f"estimator must be 'pairwise' or 'moment', got {estimator!r}")
    if estimator == "moment" and not integer:
        raise ValueError(
            f"estimator='moment' needs an integer m = alpha/(alpha-1), got m = {m:g} for "
            f"alpha = {alpha}; use estimator='pairwise'"
        )
    with _no_autocast(z1):
        z1, z2 = _wide(z1, z2)
        Z2, B, offset = _global_rows(z2, distributed)
        b = z1.shape[0]
        R = B // b
        if not include_diagonal and B < 2:
            raise ValueError(
                "alpha_loss_batch needs B >= 2 to exclude the diagonal; "
                "pass include_diagonal=True for B = 1"
            )
        diag = torch.sum(z1 * z2, dim=1)
        if estimator == "pairwise":
            powered = _power(z1 @ Z2.T, m, integer)
            total = powered.sum()
            own = torch.diagonal(powered[:, offset : offset + b]).sum()
        else:
            total = torch.sum(_moment_tensor(z1, int(m)) * _moment_tensor(Z2, int(m)))
            own = _power(diag, m, integer).sum()
        neg = total / (B * B) if include_diagonal else (total - own) / (B * (B - 1))
        share = diag.sum() / (B * (alpha - 1.0)) - neg / alpha
        constants = -1.0 / (alpha - 1.0) + 1.0 / alpha
        return -(R * share + constants)


# ---------------------------------------------------------------------------------------------
# Baselines (no reference twin)
# ---------------------------------------------------------------------------------------------


def simclr_loss_batch(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.1,
    distributed: bool = False,
) -> torch.Tensor:
    """NT-Xent (SimCLR) over the global batch of 2B views, features L2-normalised.

    Each of the 2B views is an anchor; its positive is the other view of the same sample and
    the softmax runs over the 2B - 1 other views (the positive and 2B - 2 negatives). The loss
    is the mean over the 2B anchors of the cross entropy. ``distributed=True``: both views
    gathered over ranks, this rank's anchors against all 2B_global views, self-similarity
    masked at the rank's global offset, per-rank loss scaled as in the module docstring.
    """
    _check_pair(z1, z2)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with _no_autocast(z1):
        z1, z2 = _wide(z1, z2)
        b = z1.shape[0]
        q = nnf.normalize(torch.cat([z1, z2]), dim=1)  # this rank's 2b anchors
        K1, B, offset = _global_rows(q[:b], distributed)
        K2, _, _ = _global_rows(q[b:], distributed)
        keys = torch.cat([K1, K2])  # 2B global views: first views, then second views
        logits = q @ keys.T / temperature
        # indices and the mask value built on the device: no host data, no host-to-device copy
        idx = torch.arange(b, device=z1.device)
        own = torch.cat([idx, idx + B]) + offset
        pos = torch.cat([own[b:], own[:b]])
        rows = torch.arange(2 * b, device=z1.device)
        minus_inf = torch.full((), -math.inf, dtype=logits.dtype, device=logits.device)
        logits = logits.index_put((rows, own), minus_inf)
        return nnf.cross_entropy(logits, pos, reduction="sum") / (2 * b)


def byol_loss_batch(p1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """BYOL regression loss: mean over the batch of ``2 - 2 cos(p1_b, sg(z2_b))``.

    `p1` is the online prediction, `z2` the target projection; `z2` is detached **here**.
    """
    _check_pair(p1, z2, "p1, z2")
    with _no_autocast(p1):
        p1, z2 = _wide(p1, z2)
        cos = torch.sum(nnf.normalize(p1, dim=1) * nnf.normalize(z2.detach(), dim=1), dim=1)
        return torch.mean(2.0 - 2.0 * cos)


def simsiam_loss_batch(p1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """SimSiam's loss of one pair: ``-mean_b cos(p1_b, sg(z2_b))`` (Chen & He 2021, Eq. 1).

    `p1` is the prediction of view 1, `z2` the projection of view 2 of the SAME network;
    `z2` is detached **here** (the stop-gradient). The step symmetrises,
    ``0.5 (D(p1, z2) + D(p2, z1))``, as facebookresearch/simsiam main_simsiam.py does:
    ``loss = -(criterion(p1, z2).mean() + criterion(p2, z1).mean()) * 0.5`` with
    ``criterion = nn.CosineSimilarity(dim=1)`` (eps 1e-8 on the norms; ours normalises with
    `F.normalize`, eps 1e-12, equal for rows that are not ~0). Minimum -1.
    """
    _check_pair(p1, z2, "p1, z2")
    with _no_autocast(p1):
        p1, z2 = _wide(p1, z2)
        cos = torch.sum(nnf.normalize(p1, dim=1) * nnf.normalize(z2.detach(), dim=1), dim=1)
        return -torch.mean(cos)


FEATURE_MAPS = ("sphere", "clip")


def normalized_features(z: torch.Tensor, mu: float) -> torch.Tensor:
    """Row-wise ``sqrt(mu) z / |z|`` (Eq. 23, choice C12): features on a sphere of radius sqrt(mu).

    On a network the output scale is a free direction of Eq. 19-21 that gradient steps can
    overshoot (the restoring term is cubic in the scale); on the digits raw projector outputs
    diverged or collapsed. With ``mu`` the trace of ``C`` is exactly ``mu``. (HaoChen et al.
    2021 do NOT do this: their code clips, see `clipped_features`.) Computed in float32
    (float64 stays float64).
    """
    dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    return nnf.normalize(z.to(dtype), dim=1) * math.sqrt(mu)


def clipped_features(z: torch.Tensor, mu: float) -> torch.Tensor:
    """Row-wise ``z min(1, sqrt(mu) / |z|)`` (Eq. 24): features clipped to the sqrt(mu)-ball.

    HaoChen et al. (2021), jhaochenz96/spectral_contrastive_learning models/spectral.py ``D``:
    a row shorter than sqrt(mu) is left unchanged, a longer one becomes ``sqrt(mu) z / |z|``;
    the gradient flows through both branches (no stop-gradient). Their loss is then divided by
    mu (the trainer does that, `loss_features` returns the scale). Computed in float32
    (float64 stays float64).
    """
    dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    z = z.to(dtype)
    short = (torch.linalg.vector_norm(z, dim=1, keepdim=True) < math.sqrt(mu)).to(dtype)
    return short * z + (1.0 - short) * nnf.normalize(z, dim=1) * math.sqrt(mu)


def loss_features(z: torch.Tensor, kind: str, mu: float) -> torch.Tensor:
    """The features a loss sees under ``--feature-norm-kind KIND --feature-norm MU`` (Eq. 23, 24).

    ``sphere``: `normalized_features`; ``clip``: `clipped_features`.
    """
    if kind == "sphere":
        return normalized_features(z, mu)
    if kind == "clip":
        return clipped_features(z, mu)
    raise ValueError(f"unknown feature map {kind!r}; use one of {', '.join(FEATURE_MAPS)}")
