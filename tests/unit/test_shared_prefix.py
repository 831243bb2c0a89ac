"""Shared-prefix forwards: the plan, and equality with the plain left-padded path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medinterp import activations as A
from medinterp.concepts import load_concepts
from medinterp.shared_prefix import padded_tokens, plan_tokens, prefix_plan


def test_plan_covers_every_prompt_once_and_prefixes_are_shared_and_before_the_reads():
    rng = np.random.default_rng(0)
    templates = [[2, 7, 8, 9], [2, 7, 5], [2, 11]]
    tokens, first = [], []
    for i in range(97):
        t = templates[i % 3]
        item = rng.integers(20, 40, size=rng.integers(1, 4)).tolist()
        tokens.append(t + item + ([3, 4] if i % 2 else [3]))
        first.append(len(t))
    plan = prefix_plan(tokens, first, batch_size=8, max_tokens=40)
    rows = sorted(r for b in plan for r in b.rows)
    assert rows == list(range(97))
    # a group's batches hold <= max_tokens suffix positions; consecutive batches share one prefix
    for b in plan:
        assert len(b.rows) * max(len(tokens[r]) - b.prefix_len for r in b.rows) <= 40 or len(b.rows) == 1
    assert len(plan) < 97 / 4
    for b in plan:
        assert all(b.prefix_len <= first[r] for r in b.rows)
        assert all(tokens[r][: b.prefix_len] == tokens[b.rows[0]][: b.prefix_len] for r in b.rows)
    # the template prefixes are found: most batches share the whole template
    assert np.mean([b.prefix_len == first[b.rows[0]] for b in plan]) > 0.8
    lengths = [len(t) for t in tokens]
    assert plan_tokens(plan, lengths) < padded_tokens(lengths, 8)
    assert len(prefix_plan(tokens, first, batch_size=8, max_tokens=400)) < len(plan)  # wider batches, fewer
    # by hand: two prompts of one template (prefix 3), one of another (prefix 1 = BOS)
    p = prefix_plan([[2, 5, 6, 7], [2, 5, 6, 9, 4], [2, 8, 1]], first_read=[3, 3, 1], batch_size=4)
    assert [(b.rows, b.prefix_len) for b in p] == [([0, 1], 3), ([2], 1)]
    assert padded_tokens([4, 5, 3], 2) == 2 * 4 + 5 and plan_tokens(p, [4, 5, 3]) == (3 + 2 * 2) + (1 + 2)


@pytest.fixture(scope="module")
def gemma_like():
    from medinterp.testing import tiny_model

    # local attention with a window shorter than the prompts: the cache must keep the window's offsets
    return tiny_model(n_layers=3, d_model=64, n_heads=4, d_mlp=128, seed=3, dtype=torch.float64,
                      positional_embedding_type="rotary", rotary_dim=16, n_key_value_heads=2, gated_mlp=True,
                      attn_types=["local", "global", "local"], window_size=4)


@pytest.mark.parametrize("family", ["drugs", "diseases"])
def test_shared_prefix_reads_equal_the_left_padded_forward(gemma_like, family, monkeypatch):
    prompts = load_concepts(family).prompts()[:90]
    shared = A.collect_reads(gemma_like, prompts, ["span_mean", "last"], include_embed=True, batch_size=16,
                             progress=False)
    assert shared["last"].provenance["params"]["padding_side"] == "shared_prefix"
    monkeypatch.setattr(A, "supports_shared_prefix", lambda model: False)
    plain = A.collect_reads(gemma_like, prompts, ["span_mean", "last"], include_embed=True, batch_size=16,
                            progress=False)
    assert plain["last"].provenance["params"]["padding_side"] == "left"
    for k in ("span_mean", "last"):
        np.testing.assert_allclose(shared[k].values, plain[k].values, rtol=1e-6, atol=1e-6)
        assert np.abs(shared[k].values).max() > 0.1  # not two arrays of zeros


def test_gpt2_style_absolute_positions_equal_too(monkeypatch):
    from medinterp.testing import tiny_model

    m = tiny_model(n_layers=2, seed=5, dtype=torch.float64)
    prompts = load_concepts("drugs").prompts()[:40]
    shared = A.collect_reads(m, prompts, ["span_mean"], batch_size=8, progress=False)["span_mean"]
    monkeypatch.setattr(A, "supports_shared_prefix", lambda model: False)
    plain = A.collect_reads(m, prompts, ["span_mean"], batch_size=8, progress=False)["span_mean"]
    assert shared.provenance["params"]["padding_side"] == "shared_prefix"
    np.testing.assert_allclose(shared.values, plain.values, rtol=1e-6, atol=1e-6)


def test_items_at_the_start_fall_back_to_the_plain_path(gemma_like):
    # every read starts right after BOS: no prefix to share, template-sorted batches only add padding
    texts = [f"{w} " + " ".join(["pain"] * (1 + i % 7)) for i, w in enumerate(["fever", "cough", "angina"] * 10)]
    out = A.collect_activations(gemma_like, texts, positions=[1] * len(texts), batch_size=8, progress=False)
    assert out.provenance["params"]["padding_side"] == "left"
