"""The demo's recipe, chosen on the validation digits: ``python -m scaled.tools.recipe_search``.

A small set of candidate rows of the recipe search behind the demo (docs/results.md, "The recipe
search behind the demo"): the ``demo`` preset and one change of it per row (``CANDIDATES``:
the stroke augmentation off, raw projector outputs, half and twice the lr). Each row is the
trainer of the ablations (``scaled.tools.experiments.digits_run``: preset ``demo``, one CPU
process, about ``--steps`` optimiser steps of whole epochs) on the **train** split, then the fast
linear probe and kNN (k = 20) fitted on train and scored on the **val** split (500 digits
carved from the training pool, ``scaled.data.embedded_digits``); raw pixels are scored the
same way as a floor. The test digits are never read: every split the search loads is recorded
(``splits_read`` in the JSON), and a search that loaded the test split is an error.

The choice (`choose`): the row with the highest mean validation kNN top-1 over the seeds (the
column of the demo's goal that the recipe search was about), and it replaces the preset only
if it beats the preset's by more than ``MARGIN`` standard errors of a validation accuracy;
otherwise the preset stays. The demo is then run on the test split with the recipe chosen.

Writes ``OUTPUT_DIR/recipe_search.json`` (rows, per-seed values, the choice and its rule,
provenance with the load average at start and end); ``--write-docs`` copies it into
docs/results/ and regenerates the ``recipe-search`` section of docs/results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from scaled.config import UserError
from scaled.tools.provenance import (
    checkout_root,
    docs_file,
    environment,
    finished,
    provenance_line,
    replace_section,
)

NAME = "recipe_search"
SECTION = "recipe-search"
# (flags on top of `--preset demo`, the PretrainConfig fields they set)
CANDIDATES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("(none: the preset)", {}),
    ("--digit-stroke 0", {"digit_stroke": 0.0}),
    ("--feature-norm 0", {"feature_norm": 0.0}),
    ("--lr 0.005", {"lr": 0.005}),
    ("--lr 0.02", {"lr": 0.02}),
)
SCORE = "knn_top1"  # what chooses
MARGIN = 2.0  # standard errors of a validation accuracy a candidate must gain over the preset


@contextlib.contextmanager
def recording_splits() -> Iterator[list[str]]:
    """Record every split of the embedded digits loaded inside the block (``scaled.data`` is
    patched for its duration); yields the list it fills."""
    from scaled import data

    seen: list[str] = []
    original = data.embedded_digits

    def recorded(split: str, *args, **kwargs):
        seen.append(split)
        return original(split, *args, **kwargs)

    data.embedded_digits = recorded
    try:
        yield seen
    finally:
        data.embedded_digits = original


def pixel_row(budget) -> dict[str, float]:
    """Raw pixels scored like the candidates: fast probe and kNN, train -> ``budget``'s split."""
    from scaled.data import eval_dataset
    from scaled.linear_eval import evaluate_features

    try:  # issue 27 moves feature extraction into scaled/features.py
        from scaled.features import pixel_features
    except ImportError:  # pragma: no cover - the layout before it
        from scaled.linear_eval import pixel_features
    from scaled.tools.experiments import digits_config

    cfg = digits_config(budget, 0, "unused")
    tr = pixel_features(eval_dataset(cfg, "train"))
    va = pixel_features(eval_dataset(cfg, budget.probe_split))
    r = evaluate_features(*tr, *va, epochs=budget.probe_epochs, seed=0)
    return {"probe_top1": r["top1"], "knn_top1": r["knn_top1"], "n_scored": len(va[1])}


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy `p` measured on `n` items."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n else math.nan


def choose(rows: list[dict[str, Any]], n_scored: int) -> dict[str, Any]:
    """The row with the highest mean ``SCORE``; it replaces the preset (row 0) only if it is
    ahead by more than ``MARGIN`` binomial standard errors of an accuracy on `n_scored` digits.

    Returns the chosen flags, the best row's, the margin needed and the rule in words.
    """
    preset = rows[0]
    best = max(rows, key=lambda r: r["metrics"][SCORE]["mean"])
    base = preset["metrics"][SCORE]["mean"]
    need = MARGIN * standard_error(base, n_scored)
    gain = best["metrics"][SCORE]["mean"] - base
    chosen = best if best is not preset and gain > need else preset
    return {
        "flags": chosen["flags"],
        "best_flags": best["flags"],
        "gain_over_preset": gain,
        "margin_needed": need,
        "rule": (
            f"highest mean validation {SCORE} over the seeds; replaces the preset only if ahead "
            f"by more than {MARGIN:g} standard errors of a {n_scored}-digit accuracy"
        ),
    }


def run_search(
    steps: int, seeds: Sequence[int], candidates=CANDIDATES, budget=None
) -> dict[str, Any]:
    """Train and score every candidate on every seed (validation split); the result dict.

    `budget` (a ``DigitsBudget``, default: `steps` and the probe on all of train and val)
    sizes the runs; a search whose runs loaded the test split raises RuntimeError.
    """
    from scaled.tools.experiments import DigitsBudget, digits_run, summarise

    budget = budget or DigitsBudget(steps=steps, probe_split="val")
    env = environment("cpu")
    t0 = time.perf_counter()
    with recording_splits() as seen:
        pixels = pixel_row(budget)
        rows = []
        for flags, overrides in candidates:
            per_seed = [digits_run(budget, s, **overrides) for s in seeds]
            names = list(dict.fromkeys(k for m in per_seed for k in m))
            metrics = {n: summarise([m.get(n, math.nan) for m in per_seed]) for n in names}
            rows.append({"flags": flags, "overrides": overrides, "metrics": metrics})
            shown = ", ".join(f"{k} {metrics[k]['mean']:.3f}" for k in ("probe_top1", SCORE))
            print(f"  {flags}: {shown}", file=sys.stderr, flush=True)
    splits = sorted(set(seen))
    if "test" in splits:  # a search that saw the test digits chose on them
        raise RuntimeError("the recipe search loaded the test split; it must score on val only")
    return {
        "experiment": NAME,
        "command": f"python -m scaled.tools.recipe_search --steps {steps} --seeds {len(seeds)}",
        "seeds": list(seeds),
        "config": budget.to_json(),
        "splits_read": splits,
        "raw_pixels": pixels,
        "rows": rows,
        "choice": choose(rows, pixels["n_scored"]),
        "elapsed_seconds": round(time.perf_counter() - t0, 1),
        **finished(env),
    }


def _cell(summary: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    values = [f"{scale * v:.{digits}f}" for v in summary["values"]]
    return f"{scale * summary['mean']:.{digits}f}" + (
        f" ({', '.join(values)})" if len(values) > 1 else ""
    )


def markdown_table(result: dict[str, Any]) -> str:
    """The search's table (validation %, mean then the seeds' values) and its choice."""
    seeds = result["seeds"]
    head = f"seed {seeds[0]}"
    if len(seeds) > 1:
        head = f"mean ({', '.join(f'seed {s}' for s in seeds)})"
    lines = [
        f"| flags on top of `--preset demo` | steps | val linear % {head} | val kNN % {head} | "
        "train s / run |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        m = r["metrics"]
        steps = sorted({int(v) for v in m["steps"]["values"]})
        lines.append(
            f"| `{r['flags']}` | {', '.join(map(str, steps))} | {_cell(m['probe_top1'])} | "
            f"{_cell(m['knn_top1'])} | {m['train_seconds']['mean']:.0f} |"
        )
    px = result["raw_pixels"]
    lines.append(
        f"| raw pixels (no training) | 0 | {100 * px['probe_top1']:.1f} | "
        f"{100 * px['knn_top1']:.1f} | |"
    )
    c = result["choice"]
    chosen = "the preset stays" if c["flags"] == result["rows"][0]["flags"] else f"`{c['flags']}`"
    lines += [
        "",
        f"Choice ({c['rule']}): best row `{c['best_flags']}`, "
        f"{100 * c['gain_over_preset']:+.1f} points over the preset against "
        f"{100 * c['margin_needed']:.1f} needed; **{chosen}**. Splits read: "
        f"{', '.join(result['splits_read'])} (never test).",
    ]
    return "\n".join(lines)


def docs_body(result: dict[str, Any]) -> str:
    """The ``recipe-search`` section of docs/results.md, from the stored result."""
    n_val = result["raw_pixels"]["n_scored"]
    return "\n".join(
        [
            "### The recipe choice on the validation digits (issue 28)",
            "",
            f"Command: `{result['command']}` ({result['elapsed_seconds'] / 60:.1f} min)  ",
            f"Measured on: {provenance_line(result)}.",
            "",
            "Each row: the ablations' digits run (`scaled.tools.experiments.digits_run`: preset "
            "`demo` with the row's flags, one CPU process, whole epochs near the budget's steps "
            f"on the train split), then the fast probe and kNN (k = 20) fitted on train and scored "
            f"on the {n_val} validation digits; the test digits are not read.",
            "",
            markdown_table(result),
        ]
    )


def publish(result_dir: Path) -> None:
    """Copy ``result_dir/recipe_search.json`` into docs/results/ and rewrite the section."""
    target = checkout_root() / "docs" / "results" / f"{NAME}.json"
    source = result_dir / f"{NAME}.json"
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    result = json.loads(target.read_text(encoding="utf-8"))
    replace_section(docs_file(), SECTION, docs_body(result))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m scaled.tools.recipe_search`."""
    parser = argparse.ArgumentParser(
        prog="python -m scaled.tools.recipe_search",
        description="Score the demo's candidate recipes on the validation digits and choose.",
    )
    parser.add_argument("--steps", type=int, default=1000, help="steps per run (whole epochs)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per row (0..N-1)")
    parser.add_argument("--output-dir", type=Path, default=Path(f"runs/{NAME}"))
    parser.add_argument("--write-docs", action="store_true", help="into docs/ (git checkout)")
    args = parser.parse_args(argv)
    try:
        if args.steps < 1 or args.seeds < 1:
            raise UserError("--steps and --seeds must be >= 1; pass positive numbers")
        if args.write_docs:
            checkout_root()
        result = run_search(args.steps, range(args.seeds))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{NAME}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(markdown_table(result))
    if args.write_docs:
        publish(args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
