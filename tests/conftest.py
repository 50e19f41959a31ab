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
    # Analytic gradient vs central finite differences in float64 (tests/derivation): with step
    # h = 1e-5 the truncation error is O(h^2) ~ 1e-10 and round-off O(eps |f| / h) ~ 1e-11, both
    # relative to |grad|; 1e-6 (a relative norm error) leaves room for ill-scaled entries.
    "fd_central": (1e-6, 0.0),
}


def tol(dtype: str) -> dict[str, float]:
    """Keyword arguments for assert_allclose at the tolerance row of `dtype`."""
    rtol, atol = TOLERANCES[dtype]
    return {"rtol": rtol, "atol": atol}


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, explicitly seeded generator for each test."""
    return np.random.default_rng(0)


# --- Graph fixtures (reference/graphs.py) ----------------------------------------------------
# Each case is (W, k) with a connected graph and positive, distinct top-k eigenvalues of A
# (spectral_gap(W, k) > 0, checked in tests/derivation/test_graphs.py). "cycle" has paired
# eigenvalues: k = 3 has a gap after lambda_3 but lambda_2 = lambda_3: span tests only.
GRAPH_CASES: tuple[str, ...] = ("sbm", "grid", "geometric", "augmentation")
SPAN_ONLY_CASES: tuple[str, ...] = ("cycle",)


def make_graph(name: str, seed: int = 0) -> tuple[np.ndarray, int]:
    """The graph case `name` as (W, k); deterministic in `seed`."""
    from reference import graphs

    g = np.random.default_rng(seed)
    if name == "sbm":
        return graphs.stochastic_block_model((10, 8, 6), 0.7, 0.08, g), 3
    if name == "grid":
        return graphs.grid_graph(4, 6), 2
    if name == "geometric":
        return graphs.random_geometric_graph(30, 0.35, g), 3
    if name == "augmentation":
        return graphs.augmentation_graph(g)[0], 3
    if name == "cycle":
        return graphs.cycle_graph(12), 3
    raise KeyError(f"unknown graph case {name!r}")


@pytest.fixture(params=GRAPH_CASES)
def graph(request) -> tuple[np.ndarray, int]:
    """(W, k) for each graph family with a distinct top-k spectrum."""
    return make_graph(request.param)


@pytest.fixture(params=GRAPH_CASES + SPAN_ONLY_CASES)
def any_graph(request) -> tuple[np.ndarray, int]:
    """(W, k) for every family, including those with a degenerate top-k (span tests only)."""
    return make_graph(request.param)
