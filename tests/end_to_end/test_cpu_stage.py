"""The two-stage path's CPU stage against the reference path's PIL ops.

`DecodedFiles` (torchvision's JPEG decoder) gives the pixels `ImageFiles` (PIL) gives, for every
JPEG colour mode and for the formats it hands to PIL, and fails the way it does; `TwoStageView`
cuts the reference path's crop box, leaves its flip to the device stage (in the view's vector),
and resizes within one level of PIL's resize
(`uint8_resize` row of reference/tolerances.py) for both interpolations, up- and downscaling,
with torchvision's uint8 kernel called directly (bit-equal to `TF2.resize`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF2

from reference.tolerances import tol
from scaled.augment import RECIPES, draw_uniforms, draw_view
from scaled.config import PretrainConfig
from scaled.data import (
    INTERPOLATIONS,
    UINT8_RESIZE,
    DecodedFiles,
    ImageFiles,
    TwoStageView,
    pretrain_dataset,
    resize_crop,
)
from scaled.jpeg import jpeg_frame
from scaled.tools.bench.loader import write_jpeg_folder
from tests.faults.test_run_survival import decompression_bomb_png


def photo(size=(120, 90), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(size[1] // 10 + 1, size[0] // 10 + 1, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(low).resize(size, Image.BICUBIC), dtype=np.int16)
    noisy = base + rng.integers(-20, 21, size=base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def files(tmp_path) -> list[tuple[str, int]]:
    """One file per kind the decoders meet: RGB, grayscale and CMYK JPEGs, RGBA and 16-bit PNGs."""
    im = photo()
    out = {
        "rgb.jpg": im,
        "gray.jpg": im.convert("L"),
        "cmyk.jpg": im.convert("CMYK"),
        "rgba.png": im.convert("RGBA"),
        "i16.png": Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257),
    }
    paths = []
    for name, img in out.items():
        img.save(tmp_path / name, **({"quality": 90} if name.endswith(".jpg") else {}))
        paths.append((str(tmp_path / name), 0))
    return paths


def test_decoded_files_give_the_pixels_pil_gives(tmp_path):
    samples = files(tmp_path)
    assert Image.open(samples[-1][0]).mode.startswith("I")  # the 16-bit case is one
    fast, ref = DecodedFiles(samples), ImageFiles(samples)
    for i, (path, _) in enumerate(samples):
        got, want = fast.load(i)[0], TF.pil_to_tensor(ref.load(i)[0])
        assert got.dtype == torch.uint8 and got.shape == (3, 90, 120), path
        assert torch.equal(got, want), path


def test_decoded_files_fail_as_pil_does(tmp_path):
    good = tmp_path / "good.jpg"
    photo().save(good, quality=90)
    truncated, garbage, bomb = tmp_path / "cut.jpg", tmp_path / "junk.jpg", tmp_path / "big.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # header intact
    garbage.write_bytes(b"not an image at all")
    decompression_bomb_png(bomb)
    src = DecodedFiles([(str(p), 0) for p in (truncated, garbage, bomb)])
    with pytest.raises(ValueError, match="truncated") as err:
        src.load(0)
    assert "\n" not in str(err.value) and ".cpp" not in str(err.value)  # one readable line
    with pytest.raises(UnidentifiedImageError):
        src.load(1)
    with pytest.raises(ValueError, match="exceeds limit"):
        src.load(2)


def pil_crop_and_flip(img: Image.Image, view: TwoStageView, seed: int) -> torch.Tensor:
    """The reference path's crop, resize and flip (PIL) with the same draws, (H, W, 3) as the
    CPU stage's views."""
    torch.manual_seed(seed)
    (i, j, h, w), flip, _ = draw_view(view.recipe, img.height, img.width, view.scale)
    out = TF.resized_crop(img, i, j, h, w, [view.size] * 2, view.interpolation, antialias=True)
    if flip:
        out = TF.hflip(out)
    return TF.pil_to_tensor(out).permute(1, 2, 0)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_direct_uint8_resize_kernel_is_torchvisions_resize(tmp_path, interpolation):
    """`resize_crop` calls torchvision's uint8 kernel without its wrapper: bit-equal to
    `TF2.resize` for up- and downscaled crops and the whole image (whose result the kernel
    returns channels-first); the check can fail (another box differs)."""
    write_jpeg_folder(tmp_path, 1, seed=4)
    img = DecodedFiles([(str(next(tmp_path.rglob("*.jpg"))), 0)]).load(0)[0]
    mode = INTERPOLATIONS[interpolation]
    for box in [(10, 20, 40, 50), (0, 0, 375, 500), (100, 30, 250, 300), (5, 5, 96, 96)]:
        got = resize_crop(img, box, 96, UINT8_RESIZE[interpolation])
        i, j, h, w = box
        want = TF2.resize(img[:, i : i + h, j : j + w], [96, 96], mode, antialias=True)
        assert got.shape == (96, 96, 3) and got.is_contiguous()
        assert torch.equal(got, want.permute(1, 2, 0)), box
    kernel = UINT8_RESIZE[interpolation]
    other = resize_crop(img, (11, 20, 40, 50), 96, kernel)
    assert not torch.equal(other, resize_crop(img, (10, 20, 40, 50), 96, kernel))


@pytest.mark.parametrize("augment", ["byol", "simsiam"])  # bicubic, bilinear
def test_cpu_stage_crop_and_resize_match_pil(tmp_path, augment):
    """Same crop box as the PIL path and its flip in the view's vector (the device stage
    flips; here `flip(1)` of the HWC view); pixels within the `uint8_resize` row, almost all
    within one level, most equal. Scale 0.08-1 of a 500x375 photo to 224 px upscales small crops
    and downscales large ones."""
    write_jpeg_folder(tmp_path, 1, seed=3)
    img = Image.open(next(tmp_path.rglob("*.jpg"))).convert("RGB")
    pixels = TF.pil_to_tensor(img)
    view = TwoStageView(RECIPES[augment][0], 224, 0.08)
    differ, beyond_one, flips = [], [], []
    for seed in range(12):
        torch.manual_seed(seed)
        out = view(pixels)
        flips.append(bool(out["colour"][-1] > 0.5))
        got = out["pixels"].flip(1) if flips[-1] else out["pixels"]
        want = pil_crop_and_flip(img, view, seed)
        torch.testing.assert_close(got.float() / 255, want.float() / 255, **tol("uint8_resize"))
        levels = (got.int() - want.int()).abs()
        differ.append((levels > 0).float().mean().item())
        beyond_one.append((levels > 1).float().mean().item())
    assert np.mean(differ) < 0.05 and max(beyond_one) < 1e-3, (differ, beyond_one)
    torch.manual_seed(0)
    other = view(pixels)["pixels"].float() / 255
    assert 0 < sum(flips) < 12  # both kinds were compared
    assert (other - pil_crop_and_flip(img, view, 1).float() / 255).abs().max() > 0.1  # can fail


def test_jpeg_frame_reads_the_size_and_components_pil_reads(tmp_path):
    """`jpeg_frame` (the CPU stage's header check) gives PIL's size and colour mode for every
    JPEG kind (grey, RGB, CMYK, progressive, with EXIF and a comment before the frame) and
    None for what it must hand to PIL (not a JPEG, cut before the frame); a frame read from
    another file is told apart (the check can fail)."""
    im, paths = photo(size=(130, 70)), []
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate; the frame keeps the stored size
    for name, img, kw in [
        ("rgb.jpg", im, {}),
        ("gray.jpg", im.convert("L"), {}),
        ("cmyk.jpg", im.convert("CMYK"), {}),
        ("prog.jpg", im, {"progressive": True}),
        ("exif.jpg", im, {"exif": exif, "comment": b"x" * 300}),
    ]:
        img.save(tmp_path / name, quality=85, **kw)
        paths.append(tmp_path / name)
    modes = {1: "L", 3: "RGB", 4: "CMYK"}
    for path in paths:
        frame, pil = jpeg_frame(path.read_bytes()), Image.open(path)
        assert frame is not None and frame.precision == 8, path
        assert (frame.width, frame.height) == pil.size and modes[frame.components] == pil.mode
    wider = tmp_path / "wider.jpg"
    im.resize((131, 70)).save(wider, quality=85)
    frame = jpeg_frame(wider.read_bytes())
    assert (frame.width, frame.height) == (131, 70) != Image.open(paths[0]).size
    png = tmp_path / "a.png"
    im.save(png)
    data = paths[0].read_bytes()
    sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    assert jpeg_frame(png.read_bytes()) is None and jpeg_frame(data[:sof]) is None
    assert jpeg_frame(b"") is None and jpeg_frame(b"\xff\xd8\xff") is None


def test_decoded_files_keep_pils_decompression_bomb_limit_for_jpegs(tmp_path, monkeypatch):
    """The JPEG path checks the frame's size with PIL's rule: a warning over
    `Image.MAX_IMAGE_PIXELS`, one line (a ValueError, as for other formats) over twice it."""
    path = tmp_path / "a.jpg"
    photo(size=(120, 90)).save(path, quality=90)
    src = DecodedFiles([(str(path), 0)])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 120 * 90 - 1)
    with pytest.warns(Image.DecompressionBombWarning):
        assert src.load(0)[0].shape == (3, 90, 120)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 120 * 90 // 2 - 1)
    with pytest.raises(ValueError, match="exceeds limit") as err:
        src.load(0)
    assert "\n" not in str(err.value)


def test_cpu_stage_batches_equal_its_items_bit_for_bit(tmp_path):
    """`__getitems__` (what a worker calls: the uniforms of the whole batch drawn first, in one
    draw per sample, one colour tensor) gives `__getitem__`'s views, vectors and labels bit for
    bit and leaves torch's generator as it was; one draw of both views' uniforms equals two."""
    write_jpeg_folder(tmp_path, 10, seed=2, size=(160, 120))
    cfg = replace(PretrainConfig(), data_dir=str(tmp_path), image_size=64)
    ds = pretrain_dataset(cfg, two_stage=True)[0]
    items = [(2, i) for i in (3, 1, 4, 1, 5, 9)]
    state = torch.get_rng_state()
    batch = ds.__getitems__(items)
    assert torch.equal(torch.get_rng_state(), state)
    for got, want in zip(batch, (ds[item] for item in items), strict=True):
        assert got[2:] == want[2:]
        for v in range(2):
            assert torch.equal(got[v]["pixels"], want[v]["pixels"])
            assert torch.equal(got[v]["colour"], want[v]["colour"])
    assert not torch.equal(batch[0][0]["colour"], batch[1][0]["colour"])
    torch.manual_seed(7)
    one = draw_uniforms(2)
    torch.manual_seed(7)
    assert one == draw_uniforms() + draw_uniforms()
