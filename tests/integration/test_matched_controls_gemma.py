"""Matched controls on the real Gemma 3 270M (issue 20 item 8a): two halves of one shipped non-medical pair set,
identical in construction, mapped one against the other by lesion and causal tracing, give no mark."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medinterp.maps.controls import NoScores, effect_over_control


def _halves(pairs, seed=0):
    """The pair set split at random by clean prompt (an item's pairs stay together)."""
    cleans = sorted({p.clean for p in pairs.pairs})
    rng = np.random.default_rng(seed)
    a = set(rng.choice(cleans, size=len(cleans) // 2, replace=False).tolist())
    return (dataclasses.replace(pairs, name=pairs.name + "_a", pairs=[p for p in pairs.pairs if p.clean in a]),
            dataclasses.replace(pairs, name=pairs.name + "_b", pairs=[p for p in pairs.pairs if p.clean not in a]))


@pytest.mark.integration
def test_two_halves_of_one_control_set_are_not_told_apart(gemma):
    import medinterp as mi
    from medinterp.techniques import REGISTRY
    from medinterp.techniques.base import Family

    a, b = _halves(mi.load_concepts("drug_pairs_control"))
    marked = {}
    for name in ("lesion", "patching"):
        tech = REGISTRY[name]
        params = {**tech.params("full"), "progress": False}
        ra = tech.run(gemma, Family("a", pairs=a), **params)
        rb = tech.run(gemma, Family("b", pairs=b), **params)
        try:
            out = effect_over_control(ra.unit_scores(), rb.unit_scores(), None, n_perm=20000, n_boot=500)
        except NoScores as e:  # e.g. too few known prompts in one half: nothing can be marked either
            marked[name] = f"no scores: {e}"
            continue
        assert out.balance is not None and out.balance.covariates, name  # the technique recorded covariates
        marked[name] = out.intervals
    assert all(v == [] or isinstance(v, str) for v in marked.values()), marked
    assert any(isinstance(v, list) for v in marked.values()), marked  # at least one comparison really ran


@pytest.mark.integration
def test_geometry_positive_control_is_marked(gemma):
    """Item 8(f): progression's stage, which Gemma 3 270M decodes (grouped R² 0.3-0.6, its lexical baseline
    <= 0), against the same prompts with the stage shuffled across items (a perfectly matched control with no
    label) is marked by the map's geometry cell; the shuffled family against another shuffle is not."""
    from medinterp.maps.contrast import contrast_marking
    from medinterp.techniques import REGISTRY
    from medinterp.techniques.base import Family
    from medinterp.techniques.geometry.contrast import shuffled_control

    tech = REGISTRY["geometry"]
    res = tech.run(gemma, Family("progression", concepts="progression"), **{**tech.params("full"), "progress": False})
    real = contrast_marking(res, shuffled_control(res, seed=0), None, seed=0)
    null = contrast_marking(shuffled_control(res, seed=1), shuffled_control(res, seed=0), None, seed=0)
    assert real.intervals, (np.round(real.effect, 2).tolist(), np.round(real.p_adj, 3).tolist())
    assert null.intervals == [], np.round(null.p_adj, 3).tolist()


@pytest.mark.integration
def test_frame_length_alone_is_never_marked(gemma):
    """Item 8(b) on the real model: one control pair set against itself with a longer frame (same facts, same
    answers, two more tokens before the answer): lesion and tracing give no mark, and the balance gate names
    the frame length."""
    import medinterp as mi
    from medinterp.techniques import REGISTRY
    from medinterp.techniques.base import Family

    base = mi.load_concepts("drug_pairs_control")
    long = dataclasses.replace(base, name=base.name + "_long", pairs=[
        dataclasses.replace(p, clean=p.clean.replace(" is used for", " is, in practice, used for"),
                            corrupted=p.corrupted.replace(" is used for", " is, in practice, used for"))
        for p in base.pairs])
    assert all(" in practice" in p.clean for p in long.pairs)
    out = {}
    for name in ("lesion", "patching"):
        tech = REGISTRY[name]
        params = {**tech.params("full"), "progress": False}
        ra = tech.run(gemma, Family("long", pairs=long), **params)
        rb = tech.run(gemma, Family("base", pairs=base), **params)
        try:
            m = effect_over_control(ra.unit_scores(), rb.unit_scores(), None, n_perm=20000, n_boot=500)
        except NoScores as e:
            out[name] = f"no scores: {e}"
            continue
        assert m.intervals == [], (name, m.intervals)
        out[name] = m.balance.reason or "comparable"
    assert any("prompt_tokens" in str(v) or "tokens_after_subject" in str(v) for v in out.values()), out
