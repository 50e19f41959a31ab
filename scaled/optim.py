"""Optimisers and schedules: LARS, linear warm-up + cosine, parameter groups (C10).

The learning rate is `base_lr * global_batch / 256` (Goyal et al.; BYOL/SimCLR). Biases and
normalisation parameters (every 1-d tensor) get neither weight decay nor LARS adaptation, as in
BYOL (byol/utils/optimizers.py ``exclude_bias_and_norm``) and SimCLR (lars_optimizer.py
``exclude_from_weight_decay=['batch_normalization', 'bias']``); `--no-exclude-bias-bn` puts
weight decay on every parameter, as SimSiam's and HaoChen et al.'s ``torch.optim.SGD`` do.
`--fix-pred-lr` keeps the predictor at the peak lr (SimSiam's ``--fix-pred-lr``).
The online probe has its own group (its own lr, no weight decay, no adaptation), as in solo-learn.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from scaled.config import PretrainConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratio `eta ||w|| / ||g + wd w||` (You et al. 2017).

    Groups with `lars_exclude=True` use plain SGD with momentum (no weight decay, no adaptation).
    The trust ratio is computed with `torch.where`, so a step never syncs with the host.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if not group["lars_exclude"]:
                if group["weight_decay"] != 0:
                    grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                pn = torch._foreach_norm(params)
                gn = torch._foreach_norm(grads)
                scaled = []
                for g, p_norm, g_norm in zip(grads, pn, gn):
                    ok = (p_norm > 0) & (g_norm > 0)
                    trust = torch.where(ok, group["eta"] * p_norm / g_norm.clamp_min(1e-30), 1.0)
                    scaled.append(g * trust)
                grads = scaled
            bufs = []
            for p, g in zip(params, grads):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                bufs.append(state["momentum_buffer"])
            torch._foreach_add_(params, bufs, alpha=-group["lr"])


def parameter_groups(online: nn.Module, cfg: PretrainConfig, lr: float) -> list[dict]:
    """Weights (decay, LARS), 1-d params (no decay, no LARS), predictor, probe (own lr).

    `--no-exclude-bias-bn`: the 1-d params join the weights' group. `--fix-pred-lr`: the
    predictor's parameters get their own groups marked ``fixed_lr`` (`build_scheduler` leaves
    them at the peak lr). Parameters with ``requires_grad=False`` are left out.
    """
    probe = getattr(online, "probe", None)
    probe_ids = {id(p) for p in probe.parameters()} if probe is not None else set()
    predictor = getattr(online, "predictor", None)
    pred_ids = set()
    if cfg.fix_pred_lr and predictor is not None:
        pred_ids = {id(p) for p in predictor.parameters()}
    buckets: dict[tuple[bool, bool], list] = {}
    probe_params = []
    for p in online.parameters():
        if not p.requires_grad:
            continue
        if id(p) in probe_ids:
            probe_params.append(p)
            continue
        excluded = p.ndim <= 1 and cfg.exclude_bias_bn
        buckets.setdefault((excluded, id(p) in pred_ids), []).append(p)
    groups = [
        {
            "params": params,
            "lr": lr,
            "weight_decay": 0.0 if excluded else cfg.weight_decay,
            "lars_exclude": excluded,
            "fixed_lr": fixed,
        }
        for (excluded, fixed), params in sorted(buckets.items())
    ]
    if probe_params:
        groups.append(
            {
                "params": probe_params,
                "lr": cfg.probe_lr,
                "weight_decay": 0.0,
                "lars_exclude": True,
                "fixed_lr": False,
            }
        )
    return groups


def build_optimizer(online: nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """LARS, SGD or AdamW at lr = base_lr * global_batch / 256 (C10)."""
    lr = cfg.lr * cfg.batch_size / 256
    groups = parameter_groups(online, cfg, lr)
    if cfg.optimizer == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    for g in groups:
        g.pop("lars_exclude")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use lars, sgd or adamw")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the peak lr: linear from 0 to 1 over `warmup_steps`, then a cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    frac = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> LambdaLR:
    """Per-step LambdaLR of `warmup_cosine`; groups marked ``fixed_lr`` keep their lr.

    Its state_dict holds only primitives.
    """

    def schedule(s: int) -> float:
        return warmup_cosine(s, total_steps, warmup_steps)

    def constant(s: int) -> float:
        return 1.0

    lambdas = [constant if g.get("fixed_lr") else schedule for g in optimizer.param_groups]
    return LambdaLR(optimizer, lambdas)
