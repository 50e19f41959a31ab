"""The one-hop table of docs/derivation.md names code and tests that exist.

Each row maps `Eq. N` to reference functions, their scaled twins, the tests of both and a
notebook. A rename that forgets the table fails here. Only reads files: no torch import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "derivation.md"
HEADER = "| Eq. | reference/ | scaled/ twin |"


def _rows() -> list[list[str]]:
    text = DOC.read_text()
    assert HEADER in text, f"{DOC} lost its table (header {HEADER!r})"
    table = text[text.index(HEADER) :]
    rows = [line for line in table.splitlines() if re.match(r"\| \d+ \|", line)]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}


def _check_functions(cell: str, package: str) -> None:
    for module, name in re.findall(r"\b([a-z_]+)\.(\w+)\b", cell):
        path = ROOT / package / f"{module}.py"
        assert path.is_file(), f"{package}/{module}.py (named for {module}.{name})"
        assert name in _defined(path), f"{package}.{module}.{name} does not exist"


def _check_tests(cell: str, folder: str) -> None:
    current: Path | None = None
    for part in (p.strip() for p in re.split(r"[;,]", cell)):
        named = re.match(r"(?:(\w+)/)?(test_\w+)(?:\.py)?(?:\s*::\s*(test_[\w*]+))?", part)
        more = re.match(r"::(test_[\w*]+)", part)
        if named:
            sub, file, test = named.groups()
            current = ROOT / "tests" / (sub or folder) / f"{file}.py"
            assert current.is_file(), current
        elif more and current is not None:
            test = more.group(1)
        else:
            continue
        if test:
            pattern = re.compile(test.replace("*", r"\w*") + "$")
            assert any(pattern.match(n) for n in _defined(current)), f"{current.name}::{test}"


def test_table_has_a_row_per_equation():
    numbers = [int(row[0]) for row in _rows()]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 23


@pytest.mark.parametrize("row", _rows(), ids=lambda r: f"eq{r[0]}")
def test_row_names_existing_code_and_tests(row):
    assert len(row) == 6, row
    _, reference, twin, ref_tests, twin_tests, notebooks = row
    _check_functions(reference, "reference")
    _check_functions(twin.replace("autograd of ", ""), "scaled")
    _check_tests(ref_tests, "derivation")
    _check_tests(twin_tests, "")
    for nn in re.findall(r"\b(\d\d)\b", notebooks):
        assert list((ROOT / "notebooks").glob(f"{nn}_*.py")), f"notebook {nn}"
