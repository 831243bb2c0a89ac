"""Patching engine: parity with transformer_lens.patching, identities, errors, resume, results."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
from transformer_lens import patching as tlp

import medinterp.techniques.patching as pm
from medinterp.errors import MedinterpError
from medinterp.results import Result
from medinterp.techniques.patching import PatchingResult, attribution_patch, path_patch, patch, read_pairs

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
    same = (CLEAN, CLEAN, " angina", " pneumonia")
    r = patch(tiny64, [same], site="z", positions="all", metric="logit_diff", progress=False)
    clean_ld = r.clean_ld[0]
    np.testing.assert_allclose(r.values, clean_ld, atol=1e-5)
    # with P the denominator is zero: the pair is reported, not averaged in
    rp = patch(tiny64, [same, PAIR], site="resid_pre", positions="last", progress=False)
    assert list(rp.included) == [False, True]
    assert "min_denominator" in rp.excluded[0]["reason"]
    np.testing.assert_allclose(rp.mean, rp.values[1], atol=1e-6)


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
    assert small.extra["engine"]["forward_calls"] > big.extra["engine"]["forward_calls"]
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
    with pytest.raises(MedinterpError, match="missing column"):
        read_pairs(bad)
    with pytest.raises(MedinterpError, match="unknown patching site"):
        patch(tiny, [PAIR], site="nonsense")


def test_jsonl_and_dict_inputs(tiny, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps(dict(zip(pm._COLUMNS, PAIR))) + "\n")
    a = patch(tiny, f, progress=False)
    b = patch(tiny, [dict(zip(pm._COLUMNS, PAIR))], progress=False)
    np.testing.assert_allclose(a.values, b.values)


def test_resume_recomputes_only_missing_units(tiny, tmp_path, monkeypatch):
    pairs = [PAIR, PAIR2]
    full = patch(tiny, pairs, site="resid_pre", positions="all", progress=False, checkpoint_dir=tmp_path)
    units = sorted(tmp_path.glob("unit_g*_l*.npz"))
    assert len(units) == 6  # two token lengths (groups) x 3 layers
    (tmp_path / "unit_g1_l2.npz").unlink()  # as if the sweep had been interrupted before the last layer
    calls = []
    orig = pm._forward_rows
    monkeypatch.setattr(pm, "_forward_rows", lambda *a, **k: calls.append(a[3]) or orig(*a, **k))
    resumed = patch(tiny, pairs, site="resid_pre", positions="all", progress=False, checkpoint_dir=tmp_path)
    assert set(calls) == {2}
    np.testing.assert_allclose(resumed.values, full.values)
    # a different sweep in the same directory does not reuse stale units
    calls.clear()
    patch(tiny, pairs, site="mlp_out", positions="all", progress=False, checkpoint_dir=tmp_path)
    assert set(calls) == {0, 1, 2}


def test_result_save_load_figure_curve(tiny, tmp_path):
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
    figs = r.figure()
    assert len(figs) == 2
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
    assert attr.extra["correlation_with_exact"] > 0.5
    for v in attr.extra["verified"]:
        li, j = attr.layers.index(v["layer"]), attr.positions.index(v["position"])
        assert abs(v["exact"] - exact.mean[li, j, 0]) < 1e-5
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
    assert pm.site_hook_name("mlp_out", 2) == "blocks.2.hook_mlp_out"
    clean = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    hook = pm.make_patch_hook(clean, torch.tensor([1, 0]), torch.tensor([[True, False, False], [False, False, True]]))
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
