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
    # One whole training step of a network under bf16 (or fp16) autocast vs float32: the relative
    # norm error of all its parameter gradients (rtol; atol unused). A small ResNet's gradient at
    # initialisation is ill-conditioned: rounding only its weights to bf16 (all else float32)
    # already moves it by ~0.14 in relative norm, full autocast by ~0.20-0.22 (measured on the
    # CPU, tests/perf/test_gpu_path_on_cpu.py); 0.3 is that with room for other seeds and sizes.
    "bfloat16_network_grad": (0.3, 0.0),
    # Analytic gradient vs central finite differences in float64 (tests/derivation): with step
    # h = 1e-5 the truncation error is O(h^2) ~ 1e-10 and round-off O(eps |f| / h) ~ 1e-11, both
    # relative to |grad|; 1e-6 (a relative norm error) leaves room for ill-scaled entries.
    "fd_central": (1e-6, 0.0),
    # A float32 image op against the same op in PIL on uint8 (the `--loader torch` reference):
    # PIL rounds its output, and its luma (contrast, saturation, grayscale) to integers; the two
    # differ by at most one level plus the rounding of PIL's integer luma (measured: 1.17 levels).
    "uint8": (0.0, 1.5 / 255),
    # PIL's hue shift works on a uint8 HSV image: hue is quantised to 1/256 of a turn and S, V to
    # integers before converting back, so a pixel moves by up to ~12 levels (measured 12.2 on
    # generated photos, mean about 1) against the exact float shift of torchvision's tensor op.
    "pil_hue": (0.0, 16 / 255),
    # The CPU stage's resize (torchvision's antialiased uint8 tensor resize) against PIL's: the
    # same separable filter, different fixed-point accumulation. Measured on 200 crops (scale
    # 0.08-1, 500x375 photos to 224 px): bilinear within 1 level; bicubic within 4 levels, but
    # only 8e-6 of pixels beyond 1 level (a sharp upscaled edge); on average 2% of pixels differ.
    # tests/end_to_end/test_cpu_stage.py also bounds those fractions.
    "uint8_resize": (0.0, 4.5 / 255),
}


def tol(dtype: str) -> dict[str, float]:
    """Keyword arguments for assert_allclose at the tolerance row of `dtype`."""
    rtol, atol = TOLERANCES[dtype]
    return {"rtol": rtol, "atol": atol}
