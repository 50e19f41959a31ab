"""`python -m scaled.tools.gpu_check`: its dry run on the CPU, its report and its bookkeeping.

The dry run is the same function as the GPU run (`check_report` -> `run_checks`), at toy size:
every method's pretrain.py with `--amp bf16 --channels-last` on the CPU, the `--compile` run,
bench step, the device stage (or its reason to skip), the no-host-sync test through pytest, and
DALI (skipped on the CPU with its reason).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scaled.config import METHODS
from scaled.tools import gpu_check, provenance
from scaled.tools.gpu_check import StepResult

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # 7 pretrain.py processes (one compiled), bench step and a pytest run
@pytest.mark.timeout(3600)  # a hang detector: ~4 min of CPU, far longer on a loaded machine
def test_dry_run_passes_every_step(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check"
    proc = subprocess.run(
        [sys.executable, "-m", "scaled.tools.gpu_check", "--dry-run", "--output-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=3500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "lowest supported 2.11: ok" in proc.stdout
    payload = json.loads((out / "gpu_check.json").read_text())
    status = {s["name"]: s for s in payload["steps"]}
    for name in [f"pretrain_{m}" for m in METHODS] + ["pretrain_minc_compile", "bench_step"]:
        assert status[name]["status"] == "pass", status[name]
    assert status["pretrain_minc"]["details"]["step"] == gpu_check.DRY.steps
    assert status["no_host_sync"]["status"] == "pass", status["no_host_sync"]
    assert status["dali"]["status"] == "skipped" and status["dali"]["reason"]
    assert status["device_stage"]["status"] in ("pass", "skipped"), status["device_stage"]
    assert "SSL/supervised" in status["bench_step"]["reason"]
    cfg = json.loads((out / "runs" / "pretrain_minc" / "run_info.json").read_text())["config"]
    assert cfg["amp"] == "bf16" and cfg["channels_last"] is True


def test_a_failing_step_does_not_stop_the_others(tmp_path: Path, monkeypatch) -> None:
    def pretrain(name, method, *args):
        if method == "spectral":
            raise RuntimeError("boom")
        return StepResult(name, "pass")

    monkeypatch.setattr(gpu_check, "make_data", lambda root, sz: root)
    monkeypatch.setattr(gpu_check, "pretrain_step", pretrain)
    monkeypatch.setattr(gpu_check, "bench_step", lambda out, sz: StepResult("bench_step", "pass"))
    monkeypatch.setattr(
        gpu_check, "no_host_sync", lambda out, sz: StepResult("no_host_sync", "pass")
    )
    results = gpu_check.run_checks(tmp_path, gpu_check.DRY, budget_s=600)
    names = [r.name for r in results]
    assert names[-3:] == ["device_stage", "no_host_sync", "dali"]
    assert len(names) == len(METHODS) + 5
    failed = [r for r in results if r.status == "fail"]
    assert [r.name for r in failed] == ["pretrain_spectral"] and "boom" in failed[0].reason


def test_steps_past_the_budget_are_skipped_with_the_reason(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(gpu_check, "make_data", lambda root, sz: root)
    results = gpu_check.run_checks(tmp_path, gpu_check.DRY, budget_s=-1)
    assert {r.status for r in results} == {"skipped"}
    assert all("time budget" in r.reason for r in results)


def test_report_writes_the_results_section_and_the_paths_table(tmp_path, monkeypatch) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "docs" / "results.md").write_text("# Results\n")
    (tmp_path / "docs" / "scaling.md").write_text(
        "# Scaling\n<!-- code-paths:begin -->\nold\n<!-- code-paths:end -->\ntail\n"
    )
    monkeypatch.setattr(provenance, "PACKAGE_PARENT", tmp_path)
    env = {
        "device_name": "NVIDIA H200", "driver": "570.1", "cuda_runtime": "12.8", "cudnn": 91000,
        "torch_minimum": "2.11", "versions": {"torch": "2.11.0"}, "device": "cuda",
        "git": {"sha": "abcdef1234567"}, "time_utc": "2026-12-02 05:00:00",
    }  # fmt: skip
    steps = [
        StepResult("pretrain_minc", "pass", "30 steps"),
        StepResult("pretrain_byol", "fail", "exit 1: CUDA out of memory"),
        StepResult("dali", "skipped", "nvidia.dali is not installed"),
    ]
    payload = {"kind": "cuda", "command": "python -m scaled.tools.gpu_check", "env": env}
    payload["steps"] = [gpu_check.asdict(s) for s in steps]
    report = tmp_path / "gpu_check.json"
    report.write_text(json.dumps(payload))
    assert gpu_check.main(["--report", str(report)]) == 0
    results = (tmp_path / "docs" / "results.md").read_text()
    assert "<!-- gpu-check-cuda:begin -->" in results and "NVIDIA H200" in results
    assert "driver 570.1" in results and "CUDA 12.8" in results and "torch 2.11.0" in results
    scaling = (tmp_path / "docs" / "scaling.md").read_text()
    assert "old" not in scaling and scaling.endswith("tail\n")
    row = next(ln for ln in scaling.splitlines() if ln.startswith("| bf16 autocast"))
    assert "| not run | fail (2 run(s), 2026-12-02, git abcdef1234)" in row
    assert "CUDA out of memory" in row
    dali = next(ln for ln in scaling.splitlines() if ln.startswith("| --loader dali"))
    assert dali.endswith(
        "skipped (1 run(s), 2026-12-02, git abcdef1234): nvidia.dali is not installed |"
    )


def test_without_cuda_the_gpu_run_is_a_one_line_error(tmp_path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    assert gpu_check.main(["--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: no CUDA device is visible; run on a GPU machine or pass --dry-run"]


def test_lowest_supported_torch_is_stated_once() -> None:
    text = (REPO / "pyproject.toml").read_text()  # tomllib is Python >= 3.11; we support 3.10
    (version,) = re.findall(r'^lowest-supported-torch = "([0-9.]+)"$', text, flags=re.M)
    stated = tuple(int(p) for p in version.split("."))
    assert stated == gpu_check.LOWEST_TORCH
    assert gpu_check.torch_version_ok("2.11.0+cu128")
    assert gpu_check.torch_version_ok("2.14.1+cu130")
    assert not gpu_check.torch_version_ok("2.10.2")
    assert not gpu_check.torch_version_ok("nightly")
