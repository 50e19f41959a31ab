"""Every public reference function has a twin of the same module and name in `scaled/`.

The contract (docs/design.md, "The contract"): `reference/NAME.py` and `scaled/NAME.py` hold the
same math under the same function names, positional parameters and keyword-only defaults; extras
on the torch side are keyword-only. The pairs are *enumerated*, not listed: a new public function
in a paired reference module fails here until it has a twin or is declared reference-only below
(with the reason). Each twin's agreement in float64 is checked here (EMA, effective rank) or in the
named test of tests/equivalence/ (losses, graph trainer), at `tol("float64")` of
`reference/tolerances.py`.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from reference.tolerances import tol
from tests.conftest import GRAPH_CASES, make_graph
from tests.gradient_checks import assert_gradient_close

ROOT = Path(__file__).resolve().parents[2]

# reference/NAME.py <-> scaled/NAME.py: the same module name on both sides.
PAIRED_MODULES = ("losses", "graph_train", "ema", "metrics")

# Reference modules without a scaled twin, and why.
REFERENCE_ONLY_MODULES = {
    "graphs": "synthetic graphs and their closed-form spectra: the ground truth of the tests",
    "power_iteration": "the exact power-iteration view of Eq. 10, shown on graphs only",
    "gha": "Sanger's rule on vectors (Eq. 11); at scale GHA is the LT(Cbar) of the MINC loss",
    "tolerances": "the tolerance table itself, shared by both sides (plain Python)",
}

# Public functions of paired modules without a twin, and why.
REFERENCE_ONLY_FUNCTIONS = {
    ("graph_train", "features_to_eigenvectors"): "F = D^1/2 phi for comparing with A's spectrum",
    ("metrics", "principal_angles"): "compares features with closed-form eigenvectors (graphs)",
    ("metrics", "subspace_distance"): "compares features with closed-form eigenvectors (graphs)",
    ("metrics", "column_cosines"): "compares features with closed-form eigenvectors (graphs)",
}

# A random-number argument is a numpy Generator on one side and a torch.Generator on the other;
# its name follows its library. Every other positional parameter has the same name.
RNG_NAMES = {"rng", "generator"}

# Twins whose float64 agreement is tested in another file of tests/equivalence/.
AGREEMENT_ELSEWHERE = {
    "losses": ("test_losses_equal", ("test_graph_form", "test_batch_form_float64")),
    "graph_train": (
        "test_graph_train",
        (
            "test_full_batch_trajectory_equals_reference",
            "test_minibatch_trajectory_equals_reference_on_the_same_pairs",
            "test_sample_pairs_follows_W",
        ),
    ),
}


def reference_modules() -> list[str]:
    return sorted(p.stem for p in (ROOT / "reference").glob("[!_]*.py"))


def public_functions(module) -> list[str]:
    return sorted(
        name
        for name, f in inspect.getmembers(module, inspect.isfunction)
        if f.__module__ == module.__name__ and not name.startswith("_")
    )


def twins() -> list[tuple[str, str]]:
    """(module, function) for every reference function that must have a scaled twin."""
    pairs = []
    for mod in PAIRED_MODULES:
        for name in public_functions(importlib.import_module(f"reference.{mod}")):
            if mod == "losses" and name.endswith("_grad"):
                continue  # hand-written gradients; the twin's gradient is autograd
            if (mod, name) not in REFERENCE_ONLY_FUNCTIONS:
                pairs.append((mod, name))
    return pairs


TWINS = twins()
TWIN_IDS = [f"{m}.{n}" for m, n in TWINS]


def _pair(mod: str, name: str):
    ref = getattr(importlib.import_module(f"reference.{mod}"), name)
    sca_mod = importlib.import_module(f"scaled.{mod}")
    assert hasattr(sca_mod, name), f"scaled.{mod} has no twin of reference.{mod}.{name}"
    return ref, getattr(sca_mod, name)


def _positional(f) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in inspect.signature(f).parameters.values() if p.kind in kinds]
    return ["<rng>" if n in RNG_NAMES else n for n in names]


def _keyword_only(f) -> dict[str, object]:
    params = inspect.signature(f).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


# --- the enumeration -----------------------------------------------------------------------


def test_every_reference_module_is_paired_or_reference_only():
    classified = set(PAIRED_MODULES) | set(REFERENCE_ONLY_MODULES)
    missing = sorted(set(reference_modules()) - classified)
    assert not missing, f"reference modules neither paired nor declared reference-only: {missing}"
    for mod in PAIRED_MODULES:
        assert (ROOT / "scaled" / f"{mod}.py").is_file(), f"scaled/{mod}.py is missing"


def test_reference_only_entries_exist():
    """A stale exception would hide nothing, but it would mislead a reader."""
    modules = set(reference_modules())
    assert set(REFERENCE_ONLY_MODULES) <= modules
    for mod, name in REFERENCE_ONLY_FUNCTIONS:
        assert hasattr(importlib.import_module(f"reference.{mod}"), name), (mod, name)


def test_the_enumeration_finds_the_pairs():
    # guards against the enumeration silently finding nothing
    assert sum(m == "losses" for m, _ in TWINS) >= 10
    for pair in [("graph_train", "fit"), ("ema", "ema_update"), ("metrics", "effective_rank")]:
        assert pair in TWINS


@pytest.mark.parametrize(("mod", "name"), TWINS, ids=TWIN_IDS)
def test_twin_exists_with_same_positional_parameters(mod, name):
    ref, twin = _pair(mod, name)
    assert inspect.isfunction(twin)
    assert _positional(twin) == _positional(ref)


@pytest.mark.parametrize(("mod", "name"), TWINS, ids=TWIN_IDS)
def test_twin_keeps_reference_keywords_and_defaults(mod, name):
    ref, twin = _pair(mod, name)
    ref_kw, twin_kw = _keyword_only(ref), _keyword_only(twin)
    for key, default in ref_kw.items():
        assert key in twin_kw, f"scaled.{mod}.{name} lacks keyword-only {key!r}"
        assert twin_kw[key] == default, f"{mod}.{name}({key}=...) default differs"


def _cited_equations(text: str) -> set[int]:
    """Equation numbers cited as ``Eq. 12``, ``Eq. 19, 21`` or ``Eq. 19-21``."""
    out: set[int] = set()
    for group in re.findall(r"Eq\. ?(\d+(?:\s*[-,]\s*\d+)*)", text):
        for part in group.split(","):
            lo, _, hi = part.strip().partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    return out


@pytest.mark.parametrize(("mod", "name"), TWINS, ids=TWIN_IDS)
def test_twin_docstring_cites_the_same_equations(mod, name):
    """The twin's docstring (or its module's) cites an equation the reference function cites.

    At least one, not all: the two sides may explain a function through different steps."""
    ref, twin = _pair(mod, name)
    want = _cited_equations(ref.__doc__ or "")
    got = _cited_equations((twin.__doc__ or "") + (sys.modules[twin.__module__].__doc__ or ""))
    assert not want or want & got, f"scaled.{mod}.{name} cites none of Eq. {sorted(want)}"


@pytest.mark.parametrize("name", [n for m, n in TWINS if m == "losses"])
def test_every_differentiable_reference_loss_has_a_grad(name):
    """The equivalence tests compare gradients against `<name>_grad` where it exists."""
    import reference.losses as ref

    statistics = {"second_moment", "second_moment_batch", "lower_triangular"}
    assert name in statistics or hasattr(ref, f"{name}_grad")


@pytest.mark.parametrize("mod", sorted({m for m, _ in TWINS}))
def test_every_twin_module_has_an_agreement_test(mod):
    if mod not in AGREEMENT_ELSEWHERE:
        here = sys.modules[__name__]
        assert any(n.startswith(f"test_{mod}_agrees") for n in dir(here)), mod
        return
    file, tests = AGREEMENT_ELSEWHERE[mod]
    other = importlib.import_module(f"tests.equivalence.{file}")
    for test in tests:
        assert callable(getattr(other, test, None)), f"tests/equivalence/{file}.py::{test}"


# --- agreement of the twins not covered elsewhere --------------------------------------------


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.8, 0.996, 1.0])
@pytest.mark.parametrize("shape", [(3,), (4, 4), (6, 2)])
def test_ema_agrees_with_reference(rate, shape):
    from reference.ema import ema_update as ref_ema
    from scaled.ema import ema_update as sca_ema

    g = np.random.default_rng(len(shape) + int(100 * rate))
    old, new = g.standard_normal(shape), g.standard_normal(shape)
    want = ref_ema(old, new, rate)
    t_old = torch.tensor(old, requires_grad=True)
    t_new = torch.tensor(new, requires_grad=True)
    got = sca_ema(t_old, t_new, rate)
    assert got.dtype == torch.float64
    assert_allclose(got.detach().numpy(), want, **tol("float64"))
    # gradient of the linear map: rate into old, 1 - rate into new
    got.sum().backward()
    assert_gradient_close(t_old.grad, np.full(shape, rate), "float64", "into old")
    assert_gradient_close(t_new.grad, np.full(shape, 1.0 - rate), "float64", "into new")
    # in place: the same numbers, in the same tensor (a registered buffer stays itself)
    buffer = torch.tensor(old)
    out = sca_ema(buffer, torch.tensor(new), rate, inplace=True)
    assert out is buffer
    assert_allclose(buffer.numpy(), want, **tol("float64"))


def test_ema_twin_rejects_what_the_reference_rejects():
    from scaled.ema import ema_update

    with pytest.raises(ValueError, match="equal shapes"):
        ema_update(torch.ones(2), torch.ones(3), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ema_update(torch.ones(2), torch.ones(2), 1.5)


def _rank_inputs() -> list[tuple[str, np.ndarray]]:
    g = np.random.default_rng(11)
    cases = [
        ("random", g.standard_normal((40, 6))),
        ("tall", g.standard_normal((513, 8)) * np.linspace(0.1, 3.0, 8)),
        ("rank_one", np.outer(g.standard_normal(20), g.standard_normal(5))),
        ("identity", np.eye(5)),
    ]
    for name in GRAPH_CASES:  # F = D^1/2 phi of a random table on each graph fixture
        W, k = make_graph(name)
        phi = g.standard_normal((W.shape[0], k))
        cases.append((name, np.sqrt(W.sum(axis=1))[:, None] * phi))
    return cases


@pytest.mark.parametrize(("case", "Z"), _rank_inputs(), ids=[c for c, _ in _rank_inputs()])
def test_metrics_agrees_effective_rank(case, Z):
    """`scaled.metrics.effective_rank` is the reference quantity: in float64 the only difference
    is the ``eps`` inside its log, at most ``k * eps = 1e-11`` relative here."""
    from reference.metrics import effective_rank as ref_rank
    from scaled.metrics import effective_rank as sca_rank

    assert_allclose(sca_rank(torch.tensor(Z)), ref_rank(Z), **tol("float64"))


def test_metrics_effective_rank_is_reexported_by_health():
    import scaled.health
    import scaled.metrics

    assert scaled.health.effective_rank is scaled.metrics.effective_rank
