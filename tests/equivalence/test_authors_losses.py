"""`simclr_loss_batch` and `byol_loss_batch` (scaled/losses.py) against their authors' code.

The authors' losses are written out below from their public code, independently of ours, and
compared in float64 at the `float64` row: values, and the autograd gradients of every input
(`tests.gradient_checks.assert_gradient_close`).

- SimCLR's NT-Xent: google-research/simclr, `objective.py`, `add_contrastive_loss` (commit
  be133b3): `hidden = l2_normalize(hidden, -1)`; `logits_aa = h1 h1^T / t - masks * LARGE_NUM`
  (LARGE_NUM = 1e9), `logits_bb` likewise, `logits_ab = h1 h2^T / t`, `logits_ba = h2 h1^T / t`;
  `loss_a = softmax_cross_entropy(labels, concat([logits_ab, logits_aa], 1))` with one-hot
  `labels` at column b (its positive) and the mean over the batch (`tf.losses` default
  reduction), `loss_b` from `[logits_ba, logits_bb]`; `loss = loss_a + loss_b`. Ours is the mean
  over the 2B anchors, i.e. **half** theirs: `simclr_loss_batch = (loss_a + loss_b) / 2`.
- BYOL's regression loss: google-deepmind/deepmind-research, `byol/utils/helpers.py`,
  `regression_loss` (commit 4822a45): `sum((l2_normalize(x) - l2_normalize(y))**2, -1)` with
  `l2_normalize(x) = x * rsqrt(max(sum(x**2), 1e-12))`; `byol/byol_experiment.py` sums it over
  the two directions, `regression_loss(p1, sg(t2)) + regression_loss(p2, sg(t1))`, and takes
  the mean over the batch. `byol_loss_batch(p, t)` is one direction's mean; the trainer's
  `BYOLLoss` (scaled/objective.py) adds the two, as theirs does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference.tolerances import tol
from scaled.losses import byol_loss_batch, simclr_loss_batch
from tests.gradient_checks import assert_gradient_close

LARGE_NUM = 1e9


def tf_l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """tf.math.l2_normalize / DeepMind's helpers.l2_normalize: x * rsqrt(max(|x|^2, eps))."""
    return x * torch.rsqrt(torch.clamp((x * x).sum(-1, keepdim=True), min=eps))


def simclr_authors(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """add_contrastive_loss(concat([z1, z2]), hidden_norm=True, temperature), one replica."""
    h1, h2 = tf_l2_normalize(z1), tf_l2_normalize(z2)
    B = h1.shape[0]
    labels = torch.eye(B, 2 * B, dtype=z1.dtype)  # one_hot(range(B), 2B)
    masks = torch.eye(B, dtype=z1.dtype)  # one_hot(range(B), B)
    logits_aa = h1 @ h1.T / temperature - masks * LARGE_NUM
    logits_bb = h2 @ h2.T / temperature - masks * LARGE_NUM
    logits_ab = h1 @ h2.T / temperature
    logits_ba = h2 @ h1.T / temperature

    def softmax_cross_entropy(labels, logits):  # tf.losses default: mean over the batch
        return torch.mean(-(labels * torch.log_softmax(logits, dim=1)).sum(1))

    loss_a = softmax_cross_entropy(labels, torch.cat([logits_ab, logits_aa], 1))
    loss_b = softmax_cross_entropy(labels, torch.cat([logits_ba, logits_bb], 1))
    return loss_a + loss_b


def byol_authors(p1, p2, t1, t2) -> torch.Tensor:
    """byol_experiment's repr_loss: mean_b of regression_loss(p1, sg t2) + (p2, sg t1)."""

    def regression_loss(x, y):
        return ((tf_l2_normalize(x) - tf_l2_normalize(y)) ** 2).sum(-1)

    return torch.mean(regression_loss(p1, t2.detach()) + regression_loss(p2, t1.detach()))


def inputs(seed: int, B: int, k: int, n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(B, k, generator=g, dtype=torch.float64)
    views = [base + 0.7 * torch.randn(B, k, generator=g, dtype=torch.float64) for _ in range(n)]
    return [(3.0 * v).requires_grad_() for v in views]


CASES = [(seed, B, k) for seed in (0, 1, 2) for B, k in ((1, 4), (7, 3), (32, 16))]


@pytest.mark.parametrize(("seed", "B", "k"), CASES)
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_simclr_is_half_the_authors_nt_xent(seed, B, k, temperature):
    z1, z2 = inputs(seed, B, k)
    ours = simclr_loss_batch(z1, z2, temperature=temperature)
    theirs = simclr_authors(z1, z2, temperature) / 2
    np.testing.assert_allclose(ours.item(), theirs.item(), **tol("float64"))
    g_ours = torch.autograd.grad(ours, (z1, z2))
    g_theirs = torch.autograd.grad(theirs, (z1, z2))
    for name, a, b in zip(("z1", "z2"), g_ours, g_theirs):
        assert_gradient_close(a, b, "float64", f"simclr, gradient of {name}")


@pytest.mark.parametrize(("seed", "B", "k"), CASES)
def test_byol_two_directions_are_the_authors_regression_loss(seed, B, k):
    p1, p2, t1, t2 = inputs(seed, B, k, n=4)
    ours = byol_loss_batch(p1, t2) + byol_loss_batch(p2, t1)
    theirs = byol_authors(p1, p2, t1, t2)
    np.testing.assert_allclose(ours.item(), theirs.item(), **tol("float64"))
    g_ours = torch.autograd.grad(ours, (p1, p2, t1, t2), allow_unused=True)
    g_theirs = torch.autograd.grad(theirs, (p1, p2, t1, t2), allow_unused=True)
    for name, a, b in zip(("p1", "p2"), g_ours[:2], g_theirs[:2]):
        assert_gradient_close(a, b, "float64", f"byol, gradient of {name}")
    assert g_ours[2] is None and g_ours[3] is None  # the stop-gradient on the targets


def test_the_comparisons_reject_a_wrong_loss():
    """The checks above can fail: the authors' NT-Xent without the self-mask, at another
    temperature, or counted once (not halved), and BYOL's loss of one direction only, each
    differ from ours by far more than the float64 row."""
    z1, z2 = inputs(3, 7, 3)
    ours = simclr_loss_batch(z1, z2, temperature=0.1).item()
    h1, h2 = tf_l2_normalize(z1), tf_l2_normalize(z2)
    labels = torch.eye(7, 14, dtype=torch.float64)
    unmasked = -(labels * torch.log_softmax(torch.cat([h1 @ h2.T, h1 @ h1.T], 1) / 0.1, 1))
    wrong = {
        "no self-mask": unmasked.sum(1).mean().item(),  # one direction, self not masked
        "temperature 0.5": simclr_authors(z1, z2, 0.5).item() / 2,
        "not halved": simclr_authors(z1, z2, 0.1).item(),
    }
    for name, value in wrong.items():
        with pytest.raises(AssertionError):
            np.testing.assert_allclose(ours, value, **tol("float64"), err_msg=name)
    p1, p2, t1, t2 = inputs(3, 7, 3, n=4)
    ours = (byol_loss_batch(p1, t2) + byol_loss_batch(p2, t1)).item()
    one_direction = 2 * byol_loss_batch(p1, t2).item()
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(ours, one_direction, **tol("float64"))
