"""Patching on the real Gemma 3 270M: parity with transformer_lens.patching, identities, attribution.

Kept short: one short pair, TL run only on a few layers (its full sweep takes ~90 s per pair).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformer_lens import patching as tlp

from medinterp.techniques.patching import attribution_patch, correlation, patch

pytestmark = pytest.mark.integration

CANDIDATES = [(" wheezing", " asthma"), (" jaundice", " hepatitis"), (" seizures", " epilepsy"),
              (" angina", " angina"), (" cough", " pneumonia"), (" thirst", " diabetes"), (" rash", " measles")]


@pytest.fixture(scope="module")
def short_pair(gemma):
    """A short clean/corrupted pair of equal token length with single-token answers."""
    ok = [(s, d) for s, d in CANDIDATES
          if len(gemma.to_tokens(s, prepend_bos=False)[0]) == 1 and len(gemma.to_tokens(d, prepend_bos=False)[0]) == 1]
    (s1, d1), (s2, d2) = [x for x in ok if x[0] != x[1]][:2]
    return (f"Symptom:{s1}. Diagnosis:", f"Symptom:{s2}. Diagnosis:", d1, d2)


def _tl_inputs(model, pair):
    clean, corr, ca, xa = pair
    ct, xt = model.to_tokens(clean), model.to_tokens(corr)
    cid, xid = model.to_single_token(ca), model.to_single_token(xa)
    _, cache = model.run_with_cache(ct)
    return xt, cache, (lambda lg: lg[0, -1, cid] - lg[0, -1, xid])


def test_parity_with_tl_resid_pre_and_heads(gemma, short_pair):
    xt, cache, ld = _tl_inputs(gemma, short_pair)
    S, L = xt.shape[1], gemma.cfg.n_layers
    layers = [0, L - 1]
    with torch.no_grad():
        idx = pd.DataFrame([(l, p) for l in layers for p in range(S)], columns=["layer", "pos"])
        # get_act_patch_resid_pre restricted to these cells (it is this partial with fixed axes)
        ref = tlp.generic_activation_patch(gemma, xt, cache, ld, tlp.layer_pos_patch_setter, "resid_pre",
                                           index_df=idx).numpy().reshape(len(layers), S)
        ours = patch(gemma, [short_pair], site="resid_pre", positions="all", metric="logit_diff", layers=layers,
                     progress=False)
    np.testing.assert_allclose(ours.values[0, :, :, 0], ref, atol=1e-4, rtol=0)
    # P itself: the same numbers normalised
    P = (ref - ours.corrupted_ld[0]) / (ours.clean_ld[0] - ours.corrupted_ld[0])
    p_ours = patch(gemma, [short_pair], site="resid_pre", positions="all", layers=layers, progress=False).values[0, :, :, 0]
    np.testing.assert_allclose(p_ours, P, atol=1e-5, rtol=0)
    # one layer of per-head z patching at the last two positions (GQA model: 4 query heads, 1 KV head)
    with torch.no_grad():
        idx = pd.DataFrame([(L - 2, p, h) for p in (S - 2, S - 1) for h in range(gemma.cfg.n_heads)],
                           columns=["layer", "pos", "head_index"])
        ref_z = tlp.generic_activation_patch(gemma, xt, cache, ld, tlp.layer_pos_head_vector_patch_setter, "z",
                                             index_df=idx).numpy()
    z = patch(gemma, [short_pair], site="z", positions=[-2, -1], metric="logit_diff", layers=[L - 2], progress=False)
    np.testing.assert_allclose(z.values[0, 0].reshape(-1), ref_z, atol=1e-4, rtol=0)


def test_identities_on_gemma(gemma, short_pair):
    r = patch(gemma, [short_pair], site="resid_pre", positions="all_at_once", progress=False)
    np.testing.assert_allclose(r.values, 1.0, atol=1e-4)
    r = patch(gemma, [short_pair], site="resid_post", positions=[0, 1], progress=False)  # BOS, "Symptom": identical
    np.testing.assert_allclose(r.values, 0.0, atol=1e-4)


def test_attribution_tracks_exact_sweep(gemma, short_pair):
    exact = patch(gemma, [short_pair], site="resid_pre", positions="all", progress=False)
    attr = attribution_patch(gemma, [short_pair], site="resid_pre", positions="all", progress=False, verify_top_k=2)
    assert exact.layer_curve().shape == (gemma.cfg.n_layers,)
    c = correlation(attr.values, exact.values)
    assert c > 0.3, c
    for v in attr.diagnostics["verified"]:
        li, j = attr.layers.index(v["layer"]), attr.positions.index(v["position"])
        assert abs(v["exact"] - exact.values[0, li, j, 0]) < 1e-4


def test_causal_trace_on_diagnosis_pairs_quick(gemma):
    """The map's patching run (quick size) on the diagnosis pairs: causal tracing on the pairs Gemma knows."""
    from medinterp.techniques import REGISTRY, Family
    from medinterp.techniques.patching import TracingResult

    tech = REGISTRY["patching"]
    r = tech.run(gemma, Family("diseases", pairs="diagnosis_pairs"), progress=False, **tech.params("quick"))
    assert isinstance(r, TracingResult) and len(r.all_pairs) + len(r.dropped) == tech.presets["quick"]["max_pairs"]
    print(r.summary())  # how many pairs the model knows, band, mover
    assert 0 <= r.n_known <= len(r.all_pairs) and r.ld.shape == (r.n_known, gemma.cfg.n_layers, 2)
    assert r.known_by_model == (r.n_known >= r.params["min_known"])
    if r.n_known:
        # restoring every differing token at the embeddings is the clean run
        np.testing.assert_allclose(r.P[:, 0, 0], 1.0, atol=1e-3)
        assert r.unit_scores().values.shape == (r.n_known, gemma.cfg.n_layers)
    # covariates of every valid pair (METHOD §0b) and the mover inside the band (METHOD §4)
    cov = dict(zip(r.covariate_names, r.covariates.T))
    assert r.covariates.shape == (len(r.all_pairs), 5)
    np.testing.assert_array_equal(cov["intact_ld"], r.clean_ld)
    assert (cov["tokens_after_subject"] == 6).all()  # " The most likely diagnosis is" after "."
    assert np.isfinite(cov["answer_prior"]).all() and (cov["answer_prior"] < 0).all()
    if r.known_by_model and r.mover is not None:
        assert any(a <= r.mover <= b for a, b in r.band), (r.band, r.mover)
        us = r.unit_scores()
        assert all(len(v) == r.n_known for v in us.covariates.values())
