"""scaled.graph_train.fit is the twin of reference.graph_train.fit (Eq. 9, 12-15, 19, 20).

Trajectories agree to round-off with the reference (full batch; minibatch with the reference's
pair draws replayed), and the torch trainer reaches the ordered eigenvectors of the closed form
(reference.graphs.spectral_embedding) under reference.metrics, on several graph families.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

import scaled.graph_train as sgt
from reference import graph_train as rtrain
from reference.graphs import marginal, spectral_embedding
from reference.metrics import column_cosines, subspace_distance
from reference.tolerances import tol
from tests.conftest import make_graph

CONFIGS = [
    ("spectral", {}),
    ("noncontrastive", {}),
    ("minc", {}),
    ("minc", {"tau": 0.5, "beta": 0.8}),
    ("minc", {"tau": 0.9, "beta": 0.5, "gha": False}),
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: extra threads only contend on a small shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _setup(name: str):
    W, k = make_graph(name)
    phi0 = 0.1 * np.random.default_rng(3).standard_normal((W.shape[0], k))
    return W, k, phi0, 0.5 / marginal(W).max()


@pytest.mark.parametrize(("method", "kw"), CONFIGS)
def test_full_batch_trajectory_equals_reference(method, kw):
    W, k, phi0, lr = _setup("sbm")
    want = rtrain.fit(W, k, method=method, steps=40, lr=lr, phi0=phi0, **kw)
    got = sgt.fit(W, k, method=method, steps=40, lr=lr, phi0=phi0, **kw)
    assert_allclose(got.numpy(), want, **tol("float64"))
    assert np.abs(want - phi0).max() > 1e-2  # it moved: the comparison is not of phi0 with itself


@pytest.mark.parametrize(("method", "kw"), CONFIGS)
def test_minibatch_trajectory_equals_reference_on_the_same_pairs(method, kw, monkeypatch):
    """Replay the reference's pair draws (same numpy generator) into the torch trainer."""
    W, k, phi0, lr = _setup("augmentation")
    replay = np.random.default_rng(5)

    def same_pairs(W_t, batch_size, generator):
        i, j = rtrain.sample_pairs(W, batch_size, replay)
        return torch.as_tensor(i), torch.as_tensor(j)

    monkeypatch.setattr(sgt, "sample_pairs", same_pairs)
    args = {"method": method, "steps": 25, "lr": lr / 20, "batch_size": 7, "phi0": phi0, **kw}
    want = rtrain.fit(W, k, seed=5, **args)
    got = sgt.fit(W, k, seed=0, **args)
    assert np.abs(want).max() < 10  # a stable run: round-off is not amplified by a blow-up
    assert_allclose(got.numpy(), want, **tol("float64"))
    assert np.abs(want - phi0).max() > 1e-3


def test_sample_pairs_follows_W():
    W, _, _, _ = _setup("grid")
    g = torch.Generator().manual_seed(0)
    i, j = sgt.sample_pairs(torch.tensor(W), 200_000, g)
    counts = np.zeros_like(W)
    np.add.at(counts, (i.numpy(), j.numpy()), 1.0)
    assert np.abs(counts / 200_000 - W).max() < 4 * np.sqrt(W.max() / 200_000)


def _eigen_metrics(phi: torch.Tensor, W: np.ndarray, k: int):
    F = rtrain.features_to_eigenvectors(phi.cpu().numpy(), W)
    vals, vecs = spectral_embedding(W, k)
    return F, vals, vecs


@pytest.mark.parametrize("name", ["sbm", "grid", "augmentation"])
def test_full_batch_minc_reaches_ordered_eigenvectors(name):
    W, k, _, lr = _setup(name)
    F, vals, vecs = _eigen_metrics(sgt.fit(W, k, method="minc", steps=1500, lr=lr), W, k)
    assert subspace_distance(F, vecs) < 1e-6
    assert_allclose(column_cosines(F, vecs), np.ones(k), atol=1e-9)
    assert_allclose(np.sum(F**2, axis=0), vals, atol=1e-8)


@pytest.mark.parametrize("name", ["grid", "augmentation"])
def test_minibatch_minc_with_emas_reaches_ordered_eigenvectors(name):
    """B = 256, tau = 0.9, beta = 0.8, constant lr: stochastic, so the bounds are the noise
    floor at this lr (measured cos > 0.998, subspace distance 0.06-0.11), with margin."""
    W, k, _, lr = _setup(name)
    phi = sgt.fit(W, k, method="minc", steps=800, lr=lr / 5, batch_size=256, tau=0.9, beta=0.8)
    F, vals, vecs = _eigen_metrics(phi, W, k)
    assert subspace_distance(F, vecs) < 0.25
    assert np.all(column_cosines(F, vecs) > 0.99)
    assert_allclose(np.sum(F**2, axis=0), vals, rtol=0.06)


def test_bad_method_is_a_clear_error():
    W, k, _, _ = _setup("grid")
    with pytest.raises(ValueError, match="method"):
        sgt.fit(W, k, method="simclr", steps=1, lr=1.0)
    with pytest.raises(ValueError, match="no target"):
        sgt.fit(W, k, method="spectral", steps=1, lr=1.0, tau=0.5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_trajectory_equals_cpu():
    W, k, phi0, lr = _setup("sbm")
    cpu = sgt.fit(W, k, steps=40, lr=lr, phi0=phi0, tau=0.5, beta=0.8)
    gpu = sgt.fit(W, k, steps=40, lr=lr, phi0=phi0, tau=0.5, beta=0.8, device="cuda")
    assert gpu.device.type == "cuda"
    assert_allclose(gpu.cpu().numpy(), cpu.numpy(), **tol("float64"))
