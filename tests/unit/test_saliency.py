"""Weight-gradient saliency on tiny random models: exact zeros, hook path == plain .grad, state restored."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import medinterp.viz  # noqa: F401  (registers the figure renderers)
from medinterp.errors import MedinterpError
from medinterp.results import Result
from medinterp.techniques.saliency import (
    COMPONENTS,
    VARIANTS,
    SaliencyResult,
    build_target,
    target_loss,
    parameter_groups,
    saliency,
)
from medinterp.testing import tiny_model

PROMPTS = [
    ("The patient takes", "aspirin"),
    ("A man with chest pain has", "angina"),
    ("the dose of metformin is", "500 mg daily"),
    ("A woman with fever and cough has", "pneumonia"),
]


@dataclasses.dataclass(frozen=True)
class FakePrompt:
    """Duck-typed ConceptPrompt (text, item, span, answer, labels)."""

    text: str
    item: str
    span: tuple[int, int]
    answer: str | None = None
    labels: dict = dataclasses.field(default_factory=dict)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return tiny_model(n_layers=3, seed=0)


def _full_loss(model, tokens: torch.Tensor, n_context: int) -> torch.Tensor:
    """Independent reference: full forward, all logits, -Σ log p of the target tokens."""
    tokens = tokens.reshape(1, -1)
    logp = torch.log_softmax(model(tokens), dim=-1)[0]
    tgt = tokens[0, n_context:]
    return -logp[torch.arange(n_context - 1, tokens.shape[1] - 1), tgt].sum()


def test_parameters_off_the_loss_path_have_exactly_zero_saliency(model):
    with torch.no_grad():
        model.blocks[1].mlp.W_out.zero_()  # W_in of block 1 no longer affects anything
        model.blocks[0].attn.W_O.zero_()  # nor do W_Q, W_K, W_V of block 0
    res = saliency(model, PROMPTS, progress=False, n_boot=50)
    idx = {n: i for i, n in enumerate(res.param_names)}
    for name in ["blocks.1.mlp.W_in", "blocks.0.attn.W_Q", "blocks.0.attn.W_K", "blocks.0.attn.W_V"]:
        assert np.all(res.param_values[:, idx[name], :] == 0), name
    for name in ["blocks.1.mlp.W_out", "blocks.0.attn.W_O", "blocks.2.mlp.W_in"]:
        assert np.all(res.param_values[:, idx[name], 0] > 0), name


@pytest.mark.parametrize("fast_outer", [True, False])
def test_zero_final_norm_zeroes_every_block_but_not_the_unembedding(model, fast_outer):
    with torch.no_grad():
        model.ln_final.w.zero_()
        model.ln_final.b.normal_()  # the unembedding input is then this constant, so W_U still gets a gradient
    res = saliency(model, PROMPTS, fast_outer=fast_outer, progress=False, n_boot=50)
    assert np.all(res.values == 0)
    for v in VARIANTS:
        assert np.all(res.layer_curve(v) == 0)
        lo, hi = res.layer_curve_ci(v)
        assert np.all(lo == 0) and np.all(hi == 0)
    assert np.all(res.outer_values[:, 0] == 0)  # embedding
    assert np.all(res.outer_values[:, 1, 0] > 0)  # unembedding


@pytest.mark.parametrize("fast_outer", [True, False])
@pytest.mark.parametrize("params", ["weights", "all"])
def test_hook_path_equals_plain_grad_read(model, fast_outer, params):
    res = saliency(model, PROMPTS, params=params, fast_outer=fast_outer, progress=False, n_boot=50)
    groups = parameter_groups(model, params)
    named = dict(model.named_parameters())
    for i, (prompt, answer) in enumerate(PROMPTS):
        t = build_target(model, prompt, answer)
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            assert res.loss[i] == pytest.approx(float(_full_loss(model, t.tokens, t.n_context)), rel=1e-5)
        # Same forward as saliency (float32 rounding of a different matmul order would differ by ~1e-5),
        # but a plain backward with every .grad kept and read afterwards.
        loss = target_loss(model, t, "cpu")
        loss.backward()
        for layer in range(model.cfg.n_layers):
            for c, comp in enumerate(COMPONENTS):
                members = [
                    n for n, (g, l) in groups.items() if l == layer and (g == comp or comp == "combined")
                ]
                gs = torch.cat([named[n].grad.reshape(-1) for n in members]).double()
                ws = torch.cat([named[n].detach().reshape(-1) for n in members]).double()
                expect = [gs.abs().mean(), (gs * ws).abs().mean(), gs.norm() / ws.norm()]
                np.testing.assert_allclose(res.values[i, layer, c], [float(e) for e in expect], rtol=1e-5)
        for o, key in enumerate(["embed", "unembed"]):
            members = [n for n, (g, _) in groups.items() if g == key]
            gs = torch.cat([named[n].grad.reshape(-1) for n in members]).double()
            ws = torch.cat([named[n].detach().reshape(-1) for n in members]).double()
            expect = [gs.abs().mean(), (gs * ws).abs().mean(), gs.norm() / ws.norm()]
            # embed/unembed hold vocab x d_model values: float32 sums over ~2e5 terms differ by ~sqrt(n)*eps
            # (~3e-5 relative) between the two read paths, so 1e-5 passed or failed with the vocabulary size
            np.testing.assert_allclose(res.outer_values[i, o], [float(e) for e in expect], rtol=1e-4)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("fast_outer", [True, False])
def test_model_state_requires_grad_and_grads_restored(model, fast_outer):
    model.blocks[0].attn.W_Q.requires_grad_(False)
    model.unembed.b_U.requires_grad_(False)
    old_grad = torch.randn_like(model.blocks[2].mlp.W_in)
    model.blocks[2].mlp.W_in.grad = old_grad.clone()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    saliency(model, PROMPTS[:2], fast_outer=fast_outer, progress=False, n_boot=20)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for n, p in model.named_parameters():
        if n == "blocks.2.mlp.W_in":
            assert torch.equal(p.grad, old_grad)
        else:
            assert p.grad is None, n
        assert not getattr(p, "_post_accumulate_grad_hooks", None), f"hook left on {n}"
    assert not model.embed._forward_hooks, "forward hook left on the embedding"
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_grads_are_none_after_a_run_and_after_an_error(model):
    saliency(model, PROMPTS[:1], progress=False, n_boot=10)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(MedinterpError):
        saliency(model, [("The patient takes", "   ")], progress=False)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_span_target_scores_the_word_after_the_item(model):
    text = "A man with chest pain has angina today"
    start = text.index("angina")
    fp = FakePrompt(text=text, item="angina", span=(start, start + len("angina")), labels={"specialty": "cardio"})
    res = saliency(model, [fp, fp], progress=False, n_boot=10)
    assert res.targets[0] == " today"
    assert res.labels == {"item": ["angina", "angina"], "specialty": ["cardio", "cardio"]}
    t = build_target(model, "A man with chest pain has angina", "today")
    with torch.no_grad():
        ref = float(_full_loss(model, t.tokens, t.n_context))
    assert res.loss[0] == pytest.approx(ref, rel=1e-5)
    # the item's own name given the text before it is a different number (what 0.1 scored)
    before = build_target(model, "A man with chest pain has", "angina")
    with torch.no_grad():
        assert abs(float(_full_loss(model, before.tokens, before.n_context)) - ref) > 1e-3
    # An answer, when given, wins over the span.
    fa = dataclasses.replace(fp, text="A man with chest pain has", answer="pneumonia")
    assert saliency(model, [fa], progress=False, n_boot=10).targets == [" pneumonia"]


def test_prompts_ending_on_their_item_are_left_out_with_a_named_warning(model):
    from medinterp.prompt_inputs import NothingAfterItemWarning

    ends = FakePrompt(text="The patient takes aspirin", item="aspirin", span=(18, 25))
    after = FakePrompt(text="The patient takes aspirin daily", item="aspirin", span=(18, 25))
    with pytest.warns(NothingAfterItemWarning, match="end on their item"):
        res = saliency(model, [ends, after], progress=False, n_boot=10)
    assert res.prompts == [after.text] and res.targets == [" daily"]
    with pytest.raises(MedinterpError, match="all 1 prompts end on their item"):
        saliency(model, [ends], progress=False)


def test_multi_token_target_is_the_sum_of_token_log_probs(model):
    t = build_target(model, "the dose of metformin is", "500 mg daily")
    assert len(t.target_ids) == 3 and t.tokens.shape[0] - t.n_context == 3
    res = saliency(model, [("the dose of metformin is", "500 mg daily")], progress=False, n_boot=10)
    with torch.no_grad():
        assert res.loss[0] == pytest.approx(float(_full_loss(model, t.tokens, t.n_context)), rel=1e-5)
    assert res.n_target_tokens.tolist() == [3]


def test_save_load_round_trip_and_html(model, tmp_path):
    evil = "<script>alert(1)</script>"
    res = saliency(model, PROMPTS + [(f"The patient {evil} takes", "aspirin")], progress=False, n_boot=100)
    res.concept_set = evil
    res.save(tmp_path / "sal")
    back = Result.load(tmp_path / "sal")
    assert isinstance(back, SaliencyResult)
    for f in ["values", "outer_values", "param_values", "loss", "n_target_tokens"]:
        np.testing.assert_array_equal(getattr(back, f), getattr(res, f))
    assert back.param_names == res.param_names and back.prompts == res.prompts and back.targets == res.targets
    np.testing.assert_allclose(back.layer_curve(), res.layer_curve())
    for a, b in zip(back.layer_curve_ci("grad_x_weight", "mlp"), res.layer_curve_ci("grad_x_weight", "mlp")):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    html = back.to_html(tmp_path / "sal.html")
    assert evil not in html and "plotly" in html.lower()


def test_table_and_ci_bracket_the_mean(model):
    res = saliency(model, PROMPTS, progress=False, n_boot=200)
    t = res.table
    assert len(t) == model.cfg.n_layers * 9 + 2 * 3
    assert set(t["component"]) == {"attn", "mlp", "combined", "embed", "unembed"}
    assert (t["ci_low"] <= t["mean"] + 1e-12).all() and (t["mean"] <= t["ci_high"] + 1e-12).all()
    cur = res.layer_curve("grad")
    lo, hi = res.layer_curve_ci("grad")
    assert cur.shape == lo.shape == hi.shape == (model.cfg.n_layers,)
    np.testing.assert_allclose(cur, res.values[:, :, 2, 0].mean(0))
    # combined lies between attention and MLP (it is their element-weighted mean)
    a, m = res.layer_curve("grad", "attn"), res.layer_curve("grad", "mlp")
    assert np.all(cur >= np.minimum(a, m) - 1e-12) and np.all(cur <= np.maximum(a, m) + 1e-12)
    assert res.top_layers(1, "grad")[0] == int(np.argmax(cur))
    assert res.top_layers(1)[0] == int(np.argmax(res.layer_curve()))
    assert res.memory["peak_rss_delta_mb"] >= 0 and res.timings["seconds_per_prompt"] > 0


def test_params_all_adds_biases_and_norms(model):
    w = parameter_groups(model, "weights")
    a = parameter_groups(model, "all")
    assert "blocks.0.attn.b_Q" not in w and a["blocks.0.attn.b_Q"] == ("attn", 0)
    assert a["blocks.1.ln2.w"] == ("mlp", 1) and a["ln_final.w"] == ("unembed", None)
    assert set(w) < set(a)
    res = saliency(model, PROMPTS[:2], params="all", include_embed=False, progress=False, n_boot=10)
    assert np.all(np.isnan(res.outer_values[:, 0])) and np.all(res.outer_values[:, 1, 0] > 0)


def test_max_prompts_takes_a_seeded_subset(model):
    res = saliency(model, PROMPTS, max_prompts=2, seed=3, progress=False, n_boot=10)
    again = saliency(model, PROMPTS, max_prompts=2, seed=3, progress=False, n_boot=10)
    assert res.n_prompts == 2 and res.prompts == again.prompts
    assert all(p in [q for q, _ in PROMPTS] for p in res.prompts)


@pytest.mark.parametrize(
    "bad, match",
    [
        ([], "no prompts"),
        ([("The patient takes", "")], "empty"),
        ([FakePrompt(text="short text", item="x", span=(5, 99))], "outside the text"),
        ([FakePrompt(text="short text", item="x", span=None)], "neither an answer nor"),
        ([42], "expected a ConceptPrompt"),
    ],
)
def test_bad_input_raises_a_specific_error(model, bad, match):
    with pytest.raises(MedinterpError, match=match):
        saliency(model, bad, progress=False)


def test_fast_outer_never_materialises_the_vocab_gradients(model):
    """With fast_outer, W_E and W_U never get a .grad tensor (checked from inside the backward)."""
    from medinterp.techniques import saliency as sal

    seen = []
    orig = sal._Accumulator.add

    def spy(self, name, grad, weight=None):
        seen.append((name, tuple(grad.shape), model.embed.W_E.grad is None and model.unembed.W_U.grad is None))
        return orig(self, name, grad, weight)

    sal._Accumulator.add = spy
    try:
        saliency(model, PROMPTS[:1], progress=False, n_boot=10)
    finally:
        sal._Accumulator.add = orig
    assert all(ok for _, _, ok in seen)
    shapes = {n: s for n, s, _ in seen}
    n_rows = len(set(build_target(model, *PROMPTS[0]).tokens.tolist()))
    assert shapes["embed.W_E"] == (n_rows, model.cfg.d_model)  # only the prompt's token rows
    assert sum(s[0] for n, s, _ in seen if n == "unembed.W_U") == model.cfg.d_model  # in row blocks


def test_cli_writes_result_dir_table_and_html(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import medinterp.models
    from medinterp.cli import app

    monkeypatch.setattr(medinterp.models, "load_model", lambda spec, **kw: tiny_model(n_layers=2))
    out = tmp_path / "sal"
    r = CliRunner().invoke(
        app, ["saliency", "-c", "drugs", "-o", str(out), "-m", "tiny", "-n", "5", "--no-progress", "--n-boot", "50"]
    )
    assert r.exit_code == 0, r.output
    assert {"manifest.json", "arrays.safetensors", "table.csv", "saliency.html"} <= {p.name for p in out.iterdir()}
    res = Result.load(out)
    assert res.concept_set == "drugs" and res.n_prompts == 5 and res.n_layers == 2
    assert {"specialty", "mechanism", "item"} <= set(res.labels)
    assert "block" in r.output
    bad = CliRunner().invoke(app, ["saliency", "-c", "drugs", "-o", str(out), "--params", "some"])
    assert bad.exit_code != 0 and isinstance(bad.exception, MedinterpError)


def test_layer_curve_by_label(model):
    items = ["aspirin", "metformin", "insulin"]
    fps = [
        FakePrompt(text=f"The patient takes {it} daily", item=it, span=(18, 18 + len(it)), labels={"k": k})
        for it, k in zip(items, ["a", "b", "a"])
    ]
    res = saliency(model, fps, progress=False, n_boot=10)
    by = res.layer_curve_by("k", "grad_x_weight", "attn")
    np.testing.assert_allclose(by["a"], res.values[[0, 2], :, 0, 1].mean(0))
    np.testing.assert_allclose(by["b"], res.values[1, :, 0, 1])
    with pytest.raises(MedinterpError, match="not in this result"):
        res.layer_curve_by("nope")


# ---------------------------------------------------------------------------------------- Gemma-like, checkpoints
def gemma_like(seed: int = 3, n_layers: int = 2, cap: float = 5.0, dtype=torch.float32):
    """Tiny model with Gemma's structure: RMS norms, logit soft-cap, grouped-query attention
    (``_W_K``/``_W_V`` shared by two heads each), rotary positions, gated MLP. Built here because
    ``tiny_model`` fixes ``normalization_type="LN"``."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from medinterp.testing import word_tokenizer

    tok = word_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=64, n_heads=4, d_head=16, d_mlp=128, n_ctx=128, d_vocab=len(tok), act_fn="gelu",
        normalization_type="RMS", seed=seed, default_prepend_bos=True, tokenizer_prepends_bos=True,
        output_logits_soft_cap=cap, n_key_value_heads=2, positional_embedding_type="rotary", rotary_dim=16,
        gated_mlp=True, model_name="tiny-gemma-like", dtype=dtype)
    torch.manual_seed(seed)
    m = HookedTransformer(cfg, tokenizer=tok, default_padding_side="right")
    m.eval()
    with torch.no_grad():
        m.unembed.W_U.mul_(30.0)  # logits of several units: the soft-cap (5) bends them
    return m


def test_saliency_equals_plain_full_forward_grad_on_gemma_like_model():
    """Against an independent reference: the model's own full forward (all logits, soft-cap applied
    by TransformerLens), -Σ log p, .backward(), and every block weight found by name (not by
    parameter_groups). Dropping a GQA weight (_W_K/_W_V) from the groups changes the numbers."""
    m = gemma_like()
    groups = parameter_groups(m)
    for layer in range(m.cfg.n_layers):
        for w in ("_W_K", "_W_V", "W_Q", "W_O"):
            assert groups[f"blocks.{layer}.attn.{w}"] == ("attn", layer)
        for w in ("W_in", "W_gate", "W_out"):
            assert groups[f"blocks.{layer}.mlp.{w}"] == ("mlp", layer)
    prompts = PROMPTS[:3]
    res = saliency(m, prompts, progress=False, n_boot=20)
    named = dict(m.named_parameters())
    for i, (prompt, answer) in enumerate(prompts):
        t = build_target(m, prompt, answer)
        m.zero_grad(set_to_none=True)
        logits = m(t.tokens[None])  # full forward, soft-capped by TransformerLens
        with torch.no_grad():
            raw = m.unembed(m.ln_final(m(t.tokens[None], stop_at_layer=m.cfg.n_layers)))
            uncapped = -torch.log_softmax(raw[0], -1)[t.predict_positions, t.target_ids].sum()
        loss = -torch.log_softmax(logits[0], -1)[t.predict_positions, t.target_ids].sum()
        assert res.loss[i] == pytest.approx(float(loss), rel=1e-5)
        assert abs(float(uncapped) - float(loss)) > 0.1 * float(loss)  # the cap matters here
        loss.backward()
        for layer in range(m.cfg.n_layers):
            by_comp = {
                comp: [n for n in named if n.startswith(f"blocks.{layer}.{comp}.")
                       and n.split(".")[-1].lstrip("_").startswith("W_")]
                for comp in ("attn", "mlp")
            }
            by_comp["combined"] = by_comp["attn"] + by_comp["mlp"]
            assert f"blocks.{layer}.attn._W_K" in by_comp["attn"]
            for c, comp in enumerate(COMPONENTS):
                gs = torch.cat([named[n].grad.reshape(-1) for n in by_comp[comp]]).double()
                ws = torch.cat([named[n].detach().reshape(-1) for n in by_comp[comp]]).double()
                expect = [float(gs.abs().mean()), float((gs * ws).abs().mean()), float(gs.norm() / ws.norm())]
                np.testing.assert_allclose(res.values[i, layer, c], expect, rtol=1e-4)
    m.zero_grad(set_to_none=True)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_checkpoint_resumes_an_interrupted_run_with_the_same_numbers(model, tmp_path, monkeypatch, batch_size):
    from medinterp import store
    from medinterp.techniques.saliency import run as sal_run

    prompts = PROMPTS + [("Asthma causes", "wheezing")]
    kw = dict(progress=False, n_boot=30, checkpoint_every=2, track_memory=False, batch_size=batch_size)
    ref = saliency(model, prompts, **kw)
    calls = {"loss": 0, "save": 0}
    fn = "target_loss" if batch_size == 1 else "batch_loss"
    orig_loss, orig_save = getattr(sal_run, fn), store.Checkpoint.save

    def counting_loss(m, t, *a, **k):  # counts prompts computed (one target, or a batch of them)
        calls["loss"] += 1 if batch_size == 1 else len(t)
        return orig_loss(m, t, *a, **k)

    def failing_save(self, key, **arrays):
        orig_save(self, key, **arrays)
        calls["save"] += 1
        if calls["save"] == 2:
            raise KeyboardInterrupt("stop after two chunks")

    monkeypatch.setattr(sal_run, fn, counting_loss)
    monkeypatch.setattr(store.Checkpoint, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        saliency(model, prompts, checkpoint_dir=tmp_path / "ck", **kw)
    assert calls["loss"] == 4 and len(list((tmp_path / "ck").glob("unit_*"))) == 2
    monkeypatch.setattr(store.Checkpoint, "save", orig_save)
    calls["loss"] = 0
    res = saliency(model, prompts, checkpoint_dir=tmp_path / "ck", **kw)
    assert calls["loss"] == 1  # only the last chunk (one prompt) was computed
    assert res.timings["prompts_resumed"] == 4
    for f in ("values", "outer_values", "param_values", "loss", "covariates"):
        np.testing.assert_array_equal(getattr(res, f), getattr(ref, f))
    pd_ref, pd_res = ref.table, res.table
    np.testing.assert_array_equal(pd_res["ci_low"].to_numpy(), pd_ref["ci_low"].to_numpy())
    # changed inputs: the stale units are not used
    calls["loss"] = 0
    other = [(p, "insulin") for p, _ in prompts]
    res2 = saliency(model, other, checkpoint_dir=tmp_path / "ck", **kw)
    assert calls["loss"] == len(other)
    fresh = saliency(model, other, **kw)
    np.testing.assert_array_equal(res2.values, fresh.values)
    assert not np.array_equal(res2.values, ref.values)


def test_result_fields_follow_the_contract(model):
    from medinterp.techniques.base import TechniqueResult

    res = saliency(model, PROMPTS[:2], progress=False, n_boot=10)
    assert isinstance(res, TechniqueResult) and SaliencyResult._legacy_fields == {"timing": "timings"}
    assert res.params["include_embed"] is True and res.timings["seconds"] >= 0
    assert "∂" in res.curve_label and isinstance(res.summary(), str)
    figs = res.figures()
    assert len(figs) == len(VARIANTS) + 2 and "Share of" in figs[0].layout.title.text
    assert "Weight saliency per block" in figs[1].layout.title.text


# ---------------------------------------------------------------------------------------- the map's curve: |g·w| share
def test_share_equals_brute_force_sum_of_abs_grad_times_weight_and_sums_to_one(model):
    """share[i, l] = Σ_{w in block l} |∂L/∂w · w| / Σ over all blocks, from a plain full-model .grad."""
    res = saliency(model, PROMPTS, include_embed=False, include_unembed=False, progress=False, n_boot=50)
    named = dict(model.named_parameters())
    groups = parameter_groups(model)
    for i, (prompt, answer) in enumerate(PROMPTS):
        t = build_target(model, prompt, answer)
        model.zero_grad(set_to_none=True)
        logp = torch.log_softmax(model(t.tokens[None]), dim=-1)[0]  # plain full forward, all logits
        (-logp[t.predict_positions, t.target_ids].sum()).backward()
        per_block = np.array([sum(float((named[n].grad.double() * named[n].detach().double()).abs().sum())
                                  for n, (g, l) in groups.items() if l == layer)
                              for layer in range(model.cfg.n_layers)])
        np.testing.assert_allclose(res.share[i, :, COMPONENTS.index("combined")], per_block / per_block.sum(), rtol=1e-4)
    model.zero_grad(set_to_none=True)
    np.testing.assert_allclose(res.share[:, :, 2].sum(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(res.share[:, :, 0] + res.share[:, :, 1], res.share[:, :, 2], rtol=1e-12)
    np.testing.assert_allclose(res.layer_curve(), res.share[:, :, 2].mean(0))
    lo, hi = res.layer_curve_ci()
    assert np.all(lo <= res.layer_curve() + 1e-12) and np.all(res.layer_curve() <= hi + 1e-12)
    assert np.all(np.isnan(res.outer_values))  # neither the embedding nor the unembedding measured


def test_share_is_invariant_to_rescaling_a_scale_invariant_weight():
    """W_V·c with W_O/c is the same function with other weight norms: ∂L/∂W_V scales by 1/c, so |g·w|
    (and the share) is unchanged while mean |g| moves (the 0.1 default ranked layers by 1/‖W‖)."""
    m = tiny_model(n_layers=2, seed=1)
    before = saliency(m, PROMPTS[:2], include_embed=False, include_unembed=False, progress=False, n_boot=10)
    with torch.no_grad():  # W_V·c and W_O/c: the same function, different weight norms
        m.blocks[0].attn.W_V.mul_(4.0)
        m.blocks[0].attn.b_V.mul_(4.0)
        m.blocks[0].attn.W_O.div_(4.0)
    after = saliency(m, PROMPTS[:2], include_embed=False, include_unembed=False, progress=False, n_boot=10)
    np.testing.assert_allclose(after.share, before.share, rtol=1e-4)  # |g·w| of W_V and W_O unchanged
    g = lambda r: r.values[:, 0, 0, VARIANTS.index("grad")]  # noqa: E731  mean |g| of block 0's attention
    assert np.all(np.abs(g(after) / g(before) - 1) > 0.1)  # mean |g| moved with the rescaling


def test_unit_scores_of_a_pair_set_and_the_technique_reads_the_pairs(model):
    from medinterp.concepts import PairSet, PromptPair
    from medinterp.techniques.base import Family
    from medinterp.techniques.saliency import TECHNIQUE

    ps = PairSet(name="toy_pairs", version="1", description="", pairs=[
        PromptPair("The patient takes", "The patient needs", " aspirin", " insulin", meta={"template": 0}),
        PromptPair("A man with chest pain has", "A man with a cough has", " angina", " asthma", meta={"template": 1}),
        PromptPair("The patient takes", "The doctor gives", " aspirin", " oxygen", meta={"template": 0}),
    ])
    assert TECHNIQUE.needs == ("pairs",)
    res = TECHNIQUE.run(model, Family("toy", concepts=None, pairs=ps), progress=False, n_boot=20)
    us = res.unit_scores()
    assert us.values.shape == (2, model.cfg.n_layers) and us.units == ["The patient takes", "A man with chest pain has"]
    assert us.templates == [0, 1] and res.targets == [" aspirin", " angina"]
    np.testing.assert_allclose(us.values.sum(1), 1.0)
    assert TECHNIQUE.params("full")["max_prompts"] >= TECHNIQUE.params("quick")["max_prompts"]


# ---------------------------------------------------------------------------------------- batched backward (0.3)
# prompts of 4 to 9 tokens: every batch is padded
RAGGED = PROMPTS + [("Asthma causes", "wheezing"), ("A child with a rash and fever after a new drug has", "infection")]


def _assert_same_per_prompt(a, b, rtol=1e-5):
    for f in ("values", "outer_values", "param_values", "loss", "share", "covariates"):
        x, y = np.asarray(getattr(a, f), float), np.asarray(getattr(b, f), float)
        assert x.shape == y.shape, f
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=f)
        np.testing.assert_allclose(x[~np.isnan(x)], y[~np.isnan(y)], rtol=rtol, atol=0, err_msg=f)
    assert a.param_names == b.param_names and a.targets == b.targets


@pytest.mark.parametrize("arch, dtype, rtol", [(None, torch.float32, 1e-5), ("gemma3", torch.float32, 1e-5),
                                               ("gemma_like", torch.float32, 1e-4), ("gemma_like", torch.float64, 1e-10),
                                               ("gemma3", torch.float64, 1e-10)])
@pytest.mark.parametrize("outer", [True, False])
def test_batched_backward_equals_one_prompt_at_a_time_on_a_padded_batch(arch, dtype, rtol, outer):
    """Per-prompt numbers of a padded batch (prompts of different lengths, batches of 3 and a ragged
    last one) equal the one-backward-per-prompt path: GPT-2-style (LN, biases, W_pos), a Gemma-3 tiny
    (GQA with one KV head, QK-norm, post-norms, sliding window, soft-cap) and the Gemma-like RMS model.
    In float64 the two paths agree to 1e-10 (the same math); in float32 to rounding (the Gemma-like
    model's 30x unembedding and soft-cap amplify float32 rounding of the batched matmuls to ~2e-5)."""
    m = gemma_like(dtype=dtype) if arch == "gemma_like" else tiny_model(n_layers=3, seed=2, arch=arch, dtype=dtype)
    kw = dict(progress=False, n_boot=20, include_embed=outer, include_unembed=outer, track_memory=False)
    one = saliency(m, RAGGED, batch_size=1, **kw)
    lens = [build_target(m, p, a).tokens.shape[0] for p, a in RAGGED]
    assert len(set(lens)) >= 4  # really ragged
    many = saliency(m, RAGGED, batch_size=3, **kw)
    assert one.params["batch_size"] == 1 and many.params["batch_size"] == 3
    _assert_same_per_prompt(one, many, rtol=rtol)
    assert np.all(many.values[:, :, :, 0] > 0)  # every block gets a gradient: nothing vacuous
    if outer:
        assert np.all(many.outer_values[:, :, 0] > 0)
    else:
        assert np.all(np.isnan(many.outer_values))


def test_padding_and_batch_order_do_not_leak_into_a_prompt(model, monkeypatch):
    """A prompt's numbers do not depend on the prompts it is batched with, their order, or the pad token."""
    from medinterp.techniques.saliency import batched

    kw = dict(progress=False, n_boot=10, track_memory=False)
    short = [RAGGED[0]]
    alone = saliency(model, short, batch_size=2, **kw)
    order = [RAGGED[5], RAGGED[0], RAGGED[2]]  # the short prompt between two longer ones
    mixed = saliency(model, order, batch_size=3, **kw)
    for f in ("values", "outer_values", "param_values", "loss"):
        np.testing.assert_allclose(getattr(mixed, f)[1], getattr(alone, f)[0], rtol=1e-5, err_msg=f)
    rev = saliency(model, order[::-1], batch_size=3, **kw)
    np.testing.assert_allclose(rev.values[::-1], mixed.values, rtol=1e-5)
    # another pad id (a real word): the pads are still never read
    orig = batched.pad_batch

    def other_pad(m, targets):
        tokens, mask, lengths = orig(m, targets)
        return torch.where(mask.bool(), tokens, torch.full_like(tokens, m.to_single_token("angina"))), mask, lengths

    monkeypatch.setattr(batched, "pad_batch", other_pad)
    repad = saliency(model, order, batch_size=3, **kw)
    np.testing.assert_allclose(repad.values, mixed.values, rtol=1e-5)
    np.testing.assert_allclose(repad.outer_values, mixed.outer_values, rtol=1e-5)


def test_batched_path_without_the_attention_mask_would_leak(model, monkeypatch):
    """The check above can fail: left padding (pads before the prompt, mask dropped) changes the numbers."""
    from medinterp.techniques.saliency import batched

    order = [RAGGED[5], RAGGED[0]]
    kw = dict(progress=False, n_boot=10, track_memory=False, include_embed=False, include_unembed=False)
    ref = saliency(model, order, batch_size=1, **kw)
    orig = batched.pad_batch

    def no_mask(m, targets):
        tokens, mask, lengths = orig(m, targets)
        return tokens, torch.ones_like(mask), lengths

    monkeypatch.setattr(batched, "pad_batch", no_mask)
    # right padding + causal attention: a real position never reads a pad, even without a mask
    same = saliency(model, order, batch_size=2, **kw)
    np.testing.assert_allclose(same.values, ref.values, rtol=1e-5)

    def left_pad(m, targets):  # what a batch without a correct mask and position handling would do
        tokens, mask, lengths = orig(m, targets)
        T = tokens.shape[1]
        out = torch.stack([torch.roll(tokens[b], T - n) for b, n in enumerate(lengths)])
        return out, torch.ones_like(mask), [T] * len(lengths)

    monkeypatch.setattr(batched, "pad_batch", left_pad)
    wrong = saliency(model, order, batch_size=2, **kw)  # the short prompt's rows are now read at the wrong places
    np.testing.assert_allclose(wrong.values[0], ref.values[0], rtol=1e-5)  # the longest prompt has no pads
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(wrong.values[1], ref.values[1], rtol=1e-3)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batched_run_restores_model_state(model, batch_size):
    model.blocks[0].attn.W_Q.requires_grad_(False)
    old_grad = torch.randn_like(model.blocks[2].mlp.W_in)
    model.blocks[2].mlp.W_in.grad = old_grad.clone()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    saliency(model, RAGGED[:4], batch_size=batch_size, progress=False, n_boot=10)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert torch.equal(model.blocks[2].mlp.W_in.grad, old_grad)
    assert all(p.grad is None for n, p in model.named_parameters() if n != "blocks.2.mlp.W_in")
    for mod in model.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks, type(mod).__name__


def test_batch_size_choice_and_errors(model):
    res = saliency(model, PROMPTS[:2], params="all", progress=False, n_boot=10)
    assert res.params["batch_size"] == 1  # biases and norms: the one-prompt path
    with pytest.raises(MedinterpError, match="params='all' runs per prompt"):
        saliency(model, PROMPTS[:2], params="all", batch_size=2, progress=False)
    with pytest.raises(MedinterpError, match="fast_outer"):
        saliency(model, PROMPTS[:2], fast_outer=False, batch_size=2, progress=False)
    with pytest.raises(MedinterpError, match="batch_size=0"):
        saliency(model, PROMPTS[:2], batch_size=0, progress=False)
    from medinterp.techniques.saliency.run import DEFAULT_BATCH

    assert saliency(model, PROMPTS[:2], progress=False, n_boot=10).params["batch_size"] == DEFAULT_BATCH


def test_batched_path_never_forms_parameter_gradients(model):
    """No parameter requires grad during the batched backward: no dense summed gradient is formed."""
    from medinterp.techniques.saliency import batched

    seen = []
    orig = batched._SampleStats.add_linear

    def spy(self, name, x, d, w):
        seen.append(all(not p.requires_grad and p.grad is None for p in model.parameters()))
        return orig(self, name, x, d, w)

    batched._SampleStats.add_linear = spy
    try:
        saliency(model, RAGGED[:3], batch_size=3, progress=False, n_boot=10)
    finally:
        batched._SampleStats.add_linear = orig
    assert len(seen) == 4 * model.cfg.n_layers * 1 + 2 * model.cfg.n_layers and all(seen)  # Q K V O, in out


# ---------------------------------------------------------------------------------------- covariates (0.3)
def _toy_pairs():
    from medinterp.concepts import PairSet, PromptPair

    return PairSet(name="toy_pairs", version="1", description="", pairs=[
        PromptPair("The patient takes aspirin for", "The patient takes insulin for", " pain", " diabetes",
                   meta={"template": 0}),
        PromptPair("A man with chest pain has", "A man with a cough has", " angina", " asthma", meta={"template": 1}),
        PromptPair("The patient takes aspirin for", "The patient takes heparin for", " pain", " stroke",
                   meta={"template": 0}),
        PromptPair("A woman with severe chronic fever has", "A woman with cough has", " pneumonia", " asthma",
                   meta={"template": 1}),
    ])


@pytest.mark.parametrize("batch_size", [1, 2])
def test_covariates_of_a_pair_set_match_brute_force(model, batch_size):
    from medinterp.covariates import COVARIATES
    from medinterp.techniques.saliency.run import SALIENCY_COVARIATES

    ps = _toy_pairs()
    res = saliency(model, ps, batch_size=batch_size, progress=False, n_boot=10, include_embed=False,
                   include_unembed=False)
    assert res.covariate_names == list(SALIENCY_COVARIATES) and set(SALIENCY_COVARIATES) <= set(COVARIATES)
    cov = dict(zip(res.covariate_names, res.covariates.T))
    # the prompts: pairs 0, 1, 3 (pair 2 repeats pair 0's clean prompt)
    # "The patient takes aspirin for": BOS + 5 words; the item (aspirin) is 1 token, 1 token after it
    # "A man with chest pain has" vs "A man with a cough has": positions 4-5 differ, 1 after
    # "A woman with severe chronic fever has" vs "A woman with cough has": lengths differ -> NaN span
    np.testing.assert_array_equal(cov["prompt_tokens"], [5, 6, 7])
    np.testing.assert_array_equal(cov["subject_tokens"][:2], [1, 2])
    np.testing.assert_array_equal(cov["tokens_after_subject"][:2], [1, 1])
    assert np.isnan(cov["subject_tokens"][2]) and np.isnan(cov["tokens_after_subject"][2])
    bos = torch.tensor([[model.tokenizer.bos_token_id]])
    with torch.no_grad():
        prior = torch.log_softmax(model(bos)[0, -1], -1)
    for i, (clean, ans, foil) in enumerate([("The patient takes aspirin for", " pain", " diabetes"),
                                             ("A man with chest pain has", " angina", " asthma"),
                                             ("A woman with severe chronic fever has", " pneumonia", " asthma")]):
        toks = model.to_tokens(clean)
        with torch.no_grad():
            logits = model(toks)[0, -1]
        a, f = model.to_single_token(ans), model.to_single_token(foil)
        assert cov["answer_prior"][i] == pytest.approx(float(prior[a]), rel=1e-5)
        assert cov["intact_logp"][i] == pytest.approx(float(torch.log_softmax(logits, -1)[a]), rel=1e-4)
        assert cov["intact_ld"][i] == pytest.approx(float(logits[a] - logits[f]), rel=1e-4, abs=1e-5)
    us = res.unit_scores()
    assert set(us.covariates) == set(SALIENCY_COVARIATES)
    np.testing.assert_array_equal(us.covariates["intact_ld"], cov["intact_ld"])


def test_covariates_without_pairs_are_nan_where_undefined(model):
    res = saliency(model, PROMPTS[:3], progress=False, n_boot=10)
    cov = res.unit_scores().covariates
    for k in ("subject_tokens", "tokens_after_subject", "prompt_tokens", "intact_ld"):
        assert np.all(np.isnan(cov[k])), k
    assert np.all(np.isfinite(cov["answer_prior"])) and np.all(cov["intact_logp"] < 0)
    np.testing.assert_allclose(cov["intact_logp"][0], -res.loss[0], rtol=1e-5)  # single-token answer


def test_results_saved_without_covariates_still_load(model, tmp_path):
    import json

    res = saliency(model, _toy_pairs(), progress=False, n_boot=10, include_embed=False, include_unembed=False)
    res.save(tmp_path / "new")
    back = Result.load(tmp_path / "new")
    np.testing.assert_array_equal(back.covariates, res.covariates)
    assert back.covariate_names == res.covariate_names
    np.testing.assert_array_equal(back.unit_scores().covariates["prompt_tokens"], [5, 6, 7])
    old = dataclasses.replace(res, covariates=None, covariate_names=[])
    old.save(tmp_path / "old")
    man = json.loads((tmp_path / "old" / "manifest.json").read_text())
    assert "covariates" not in json.dumps(man.get("arrays", [])) and not man.get("fields", {}).get("covariate_names")
    back = Result.load(tmp_path / "old")
    assert back.covariates is None and back.unit_scores().covariates == {}


def test_presets_give_the_map_enough_prompts():
    from medinterp.techniques.saliency import TECHNIQUE

    full, quick = TECHNIQUE.params("full"), TECHNIQUE.params("quick")
    assert full["max_prompts"] is None or full["max_prompts"] >= 30
    assert quick["max_prompts"] is not None and quick["max_prompts"] <= 8
    assert not full["include_embed"] and not full["include_unembed"]  # the map reads block shares only
