"""Layer lesioning on tiny random models: hooks, the start_at_layer path, metrics, continuations, results."""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch

import medinterp.viz  # noqa: F401  (registers the figure renderers)
from medinterp.errors import MedinterpError
from medinterp.hooks import (
    compute_means,
    lesion_hooks,
    mean_ablate_hooks,
    skip_block_hooks,
    zero_ablate_hooks,
)
from medinterp.results import Result
from medinterp.techniques.lesion import (
    LesionResult,
    continuation_metrics,
    greedy_continuations,
    intact_run,
    items_from_inputs,
    lesion,
    lesioned_resid,
    make_batch,
)

PROMPTS = [
    ("The patient takes", " aspirin"),
    ("A 45 - year - old man with chest pain on exertion most likely has", " angina"),
    "fever and cough",
    ("Diabetes is treated with", "insulin daily"),
    ("Asthma", " wheezing"),
]
MODES = ["skip", "attn_zero", "attn_mean", "mlp_zero", "mlp_mean"]


@pytest.fixture(scope="module")
def rot():
    """A 4-layer rotary model (like Gemma's positional scheme) with non-zero biases."""
    from medinterp.testing import tiny_model

    m = tiny_model(n_layers=4, d_model=64, n_heads=4, d_mlp=128, positional_embedding_type="rotary", rotary_dim=16, seed=1)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for name, p in m.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return m


def _tokens(model, text):
    return model.to_tokens(text)


# ---------------------------------------------------------------------------------------- hooks
@pytest.mark.parametrize("layer", [0, 2, 3])
def test_zeroed_block_equals_skipped_block(rot, layer):
    toks = _tokens(rot, "A 45 - year - old man with chest pain")
    zeroed = copy.deepcopy(rot)
    with torch.no_grad():
        for name, p in zeroed.blocks[layer].named_parameters():
            if name.startswith(("attn.", "mlp.")):  # weights and biases: zero weights alone leave the biases
                p.zero_()
    want = zeroed(toks)
    got_hooks = rot.run_with_hooks(toks, fwd_hooks=skip_block_hooks(layer))
    assert not torch.allclose(rot(toks), want, atol=1e-3)  # the block mattered
    torch.testing.assert_close(got_hooks, want, rtol=1e-5, atol=1e-5)
    # the prefix path (start block layer+1 from resid_pre[layer]) gives the same thing
    items, _, _ = items_from_inputs(rot, ["A 45 - year - old man with chest pain"])
    batch = make_batch(items, [0], 0, "cpu")
    _, cache = intact_run(rot, batch, [layer])
    resid = lesioned_resid(rot, batch, layer, "skip", cache=cache)
    _, zc = zeroed.run_with_cache(toks, names_filter=f"blocks.{rot.cfg.n_layers - 1}.hook_resid_post")
    torch.testing.assert_close(resid, zc[f"blocks.{rot.cfg.n_layers - 1}.hook_resid_post"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sub", ["attn", "mlp"])
def test_zeroed_sublayer_equals_zero_ablation(rot, sub):
    toks = _tokens(rot, "severe headache and nausea")
    zeroed = copy.deepcopy(rot)
    with torch.no_grad():
        for p in getattr(zeroed.blocks[1], sub).parameters():
            p.zero_()
    torch.testing.assert_close(rot.run_with_hooks(toks, fwd_hooks=zero_ablate_hooks(1, sub)), zeroed(toks), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layer", [1, 2])
def test_lesion_leaves_earlier_layers_untouched(rot, mode, layer):
    toks = _tokens(rot, "The patient was started on metformin for diabetes")
    means = compute_means(rot, ["fever and cough", "chest pain on exertion"])
    names = lambda n: n.endswith(("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"))  # noqa: E731
    _, clean = rot.run_with_cache(toks, names_filter=names)
    with rot.hooks(fwd_hooks=lesion_hooks(layer, mode, means=means)):
        _, les = rot.run_with_cache(toks, names_filter=names)
    for name in clean.keys():
        l = int(name.split(".")[1])
        if l < layer or name == f"blocks.{layer}.hook_resid_pre":
            assert torch.equal(clean[name], les[name]), name
    assert not torch.allclose(clean[f"blocks.{rot.cfg.n_layers - 1}.hook_resid_post"],
                              les[f"blocks.{rot.cfg.n_layers - 1}.hook_resid_post"])
    if mode == "skip":
        assert torch.equal(les[f"blocks.{layer}.hook_resid_post"], les[f"blocks.{layer}.hook_resid_pre"])


def test_mean_ablation_per_position_and_last(rot):
    refs = ["fever and cough", "chest pain on exertion most likely"]
    m = compute_means(rot, refs, layers=[2], sublayers=["mlp"])["blocks.2.hook_mlp_out"]
    acts = []
    for r in refs:
        _, c = rot.run_with_cache(_tokens(rot, r), names_filter="blocks.2.hook_mlp_out")
        acts.append(c["blocks.2.hook_mlp_out"][0])
    n0, n1 = acts[0].shape[0], acts[1].shape[0]
    assert m.per_position.shape[0] == max(n0, n1)
    torch.testing.assert_close(m.per_position[0], (acts[0][0] + acts[1][0]) / 2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.per_position[n1 - 1], acts[1][n1 - 1], rtol=1e-5, atol=1e-6)  # only the longer prompt
    torch.testing.assert_close(m.last, (acts[0][-1] + acts[1][-1]) / 2, rtol=1e-5, atol=1e-6)
    overall = torch.cat([acts[0][1:], acts[1][1:]]).mean(0)
    torch.testing.assert_close(m.overall, overall, rtol=1e-5, atol=1e-6)
    # a prompt longer than every reference: positions past them get the overall mean
    long = _tokens(rot, "a b c d e f g h i j k l m n o p")
    with rot.hooks(fwd_hooks=mean_ablate_hooks(2, "mlp", m)):
        _, c = rot.run_with_cache(long, names_filter="blocks.2.hook_mlp_out")
    out = c["blocks.2.hook_mlp_out"][0]
    torch.testing.assert_close(out[: max(n0, n1)], m.per_position)
    torch.testing.assert_close(out[-1], m.overall)


def test_mean_ablation_with_own_prompt_as_reference_changes_nothing(rot):
    res = lesion(rot, [PROMPTS[1]], modes=["attn_mean", "mlp_mean"], reference=[PROMPTS[1]], n_continuations=0,
                 n_boot=10, progress=False)
    assert np.abs(res.metrics[..., 0]).max() < 1e-5  # KL
    assert np.abs(res.metrics[..., 1]).max() < 1e-4  # log-prob drop
    assert res.metrics[..., 2].min() == 1.0


# ---------------------------------------------------------------------------------------- prefix path
def test_prefix_path_equals_full_forward(rot):
    kw = dict(modes=MODES, n_continuations=0, n_boot=10, progress=False, batch_size=3)
    a = lesion(rot, PROMPTS, method="prefix", **kw)
    b = lesion(rot, PROMPTS, method="full", **kw)
    np.testing.assert_allclose(a.metrics, b.metrics, rtol=1e-5, atol=1e-5)  # float32 reduction-order noise: 2e-6 seen under load
    np.testing.assert_allclose(a.intact_logp, b.intact_logp, rtol=1e-6, atol=1e-6)
    assert a.metrics[..., 0].max() > 1e-3  # lesions do something


def test_prefix_residual_equals_full_residual_with_padding(rot):
    items, _, _ = items_from_inputs(rot, PROMPTS)
    batch = make_batch(items, list(range(len(items))), 0, "cpu")
    assert (batch.mask == 0).any()  # padded batch
    means = compute_means(rot, [it.tokens for it in items])
    _, cache = intact_run(rot, batch, range(rot.cfg.n_layers))
    real = batch.mask.bool()
    for mode in MODES:
        for l in range(rot.cfg.n_layers):
            a = lesioned_resid(rot, batch, l, mode, cache=cache, means=means)
            b = lesioned_resid(rot, batch, l, mode, means=means, method="full")
            err = torch.linalg.vector_norm(a[real] - b[real]) / torch.linalg.vector_norm(b[real])
            assert err < 1e-6, (mode, l, float(err))


def test_batching_does_not_change_results(rot):
    kw = dict(modes=["skip", "mlp_zero"], n_continuations=0, n_boot=10, progress=False)
    a = lesion(rot, PROMPTS, batch_size=1, **kw)
    b = lesion(rot, PROMPTS, batch_size=16, **kw)
    np.testing.assert_allclose(a.metrics, b.metrics, rtol=1e-4, atol=1e-5)


def test_intact_logp_and_read_position(rot):
    res = lesion(rot, PROMPTS[:2], modes=["skip"], n_continuations=0, n_boot=10, progress=False)
    for i, (ctx, ans) in enumerate(PROMPTS[:2]):
        c, a = rot.to_tokens(ctx), rot.to_tokens(ans, prepend_bos=False)
        logp = torch.log_softmax(rot(torch.cat([c, a], 1))[0].double(), -1)
        want = sum(float(logp[c.shape[1] - 1 + j, a[0, j]]) for j in range(a.shape[1]))
        assert res.intact_logp[i] == pytest.approx(want, abs=1e-4)
        assert res.intact_top1[i] == int(logp[c.shape[1] - 1].argmax())


def test_span_target_reads_after_the_item(rot):
    """The read position is the item's last token and the scored token the word after it: reading the
    token before the item (what 0.1 did) fails every assertion here."""
    p = types.SimpleNamespace(text="The patient takes aspirin daily", span=(18, 25), answer=None,
                              labels={"specialty": "cardiology"}, item="aspirin")
    items, labels, _ = items_from_inputs(rot, [p])
    it = items[0]
    upto = rot.to_tokens("The patient takes aspirin")[0]
    full = rot.to_tokens("The patient takes aspirin daily")[0]
    item_last = upto.shape[0] - 1  # index of the item's (last) token
    assert int(full[item_last]) == int(rot.to_tokens(" aspirin", prepend_bos=False)[0, -1])
    assert it.read_pos == item_last and it.n_context == item_last + 1
    assert it.tokens.tolist() == full.tolist() and it.target.strip() == "daily"
    assert it.predict_positions == [item_last]
    assert labels == {"item": ["aspirin"], "specialty": ["cardiology"]}
    # and lesion's intact log p is log p(daily | ... aspirin), read at the item's last token
    res = lesion(rot, [p], modes=["skip"], n_continuations=0, n_boot=10, progress=False)
    with torch.no_grad():
        logp = torch.log_softmax(rot(full[None])[0].double(), -1)
    assert res.intact_logp[0] == pytest.approx(float(logp[item_last, full[item_last + 1]]), abs=1e-5)
    assert abs(res.intact_logp[0] - float(logp[item_last - 1, full[item_last]])) > 1e-3


def test_pair_set_gives_its_clean_prompts_with_their_answers_once(rot):
    from medinterp.concepts import PairSet, PromptPair

    ps = PairSet(name="toy_pairs", version="1", description="", pairs=[
        PromptPair("The patient takes", "The patient needs", " aspirin", " insulin"),
        PromptPair("The patient takes", "The doctor gives", " aspirin", " oxygen"),  # same clean prompt
        PromptPair("Chest pain suggests", "Fever suggests", " angina", " pneumonia"),
    ])
    items, labels, name = items_from_inputs(rot, ps)
    assert name == "toy_pairs" and [it.text for it in items] == ["The patient takes", "Chest pain suggests"]
    assert [it.target for it in items] == [" aspirin", " angina"]
    assert labels == {"item": ["The patient takes", "Chest pain suggests"], "pair": [0, 2]}
    for it in items:  # read at the prompt's last token, which predicts the answer
        ctx = rot.to_tokens(it.text)[0]
        assert it.read_pos == ctx.shape[0] - 1 and it.target_ids.tolist() == rot.to_tokens(it.target, prepend_bos=False)[0].tolist()
    res = lesion(rot, ps, modes=["skip"], n_continuations=0, n_boot=10, progress=False)
    us = res.unit_scores()
    assert us.values.shape == (2, rot.cfg.n_layers) and us.units == ["The patient takes", "Chest pain suggests"]
    assert us.templates is None and res.default_metric == "ld_frac"
    np.testing.assert_array_equal(us.values, res.values("ld_frac"))  # the map's metric (NaN where not known)
    np.testing.assert_array_equal(res.unit_scores(metric="logp_drop").values, res.metrics[:, 0, :, 1])
    assert res.known.shape == (2,) and res.covariate_names == ["subject_tokens", "tokens_after_subject", "prompt_tokens",
                                                               "answer_prior", "intact_logp", "intact_ld"]


def test_kl_and_agreement_are_consistent(rot):
    res = lesion(rot, PROMPTS, modes=["skip", "attn_zero"], n_continuations=5, max_new_tokens=5,
                 continuation_modes=["skip", "attn_zero"], n_boot=10, progress=False)
    kl, agree = res.metrics[..., 0], res.metrics[..., 2]
    assert (kl > -1e-6).all()
    # the first greedy token is the arg-max at the read position: top-1 kept <=> first_diff > 0
    first = res.cont_metrics[..., 0]
    for k, i in enumerate(res.cont_index):
        np.testing.assert_array_equal(first[k] > 0, agree[i] == 1)


# ---------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("mode", ["skip", "attn_mean", None])
def test_greedy_kv_cache_equals_recompute_and_unbatched(rot, mode):
    items, _, _ = items_from_inputs(rot, PROMPTS)
    ctx = [it.context for it in items]
    means = compute_means(rot, [it.tokens for it in items])
    fn = None if mode is None else (lambda pos: lesion_hooks(2, mode, means=means, position_ids=pos))
    a = greedy_continuations(rot, ctx, 6, fn)
    b = greedy_continuations(rot, ctx, 6, fn, use_cache=False)
    c = torch.cat([greedy_continuations(rot, [x], 6, fn) for x in ctx])
    assert torch.equal(a, b) and torch.equal(a, c)
    if mode is None:  # TransformerLens's own greedy decoding agrees
        ref = rot.generate(ctx[0][None], max_new_tokens=6, do_sample=False, verbose=False, stop_at_eos=False)
        assert ref[0, ctx[0].shape[0]:].tolist() == a[0].tolist()


def test_continuation_metrics():
    assert continuation_metrics(np.array([1, 2, 3]), np.array([1, 2, 3])) == (3.0, 1.0, 1.0)
    assert continuation_metrics(np.array([1, 2, 3, 4]), np.array([9, 1, 2, 3])) == (0.0, 0.0, 0.75)


def test_judge_scores_and_validation(rot):
    calls = []

    def judge(prompt, intact, lesioned):
        calls.append(prompt)
        return 1 if intact == lesioned else 7

    res = lesion(rot, PROMPTS[:3], modes=["skip"], n_continuations=2, max_new_tokens=4, judge=judge, n_boot=10, progress=False)
    assert res.judge_scores.shape == (2, 1, rot.cfg.n_layers)
    same = res.cont_metrics[..., 1] == 1.0
    np.testing.assert_array_equal(res.judge_scores == 1, same)
    assert "judge" in res.table.columns and len(calls) == 2 * rot.cfg.n_layers
    with pytest.raises(MedinterpError, match="1..10"):
        lesion(rot, PROMPTS[:1], modes=["skip"], n_continuations=1, max_new_tokens=2, judge=lambda *a: 11, progress=False)


# ---------------------------------------------------------------------------------------- results
def test_result_save_load_figure_and_escaping(rot, tmp_path):
    bad = "<script>alert(1)</script> chest pain"
    concepts = {"cardio": PROMPTS[:2], "resp": [bad, "fever and cough"]}
    res = lesion(rot, concepts, modes=["skip", "mlp_mean"], n_continuations=3, max_new_tokens=4, n_boot=50, progress=False)
    assert res.labels["concept"] == ["cardio", "cardio", "resp", "resp"]
    assert res.layer_curve().shape == (rot.cfg.n_layers,)
    lo, hi = res.layer_curve_ci()
    cur = res.layer_curve()
    assert np.all(lo <= cur + 1e-12) and np.all(cur <= hi + 1e-12)
    c1 = res.layer_curve(where={"concept": "cardio"})
    np.testing.assert_allclose(c1, res.metrics[:2, 0, :, 1].mean(0))
    res.save(tmp_path / "r")
    back = Result.load(tmp_path / "r")
    assert isinstance(back, LesionResult)
    np.testing.assert_array_equal(back.metrics, res.metrics)
    np.testing.assert_array_equal(back.cont_tokens, res.cont_tokens)
    np.testing.assert_allclose(back.layer_curve_ci()[0], lo)
    assert back.lesioned_continuations == res.lesioned_continuations and back.prompts == res.prompts
    assert back.table.shape == res.table.shape and set(back.table["mode"]) == {"skip", "mlp_mean"}
    assert "kl_ci_low" in back.table.columns
    html = back.to_html(tmp_path / "r.html")
    assert "<script>alert(1)" not in html and "plotly" in html
    assert len(back.figures()) >= 5  # heatmaps, curves, per-concept curves, continuation table
    assert back.top_layers(2) == res.top_layers(2)
    assert "top blocks by kl" in back.summary()


def test_layer_subset_curve_has_nan_elsewhere(rot):
    res = lesion(rot, PROMPTS[:2], modes=["skip"], layers=[1, 3], n_continuations=1, max_new_tokens=2, n_boot=10, progress=False)
    cur = res.layer_curve()
    assert cur.shape == (4,) and np.isnan(cur[[0, 2]]).all() and np.isfinite(cur[[1, 3]]).all()
    assert np.isnan(res.layer_curve_ci()[0][0])


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(modes=["nope"]), "modes"),
        (dict(layers=[7]), "blocks 0..3"),
        (dict(method="fast"), "method"),
        (dict(mean_over="median"), "mean_over"),
        (dict(max_prompts=0), "max_prompts"),
        (dict(continuation_modes=["x"]), "continuation_modes"),
    ],
)
def test_bad_arguments(rot, kw, match):
    with pytest.raises(MedinterpError, match=match):
        lesion(rot, PROMPTS[:1], progress=False, **kw)


def test_bad_prompts(rot):
    with pytest.raises(MedinterpError, match="no prompts"):
        lesion(rot, [], progress=False)
    with pytest.raises(MedinterpError, match="prompt 1.*empty"):
        lesion(rot, [("a", " b"), ("x", "  ")], progress=False)
    with pytest.raises(MedinterpError, match="prompt 0.*expected a ConceptPrompt"):
        lesion(rot, [42], progress=False)
    with pytest.raises(MedinterpError, match="outside the text"):
        lesion(rot, [types.SimpleNamespace(text="abc", span=(2, 9), answer=None)], progress=False)
    with pytest.raises(MedinterpError, match="reference mean"):
        lesion_hooks(0, "mlp_mean")


def test_cli_lesion(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import medinterp.models
    from medinterp.cli import app
    from medinterp.testing import tiny_model

    monkeypatch.setattr(medinterp.models, "load_model", lambda spec, **kw: tiny_model(n_layers=2))
    out = tmp_path / "les"
    args = ["lesion", "-c", "drugs", "-o", str(out), "-m", "tiny", "-n", "4", "--modes", "skip,mlp_mean",
            "--continuations", "2", "--max-new-tokens", "3", "--n-boot", "20", "--no-progress"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert {"manifest.json", "arrays.safetensors", "table.csv", "lesion.html"} <= {p.name for p in out.iterdir()}
    res = Result.load(out)
    assert res.concept_set == "drugs" and res.n_prompts == 4 and res.metrics.shape == (4, 2, 2, 6)
    assert {"specialty", "mechanism", "item"} <= set(res.labels)
    assert "top blocks by kl" in r.output
    bad = CliRunner().invoke(app, ["lesion", "-c", "drugs", "-o", str(out), "--modes", "skip,cut"])
    assert bad.exit_code != 0 and isinstance(bad.exception, MedinterpError)


# ---------------------------------------------------------------------------------------- metric direction, checkpoints
def test_metrics_equal_a_hand_computed_kl_and_logp_drop(rot):
    """KL(intact ‖ lesioned) and log p_intact − log p_lesioned, by hand from the plain model: a
    reversed KL or a flipped sign of the drop fails here."""
    ctx, ans = "A 45 - year - old man with chest pain on exertion most likely has", " angina daily"
    res = lesion(rot, [(ctx, ans)], modes=["skip"], n_continuations=0, n_boot=10, progress=False)
    c, a = rot.to_tokens(ctx), rot.to_tokens(ans, prepend_bos=False)
    toks = torch.cat([c, a], 1)
    read = c.shape[1] - 1
    with torch.no_grad():
        intact = rot(toks)[0].double()
        _, cache = rot.run_with_cache(toks)
        n_reversed = 0
        for l in range(rot.cfg.n_layers):
            x = cache[f"blocks.{l}.hook_resid_pre"]
            for block in rot.blocks[l + 1:]:  # block l removed: resid_post[l] = resid_pre[l]
                x = block(x)
            lesioned = rot.unembed(rot.ln_final(x))[0].double()
            lp, lq = torch.log_softmax(intact, -1), torch.log_softmax(lesioned, -1)
            kl = float((lp[read].exp() * (lp[read] - lq[read])).sum())
            kl_rev = float((lq[read].exp() * (lq[read] - lp[read])).sum())
            pos = torch.arange(read, toks.shape[1] - 1)
            drop = float(lp[pos, toks[0, read + 1:]].sum() - lq[pos, toks[0, read + 1:]].sum())
            agree = float(lp[read].argmax() == lq[read].argmax())
            acc = float(lp[read].argmax() == toks[0, read + 1]) - float(lq[read].argmax() == toks[0, read + 1])
            np.testing.assert_allclose(res.metrics[0, 0, l, :4], [kl, drop, agree, acc], rtol=1e-4, atol=1e-5)
            assert np.isnan(res.metrics[0, 0, l, 4:]).all()  # no foil: no logit difference
            assert abs(drop) > 1e-3  # a flipped sign would be caught
            n_reversed += abs(kl - kl_rev) > 1e-3
    assert n_reversed >= 2  # a reversed KL would be caught (KL and its reverse differ at >= 2 of the 4 blocks)


def test_checkpoint_resumes_an_interrupted_run_with_the_same_numbers(rot, tmp_path, monkeypatch):
    from medinterp import store
    from medinterp.techniques.lesion import run as les_run

    kw = dict(modes=["skip", "mlp_mean"], reference=PROMPTS, n_continuations=0, batch_size=2, n_boot=30, progress=False)
    ref = lesion(rot, PROMPTS, **kw)
    calls = {"intact": 0, "save": 0}
    orig_intact, orig_save = les_run.intact_run, store.Checkpoint.save

    def counting_intact(*a, **k):
        calls["intact"] += 1
        return orig_intact(*a, **k)

    def failing_save(self, key, **arrays):
        orig_save(self, key, **arrays)
        calls["save"] += 1
        if calls["save"] == 2:
            raise KeyboardInterrupt("stop after two batches")

    monkeypatch.setattr(les_run, "intact_run", counting_intact)
    monkeypatch.setattr(store.Checkpoint, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        lesion(rot, PROMPTS, checkpoint_dir=tmp_path / "ck", **kw)
    assert calls["intact"] == 2
    monkeypatch.setattr(store.Checkpoint, "save", orig_save)
    calls["intact"] = 0
    res = lesion(rot, PROMPTS, checkpoint_dir=tmp_path / "ck", **kw)
    assert calls["intact"] == 1 and res.timings["prompts_resumed"] == 4  # 5 prompts, batches of 2
    np.testing.assert_array_equal(res.metrics, ref.metrics)
    np.testing.assert_array_equal(res.intact_logp, ref.intact_logp)
    np.testing.assert_array_equal(res.table["kl_ci_low"].to_numpy(), ref.table["kl_ci_low"].to_numpy())
    # changed inputs (one answer) or parameters (modes): the stale units are not used
    calls["intact"] = 0
    other = [PROMPTS[0], ("The patient takes", " insulin"), *PROMPTS[2:]]
    res2 = lesion(rot, other, checkpoint_dir=tmp_path / "ck", **kw)
    assert calls["intact"] == 3
    np.testing.assert_array_equal(res2.metrics, lesion(rot, other, **kw).metrics)
    calls["intact"] = 0
    lesion(rot, other, checkpoint_dir=tmp_path / "ck", **{**kw, "modes": ["skip"]})
    assert calls["intact"] == 3


def test_result_fields_follow_the_contract(rot):
    from medinterp.techniques.base import TechniqueResult

    res = lesion(rot, PROMPTS[:2], modes=["skip"], n_continuations=0, n_boot=10, progress=False)
    assert isinstance(res, TechniqueResult) and LesionResult._legacy_fields == {"timing": "timings"}
    assert res.params["modes"] == ["skip"] and res.timings["total_s"] >= 0
    assert "answer" in res.curve_label and isinstance(res.summary(), str)


# ---------------------------------------------------------------------------------------- after the item, block_mean, criticality
def test_removing_the_block_that_writes_the_answer_lowers_its_log_prob():
    """Block 1's MLP bias writes the answer's unembedding direction: skipping block 1 lowers log p(answer)
    (logp_drop > 0, the largest of all blocks) and breaks top-1 == answer (acc_drop = 1)."""
    from medinterp.testing import tiny_model

    m = tiny_model(n_layers=3, seed=2)
    ans = int(m.to_tokens(" aspirin", prepend_bos=False)[0, -1])
    with torch.no_grad():
        u = m.unembed.W_U[:, ans] - m.unembed.W_U.mean(1)
        m.blocks[1].mlp.b_out.add_(50.0 * u / u.norm())
    prompts = [("The patient takes", " aspirin"), ("Chest pain and fever suggest", " aspirin")]
    res = lesion(m, prompts, modes=["skip", "block_mean"], n_continuations=0, n_boot=20, progress=False)
    drop = res.layer_curve("logp_drop", "skip")
    assert drop[1] > 1.0 and int(np.argmax(drop)) == 1
    assert np.all(res.values("acc_drop", "skip")[:, 1] == 1.0)
    assert np.all(res.intact_top1 == ans)
    # the bias is the same at every position, so its mean is itself: mean-ablating block 1 keeps it
    assert abs(res.layer_curve("logp_drop", "block_mean")[1]) < 0.5 * drop[1]
    assert res.top_layers(1) == [1]


def test_block_mean_prefix_equals_full_and_own_mean_is_no_lesion(rot):
    a = lesion(rot, PROMPTS, modes=["block_mean"], n_continuations=0, n_boot=10, progress=False)
    b = lesion(rot, PROMPTS, modes=["block_mean"], n_continuations=0, n_boot=10, progress=False, method="full")
    np.testing.assert_allclose(a.metrics, b.metrics, atol=1e-5, equal_nan=True)
    assert np.nanmax(a.metrics[..., 0]) > 1e-3  # it does something on a set of different prompts
    one = lesion(rot, PROMPTS[:1], modes=["block_mean"], reference=PROMPTS[:1], n_continuations=0, n_boot=10,
                 progress=False)
    assert np.abs(one.metrics[..., 0]).max() < 1e-6 and np.abs(one.metrics[..., 1]).max() < 1e-5


def test_block_mean_hooks_set_the_block_output_to_its_mean(rot):
    from medinterp.techniques.lesion import block_mean_hooks, compute_block_means

    toks = [rot.to_tokens(t)[0] for t in ["fever and cough", "chest pain on exertion today"]]
    means = compute_block_means(rot, toks, [2], batch_size=4)
    mean = means["blocks.2.block_delta"]
    x = rot.to_tokens("the patient has a rash")
    with rot.hooks(fwd_hooks=block_mean_hooks(2, mean, how="overall")):
        _, cache = rot.run_with_cache(x, names_filter=lambda n: "resid" in n)
    delta = cache["blocks.2.hook_resid_post"] - cache["blocks.2.hook_resid_pre"]
    torch.testing.assert_close(delta[0], mean.overall.expand_as(delta[0]), atol=1e-5, rtol=0)
    # the mean is that of resid_post - resid_pre over the reference prompts' real tokens >= 1
    with torch.no_grad():
        ds = []
        for t in toks:
            _, c = rot.run_with_cache(t[None], names_filter=lambda n: "blocks.2.hook_resid" in n)
            ds.append((c["blocks.2.hook_resid_post"] - c["blocks.2.hook_resid_pre"])[0, 1:])
    torch.testing.assert_close(mean.overall, torch.cat(ds).double().mean(0).to(mean.overall.dtype), atol=1e-5, rtol=0)


def test_block_criticality_equals_a_hand_computed_kl(rot):
    from medinterp.techniques.lesion import BlockCriticality, block_criticality

    texts = ["fever and cough", "A 45 - year - old man with chest pain", "the patient takes aspirin daily"]
    bc = block_criticality(rot, texts, n_boot=50)
    assert bc.kl.shape == (3, rot.cfg.n_layers) and bc.units == [0, 1, 2]
    for i, t in enumerate(texts):
        toks = rot.to_tokens(t)
        with torch.no_grad():
            p = torch.log_softmax(rot(toks)[0, -1].double(), -1)
            for l in range(rot.cfg.n_layers):
                with rot.hooks(fwd_hooks=skip_block_hooks(l)):
                    q = torch.log_softmax(rot(toks)[0, -1].double(), -1)
                assert bc.kl[i, l] == pytest.approx(float((p.exp() * (p - q)).sum()), rel=1e-4, abs=1e-6)
    lo, hi = bc.layer_curve_ci()
    assert np.all(lo <= bc.layer_curve() + 1e-12) and np.all(bc.layer_curve() <= hi + 1e-12)
    assert "criticality" in bc.summary() and bc.figure().layout.title.text.startswith("Block criticality")
    # pooled from lesion results: the same KL, units prefixed by the set
    r1 = lesion(rot, {"a": texts[:2]}, modes=["skip"], n_continuations=0, n_boot=10, progress=False)
    r2 = lesion(rot, {"b": texts[2:]}, modes=["skip"], n_continuations=0, n_boot=10, progress=False)
    pooled = BlockCriticality.from_lesions([r1, r2], n_boot=50)
    np.testing.assert_allclose(pooled.kl, bc.kl, rtol=1e-4)  # other batches: float32 padding noise
    assert pooled.units == ["a/0", "a/1", "b/0"]
    with pytest.raises(MedinterpError, match="skip mode"):
        BlockCriticality.from_lesions([lesion(rot, texts[:2], modes=["mlp_zero"], n_continuations=0, n_boot=10,
                                              progress=False)])


def test_lesion_technique_reads_the_pairs_and_unit_ci_resamples_items(rot):
    from medinterp.concepts import PairSet, PromptPair
    from medinterp.techniques.base import Family
    from medinterp.techniques.lesion import TECHNIQUE

    assert TECHNIQUE.needs == ("pairs",) and TECHNIQUE.params("full")["modes"][0] == "skip"
    pairs = [PromptPair(f"The patient {w} takes", "x", " aspirin", " insulin") for w in ["who", "now", "then", "still"]]
    res = TECHNIQUE.run(rot, Family("toy", pairs=PairSet(name="p", version="1", description="", pairs=pairs)),
                        progress=False, n_boot=200, modes=["skip"])
    assert res.n_prompts == 4 and res.unit_scores().units == [p.clean for p in pairs]
    # every item seen twice: resampling items gives the 4-item interval; treating the 8 prompts as units
    # (what 0.1 did) gives a narrower one
    from medinterp.prompt_inputs import unit_ci

    v = res.values("logp_drop")
    _, lo4, hi4 = unit_ci(v, [0, 1, 2, 3], n_boot=500, ci=0.95, seed=0)
    twice = v[[0, 0, 1, 1, 2, 2, 3, 3]]
    _, lo_u, hi_u = unit_ci(twice, [0, 0, 1, 1, 2, 2, 3, 3], n_boot=500, ci=0.95, seed=0)
    _, lo_p, hi_p = unit_ci(twice, list(range(8)), n_boot=500, ci=0.95, seed=0)
    np.testing.assert_allclose(lo_u, lo4, rtol=1e-9)
    np.testing.assert_allclose(hi_u, hi4, rtol=1e-9)
    assert np.mean(hi_p - lo_p) < 0.85 * np.mean(hi4 - lo4)
    assert np.all(np.isnan(unit_ci(v, [7, 7, 7, 7], n_boot=50, ci=0.95, seed=0)[1]))  # one item: no interval


@pytest.mark.parametrize("rows_per_call", [512, 7])  # one stack; several stacks (7 rows: one lesion of 5 prompts each)
def test_stacked_lesions_equal_one_lesion_at_a_time(rot, monkeypatch, rows_per_call):
    from medinterp.techniques.lesion import engine

    monkeypatch.setattr(engine, "STACK_ROWS_PER_CALL", rows_per_call)
    items, _, _ = items_from_inputs(rot, PROMPTS)
    batch = make_batch(items, list(range(len(items))), 0, "cpu")
    assert (batch.mask == 0).any()  # padded batch: the repeated mask must follow each copy
    layers = list(range(rot.cfg.n_layers))
    _, cache = intact_run(rot, batch, layers)
    means = engine.compute_block_means(rot, [it.tokens for it in items], layers, batch_size=8)
    lesions = [(mode, l) for mode in ("skip", "block_mean") for l in reversed(layers)]  # any order
    got = engine.stacked_entry_resids(rot, batch, lesions, cache=cache, means=means)
    real = batch.mask.bool()
    for (mode, l), a in zip(lesions, got):
        b = lesioned_resid(rot, batch, l, mode, cache=cache, means=means)
        assert a.shape == b.shape
        torch.testing.assert_close(a[real], b[real], rtol=1e-6, atol=1e-6)
    # skipping the last block runs no block at all; skipping block 0 runs the other three
    last = rot.cfg.n_layers - 1
    assert torch.equal(got[0], cache[f"blocks.{last}.hook_resid_pre"])
    assert not torch.allclose(got[last][real], cache["blocks.0.hook_resid_pre"][real])


# ---------------------------------------------------------------------------------------- logit difference on known prompts
_SUBJECTS = [("chest pain", "back pain"), ("fever", "rash"), ("cough", "tremor"), ("nausea", "headache"),
             ("wheezing", "fatigue"), ("stroke", "asthma")]
_CANDIDATES = ("angina pneumonia asthma diabetes hypertension stroke migraine infection cancer aspirin insulin "
               "warfarin heparin metformin ibuprofen omeprazole parkinson copd").split()


def _last_logits(model, text):
    with torch.no_grad():
        return model(model.to_tokens(text))[0, -1].double()


def _known_pairs(model, n_known=4, swap=()):
    """Pairs on a random model chosen by brute force so that the model 'knows' them: for each (clean, corrupted)
    prompt, the (answer, foil) among the candidate words maximising min(LD_clean, -LD_corrupted); pair ``i`` in
    ``swap`` gets its answer and foil swapped (LD_clean < 0: not known)."""
    from medinterp.concepts import PromptPair

    ids = [int(model.to_tokens(w, prepend_bos=False)[0, 0]) for w in _CANDIDATES]
    pairs = []
    for i, (a, b) in enumerate(_SUBJECTS[:n_known]):
        clean, corrupted = f"The patient with {a} has", f"The patient with {b} has"
        lc, lx = _last_logits(model, clean)[ids], _last_logits(model, corrupted)[ids]
        dc, dx = lc[:, None] - lc[None, :], lx[:, None] - lx[None, :]
        score = torch.minimum(dc, -dx).fill_diagonal_(-float("inf"))
        j, k = divmod(int(score.argmax()), len(ids))
        ans, foil = (" " + _CANDIDATES[j], " " + _CANDIDATES[k])
        if i in swap:
            ans, foil = foil, ans
        pairs.append(PromptPair(clean, corrupted, ans, foil))
    return pairs


def _pairset(pairs, name="toy"):
    from medinterp.concepts import PairSet

    return PairSet(name=name, version="1", description="", pairs=list(pairs))


def _skip_block_logits(model, tokens, layer):
    """Brute force: the model run with a hook that makes block ``layer`` the identity (resid_post = resid_pre)."""
    slot = {}

    def keep(x, hook):
        slot["pre"] = x.clone()

    def skip(x, hook):
        return slot["pre"]

    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", keep),
                                                       (f"blocks.{layer}.hook_resid_post", skip)])[0, -1].double()


def test_ld_fraction_equals_brute_force_and_unknown_prompts_are_nan(rot):
    from medinterp.techniques.patching.tracing import known_mask

    pairs = _known_pairs(rot, 4, swap=(2,))
    res = lesion(rot, _pairset(pairs), modes=["skip"], n_continuations=0, n_boot=20, progress=False, min_margin=0.2)
    # the known rule by hand: LD on the clean and on the corrupted prompt, intact model
    tok = lambda w: int(rot.to_tokens(w.strip(), prepend_bos=False)[0, 0])  # noqa: E731
    cl = np.array([float(_last_logits(rot, p.clean)[tok(p.clean_answer)] - _last_logits(rot, p.clean)[tok(p.corrupted_answer)]) for p in pairs])
    xl = np.array([float(_last_logits(rot, p.corrupted)[tok(p.clean_answer)] - _last_logits(rot, p.corrupted)[tok(p.corrupted_answer)]) for p in pairs])
    want_known, _ = known_mask(cl, xl, 0.2)
    assert want_known.tolist() == [True, True, False, True]  # the brute-force choice made 0, 1, 3 known
    np.testing.assert_array_equal(res.known, want_known)
    np.testing.assert_allclose(res.clean_ld, cl, atol=1e-4)
    np.testing.assert_allclose(res.corrupted_ld, xl, atol=1e-4)
    us = res.unit_scores()
    assert res.default_metric == "ld_frac" and us.values.shape == (4, rot.cfg.n_layers)
    assert np.isnan(us.values[2]).all() and np.isfinite(us.values[[0, 1, 3]]).all()
    for i, p in enumerate(pairs):
        toks = rot.to_tokens(p.clean)
        for layer in range(rot.cfg.n_layers):
            lg = _skip_block_logits(rot, toks, layer)
            ld_l = float(lg[tok(p.clean_answer)] - lg[tok(p.corrupted_answer)])
            assert res.values("ld_drop")[i, layer] == pytest.approx(cl[i] - ld_l, abs=1e-4)
            if want_known[i]:
                # the map's unit score: the fraction, clipped to [-1, 2] (LD_FRAC_CLIP)
                frac = (cl[i] - ld_l) / cl[i]
                assert res.values("ld_frac")[i, layer] == pytest.approx(frac, rel=1e-4, abs=1e-5)
                assert us.values[i, layer] == pytest.approx(np.clip(frac, -1, 2), rel=1e-4, abs=1e-5)
    # the raw log-prob drop stays a saved metric, for every prompt
    assert np.isfinite(res.values("logp_drop")).all()
    # only_known: the same numbers on the known prompts, nothing lesioned on the other
    ok = lesion(rot, _pairset(pairs), modes=["skip"], n_continuations=0, n_boot=20, progress=False, min_margin=0.2,
                only_known=True)
    np.testing.assert_allclose(ok.metrics[[0, 1, 3]], res.metrics[[0, 1, 3]], rtol=1e-4, atol=1e-5)
    assert np.isnan(ok.metrics[2]).all() and ok.n_known == 3 and ok.params["n_lesioned"] == 3
    np.testing.assert_allclose(ok.intact_logp, res.intact_logp, atol=1e-6)
    assert ok.unavailable() is None and "3 of 4" in ok.summary()


def test_a_model_that_knows_nothing_is_unavailable_and_costs_no_lesion(rot, monkeypatch):
    from medinterp.techniques.lesion import BlockCriticality
    from medinterp.techniques.lesion import run as les_run

    pairs = _known_pairs(rot, 4, swap=(0, 1, 2, 3))  # every answer is the model's less likely token
    called = []
    monkeypatch.setattr(les_run, "lesioned_metrics", lambda *a, **k: called.append(1))
    res = lesion(rot, _pairset(pairs), modes=["skip", "block_mean"], n_continuations=2, n_boot=20, progress=False,
                 only_known=True)
    assert not called and res.n_known == 0
    assert res.unavailable() == ("not known by the model: 0 of 4 prompts (LD_clean > 0 > LD_corrupted, margin >= 1 "
                                 "logit; at least 1 needed)")
    assert np.isnan(res.unit_scores().values).all() and np.isnan(res.layer_curve()).all()
    assert res.covariates.shape == (4, 6) and np.isfinite(res.covariates).all()
    assert "not known by the model" in res.summary()
    with pytest.raises(MedinterpError, match="no lesioned prompt"):
        BlockCriticality.from_lesions([res])
    from medinterp.techniques.lesion import TECHNIQUE

    assert TECHNIQUE.extras(rot, res) == {}  # no block-criticality strip from a family the model does not know
    # a model that knows them (the same pairs unswapped) is available
    good = lesion(rot, _pairset(_known_pairs(rot, 4)), modes=["skip"], n_continuations=0, n_boot=20, progress=False,
                  only_known=True, min_margin=0.2)
    assert good.n_known == 4 and good.unavailable() is None


def test_covariates_equal_hand_counted_tokens(rot, tmp_path):
    from medinterp.concepts import PromptPair
    from medinterp.covariates import COVARIATES, answer_prior

    # word tokenizer, BOS first: "The patient with chest pain on exertion has" = 8 words
    pairs = [PromptPair("The patient with chest pain on exertion has", "The patient with lung cancer on exertion has",
                        " angina", " asthma"),
             PromptPair("The patient with fever has", "The patient with rash has", " pneumonia", " asthma")]
    for p in pairs:
        assert rot.tokenizer.unk_token_id not in rot.to_tokens(p.clean)[0].tolist() + rot.to_tokens(p.corrupted)[0].tolist()
    res = lesion(rot, _pairset(pairs), modes=["skip"], n_continuations=0, n_boot=20, progress=False)
    cov = res.unit_scores().covariates
    assert set(cov) == {"subject_tokens", "tokens_after_subject", "prompt_tokens", "answer_prior", "intact_logp",
                        "intact_ld"} <= set(COVARIATES) | set(cov)
    assert cov["subject_tokens"].tolist() == [2, 1]  # "chest pain" / "lung cancer"; "fever" / "rash"
    assert cov["tokens_after_subject"].tolist() == [3, 1]  # "on exertion has"; "has"
    assert cov["prompt_tokens"].tolist() == [8, 5]
    ids = [int(rot.to_tokens(w, prepend_bos=False)[0, 0]) for w in ("angina", "pneumonia")]
    with torch.no_grad():
        bos_logp = torch.log_softmax(rot(torch.tensor([[rot.tokenizer.bos_token_id]]))[0, -1].double(), -1)
    np.testing.assert_allclose(cov["answer_prior"], bos_logp[ids].numpy(), atol=1e-5)
    np.testing.assert_allclose(cov["answer_prior"], answer_prior(rot, ids), atol=1e-9)
    for i, p in enumerate(pairs):
        lp = torch.log_softmax(_last_logits(rot, p.clean), -1)
        assert cov["intact_logp"][i] == pytest.approx(float(lp[ids[i]]), abs=1e-5)
        assert cov["intact_ld"][i] == pytest.approx(float(lp[ids[i]] - lp[rot.to_tokens("asthma", prepend_bos=False)[0, 0]]), abs=1e-5)
    # saved and loaded; an old save without the fields still loads (defaults None / [])
    res.save(tmp_path / "r")
    back = Result.load(tmp_path / "r")
    np.testing.assert_array_equal(back.covariates, res.covariates)
    assert back.covariate_names == res.covariate_names and back.known.dtype == bool
    import json

    man = json.loads((tmp_path / "r" / "manifest.json").read_text())
    new_fields = ("covariate_names", "known", "clean_ld", "corrupted_ld", "covariates", "min_margin", "min_known")
    assert {"known", "clean_ld", "corrupted_ld", "covariates"} <= set(man["arrays"])
    man["arrays"] = [a for a in man["arrays"] if a not in new_fields]
    man["fields"] = {k: v for k, v in man["fields"].items() if k not in new_fields}
    man["fields"]["metric_names"] = ["kl", "logp_drop", "top1_agree", "acc_drop"]
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(man))
    old = Result.load(tmp_path / "r")
    assert old.known is None and old.covariates is None and old.covariate_names == []
    assert old.default_metric == "logp_drop" and old.unit_scores().covariates == {} and old.unavailable() is None
    np.testing.assert_array_equal(old.unit_scores().values, res.values("logp_drop"))


def test_crossfit_means_exclude_own_prompts(rot):
    from medinterp.techniques.lesion.run import crossfit_folds

    folds = crossfit_folds(["a", "b", "a", "c", "d", "b"], 3)
    assert folds[0] == folds[2] and folds[1] == folds[5]  # an item's prompts stay together
    assert sorted(np.bincount(folds[[0, 1, 3, 4]]).tolist()) == [2, 2]  # the 4 items are dealt 2 and 2
    assert crossfit_folds(["a", "b", "c", "d"], 3).tolist() == crossfit_folds(["a", "b", "c", "d"], 3).tolist()
    with pytest.raises(MedinterpError, match="2 or pass reference"):
        crossfit_folds(["a", "a"], 0)
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[3], PROMPTS[4], ("Chest pain suggests", " angina")]
    kw = dict(n_continuations=0, n_boot=10, progress=False)
    res = lesion(rot, prompts, modes=["block_mean", "mlp_mean", "attn_mean"], seed=5, **kw)
    fold = np.array(res.params["crossfit_fold"])
    assert set(fold.tolist()) == {0, 1} and "cross-fitted" in res.params["reference"]
    for i, p in enumerate(prompts):
        others = [q for q, f in zip(prompts, fold) if f != fold[i]]
        assert p not in others
        alone = lesion(rot, [p], modes=["block_mean", "mlp_mean", "attn_mean"], reference=others, **kw)
        # float32, a batch of 5 vs one prompt: ~2e-6 apart on some CPUs; a leak of the prompt's own activations
        # into its mean moves the metric by > 1e-3 (below)
        np.testing.assert_allclose(res.metrics[i], alone.metrics[0], rtol=1e-5, atol=1e-5)
    # the prompt's own activations would make a mean ablation of a one-prompt reference a no-op; cross-fitted it is not
    own = lesion(rot, [prompts[1]], modes=["block_mean"], reference=[prompts[1]], **kw)
    assert np.abs(own.values("logp_drop", "block_mean")).max() < 1e-4
    assert np.abs(res.values("logp_drop", "block_mean")[1]).max() > 1e-3
