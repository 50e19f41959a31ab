"""Central finite differences, the independent check of every analytic gradient."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tests.gradient_checks import assert_gradient_close

STEP = 1e-5


def central_difference(f: Callable[[np.ndarray], float], x: np.ndarray, h: float = STEP):
    """``(f(x + h e_i) - f(x - h e_i)) / 2h`` for every entry ``i`` of ``x``."""
    x = np.asarray(x, dtype=np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2.0 * h)
    return g


def assert_gradient(analytic: np.ndarray, f: Callable[[np.ndarray], float], x: np.ndarray):
    """Relative norm error of ``analytic`` against central differences within the fd row."""
    numeric = central_difference(f, x)
    assert analytic.shape == x.shape
    assert_gradient_close(analytic, numeric, "fd_central", "analytic vs central differences")
