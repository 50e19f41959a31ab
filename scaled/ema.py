"""Exponential moving averages: the target network (Eq. 14) and the auxiliary EMA of C (Eq. 15).

Twin of `reference.ema`: the same function under the same name and convention, on torch tensors.
"""

from __future__ import annotations

import torch

__all__ = ["ema_update"]


def ema_update(
    old: torch.Tensor, new: torch.Tensor, rate: float, *, inplace: bool = False
) -> torch.Tensor:
    """``rate * old + (1 - rate) * new`` (Eq. 14 with ``rate = tau``, Eq. 15 with ``rate = beta``).

    ``rate = 0`` returns ``new`` (no averaging); ``rate = 1`` keeps ``old``.

    Parameters
    ----------
    old, new
        Tensors of the same shape (``Cbar`` and ``C_batch``, or a target and an online weight).
    rate
        The EMA rate in ``[0, 1]``: ``beta`` (Eq. 15) or ``tau`` (Eq. 14).
    inplace
        False (default): a new tensor, differentiable like ``rate * old + (1 - rate) * new``.
        True: ``old`` is overwritten under ``torch.no_grad()`` (``new`` cast to its dtype) and
        returned, so a registered buffer (``Cbar``) or a target parameter stays the same tensor.
        EMAs are statistics used under stop-gradient: nothing flows back through this path.

    Returns
    -------
    torch.Tensor
        The updated average (``old`` itself when ``inplace=True``).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"EMA rate must be in [0, 1], got {rate}")
    if old.shape != new.shape:
        raise ValueError(
            f"EMA needs equal shapes, got old {tuple(old.shape)} and new {tuple(new.shape)}"
        )
    if not inplace:
        return rate * old + (1.0 - rate) * new
    with torch.no_grad():
        return old.mul_(rate).add_(new.detach().to(old.dtype), alpha=1.0 - rate)
