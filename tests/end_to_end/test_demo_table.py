"""The demo's verdict compares the pretrained row with the two baselines, not with itself."""

from scaled.tools.demo import beats_baselines, format_table


def _rows(ours: float, random_init: float, pixels: float) -> dict[str, dict[str, float]]:
    return {
        "pretrained encoder": {"top1": ours, "knn_top1": 0.5},
        "random-init encoder": {"top1": random_init, "knn_top1": 0.5},
        "raw pixels": {"top1": pixels, "knn_top1": 0.5},
    }


def test_beats_both_baselines():
    assert beats_baselines(_rows(0.93, 0.77, 0.89))


def test_losing_to_either_baseline_is_reported():
    assert not beats_baselines(_rows(0.85, 0.77, 0.89))
    assert not beats_baselines(_rows(0.80, 0.81, 0.70))


def test_table_has_one_line_per_row():
    table = format_table(_rows(0.936, 0.767, 0.891))
    assert "93.6%" in table and "76.7%" in table and "89.1%" in table
    assert len(table.splitlines()) == 5
