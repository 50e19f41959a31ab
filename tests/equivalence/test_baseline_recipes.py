"""SimSiam's loss and HaoChen et al.'s clipped spectral loss against their authors' code.

The independent implementations are the authors' own lines, written here with torch:
facebookresearch/simsiam main_simsiam.py L191, L295 (``nn.CosineSimilarity`` and the symmetric
mean) and jhaochenz96/spectral_contrastive_learning models/spectral.py L8-17 (``D``, verbatim).
Values and gradients agree at the float64 row of reference/tolerances.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scaled.losses import (
    clipped_features,
    normalized_features,
    simsiam_loss_batch,
    spectral_loss_batch,
)
from tests.conftest import tol
from tests.gradient_checks import assert_gradient_close


def _pair(seed: int, B: int = 12, k: int = 6, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(B, k, generator=g, dtype=torch.float64) * scale).requires_grad_()
        for _ in range(4)
    ]


def simsiam_authors(p1, p2, z1, z2):
    """main_simsiam.py: criterion = nn.CosineSimilarity(dim=1); builder.py detaches z."""
    criterion = nn.CosineSimilarity(dim=1)
    z1, z2 = z1.detach(), z2.detach()
    return -(criterion(p1, z2).mean() + criterion(p2, z1).mean()) * 0.5


def haochen_D(z1, z2, mu=1.0):
    """models/spectral.py L8-17, verbatim (np.sqrt as in the original)."""
    mask1 = (torch.norm(z1, p=2, dim=1) < np.sqrt(mu)).float().unsqueeze(1)
    mask2 = (torch.norm(z2, p=2, dim=1) < np.sqrt(mu)).float().unsqueeze(1)
    z1 = mask1 * z1 + (1 - mask1) * F.normalize(z1, dim=1) * np.sqrt(mu)
    z2 = mask2 * z2 + (1 - mask2) * F.normalize(z2, dim=1) * np.sqrt(mu)
    loss_part1 = -2 * torch.mean(z1 * z2) * z1.shape[1]
    square_term = torch.matmul(z1, z2.T) ** 2
    loss_part2 = (
        torch.mean(torch.triu(square_term, diagonal=1) + torch.tril(square_term, diagonal=-1))
        * z1.shape[0]
        / (z1.shape[0] - 1)
    )
    return (loss_part1 + loss_part2) / mu


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_simsiam_loss_matches_the_authors_lines(seed):
    p1, p2, z1, z2 = _pair(seed)
    ours = 0.5 * (simsiam_loss_batch(p1, z2) + simsiam_loss_batch(p2, z1))
    theirs = simsiam_authors(p1, p2, z1, z2)
    np.testing.assert_allclose(ours.item(), theirs.item(), **tol("float64"))
    g_ours = _grads(ours, [p1, p2, z1, z2])
    g_theirs = _grads(theirs, [p1, p2, z1, z2])
    for a, b in zip(g_ours[:2], g_theirs[:2]):
        assert_gradient_close(a, b, "float64")
    assert g_ours[2] is None and g_ours[3] is None  # the stop-gradient on z


def test_simsiam_loss_is_minus_one_for_aligned_pairs():
    p, _, _, _ = _pair(3)
    assert simsiam_loss_batch(p, 2.5 * p).item() == pytest.approx(-1.0, abs=1e-12)


def test_clip_leaves_short_rows_unchanged_and_puts_long_rows_on_the_sphere():
    mu = 4.0
    g = torch.Generator().manual_seed(4)
    z = torch.randn(40, 5, generator=g, dtype=torch.float64) * 1.2
    norms = z.norm(dim=1)
    short = norms < np.sqrt(mu)
    assert 0 < int(short.sum()) < len(z)  # both branches exercised
    out = clipped_features(z, mu)
    assert torch.equal(out[short], z[short])
    np.testing.assert_allclose(
        out[~short].numpy(), normalized_features(z[~short], mu).numpy(), **tol("float64")
    )


@pytest.mark.parametrize("mu", [1.0, 10.0])
@pytest.mark.parametrize("scale", [0.3, 1.5])
def test_clipped_spectral_loss_matches_haochen_D(mu, scale):
    z1, z2, _, _ = _pair(5, B=16, k=8, scale=scale)
    ours = spectral_loss_batch(clipped_features(z1, mu), clipped_features(z2, mu)) / mu
    theirs = haochen_D(z1, z2, mu)
    np.testing.assert_allclose(ours.item(), theirs.item(), **tol("float64"))
    for a, b in zip(_grads(ours, [z1, z2]), _grads(theirs, [z1, z2])):
        assert_gradient_close(a, b, "float64")


def test_the_trainer_loss_of_haochens_preset_is_their_D():
    """The trainer's loss module under imagenet_r50_spectral_haochen (clip, mu 10, loss / mu)
    is their D."""
    from scaled.objective import build_objective, ssl_loss
    from scaled.presets import PRESETS

    cfg = PRESETS["imagenet_r50_spectral_haochen"]()
    z1, z2, _, _ = _pair(6, B=16, k=8, scale=2.0)
    out = {"z1": z1, "z2": z2, "p1": z1, "p2": z2}
    ours = ssl_loss(build_objective(cfg), out, None)
    np.testing.assert_allclose(
        ours.item(), haochen_D(z1, z2, cfg.feature_norm).item(), **tol("float64")
    )
