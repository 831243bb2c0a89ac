"""``preset=`` on the technique functions (issue #24 item 4): the API reproduces a map cell exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import medinterp as mi
from medinterp.errors import MedinterpError
from medinterp.results import Result

SKIP_FIELDS = {"timings", "provenance", "memory"}


def _same(a: Result, b: Result) -> None:
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        if f.name in SKIP_FIELDS:
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        elif type(x).__name__ == "DataFrame":
            import pandas as pd

            pd.testing.assert_frame_equal(x.reset_index(drop=True), y.reset_index(drop=True), check_dtype=False)
        elif f.name == "params":
            assert _jsonable_eq(x, y), f.name


def _jsonable_eq(x, y) -> bool:
    import json

    return json.loads(json.dumps(x, default=str)) == json.loads(json.dumps(y, default=str))


@pytest.fixture(scope="module")
def quick_map(tmp_path_factory):
    from medinterp import maps
    from medinterp.testing import tiny_model

    model = tiny_model(n_layers=3, d_model=64, n_heads=4, d_mlp=128, seed=0)
    work = tmp_path_factory.mktemp("quick_map")
    km = maps.knowledge_map(model, ["drugs"], ["geometry", "saliency", "lesion", "patching"], quick=True,
                            controls=False, rule="paper", progress=False, out_dir=work)
    return model, km


@pytest.mark.parametrize("name,func,inputs", [
    ("geometry", "geometry", "concepts"),
    ("saliency", "saliency", "pairs"),
    ("lesion", "lesion", "pairs"),
    ("patching", "causal_trace", "pairs"),
])
def test_preset_quick_reproduces_the_map_cell(quick_map, name, func, inputs):
    from medinterp.maps.run import family_specs

    model, km = quick_map
    cell = mi.Result.load(km.result_dirs[f"drugs/{name}"])
    fam = family_specs(["drugs"])["drugs"]
    api = getattr(mi, func)(model, getattr(fam, inputs), preset="quick", progress=False)
    _same(cell, api)


def test_preset_explicit_keyword_wins_and_bad_preset_is_named():
    from medinterp.techniques import REGISTRY

    seen = {}
    wrapped = REGISTRY["saliency"].with_presets(lambda model, x, **kw: seen.update(kw) or kw)
    wrapped(None, "x", preset="quick", max_prompts=7)
    assert seen == {**REGISTRY["saliency"].presets["quick"], "max_prompts": 7}
    seen.clear()
    wrapped(None, "x", n_boot=5)  # no preset: only what was given
    assert seen == {"n_boot": 5}
    with pytest.raises(MedinterpError, match="preset must be one of"):
        wrapped(None, "x", preset="fast")


def test_preset_naming_an_unknown_parameter_fails_at_wrap_time():
    from medinterp.techniques.base import Technique

    t = Technique("toy_presets", lambda m, f, **p: None, presets={"quick": {"n": 1}, "full": {}})

    def fn(model, x, *, m=0):
        return m

    with pytest.raises(MedinterpError, match="does not take"):
        t.with_presets(fn)


@pytest.mark.parametrize("name", ["geometry", "saliency", "lesion", "patching"])
def test_every_shipped_result_has_a_short_repr_and_a_dataframe(quick_map, name):
    _, km = quick_map
    res = mi.Result.load(km.result_dirs[f"drugs/{name}"])
    text = repr(res)
    assert "\n" not in text and len(text) < 400, text
    assert "<table>" in res._repr_html_()
    df = res.to_dataframe()
    assert type(df).__name__ == "DataFrame" and len(df) > 0


def test_patching_result_to_dataframe_keeps_to_frame(quick_map):
    model, _ = quick_map
    r = mi.patch(model, [("a man with chest pain has", "a man with cough pain has", " angina", " pneumonia")],
                 site="resid_pre", progress=False, n_boot=10)
    assert r.to_frame().equals(r.to_dataframe()) and len(r.to_dataframe()) == r.values.size
