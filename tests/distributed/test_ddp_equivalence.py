"""R gloo processes on one global batch equal one process on that batch (Eq. 15, 22).

Each world size is one spawn (spawning is slow): every method's loss, gradient w.r.t. the rows
of z, DDP parameter gradients and Cbar, plus the collectives of `scaled.distributed`.
Convention checked (scaled.losses docstring): mean of per-rank losses = global loss, per-rank
z-row gradient = R x one-process gradient, DDP-averaged parameter gradient = one-process one.
"""

from __future__ import annotations

import pytest
import torch
from numpy.testing import assert_allclose

from reference.tolerances import tol
from tests.distributed import _scenario as sc
from tests.gloo import spawn_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.xdist_group("distributed")]

# A hang detector, not a speed gate: about 30 s per spawn on an idle 2-core machine, but the
# imports of 4 processes can take minutes when the machine is shared.
TIMEOUT_S = 300.0


def _spawn(world: int, tmp_path, monkeypatch) -> list[dict]:
    """Run `sc.worker` on `world` ranks; a hang past TIMEOUT_S kills them and fails the test."""
    return spawn_ranks(sc.worker, world, tmp_path, monkeypatch, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def one_process() -> dict:
    return sc.run_methods(slice(None), ddp=False)


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"world{w}")
def ranks(request, tmp_path_factory) -> tuple[int, list[dict]]:
    world = request.param
    with pytest.MonkeyPatch.context() as mp_env:
        return world, _spawn(world, tmp_path_factory.mktemp(f"world{world}"), mp_env)


def _z_rows(results: list[dict], method: str, world: int) -> torch.Tensor:
    """Per-rank z-row gradients reassembled in the one-process order [view 1; view 2]."""
    b = sc.B_GLOBAL // world
    g = [r["methods"][method]["zgrad"] for r in results]
    return torch.cat([x[:b] for x in g] + [x[b:] for x in g])


@pytest.mark.parametrize("method", sc.METHODS)
def test_every_method_matches_one_process(ranks, one_process, method):
    world, results = ranks
    ref = one_process[method]
    losses = torch.stack([r["methods"][method]["loss"] for r in results])
    assert_allclose(losses.mean().item(), ref["loss"].item(), **tol("float64"))
    assert_allclose(_z_rows(results, method, world) / world, ref["zgrad"], **tol("float64"))
    for r in results:
        assert_allclose(r["methods"][method]["params"], ref["params"], **tol("float64"))
        if "Cbar" in ref:
            assert_allclose(r["methods"][method]["Cbar"], ref["Cbar"], **tol("float64"))
    # the check can fail: the gradient is not trivially zero
    assert ref["params"].abs().max() > 1e-3


def test_all_gather_with_grad_returns_gradient_to_owner(ranks):
    world, results = ranks
    b = sc.B_GLOBAL // world
    g = torch.Generator().manual_seed(7)
    c = torch.randn(sc.B_GLOBAL, sc.K, generator=g, dtype=torch.float64)
    xs = [
        torch.arange(b * sc.K, dtype=torch.float64).reshape(b, sc.K) + 100 * r for r in range(world)
    ]
    for rank, res in enumerate(results):
        assert_allclose(res["gather"]["Y"], torch.cat(xs), **tol("float64"))
        mine = c[rank * b : (rank + 1) * b]
        assert_allclose(res["gather"]["xgrad"], world * mine, **tol("float64"))


def test_global_second_moment_exact_for_unequal_batches_and_local_differs(ranks):
    world, results = ranks
    g = torch.Generator().manual_seed(7)
    torch.randn(sc.B_GLOBAL, sc.K, generator=g, dtype=torch.float64)  # same stream as worker
    n = world * (world + 1) // 2
    Z = torch.randn(n, sc.K, generator=g, dtype=torch.float64)
    C = Z.T @ Z / n
    for rank, res in enumerate(results):
        m = res["moment"]
        assert_allclose(m["global"], C, **tol("float64"))
        start = rank * (rank + 1) // 2
        mine = Z[start : start + rank + 1]
        assert_allclose(m["local"], mine.T @ mine / (rank + 1), **tol("float64"))
        # the per-rank statistic is a different estimator: it must not pass the global check
        assert (m["local"] - C).abs().max() > 1e-3
        assert_allclose(m["mean"].item(), (world - 1) / 2, **tol("float64"))
        assert int(m["rank"]) == rank
        assert int(m["world"]) == world


def test_per_rank_cbar_differs_from_global(ranks, one_process):
    """MINC's Cbar from the per-rank statistic (local=True) is not the one-process Cbar."""
    world, _ = ranks
    data = sc.global_batch()
    b = sc.B_GLOBAL // world
    with torch.no_grad():
        t = data["target"](torch.cat([data["x1"][:b], data["x2"][:b]]))
    from scaled.distributed import global_second_moment
    from scaled.ema import ema_update

    local = ema_update(data["Cbar0"], global_second_moment(t, local=True), sc.BETA)
    assert (local - one_process["minc"]["Cbar"]).abs().max() > 1e-3
