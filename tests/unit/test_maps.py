"""Knowledge-map synthesis on synthetic curves with known intervals; report escaping and self-containment."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pytest

from medinterp.errors import MedinterpError
from medinterp.maps import (
    KnowledgeMap,
    compare,
    percentile_intervals,
    smooth,
    steepest_rise_window,
    technique_intervals,
)
from medinterp.results import Result

EVIL = "<script>alert(1)</script>"


def bumps(n, spans, height=10.0, noise=0.0, seed=0):
    """A curve that is ``height`` on the given inclusive layer spans and ~0 elsewhere."""
    c = np.random.default_rng(seed).normal(0, noise, n) if noise else np.zeros(n)
    for a, b in spans:
        c[a : b + 1] += height
    return c


# ---------------------------------------------------------------- primitives
def test_smooth_sigma_one_matches_scipy_and_keeps_mass():
    c = bumps(18, [(5, 6)])
    s = smooth(c, 1.0)
    assert s.argmax() in (5, 6)
    assert np.isclose(s.sum(), c.sum())  # mode="nearest" keeps the mass of an interior bump
    assert s[5] < c[5] and s[4] > 0  # it actually smooths
    np.testing.assert_array_equal(smooth(c, 0), c)


@pytest.mark.parametrize("spans", [[(3, 6)], [(0, 2), (10, 13)], [(2, 3), (8, 10), (14, 17)]])
def test_percentile_intervals_recover_planted_spans(spans):
    n = 18
    c = bumps(n, spans)
    # 75th percentile of an 18-layer curve: the top ~4-5 layers. Use a percentile that the spans fill.
    frac_on = sum(b - a + 1 for a, b in spans) / n
    got = percentile_intervals(c, percentile=100 * (1 - frac_on) + 1, min_len=2, max_intervals=3)
    assert [(d["start"], d["end"]) for d in got] == spans


def test_percentile_intervals_drop_short_runs_and_keep_largest_area():
    c = np.zeros(20)
    c[2] = 9  # a one-layer spike: shorter than min_len
    c[5:7] = 3  # small
    c[9:12] = 8  # big
    c[14:16] = 6  # medium
    c[18:20] = 7  # medium-large, at the end of the stack
    got = percentile_intervals(c, percentile=40, min_len=2, max_intervals=3)
    spans = [(d["start"], d["end"]) for d in got]
    assert (2, 2) not in spans
    assert spans == [(9, 11), (14, 15), (18, 19)]  # (5, 6) has the smallest area and is dropped
    assert all(d["area"] > 0 for d in got)
    assert [d["start"] for d in got] == sorted(d["start"] for d in got)


def test_flat_curve_has_no_interval():
    assert percentile_intervals(np.ones(10)) == []
    assert steepest_rise_window(np.ones(10)) is None


def test_steepest_rise_window_finds_planted_step():
    c = np.r_[np.zeros(8), np.linspace(0, 3, 4)[1:], 3 * np.ones(7)]  # rises over layers 7..10
    w = steepest_rise_window(smooth(c, 1.0), window=3)
    assert w is not None and 7 <= w["start"] <= 9 and w["end"] == w["start"] + 2
    assert w["score"] > 0
    assert steepest_rise_window(c[::-1], window=3) is None  # only falls: no rise to mark
    assert steepest_rise_window(c[::-1], window=3, min_rise=-10) is not None


def test_geometry_uses_rise_others_use_percentile():
    c = np.r_[np.zeros(9), np.ones(9) * 5.0]
    p = KnowledgeMap().params
    geo = technique_intervals(c, "geometry", p)
    sal = technique_intervals(c, "saliency", p)
    assert len(geo) == 1 and geo[0]["rule"] == "steepest_rise" and geo[0]["end"] - geo[0]["start"] == 2
    assert geo[0]["start"] <= 8 <= geo[0]["end"]
    assert sal and all(d["rule"] == "percentile" and d["start"] >= 8 for d in sal)


# ---------------------------------------------------------------- the map object
def _planted_map(**params):
    n = 18
    curves = {
        "drugs": {
            "geometry": np.r_[np.zeros(4), [1, 2, 3], 3 * np.ones(11)],
            "saliency": bumps(n, [(3, 7)], noise=0.05),
            "lesion": bumps(n, [(4, 8)], noise=0.05, seed=1),
            "patching": bumps(n, [(12, 15)], noise=0.05, seed=2),
        },
        "age": {"geometry": bumps(n, [(0, 17)]) + np.arange(n) ** 0.5, "saliency": bumps(n, [(0, 3)])},
    }
    return KnowledgeMap.from_curves(curves, model_name="synthetic", **params)


def test_map_consensus_and_summary():
    km = _planted_map()
    cons = km.consensus()
    assert cons.shape == (2, 18)
    d = km.concepts.index("drugs")
    # saliency (3-7) and lesion (4-8) overlap on 4..7, geometry's rise window (3-5) too
    assert cons[d, 4:6].min() >= 3
    assert cons[d, 0] == 0 and cons[d, 10] == 0 and cons[d, 13] == 1  # only patching at 12-15
    assert km.summary()["drugs"].startswith("layers 4–5 by 3 of 4 techniques")
    assert "not run: lesion, patching" in km.summary()["age"]
    # missing techniques draw no interval and stay NaN (never fake numbers)
    a = km.concepts.index("age")
    assert np.isnan(km.curves[a, km.techniques.index("lesion")]).all()
    assert not [iv for iv in km.intervals if iv["concept"] == "age" and iv["technique"] in ("lesion", "patching")]
    assert km.status["age"]["patching"] == "not run"


def test_rethreshold_changes_intervals_not_curves():
    km = _planted_map()
    strict = km.rethreshold(percentile=95, min_len=1, max_intervals=1)
    np.testing.assert_array_equal(strict.curves, km.curves)
    assert strict.params["percentile"] == 95 and km.params["percentile"] == 75
    sal = lambda m: [iv for iv in m.intervals if iv["concept"] == "drugs" and iv["technique"] == "saliency"]
    assert len(sal(strict)) == 1
    assert sum(i["end"] - i["start"] for i in sal(strict)) < sum(i["end"] - i["start"] for i in sal(km))
    with pytest.raises(MedinterpError, match="unknown parameter"):
        km.rethreshold(percentil=90)
    with pytest.raises(MedinterpError, match="percentile"):
        km.rethreshold(percentile=120)


def test_save_load_roundtrip(tmp_path):
    km = _planted_map(sigma=0.5)
    km.curve_names["saliency"] = "mean |dL/dw|"
    km.save(tmp_path / "m")
    k2 = Result.load(tmp_path / "m")
    assert isinstance(k2, KnowledgeMap)
    np.testing.assert_array_equal(k2.curves, km.curves)  # NaNs included
    assert k2.intervals == km.intervals and k2.params == km.params and k2.status == km.status
    assert k2.curve_names["saliency"] == "mean |dL/dw|"
    assert not any(p.suffix == ".pkl" for p in (tmp_path / "m").iterdir())


def test_bad_curves_raise_clear_errors():
    with pytest.raises(MedinterpError, match="drugs/lesion has shape"):
        KnowledgeMap.from_curves({"drugs": {"lesion": np.zeros(5)}}, n_layers=6)
    with pytest.raises(MedinterpError, match="unknown technique 'umap'"):
        KnowledgeMap.from_curves({"drugs": {"umap": np.zeros(5)}})


def test_figure_relative_depth_axis():
    km = _planted_map()
    f = km.figure(relative_depth=True)
    xs = [x for tr in f.data if tr.type == "bar" for x in (tr.base or [])]
    assert xs and min(xs) >= 0 and max(xs) < 1
    f2 = km.figure()
    assert max(x for tr in f2.data if tr.type == "bar" for x in (tr.base or [])) > 1


# ---------------------------------------------------------------- HTML
class _Attrs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls, self.scripts_with_src, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href", "action", "data", "poster") and v:
                self.urls.append(v)


def _html_checks(text):
    p = _Attrs()
    p.feed(text)
    external = [u for u in p.urls if re.match(r"\s*(https?:)?//", u, re.I)]
    assert not external, external
    assert not re.search(r"<(script|link)[^>]+(src|href)\s*=\s*[\"']?\s*(https?:)?//", text, re.I)
    return p


def test_report_escapes_labels_and_is_self_contained(tmp_path):
    km = KnowledgeMap.from_curves(
        {EVIL: {"lesion": bumps(10, [(2, 4)]), "saliency": bumps(10, [(6, 8)]), "patching": bumps(10, [(5, 6)])}},
        labels={EVIL: EVIL}, model_name=EVIL,
    )
    km.extras["attention"] = {EVIL: {"tokens": ["a", EVIL], "attention": np.ones((1, 2, 2)).tolist(),
                                     "head_names": [EVIL], "prompt": EVIL}}
    text = km.to_html(tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text(encoding="utf-8") == text
    # the raw label never appears unescaped; escaped forms do
    assert EVIL not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    p = _html_checks(text)
    assert "div" in p.tags
    assert text.count("var CircuitsVis") == 1  # bundle inlined once
    assert text.count("Plotly") > 0 and 'src="' not in text.split("<body>")[0].split("<script")[1][:200]


def test_compare_html(tmp_path):
    a = _planted_map()
    b = KnowledgeMap.from_curves({"drugs": {"lesion": bumps(30, [(10, 14)])}}, model_name="other")
    a.save(tmp_path / "a.map")
    text = compare([tmp_path / "a.html", b], out=tmp_path / "c.html")  # X.html → X.map beside it
    assert "relative depth" in text and "synthetic" in text and "other" in text
    _html_checks(text)
    with pytest.raises(MedinterpError, match="at least two"):
        compare([a])
    with pytest.raises(MedinterpError, match="not a saved knowledge map"):
        compare([a, tmp_path / "nope"])


# ---------------------------------------------------------------- the runner (fake techniques, tiny model)

import dataclasses as _dc


@_dc.dataclass
class FakeCurve(Result):
    kind = "test_fake_curve"
    curve: np.ndarray = None
    n_layers: int = 0

    def layer_curve(self):
        return self.curve

    def layer_curve_ci(self):
        return self.curve - 1, self.curve + 1

    def figure(self):
        import plotly.graph_objects as go

        return go.Figure(go.Scatter(y=self.curve))


def test_knowledge_map_runner_resumes_and_records_failures(tmp_path, monkeypatch):
    import medinterp.maps as maps
    from medinterp.testing import tiny_model

    model = tiny_model(n_layers=6)
    calls = []

    def fake(shape):
        def run(model, fam, kw, progress):
            calls.append((fam.name, shape, dict(kw)))
            return FakeCurve(curve=bumps(6, [shape]), n_layers=6)
        return run

    def broken(model, fam, kw, progress):
        calls.append((fam.name, "broken", kw))
        raise RuntimeError("boom")

    monkeypatch.setattr(maps, "RUNNERS", {"geometry": fake((1, 3)), "saliency": fake((2, 3)),
                                          "lesion": broken, "patching": maps.RUNNERS["patching"]})
    fams = {"drugs": {"concepts": ["a prompt"], "pairs": None}, EVIL: {"concepts": ["x"]}}
    km = maps.knowledge_map(model, fams, out_dir=tmp_path / "w", progress=False,
                            technique_kwargs={"saliency": {"max_prompts": 2}})
    assert km.status["drugs"]["saliency"] == "ok" and km.status["drugs"]["lesion"].startswith("failed: RuntimeError: boom")
    assert km.status["drugs"]["patching"].startswith("not run: no pair set")
    assert np.isnan(km.curves[:, km.techniques.index("lesion")]).all()
    assert ("drugs", (2, 3), {**maps.SIZES["full"]["saliency"], "max_prompts": 2}) in calls
    assert (tmp_path / "w" / "drugs" / "saliency" / "manifest.json").is_file()
    assert (tmp_path / "w" / "map" / "manifest.json").is_file()
    np.testing.assert_array_equal(km.curves_low[0, 1], bumps(6, [(2, 3)]) - 1)
    n_first = len(calls)
    # rerun: finished results load from the work dir; only the failed technique runs again
    km2 = maps.knowledge_map(model, fams, out_dir=tmp_path / "w", progress=False,
                             technique_kwargs={"saliency": {"max_prompts": 2}})
    assert [c for c in calls[n_first:] if c[1] != "broken"] == []
    assert len(calls) - n_first == 2  # lesion for each family
    np.testing.assert_array_equal(km2.curves, km.curves)
    # a map from the work dir alone (no model), e.g. of an interrupted run
    km3 = maps.map_from_work_dir(tmp_path / "w", families=list(fams))
    np.testing.assert_array_equal(km3.curves, km.curves)
    assert km3.status["drugs"]["lesion"] == "no saved result"
    # the report includes the saved technique figures and says what failed
    text = km2.to_html(tmp_path / "r.html")
    assert "failed: RuntimeError: boom" in text and EVIL not in text
    with pytest.raises(MedinterpError, match="unknown technique"):
        maps.knowledge_map(model, fams, techniques=["umap"], progress=False)


def test_runner_recomputes_when_the_job_changes(tmp_path, monkeypatch):
    import medinterp.maps as maps
    from medinterp.testing import tiny_model

    calls = []

    def run(model, fam, kw, progress):
        calls.append(dict(kw))
        return FakeCurve(curve=bumps(model.cfg.n_layers, [(1, 2)]), n_layers=model.cfg.n_layers)

    monkeypatch.setattr(maps, "RUNNERS", {"saliency": run})
    fams = {"drugs": {"concepts": ["p"]}}
    m = tiny_model(n_layers=4)
    maps.knowledge_map(m, fams, techniques=["saliency"], out_dir=tmp_path, progress=False)
    maps.knowledge_map(m, fams, techniques=["saliency"], out_dir=tmp_path, progress=False)
    assert len(calls) == 1  # resumed
    maps.knowledge_map(m, fams, techniques=["saliency"], quick=True, out_dir=tmp_path, progress=False)
    assert len(calls) == 2  # other sizes: not the same job
    km = maps.knowledge_map(tiny_model(n_layers=5), fams, techniques=["saliency"], quick=True, out_dir=tmp_path, progress=False)
    assert len(calls) == 3 and km.n_layers == 5  # another model: recomputed, never mixed in
