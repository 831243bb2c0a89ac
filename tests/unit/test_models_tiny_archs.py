"""tiny_model(arch=...): each seed architecture builds offline, has its features, and both backends
agree with plain transformers on the same random weights."""

import pytest
import torch

from medinterp.models import seed_backends
from medinterp.models.tiny import ARCH_SEED
from medinterp.testing import tiny_model

PROMPT = "A 45 year old man presents with chest pain and fever shortness of breath"
ARCHS = ["llama", "gemma3", "qwen2", "qwen3", "gpt_oss"]


def _features(arch, m):
    """Architecture features, read from the TL config (hooked) or the wrapped HF config (bridge)."""
    hf = m.hf_reference.config
    if arch == "llama":
        assert hf.num_key_value_heads < hf.num_attention_heads
        assert hf.rope_parameters["rope_type"] == "llama3"
        assert m.cfg.n_key_value_heads == 2 and m.cfg.use_NTK_by_parts_rope
    elif arch == "gemma3":
        assert m.cfg.use_qk_norm and m.cfg.use_local_attn and m.cfg.window_size == 4
        assert set(m.cfg.attn_types) == {"local", "global"} and m.cfg.output_logits_soft_cap == 0.5
    elif arch == "qwen2":
        assert m.cfg.n_key_value_heads == 2 and m.blocks[0].attn.b_K.abs().sum() >= 0  # biases exist
    elif arch == "qwen3":
        assert hf.num_key_value_heads == 2
        assert hasattr(m.hf_reference.model.layers[0].self_attn, "q_norm")
    else:
        assert hf.num_local_experts == 4 and hf.num_experts_per_tok == 2
        assert set(hf.layer_types) == {"sliding_attention", "full_attention"}
        assert m.hf_reference.model.layers[0].self_attn.sinks.shape == (4,)


@pytest.mark.parametrize("arch", ARCHS)
def test_arch_builds_with_auto_backend_and_features(arch):
    m = tiny_model(arch=arch, n_layers=3)
    assert m.medinterp_info["backend"] == seed_backends()[ARCH_SEED[arch]]
    toks = m.to_tokens(PROMPT)
    assert toks[0, 0].item() == m.tokenizer.bos_token_id and toks.shape[1] == 15  # 14 words + one BOS
    with torch.no_grad():
        logits = m(toks)
    assert logits.shape == (1, 15, len(m.tokenizer)) and torch.isfinite(logits).all()
    _features(arch, m)


@pytest.mark.parametrize("arch", ARCHS)
def test_backends_agree_with_transformers(arch):
    hooked = tiny_model(arch=arch, n_layers=3, backend="hooked")
    bridge = tiny_model(arch=arch, n_layers=3, backend="bridge")
    toks = hooked.to_tokens(PROMPT)
    with torch.no_grad():
        ref = hooked.hf_reference(toks).logits
        assert (bridge.hf_reference(toks).logits - ref).abs().max() == 0  # same seed, same weights
        lh, ch = hooked.run_with_cache(toks)
        lb, cb = bridge.run_with_cache(toks)
    assert (lh - ref).abs().max() <= 1e-4
    assert (lb - ref).abs().max() <= 1e-4
    for layer in range(3):
        for site in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post"):
            k = f"blocks.{layer}.{site}"
            rel = ((ch[k] - cb[k]).norm() / ch[k].norm()).item()
            assert rel <= 1e-5, (k, rel)


def test_moe_routing_uses_several_experts():
    m = tiny_model(arch="gpt_oss", n_layers=2)
    toks = m.to_tokens(PROMPT)
    seen = []
    router = m.hf_reference.model.layers[1].mlp.router
    handle = router.register_forward_hook(lambda mod, inp, out: seen.append(out[-1]))
    with torch.no_grad():
        m(toks)
    handle.remove()
    idx = seen[0]
    assert idx.shape == (15, 2)  # top-2 per token
    assert len(set(idx.flatten().tolist())) > 2  # of 4 experts, varying over tokens


def test_default_tiny_model_unchanged():
    m = tiny_model(n_layers=2)
    assert m.to_str_tokens("A 45-year-old man") == ["<bos>", "A", "45", "-", "year", "-", "old", "man"]
    assert m.medinterp_info["backend"] == "hooked" and m.cfg.normalization_type == "LN"


def test_unknown_arch_is_a_clear_error():
    from medinterp.errors import MedinterpError

    with pytest.raises(MedinterpError, match="llama, gemma3, qwen2, qwen3, gpt_oss"):
        tiny_model(arch="mamba")
