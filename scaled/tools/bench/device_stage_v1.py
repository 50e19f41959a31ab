"""The device stage as it was before issue 31 (git 05886e3, scaled/augment.py), kept for one
purpose: `bench loader` times it beside today's `scaled.augment.augment_batch` in the same run.

Every colour op on the whole batch at each of ColorJitter's four positions (16 op passes and 16
selects), hue through kornia's RGB -> HSV -> RGB four times, the blur on every sample, float32
eager, the normalisation constants built from Python lists per call. Not used by the library.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as nnf

from scaled.augment import IMAGENET_MEAN, IMAGENET_STD, blur_kernel_size


@functools.cache
def _kornia():
    """kornia, imported on first use: the trainer imports without it (offline GPU nodes carry it
    as a wheel, `make gpu-wheels`); only the device stage needs it."""
    try:
        import kornia
    except ImportError:
        from scaled.config import UserError

        raise UserError(
            "the device augmentation stage needs kornia, which is not installed; pip install "
            "kornia==0.9.0 (offline: make gpu-wheels), or pass --loader torch"
        ) from None
    return kornia


# --------------------------------------------------------------------------- batched ops
# x: float (B, 3, H, W) in [0, 1]; factors: (B,). Each op is torchvision's tensor definition
# (torchvision/transforms/_functional_tensor.py) with a per-sample factor.


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma, (B, 1, H, W). By hand: kornia.color.rgb_to_grayscale weighs red 0.299,
    torchvision (and PIL's "L") 0.2989, a difference of up to 1e-4."""
    return 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = _per_sample(factor)
    return (f * x + (1.0 - f) * other).clamp(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """x * factor, clamped. By hand: kornia.enhance.adjust_brightness ADDS the factor."""
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the mean luma of each image. By hand: kornia.enhance.adjust_contrast scales
    the pixels without the mean."""
    mean = grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the luma. By hand: kornia.enhance.adjust_saturation scales HSV saturation."""
    return _blend(x, grayscale(x), factor)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by `factor` turns (torchvision's unit) -- kornia takes radians."""
    return _kornia().enhance.adjust_hue(x, factor * (2 * math.pi))


COLOUR_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # ColorJitter


def color_jitter(
    x: torch.Tensor, apply: torch.Tensor, order: torch.Tensor, factors: torch.Tensor
) -> torch.Tensor:
    """ColorJitter with a per-sample permutation `order` (B, 4) and factors (B, 4).

    At each of the 4 positions every op is computed for the batch and kept for the samples
    whose permutation puts it there (a select, not an index: no host sync on the device).
    """
    for pos in range(4):
        out = x
        for k, op in enumerate(COLOUR_OPS):
            mask = _per_sample(apply & (order[:, pos] == k))
            out = torch.where(mask, op(x, factors[:, k]), out)
        x = out
    return x


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma, reflect border (torchvision's kernel:
    exp(-t^2 / 2 sigma^2) at integer offsets t, normalised). By hand: kornia.filters.
    gaussian_blur2d computes the same but checks `sigma > 0` with a host sync on every call."""
    B, C, H, W = x.shape
    t = torch.arange(kernel, device=x.device, dtype=x.dtype) - (kernel - 1) / 2
    k1 = torch.exp(-0.5 * (t[None] / sigma[:, None].to(x.dtype)) ** 2)
    k1 = (k1 / k1.sum(dim=1, keepdim=True)).repeat_interleave(C, dim=0)  # (B*C, kernel)
    pad = kernel // 2
    y = nnf.pad(x.reshape(1, B * C, H, W), (pad, pad, pad, pad), mode="reflect")
    y = nnf.conv2d(y, k1[:, None, None, :], groups=B * C)
    y = nnf.conv2d(y, k1[:, None, :, None], groups=B * C)
    return y.reshape(B, C, H, W)


def solarize(x: torch.Tensor) -> torch.Tensor:
    """Invert pixels >= 128/255 (PIL's and torchvision's threshold 128 on uint8)."""
    return _kornia().enhance.solarize(x, 128 / 255)


def augment_batch(pixels: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """uint8 views (B, 3, H, W) + their per-sample parameters -> normalised float32 views."""
    x = pixels.float().div_(255.0)
    x = color_jitter(x, params["jitter"], params["order"], params["factors"])
    x = torch.where(_per_sample(params["gray"]), grayscale(x).expand_as(x), x)
    blurred = gaussian_blur(x, blur_kernel_size(x.shape[-1]), params["sigma"])
    x = torch.where(_per_sample(params["blur"]), blurred, x)
    x = torch.where(_per_sample(params["solarize"]), solarize(x), x)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
