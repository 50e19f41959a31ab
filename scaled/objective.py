"""The self-supervised objectives as modules that any training loop can use.

One `nn.Module` per family, each holding what its loss keeps between steps:

    MINCLoss        (Eq. 20; Eq. 9 with ``gha=False``): the k x k EMA `Cbar` (Eq. 15) as a
                    buffer, updated in `forward` from the global batch (Eq. 22) before use
    SpectralLoss    (Eq. 19), AlphaLoss (Eq. 21): pairwise, second views gathered over ranks
    SimCLRLoss, BYOLLoss, SimSiamLoss: the baselines

Use in your own loop (README, "MINC as a loss in your loop")::

    loss_fn = MINCLoss(k=256)                      # Cbar lives here (state_dict carries it)
    loss = loss_fn((p1, p2), (t1, t2))             # online features, target features (phibar)

Everything that is a statistic stays under stop-gradient. With a process group initialised,
``C_batch`` is all-reduced over it (`scaled.distributed.global_second_moment`), so `Cbar` is
identical on every rank, and the pairwise losses gather the second views (module docstring of
`scaled.losses`). `scaled/pretrain.py` builds its objective with `build_objective` and calls it
through `ssl_loss`: the trainer has no second copy of any loss.

`METHOD_TABLE` says, per method, what the trainer does around the loss (target features, EMA
target network, `Cbar`, GHA, feature map, default predictor).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from scaled.distributed import global_second_moment
from scaled.ema import ema_update
from scaled.losses import (
    FEATURE_MAPS,
    alpha_loss_batch,
    byol_loss_batch,
    loss_features,
    minc_loss_batch,
    simclr_loss_batch,
    simsiam_loss_batch,
    spectral_loss_batch,
)

__all__ = [
    "METHODS",
    "METHOD_TABLE",
    "AlphaLoss",
    "BYOLLoss",
    "MINCLoss",
    "MethodTraits",
    "SimCLRLoss",
    "SimSiamLoss",
    "SpectralLoss",
    "build_objective",
    "ssl_loss",
    "target_features",
]


@dataclass(frozen=True)
class MethodTraits:
    """What the trainer does for one method: one row of `METHOD_TABLE`.

    phibar        the loss compares each view with stop-gradient features of the other view
    ema_target    phibar comes from an EMA target network (Eq. 14) when `--target-network`;
                  False: phibar = sg(phi) always (Eq. 12 defaults)
    cbar          the k x k second-moment EMA `Cbar` is kept and used (Eq. 15)
    gha           the lower-triangular Generalized Hebbian ordering (Eq. 16, 20)
    feature_norm  `--feature-norm` applies to the features the loss sees (Eq. 23, C12)
    predictor     the predictor that `--predictor auto` means (C3)
    """

    phibar: bool
    ema_target: bool
    cbar: bool
    gha: bool
    feature_norm: bool
    predictor: str


METHOD_TABLE: dict[str, MethodTraits] = {
    # fmt: off
    #                               phibar ema_target cbar   gha    feature_norm predictor
    "minc": MethodTraits(True, True, True, True, True, "none"),
    "noncontrastive": MethodTraits(True, True, True, False, True, "none"),
    "spectral": MethodTraits(False, False, False, False, True, "none"),
    "alpha": MethodTraits(False, False, False, False, True, "none"),
    "simclr": MethodTraits(False, False, False, False, False, "none"),
    "byol": MethodTraits(True, True, False, False, False, "mlp"),
    "simsiam": MethodTraits(True, False, False, False, False, "mlp"),
    # fmt: on
}
METHODS = tuple(METHOD_TABLE)


def _distributed() -> bool:
    """Whether a process group of more than one rank is initialised (read at every call)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _two(views: Sequence[torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if len(views) != 2:
        raise ValueError(f"{name} must hold the features of two views, got {len(views)}")
    return views[0], views[1]


class _FeatureMap(nn.Module):
    """The feature map of the loss (Eq. 23 sphere, Eq. 24 clip; C12); ``mu = 0``: identity.

    With ``kind="clip"`` the loss is divided by mu, as HaoChen et al.'s models/spectral.py
    ``D`` returns ``(part1 + part2) / mu``; `scale_loss` applies that.
    """

    def __init__(self, feature_norm: float, feature_norm_kind: str) -> None:
        super().__init__()
        if feature_norm < 0:
            raise ValueError(f"feature_norm must be >= 0 (0: off), got {feature_norm}")
        if feature_norm_kind not in FEATURE_MAPS:
            raise ValueError(f"feature_norm_kind must be one of {FEATURE_MAPS}")
        self.feature_norm, self.feature_norm_kind = float(feature_norm), feature_norm_kind

    def features(self, z: torch.Tensor) -> torch.Tensor:
        if self.feature_norm == 0:
            return z
        return loss_features(z, self.feature_norm_kind, self.feature_norm)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        if self.feature_norm and self.feature_norm_kind == "clip":
            return loss / self.feature_norm
        return loss

    def extra_repr(self) -> str:
        return f"feature_norm={self.feature_norm}, feature_norm_kind={self.feature_norm_kind!r}"


class MINCLoss(_FeatureMap):
    """MINC (Eq. 20), or the non-contrastive loss of Eq. 9 with ``gha=False``, with its `Cbar`.

    ``forward((p1, p2), (t1, t2))``: the online features of both views and the target features
    phibar of both views (an EMA target network, or ``sg(phi)``). In order:

        C_batch = global second moment of cat(t1, t2)         (Eq. 15, 22; all ranks)
        Cbar    <- C_batch at the first call, else beta Cbar + (1 - beta) C_batch   (C11)
        loss    = (minc(p1, t2, Cbar) + minc(p2, t1, Cbar)) / 2                  (Eq. 20)

    ``cbar_source="online"`` feeds C_batch from the online features instead (C4). Features go
    through the feature map first (``feature_norm`` > 0, Eq. 23 / 24). `Cbar` (float32, or the
    module's dtype after ``.double()``) and the update count are buffers: `state_dict` carries
    them, `load_state_dict` restores them, and no step reads them on the host.
    """

    def __init__(
        self,
        k: int,
        *,
        gha: bool = True,
        beta: float = 0.8,
        feature_norm: float = 0.0,
        feature_norm_kind: str = "sphere",
        cbar_source: str = "target",
    ) -> None:
        super().__init__(feature_norm, feature_norm_kind)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if cbar_source not in ("target", "online"):
            raise ValueError(f"cbar_source must be 'target' or 'online', got {cbar_source!r}")
        self.gha, self.beta, self.cbar_source = gha, float(beta), cbar_source
        self.register_buffer("Cbar", torch.zeros(k, k))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update_cbar(self, C_batch: torch.Tensor) -> None:
        """Cbar <- beta Cbar + (1 - beta) C_batch in place (Eq. 15); C_batch itself at the first
        update (C11: no zero-start bias). A `torch.where`, so no host synchronisation."""
        C_batch = C_batch.detach().to(self.Cbar.dtype)
        ema = ema_update(self.Cbar, C_batch, self.beta)
        self.Cbar.copy_(torch.where(self.updates > 0, ema, C_batch))
        self.updates += 1

    def forward(
        self, online_z: Sequence[torch.Tensor], target_z: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        p1, p2 = (self.features(p) for p in _two(online_z, "online_z"))
        t1, t2 = (self.features(t) for t in _two(target_z, "target_z"))
        source = (t1, t2) if self.cbar_source == "target" else (p1, p2)
        self.update_cbar(global_second_moment(torch.cat([s.detach() for s in source])))
        loss = 0.5 * (
            minc_loss_batch(p1, t2, self.Cbar, gha=self.gha)
            + minc_loss_batch(p2, t1, self.Cbar, gha=self.gha)
        )
        return self.scale_loss(loss)

    def extra_repr(self) -> str:
        k = self.Cbar.shape[0]
        return f"k={k}, gha={self.gha}, beta={self.beta}, {super().extra_repr()}"


class SpectralLoss(_FeatureMap):
    """The spectral contrastive loss of a batch (Eq. 19), ``forward(z1, z2)``.

    Pairwise over the global batch: z2 gathered over ranks when a process group is initialised
    (each rank returns R times its share, so DDP's averaging gives the one-process gradient).
    """

    def __init__(
        self,
        *,
        include_diagonal: bool = False,
        feature_norm: float = 0.0,
        feature_norm_kind: str = "sphere",
    ) -> None:
        super().__init__(feature_norm, feature_norm_kind)
        self.include_diagonal = include_diagonal

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        loss = spectral_loss_batch(
            self.features(z1),
            self.features(z2),
            include_diagonal=self.include_diagonal,
            distributed=_distributed(),
        )
        return self.scale_loss(loss)


class AlphaLoss(_FeatureMap):
    """-Jhat_alpha of a batch (Eq. 18, 21), ``forward(z1, z2)``; pairwise or moment estimator."""

    def __init__(
        self,
        alpha: float = 2.0,
        *,
        include_diagonal: bool = False,
        estimator: str = "pairwise",
        feature_norm: float = 0.0,
        feature_norm_kind: str = "sphere",
    ) -> None:
        super().__init__(feature_norm, feature_norm_kind)
        self.alpha, self.include_diagonal, self.estimator = alpha, include_diagonal, estimator

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        loss = alpha_loss_batch(
            self.features(z1),
            self.features(z2),
            self.alpha,
            include_diagonal=self.include_diagonal,
            estimator=self.estimator,
            distributed=_distributed(),
        )
        return self.scale_loss(loss)


class SimCLRLoss(nn.Module):
    """NT-Xent over the global batch of 2B views (`scaled.losses.simclr_loss_batch`)."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return simclr_loss_batch(z1, z2, temperature=self.temperature, distributed=_distributed())


class BYOLLoss(nn.Module):
    """BYOL's symmetrised regression loss ``L(p1, sg t2) + L(p2, sg t1)`` (DeepMind's sum)."""

    def forward(
        self, online_z: Sequence[torch.Tensor], target_z: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        (p1, p2), (t1, t2) = _two(online_z, "online_z"), _two(target_z, "target_z")
        return byol_loss_batch(p1, t2) + byol_loss_batch(p2, t1)


class SimSiamLoss(nn.Module):
    """SimSiam's ``0.5 (D(p1, sg z2) + D(p2, sg z1))``; targets are sg(z) of the same network."""

    def forward(
        self, online_z: Sequence[torch.Tensor], target_z: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        (p1, p2), (t1, t2) = _two(online_z, "online_z"), _two(target_z, "target_z")
        return 0.5 * (simsiam_loss_batch(p1, t2) + simsiam_loss_batch(p2, t1))


def build_objective(cfg) -> nn.Module:
    """The loss module of `cfg.method` with the run's settings (a `PretrainConfig`)."""
    row = METHOD_TABLE[cfg.method]
    norm = cfg.feature_norm if row.feature_norm else 0.0
    fmap = dict(feature_norm=norm, feature_norm_kind=cfg.feature_norm_kind)
    if row.cbar:
        return MINCLoss(
            cfg.proj_out, gha=row.gha, beta=cfg.beta, cbar_source=cfg.cbar_source, **fmap
        )
    if cfg.method == "spectral":
        return SpectralLoss(include_diagonal=cfg.include_diagonal, **fmap)
    if cfg.method == "alpha":
        return AlphaLoss(
            cfg.alpha,
            include_diagonal=cfg.include_diagonal,
            estimator=cfg.alpha_estimator,
            **fmap,
        )
    if cfg.method == "simclr":
        return SimCLRLoss(cfg.temperature)
    if cfg.method == "byol":
        return BYOLLoss()
    if cfg.method == "simsiam":
        return SimSiamLoss()
    raise ValueError(f"unknown method {cfg.method!r}")


def uses_targets(objective: nn.Module) -> bool:
    """Whether the objective compares online features with target features (phibar)."""
    return isinstance(objective, MINCLoss | BYOLLoss | SimSiamLoss)


def target_features(
    model, out: dict[str, torch.Tensor], x1: torch.Tensor, x2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """phibar of both views without gradient (Eq. 12, 14), or None for methods without it.

    From the EMA target network when the model has one (`scaled.model.SSLModel.target`), else
    phibar = sg(phi) (Eq. 12 defaults, SimSiam).
    """
    if not METHOD_TABLE[model.method].phibar:
        return None
    with torch.no_grad():
        if model.target is not None:
            return model.target(x1), model.target(x2)
        return out["z1"].detach(), out["z2"].detach()


def ssl_loss(
    objective: nn.Module,
    out: dict[str, torch.Tensor],
    targets: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """The trainer's call of `objective` on the online network's output `out` (p: the
    predictor's output, identity by default C3) and the target features `targets`."""
    online = (out["p1"], out["p2"])
    if uses_targets(objective):
        return objective(online, targets)
    return objective(*online)
