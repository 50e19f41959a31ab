"""The table of docs/derivation.md checked by execution: each row's tests run its functions.

For every row (one per equation) this runs the tests the row cites, under `sys.settrace` (call
events only), and checks that every reference function the row names was called by the row's
tests (either column: a twin test calls the reference it compares with), and every scaled twin
it names was called by the row's tests of the twin. A row that cites a test which checks an
identity with inline formulas, never calling the code it is cited for, fails here (Eq. 16-17
did: `test_alpha_bound_at_the_optimal_critic_is_the_divergence` now calls
`losses.alpha_mi_bound`). tests/derivation/test_derivation_table.py checks that the names exist.

The tests are called directly, not through pytest: each parametrised test with its first
parameter set, and the fixtures it takes built here (`FIXTURES`; the graph fixtures with their
first case). Tests under tests/distributed/ spawn gloo processes, where a profiler set in this
process sees nothing: those cells are not run (`SUBPROCESS_TESTS`), and the `distributed.*`
twins of a row that cites one (Eq. 15, 22) are left to those tests' own comparisons.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import GRAPH_CASES, make_graph
from tests.derivation.test_derivation_table import ROOT, _rows

SUBPROCESS_TESTS = ("distributed/",)
FIXTURES = {
    "graph": lambda: make_graph(GRAPH_CASES[0]),
    "any_graph": lambda: make_graph(GRAPH_CASES[0]),
    "rng": lambda: np.random.default_rng(0),
    "tmp_path": lambda: Path(tempfile.mkdtemp(prefix="derivation_row_")),
}


def named_functions(cell: str, package: str) -> set[tuple[str, str]]:
    """(file, function) of each `module.function` in a cell (parenthesised notes dropped)."""
    cell = re.sub(r"\([^)]*\)", "", cell.replace("autograd of ", ""))
    return {
        (str(ROOT / package / f"{module}.py"), name)
        for module, name in re.findall(r"\b([a-z_]+)\.(\w+)\b", cell)
    }


def cited_tests(cell: str, folder: str) -> list[tuple[str, str | None]]:
    """(tests/ path of the file, test-name pattern or None for every test) cited in a cell."""
    out: list[tuple[str, str | None]] = []
    current: str | None = None
    for part in (p.strip() for p in re.split(r"[;,]", cell)):
        named = re.match(r"(?:(\w+)/)?(test_\w+)(?:\.py)?(?:\s*::\s*(test_[\w*]+))?", part)
        more = re.match(r"::(test_[\w*]+)", part)
        if named:
            sub, file, test = named.groups()
            current = f"{sub or folder}/{file}"
        elif more and current is not None:
            test = more.group(1)
        else:
            continue
        out.append((current, test))
    return out


def _first_parameters(fn) -> dict:
    params: dict = {}
    for mark in getattr(fn, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names, values = mark.args[0], mark.args[1]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        first = values[0]
        if hasattr(first, "marks"):  # pytest.param(...): its values, one per name
            first = first.values
        elif len(names) == 1:
            first = (first,)
        params.update(zip(names, first))
    return params


def run_test(module, fn) -> None:
    """`fn` with its first parameter set and the fixtures of `FIXTURES` (and monkeypatch)."""
    kwargs = _first_parameters(fn)
    patch = pytest.MonkeyPatch()
    try:
        for name in inspect.signature(fn).parameters:
            if name in kwargs:
                continue
            if name == "monkeypatch":
                kwargs[name] = patch
            else:
                assert name in FIXTURES, f"{module.__name__}::{fn.__name__} takes fixture {name}"
                kwargs[name] = FIXTURES[name]()
        fn(**kwargs)
    finally:
        patch.undo()


_CALLS: dict[str, set[tuple[str, str]]] = {}  # test -> its calls (rows share tests: run once)


def _calls_of_one(module, fn) -> set[tuple[str, str]]:
    """(file, function) of every Python function called while `fn` ran (`sys.settrace`: the
    call events of Python frames only, so NumPy's C calls cost nothing; no line tracing)."""
    key = f"{module.__name__}::{fn.__name__}"
    if key not in _CALLS:
        called: set[tuple[str, str]] = set()

        def trace(frame, event, arg):
            called.add((frame.f_code.co_filename, frame.f_code.co_name))  # event == "call"

        previous = sys.gettrace()
        sys.settrace(trace)
        try:
            run_test(module, fn)
        finally:
            sys.settrace(previous)
        _CALLS[key] = called
    return _CALLS[key]


def calls_of(tests: list[tuple[str, str | None]]) -> tuple[set[tuple[str, str]], list[str]]:
    """(file, function) of every Python call made while the cited tests ran, and their names."""
    called: set[tuple[str, str]] = set()
    ran: list[str] = []
    for path, pattern in tests:
        module = importlib.import_module("tests." + path.replace("/", "."))
        regex = re.compile((pattern or "test_*").replace("*", r"\w*") + "$")
        fns = [
            f
            for n, f in vars(module).items()
            if regex.match(n) and n.startswith("test_") and inspect.isfunction(f)
        ]
        assert fns, f"{path}::{pattern} names no test"
        for fn in fns:
            called |= _calls_of_one(module, fn)
            ran.append(f"{path}::{fn.__name__}")
    return called, ran


def _split(cell: str, folder: str):
    tests = cited_tests(cell, folder)
    local = [t for t in tests if not t[0].startswith(SUBPROCESS_TESTS)]
    return local, len(tests) - len(local)


@pytest.mark.parametrize("row", _rows(), ids=lambda r: f"eq{r[0]}")
def test_row_tests_execute_the_functions_they_are_cited_for(row):
    eq, reference, twin, ref_tests, twin_tests, _ = row
    ref_run, _ = _split(ref_tests, "derivation")
    twin_run, spawned = _split(twin_tests, "")
    ref_called, ran_ref = calls_of(ref_run)
    twin_called, ran_twin = calls_of(twin_run)
    missing = sorted(
        f"reference/{Path(f).name}:{n}"
        for f, n in named_functions(reference, "reference") - ref_called - twin_called
    )
    assert not missing, f"Eq. {eq}: {missing} not called by {ran_ref + ran_twin}"
    want_twin = named_functions(twin, "scaled")
    if spawned:  # checked by the cited tests/distributed/ comparisons, in spawned processes
        want_twin = {(f, n) for f, n in want_twin if Path(f).name != "distributed.py"}
    missing = sorted(f"scaled/{Path(f).name}:{n}" for f, n in want_twin - twin_called)
    assert not missing, f"Eq. {eq}: {missing} not called by {ran_twin}"


@pytest.mark.parametrize("alpha", [2.0])
def _old_optimal_critic_test(graph, alpha):
    """The Eq. 16-17 test as it was: the identity with inline formulas, no library call."""
    W, _ = graph
    w = W.sum(1)
    P = np.outer(w, w)
    r = W / P
    divergence = np.sum(P * (r**alpha - alpha * r - (1 - alpha)) / (alpha * (alpha - 1)))
    J = np.sum(W * (r ** (alpha - 1) - 1)) / (alpha - 1) - np.sum(P * (r**alpha - 1)) / alpha
    np.testing.assert_allclose(J, divergence, rtol=1e-10)


def test_a_test_that_calls_inline_formulas_only_is_caught():
    """The check bites: the old Eq. 16-17 test never called `losses.alpha_mi_bound`; the one the
    row cites now does."""
    target = (str(ROOT / "reference" / "losses.py"), "alpha_mi_bound")
    assert target not in _calls_of_one(sys.modules[__name__], _old_optimal_critic_test)
    called, ran = calls_of([("derivation/test_spectral_loss", "test_alpha_bound_at_the_opt*")])
    assert [r.split("::")[1] for r in ran] == [
        "test_alpha_bound_at_the_optimal_critic_is_the_divergence"
    ]
    assert target in called
