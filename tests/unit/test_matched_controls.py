"""Matched controls (METHOD §0b): the balance gate, confound injection, units, power; known answers only."""

from __future__ import annotations

import numpy as np
import pytest

from medinterp import stats
from medinterp.maps.balance import match_units, smd
from medinterp.maps.controls import effect_over_control
from medinterp.techniques.base import UnitScores

N_LAYERS = 6


def _family(rng, n_items, n_t, prefix, *, subject_tokens, prior, effect_of_tokens=0.0, effect_of_prior=0.0,
            planted=None):
    """Per-prompt scores that depend on covariates only (plus noise and an item effect), no medicine."""
    units = [f"{prefix}{i}" for i in range(n_items) for _ in range(n_t)]
    tmpl = [t for _ in range(n_items) for t in range(n_t)]
    tok = np.repeat(subject_tokens, n_t).astype(float)
    pr = np.repeat(prior, n_t).astype(float)
    item_effect = np.repeat(rng.normal(scale=0.5, size=n_items), n_t)[:, None]
    v = rng.normal(size=(n_items * n_t, N_LAYERS)) + item_effect
    v[:, 2:5] += effect_of_tokens * tok[:, None] + effect_of_prior * pr[:, None]
    if planted is not None:
        v[:, 2:5] += planted
    return UnitScores(v, units, tmpl, covariates={"subject_tokens": tok, "answer_prior": pr})


def test_smd_and_matching_known_answers():
    # SMD by hand
    assert smd([1, 2, 3], [2, 3, 4]) == pytest.approx(-1.0)
    assert smd([0, 2], [0, 2]) == 0.0
    # matching keeps only the shared token-count strata and balances them exactly
    med = {"subject_tokens": np.array([1, 1, 3, 3, 3, 5.]), "answer_prior": np.zeros(6)}
    ctl = {"subject_tokens": np.array([1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 7.]), "answer_prior": np.zeros(12)}
    b = match_units(med, np.arange(6), ctl, np.arange(12), min_units=2)
    assert b.comparable and b.smd_after["subject_tokens"] == 0.0
    assert "5" not in b.medicine_units.tolist() and "11" not in b.control_units.tolist()
    assert len(b.control_units) == 2 * len(b.medicine_units)  # 1:2, each control used once
    # a control with no overlap on a token count is not comparable, and says which covariate
    ctl2 = {"subject_tokens": np.full(12, 2.0), "answer_prior": np.zeros(12)}
    b2 = match_units(med, np.arange(6), ctl2, np.arange(12))
    assert not b2.comparable and b2.reason.startswith("control not comparable") and "subject_tokens" in b2.reason
    # no covariates: never comparable (cannot be checked)
    b3 = match_units({}, np.arange(6), {}, np.arange(6))
    assert not b3.comparable and "no covariates" in b3.reason


def _rate(make, n_runs, **kw):
    hits = 0
    for seed in range(n_runs):
        rng = np.random.default_rng(seed)
        med, ctrl = make(rng)
        out = effect_over_control(med, ctrl, None, n_perm=999, n_boot=50, n_resamples=5, seed=seed, **kw)
        hits += bool(out.marked.any())
    return hits / n_runs


def test_confound_injection_token_count_gives_no_mark_with_balance_and_marks_without():
    """Two non-medical families that differ only in subject token count (scores rise with it): the old
    exchangeability rule marks them; the balance gate (exact strata on token counts) does not."""
    def make(rng):
        med = _family(rng, 24, 3, "m", subject_tokens=rng.choice([2, 3, 4], size=24), prior=rng.normal(-8, 1, 24),
                      effect_of_tokens=0.8)
        ctrl = _family(rng, 30, 3, "c", subject_tokens=rng.choice([1, 2, 3], size=30, p=[.5, .3, .2]),
                       prior=rng.normal(-8, 1, 30), effect_of_tokens=0.8)
        return med, ctrl

    assert _rate(make, 40, balance=False) >= 0.5  # the confound is strong enough to fool the unbalanced test
    assert _rate(make, 40, balance=True) <= 0.05


def test_confound_injection_answer_prior_gives_no_mark_with_balance():
    """Families that differ only in answer-token frequency (rarer answers lose more): matched on the prior
    within a caliper, or refused as not comparable; never marked beyond the nominal rate."""
    def make(rng):
        med = _family(rng, 30, 2, "m", subject_tokens=np.ones(30), prior=rng.normal(-10, 1.5, 30),
                      effect_of_prior=-0.6)
        ctrl = _family(rng, 60, 2, "c", subject_tokens=np.ones(60), prior=rng.normal(-7, 1.5, 60),
                       effect_of_prior=-0.6)
        return med, ctrl

    assert _rate(make, 40, balance=False) >= 0.5
    assert _rate(make, 40, balance=True) <= 0.05


def test_class_count_alone_is_not_comparable():
    rng = np.random.default_rng(0)
    med = UnitScores(rng.normal(size=(40, 4)) + 1, [f"m{i}" for i in range(40)],
                     covariates={"n_classes": np.full(40, 15.0), "items_per_class": np.full(40, 10.0)})
    ctrl = UnitScores(rng.normal(size=(40, 4)), [f"c{i}" for i in range(40)],
                      covariates={"n_classes": np.full(40, 10.0), "items_per_class": np.full(40, 6.0)})
    out = effect_over_control(med, ctrl, None, n_perm=999, n_boot=50, n_resamples=5)
    assert not out.comparable and not out.marked.any() and "n_classes" in out.balance.reason


def test_prompt_ids_as_units_and_no_correction_are_anticonservative():
    """(d) The map-level noise check can fail: on data with item effects, prompt-level units and
    uncorrected p-values reject far more often than alpha; items + Holm stay at or below it."""
    n_runs, n_items, n_t = 120, 12, 6
    item_rate = prompt_rate = raw_rate = 0
    for seed in range(n_runs):
        rng = np.random.default_rng(seed)
        med = np.repeat(rng.normal(size=(n_items, N_LAYERS)), n_t, 0) + 0.3 * rng.normal(size=(n_items * n_t, N_LAYERS))
        ctrl = np.repeat(rng.normal(size=(n_items, N_LAYERS)), n_t, 0) + 0.3 * rng.normal(size=(n_items * n_t, N_LAYERS))
        units = np.repeat(np.arange(n_items), n_t)
        by_item = stats.layer_effects(med, ctrl, medicine_units=units, control_units=units + 1000,
                                      n_perm=999, n_boot=20, seed=seed)
        by_prompt = stats.layer_effects(med, ctrl, n_perm=999, n_boot=20, seed=seed)
        item_rate += (stats.adjust(by_item.p, "holm") <= 0.05).any()
        prompt_rate += (stats.adjust(by_prompt.p, "holm") <= 0.05).any()
        raw_rate += (by_item.p <= 0.05).any()
    assert item_rate / n_runs <= 0.07
    assert prompt_rate / n_runs >= 0.2
    assert raw_rate / n_runs >= 0.15


def test_power_floor_planted_2sd_effect_at_preset_size():
    """(e) A planted 2 SD (item-level) effect at 3 layers in a cell of the preset size (30 known prompts per
    family, the twin paired) is marked in >= 80% of runs, with the map's marking parameters."""
    hits = 0
    n_runs = 20
    for seed in range(n_runs):
        rng = np.random.default_rng(seed)
        n = 30
        cov = {"subject_tokens": np.ones(n)}
        med = rng.normal(size=(n, N_LAYERS))
        med[:, 2:5] += 2.0
        units = [f"m{i}" for i in range(n)]
        m = UnitScores(med, units, covariates=cov)
        c = UnitScores(rng.normal(size=(n, N_LAYERS)), [f"c{i}" for i in range(n)], covariates=cov)
        tw = UnitScores(rng.normal(size=(n, N_LAYERS)), units, covariates=cov)
        out = effect_over_control(m, c, tw, n_perm=20000, n_boot=200, n_resamples=20, seed=seed)
        hits += set(np.flatnonzero(out.marked)) == {2, 3, 4}
        assert np.all(out.mde[2:5] < 2.0)  # the cell could see the effect, and says so
    assert hits / n_runs >= 0.8


def test_exact_enumeration_reaches_alpha_over_18_layers_with_10_paired_items():
    """The review's case: 10 paired items, 1,024 sign flips. Random draws of 1,000 could not reliably pass
    0.05/18; exact enumeration gives p = 1/1024 on data where every item is higher."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 18)) + 10.0
    b = rng.normal(size=(10, 18))
    p = stats.layer_effects(a, b, paired=True, n_perm=1000, n_boot=20).p
    assert np.allclose(p, 1 / 1024)
    assert stats.adjust(p, "holm").max() <= 0.05 / 2


def test_answer_prior_is_the_models_logp_after_bos_alone():
    import torch

    from medinterp.covariates import answer_prior
    from medinterp.testing import tiny_model

    m = tiny_model(n_layers=2)
    got = answer_prior(m, [3, 5, 7])
    ref = torch.log_softmax(m(torch.tensor([[m.tokenizer.bos_token_id]]))[0, -1], -1)[[3, 5, 7]].detach().numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_span_covariates_count_the_differing_span():
    from medinterp.covariates import span_covariates

    out = span_covariates([[1, 9, 9, 4, 5, 6], [1, 2, 3]], [[1, 8, 8, 4, 5, 6], [1, 2]], bos=True)
    assert out["subject_tokens"][0] == 2 and out["tokens_after_subject"][0] == 3 and out["prompt_tokens"][0] == 5
    assert np.isnan(out["subject_tokens"][1]) and out["prompt_tokens"][1] == 2  # lengths differ: no span


def test_smd_after_matching_keeps_the_pre_matching_scale():
    """Ten close pairs (0.1 apart on a covariate whose pooled SD is ~2.4) and far items that no caliper keeps:
    the matched subset has almost no spread, so an SMD on its own SD would call a 0.1 difference 'imbalanced'
    (~10); on the pre-matching SD it is ~0.04 and the control is comparable."""
    from medinterp.maps.balance import match_units

    med = np.r_[5.0 + 0.01 * np.arange(10), np.zeros(5)]
    ctl = np.r_[5.1 + 0.01 * np.arange(10), np.full(5, 10.0)]
    b = match_units({"answer_prior": med}, np.arange(15), {"answer_prior": ctl}, np.arange(15), caliper=1.0)
    assert b.comparable, b.reason
    assert len(b.medicine_units) == 10
    assert abs(b.smd_after["answer_prior"]) < 0.1
    assert abs(b.smd_before["answer_prior"]) > 1.0


def _continuous_inputs(rng, signal: float, n_groups: int = 60, L: int = 3):
    from medinterp.techniques.geometry.contrast import ProbeInputs

    y_g = rng.integers(0, 10, size=n_groups).astype(float)
    groups = np.repeat(np.arange(n_groups).astype(str), 3)
    y = np.repeat(y_g, 3)
    X = rng.normal(size=(L, len(y), 8))
    X[:, :, 0] += signal * (y - 4.5) / 3
    return ProbeInputs(layers=list(range(L)), features=X, lexical=rng.normal(size=(len(y), 6)), embedding=None,
                       y=y, groups=groups, templates=np.tile(np.arange(3).astype(str), n_groups), continuous=True)


def test_continuous_geometry_contrast_is_bounded_and_finds_a_planted_label():
    """Continuous labels (age, progression stage): R² of a ridge probe under label permutations is far below
    0 (a noise probe extrapolates), so 0.3.0's chance-centred contrasts were 'effects' of 3-8 with SEs of 1-7
    on Gemma 3 270M. Scored as max(R², 0): noise against noise stays near 0 with a small SE and is never
    rejected after Holm in 20 runs; a planted linear label against noise is."""
    from medinterp import stats
    from medinterp.techniques.geometry.contrast import geometry_cell

    rng = np.random.default_rng(0)
    rejected = 0
    for r in range(20):
        c = geometry_cell(_continuous_inputs(rng, 0.0), _continuous_inputs(rng, 0.0), n_perm=20, n_boot=40, seed=r)
        assert np.all(np.abs(c.effect) < 0.3) and np.all(c.se < 0.3), (c.effect, c.se)
        rejected += bool((stats.adjust(np.nan_to_num(c.p, nan=1.0), "holm") <= 0.05).any())
    assert rejected <= 2
    c = geometry_cell(_continuous_inputs(rng, 3.0), _continuous_inputs(rng, 0.0), n_perm=20, n_boot=40, seed=0)
    assert np.all(c.effect > 0.3) and (stats.adjust(c.p, "holm") <= 0.05).all(), (c.effect, c.p)
