"""Patching engine: parity with transformer_lens.patching, identities, errors, resume, results."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
from transformer_lens import patching as tlp

import medinterp.techniques.patching as pm
import medinterp.techniques.patching.engine as engine
from medinterp.errors import ConceptFileError, MedinterpError
from medinterp.results import Result
from medinterp.techniques.patching import PatchingResult, attribution_patch, path_patch, patch

COLUMNS = ("clean", "corrupted", "clean_answer", "corrupted_answer")

CLEAN = "A 45 year old man with chest pain has"
CORR = "A 45 year old man with cough pain has"
PAIR = (CLEAN, CORR, " angina", " pneumonia")
PAIR2 = ("The patient with fever and cough has", "The patient with fever and wheezing has", " pneumonia", " asthma")
PAIR3 = ("old man with chest pain has", "old woman with chest pain has", " angina", " pneumonia")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny matmuls: on a shared, oversubscribed CPU one thread is ~10x faster than a spinning pool.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny64():
    """float64 twin of the tiny model: engine and TL then agree far below 1e-5 (float32 differs by
    batch-size-dependent rounding, ~1e-6 in LD, which P amplifies by 1/denominator)."""
    from medinterp.testing import tiny_model

    return tiny_model(n_layers=3, d_model=64, n_heads=4, d_mlp=128, seed=0, dtype=torch.float64)


@pytest.fixture(scope="module")
def gemma_like():
    """Gemma-3-like architecture: rotary, grouped-query attention, gated MLP, local layers."""
    from medinterp.testing import tiny_model

    return tiny_model(n_layers=3, d_model=64, n_heads=4, d_mlp=128, seed=1, dtype=torch.float64,
                      positional_embedding_type="rotary", rotary_dim=16,
                      n_key_value_heads=2, gated_mlp=True, attn_types=["local", "global", "local"], window_size=4)


def _tl_metric(model, pair):
    clean, corr, ca, xa = pair
    ct, xt = model.to_tokens(clean), model.to_tokens(corr)
    cid, xid = model.to_single_token(ca), model.to_single_token(xa)
    _, cache = model.run_with_cache(ct)

    def ld(lg):
        return lg[0, -1, cid] - lg[0, -1, xid]

    lc, lx = ld(model(ct)), ld(model(xt))
    return xt, cache, (lambda lg: (ld(lg) - lx) / (lc - lx))


TL_BY_POS = {
    "resid_pre": (tlp.get_act_patch_resid_pre, None),
    "resid_mid": (tlp.get_act_patch_resid_mid, None),
    "attn_out": (tlp.get_act_patch_attn_out, None),
    "mlp_out": (tlp.get_act_patch_mlp_out, None),
    "z": (tlp.get_act_patch_attn_head_out_by_pos, None),
    "q": (tlp.get_act_patch_attn_head_q_by_pos, None),
    "k": (tlp.get_act_patch_attn_head_k_by_pos, None),
    "v": (tlp.get_act_patch_attn_head_v_by_pos, None),
    "pattern": (tlp.get_act_patch_attn_head_pattern_by_pos, (0, 2, 1)),  # TL: [layer, head, dest_pos]
}


@pytest.mark.parametrize("arch", ["tiny64", "gemma_like"])
@pytest.mark.parametrize("site", list(TL_BY_POS))
def test_parity_with_transformer_lens_by_position(request, arch, site):
    model = request.getfixturevalue(arch)
    fn, perm = TL_BY_POS[site]
    xt, cache, metric = _tl_metric(model, PAIR)
    ref = fn(model, xt, cache, metric).detach().numpy()
    ref = ref.transpose(perm) if perm else ref
    if ref.ndim == 2:
        ref = ref[..., None]
    ours = patch(model, [PAIR], site=site, positions="all", progress=False).values[0]
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("site", ["resid_pre", "z", "pattern"])
def test_parity_float32_raw_logit_difference(tiny, site):
    """In float32 the raw patched LD matches TL's to 1e-5 (P divides by the denominator)."""
    fn, perm = TL_BY_POS[site]
    clean, corr, ca, xa = PAIR
    xt, cache = tiny.to_tokens(corr), tiny.run_with_cache(tiny.to_tokens(clean))[1]
    cid, xid = tiny.to_single_token(ca), tiny.to_single_token(xa)
    ref = fn(tiny, xt, cache, lambda lg: lg[0, -1, cid] - lg[0, -1, xid]).detach().numpy()
    ref = ref.transpose(perm) if perm else ref
    if ref.ndim == 2:
        ref = ref[..., None]
    ours = patch(tiny, [PAIR], site=site, positions="all", metric="logit_diff", progress=False).values[0]
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_parity_resid_post_via_generic_patch(tiny64):
    xt, cache, metric = _tl_metric(tiny64, PAIR)
    ref = tlp.generic_activation_patch(tiny64, xt, cache, metric, tlp.layer_pos_patch_setter, "resid_post",
                                       index_axis_names=("layer", "pos")).numpy()
    ours = patch(tiny64, [PAIR], site="resid_post", positions="all", progress=False).values[0, :, :, 0]
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("site,fn", [("z", tlp.get_act_patch_attn_head_out_all_pos),
                                     ("q", tlp.get_act_patch_attn_head_q_all_pos),
                                     ("pattern", tlp.get_act_patch_attn_head_pattern_all_pos)])
def test_parity_all_position_head_variants(tiny64, site, fn):
    xt, cache, metric = _tl_metric(tiny64, PAIR)
    ref = fn(tiny64, xt, cache, metric).numpy()  # [layer, head]
    ours = patch(tiny64, [PAIR], site=site, positions="all_at_once", progress=False).values[0, :, 0, :]
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_identity_all_positions_gives_one(tiny64):
    for site in ("resid_pre", "resid_post", "resid_mid"):
        r = patch(tiny64, [PAIR, PAIR2], site=site, positions="all_at_once", progress=False)
        np.testing.assert_allclose(r.values, 1.0, atol=1e-5)


def test_identity_patching_nothing_gives_zero(tiny64):
    # Positions before the first differing token hold identical activations in both runs.
    r = patch(tiny64, [PAIR], site="resid_pre", positions="all", progress=False)
    first_diff = int(torch.nonzero(tiny64.to_tokens(CLEAN)[0] != tiny64.to_tokens(CORR)[0])[0, 0])
    assert first_diff > 2
    np.testing.assert_allclose(r.values[0, :, :first_diff, 0], 0.0, atol=1e-6)
    assert np.abs(r.values[0, 0, first_diff, 0] - 1.0) < 1e-5  # the differing token at layer 0 carries it all


def test_identity_clean_into_clean(tiny64):
    # The pair rule drops identical prompts, so the engine is called directly on a hand-tokenized pair.
    from medinterp.concepts.pairs import PromptPair, TokenizedPair
    from medinterp.techniques.patching.common import Metric, position_specs

    toks = tiny64.to_tokens(CLEAN)[0].tolist()
    same = TokenizedPair(PromptPair(CLEAN, CLEAN, " angina", " pneumonia"), 0, toks, toks,
                         tiny64.to_single_token(" angina"), tiny64.to_single_token(" pneumonia"))
    labels, masks = position_specs([same], "all")
    vals, _, _, _, clean_ld, corr_ld, _ = engine.exact_sweep(
        tiny64, [same], masks, len(labels), "z", [0, 1, 2], [0, 1, 2, 3], Metric("logit_diff"),
        batch_budget_mb=64, progress=False, checkpoint=None)
    np.testing.assert_allclose(vals, clean_ld[0], atol=1e-5)
    assert abs(clean_ld[0] - corr_ld[0]) < 1e-9
    with pytest.raises(MedinterpError, match="identical prompts"):
        patch(tiny64, [(CLEAN, CLEAN, " angina", " pneumonia")], progress=False)


def test_near_zero_denominator_pairs_are_excluded_not_averaged(tiny64):
    first = patch(tiny64, [PAIR, PAIR2], site="resid_pre", positions="last", progress=False)
    d = np.abs(first.clean_ld - first.corrupted_ld)
    thr = float(np.sqrt(d[0] * d[1]))  # between the two denominators
    rp = patch(tiny64, [PAIR, PAIR2], site="resid_pre", positions="last", progress=False, min_denominator=thr)
    small = int(np.argmin(d))
    assert list(rp.included) == [i != small for i in range(2)]
    assert "min_denominator" in rp.excluded[0]["reason"] and rp.excluded[0]["pair_index"] == small
    np.testing.assert_allclose(rp.mean, rp.values[1 - small], atol=1e-6)


def test_metrics_logprob_and_custom(tiny):
    r_ld = patch(tiny, [PAIR], site="mlp_out", positions="all", metric="logit_diff", progress=False)
    custom = patch(tiny, [PAIR], site="mlp_out", positions="all", progress=False,
                   metric=lambda lg, c, x: lg.gather(1, c[:, None])[:, 0] - lg.gather(1, x[:, None])[:, 0])
    np.testing.assert_allclose(custom.values, r_ld.values, atol=1e-5)
    lp = patch(tiny, [PAIR], site="resid_pre", positions="all_at_once", metric="logprob", progress=False)
    clean_lp = torch.log_softmax(tiny(tiny.to_tokens(CLEAN))[0, -1], -1)[tiny.to_single_token(" angina")].item()
    np.testing.assert_allclose(lp.values, clean_lp, atol=1e-5)
    assert abs(lp.clean_metric[0] - clean_lp) < 1e-5


def test_batch_chunking_and_groups_do_not_change_values(tiny64):
    pairs = [PAIR, PAIR2, PAIR3]  # two token lengths -> two groups, right-aligned positions
    big = patch(tiny64, pairs, site="z", positions="all", progress=False)
    small = patch(tiny64, pairs, site="z", positions="all", progress=False, batch_budget_mb=1e-6)
    np.testing.assert_allclose(big.values, small.values, atol=1e-6)
    assert small.diagnostics["engine"]["forward_calls"] > big.diagnostics["engine"]["forward_calls"]
    alone = patch(tiny64, [PAIR3], site="z", positions="all", progress=False)
    n3 = alone.values.shape[2]
    np.testing.assert_allclose(big.values[2, :, -n3:], alone.values[0], atol=1e-5)
    assert np.isnan(big.values[2, :, : big.values.shape[2] - n3]).all()


def test_bad_pairs_raise_with_row(tiny, tmp_path):
    with pytest.raises(MedinterpError, match=r"row 1.*token length"):
        patch(tiny, [PAIR, (CLEAN, "A man has", " angina", " pneumonia")], progress=False)
    with pytest.raises(MedinterpError, match=r"row 0.*2 tokens"):
        patch(tiny, [(CLEAN, CORR, " angina pneumonia", " asthma")], progress=False)
    f = tmp_path / "pairs.csv"
    f.write_text("clean,corrupted,clean_answer,corrupted_answer\n"
                 f"{CLEAN},{CORR}, angina, pneumonia\n{CLEAN},A man has, angina, pneumonia\n")
    with pytest.raises(MedinterpError, match=r"pairs.csv:3"):
        patch(tiny, f, progress=False)
    r = patch(tiny, f, progress=False, on_bad="drop")
    assert len(r.pairs) == 1 and r.dropped[0]["row"] == "pairs.csv:3" and "token length" in r.dropped[0]["reason"]
    bad = tmp_path / "bad.csv"
    bad.write_text("clean,corrupted,answer\nx,y,z\n")
    with pytest.raises(ConceptFileError, match="missing column"):
        patch(tiny, bad, progress=False)
    with pytest.raises(MedinterpError, match="unknown patching site"):
        patch(tiny, [PAIR], site="nonsense")


def test_jsonl_and_dict_inputs(tiny, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps(dict(zip(COLUMNS, PAIR))) + "\n")
    a = patch(tiny, f, progress=False)
    b = patch(tiny, [dict(zip(COLUMNS, PAIR))], progress=False)
    np.testing.assert_allclose(a.values, b.values)


def test_resume_recomputes_only_missing_units(tiny, tmp_path, monkeypatch):
    pairs = [PAIR, PAIR2]
    full = patch(tiny, pairs, site="resid_pre", positions="all", progress=False, checkpoint_dir=tmp_path)
    units = sorted(tmp_path.glob("unit_g*_l*.safetensors"))
    assert len(units) == 6  # two token lengths (groups) x 3 layers
    (tmp_path / "unit_g1_l2.safetensors").unlink()  # as if the sweep had been interrupted before the last layer
    calls = []
    orig = engine._forward_rows
    monkeypatch.setattr(engine, "_forward_rows", lambda *a, **k: calls.append(a[3]) or orig(*a, **k))
    resumed = patch(tiny, pairs, site="resid_pre", positions="all", progress=False, checkpoint_dir=tmp_path)
    assert set(calls) == {2}
    np.testing.assert_allclose(resumed.values, full.values)
    # a different sweep in the same directory does not reuse stale units
    calls.clear()
    patch(tiny, pairs, site="mlp_out", positions="all", progress=False, checkpoint_dir=tmp_path)
    assert set(calls) == {0, 1, 2}
    # a changed pair set (same sweep parameters) invalidates the checkpoint too
    patch(tiny, pairs, site="resid_pre", positions="all", progress=False, checkpoint_dir=tmp_path)
    calls.clear()
    changed = patch(tiny, [PAIR, PAIR3], site="resid_pre", positions="all", progress=False, checkpoint_dir=tmp_path)
    assert set(calls) == {0, 1, 2} and changed.diagnostics["engine"]["units_resumed"] == 0
    fresh = patch(tiny, [PAIR, PAIR3], site="resid_pre", positions="all", progress=False)
    np.testing.assert_allclose(changed.values, fresh.values)


def test_result_save_load_figure_curve(tiny, tmp_path):
    import medinterp.viz  # noqa: F401  (registers the renderers)

    r = patch(tiny, [PAIR, PAIR2], site="z", positions="all", progress=False)
    assert r.values.shape == (2, 3, 10, 4) and r.mean.shape == (3, 10, 4)
    assert (r.ci_low <= r.mean + 1e-6).all() and (r.mean <= r.ci_high + 1e-6).all()
    assert r.layer_curve().shape == (3,)
    lo, hi = r.layer_curve_ci()
    assert lo.shape == hi.shape == (3,)
    assert any("chest/cough" in t for t in r.position_tokens)
    r.save(tmp_path / "res")
    back = Result.load(tmp_path / "res")
    assert isinstance(back, PatchingResult)
    np.testing.assert_array_equal(back.values, r.values)
    np.testing.assert_array_equal(back.mean, r.mean)
    assert back.positions == r.positions and back.provenance == json.loads(json.dumps(r.provenance))
    figs = r.figures()
    assert len(figs) == 3  # layer curve with CI band, layer x position, layer x head
    assert back.concept_set == r.concept_set == "pairs" and back.params == json.loads(json.dumps(r.params))
    html = r.to_html(tmp_path / "x.html")
    assert "<script" in html and len(html) > 1_000_000  # plotly.js inlined
    assert len(r.to_frame()) == r.values.size


def test_layer_curve_resid_last_position(tiny):
    r = patch(tiny, [PAIR, PAIR2], site="resid_pre", positions="last", progress=False)
    np.testing.assert_allclose(r.layer_curve(), np.nanmean(r.values[:, :, 0, 0], axis=0), atol=1e-6)


def test_attribution_patching(tiny):
    pairs = [PAIR, PAIR2]
    attr = attribution_patch(tiny, pairs, site="resid_pre", positions="all", progress=False,
                             verify_top_k=3, compare_exact=True)
    exact = patch(tiny, pairs, site="resid_pre", positions="all", progress=False)
    # positions before the first differing token: activations identical, estimate exactly 0
    np.testing.assert_allclose(attr.values[0, :, :7, 0], 0.0, atol=1e-6)
    assert attr.diagnostics["correlation_with_exact"] > 0.5
    for v in attr.diagnostics["verified"]:
        li, j = attr.layers.index(v["layer"]), attr.positions.index(v["position"])
        # float32 on the tiny model; the verification and the sweep batch rows differently
        assert abs(v["exact"] - exact.mean[li, j, 0]) < 5e-5
    # linear: the all-at-once estimate is the sum of the per-position estimates
    once = attribution_patch(tiny, pairs, site="z", positions="all_at_once", progress=False)
    per = attribution_patch(tiny, pairs, site="z", positions="all", progress=False)
    np.testing.assert_allclose(once.ld - once.corrupted_ld[:, None, None, None],
                               np.nansum(per.ld - per.corrupted_ld[:, None, None, None], axis=2, keepdims=True),
                               atol=1e-4)


def test_attribution_equals_directional_derivative(tiny64):
    """attribution = d/dt LD(corrupted act + t (clean - corrupted)) at t = 0, checked by autograd."""
    xt, cache, _ = _tl_metric(tiny64, PAIR)
    cid, xid = tiny64.to_single_token(" angina"), tiny64.to_single_token(" pneumonia")
    name, layer, pos = "blocks.1.hook_mlp_out", 1, 8
    _, corr_cache = tiny64.run_with_cache(xt)
    delta = torch.zeros_like(cache[name])
    delta[:, pos] = cache[name][:, pos] - corr_cache[name][:, pos]
    t = torch.zeros((), requires_grad=True)
    logits = tiny64.run_with_hooks(xt, fwd_hooks=[(name, lambda a, hook: a + t * delta)])
    (logits[0, -1, cid] - logits[0, -1, xid]).backward()
    a = attribution_patch(tiny64, [PAIR], site="mlp_out", positions="all", progress=False)
    est = a.ld[0, layer, pos, 0] - a.corrupted_ld[0]
    assert abs(est - t.grad.item()) < 1e-4 * max(1.0, abs(t.grad.item()))


def _manual_path_patch(model, pair, sender_layer, sender_head, recv_layer, recv_head):
    """Straightforward full-forward implementation of the documented definition (q/k/v receivers)."""
    clean, corr, ca, xa = pair
    ct, xt = model.to_tokens(clean), model.to_tokens(corr)
    cid, xid = model.to_single_token(ca), model.to_single_token(xa)
    _, cc = model.run_with_cache(ct)
    _, xc = model.run_with_cache(xt)
    L = model.cfg.n_layers
    hooks = []

    def set_head(a, hook):
        a = a.clone()
        a[:, :, sender_head] = cc[hook.name][:, :, sender_head]
        return a

    hooks.append((f"blocks.{sender_layer}.attn.hook_z", set_head))
    for m in range(sender_layer, L):
        if m > sender_layer:
            hooks.append((f"blocks.{m}.hook_attn_out", lambda a, hook: xc[hook.name]))
        hooks.append((f"blocks.{m}.hook_mlp_out", lambda a, hook: xc[hook.name]))
    rec = {}
    for k in "qkv":
        hooks.append((f"blocks.{recv_layer}.attn.hook_{k}", lambda a, hook: rec.__setitem__(hook.name, a.clone()) or a))
    model.run_with_hooks(xt, fwd_hooks=hooks)
    hooks2 = []
    for k in "qkv":
        def put(a, hook):
            a = a.clone()
            a[:, :, recv_head] = rec[hook.name][:, :, recv_head]
            return a
        hooks2.append((f"blocks.{recv_layer}.attn.hook_{k}", put))
    lg = model.run_with_hooks(xt, fwd_hooks=hooks2)
    return (lg[0, -1, cid] - lg[0, -1, xid]).item()


def test_path_patching_matches_manual_definition(tiny64):
    recv = [("q", 2, 1), ("k", 2, 1), ("v", 2, 1)]
    r = path_patch(tiny64, [PAIR], sender_site="z", receivers=recv, metric="logit_diff", progress=False)
    assert r.values.shape == (1, 3, 1, 4)
    assert np.isnan(r.values[0, 2]).all()  # senders in the receivers' layer have no path
    for l in (0, 1):
        for h in range(4):
            ref = _manual_path_patch(tiny64, PAIR, l, h, 2, 1)
            assert abs(r.values[0, l, 0, h] - ref) < 1e-5


def test_path_patching_to_logits_at_last_layer_equals_plain_patch(tiny64):
    L = tiny64.cfg.n_layers
    # the last MLP has no downstream component: its direct effect is its total effect
    for site in ("mlp_out",):
        pp = path_patch(tiny64, [PAIR, PAIR2], sender_site=site, receivers="logits", progress=False)
        ex = patch(tiny64, [PAIR, PAIR2], site=site, positions="all_at_once", progress=False)
        np.testing.assert_allclose(pp.values[:, L - 1], ex.values[:, L - 1], atol=1e-5)


def test_hook_helpers_exported():
    from medinterp.hooks import patch_hook

    assert pm.site_hook_name("mlp_out", 2) == "blocks.2.hook_mlp_out"
    clean = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    hook = patch_hook(clean, torch.tensor([[True, False, False], [False, False, True]]), rows=torch.tensor([1, 0]))
    out = hook(torch.full((2, 3, 2), -1.0))
    assert out[0, 0].tolist() == clean[1, 0].tolist() and out[1, 2].tolist() == clean[0, 2].tolist()
    assert (out[0, 1:] == -1).all() and (out[1, :2] == -1).all()


def test_cli_patch_writes_outputs_and_reports_bad_rows(tiny, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import medinterp.cli.patch  # noqa: F401  (registers the command)
    import medinterp.models
    from medinterp.cli.app import app

    monkeypatch.setattr(medinterp.models, "load_model", lambda spec, **kw: tiny)
    f = tmp_path / "pairs.csv"
    f.write_text("clean,corrupted,clean_answer,corrupted_answer\n"
                 f"{CLEAN},{CORR}, angina, pneumonia\n{CLEAN},A man has, angina, pneumonia\n")
    out = tmp_path / "out"
    args = ["patch", "--model", "tiny", "--pairs", str(f), "--site", "resid_pre", "--positions", "all", "--out", str(out),
            "--no-progress"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0 and "pairs.csv:3" in str(r.exception)
    r = CliRunner().invoke(app, args + ["--drop-bad"])
    assert r.exit_code == 0, r.output
    assert "dropped row pairs.csv:3" in r.output
    values, mean = np.load(out / "values.npy"), np.load(out / "mean.npy")
    assert values.shape == (1, 3, 10) and mean.shape == (3, 10)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "patching" and manifest["fields"]["dropped"][0]["row"] == "pairs.csv:3"
    assert (out / "heatmap.html").stat().st_size > 1_000_000 and not (out / "_checkpoint").exists()
    np.testing.assert_allclose(values[0], patch(tiny, f, positions="all", on_bad="drop", progress=False).values[0, :, :, 0])


@pytest.mark.parametrize("site,positions", [("z", "all"), ("pattern", "all"), ("resid_post", "span"), ("k", "last")])
def test_prefix_cache_reuse_is_exact(gemma_like, site, positions):
    """Skipping the unpatched prefix (corrupted KV cache, rotary offset, local-window mask) changes nothing."""
    pairs = [PAIR, PAIR2, PAIR3]
    a = patch(gemma_like, pairs, site=site, positions=positions, metric="logit_diff", progress=False, prefix_cache=True)
    b = patch(gemma_like, pairs, site=site, positions=positions, metric="logit_diff", progress=False, prefix_cache=False)
    np.testing.assert_allclose(a.values, b.values, atol=1e-9, rtol=0)


@pytest.mark.parametrize("site,positions", [("resid_pre", "all"), ("z", "all"), ("pattern", [0, 3, -2, -1]),
                                            ("mlp_out", "span")])
@pytest.mark.parametrize("call_cost", [engine.CALL_COST_TOKENS, 0.0, 3.0])
def test_fast_default_equals_old_paths(gemma_like, site, positions, call_cost):
    """The default batching (rows of different first positions merged, each call starting at its smallest)
    gives the numbers of 0.1.0's prefix path and of the no-prefix path, with fewer forward calls."""
    pairs = [PAIR, PAIR2, PAIR3]
    kw = dict(site=site, positions=positions, metric="logit_diff", progress=False)
    new = patch(gemma_like, pairs, **kw, call_cost=call_cost)
    old = patch(gemma_like, pairs, **kw, prefix_cache=True)
    flat = patch(gemma_like, pairs, **kw, prefix_cache=False)
    np.testing.assert_allclose(new.values, old.values, atol=1e-6, rtol=0)
    np.testing.assert_allclose(new.values, flat.values, atol=1e-6, rtol=0)
    e_new, e_old, e_flat = (r.diagnostics["engine"] for r in (new, old, flat))
    assert e_new["rows"] == e_old["rows"] == e_flat["rows"]
    assert e_new["forward_calls"] <= e_old["forward_calls"]
    if call_cost == 0.0:  # free calls: the plan skips every prefix the old path skips
        assert e_new["tokens_computed"] == e_old["tokens_computed"]


def test_read_order_weights_changes_layout_not_numbers(gemma_like):
    m = gemma_like
    toks = m.to_tokens(CLEAN)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    strides = {n: p.stride() for n, p in m.named_parameters()}
    with torch.no_grad():
        ref = m(toks)
        with engine.read_order_weights(m):
            assert m.blocks[0].mlp.W_gate.T.is_contiguous() and m.blocks[0].attn.W_O.permute(2, 0, 1).is_contiguous()
            inside = m(toks)
    assert torch.equal(ref, inside)  # bitwise
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]) and p.stride() == strides[n]


def test_plan_batches_covers_rows_in_order_within_chunk():
    rng = np.random.default_rng(0)
    for _ in range(50):
        starts = sorted(rng.integers(0, 12, size=int(rng.integers(1, 40))).tolist())
        chunk = int(rng.integers(1, 9))
        plan = engine.plan_batches(starts, seq=12, chunk=chunk, call_cost=float(rng.uniform(0, 50)))
        assert plan[0][0] == 0 and plan[-1][1] == len(starts)
        assert all(a[1] == b[0] for a, b in zip(plan, plan[1:])) and all(0 < hi - lo <= chunk for lo, hi in plan)
    # cost model by hand: 2 rows start at 0, 8 rows at 9 (seq 10): merging costs c + 10*10, splitting 2c + 2*10 + 8
    assert engine.plan_batches([0, 0] + [9] * 8, 10, 100, call_cost=100.0) == [(0, 10)]
    assert engine.plan_batches([0, 0] + [9] * 8, 10, 100, call_cost=50.0) == [(0, 2), (2, 10)]
    with pytest.raises(MedinterpError, match="prefix_cache"):
        patch(None, [PAIR], prefix_cache="fast")


# ----------------------------------------------------------------------------- one pair rule, one reader
NINE = [  # the 9 user pairs of issue 14: only the first two are usable
    (CLEAN, CORR, " angina", " pneumonia"),
    PAIR2,
    (CLEAN, "A man has", " angina", " pneumonia"),  # unequal length
    (CLEAN, CORR, " angina pectoris", " pneumonia"),  # multi-token answer
    (CLEAN, CORR, " zzqx", " pneumonia"),  # unknown token
    ("The patient has chest", "The patient has fever", "pain", "cough"),  # not the real next token
    (CLEAN, CORR, " angina", " angina"),  # identical answers
    (CLEAN, CORR, " angina", " pneumonia"),  # duplicate of the first
    (CLEAN, CLEAN, " angina", " pneumonia"),  # identical prompts
]
REASONS = ["unequal length", "multi-token answer", "unknown token", "answer not the next token", "identical answers",
           "duplicate: the same pair (prompts and answers) as line", "identical prompts"]


def _write_formats(tmp_path):
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([list(COLUMNS)] + [list(r) for r in NINE])
    plain = tmp_path / "nine_plain.csv"
    plain.write_text(buf.getvalue())
    hashed = tmp_path / "nine.csv"
    hashed.write_text("# name: nine\n# kind: pairs\n# version: '1'\n" + buf.getvalue())
    jsonl = tmp_path / "nine.jsonl"
    jsonl.write_text("".join(json.dumps(dict(zip(COLUMNS, r))) + "\n" for r in NINE))
    yml = tmp_path / "nine.yaml"
    yml.write_text("name: nine\nkind: pairs\nversion: '1'\npairs:\n" +
                   "".join(f"  - {json.dumps(dict(zip(COLUMNS, r)))}\n" for r in NINE))
    return [plain, hashed, jsonl, yml]


def test_check_and_patch_keep_the_same_pairs_in_every_format(tiny, tmp_path):
    from medinterp.concepts import load_concepts

    for f in _write_formats(tmp_path):
        chk = load_concepts(f).check(tiny)
        res = patch(tiny, f, on_bad="drop", progress=False)
        kept = [(p["clean"], p["corrupted"], p["clean_answer"], p["corrupted_answer"]) for p in res.pairs]
        assert kept == [(p.clean, p.corrupted, p.clean_answer, p.corrupted_answer) for p in chk.valid] == NINE[:2], f
        assert len(res.dropped) == chk.n_dropped == 7
        for want, d in zip(REASONS, res.dropped):
            assert want in d["reason"], (f, d)
        assert res.dropped[5]["reason"].endswith(f"as line {chk.valid[0].line}")  # the line of the first copy
        assert [d["row"] for d in res.dropped] == [f"{f.name}:{p.line}" for p, _ in chk.dropped]
    listed = patch(tiny, NINE, on_bad="drop", progress=False)  # the API with a list: the same rule
    assert [p["row"] for p in listed.pairs] == [0, 1] and "as pair 0" in listed.dropped[5]["reason"]
    with pytest.raises(MedinterpError, match=r"bad pair \(row 2\): unequal length.*\(and 6 more\)"):
        patch(tiny, NINE, progress=False)


def test_heads_on_a_site_without_heads_is_an_error(tiny):
    with pytest.raises(MedinterpError, match="site 'resid_pre' has no heads"):
        patch(tiny, [PAIR], site="resid_pre", heads=[1], progress=False)
    with pytest.raises(MedinterpError, match="has no heads"):
        attribution_patch(tiny, [PAIR], site="mlp_out", heads=[0], progress=False)
    with pytest.raises(MedinterpError, match="has no heads"):
        path_patch(tiny, [PAIR], sender_site="attn_out", heads=[0], progress=False)
    r = patch(tiny, [PAIR], site="head_out", heads=[1, 3], progress=False)  # alias of z: heads apply
    assert r.site == "z" and r.heads == [1, 3] and r.values.shape[-1] == 2


@pytest.mark.parametrize("kw,match", [
    ({"site": "resid"}, None),
    ({"site": "nonsense"}, "unknown patching site 'nonsense'"),
    ({"site": "resid_pre", "heads": [0]}, "no heads"),
    ({"positions": "first"}, "positions must be one of"),
    ({"positions": ["a"]}, "positions must be one of"),
    ({"metric": "kl"}, "unknown metric 'kl'"),
    ({"method": "attribution", "metric": "logit_diff"}, "supports only metric 'P'"),
    ({"method": "fast"}, "method 'fast'"),
    ({"on_bad": "skip"}, "on_bad must be"),
    ({"min_denominator": -1.0}, "min_denominator"),
    ({"site": "z", "heads": [-1]}, "heads must be >= 0"),
])
def test_validate_patch_params(kw, match):
    if match is None:
        assert pm.validate_patch_params(**kw) == "resid_pre"
    else:
        with pytest.raises(MedinterpError, match=match):
            pm.validate_patch_params(**kw)


def test_cli_checks_options_and_pairs_before_loading_the_model(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import medinterp.cli.patch  # noqa: F401  (registers the command)
    import medinterp.models
    from medinterp.cli.app import app

    def no_model(spec, **kw):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(medinterp.models, "load_model", no_model)
    f = tmp_path / "p.csv"
    f.write_text("clean,corrupted,clean_answer,corrupted_answer\n" + f"{CLEAN},{CORR}, angina, pneumonia\n")
    base = ["patch", "--model", "tiny", "--out", str(tmp_path / "o"), "--no-progress"]
    for extra, want in ((["--pairs", str(f), "--heads", "1"], "no heads"),
                        (["--pairs", str(f), "--site", "zz"], "unknown patching site"),
                        (["--pairs", str(f), "--method", "attribution", "--metric", "logprob"], "only metric 'P'"),
                        (["--pairs", str(tmp_path / "missing.csv")], "no such file")):
        r = CliRunner().invoke(app, base + extra)
        assert r.exit_code != 0 and isinstance(r.exception, MedinterpError) and want in str(r.exception), (extra, r.exception)


def test_result_contract_fields_label_summary(tiny):
    from medinterp.concepts import load_concepts
    from medinterp.techniques import REGISTRY, Family

    r = patch(tiny, [PAIR, PAIR2], site="resid_pre", positions="all", progress=False, n_boot=50, seed=1)
    assert r.curve_label == "P after patching resid_pre at the last position"
    assert isinstance(r.summary(), str) and "2 pairs kept" in r.summary()
    assert r.params["n_boot"] == 50 and r.params["site"] == "resid_pre" and r.timings["sweep"] > 0
    assert PatchingResult._legacy_fields == {"extra": "diagnostics"}
    z = patch(tiny, [PAIR], site="z", positions="span", progress=False)
    assert z.curve_label == "P after patching z at the differing tokens, max over heads"
    a = attribution_patch(tiny, [PAIR], site="mlp_out", positions="all_at_once", progress=False)
    assert a.curve_label == "P (attribution estimate) after patching mlp_out at all positions at once"
    # the map's run: max_pairs rows spread evenly over the family's pair set, concept_set = the set's name
    res = REGISTRY["patching"].run(tiny, Family("diseases", pairs="diagnosis_pairs"), max_pairs=4, n_boot=20,
                                   progress=False)
    allp = load_concepts("diagnosis_pairs").pairs
    n = len(allp)
    spread = [allp[i] for i in (0, round((n - 1) / 3), round(2 * (n - 1) / 3), n - 1)]  # evenly spaced, ends kept
    assert res.concept_set == "diagnosis_pairs" and len(res.all_pairs) + len(res.dropped) == 4  # causal tracing
    assert sorted(p["clean"] for p in res.all_pairs + res.dropped) == sorted(p.clean for p in spread)
    old = REGISTRY["patching"].run(tiny, Family("diseases", pairs="diagnosis_pairs"), max_pairs=4, n_boot=20,
                                   progress=False, mode="resid_last")
    assert len(old.pairs) + len(old.dropped) == 4 and old.site == "resid_pre" and old.position_mode == "last"


def test_one_site_vocabulary_feeds_hooks_and_activations():
    from medinterp import activations, hooks, sites

    assert sites.hook_name("pattern", 1) == "blocks.1.attn.hook_pattern" and sites.canonical("head") == "z"
    assert hooks.sublayer_hook_name(3, "attn") == sites.hook_name("attn_out", 3) == "blocks.3.hook_attn_out"
    assert activations.SHORT_SITES == sites.RESID_SITES == ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
    assert pm.SITES is sites.SITES and set(sites.HEAD_SITES) == {"z", "q", "k", "v", "pattern"}
    with pytest.raises(MedinterpError, match="unknown site 'embed'"):
        sites.hook_name("embed", 0)
