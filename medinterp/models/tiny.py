"""Tiny random-init models of the paper's seed architectures, from Hugging Face configs (no hub).

Each is a random-init ``transformers`` model (seeded), wrapped by the backend ``auto`` picks for the
real seed model (``hooked``: TL converts the HF weights; ``bridge``: TL wraps the HF module), so the
same weights can be compared across backends and against plain ``transformers``.

=========  ====================  =====================================================================
arch       seed model            features exercised
=========  ====================  =====================================================================
llama      Llama-3.3-70B         GQA (4 query / 2 KV heads), Llama-3 RoPE scaling (NTK by parts)
gemma3     Gemma-3-27B/MedGemma  sliding-window + global layers, QK-norm, final logit soft-cap
qwen2      Qwen2.5-32B           GQA, q/k/v biases
qwen3      Qwen3-32B             GQA, QK-norm
gpt_oss    GPT-OSS-120B          mixture of experts (4 experts, top-2 routing), attention sinks,
                                 alternating sliding / full attention
=========  ====================  =====================================================================

Gemma 3 at 27B has no soft-capping (QK-norm replaced it); the tiny one caps the final logits at 0.5 so
that code path bites. The attention soft-cap stays off: with it, TL 3.9's HookedTransformer Gemma 3 path
differs from transformers by 2.5e-4 on logits of size 0.7 (measured), and no seed model uses it.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from medinterp.errors import MedinterpError

import medinterp.models.construct as construct
from .backends import capabilities, choose_backend, seed_backends

ARCH_SEED = {"llama": "llama-3.3-70b", "gemma3": "gemma-3-27b", "qwen2": "qwen2.5-32b", "qwen3": "qwen3-32b",
             "gpt_oss": "gpt-oss-120b"}


def hf_config(arch: str, *, n_layers: int, d_model: int, n_heads: int, d_mlp: int, vocab_size: int, n_ctx: int,
              **overrides: Any) -> Any:
    """The tiny HF config of ``arch`` (special ids: pad 0, bos 1, eos 2, as :func:`word_tokenizer`)."""
    from transformers import AutoConfig

    if arch not in ARCH_SEED:
        raise MedinterpError(f"tiny_model: arch must be one of {', '.join(ARCH_SEED)}; got {arch!r}")
    head_dim = d_model // n_heads
    kv = max(1, n_heads // 2)
    common = dict(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
                  num_attention_heads=n_heads, num_key_value_heads=kv, head_dim=head_dim,
                  max_position_embeddings=n_ctx, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  tie_word_embeddings=False)
    if arch == "llama":
        kw = dict(common, model_type="llama", architectures=["LlamaForCausalLM"], rope_theta=500000.0,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 16})
    elif arch == "gemma3":
        layer_types = ["full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(n_layers)]
        kw = dict(common, model_type="gemma3_text", architectures=["Gemma3ForCausalLM"], num_key_value_heads=1,
                  tie_word_embeddings=True, sliding_window=4, layer_types=layer_types, query_pre_attn_scalar=head_dim,
                  final_logit_softcapping=0.5, attn_logit_softcapping=None, hidden_activation="gelu_pytorch_tanh",
                  rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                   "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}})
    elif arch == "qwen2":
        kw = dict(common, model_type="qwen2", architectures=["Qwen2ForCausalLM"], rope_theta=1000000.0)
    elif arch == "qwen3":
        kw = dict(common, model_type="qwen3", architectures=["Qwen3ForCausalLM"], rope_theta=1000000.0)
    else:
        layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
        kw = dict(common, model_type="gpt_oss", architectures=["GptOssForCausalLM"], intermediate_size=d_mlp,
                  num_local_experts=4, num_experts_per_tok=2, sliding_window=4, layer_types=layer_types,
                  rope_parameters={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                   "truncate": False, "original_max_position_embeddings": 32, "rope_theta": 150000.0})
    kw.update(overrides)
    model_type = kw.pop("model_type")
    return AutoConfig.for_model(model_type, **kw)


def _gemma3_tl_cfg(config: Any, *, device: str, dtype: torch.dtype) -> Any:
    """TL's Gemma 3 config (keyed by name in TL) re-sized to a tiny HF config."""
    from transformer_lens import HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading

    d = loading.convert_hf_model_config("google/gemma-3-270m")
    d.update(d_model=config.hidden_size, d_head=config.head_dim, n_heads=config.num_attention_heads,
             n_key_value_heads=config.num_key_value_heads, d_mlp=config.intermediate_size,
             n_layers=config.num_hidden_layers, n_ctx=config.max_position_embeddings, d_vocab=config.vocab_size,
             window_size=config.sliding_window, eps=config.rms_norm_eps,
             attn_types=["global" if t == "full_attention" else "local" for t in config.layer_types],
             output_logits_soft_cap=config.final_logit_softcapping or -1.0,
             attn_scores_soft_cap=config.attn_logit_softcapping or -1.0,
             tokenizer_name=None, device=device, dtype=dtype, default_prepend_bos=True, tokenizer_prepends_bos=True)
    return HookedTransformerConfig(**d)


def tiny_arch_model(arch: str, *, n_layers: int = 3, d_model: int = 64, n_heads: int = 4, d_mlp: int = 128,
                    tokenizer: Any, n_ctx: int = 128, seed: int = 0, backend: str = "auto",
                    dtype: torch.dtype = torch.float32, device: str = "cpu", **overrides: Any) -> Any:
    """A tiny random-init model of a seed architecture (see the module table), with ``medinterp_info``.

    Args:
        arch: ``"llama"``, ``"gemma3"``, ``"qwen2"``, ``"qwen3"`` or ``"gpt_oss"``.
        n_layers, d_model, n_heads, d_mlp: sizes (``head_dim = d_model // n_heads``; KV heads: half).
        tokenizer: the tokenizer (its length sets the vocabulary).
        n_ctx: context length.
        seed: init seed (transformers' ``_init_weights``).
        backend: ``"auto"`` (the real seed model's backend), ``"hooked"`` or ``"bridge"``.
        dtype, device: precision and device.
        **overrides: more HF config fields.

    Returns:
        The model; ``model.hf_reference`` is the plain transformers module holding the same weights
        (the bridge wraps it; for hooked it is a separate copy), for parity checks.
    """
    config = hf_config(arch, n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_mlp=d_mlp,
                       vocab_size=len(tokenizer), n_ctx=n_ctx, **overrides)
    chosen = choose_backend(backend, registry_name=None, seed_backend=seed_backends()[ARCH_SEED[arch]],
                            convertible=None, device_map=None)
    hf = construct.random_hf(config, seed=seed, dtype=dtype).to(device)
    flags = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False}
    if chosen == "hooked":
        tl_cfg = _gemma3_tl_cfg(config, device=device, dtype=dtype) if arch == "gemma3" else None
        # A neutral folder name: TL sniffs architectures from names ("llama" in a path).
        with tempfile.TemporaryDirectory(prefix="medinterp-tiny-") as folder:
            config.save_pretrained(folder)
            if tl_cfg is None:
                from transformer_lens import loading_from_pretrained as loading

                tl_cfg = loading.get_pretrained_model_config(folder, hf_cfg=config.to_dict(), device=device,
                                                             dtype=dtype, default_prepend_bos=True)
                tl_cfg.tokenizer_prepends_bos = True
            model = construct.hooked_from_hf(hf, tokenizer, folder=folder, official_name=None, device=device,
                                             dtype=dtype, flags=flags, prepend_bos=True, tl_cfg=tl_cfg)
        model.hf_reference = hf
    else:
        model = construct.bridge_from_hf(hf, tokenizer, name=f"tiny-{arch}", device=device, dtype=dtype,
                                         flags=flags, prepend_bos=True)
        model.hf_reference = model.original_model
    model.cfg.model_name = f"tiny-{arch}-{n_layers}L-{d_model}d"
    caps = capabilities(model)
    model.medinterp_info = {
        "spec": f"tiny:{arch}", "model_name": model.cfg.model_name,
        "source": {"kind": "random_init", "seed": seed, "arch": arch, "seed_model": ARCH_SEED[arch]},
        **flags, "fold_value_biases": False, "dtype": str(dtype).replace("torch.", ""), "device": device,
        "backend": caps.backend, "capabilities": caps.to_dict(), "random_init": True, "seed": seed,
        "init": "transformers", "n_layers": n_layers, "d_model": d_model, "n_heads": n_heads,
        "d_vocab": len(tokenizer), "architecture": config.architectures[0], "default_prepend_bos": True,
    }
    return model
