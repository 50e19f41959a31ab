"""`bench loader`'s counts of the device stage (`scaled.tools.bench.loader`): the bytes and
arithmetic `ByteCounter` gives known ops, inductor's count of the compiled regions, and the
roofline of `h100_share`. Each check can fail: a changed dtype, shape or op changes its count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as nnf

from scaled.tools.bench import loader as L


def test_byte_counter_counts_known_ops():
    """An add of two (4, 8) float32 tensors reads 256 bytes, writes 128 and does 32 ops; in
    bfloat16 half the bytes; a view is free; a convolution does 2 x taps ops per output
    element, a factory op none; an expanded (stride 0) operand is read once."""
    counter = L.ByteCounter()
    a, b = torch.ones(4, 8), torch.ones(4, 8)
    with counter:
        a + b
    assert dict(counter.rows) == {("stage", "add"): [1, 256, 128]} and counter.ops == 32
    half = L.ByteCounter()
    with half:
        a.bfloat16()  # the cast itself: a copy, no arithmetic
    with L.ByteCounter() as h2:
        a.bfloat16() + b.bfloat16()
    assert h2.rows[("stage", "add")] == [1, 128, 64] and half.ops == 0
    with L.ByteCounter() as views:
        a.view(8, 4).permute(1, 0)
    assert not views.rows and views.ops == 0
    with L.ByteCounter() as conv:
        torch.ones(3)  # a factory op: bytes written, no arithmetic
        nnf.conv2d(torch.ones(1, 2, 10, 10), torch.ones(2, 1, 1, 5), groups=2)
    assert conv.ops == 2 * 5 * (2 * 10 * 6)
    with L.ByteCounter() as wide:
        a + torch.ones(1, 8).expand(4, 8)
    assert wide.rows[("stage", "add")][1] == 128 + 32


def test_h100_share_is_the_longer_of_bytes_and_ops():
    """Memory-bound: the bytes set the time; compute-bound: the ops; the share grows with
    either."""
    step = 1e13
    mem = L.h100_share(3.35e9, step, stage_ops=1e9)  # 1 ms of bytes, 0.015 ms of ops
    assert mem["stage_ms"] == pytest.approx(1.0) and mem["ops_ms"] < mem["bytes_ms"]
    comp = L.h100_share(3.35e9, step, stage_ops=134e9)  # 2 ms of ops
    assert comp["stage_ms"] == pytest.approx(2.0) and comp["share"] > mem["share"]
    assert mem["share"] == pytest.approx(1.0 / (1.0 + 1e3 * step / 989.4e12))


@pytest.mark.slow  # inductor compiles the two regions on the CPU (~20 s at 32 px)
def test_compiled_stage_bytes_come_from_inductors_count():
    """The compiled regions' bytes are inductor's count of the stage as CUDA runs it (what
    `fused_stage_bytes` compiles), below the eager ops' and in proportion to the dtype's
    size: float32 moves more than bfloat16."""
    eager = L.count_stage_bytes(8, 32, torch.bfloat16)
    fused = L.fused_stage_bytes(eager, small_batch=4)
    assert 0 < fused["compiled_regions"] < eager["bytes"]
    assert fused["bytes"] == fused["compiled_regions"] + fused["blur"] + fused["copy"]
    wide = L.fused_stage_bytes(L.count_stage_bytes(8, 32, torch.float32), small_batch=4)
    assert wide["compiled_regions"] > 1.3 * fused["compiled_regions"]  # the uint8 input stays
    ops = L.count_stage_ops(8, 32)
    assert ops > 0 and L.count_stage_ops(16, 32) == pytest.approx(2 * ops, rel=0.2)
