"""Notebook- and pandas-friendly results (issue #24 item 4): short repr, escaped ``_repr_html_``,
``to_dataframe()`` everywhere, rounded labelled summaries."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medinterp.errors import MedinterpError
from medinterp.maps.synthesis import KnowledgeMap
from medinterp.techniques.base import TechniqueResult


@dataclasses.dataclass
class BigResult(TechniqueResult):
    kind = "toy_display"
    values: np.ndarray = None

    def layer_curve(self):
        return self.values.mean(axis=0)

    def layer_curve_ci(self):
        c = self.layer_curve()
        return c - 0.01, c + 0.01


def _big() -> BigResult:
    vals = np.full((5000, 6), 0.1)
    vals[:, 3] = 0.123456789
    return BigResult(values=vals, concept_set="<b>drugs</b>",
                     provenance={"model": {"spec": "gemma-3-270m<script>"}})


def test_result_repr_is_one_short_line_and_html_is_escaped():
    r = _big()
    text = repr(r)
    assert "\n" not in text and len(text) < 300 and text.startswith("<BigResult ")
    assert "peak: layer 3" in text and "0.123" in text and "0.1234" not in text
    page = r._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;drugs" in page


def test_result_summary_rounds_to_three_significant_digits_with_a_label():
    s = _big().summary()
    assert "0.123" in s and "0.1235" not in s and "peak at layer 3 (toy_display layer curve 0.123)" in s


def test_result_to_dataframe_falls_back_to_the_layer_curve():
    df = _big().to_dataframe()
    assert list(df.columns) == ["layer", "value", "ci_low", "ci_high", "measure"] and len(df) == 6


def _map(n_fam: int = 40) -> KnowledgeMap:
    curves = {f"fam{i}": {"peak": np.r_[0, 0, 5, 5, 5, 0, 0, 0, 0, 0.0] + i} for i in range(n_fam)}
    curves["<img src=x onerror=alert(1)>"] = {"peak": np.arange(10.0)}
    return KnowledgeMap.from_curves(curves, n_layers=10, techniques=["peak", "step"],
                                    rules={"peak": "percentile", "step": "rise"}, model_name="m<script>")


def test_map_repr_is_short_and_html_is_escaped():
    km = _map()
    text = repr(km)
    assert "\n" not in text and len(text) < 400, text
    assert "families: 41 (fam0, fam1, fam2, fam3, …)" in text and "columns: 2 (peak, step)" in text
    assert "marked: 41 of 82 cells" in text
    page = km._repr_html_()
    assert "<script>" not in page and "m&lt;script&gt;" in page


def test_map_summary_prints_as_a_labelled_table_and_stays_a_dict():
    km = _map(2)
    s = km.summary()
    assert isinstance(s, dict) and s["fam0"].startswith("layers 2–4 by 1 of 2 techniques")
    lines = repr(s).splitlines()
    assert lines[0].split() == ["family", "headline"] and len(lines) == 4
    assert "&lt;img" in s._repr_html_() and "<img" not in s._repr_html_()
    assert list(s.to_dataframe().columns) == ["family", "headline"]


def test_map_to_dataframe_is_the_one_name_for_its_three_tables():
    km = _map(2)
    assert km.to_dataframe().equals(km.curves_frame())
    assert km.to_dataframe("cells").equals(km.cells_frame())
    assert km.to_dataframe("intervals").equals(km.table())
    with pytest.raises(MedinterpError, match="expected one of"):
        km.to_dataframe("everything")


def test_figures_is_always_a_list(monkeypatch):
    from medinterp import results

    monkeypatch.setitem(results._RENDERERS, "toy_display", lambda res: "one figure")
    assert _big().figures() == ["one figure"]
    monkeypatch.setitem(results._RENDERERS, "toy_display", lambda res: ["a", "b"])
    assert _big().figures() == ["a", "b"]
    assert _big().figure() == "a"  # figure() is the first of figures(), never a list
    monkeypatch.setitem(results._RENDERERS, "toy_display", lambda res: [])
    with pytest.raises(MedinterpError, match="drew no figure"):
        _big().figure()


def test_no_result_kind_overrides_figure_with_another_type():
    """One figure type: every shipped result kind inherits figure() (the first of figures()); only the map
    draws its own, and it is one plotly Figure too (tests/unit/test_maps.py)."""
    import medinterp  # noqa: F401
    import medinterp.viz  # noqa: F401
    from medinterp import results
    from medinterp.maps.synthesis import KnowledgeMap

    results.registered_kinds()
    kinds = dict(results._REGISTRY)
    assert {"geometry", "lesion", "causal_trace", "saliency", "patching", "band_validation"} <= set(kinds)
    own = sorted(k for k, cls in kinds.items() if cls.figure is not results.Result.figure)
    assert own == ["knowledge_map"] and kinds["knowledge_map"] is KnowledgeMap
