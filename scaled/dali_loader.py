"""Optional input pipeline: decode + BYOL augmentations with NVIDIA DALI (`--loader dali`).

The default loaders (scaled/data.py) decode on CPU worker processes; at ImageNet scale on a fast
GPU that needs several CPU cores per GPU (`python -m scaled.tools.bench loader`,
docs/scaling.md). This module decodes (nvJPEG, `device="mixed"`) and augments on the GPU and
returns two views of each image, so a node with few CPU cores can still feed its GPUs. With
`device_id=None` the same pipeline runs on the CPU (DALI's CPU operators): that is how the tests
run it on a machine without a GPU.

**Which images, in which order**: the file order is the trainer's own, not DALI's reader:
`scaled.data.GlobalBatchSampler` (one permutation per epoch seeded from the run seed; each
rank reads its rows of every global batch, so the composition of every global batch is the same
for any number of ranks) feeds `fn.external_source` with the bytes, labels and indices of this
rank's samples. `set_epoch(e)` / `set_start_step(s)` (the sampler's own, called by the trainer)
take effect at the next `iter()`: a new order per epoch, a mid-epoch resume that continues at
step s, and an epoch that ends after exactly the sampler's batches (any accumulation: each
`iter()` builds a fresh pipeline and runs it for exactly those micro-batches, so nothing is left
over for the next epoch). **As far as DALI allows**: its random operators (crop window, flip,
colour factors, blur, solarize) draw from one generator per pipeline, seeded here from (run
seed, epoch, start step, rank); DALI cannot seed them per sample, so the augmentations of a
sample depend on the rank and its position in the batch (not bit-equal across world sizes) and
a resumed run draws other augmentations than an uninterrupted one (deterministic for a given
resume point). The torch and device loaders have neither limit (per-sample seeds).

The augmentations mirror BYOL's two asymmetric views (Grill et al. 2020, Table 6):
random resized crop (area `scale_min`-1, aspect 3/4-4/3) to `crop` px, horizontal flip p=0.5,
colour jitter p=0.8 (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1), grayscale p=0.2,
Gaussian blur (sigma 0.1-2.0) p=1.0 / 0.1, solarize p=0.0 / 0.2, then ImageNet mean/std
normalisation. Two documented differences from torchvision's versions: grayscale is saturation
0 in HSV (not the ITU-R 601 luma), and the colour ops run in DALI's fixed order.
Install with ``pip install ".[dali]"`` (CUDA 13 wheels, matching torch; they run on a CPU too).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

INSTALL_HINT = 'install it with `pip install ".[dali]"`, or use the default `--loader torch`'

# BYOL view parameters: (probability of Gaussian blur, probability of solarize) per view.
BYOL_VIEWS: tuple[tuple[float, float], tuple[float, float]] = ((1.0, 0.0), (0.1, 0.2))
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class DaliUnavailableError(RuntimeError):
    """DALI or CUDA is missing; the message is one line saying how to install or what to use."""


def dali_installed() -> bool:
    return importlib.util.find_spec("nvidia") is not None and (
        importlib.util.find_spec("nvidia.dali") is not None
    )


def require_dali(device_id: int | None = 0) -> None:
    """Raise `DaliUnavailableError` with a one-line fix unless DALI (and, for a GPU pipeline,
    `device_id` not None, a CUDA GPU) is present."""
    if not dali_installed():
        raise DaliUnavailableError(
            f"--loader dali needs NVIDIA DALI, which is not installed: {INSTALL_HINT}."
        )
    if device_id is not None and not torch.cuda.is_available():
        raise DaliUnavailableError(
            "--loader dali on a GPU needs CUDA, but torch.cuda.is_available() is False: "
            f"{INSTALL_HINT} (on a CPU the pipeline runs with device_id=None)."
        )


def _byol_view(images, *, crop: int, blur_p: float, solarize_p: float, scale_min: float):
    """One BYOL view of a batch of decoded images (DALI graph code, runs inside a pipeline)."""
    from nvidia.dali import fn, types

    images = fn.random_resized_crop(
        images,
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
        # the kernel of scaled/augment.py: max(3, (crop // 10) // 2 * 2 + 1), 23 px at 224 px
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
    source,
    *,
    batch_size: int,
    crop: int = 224,
    scale_min: float = 0.08,
    num_threads: int = 4,
    device_id: int | None = 0,
    seed: int = 0,
):
    """Build (not start) a DALI pipeline that yields two BYOL views, the label and the index of
    each image of the batches `source(info)` returns (`fn.external_source`, batch mode:
    (encoded bytes, labels, indices) per batch; StopIteration after the last).

    device_id None: CPU operators throughout (decode included); else nvJPEG and GPU operators on
    that device. seed: the pipeline's generator (every random operator draws from it).
    """
    require_dali(device_id)
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None

    @pipeline_def(enable_conditionals=True)
    def pipeline():
        jpegs, labels, index = fn.external_source(
            source=source,
            num_outputs=3,
            batch=True,
            batch_info=True,
            dtype=[types.UINT8, types.INT64, types.INT64],
        )
        decoded = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        views = [
            _byol_view(decoded, crop=crop, blur_p=b, solarize_p=s, scale_min=scale_min)
            for b, s in BYOL_VIEWS
        ]
        return views[0], views[1], labels, index

    return pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)


def pipeline_seed(seed: int, epoch: int, start_step: int, rank: int) -> int:
    """The DALI generator's seed of one `iter()`: a hash of (run seed, epoch, start step,
    rank), below 2**31 (DALI's seed is a signed 32-bit int)."""
    entropy = [seed, epoch, start_step, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0] >> 1)


def _to_torch(out) -> torch.Tensor:
    """A DALI output batch (dense) as a torch tensor: CUDA for GPU outputs, CPU otherwise."""
    if hasattr(out, "as_cpu") and type(out).__name__.endswith("GPU"):
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

        tensor = out.as_tensor()
        t = torch.empty(tensor.shape(), dtype=to_torch_type[tensor.dtype], device="cuda")
        feed_ndarray(tensor, t, cuda_stream=torch.cuda.current_stream())
        return t
    return torch.from_numpy(np.array(out.as_tensor()))


class DaliTwoViewLoader:
    """Batches `(view1, view2, label, index, skipped)` in the torch loader's format from
    `byol_dali_pipeline`, `batch_size` images a micro-batch, in the order of `sampler`.

    `source`: an ImageFolder split folder (e.g. ``imagenet/train``) or its `(path, label)`
    list. `sampler`: this rank's `scaled.data.GlobalBatchSampler` (the trainer's: its
    `set_epoch` / `set_start_step` choose the epoch and first step of the next `iter()`);
    without one, the loader makes its own from `seed` and the old reader-style arguments
    `shard_id`, `num_shards` (rank, world size), and each `iter()` is the next epoch (its
    `set_epoch` / `set_start_step` set it explicitly). `len()`: the micro-batches of a full
    epoch. Tensors on CUDA for a GPU pipeline, on the CPU for `device_id=None`; `index` is the
    sample's index in `source`; `skipped` is 0 (DALI stops on an unreadable file instead).
    """

    def __init__(
        self,
        source,
        *,
        batch_size: int,
        sampler=None,
        seed: int = 0,
        shard_id: int = 0,
        num_shards: int = 1,
        **pipeline_kwargs,
    ) -> None:
        require_dali(pipeline_kwargs.get("device_id", 0))
        from scaled.data import GlobalBatchSampler, scan_image_folder

        if isinstance(source, (str, Path)):
            path = Path(source)
            source = scan_image_folder(path.parent, path.name, unlabelled_ok=True)[0]
        self.samples, self.batch_size, self.rank = list(source), batch_size, shard_id
        self.seed, self.kwargs, self.auto_epoch = seed, pipeline_kwargs, sampler is None
        if sampler is None:
            sampler = GlobalBatchSampler(
                len(self.samples), batch_size * num_shards, shard_id, num_shards, seed
            )
            sampler.set_epoch(-1)  # the first iter() is epoch 0
        if sampler.per_rank % batch_size:
            raise ValueError(
                f"the sampler's {sampler.per_rank} rows per step are not a multiple "
                f"of batch_size {batch_size}"
            )
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.auto_epoch = False

    def set_start_step(self, step: int) -> None:
        self.sampler.set_start_step(step)

    def __len__(self) -> int:
        return self.sampler.steps_per_epoch * (self.sampler.per_rank // self.batch_size)

    def _batches(self) -> list[list[int]]:
        """The indices of each micro-batch of the next `iter()`, in order."""
        items = [index for _, index in self.sampler]
        b = self.batch_size
        return [items[k : k + b] for k in range(0, len(items), b)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.auto_epoch:
            self.sampler.set_epoch(self.sampler.epoch + 1)
        batches = self._batches()
        if not batches:
            return
        samples = self.samples

        def source(info):
            if info.iteration >= len(batches):
                raise StopIteration
            idx = batches[info.iteration]
            data = [np.fromfile(samples[i][0], dtype=np.uint8) for i in idx]
            labels = [np.array(samples[i][1], dtype=np.int64) for i in idx]
            return data, labels, [np.array(i, dtype=np.int64) for i in idx]

        seed = pipeline_seed(self.seed, self.sampler.epoch, self.sampler.start_step, self.rank)
        pipe = byol_dali_pipeline(source, batch_size=self.batch_size, seed=seed, **self.kwargs)
        pipe.build()
        try:
            for _ in batches:
                v1, v2, labels, index = (_to_torch(o) for o in pipe.run())
                labels, index = labels.reshape(-1).long(), index.reshape(-1).long()
                yield v1, v2, labels, index, torch.zeros_like(labels)
        finally:
            del pipe
