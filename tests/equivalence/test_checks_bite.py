"""The gradient comparisons of the tests can fail: zeroed and perturbed gradients are rejected.

For every row of reference/tolerances.py that compares gradients (`GRADIENT_ROWS`), the very
helper the tests compare with (`tests.gradient_checks.assert_gradient_close`) is fed the
gradient a test of that row compares against, zeroed, scaled by 1 + `resolves` (10% for every
row but the whole-network ones, which resolve only 2x their rtol, as their comments say) and
moved in a random direction by that relative norm; each must fail, while the right answer (the
twin's gradient, or the exact one for `fd_central`) passes.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

import reference.losses as ref
import scaled.losses as sca
from reference.tolerances import GRADIENT_ROWS, TOLERANCES
from tests.derivation.finite_differences import central_difference
from tests.equivalence.test_losses_equal import batch_inputs
from tests.gradient_checks import assert_gradient_close, check_can_fail, gradient_error

TORCH = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}


def twin_gradient(dtype: str, k: int = 8, B: int = 513) -> tuple[np.ndarray, np.ndarray]:
    """(scaled's autograd gradient, reference's) of spectral_loss_batch w.r.t. z1, as
    tests/equivalence/test_losses_equal.py compares them (bf16 inputs under CPU autocast)."""
    z1, z2 = batch_inputs("random", 0, k, B)
    t1, t2 = (torch.tensor(z).to(TORCH[dtype]).requires_grad_() for z in (z1, z2))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        out = sca.spectral_loss_batch(t1, t2)
    (g,) = torch.autograd.grad(out, t1)
    return g.double().numpy(), ref.spectral_loss_batch_grad(z1, z2)[0]


def case(row: str) -> tuple[np.ndarray, np.ndarray]:
    """(the right answer, the gradient compared against) at the row `row`."""
    if row in ("float64", "float32"):
        return twin_gradient(row)
    if row == "bfloat16_grad":
        return twin_gradient("bfloat16")
    if row == "fd_central":
        z1, z2 = batch_inputs("sbm", 0, 3, 7)
        exact = ref.spectral_loss_batch_grad(z1, z2)[0]
        return exact, central_difference(lambda z: ref.spectral_loss_batch(z, z2), z1)
    # the whole-network rows: a float32 gradient and its value after one bf16 rounding of the
    # inputs is not available without a network; these rows are relative norms, scale-free, so
    # any gradient shows what they reject (the network gradients are in tests/perf)
    g, want = twin_gradient("float64")
    return g, want


@pytest.mark.parametrize("row", GRADIENT_ROWS)
def test_right_gradient_passes_and_wrong_ones_fail(row):
    right, want = case(row)
    assert_gradient_close(right, want, row, "the right answer")
    off = GRADIENT_ROWS[row]["resolves"]
    direction = np.random.default_rng(0).standard_normal(want.shape)
    direction *= off * np.linalg.norm(want) / np.linalg.norm(direction)
    wrong = {"zero": np.zeros_like(want), "scaled": (1 + off) * want, "moved": want + direction}
    for name, g in wrong.items():
        with pytest.raises(AssertionError):
            assert_gradient_close(g, want, row, name)


def test_every_gradient_row_resolves_what_it_says():
    """10% for every row that is not a whole network's; those: 2x their rtol, at most 100%."""
    for row, spec in GRADIENT_ROWS.items():
        rtol = TOLERANCES[row][0]
        assert spec["rule"] in ("entrywise", "relative_norm")
        if row.endswith("_network_grad"):
            assert spec["resolves"] == pytest.approx(2 * rtol) and spec["resolves"] <= 1
        else:
            assert spec["resolves"] == 0.1


def test_old_bf16_comparison_passed_a_zero_gradient():
    """What the bf16 test did before: assert_allclose at the `bfloat16` row (atol 5e-2). At k = 8,
    B = 513 every entry of the reference gradient is below 0.012, so zero passed; the can-fail
    check rejects that comparison, and the relative-norm row `bfloat16_grad` does not pass it."""
    _, want = twin_gradient("bfloat16")
    rtol, atol = TOLERANCES["bfloat16"]
    assert np.abs(want).max() < atol
    assert_allclose(np.zeros_like(want), want, rtol=rtol, atol=atol)  # the old check: passes
    with pytest.raises(AssertionError, match="cannot fail"):
        check_can_fail_as(want, "bfloat16", "entrywise")
    assert gradient_error(np.zeros_like(want), want) == 1.0 > TOLERANCES["bfloat16_grad"][0]


def check_can_fail_as(want, row: str, rule: str) -> None:
    """`check_can_fail` with `row` given the rule `rule` (a row that compares no gradient)."""
    GRADIENT_ROWS[row] = {"rule": rule, "resolves": 0.1}
    try:
        check_can_fail(want, row, "old bf16 check")
    finally:
        del GRADIENT_ROWS[row]


def test_a_gradient_below_atol_cannot_be_compared_entrywise():
    tiny = np.full((4, 3), 0.5 * TOLERANCES["float32"][1])
    with pytest.raises(AssertionError, match="cannot fail"):
        assert_gradient_close(tiny, tiny, "float32")


def test_an_expected_zero_gradient_needs_an_exact_zero():
    assert_gradient_close(np.zeros(5), np.zeros(5), "float64")
    with pytest.raises(AssertionError, match="zero gradient"):
        assert_gradient_close(np.full(5, 1e-300), np.zeros(5), "float64")


def test_design_doc_lists_every_row_at_its_values():
    """docs/design.md, "Tolerances": one line per row of TOLERANCES, at the same numbers."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "design.md").read_text()
    section = text[text.index("## Tolerances") :]
    section = section[: section.index("\n## ", 1)]
    shown = {}
    for row, values in re.findall(r"^\| `(\w+)` \| ([^|]+) \|", section, flags=re.M):
        rtol, atol = (v.strip() for v in values.split(","))
        shown[row] = tuple(0.0 if v == "-" else _number(v) for v in (rtol, atol))
    assert shown.keys() == TOLERANCES.keys()
    for row, (rtol, atol) in TOLERANCES.items():
        assert shown[row] == pytest.approx((rtol, atol), rel=1e-12), row


def _number(text: str) -> float:
    num, _, den = text.partition("/")
    return float(num) / (float(den) if den else 1.0)
