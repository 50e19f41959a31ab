"""`scaled.distributed.restart_store` and `check_elastic_launch`, without launching torchrun.

The launches themselves (a SIGKILLed worker restarted on one and on two nodes, the refused
launch) are in test_multinode.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch.distributed as dist

from scaled.config import UserError
from scaled.distributed import check_elastic_launch, restart_store
from tests.gloo import free_port

AGENT = {"TORCHELASTIC_USE_AGENT_STORE": "True", "MASTER_ADDR": "127.0.0.1"}


def test_no_agent_store_means_the_env_default(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    assert restart_store(2) is None
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    assert restart_store(2) is None


def test_each_attempt_reads_only_its_own_keys(monkeypatch):
    """A key written in attempt 0 (the dead workers' gloo address) is absent in attempt 1."""
    port = free_port()
    server = dist.TCPStore("127.0.0.1", port, 1, is_master=True, timeout=timedelta(seconds=10))
    for k, v in {**AGENT, "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    stores = {}
    for attempt in (0, 1):
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(attempt))
        stores[attempt] = restart_store(1, timeout=timedelta(seconds=10))
    stores[0].set("default_pg/0//cpu//0/rank_1", "old address")
    assert stores[0].check(["default_pg/0//cpu//0/rank_1"])
    assert not stores[1].check(["default_pg/0//cpu//0/rank_1"])
    assert server.check(["minc/attempt_0/default_pg/0//cpu//0/rank_1"])  # the prefix, spelled
    # without the prefix (torch's env:// default) the two attempts share their keys
    assert server.get("minc/attempt_0/default_pg/0//cpu//0/rank_1") == b"old address"


@pytest.mark.parametrize(
    ("nodes", "restarts", "shared", "refused"),
    [(2, 1, "True", True), (1, 1, "True", False), (2, 0, "True", False), (2, 1, "False", False)],
)
def test_restarts_on_several_nodes_need_their_own_stores(
    monkeypatch, nodes, restarts, shared, refused
):
    monkeypatch.setenv("GROUP_WORLD_SIZE", str(nodes))
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", str(restarts))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", shared)
    if refused:
        with pytest.raises(UserError, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 on every node"):
            check_elastic_launch()
    else:
        check_elastic_launch()
