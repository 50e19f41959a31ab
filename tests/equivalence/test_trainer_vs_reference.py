"""The image trainer's MINC is the reference's MINC, step by step (Eq. 14, 15, 20, 22).

Three float64 steps of the real `scaled.pretrain.train_step` (small ResNet, k = 6, SGD) in 1
process and in 2 gloo processes. On the features the trainer itself produced, NumPy's reference
gives each step's numbers independently:

- `Cbar` after the step = `reference.ema.ema_update(Cbar before, C_batch, beta)` with C_batch the
  second moment of the target features of the *global* batch (`second_moment_batch`, Eq. 15, 22);
  the first step starts at C_batch (C11);
- the gradient of the step's loss w.r.t. the projector outputs of this rank's rows =
  R x the reference gradient of the global loss, 0.5 (minc(z1, t2) + minc(z2, t1)), at those rows
  (`minc_loss_batch_grad`, Eq. 20; R = number of ranks, the scaled.distributed convention);
- the target weights after the step = `ema_update(target before, online after, tau_s)` with
  BYOL's cosine tau schedule (Eq. 14), and the target's BatchNorm buffers are the online ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from reference.ema import ema_update
from reference.losses import minc_loss_batch_grad, second_moment_batch
from reference.tolerances import tol
from scaled.model import target_tau
from tests.equivalence import _trainer_scenario as sc
from tests.gloo import spawn_ranks
from tests.gradient_checks import assert_gradient_close


def _two_processes(tmp_path, monkeypatch) -> list[list[dict]]:
    return spawn_ranks(sc.worker, 2, tmp_path, monkeypatch)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def check_against_reference(per_rank: list[list[dict]]) -> None:
    """Every step of every rank against the reference on the gathered global batch."""
    world, cfg = len(per_rank), sc.config()
    for s in range(sc.STEPS):
        recs = [r[s] for r in per_rank]
        glob = {k: np.concatenate([_np(r[k]) for r in recs]) for k in ("p1", "p2", "t1", "t2")}
        C_batch = second_moment_batch(np.concatenate([glob["t1"], glob["t2"]]))
        Cbar_before = _np(recs[0]["Cbar"])
        Cbar = C_batch if s == 0 else ema_update(Cbar_before, C_batch, cfg.beta)
        g1 = 0.5 * minc_loss_batch_grad(glob["p1"], glob["t2"], Cbar, gha=True)
        g2 = 0.5 * minc_loss_batch_grad(glob["p2"], glob["t1"], Cbar, gha=True)
        b = sc.B_GLOBAL // world
        for rank, rec in enumerate(recs):
            rows = slice(rank * b, (rank + 1) * b)
            assert_allclose(_np(rec["Cbar_after"]), Cbar, **tol("float64"))
            assert_gradient_close(_np(rec["grad_p1"]), world * g1[rows], "float64", "p1")
            assert_gradient_close(_np(rec["grad_p2"]), world * g2[rows], "float64", "p2")
            tau = target_tau(rec["step"], rec["total_steps"], cfg.tau_base)
            assert 0.0 < tau < 1.0  # the EMA mixes: the check below can tell tau from 0 or 1
            for old, new, after in zip(rec["target"], rec["online_after"], rec["target_after"]):
                assert_allclose(_np(after), ema_update(_np(old), _np(new), tau), **tol("float64"))
            for ob, tb in zip(rec["online_buffers"], rec["target_buffers"]):
                assert torch.equal(ob, tb)
        # the weights moved and differ from the target: the EMA check is not trivially true
        assert not torch.allclose(recs[0]["online_after"][0], recs[0]["target_after"][0])


def test_trainer_minc_equals_reference_one_process() -> None:
    check_against_reference([sc.run_steps()])


@pytest.mark.distributed
@pytest.mark.xdist_group("distributed")
def test_trainer_minc_equals_reference_two_gloo_processes(tmp_path, monkeypatch) -> None:
    per_rank = _two_processes(tmp_path, monkeypatch)
    check_against_reference(per_rank)
    # Cbar comes from the global batch: identical on both ranks
    for a, b in zip(per_rank[0], per_rank[1]):
        assert torch.equal(a["Cbar_after"], b["Cbar_after"])
