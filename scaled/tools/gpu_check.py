"""``python -m scaled.tools.gpu_check``: one command for the first minutes on a CUDA node.

On a machine with CUDA GPUs and nothing but this checkout (``PYTHONPATH=.``, the machine's own
torch; see docs/scaling.md, "Offline GPU nodes"), in this order, the most telling steps first,
each with its own time budget (`BUDGETS`: 480 s in all, under the 15 minutes a lease lasts, with
room for one rerun of a failed step):

1. ``environment``: card, driver, torch / CUDA / cuDNN versions, the lowest supported torch;
2. ``no_host_sync``: tests/perf/test_no_host_sync.py under ``torch.cuda.set_sync_debug_mode
   ("error")`` (pytest in a subprocess); in the dry run the CPU detectors
   (tests/perf/test_host_sync.py and the CPU test of test_no_host_sync.py);
3. ``device_stage``: the input pipeline's device stage at batch 512
   (``scaled.tools.bench.loader.time_device_stage``);
4. ``bench_step``: ``bench step`` (ResNet-50, B 512, bf16): images/s, SSL / supervised ratio
   against the ~2.7x work bound, peak GPU memory;
5. ``torchrun_resume``: MINC under ``torchrun --nproc_per_node=<all GPUs>`` (NCCL, DDP, the
   preset's SyncBN, the gloo control group), stopped by SIGTERM to its process group (as SLURM
   does) once it has logged a few steps, then ``--resume auto``: it must continue from the
   checkpoint's step to the last one;
6. ``linear_eval``: ``linear_eval.py --mode fast`` on that run's checkpoint;
7. ``compile``: MINC with ``--compile`` (one process: `scaled.compile_plan` refuses --compile
   with SyncBN on several GPUs);
8. ``other_methods``: every other method of ``scaled.config.METHODS``, a few steps each;
9. ``dali``: ``--loader dali`` when DALI is importable (outside the budget: skipped otherwise).

Each step prints ``[pass|fail|skipped] name (seconds / budget s) reason``; a failure does not stop
the next step, and a step past its budget is killed and fails. Every invocation clears what it
wrote before (OUTPUT_DIR/runs, logs, bench; the generated images are kept), so a second run in the
same checkout starts afresh. ``--dry-run`` runs the same steps through the same functions on the
CPU at toy size (a small ResNet at 32 px, 2 gloo processes for the torchrun step, SyncBN dropped
by the trainer on the CPU, bf16 autocast and channels_last honoured), with the CPU's own budgets
(`DRY_BUDGETS`). One JSON (``OUTPUT_DIR/gpu_check.json``) and, with ``--write-docs``, a
docs/results.md section with the card's name, driver, torch and CUDA versions, and the table of
docs/scaling.md that says which code paths have run where. ``--report FILE`` writes the docs from
a gpu_check.json made elsewhere. Exit status: 0 no step failed, 1 some step failed, 2 user error.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scaled.config import METHODS, UserError
from scaled.tools.provenance import PACKAGE_PARENT

LOWEST_TORCH = (2, 11)  # the lowest supported torch, also stated in pyproject.toml [tool.minc]
WORK_BOUND = 8 / 3  # SSL with a target network: 8 forward-equivalents vs 3 (docs/results.md)
ROOT = PACKAGE_PARENT  # the checkout: pretrain.py and tests/ are run from here

# Seconds each step may take on one node (the GPU run) and on the 2-core CPU (the dry run).
# GPU: 5 + 45 + 20 + 60 + 120 + 40 + 120 + 70 = 480 s = 8 minutes, within a 15-minute lease
# (start-up of the machine, the wheels' install and one rerun of a failed step fit in the rest).
BUDGETS = {
    "environment": 5,
    "no_host_sync": 45,  # pytest start + ~20 trainer steps of a tiny model on CUDA
    "device_stage": 20,  # 10 reps of a 512-image batch, ~50 ms each, plus the warm-up
    "bench_step": 60,  # ResNet-50 B 512: SSL and supervised, 10 reps each after warm-up
    "torchrun_resume": 120,  # 2 torchrun starts (~25 s each) + 30 ResNet-50 steps + checkpoints
    "linear_eval": 40,  # features of 1,920 images once + a fast probe
    "compile": 120,  # inductor compiles ResNet-50 forward + backward (~60-90 s) + 30 steps
    "other_methods": 70,  # 6 methods x (start ~6 s + 10 steps)
}
TOTAL_BUDGET_S = sum(BUDGETS.values())
assert TOTAL_BUDGET_S <= 8 * 60, TOTAL_BUDGET_S  # the bound: <= 8 minutes on one node
DRY_BUDGETS = {  # an idle 2-core CPU takes ~1/3 of these; a shared one may take all
    "environment": 30, "no_host_sync": 600, "device_stage": 120, "bench_step": 300,
    "torchrun_resume": 900, "linear_eval": 300, "compile": 900, "other_methods": 1200,
}  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    """How big each step is: the GPU sizes and the dry run's toy sizes."""

    device: str
    arch: list[str]  # pretrain.py options that choose and shrink the network
    image_size: int
    batch_size: int
    steps: int
    images: int
    workers: int
    bench: list[str]  # bench step options
    resume_steps: int  # the torchrun run's last step
    stop_after: int  # SIGTERM once metrics.jsonl has logged this step; several ranks agree on a
    # stop every STOP_AGREE_EVERY = 10 steps (scaled.distributed), so the checkpoint is at the
    # next multiple of 10 (measured: SIGTERM after step 2 -> checkpoint at step 10)
    stage_batch: int  # the device stage's batch


GPU = Sizes(
    device="cuda", arch=["--arch", "resnet50"], image_size=224, batch_size=64, steps=10,
    images=64 * 30, workers=8, resume_steps=30, stop_after=5, stage_batch=512,
    bench=["--archs", "resnet50", "--batch-size", "512", "--image-size", "224",
           "--methods", "minc", "--reps", "10"],
)  # fmt: skip
DRY = Sizes(
    device="cpu", arch=["--arch", "small_resnet", "--width", "8", "--stem-stride", "2",
                        "--proj-hidden", "32", "--proj-out", "16", "--pred-hidden", "32"],
    image_size=32, batch_size=8, steps=2, images=64, workers=0, resume_steps=16, stop_after=2,
    stage_batch=8,
    bench=["--archs", "small_resnet", "--batch-size", "4", "--image-size", "32",
           "--methods", "minc", "--reps", "1"],
)  # fmt: skip


@dataclass
class StepResult:
    """One line of the report: what ran, pass / fail / skipped, why, and what it measured."""

    name: str
    status: str  # "pass" | "fail" | "skipped"
    reason: str = ""
    seconds: float = 0.0
    details: dict | None = None
    budget_s: float | None = None


# --------------------------------------------------------------------------- environment


def torch_version_ok(version: str) -> bool:
    """Whether a torch version string such as '2.11.0+cu128' is at least LOWEST_TORCH."""
    parts = version.split("+")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= LOWEST_TORCH
    except (IndexError, ValueError):
        return False


def driver_version() -> str:
    """The NVIDIA driver version from nvidia-smi, or why it is unknown."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as err:
        return f"unknown ({type(err).__name__})"
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"


def environment_report(cuda: bool) -> dict[str, Any]:
    """Card, driver, torch / CUDA / cuDNN versions, the minimum torch, the optional packages."""
    import torch

    from scaled.tools.provenance import environment

    env = environment("cuda" if cuda else "cpu")
    env["torch_minimum"] = ".".join(map(str, LOWEST_TORCH))
    env["torch_meets_minimum"] = torch_version_ok(torch.__version__)
    env["cuda_runtime"] = torch.version.cuda
    env["cudnn"] = torch.backends.cudnn.version() if cuda else None
    env["driver"] = driver_version() if cuda else None
    env["optional_packages"] = {
        name: importlib.util.find_spec(name) is not None
        for name in ("pytest", "tensorboard", "tqdm", "kornia", "mlxtend")
    }
    env["dali"] = _dali_importable()
    return env


def _dali_importable() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):
        return False


# --------------------------------------------------------------------------- running things


def run_logged(name: str, cmd: list[str], out_dir: Path, timeout_s: float) -> tuple[int, str]:
    """Run `cmd` from the checkout, output into OUT/logs/<name>.log; (exit status, last line).

    Exit status 124 when it ran past `timeout_s` (killed).
    """
    log = out_dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    with open(log, "w", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        try:
            rc = subprocess.run(
                cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout_s
            ).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    if rc == 124:
        return rc, f"timed out after {timeout_s:.0f} s (log: {log})"
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln] if rc else []
    return rc, (errors or lines or [""])[-1][:300]


def timed(name: str, fn, *args, budget_s: float | None = None) -> StepResult:
    """`fn(*args)` -> StepResult with its duration and budget; an exception is a failure, not a
    crash, and so is a step that passed but took longer than its budget."""
    t0 = time.perf_counter()
    try:
        result = fn(*args)
    except Exception as err:  # the script goes on after any failure
        result = StepResult(name, "fail", f"{type(err).__name__}: {str(err)[:300]}")
    result.seconds = round(time.perf_counter() - t0, 1)
    result.budget_s = budget_s
    if budget_s is not None and result.status == "pass" and result.seconds > budget_s:
        result.status = "fail"
        result.reason = f"over its budget ({result.seconds:.0f} s > {budget_s} s): {result.reason}"
    of = f" / {budget_s} s" if budget_s is not None else " s"
    print(f"[{result.status}] {name} ({result.seconds:.0f}{of}) {result.reason}", flush=True)
    return result


# --------------------------------------------------------------------------- (1) pretrain


def make_data(root: Path, sz: Sizes) -> Path:
    """A generated JPEG ImageFolder (4 classes) a bit larger than the crop: train/ and, for
    linear_eval, val/ (a quarter as many images)."""
    from scaled.tools.bench.loader import write_jpeg_folder

    side = sz.image_size + sz.image_size // 7
    if not (root / "train").is_dir():
        write_jpeg_folder(root, sz.images, seed=0, size=(side, side))
    if not (root / "val").is_dir():
        staging = root / "val-staging"
        shutil.rmtree(staging, ignore_errors=True)
        write_jpeg_folder(staging, max(sz.images // 4, 8), seed=1, size=(side, side))
        (staging / "train").rename(root / "val")
        staging.rmdir()
    return root


def pretrain_command(
    method: str, data: Path, run_dir: Path, sz: Sizes, extra: list[str], steps: int | None = None
) -> list[str]:
    """pretrain.py on `data` for `steps` (default `sz.steps`) steps, bf16 + channels_last."""
    steps = sz.steps if steps is None else steps
    cmd = ["scaled/pretrain.py", "--preset", "imagenet_r50_minc"]
    cmd += ["--method", method, *sz.arch, "--data-dir", str(data), "--output-dir", str(run_dir)]
    cmd += ["--device", sz.device, "--amp", "bf16", "--channels-last"]
    cmd += ["--image-size", str(sz.image_size), "--batch-size", str(sz.batch_size)]
    cmd += ["--max-steps", str(steps), "--epochs", "100", "--warmup-epochs", "0"]
    cmd += ["--num-workers", str(sz.workers), "--log-every", "1"]
    cmd += ["--checkpoint-every", "0", "--keep-checkpoints", "1", *extra]
    return cmd


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of run_dir/metrics.jsonl ([] when there is none)."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def last_metrics(run_dir: Path) -> dict[str, Any]:
    """The last record of run_dir/metrics.jsonl ({} when there is none)."""
    return (metrics(run_dir) or [{}])[-1]


def pretrain_step(
    name: str, method: str, out: Path, data: Path, sz: Sizes, extra: list[str], budget_s: float
) -> StepResult:
    """One pretrain.py run in one process: pass when it exits 0 with a finite last loss."""
    run_dir = out / "runs" / name
    cmd = [sys.executable, *pretrain_command(method, data, run_dir, sz, extra)]
    rc, last = run_logged(name, cmd, out, budget_s)
    m = last_metrics(run_dir)
    details = {k: m.get(k) for k in ("step", "loss", "img_per_s")}
    if rc != 0:
        return StepResult(name, "fail", f"exit {rc}: {last}", details=details)
    if not m or not math.isfinite(m.get("loss", math.nan)) or m.get("step") != sz.steps:
        return StepResult(name, "fail", f"no finite loss at step {sz.steps}", details=details)
    reason = f"{sz.steps} steps, loss {m['loss']:.4g}, {m['img_per_s']:.0f} img/s"
    return StepResult(name, "pass", reason, details=details)


# --------------------------------------------------------------------------- the steps


def environment_step(env: dict[str, Any]) -> StepResult:
    """(1) The versions, already read: fails when torch is older than the lowest supported."""
    why = (
        f"torch {env['versions'].get('torch')} (lowest supported {env['torch_minimum']}), "
        f"CUDA {env['cuda_runtime']}, driver {env['driver']}, {env['device_name']}"
    )
    return StepResult("environment", "pass" if env["torch_meets_minimum"] else "fail", why)


def no_host_sync(out: Path, sz: Sizes, budget_s: float) -> StepResult:
    """(2) The no-host-sync tests in a pytest subprocess: on CUDA under sync-debug "error"; in
    the dry run the CPU detectors (dispatch-mode ops of train_step; per-step syncs of train)."""
    if importlib.util.find_spec("pytest") is None:
        why = "pytest is not importable; install the wheels of `make gpu-wheels` (docs/scaling.md)"
        return StepResult("no_host_sync", "skipped", why)
    if sz.device == "cuda":
        which, files = "cuda", ["tests/perf/test_no_host_sync.py"]
    else:
        which = "(cpu and minc) or (minc and torch) or detector"
        files = ["tests/perf/test_no_host_sync.py", "tests/perf/test_host_sync.py"]
    cmd = [sys.executable, "-m", "pytest", *files, "-k", which]
    cmd += ["-q", "-rs", "-p", "no:cacheprovider", "-p", "no:randomly", "-o", "addopts="]
    rc, last = run_logged("no_host_sync", cmd, out, budget_s)
    if rc == 0 and " passed" in last and "skipped" not in last:
        return StepResult("no_host_sync", "pass", f"pytest -k '{which}': {last}")
    return StepResult("no_host_sync", "fail", f"pytest -k '{which}' exit {rc}: {last}")


def device_stage(sz: Sizes) -> StepResult:
    """(3) The two-stage input pipeline's device stage at `sz.stage_batch`, timed."""
    try:
        loader = importlib.import_module("scaled.tools.bench.loader")
        helper = loader.time_device_stage
    except (ImportError, AttributeError) as err:
        why = f"scaled.tools.bench.loader.time_device_stage is not importable ({err})"
        return StepResult("device_stage", "skipped", why)
    import torch

    dry = sz is DRY
    offer = {"device": torch.device(sz.device), "image_size": sz.image_size}
    offer |= {"batch": sz.stage_batch, "reps": 1 if dry else 10, "quick": dry}
    accepted = inspect.signature(helper).parameters
    result = helper(**{k: v for k, v in offer.items() if k in accepted})
    return StepResult("device_stage", "pass", str(result)[:300], details={"result": result})


def bench_step(out: Path, sz: Sizes, budget_s: float) -> StepResult:
    """(4) `bench step` in a subprocess; reads its step.json."""
    bench_dir = out / "bench"
    cmd = [sys.executable, "-m", "scaled.tools.bench", "step", "--device", sz.device]
    cmd += [*sz.bench, "--output-dir", str(bench_dir)]
    rc, last = run_logged("bench_step", cmd, out, budget_s)
    if rc != 0:
        return StepResult("bench_step", "fail", f"exit {rc}: {last}")
    rows = json.loads((bench_dir / "step.json").read_text())["rows"]
    details = {"rows": rows, "work_bound": WORK_BOUND}
    parts = []
    for r in rows:
        mem = "" if r["peak_memory_gib"] is None else f", peak {r['peak_memory_gib']:.1f} GiB"
        parts.append(
            f"{r['arch']} {r['method']} B {r['B']}: {r['img_per_s']:.0f} img/s, SSL/supervised "
            f"{r['ratio']:.2f} (work bound {WORK_BOUND:.2f}), loss + statistics "
            f"{r['loss_stats_pct']:.1f}%{mem}"
        )
    return StepResult("bench_step", "pass", "; ".join(parts), details=details)


def world_size(sz: Sizes) -> int:
    """Processes of the torchrun step: every visible GPU, or 2 gloo processes on the CPU."""
    import torch

    return torch.cuda.device_count() if sz.device == "cuda" else 2


def torchrun_command(run_dir: Path, data: Path, sz: Sizes, nproc: int, extra: list[str]):
    """MINC under torchrun on `nproc` processes, the preset's SyncBN (dropped on the CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={nproc}"]
    pre = pretrain_command("minc", data, run_dir, sz, extra, steps=sz.resume_steps)
    i = pre.index("--batch-size")
    pre[i + 1] = str(sz.batch_size * nproc)  # sz.batch_size per process
    return cmd + pre


def _checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in run_dir.glob("ckpt_*.pt")
                  if (m := re.fullmatch(r"ckpt_(\d+)\.pt", p.name)))  # fmt: skip


def torchrun_resume(out: Path, data: Path, sz: Sizes, budget_s: float) -> StepResult:
    """(5) torchrun MINC, SIGTERM to its process group after `sz.stop_after` logged steps,
    then `--resume auto`: pass when the resumed run says it resumed at the checkpoint's step,
    logs that step + 1 first and ends at `sz.resume_steps` with a finite loss."""
    t0 = time.perf_counter()
    nproc = world_size(sz)
    run_dir = out / "runs" / "torchrun_minc"
    log = out / "logs" / "torchrun_minc.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    cmd = torchrun_command(run_dir, data, sz, nproc, [])
    with open(log, "w", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        while proc.poll() is None and time.perf_counter() - t0 < budget_s:
            if any(m.get("step", 0) >= sz.stop_after for m in metrics(run_dir)):
                os.killpg(proc.pid, signal.SIGTERM)  # what SLURM sends at the time limit
                break
            time.sleep(0.2)
        try:
            proc.wait(timeout=max(budget_s - (time.perf_counter() - t0), 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return StepResult("torchrun_resume", "fail", f"first run past the budget ({log})")
    saved = _checkpoint_steps(run_dir)
    if not saved:
        return StepResult("torchrun_resume", "fail", f"no checkpoint after SIGTERM ({log})")
    stopped = saved[-1]
    if stopped >= sz.resume_steps:
        why = f"SIGTERM came after the last step ({stopped}); raise resume_steps"
        return StepResult("torchrun_resume", "fail", why)
    n_before = len(metrics(run_dir))
    cmd2 = torchrun_command(run_dir, data, sz, nproc, ["--resume", "auto"])
    rc, last = run_logged("torchrun_minc_resumed", cmd2, out, budget_s - (time.perf_counter() - t0))
    text = (out / "logs" / "torchrun_minc_resumed.log").read_text(encoding="utf-8")
    after = metrics(run_dir)[n_before:]
    details = {"world": nproc, "stopped_at": stopped, "resumed_steps": [m["step"] for m in after]}
    if rc != 0:
        return StepResult(
            "torchrun_resume", "fail", f"resumed run exit {rc}: {last}", details=details
        )
    said = re.search(r"resume: \S+ at step (\d+)", text)
    problems = []
    if not said or int(said.group(1)) != stopped:
        problems.append(f"did not say 'resume: ... at step {stopped}'")
    if not after or after[0]["step"] != stopped + 1 or after[-1]["step"] != sz.resume_steps:
        problems.append(
            f"logged steps {details['resumed_steps']}, not {stopped + 1}..{sz.resume_steps}"
        )
    elif not math.isfinite(after[-1].get("loss", math.nan)):
        problems.append("non-finite loss")
    if problems:
        return StepResult("torchrun_resume", "fail", "; ".join(problems), details=details)
    reason = (
        f"{nproc} processes, SIGTERM -> checkpoint at step {stopped}, --resume auto -> steps "
        f"{stopped + 1}..{sz.resume_steps}, loss {after[-1]['loss']:.4g}"
    )
    return StepResult("torchrun_resume", "pass", reason, details=details)


def linear_eval_step(out: Path, data: Path, sz: Sizes, budget_s: float) -> StepResult:
    """(6) linear_eval.py --mode fast on the torchrun run's checkpoint (one process)."""
    run_dir = out / "runs" / "torchrun_minc"
    if not _checkpoint_steps(run_dir):
        return StepResult("linear_eval", "skipped", "the torchrun step left no checkpoint")
    result = out / "runs" / "linear_eval.json"
    cmd = [sys.executable, "scaled/linear_eval.py", "--checkpoint", str(run_dir)]
    cmd += ["--data-dir", str(data), "--mode", "fast", "--epochs", "2", "--device", sz.device]
    cmd += ["--num-workers", str(sz.workers), "--output", str(result)]
    rc, last = run_logged("linear_eval", cmd, out, budget_s)
    if rc != 0:
        return StepResult("linear_eval", "fail", f"exit {rc}: {last}")
    found = json.loads(result.read_text()) if result.exists() else {}
    numbers = {k: v for k, v in found.items() if isinstance(v, (int, float))}
    top1 = numbers.get("top1", math.nan)
    if not math.isfinite(top1):
        return StepResult("linear_eval", "fail", f"no top-1 in {result}", details=numbers)
    reason = (
        f"fast probe top-1 {top1:.3f}, kNN top-1 {numbers.get('knn_top1', math.nan):.3f} on "
        f"{numbers.get('n_val')} val images (generated: a smoke test, not an accuracy)"
    )
    return StepResult("linear_eval", "pass", reason, details=numbers)


def compile_step(out: Path, data: Path, sz: Sizes, budget_s: float) -> StepResult:
    """(7) MINC with --compile in one process (the plan of scaled/compile_plan.py)."""
    return pretrain_step("compile", "minc", out, data, sz, ["--compile"], budget_s)


def other_methods(out: Path, data: Path, sz: Sizes, budget_s: float) -> StepResult:
    """(8) Every method but MINC, a few steps each, within one budget."""
    t0, done, failed = time.perf_counter(), [], []
    for method in [m for m in METHODS if m != "minc"]:
        left = budget_s - (time.perf_counter() - t0)
        if left <= 1:
            failed.append(f"{method}: no time left")
            continue
        r = pretrain_step(f"pretrain_{method}", method, out, data, sz, [], left)
        (done if r.status == "pass" else failed).append(f"{method}: {r.reason}")
    status = "fail" if failed else "pass"
    return StepResult("other_methods", status, "; ".join(failed or done)[:300],
                      details={"passed": done, "failed": failed})  # fmt: skip


def dali_step(out: Path, data: Path, sz: Sizes, budget_s: float) -> StepResult:
    """(9) `--loader dali` for MINC when DALI is importable (it needs CUDA)."""
    if sz.device != "cuda":
        return StepResult("dali", "skipped", "DALI decodes on the GPU; the dry run has none")
    if not _dali_importable():
        return StepResult("dali", "skipped", 'nvidia.dali is not installed (pip install ".[dali]")')
    return pretrain_step("dali", "minc", out, data, sz, ["--loader", "dali"], budget_s)


def clear_previous(out: Path) -> None:
    """Remove what an earlier invocation wrote under `out` (not the generated images)."""
    for name in ("runs", "logs", "bench", "gpu_check.json"):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_checks(out: Path, sz: Sizes, budget_s: float, env: dict | None = None) -> list[StepResult]:
    """Every step in order, each within its budget; steps that would start after `budget_s`
    (the whole check's) are skipped with the reason."""
    budgets = BUDGETS if sz is GPU else DRY_BUDGETS
    t0 = time.perf_counter()
    clear_previous(out)
    data = make_data(out / f"imagefolder-{sz.images}x{sz.image_size}", sz)
    env = env or {"versions": {}, "torch_minimum": "", "cuda_runtime": None, "driver": None,
                  "device_name": "", "torch_meets_minimum": True}  # fmt: skip
    plan: list[tuple[str, Any, tuple]] = [
        ("environment", environment_step, (env,)),
        ("no_host_sync", no_host_sync, (out, sz, budgets["no_host_sync"])),
        ("device_stage", device_stage, (sz,)),
        ("bench_step", bench_step, (out, sz, budgets["bench_step"])),
        ("torchrun_resume", torchrun_resume, (out, data, sz, budgets["torchrun_resume"])),
        ("linear_eval", linear_eval_step, (out, data, sz, budgets["linear_eval"])),
        ("compile", compile_step, (out, data, sz, budgets["compile"])),
        ("other_methods", other_methods, (out, data, sz, budgets["other_methods"])),
        ("dali", dali_step, (out, data, sz, budgets["other_methods"])),
    ]
    results = []
    for name, fn, args in plan:
        spent = time.perf_counter() - t0
        if spent > budget_s:
            why = f"time budget {budget_s:.0f} s spent ({spent:.0f} s)"
            results.append(StepResult(name, "skipped", why))
            print(f"[skipped] {name}: {why}", flush=True)
            continue
        result = timed(name, fn, *args, budget_s=budgets.get(name))
        results.append(result)
    return results


# --------------------------------------------------------------------------- reports


def check_report(dry: bool, out: Path, budget_s: float) -> dict[str, Any]:
    """Run everything; the JSON payload (also written to OUT/gpu_check.json)."""
    import torch

    cuda = not dry
    if cuda and not torch.cuda.is_available():
        raise UserError("no CUDA device is visible; run on a GPU machine or pass --dry-run")
    env = environment_report(cuda)
    print(
        f"torch {torch.__version__} (lowest supported {env['torch_minimum']}: "
        f"{'ok' if env['torch_meets_minimum'] else 'TOO OLD'}), CUDA {env['cuda_runtime']}, "
        f"driver {env['driver']}, {env['device_name']}",
        flush=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    results = run_checks(out, DRY if dry else GPU, budget_s, env)
    from scaled.tools.provenance import finished

    payload = {
        "kind": "dry_run" if dry else "cuda",
        "command": "python -m scaled.tools.gpu_check " + " ".join(sys.argv[1:]),
        "env": finished(env),
        "budgets_s": DRY_BUDGETS if dry else BUDGETS,
        "total_budget_s": sum((DRY_BUDGETS if dry else BUDGETS).values()),
        "seconds": round(sum(r.seconds for r in results), 1),
        "steps": [asdict(r) for r in results],
    }
    (out / "gpu_check.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {out / 'gpu_check.json'}")
    return payload


def results_table(payload: dict[str, Any]) -> str:
    """The markdown table of one gpu_check run."""
    from scaled.tools.bench.common import markdown_table

    rows = [
        [s["name"], s["status"], f"{s['seconds']:.0f}", str(s.get("budget_s") or ""), s["reason"]]
        for s in payload["steps"]
    ]
    return markdown_table(["step", "status", "s", "budget s", "result / reason"], rows)


def results_section(payload: dict[str, Any]) -> str:
    """The docs/results.md section of one run: command, card, driver, versions, table."""
    from scaled.tools.provenance import provenance_line

    env, cuda = payload["env"], payload["kind"] == "cuda"
    title = "GPU check (`make gpu-check`)"
    title = title if cuda else "GPU check, dry run (`make gpu-check DRY=1`)"
    versions = f"torch {env['versions'].get('torch')} (lowest supported {env['torch_minimum']})"
    card = (
        f"Card: {env['device_name']}; driver {env.get('driver')}; {versions}; CUDA "
        f"{env.get('cuda_runtime')}; cuDNN {env.get('cudnn')}  "
        if cuda
        else f"No card: the CPU at toy size; {versions}  "
    )
    lines = [
        f"### {title}",
        "",
        f"Command: `{payload['command']}`  ",
        card,
        f"Measured on: {provenance_line(env)}",
        "",
        results_table(payload),
    ]
    return "\n".join(lines)


PATHS = [  # (code path, the gpu_check step that exercises it)
    ("no host sync per step (CPU: counted; CUDA: sync-debug mode)", "no_host_sync"),
    ("input pipeline device stage", "device_stage"),
    ("bench step: SSL vs supervised, loss share, memory", "bench_step"),
    ("torchrun, DDP, SyncBN (CUDA), SIGTERM + --resume auto", "torchrun_resume"),
    ("linear_eval --mode fast on the run", "linear_eval"),
    ("torch.compile of the online network", "compile"),
    ("bf16 autocast + channels_last, every other method", "other_methods"),
    ("--loader dali", "dali"),
]


def _cell(payload: dict[str, Any] | None, prefix: str) -> str:
    if payload is None:
        return "not run"
    steps = [s for s in payload["steps"] if s["name"] == prefix]
    if not steps:
        return "not run"
    statuses = {s["status"] for s in steps}
    status = "fail" if "fail" in statuses else "pass" if statuses == {"pass"} else "skipped"
    sha = str(payload["env"].get("git", {}).get("sha", "unknown"))[:10]
    when = str(payload["env"].get("time_utc", ""))[:10]
    reasons = {s["reason"] for s in steps if s["status"] != "pass"}
    why = f": {'; '.join(sorted(reasons))[:120]}" if reasons else ""
    return f"{status} ({len(steps)} run(s), {when}, git {sha}){why}"


def paths_table(dry: dict[str, Any] | None, cuda: dict[str, Any] | None) -> str:
    """Which code paths have run where: the dry run on the CPU and the CUDA run of gpu_check."""
    from scaled.tools.bench.common import markdown_table

    rows = [[what, _cell(dry, prefix), _cell(cuda, prefix)] for what, prefix in PATHS]
    return markdown_table(["code path", "CPU (gpu-check dry run)", "CUDA (gpu-check)"], rows)


def write_docs(payload: dict[str, Any]) -> None:
    """docs/results/gpu_check_<kind>.json, its docs/results.md section, the scaling.md table."""
    from scaled.tools.provenance import docs_file, replace_section

    kind = payload["kind"]
    store = docs_file().parent / "results"
    store.mkdir(exist_ok=True)
    (store / f"gpu_check_{kind}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    replace_section(docs_file(), f"gpu-check-{kind}", results_section(payload))
    runs = {}
    for k in ("dry_run", "cuda"):
        path = store / f"gpu_check_{k}.json"
        runs[k] = json.loads(path.read_text()) if path.exists() else None
    replace_section(
        docs_file("scaling.md"), "code-paths", paths_table(runs["dry_run"], runs["cuda"])
    )
    print(f"wrote docs/results.md (gpu-check-{kind}), docs/scaling.md (code-paths)")


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scaled.tools.gpu_check",
        description="The first minutes on a GPU node (docs/scaling.md): no host sync, device "
        "stage, bench step, torchrun + SIGTERM + resume, linear_eval, --compile, the other "
        "methods, DALI; each step within its budget.",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="the same steps on the CPU, toy size"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument(
        "--write-docs", action="store_true", help="also write docs/ (git checkout only)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=None,
        help="skip the steps that would start later than this (default: the sum of the steps' "
        "budgets, 480 s; dry run: its budgets' sum)",
    )  # fmt: skip
    parser.add_argument(
        "--report", type=Path, default=None, help="only write docs/ from this gpu_check.json"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.report is not None:
            if not args.report.is_file():
                raise UserError(f"--report {args.report} does not exist; pass a gpu_check.json")
            write_docs(json.loads(args.report.read_text()))
            return 0
        if args.write_docs:
            from scaled.tools.provenance import checkout_root

            checkout_root()  # refuse before running for minutes
        budget_s = args.budget_s or float(sum((DRY_BUDGETS if args.dry_run else BUDGETS).values()))
        payload = check_report(args.dry_run, args.output_dir, budget_s)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.write_docs:
        write_docs(payload)
    failed = [s["name"] for s in payload["steps"] if s["status"] == "fail"]
    print(f"gpu-check: {len(payload['steps']) - len(failed)} ok, failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
