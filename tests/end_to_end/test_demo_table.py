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


def _rows2(ours: tuple[float, float], pixels: tuple[float, float]) -> dict:
    return {
        "pretrained encoder": {"top1": ours[0], "knn_top1": ours[1]},
        "random-init encoder": {"top1": 0.77, "knn_top1": 0.74},
        "raw pixels": {"top1": pixels[0], "knn_top1": pixels[1]},
    }


def test_verdict_names_the_column_lost_and_the_winner():
    from scaled.tools.demo import verdict

    line = verdict(_rows2((0.935, 0.907), (0.891, 0.952)))
    assert line.startswith("WARNING") and "on kNN" in line and "linear probe and" not in line
    assert "kNN: raw pixels best (95.2%)" in line and "NOT met" in line


def test_verdict_goal_met_only_when_both_columns_pass_it():
    from scaled.tools.demo import verdict

    assert verdict(_rows2((0.965, 0.960), (0.891, 0.952))).endswith(") met")
    # beats both baselines but linear below 96%: goal not met
    line = verdict(_rows2((0.950, 0.960), (0.891, 0.952)))
    assert line.startswith("the pretrained encoder beats both") and line.endswith("NOT met")
