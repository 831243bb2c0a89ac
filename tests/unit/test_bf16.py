"""bf16 end to end on tiny models (issue 23 item 2): the model runs in bf16, and every reduction that feeds
a statistic (logits and log-probs, span means of activations, mean-ablation references, saliency's gradient
sums) runs in float32 or float64.

bf16 keeps 8 mantissa bits: a result rounded to bf16 is off by up to 2**-9 (0.2%) of its size. Each
precision test compares medinterp's result on bf16 inputs with a float64 reference computed from the same
bf16 values, at a tolerance (1e-5 of the result's scale) a bf16 reduction misses by far, and also checks
that the bf16 reduction (what the code did before) does miss it, so the test can fail.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medinterp.concepts import PairSet
from medinterp.concepts.sets import ConceptPrompt
from medinterp.readout import final_logits
from medinterp.testing import tiny_model

BF16 = torch.bfloat16
TOL = 1e-5  # float32 reductions: ~1e-7 of the scale; bf16 ones: ~1e-3
MISS = 1e-4  # what a bf16 reduction is at least off by, in these planted cases


def scaled_err(a: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray) -> float:
    """max |a - ref| / max |ref|: the error in units of the result's scale (entries near 0 do not blow it up)."""
    a, ref = (v.detach().double() if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v, np.float64))
              for v in (a, ref))
    return float((a - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module")
def bf16():
    return tiny_model(n_layers=3, dtype=BF16, seed=0)


# ============================================================================ readout
def test_final_logits_of_a_bf16_model_are_float32_and_unrounded(bf16):
    toks = bf16.to_tokens(["a patient with chest pain and fever", "the drug aspirin is used for"])
    with torch.no_grad():
        x = bf16(toks, stop_at_layer=bf16.cfg.n_layers)[:, -1]  # [2, d] bf16 residual
    assert x.dtype == BF16
    W, b = bf16.unembed.W_U, bf16.unembed.b_U
    xn = bf16.ln_final(x[None])[0]  # the model's own final norm (bf16 output)
    ref = xn.double() @ W.double() + b.double()
    lg = final_logits(bf16, x)
    assert lg.dtype == torch.float32
    assert scaled_err(lg, ref) < TOL
    assert scaled_err(xn @ W + b, ref) > MISS  # a bf16 unembedding rounds every logit
    ids = torch.tensor([3, 17, 99])
    np.testing.assert_allclose(final_logits(bf16, x, ids).detach().numpy(), lg[:, ids].detach().numpy(),
                               rtol=1e-6, atol=1e-6)
    # the backward (saliency, attribution patching) gives the input's gradient in its own dtype, equal to
    # that of a float64 unembedding of the same normed residual
    x1 = x.detach().clone().requires_grad_(True)
    final_logits(bf16, x1).logsumexp(-1).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (bf16.ln_final(x2[None])[0].double() @ W.double() + b.double()).logsumexp(-1).sum().backward()
    assert x1.grad.dtype == BF16
    assert scaled_err(x1.grad.float(), x2.grad.float()) < 1e-2  # both end in bf16 (the norm's backward)


# ============================================================================ activations
def _prompts() -> list[ConceptPrompt]:
    """Prompts whose items span 2-4 tokens (a 1-token span's mean is exact in any dtype)."""
    items = ["chest pain and fever", "severe headache", "nausea and vomiting", "shortness of breath",
             "mild rash", "chronic cough and fatigue"]
    frames = ["the patient reports {} today", "a woman with {} was treated"]
    out = []
    for t, f in enumerate(frames):
        for i, item in enumerate(items):
            text = f.format(item)
            s = text.index(item)
            out.append(ConceptPrompt(text=text, item=item, item_index=i, template_index=t, span=(s, s + len(item))))
    return out


@pytest.mark.parametrize("plain", [True, False], ids=["left_padded", "default_path"])
def test_span_means_of_bf16_activations_are_float32_reductions(bf16, monkeypatch, tmp_path, plain):
    import medinterp.activations as A

    seen = []
    real = A._span_reduce

    def record(weights, act):
        out = real(weights, act)
        seen.append((weights.clone(), act.clone(), out.clone()))
        return out

    monkeypatch.setattr(A, "_span_reduce", record)
    acts = A.collect_activations(bf16, _prompts(), positions="span_mean", include_embed=True, batch_size=4,
                                 progress=False, out_dir=tmp_path if plain else None)
    assert acts.values.dtype == np.float32 and np.isfinite(acts.values).all()
    assert acts.provenance["params"]["padding_side"] in (("left",) if plain else ("left", "shared_prefix"))
    assert seen and all(a.dtype == BF16 for _, a, _ in seen)
    worst_bf16 = 0.0
    for weights, act, out in seen:
        ref = torch.einsum("sbp,bpd->sbd", weights.double(), act.double())
        assert out.dtype == torch.float32 and scaled_err(out, ref) < TOL
        worst_bf16 = max(worst_bf16, scaled_err(torch.einsum("sbp,bpd->sbd", weights.to(BF16), act), ref))
    assert worst_bf16 > MISS  # the bf16 einsum the code used before


# ============================================================================ mean-ablation references
def test_mean_ablation_references_of_a_bf16_model_are_float32(bf16):
    from medinterp.hooks import compute_means
    from medinterp.techniques.lesion.engine import block_delta_name, compute_block_means

    texts = ["a patient with chest pain", "the drug aspirin is used for", "fever and cough in a child"]
    toks = [bf16.to_tokens(t)[0] for t in texts]
    layers = [0, 1, 2]
    # batch_size=1: each reference forward is the prompt alone, as in the per-prompt reference below
    blocks = compute_block_means(bf16, toks, layers, batch_size=1)
    plain = compute_means(bf16, toks, layers=[1], sublayers=["mlp"], batch_size=1)["blocks.1.hook_mlp_out"]
    assert plain.per_position.dtype == plain.overall.dtype == plain.last.dtype == torch.float32
    names = [f"blocks.{l}.hook_resid_{w}" for l in layers for w in ("pre", "post")]
    caches = [bf16.run_with_cache(t[None], attention_mask=torch.ones_like(t[None]),
                                  names_filter=lambda n: n in names)[1] for t in toks]
    for l in layers:
        got = blocks[block_delta_name(l)]
        assert got.per_position.dtype == torch.float32
        # float64 reference: the mean over prompts of resid_post - resid_pre at each prompt's last token
        post = torch.stack([c[f"blocks.{l}.hook_resid_post"][0, -1].double() for c in caches]).mean(0)
        pre = torch.stack([c[f"blocks.{l}.hook_resid_pre"][0, -1].double() for c in caches]).mean(0)
        assert scaled_err(got.last, post - pre) < TOL
        if l == 2:  # before: both means rounded to bf16, then subtracted (a small difference of large numbers)
            assert scaled_err(post.to(BF16).double() - pre.to(BF16).double(), post - pre) > MISS


# ============================================================================ saliency sums
def test_saliency_gradient_sums_of_bf16_gradients_are_float32():
    from medinterp.techniques.saliency.engine import _Accumulator, _sum_of_squares

    g = torch.Generator().manual_seed(0)
    # a planted gradient: 3M bf16 values around a common offset (as a weight's gradient on a shared input)
    grad = (torch.randn(3_000_000, generator=g) * 0.1 + 1.0).to(BF16)
    w = torch.randn(3_000_000, generator=g).to(BF16)
    acc = _Accumulator(["p"], [w])
    acc.add("p", grad)
    g64, w64 = grad.double(), w.double()
    ref = {"l1": g64.abs().sum(), "l2sq": (g64 * g64).sum(), "gw": (g64 * w64).abs().sum()}
    for k, r in ref.items():
        assert abs(getattr(acc, k)[0] - float(r)) / float(r) < TOL, k
    assert abs(_sum_of_squares(w) - float((w64 * w64).sum())) / float((w64 * w64).sum()) < TOL
    # what bf16 sums gave (rounded to 8 bits): visibly off
    assert abs(float(grad.abs().sum()) - float(ref["l1"])) / float(ref["l1"]) > MISS


def test_batched_saliency_per_prompt_sums_of_bf16_inputs_are_float32():
    from medinterp.techniques.saliency.batched import _SampleStats

    g = torch.Generator().manual_seed(1)
    B, T, din, dout = 3, 7, 48, 40
    x = torch.randn(B, T, din, generator=g).to(BF16)
    d = torch.randn(B, T, dout, generator=g).to(BF16)
    W = torch.randn(din, dout, generator=g).to(BF16)
    for weight in (W, W.T.contiguous().T):  # both memory layouts (G or Gᵀ formed)
        st = _SampleStats(["w"], [weight], B)
        st.add_linear("w", x, d, weight)
        for b in range(B):
            G = x[b].double().T @ d[b].double()  # brute force: prompt b's gradient of y = x W
            ref = (G.abs().sum(), (G * G).sum(), (G * weight.double()).abs().sum())
            acc = st.accs[b]
            for got, r in zip((acc.l1[0], acc.l2sq[0], acc.gw[0]), ref):
                assert abs(got - float(r)) / float(r) < TOL
    Gb = torch.bmm(x.transpose(1, 2), d)  # bf16 per-prompt gradients, as before
    assert abs(float(Gb[0].double().abs().sum()) - float((x[0].double().T @ d[0].double()).abs().sum())) > 0
    assert scaled_err(Gb[0].double(), x[0].double().T @ d[0].double()) > MISS


# ============================================================================ every technique on a bf16 model
ITEMS1 = ["aspirin", "ibuprofen", "metformin", "insulin", "lisinopril"]
ITEMS0 = ["warfarin", "heparin", "atorvastatin", "omeprazole", "asthma"]
FRAMES = ["the patient takes", "my doctor said"]


def _directions(d: int, k: int, seed: int) -> list[torch.Tensor]:
    m = torch.randn(d, k, generator=torch.Generator().manual_seed(seed))
    q, _ = torch.linalg.qr(m - m.mean(0, keepdim=True))
    return [q[:, i] for i in range(k)]


def planted(dtype, *, A=8.0, c=8.0, write=(2, 3)):
    """A tiny 6-layer model that knows its pairs: items carry ±A along e1, blocks ``write`` write the class
    along u, and the answers " mild" / " severe" read u (so lesion and patching have known prompts)."""
    model = tiny_model(n_layers=6, d_model=64, seed=0, dtype=dtype)
    tok = model.tokenizer
    e1, u = (v.to(dtype) for v in _directions(64, 2, 1))
    with torch.no_grad():
        for w in ITEMS1:
            model.embed.W_E[tok.convert_tokens_to_ids(w)] += A * e1
        for w in ITEMS0:
            model.embed.W_E[tok.convert_tokens_to_ids(w)] -= A * e1
        hi, lo = tok.convert_tokens_to_ids("mild"), tok.convert_tokens_to_ids("severe")
        model.unembed.W_U[:, hi], model.unembed.W_U[:, lo] = u, -u
        model.unembed.b_U[[hi, lo]] = 0

    def writer(x, hook):
        return x + c * u * torch.tanh((x @ e1) / A)[..., None]

    for l in write:
        model.add_hook(f"blocks.{l}.hook_resid_post", writer, is_permanent=True)
    return model


def planted_pairs() -> PairSet:
    rows = []
    for f in FRAMES:
        for a, b in zip(ITEMS1, ITEMS0):
            rows.append({"clean": f"{f} {a}", "corrupted": f"{f} {b}", "clean_answer": " mild",
                         "corrupted_answer": " severe", "item": a})
            rows.append({"clean": f"{f} {b}", "corrupted": f"{f} {a}", "clean_answer": " severe",
                         "corrupted_answer": " mild", "item": b})
    return PairSet.from_pairs(rows, name="planted_bf16")


def _arrays(result):
    """Every array-valued field of a result (numpy arrays; a torch tensor in a result is itself an error)."""
    for f in dataclasses.fields(result):
        v = getattr(result, f.name)
        if isinstance(v, torch.Tensor):
            raise AssertionError(f"{type(result).__name__}.{f.name} is a torch tensor ({v.dtype})")
        if isinstance(v, np.ndarray):
            yield f.name, v


@pytest.fixture(scope="module")
def planted_runs():
    import medinterp as mi

    out = {}
    for name, dtype in (("bf16", BF16), ("f32", torch.float32)):
        m = planted(dtype)
        ps = planted_pairs()
        out[name] = {
            "saliency": mi.saliency(m, ps, max_prompts=8, n_boot=20, progress=False),
            "lesion": mi.lesion(m, ps, modes=["skip", "block_mean"], n_continuations=0, n_boot=20, progress=False),
            "patching": mi.causal_trace(m, ps, n_boot=20, progress=False),
        }
    return out


@pytest.mark.parametrize("technique", ["saliency", "lesion", "patching"])
def test_each_technique_on_a_bf16_model_gives_float_finite_results_close_to_float32(planted_runs, technique):
    res, ref = planted_runs["bf16"][technique], planted_runs["f32"][technique]
    assert res.provenance["model"]["dtype"] == "bfloat16"
    for name, arr in _arrays(res):
        assert arr.dtype.kind in "biuUO" or arr.dtype in (np.float32, np.float64), (name, arr.dtype)
    curve, curve32 = res.layer_curve(), ref.layer_curve()
    assert curve.dtype.kind == "f" and np.isfinite(curve).all(), curve
    us = res.unit_scores()
    assert np.isfinite(us.values).all() and len(us.units) > 0
    # the planted mechanism is found in bf16 as in float32 (the bf16 model's own arithmetic is the only
    # difference: the same weights, rounded to bf16, run in float32 on the other side)
    scale = max(1.0, float(np.abs(curve32).max())) if technique != "saliency" else float(np.abs(curve32).max())
    assert np.abs(curve - curve32).max() <= 0.05 * scale, (curve, curve32)


def test_random_twin_is_built_in_the_model_dtype(bf16):
    from medinterp.models.twin import random_twin

    twin = random_twin(bf16, seed=3)
    assert twin.cfg.dtype == BF16 and {p.dtype for p in twin.parameters()} == {BF16}


def test_quick_map_of_a_bf16_model_runs_every_technique_and_control(bf16, tmp_path):
    import medinterp as mi

    km = mi.knowledge_map(bf16, concepts=["drugs"], quick=True, out_dir=tmp_path / "w", progress=False)
    for t in km.techniques:
        # a random tiny model knows none of the pairs: lesion and patching say so; nothing fails
        assert km.status["drugs"][t] == "ok" or km.status["drugs"][t].startswith("not known"), (t, km.status)
        assert km.cell("drugs", t).code != "failed"
    j = km.techniques.index("geometry")
    assert km.curves.dtype.kind == "f" and np.isfinite(km.curves[0, j]).all()
    for run in ("drugs", "drugs__control", "drugs__twin"):
        assert (tmp_path / "w" / run / "geometry" / "job.json").is_file(), run
