"""Several torchrun agents ("nodes") on this machine, joined by the c10d rendezvous.

Each agent is the command a user runs on each node::

    python -m torch.distributed.run --nnodes=N --nproc_per_node=P --rdzv_backend=c10d \\
        --rdzv_endpoint=127.0.0.1:PORT --rdzv_id=ID SCRIPT ARGS

started in its own session (process group), so that a test can kill a whole "node" (the agent
and its workers) at once. Ports come from the kernel (bind to port 0), so tests of other
people running at the same time do not clash.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tests.gloo import free_port

REPO = Path(__file__).resolve().parents[2]
WORKER = "tests/distributed/_worker.py"
TIMEOUT_S = 300.0  # a hang detector, not a speed gate

# Small enough for a CPU step well under a second (the end-to-end tests' TINY, a few steps).
TINY = [
    "--preset", "demo", "--width", "8", "--stem-stride", "2", "--proj-hidden", "32",
    "--proj-out", "16", "--pred-hidden", "32", "--batch-size", "16", "--log-every", "1",
    "--epochs", "2", "--warmup-epochs", "0.5", "--device", "cpu", "--num-workers", "0",
]  # fmt: skip


def env(**extra: str) -> dict[str, str]:
    """This environment without any rank variables, one thread per process, plus `extra`."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("MINC_TEST_")}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(key, None)
    out.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), out.get("PYTHONPATH")]))
    out.update(extra)
    return out


def agent_command(nnodes: int, nproc: int, port: int, rdzv_id: str, *extra: str) -> list[str]:
    """One node's torchrun line (`extra`: more torchrun options, then the script and args)."""
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}",
        f"--nproc_per_node={nproc}", "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id={rdzv_id}", *extra,
    ]  # fmt: skip


def start_agents(
    nnodes: int,
    nproc: int,
    args: list[str],
    *,
    torchrun_opts=(),
    rdzv_conf="",
    share_store=False,
    **env_extra,
):
    """Start `nnodes` agents of `nproc` workers each on WORKER `args`; returns the Popens.

    Agent 0 hosts the c10d rendezvous store (``is_host=true``; on one machine every agent
    would match the endpoint, and the first to bind it would win), as the head node does on a
    cluster. `rdzv_conf`: more ``--rdzv_conf`` entries (``join_timeout=60``). The agents run
    with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, as scripts/slurm/torchrun_node.sh does
    (`share_store=True`: without it, torch's default).
    """
    if not share_store:
        env_extra.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    port, rdzv_id = free_port(), f"minc-test-{uuid.uuid4().hex[:8]}"
    procs = []
    for i in range(nnodes):
        conf = ",".join(filter(None, [f"is_host={str(i == 0).lower()}", rdzv_conf]))
        opts = [f"--rdzv_conf={conf}", *torchrun_opts]
        cmd = agent_command(nnodes, nproc, port, rdzv_id, *opts, WORKER, *args)
        # Output to a file, not a pipe: a pipe that is not read while another agent is waited
        # for fills up and blocks that agent's workers in a write.
        log = tempfile.TemporaryFile("w+")
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env(**env_extra), stdout=log, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
        proc.log = log
        procs.append(proc)
        if i == 0:
            time.sleep(0.5)  # the host's store first: the others retry anyway, this saves time
    return procs


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (torchrun starts each worker in a session of its own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited meanwhile
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_node(proc: subprocess.Popen) -> None:
    """SIGKILL an agent and every process below it: a node that is gone."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def output(proc: subprocess.Popen) -> str:
    """Everything an agent started by `start_agents` has printed (stdout and stderr)."""
    proc.log.seek(0)
    return proc.log.read()


def wait_all(procs, timeout: float = TIMEOUT_S) -> list[tuple[int, str]]:
    """(exit status, output) of each agent; a hang past `timeout` kills every node and fails
    with the end of each agent's output."""
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    kill_node(q)
                q.wait()
            raise AssertionError(
                f"{len(procs)} torchrun agents did not finish in {timeout} s; output tails:\n"
                + "\n---\n".join(output(q)[-2000:] for q in procs)
            ) from None
    return [(p.returncode, output(p)) for p in procs]


def run_agents(nnodes: int, nproc: int, args: list[str], **kw) -> list[tuple[int, str]]:
    """Start `nnodes` agents and wait for all of them."""
    return wait_all(start_agents(nnodes, nproc, args, **kw))


def run_standalone(
    nproc: int, args: list[str], *, torchrun_opts=(), **env_extra
) -> tuple[int, str]:
    """One agent (`--standalone`, one node, torch's default shared store) of `nproc` workers."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={nproc}", *torchrun_opts, WORKER, *args]
    p = subprocess.run(
        cmd, cwd=REPO, env=env(**env_extra), capture_output=True, text=True, timeout=TIMEOUT_S
    )
    return p.returncode, p.stderr


def records(folder: Path) -> dict[int, list[tuple[int, int, int, str]]]:
    """`_worker.py`'s records: rank -> [(attempt, first_step, last_step, code)]."""
    out = {}
    for path in sorted(folder.glob("rank*.txt")):
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        out[int(path.stem[4:])] = [(int(a), int(f), int(s), c) for a, f, s, c in rows]
    return out
