"""The paper's seed models: their Hugging Face configs (the fields that size them), kept here so that
planning and backend choice need no hub access.

Values are copied from each model's ``config.json`` on the hub (text config for the multimodal Gemma 3
checkpoints). Only the fields :mod:`medinterp.models.plan` and the backend choice read are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SeedModel:
    """One of the paper's models: its hub name, short name, and the sizing part of its HF config."""

    name: str
    hf_name: str
    config: dict[str, Any] = field(hash=False)
    note: str = ""


def _gemma3_27b(vocab: int) -> dict[str, Any]:
    return {
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        "hidden_size": 5376,
        "num_hidden_layers": 62,
        "num_attention_heads": 32,
        "num_key_value_heads": 16,
        "head_dim": 128,
        "intermediate_size": 21504,
        "vocab_size": vocab,
        "tie_word_embeddings": True,
        "sliding_window": 1024,
        "sliding_window_pattern": 6,
        "query_pre_attn_scalar": 168,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        "max_position_embeddings": 131072,
        "torch_dtype": "bfloat16",
    }


SEED_MODELS: dict[str, SeedModel] = {
    "llama-3.3-70b": SeedModel(
        "llama-3.3-70b",
        "meta-llama/Llama-3.3-70B-Instruct",
        {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 8192,
            "num_hidden_layers": 80,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "intermediate_size": 28672,
            "vocab_size": 128256,
            "tie_word_embeddings": False,
            "rope_theta": 500_000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "max_position_embeddings": 131072,
            "torch_dtype": "bfloat16",
        },
        "gated on the hub",
    ),
    "gemma-3-27b": SeedModel("gemma-3-27b", "google/gemma-3-27b-it", _gemma3_27b(262208),
                             "multimodal checkpoint; the text tower is mapped"),
    "medgemma-27b": SeedModel("medgemma-27b", "google/medgemma-27b-text-it", _gemma3_27b(262144), "text-only"),
    "qwen3-32b": SeedModel(
        "qwen3-32b",
        "Qwen/Qwen3-32B",
        {
            "model_type": "qwen3",
            "architectures": ["Qwen3ForCausalLM"],
            "hidden_size": 5120,
            "num_hidden_layers": 64,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "intermediate_size": 25600,
            "vocab_size": 151936,
            "tie_word_embeddings": False,
            "rope_theta": 1_000_000.0,
            "max_position_embeddings": 40960,
            "torch_dtype": "bfloat16",
        },
        "not in TL 3.9's HookedTransformer registry (its Qwen3 stops at 14B)",
    ),
    "qwen2.5-32b": SeedModel(
        "qwen2.5-32b",
        "Qwen/Qwen2.5-32B-Instruct",
        {
            "model_type": "qwen2",
            "architectures": ["Qwen2ForCausalLM"],
            "hidden_size": 5120,
            "num_hidden_layers": 64,
            "num_attention_heads": 40,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "intermediate_size": 27648,
            "vocab_size": 152064,
            "tie_word_embeddings": False,
            "attention_bias": True,
            "rope_theta": 1_000_000.0,
            "max_position_embeddings": 32768,
            "torch_dtype": "bfloat16",
        },
    ),
    "gpt-oss-120b": SeedModel(
        "gpt-oss-120b",
        "openai/gpt-oss-120b",
        {
            "model_type": "gpt_oss",
            "architectures": ["GptOssForCausalLM"],
            "hidden_size": 2880,
            "num_hidden_layers": 36,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "head_dim": 64,
            "intermediate_size": 2880,
            "num_local_experts": 128,
            "num_experts_per_tok": 4,
            "vocab_size": 201088,
            "tie_word_embeddings": False,
            "attention_bias": True,
            "sliding_window": 128,
            "rope_theta": 150_000.0,
            "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096},
            "max_position_embeddings": 131072,
            "torch_dtype": "bfloat16",
        },
        "not in TL 3.9's HookedTransformer registry (it has 20b); hub weights MXFP4, hooked runs need bf16",
    ),
}


def find_seed(spec: str) -> SeedModel | None:
    """The seed model named by its short name or hub name (case-insensitive), else None."""
    s = spec.lower()
    for m in SEED_MODELS.values():
        if s in (m.name, m.hf_name.lower()):
            return m
    return None


def match_seed_config(cfg: dict[str, Any]) -> SeedModel | None:
    """The seed model whose architecture and size equal a local HF config's, else None."""
    key = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads")
    for m in SEED_MODELS.values():
        mt = cfg.get("model_type")
        if mt == "gemma3":  # the multimodal config nests the text tower
            cfg = {**cfg, **cfg.get("text_config", {}), "model_type": "gemma3_text"}
            mt = "gemma3_text"
        if all(cfg.get(k) == m.config.get(k) for k in key):
            return m
    return None
