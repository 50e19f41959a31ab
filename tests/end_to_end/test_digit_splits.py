"""The embedded digits' three splits: train / val / test, disjoint, seeded, stratified; and the
recipe search, which chooses, never loads the test split."""

from __future__ import annotations

import numpy as np
import pytest

from scaled import data
from scaled.config import UserError


def _ids(images) -> set[bytes]:
    return {img.numpy().tobytes() for img in images}


def test_three_disjoint_splits_of_the_old_two():
    """val is carved from the old 4000 training digits; test is the same 1000 as before."""
    (tr, ytr), (va, yva), (te, yte) = (data.embedded_digits(s) for s in data.DIGIT_SPLITS)
    assert (len(ytr), len(yva), len(yte)) == (3500, 500, 1000)
    pool, _ = data.embedded_digits("train", 4000, 0)  # no validation: the old training split
    assert _ids(tr) | _ids(va) == _ids(pool)
    assert not _ids(tr) & _ids(va) and not (_ids(tr) | _ids(va)) & _ids(te)


def test_val_is_stratified_and_fixed():
    _, y_pool = data.embedded_digits("train", 4000, 0)
    _, y_val = data.embedded_digits("val")
    want = np.bincount(y_pool.numpy(), minlength=10) * 500 / 4000
    got = np.bincount(y_val.numpy(), minlength=10)
    assert got.sum() == 500 and np.all(np.abs(got - want) < 1)
    again = data.embedded_digits("val")[1]
    assert np.array_equal(again.numpy(), y_val.numpy())


def test_stratified_mask_counts_follow_the_class_shares():
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    mask = data.stratified_mask(labels, 10, seed=0)
    assert mask.sum() == 10
    assert np.bincount(labels[mask]).tolist() == [7, 2, 1]
    wrong = mask.copy()
    wrong[np.flatnonzero(labels == 0)[:3]] = True  # a mask with too many zeros is told apart
    assert np.bincount(labels[wrong]).tolist() != [7, 2, 1]


@pytest.mark.parametrize(
    ("args", "message"),
    [(("validation",), "unknown digits split"), (("val", 4000, 0), "no validation split")],
)
def test_split_errors(args, message):
    with pytest.raises(UserError, match=message):
        data.embedded_digits(*args)


def _tiny_budget(split: str):
    from scaled.tools.experiments import DigitsBudget

    return DigitsBudget(
        steps=2, batch_size=32, probe_train=200, probe_test=100, probe_epochs=2, probe_split=split
    )


@pytest.mark.slow
def test_recipe_search_never_loads_the_test_split(monkeypatch):
    """The test split is poisoned (loading it fails); the search runs, chooses and records that
    it read train and val only. The same search scored on test is refused by its own record."""
    from scaled.tools import recipe_search as rs

    original = data.embedded_digits

    def poisoned(split, *args, **kwargs):
        if split == "test":
            raise AssertionError("the recipe search loaded the test digits")
        return original(split, *args, **kwargs)

    monkeypatch.setattr(data, "embedded_digits", poisoned)
    result = rs.run_search(2, [0], rs.CANDIDATES[:2], budget=_tiny_budget("val"))
    assert result["splits_read"] == ["train", "val"]
    assert result["choice"]["flags"] in {r["flags"] for r in result["rows"]}
    assert "never test" in rs.markdown_table(result)
    monkeypatch.setattr(data, "embedded_digits", original)
    with pytest.raises(RuntimeError, match="loaded the test split"):
        rs.run_search(2, [0], rs.CANDIDATES[:1], budget=_tiny_budget("test"))


def _row(flags: str, knn: float) -> dict:
    return {"flags": flags, "metrics": {"knn_top1": {"mean": knn}}}


def test_choice_keeps_the_preset_unless_a_row_beats_it_by_the_margin():
    from scaled.tools.recipe_search import choose, standard_error

    se = standard_error(0.95, 500)
    near = [_row("preset", 0.95), _row("a", 0.95 + 1.5 * se)]
    assert choose(near, 500)["flags"] == "preset" and choose(near, 500)["best_flags"] == "a"
    far = [_row("preset", 0.95), _row("a", 0.95 + 2.5 * se), _row("b", 0.90)]
    assert choose(far, 500)["flags"] == "a"
    assert choose([_row("preset", 0.95), _row("a", 0.90)], 500)["flags"] == "preset"
