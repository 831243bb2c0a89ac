"""Effect over control in the knowledge map: validation on pure noise, a planted effect, a random model vs its twin.

Toy techniques registered here return :class:`UnitScores` with planted effects or pure noise, so these
tests hold whatever the shipped techniques deliver.
"""

from __future__ import annotations

import dataclasses
import json
import zlib

import numpy as np
import pytest

import medinterp.viz  # noqa: F401  (registers the renderers)
from medinterp import stats
from medinterp.maps import KnowledgeMap
from medinterp.maps.controls import CONTROL_STATS, NoScores, effect_over_control
from medinterp.techniques import REGISTRY
from medinterp.techniques.base import Technique, TechniqueResult, UnitScores

N_LAYERS = 6


def _scores(values, n_items, n_templates, prefix="item"):
    units = [f"{prefix}{i}" for i in range(n_items) for _ in range(n_templates)]
    tmpl = [t for _ in range(n_items) for t in range(n_templates)]
    # families of identical token structure: a balanced covariate (the balance gate has its own tests)
    return UnitScores(values, units, tmpl, description="toy", covariates={"subject_tokens": np.ones(len(units))})


# ---------------------------------------------------------------- (a) pure noise, the map's own code path
def test_pure_noise_marks_a_layer_in_at_most_5_percent_of_1000_runs():
    rng = np.random.default_rng(0)
    n_items, n_t, L = 12, 2, 8
    marked_runs, naive_runs, vs_control_runs, control_only_runs = 0, 0, 0, 0
    for r in range(1000):
        med, ctrl, twin = (rng.normal(size=(n_items * n_t, L)) for _ in range(3))
        out = effect_over_control(_scores(med, n_items, n_t), _scores(ctrl, n_items, n_t, "c"),
                                  _scores(twin, n_items, n_t), n_perm=999, n_boot=30, n_resamples=5, seed=r)
        marked_runs += bool(out.marked.any())
        vs_control_runs += bool((out.p_adj <= 0.05).any())  # one comparison alone, Holm: calibrated, not dead
        # the twin dropped (a technique the twin cannot be measured with): the control family alone marks
        only = effect_over_control(_scores(med, n_items, n_t), _scores(ctrl, n_items, n_t, "c"), None,
                                   n_perm=999, n_boot=30, n_resamples=5, seed=r)
        control_only_runs += bool(only.marked.any())
        assert np.isnan(only.p_adj_twin).all() and only.n_twin == 0
        if r < 200:  # the same data under an uncorrected single-comparison rule: shows this test can fail
            p = stats.layer_effects(stats.unit_means(med, _scores(med, n_items, n_t).units),
                                    stats.unit_means(twin, _scores(med, n_items, n_t).units), paired=True,
                                    n_boot=30, n_perm=199, seed=r).p
            naive_runs += bool((p <= 0.05).any())
    print(f"pure noise: {marked_runs} of 1000 runs marked ({control_only_runs} vs the control family alone); Holm vs control family alone {vs_control_runs} of 1000; "
          f"uncorrected paired rule {naive_runs} of 200")
    assert marked_runs <= 50, marked_runs
    assert control_only_runs <= 50, control_only_runs
    assert 5 <= vs_control_runs <= 50, vs_control_runs
    assert naive_runs / 200 > 0.15, naive_runs  # uncorrected per-layer testing marks noise often


def test_planted_effect_is_marked_at_the_planted_layers_only():
    rng = np.random.default_rng(1)
    n_items, n_t = 20, 3
    med = rng.normal(size=(n_items * n_t, 10))
    med[:, 3:6] += 1.5
    out = effect_over_control(_scores(med, n_items, n_t), _scores(rng.normal(size=(60, 10)), n_items, n_t, "c"),
                              _scores(rng.normal(size=(60, 10)), n_items, n_t), n_perm=999, n_boot=200)
    assert out.intervals == [(3, 5)]
    assert (out.robustness[3:6] >= 0.8).all() and (out.ci_low[3:6] > 0).all()
    assert (out.p_adj[3:6] <= 0.05).all() and (out.p_adj_twin[3:6] <= 0.05).all()


def test_without_the_twin_the_control_family_alone_marks_the_planted_layers():
    rng = np.random.default_rng(1)
    med = rng.normal(size=(60, 10))
    med[:, 3:6] += 1.5
    out = effect_over_control(_scores(med, 20, 3), _scores(rng.normal(size=(60, 10)), 20, 3, "c"), None,
                              n_perm=999, n_boot=200)
    assert out.intervals == [(3, 5)] and np.isnan(out.effect_twin).all()
    flat = effect_over_control(_scores(rng.normal(size=(60, 10)), 20, 3), _scores(med, 20, 3, "c"), None,
                               n_perm=999, n_boot=100)
    assert flat.intervals == []  # the control family beats "medicine": nothing marked


def test_smallest_attainable_p_matches_scipy_on_the_most_extreme_data():
    import scipy.stats

    for n, paired, n_perm in ((3, True, 1000), (5, False, 1000), (12, True, 999), (4, False, 10)):
        med, ctrl = np.arange(n, dtype=float) + 100.0, np.arange(n, dtype=float)  # medicine above every control
        kind = "samples" if paired else "independent"
        # layer_effects enumerates exactly up to EXACT_LIMIT assignments: scipy's exact test is the reference
        exact = stats.n_assignments(n, n, paired=paired) <= stats.EXACT_LIMIT
        p = scipy.stats.permutation_test((med, ctrl), lambda a, b: a.mean() - b.mean(), permutation_type=kind,
                                         n_resamples=np.inf if exact else n_perm, alternative="greater", rng=0).pvalue
        ours = stats.layer_effects(med[:, None], ctrl[:, None], paired=paired, n_perm=n_perm, n_boot=50).p[0]
        assert ours == pytest.approx(p)
        assert p == pytest.approx(stats.smallest_p(n, n, paired=paired, n_perm=n_perm)), (n, paired, n_perm)
    # beyond EXACT_LIMIT: Monte Carlo, floor 1 / (n_perm + 1)
    assert stats.smallest_p(17, 17, paired=True, n_perm=999) == pytest.approx(1 / 1000)
    assert stats.smallest_p(16, 16, paired=True, n_perm=999) == pytest.approx(2.0 ** -16)


def test_too_few_items_to_mark_is_said_not_shown_as_no_interval(toys):
    import medinterp.maps as maps
    from medinterp.testing import tiny_model

    fams = {"drugs": {"concepts": {"n": 3, "prefix": "d", "medicine": True},
                      "control": {"concepts": {"n": 3, "prefix": "c"}}}}
    km = maps.knowledge_map(tiny_model(n_layers=N_LAYERS), fams, ["toy_planted"], progress=False, n_perm=999,
                            n_boot=50, n_resamples=5)
    st = km.control_status["drugs"]["toy_planted"]
    assert st.startswith("too few items to mark: 3 items, 3 control items; the paired test against the random twin "
                         "cannot reach α = 0.05 with 3 items (smallest corrected p 0.75)"), st
    assert km.intervals == [] and "toy_planted too_few_items" in km.summary()["drugs"]
    assert km.cell("drugs", "toy_planted").code == "too_few_items" and not km.cell("drugs", "toy_planted").could_mark
    out = effect_over_control(_scores(np.ones((40, 6)), 20, 2), _scores(np.zeros((40, 6)), 20, 2, "c"), None,
                              n_perm=999, n_boot=50)
    assert out.smallest_p_adj == pytest.approx(6 / 1000)  # 20 items: Monte Carlo floor 1/1000, Holm x 6 layers


def test_medicine_must_beat_both_controls():
    rng = np.random.default_rng(2)
    med = rng.normal(size=(60, 6))
    med[:, 1:3] += 2.0
    twin = med + rng.normal(scale=0.1, size=med.shape)  # the twin shows the same "effect": architecture, not medicine
    out = effect_over_control(_scores(med, 20, 3), _scores(rng.normal(size=(60, 6)), 20, 3, "c"),
                              _scores(twin, 20, 3), n_perm=999, n_boot=100)
    assert (out.p_adj[1:3] <= 0.05).all()  # beats the control family...
    assert out.intervals == []  # ...but not the twin: no interval


def test_twin_rows_are_paired_on_item_and_template_not_order():
    rng = np.random.default_rng(3)
    med = rng.normal(size=(60, 4))
    med[:, 0:2] += 1.0
    med_s = _scores(med, 20, 3)
    perm = rng.permutation(60)  # twin rows in another order: matched by (item, template), not by row
    twin = UnitScores(med[perm] - 1.0 * (np.arange(4) < 2) + rng.normal(scale=0.05, size=(60, 4)),
                      [med_s.units[i] for i in perm], [med_s.templates[i] for i in perm])
    out = effect_over_control(med_s, _scores(rng.normal(size=(60, 4)) - 2, 20, 3, "c"), twin, n_perm=999, n_boot=100)
    np.testing.assert_allclose(out.effect_twin, [1, 1, 0, 0], atol=0.05)


def test_scores_without_numbers_give_a_reason():
    good = _scores(np.zeros((6, 3)), 3, 2)
    nan = UnitScores(np.full((6, 3), np.nan), good.units, good.templates, description="not known by the model")
    with pytest.raises(NoScores, match="not known by the model"):
        effect_over_control(nan, good, good)
    with pytest.raises(NoScores, match="layer counts differ"):
        effect_over_control(good, _scores(np.zeros((6, 4)), 3, 2), good)


# ---------------------------------------------------------------- toy techniques in the map
@dataclasses.dataclass
class ToyScores(TechniqueResult):
    kind = "test_map_controls_toy"
    values: np.ndarray = None
    units: list = dataclasses.field(default_factory=list)
    templates: list = dataclasses.field(default_factory=list)

    def layer_curve(self):
        return np.nanmean(self.values, axis=0) if np.isfinite(self.values).any() else np.zeros(self.values.shape[1])

    def layer_curve_ci(self):
        c = self.layer_curve()
        return c - 0.1, c + 0.1

    def unit_scores(self):
        return UnitScores(self.values, self.units, self.templates, description="toy evidence",
                          covariates={"subject_tokens": np.ones(len(self.units))})


@dataclasses.dataclass
class NoUnits(TechniqueResult):
    kind = "test_map_controls_nounits"
    curve: np.ndarray = None

    def layer_curve(self):
        return self.curve

    def layer_curve_ci(self):
        return self.curve, self.curve


def _is_twin(model):
    return "twin_of" in (getattr(model, "medinterp_info", None) or {})


def _planted(model, fam, *, progress=True, effect=1.5, layers=(2, 3)):
    """Noise per prompt; medicine on the (non-twin) model gets +effect at ``layers``."""
    spec = fam.concepts
    seed = zlib.crc32(f"{fam.name}/{_is_twin(model)}".encode())
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(spec["n"] * 2, model.cfg.n_layers))
    if spec.get("medicine") and not _is_twin(model):
        v[:, list(layers)] += effect
    if spec.get("unknown"):
        v[:] = np.nan
    units = [f"{spec['prefix']}{i}" for i in range(spec["n"]) for _ in range(2)]
    return ToyScores(concept_set=fam.name, values=v, units=units, templates=[0, 1] * spec["n"])


@dataclasses.dataclass
class ToyUnknownOnTwin(ToyScores):
    """Like causal tracing: the random twin knows no pairs, so its result is unavailable (all NaN)."""

    kind = "test_map_controls_toy_unknown_on_twin"
    reason: str = ""

    def unavailable(self):
        return self.reason or None


def _planted_twin_unknown(model, fam, *, progress=True):
    res = _planted(model, fam)
    if _is_twin(model):
        return ToyUnknownOnTwin(concept_set=fam.name, values=np.full_like(res.values, np.nan), units=res.units,
                                templates=res.templates, reason="not known by the model: 0 of 20 pairs known")
    return ToyUnknownOnTwin(concept_set=fam.name, values=res.values, units=res.units, templates=res.templates)


def _resid_norms(model, fam, *, progress=True):
    """A real, weight-dependent toy: per prompt, the residual norm at the last token after every block."""
    import torch

    prompts, units, tmpl = [], [], []
    for item in fam.concepts["items"]:
        for k, frame in enumerate(("The patient takes {}", "A note about {}")):
            prompts.append(frame.format(item))
            units.append(item)
            tmpl.append(k)
    names = [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    vals = []
    with torch.no_grad():
        for p in prompts:
            _, cache = model.run_with_cache(p, names_filter=lambda n: n in names)
            vals.append([float(cache[n][0, -1].norm()) for n in names])
    return ToyScores(concept_set=fam.name, values=np.array(vals), units=units, templates=tmpl)


@pytest.fixture
def toys(monkeypatch):
    for t in (Technique("toy_planted", _planted), Technique("toy_norms", _resid_norms),
              Technique("toy_twin_unknown", _planted_twin_unknown),
              Technique("toy_nounits", lambda m, f, **k: NoUnits(curve=np.arange(float(m.cfg.n_layers))))):
        monkeypatch.setitem(REGISTRY, t.name, t)


def _fams(**extra):
    return {"drugs": {"concepts": {"n": 20, "prefix": "d", "medicine": True, **extra},
                      "control": {"concepts": {"n": 20, "prefix": "c"}}},
            "nocontrol": {"concepts": {"n": 20, "prefix": "x", "medicine": True}},
            "flat": {"concepts": {"n": 20, "prefix": "f"}, "control": {"concepts": {"n": 20, "prefix": "g"}}}}


def test_map_marks_planted_layers_saves_all_runs_and_resumes(tmp_path, toys):
    import pandas as pd

    import medinterp.maps as maps
    from medinterp.testing import tiny_model

    model = tiny_model(n_layers=N_LAYERS)
    kw = dict(out_dir=tmp_path / "w", progress=False, n_perm=999, n_boot=100, n_resamples=10)
    km = maps.knowledge_map(model, _fams(), ["toy_planted", "toy_nounits"], **kw)
    assert km.rule == "controls"
    assert [(iv["concept"], iv["technique"], iv["start"], iv["end"]) for iv in km.intervals] == \
        [("drugs", "toy_planted", 2, 3)]
    assert km.control_status["drugs"]["toy_nounits"].startswith("no unit scores")
    assert km.control_status["nocontrol"]["toy_planted"] == "no control family for this row"
    assert "toy_nounits no_scores: no unit scores" in km.summary()["drugs"]
    # flat: no layer beats its control family, so its twin (which can only remove marks) is not run
    assert "twin, whose test can only remove marks, was not run" in km.control_status["flat"]["toy_planted"]
    assert "toy_planted not_significant" in km.summary()["flat"]
    assert km.cell("flat", "toy_planted").code == "not_significant"
    assert not (tmp_path / "w" / "flat__twin" / "toy_planted").exists()
    assert km.cell("nocontrol", "toy_planted").code == "no_control"
    for d in ("drugs", "drugs__control", "drugs__twin", "nocontrol", "nocontrol__twin"):
        assert (tmp_path / "w" / d / "toy_planted" / "job.json").is_file(), d
    assert not (tmp_path / "w" / "nocontrol__control").exists()
    fps = {d: json.loads((tmp_path / "w" / d / "toy_planted" / "job.json").read_text())["fingerprint"]
           for d in ("drugs", "drugs__control", "drugs__twin")}
    assert len(set(fps.values())) == 3
    # curves.csv beside manifest.json, long form, loads in pandas
    df = pd.read_csv(tmp_path / "w" / "map" / "curves.csv")
    assert {"family", "technique", "layer", "effect", "control", "ci_low", "ci_high", "p_adj", "marked",
            "robustness"} <= set(df.columns)
    sel = df[(df.family == "drugs") & (df.technique == "toy_planted") & (df.control == "control family")]
    assert sorted(sel[sel.marked].layer) == [2, 3] and len(sel) == N_LAYERS
    assert sel.comparable.all() and np.isfinite(sel.mde).all() and (sel.status == "ok").all()
    twin_rows = df[(df.family == "drugs") & (df.technique == "toy_planted") & (df.control == "random twin")]
    assert len(twin_rows) == N_LAYERS and not twin_rows.marked.any()  # the mark is the cell's, said once
    assert (sel.status_code == "marked").all() and (twin_rows.status_code == "marked").all()
    bal = km.control_balance["drugs"]["toy_planted"]
    assert bal["comparable"] and bal["table"][0]["covariate"] == "subject_tokens" and bal["mde_median"] > 0
    # rerun: everything loads (the twin is not even built)
    calls = []
    orig = REGISTRY["toy_planted"]
    REGISTRY["toy_planted"] = dataclasses.replace(orig, run_fn=lambda *a, **k: calls.append(1) or orig.run_fn(*a, **k))
    km2 = maps.knowledge_map(model, _fams(), ["toy_planted", "toy_nounits"], **kw)
    assert calls == [] and km2.intervals == km.intervals
    np.testing.assert_array_equal(km2.control_stats, km.control_stats)
    back = KnowledgeMap.load(tmp_path / "w" / "map")
    assert back.intervals == km.intervals and back.rule == "controls"
    assert back.rethreshold(rule="paper").intervals != km.intervals  # the paper rule marks the bare curves
    # the report: no-interval cells, reasons, the findings table
    html = km.to_html(tmp_path / "r.html")
    assert "not_significant" in html and "was not run" in html and "no unit scores" in html and "Findings" in html


def test_twin_that_cannot_be_measured_leaves_the_control_family(tmp_path, toys):
    import medinterp.maps as maps
    from medinterp.testing import tiny_model

    fams = {k: v for k, v in _fams().items() if k in ("drugs", "flat")}
    km = maps.knowledge_map(tiny_model(n_layers=N_LAYERS), fams, ["toy_twin_unknown"], progress=False,
                            n_perm=999, n_boot=100, n_resamples=10, out_dir=tmp_path / "w")
    assert [(iv["concept"], iv["start"], iv["end"]) for iv in km.intervals] == [("drugs", 2, 3)]
    assert km.control_status["drugs"]["toy_twin_unknown"] == "ok"
    assert km.control_notes["drugs"]["toy_twin_unknown"].startswith("vs control family only: random twin not known")
    assert "vs control family only" in km.to_html(tmp_path / "r.html")
    assert maps.KnowledgeMap.load(tmp_path / "w" / "map").control_notes == km.control_notes


def _mark_with_partial_twin(seed: int, twin_rows: int):
    """mark_all on one cell (20 items x 2 templates, a planted effect at layers 2-3) whose twin is scored on
    its first ``twin_rows`` prompts only: ``(marked layers, status, note)``."""
    from medinterp.maps.controls import mark_all

    rng = np.random.default_rng(seed)
    units = [f"d{i}" for i in range(20) for _ in range(2)]
    med = rng.normal(size=(40, N_LAYERS))
    med[:, 2:4] += 1.5
    tw = rng.normal(size=(40, N_LAYERS))
    tw[twin_rows:] = np.nan
    mk = lambda v, u: ToyScores(concept_set="x", values=v, units=u, templates=[0, 1] * 20)  # noqa: E731
    res = {("drugs", "t"): mk(med, units)}
    ctrl = {("drugs", "t"): mk(rng.normal(size=(40, N_LAYERS)), [f"c{i}" for i in range(20) for _ in range(2)])}
    twin = {("drugs", "t"): mk(tw, units)}
    notes: dict = {}
    ok = {("drugs", "t"): "ok"}
    out, st = mark_all(["drugs"], ["t"], res, ok, ctrl, ok, {"drugs": True}, twin, ok, controls=True, notes=notes,
                       n_perm=999, n_boot=50, n_resamples=5)
    marked = list(np.flatnonzero(out["drugs"]["t"][CONTROL_STATS.index("marked")]))
    return marked, st["drugs"]["t"], notes.get("drugs", {}).get("t", "")


def test_twin_scored_on_a_few_items_only_is_dropped_not_a_dead_cell(toys):
    """Like tracing on a random twin that gets 4 of 20 pairs right by chance: its paired test on 4 items
    can never reach alpha (p >= 1/16), so the cell is marked against the control family alone."""
    marked, status, note = _mark_with_partial_twin(3, 8)  # the twin is scored on 4 items only
    assert status == "ok"
    assert note.startswith("vs control family only: random twin scored on only 4 of the 20")
    assert marked == [2, 3]


def test_twin_is_not_run_where_its_paired_test_can_never_reject(tmp_path, toys, monkeypatch):
    """4 items: a paired test's smallest p is 1/16, x 6 layers under Holm: never <= 0.05. The twin job is
    not run, the effect over the control family is still shown, nothing is marked even with a planted
    effect that the control family alone would mark; a family with enough items still runs its twin."""
    import medinterp.maps as maps
    from medinterp.maps.controls import twin_not_needed
    from medinterp.testing import tiny_model

    ran = []
    orig = REGISTRY["toy_planted"]
    monkeypatch.setitem(REGISTRY, "toy_planted", dataclasses.replace(
        orig, run_fn=lambda m, f, **k: ran.append((f.name, _is_twin(m))) or orig.run_fn(m, f, **k)))
    fams = {"few": {"concepts": {"n": 4, "prefix": "d", "medicine": True},
                    "control": {"concepts": {"n": 40, "prefix": "c"}}},
            "drugs": _fams()["drugs"]}
    kw = dict(progress=False, n_perm=999, n_boot=100, n_resamples=10, out_dir=tmp_path / "w")
    km = maps.knowledge_map(tiny_model(n_layers=N_LAYERS), fams, ["toy_planted"], **kw)
    assert ("few__twin", True) not in ran and ("drugs__twin", True) in ran
    st = km.control_status["few"]["toy_planted"]
    assert st.startswith("too few items to mark: 4 items, 40 control items; ") and "twin was not run" in st
    assert not (tmp_path / "w" / "few__twin").exists()
    stats_few = km.control_stats[km.concepts.index("few"), 0]
    assert np.isfinite(stats_few[CONTROL_STATS.index("effect")]).all()  # the effect over control is shown
    assert not stats_few[CONTROL_STATS.index("marked")].any()
    # the control family alone would have marked the planted layers: the skip does not loosen the rule
    model = tiny_model(n_layers=N_LAYERS)
    few, ctrl_few = maps.run.family_specs(fams)["few"], maps.run.control_specs(fams)["few"]
    alone = effect_over_control(_planted(model, few).unit_scores(), _planted(model, ctrl_few).unit_scores(), None,
                                n_perm=999, n_boot=100, n_resamples=10)
    assert alone.n_control == 40  # 1:10 matching keeps every control item
    assert alone.marked.any()
    assert [(iv["concept"], iv["start"], iv["end"]) for iv in km.intervals] == [("drugs", 2, 3)]
    # the rule itself: 4 items never, 20 items can
    assert twin_not_needed(_planted(model, few)) is not None
    assert twin_not_needed(_planted(model, maps.run.family_specs(fams)["drugs"])) is None
    # a rerun and a map rebuilt from the work dir say the same
    km2 = maps.knowledge_map(tiny_model(n_layers=N_LAYERS), fams, ["toy_planted"], **kw)
    assert km2.control_status == km.control_status and km2.intervals == km.intervals
    back = maps.map_from_work_dir(tmp_path / "w", techniques=["toy_planted"],
                                  marking=dict(n_perm=999, n_boot=100, n_resamples=10))
    assert back.control_status["few"]["toy_planted"] == st


def test_unknown_family_shows_the_reason_not_a_band(toys):
    import medinterp.maps as maps
    from medinterp.testing import tiny_model

    km = maps.knowledge_map(tiny_model(n_layers=4), {"drugs": _fams(unknown=True)["drugs"]}, ["toy_planted"],
                            progress=False, n_perm=999, n_boot=50)
    assert km.intervals == [] and "no finite unit scores (toy evidence)" in km.control_status["drugs"]["toy_planted"]
    assert np.isnan(km.control_stats).all()


def test_paper_rule_without_controls_is_labelled_and_rule_controls_needs_controls(toys):
    import medinterp.maps as maps
    from medinterp.errors import MedinterpError
    from medinterp.testing import tiny_model

    m = tiny_model(n_layers=4)
    km = maps.knowledge_map(m, {"drugs": _fams()["drugs"]}, ["toy_planted"], progress=False, controls=False,
                            rule="paper")
    assert km.rule == "paper" and all(iv["rule"] in ("percentile", "steepest_rise") for iv in km.intervals)
    assert km.control_status["drugs"]["toy_planted"].startswith("controls not run")
    with pytest.raises(MedinterpError, match="needs controls=True"):
        maps.knowledge_map(m, {"drugs": _fams()["drugs"]}, ["toy_planted"], progress=False, controls=False)


# ---------------------------------------------------------------- (c) a random-init model vs its own twin
def test_random_model_vs_its_twin_gives_no_interval(toys):
    """A random-init tiny model (seeds 0..7) mapped against its twin (seed 100+): nothing is medicine.

    The twin comparison alone is not enough (two random models differ systematically at some layers);
    the control family (other words, same frames) is what keeps the rate: the test fails if the map
    marked on the twin comparison only.
    """
    import medinterp.maps as maps
    from medinterp.models.twin import random_twin
    from medinterp.testing import tiny_model

    fams = {"drugs": {"concepts": {"items": ["aspirin", "metformin", "insulin", "warfarin", "heparin", "ibuprofen",
                                             "lisinopril", "amoxicillin", "atorvastatin", "omeprazole"]},
                      # control words must be real tokens of the tiny vocabulary (ten [UNK]s would be one item)
                      "control": {"concepts": {"items": ["year", "hour", "day", "week", "month", "child", "adult",
                                                         "woman", "girl", "boy"]}}}}
    tok = tiny_model(n_layers=1).tokenizer
    for item in fams["drugs"]["concepts"]["items"] + fams["drugs"]["control"]["concepts"]["items"]:
        assert tok.convert_ids_to_tokens(tok(" " + item, add_special_tokens=False)["input_ids"]) == [item], item
    n_marked, twin_only = 0, 0
    for seed in range(8):
        m = tiny_model(n_layers=N_LAYERS, seed=seed)
        km = maps.knowledge_map(m, fams, ["toy_norms"], progress=False, twin_seed=100 + seed, n_perm=999,
                                n_boot=50, n_resamples=5)
        assert km.cell("drugs", "toy_norms").code in ("marked", "not_significant")
        n_marked += bool(km.intervals)
        # the twin comparison on its own (the map skips the twin where the control family is not beaten)
        fam, cfam = maps.run.family_specs(fams)["drugs"], maps.run.control_specs(fams)["drugs"]
        tw = random_twin(m, seed=100 + seed)
        full = effect_over_control(_resid_norms(m, fam).unit_scores(), _resid_norms(m, cfam).unit_scores(),
                                   _resid_norms(tw, fam).unit_scores(), n_perm=999, n_boot=50, n_resamples=5)
        twin_only += bool(((full.p_adj_twin <= 0.05) & (full.effect_twin > 0)).any())
    print(f"random model vs twin: {n_marked} of 8 maps marked; the twin comparison alone marked {twin_only} of 8")
    assert n_marked <= 1, n_marked  # <= 5% of 8 maps, rounded up
    assert twin_only >= 1  # the twin comparison alone would have marked something


# ---------------------------------------------------------------- findings: decision rules on known answers
def test_findings_rules_known_answers():
    from medinterp.maps import findings as F

    ctl = {"age_control": {"age_step_ratio": {"value": 1.0, "p": .5}}}
    assert F.age_jump({"age": {"age_step_ratio": {"value": 2, "p": .011}}, **ctl}).verdict == F.HOLDS
    assert F.age_jump({"age": {"age_step_ratio": {"value": 2, "p": .011}}}).verdict == F.UNSURE  # no control
    assert F.age_jump({"age": {"age_step_ratio": {"value": .8, "p": .7}}, **ctl}).verdict == F.FAILS
    assert F.age_jump({"age": {"age_step_ratio": {"value": 1.1, "p": .2}}, **ctl}).verdict == F.UNSURE
    assert F.age_jump({"drugs": {"age_step_ratio": {"value": 2, "ci_low": 1.3, "ci_high": 2.8}}}).detail == "not measured"
    d = {"drugs": {"specialty_minus_mechanism": {"value": .1, "ci_low": .05, "ci_high": .15}}}
    assert F.drugs_by_specialty(d).verdict == F.HOLDS and F.drugs_by_specialty({}).verdict == F.UNSURE
    d["drugs"]["specialty_minus_mechanism"] = {"value": -.1, "ci_low": -.2, "ci_high": -.01}
    assert F.drugs_by_specialty(d).verdict == F.FAILS
    prog = lambda p: {"progression": {"progression_circularity": {"value": .6, "p": p}}}
    assert F.circular_progression(prog(0.01)).verdict == F.HOLDS
    assert F.circular_progression(prog(0.4)).verdict == F.UNSURE  # a p-value never says "does not hold"
    by = {"progression": {"progression_circularity": {"value": .5, "by_disease": {"parkinson": {"p": .03},
                                                                                  "copd": {"p": .04}}}}}
    assert F.circular_progression(by).verdict == F.UNSURE  # Holm across the two: .06, .06
    by["progression"]["progression_circularity"]["by_disease"] = {"parkinson": {"p": .01}, "copd": {"p": .02}}
    assert F.circular_progression(by).verdict == F.HOLDS
    dip = np.r_[9.0, 9.0, 8.0, 3.0, 2.0, 3.0, 8.0, 9.0]  # participation ratio per layer (0.3.1)
    col = lambda y, **k: {"geo": {"collapse_participation_ratio": {"per_layer": list(y), "per_layer_low": list(y - .5),
                                                                   "per_layer_high": list(y + .5), **k}}}
    assert F.collapse_mid_depth(col(dip)).verdict == F.HOLDS
    assert F.collapse_mid_depth(col(np.linspace(9, 1, 8))).verdict == F.FAILS  # lowest at the end: no collapse
    assert F.collapse_mid_depth(col(dip, per_layer_control=list(dip))).verdict == F.UNSURE  # twin collapses too
    twin = {"geo__twin": {"collapse_participation_ratio": {"per_layer": [9.0] * 8}}}
    assert F.collapse_mid_depth({**col(dip), **twin}).verdict == F.HOLDS
    assert np.allclose(F.collapse_mid_depth(col(dip)).ci, (1.5, 2.5))
    no_ci = F.collapse_mid_depth({"geo": {"collapse_participation_ratio": {"per_layer": list(dip)}}})
    assert no_ci.value == 2.0 and no_ci.ci is None and no_ci.verdict == F.UNSURE and "[" not in no_ci.as_row()[2]
    assert F.fragility({"curve": [3, 2, 4], "ci_low": [2, 1.5, 3], "ci_high": [4, 3, 5]}).verdict == F.HOLDS
    assert F.fragility({"curve": [3, .1, .1], "ci_low": [2, 0, 0], "ci_high": [4, .2, .3]}).verdict == F.FAILS
    assert F.fragility(None).detail == "not measured"
    marks = np.zeros((6, 2, 10), bool)
    marks[:, 0, 1:3] = True
    ctrl = np.zeros((6, 2, 10), bool)
    ctrl[:, 0, 6:8] = True  # the same technique marks late layers on control text
    assert F.first_half(marks, list("abcdef"), 10, control_marks=ctrl).verdict == F.HOLDS  # swap p = 1/64
    assert F.first_half(marks[:3], list("abc"), 10, control_marks=ctrl[:3]).verdict == F.UNSURE  # p = 1/8
    assert F.first_half(marks, list("abcdef"), 10, control_marks=marks).verdict == F.UNSURE  # depth bias alone
    assert F.first_half(marks[:, :, ::-1], list("abcdef"), 10, control_marks=ctrl[:, :, ::-1]).verdict == F.FAILS
    assert F.first_half(marks, list("abcdef"), 10).verdict == F.UNSURE  # no control marks: depth bias unknown
    assert F.first_half(np.zeros((2, 2, 10), bool), list("ab"), 10).detail == "no marked layer"


def test_map_from_work_dir_marks_from_saved_control_runs(tmp_path, toys):
    import medinterp.maps as maps
    from medinterp.testing import tiny_model

    kw = dict(n_perm=999, n_boot=100, n_resamples=10)
    km = maps.knowledge_map(tiny_model(n_layers=N_LAYERS), {"drugs": _fams()["drugs"]}, ["toy_planted"],
                            out_dir=tmp_path, progress=False, **kw)
    back = maps.map_from_work_dir(tmp_path, techniques=["toy_planted"], marking=kw)
    assert back.concepts == ["drugs"] and back.rule == "controls"
    assert back.intervals == km.intervals == [{**km.intervals[0]}] and km.intervals[0]["start"] == 2
    np.testing.assert_allclose(back.control_stats, km.control_stats)


def test_random_twin_same_architecture_and_tokenizer_new_seeded_weights():
    import torch

    from medinterp.models.twin import random_twin
    from medinterp.store import model_identity
    from medinterp.testing import tiny_model

    m = tiny_model(n_layers=2)
    a, b, c = random_twin(m, seed=1), random_twin(m, seed=1), random_twin(m, seed=2)
    assert a.cfg.n_layers == m.cfg.n_layers and a.cfg.d_model == m.cfg.d_model and a.tokenizer is m.tokenizer
    w = lambda x: x.blocks[0].attn.W_Q.detach()
    assert torch.equal(w(a), w(b)) and not torch.equal(w(a), w(c)) and not torch.equal(w(a), w(m))
    assert model_identity(a) != model_identity(m) and model_identity(a) != model_identity(c)
    assert a.medinterp_info["spec"] == "tiny:random" and a.medinterp_info["twin_of"] == "tiny"


def test_shipped_rows_keep_their_controls_in_every_input_shape():
    """The CLI passes rows by name; a shipped row given as its own Family keeps the shipped control (a
    bug once dropped every control family when the rows arrived as Family objects)."""
    from medinterp.maps.run import control_specs, family_specs

    for rows in (["drugs", "age"], family_specs(["drugs", "age"])):
        ctrl = control_specs(rows)
        assert ctrl["drugs"].concepts == "drugs_control" and ctrl["drugs"].pairs == "drug_pairs_control"
        assert ctrl["age"].concepts == "age_control"
    assert control_specs({"drugs": {"concepts": ["my own prompt"]}})["drugs"] is None  # a user's own row


def test_twin_scored_on_one_item_only_is_dropped_not_a_dead_cell(toys):
    """The twin knows 1 prompt of the family (Gemma 3 270M's lesion twin on drugs knew 3 of 38, none among
    the matched items): before 0.3.1 the cell died with "fewer than 2 matched items paired with the twin";
    it is marked against the control family alone, and says so."""
    marked, status, note = _mark_with_partial_twin(4, 1)
    assert status == "ok", status
    assert note.startswith("vs control family only: random twin "), note
    assert marked == [2, 3]


def test_skipping_the_twin_where_no_layer_beats_the_control_cannot_change_a_mark():
    """twin_plan's case 2: the test against the control family is the same with or without the twin, and
    the twin can only remove marks. Checked on 300 random cells (noise, planted effects in medicine, the
    control or the twin, at random layers)."""
    rng = np.random.default_rng(11)
    skipped = 0
    for run in range(300):
        L = 6
        med, ctrl, twin = (rng.normal(size=(40, L)) for _ in range(3))
        for arr in (med, ctrl, twin):
            if rng.random() < 0.5:
                arr[:, rng.integers(L, size=2)] += rng.choice([0.5, 1.0, 2.0])
        kw = dict(n_perm=199, n_boot=50, n_resamples=5, seed=run)
        with_twin = effect_over_control(_scores(med, 20, 2), _scores(ctrl, 20, 2, "c"), _scores(twin, 20, 2), **kw)
        alone = effect_over_control(_scores(med, 20, 2), _scores(ctrl, 20, 2, "c"), None, **{**kw, "robustness": 0.0})
        np.testing.assert_array_equal(with_twin.p_adj, alone.p_adj)
        np.testing.assert_array_equal(with_twin.effect, alone.effect)
        assert not (with_twin.significant & ~alone.significant).any()
        if not alone.significant.any():
            skipped += 1
            assert not with_twin.marked.any()
    assert 50 < skipped < 290  # both kinds of cells were drawn


def test_map_skips_the_twin_only_where_no_layer_beats_the_control(tmp_path, toys, monkeypatch):
    import medinterp.maps as maps
    from medinterp.testing import tiny_model

    ran = []
    orig = REGISTRY["toy_planted"]
    monkeypatch.setitem(REGISTRY, "toy_planted", dataclasses.replace(
        orig, run_fn=lambda m, f, **k: ran.append((f.name, _is_twin(m))) or orig.run_fn(m, f, **k)))
    fams = {k: v for k, v in _fams().items() if k in ("drugs", "flat")}
    kw = dict(progress=False, n_perm=999, n_boot=100, n_resamples=10, out_dir=tmp_path / "w")
    km = maps.knowledge_map(tiny_model(n_layers=N_LAYERS), fams, ["toy_planted"], **kw)
    assert ("drugs__twin", True) in ran and ("flat__twin", True) not in ran
    assert [(iv["concept"], iv["start"], iv["end"]) for iv in km.intervals] == [("drugs", 2, 3)]
    cell = km.cell("flat", "toy_planted")
    assert cell.code == "not_significant" and "was not run" in cell.reason
    stats_flat = km.control_stats[km.concepts.index("flat"), 0]
    assert np.isfinite(stats_flat[CONTROL_STATS.index("effect")]).all()  # the effect over control is shown
    back = maps.map_from_work_dir(tmp_path / "w", techniques=["toy_planted"],
                                  marking=dict(n_perm=999, n_boot=100, n_resamples=10))
    assert back.control_status == km.control_status and back.intervals == km.intervals


def test_twin_is_not_run_where_the_model_knows_nothing(tmp_path, toys, monkeypatch):
    """A model result that is unavailable (e.g. no pair known) is `not_known` whatever the twin scores:
    the twin's job is not made."""
    import medinterp.maps as maps
    from medinterp.testing import tiny_model

    ran = []

    def unknown_on_model(m, f, **k):
        ran.append((f.name, _is_twin(m)))
        res = _planted(m, f)
        why = "" if (_is_twin(m) or "__control" in f.name) else "not known by the model: 0 of 20 pairs known"
        return ToyUnknownOnTwin(concept_set=f.name, values=res.values, units=res.units, templates=res.templates,
                                reason=why)

    monkeypatch.setitem(REGISTRY, "toy_unknown", Technique("toy_unknown", unknown_on_model))
    fams = {k: v for k, v in _fams().items() if k == "drugs"}
    km = maps.knowledge_map(tiny_model(n_layers=N_LAYERS), fams, ["toy_unknown"], progress=False, n_perm=999,
                            n_boot=100, n_resamples=10, out_dir=tmp_path / "w")
    assert km.cell("drugs", "toy_unknown").code == "not_known"
    assert not any(tw for _, tw in ran) and not (tmp_path / "w" / "drugs__twin").exists()
