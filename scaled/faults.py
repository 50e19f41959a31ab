"""Faults injected on purpose, FOR TESTS ONLY (`--fault-inject nan@STEP`).

Kept outside `scaled.pretrain.train_step`: the trainer wraps its step with `with_nan_fault` only
when the option is given, so the step a user runs has no test branch in it.
"""

from __future__ import annotations

import torch


def with_nan_fault(step_fn, nan_step: int):
    """`step_fn` whose step `nan_step` sees NaN inputs, so its loss is NaN and the run must stop
    with exit status 3 (`--fault-inject nan@STEP`)."""

    def poison(view):
        if isinstance(view, dict):  # two-stage loader: a NaN jitter factor on every sample
            n = len(view["colour"])  # named fields override the packed colour vectors
            nan = torch.full((n, 4), float("nan"))
            return {**view, "jitter": torch.ones(n, dtype=torch.bool), "factors": nan}
        return view * float("nan")

    def poisoned_step(run, micro_batches):
        if run.step + 1 == nan_step:
            micro_batches = [(poison(b[0]), *b[1:]) for b in micro_batches]
        return step_fn(run, micro_batches)

    return poisoned_step
