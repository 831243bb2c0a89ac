"""Knowledge-map synthesis on synthetic curves with known intervals; report escaping and self-containment."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pytest

import medinterp.viz  # noqa: F401  (registers the renderers figure()/to_html() use)
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


def test_rise_rule_and_percentile_rule_come_from_the_registry():
    from medinterp.techniques import REGISTRY

    c = np.r_[np.zeros(9), np.ones(9) * 5.0]
    p = KnowledgeMap().params
    assert REGISTRY["geometry"].interval_rule == "rise" and REGISTRY["saliency"].interval_rule == "percentile"
    geo = technique_intervals(c, REGISTRY["geometry"].interval_rule, p)
    sal = technique_intervals(c, REGISTRY["saliency"].interval_rule, p)
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
    assert "lesion not_run: not run; patching not_run" in km.summary()["age"]
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


def test_compare_figure_panels_do_not_overlap():
    """One panel per model with its own y axis; row labels in the margin; legend below, clear of the title."""
    from medinterp.viz.figures import compare_figure

    a = _planted_map()
    b = KnowledgeMap.from_curves({"drugs": {"lesion": bumps(30, [(10, 14)])}, "age": {"saliency": bumps(30, [(2, 5)])}},
                                 model_name="other")
    fig = compare_figure([a, b])
    lay = fig.layout
    d1, d2 = lay.yaxis.domain, lay.yaxis2.domain
    assert d1[0] > d2[1] or d2[0] > d1[1], (d1, d2)  # stacked, disjoint vertical bands
    assert tuple(lay.xaxis.domain) == tuple(lay.xaxis2.domain)  # each panel the full width, same x
    assert lay.legend.y < 0 and lay.legend.yanchor == "top"  # legend below the plots, not near the title
    assert lay.margin.l >= 200  # room for the row labels outside every panel
    bars = {tr.yaxis for tr in fig.data if tr.type == "bar"}
    assert bars == {"y", "y2"}


# ---------------------------------------------------------------- the runner (toy techniques, tiny model)
import dataclasses as _dc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402

from medinterp.techniques import REGISTRY  # noqa: E402
from medinterp.techniques.base import Family, Technique, TechniqueResult  # noqa: E402


@_dc.dataclass
class FakeCurve(TechniqueResult):
    kind = "test_fake_curve"
    curve: np.ndarray = None

    def layer_curve(self):
        return self.curve

    def layer_curve_ci(self):
        return self.curve - 1, self.curve + 1

    @property
    def curve_label(self):
        return "fake bump"


def _fake(name, shape, calls, *, rule="percentile", many=False, needs=("concepts",)):
    def run(model, fam, *, progress=True, **kw):
        calls.append((fam.name, name, dict(kw)))
        return FakeCurve(concept_set=fam.name, params=kw, curve=bumps(model.cfg.n_layers, [shape]))

    def run_many(model, fams, *, progress=True, on_result=None, **kw):
        calls.append((tuple(f.name for f in fams), name + "_many", dict(kw)))
        return [FakeCurve(concept_set=f.name, curve=bumps(model.cfg.n_layers, [shape])) for f in fams]

    return Technique(name, run, presets={"quick": {"n": 1}, "full": {"n": 2}}, needs=needs, interval_rule=rule,
                     run_many_fn=run_many if many else None)


#: the runner tests below check the job machinery of the model runs only (no control runs).
PAPER = dict(controls=False, rule="paper")


@pytest.fixture
def toys(monkeypatch):
    calls = []

    def broken(model, fam, **kw):
        calls.append((fam.name, "broken", kw))
        raise RuntimeError("boom")

    for t in (_fake("toy_rise", (1, 3), calls, rule="rise"), _fake("toy_pct", (2, 3), calls),
              Technique("toy_broken", broken), _fake("toy_pairs", (1, 2), calls, needs=("pairs",)),
              _fake("toy_many", (2, 4), calls, many=True)):
        monkeypatch.setitem(REGISTRY, t.name, t)
    return calls


def test_knowledge_map_runner_resumes_and_records_failures(tmp_path, toys, caplog):
    import medinterp.maps as maps
    from medinterp.testing import tiny_model

    model = tiny_model(n_layers=6)
    calls = toys
    techs = ["toy_rise", "toy_pct", "toy_broken", "toy_pairs"]
    fams = {"drugs": {"concepts": ["a prompt"], "pairs": None}, EVIL: {"concepts": ["x"]}}
    with caplog.at_level(logging.ERROR, logger="medinterp"):
        km = maps.knowledge_map(model, fams, techs, out_dir=tmp_path / "w", progress=False, **PAPER,
                                technique_kwargs={"toy_pct": {"max_prompts": 2}})
    assert km.techniques == techs and km.rules["toy_rise"] == "rise" and km.rules["toy_pct"] == "percentile"
    assert km.status["drugs"]["toy_pct"] == "ok" and km.status["drugs"]["toy_broken"].startswith("failed: RuntimeError: boom")
    assert "drugs/toy_broken failed: RuntimeError: boom" in caplog.text  # logged, not swallowed
    assert km.status["drugs"]["toy_pairs"].startswith("not run:") and "pairs" in km.status["drugs"]["toy_pairs"]
    assert np.isnan(km.curves[:, km.techniques.index("toy_broken")]).all()
    assert ("drugs", "toy_pct", {"n": 2, "max_prompts": 2}) in calls  # full preset + override
    assert km.curve_names["toy_pct"] == "fake bump"
    assert (tmp_path / "w" / "drugs" / "toy_pct" / "manifest.json").is_file()
    assert (tmp_path / "w" / "map" / "manifest.json").is_file()
    assert sorted(maps.saved_jobs(tmp_path / "w")) == sorted(f"{f}/{t}" for f in fams for t in ("toy_rise", "toy_pct"))
    np.testing.assert_array_equal(km.curves_low[0, 1], bumps(6, [(2, 3)]) - 1)
    n_first = len(calls)
    # rerun: finished results load from the work dir; only the failed technique runs again
    km2 = maps.knowledge_map(model, fams, techs, out_dir=tmp_path / "w", progress=False, **PAPER,
                             technique_kwargs={"toy_pct": {"max_prompts": 2}})
    assert [c for c in calls[n_first:] if c[1] != "broken"] == []
    assert len(calls) - n_first == 2  # the broken job of each family
    np.testing.assert_array_equal(km2.curves, km.curves)
    # a map from the work dir alone (no model), e.g. of an interrupted run
    km3 = maps.map_from_work_dir(tmp_path / "w", families=list(fams), techniques=techs)
    np.testing.assert_array_equal(km3.curves, km.curves)
    assert km3.status["drugs"]["toy_broken"] == "no saved result"
    # the report includes the saved technique results and says what failed
    text = km2.to_html(tmp_path / "r.html")
    assert "failed: RuntimeError: boom" in text and EVIL not in text
    with pytest.raises(MedinterpError, match="unknown technique"):
        maps.knowledge_map(model, fams, techniques=["umap"], progress=False)


def test_runner_recomputes_when_the_job_changes(tmp_path, toys):
    import medinterp.maps as maps
    from medinterp.concepts import load_concepts
    from medinterp.testing import tiny_model

    calls = toys
    run = lambda m, fams, **k: maps.knowledge_map(m, fams, ["toy_pct"], out_dir=tmp_path, progress=False, **PAPER, **k)
    m = tiny_model(n_layers=4)
    fams = {"drugs": {"concepts": ["p"]}}
    run(m, fams)
    run(m, fams)
    assert len(calls) == 1  # resumed
    run(m, fams, quick=True)
    assert len(calls) == 2  # other preset: not the same job
    km = run(tiny_model(n_layers=5), fams, quick=True)
    assert len(calls) == 3 and km.n_layers == 5  # another model: recomputed, never mixed in
    run(m, {"drugs": {"concepts": ["p", "q"]}})
    assert len(calls) == 4  # other prompts
    # an in-memory concept set edited in place: same name, version and counts, other content
    cs = load_concepts("drugs")
    run(m, {"drugs": {"concepts": cs}})
    n = len(calls)
    run(m, {"drugs": {"concepts": cs}})
    assert len(calls) == n
    item = dict(cs.items[0])
    key = next(k for k, v in item.items() if isinstance(v, str))
    cs.items[0] = {**item, key: item[key] + "x"}
    run(m, {"drugs": {"concepts": cs}})
    assert len(calls) == n + 1
    # a user file edited in place under the same path
    f = tmp_path / "prompts.yaml"
    from medinterp.concepts import data_path

    text = (data_path() / "drugs.yaml").read_text(encoding="utf-8")
    f.write_text(text, encoding="utf-8")
    run(m, {"drugs": {"concepts": f}})
    run(m, {"drugs": {"concepts": f}})
    assert len(calls) == n + 2
    f.write_text(text + "\n# edited\n", encoding="utf-8")
    run(m, {"drugs": {"concepts": f}})
    assert len(calls) == n + 3


def test_corrupt_saved_result_is_recomputed_not_failed(tmp_path, toys, caplog):
    import medinterp.maps as maps
    from medinterp.testing import tiny_model

    calls = toys
    m = tiny_model(n_layers=4)
    fams = {"drugs": {"concepts": ["p"]}}
    km = maps.knowledge_map(m, fams, ["toy_pct"], out_dir=tmp_path, progress=False, **PAPER)
    arrays = tmp_path / "drugs" / "toy_pct" / "arrays.safetensors"
    data = arrays.read_bytes()
    arrays.write_bytes(data[: len(data) // 2])  # torn write
    with caplog.at_level(logging.WARNING, logger="medinterp"):
        km2 = maps.knowledge_map(m, fams, ["toy_pct"], out_dir=tmp_path, progress=False, **PAPER)
    assert len(calls) == 2 and km2.status["drugs"]["toy_pct"] == "ok"
    assert "changed after it was saved (arrays.safetensors" in caplog.text and "recomputing" in caplog.text
    np.testing.assert_array_equal(km2.curves, km.curves)
    maps.knowledge_map(m, fams, ["toy_pct"], out_dir=tmp_path, progress=False, **PAPER)
    assert len(calls) == 2  # the rewritten result is trusted again


def test_shared_run_many_when_two_families_pending(tmp_path, toys):
    import medinterp.maps as maps
    from medinterp.testing import tiny_model

    calls = toys
    m = tiny_model(n_layers=5)
    fams = {"a": {"concepts": ["p"]}, "b": {"concepts": ["q"]}, "c": {"pairs": ["x"]}}
    km = maps.knowledge_map(m, fams, ["toy_many"], out_dir=tmp_path, progress=False, **PAPER)
    assert calls == [(("a", "b"), "toy_many_many", {"n": 2})]  # one shared call; "c" lacks concepts
    assert km.status["a"]["toy_many"] == km.status["b"]["toy_many"] == "ok"
    assert km.status["c"]["toy_many"].startswith("not run")
    assert (tmp_path / "a" / "toy_many" / "job.json").is_file() and (tmp_path / "b" / "toy_many" / "job.json").is_file()
    (tmp_path / "b" / "toy_many" / "job.json").unlink()  # only one family left: the single-family run
    maps.knowledge_map(m, fams, ["toy_many"], out_dir=tmp_path, progress=False, **PAPER)
    assert calls[1:] == [("b", "toy_many", {"n": 2})]


def test_family_inputs_one_shape_each():
    from medinterp.maps import family_specs

    f = family_specs(["drugs"])["drugs"]
    assert isinstance(f, Family) and f.concepts == "drugs" and f.pairs == "drug_pairs"
    mine = family_specs({"mine": {"concepts": ["p"], "label": "Mine"}, "fam": Family("x", concepts=["q"])})
    assert mine["mine"].label == "Mine" and mine["mine"].pairs is None and mine["fam"].name == "fam"
    with pytest.raises(MedinterpError, match=r"unknown key\(s\) \['concept_set'\]"):
        family_specs({"mine": {"concept_set": "drugs"}})
    with pytest.raises(MedinterpError, match="expected a Family or a mapping"):
        family_specs({"mine": ("drugs", "drug_pairs")})
    with pytest.raises(MedinterpError, match="unknown concept family 'drugz'"):
        family_specs(["drugz"])


def test_bad_map_params_rejected_before_any_work(toys):
    import medinterp.maps as maps

    with pytest.raises(MedinterpError, match="percentile must be in"):
        maps.knowledge_map(None, {"d": {"concepts": ["p"]}}, ["toy_pct"], percentile=150, progress=False)
    with pytest.raises(MedinterpError, match="unknown parameter"):
        maps.knowledge_map(None, {"d": {"concepts": ["p"]}}, ["toy_pct"], percentil=50, progress=False)
    assert toys == []  # nothing ran (and the None model was never touched)


# ---------------------------------------------------------------- Result format
@_dc.dataclass
class _Legacy(TechniqueResult):
    kind = "test_legacy_result"
    _legacy_fields = {"concept": "concept_set", "timing": "timings"}
    values: np.ndarray = None


def test_result_format_legacy_newer_and_file_rules(tmp_path):
    import os

    r = _Legacy(concept_set="drugs", timings={"all": 1.0}, values=np.arange(3.0)).save(tmp_path / "r")
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    for p in (tmp_path / "r").iterdir():
        assert oct(os.stat(p).st_mode & 0o777) == "0o644", p.name
    # a 0.1.0 (format 1) directory with the old field names
    old = dict(manifest, format_version=1)
    old["fields"] = {"concept": "drugs", "timing": {"all": 2.0}}
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(old))
    back = Result.load(tmp_path / "r")
    assert isinstance(back, _Legacy) and back.concept_set == "drugs" and back.timings == {"all": 2.0}
    np.testing.assert_array_equal(back.values, r.values)
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(dict(manifest, format_version=9)))
    with pytest.raises(MedinterpError, match="format 9 is newer"):
        Result.load(tmp_path / "r")
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(dict(manifest, tables=["../../etc/passwd"])))
    with pytest.raises(MedinterpError, match="not plain field names"):
        Result.load(tmp_path / "r")
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(dict(manifest, kind="no_such_kind")))
    with pytest.raises(MedinterpError, match="unknown result kind 'no_such_kind'"):
        Result.load(tmp_path / "r")


def test_legacy_map_params_load_with_their_rules(tmp_path):
    km = _planted_map()
    km.save(tmp_path / "m")
    man = json.loads((tmp_path / "m" / "manifest.json").read_text())
    man["format_version"] = 1
    man["fields"].pop("rules")
    man["fields"]["params"]["rise_techniques"] = ["geometry"]
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(man))
    back = Result.load(tmp_path / "m")
    assert back.rules == km.rules and back.intervals == km.intervals


def test_shared_run_saves_each_family_as_it_finishes(tmp_path):
    """An interrupt inside a shared run keeps the families already finished (issue 14: geometry was saved
    only as one batch at the end)."""
    import medinterp as mi
    from medinterp.techniques import REGISTRY

    from medinterp.testing import tiny_model

    tiny = tiny_model(n_layers=3)

    def run_many(model, fams, *, progress=True, on_result=None, **kw):
        on_result(0, FakeCurve(concept_set=fams[0].name, curve=np.arange(3.0)))
        raise KeyboardInterrupt  # the second family never finishes

    tech = Technique("toy_many", lambda m, f, **k: FakeCurve(concept_set=f.name, curve=np.arange(3.0)),
                     presets={"quick": {}, "full": {}}, run_many_fn=run_many)
    REGISTRY["toy_many"] = tech
    try:
        fams = {"a": {"concepts": ["A man with chest pain"]}, "b": {"concepts": ["A woman with a cough"]}}
        with pytest.raises(KeyboardInterrupt):
            mi.knowledge_map(tiny, fams, techniques=["toy_many"], out_dir=tmp_path, progress=False, **PAPER)
        assert (tmp_path / "a" / "toy_many" / "manifest.json").is_file()
        assert not (tmp_path / "b" / "toy_many" / "manifest.json").exists()
    finally:
        REGISTRY.pop("toy_many")


def test_same_command_twice_gives_bit_identical_maps(tmp_path):
    """Issue 14: two runs with the same inputs and seed in fresh work dirs give bit-identical saved
    curves, effects, intervals and robustness (controls, twin and all four techniques on a tiny model)."""
    import medinterp as mi
    from medinterp.testing import tiny_model

    kms = []
    for run in ("one", "two"):
        tiny = tiny_model(n_layers=3)
        kms.append(mi.knowledge_map(tiny, ["diseases"], quick=True, out_dir=tmp_path / run, progress=False,
                                    n_perm=200, n_resamples=4))
    a, b = (tmp_path / r / "map" / "curves.csv" for r in ("one", "two"))
    assert a.read_bytes() == b.read_bytes()
    np.testing.assert_array_equal(kms[0].curves, kms[1].curves)
    np.testing.assert_array_equal(kms[0].control_stats, kms[1].control_stats)
    assert kms[0].intervals == kms[1].intervals and kms[0].status == kms[1].status


def test_a_result_that_is_unavailable_shows_its_reason_not_a_band(tmp_path):
    """A technique that ran but has no curve (e.g. the model does not know the family) says so in the map."""
    import dataclasses as dc

    import medinterp as mi
    from medinterp.testing import tiny_model

    @dc.dataclass
    class Unknown(FakeCurve):
        kind = "toy_unknown"

        def unavailable(self):
            return "not known by the model: 0 of 3 pairs known"

    tech = Technique("toy_unknown", lambda m, f, **k: Unknown(concept_set=f.name, curve=np.full(3, np.nan)),
                     presets={"quick": {}, "full": {}})
    REGISTRY["toy_unknown"] = tech
    try:
        km = mi.knowledge_map(tiny_model(n_layers=3), {"a": {"concepts": ["A man with chest pain"]}},
                              techniques=["toy_unknown"], progress=False, **PAPER)
    finally:
        REGISTRY.pop("toy_unknown")
    assert km.status["a"]["toy_unknown"] == "not known by the model: 0 of 3 pairs known"
    assert km.intervals == [] and "toy_unknown not_known: not known by the model" in km.summary()["a"]
