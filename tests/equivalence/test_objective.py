"""The loss modules of `scaled/objective.py`: README's own loop equals the trainer's step, and
`MINCLoss.Cbar` equals the reference's EMA of the global second moment (Eq. 15, 22) at float64,
on 1 and 2 gloo processes.

The README block is executed as it stands (extracted between its markers), with a `loader` of
fixed float64 batches; `train_step` runs on the same weights, views and optimiser through a
`RunState` around the same torchvision network, so any difference in the loss layer, in `Cbar`
or in the order of update and use shows up as a difference of loss, `Cbar` or weights.
"""

from __future__ import annotations

import contextlib
import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import reference.ema as rema
import reference.losses as rl
from reference.tolerances import tol
from scaled.objective import MINCLoss, build_objective, ssl_loss
from tests.gloo import spawn_ranks

REPO = Path(__file__).resolve().parents[2]
STEPS, B, K = 3, 8, 64


def readme_loop() -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(
        r"<!-- minc-loop:begin -->\n```python\n(.*?)```\n<!-- minc-loop:end -->", text, re.S
    )
    assert block, "README has no minc-loop block"
    return block.group(1)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(STEPS):
        x1 = torch.rand(B, 3, 32, 32, generator=g, dtype=torch.float64)
        out.append((x1, (x1 + 0.1 * torch.randn(x1.shape, generator=g, dtype=torch.float64))))
    return out


@contextlib.contextmanager
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def run_readme_loop(initial: dict) -> dict:
    """Execute README's block; record the loss and Cbar of each step, and the final weights."""
    record = {"loss": [], "Cbar": []}
    real_forward = MINCLoss.forward

    def recording_forward(self, online_z, target_z):
        loss = real_forward(self, online_z, target_z)
        record["loss"].append(loss.detach().clone())
        record["Cbar"].append(self.Cbar.clone())
        return loss

    namespace = {"loader": batches()}
    with float64(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(MINCLoss, "forward", recording_forward)
        torch.manual_seed(0)
        code = readme_loop().replace(
            "online = torchvision.models.resnet18(num_classes=64)",
            "online = torchvision.models.resnet18(num_classes=64); online.load_state_dict(INITIAL)",
        )
        exec(compile(code, "README.md", "exec"), {"INITIAL": initial, **namespace})
    return record


class _Online(torch.nn.Module):
    """The trainer's view of a network: both views in, the dict `train_step` reads out."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x1, x2):
        z1, z2 = self.net(x1), self.net(x2)
        return {"z1": z1, "z2": z2, "p1": z1, "p2": z2}


class _Model(torch.nn.Module):
    """`SSLModel`'s interface around README's networks: method, target, update_target."""

    method = "minc"

    def __init__(self, online: torch.nn.Module) -> None:
        super().__init__()
        self.online = _Online(online)
        self.target = copy.deepcopy(online).requires_grad_(False)

    @torch.no_grad()
    def update_target(
        self, tau: float
    ) -> None:  # README's fixed rate, whatever tau the trainer passes
        for p_t, p in zip(self.target.parameters(), self.online.net.parameters()):
            p_t.lerp_(p, 0.01)


def run_train_step(initial: dict) -> dict:
    import torchvision

    from scaled.config import PretrainConfig
    from scaled.pretrain import RunState, train_step

    record = {"loss": [], "Cbar": []}
    with float64():
        net = torchvision.models.resnet18(num_classes=K)
        net.load_state_dict(initial)
        model = _Model(net)
        cfg = PretrainConfig(method="minc", proj_out=K, beta=0.8, feature_norm=0.0)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        run = RunState(
            cfg=cfg, model=model, objective=build_objective(cfg), online=model.online,
            optimizer=opt, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
            scaler=torch.amp.GradScaler("cpu", enabled=False), device=torch.device("cpu"),
            amp_dtype=None, memory_format=torch.preserve_format, in_channels=3, num_classes=0,
            steps_per_epoch=STEPS, total_steps=STEPS,
            acc={k: torch.zeros(()) for k in ("loss", "probe_correct", "probe_count", "skipped")},
            bad_step=torch.zeros((), dtype=torch.long),
        )  # fmt: skip
        for x1, x2 in batches():
            labels = torch.zeros(B, dtype=torch.long)
            out = train_step(run, [(x1, x2, labels, torch.zeros(B, dtype=torch.long))])
            record["loss"].append(out["loss"].clone())
            record["Cbar"].append(run.objective.Cbar.clone())
    record["weights"] = {k: v.clone() for k, v in net.state_dict().items()}
    return record


def test_readme_loop_equals_train_step_at_float64():
    import torchvision

    torch.manual_seed(0)
    with float64():
        initial = torchvision.models.resnet18(num_classes=K).state_dict()
    ours, trainer = run_readme_loop(initial), run_train_step(initial)
    assert len(ours["loss"]) == len(trainer["loss"]) == STEPS
    for a, b in zip(ours["loss"], trainer["loss"]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), **tol("float64"))
    for a, b in zip(ours["Cbar"], trainer["Cbar"]):
        assert a.dtype == torch.float64
        np.testing.assert_allclose(a.numpy(), b.numpy(), **tol("float64"))
    # the comparison bites: Cbar moves between steps, so an off-by-one update order would fail
    assert (ours["Cbar"][1] - ours["Cbar"][0]).abs().max() > 1e-3


def reference_cbar_and_loss(p1, p2, t1, t2, beta, previous):
    """Reference (NumPy) C_batch -> EMA (C11: the first is C_batch) -> symmetric Eq. 20."""
    C = rl.second_moment_batch(np.concatenate([t1, t2]))
    Cbar = C if previous is None else rema.ema_update(previous, C, beta)
    loss = 0.5 * (rl.minc_loss_batch(p1, t2, Cbar) + rl.minc_loss_batch(p2, t1, Cbar))
    return Cbar, loss


def features(step: int, n: int = 2 * B, k: int = 6):
    g = np.random.default_rng(step)
    return [g.standard_normal((n, k)) for _ in range(4)]


def cbar_steps(rank: int, world: int) -> list[dict]:
    """MINCLoss on this rank's rows of STEPS fixed global batches (float64)."""
    loss_fn = MINCLoss(6, beta=0.8).double()
    rows = slice(rank * 2 * B // world, (rank + 1) * 2 * B // world)
    out = []
    for s in range(STEPS):
        p1, p2, t1, t2 = (torch.from_numpy(f[rows]) for f in features(s))
        loss = loss_fn((p1, p2), (t1, t2))
        out.append({"Cbar": loss_fn.Cbar.clone(), "loss": loss.detach().clone()})
    return out


def cbar_worker(rank: int, world: int, port: int, outdir: str) -> None:
    import os

    from scaled.distributed import cleanup, init_distributed

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    init_distributed("cpu")
    torch.save(cbar_steps(rank, world), f"{outdir}/rank{rank}.pt")
    cleanup()


def check_against_reference(steps: list[dict], rank: int, world: int) -> None:
    previous = None
    rows = slice(rank * 2 * B // world, (rank + 1) * 2 * B // world)
    for s, got in enumerate(steps):
        p1, p2, t1, t2 = features(s)
        Cbar, _ = reference_cbar_and_loss(p1, p2, t1, t2, 0.8, previous)
        _, local_loss = reference_cbar_and_loss(p1[rows], p2[rows], t1[rows], t2[rows], 0.8, None)
        np.testing.assert_allclose(got["Cbar"].numpy(), Cbar, **tol("float64"))
        # this rank's loss is Eq. 20 on its own rows with the GLOBAL Cbar
        expect = 0.5 * (rl.minc_loss_batch(p1[rows], t2[rows], Cbar)
                        + rl.minc_loss_batch(p2[rows], t1[rows], Cbar))  # fmt: skip
        np.testing.assert_allclose(got["loss"].item(), expect, **tol("float64"))
        previous = Cbar


def test_cbar_equals_reference_on_one_process():
    check_against_reference(cbar_steps(0, 1), 0, 1)


@pytest.mark.distributed
def test_cbar_equals_reference_on_two_gloo_processes(tmp_path, monkeypatch):
    for rank, steps in enumerate(spawn_ranks(cbar_worker, 2, tmp_path, monkeypatch)):
        check_against_reference(steps, rank, 2)


def test_the_reference_check_fails_on_a_wrong_cbar():
    """The comparison bites: a per-rank (local) Cbar, or an EMA that skips C11's first step,
    is not the reference's."""
    steps = cbar_steps(0, 1)
    wrong = [{**s, "Cbar": s["Cbar"] * 0.9} for s in steps]
    with pytest.raises(AssertionError):
        check_against_reference(wrong, 0, 1)
    zero_start = [{**s, "Cbar": torch.zeros_like(s["Cbar"])} for s in steps]
    with pytest.raises(AssertionError):
        check_against_reference(zero_start, 0, 1)


def test_cbar_travels_in_the_state_dict_and_only_minc_has_it():
    from scaled.presets import PRESETS

    loss_fn = MINCLoss(6).double()
    p1, p2, t1, t2 = (torch.from_numpy(f) for f in features(0))
    loss_fn((p1, p2), (t1, t2))
    again = MINCLoss(6).double()
    again.load_state_dict(loss_fn.state_dict())
    assert torch.equal(again.Cbar, loss_fn.Cbar) and int(again.updates) == 1
    for name, make in PRESETS.items():
        state = build_objective(make()).state_dict()
        assert ("Cbar" in state) == (make().method in ("minc", "noncontrastive")), name


def test_ssl_loss_is_the_module_the_trainer_calls():
    """`ssl_loss` passes the online p's and the targets to the module, nothing else."""
    from scaled.config import PretrainConfig

    cfg = PretrainConfig(method="minc", proj_out=6, feature_norm=0.0)
    p1, p2, t1, t2 = (torch.from_numpy(f) for f in features(1))
    out = {"z1": p1, "z2": p2, "p1": p1, "p2": p2}
    a = ssl_loss(build_objective(cfg).double(), out, (t1, t2))
    b = MINCLoss(6).double()((p1, p2), (t1, t2))
    assert torch.equal(a, b)
