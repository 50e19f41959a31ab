"""The device stage (`scaled.augment.device_stage`) as a whole: per sample, the torchvision tensor
ops of that sample's parameters; each drawn op on the samples that drew it only (the batch plan);
bfloat16 within its row of reference/tolerances.py; no op that syncs the host; compiled equal to
eager."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torchvision.transforms.functional as TF
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import default_collate

from reference.tolerances import tol
from scaled import augment as A
from scaled.config import PretrainConfig
from scaled.data import pretrain_dataset
from scaled.tools.bench.loader import synthetic_views, write_jpeg_folder

CPU, FMT = torch.device("cpu"), torch.contiguous_format
TV_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> list[dict]:
    """Both views of 24 photo-like JPEGs through the CPU stage as the DataLoader batches them
    (`__getitems__`: with the batch plan), collated. 64 px views: a 7 px blur kernel."""
    root = tmp_path_factory.mktemp("jpegs")
    write_jpeg_folder(root, 24, seed=5, size=(160, 120))
    cfg = replace(PretrainConfig(), data_dir=str(root), image_size=64)
    ds = pretrain_dataset(cfg, two_stage=True)[0]
    items = ds.__getitems__([(2, i) for i in range(24)])
    return [default_collate([it[v] for it in items]) for v in (0, 1)]


def reference(pixels: torch.Tensor, p: dict[str, torch.Tensor], kernel: int) -> torch.Tensor:
    """One sample through torchvision's tensor ops with its parameters, in the reference order."""
    x = pixels.permute(2, 0, 1).float() / 255
    if p["flip"]:
        x = TF.hflip(x)
    if p["jitter"]:
        for k in p["order"].tolist():
            x = TV_OPS[k](x, float(p["factors"][k]))
    if p["gray"]:
        x = TF.rgb_to_grayscale(x, 3)
    if p["blur"]:
        x = TF.gaussian_blur(x, [kernel] * 2, [float(p["sigma"])] * 2)
    if p["solarize"]:
        x = TF.solarize(x, 128 / 255)
    return TF.normalize(x, A.IMAGENET_MEAN, A.IMAGENET_STD)


def without_plan(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.startswith("plan")}


@pytest.mark.parametrize("plan", [True, False], ids=["with plan", "selects"])
def test_each_sample_gets_torchvisions_ops_with_its_own_parameters(batches, plan):
    """With the batch plan (ops on the samples that drew them) and without (every op, then a
    select), each output sample equals torchvision's ops with that sample's parameters at the
    float32 row; the check can fail: the next sample's parameters give a different image."""
    kernel = A.blur_kernel_size(64)
    for batch in batches:
        out = A.device_stage(batch if plan else without_plan(batch), CPU, FMT)
        fields = A.colour_fields(batch["colour"])
        drawn = A.drawn_ops(fields)
        assert 0 < int(drawn[:, 0].sum()) < len(out)  # flipped and unflipped samples
        assert 0 < int(drawn[:, 1].sum()) or int(drawn[:, 4:].sum()) > 0  # ops are drawn
        for i in range(len(out)):
            p = {k: v[i] for k, v in fields.items()}
            torch.testing.assert_close(out[i], reference(batch["pixels"][i], p, kernel),
                                       **tol("float32"))  # fmt: skip
        q = {k: v[1] for k, v in fields.items()}
        assert (out[0] - reference(batch["pixels"][0], q, kernel)).abs().max() > 0.05


def test_the_plan_says_who_drew_each_op(batches):
    for batch in batches:
        drawn = A.drawn_ops(A.colour_fields(batch["colour"]))
        counts = batch["plan_counts"].shape[2:]
        assert batch["plan_counts"].numel() == 0 and len(counts) == len(A.PLANNED)
        for j, name in enumerate(A.PLANNED):
            n = counts[j]
            assert n == int(drawn[:, j].sum()), name
            slots = batch["plan_slots"][:, j]
            assert sorted(slots.tolist()) == list(range(len(slots)))  # a permutation
            assert drawn[slots[:n], j].all() and not drawn[slots[n:], j].any(), name


def test_blur_and_hue_run_on_the_samples_that_drew_them_only(batches, monkeypatch):
    """The blur sees n_blur samples (none when none drew it: view 1 of BYOL blurs all, view 2
    at p 0.1), hue each jittered sample once; without a plan both see the whole batch."""
    seen: dict[str, list[int]] = {"blur": [], "hue": []}
    blur, hue = A.gaussian_blur, A.adjust_hue

    def counting_blur(x, kernel, sigma):
        seen["blur"].append(len(x))
        return blur(x, kernel, sigma)

    def counting_hue(x, factor):
        seen["hue"].append(len(x))
        return hue(x, factor)

    monkeypatch.setattr(A, "gaussian_blur", counting_blur)
    monkeypatch.setattr(A, "adjust_hue", counting_hue)
    for batch in batches:
        fields = A.colour_fields(batch["colour"])
        seen = {"blur": [], "hue": []}
        A.device_stage(batch, CPU, FMT)
        n_blur = int(fields["blur"].sum())
        assert seen["blur"] == ([n_blur] if n_blur else [])
        assert sum(seen["hue"]) == int(fields["jitter"].sum())
        seen = {"blur": [], "hue": []}
        A.device_stage(without_plan(batch), CPU, FMT)
        assert seen["blur"] == [len(fields["blur"])] and seen["hue"] == [len(fields["blur"])] * 4
    # BYOL: view 1 always blurs (p 1), view 2 rarely (p 0.1)
    assert bool(A.colour_fields(batches[0]["colour"])["blur"].all())


def pixel_values(x: torch.Tensor) -> torch.Tensor:
    """Normalised views back to pixel values in [0, 1] (the values the stage's dtype holds)."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (A.IMAGENET_MEAN, A.IMAGENET_STD))
    return x * std + mean


def test_bfloat16_stage_is_within_the_bfloat16_row(batches):
    """The stage in bfloat16 (its CUDA dtype, `STAGE_DTYPE`) against float32, in pixel values:
    within the `bfloat16` row, at most a few levels (a bf16 rounding per op), on average under
    half a level; the check can fail (float32 against the next sample's output)."""
    for batch in batches:
        pixels = batch["pixels"].permute(0, 3, 1, 2)
        params = {k: v for k, v in batch.items() if k != "pixels"}
        f32 = pixel_values(A.augment_batch(pixels, params, dtype=torch.float32))
        b16 = A.augment_batch(pixels, params, dtype=torch.bfloat16)
        assert b16.dtype == torch.float32  # the network's input stays float32
        b16 = pixel_values(b16)
        torch.testing.assert_close(b16, f32, **tol("bfloat16"))
        levels = (b16 - f32).abs() * 255
        assert levels.max() < 6 and levels.mean() < 0.5, (levels.max(), levels.mean())
        assert (f32.roll(1, 0) - f32).abs().max() > 5 * tol("bfloat16")["atol"]
    assert A.STAGE_DTYPE["cuda"] == torch.bfloat16


HOST_SYNC_OPS = {"_local_scalar_dense", "nonzero", "lift_fresh", "item", "_assert_async"}


class Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_no_op_that_syncs_the_host_after_the_first_batch(monkeypatch):
    """After a warm-up batch (the constants are built once per device and dtype), a batch of
    the stage runs no `.item()`, `nonzero` or tensor from Python data. The check can fail: with
    the constants built on every call it sees `lift_fresh` (a `torch.tensor(list)`)."""
    views = synthetic_views(6, 32)
    A.device_stage(views[0], CPU, FMT)
    with Ops() as ops:
        for v in views:
            A.device_stage(v, CPU, FMT)
    assert ops.names and not HOST_SYNC_OPS & set(ops.names)
    monkeypatch.setattr(A, "_constants", A._constants.__wrapped__)  # no cache
    with Ops() as ops:
        A.device_stage(views[0], CPU, FMT)
    assert "lift_fresh" in ops.names


@pytest.mark.slow  # about a minute: inductor compiles two regions on the CPU
def test_compiled_stage_equals_eager(batches):
    """`torch.compile` of the colour and finish regions (the CUDA default, `STAGE_COMPILE`)
    gives the eager stage's views at the float32 row."""
    batch = batches[1]
    pixels = batch["pixels"][:4].permute(0, 3, 1, 2)
    params = {k: v[:4] for k, v in without_plan(batch).items() if k != "pixels"}
    eager = A.augment_batch(pixels, params, compile=False)
    compiled = A.augment_batch(pixels, params, compile=True)
    torch.testing.assert_close(compiled, eager, **tol("float32"))
    half = A.augment_batch(pixels, params, compile=True, out_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half, compiled.bfloat16())


def test_autocast_dtype_output_is_the_float32_output_rounded_once(batches):
    """With the run's autocast dtype as `out_dtype` (what `train_step` passes) the stage
    writes the float32 views rounded once, bit for bit: what the network's first convolution
    made of the float32 views under autocast; in the requested memory format. The check can
    fail: rounding another sample's views differs."""
    for batch in batches:
        pixels = batch["pixels"].permute(0, 3, 1, 2)
        params = {k: v for k, v in batch.items() if k != "pixels"}
        f32 = A.augment_batch(pixels, params, memory_format=torch.channels_last)
        for dtype in (torch.bfloat16, torch.float16):
            out = A.augment_batch(
                pixels, params, memory_format=torch.channels_last, out_dtype=dtype
            )
            assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(out, f32.to(dtype))
            assert not torch.equal(out, f32.roll(1, 0).to(dtype))
        x, ref = A.device_stage(batch, CPU, FMT, torch.bfloat16), A.device_stage(batch, CPU, FMT)
        assert x.dtype == torch.bfloat16 and torch.equal(x, ref.bfloat16())


def test_a_compiler_failure_falls_back_to_eager_once(batches, monkeypatch, capsys):
    """Where compiling is the default and the compiler fails (a node without a working
    compiler), the stage warns in one line and runs eager from then on: the same views."""

    def broken(fn):
        def fail(*args, **kwargs):
            raise RuntimeError("no compiler here\nsecond line")

        return fail

    monkeypatch.setattr(A, "_compiled", broken)
    monkeypatch.setitem(A.STAGE_COMPILE, "cpu", True)
    batch = batches[0]
    got = A.device_stage(batch, CPU, FMT)
    assert A.STAGE_COMPILE["cpu"] is False
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no compiler here" in err[0] and "eager" in err[0]
    monkeypatch.setitem(A.STAGE_COMPILE, "cpu", False)
    torch.testing.assert_close(got, A.device_stage(batch, CPU, FMT), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="no compiler"):  # compile=True asked for: no fallback
        A.augment_batch(batch["pixels"].permute(0, 3, 1, 2), without_plan(batch), compile=True)
