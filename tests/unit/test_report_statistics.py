"""The report draws what the statistics say (issue #24, item 3).

The active rule's parameters only; effect over control on a diverging scale centred at 0 with the marked
layers outlined; axes clipped to meaningful ranges; one colour per technique across figures; notes cut at
word boundaries, never "nan" in a hover. All on a small synthetic map (no model, well under a second each).
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd

import medinterp.viz  # noqa: F401  (registers the renderers)
from medinterp.maps import KnowledgeMap
from medinterp.maps.controls import CONTROL_STATS
from medinterp.viz.figures import control_curves_figure, curve_heatmaps, map_figure
from medinterp.viz.report import active_rule_params
from medinterp.viz.style import color_of, metric_range, short_note

L = 6
NAN_WORD = re.compile(r"\bnan\b", re.I)
LONG_REASON = ("control not comparable: intact_logp -4.54 vs -4.82 after matching (SMD 0.42 > 0.25), "
               "answer_prior -20.4 vs -20.3, baseline confidence differs across the matched templates")


def _stats(effect, marked=(), p=0.01):
    """``[n_stats, L]`` control statistics: ``effect`` per layer, CI ± 0.1, ``p`` everywhere, twin = effect / 2."""
    k = {n: i for i, n in enumerate(CONTROL_STATS)}
    a = np.full((len(CONTROL_STATS), L), np.nan)
    e = np.asarray(effect, float)
    a[k["effect"]], a[k["ci_low"]], a[k["ci_high"]], a[k["p_adj"]] = e, e - 0.1, e + 0.1, p
    a[k["effect_twin"]], a[k["twin_low"]], a[k["twin_high"]], a[k["p_adj_twin"]] = e / 2, e / 2 - 0.1, e / 2 + 0.1, p
    a[k["marked"]] = [1.0 if l in marked else 0.0 for l in range(L)]
    a[k["robustness"]] = 1.0
    return a


def _toy(rule="controls"):
    """Two families × (lesion, patching): a/lesion marked at 2–3; a/patching compared, all its effects NaN;
    b/lesion not comparable (a long reason); b/patching not run."""
    curves = {"a": {"lesion": np.arange(L, dtype=float), "patching": np.arange(L, dtype=float)[::-1].copy()},
              "b": {"lesion": np.ones(L) + np.arange(L) * 0.1}}
    cstats = {"a": {"lesion": _stats([0, 0.1, 2.0, 1.5, 0.2, -0.3], marked=(2, 3)),
                    "patching": np.full((len(CONTROL_STATS), L), np.nan)},
              "b": {"lesion": _stats([0.1, -0.4, 0.3, 0.0, 0.2, 0.1], p=0.9)}}
    cstatus = {"a": {"lesion": "ok", "patching": "ok"}, "b": {"lesion": LONG_REASON, "patching": "controls not run"}}
    return KnowledgeMap.from_curves(
        curves, techniques=["lesion", "patching"], rules={"lesion": "percentile", "patching": "percentile"},
        rule=rule, control_stats=cstats, control_status=cstatus,
        control_params={"alpha": 0.05, "correction": "holm", "min_run": 2, "robustness": 0.8, "n_perm": 200},
        window=2)


def _hovers(fig):
    out = []
    for tr in fig.data:
        h = getattr(tr, "hovertext", None)
        if h is None:
            continue
        for x in (h if isinstance(h, (list, tuple)) else [h]):
            out.extend(x if isinstance(x, (list, tuple)) else [x])
    return [x for x in out if isinstance(x, str)]


def test_parameters_table_shows_only_the_active_rule():
    km = _toy()
    names = [k for k, _ in active_rule_params(km)]
    assert {"alpha", "correction", "min_run", "robustness", "n_perm"} <= set(names)
    assert not {"percentile", "sigma", "window", "min_len"} & set(names)
    params_html = km.to_html().split("id='params'")[1].split("<details>")[0]
    assert "alpha" in params_html and "percentile" not in params_html and "sigma" not in params_html
    paper = km.rethreshold(rule="paper")
    pnames = [k for k, _ in active_rule_params(paper)]
    assert {"percentile", "sigma"} <= set(pnames) and "alpha" not in pnames


def test_effect_heatmap_is_diverging_centred_at_zero_marks_outlined_and_never_says_nan():
    km = _toy()
    fig = curve_heatmaps(km)
    heat = [tr for tr in fig.data if tr.type == "heatmap"]
    assert len(heat) == 2
    for tr in heat:
        assert tr.zmid == 0 and tr.zmin == -tr.zmax and tr.zmax > 0
        assert tr.colorscale[0][1] != tr.colorscale[-1][1]  # a two-ended scale
    z = np.asarray(heat[0].z, float)
    assert np.isclose(np.nanmax(np.abs(z)), heat[0].zmax) and np.isclose(z[0, 2], 2.0)  # the effect, not min–max
    assert np.all(np.isnan(z[1]))  # a cell that was not compared draws no numbers
    marks = [tr for tr in fig.data if tr.type == "scatter" and tr.name == "marked layer"]
    assert len(marks) == 1 and list(marks[0].x) == [2, 3] and marks[0].marker.symbol == "square-open"
    hovers = _hovers(fig)
    bad = [h for h in hovers if NAN_WORD.search(h)]
    assert hovers and not bad, bad[:3]
    a_lesion = heat[0].hovertext[0][2]
    assert "effect over control 2 [1.9, 2.1]" in a_lesion and "p_adj 0.01" in a_lesion and "marked" in a_lesion
    assert any("not run" in h for h in heat[1].hovertext[1])  # b/patching: "not run: <reason>"
    assert all("not measured" in h for h in heat[1].hovertext[0])  # a/patching: NaN effects said in words
    html = km.to_html()
    assert "nan (p_adj nan)" not in html


def test_metric_axes_are_clipped_to_meaningful_ranges():
    from medinterp.viz.geometry import curves_figure, headline_figure

    assert metric_range("linearity_r2", [-100.0, 0.3])[0] == -1.0
    assert metric_range("chance-corrected balanced accuracy", [-3.0, 4.0]) == [-1.0, 1.0]
    assert metric_range("participation_ratio", [1.0, 40.0]) is None  # unbounded: autorange
    layers = np.arange(4)
    rows = [dict(metric="probe", space=sp, label="age", group="", layer=l, value=v, ci_low=v - 1, ci_high=v + 1,
                 baseline=np.nan, baseline_high=np.nan)
            for sp in ("span", "last") for l, v in zip(layers, (-100.0, -2.0, 0.2, 0.4))]
    rows += [dict(metric="participation_ratio", space="span", label="age", group="", layer=l, value=10.0 + l,
                  ci_low=9.0 + l, ci_high=11.0 + l, baseline=np.nan, baseline_high=np.nan) for l in layers]
    res = SimpleNamespace(table=pd.DataFrame(rows), primary={"metric": "probe", "label": "age"},
                          label_kinds={"age": "continuous"}, lexical_scores=None, concept_set="toy",
                          params={"ci": 0.95})
    head = headline_figure(res)
    assert head.layout.yaxis.range[0] == -1.0 and "R²" in head.layout.yaxis.title.text
    fig = curves_figure(res)
    assert fig.layout.yaxis.range[0] == -1.0  # the probe panel stops at −1
    assert "(" in fig.layout.yaxis.title.text and "dimensions" in fig.layout.yaxis2.title.text  # units
    assert fig.layout.yaxis2.range is None
    # the read has one colour in both figures (span read = span panel line)
    span_head = next(tr.line.color for tr in head.data if tr.name.startswith("span read") and tr.mode)
    span_curve = next(tr.line.color for tr in fig.data if tr.name == "age span")
    assert span_head == span_curve == color_of("span")


def test_one_colour_per_technique_across_figures():
    km = _toy()
    band = {tr.name: tr.marker.color for tr in map_figure(km).data if tr.type == "bar" and tr.name in km.techniques}
    ctrl = control_curves_figure(km, "lesion")
    line = next(tr.line.color for tr in ctrl.data if tr.name == "over control family")
    assert band["lesion"] == line == color_of("lesion") and band["patching"] == color_of("patching")
    assert color_of("lesion") != color_of("patching")
    assert color_of("restore span") != color_of("restore last") and color_of("restore span") == color_of(
        "restore span (item)")
    from medinterp.viz.curves import layer_curve_figure

    y = (np.zeros(3), None, None)
    one = layer_curve_figure({"mlp_zero": y, "attn_mean": y, "skip": y}, title="a", y_title="v")
    two = layer_curve_figure({"skip": y, "mlp_zero": y}, title="b", y_title="v")  # other order, same colours
    c1, c2 = ({tr.name: tr.line.color for tr in f.data} for f in (one, two))
    assert c1["mlp_zero"] == c2["mlp_zero"] and c1["skip"] == c2["skip"] == color_of("lesion")
    assert len(set(c1.values())) == 3


def test_notes_are_cut_at_word_boundaries_with_the_full_text_in_the_hover():
    words = set(re.findall(r"[^\s…]+", LONG_REASON))
    s = short_note(LONG_REASON, 40)
    assert len(s) <= 42 and s.endswith("…") and all(w in words for w in s.rstrip(" …").split())
    assert short_note("short enough", 40) == "short enough"
    km = _toy()
    fig = map_figure(km)
    lane = [tr for tr in fig.data if tr.type == "scatter" and tr.mode == "text"][0]
    for text, hover in zip(lane.text, lane.hovertext):
        body = text.split(": ", 2)[-1].rstrip(" …")
        last = body.split()[-1]
        assert any(w == last for w in re.findall(r"\S+", hover)), (text, hover)  # ends on a whole word
    assert any(LONG_REASON[:60] in h for h in lane.hovertext) or any(LONG_REASON in h for h in _hovers(fig))


def test_findings_rows_say_a_missing_ci_in_words_never_nan():
    from medinterp.maps.findings import Finding
    from medinterp.maps.findings_models import ModelContrast

    row = Finding("c", "inconclusive", "median KL (nats)", 0.36, (float("nan"), float("nan"))).as_row()
    assert not any(NAN_WORD.search(x) for x in row) and "0.36 (no CI)" in row[2]
    assert "not measured" in Finding("c", "inconclusive", "s", float("nan")).as_row()[2]
    m = ModelContrast("c", "s", "A", "B", 1.0, 2.0, -1.0, (float("nan"), 0.5))
    assert not any(NAN_WORD.search(x) for x in m.as_row())


def test_a_technique_with_no_curve_says_why_per_concept_not_that_it_never_ran():
    """A technique that ran but has no curve anywhere (e.g. the model knows none of the pairs) is not "not run":
    the report says, per concept, what its cell says."""
    from medinterp.viz.report import render_report

    km = KnowledgeMap.from_curves(
        {"a": {"lesion": np.arange(L, dtype=float)}, "b": {"lesion": np.arange(L, dtype=float)}},
        techniques=["lesion", "patching"], rules={"lesion": "percentile", "patching": "percentile"}, window=2)
    km.status["a"]["patching"] = "not known: 0 of 9 valid pairs known"
    km.status["b"]["patching"] = "not run: no pairs"
    html = render_report(km)
    assert "Not run for any concept" not in html
    assert "No concept has a curve for this technique" in html and "0 of 9 valid pairs known" in html


def test_balance_of_a_single_control_item_warns_nothing():
    """One finite covariate value in a group has no sample variance: no numpy warning reaches the user's terminal."""
    import warnings

    from medinterp.maps.balance import match_units

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = match_units({"prompt_len": np.array([10.0, 11, 12])}, ["x", "y", "z"],
                        {"prompt_len": np.array([10.0, np.nan])}, ["c", "d"])  # one finite value
    assert not b.comparable


def test_pca_of_a_constant_layer_warns_nothing():
    """A layer where every prompt gives one vector reduces to zeros, with no sklearn 0/0 warning on the terminal."""
    import warnings

    from medinterp.techniques.geometry.concept import reduce

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Z = reduce(np.ones((200, 80)), 16)
    assert Z.shape == (200, 16) and np.allclose(Z, 0)
