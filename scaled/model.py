"""Networks: ResNet backbones (torchvision), projector / predictor MLPs, the EMA target.

`phi(x) = projector(backbone(x))` is the representation of the derivation (Eq. 1); the target
network `phibar` is an exponential moving average of the online weights (Eq. 14); both travel
in `state_dict()` and in checkpoints (C5), beside the loss module's `Cbar` (Eq. 15,
`scaled.objective.MINCLoss`). No pretrained weights are ever loaded.
"""

from __future__ import annotations

import copy
import math

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from scaled.config import PretrainConfig, has_target_network, resolved_predictor


class ResNetBackbone(torchvision.models.ResNet):
    """torchvision's ResNet with every channel count scaled by `width_mult`, without the fc layer.

    Parameters
    ----------
    block, layers
        As for `torchvision.models.ResNet` (Bottleneck, [3, 4, 6, 3] is ResNet-50).
    width_mult
        Multiplies the channels of EVERY layer, stem included (SimCLR/BYOL "2x"; not
        torchvision's wide_resnet50_2, which widens only the bottleneck). 1.0 is torchvision's net.
    small_stem
        3x3 stem (stride `stem_stride`) and no max-pool, for 28-32 px inputs.
    in_channels
        1 for grey digits, 3 for colour images.
    zero_init_residual
        torchvision's option: the last BN of each block starts at zero (SimSiam, HaoChen et al.).
    """

    def __init__(
        self,
        block: type[nn.Module],
        layers: list[int],
        *,
        width_mult: float = 1.0,
        small_stem: bool = False,
        stem_stride: int = 1,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        object.__setattr__(self, "_width_mult", width_mult)
        super().__init__(block, layers, zero_init_residual=zero_init_residual)
        stem = int(64 * width_mult)
        if width_mult != 1.0 or small_stem or in_channels != 3:
            k, s, p = (3, stem_stride, 1) if small_stem else (7, 2, 3)
            self.conv1 = nn.Conv2d(in_channels, stem, k, stride=s, padding=p, bias=False)
            self.bn1 = nn.BatchNorm2d(stem)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        if small_stem:
            self.maxpool = nn.Identity()
        self.num_features = int(512 * width_mult) * block.expansion
        self.fc = nn.Identity()

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # first stage: the stem's output channels
            self.inplanes = int(64 * self._width_mult)
        return super()._make_layer(block, int(planes * self._width_mult), blocks, stride, dilate)


def build_backbone(cfg: PretrainConfig, in_channels: int = 3) -> ResNetBackbone:
    """The backbone named by `cfg.arch` (random init; `num_features` gives its output width)."""
    common = {"in_channels": in_channels, "zero_init_residual": cfg.zero_init_residual}
    if cfg.arch == "resnet50":
        return ResNetBackbone(Bottleneck, [3, 4, 6, 3], **common)
    if cfg.arch == "resnet50x2":
        return ResNetBackbone(Bottleneck, [3, 4, 6, 3], width_mult=2.0, **common)
    if cfg.arch == "resnet18":
        return ResNetBackbone(BasicBlock, [2, 2, 2, 2], **common)
    if cfg.arch == "small_resnet":
        return ResNetBackbone(
            BasicBlock,
            [cfg.small_blocks] * 4,
            width_mult=cfg.width / 64,
            small_stem=True,
            stem_stride=cfg.stem_stride,
            **common,
        )
    raise ValueError(f"unknown arch {cfg.arch!r}; use one of resnet50, resnet50x2, resnet18")


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear -> BatchNorm -> ReLU -> Linear (the BYOL projector / predictor)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out_dim),
    )


def _linear_bn_relu(in_dim: int, out_dim: int) -> list[nn.Module]:
    return [nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True)]


def build_projector(kind: str, in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """The projector named by `--projector` (each as its authors' code builds it).

    byol     `mlp`: Linear -> BN -> ReLU -> Linear (BYOL, byol/utils/networks.py; our default).
    simclr   Linear -> BN -> ReLU -> Linear(no bias) -> BN with its shift fixed at 0 (SimCLR v1,
             google-research/simclr model_util.py ``linear_layer(use_bias=False, use_bn=True)``).
    simsiam  (Linear(no bias) -> BN -> ReLU) x 2 -> Linear -> BN(affine=False)
             (facebookresearch/simsiam simsiam/builder.py L27-36; their output Linear's bias is
             frozen, ours is absent: the BN that follows removes it either way).
    haochen  (Linear -> BN -> ReLU) x 2 -> Linear -> BN, no ReLU on the last layer
             (jhaochenz96/spectral_contrastive_learning resnet_mlp_norelu_3layer.py L142-156;
             their hidden Linears' biases are absorbed by the BN, so ours have none).
    """
    if kind == "byol":
        return mlp(in_dim, hidden, out_dim)
    if kind == "simclr":
        head = nn.Sequential(
            *_linear_bn_relu(in_dim, hidden), nn.Linear(hidden, out_dim, bias=False),
            nn.BatchNorm1d(out_dim),
        )  # fmt: skip
        head[-1].bias.requires_grad_(False)  # BN scale only (TF center=False)
        return head
    if kind == "simsiam":
        return nn.Sequential(
            *_linear_bn_relu(in_dim, hidden), *_linear_bn_relu(hidden, hidden),
            nn.Linear(hidden, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False),
        )  # fmt: skip
    if kind == "haochen":
        return nn.Sequential(
            *_linear_bn_relu(in_dim, hidden), *_linear_bn_relu(hidden, hidden),
            nn.Linear(hidden, out_dim), nn.BatchNorm1d(out_dim),
        )  # fmt: skip
    raise ValueError(f"unknown projector {kind!r}; use byol, simclr, simsiam or haochen")


def build_predictor(kind: str, dim: int, hidden: int) -> nn.Module:
    """none -> identity, linear -> one Linear layer (Linear BYOL), mlp -> `mlp` (BYOL)."""
    if kind == "none":
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(dim, dim)
    if kind == "mlp":
        return mlp(dim, hidden, dim)
    raise ValueError(f"unknown predictor {kind!r}; use none, linear or mlp")


class OnlineNetwork(nn.Module):
    """Backbone + projector (+ predictor) + an online linear probe on detached features.

    This is the module DDP wraps: one forward takes both views (BatchNorm statistics are per
    view, as in BYOL) so DDP sees exactly one forward per backward.
    """

    def __init__(self, cfg: PretrainConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg, in_channels)
        self.projector = build_projector(
            cfg.projector, self.backbone.num_features, cfg.proj_hidden, cfg.proj_out
        )
        self.predictor = build_predictor(resolved_predictor(cfg), cfg.proj_out, cfg.pred_hidden)
        self.probe = nn.Linear(self.backbone.num_features, num_classes) if num_classes else None

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
        h1, h2 = self.backbone(x1), self.backbone(x2)
        z1, z2 = self.projector(h1), self.projector(h2)
        out = {"z1": z1, "z2": z2, "p1": self.predictor(z1), "p2": self.predictor(z2)}
        if self.probe is not None:
            out["probe_logits"] = self.probe(torch.cat([h1, h2]).detach())
        return out


class TargetNetwork(nn.Module):
    """`phibar`: a copy of backbone + projector updated as an EMA of the online weights (Eq. 14)."""

    def __init__(self, online: OnlineNetwork) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(online.backbone)
        self.projector = copy.deepcopy(online.projector)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


def target_tau(step: int, total_steps: int, tau_base: float) -> float:
    """BYOL's cosine schedule tau = 1 - (1 - tau_base)(cos(pi t / T) + 1) / 2 (Eq. 14, C6)."""
    frac = min(step / max(total_steps, 1), 1.0)
    return 1.0 - (1.0 - tau_base) * (math.cos(math.pi * frac) + 1.0) / 2.0


class SSLModel(nn.Module):
    """Online network and, where the method has one, the EMA target network (Eq. 14).

    The target's EMA lives here, beside its weights (`update_target`); the loss's own state
    (MINC's `Cbar`, Eq. 15) lives in the loss module (`scaled.objective.MINCLoss`). Which parts a
    method uses is its row of `scaled.objective.METHOD_TABLE`.
    """

    def __init__(self, cfg: PretrainConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.method = cfg.method
        self.online = OnlineNetwork(cfg, in_channels, num_classes if cfg.online_probe else 0)
        self.target = TargetNetwork(self.online) if has_target_network(cfg) else None

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """thetabar <- tau thetabar + (1 - tau) theta, fused over all tensors; BN buffers copied."""
        if self.target is None:
            return
        online = [*self.online.backbone.parameters(), *self.online.projector.parameters()]
        target = [*self.target.backbone.parameters(), *self.target.projector.parameters()]
        torch._foreach_lerp_(target, online, 1.0 - tau)
        ob = [*self.online.backbone.buffers(), *self.online.projector.buffers()]
        tb = [*self.target.backbone.buffers(), *self.target.projector.buffers()]
        torch._foreach_copy_(tb, ob)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of `module`."""
    return sum(p.numel() for p in module.parameters())
