"""scaled.losses equals reference.losses: values and autograd gradients (Eq. 3-21).

float64 rows agree to tol("float64") with the reference values and the reference's hand-written
`*_grad` functions, on random features and on features of the graph fixtures, for several seeds,
k and batch sizes (1 with the diagonal, 7, 513). float32 rows (every function) and bf16 rows
(the minibatch losses, bf16 inputs under CPU autocast) compare with the float64 reference on the
same inputs at tol("float32") / tol("bfloat16"). Every gradient is compared by
`tests.gradient_checks.assert_gradient_close` at its row (`GRAD_ROW`: bf16 gradients at the
relative-norm row `bfloat16_grad`), which first checks that a zero gradient would fail there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

import reference.losses as ref
import scaled.losses as sca
from reference.graph_train import sample_pairs
from reference.tolerances import tol
from tests.conftest import GRAPH_CASES, make_graph
from tests.gradient_checks import assert_gradient_close

SEEDS = (0, 1, 2)
KS = (1, 3, 8)
BATCHES = (1, 7, 513)
ALPHAS = (2.0, 1.5, 1.25, 2.5, 3.0)  # m = 2, 3, 5, 5/3, 3/2
SOURCES = ("random", *GRAPH_CASES)
TORCH = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
GRAD_ROW = {"float64": "float64", "float32": "float32", "bfloat16": "bfloat16_grad"}


# --- inputs --------------------------------------------------------------------------------


def random_joint(N: int, g: np.random.Generator) -> np.ndarray:
    W = g.random((N, N))
    W = W + W.T
    return W / W.sum()


def graph_inputs(source: str, seed: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(phi, W): a random table on a random joint or on a graph fixture."""
    g = np.random.default_rng(seed)
    W = random_joint(15, g) if source == "random" else make_graph(source, seed)[0]
    phi = g.standard_normal((W.shape[0], k)) / np.sqrt(k)
    return phi, W


def batch_inputs(source: str, seed: int, k: int, B: int) -> tuple[np.ndarray, np.ndarray]:
    """(z1, z2): random rows, or the table rows of B positive pairs drawn from a graph fixture."""
    g = np.random.default_rng(seed)
    if source == "random":
        z1 = g.standard_normal((B, k)) / np.sqrt(k)
        return z1, z1 + 0.5 * g.standard_normal((B, k)) / np.sqrt(k)
    W = make_graph(source, seed)[0]
    phi = g.standard_normal((W.shape[0], k)) / np.sqrt(k)
    i, j = sample_pairs(W, B, g)
    return phi[i], phi[j]


def spd(k: int, seed: int) -> np.ndarray:
    A = np.random.default_rng(seed + 100).standard_normal((k, k))
    return A @ A.T / k


# --- comparison ----------------------------------------------------------------------------


def compare(name, arrays, grads_of, *args, dtype="float64", autocast=False, **kw):
    """Value of scaled.<name> vs reference.<name>, and autograd vs reference.<name>_grad.

    `arrays` are the differentiable inputs; `grads_of` says which of them reference.<name>_grad
    returns (in order); the others must get a zero gradient (they are under stop-gradient).
    """
    tensors = [torch.tensor(a).to(TORCH[dtype]).requires_grad_() for a in arrays]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = getattr(sca, name)(*tensors, *args, **kw)
    expected = getattr(ref, name)(*arrays, *args, **kw)
    assert_allclose(out.detach().double().numpy(), expected, **tol(dtype))
    if grads_of is None:
        return
    ref_grads = getattr(ref, f"{name}_grad")(*arrays, *args, **kw)
    ref_grads = ref_grads if isinstance(ref_grads, tuple) else (ref_grads,)
    got = torch.autograd.grad(out, tensors, allow_unused=True)
    it = iter(ref_grads)
    for idx, g in enumerate(got):
        g = np.zeros(arrays[idx].shape) if g is None else g.double().numpy()
        want = next(it) if idx in grads_of else np.zeros(arrays[idx].shape)
        assert_gradient_close(g, want, GRAD_ROW[dtype], err_msg=f"{name}: gradient of input {idx}")


# --- graph form ----------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("seed", SEEDS)
def test_graph_form(source, k, seed):
    phi, W = graph_inputs(source, seed, k)
    Wt = torch.tensor(W)
    Wa = (Wt,)

    def run(name, *extra, grads_of=(0,), **kw):
        # W is data, not differentiated: pass it as a fixed tensor / array
        tensors = torch.tensor(phi, requires_grad=True)
        out = getattr(sca, name)(tensors, *Wa, *extra, **kw)
        assert_allclose(
            out.detach().numpy(), getattr(ref, name)(phi, W, *extra, **kw), **tol("float64")
        )
        if grads_of:
            (g,) = torch.autograd.grad(out, tensors)
            want = getattr(ref, f"{name}_grad")(phi, W, *extra, **kw)
            assert_gradient_close(g, want, "float64", err_msg=name)

    run("second_moment", grads_of=())
    run("spectral_loss")
    run("noncontrastive_loss")
    run("chi2_mi_bound")
    for alpha in ALPHAS:
        run("alpha_mi_bound", alpha)
    g = np.random.default_rng(seed + 7)
    phibar = phi + 0.1 * g.standard_normal(phi.shape)
    for gha in (True, False):
        run("minc_loss", gha=gha)
        tensors = torch.tensor(phi, requires_grad=True)
        pb = torch.tensor(phibar, requires_grad=True)
        Cb = torch.tensor(spd(k, seed), requires_grad=True)
        out = sca.minc_loss(tensors, Wt, phibar=pb, Cbar=Cb, gha=gha)
        kw = {"phibar": phibar, "Cbar": spd(k, seed), "gha": gha}
        assert_allclose(out.item(), ref.minc_loss(phi, W, **kw), **tol("float64"))
        g_phi, g_pb, g_cb = torch.autograd.grad(out, (tensors, pb, Cb), allow_unused=True)
        assert_gradient_close(g_phi, ref.minc_loss_grad(phi, W, **kw), "float64", "minc_loss")
        assert g_pb is None and g_cb is None  # phibar and Cbar are under stop-gradient


# --- minibatch form ------------------------------------------------------------------------


def _diagonals(B: int) -> tuple[bool, ...]:
    return (True,) if B == 1 else (False, True)


def _moment_ok(alpha: float, k: int, B: int) -> bool:
    """The moment estimator for integer m, where the reference's k^m tensors stay small."""
    m = alpha / (alpha - 1)
    return abs(m - round(m)) < 1e-9 and B * k ** round(m) <= 2e6


def batch_checks(z1, z2, seed, dtype="float64", autocast=False):
    B, k = z1.shape
    kw = {"dtype": dtype, "autocast": autocast}
    compare("second_moment_batch", [z1], None, **kw)
    compare("lower_triangular", [spd(k, seed)], None, dtype=dtype)
    for diag in _diagonals(B):
        compare("spectral_loss_batch", [z1, z2], (0, 1), include_diagonal=diag, **kw)
        for alpha in ALPHAS:
            estimators = ("pairwise", "moment") if _moment_ok(alpha, k, B) else ("pairwise",)
            for est in estimators:
                compare(
                    "alpha_loss_batch", [z1, z2], (0, 1), alpha,
                    include_diagonal=diag, estimator=est, **kw,
                )  # fmt: skip
    for gha in (True, False):
        compare("minc_loss_batch", [z1, z2, spd(k, seed)], (0,), gha=gha, **kw)


# B = 513 costs seconds per case on a small CPU: three large cases, the small ones in full.
BATCH_CASES = [
    (seed, k, B, source)
    for seed in SEEDS
    for k in KS
    for B in (1, 7)
    for source in ("random", "sbm", "augmentation")
] + [(0, 3, 513, "random"), (1, 8, 513, "sbm"), (2, 1, 513, "augmentation")]


@pytest.mark.parametrize(("seed", "k", "B", "source"), BATCH_CASES)
def test_batch_form_float64(seed, k, B, source):
    z1, z2 = batch_inputs(source, seed, k, B)
    batch_checks(z1, z2, seed)


@pytest.mark.parametrize(("k", "B"), [(1, 1), (3, 7), (8, 7), (8, 513)])
def test_batch_form_float32(k, B):
    z1, z2 = batch_inputs("random", 0, k, B)
    batch_checks(z1, z2, 0, dtype="float32")


@pytest.mark.parametrize(("k", "B"), [(3, 1), (3, 7), (8, 513)])
def test_batch_form_bf16_autocast(k, B):
    """bf16 features under CPU autocast against the float64 reference on the unrounded inputs.

    End to end: the input rounding (bf16 eps 7.8e-3) dominates; the statistics themselves
    accumulate in float32 (see test_statistics_accumulate_in_float32_under_autocast). Values at
    the `bfloat16` row, gradients at `bfloat16_grad` (relative norm 3e-2): at k = 8, B = 513 every
    gradient entry is below 0.012, so the entrywise `bfloat16` row (atol 5e-2) passed a zero one.
    """
    z1, z2 = batch_inputs("random", 0, k, B)
    batch_checks(z1, z2, 0, dtype="bfloat16", autocast=True)


@pytest.mark.parametrize("source", SOURCES)
def test_graph_form_float32(source):
    phi, W = graph_inputs(source, 0, 3)
    t = torch.tensor(phi, dtype=torch.float32, requires_grad=True)
    Wt = torch.tensor(W, dtype=torch.float32)
    for name in ("spectral_loss", "noncontrastive_loss", "chi2_mi_bound", "minc_loss"):
        out = getattr(sca, name)(t, Wt)
        assert_allclose(out.item(), getattr(ref, name)(phi, W), **tol("float32"))
        (g,) = torch.autograd.grad(out, t)
        assert_gradient_close(g, getattr(ref, f"{name}_grad")(phi, W), "float32", name)


def test_statistics_accumulate_in_float32_under_autocast():
    z = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        C = sca.second_moment_batch(z)
        loss = sca.spectral_loss_batch(z, z.flip(0))
    assert C.dtype == torch.float32 and loss.dtype == torch.float32
    assert_allclose(C.numpy(), ref.second_moment_batch(z.double().numpy()), **tol("float32"))
