"""scaled/tools/memory.py: the live-bytes counter, fake = computed steps, the line, the docs."""

from __future__ import annotations

import pytest
import torch

from scaled.tools import memory

SMALL = dict(arch="resnet18", image_size=64)  # a computed step in seconds on the CPU


def test_live_bytes_counts_new_storages_once_and_frees_them() -> None:
    tracker = memory.LiveBytes()
    with tracker:
        a = torch.empty(1000)  # 4000 bytes
        view = a[:10]  # same storage: not counted again
        b = a * 2  # 4000 more
        assert tracker.live == 8000
        del b
        assert tracker.live == 4000
        a.add_(1)  # in place: same storage
    assert tracker.live == 4000 and tracker.peak == 8000
    del a, view
    assert tracker.live == 0


@pytest.mark.slow  # four computed ResNet-18 steps on the CPU
def test_a_fake_step_allocates_what_a_computed_step_allocates() -> None:
    """The tool's fake-tensor step against the same step computed on the CPU: the peaks agree
    to 1% (measured: 0.07%, the first step's replaced Cbar, which the fake count keeps)."""
    for batch in (8, 16):
        real = memory.step_peak("imagenet_r50_minc", batch, fake=False, **SMALL)
        fake = memory.step_peak("imagenet_r50_minc", batch, fake=True, **SMALL)
        assert abs(fake - real) <= 0.01 * real, (batch, real, fake)


def test_the_step_peak_grows_with_the_batch() -> None:
    """32 more images add at least their two float32 views (a counter that missed the step's
    allocations would give equal peaks)."""
    small = memory.step_peak("imagenet_r50_minc", 32, **SMALL)
    big = memory.step_peak("imagenet_r50_minc", 64, **SMALL)
    assert big - small >= 2 * 32 * 3 * 64 * 64 * 4


def test_the_line_and_its_check(monkeypatch) -> None:
    assert memory.line({4: 140, 8: 180}) == (100.0, 10.0)
    # a peak that is not linear in the batch: the check at the per-GPU batch reports the error
    monkeypatch.setattr(memory, "step_peak", lambda preset, b, size: 1e9 + 1e6 * b * b)
    row = memory.measure_preset("imagenet_r50_minc", (32, 64))
    assert row["check_batch"] == 512
    assert row["check_rel_error"] < -0.5  # the line through 32 and 64 is far below b^2 at 512
    monkeypatch.setattr(memory, "step_peak", lambda preset, b, size: 1e9 + 8e7 * b)
    row = memory.measure_preset("imagenet_r50_minc", (32, 64))
    assert row["check_rel_error"] == pytest.approx(0.0, abs=1e-12)
    # 1e9 + 8e7 * 512 = 42 GB: over 90% of 40 GB, 2 x 256 fits; 80 GB fits whole
    assert row["accum_steps"] == {"40": 2, "80": 1}


def test_accum_for_uses_the_measured_peak_and_gives_up() -> None:
    assert memory.accum_for(1e9, 1e7, 512, 80) == 1
    assert memory.accum_for(1e9, 1e7, 512, 80, measured=79e9) == 2  # measured over 72 GB
    assert memory.accum_for(50e9, 1e7, 512, 40) is None  # the fixed part alone is too big


def test_rendered_section_has_a_row_per_preset(monkeypatch) -> None:
    monkeypatch.setattr(memory, "step_peak", lambda preset, b, size: 1e9 + 8e7 * b)
    result = memory.run_all(["imagenet_r50_minc", "imagenet_r50_simsiam"])
    text = memory.render_memory_section(result)
    assert "| `imagenet_r50_minc` | 4096 / 512 |" in text
    assert "| `imagenet_r50_simsiam` | 512 / 64 |" in text
    assert "`--accum-steps 2` | yes |" in text
    assert "Command: `python -m scaled.tools.memory" in text


@pytest.mark.parametrize(
    "argv", [["--batches", "8", "4"], ["--batches", "1", "4"], ["--presets", "imagenet_nope"]]
)
def test_bad_arguments_are_one_line(argv, capsys) -> None:
    assert memory.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
