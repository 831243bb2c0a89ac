"""Backends: capabilities, backend choice, the exact hook-based "run from layer", loading local folders."""

import pytest
import torch

import medinterp as mi
from medinterp.errors import MedinterpError
from medinterp.models import capabilities, run_from_layer, seed_backends
from medinterp.models.backends import choose_backend
from medinterp.testing import tiny_model

PROMPT = "A 45 year old man presents with chest pain and fever shortness of breath"


@pytest.fixture(scope="module")
def qwen3_pair():
    """The same random weights through both backends."""
    return tiny_model(arch="qwen3", n_layers=3, backend="hooked"), tiny_model(arch="qwen3", n_layers=3, backend="bridge")


def test_capabilities_declared(qwen3_pair):
    hooked, bridge = qwen3_pair
    assert capabilities(hooked).start_at_layer and capabilities(hooked).backend == "hooked"
    caps = capabilities(bridge)
    assert caps.backend == "bridge" and not caps.start_at_layer and caps.stop_at_layer and caps.device_map
    assert bridge.medinterp_info["capabilities"]["start_at_layer"] is False
    assert bridge.medinterp_info["backend"] == "bridge"


def test_bridge_refuses_strings_and_start_at_layer(qwen3_pair):
    _, bridge = qwen3_pair
    with pytest.raises(MedinterpError, match="token tensors only"):
        bridge(PROMPT)
    toks = bridge.to_tokens(PROMPT)
    with pytest.raises(NotImplementedError):
        bridge(torch.zeros(1, toks.shape[1], bridge.cfg.d_model), start_at_layer=1)


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_run_from_layer_hook_path_equals_prefix_reuse(qwen3_pair, layer):
    hooked, bridge = qwen3_pair
    toks = hooked.to_tokens(PROMPT)
    with torch.no_grad():
        _, cache = hooked.run_with_cache(toks)
        name = f"blocks.{layer}.hook_resid_pre" if layer < 3 else "blocks.2.hook_resid_post"
        g = torch.Generator().manual_seed(layer)
        resid = cache[name] + 0.5 * torch.randn(cache[name].shape, generator=g)  # not the model's own residual
        reuse = run_from_layer(hooked, toks, resid, layer)
        hook_h = run_from_layer(hooked, toks, resid, layer, use_prefix_reuse=False)
        hook_b = run_from_layer(bridge, toks, resid, layer)
        plain = hooked(toks)
    assert (reuse - plain).abs().max() > 1e-3  # the perturbation matters
    assert (hook_h - reuse).abs().max() <= 1e-5
    assert (hook_b - reuse).abs().max() <= 1e-5


def test_run_from_layer_rejects_bad_layer(qwen3_pair):
    hooked, _ = qwen3_pair
    toks = hooked.to_tokens(PROMPT)
    with pytest.raises(MedinterpError, match="0..3"):
        run_from_layer(hooked, toks, torch.zeros(1, toks.shape[1], 64), 4, use_prefix_reuse=False)


def test_choose_backend_rules():
    assert choose_backend("auto", registry_name="google/gemma-3-270m", seed_backend=None, convertible=None, device_map=None) == "hooked"
    assert choose_backend("auto", registry_name="Qwen/Qwen3-32B", seed_backend=None, convertible=None, device_map=None) == "bridge"
    assert choose_backend("auto", registry_name=None, seed_backend=None, convertible=True, device_map="auto") == "bridge"
    assert choose_backend("auto", registry_name=None, seed_backend="bridge", convertible=True, device_map=None) == "bridge"
    with pytest.raises(MedinterpError, match="device_map"):
        choose_backend("hooked", registry_name=None, seed_backend=None, convertible=True, device_map="auto")
    with pytest.raises(MedinterpError, match="auto, hooked, bridge"):
        choose_backend("vllm", registry_name=None, seed_backend=None, convertible=True, device_map=None)


def test_seed_backends_follow_tl_registry():
    # TL 3.9's HookedTransformer registry lacks Qwen3-32B and gpt-oss-120b (issue 12).
    assert seed_backends() == {"llama-3.3-70b": "hooked", "gemma-3-27b": "hooked", "medgemma-27b": "hooked",
                               "qwen3-32b": "bridge", "qwen2.5-32b": "hooked", "gpt-oss-120b": "bridge"}


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A tiny random Llama saved as a local HF folder (neutral name), with its tokenizer."""
    m = tiny_model(arch="llama", n_layers=2)
    folder = tmp_path_factory.mktemp("m") / "tinyfolder"
    m.hf_reference.save_pretrained(str(folder))
    m.tokenizer.save_pretrained(str(folder))
    return folder, m


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_local_folder_loads_verifies_and_matches(llama_folder, backend):
    folder, ref = llama_folder
    m = mi.load_model(str(folder), backend=backend)
    info = m.medinterp_info
    assert info["backend"] == backend and info["source"]["kind"] == "hf_folder"
    assert info["verify"]["checked"] and info["verify"]["passed"] and info["verify"]["max_abs_logit_diff"] <= 1e-4
    toks = ref.to_tokens(PROMPT)
    with torch.no_grad():
        assert (m(toks) - ref.hf_reference(toks).logits).abs().max() <= 1e-4
    assert mi.load_model(str(folder), backend=backend, verify=False).medinterp_info["verify"]["checked"] is False


def test_random_twin_of_folder(llama_folder):
    folder, ref = llama_folder
    a = mi.load_model(f"{folder}:random")
    b = mi.load_model(f"{folder}:random", seed=0)
    c = mi.load_model(f"{folder}:random", seed=1)
    assert a.medinterp_info["random_init"] is True and a.medinterp_info["seed"] == 0
    assert a.medinterp_info["init"] == "transformer_lens" and a.cfg.n_layers == 2
    assert a.tokenizer.get_vocab() == ref.tokenizer.get_vocab()
    wa, wb, wc = (m.blocks[0].attn.W_Q.detach() for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert not torch.allclose(wa, ref.blocks[0].attn.W_Q.detach())  # not the trained (here: source) weights
    br = mi.load_model(f"{folder}:random", backend="bridge")
    assert br.medinterp_info["backend"] == "bridge" and br.medinterp_info["random_init"] is True


def test_dtype_is_honoured(llama_folder):
    folder, _ = llama_folder
    m = mi.load_model(str(folder), dtype="bfloat16")
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16} and m.medinterp_info["dtype"] == "bfloat16"
    assert m.medinterp_info["verify"]["passed"]  # bf16 tolerance
    with pytest.raises(MedinterpError, match="dtype must be one of"):
        mi.load_model(str(folder), dtype="int3")
    t = tiny_model(n_layers=1, dtype=torch.float16)
    assert {p.dtype for p in t.parameters()} == {torch.float16} and t.medinterp_info["dtype"] == "float16"

# benchmarks/gpu_check.py's own test (CPU smoke, no-CUDA path, stage runner): tests/unit/test_gpu_check_smoke.py
