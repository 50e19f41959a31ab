"""PyTorch twin of `reference.graph_train.fit`: a free N x k embedding table trained on a graph.

Same update rule as the reference (plain gradient descent ``phi <- phi - lr * g``), but the
gradient comes from autograd through the `scaled.losses` twins, and the table can live on a GPU.
Full batch (``batch_size=None``) is deterministic given ``phi0``: it follows the reference's
trajectory to round-off (tested). Minibatches are drawn with a `torch.Generator`, so they are
not the reference's draws; they converge to the same ordered eigenvectors (Eq. 13).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from scaled.ema import ema_update
from scaled.losses import (
    minc_loss,
    minc_loss_batch,
    noncontrastive_loss,
    second_moment,
    second_moment_batch,
    spectral_loss,
    spectral_loss_batch,
)

METHODS = ("spectral", "noncontrastive", "minc")


def sample_pairs(
    W: torch.Tensor, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` pairs ``(i_b, j_b)`` drawn independently with probability ``W_ij`` (Eq. 2)."""
    N = W.shape[0]
    flat = torch.multinomial(W.reshape(-1), batch_size, replacement=True, generator=generator)
    return flat // N, flat % N


def fit(
    W: np.ndarray | torch.Tensor,
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
    phi0: np.ndarray | torch.Tensor | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    init_scale: float = 0.1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Train ``phi`` (N x k) by gradient descent on a graph; returns ``phi`` (on `device`).

    Parameters as `reference.graph_train.fit`:

    method
        ``"spectral"`` (Eq. 3 / Eq. 19), ``"noncontrastive"`` (Eq. 9; ``tau = beta = 0``) or
        ``"minc"`` (Eq. 12 / Eq. 20).
    batch_size
        ``None``: exact graph-form losses. Otherwise each step draws ``batch_size`` pairs with
        probability ``W_ij``; autograd through ``phi[i]``, ``phi[j]`` adds each row's gradient
        into the table. MINC / non-contrastive are symmetrised over the two views.
    tau
        Target EMA (Eq. 14) after each step; ``tau = 0``: ``phibar = phi``.
    beta
        Auxiliary EMA of C (Eq. 15), ``C_batch`` from the target rows of both views (C4),
        started at the first ``C_batch`` (C11), updated before use in each step.
    gha
        MINC only: ``LT(Cbar)`` or ``Cbar``.
    seed, phi0, init_scale
        ``phi0`` if given, else ``init_scale * N(0, 1)`` from a CPU ``torch.Generator`` seeded
        with ``seed`` (then moved to `device`); the same generator draws the minibatches.
    callback
        ``callback(step, phi)`` after every step (``phi`` a detached tensor).
    device, dtype
        Where and in which precision the table and the graph live.
    """
    W = _check_fit_args(W, k, method, steps, lr, batch_size, tau, beta, dtype, device)
    use_lt = gha if method == "minc" else False
    gen = torch.Generator().manual_seed(seed)
    phi = _initial_phi(W.shape[0], k, phi0, init_scale, gen, dtype).to(device)
    W_cpu = W.detach().to("cpu")  # torch.multinomial with a CPU generator samples on the CPU
    phibar = phi.clone()
    Cbar: torch.Tensor | None = None
    for step in range(steps):
        phi.requires_grad_(True)
        pairs = None
        if batch_size is not None:
            pairs = tuple(t.to(device) for t in sample_pairs(W_cpu, batch_size, gen))
        loss, Cbar = _step_loss(method, phi, phibar, W, pairs, Cbar, beta, use_lt)
        (g,) = torch.autograd.grad(loss, phi)
        with torch.no_grad():
            phi = phi - lr * g
            phibar = phi.clone() if tau == 0.0 else ema_update(phibar, phi, tau)  # (Eq. 14)
        if callback is not None:
            callback(step, phi)
    return phi.detach()


def _check_fit_args(W, k, method, steps, lr, batch_size, tau, beta, dtype, device):
    """`W` as a tensor on `device`; ValueError for arguments `fit` cannot use."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    W = torch.as_tensor(W, dtype=dtype).to(device)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be a square N x N joint, got shape {tuple(W.shape)}")
    if bool((W < 0).any()) or not bool(torch.allclose(W, W.T)):
        raise ValueError("W must be symmetric and non-negative (a joint of positive pairs, Eq. 2)")
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
    return W


def _initial_phi(N, k, phi0, init_scale, gen, dtype) -> torch.Tensor:
    """``phi0`` if given (checked N x k), else ``init_scale * N(0, 1)`` drawn from `gen`."""
    if phi0 is None:
        return init_scale * torch.randn(N, k, generator=gen, dtype=dtype)
    phi = torch.as_tensor(phi0, dtype=dtype).clone()
    if phi.shape != (N, k):
        raise ValueError(f"phi0 must have shape ({N}, {k}), got {tuple(phi.shape)}")
    return phi


def _step_loss(method, phi, phibar, W, pairs, Cbar, beta, use_lt):
    """(loss, Cbar) of one step: exact graph form when `pairs` is None, else the minibatch
    estimators on the sampled pairs; Cbar is updated before use (Eq. 15), starting at the first
    C (C11)."""
    if pairs is None:
        if method == "spectral":
            return spectral_loss(phi, W), Cbar
        if method == "noncontrastive":
            return noncontrastive_loss(phi, W), Cbar
        Cbar = _cbar_update(Cbar, second_moment(phibar, W), beta)
        return minc_loss(phi, W, phibar=phibar, Cbar=Cbar, gha=use_lt), Cbar
    i, j = pairs
    if method == "spectral":
        return spectral_loss_batch(phi[i], phi[j]), Cbar
    Cbar = _cbar_update(Cbar, second_moment_batch(torch.cat([phibar[i], phibar[j]])), beta)
    loss = 0.5 * (
        minc_loss_batch(phi[i], phibar[j], Cbar, gha=use_lt)
        + minc_loss_batch(phi[j], phibar[i], Cbar, gha=use_lt)
    )
    return loss, Cbar


def _cbar_update(Cbar: torch.Tensor | None, C_new: torch.Tensor, beta: float) -> torch.Tensor:
    """Cbar <- beta Cbar + (1 - beta) C (Eq. 15); the first call returns C itself (C11)."""
    C_new = C_new.detach()
    return C_new.clone() if Cbar is None else ema_update(Cbar, C_new, beta)
