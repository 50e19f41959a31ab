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


def _record(seed: int, knn: float) -> dict:
    from scaled.tools.demo import verdict

    rows = _rows2((0.98, knn), (0.89, 0.952))
    for r in rows.values():
        r.update(n_train=3500, n_test=1000)
    return {
        "method": "minc",
        "seed": seed,
        "rows": rows,
        "args": f"--output-dir runs/demo_seed{seed} --write-docs -- --seed {seed}",
        "steps": 2700,
        "pretrain_seconds": 200.0,
        "total_seconds": 210.0,
        "verdict": verdict(rows),
        "environment": {"load_average_1min": 5.0, "load_average_end_1min": 7.5, "git": {}},
    }


def test_sections_are_rendered_from_the_stored_record():
    """The seed section says what ran (steps, splits, load at start and end) from the record;
    the summary counts a seed whose kNN is under raw pixels as not meeting the goal."""
    from scaled.tools.demo import docs_section, summary_section

    name, body = docs_section(_record(0, 0.97))
    assert name == "demo-seed0"
    assert "(2700 steps)" in body and "fitted on the 3500 train digits" in body
    assert "scored on the 1000 test digits" in body
    assert "1-min load average at start 5.0, at end 7.5" in body
    summary = summary_section([_record(0, 0.97), _record(1, 0.95)], None)
    assert "| 0 | 2700 | 98.0 / 97.0 |" in summary and "| met |" in summary
    assert "| 1 | 2700 | 98.0 / 95.0 |" in summary and "| NOT met |" in summary
