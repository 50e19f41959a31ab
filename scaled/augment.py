"""View augmentations: the recipes, their per-sample parameters, and the batched device stage.

The two-stage input pipeline (`--loader device`, the default on CUDA for ImageFolder data):

1. CPU stage (data-loader workers, `scaled.data.TwoStageView`): decode, RandomResizedCrop,
   horizontal flip -> a uint8 view; plus the per-sample colour parameters that
   `draw_colour_params` draws, in the worker, from the sample's seeded generator
   (`scaled.data.sample_seed(seed, epoch, index)`). Nothing else happens on the CPU.
2. Device stage (`device_stage`, called by `scaled.pretrain.train_step`): colour jitter in a
   per-sample random order, grayscale, Gaussian blur, solarize and normalisation on the whole
   batch, each sample with ITS OWN parameters (a batch-wide parameter would be a different
   distribution), with no host synchronisation.

`draw_colour_params` consumes torch's generator exactly as the all-CPU reference path
(`scaled.data.view_transform`, torchvision transforms) does, so both paths draw the SAME
parameters for the same `(seed, epoch, index)`; they differ only in where and at what precision
the pixels are computed (PIL uint8 per op vs float32 on the device; tests/end_to_end/
test_augment.py bounds the difference op by op and in distribution).

Ops: kornia where it computes what torchvision computes (hue, solarize: checked in the tests);
by hand where it does not, with the reason next to each.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torchvision import transforms as T


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


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- the recipes


@dataclass(frozen=True)
class ViewRecipe:
    """The augmentation of one view: what both pipelines read.

    scale          RandomResizedCrop area range (ratio 3/4..4/3); `--crop-scale-min` overrides
                   the lower end when it is not 0
    interpolation  "bicubic" | "bilinear" (of the crop's resize)
    jitter         ColorJitter strengths (brightness, contrast, saturation, hue), applied with
                   probability `jitter_p` in a random order per sample
    gray_p         probability of grayscale
    blur_p, sigma  probability of a Gaussian blur and its sigma range (kernel: 10% of the size)
    solarize_p     probability of solarize (threshold 128 of 255)
    flip_p         probability of a horizontal flip
    """

    scale: tuple[float, float]
    interpolation: str
    jitter: tuple[float, float, float, float]
    jitter_p: float
    gray_p: float
    blur_p: float
    sigma: tuple[float, float]
    solarize_p: float
    flip_p: float = 0.5


def _recipe(scale_min, interpolation, jitter, blur_p, solarize_p) -> ViewRecipe:
    return ViewRecipe(
        (scale_min, 1.0), interpolation, jitter, 0.8, 0.2, blur_p, (0.1, 2.0), solarize_p
    )


RECIPES: dict[str, tuple[ViewRecipe, ViewRecipe]] = {
    # (view 1, view 2). From the authors' public code:
    # byol: deepmind/deepmind-research byol/utils/augmentations.py (asymmetric blur 1.0 / 0.1 and
    #   solarize 0 / 0.2; crop 0.08-1, bicubic; jitter 0.4/0.4/0.2/0.1 p 0.8; grayscale 0.2).
    # simsiam: facebookresearch/simsiam main_simsiam.py L229-239 (= MoCo v2: crop 0.2-1, jitter
    #   0.4/0.4/0.4/0.1 p 0.8, grayscale 0.2, blur p 0.5 sigma 0.1-2, flip; torchvision's
    #   default bilinear resize), both views alike.
    # simclr: google-research/simclr data_util.py (crop 0.08-1, bicubic; colour strength 1.0 =
    #   jitter 0.8/0.8/0.8/0.2 p 0.8; grayscale 0.2; blur p 0.5 sigma 0.1-2), both views alike.
    "byol": (
        _recipe(0.08, "bicubic", (0.4, 0.4, 0.2, 0.1), blur_p=1.0, solarize_p=0.0),
        _recipe(0.08, "bicubic", (0.4, 0.4, 0.2, 0.1), blur_p=0.1, solarize_p=0.2),
    ),
    "simsiam": (_recipe(0.2, "bilinear", (0.4, 0.4, 0.4, 0.1), blur_p=0.5, solarize_p=0.0),) * 2,
    "simclr": (_recipe(0.08, "bicubic", (0.8, 0.8, 0.8, 0.2), blur_p=0.5, solarize_p=0.0),) * 2,
}


def blur_kernel_size(size: int) -> int:
    """The Gaussian kernel: about 10% of the view's side, odd, at least 3 (23 px at 224)."""
    return max(3, (size // 10) // 2 * 2 + 1)


# --------------------------------------------------------------------------- per-sample parameters


@functools.lru_cache
def _jitter_ranges(strengths: tuple[float, float, float, float]) -> tuple:
    """ColorJitter's factor ranges for the strengths (built once: ~1 ms per construction)."""
    cj = T.ColorJitter(*strengths)
    return cj.brightness, cj.contrast, cj.saturation, cj.hue


def draw_colour_params(recipe: ViewRecipe) -> dict[str, torch.Tensor]:
    """One view's colour parameters from torch's default generator (seeded per sample).

    Consumes the generator in the order and amounts the torchvision transforms of the reference
    path do (RandomApply(ColorJitter), RandomGrayscale, RandomApply(GaussianBlur),
    RandomSolarize: torchvision/transforms/transforms.py), so both paths draw the same values.
    `order` is ColorJitter's permutation of (brightness, contrast, saturation, hue); `factors`
    are its four factors (identity when `jitter` is False).
    """
    jitter = not recipe.jitter_p < torch.rand(1)  # T.RandomApply: skip when p < u
    order, factors = torch.arange(4), torch.tensor([1.0, 1.0, 1.0, 0.0])
    if jitter:
        order, *fs = T.ColorJitter.get_params(*_jitter_ranges(recipe.jitter))
        factors = torch.tensor(fs, dtype=torch.float32)
    gray = bool(torch.rand(1) < recipe.gray_p)  # T.RandomGrayscale
    blur = not recipe.blur_p < torch.rand(1)  # T.RandomApply(GaussianBlur)
    sigma = T.GaussianBlur.get_params(*recipe.sigma) if blur else 1.0
    solarize = torch.rand(1).item() < recipe.solarize_p  # T.RandomSolarize
    return {
        "jitter": torch.tensor(jitter),
        "order": order,
        "factors": factors,
        "gray": torch.tensor(gray),
        "blur": torch.tensor(blur),
        "sigma": torch.tensor(sigma, dtype=torch.float32),
        "solarize": torch.tensor(solarize),
    }


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


def device_stage(view, device: torch.device, memory_format: torch.memory_format) -> torch.Tensor:
    """A loader's view batch on `device`, ready for the network.

    A tensor (the torch and DALI loaders: already augmented) is only moved; a dict (the two-stage
    loader: uint8 `pixels` + per-sample parameters) is moved and augmented here, batched.
    """
    if isinstance(view, torch.Tensor):
        return view.to(device, non_blocking=True, memory_format=memory_format)
    moved = {k: v.to(device, non_blocking=True) for k, v in view.items()}
    pixels = moved.pop("pixels")
    return augment_batch(pixels, moved).contiguous(memory_format=memory_format)
