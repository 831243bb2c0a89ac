"""Findings rules 0.3.1: collapse (participation ratio), fragility across models, first half beyond depth bias.

Synthetic numpy data through the public functions the map uses (:mod:`medinterp.maps.findings`,
:mod:`medinterp.maps.findings_models`, :func:`medinterp.stats.spectrum.participation_ratio_curve`).
"""

from __future__ import annotations

import numpy as np
import pytest

import medinterp.viz  # noqa: F401  (registers the renderers)
from medinterp.maps import KnowledgeMap, compare
from medinterp.maps import findings as F
from medinterp.maps.findings_models import compare_findings, first_half_contrast, fragility_contrast
from medinterp.maps.side_extras import CONTROL_ROW, TWIN_ROW
from medinterp.stats.spectrum import participation_ratio_ci, participation_ratio_curve

L, N, D = 12, 120, 24


# ---------------------------------------------------------------- collapse at mid depth
def _reads(rng, mid=None):
    """``[L, N, D]`` isotropic reads; ``mid(rng)`` replaces the middle layers (4-7)."""
    X = rng.normal(size=(L, N, D))
    if mid is not None:
        for k in range(4, 8):
            X[k] = mid(rng)
    return X


def rank1(rng):
    return np.outer(rng.normal(size=N), rng.normal(size=D)) * 3 + 0.05 * rng.normal(size=(N, D))


def outliers(rng):
    X = rng.normal(size=(N, D))
    X[:5] *= 3  # five far points (three times the typical norm), random directions
    return X


def _centred_cosine(X):
    Z = X - X.mean(0)
    U = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    s = U.sum(0)
    return float((s @ s - len(U)) / (len(U) * (len(U) - 1)))


def rank1_tight(rng):
    return np.outer(rng.normal(size=N), rng.normal(size=D)) * 3 + 0.001 * rng.normal(size=(N, D))


def _found(rng, mid, control_mid=None):
    return {"fam": {"collapse_participation_ratio": participation_ratio_curve(_reads(rng, mid), n_boot=200)},
            "fam" + CONTROL_ROW: {"collapse_participation_ratio": participation_ratio_curve(_reads(rng, control_mid),
                                                                                            n_boot=200, seed=1)},
            "fam" + TWIN_ROW: {"collapse_participation_ratio": participation_ratio_curve(_reads(rng), n_boot=200,
                                                                                         seed=2)}}


def test_pr_tells_rank1_from_isotropic_and_outliers():
    rng = np.random.default_rng(0)
    iso, one, out = (participation_ratio_ci(X, n_boot=200)["value"] for X in (rng.normal(size=(N, D)), rank1(rng),
                                                                                outliers(rng)))
    assert one < 1.1 and iso > 15 and out > 0.5 * iso
    # the old statistic cannot tell a rank-1 collapse from an isotropic cloud (both near -1/(n-1))
    assert abs(_centred_cosine(rank1(rng)) - _centred_cosine(rng.normal(size=(N, D)))) < 0.02


def test_rank1_mid_layer_collapse_holds():
    f = F.collapse_mid_depth(_found(np.random.default_rng(1), rank1))
    assert f.verdict == F.HOLDS, f.detail
    assert f.value < 1.5 and f.ci is not None and f.ci[1] < 1.5, f


def test_isotropic_with_outliers_does_not_hold():
    f = F.collapse_mid_depth(_found(np.random.default_rng(2), outliers))
    assert f.verdict != F.HOLDS, f.detail
    iso = F.collapse_mid_depth(_found(np.random.default_rng(3), None))
    assert iso.verdict != F.HOLDS
    ramp = {"fam": {"collapse_participation_ratio": {"per_layer": list(np.linspace(20, 2, L)),
                                                     "per_layer_low": list(np.linspace(19, 1, L)),
                                                     "per_layer_high": list(np.linspace(21, 3, L))}}}
    assert F.collapse_mid_depth(ramp).verdict == F.FAILS  # lowest at the end: no mid-depth dip


def test_collapse_shared_by_the_control_family_is_not_medical():
    f = F.collapse_mid_depth(_found(np.random.default_rng(4), rank1, control_mid=rank1_tight))
    assert f.verdict == F.UNSURE and "not below the control" in f.detail


# ---------------------------------------------------------------- fragility across models
def _unit_kl(rng, n_blocks, fragile, n_items=40):
    """Per-item mean skip KL: fragile = every block ~1.5 nats; robust = only the first and last blocks."""
    base = np.full(n_blocks, 1.5) if fragile else np.r_[3.0, np.full(n_blocks - 2, 0.08), 2.0]
    return base * rng.lognormal(0, 0.5, size=(n_items, n_blocks))


def _crit(u):
    return {"curve": u.mean(0).tolist(), "ci_low": u.min(0).tolist(), "ci_high": u.max(0).tolist(), "unit_kl": u.tolist()}


def test_planted_fragility_difference_is_told_apart():
    rng = np.random.default_rng(5)
    gemma, smol = _crit(_unit_kl(rng, 18, True)), _crit(_unit_kl(rng, 30, False))
    row = fragility_contrast(gemma, smol, "Gemma 3 270M", "SmolLM2-135M", ci=1 - 0.05 / 3, n_boot=1000)
    assert row.verdict == F.HOLDS and row.ci[0] > 0, row
    assert fragility_contrast(smol, gemma, ci=1 - 0.05 / 3, n_boot=1000).verdict == F.FAILS
    assert F.fragility(gemma, n_boot=500).verdict == F.HOLDS and F.fragility(smol, n_boot=500).verdict == F.FAILS


@pytest.mark.parametrize("fragile", [True, False])
def test_two_copies_of_one_model_are_not_told_apart(fragile):
    rng = np.random.default_rng(6 + fragile)
    runs, apart = 120, 0
    for r in range(runs):
        a, b = _crit(_unit_kl(rng, 18, fragile)), _crit(_unit_kl(rng, 18, fragile))
        row = fragility_contrast(a, b, ci=1 - 0.05 / 3, n_boot=500, seed=r)
        apart += row.ci[0] > 0 or row.ci[1] < 0
    assert apart <= 0.05 * runs, apart


# ---------------------------------------------------------------- first half beyond depth bias
LAYERS = 20
_depth = np.arange(LAYERS) / LAYERS
BIAS = np.stack([0.6 * np.exp(-3 * _depth), np.full(LAYERS, 0.2), 0.2 * _depth])  # early, flat, late techniques


def _marks(rng, n_fam=8, boost=None):
    p = np.broadcast_to(BIAS, (n_fam,) + BIAS.shape)
    if boost is not None:
        p = np.clip(p * boost, 0, 1)
    return rng.random(p.shape) < p


def test_first_half_null_with_depth_bias_rarely_holds():
    rng = np.random.default_rng(8)
    runs = 200
    holds = naive = 0
    for r in range(runs):
        m, c = _marks(rng), _marks(rng)
        f = F.first_half(m, list("abcdefgh"), LAYERS, 0.05, c, n_boot=200, seed=r)
        holds += f.verdict == F.HOLDS
        naive += f.value > 0.5  # the early technique makes most marks early: the share alone would say "first half"
    assert holds <= 0.05 * runs, holds
    assert naive > 0.5 * runs


def test_first_half_planted_pattern_holds():
    rng = np.random.default_rng(9)
    boost = np.where(_depth < 0.5, 2.0, 0.4)
    f = F.first_half(_marks(rng, boost=boost), list("abcdefgh"), LAYERS, 0.05, _marks(rng), n_boot=500)
    assert f.verdict == F.HOLDS and f.value > 0.5 and f.ci[0] > 0.5, f
    late = F.first_half(_marks(rng, boost=boost[::-1]), list("abcdefgh"), LAYERS, 0.05, _marks(rng), n_boot=500)
    assert late.verdict == F.FAILS
    assert F.first_half(_marks(rng), list("abcdefgh"), LAYERS).verdict == F.UNSURE  # no controls: bias unknown


# ---------------------------------------------------------------- the compare page
def _map(rng, name, fragile, n_layers, first):
    curves = {}
    for f in "abcdef":
        y = rng.normal(0, 0.2, n_layers)
        y[(1 if first else n_layers - 4):][:3] += 5
        curves[f] = {"peak": y}
    km = KnowledgeMap.from_curves(curves, model_name=name, techniques=["peak"], rules={"peak": "percentile"})
    km.extras["control_curves"] = {f: {"peak": rng.normal(0, 1, n_layers).tolist()} for f in "abcdef"}
    km.extras["block_criticality"] = {"a": _crit(_unit_kl(rng, n_layers, fragile))}
    return km


def test_compare_findings_table_and_page(tmp_path):
    rng = np.random.default_rng(10)
    a, b = _map(rng, "Gemma <3> 270M", True, 18, True), _map(rng, "SmolLM2-135M", False, 30, False)
    rows = compare_findings([a, b], n_boot=500)
    assert [r.verdict for r in rows] == [F.HOLDS, F.HOLDS, F.UNSURE]  # collapse: no PR measured
    assert "not measured" in rows[2].detail
    assert first_half_contrast(b, a, n_boot=500).verdict == F.FAILS
    table = F.findings_table(a)  # the single-model rows read the same extras (control curves, unit KL)
    assert table[0].verdict == F.HOLDS and "control curves" in table[0].detail and table[-1].verdict == F.HOLDS
    html = compare([a, b], out=tmp_path / "c.html")
    assert "Findings that compare models" in html and "Gemma &lt;3&gt; 270M" in html and "Gemma <3>" not in html


def test_side_extras_bring_control_and_twin_statistics_and_control_curves(monkeypatch):
    from types import SimpleNamespace

    from medinterp.maps.side_extras import add_side_extras
    from medinterp.techniques import REGISTRY
    from medinterp.techniques.base import Technique

    pr = {"per_layer": [9.0, 2.0, 9.0]}
    extras = lambda model, res: {"findings": {"collapse_participation_ratio": {**pr, "of": res}}, "strip": {"x": 1}}
    monkeypatch.setitem(REGISTRY, "toy_fm", Technique("toy_fm", lambda *a, **k: None, extras=extras, extras_on_controls=True))
    km = SimpleNamespace(extras={}, n_layers=3)
    add_side_extras(None, km, {("drugs", "toy_fm"): "ctrl"}, {("drugs", "toy_fm"): "twin"},
                    lambda res, n: (np.arange(float(n)), None, ""))
    assert km.extras["findings"]["drugs__control"]["collapse_participation_ratio"]["of"] == "ctrl"
    assert km.extras["findings"]["drugs__twin"]["collapse_participation_ratio"]["of"] == "twin"
    assert km.extras["control_curves"] == {"drugs": {"toy_fm": [0.0, 1.0, 2.0]}} and "strip" not in km.extras


def test_side_extras_skip_a_technique_whose_extras_runs_the_model(monkeypatch):
    """An extras that is not marked cheap (``extras_on_controls``; e.g. an attention view that runs the model)
    is not called on the control-family and twin results: its output there would be thrown away."""
    from types import SimpleNamespace

    from medinterp.maps.side_extras import add_side_extras
    from medinterp.techniques import REGISTRY
    from medinterp.techniques.base import Technique

    calls = []
    extras = lambda model, res: calls.append(res) or {"findings": {"x": {"value": 1.0}}}  # noqa: E731
    monkeypatch.setitem(REGISTRY, "toy_costly", Technique("toy_costly", lambda *a, **k: None, extras=extras))
    km = SimpleNamespace(extras={}, n_layers=3)
    add_side_extras(None, km, {("drugs", "toy_costly"): "ctrl"}, {("drugs", "toy_costly"): "twin"})
    assert calls == [] and "findings" not in km.extras


def test_every_finding_row_states_its_null_and_the_report_names_the_paper(tmp_path):
    """Issue 21 item 4: each row says what it is tested against, and the table names the paper."""
    import medinterp.viz  # noqa: F401  (registers the renderers)
    from medinterp.maps import KnowledgeMap
    from medinterp.maps.findings import NULLS, findings_table

    km = KnowledgeMap.from_curves({"drugs": {"peak": np.r_[0, 5, 5, 0, 0, 0.0]}}, model_name="A",
                                  techniques=["peak"], rules={"peak": "percentile"})
    rows = findings_table(km)
    assert len(rows) == 6 and all(f.null and f.claim in NULLS for f in rows), [f.claim for f in rows]
    html = km.to_html(tmp_path / "r.html")
    assert "arXiv 2510.11390" in html and "<th>null</th>" in html
