"""Optional GPU input pipeline: decode + BYOL augmentations on the GPU with NVIDIA DALI.

The default loader (`--loader torch`, scaled/data.py) decodes and augments JPEGs on CPU worker
processes; at ImageNet scale on a fast GPU that needs ~8-12 CPU cores per GPU (see the loader
benchmark, `python -m scaled.tools.bench loader`, and docs/scaling.md). This module moves the JPEG
decode (nvJPEG, `device="mixed"`) and every augmentation onto the GPU and returns two views of
each image, so a node with few CPU cores can still feed its GPUs.

The augmentations mirror BYOL's two asymmetric views (Grill et al. 2020, Table 6):
random resized crop (area 0.08-1, aspect 3/4-4/3) to `crop` px, horizontal flip p=0.5,
colour jitter p=0.8 (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1), grayscale p=0.2,
Gaussian blur (sigma 0.1-2.0) p=1.0 / 0.1, solarize p=0.0 / 0.2, then ImageNet mean/std
normalisation. Two documented differences from torchvision's versions: grayscale is saturation
0 in HSV (not the ITU-R 601 luma), and DALI draws its own random numbers (a DALI run is
reproducible for a fixed `seed`, but not bit-equal to the torch loader).

**Not run in this project's CI or development sessions**: they have no GPU and DALI is not
installed. Only the error path below is tested on CPU; tests/perf/test_dali_loader.py holds a
`gpu`-marked test that builds this pipeline and checks shapes, dtypes and per-view statistics
on a generated ImageFolder when CUDA and DALI are present. Install with ``pip install ".[dali]"``
(CUDA 13 wheels, matching torch).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import torch

INSTALL_HINT = (
    'install it with `pip install ".[dali]"` on a machine with an NVIDIA GPU and CUDA 13, '
    "or use the default `--loader torch`"
)

# BYOL view parameters: (probability of Gaussian blur, probability of solarize) per view.
BYOL_VIEWS: tuple[tuple[float, float], tuple[float, float]] = ((1.0, 0.0), (0.1, 0.2))
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class DaliUnavailableError(RuntimeError):
    """DALI or CUDA is missing; the message is one line saying how to install or what to use."""


def require_dali() -> None:
    """Raise `DaliUnavailableError` with a one-line fix unless DALI and a CUDA GPU are present."""
    if (
        importlib.util.find_spec("nvidia") is None
        or importlib.util.find_spec("nvidia.dali") is None
    ):
        raise DaliUnavailableError(
            f"--loader dali needs NVIDIA DALI, which is not installed: {INSTALL_HINT}."
        )
    if not torch.cuda.is_available():
        raise DaliUnavailableError(
            "--loader dali needs a CUDA GPU, but "
            f"torch.cuda.is_available() is False: {INSTALL_HINT}."
        )


def _byol_view(jpegs_decoded, *, crop: int, blur_p: float, solarize_p: float, scale_min: float):
    """One BYOL view of a batch of decoded GPU images (DALI graph code, runs inside a pipeline)."""
    from nvidia.dali import fn, types

    images = fn.random_resized_crop(
        jpegs_decoded,
        size=[crop, crop],
        random_area=[scale_min, 1.0],
        random_aspect_ratio=[0.75, 4 / 3],
        interp_type=types.INTERP_CUBIC,  # scaled/data.py crops with bicubic interpolation
    )
    jitter = fn.random.coin_flip(probability=0.8, dtype=types.BOOL)
    gray = fn.random.coin_flip(probability=0.2, dtype=types.BOOL)
    if jitter:
        images = fn.color_twist(
            images,
            brightness=fn.random.uniform(range=[0.6, 1.4]),
            contrast=fn.random.uniform(range=[0.6, 1.4]),
            saturation=fn.random.uniform(range=[0.8, 1.2]),
            hue=fn.random.uniform(range=[-0.1 * 180, 0.1 * 180]),  # DALI's hue is in degrees
        )
    if gray:
        images = fn.hsv(images, saturation=0.0)
    if fn.random.coin_flip(probability=blur_p, dtype=types.BOOL):
        # the kernel of scaled/data.py: max(3, (crop // 10) // 2 * 2 + 1), 23 px at 224 px
        window = max(3, 2 * (crop // 20) + 1)
        images = fn.gaussian_blur(
            images, window_size=window, sigma=fn.random.uniform(range=[0.1, 2.0])
        )
    if fn.random.coin_flip(probability=solarize_p, dtype=types.BOOL):
        x = fn.cast(images, dtype=types.INT16)
        x = x + (x >= 128) * (255 - 2 * x)  # solarize at 128: x -> 255 - x above the threshold
        images = fn.cast(x, dtype=types.UINT8)
    return fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        mirror=fn.random.coin_flip(probability=0.5),
    )


def byol_dali_pipeline(
    data_dir: str | Path,
    *,
    batch_size: int,
    crop: int = 224,
    scale_min: float = 0.08,
    num_threads: int = 4,
    device_id: int = 0,
    shard_id: int = 0,
    num_shards: int = 1,
    seed: int = 0,
):
    """Build (not start) a DALI pipeline that yields two BYOL views and the label of each image.

    Parameters
    ----------
    data_dir : ImageFolder root (one sub-folder of JPEGs per class), e.g. ``imagenet/train``.
    batch_size : images per GPU per step.
    crop : output side in pixels (``--image-size``).
    scale_min : smallest crop area fraction (``--crop-scale-min``).
    num_threads : CPU threads DALI uses for reading and scheduling (decode runs on the GPU).
    device_id : the CUDA device of this rank (``LOCAL_RANK`` under torchrun).
    shard_id, num_shards : this rank's shard of the file list (``RANK``, ``WORLD_SIZE``).
    seed : DALI's random seed; use a different one per rank.
    """
    require_dali()
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(enable_conditionals=True)
    def pipeline():
        jpegs, labels = fn.readers.file(
            file_root=str(data_dir),
            random_shuffle=True,
            shard_id=shard_id,
            num_shards=num_shards,
            name="Reader",
        )
        decoded = fn.decoders.image(jpegs, device="mixed", output_type=types.RGB)
        views = [
            _byol_view(
                decoded, crop=crop, blur_p=blur_p, solarize_p=solarize_p, scale_min=scale_min
            )
            for blur_p, solarize_p in BYOL_VIEWS
        ]
        return views[0], views[1], labels.gpu()

    return pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)


class DaliTwoViewLoader:
    """Iterate batches from `byol_dali_pipeline` in the torch loader's format, one epoch per
    ``iter()``: ``(view1, view2, label, index, skipped)``, all CUDA tensors, so the loop of
    scaled/pretrain.py runs unchanged. ``index`` is -1 (DALI does not report file indices) and
    ``skipped`` is 0 (DALI stops on an unreadable file instead of skipping it). ``len()`` is the
    number of full batches of this shard; the last partial batch is dropped.
    """

    def __init__(self, data_dir: str | Path, *, batch_size: int, **pipeline_kwargs) -> None:
        pipe = byol_dali_pipeline(data_dir, batch_size=batch_size, **pipeline_kwargs)
        pipe.build()
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self._iterator = DALIGenericIterator(
            [pipe],
            ["view1", "view2", "label"],
            reader_name="Reader",
            last_batch_policy=LastBatchPolicy.DROP,
            auto_reset=True,
        )
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self._iterator)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for batch in self._iterator:
            out = batch[0]
            labels = out["label"].squeeze(-1).long()
            minus_one = torch.full_like(labels, -1)
            yield out["view1"], out["view2"], labels, minus_one, torch.zeros_like(labels)
