import numpy as np
import pytest
import torch

from medinterp.activations import ActivationSet, collect_activations
from medinterp.errors import MedinterpError
from medinterp.results import Result

PROMPTS = [
    "A man with chest pain",
    "A woman with fever and productive cough",
    "The patient has severe headache and nausea today",
]


def test_shapes_layers_and_sites(tiny):
    acts = collect_activations(tiny, PROMPTS, sites=("resid_pre", "resid_post"), include_embed=True, progress=False)
    n = tiny.cfg.n_layers
    # embed + resid_pre of blocks 1..n-1 (block 0's resid_pre is the embedding, kept once) + resid_post
    assert acts.values.shape == (1 + (n - 1) + n, len(PROMPTS), tiny.cfg.d_model)
    assert acts.layers[0] == -1 and acts.sites[0] == "embed"
    layers, stacked = acts.stack("resid_post")
    assert layers == [-1, *range(n)]
    assert stacked.shape == (n + 1, len(PROMPTS), tiny.cfg.d_model)


def test_matches_run_with_cache_last_token(tiny):
    acts = collect_activations(tiny, PROMPTS, progress=False, batch_size=2)
    for i, p in enumerate(PROMPTS):
        _, cache = tiny.run_with_cache(p)
        for l in range(tiny.cfg.n_layers):
            ref = cache[f"blocks.{l}.hook_resid_post"][0, -1].numpy()
            np.testing.assert_allclose(acts.layer(l)[i], ref, rtol=1e-5, atol=1e-5)


def test_padding_invariance(tiny):
    batched = collect_activations(tiny, PROMPTS, progress=False, batch_size=8)
    for i, p in enumerate(PROMPTS):
        alone = collect_activations(tiny, [p], progress=False)
        np.testing.assert_allclose(batched.values[:, i], alone.values[:, 0], atol=1e-4)


def test_span_mean_and_explicit_positions(tiny):
    class P:
        def __init__(self, text, item):
            self.text, self.span, self.labels = text, (text.index(item), text.index(item) + len(item)), {"k": item}

    prompts = [P("A man with chest pain today", "chest pain"), P("A woman with fever", "fever")]
    acts = collect_activations(tiny, prompts, positions="span_mean", progress=False)
    _, cache = tiny.run_with_cache(prompts[0].text)
    toks = tiny.to_str_tokens(prompts[0].text)
    idx = [toks.index("chest"), toks.index("pain")]
    assert acts.token_positions[0] == idx
    ref = cache["blocks.2.hook_resid_post"][0, idx].mean(0).numpy()
    np.testing.assert_allclose(acts.layer(2)[0], ref, rtol=1e-5, atol=1e-5)
    assert acts.labels == {"k": ["chest pain", "fever"]}
    explicit = collect_activations(tiny, [p.text for p in prompts], positions=[1, 2], progress=False)
    ref1 = tiny.run_with_cache(prompts[1].text)[1]["blocks.0.hook_resid_post"][0, 2].numpy()
    np.testing.assert_allclose(explicit.layer(0)[1], ref1, rtol=1e-5, atol=1e-5)


def test_stops_before_unembed_for_early_layers(tiny, monkeypatch):
    called = {"unembed": 0}
    orig = tiny.unembed.forward

    def spy(*a, **k):
        called["unembed"] += 1
        return orig(*a, **k)

    monkeypatch.setattr(tiny.unembed, "forward", spy)
    collect_activations(tiny, PROMPTS, layers=[0], progress=False)
    assert called["unembed"] == 0


def test_save_load_roundtrip(tiny, tmp_path):
    acts = collect_activations(tiny, PROMPTS, labels={"sys": ["cv", "resp", "neuro"]}, progress=False)
    acts.save(tmp_path / "a")
    assert not list((tmp_path / "a").glob("*.pkl"))
    back = Result.load(tmp_path / "a")
    assert isinstance(back, ActivationSet)
    np.testing.assert_array_equal(back.values, acts.values)
    assert back.labels == acts.labels and back.hook_names == acts.hook_names
    assert back.provenance["model"]["model_name"] == tiny.cfg.model_name


def test_resume_skips_finished_batches(tiny, tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = collect_activations(tiny, PROMPTS, batch_size=1, out_dir=out, progress=False)
    assert len(list((out / "chunks").glob("*.safetensors"))) == 3
    calls = {"n": 0}
    orig = tiny.run_with_hooks

    def counting(*a, **k):
        calls["n"] += 1
        return orig(*a, **k)

    monkeypatch.setattr(tiny, "run_with_hooks", counting)
    # Remove one chunk: only that batch is recomputed.
    sorted((out / "chunks").glob("*.safetensors"))[1].unlink()
    again = collect_activations(tiny, PROMPTS, batch_size=1, out_dir=out, progress=False)
    assert calls["n"] == 1
    np.testing.assert_allclose(again.values, first.values, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompts=[]), "empty"),
        (dict(prompts=["ok", "  "]), "prompt 1: empty"),
        (dict(prompts=["ok"], sites=("resid_sideways",)), "unknown site 'resid_sideways'"),
        (dict(prompts=["A man"], positions=[7]), "position 7 is outside the prompt"),
        (dict(prompts=["A man"], layers=[99]), "layer 99 is outside"),
        (dict(prompts=["A man"], positions="middle"), "unknown positions"),
        (dict(prompts=["A man"], positions="span_mean"), "needs a concept span"),
        (dict(prompts=["A man"], labels={"x": [1, 2]}), "2 values for 1 prompts"),
    ],
)
def test_bad_input_errors(tiny, kwargs, match):
    prompts = kwargs.pop("prompts")
    with pytest.raises(MedinterpError, match=match):
        collect_activations(tiny, prompts, progress=False, **kwargs)


def test_activation_memory_is_reduced_inside_hook(tiny):
    # Values hold one vector per (hook, prompt), never [pos] axes.
    acts = collect_activations(tiny, PROMPTS * 5, progress=False)
    assert acts.values.nbytes == tiny.cfg.n_layers * len(PROMPTS) * 5 * tiny.cfg.d_model * 4
    assert acts.values.dtype == np.float32
    assert torch.is_tensor(acts.to_torch())
