"""The technique contract (issue 11): adding a technique is one module plus one registry line.

The toy technique below is the whole of such a module: a result class and a ``TECHNIQUE``. Registering
it gives the knowledge map a new column with no change to the map code.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing

import numpy as np
import pytest

from medinterp.techniques import REGISTRY, register
from medinterp.techniques.base import Family, Technique, TechniqueResult


# ---------------------------------------------------------------- a toy technique: the whole module
@dataclasses.dataclass
class ToyResult(TechniqueResult):
    """Per layer, the mean norm of the residual stream at the last token (a planted, checkable curve)."""

    kind = "test_contract_toy"
    norms: np.ndarray = None

    def layer_curve(self):
        return self.norms

    def layer_curve_ci(self):
        return self.norms * 0.9, self.norms * 1.1

    @property
    def curve_label(self):
        return "mean residual norm at the last token"


def _run_toy(model, family, *, progress=True, scale=1.0):
    import torch

    prompts = list(family.concepts)
    names = [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts[0], names_filter=lambda n: n in names)
    norms = np.array([float(cache[n][0, -1].norm()) * scale for n in names])
    return ToyResult(concept_set=family.name, params={"scale": scale}, norms=norms)


TECHNIQUE = Technique("toy", _run_toy, presets={"quick": {"scale": 1.0}, "full": {"scale": 2.0}},
                      needs=("concepts",), interval_rule="percentile", description="toy: residual norms")


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.delitem(REGISTRY, "toy", raising=False)
    register(TECHNIQUE)
    yield TECHNIQUE
    REGISTRY.pop("toy", None)


def test_a_registered_toy_technique_gets_a_map_row(toy_registered, tmp_path):
    import medinterp as mi
    from medinterp.testing import tiny_model

    tiny = tiny_model(n_layers=6)
    km = mi.knowledge_map(tiny, {"notes": {"concepts": ["A man with chest pain"]}}, techniques=["toy"],
                          quick=True, out_dir=tmp_path, progress=False, controls=False, rule="paper")
    assert km.techniques == ["toy"] and km.status["notes"]["toy"] == "ok", km.status
    direct = _run_toy(tiny, Family("notes", concepts=["A man with chest pain"]), scale=1.0)
    np.testing.assert_allclose(km.curves[0, 0], direct.layer_curve())  # the quick preset (scale 1) was used
    np.testing.assert_allclose(km.curves_high[0, 0], direct.layer_curve() * 1.1)
    assert km.curve_names["toy"] == "mean residual norm at the last token"
    assert km.rules == {"toy": "percentile"} and km.intervals  # marked by the registry's rule
    # saved and loaded like any result (the kind is registered by the class itself)
    back = mi.Result.load(tmp_path / "notes" / "toy")
    assert isinstance(back, ToyResult) and back.params == {"scale": 1.0}


# ---------------------------------------------------------------- every shipped technique: same shape
COMMON_FIELDS = ("concept_set", "params", "timings", "provenance")
COMMON_METHODS = ("layer_curve", "layer_curve_ci", "summary", "save", "load", "figure", "to_html")


def _result_type(tech: Technique) -> type:
    hints = typing.get_type_hints(tech.run_fn)
    assert "return" in hints, f"{tech.name}: run function has no return annotation naming its result class"
    return hints["return"]


@pytest.mark.parametrize("name", sorted(n for n in REGISTRY if n != "toy"))
def test_every_registered_technique_has_the_same_result_interface(name):
    tech = REGISTRY[name]
    assert set(tech.presets) >= {"quick", "full"} and tech.interval_rule in ("rise", "percentile")
    annotated = _result_type(tech)
    # a run function may return one of several result classes (a union); each must keep the contract
    for cls in typing.get_args(annotated) or (annotated,):
        assert inspect.isclass(cls) and issubclass(cls, TechniqueResult), f"{name}: {cls} is not a TechniqueResult"
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(COMMON_FIELDS) <= fields, f"{name}: lacks fields {sorted(set(COMMON_FIELDS) - fields)}"
        for m in COMMON_METHODS:
            assert callable(getattr(cls, m, None)), f"{name}: no {m}()"
        for m in ("layer_curve", "layer_curve_ci", "summary"):
            assert getattr(cls, m) is not getattr(TechniqueResult, m), f"{name}: {m}() is not implemented"
        assert isinstance(inspect.getattr_static(cls, "curve_label"), property)
        assert cls.curve_label is not TechniqueResult.curve_label, f"{name}: curve_label is the base default"
        assert inspect.signature(cls.summary).return_annotation in (str, "str"), f"{name}: summary() -> str"
        assert isinstance(getattr(cls, "_legacy_fields", None), dict)
