"""The findings read the lexical-cue-free variants too (issue 21: the age jump on ``age`` and ``age_words``,
circularity on ``progression`` and ``progression_plain``): which jobs run them, what they cost in
fingerprints, how the map stores them, and how the rules combine the two forms."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medinterp.maps import findings as F
from medinterp.maps.families import control_specs, family_specs
from medinterp.maps.jobs import job_fingerprint
from medinterp.maps.matrix import CONTROL, MODEL, TWIN, job_matrix
from medinterp.techniques import REGISTRY
from medinterp.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(n_layers=4)


def test_variants_reach_only_the_models_own_rows(model):
    fams = family_specs(["age", "progression", "drugs"])
    assert fams["age"].variants == ("age_words",) and fams["progression"].variants == ("progression_plain",)
    assert fams["drugs"].variants == ()
    techs = ["geometry", "lesion"]
    kw = {t: dict(REGISTRY[t].presets["full"]) for t in techs}
    matrix = job_matrix(model, fams, control_specs(["age", "progression", "drugs"]), techs, kw)
    by_kind = {k: [j for j in matrix if j.kind == k] for k in (MODEL, CONTROL, TWIN)}
    assert {j.row for j in by_kind[MODEL] if j.family.variants} == {"age", "progression"}
    assert not any(j.family.variants for j in by_kind[CONTROL] + by_kind[TWIN])


def test_only_a_technique_that_reads_variants_changes_its_fingerprint(model):
    age = family_specs(["age"])["age"]
    plain = dataclasses.replace(age, variants=())
    assert REGISTRY["geometry"].reads_variants and not REGISTRY["lesion"].reads_variants
    for t, changes in (("geometry", True), ("lesion", False), ("saliency", False)):
        kw = dict(REGISTRY[t].presets["full"])
        assert (job_fingerprint(model, age, t, kw) != job_fingerprint(model, plain, t, kw)) is changes, t


def test_geometry_job_runs_the_variants_only_where_the_row_has_them(monkeypatch):
    from medinterp.techniques.geometry import technique as grun

    seen = []
    monkeypatch.setattr(grun, "_geometry", lambda model, concepts, **kw: seen.append((concepts, kw["variants"])))
    fams = family_specs(["age"])
    grun._run_family(None, fams["age"], variants=True)
    grun._run_family(None, dataclasses.replace(fams["age"], name="age__twin", variants=()), variants=True)
    grun._run_family(None, control_specs(["age"])["age"], variants=True)
    assert seen == [("age", True), ("age", False), ("age_control", False)]


def test_variant_findings_on_a_model_are_mid_depth_rows_of_their_own(model, tmp_path):
    """On a tiny model: the progression run measures progression_plain at mid depth only (its forward stops
    there), keeps it through save/load, and the map stores it as a findings row named after the variant."""
    from types import SimpleNamespace

    import medinterp as mi
    from medinterp.maps.run import _add_extras
    from medinterp.results import Result
    from medinterp.techniques.geometry.findings import findings_extras

    res = mi.geometry(model, "progression", variants=True, n_boot_items=50, n_null=50, progress=False)
    stat = res.variant_findings["progression_plain"]["progression_circularity"]
    mid = model.cfg.n_layers // 2
    assert stat["layer"] == mid and set(stat["by_disease"]) >= {"COPD", "Parkinson's disease"}
    assert all(0 < d["p"] <= 1 for d in stat["by_disease"].values())
    res.save(tmp_path / "g")
    back = Result.load(tmp_path / "g")
    assert back.variant_findings == res.variant_findings
    extra = findings_extras(model, back)
    assert set(extra["findings_of"]) == {"progression_plain"}
    km = SimpleNamespace(extras={}, provenance={})
    _add_extras(model, km, {"progression/geometry": back})
    assert km.extras["findings"]["progression_plain"]["progression_circularity"]["layer"] == mid
    assert "progression_circularity" in km.extras["findings"]["progression"]
    assert "findings_of" not in km.extras


def _circ(p_copd: float, p_pd: float, below: bool = False) -> dict:
    med = 0.5
    val = 0.1 if below else 0.9
    return {"progression_circularity": {"value": val, "by_disease": {
        "COPD": {"value": val, "p": p_copd, "null_median": med},
        "Parkinson's disease": {"value": val, "p": p_pd, "null_median": med}}}}


def test_circularity_needs_both_forms_to_agree():
    both = F.circular_progression({"progression": _circ(0.001, 0.002), "progression_plain": _circ(0.001, 0.004)})
    assert both.verdict == F.HOLDS and "progression_plain" in both.detail
    split = F.circular_progression({"progression": _circ(0.001, 0.002), "progression_plain": _circ(0.6, 0.7, True)})
    assert split.verdict == F.UNSURE and "disagree" in split.detail
    neither = F.circular_progression({"progression": _circ(0.6, 0.7, True),
                                      "progression_plain": _circ(0.8, 0.9, True)})
    assert neither.verdict == F.FAILS
    only = F.circular_progression({"progression": _circ(0.001, 0.002)})  # the variant not measured: one form
    assert only.verdict == F.HOLDS


def test_age_jump_needs_the_words_form_too_when_measured():
    ctrl = {"age_step_ratio": {"value": 1.0, "p": 0.5}}
    jump = {"age_step_ratio": {"value": 3.0, "p": 0.011}}
    flat = {"age_step_ratio": {"value": 1.0, "p": 0.6}}
    assert F.age_jump({"age": jump, "age_words": jump, "age_control": ctrl}).verdict == F.HOLDS
    assert F.age_jump({"age": jump, "age_words": flat, "age_control": ctrl}).verdict == F.UNSURE
    assert np.isclose(F.age_jump({"age": jump, "age_control": ctrl}).value, 3.0)
