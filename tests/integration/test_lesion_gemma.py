"""Layer lesioning on the real Gemma 3 270M, end to end on the drugs concept set (short)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medinterp.results import Result

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def res(gemma):
    from medinterp.techniques.lesion import lesion

    return lesion(gemma, "drugs", modes=["skip", "mlp_zero"], max_prompts=8, n_continuations=2,
                  max_new_tokens=8, n_boot=200, progress=False)


def test_lesion_drugs_end_to_end(res, gemma, tmp_path):
    n = gemma.cfg.n_layers
    assert res.metrics.shape == (8, 2, n, 6) and np.isfinite(res.metrics[..., :4]).all()
    assert np.isnan(res.metrics[..., 4:]).all() and res.default_metric == "logp_drop"  # a concept set has no foil
    kl = res.metrics[..., 0]
    assert (kl > -1e-4).all()
    assert (kl[:, 0] > 1e-6).all()  # removing any whole block changes the next-token distribution
    cur = res.layer_curve()
    lo, hi = res.layer_curve_ci()
    assert cur.shape == (n,) and np.all(lo <= cur + 1e-9) and np.all(cur <= hi + 1e-9)
    assert np.all(res.intact_logp < 0)
    # every target comes after the item: no prompt ending on its drug name is scored
    assert all(not p.rstrip(".").endswith(t.strip()) for p, t in zip(res.prompts, res.targets))
    assert res.cont_tokens.shape == (2, 1, n, 8)
    res.save(tmp_path / "les")
    back = Result.load(tmp_path / "les")
    np.testing.assert_array_equal(back.metrics, res.metrics)
    html = back.to_html(tmp_path / "les.html")
    assert "drugs" in html


def test_intact_readout_matches_plain_forward(gemma):
    """log p(answer) and the next-token distribution read at the last prompt token, from the
    position-only unembedding, equal the plain model's full logits."""
    from medinterp.techniques.lesion import intact_run, items_from_inputs, make_batch

    ctx, ans = "Metformin is used to treat type 2", " diabetes"
    items, _, _ = items_from_inputs(gemma, [(ctx, ans), "Medication list: aspirin"])
    (lp, tl, _correct), _ = intact_run(gemma, make_batch(items, [0, 1], 0, "cpu"), [0])
    c, a = gemma.to_tokens(ctx), gemma.to_tokens(ans, prepend_bos=False)
    with torch.no_grad():
        logp = torch.log_softmax(gemma(torch.cat([c, a], 1))[0].double(), -1)
    want = sum(float(logp[c.shape[1] - 1 + j, a[0, j]]) for j in range(a.shape[1]))
    assert float(tl[0]) == pytest.approx(want, abs=2e-3)
    assert torch.allclose(lp[0].double(), logp[c.shape[1] - 1], atol=2e-3)


def test_prefix_path_equals_full_forward_on_gemma(gemma):
    """start_at_layer from the cached residual == full forward with hooks, in a right-padded batch
    (rotary + sliding-window attention), relative 1e-5 on the final residual stream."""
    from medinterp.hooks import compute_means
    from medinterp.techniques.lesion import intact_run, items_from_inputs, lesioned_resid, make_batch

    prompts = [("Metformin is used to treat", " diabetes"), ("The patient was started on warfarin because of atrial", " fibrillation"),
               "Medication list: aspirin"]
    items, _, _ = items_from_inputs(gemma, prompts)
    batch = make_batch(items, [0, 1, 2], 0, "cpu")
    assert (batch.mask == 0).any()
    means = compute_means(gemma, [it.tokens for it in items], layers=[5], sublayers=["attn"])
    _, cache = intact_run(gemma, batch, [0, 5, 17])
    real = batch.mask.bool()
    for mode, l in [("skip", 0), ("skip", 17), ("mlp_zero", 5), ("attn_mean", 5)]:
        a = lesioned_resid(gemma, batch, l, mode, cache=cache, means=means)
        b = lesioned_resid(gemma, batch, l, mode, means=means, method="full")
        err = float(torch.linalg.vector_norm(a[real] - b[real]) / torch.linalg.vector_norm(b[real]))
        assert err < 1e-5, (mode, l, err)


def test_map_lesion_on_drug_pairs_reads_the_answer(gemma):
    from medinterp.techniques.base import Family
    from medinterp.techniques.lesion import TECHNIQUE

    res = TECHNIQUE.run(gemma, Family("drugs", pairs="drug_pairs"), progress=False, max_prompts=6, modes=["skip"],
                        n_boot=100)
    us = res.unit_scores()
    assert us.values.shape == (6, gemma.cfg.n_layers) and res.default_metric == "ld_frac"
    assert res.n_known >= 1 and np.isfinite(us.values[res.known]).all() and np.isnan(us.values[~res.known]).all()
    assert np.isfinite(res.values("logp_drop")).all()
    assert all(t.startswith(" ") for t in res.targets) and len(set(us.units)) == 6
    assert set(us.covariates) == {"subject_tokens", "tokens_after_subject", "prompt_tokens", "answer_prior",
                                  "intact_logp", "intact_ld"}
    assert np.all(us.covariates["subject_tokens"] >= 1) and np.all(us.covariates["answer_prior"] < 0)


def test_ld_fraction_on_gemma_equals_a_hooked_forward(gemma):
    """The fraction of the clean logit difference lost, from the prefix path, equals a plain forward of Gemma with
    a hook that makes one block the identity, for a known drug pair."""
    from medinterp.concepts import load_concepts
    from medinterp.techniques.lesion import lesion

    res = lesion(gemma, "drug_pairs", modes=["skip"], layers=[0, 6, 12], max_prompts=6, only_known=True,
                 n_continuations=0, n_boot=50, progress=False)
    i = int(np.flatnonzero(res.known)[0])
    pair = load_concepts("drug_pairs").pairs[res.labels["pair"][i]]
    toks = gemma.to_tokens(pair.clean)
    a = int(gemma.to_tokens(pair.clean_answer, prepend_bos=False)[0, 0])
    f = int(gemma.to_tokens(pair.corrupted_answer, prepend_bos=False)[0, 0])
    with torch.no_grad():
        lg = gemma(toks)[0, -1].double()
        ld = float(lg[a] - lg[f])
        assert res.clean_ld[i] == pytest.approx(ld, abs=2e-3)
        for l in (0, 6, 12):
            slot = {}
            hooks = [(f"blocks.{l}.hook_resid_pre", lambda x, hook: slot.__setitem__("x", x.clone())),
                     (f"blocks.{l}.hook_resid_post", lambda x, hook: slot["x"])]
            lg_l = gemma.run_with_hooks(toks, fwd_hooks=hooks)[0, -1].double()
            want = (ld - float(lg_l[a] - lg_l[f])) / ld
            assert res.values("ld_frac")[i, l] == pytest.approx(want, rel=2e-3, abs=2e-3)
