"""Every public function of `reference.losses` has a twin in `scaled.losses` (DESIGN.md)."""

from __future__ import annotations

import inspect

import pytest

import reference.losses as ref
import scaled.losses as sca


def reference_functions() -> list[str]:
    """Public functions defined in reference.losses, without the hand-written `*_grad`."""
    return sorted(
        name
        for name, f in inspect.getmembers(ref, inspect.isfunction)
        if f.__module__ == ref.__name__ and not name.startswith("_") and not name.endswith("_grad")
    )


def _positional(f) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in inspect.signature(f).parameters.values() if p.kind in kinds]


def _keyword_only(f) -> dict[str, object]:
    params = inspect.signature(f).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def test_reference_has_functions_to_pair():
    # guards against the enumeration silently finding nothing
    assert len(reference_functions()) >= 10


@pytest.mark.parametrize("name", reference_functions())
def test_twin_exists_with_same_positional_parameters(name):
    assert hasattr(sca, name), f"scaled.losses has no twin of reference.losses.{name}"
    twin = getattr(sca, name)
    assert inspect.isfunction(twin)
    assert _positional(twin) == _positional(getattr(ref, name))


@pytest.mark.parametrize("name", reference_functions())
def test_twin_keeps_reference_keywords_and_defaults(name):
    ref_kw = _keyword_only(getattr(ref, name))
    twin_kw = _keyword_only(getattr(sca, name))
    for key, default in ref_kw.items():
        assert key in twin_kw, f"scaled.losses.{name} lacks keyword-only {key!r}"
        assert twin_kw[key] == default, f"{name}({key}=...) default differs"


@pytest.mark.parametrize("name", reference_functions())
def test_every_differentiable_reference_function_has_a_grad(name):
    """The equivalence tests compare gradients against `<name>_grad` where it exists."""
    statistics = {"second_moment", "second_moment_batch", "lower_triangular"}
    assert name in statistics or hasattr(ref, f"{name}_grad")
