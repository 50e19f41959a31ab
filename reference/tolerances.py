"""The one table of numerical tolerances: how closely twins and identities must agree.

`reference/` and `scaled/` are compared at these rows everywhere: the tests (`tests/conftest.py`
re-exports this module), the notebooks and any check a user writes. float64 comparisons are tight;
float32 and bfloat16 rows are looser and each row says why (docs/design.md, "Tolerances"). Do not
loosen a row to make a test pass: find the bug. NumPy-free and torch-free: plain Python.
"""

from __future__ import annotations

__all__ = ["TOLERANCES", "tol"]

# dtype -> (rtol, atol); import as `from reference.tolerances import tol, TOLERANCES`.
TOLERANCES: dict[str, tuple[float, float]] = {
    # Exact arithmetic up to round-off of O(N k) sums: a relative 1e-10 is orders above eps=2e-16.
    "float64": (1e-10, 1e-12),
    # eps=1.2e-7, sums over B*k ~ 1e4..1e5 terms: round-off grows like sqrt(n) * eps ~ 1e-5.
    "float32": (1e-4, 1e-5),
    # bf16 inputs (8-bit mantissa, eps=7.8e-3) with float32 accumulation of the k x k statistics.
    "bfloat16": (5e-2, 5e-2),
    # Analytic gradient vs central finite differences in float64 (tests/derivation): with step
    # h = 1e-5 the truncation error is O(h^2) ~ 1e-10 and round-off O(eps |f| / h) ~ 1e-11, both
    # relative to |grad|; 1e-6 (a relative norm error) leaves room for ill-scaled entries.
    "fd_central": (1e-6, 0.0),
}


def tol(dtype: str) -> dict[str, float]:
    """Keyword arguments for assert_allclose at the tolerance row of `dtype`."""
    rtol, atol = TOLERANCES[dtype]
    return {"rtol": rtol, "atol": atol}
