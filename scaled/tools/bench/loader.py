"""``loader``: the input pipeline against its physical floor, per CPU core, and the device stage's
time, bytes and estimated share of a GPU step, measured side by side in one run.

Per core (one process, one torch thread, every pipeline interleaved image by image over the same
files, so a slow-down of the shared machine hits all alike):

- decode only: PIL (`ImageFiles.load`, today's loader's) and torchvision's JPEG decoder alone
  (`decode_file`: read the file, `decode_jpeg`; the CPU stage's `DecodedFiles.load` adds its
  header checks to this);
- the floor: `decode_file` + the two crop-resizes to the view size with the CPU stage's
  boxes (drawn before timing) and filter (torchvision's antialiased uint8 kernel), nothing else:
  the work no two-view pipeline can avoid;
- today's loader (`--loader torch`: PIL decode and torchvision's PIL ops, `ReferenceView`);
- the CPU stage (`--loader device`: `TwoStageView` on `DecodedFiles`, and the batch plan);
- DALI's CPU path when DALI is installed (a `device_id=None` pipeline, one thread: crop-region
  decode, cubic resize and flip of two views, the CPU stage's work), timed in its own loop
  right after the interleaved one.

The device stage (`scaled.augment.device_stage`) on `--device` (one thread on a CPU): this
version and the one before issue 31 (`device_stage_v1`), interleaved; on a CPU also compiled.
Its bytes are counted per op with a `TorchDispatchMode` (eager ops, at 512 images per GPU, in the
dtype of CUDA, on the meta device) and for the compiled regions with inductor's own count; the
FLOPs of one ResNet-50 MINC step at 512 per GPU with `torch.utils.flop_counter`. Bytes at an
H100's memory bandwidth against FLOPs at its bf16 rate give the stage's estimated share of the
step (`H100` says where both numbers come from).

The JSON record goes to `--output-dir`/loader.json and, with `--write-docs`, to
docs/results/bench_loader.json; `docs_section` and `cores_section` render the docs tables from
it (docs/results.md "Input pipeline", docs/scaling.md's cores-per-GPU table).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scaled.tools.bench.common import (
    docs_body,
    markdown_table,
    pick_device,
    publish,
    stored_record,
    synchronize,
    write_json,
)
from scaled.tools.provenance import (
    checkout_root,
    environment,
    finished,
    provenance_line,
    replace_section,
)

GPU_RATE = 2000  # images/s one GPU consumes (ResNet-50 two-view SSL step, order of magnitude)
STEP_BATCH = 512  # images per GPU of the ImageNet presets (global 4096 on 8 GPUs)
H100 = {
    "card": "NVIDIA H100 SXM5 80 GB",
    "memory_bytes_per_s": 3.35e12,
    "bf16_dense_flops_per_s": 989.4e12,
    "fp32_flops_per_s": 67e12,
    "source": "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM: GPU memory bandwidth 3.35 TB/s; "
    "BF16 Tensor Core 1,979 teraFLOPS with sparsity, 989.4 dense; FP32 67 teraFLOPS)",
}
RECORD = "bench_loader.json"  # under docs/results/


def write_jpeg_folder(root: Path, n_images: int, seed: int, size: tuple[int, int] = (500, 375)):
    """An ImageFolder of real JPEGs (ImageNet-like size and quality) under root/train/<class>/.

    Smooth random colour fields plus noise, saved at quality 90: about ImageNet's average size.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n_images):
        folder = root / "train" / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        low = rng.integers(0, 256, size=(h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.int16)
        pixels = np.clip(base + rng.integers(-20, 21, size=base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:04d}.jpg", quality=90)


# --------------------------------------------------------------------------- CPU pipelines


def decode_file(path: str) -> torch.Tensor:
    """A JPEG file's uint8 (3, H, W) pixels by torchvision's decoder, nothing else (no header
    checks, no fallback): the decode under the floor."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with open(path, "rb") as fh:
        data = torch.frombuffer(bytearray(fh.read()), dtype=torch.uint8)
    return decode_jpeg(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)


class DecodeOnly:
    """A source's `load` alone (`ImageFiles`: PIL decode to RGB, today's loader), or with
    `raw` torchvision's JPEG decoder alone on its files (`decode_file`)."""

    def __init__(self, source, raw: bool = False) -> None:
        self.source, self.raw = source, raw

    def __getitem__(self, item):
        if self.raw:
            return decode_file(self.source.samples[item[1]][0])
        return self.source.load(item[1])


class Floor:
    """torchvision's decode alone (`decode_file`) + the two crop-resizes of the CPU stage
    (`two_stage`, a two-stage `ViewsDataset`), with the boxes it draws for epoch `epoch` (drawn
    here, before timing) and its resize kernel: the floor under every two-view pipeline."""

    def __init__(self, two_stage, n: int, epoch: int = 1) -> None:
        from scaled.augment import draw_view
        from scaled.data import UINT8_RESIZE, resize_crop

        self.source, self.resize_crop = two_stage.source, resize_crop
        self.views = [(t.size, UINT8_RESIZE[t.recipe.interpolation]) for t in two_stage.transforms]
        self.boxes = {}
        for i in range(n):
            img = self.source.load(i)[0]
            H, W = img.shape[-2:]

            def draw(img=img, H=H, W=W):
                return [draw_view(t.recipe, H, W, t.scale)[0] for t in two_stage.transforms]

            self.boxes[i] = two_stage._seeded(epoch, i, draw)

    def __getitem__(self, item):
        img = decode_file(self.source.samples[item[1]][0])
        boxes = self.boxes[item[1]]
        return [self.resize_crop(img, b, s, k) for b, (s, k) in zip(boxes, self.views, strict=True)]


def time_in_process(
    datasets: dict[str, Any], n: int, batch: int, rounds: int = 2, quartiles: dict | None = None
) -> dict:
    """Images/s of each pipeline in this process, a DataLoader batch at a time: a dataset with
    `__getitems__` (`ViewsDataset`: what a DataLoader worker calls, the batch plan included)
    gets the batch's items in one call, any other one item by item. The rate is 1 / the median
    over the batches of its seconds per image (the median: a time slice lost to another
    process on the shared machine lands in one batch's time, not in the rate). The pipelines
    are interleaved batch by batch over the same `batch` images in a new random order each
    batch (seeded): what runs just before a pipeline, and leaves the caches in its state, is
    each of the others equally often. `rounds` passes over the `n` images."""
    seconds: dict[str, list[float]] = {name: [] for name in datasets}

    def call(ds, items):
        if hasattr(ds, "__getitems__"):
            return ds.__getitems__(items)
        return [ds[item] for item in items]

    for ds in datasets.values():
        call(ds, [(1, 0)])  # warm-up (imports, first decode): not timed
    names, rng = list(datasets), np.random.default_rng(0)
    for _ in range(rounds):
        for start in range(0, n - batch + 1, batch):
            items = [(1, i) for i in range(start, start + batch)]
            for name in rng.permutation(names):
                t0 = time.perf_counter()
                call(datasets[name], items)
                seconds[name].append((time.perf_counter() - t0) / batch)
    if quartiles is not None:  # ms per image: 25%, 50%, 75% (how spread the timings were)
        quartiles |= {
            k: [1e3 * float(q) for q in np.quantile(v, [0.25, 0.5, 0.75])]
            for k, v in seconds.items()
        }
    return {name: 1.0 / float(np.median(s)) for name, s in seconds.items()}


def dali_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("nvidia") is not None and (
        importlib.util.find_spec("nvidia.dali") is not None
    )


def time_dali_cpu(files: list[str], image_size: int, scale_min: float = 0.08, batch: int = 8):
    """Images/s of DALI's CPU path on one thread over `files` (two views each: crop-region
    decode, cubic antialiased resize, flip), after one warm-up batch; None without DALI."""
    if not dali_available():
        return None
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, seed=0)
    def pipe():
        jpegs, _ = fn.readers.file(files=files, random_shuffle=False, name="Reader")
        views = []
        for _ in range(2):
            x = fn.decoders.image_random_crop(
                jpegs,
                device="cpu",
                output_type=types.RGB,
                random_area=[scale_min, 1.0],
                random_aspect_ratio=[0.75, 4 / 3],
            )
            x = fn.resize(x, size=[image_size] * 2, interp_type=types.INTERP_CUBIC, antialias=True)
            views.append(fn.flip(x, horizontal=fn.random.coin_flip(probability=0.5)))
        return tuple(views)

    p = pipe()
    p.build()
    p.run()
    runs = max(1, len(files) // batch)
    t0 = time.perf_counter()
    for _ in range(runs):
        p.run()
    return runs * batch / (time.perf_counter() - t0)


def time_loader(dataset, n: int, batch: int, workers: int, seed: int) -> dict[str, Any]:
    """Images per second of a DataLoader with `workers` processes over the first `n` images."""
    from torch.utils.data import DataLoader

    from scaled.data import GlobalBatchSampler

    sampler = GlobalBatchSampler(n, batch, 0, 1, seed)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers)
    it = iter(loader)
    next(it)  # start-up of the workers and the first batch are not counted
    t0 = time.perf_counter()
    count = sum(b[-1].shape[0] for b in it)
    elapsed = time.perf_counter() - t0
    return {"workers": workers, "images": count, "img_per_s": count / elapsed}


# --------------------------------------------------------------------------- the device stage


def synthetic_views(batch: int, image_size: int, augment: str = "byol", seed: int = 0):
    """Two collated CPU-stage view batches: random uint8 pixels (B, H, W, 3), colour vectors
    drawn per sample from `sample_seed(seed, 0, index)` as the CPU stage draws them, and the
    batch plan."""
    from torch.utils.data import default_collate

    from scaled.augment import RECIPES, batch_plan, draw_view
    from scaled.data import sample_seed

    state = torch.get_rng_state()
    views: list[list[dict]] = [[], []]
    try:
        for i in range(batch):
            torch.manual_seed(sample_seed(seed, 0, i))
            pixels = torch.randint(0, 256, (2, image_size, image_size, 3), dtype=torch.uint8)
            for v, recipe in enumerate(RECIPES[augment]):
                _, _, colour = draw_view(recipe, image_size, image_size, recipe.scale)
                views[v].append({"pixels": pixels[v], "colour": torch.tensor(colour)})
    finally:
        torch.set_rng_state(state)
    for v in views:
        batch_plan(v)  # as `ViewsDataset.__getitems__` does in the CPU stage's workers
    return [default_collate(v) for v in views]


def _v1_inputs(view: dict[str, torch.Tensor]):
    """A view batch in the format of the stage before issue 31: NCHW pixels, named fields."""
    from scaled.augment import colour_fields

    return view["pixels"].permute(0, 3, 1, 2).contiguous(), colour_fields(view["colour"])


def _stages(device: torch.device, compiled: bool) -> dict[str, Any]:
    """name -> function of one view batch: the stage before issue 31 (`v1`), this one (eager
    on a CPU, `STAGE_COMPILE` elsewhere), and on request this one compiled."""
    from scaled.augment import augment_batch, device_stage
    from scaled.tools.bench.device_stage_v1 import augment_batch as augment_v1

    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    out_dtype = torch.bfloat16 if device.type == "cuda" else None  # as a run's --amp auto

    def v1(view):
        pixels, fields = _v1_inputs(view)
        return augment_v1(pixels.to(device), {k: t.to(device) for k, t in fields.items()})

    def this_compiled(view):
        moved = {k: t.to(device, non_blocking=True) for k, t in view.items()}
        pixels = moved.pop("pixels").permute(0, 3, 1, 2)
        out = out_dtype or torch.float32
        return augment_batch(pixels, moved, compile=True, memory_format=fmt, out_dtype=out)

    stages = {"v1": v1, "this": lambda view: device_stage(view, device, fmt, out_dtype)}
    if compiled:
        stages["this, compiled"] = this_compiled
    return stages


def time_device_stage(
    device: torch.device | str,
    batch: int = 256,
    image_size: int = 224,
    reps: int = 3,
    compare: bool = True,
    compiled: bool = False,
) -> dict[str, Any]:
    """Milliseconds of the device stage on `device` for one batch of `batch` samples, both views
    (median of `reps` after a warm-up), from (pinned, on CUDA) uint8 views: the host-to-device
    copy is included. With `compare`, the stage before issue 31 is timed too, interleaved rep by
    rep; with `compiled`, the compiled stage (its compile in the warm-up, not timed). What `make
    gpu-check` calls on CUDA. On a CPU it runs with one torch thread (per core, as the loaders)."""
    device = torch.device(device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        views = synthetic_views(batch, image_size)
        if device.type == "cuda":
            views = [{k: t.pin_memory() for k, t in v.items()} for v in views]
        stages = _stages(device, compiled)
        if not compare:
            stages.pop("v1")
        times: dict[str, list[float]] = defaultdict(list)
        for fn in stages.values():
            [fn(v) for v in views]  # warm-up at the timed shape (a compile happens here)
        for _ in range(reps):
            for name, fn in stages.items():
                synchronize(device)
                t0 = time.perf_counter()
                [fn(v) for v in views]
                synchronize(device)
                times[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    ms = {name: 1000 * float(np.median(t)) for name, t in times.items()}
    out = {"device": str(device), "batch": batch, "image_size": image_size, "reps": reps}
    out |= {"ms_per_batch": ms["this"], "ms": ms}
    if "v1" in ms:
        out["v1_over_this"] = ms["v1"] / ms["this"]
    return out


VIEW_OPS = {  # aten ops that move no data (views, metadata)
    "view",
    "_unsafe_view",
    "reshape",
    "expand",
    "permute",
    "slice",
    "select",
    "unsqueeze",
    "squeeze",
    "t",
    "transpose",
    "alias",
    "as_strided",
    "detach",
    "unbind",
    "split",
    "empty",
    "empty_like",
    "empty_strided",
    "lift_fresh",
    "_to_copy_meta",
}


def _unique_bytes(t: torch.Tensor) -> int:
    """Bytes an op reads or writes of `t`: its elements, an expanded (stride 0) dim once."""
    if t.numel() == 0:
        return 0
    n = 1
    for size, stride in zip(t.shape, t.stride(), strict=True):
        n *= size if stride != 0 else 1
    return n * t.element_size()


class ByteCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts, per aten op, the bytes of its tensor inputs (read) and outputs (written), under
    the phase label `phase`; ops that only make views are free. A lower bound of an eager op's
    memory traffic (each input read once, each output written once). `ops` counts arithmetic:
    one operation per element of an op's largest operand (2 x taps per output element of a
    convolution), a rough count of the stage's work, not of its instructions."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "stage"
        self.rows: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in VIEW_OPS:
            return out
        ins = torch.utils._pytree.tree_leaves((args, kwargs))
        outs = torch.utils._pytree.tree_leaves(out)
        row = self.rows[(self.phase, name)]
        row[0] += 1
        if name == "index_select":  # reads only the selected rows (and the index)
            ins = outs + [args[2]]
        elif name in ("index_copy_", "index_copy"):  # reads and writes only the copied rows
            ins, outs = [args[2], args[3]], [args[3]]
        row[1] += sum(_unique_bytes(t) for t in ins if isinstance(t, torch.Tensor))
        row[2] += sum(_unique_bytes(t) for t in outs if isinstance(t, torch.Tensor))
        tensors = [t for t in ins + outs if isinstance(t, torch.Tensor)]
        if name == "convolution":
            self.ops += 2 * args[1][0].numel() * outs[0].numel()
        elif name not in COPY_OPS and tensors:
            self.ops += max(t.numel() for t in tensors)
        return out


COPY_OPS = {  # move or make data, no arithmetic
    *("_to_copy", "copy_", "clone", "index_select", "index_copy_", "reflection_pad2d"),
    *("ones", "zeros", "full", "arange", "ones_like", "zeros_like", "full_like", "scalar_tensor"),
}


def count_stage_ops(batch: int = STEP_BATCH, image_size: int = 224, dtype=torch.bfloat16) -> int:
    """Arithmetic of the compiled stage (`ByteCounter.ops`) for one step's two views, on the
    meta device: `augment.select_stage` with its regions run eager (selects on the whole batch,
    every jitter op at every position, hue included) and the blur where drawn."""
    from scaled import augment as A

    counter = ByteCounter()
    A._constants(torch.device("meta"), torch.float32)  # built (and cached) outside the count
    with counter:
        for v in synthetic_views(batch, image_size):
            p = {k: t.to("meta") for k, t in v.items()}
            pixels = p.pop("pixels").permute(0, 3, 1, 2)
            p = {**A.colour_fields(p["colour"]), **p}
            A.select_stage(pixels, p, dtype, torch.channels_last, dtype, region=lambda fn: fn)
    return counter.ops


def count_stage_bytes(
    batch: int = STEP_BATCH, image_size: int = 224, dtype=torch.bfloat16
) -> dict[str, Any]:
    """Bytes each eager op of the device stage reads and writes for one step's two views of
    `batch` images in `dtype` (CUDA's, the stage's and its output's, as a run with `--amp auto`
    has them), on the meta device (shapes only, no arithmetic), the
    host-to-device copy of the uint8 views and colour vectors included; per phase (colour =
    jitter + grayscale, blur, finish = solarize + normalise) and per op."""
    from scaled import augment as A

    views = synthetic_views(batch, image_size)
    meta = torch.device("meta")
    counter = ByteCounter()

    def phase(name: str) -> None:
        counter.phase = name

    with counter:
        for v in views:
            phase("copy")
            p = {k: t.to(meta) for k, t in v.items()}
            pixels = p.pop("pixels").permute(0, 3, 1, 2)
            A.augment_batch(
                pixels,
                p,
                dtype=dtype,
                compile=False,
                memory_format=torch.channels_last,
                out_dtype=dtype,  # a CUDA run's autocast dtype (--amp auto: bf16)
                on_phase=phase,
            )
    ops = [
        {"phase": ph, "op": op, "calls": c, "read": r, "written": w}
        for (ph, op), (c, r, w) in sorted(counter.rows.items(), key=lambda kv: -sum(kv[1][1:]))
    ]
    phases: dict[str, int] = defaultdict(int)
    for row in ops:  # the copy reads host memory over PCIe: only its device writes count
        phases[row["phase"]] += row["written"] + (row["read"] if row["phase"] != "copy" else 0)
    total = sum(phases.values())
    return {
        "batch": batch,
        "image_size": image_size,
        "dtype": str(dtype),
        "bytes": total,
        "phases": dict(phases),
        "ops": ops,
    }


def blur_bytes(batch: int, image_size: int, dtype) -> int:
    """Eager bytes of the blur where drawn (`blur_where_drawn`) on the compiled colour region's
    output (contiguous), both views of `batch` images, on the meta device."""
    from scaled import augment as A

    counter = ByteCounter()
    for v in synthetic_views(batch, image_size):
        p = {**A.colour_fields(v["colour"]), **v}
        x = torch.empty(p.pop("pixels").permute(0, 3, 1, 2).shape, dtype=dtype, device="meta")
        p = {k: t.to("meta") for k, t in p.items()}
        with counter:
            A.blur_where_drawn(x, p)
    return sum(r + w for _, r, w in counter.rows.values())


def fused_stage_bytes(eager: dict[str, Any], small_batch: int = 8) -> dict[str, Any]:
    """Bytes of the compiled stage (what runs on CUDA, `STAGE_COMPILE`): inductor's count of the
    memory its fused kernels read and write (`graph.count_bytes`, logged under the
    `inductor_metrics` artifact) for the two compiled regions, compiled here on the CPU in
    `eager`'s dtype at `small_batch` and scaled by the batch (every buffer is per sample), plus
    the eager count of the blur and the copy (outside the compiled regions)."""
    import torch._inductor.metrics as metrics

    from scaled import augment as A

    dtype = getattr(torch, eager["dtype"].split(".")[-1])
    size, batch = eager["image_size"], eager["batch"]
    views = synthetic_views(small_batch, size)
    torch._logging.set_logs(inductor_metrics=True)
    torch._dynamo.reset()
    metrics.reset()
    caches = torch._inductor.config.fx_graph_cache, torch._inductor.config.autotune_local_cache
    torch._inductor.config.fx_graph_cache = False  # a cache hit skips the count
    torch._inductor.config.autotune_local_cache = False
    try:  # both views have the same shapes and (selects) the same kernels: compile one
        p = dict(views[0])
        pixels = p.pop("pixels").permute(0, 3, 1, 2)
        # the compiled stage as CUDA runs it; only its compiled regions enter inductor's count
        fmt = torch.channels_last
        A.augment_batch(pixels, p, dtype=dtype, compile=True, memory_format=fmt, out_dtype=dtype)
        compiled = metrics.num_bytes_accessed * len(views) * batch / small_batch
    finally:
        torch._logging.set_logs()
        torch._dynamo.reset()
        torch._inductor.config.fx_graph_cache, torch._inductor.config.autotune_local_cache = caches
    blur, copy = blur_bytes(batch, size, dtype), eager["phases"].get("copy", 0)
    # On a CPU inductor fuses each position's per-sample mean into its pass (an outer loop per
    # sample, re-read from cache); a GPU compiles the mean as its own reduction kernel: one
    # more read of the batch per jitter position (4), both views.
    mean_reads = 4 * 2 * batch * 3 * size * size * torch.tensor([], dtype=dtype).element_size()
    total = compiled + blur + copy
    return {
        "compiled_regions": compiled,
        "blur": blur,
        "copy": copy,
        "bytes": total,
        "gpu_mean_reads": mean_reads,
        "bytes_gpu": total + mean_reads,
        "small_batch": small_batch,
    }


def step_flops(batch: int = STEP_BATCH, image_size: int = 224, measured_batch: int = 2) -> dict:
    """FLOPs of one training step (`scaled.pretrain.train_step`) of the `imagenet_r50_minc`
    preset (ResNet-50, MINC: both views through the online network and back, the target
    forward, statistics, loss, LARS) at `batch` images, counted by `torch.utils.flop_counter`
    at `measured_batch` on the CPU and scaled linearly (every term is per sample: convolutions,
    the k x k statistics)."""
    from dataclasses import replace

    from torch.utils.flop_counter import FlopCounterMode

    from scaled.presets import imagenet_r50_minc
    from scaled.pretrain import build_run_state, train_step

    cfg = replace(
        imagenet_r50_minc(),
        batch_size=measured_batch,
        sync_bn=False,
        device="cpu",
        image_size=image_size,
        online_probe=False,
        amp="none",
    )
    run = build_run_state(cfg, 3, 1000, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    x1, x2 = (torch.randn(measured_batch, 3, image_size, image_size, generator=gen) for _ in "12")
    labels = torch.zeros(measured_batch, dtype=torch.long)
    batch_ = [(x1, x2, labels, torch.zeros((), dtype=torch.long))]
    train_step(run, batch_)  # the first step builds state (EMA statistics, optimiser buffers)
    with FlopCounterMode(display=False) as counter:
        train_step(run, batch_)
    flops = counter.get_total_flops()
    return {
        "preset": "imagenet_r50_minc",
        "measured_batch": measured_batch,
        "flops_measured": flops,
        "batch": batch,
        "flops": flops * batch / measured_batch,
    }


def h100_share(stage_bytes: float, flops: float, stage_ops: float = 0.0) -> dict[str, float]:
    """The stage's time on an H100, the longer of its bytes at the memory bandwidth and its
    arithmetic (`count_stage_ops`) at the FP32 rate (a roofline: the pointwise ops compute in
    float32 whatever they store), and the step's at its dense bf16 rate; the stage's share of
    stage + step."""
    t_bytes = stage_bytes / H100["memory_bytes_per_s"]
    t_stage = max(t_bytes, stage_ops / H100["fp32_flops_per_s"])
    t_step = flops / H100["bf16_dense_flops_per_s"]
    return {
        "stage_ms": 1000 * t_stage,
        "bytes_ms": 1000 * t_bytes,
        "ops_ms": 1000 * stage_ops / H100["fp32_flops_per_s"],
        "step_ms": 1000 * t_step,
        "share": t_stage / (t_stage + t_step),
    }


# --------------------------------------------------------------------------- the run


def run_loader(args: argparse.Namespace) -> dict[str, Any]:
    """The `loader` benchmark; returns its JSON record."""
    import tempfile
    from dataclasses import replace

    from scaled.config import PretrainConfig
    from scaled.data import crop_scale_min, pretrain_dataset

    device = pick_device(args.device)
    env = environment(device.type)
    n_images = 8 if args.quick else args.images
    args.rounds = 1 if args.quick else args.rounds
    batch = 8 if args.quick else args.device_batch
    workers = [1] if args.quick else args.workers
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp)
        if not args.data_dir:
            write_jpeg_folder(data_dir, n_images, args.seed)
        cfg = replace(PretrainConfig(), data_dir=str(data_dir), image_size=args.image_size)
        ref, two = (pretrain_dataset(cfg, two_stage=k)[0] for k in (False, True))
        n = min(len(ref), n_images)
        datasets = {"decode": DecodeOnly(ref.source), "decode_tv": DecodeOnly(two.source, True)}
        datasets |= {"floor": Floor(two, n), "torch": ref, "device": two}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            quartiles: dict[str, list[float]] = {}
            per_core = time_in_process(datasets, n, min(args.batch, n), args.rounds, quartiles)
            files = [two.source.samples[i][0] for i in range(n)]
            dali = time_dali_cpu(files, args.image_size, crop_scale_min(cfg))
        finally:
            torch.set_num_threads(threads)
        if dali is not None:
            per_core["dali_cpu"] = dali
        print(f"  per core: {per_core}")
        dl = [
            {"loader": k, **time_loader(ds, n, max(1, min(8, n // 4)), w, args.seed)}
            for w in workers
            for k, ds in (("torch", ref), ("device", two))
        ]
    reps = 1 if args.quick else 3
    compiled = device.type == "cpu" and not args.quick
    stage = time_device_stage(device, batch, args.image_size, reps=reps, compiled=compiled)
    print(f"  device stage: {stage}")
    eager = count_stage_bytes(8 if args.quick else STEP_BATCH, args.image_size)
    fused = None if args.quick else fused_stage_bytes(eager)
    flops = step_flops(8 if args.quick else STEP_BATCH, args.image_size)
    ops = count_stage_ops(8 if args.quick else STEP_BATCH, args.image_size)
    share = {"eager": h100_share(eager["bytes"], flops["flops"])}
    if fused is not None:
        share["compiled"] = h100_share(fused["bytes"], flops["flops"], ops)
        share["compiled_gpu"] = h100_share(fused["bytes_gpu"], flops["flops"], ops)
    source = args.data_dir or f"{n_images} generated 500x375 JPEGs (quality 90)"
    record = {"benchmark": "loader", "env": finished(env), "command": args.command_line}
    record |= {"per_core": per_core, "per_image_ms_quartiles": quartiles}
    record |= {"device_stage": stage, "dataloader": dl}
    record |= {"stage_bytes": eager, "stage_bytes_compiled": fused, "step_flops": flops}
    record["stage_ops_compiled"] = ops
    record |= {"h100_share": share, "h100": H100}
    record["settings"] = {
        "data": source,
        "image_size": args.image_size,
        "gpu_rate": GPU_RATE,
        "batch": min(args.batch, n),
        "rounds": args.rounds,
    }
    print(loader_tables(record))
    write_json(args.output_dir, "loader", record)
    if args.write_docs:
        publish("loader", record, docs_section)
        root = checkout_root()
        replace_section(root / "docs" / "scaling.md", "loader-cores", cores_section(root))
    return record


# --------------------------------------------------------------------------- the docs tables

PIPELINES = {  # per_core key -> row name
    "decode": "decode only, PIL (`ImageFiles.load`)",
    "decode_tv": "decode only, torchvision (`decode_file`: read + `decode_jpeg`)",
    "floor": "**floor**: torchvision decode + two crop-resizes (same boxes, same filter)",
    "torch": "today's loader (`--loader torch`)",
    "device": "CPU stage (`--loader device`)",
    "dali_cpu": "DALI, CPU path (`device_id=None`, one thread; decode, crop, resize, flip)",
}


def share_table(record: dict[str, Any]) -> str:
    """The device stage's bytes and its estimated H100 share of a step (eager and compiled)."""
    eb, fl, share = record["stage_bytes"], record["step_flops"], record["h100_share"]
    fused = record.get("stage_bytes_compiled")
    rows = [("eager", "eager ops (TorchDispatchMode count)", eb["bytes"])]
    if fused:
        rows += [
            ("compiled", "compiled (inductor's count on this CPU) + blur, copy", fused["bytes"]),
            (
                "compiled_gpu",
                "the same + one read per jitter position (GPU mean kernels)",
                fused["bytes_gpu"],
            ),
        ]

    def cells(key: str, name: str, moved: float) -> list[str]:
        c = share[key]
        ops = f"{c['ops_ms']:.2f}" if c["ops_ms"] else "-"  # the eager row counts no ops
        return [name, f"{moved / 1e9:.2f}", f"{c['bytes_ms']:.2f}", ops, f"{c['step_ms']:.1f}",
                f"{100 * c['share']:.1f}%"]  # fmt: skip

    return markdown_table(
        [
            f"device stage at {eb['batch']} images per GPU, {eb['dtype'].split('.')[-1]}",
            "GB moved",
            "bytes ms at 3.35 TB/s",
            "ops ms at 67 TFLOPS FP32",
            f"step ms at 989 TFLOPS ({fl['flops'] / 1e12:.1f} TFLOP)",
            "share of the step (the longer of bytes and ops)",
        ],
        [cells(*row) for row in rows],
    )


def loader_tables(record: dict[str, Any]) -> str:
    """The markdown tables of a `bench loader` record."""
    pc, gpu_rate = record["per_core"], record["settings"]["gpu_rate"]
    size = record["settings"]["image_size"]
    rows = [
        [
            name,
            f"{pc[k]:.1f}",
            f"{pc[k] / pc['decode_tv']:.2f}",
            f"{pc[k] / pc['floor']:.2f}",
            f"{gpu_rate / pc[k]:.1f}",
        ]
        for k, name in PIPELINES.items()
        if k in pc
    ]
    out = markdown_table(
        [
            f"pipeline (two {size} px views)",
            "images/s per core",
            "x decode only",
            "x floor",
            f"cores per GPU at {gpu_rate} images/s",
        ],
        rows,
    )
    st = record["device_stage"]
    ms = st["ms"]
    stage_rows = (
        [
            [name, f"{t:.0f}", f"{t / st['batch']:.2f}", f"{ms['v1'] / t:.1f}"]
            for name, t in ms.items()
        ]
        if "v1" in ms
        else []
    )
    out += "\n\n" + markdown_table(
        [
            f"device stage on {st['device']}, batch {st['batch']} (both views)",
            "ms per batch",
            "ms per image",
            "x faster than v1",
        ],
        stage_rows,
    )
    out += "\n\n" + share_table(record)
    eb = record["stage_bytes"]
    phases = ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in eb["phases"].items())
    out += f"\n\nEager bytes by phase: {phases}."
    dl = record["dataloader"]
    out += "\n\n" + markdown_table(
        ["DataLoader workers", "loader", "images timed", "images/s"],
        [[r["workers"], r["loader"], r["images"], f"{r['img_per_s']:.1f}"] for r in dl],
    )
    return out


def _record(root: Path) -> dict[str, Any]:
    return stored_record(root, "loader")


def docs_section(root: Path) -> str:
    """docs/results.md's "Input pipeline" section from docs/results/bench_loader.json (the
    renderer `python -m scaled.tools.results` calls)."""
    record = _record(root)
    title = "Input pipeline: the CPU stage against its floor, DALI's CPU path, the device stage"
    return docs_body(
        title, record["command"], record["env"], loader_tables(record), loader_notes(record), None
    )


def cores_section(root: Path) -> str:
    """docs/scaling.md's cores-per-GPU table from docs/results/bench_loader.json."""
    record = _record(root)
    pc, rate = record["per_core"], record["settings"]["gpu_rate"]
    rows = [
        [PIPELINES[k], f"{pc[k]:.1f}", f"{pc[k] / pc['floor']:.2f}", f"{rate / pc[k]:.1f}"]
        for k in ("floor", "torch", "device", "dali_cpu")
        if k in pc
    ]
    table = markdown_table(
        [
            "per CPU core, two 224 px views",
            "images/s",
            "x floor",
            f"cores per GPU at {rate:,} images/s",
        ],
        rows,
    )
    cmd = record["command"]
    return (
        f"Command: `{cmd}` (docs/results/{RECORD}, rendered by "
        "`scaled.tools.bench.loader.cores_section`)  \n"
        f"Measured on: {provenance_line(record['env'])}.\n\n{table}\n"
    )


def reading(record: dict[str, Any]) -> str:
    """What the record says against issue 31's targets, in numbers from the record."""
    pc, st, share = record["per_core"], record["device_stage"], record["h100_share"]
    ratio, rate = pc["device"] / pc["floor"], pc["device"]
    env = record["env"]
    load = f"{env.get('load_average_1min', 0):.1f} at start, {env.get('load_average_end_1min', 0):.1f} at end"  # noqa: E501

    def verdict(ok: bool) -> str:
        return "met" if ok else "not met"

    parts = [
        f"**Reading.** The CPU stage runs at {ratio:.2f} x the floor in this run (target >= 0.9: "
        f"{verdict(ratio >= 0.9)}) and {rate:.0f} images/s per core (target >= 250: "
        f"{verdict(rate >= 250)}; on this shared 2-core machine at load {load} the floor itself "
        f"ran at {pc['floor']:.0f} images/s, so the absolute rate says more about the machine "
        "than the pipeline; the ratio to the floor, measured alongside, is the pipeline's).",
    ]
    if "v1" in st["ms"]:
        parts.append(
            f"The device stage takes {st['ms']['this']:.0f} ms per batch of {st['batch']} "
            f"(both views) on one CPU thread, {st['ms']['v1'] / st['ms']['this']:.1f}x less than "
            "the version before issue 31 in the same run (target >= 3x)."
        )
    if "this, compiled" in st["ms"]:
        slower = st["ms"]["this, compiled"] > st["ms"]["this"]
        parts.append(
            f"Compiled on this CPU it takes {st['ms']['this, compiled']:.0f} ms: "
            + ("slower than eager here, as `STAGE_COMPILE` (eager on a CPU) assumes."
               if slower else "faster than eager here, which `STAGE_COMPILE` (eager on a CPU) "
               "does not use: a finding against that default.")
        )  # fmt: skip
    if "compiled" in share:
        ops_ms, bytes_ms = share["compiled"]["ops_ms"], share["compiled"]["bytes_ms"]
        parts.append(
            f"Its arithmetic ({record['stage_ops_compiled'] / 1e9:.0f} G operations) takes "
            f"{ops_ms:.2f} ms at the FP32 rate against {bytes_ms:.2f} ms for its bytes: "
            + ("memory-bound, so the bytes set its time." if ops_ms < bytes_ms
               else "compute-bound: the arithmetic sets its time.")
        )  # fmt: skip
        parts.append(
            f"Its estimated share of an H100 step at 512 images per GPU: "
            f"{100 * share['eager']['share']:.1f}% eager, {100 * share['compiled']['share']:.1f}% "
            f"compiled by inductor's count, {100 * share['compiled_gpu']['share']:.1f}% with one "
            "more read per jitter position (target < 5%: "
            f"{verdict(share['compiled_gpu']['share'] < 0.05)} by the cautious count, "
            f"{verdict(share['compiled']['share'] < 0.05)} by inductor's); not timed on a GPU."
        )
    return " ".join(parts)


def loader_notes(record: dict[str, Any]) -> str:
    """The text under the tables in docs/results.md."""
    s, pc = record["settings"], record["per_core"]
    gpu = (
        "No GPU was lent to the session that measured this: the device stage ran on the CPU; "
        "its CUDA time comes from `make gpu-check` (`time_device_stage('cuda')`)."
        if record["device_stage"]["device"] == "cpu"
        else "The device stage ran on CUDA."
    )
    dali = (
        "DALI's CPU path ran in its own loop right after the interleaved one (one thread, "
        "batches of 8)."
        if "dali_cpu" in pc
        else "DALI is not installed here: no DALI row."
    )
    h = record["h100"]
    return f"""
On {s["data"]}, {s["image_size"]} px, two views per image. "Per core": one process and one
torch thread calls each pipeline a DataLoader batch of {s["batch"]} images at a time,
all interleaved batch by batch over the same files (in a new random order each batch,
{s["rounds"]} passes); a rate is 1 / the median of its seconds per image. Decode only
(torchvision) is `decode_file`: read the file, `decode_jpeg`, nothing else. The floor is that
decode plus the two crop-resizes with the CPU stage's boxes (drawn before timing) and filter
(torchvision's antialiased uint8 kernel), nothing else. Today's loader (`--loader torch`)
decodes with PIL and runs BYOL's augmentations with torchvision's PIL ops; the CPU stage
(`--loader device`, `ViewsDataset.__getitems__` as a worker calls it) reads each JPEG's frame
header, decodes, draws each view's parameters once, crops and resizes to uint8 views and hands
them with their flip and colour vectors and the batch plan to the device stage. {dali}
Issue 31's targets: the CPU stage >= 0.9 x the floor and >= 250 images/s per core.

The device stage rows: this version (`scaled.augment.device_stage`, eager; compiled where
timed) and the one before issue 31 (`scaled.tools.bench.device_stage_v1`), interleaved rep by
rep on the same synthetic batch (median of {record["device_stage"]["reps"]}). Its share of a
step: the bytes its ops move at one step's 512 images per GPU (counted per op with a
`TorchDispatchMode` on the meta device; the compiled regions by inductor's own count, compiled
on this CPU) at {h["card"]}'s memory bandwidth, against the FLOPs of one `imagenet_r50_minc`
step (`torch.utils.flop_counter`, counted at batch 2 and scaled) at its dense bf16 rate
({h["source"]}). Both at peak: an estimate from physics, not a timing. "Cores per GPU" is
{s["gpu_rate"]} images/s divided by the rate per core. The DataLoader rows are worker processes
on this shared 2-core machine (a lower bound). {gpu}

{reading(record)}
"""
