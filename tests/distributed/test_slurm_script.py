"""scripts/slurm/*.sbatch: their sizes follow docs/scaling.md, and they run (issue 30).

The scripts run with `bash` under fake `sbatch` / `srun` / `scontrol` / `scancel`
(`_slurm_shims`) that start two local "nodes": the scripts' own srun and torchrun lines run,
on the CPU, with the demo preset on a tiny JPEG folder. Checked: a job runs to the end; the
time limit's SIGUSR1 (``--signal=B:USR1@...``, sent here to the batch shell as SLURM would)
makes every rank checkpoint and stop, the job requeues itself (`scontrol requeue`) and the
requeued job continues to the straight job's checkpoint, bit for bit; linear_eval.sbatch
evaluates the run on both nodes.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from scaled.checkpoint import list_checkpoints, load_checkpoint
from tests.distributed import _launch as la
from tests.distributed import _slurm_shims as shims
from tests.distributed.test_multinode import assert_same_checkpoint
from tests.end_to_end.helpers import make_image_folder
from tests.gloo import free_port

REPO = la.REPO
SCRIPTS = REPO / "scripts" / "slurm"
DOCS = REPO / "docs" / "scaling.md"

# --------------------------------------------------------------------------- the sizes


def sbatch_option(text: str, name: str) -> str:
    m = re.search(rf"^#SBATCH --{name}=(\S+)", text, re.M)
    assert m, f"no #SBATCH --{name}"
    return m.group(1)


def loader_cores_per_gpu(docs: str) -> tuple[float, float, float]:
    """(images/s per GPU, CPU-stage images/s per core, cores per GPU) from the docs' table."""
    head = re.search(r"\| cores per GPU at ([\d,]+) images/s \|", docs)
    row = re.search(
        r"^\| CPU stage \(`--loader device`\) \| ([\d.]+) \| [\d.]+ \| ([\d.]+) \|", docs, re.M
    )
    assert head and row, "docs/scaling.md lost its loader table"
    return float(head.group(1).replace(",", "")), float(row.group(1)), float(row.group(2))


def sizing_errors(script: str, docs: str) -> list[str]:
    """Where a sbatch script's CPUs, workers and /dev/shm disagree with docs/scaling.md."""
    per_gpu, per_core, cores = loader_cores_per_gpu(docs)
    errors = []
    if abs(per_gpu / per_core - cores) > 0.05:
        errors.append(f"the docs' {cores} cores per GPU is not {per_gpu} / {per_core}")
    workers = int(re.search(r"^WORKERS_PER_GPU=(\d+)", script, re.M).group(1))
    if workers != math.ceil(cores):
        errors.append(f"WORKERS_PER_GPU={workers}, the docs give {cores} cores per GPU")
    gpus = int(sbatch_option(script, "gpus-per-node"))
    cpus = int(sbatch_option(script, "cpus-per-task"))
    if cpus != gpus * (workers + 1):
        errors.append(f"--cpus-per-task={cpus} is not {gpus} GPUs x ({workers} workers + 1)")
    if f"--cpus-per-task={cpus}" not in docs:
        errors.append(f"docs/scaling.md does not say --cpus-per-task={cpus}")
    return errors


def shm_mb(gpus: int, workers: int, micro: int) -> int:
    """/dev/shm a node's loader workers fill: 2 batches each (prefetch_factor), two uint8 views
    of 3 x 224 x 224 a sample."""
    return -(-gpus * workers * 2 * micro * 2 * 3 * 224 * 224 // 10**6)  # rounded up


@pytest.mark.parametrize("name", ["pretrain.sbatch", "linear_eval.sbatch"])
def test_sizes_follow_the_docs(name):
    script, docs = (SCRIPTS / name).read_text(), DOCS.read_text()
    assert sizing_errors(script, docs) == []
    assert sbatch_option(script, "signal").startswith("B:USR1@")
    assert "#SBATCH --requeue" in script


def test_shm_figure_matches_the_formula_in_script_and_docs():
    script, docs = (SCRIPTS / "pretrain.sbatch").read_text(), DOCS.read_text()
    nodes, gpus = int(sbatch_option(script, "nodes")), int(sbatch_option(script, "gpus-per-node"))
    batch = int(re.search(r"^BATCH=\$\{MINC_BATCH:-(\d+)\}", script, re.M).group(1))
    workers = int(re.search(r"^WORKERS_PER_GPU=(\d+)", script, re.M).group(1))
    need = shm_mb(gpus, workers, batch // (nodes * gpus))
    assert need == -(-8 * 4 * 2 * 128 * 301_056 // 10**6) == 2467  # 2,466.3 MB
    assert f"{need:,} MB per node" in script
    assert f"{need:,} MB" in docs


def test_sizing_check_catches_a_wrong_script():
    script, docs = (SCRIPTS / "pretrain.sbatch").read_text(), DOCS.read_text()
    assert sizing_errors(script.replace("--cpus-per-task=40", "--cpus-per-task=64"), docs)
    assert sizing_errors(script.replace("WORKERS_PER_GPU=4", "WORKERS_PER_GPU=8"), docs)
    _, _, cores = loader_cores_per_gpu(docs)
    row = re.search(r"^\| CPU stage \(`--loader device`\) .*$", docs, re.M).group(0)
    slower = row.replace(f"| {cores} |", "| 12.0 |")  # a CPU stage 4x slower: more workers
    assert slower != row and loader_cores_per_gpu(docs.replace(row, slower))[2] == 12.0
    assert sizing_errors(script, docs.replace(row, slower))


# --------------------------------------------------------------------------- running them

STEPS = 40  # long enough for the SIGUSR1 to land mid-run on a loaded machine
# TINY without --preset and --batch-size: the script passes MINC_PRESET and MINC_BATCH
TRAIN = [a for i, a in enumerate(la.TINY) if "--preset" not in la.TINY[max(i - 1, 0) : i + 1]]
TRAIN = [a for i, a in enumerate(TRAIN) if "--batch-size" not in TRAIN[max(i - 1, 0) : i + 1]]
TRAIN += ["--num-workers", "0", "--image-size", "32", "--epochs", "6", "--max-steps", str(STEPS)]


@pytest.fixture
def slurm(tmp_path):
    """PATH with the fake SLURM commands first, and the scripts' settings for a tiny run."""
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    shims.install(bin_dir, state)
    data = make_image_folder(tmp_path / "data", n_classes=3, per_class=40)  # 7 steps an epoch
    path = os.pathsep.join([str(bin_dir), str(Path(os.sys.executable).parent), os.environ["PATH"]])
    env = la.env(
        PATH=path, FAKE_SLURM_STATE=str(state), MINC_PRESET="demo", MINC_BATCH="16",
        MINC_DATA_DIR=str(data), MINC_PORT=str(free_port()),
    )  # fmt: skip
    return env, state


def sbatch(env, run_dir, script="pretrain.sbatch", *args, wait=True):
    cmd = ["sbatch", "--nodes=2", f"scripts/slurm/{script}", *args]
    env = {**env, "MINC_RUN_DIR": str(run_dir), "MINC_PORT": str(free_port())}
    log = tempfile.TemporaryFile("w+")  # a file: a pipe not read while polling would fill up
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    p.stdout_file = log
    if not wait:
        return p
    return finish(p)


def finish(p: subprocess.Popen) -> tuple[int, str]:
    """(exit status, output) of an `sbatch` started by `sbatch(..., wait=False)`."""
    try:
        p.wait(timeout=la.TIMEOUT_S)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    p.stdout_file.seek(0)
    return p.returncode, p.stdout_file.read()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.xdist_group("distributed")
@pytest.mark.timeout(900)
def test_pretrain_script_runs_is_preempted_requeues_and_resumes_exactly(slurm, tmp_path):
    env, state = slurm
    straight, run = tmp_path / "straight", tmp_path / "run"
    code, err = sbatch(env, straight, "pretrain.sbatch", *TRAIN)
    assert code == 0, err[-3000:]
    assert "interface lo" in err and "node 1/2" in err  # both nodes' lines, GLOO_SOCKET_IFNAME
    assert "world size 2," in err
    assert shims.calls(state) == []  # a finished job is not requeued
    assert load_checkpoint(list_checkpoints(straight)[-1])["step"] == STEPS

    job = sbatch(env, run, "pretrain.sbatch", *TRAIN, "--log-every", "1", wait=False)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + la.TIMEOUT_S
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert job.poll() is None and time.monotonic() < deadline, finish(job)[1][-3000:]
        time.sleep(0.1)
    os.kill(int((state / "batch.pid").read_text()), signal.SIGUSR1)  # --signal=B:USR1@300
    code, err = finish(job)
    assert code == 0, err[-3000:]
    job_id = (state / "last_id").read_text().strip()
    assert shims.calls(state) == [f"scancel USR1 {job_id}", f"requeue {job_id}"]
    stopped = load_checkpoint(list_checkpoints(run)[-1])["step"]
    assert 3 <= stopped < STEPS, "the signal landed after the run had ended: raise STEPS"
    assert "preempted: checkpoint" in err

    code, err = sbatch(env, run, "pretrain.sbatch", *TRAIN)  # the requeued job
    assert code == 0, err[-3000:]
    assert f"at step {stopped} " in err
    assert_same_checkpoint(
        load_checkpoint(list_checkpoints(run)[-1]), load_checkpoint(list_checkpoints(straight)[-1])
    )

    out = tmp_path / "lineval.json"
    args = ["--device", "cpu", "--mode", "fast", "--num-workers", "0", "--output", str(out)]
    code, err = sbatch(env, straight, "linear_eval.sbatch", *args)
    assert code == 0, err[-3000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and 0.0 <= result["top1"] <= 1.0
