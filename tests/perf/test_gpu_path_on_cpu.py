"""The GPU path of the trainer (bf16 / fp16 autocast, channels_last, torch.compile), run on the CPU.

On CUDA the trainer defaults to bf16 autocast and channels_last (`--amp auto`, `--channels-last`
unset); on the CPU it defaults to float32 contiguous, and explicit `--amp bf16|fp16`,
`--channels-last` and `--compile` are honoured there too, so these lines run before any GPU does.
Each check runs the real `build_run_state` + `train_step` in 2 gloo processes (small ResNet,
3 steps) for MINC and the pairwise spectral loss, against the float32 eager run of the same seed:

- every setting finishes with finite losses, and DDP gives both ranks the same gradient;
- bf16 (and fp16) autocast: the first step's loss agrees with float32 at the `bfloat16` row and
  the whole gradient at the `bfloat16_network_grad` row (fp16: `float16_network_grad`;
  reference/tolerances.py); the online network's outputs are bf16 (autocast is on), while
  `C_batch`, `Cbar` and the loss stay float32;
- fp16 adds a GradScaler. Started at `FP16_INIT_SCALE` (2^10) step 1 does not overflow and its
  unscaled gradient is compared (the test asserts that the comparison ran); at GradScaler's
  default 2^16 step 1 overflows: it is skipped and the scale halved (what GradScaler is for);
- channels_last: the weights are channels_last, loss and gradient equal contiguous at `float32`;
- `--compile` (slow: inductor compiles C++ on the CPU): every step's loss and the first gradient
  equal eager at `float32`, and dynamo compiles no new graph after the first step.
"""

from __future__ import annotations

import math

import pytest
import torch
from numpy.testing import assert_allclose

from reference.tolerances import TOLERANCES, tol
from tests.gloo import spawn_ranks
from tests.gradient_checks import assert_gradient_close
from tests.perf import _gpu_path_scenario as sc

TIMEOUT_S = 900.0  # a hang detector for the spawned ranks, not a speed gate
METHODS = ("minc", "spectral")


def two_processes(tmp_path, monkeypatch, methods, variants) -> list[dict]:
    """`sc.worker` in 2 gloo processes; each rank's {(method, variant): record}."""
    return spawn_ranks(sc.worker, 2, tmp_path, monkeypatch, methods, variants, timeout=TIMEOUT_S)


def relative_error(g: torch.Tensor, g_ref: torch.Tensor) -> float:
    return float((g - g_ref).norm() / g_ref.norm())


def check_common(ranks: list[dict], method: str, variant: str) -> None:
    """Finite losses on every rank and step, one DDP-synchronised gradient, float32 loss."""
    for rec in (r[(method, variant)] for r in ranks):
        assert all(math.isfinite(x) for x in rec["loss"]), (method, variant, rec["loss"])
        assert rec["loss_dtype"] == torch.float32
    g0, g1 = (r[(method, variant)]["grad"] for r in ranks)
    if torch.isfinite(g0).all():
        assert_allclose(g0.numpy(), g1.numpy(), **tol("float32"))


def check_autocast(ranks: list[dict], method: str, variant: str, dtype: torch.dtype) -> int:
    """Autocast is on (bf16/fp16 outputs), statistics stay float32, step 1 agrees with fp32.

    Returns the number of gradient comparisons that ran (one per rank).
    """
    row = {torch.bfloat16: "bfloat16_network_grad", torch.float16: "float16_network_grad"}[dtype]
    compared = 0
    for r in ranks:
        rec, ref = r[(method, variant)], r[(method, "fp32")]
        assert rec["out_dtype"] == dtype
        assert ref["out_dtype"] == torch.float32
        if method == "minc":
            assert rec["stat_dtypes"], "update_cbar was not called"
            assert set(rec["stat_dtypes"]) == {(torch.float32, torch.float32)}
        assert_allclose(rec["loss"][0], ref["loss"][0], **tol("bfloat16"))
        if dtype == torch.float16:  # the scale did not move at step 1: it did not overflow
            assert rec["scales"][0] == rec["init_scale"] == sc.FP16_INIT_SCALE, rec["scales"]
        assert torch.isfinite(rec["grad"]).all(), f"{method} {variant}: step 1 overflowed"
        assert_gradient_close(rec["grad"], ref["grad"], row, f"{method} {variant}")
        compared += 1
    return compared


def check_fp16_overflow_backs_off(ranks: list[dict], method: str) -> None:
    """At GradScaler's default scale step 1 overflows: skipped, and the scale halved."""
    for r in ranks:
        rec = r[(method, "fp16_overflow")]
        assert rec["init_scale"] == 65536.0
        assert not torch.isfinite(rec["grad"]).all(), "no overflow: this check tests nothing"
        assert rec["scales"][0] == 32768.0, rec["scales"]


@pytest.mark.distributed  # 12 s here on a quiet machine (2 processes x 10 short runs)
@pytest.mark.xdist_group("distributed")
@pytest.mark.timeout(TIMEOUT_S + 60)
def test_amp_and_channels_last_on_cpu(tmp_path, monkeypatch) -> None:
    variants = ("fp32", "bf16", "fp16", "fp16_overflow", "channels_last", "bf16_channels_last")
    ranks = two_processes(tmp_path, monkeypatch, METHODS, variants)
    for method in METHODS:
        for variant in variants:
            check_common(ranks, method, variant)
        assert check_autocast(ranks, method, "bf16", torch.bfloat16) == 2
        assert check_autocast(ranks, method, "bf16_channels_last", torch.bfloat16) == 2
        assert check_autocast(ranks, method, "fp16", torch.float16) == 2  # fp16 was compared
        check_fp16_overflow_backs_off(ranks, method)
        for r in ranks:
            rec, ref = r[(method, "channels_last")], r[(method, "fp32")]
            assert rec["channels_last_weights"] and not ref["channels_last_weights"]
            assert r[(method, "bf16_channels_last")]["channels_last_weights"]
            assert_allclose(rec["loss"], ref["loss"], **tol("float32"))
            assert relative_error(rec["grad"], ref["grad"]) < TOLERANCES["float32"][0]


@pytest.mark.slow  # inductor compiles C++ kernels: 198 s here with cold per-rank caches, less warm
@pytest.mark.timeout(2 * TIMEOUT_S)
@pytest.mark.distributed
@pytest.mark.xdist_group("distributed")
def test_compiled_step_equals_eager_and_compiles_once(tmp_path, monkeypatch) -> None:
    ranks = two_processes(tmp_path, monkeypatch, ("minc",), ("fp32", "compile"))
    check_common(ranks, "minc", "compile")
    for r in ranks:
        rec, ref = r[("minc", "compile")], r[("minc", "fp32")]
        assert_allclose(rec["loss"], ref["loss"], **tol("float32"))
        assert relative_error(rec["grad"], ref["grad"]) < TOLERANCES["float32"][0]
        assert rec["graphs"][0] >= 1, "dynamo compiled nothing: is --compile honoured?"
        assert rec["graphs"] == [rec["graphs"][0]] * sc.STEPS, f"recompiled: {rec['graphs']}"


def test_cpu_defaults_stay_float32_and_contiguous() -> None:
    """Defaults (`--amp auto`, no `--channels-last`): CPU float32 contiguous, CUDA bf16 NHWC."""
    from scaled.config import PretrainConfig
    from scaled.pretrain import precision_and_format

    cfg = PretrainConfig()
    assert precision_and_format(cfg, "cpu") == (torch.preserve_format, None)
    assert precision_and_format(cfg, "cuda") == (torch.channels_last, torch.bfloat16)
    explicit = sc.config("minc", amp="fp16", channels_last=True)
    assert precision_and_format(explicit, "cpu") == (torch.channels_last, torch.float16)
