"""Causal tracing: brute force equality, the known-pair rule, "not known", aggregates, unit scores, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medinterp.errors import MedinterpError
from medinterp.results import Result
from medinterp.techniques.base import Family
from medinterp.techniques.patching import PatchingResult, TracingResult, causal_trace, known_mask
from medinterp.techniques.patching import TECHNIQUE
from medinterp.techniques.patching.tracing import CLIP, aggregate

PAIRS = [
    ("A 45 year old man with chest pain has", "A 45 year old man with cough pain has", " angina", " pneumonia"),
    ("The patient with fever and cough has", "The patient with fever and wheezing has", " pneumonia", " asthma"),
    ("old man with chest pain has", "old woman with chest pain has", " angina", " pneumonia"),
    ("a man with chest pain has", "a man with cough pain has", " angina", " pneumonia"),
    ("The patient with fever and cough has", "The patient with chest and wheezing has", " asthma", " pneumonia"),
]
RELAXED = dict(min_known=1, min_margin=0.0, require_sign=False, progress=False, n_boot=50)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def gemma_like():
    """Gemma-3-like tiny model (rotary, GQA, gated MLP, local/global layers), float64."""
    from medinterp.testing import tiny_model

    return tiny_model(n_layers=3, d_model=64, n_heads=4, d_mlp=128, seed=1, dtype=torch.float64,
                      positional_embedding_type="rotary", rotary_dim=16, n_key_value_heads=2, gated_mlp=True,
                      attn_types=["local", "global", "local"], window_size=4)


def _brute_force(model, pair, layer, mask):
    """One run_with_hooks per (layer, positions): clean resid_pre written into the corrupted run."""
    clean, corr, ca, xa = pair
    ct, xt = model.to_tokens(clean), model.to_tokens(corr)
    cid, xid = model.to_single_token(ca), model.to_single_token(xa)
    name = f"blocks.{layer}.hook_resid_pre"
    with torch.no_grad():
        logits_c, cache = model.run_with_cache(ct, names_filter=name)
        logits_x = model(xt)

        def hook(act, hook):
            act = act.clone()
            act[0, torch.as_tensor(mask)] = cache[name][0, torch.as_tensor(mask)]
            return act

        logits_p = model.run_with_hooks(xt, fwd_hooks=[(name, hook)])
    ld = lambda lg: float(lg[0, -1, cid] - lg[0, -1, xid])  # noqa: E731
    return ld(logits_p), ld(logits_c), ld(logits_x)


def test_tracing_equals_brute_force_run_with_hooks(gemma_like):
    r = causal_trace(gemma_like, PAIRS, **RELAXED)
    assert r.known.all() and r.ld.shape == (len(PAIRS), 3, 2)
    for i, pair in enumerate(PAIRS):
        ct, xt = gemma_like.to_tokens(pair[0])[0], gemma_like.to_tokens(pair[1])[0]
        span = (ct != xt).numpy()
        assert r.spans[i] == np.flatnonzero(span).tolist()
        last = np.eye(len(ct), dtype=bool)[-1]
        for li in range(3):
            for j, mask in enumerate((span, last)):
                ldp, ldc, ldx = _brute_force(gemma_like, pair, li, mask)
                assert abs(r.ld[i, li, j] - ldp) < 1e-6
                assert abs(r.P[i, li, j] - (ldp - ldx) / (ldc - ldx)) < 1e-5
        assert abs(r.clean_ld[i] - ldc) < 1e-9 and abs(r.corrupted_ld[i] - ldx) < 1e-9
    # restoring every differing token at the embeddings is the clean run: P = 1 at layer 0
    np.testing.assert_allclose(r.P[:, 0, 0], 1.0, atol=1e-5)


def test_explicit_span_column_adds_tokens(gemma_like):
    from medinterp.concepts import PairSet, PromptPair

    p = PromptPair(*PAIRS[0], meta={"span": "45 year"})
    r = causal_trace(gemma_like, PairSet.from_pairs([p]), **RELAXED)
    toks = gemma_like.to_str_tokens(PAIRS[0][0])
    assert [toks[k] for k in r.spans[0]] == ["45", "year", "chest"]
    with pytest.raises(MedinterpError, match="not a substring"):
        causal_trace(gemma_like, PairSet.from_pairs([PromptPair(*PAIRS[0], meta={"span": "zebra"})]), **RELAXED)


def test_known_rule_by_hand():
    clean = np.array([2.0, 0.5, 3.0, -1.0, 0.5, 0.2])
    corr = np.array([-1.0, -0.2, 1.0, 2.0, -0.5, -0.3])
    known, reasons = known_mask(clean, corr, min_margin=1.0)
    assert known.tolist() == [True, False, False, False, True, False]
    assert reasons[0] == "" and "< 1.0 logit" in reasons[1] and "LD_corrupted" in reasons[2]
    assert "LD_clean" in reasons[3] and "< 1.0 logit" in reasons[5]
    assert known_mask(clean, corr, min_margin=0.0)[0].tolist() == [True, True, False, False, True, True]


def test_tracing_applies_the_rule_and_sweeps_only_known_pairs(gemma_like):
    r = causal_trace(gemma_like, PAIRS, min_known=1, min_margin=0.0, progress=False, n_boot=20)
    expect, _ = known_mask(r.clean_ld, r.corrupted_ld, 0.0)
    np.testing.assert_array_equal(r.known, expect)
    assert r.ld.shape[0] == r.n_known == int(expect.sum())
    assert r.accuracy == pytest.approx(np.mean((r.clean_ld > 0) & (r.corrupted_ld < 0)))
    assert [p["known"] for p in r.all_pairs] == expect.tolist()


def test_not_known_flag_and_nan_unit_scores(gemma_like):
    r = causal_trace(gemma_like, PAIRS, min_known=len(PAIRS) + 1, min_margin=0.0, require_sign=False,
                     progress=False, n_boot=20)
    assert not r.known_by_model and "at least 6 needed" in r.not_known_reason
    assert "not known by the model" in r.summary()
    us = r.unit_scores()
    assert us.values.shape == (len(PAIRS), 3) and np.isnan(us.values).all()
    assert np.isnan(r.layer_curve()).all() and r.band == [] and r.mover is None
    assert np.isfinite(r.ratio).all()  # the raw numbers are still there
    skipped = causal_trace(gemma_like, PAIRS, min_known=len(PAIRS) + 1, min_margin=0.0, require_sign=False,
                           progress=False, n_boot=20, trace_unknown=False)
    assert not skipped.known_by_model and np.isnan(skipped.ratio).all() and skipped.timings["sweep"] < 1e-2
    np.testing.assert_array_equal(skipped.clean_ld, r.clean_ld)
    ok = causal_trace(gemma_like, PAIRS, **RELAXED)
    assert ok.known_by_model and np.isfinite(ok.unit_scores().values).all()


def test_ratio_of_sums_and_median_by_hand():
    clean, corr = np.array([2.0, 4.0, 1.0]), np.array([-1.0, -2.0, -1.0])
    ld = np.array([0.5, 1.0, 1.0])[:, None]  # [pair, 1 layer]
    P, ratio, lo, hi, med = aggregate(ld, clean, corr, ["a", "b", "c"], n_boot=200)
    np.testing.assert_allclose(P[:, 0], [0.5, 0.5, 1.0])
    assert ratio[0] == pytest.approx(6.5 / 11) and med[0] == pytest.approx(0.5)
    assert ratio[0] != pytest.approx(P.mean())  # not the mean of ratios (2/3)
    assert lo[0] <= ratio[0] <= hi[0] and 0.5 <= lo[0] and hi[0] <= 1.0
    # a tiny denominator cannot dominate the ratio of sums, but it does the mean of ratios
    P2, ratio2, *_ = aggregate(np.array([[0.5], [1.0], [0.5]]), np.array([2.0, 4.0, 1e-3]), np.array([-1.0, -2.0, 0.0]),
                               [1, 2, 3])
    assert P2[2, 0] == pytest.approx(500.0) and ratio2[0] == pytest.approx(5.0 / 9.001)
    # the same item twice is one unit: with one item no CI
    _, _, lo1, hi1, _ = aggregate(ld, clean, corr, ["a", "a", "a"])
    assert np.isnan(lo1).all() and np.isnan(hi1).all()


def test_unit_scores_clip_and_units():
    P = np.array([[[1.0, 0.0], [5.0, 0.0]], [[-3.0, 0.0], [0.2, 0.0]]])
    r = TracingResult(P=P, known_by_model=True, layers=[0, 1], units=["chest", "cough"], ratio=np.zeros((2, 2)),
                      ratio_low=np.zeros((2, 2)), ratio_high=np.zeros((2, 2)))
    us = r.unit_scores()
    np.testing.assert_array_equal(us.values, [[1.0, CLIP[1]], [CLIP[0], 0.2]])
    assert us.units == ["chest", "cough"] and "clipped" in us.description


def test_units_are_items_and_item_column(gemma_like):
    from medinterp.concepts import PairSet, PromptPair

    r = causal_trace(gemma_like, PAIRS[:2], **RELAXED)
    assert r.units == ["chest", "cough"]
    ps = PairSet.from_pairs([PromptPair(*PAIRS[0], meta={"item": "angina-1"}), PromptPair(*PAIRS[1])])
    assert causal_trace(gemma_like, ps, **RELAXED).units == ["angina-1", "cough"]


def test_components_and_fast_engine(gemma_like):
    r = causal_trace(gemma_like, PAIRS, components=["attn_out", "mlp_out"], **RELAXED)
    assert r.component_ld.shape == (2, len(PAIRS), 3, 2) and r.component_ratio.shape == (2, 3, 2)
    eng = r.diagnostics["engine"]["resid_pre"]
    # 5 pairs in 4 length groups x 3 layers; both restorations of a group share one call
    assert eng["forward_calls"] <= 4 * 3 and eng["rows"] == len(PAIRS) * 3 * 2
    with pytest.raises(MedinterpError, match="components must be among"):
        causal_trace(gemma_like, PAIRS, components=["z"], **RELAXED)


def test_save_load_figure_and_summary(gemma_like, tmp_path):
    import medinterp.viz  # noqa: F401  (registers the renderers)

    r = causal_trace(gemma_like, PAIRS, **RELAXED)
    r.save(tmp_path / "t")
    back = Result.load(tmp_path / "t")
    assert isinstance(back, TracingResult) and back.units == r.units
    np.testing.assert_array_equal(back.P, r.P)
    assert len(back.figures()) == 2 and "recovered fraction" in back.curve_label
    assert type(back.figure()).__name__ == "Figure"
    assert "valid pairs known" in r.summary() and "mover block" in r.summary()


def test_technique_runs_tracing_by_default(gemma_like):
    fam = Family("toy", pairs=PAIRS)
    r = TECHNIQUE.run(gemma_like, fam, **TECHNIQUE.params("quick", {**RELAXED, "n_boot": 20}))
    assert isinstance(r, TracingResult) and r.params["min_known"] == 1
    old = TECHNIQUE.run(gemma_like, fam, mode="resid_last", progress=False, n_boot=20)
    assert isinstance(old, PatchingResult) and old.curve_label == "P after patching resid_pre at the last position"
    with pytest.raises(MedinterpError, match="mode"):
        TECHNIQUE.run(gemma_like, fam, mode="nope")


def test_band_with_mover_known_answers():
    from medinterp.techniques.patching.tracing import band_with_mover

    assert band_with_mover([(0, 3)], 4) == [(0, 4)]  # adjacent: merges
    assert band_with_mover([(0, 3)], 2) == [(0, 3)]  # inside: nothing new
    assert band_with_mover([(0, 3)], 7) == [(0, 3), (7, 7)]  # apart: its own one-block run
    assert band_with_mover([(5, 6), (0, 1)], 3) == [(0, 1), (3, 3), (5, 6)]
    assert band_with_mover([(0, 1), (3, 4)], 2) == [(0, 4)]  # bridges two runs
    assert band_with_mover([], 5) == [(5, 5)] and band_with_mover([(2, 3)], None) == [(2, 3)]


def test_mover_enters_the_band(gemma_like):
    from medinterp.stats import intervals_from_mask
    from medinterp.techniques.patching.tracing import band_with_mover

    # an empty span band leaves exactly the mover; a mover next to or inside a run merges into it
    assert band_with_mover([], 1) == [(1, 1)]
    assert band_with_mover([(2, 3)], 1) == [(1, 3)] and band_with_mover([(0, 4)], 2) == [(0, 4)]
    # layers 1-2 only: one step of the last-token curve, so block 1 is the mover whatever the random
    # weights do (this toy model's vocabulary follows the shipped concept files, so its curves do too)
    r = causal_trace(gemma_like, PAIRS, layers=[1, 2], **RELAXED)
    assert r.mover == 1
    span = intervals_from_mask(r.curve("span") >= 0.5)
    assert r.span_band == [(int(a) + 1, int(b) + 1) for a, b in span]  # curve index 0 is layer 1
    assert r.band == band_with_mover(r.span_band, 1) and any(a <= 1 <= b for a, b in r.band)
    # all layers: band = span runs united with the mover
    r = causal_trace(gemma_like, PAIRS, **RELAXED)
    span = intervals_from_mask(r.curve("span") >= 0.5)
    assert r.span_band == [(int(a), int(b)) for a, b in span]
    assert r.band == band_with_mover(r.span_band, r.mover)
    assert any(a <= r.mover <= b for a, b in r.band)
    assert r.mover == int(np.argmax(np.diff(r.curve("last"))))
    assert f"mover block {r.mover}" in r.summary()
    # not known: no band, no mover
    nk = causal_trace(gemma_like, PAIRS, min_known=99, min_margin=0.0, require_sign=False, progress=False, n_boot=5)
    assert nk.band == [] and nk.span_band == [] and nk.mover is None


def test_covariates_by_hand(gemma_like):
    from medinterp.covariates import COVARIATES, span_covariates

    full = causal_trace(gemma_like, PAIRS, **RELAXED)
    margin = float(np.median(np.abs(full.clean_ld - full.corrupted_ld)))  # some pairs known, some not
    r = causal_trace(gemma_like, PAIRS, min_known=1, min_margin=margin, require_sign=False, progress=False, n_boot=20)
    assert 0 < r.n_known < len(PAIRS)
    assert r.covariate_names == ["subject_tokens", "tokens_after_subject", "prompt_tokens", "answer_prior", "intact_ld"]
    assert set(r.covariate_names) <= set(COVARIATES) and r.covariates.shape == (len(PAIRS), 5)
    cov = dict(zip(r.covariate_names, r.covariates.T))
    ct = [gemma_like.to_tokens(p[0])[0].tolist() for p in PAIRS]
    xt = [gemma_like.to_tokens(p[1])[0].tolist() for p in PAIRS]
    ref = span_covariates(ct, xt, bos=True)  # the contract's own helper (no explicit span column here)
    for k in ref:
        np.testing.assert_array_equal(cov[k], ref[k])
    # by hand: pair 0 differs in one token ("chest" vs "cough"), with "pain has" after it
    toks = gemma_like.to_str_tokens(PAIRS[0][0])
    j = toks.index("chest") if "chest" in toks else [i for i, t in enumerate(toks) if "chest" in t][0]
    assert cov["subject_tokens"][0] == 1 and cov["tokens_after_subject"][0] == len(toks) - 1 - j
    assert cov["prompt_tokens"][0] == len(toks) - 1
    np.testing.assert_array_equal(cov["intact_ld"], r.clean_ld)
    # the prior: log-softmax of the BOS-only forward at the clean answer's token
    with torch.no_grad():
        lp = torch.log_softmax(gemma_like(torch.tensor([[gemma_like.tokenizer.bos_token_id]]))[0, -1].double(), -1)
    ids = [gemma_like.to_single_token(p[2]) for p in PAIRS]
    np.testing.assert_allclose(cov["answer_prior"], lp[ids].numpy(), atol=1e-6)
    # unit scores carry the rows of the scored (known) pairs
    us = r.unit_scores()
    assert set(us.covariates) == set(r.covariate_names)
    np.testing.assert_array_equal(us.covariates["intact_ld"], r.clean_ld[r.known])
    assert len(us.covariates["subject_tokens"]) == us.values.shape[0]
    nk = causal_trace(gemma_like, PAIRS, min_known=99, min_margin=0.0, require_sign=False, progress=False, n_boot=5)
    assert nk.unit_scores().covariates["intact_ld"].shape == (len(PAIRS),)


def test_old_saves_without_covariates_load(gemma_like, tmp_path):
    import json

    r = causal_trace(gemma_like, PAIRS, **RELAXED)
    r.save(tmp_path / "t")
    m = json.loads((tmp_path / "t" / "manifest.json").read_text())
    m["arrays"] = [a for a in m["arrays"] if a != "covariates"]
    for k in ("covariate_names", "span_band"):
        m["fields"].pop(k)
    (tmp_path / "t" / "manifest.json").write_text(json.dumps(m))
    back = Result.load(tmp_path / "t")
    assert back.covariates is None and back.covariate_names == [] and back.span_band == []
    us = back.unit_scores()
    assert us.covariates == {} and us.values.shape == r.unit_scores().values.shape
    full = Result.load  # a fresh save keeps them
    r.save(tmp_path / "u")
    np.testing.assert_array_equal(full(tmp_path / "u").covariates, r.covariates)
