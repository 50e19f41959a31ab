"""Every generated table of docs/results.md and README, from the stored records: ``python -m
scaled.tools.results`` (``make results``).

Each section between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` is rendered from JSON
records in ``docs/results/`` by the function of the tool that measured it (one renderer per
table: ``experiments.docs_section``, ``experiments.claims_section``, ``demo.summary_section``,
``demo.docs_section``, ``demo.readme_section``, ``recipe_search.docs_body``,
``provenance.results_section`` with the signature and gradvar tables); ``SKIPPED`` names the
sections that have no stored record here, and why. ``--check`` writes nothing and exits 1 when a
section differs from what its records give (a cell edited by hand, a record changed without
regenerating) or when a file has a marked section that is neither generated nor skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from scaled.errors import UserError
from scaled.tools.provenance import checkout_root, markers

SKIPPED: dict[str, str] = {
    "feature-norm-minc": "scaled/tools/feature_norm.py stores no JSON record in docs/results/",
    "feature-norm-spectral": "scaled/tools/feature_norm.py stores no JSON record in docs/results/",
    "minc-loop": "README's code example, not a table: tests/equivalence/test_objective.py runs it",
}


@dataclass(frozen=True)
class Section:
    """One generated section: the file it is in, its marker name and its renderer (the
    checkout root -> the markdown between the markers)."""

    file: str
    name: str
    render: Callable[[Path], str]


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _demo_results(root: Path) -> list[dict]:
    paths = sorted((root / "docs" / "results").glob("demo_seed*.json"))
    if not paths:
        raise UserError("no docs/results/demo_seed*.json; run `make demo ARGS=...` --write-docs")
    return [_load(p) for p in paths]


def _choice(root: Path) -> dict | None:
    path = root / "docs" / "results" / "recipe_search.json"
    return _load(path)["choice"] if path.is_file() else None


def _experiments(root: Path) -> str:
    from scaled.tools.experiments import docs_section

    return docs_section(root / "docs" / "results", root / "docs" / "results.md")


def _claims(root: Path) -> str:
    from scaled.tools.experiments import claims_section

    return claims_section(root / "docs" / "results")


def _demo(root: Path) -> str:
    from scaled.tools.demo import summary_section

    return summary_section(_demo_results(root), _choice(root))


def _demo_seed(seed: int) -> Callable[[Path], str]:
    def render(root: Path) -> str:
        from scaled.tools.demo import docs_section

        return docs_section(_load(root / "docs" / "results" / f"demo_seed{seed}.json"))[1]

    return render


def _readme_demo(root: Path) -> str:
    from scaled.tools.demo import readme_section

    return readme_section(_demo_results(root), _choice(root))


def _recipe_search(root: Path) -> str:
    from scaled.tools.recipe_search import docs_body

    return docs_body(_load(root / "docs" / "results" / "recipe_search.json"))


def _signature(root: Path) -> str:
    from scaled.tools.provenance import results_section
    from scaled.tools.signature import _tag, markdown_table

    heading = "### MINC's signature on the digits: ordering and decorrelation of `Cbar`"
    return results_section("signature", heading, root / "docs" / "results", _tag, markdown_table)


def _gradvar(root: Path) -> str:
    from scaled.tools.gradvar import _tag, markdown_table
    from scaled.tools.provenance import results_section

    heading = "### Gradient variance on the digits network (`scaled/tools/gradvar.py`)"
    return results_section("gradvar", heading, root / "docs" / "results", _tag, markdown_table)


def _linear_eval(root: Path) -> str:
    """The linear_eval section from docs/results/linear_eval.json, where one is stored."""
    path = root / "docs" / "results" / "linear_eval.json"
    heading = "### Linear probe and kNN (`scaled/linear_eval.py`)"
    if not path.is_file():
        return (
            f"{heading}\n\nRemoved in issue 28: the table was a 300-step checkpoint under a "
            "3100-step command and no record of it was stored. The demo tables above are the "
            "same fast probe and kNN at the demo's own checkpoints; `python -m "
            "scaled.tools.linear_eval_docs --checkpoint RUN` measures this table again."
        )
    from scaled.tools.linear_eval_docs import linear_eval_section

    r = _load(path)
    return linear_eval_section(r, r["argv"], r["provenance"])


def _bench(name: str) -> Callable[[Path], str]:
    """The renderer of benchmark `name`'s section (`scaled.tools.bench.<name>.docs_section`,
    from docs/results/bench_<name>.json)."""

    def render(root: Path) -> str:
        import importlib

        return importlib.import_module(f"scaled.tools.bench.{name}").docs_section(root)

    return render


def _loader_cores(root: Path) -> str:
    from scaled.tools.bench.loader import cores_section

    return cores_section(root)


def _gpu_check_dry_run(root: Path) -> str:
    from scaled.tools.gpu_check import results_section

    return results_section(_load(root / "docs" / "results" / "gpu_check_dry_run.json"))


def _code_paths(root: Path) -> str:
    from scaled.tools.gpu_check import paths_table

    runs = {k: root / "docs" / "results" / f"gpu_check_{k}.json" for k in ("dry_run", "cuda")}
    return paths_table(*(_load(p) if p.is_file() else None for p in runs.values()))


def _memory(root: Path) -> str:
    from scaled.tools.memory import render_memory_section

    return render_memory_section(_load(root / "docs" / "results" / "memory.json"))


SECTIONS: tuple[Section, ...] = (
    Section("docs/results.md", "claims", _claims),
    Section("docs/results.md", "experiments", _experiments),
    Section("docs/results.md", "demo", _demo),
    *(Section("docs/results.md", f"demo-seed{n}", _demo_seed(n)) for n in (0, 1, 2)),
    Section("docs/results.md", "recipe-search", _recipe_search),
    Section("docs/results.md", "linear_eval", _linear_eval),
    Section("docs/results.md", "signature", _signature),
    Section("docs/results.md", "gradvar", _gradvar),
    Section("README.md", "readme-demo", _readme_demo),
    *(Section("docs/results.md", f"bench-{n}", _bench(n)) for n in ("losses", "variance", "step")),
    Section("docs/results.md", "bench-loader", _bench("loader")),
    Section("docs/scaling.md", "bench-profile", _bench("profile")),
    Section("docs/scaling.md", "loader-cores", _loader_cores),
    Section("docs/results.md", "gpu-check-dry_run", _gpu_check_dry_run),
    Section("docs/scaling.md", "code-paths", _code_paths),
    Section("docs/scaling.md", "memory", _memory),
)


def section_names(text: str) -> list[str]:
    """The names of the marked sections of a markdown text, in order."""
    import re

    return re.findall(r"<!-- (\S+):begin -->", text)


def current_body(text: str, name: str) -> str | None:
    """The text between the markers of `name` (stripped), None without them."""
    begin, end = markers(name)
    if text.count(begin) != 1 or text.count(end) != 1:
        return None
    return text.split(begin, 1)[1].split(end, 1)[0].strip()


def replace_body(text: str, name: str, body: str) -> str:
    """`text` with the section `name` holding `body` (as ``provenance.replace_section``)."""
    begin, end = markers(name)
    head, rest = text.split(begin, 1)
    return head + f"{begin}\n{body.strip()}\n{end}" + rest.split(end, 1)[1]


def regenerate(root: Path, check: bool) -> list[str]:
    """Render every section of `SECTIONS` under `root`; write them (or, with `check`, only
    compare). Returns the problems found: sections that differ or are missing, and marked
    sections neither generated nor in `SKIPPED`."""
    problems: list[str] = []
    for file in dict.fromkeys(s.file for s in SECTIONS):
        path = root / file
        text = path.read_text(encoding="utf-8")
        new = text
        known = {s.name for s in SECTIONS if s.file == file}
        for name in section_names(text):
            if name not in known and name not in SKIPPED:
                problems.append(f"{file}: section {name} is neither generated nor skipped")
        for s in (s for s in SECTIONS if s.file == file):
            body = s.render(root).strip()
            now = current_body(new, s.name)
            if now is None:
                problems.append(f"{file}: no single pair of markers for section {s.name}")
                continue
            if now != body:
                problems.append(f"{file}: section {s.name} differs from its records")
                new = replace_body(new, s.name, body)
        if not check and new != text:
            path.write_text(new, encoding="utf-8")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m scaled.tools.results [--check]`: regenerate (or check) every generated table."""
    parser = argparse.ArgumentParser(
        prog="python -m scaled.tools.results",
        description="Regenerate the tables of docs/results.md and README from docs/results/*.json.",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a table differs"
    )
    parser.add_argument("--root", type=Path, default=None, help="(default: this checkout)")
    args = parser.parse_args(argv)
    try:
        root = args.root or checkout_root()
        problems = regenerate(root, args.check)
    except (UserError, OSError, KeyError) as err:
        print(f"error: {err}; run from a git clone with docs/results/", file=sys.stderr)
        return 2
    for name, why in SKIPPED.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    if args.check and problems:
        for p in problems:
            print(f"error: {p}; run `python -m scaled.tools.results` (make results)")
        return 1
    if not args.check:
        for p in problems:
            print(f"regenerated: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
