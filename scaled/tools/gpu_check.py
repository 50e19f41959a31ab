"""``python -m scaled.tools.gpu_check``: one command for the first session with a CUDA GPU.

On a machine with one CUDA GPU and nothing but this checkout (``PYTHONPATH=.``, the machine's own
torch; see docs/scaling.md, "Offline GPU nodes"), in under 8 minutes:

1. ``pretrain`` every method of ``scaled.config.METHODS`` on a generated JPEG ImageFolder at
   224 px, ResNet-50, ``--amp bf16 --channels-last``, a few dozen steps; then MINC once more with
   ``--compile``;
2. ``bench step`` (ResNet-50 1x, B 256, bf16): images/s, the SSL / supervised ratio against the
   ~2.7x work bound, the loss + statistics share of the step and the peak GPU memory;
3. the input pipeline's device stage (``scaled.tools.bench.loader.time_device_stage``, when
   importable) and the no-host-sync test in CUDA sync-debug mode (pytest in a subprocess);
4. ``--loader dali`` when DALI is importable;
5. one JSON (``OUTPUT_DIR/gpu_check.json``) and, with ``--write-docs``, a docs/results.md section
   with the card's name, driver, torch and CUDA versions, and the table of docs/scaling.md that
   says which code paths have run where.

Each step reports pass / fail / skipped with its reason; a failure does not stop the next step.
``--dry-run`` runs the same steps, through the same functions, on the CPU at toy size (a small
ResNet at 32 px, 2 steps; bf16 autocast and channels_last are honoured on the CPU too), so the
script is known to work before a GPU is lent (tests/perf/test_gpu_check.py runs it).
``--report FILE`` writes the docs from a gpu_check.json made elsewhere (e.g. on the GPU machine).
Exit status: 0 no step failed, 1 some step failed, 2 user error.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import math
import os
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
    timeout_s: float  # per pretrain run (the compiled one gets 3x): hang detectors, generous


GPU = Sizes(
    device="cuda", arch=["--arch", "resnet50"], image_size=224, batch_size=64, steps=30,
    images=64 * 30, workers=8, timeout_s=150,
    bench=["--archs", "resnet50", "--batch-size", "256", "--image-size", "224",
           "--methods", "minc", "--reps", "10"],
)  # fmt: skip
DRY = Sizes(
    device="cpu", arch=["--arch", "small_resnet", "--width", "8", "--stem-stride", "2",
                        "--proj-hidden", "32", "--proj-out", "16", "--pred-hidden", "32"],
    image_size=32, batch_size=8, steps=2, images=16, workers=0, timeout_s=900,
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


def timed(name: str, fn, *args) -> StepResult:
    """`fn(*args)` -> StepResult with its duration; an exception is a failure, not a crash."""
    t0 = time.perf_counter()
    try:
        result = fn(*args)
    except Exception as err:  # the script goes on after any failure
        result = StepResult(name, "fail", f"{type(err).__name__}: {str(err)[:300]}")
    result.seconds = round(time.perf_counter() - t0, 1)
    print(f"[{result.status}] {name} ({result.seconds:.0f} s) {result.reason}", flush=True)
    return result


# --------------------------------------------------------------------------- (1) pretrain


def make_data(root: Path, sz: Sizes) -> Path:
    """A generated JPEG ImageFolder (4 classes) a bit larger than the crop."""
    from scaled.tools.bench.loader import write_jpeg_folder

    if not (root / "train").is_dir():
        side = sz.image_size + sz.image_size // 7
        write_jpeg_folder(root, sz.images, seed=0, size=(side, side))
    return root


def pretrain_command(method: str, data: Path, run_dir: Path, sz: Sizes, extra: list[str]):
    """pretrain.py on `data` for `sz.steps` steps in one process, bf16 + channels_last."""
    cmd = [sys.executable, "scaled/pretrain.py", "--preset", "imagenet_r50_minc"]
    cmd += ["--method", method, *sz.arch, "--data-dir", str(data), "--output-dir", str(run_dir)]
    cmd += ["--device", sz.device, "--amp", "bf16", "--channels-last"]
    cmd += ["--image-size", str(sz.image_size), "--batch-size", str(sz.batch_size)]
    cmd += ["--max-steps", str(sz.steps), "--epochs", "1", "--warmup-epochs", "0"]
    cmd += ["--num-workers", str(sz.workers), "--log-every", str(max(sz.steps // 3, 1))]
    cmd += ["--checkpoint-every", "0", "--keep-checkpoints", "1", "--no-sync-bn", *extra]
    return cmd


def last_metrics(run_dir: Path) -> dict[str, Any]:
    """The last line of run_dir/metrics.jsonl ({} when there is none)."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1]) if lines else {}


def pretrain_step(
    name: str, method: str, out: Path, data: Path, sz: Sizes, extra: list[str], timeout_s: float
) -> StepResult:
    """One pretrain.py run: pass when it exits 0 with a finite last logged loss."""
    run_dir = out / "runs" / name
    rc, last = run_logged(name, pretrain_command(method, data, run_dir, sz, extra), out, timeout_s)
    m = last_metrics(run_dir)
    details = {k: m.get(k) for k in ("step", "loss", "img_per_s")}
    if rc != 0:
        return StepResult(name, "fail", f"exit {rc}: {last}", details=details)
    if not m or not math.isfinite(m.get("loss", math.nan)) or m.get("step") != sz.steps:
        return StepResult(name, "fail", f"no finite loss at step {sz.steps}", details=details)
    reason = f"{sz.steps} steps, loss {m['loss']:.4g}, {m['img_per_s']:.0f} img/s"
    return StepResult(name, "pass", reason, details=details)


# --------------------------------------------------------------------------- (2) bench step


def bench_step(out: Path, sz: Sizes) -> StepResult:
    """`bench step` in a subprocess; reads its step.json."""
    bench_dir = out / "bench"
    cmd = [sys.executable, "-m", "scaled.tools.bench", "step", "--device", sz.device]
    cmd += [*sz.bench, "--output-dir", str(bench_dir)]
    rc, last = run_logged("bench_step", cmd, out, 2 * sz.timeout_s)
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


# --------------------------------------------------------------------------- (3) device stage, sync


def device_stage(sz: Sizes) -> StepResult:
    """The two-stage input pipeline's device stage, timed, when its helper is importable."""
    try:
        loader = importlib.import_module("scaled.tools.bench.loader")
        helper = loader.time_device_stage
    except (ImportError, AttributeError) as err:
        why = f"scaled.tools.bench.loader.time_device_stage is not importable ({err})"
        return StepResult("device_stage", "skipped", why)
    import torch

    dry = sz is DRY
    offer = {"device": torch.device(sz.device), "image_size": sz.image_size}
    offer |= {"batch": sz.batch_size if dry else 256, "reps": 1 if dry else 10, "quick": dry}
    accepted = inspect.signature(helper).parameters
    result = helper(**{k: v for k, v in offer.items() if k in accepted})
    return StepResult("device_stage", "pass", str(result)[:300], details={"result": result})


def no_host_sync(out: Path, sz: Sizes) -> StepResult:
    """tests/perf/test_no_host_sync.py in a pytest subprocess: the CUDA sync-debug test on a
    GPU, the CPU counting test in the dry run."""
    if importlib.util.find_spec("pytest") is None:
        why = "pytest is not importable; install the wheels of `make gpu-wheels` (docs/scaling.md)"
        return StepResult("no_host_sync", "skipped", why)
    which = "cuda" if sz.device == "cuda" else "cpu and minc"
    cmd = [sys.executable, "-m", "pytest", "tests/perf/test_no_host_sync.py", "-k", which]
    cmd += ["-q", "-rs", "-p", "no:cacheprovider", "-o", "addopts="]
    rc, last = run_logged("no_host_sync", cmd, out, 2 * sz.timeout_s)
    if rc == 0 and " passed" in last and "skipped" not in last:
        return StepResult("no_host_sync", "pass", f"pytest -k '{which}': {last}")
    return StepResult("no_host_sync", "fail", f"pytest -k '{which}' exit {rc}: {last}")


# --------------------------------------------------------------------------- the steps


def run_checks(out: Path, sz: Sizes, budget_s: float) -> list[StepResult]:
    """Every step in order; those that would start after `budget_s` are skipped with a reason."""
    t0 = time.perf_counter()
    data = make_data(out / "imagefolder", sz)
    plan: list[tuple[str, Any, tuple]] = [
        (f"pretrain_{m}", pretrain_step, (f"pretrain_{m}", m, out, data, sz, [], sz.timeout_s))
        for m in METHODS
    ]
    plan.append(
        ("pretrain_minc_compile", pretrain_step,
         ("pretrain_minc_compile", "minc", out, data, sz, ["--compile"], 3 * sz.timeout_s))
    )  # fmt: skip
    plan += [("bench_step", bench_step, (out, sz)), ("device_stage", device_stage, (sz,))]
    plan += [("no_host_sync", no_host_sync, (out, sz)), ("dali", dali_step, (out, data, sz))]
    results = []
    for name, fn, args in plan:
        spent = time.perf_counter() - t0
        if spent > budget_s:
            why = f"time budget {budget_s:.0f} s spent ({spent:.0f} s)"
            results.append(StepResult(name, "skipped", why))
            print(f"[skipped] {name}: {why}", flush=True)
            continue
        results.append(timed(name, fn, *args))
    return results


def dali_step(out: Path, data: Path, sz: Sizes) -> StepResult:
    """(4) `--loader dali` for MINC when DALI is importable (it needs CUDA)."""
    if sz.device != "cuda":
        return StepResult("dali", "skipped", "DALI decodes on the GPU; the dry run has none")
    if not _dali_importable():
        return StepResult("dali", "skipped", 'nvidia.dali is not installed (pip install ".[dali]")')
    return pretrain_step("dali", "minc", out, data, sz, ["--loader", "dali"], sz.timeout_s)


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
    results = run_checks(out, DRY if dry else GPU, budget_s)
    payload = {
        "kind": "dry_run" if dry else "cuda",
        "command": "python -m scaled.tools.gpu_check " + " ".join(sys.argv[1:]),
        "env": env,
        "steps": [asdict(r) for r in results],
    }
    (out / "gpu_check.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {out / 'gpu_check.json'}")
    return payload


def results_table(payload: dict[str, Any]) -> str:
    """The markdown table of one gpu_check run."""
    from scaled.tools.bench.common import markdown_table

    rows = [[s["name"], s["status"], f"{s['seconds']:.0f}", s["reason"]] for s in payload["steps"]]
    return markdown_table(["step", "status", "s", "result / reason"], rows)


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


PATHS = [  # (code path, the gpu_check steps that exercise it)
    ("bf16 autocast + channels_last, every method (pretrain.py)", "pretrain_"),
    ("torch.compile of the online network", "pretrain_minc_compile"),
    ("bench step: SSL vs supervised, loss share, memory", "bench_step"),
    ("input pipeline device stage", "device_stage"),
    ("no host sync per step (CPU: counted; CUDA: sync-debug mode)", "no_host_sync"),
    ("--loader dali", "dali"),
]


def _cell(payload: dict[str, Any] | None, prefix: str) -> str:
    if payload is None:
        return "not run"
    steps = [s for s in payload["steps"] if s["name"] == prefix] or [
        s for s in payload["steps"] if s["name"].startswith(prefix) and "compile" not in s["name"]
    ]
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
        description="The GPU path in one command (docs/scaling.md): pretrain every method "
        "(bf16 + channels_last, and --compile), bench step, device stage, no host sync, DALI.",
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
        help="skip the steps that would start later than this (default: 420 s, dry run 3600 s)",
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
        budget_s = args.budget_s or (3600.0 if args.dry_run else 420.0)
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
