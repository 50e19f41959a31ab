"""Several nodes rehearsed on one machine: torchrun agents joined by the c10d rendezvous (issue 30).

Each "node" is one `torchrun --nnodes=2 --rdzv_backend=c10d` agent on 127.0.0.1, as on a
cluster; gloo, tiny model, a few steps. What is checked:

- two agents (2 x 1, 2 x 2 workers) give, bit for bit, the checkpoint of one agent with the
  same ranks (`--standalone`), on the digits and on a JPEG ImageFolder. (Not the checkpoint of
  one process: BatchNorm statistics are per rank on CPU, where --sync-bn is off, so a 1-process
  run of the same global batch differs by design; the losses and gradients of R ranks equal
  one process's in test_ddp_equivalence.py.)
- `--max-restarts=1` after a worker's SIGKILL between checkpoints: the restarted group joins
  (it used to die in gloo's connectFullMesh: `scaled.distributed.restart_store`), every rank
  resumes from the last checkpoint and the final checkpoint equals a straight run;
- a node that is gone (agent and workers SIGKILLed) ends the job with torchrun's exit 1 after
  the rendezvous' join timeout, and the run folder continues with `--resume auto` to the
  straight run's checkpoint;
- a SIGTERM that reaches one rank, agreed every N steps (`scaled.distributed.agree_every`):
  all ranks stop at the same step, and the resumed run equals the straight run.
"""

from __future__ import annotations

import re
import time

import pytest
import torch

from scaled.checkpoint import list_checkpoints, load_checkpoint
from tests.distributed import _launch as la
from tests.end_to_end.helpers import make_image_folder

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.slow,
    pytest.mark.xdist_group("distributed"),
    pytest.mark.timeout(900),
]

STEPS, EVERY = 8, 3  # the straight run: 8 steps, a checkpoint every 3 (3, 6 and 8)
RUN = [*la.TINY, "--max-steps", str(STEPS), "--checkpoint-every", str(EVERY)]


def tensors(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested dict / list, by its path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return {}
    out: dict[str, torch.Tensor] = {}
    for k, v in items:
        out.update(tensors(v, f"{prefix}/{k}"))
    return out


def assert_same_checkpoint(a: dict, b: dict) -> None:
    """The same step and world size, bit-identical weights, loss state (Cbar) and optimiser
    state."""
    assert (a["step"], a["world_size"]) == (b["step"], b["world_size"])
    ta = tensors({k: a[k] for k in ("model", "objective", "optimizer")})
    tb = tensors({k: b[k] for k in ("model", "objective", "optimizer")})
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def last_checkpoint(run) -> dict:
    return load_checkpoint(list_checkpoints(run)[-1])


def ok(results) -> None:
    for code, err in results:
        assert code == 0, err[-3000:]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One agent, 2 workers, STEPS steps without a fault: the reference of the fault tests."""
    run = tmp_path_factory.mktemp("straight") / "run"
    ok([la.run_standalone(2, [*RUN, "--output-dir", str(run)])])
    return run


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), n_classes=3, per_class=8)


# Two of the four (shape, data) pairs, to keep `make test` in its time: all four passed when
# this file was written (issue 30).
@pytest.mark.parametrize(("nproc", "data"), [(1, "digits"), (2, "folder")], ids=["2x1", "2x2"])
def test_two_nodes_equal_one_node(nproc, data, folder, tmp_path):
    args = [*la.TINY, "--max-steps", "2", "--checkpoint-every", "1"]
    if data == "folder":
        args += ["--data-dir", str(folder), "--image-size", "32"]
    nodes, one = tmp_path / "nodes", tmp_path / "one"
    results = la.run_agents(2, nproc, [*args, "--output-dir", str(nodes)])
    ok(results)
    ok([la.run_standalone(2 * nproc, [*args, "--output-dir", str(one)])])
    assert f"world size {2 * nproc}," in "".join(err for _, err in results)
    a, b = last_checkpoint(nodes), last_checkpoint(one)
    assert a["step"] == 2 and a["world_size"] == 2 * nproc
    assert_same_checkpoint(a, b)
    # the comparison can fail: step 1's checkpoint of the same run is not step 2's
    with pytest.raises(AssertionError):
        assert_same_checkpoint(load_checkpoint(list_checkpoints(nodes)[0]), b)
    one_step_on = {k: v.clone() for k, v in b["model"].items()}
    one_step_on[next(k for k in one_step_on if one_step_on[k].is_floating_point())] += 1e-7
    with pytest.raises(AssertionError):
        assert_same_checkpoint(a, {**b, "model": one_step_on})


@pytest.mark.parametrize("nodes", [1, 2], ids=["1x2", "2x1"])
def test_worker_sigkill_restarts_the_group_and_resumes(nodes, straight, tmp_path):
    """SIGKILL of rank 1 after step 5 (checkpoint at 3) under --max-restarts=1: torchrun
    restarts the workers; both resume at step 3 and the run ends equal to the straight run.
    One node: the agent's shared store, with `restart_store`'s per-attempt keys (without them
    the restarted pair waited in connectFullMesh). Two nodes: TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
    (`check_elastic_launch`)."""
    run, rec = tmp_path / "run", tmp_path / "rec"
    rec.mkdir()
    args = [*RUN, "--resume", "auto", "--output-dir", str(run)]
    env = dict(MINC_TEST_KILL="1:5", MINC_TEST_RECORD=str(rec))
    if nodes == 1:
        results = [la.run_standalone(2, args, torchrun_opts=["--max-restarts=1"], **env)]
    else:
        results = la.run_agents(2, 1, args, torchrun_opts=["--max-restarts=1"], **env)
    ok(results)
    err = "".join(e for _, e in results)
    assert "rank 1 SIGKILLs itself after step 5" in err
    assert f"resume: {run / 'ckpt_00000003.pt'} at step 3" in err
    # rank 1 died without a record, rank 0 of a gloo error (or its agent stopped it); the
    # restarted pair started at step 4. Rank 1's agent counts a restart; on two nodes the other
    # agent may restart for the re-joined node instead, without counting one.
    ranks = la.records(rec)
    assert ranks[1] == [(1, 4, STEPS, "None")], ranks
    assert len(ranks[0]) == 1 and ranks[0][0][1:] == (4, STEPS, "None"), ranks
    if nodes == 1:
        assert ranks[0][0][0] == 1
    assert_same_checkpoint(last_checkpoint(run), last_checkpoint(straight))


def test_restarts_on_two_nodes_with_the_shared_store_are_refused(tmp_path):
    """torch's default (the agents' shared store) with --max-restarts on 2 nodes: one line
    from rank 0 (exit 2 in each attempt), no traceback of ours; torchrun exits 1."""
    args = [*RUN, "--output-dir", str(tmp_path / "run")]
    results = la.run_agents(2, 1, args, torchrun_opts=["--max-restarts=1"], share_store=True)
    (code0, out0), (code1, _) = results
    assert code0 == code1 == 1
    lines = [ln for ln in out0.splitlines() if ln.startswith("error: ")]
    assert lines and lines[0].startswith("error: torchrun --max-restarts=1 on 2 nodes")
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in lines[0]
    assert "[rank0]: Traceback" not in out0 and re.search(r"exitcode\s*:\s*2", out0)


def test_lost_node_ends_the_job_and_the_folder_resumes(straight, tmp_path):
    """Node 1 (agent and worker) SIGKILLed while its rank waits after step 5: node 0's worker
    fails in a collective, its agent waits join_timeout for a second node and exits 1; the
    folder's last checkpoint (3) continues to the straight run's result."""
    run, rec = tmp_path / "run", tmp_path / "rec"
    rec.mkdir()
    args = [*RUN, "--resume", "auto", "--output-dir", str(run)]
    procs = la.start_agents(
        2, 1, args, torchrun_opts=["--max-restarts=1"], rdzv_conf="join_timeout=20",
        MINC_TEST_STALL="1:5", MINC_TEST_RECORD=str(rec),
    )  # fmt: skip
    deadline = time.monotonic() + la.TIMEOUT_S
    while not (rec / "stalled1").exists():
        assert time.monotonic() < deadline and procs[0].poll() is None, "rank 1 never stalled"
        time.sleep(0.2)
    la.kill_node(procs[1])
    (code, err), (lost, _) = la.wait_all(procs)
    assert lost == -9
    assert code == 1, err[-3000:]
    assert "RendezvousTimeoutError" in err  # the restart found one node of two
    assert [p.name for p in list_checkpoints(run)] == ["ckpt_00000003.pt"]
    ok([la.run_standalone(2, args)])
    assert_same_checkpoint(last_checkpoint(run), last_checkpoint(straight))


def test_sigterm_to_one_rank_stops_all_at_the_agreed_step(straight, tmp_path):
    """SIGTERM reaches rank 1 at step 4; the flag is agreed every 3 steps, so both ranks stop
    at step 6 (not 4), with exit 0 and checkpoint 6; the resumed run equals the straight one."""
    run, rec = tmp_path / "run", tmp_path / "rec"
    rec.mkdir()
    args = [*RUN, "--resume", "auto", "--output-dir", str(run)]
    env = dict(MINC_TEST_TERM="1:4", MINC_TEST_AGREE_EVERY="3", MINC_TEST_RECORD=str(rec))
    ok(la.run_agents(2, 1, args, **env))
    ranks = la.records(rec)
    assert ranks[0] == ranks[1] == [(0, 1, 6, "0")], ranks
    assert last_checkpoint(run)["step"] == 6
    ok(la.run_agents(2, 1, args))
    assert_same_checkpoint(last_checkpoint(run), last_checkpoint(straight))
