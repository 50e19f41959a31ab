"""Shared test configuration: the seeded generator and the graph fixtures.

TOLERANCES and tol() are the one table of numerical tolerances (docs/design.md, "Tolerances");
they live in `reference/tolerances.py` and are re-exported here, so tests may import them from
either place. Library code and notebooks import them from `reference.tolerances`.
"""

from __future__ import annotations

import numpy as np
import pytest

from reference.tolerances import TOLERANCES, tol

# TOLERANCES and tol are re-exported: `from tests.conftest import tol` keeps working.
__all__ = ["GRAPH_CASES", "SPAN_ONLY_CASES", "TOLERANCES", "make_graph", "tol"]


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
