"""Shared test configuration.

TOLERANCES is the one table of numerical tolerances for the whole suite (DESIGN.md): float64
comparisons are tight; float32 and bfloat16 rows are looser and each row says why.
"""

from __future__ import annotations

import numpy as np
import pytest

# dtype -> (rtol, atol); import as `from tests.conftest import tol, TOLERANCES`.
TOLERANCES: dict[str, tuple[float, float]] = {
    # Exact arithmetic up to round-off of O(N k) sums: a relative 1e-10 is orders above eps=2e-16.
    "float64": (1e-10, 1e-12),
    # eps=1.2e-7, sums over B*k ~ 1e4..1e5 terms: round-off grows like sqrt(n) * eps ~ 1e-5.
    "float32": (1e-4, 1e-5),
    # bf16 inputs (8-bit mantissa, eps=7.8e-3) with float32 accumulation of the k x k statistics.
    "bfloat16": (5e-2, 5e-2),
}


def tol(dtype: str) -> dict[str, float]:
    """Keyword arguments for assert_allclose at the tolerance row of `dtype`."""
    rtol, atol = TOLERANCES[dtype]
    return {"rtol": rtol, "atol": atol}


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, explicitly seeded generator for each test."""
    return np.random.default_rng(0)
