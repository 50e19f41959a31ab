"""`scaled.distributed.agree_every`: the stop flag agreed every N steps, the same on all ranks.

The end-to-end check (SIGTERM to one rank of a 2-node run, all stop at the same step, exact
resume) is test_multinode.py::test_sigterm_to_one_rank_stops_all_at_the_agreed_step.
"""

from __future__ import annotations

import pytest

from scaled.distributed import agree_every
from tests.distributed import _agree
from tests.gloo import spawn_ranks


def test_one_process_answers_at_once():
    assert [agree_every(1, s, 10) for s in (1, 7, 10)] == [1, 1, 1]
    assert agree_every(0, 3, 10) == 0


def test_every_below_one_is_refused():
    with pytest.raises(ValueError, match="every must be >= 1"):
        agree_every(0, 1, 0)


def expected(step: int) -> int:
    """What every rank must read: the max over ranks at multiples of EVERY, else 0."""
    if step % _agree.EVERY:
        return 0
    return max(_agree.flag_at(r, step) for r in range(2))


def test_expected_answers_can_fail():
    """The reference is not trivial: a per-step agreement or a rank's own flag differ from it."""
    every_step = [max(_agree.flag_at(r, s) for r in range(2)) for s in _agree.STEPS]
    own = [_agree.flag_at(0, s) for s in _agree.STEPS]
    want = [expected(s) for s in _agree.STEPS]
    assert want == [0, 0, 0, 0, 0, 1, 0, 0, 2]
    assert every_step != want and own != want


@pytest.mark.distributed
@pytest.mark.xdist_group("distributed")
def test_two_ranks_read_the_same_answer_at_the_same_steps(tmp_path, monkeypatch):
    results = spawn_ranks(_agree.worker, 2, tmp_path, monkeypatch)
    want = [expected(s) for s in _agree.STEPS]
    assert [r["answers"] for r in results] == [want, want]
