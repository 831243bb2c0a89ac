"""Saliency on the real Gemma 3 270M, a few drug prompts (short)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medinterp.concepts import load_concepts
from medinterp.techniques.saliency import COMPONENTS, build_target, parameter_groups, saliency, target_loss

pytestmark = pytest.mark.integration


def test_gemma_drug_saliency_end_to_end_and_equal_to_plain_grad(gemma, tmp_path):
    prompts = load_concepts("drugs").prompts()
    chosen = [p for p in prompts if p.answer is not None][:2] + [
        p for p in prompts if p.answer is None and not p.ends_on_item][:1]
    flags = {n: p.requires_grad for n, p in gemma.named_parameters()}
    res = saliency(gemma, chosen, progress=False, n_boot=200)
    assert res.values.shape == (3, 18, 3, 3) and res.outer_values.shape == (3, 2, 3)
    assert np.all(np.isfinite(res.values)) and np.all(res.values > 0)
    assert np.all(np.isfinite(res.outer_values)) and np.all(res.outer_values > 0)
    # the third prompt has no answer: the word after the drug is scored, never the drug's own name
    assert res.targets[0] == chosen[0].answer and res.targets[2].strip() not in ("", chosen[2].item)
    assert chosen[2].text[chosen[2].span[1]:].lstrip().startswith(res.targets[2].strip())
    np.testing.assert_allclose(res.share[:, :, 2].sum(1), 1.0)
    assert all(p.grad is None for p in gemma.parameters())
    assert {n: p.requires_grad for n, p in gemma.named_parameters()} == flags
    # peak memory stays well below one copy of all gradients (1.7 GB for the untied Gemma)
    assert res.memory["peak_rss_delta_mb"] < 0.75 * res.memory["all_grads_mb"], res.memory

    # The targeted loss equals the full forward's, and the numbers equal a plain .grad read.
    t = build_target(gemma, chosen[0].text, chosen[0].answer)
    with torch.no_grad():
        logp = torch.log_softmax(gemma(t.tokens[None]), dim=-1)[0]
        full = -logp[t.predict_positions, t.target_ids].sum()
    assert res.loss[0] == pytest.approx(float(full), rel=1e-4)
    groups = parameter_groups(gemma)
    named = dict(gemma.named_parameters())
    try:
        target_loss(gemma, t, "cpu").backward()
        for layer in (0, 9, 17):
            for c, comp in enumerate(COMPONENTS):
                members = [n for n, (g, l) in groups.items() if l == layer and comp in (g, "combined")]
                gs = torch.cat([named[n].grad.reshape(-1) for n in members]).double()
                ws = torch.cat([named[n].detach().reshape(-1) for n in members]).double()
                expect = [float(gs.abs().mean()), float((gs * ws).abs().mean()), float(gs.norm() / ws.norm())]
                np.testing.assert_allclose(res.values[0, layer, c], expect, rtol=1e-4)
        g = named["embed.W_E"].grad
        np.testing.assert_allclose(res.outer_values[0, 0, 0], float(g.abs().sum(dtype=torch.float64)) / g.numel(), rtol=1e-4)
    finally:
        gemma.zero_grad(set_to_none=True)
    html = res.save(tmp_path / "s").to_html(tmp_path / "s.html")
    assert "Weight saliency per block" in html


def test_gemma_batched_backward_equals_one_prompt_path_with_covariates(gemma):
    """The map's set-up on the real model (a pair set's answer prompts, block shares only): the
    batched backward gives the one-prompt path's numbers, and the covariates are filled."""
    from medinterp.concepts import load_concepts
    from medinterp.techniques.saliency.run import SALIENCY_COVARIATES

    ps = load_concepts("drug_pairs")
    kw = dict(max_prompts=5, include_embed=False, include_unembed=False, progress=False, n_boot=50, track_memory=False)
    one = saliency(gemma, ps, batch_size=1, **kw)
    many = saliency(gemma, ps, batch_size=5, **kw)
    assert len({len(p) for p in one.prompts}) > 1  # prompts of different lengths: the batch is padded
    # float32: the map's per-block numbers agree to 1e-4; single parameters (small Q/K gradients behind
    # QK-norm) to 5e-4 (float rounding of the batched matmuls: in float64 the two paths agree to 3e-14
    # on this model, measured)
    for f, rtol in (("values", 1e-4), ("share", 1e-4), ("loss", 1e-4), ("covariates", 1e-4), ("param_values", 2e-3)):
        np.testing.assert_allclose(getattr(many, f), getattr(one, f), rtol=rtol, err_msg=f)
    cov = many.unit_scores().covariates
    assert list(cov) == list(SALIENCY_COVARIATES)
    assert np.all(cov["subject_tokens"] >= 1) and np.all(cov["prompt_tokens"] > cov["tokens_after_subject"])
    assert np.all(cov["answer_prior"] < 0) and np.all(cov["intact_logp"] <= 0)
    np.testing.assert_allclose(cov["intact_logp"], -many.loss, rtol=1e-4)  # single-token answers
    assert np.all(np.isfinite(cov["intact_ld"]))
