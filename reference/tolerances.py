"""The one table of numerical tolerances: how closely twins and identities must agree.

`reference/` and `scaled/` are compared at these rows everywhere: the tests (`tests/conftest.py`
re-exports this module), the notebooks and any check a user writes. float64 comparisons are tight;
float32 and bfloat16 rows are looser and each row says why (docs/design.md, "Tolerances"). Do not
loosen a row to make a test pass: find the bug. NumPy-free and torch-free: plain Python.
"""

from __future__ import annotations

__all__ = ["GRADIENT_ROWS", "TOLERANCES", "tol"]

# dtype -> (rtol, atol); import as `from reference.tolerances import tol, TOLERANCES`.
TOLERANCES: dict[str, tuple[float, float]] = {
    # Exact arithmetic up to round-off of O(N k) sums: a relative 1e-10 is orders above eps=2e-16.
    "float64": (1e-10, 1e-12),
    # eps=1.2e-7, sums over B*k ~ 1e4..1e5 terms: round-off grows like sqrt(n) * eps ~ 1e-5.
    "float32": (1e-4, 1e-5),
    # Values of the minibatch losses from bf16 inputs (8-bit mantissa, unit round-off u = 2^-8
    # = 3.9e-3) with float32 accumulation: a loss of degree 2m in the inputs (m <= 5 for the alpha
    # rows tested) moves by up to ~2m u = 3.9% relative (measured <= 3.4%, B 1-513, k 3-16).
    "bfloat16": (5e-2, 5e-2),
    # Gradients of those losses from bf16 inputs, relative norm error (atol unused): a gradient
    # of degree 2m - 1 moves by up to ~(2m - 1) u = 3.5% entrywise for m = 5, less in norm; the
    # largest measured was 1.07% (alpha 1.25, k 3, B 7; seeds 0-2, B 1-513, k 3-16), and 3e-2 is
    # 2.8x that. A zero gradient (error 1) and a 10% error both fail it.
    "bfloat16_grad": (3e-2, 0.0),
    # One whole training step of a network under bf16 autocast vs float32: the relative norm
    # error of all its parameter gradients (rtol; atol unused). A small ResNet's gradient at
    # initialisation is ill-conditioned: rounding only its weights to bf16 (all else float32)
    # already moves it by ~0.14 in relative norm, full autocast by 0.22-0.25 (measured on the CPU,
    # tests/perf/_gpu_path_scenario.py: minc 0.246, spectral 0.244, channels_last 0.224 / 0.230).
    # No independent bound is known, so 0.5 is 2x the largest measured. It rejects a zero
    # gradient (error 1) and a gradient off by 100% or more, but NOT a 10% or 40% error: this row
    # resolves only gross errors (GRADIENT_ROWS; tests/equivalence/test_checks_bite.py checks it).
    "bfloat16_network_grad": (0.5, 0.0),
    # The same step under fp16 autocast (10-bit mantissa, u = 2^-11) with a GradScaler started
    # where step 1 does not overflow: measured 0.074 (minc) and 0.073 (spectral) relative norm
    # error at loss scales 1 to 2^10 (tests/perf/_gpu_path_scenario.py); 0.15 is 2x that. It
    # rejects a zero gradient and a 30% error (checked), not a 10% one.
    "float16_network_grad": (0.15, 0.0),
    # Analytic gradient vs central finite differences in float64 (tests/derivation): with step
    # h = 1e-5 the truncation error is O(h^2) ~ 1e-10 and round-off O(eps |f| / h) ~ 1e-11, both
    # relative to |grad|; 1e-6 (a relative norm error) leaves room for ill-scaled entries.
    "fd_central": (1e-6, 0.0),
    # A float32 image op against the same op in PIL on uint8 (the `--loader torch` reference):
    # PIL rounds its output, and its luma (contrast, saturation, grayscale) to integers; the two
    # differ by at most one level plus the rounding of PIL's integer luma (measured: 1.17 levels).
    "uint8": (0.0, 1.5 / 255),
    # PIL's hue shift works on a uint8 HSV image: the shift is truncated to 1/255 of a turn
    # (np.uint8(h * 255)), PIL's own hue is quantised to 1/255 of a turn on the way in and out,
    # and S, V are integers. Within a sextant a channel moves 6 C levels per turn (chroma C <= 255
    # levels), so each of those 3 hue quantisations moves a pixel by up to 6 levels: 18, plus
    # the rounding of S, V and the output (1.5) is 19.5 levels; 24 is above that. Measured: 16.5
    # levels on 20 generated photos x 7 shifts in [-0.5, 0.5] (the old bound, 16, was the
    # largest error then seen on 3 photos). The max alone is weak; the mean row below bites.
    "pil_hue": (0.0, 24 / 255),
    # The mean |error| over an image of that hue shift (atol; rtol unused): measured at most
    # 1.76 levels (the 140 images above); 3.5 is 2x that. Compare with `mean < atol`.
    "pil_hue_mean": (0.0, 3.5 / 255),
    # The CPU stage's resize (torchvision's antialiased uint8 tensor resize) against PIL's: the
    # same separable filter, different fixed-point accumulation. Measured on 200 crops (scale
    # 0.08-1, 500x375 photos to 224 px): bilinear within 1 level; bicubic within 4 levels, but
    # only 8e-6 of pixels beyond 1 level (a sharp upscaled edge); on average 2% of pixels differ.
    # tests/end_to_end/test_cpu_stage.py bounds those fractions, which is what bites; the max is
    # set at 2x the measured 4 levels (no independent bound for the bicubic's fixed point).
    "uint8_resize": (0.0, 8 / 255),
}


# The rows that compare gradients and their rule (tests/gradient_checks.py applies it):
# "entrywise" is assert_allclose at (rtol, atol); "relative_norm" is
# ||got - want|| <= rtol ||want||.
# `resolves`: the relative error of the whole gradient that the row must reject besides a zero
# gradient (tests/equivalence/test_checks_bite.py feeds both and expects failure).
GRADIENT_ROWS: dict[str, dict[str, object]] = {
    "float64": {"rule": "entrywise", "resolves": 0.1},
    "float32": {"rule": "entrywise", "resolves": 0.1},
    "bfloat16_grad": {"rule": "relative_norm", "resolves": 0.1},
    "fd_central": {"rule": "relative_norm", "resolves": 0.1},
    "bfloat16_network_grad": {"rule": "relative_norm", "resolves": 1.0},  # 2x its rtol
    "float16_network_grad": {"rule": "relative_norm", "resolves": 0.3},  # 2x its rtol
}


def tol(dtype: str) -> dict[str, float]:
    """Keyword arguments for assert_allclose at the tolerance row of `dtype`."""
    rtol, atol = TOLERANCES[dtype]
    return {"rtol": rtol, "atol": atol}
