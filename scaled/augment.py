"""View augmentations: the recipes, their per-sample parameters, and the batched device stage.

The two-stage input pipeline (`--loader device`, the default on CUDA for ImageFolder data):

1. CPU stage (data-loader workers, `scaled.data.TwoStageView`): decode, RandomResizedCrop
   -> a uint8 view; plus the per-sample parameters of the rest (flip and colour) that
   `draw_view` draws, in the worker, from the sample's seeded generator
   (`scaled.data.sample_seed(seed, epoch, index)`). Nothing else happens on the CPU.
2. Device stage (`device_stage`, called by `scaled.pretrain.train_step`): horizontal flip,
   colour jitter in a per-sample random order, grayscale, Gaussian blur, solarize and
   normalisation on the whole
   batch, each sample with ITS OWN parameters (a batch-wide parameter would be a different
   distribution), with no host synchronisation. Each sample's ops run once each: the three
   blends of ColorJitter are one per-sample blend, hue is one RGB -> RGB formula (no HSV
   image), the blur runs on the samples that drew it only (`batch_plan`); in bfloat16 and
   compiled on CUDA (`STAGE_DTYPE`, `STAGE_COMPILE`).

`draw_colour_params` consumes torch's generator exactly as the all-CPU reference path
(`scaled.data.view_transform`, torchvision transforms) does, so both paths draw the SAME
parameters for the same `(seed, epoch, index)`; they differ only in where and at what precision
the pixels are computed (PIL uint8 per op vs float32 on the device; tests/end_to_end/
test_augment.py bounds the difference op by op and in distribution).

Ops: by hand, each torchvision's tensor definition (checked in the tests), with the reason
next to each where kornia's op of the same name computes something else.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torchvision import transforms as T

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


RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect-ratio range (torchvision's default)
N_UNIFORMS = 36  # the uniforms one view draws (`draw_view`)
# The device stage's parameters of one view as one float vector (`draw_view`, `colour_fields`;
# "colour" for short: the flip is the one that is not a colour op):
COLOUR_FIELDS = ("jitter", "order", "factors", "gray", "blur", "sigma", "solarize", "flip")
_FIELD_SLICES = {
    "jitter": 0,
    "order": slice(1, 5),
    "factors": slice(5, 9),
    "gray": 9,
    "blur": 10,
    "sigma": 11,
    "solarize": 12,
    "flip": 13,
}
COLOUR_WIDTH = 14


@functools.lru_cache
def _jitter_ranges(strengths: tuple[float, float, float, float]) -> tuple:
    """ColorJitter's factor ranges for the strengths (built once: ~1 ms per construction)."""
    cj = T.ColorJitter(*strengths)
    return cj.brightness, cj.contrast, cj.saturation, cj.hue


def crop_box(u: list[float], height: int, width: int, scale: tuple[float, float]):
    """RandomResizedCrop's box `(i, j, h, w)` from 22 uniforms: torchvision's algorithm
    (`T.RandomResizedCrop.get_params`: up to 10 tries of an area fraction U(scale) and a log
    aspect ratio U(log 3/4, log 4/3), a uniform position in the image, else the centre crop)
    with its draws taken from `u` (two per try, then two for the position)."""
    area, (lo, hi) = height * width, (math.log(RATIO[0]), math.log(RATIO[1]))
    for t in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * t])
        aspect = math.exp(lo + (hi - lo) * u[2 * t + 1])
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = min(int(u[20] * (height - h + 1)), height - h)
            j = min(int(u[21] * (width - w + 1)), width - w)
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif in_ratio > RATIO[1]:
        w, h = int(round(height * RATIO[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def draw_uniforms(views: int = 1) -> list[float]:
    """The `N_UNIFORMS` uniforms of each of `views` views, from torch's default generator
    (float64), in one call: the CPU generator fills element by element, so this equals
    `views` calls one after the other (tested)."""
    return torch.rand(views * N_UNIFORMS, dtype=torch.float64).tolist()


def draw_view(
    recipe: ViewRecipe,
    height: int,
    width: int,
    scale: tuple[float, float],
    u: list[float] | None = None,
) -> tuple[tuple[int, int, int, int], bool, list[float]]:
    """One view's parameters, `(crop box, flip, colour vector)`, from ONE draw of
    `N_UNIFORMS` uniforms of torch's default generator (seeded per sample by
    `scaled.data.ViewsDataset`): the reference path and the CPU stage both call this, so they
    draw the same crop, flip and colour parameters for the same `(seed, epoch, index)`.

    Each parameter follows torchvision's transform's distribution (tests/end_to_end/
    test_augment.py compares them with torchvision's own samplers): `crop_box`; flip with
    probability `flip_p`; ColorJitter applied with probability `jitter_p`, a uniform
    permutation of (brightness, contrast, saturation, hue) (the argsort of 4 uniforms) and
    uniform factors in its ranges; grayscale, blur (sigma uniform in its range) and solarize
    with their probabilities. The colour vector is `COLOUR_FIELDS` laid out as `_FIELD_SLICES`
    (identity order and factors (1, 1, 1, 0) without jitter, sigma 1 without blur); its last
    entry is the flip again (the CPU stage leaves the flip to the device stage). `u`: the
    uniforms, drawn before (`draw_uniforms`, what this draws without them).
    """
    u = draw_uniforms() if u is None else u
    box = crop_box(u, height, width, scale)
    jitter = u[23] < recipe.jitter_p
    order, factors = [0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 0.0]
    if jitter:
        order = [float(k) for k in sorted(range(4), key=lambda k: u[24 + k])]
        ranges = [r or (0.0, 0.0) for r in _jitter_ranges(recipe.jitter)]  # None: strength 0
        ranges = [(1.0, 1.0) if k < 3 and r == (0.0, 0.0) else r for k, r in enumerate(ranges)]
        factors = [lo + (hi - lo) * u[28 + k] for k, (lo, hi) in enumerate(ranges)]
    blur = u[33] < recipe.blur_p
    sigma = recipe.sigma[0] + (recipe.sigma[1] - recipe.sigma[0]) * u[34] if blur else 1.0
    flip = u[22] < recipe.flip_p
    flags = [float(u[32] < recipe.gray_p), float(blur), sigma, float(u[35] < recipe.solarize_p)]
    return box, flip, [float(jitter), *order, *factors, *flags, float(flip)]


def colour_fields(colour: torch.Tensor) -> dict[str, torch.Tensor]:
    """The colour vectors (..., COLOUR_WIDTH) of `draw_view` as named per-sample tensors:
    bool `jitter`, `gray`, `blur`, `solarize`, `flip`; int64 `order` (..., 4); float32 `factors`
    (..., 4) and `sigma`. Slices and casts only (no host sync on the device)."""
    out = {k: colour[..., s] for k, s in _FIELD_SLICES.items()}
    for k in ("jitter", "gray", "blur", "solarize", "flip"):
        out[k] = out[k] > 0.5
    out["order"] = out["order"].long()
    return out


def draw_colour_params(recipe: ViewRecipe) -> dict[str, torch.Tensor]:
    """One view's colour parameters (`draw_view`'s, as `colour_fields`) from torch's default
    generator; the crop box it draws with them is thrown away."""
    _, _, colour = draw_view(recipe, 1, 1, recipe.scale)
    return colour_fields(torch.tensor(colour, dtype=torch.float32))


# --------------------------------------------------------------------------- batched ops
# x: float (B, 3, H, W) in [0, 1]; factors: (B,). Each op is torchvision's tensor definition
# (torchvision/transforms/_functional_tensor.py) with a per-sample factor. They work in any float
# dtype: the device stage runs them in `STAGE_DTYPE[device type]`.


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma, (B, 1, H, W). By hand: kornia.color.rgb_to_grayscale weighs red 0.299,
    torchvision (and PIL's "L") 0.2989, a difference of up to 1e-4."""
    return 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _linear_jitter(x: torch.Tensor, a, b, c) -> torch.Tensor:
    """clamp(a x + b luma(x) + c mean_luma(x), 0, 1) per sample: brightness (a = f, b = c = 0),
    contrast (a = f, c = 1 - f), saturation (a = f, b = 1 - f) and the identity (a = 1) are
    this one blend, so one pass serves whichever of the three each sample draws."""
    g = grayscale(x)
    mean = g.mean(dim=(-3, -2, -1), keepdim=True)
    shift = _per_sample(b) * g + _per_sample(c) * mean
    return torch.addcmul(shift, _per_sample(a), x).clamp(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """x * factor, clamped. By hand: kornia.enhance.adjust_brightness ADDS the factor."""
    zero = torch.zeros_like(factor)
    return _linear_jitter(x, factor, zero, zero)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the mean luma of each image. By hand: kornia.enhance.adjust_contrast scales
    the pixels without the mean."""
    return _linear_jitter(x, factor, torch.zeros_like(factor), 1.0 - factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the luma. By hand: kornia.enhance.adjust_saturation scales HSV saturation."""
    return _linear_jitter(x, factor, 1.0 - factor, torch.zeros_like(factor))


@functools.cache
def _constants(device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The stage's constant tensors, built once per (device, dtype): a tensor from Python data
    is a host-to-device copy that waits for the GPU (issue 29), so none is built per step."""
    stats = torch.tensor([IMAGENET_MEAN, IMAGENET_STD], dtype=torch.float64)
    mean, std = (s.view(1, 3, 1, 1) for s in stats)
    # (x - mean) / std = x / std - mean / std: the normalisation is one fused multiply-add
    return {"scale": (1.0 / std).to(device, dtype), "shift": (-mean / std).to(device, dtype)}


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by `factor` turns (torchvision's unit), RGB to RGB in one formula.

    torchvision converts to HSV, shifts h and converts back; the shift keeps V = M (the max of
    the channels) and S, hence the min m, so channel n of the result is
    M - (M - m) clamp(min(t, 4 - t), 0, 1) with t = (n + 6 h + 6 factor) mod 6 (n = 5, 3, 1 for
    R, G, B): the closed form of torchvision's six-sector table, with 6 h in [-1, 5) taken
    straight from the channels (torchvision's `_rgb2hsv`). One hue computation, no HSV image.
    In float32 whatever `x`'s dtype (bfloat16's 3 significant digits would misplace 6 h + 5 by
    up to 0.03, several levels); the result in `x`'s dtype.
    """
    dtype, x = x.dtype, x.float()
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    M = torch.maximum(torch.maximum(r, g), b)  # pointwise, not a reduction: fuses when compiled
    C = M - torch.minimum(torch.minimum(r, g), b)
    inv = torch.where(C == 0, torch.ones_like(C), C).reciprocal()  # grey pixels: h = 0
    h6 = torch.where(
        M == r, (g - b) * inv, torch.where(M == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0)
    )
    h6 = h6 + 6.0 * _per_sample(factor)
    sector = 5.0 - 2.0 * torch.arange(3, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    t = torch.remainder(h6 + sector, 6.0)  # a factory op, no host data: fuses when compiled
    return (M - C * torch.minimum(t, 4.0 - t).clamp(0.0, 1.0)).to(dtype)


COLOUR_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # ColorJitter


def jitter_coefficients(apply: torch.Tensor, order: torch.Tensor, factors: torch.Tensor):
    """Per position of ColorJitter's permutation, each sample's op as (a, b, c, hue, is_hue),
    each (4, B): the `_linear_jitter` coefficients of its brightness / contrast / saturation
    (the identity for hue and for samples without jitter) and its hue factor (0 elsewhere)."""
    f = factors.gather(1, order).T  # (4, B): the factor of the op at each position
    k, on = order.T, apply[None, :]
    one, zero = torch.ones_like(f), torch.zeros_like(f)
    a = torch.where(on & (k < 3), f, one)
    b = torch.where(on & (k == 2), 1.0 - f, zero)
    c = torch.where(on & (k == 1), 1.0 - f, zero)
    is_hue = on & (k == 3)
    return a, b, c, torch.where(is_hue, f, zero), is_hue


# --------------------------------------------------------------------------- where drawn
# A batch plan says, per drawn op, which samples drew it and how many: the device stage then
# computes an op on those samples only (none at p 0, all at p 1) instead of on the whole batch
# followed by a select. The CPU stage's worker builds it (`batch_plan`), where the parameters
# are host data; the count travels as the SHAPE of a tensor with no elements, so the device
# stage reads it without a host sync (no `.item()`, no `nonzero`).

PLANNED = ("flip", "blur", "gray", "solarize", "hue0", "hue1", "hue2", "hue3")  # hue<p>: at p


def drawn_ops(fields: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, len(PLANNED)) bool: which samples drew each planned op (`colour_fields` of a batch)."""
    hue = [fields["jitter"] & (fields["order"][:, p] == 3) for p in range(4)]
    flags = [fields[k] for k in ("flip", "blur", "gray", "solarize")]
    return torch.stack([*flags, *hue], dim=1)


def plan_of(colour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The plan of one view's batch from its colour vectors (B, COLOUR_WIDTH): `slots`
    (B, len(PLANNED)), column j the batch positions of the samples that drew op j first (a
    stable sort), and `counts`, a tensor with no elements of shape (0, n_1, ..., n_8)."""
    drawn = drawn_ops(colour_fields(colour))
    slots = torch.argsort((~drawn).to(torch.uint8), dim=0, stable=True)
    return slots, torch.empty(0, *drawn.sum(dim=0).tolist())


def batch_plan(views: list[dict[str, torch.Tensor]], colour: torch.Tensor | None = None) -> None:
    """Add a plan to one view's per-sample parameters (one dict per sample of a batch, each
    with its `colour` vector; in the CPU stage's worker, `scaled.data.ViewsDataset.__getitems__`;
    `colour`: those vectors stacked, when the caller has them).

    `plan_slots` (len(PLANNED),): for each planned op, entry i of the batch positions of the
    samples that drew it, those first (`plan_of`); `plan_counts`, a tensor with no elements
    whose shape (0, n_1, ..., n_8) holds how many drew each op. Collated: (B, 8) and
    (B, 0, n_1, ..., n_8).
    """
    if colour is None:
        colour = torch.stack([v["colour"] for v in views])
    slots, counts = plan_of(colour)
    for v, row in zip(views, slots.unbind(0), strict=True):
        v["plan_slots"], v["plan_counts"] = row, counts


def where_drawn(x: torch.Tensor, params: dict, name: str, drawn: torch.Tensor, op) -> torch.Tensor:
    """`op(x_subset, idx)` on the samples that drew `name`: with a plan, on those only
    (`idx` their batch positions; None for the whole batch); without one, on every sample,
    then a select by `drawn` (B,)."""
    if "plan_counts" not in params:
        return torch.where(_per_sample(drawn), op(x, None), x)
    j = PLANNED.index(name)
    n = params["plan_counts"].shape[2 + j]  # a shape: no device data read
    if n == 0:
        return x
    if n == x.shape[0]:
        return op(x, None)
    idx = params["plan_slots"][:n, j]
    return x.index_copy_(0, idx, op(x.index_select(0, idx), idx))


def _pick(v: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    return v if idx is None else v.index_select(0, idx)


def color_jitter(
    x: torch.Tensor,
    apply: torch.Tensor,
    order: torch.Tensor,
    factors: torch.Tensor,
    plan: dict | None = None,
) -> torch.Tensor:
    """ColorJitter with a per-sample permutation `order` (B, 4) and factors (B, 4).

    At each of the 4 positions a sample gets its own op there: brightness, contrast and
    saturation are one blend with per-sample coefficients (`jitter_coefficients`; the identity
    for the samples that draw hue there), then hue on the samples that draw it there (with a
    `batch_plan` in `plan`: on those only, each sample's hue once; without: a select). No host
    sync on the device. Compiled (`torch.compile`), each position is one fused pass.
    """
    a, b, c, hue, is_hue = (
        v.to(x.dtype) if v.is_floating_point() else v
        for v in jitter_coefficients(apply, order, factors)
    )
    if plan is None or "plan_counts" not in plan:  # selects: one fused pass per position
        for pos in range(4):
            blended = _linear_jitter(x, a[pos], b[pos], c[pos])
            x = torch.where(_per_sample(is_hue[pos]), adjust_hue(x, hue[pos]), blended)
        return x
    for pos in range(4):  # the blend is the identity for the samples that draw hue there
        x = _linear_jitter(x, a[pos], b[pos], c[pos])
        x = where_drawn(
            x, plan, f"hue{pos}", is_hue[pos], lambda s, i, f=hue[pos]: adjust_hue(s, _pick(f, i))
        )
    return x


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma, reflect border (torchvision's kernel:
    exp(-t^2 / 2 sigma^2) at integer offsets t, normalised). By hand: kornia.filters.
    gaussian_blur2d computes the same but checks `sigma > 0` with a host sync on every call."""
    B, C, H, W = x.shape
    t = torch.arange(kernel, device=x.device, dtype=torch.float32) - (kernel - 1) / 2
    k1 = torch.exp(-0.5 * (t[None] / sigma[:, None].float()) ** 2)
    k1 = (k1 / k1.sum(dim=1, keepdim=True)).to(x.dtype).repeat_interleave(C, dim=0)
    pad = kernel // 2
    y = nnf.pad(x.reshape(1, B * C, H, W), (pad, pad, pad, pad), mode="reflect")
    y = nnf.conv2d(y, k1[:, None, None, :], groups=B * C)
    y = nnf.conv2d(y, k1[:, None, :, None], groups=B * C)
    return y.reshape(B, C, H, W)


def solarize(x: torch.Tensor) -> torch.Tensor:
    """Invert pixels >= 128/255 (PIL's and torchvision's threshold 128 on uint8)."""
    return torch.where(x >= 128 / 255, 1.0 - x, x)


# --------------------------------------------------------------------------- the device stage

# The stage's working dtype per device type: the narrowest float of reference/tolerances.py
# whose row the stage meets against its float32 self and torchvision (bfloat16: tests/
# end_to_end/test_device_stage.py). bfloat16 halves the bytes on a GPU, where the stage is
# memory-bound; a CPU converts every bf16 op to float32 and back, so it keeps float32.
STAGE_DTYPE = {"cuda": torch.bfloat16, "cpu": torch.float32}
# torch.compile of the two pointwise regions (colour, finish) per device type. CUDA: the fused
# kernels read and write the batch about once per jitter position instead of once per eager op
# (inductor's byte count of the compiled graph against the eager ops', printed by `bench
# loader`); not yet timed on a GPU (`make gpu-check` times the stage). CPU: eager (the bench
# times both; compiling costs about a minute per batch shape).
STAGE_COMPILE = {"cuda": True, "cpu": False}


def _colour(pixels, flip, apply, order, factors, dtype: torch.dtype) -> torch.Tensor:
    """uint8 views -> flipped and jittered views in `dtype`: the region before the blur, every
    op a select (static shapes for `torch.compile`; the flip is a mirrored read of the input)."""
    x = pixels.to(dtype) / 255.0
    return color_jitter(torch.where(_per_sample(flip), x.flip(-1), x), apply, order, factors)


def _finish(x, gray, solar, scale, shift, memory_format, out_dtype: torch.dtype) -> torch.Tensor:
    """Grayscale and solarize where drawn (selects), normalise (in float32) to `out_dtype` in
    the network's memory format: the region after the blur."""
    x = torch.where(_per_sample(gray), grayscale(x).expand_as(x), x)
    x = torch.where(_per_sample(solar), solarize(x), x)
    return torch.addcmul(shift, x, scale).to(out_dtype).contiguous(memory_format=memory_format)


@functools.cache
def _compiled(fn):
    return torch.compile(fn, dynamic=False, fullgraph=True)


def select_stage(pixels, p, dtype, memory_format, out_dtype, region=None) -> torch.Tensor:
    """The stage in its compiled form: the colour and finish regions as selects (`region`
    wraps each: `_compiled` when None, or the identity to run them eager as the compiler sees
    them, what `bench loader` counts) around the blur where drawn."""
    region = region or _compiled  # looked up per call (tests replace `_compiled`)
    consts = _constants(pixels.device, torch.float32)
    x = region(_colour)(pixels, p["flip"], p["jitter"], p["order"], p["factors"], dtype)
    x = blur_where_drawn(x, p)
    args = (p["gray"], p["solarize"], consts["scale"], consts["shift"], memory_format)
    return region(_finish)(x, *args, out_dtype)


def blur_where_drawn(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The Gaussian blur on the samples that drew it (`where_drawn`), each with its sigma."""
    kernel, sigma = blur_kernel_size(x.shape[-1]), params["sigma"]
    return where_drawn(
        x, params, "blur", params["blur"], lambda s, i: gaussian_blur(s, kernel, _pick(sigma, i))
    )


def augment_batch(
    pixels: torch.Tensor,
    params: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    compile: bool | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    out_dtype: torch.dtype = torch.float32,
    on_phase=None,
) -> torch.Tensor:
    """uint8 views (B, 3, H, W), any memory format, + their per-sample parameters (named as
    `colour_fields`, or the packed `colour` vectors) -> normalised views in `out_dtype`
    (float32; the run's autocast dtype when it has one: the network's first convolution casts
    its input to it anyway, and the stage then writes half the bytes; the same values, the
    normalisation computed in float32 and rounded once, tested).

    The horizontal flip, colour jitter (each sample's four ops once each, in its drawn order),
    the blur, grayscale,
    solarize, normalisation, in `dtype` (default `STAGE_DTYPE` of the device). Grayscale comes
    after the blur, fused with solarize: both are linear, one over the channels and one over
    the pixels, so they commute exactly up to round-off (torchvision: grayscale, then blur).
    Eager, every drawn op runs on the samples that drew it (with the `batch_plan` the CPU
    stage's batches carry); compiled (`compile`, default `STAGE_COMPILE`), the pointwise ops
    are selects fused into a few kernels and the blur (a convolution, outside them) runs where
    drawn. No host sync.
    `on_phase(name)` is called as the eager stage enters "colour", "blur" and "finish" (the byte
    count of `bench loader` labels the ops with it).
    """
    phase = on_phase or (lambda name: None)
    if "colour" in params:  # the CPU stage's packed vectors
        params = {**colour_fields(params["colour"]), **params}
    kind, p = pixels.device.type, params
    dtype = STAGE_DTYPE.get(kind, torch.float32) if dtype is None else dtype
    if STAGE_COMPILE.get(kind, False) if compile is None else compile:
        try:
            return select_stage(pixels, p, dtype, memory_format, out_dtype)
        except Exception as err:  # noqa: BLE001  a compiler failure: eager from now on
            if compile:
                raise
            STAGE_COMPILE[kind] = False
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            print(
                f"warning: the device stage does not compile on {kind} ({first}); it runs "
                "eager from now on (slower, same views)",
                file=sys.stderr,
            )
    phase("colour")
    x = where_drawn(pixels.to(dtype).div_(255.0), p, "flip", p["flip"], lambda s, i: s.flip(-1))
    x = color_jitter(x, p["jitter"], p["order"], p["factors"], p)
    phase("blur")
    x = blur_where_drawn(x, p)
    phase("finish")
    x = where_drawn(x, p, "gray", p["gray"], lambda s, i: grayscale(s).expand_as(s).contiguous())
    x = where_drawn(x, p, "solarize", p["solarize"], lambda s, i: solarize(s))
    consts = _constants(pixels.device, torch.float32)
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device, memory_format=memory_format)
    return torch.addcmul(consts["shift"], x, consts["scale"], out=out)  # in float32, rounded


def device_stage(
    view,
    device: torch.device,
    memory_format: torch.memory_format,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A loader's view batch on `device`, ready for the network (in `out_dtype`, the run's
    autocast dtype, when the stage computes it; float32 when None).

    A tensor (the torch and DALI loaders: already augmented) is only moved; a dict (the two-stage
    loader: uint8 `pixels` (B, H, W, 3), cropped and resized, the flip and colour vectors
    (B, COLOUR_WIDTH) of `draw_view` and a `batch_plan`) is moved and augmented here, batched.
    """
    if isinstance(view, torch.Tensor):
        return view.to(device, non_blocking=True, memory_format=memory_format)
    moved = {k: v.to(device, non_blocking=True) for k, v in view.items()}
    fmt = torch.contiguous_format if memory_format == torch.preserve_format else memory_format
    pixels = moved.pop("pixels").permute(0, 3, 1, 2)  # (B, H, W, 3) -> channels-last (B, 3, H, W)
    return augment_batch(pixels, moved, memory_format=fmt, out_dtype=out_dtype or torch.float32)
