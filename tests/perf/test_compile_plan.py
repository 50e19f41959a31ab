"""`--compile` with SyncBN: the measurement behind scaled/compile_plan.py, and its refusal.

On 2 gloo ranks with SyncBN's synchronising path made to run on the CPU (tests/perf/
_syncbn_trace.py), dynamo breaks the online network's graph at least once per SyncBN layer
(measured with torch 2.14.1: 24 breaks at the 13 layers of a small ResNet); the same
network with plain BN (or SyncBN without a process group) compiles as one graph. If a torch
release stops breaking there, the first test fails: then `check_compile_plan` can let the
combination through.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from scaled.compile_plan import check_compile_plan, compile_online, graph_breaks
from scaled.config import UserError
from scaled.presets import imagenet_r50_minc
from tests.gloo import spawn_ranks
from tests.perf import _syncbn_trace as trace


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.xdist_group("distributed")
def test_sync_bn_breaks_the_graph_at_every_layer(tmp_path, monkeypatch) -> None:
    records = spawn_ranks(trace.worker, 2, tmp_path, monkeypatch)
    for r in records:
        sync, plain = r["sync"], r["plain"]
        assert r["check"] == 0  # the line the CPU trace edits is not what breaks
        assert sync["layers"] > 0
        assert sync["breaks"] >= sync["layers"], sync
        assert sync["graphs"] == sync["breaks"] + 1
        assert plain == {"graphs": 1, "breaks": 0, "reasons": [], "layers": 0}


def test_sync_bn_without_a_process_group_compiles_whole() -> None:
    """One process: SyncBN falls back to plain batch norm, one graph (what the plan compiles)."""
    online = trace.online_network(sync=True)
    graphs, breaks, _ = graph_breaks(online, torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32))
    assert (graphs, breaks) == (1, 0)


def test_graph_breaks_counts_a_break() -> None:
    """The counter can see a break: a data-dependent shape in the middle of a function."""

    def broken(x):
        return (x[x > 0] * 2).sum() + x.sum()

    assert graph_breaks(broken, torch.randn(8))[1] >= 1


@pytest.mark.parametrize(
    ("compile_", "sync_bn", "world", "device", "refused"),
    [
        (True, True, 8, "cuda", True),
        (True, True, 2, "cuda", True),
        (True, True, 1, "cuda", False),  # one process: SyncBN is never converted
        (True, True, 2, "cpu", False),  # the CPU drops SyncBN
        (True, False, 8, "cuda", False),
        (False, True, 8, "cuda", False),
    ],
)
def test_compile_with_sync_bn_on_several_gpus_is_refused(
    compile_, sync_bn, world, device, refused
) -> None:
    cfg = replace(imagenet_r50_minc(), compile=compile_, sync_bn=sync_bn)
    if not refused:
        check_compile_plan(cfg, world, device)
        return
    with pytest.raises(UserError) as err:
        check_compile_plan(cfg, world, device)
    msg = str(err.value)
    assert "\n" not in msg
    assert "--no-sync-bn" in msg and "drop --compile" in msg


def test_compile_online_compiles_only_under_compile() -> None:
    online = torch.nn.Linear(2, 2)
    cfg = replace(imagenet_r50_minc(), compile=False)
    assert compile_online(online, cfg, world=8, device_type="cuda") is online
    compiled = compile_online(online, replace(cfg, compile=True, sync_bn=False), world=8,
                              device_type="cuda")  # fmt: skip
    assert compiled is not online
    assert compiled._orig_mod is online  # torch.compile's wrapper (compiles on its first call)
