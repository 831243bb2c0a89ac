"""The findings rules for the 17→18 age jump, circular progression and specialty over mechanism (issue 21).

Synthetic reads go through the public functions the map uses (template centring, the family questions,
the rule), and each rule is checked for its error rate under a null, its power on a planted effect, and
its control.
"""

from __future__ import annotations

import numpy as np
import pytest

from medinterp.maps import findings as F
from medinterp.techniques.geometry.concept import lexical_features, template_centre
from medinterp.techniques.geometry.questions import age_jump_test, labelling_excess_difference, progression_order

KEY = "age_step_ratio"


# ------------------------------------------------------------------------------------------ age
def _age_family(rng: np.random.Generator, jump: float, d: int = 12, n_tpl: int = 4) -> tuple:
    """Template-centred reads of ages 1..100 x 2 sexes x ``n_tpl`` templates: a smooth non-linear trend, per-age
    identity noise, template offsets, prompt noise; ``jump`` x the typical step added from age 18 on."""
    ages = np.tile(np.repeat(np.arange(1, 101), 2), n_tpl).astype(float)
    tpl = np.repeat(np.arange(n_tpl), 200)
    trend = 6.0 * np.outer(np.log(np.arange(1, 101)), rng.normal(size=d))  # concave: larger steps when young
    ident = rng.normal(size=(100, d)) * 0.5
    M = trend + ident
    typical = 0.5 * np.sqrt(2 * d)  # ≈ E‖ident_{a+1} − ident_a‖, the typical two-digit step
    u = rng.normal(size=d)
    M[17:] += jump * typical * u / np.linalg.norm(u)
    X = M[ages.astype(int) - 1] + 3.0 * rng.normal(size=(n_tpl, d))[tpl] + 0.5 * rng.normal(size=(len(ages), d))
    return template_centre(X, tpl), ages, tpl


def _age_stat(rng: np.random.Generator, jump: float) -> dict:
    r = age_jump_test(*_age_family(rng, jump))
    return {"value": r["ratio"], "p": r["p"]}


def _age_verdicts(n: int, jump_med: float, jump_ctrl: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([F.age_jump({"age": {KEY: _age_stat(rng, jump_med)},
                                 "age_control": {KEY: _age_stat(rng, jump_ctrl)}}).verdict for _ in range(n)])


def test_age_jump_p_reaches_below_one_over_nine():
    rng = np.random.default_rng(0)
    r = age_jump_test(*_age_family(rng, 6.0))
    assert r["n_steps"] == 88 and r["p"] == pytest.approx(1 / 89)
    assert r["ratio"] > 3


def test_age_jump_smooth_trend_rarely_holds():
    v = _age_verdicts(1000, 0.0, 0.0, seed=1)  # exact size 4/89 = 4.5% at alpha = .05
    assert (v == F.HOLDS).mean() <= 0.05, (v == F.HOLDS).mean()
    assert (v == F.FAILS).mean() >= 0.3  # the step lies in the bulk about half of the time


def test_age_jump_planted_jump_holds():
    v = _age_verdicts(100, 3.0, 0.0, seed=2)
    assert (v == F.HOLDS).mean() >= 0.8, (v == F.HOLDS).mean()


def test_age_jump_same_jump_in_control_is_not_medicine():
    v = _age_verdicts(100, 3.0, 3.0, seed=3)
    assert (v == F.HOLDS).mean() <= 0.05, (v == F.HOLDS).mean()
    r = F.age_jump({"age": {KEY: {"value": 3.0, "p": 0.011}}, "age_control": {KEY: {"value": 3.2, "p": 0.011}}})
    assert r.verdict == F.UNSURE and "control family" in r.detail


def test_age_jump_needs_every_measured_medical_family():
    ctl = {"age_control": {KEY: {"value": 1.0, "p": 0.6}}}
    both = {"age": {KEY: {"value": 3.0, "p": 0.011}}, "age_words": {KEY: {"value": 1.0, "p": 0.4}}, **ctl}
    assert F.age_jump(both).verdict == F.UNSURE
    both["age_words"][KEY] = {"value": 2.5, "p": 0.02}
    assert F.age_jump(both).verdict == F.HOLDS


# ---------------------------------------------------------------------------------- progression
DISEASES = ("Parkinson's disease", "COPD", "heart failure")


def _progression(rng: np.random.Generator, shape: str, n_stage: int = 10, n_tpl: int = 3, d: int = 8) -> tuple:
    X, dis, stage, items, tpl = [], [], [], [], []
    for dn in DISEASES:
        th = 2 * np.pi * np.arange(n_stage) / n_stage
        if shape == "circle":
            P = 2 * np.c_[np.cos(th), np.sin(th)]
        elif shape == "line":
            P = np.c_[np.linspace(-2, 2, n_stage), np.zeros(n_stage)]
        else:  # random stage positions: the null
            P = 1.5 * rng.normal(size=(n_stage, 2))
        pts = P @ np.linalg.qr(rng.normal(size=(d, 2)))[0].T
        offs = 2.0 * rng.normal(size=(n_tpl, d))
        for s in range(n_stage):
            for t in range(n_tpl):
                X.append(pts[s] + offs[t] + 0.4 * rng.normal(size=d))
                dis.append(dn), stage.append(s), items.append(f"{dn}:{s}"), tpl.append(t)
    return template_centre(np.asarray(X), tpl), dis, np.asarray(stage, float), np.asarray(items)


def _circ_finding(rng: np.random.Generator, shape: str, n_perm: int = 200) -> tuple[F.Finding, list]:
    r = progression_order(*_progression(rng, shape), n_perm=n_perm, seed=int(rng.integers(1 << 30)))
    by = {str(k): {"value": v["circularity"], "p": v["circ_p"], "null_median": v["circ_null_median"]}
          for k, v in r["per_disease"].items()}
    return F.circular_progression({"progression": {"progression_circularity": {"value": 0.0, "by_disease": by}}}), \
        [v["p"] for v in by.values()]


def test_circle_holds_line_does_not():
    rng = np.random.default_rng(4)
    circles = [_circ_finding(rng, "circle")[0].verdict for _ in range(20)]
    assert np.mean([v == F.HOLDS for v in circles]) >= 0.9
    lines = [_circ_finding(rng, "line")[0].verdict for _ in range(20)]
    assert all(v == F.FAILS for v in lines), lines


def test_circularity_null_rate():
    rng = np.random.default_rng(5)
    out = [_circ_finding(rng, "random") for _ in range(250)]
    holds = np.mean([f.verdict == F.HOLDS for f, _ in out])
    p = np.concatenate([ps for _, ps in out])
    assert holds <= 0.05, holds
    assert (p <= 0.05).mean() <= 0.07, (p <= 0.05).mean()  # each disease's permutation p is valid


# ------------------------------------------------------------------------ specialty over mechanism
def _drugs(rng: np.random.Generator, mode: str, n_items: int = 60, n_tpl: int = 3, d: int = 16) -> tuple:
    """Specialty (4 classes) and mechanism (4, cross-cutting) of ``n_items`` drugs; ``planted``: the reads carry
    specialty and the names are random; ``lexical``: the names carry specialty (a stem) and the reads only copy
    the names' character n-grams."""
    spec, mech = np.repeat(np.arange(4), n_items // 4), np.tile(np.arange(4), n_items // 4)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    stems = ["cardo", "pulmo", "neuro", "dermo"]
    names = [(stems[s] if mode == "lexical" else "".join(rng.choice(letters, 5))) + "".join(rng.choice(letters, 5))
             + f"{i}" for i, s in enumerate(spec)]
    rows, tpl = np.repeat(np.arange(n_items), n_tpl), np.tile(np.arange(n_tpl), n_items)
    base = rng.normal(size=(n_items, d))
    if mode == "planted":  # 0.9: power ~1 (16 of 16 runs hold); at 0.6 it was ~0.87, so 4 of 4 failed on some CPUs
        base += 0.9 * rng.normal(size=(4, d))[spec]
    else:
        lex_items = lexical_features(names, 16, 0)
        base = 0.3 * base + 3.0 * lex_items @ rng.normal(size=(lex_items.shape[1], d))
    X = base[rows] + 0.5 * rng.normal(size=(len(rows), d)) + rng.normal(size=(n_tpl, d))[tpl]
    lex = lexical_features([names[i] for i in rows], 16, 0)
    return template_centre(X, tpl), lex, spec[rows], mech[rows], rows, tpl


def _drug_verdict(rng: np.random.Generator, mode: str) -> tuple[str, dict]:
    X, lex, spec, mech, rows, tpl = _drugs(rng, mode)
    r = labelling_excess_difference(X, lex, spec, mech, rows, templates=tpl, n_perm=100, n_boot=100,
                                    seed=int(rng.integers(1 << 30)))
    stat = {k: r[k] for k in ("value", "ci_low", "ci_high")}
    return F.drugs_by_specialty({"drugs": {"specialty_minus_mechanism": stat}}).verdict, r


def test_specialty_beyond_lexical_holds():
    rng = np.random.default_rng(6)
    out = [_drug_verdict(rng, "planted") for _ in range(4)]
    assert all(v == F.HOLDS for v, _ in out), [(v, r["value"], r["se"]) for v, r in out]


def test_specialty_only_in_the_names_does_not_hold():
    rng = np.random.default_rng(7)
    out = [_drug_verdict(rng, "lexical") for _ in range(4)]
    assert all(r["level_a"] > 0.5 for _, r in out)  # the reads do decode specialty ...
    assert all(r["lexical_a"] > 0.5 for _, r in out)  # ... as the names do
    assert not any(v == F.HOLDS for v, _ in out), [(v, r["value"], r["se"]) for v, r in out]


# ---------------------------------------------------------------------- end to end: run -> extras -> rule
def test_run_stores_the_three_statistics_and_the_rules_read_them(tiny):
    import sys
    from pathlib import Path

    from medinterp.techniques import geometry as G
    from medinterp.techniques.geometry.findings import findings_extras

    sys.path.insert(0, str(Path(__file__).parent))
    from test_geometry import _FakeSet

    ages = [{"item": str(a), "age": a, "sex": "male"} for a in range(1, 101)]
    res = G.geometry(tiny, _FakeSet("toy_age", ages, ["sex"], ["age"], templates=("Age {item} patient",
                                                                                   "Patient aged {item}")),
                     labels=["age"], progress=False, n_boot_items=50)
    rows = res.table[res.table.metric == "age_jump"]
    assert len(rows) == len(res.layers) and (rows.n == 88).all() and rows.p_value.between(1 / 89, 1).all()
    found = {"age": findings_extras(tiny, res)["findings"]}
    assert found["age"]["age_step_ratio"]["layer"] == tiny.cfg.n_layers // 2
    assert F.age_jump(found).verdict in (F.FAILS, F.UNSURE)  # no control family measured: never "holds"

    prog = [{"item": f"{d} stage {s}", "disease": d, "stage": s} for d in ("parkinson", "asthma") for s in range(6)]
    res = G.geometry(tiny, _FakeSet("toy_progression", prog, ["disease"], ["stage"], templates=("{item}", "P: {item}")),
                     labels=["stage"], progress=False, n_boot_items=50, n_null=100)
    pc = findings_extras(tiny, res)["findings"]["progression_circularity"]
    assert set(pc["by_disease"]) == {"parkinson", "asthma"} and all(0 < v["p"] <= 1 for v in pc["by_disease"].values())
    assert F.circular_progression({"progression": {"progression_circularity": pc}}).detail.startswith("parkinson")

    words = ("aspirin ibuprofen metformin insulin lisinopril amoxicillin warfarin heparin atorvastatin omeprazole "
             "parkinson copd tremor dyspnea exertion productive sputum wheezing clinical examination shows reports "
             "pain chest fever cough headache nausea").split()
    drugs = [{"item": w, "sm": ["sa", "sb"][i % 2], "mc": ["ma", "mb"][(i // 2) % 2]} for i, w in enumerate(words)]
    res = G.geometry(tiny, _FakeSet("toy_drugs", drugs, ["sm", "mc"], []), labels=["sm"], matched_labels=["sm", "mc"],
                     progress=False, n_boot_items=50, n_null=50)
    d = res.table[res.table.metric == "labelling_excess_diff"]
    assert list(d.layer) == [tiny.cfg.n_layers // 2] and (d.ci_low < d.value).all() and (d.value < d.ci_high).all()
    stat = findings_extras(tiny, res)["findings"]["specialty_minus_mechanism"]
    assert F.drugs_by_specialty({"drugs": {"specialty_minus_mechanism": stat}}).verdict in (F.HOLDS, F.FAILS, F.UNSURE)
