"""`python -m scaled.tools.gpu_check`: its dry run on the CPU, its report and its bookkeeping.

The dry run is the same function as the GPU run (`check_report` -> `run_checks`), at toy size, in
the GPU run's order: environment, the no-host-sync tests through pytest, the device stage, bench
step, MINC under torchrun on 2 gloo processes stopped by SIGTERM and resumed with --resume auto,
linear_eval --mode fast on it, --compile, the other methods, DALI (skipped on the CPU). Run twice
in the same folder, the second run passes as the first (each clears what the last one wrote).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scaled.tools import gpu_check, provenance
from scaled.tools.gpu_check import StepResult

REPO = Path(__file__).resolve().parents[2]


ORDER = ["environment", "no_host_sync", "device_stage", "bench_step", "torchrun_resume",
         "linear_eval", "compile", "other_methods", "dali"]  # fmt: skip


def _dry_run(out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "scaled.tools.gpu_check", "--dry-run", "--output-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=3500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "lowest supported 2.11" in proc.stdout
    for name in ORDER[:-1]:  # each step's line says its time and budget
        assert re.search(rf"^\[pass\] {name} \(\d+ / \d+ s\)", proc.stdout, re.M), name
    return json.loads((out / "gpu_check.json").read_text())


@pytest.mark.slow  # 2 torchrun starts, 8 pretrain.py processes (one compiled), bench, pytest
@pytest.mark.timeout(3600)  # a hang detector: ~6 min of CPU, far longer on a loaded machine
def test_dry_run_passes_every_step_twice_in_the_same_folder(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check"
    for _ in range(2):  # the second run must not trip over the first one's checkpoints
        payload = _dry_run(out)
        assert [s["name"] for s in payload["steps"]] == ORDER
        status = {s["name"]: s for s in payload["steps"]}
        for name in ORDER[:-1]:
            assert status[name]["status"] == "pass", status[name]
        assert status["dali"]["status"] == "skipped" and status["dali"]["reason"]
        resume = status["torchrun_resume"]["details"]
        assert resume["world"] == 2
        assert resume["resumed_steps"] == list(
            range(resume["stopped_at"] + 1, gpu_check.DRY.resume_steps + 1)
        )
        assert "SSL/supervised" in status["bench_step"]["reason"]
        assert payload["total_budget_s"] == sum(gpu_check.DRY_BUDGETS.values())
    cfg = json.loads((out / "runs" / "compile" / "run_info.json").read_text())["config"]
    assert cfg["amp"] == "bf16" and cfg["channels_last"] is True and cfg["compile"] is True


def test_the_gpu_budgets_add_up_to_at_most_8_minutes() -> None:
    assert set(gpu_check.BUDGETS) == set(ORDER[:-1]) == set(gpu_check.DRY_BUDGETS)
    assert gpu_check.TOTAL_BUDGET_S == sum(gpu_check.BUDGETS.values()) <= 480


def test_a_step_over_its_budget_fails() -> None:
    def slow():
        time.sleep(0.2)
        return StepResult("x", "pass", "done")

    result = gpu_check.timed("x", slow, budget_s=0.1)
    assert result.status == "fail" and "over its budget" in result.reason


def test_a_failing_step_does_not_stop_the_others(tmp_path: Path, monkeypatch) -> None:
    def boom(*args):
        raise RuntimeError("boom")

    ok = lambda name: lambda *args: StepResult(name, "pass")  # noqa: E731
    monkeypatch.setattr(gpu_check, "make_data", lambda root, sz: root)
    monkeypatch.setattr(gpu_check, "no_host_sync", ok("no_host_sync"))
    monkeypatch.setattr(gpu_check, "device_stage", ok("device_stage"))
    monkeypatch.setattr(gpu_check, "bench_step", ok("bench_step"))
    monkeypatch.setattr(gpu_check, "torchrun_resume", boom)
    monkeypatch.setattr(gpu_check, "linear_eval_step", ok("linear_eval"))
    monkeypatch.setattr(gpu_check, "compile_step", ok("compile"))
    monkeypatch.setattr(gpu_check, "other_methods", ok("other_methods"))
    results = gpu_check.run_checks(tmp_path, gpu_check.DRY, budget_s=600)
    assert [r.name for r in results] == ORDER
    failed = [r for r in results if r.status == "fail"]
    assert [r.name for r in failed] == ["torchrun_resume"] and "boom" in failed[0].reason


def test_each_run_clears_what_the_last_one_wrote(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "runs" / "torchrun_minc").mkdir(parents=True)
    (tmp_path / "runs" / "torchrun_minc" / "ckpt_00000004.pt").write_text("old")
    (tmp_path / "imagefolder-64x32").mkdir()
    gpu_check.clear_previous(tmp_path)
    assert not (tmp_path / "runs").exists() and (tmp_path / "imagefolder-64x32").is_dir()


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
        StepResult("torchrun_resume", "pass", "8 processes"),
        StepResult("other_methods", "fail", "byol: exit 1: CUDA out of memory"),
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
    assert "| not run | fail (1 run(s), 2026-12-02, git abcdef1234)" in row
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
