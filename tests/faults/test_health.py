"""Unit tests of scaled.health: effective rank, representation health, the collapse monitor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scaled.health import CollapseMonitor, effective_rank, representation_health
from tests.conftest import tol


def _approx(expected: float, dtype: str):
    """pytest.approx at the tolerance row of `dtype` (tests/conftest.py)."""
    t = tol(dtype)
    return pytest.approx(expected, rel=t["rtol"], abs=t["atol"])


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_effective_rank_of_known_spectra():
    # Orthogonal columns with equal norms: p uniform over r values -> exp(log r) = r.
    Q, _ = torch.linalg.qr(torch.randn(64, 8, generator=_gen(), dtype=torch.float64))
    assert effective_rank(Q * 3.0) == _approx(8.0, "float32")
    assert effective_rank(Q[:, :3]) == _approx(3.0, "float32")
    # Singular values (4, 1): p = (0.8, 0.2), exp(H) computed independently with numpy.
    z = Q[:, :2] * torch.tensor([4.0, 1.0], dtype=torch.float64)
    p = np.array([0.8, 0.2])
    expected = math.exp(-(p * np.log(p)).sum())
    assert effective_rank(z) == _approx(expected, "float32")


def test_effective_rank_uncentred_sees_collapse_that_centring_hides():
    g = _gen(1)
    c = torch.randn(1, 16, generator=g)
    z = c + 1e-4 * torch.randn(256, 16, generator=g)  # every input mapped near one point
    assert effective_rank(z) < 1.1
    assert effective_rank(z, center=True) > 10  # the centred spectrum is the noise


def test_effective_rank_edge_cases_and_dtypes():
    assert effective_rank(torch.zeros(5, 3)) == 0.0
    assert math.isnan(effective_rank(torch.tensor([[1.0, float("nan")]])))
    z = torch.randn(128, 32, generator=_gen(2))
    assert effective_rank(z.bfloat16()) == _approx(effective_rank(z), "bfloat16")
    with pytest.raises(ValueError, match="batch, features"):
        effective_rank(torch.zeros(3))


def test_representation_health_features_and_cbar_without_gha():
    g = _gen(3)
    z = torch.randn(512, 16, generator=g)
    Cbar = z.T @ z / z.shape[0]
    h = representation_health(z, Cbar, gha=False)
    # Isotropic Gaussian: normalised features spread evenly -> std per dim ~ 1/sqrt(k).
    assert h["feature_dim"] == 16
    assert h["feature_std"] == pytest.approx(1 / math.sqrt(16), rel=0.05)
    assert h["feature_std_ratio"] == pytest.approx(1.0, rel=0.05)
    assert 12 < h["eff_rank"] <= 16
    eig = np.sort(np.linalg.eigvalsh(Cbar.double().numpy()))[::-1]
    for i in range(4):
        assert h[f"cbar_eig_{i}"] == _approx(eig[i], "float32")
    assert h["cbar_trace"] == _approx(eig.sum(), "float32")
    assert not any(key.startswith("cbar_diag") for key in h)
    assert set(representation_health(z, None, gha=True)) == {
        "feature_dim",
        "feature_std",
        "feature_std_ratio",
        "eff_rank",
    }


def test_representation_health_collapsed_features():
    z = torch.ones(64, 8) + 1e-6 * torch.randn(64, 8, generator=_gen(4))
    h = representation_health(z, None, gha=False)
    assert h["feature_std"] < 1e-4
    assert h["eff_rank"] < 1.01


def test_gha_diagnostics_at_and_away_from_the_fixed_point():
    # At the MINC fixed point (Eq. 13) C = diag(lambda) with lambda decreasing.
    lam = torch.tensor([1.0, 0.7, 0.4, 0.2, 0.1])
    h = representation_health(torch.randn(32, 5, generator=_gen(5)), torch.diag(lam), gha=True)
    for i in range(4):
        assert h[f"cbar_diag_{i}"] == pytest.approx(float(lam[i]))
    assert h["cbar_diag_eig_relerr"] == pytest.approx(0.0, abs=1e-6)
    assert h["cbar_offdiag_rel"] == 0.0
    # A rotation of it (what no-GHA may converge to): same eigenvalues, diagonal no longer them.
    R, _ = torch.linalg.qr(torch.randn(5, 5, generator=_gen(6)))
    rotated = R @ torch.diag(lam) @ R.T
    h = representation_health(torch.randn(32, 5, generator=_gen(7)), rotated, gha=True)
    assert h["cbar_eig_0"] == _approx(1.0, "float32")
    assert h["cbar_diag_eig_relerr"] > 0.05 and h["cbar_offdiag_rel"] > 0.05
    # Reversed order: diagonal, but not sorted as Eq. 13 requires.
    h = representation_health(
        torch.randn(32, 5, generator=_gen(8)), torch.diag(lam.flip(0)), gha=True
    )
    assert h["cbar_offdiag_rel"] == 0.0 and h["cbar_diag_eig_relerr"] > 0.5


def test_representation_health_bad_inputs():
    z = torch.randn(8, 4, generator=_gen(9))
    with pytest.raises(ValueError, match="k=4"):
        representation_health(z, torch.eye(3), gha=False)
    h = representation_health(z, torch.full((4, 4), float("nan")), gha=True)
    assert math.isnan(h["cbar_eig_0"]) and math.isnan(h["cbar_offdiag_rel"])
    assert not math.isnan(h["eff_rank"])


def test_collapse_monitor_warns_first_time_then_every_n_checks():
    monitor = CollapseMonitor(0.05, min_rank=2.0, repeat_every=3)
    healthy = {"eff_rank": 40.0, "feature_dim": 128.0}
    low = {"eff_rank": 1.3, "feature_dim": 128.0}  # threshold max(2, 6.4) = 6.4
    assert monitor.check(0, healthy) is None
    msg = monitor.check(1, low)
    assert msg is not None and "\n" not in msg
    assert "step 1" in msg and "1.30" in msg and "6.40" in msg
    assert "collapsing" in msg and "auxiliary EMA" in msg and "GHA" in msg and "--lr" in msg
    assert [monitor.check(s, low) is not None for s in range(2, 9)] == [
        False, False, True, False, False, True, False,
    ]  # fmt: skip
    assert monitor.threshold(10.0) == 2.0  # the floor
    assert CollapseMonitor().check(0, {"eff_rank": 1.5}) is not None  # no k: floor only
    assert CollapseMonitor().check(0, {"loss": 1.0}) is None
    assert CollapseMonitor().check(0, {"eff_rank": float("nan"), "feature_dim": 8.0}) is None
    with pytest.raises(ValueError, match="fraction"):
        CollapseMonitor(1.5)
