"""`python -m scaled.tools.linear_eval_docs LINEAR_EVAL_ARGS...`: linear_eval, then its table
into docs/results.md (the `linear_eval` section).

The entry point `scaled/linear_eval.py` returns and saves its result (JSON); publishing it in the
docs is this tool's job, so the library never imports `scaled.tools`. `linear_eval_section`
renders the section from the result JSON alone, stored as docs/results/linear_eval.json (what
`python -m scaled.tools.results` renders again).
"""

from __future__ import annotations

import json
import sys

from scaled.errors import UserError
from scaled.tools.provenance import (
    checkout_root,
    docs_file,
    environment,
    provenance_line,
    replace_section,
)


def format_result(result: dict) -> str:
    """The probe and kNN accuracies of one evaluation as a small table (percent)."""
    cols = [("linear probe", "top1", "top5"), ("kNN k=20", "knn20_top1", "knn20_top5"),
            ("kNN k=200", "knn200_top1", "knn200_top5")]  # fmt: skip
    head = f"{'':<8}" + "".join(f"{name:>14}" for name, *_ in cols)
    rows = [head, "-" * len(head)]
    for label, i in (("top-1", 1), ("top-5", 2)):
        vals = "".join(f"{100 * result[c[i]]:>13.1f}%" if c[i] in result else f"{'-':>14}"
                       for c in cols)  # fmt: skip
        rows.append(f"{label:<8}{vals}")
    return "\n".join(rows)


def linear_eval_section(result: dict, argv: list[str], provenance: str) -> str:
    """The `linear_eval` section of docs/results.md for one result of `scaled/linear_eval.py`."""
    pre = result["pretrain"]
    return "\n".join([
        "### Linear probe and kNN (`scaled/linear_eval.py`)",
        "",
        f"Command: `python -m scaled.tools.linear_eval_docs {' '.join(argv)}`  ",
        f"Measured on: {provenance}, {result['world_size']} process(es).",
        "",
        "```",
        format_result(result),
        "```",
        "",
        f"Checkpoint: `{result['checkpoint']}` ({pre['method']}, {pre['arch']}, step "
        f"{pre['step']}, {pre['epochs']} pretraining epochs). Mode `{result['mode']}`, "
        f"{result['epochs']} probe epochs, batch {result['batch_size']}; data: {result['data']} "
        f"({result['n_train']} train, {result['n_val']} held out). kNN: DINO's weighted vote, "
        f"T = 0.07, cosine similarity (`scaled/knn.py`). {result['seconds']:.0f} s.",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """linear_eval with ARGV; on success its section goes into docs/results.md."""
    from scaled.linear_eval import main as linear_eval_main

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        checkout_root()  # before the work: an installed package has no docs/
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    env = environment("cpu")

    def publish(result: dict) -> None:
        record = {**result, "argv": argv, "provenance": provenance_line(env)}
        path = docs_file().parent / "results" / "linear_eval.json"
        path.write_text(json.dumps(record, indent=2) + "\n")  # what `scaled.tools.results` reads
        body = linear_eval_section(record, argv, record["provenance"])
        replace_section(docs_file(), "linear_eval", body)

    return linear_eval_main(argv, publish=publish)


if __name__ == "__main__":
    sys.exit(main())
