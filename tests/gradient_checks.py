"""The one comparison of gradients the tests use: `assert_gradient_close(got, want, row)`.

Each row of reference/tolerances.py that compares gradients names its rule in
`GRADIENT_ROWS`: "entrywise" (assert_allclose at the row's rtol / atol) or "relative_norm"
(||got - want|| <= rtol ||want||). Before comparing, the helper checks that the comparison can
fail: that the same rule would reject an all-zero gradient and `want` off by the row's
`resolves` fraction (10% for every row but the whole-network one, see its comment). A call
whose `want` is so small that a zero gradient would pass (entries below the row's atol) fails
with "cannot fail", so no gradient comparison in the tests is vacuous.
tests/equivalence/test_checks_bite.py feeds this helper zeroed and perturbed gradients for every
row and expects failure.
"""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose

from reference.tolerances import GRADIENT_ROWS, TOLERANCES

__all__ = ["assert_gradient_close", "check_can_fail", "gradient_error", "passes"]


def _arrays(got, want) -> tuple[np.ndarray, np.ndarray]:
    as_np = [g.detach().double().cpu().numpy() if hasattr(g, "detach") else g for g in (got, want)]
    return tuple(np.asarray(a, dtype=np.float64) for a in as_np)


def gradient_error(got, want) -> float:
    """||got - want|| / ||want|| (Frobenius norm over all entries)."""
    got, want = _arrays(got, want)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def passes(got, want, row: str) -> bool:
    """Whether `got` is within the rule of `row` of `want` (no can-fail check)."""
    got, want = _arrays(got, want)
    rtol, atol = TOLERANCES[row]
    if GRADIENT_ROWS[row]["rule"] == "relative_norm":
        return bool(np.linalg.norm(got - want) <= rtol * np.linalg.norm(want))
    return bool(np.all(np.abs(got - want) <= atol + rtol * np.abs(want)))


def check_can_fail(want, row: str, err_msg: str = "") -> None:
    """Fail unless the rule of `row` rejects a zero gradient and `want` off by `resolves`."""
    _, want = _arrays(want, want)
    off = 1.0 + GRADIENT_ROWS[row]["resolves"]
    wrong = {"zero": np.zeros_like(want), f"x{off:g}": off * want}
    passing = [name for name, g in wrong.items() if passes(g, want, row)]
    assert not passing, (
        f"{err_msg}: this comparison at row {row!r} cannot fail: {passing} gradients pass "
        f"(max |want| = {np.max(np.abs(want)):.3g}); compare at a rule or scale that can"
    )


def assert_gradient_close(got, want, row: str, err_msg: str = "") -> None:
    """`got` equals the gradient `want` at the row `row` of reference/tolerances.py.

    An all-zero `want` (an input under stop-gradient) needs an all-zero `got`, exactly.
    """
    got, want = _arrays(got, want)
    assert got.shape == want.shape, (err_msg, got.shape, want.shape)
    if not np.any(want):
        worst = np.abs(got).max()
        assert not np.any(got), f"{err_msg}: expected a zero gradient, max |got| {worst}"
        return
    check_can_fail(want, row, err_msg)
    rtol, atol = TOLERANCES[row]
    if GRADIENT_ROWS[row]["rule"] == "relative_norm":
        err = gradient_error(got, want)
        assert err <= rtol, f"{err_msg}: relative gradient error {err:.3g} > {rtol:g} ({row})"
    else:
        assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=err_msg)
