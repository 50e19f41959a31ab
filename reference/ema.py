"""Exponential moving averages: the target network (Eq. 14) and the auxiliary EMA of C (Eq. 15).

Twin: `scaled.ema.ema_update` (same name, same convention; `inplace=True` there for buffers).
"""

from __future__ import annotations

import numpy as np


def ema_update(old: np.ndarray, new: np.ndarray, rate: float) -> np.ndarray:
    """``rate * old + (1 - rate) * new`` (Eq. 14 with ``rate = tau``, Eq. 15 with ``rate = beta``).

    ``rate = 0`` returns ``new`` (no averaging); ``rate = 1`` keeps ``old``.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"EMA rate must be in [0, 1], got {rate}")
    old = np.asarray(old, dtype=np.float64)
    new = np.asarray(new, dtype=np.float64)
    if old.shape != new.shape:
        raise ValueError(f"EMA needs equal shapes, got old {old.shape} and new {new.shape}")
    return rate * old + (1.0 - rate) * new
