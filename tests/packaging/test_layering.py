"""The rooms of the house and who may import whom, read from the code's own imports.

docs/design.md's rules: `reference/` imports nothing of `scaled/`; the `scaled` library never
imports `scaled.tools` nor an entry point (`scaled.pretrain`, `scaled.linear_eval`); no import
circle anywhere in `scaled/`. Every import counts, the ones inside functions included (a circle
closed inside a function is still a circle). Also the size limits of issue 27: entry points that
are only entry points, a config you can read, no function over 80 lines.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRY_POINTS = {"scaled.pretrain", "scaled.linear_eval"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports (at any depth of its code), as module names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from scaled import losses` imports scaled.losses; `from scaled.x import f`: scaled.x
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name not in ("scaled", "reference"):
                found.add(name)
    found.discard(module_name(path))
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted([*REPO.glob("reference/**/*.py"), *REPO.glob("scaled/**/*.py")])
    known = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, known) for p in paths}


def is_library(module: str) -> bool:
    return module.startswith("scaled.") and not module.startswith("scaled.tools")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


GRAPH = import_graph()


def test_reference_imports_nothing_of_scaled():
    bad = {m: sorted(d) for m, d in GRAPH.items() if m.startswith("reference") and
           any(x.startswith("scaled") for x in d)}  # fmt: skip
    assert not bad, bad


def test_the_library_never_imports_the_tools_nor_an_entry_point():
    bad = {
        m: sorted(x for x in d if x.startswith("scaled.tools") or x in ENTRY_POINTS)
        for m, d in GRAPH.items()
        if is_library(m) and m not in ENTRY_POINTS
    }
    assert not {m: d for m, d in bad.items() if d}, bad


def test_no_import_circle_in_scaled():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_the_checks_see_what_they_check():
    """The graph has the edges the rules are about, so the tests above could fail: a planted
    circle and a planted tool import are found."""
    assert "scaled.objective" in GRAPH["scaled.pretrain"]
    assert "scaled.features" in GRAPH["scaled.knn"]
    planted = {**GRAPH, "scaled.losses": GRAPH["scaled.losses"] | {"scaled.objective"}}
    assert find_cycle(planted) is not None
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def long_functions(limit: int = 80) -> list[str]:
    out = []
    for path in sorted(REPO.glob("scaled/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    return out


@pytest.mark.parametrize(
    ("path", "limit"), [("scaled/pretrain.py", 600), ("scaled/config.py", 650)]
)
def test_entry_point_and_config_stay_readable(path, limit):
    n = len((REPO / path).read_text().splitlines())
    assert n <= limit, f"{path}: {n} lines (limit {limit})"


def test_no_function_in_scaled_over_80_lines():
    assert not long_functions(), long_functions()
    assert long_functions(limit=5), "the counter finds nothing: it is broken"


def test_help_shows_the_option_groups():
    from scaled.config import GROUPS

    out = subprocess.run(
        [sys.executable, "scaled/pretrain.py", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    positions = [out.index(f"\n{title}:") for title in GROUPS.values()]
    assert positions == sorted(positions), "groups out of order"
    data = out[out.index(GROUPS["data"]) : out.index(GROUPS["model"])]
    assert "--data-dir" in data and "--lr " not in data
