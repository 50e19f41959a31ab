"""No op in `train_step` that would make a CUDA step wait for the GPU, found on the CPU.

`scaled.tools.host_sync` records, under a `TorchDispatchMode`, the ops that force a host sync on
CUDA (``_local_scalar_dense``: ``.item()`` / ``float()`` / ``bool()``; ``nonzero``; a tensor
built from Python data, ``lift_fresh``; ``.cpu()`` / ``.tolist()`` / ``.numpy()``). For every
method and loader, the trainer's own step after a warm-up of two steps must run none.

Paths outside the step, which may sync and are not recorded here: the log interval
(`log_metrics`: ``check_finite``'s ``.item()``, the meters' ``.tolist()``,
`scaled.health.representation_health`'s floats), `save_checkpoint`, the kNN monitor
(`knn_monitor`), the preemption flag (`preemption_requested`: a CPU tensor all-reduced over
gloo, no GPU wait) and the data-loader workers (`scaled.augment.draw_colour_params` builds CPU
tensors from Python numbers in the worker processes). tests/perf/test_no_host_sync.py checks
that split on the whole `train()`; `make gpu-check` runs the CUDA sync-debug variant.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import scaled.pretrain as pretrain
from scaled.config import METHODS
from scaled.tools.host_sync import format_syncs, record_host_syncs
from tests.end_to_end.helpers import make_image_folder
from tests.perf._host_sync_scenario import STEPS, WARMUP, step_syncs


def _dali() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):
        return False


LOADERS = [
    "torch",
    "device",
    pytest.param(
        "dali", marks=pytest.mark.skipif(not _dali(), reason="needs nvidia.dali (the dev extra)")
    ),
]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("hs") / "data", per_class=8, size=40)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("method", METHODS)
def test_no_host_sync_in_the_step(method, loader, image_folder, tmp_path) -> None:
    syncs = step_syncs(method, loader, image_folder, tmp_path)
    assert syncs == [], format_syncs(syncs)


# --------------------------------------------------------------------------- the detector can fail


def _wrap_loss(monkeypatch, leak) -> None:
    real = pretrain.ssl_loss

    def leaky_loss(*args, **kwargs):
        loss = real(*args, **kwargs)
        return leak(loss)

    monkeypatch.setattr(pretrain, "ssl_loss", leaky_loss)


def _from_here(syncs, op: str) -> list:
    return [s for s in syncs if s.op == op and "test_host_sync.py" in s.where]


def test_a_python_list_tensor_put_back_into_the_step_is_caught(
    monkeypatch, image_folder, tmp_path
) -> None:
    _wrap_loss(monkeypatch, lambda loss: loss * torch.tensor([1.0], device=loss.device).sum())
    syncs = step_syncs("byol", "torch", image_folder, tmp_path)
    assert len(_from_here(syncs, "aten::lift_fresh")) == STEPS - WARMUP, format_syncs(syncs)


def test_an_item_put_back_into_the_step_is_caught(monkeypatch, image_folder, tmp_path) -> None:
    def leak(loss):
        loss.item()
        return loss

    _wrap_loss(monkeypatch, leak)
    syncs = step_syncs("byol", "torch", image_folder, tmp_path)
    assert len(_from_here(syncs, "aten::_local_scalar_dense")) == STEPS - WARMUP


def test_the_detector_sees_each_kind_and_not_device_built_tensors() -> None:
    x = torch.arange(6.0) - 2.0
    with record_host_syncs() as syncs:
        float(x.sum())
        bool((x > 0).any())
        x.nonzero()
        x[x > 0]  # boolean mask: nonzero on CUDA
        x.index_put_((x < 0,), torch.zeros(()))  # assignment through a mask
        torch.as_tensor([1, 2])
        x.cpu()
        x.tolist()
        x.numpy()
    ops = [s.op for s in syncs]
    assert ops.count("aten::_local_scalar_dense") == 2
    assert "aten::nonzero" in ops
    assert "aten::index" in ops
    assert {"aten::index_put", "aten::index_put_", "aten::_index_put_impl_"} & set(ops)
    assert "aten::lift_fresh" in ops
    assert {"Tensor.cpu", "Tensor.tolist", "Tensor.numpy"} <= set(ops)
    with record_host_syncs() as clean:  # built on the device from Python scalars: no sync
        torch.arange(4, device=x.device) + 1
        torch.full((), -1.0, device=x.device)
        torch.where(x > 0, 1.0, x)
        x.masked_fill(x < 0, 0.0)
    assert clean == [], format_syncs(clean)
