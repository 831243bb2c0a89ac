"""Tiny random-init HookedTransformers with a real (word-level) tokenizer, for tests and examples.

They run in milliseconds, need no download, and tokenize medical prompts word by word, so code
written for the real model (``to_tokens``, ``to_single_token(" angina")``, offsets for concept spans)
runs unchanged on them.

Example:
    >>> from medinterp.testing import tiny_model
    >>> model = tiny_model(n_layers=2)
    >>> model.to_str_tokens("A 45-year-old man")
    ['<bos>', 'A', '45', '-', 'year', '-', 'old', 'man']
    >>> model.to_single_token(" angina") == model.to_single_token("angina")
    True

``tiny_model(arch=...)`` builds a tiny random-init model of one of the paper's seed architectures
(``"llama"``, ``"gemma3"``, ``"qwen2"``, ``"qwen3"``, ``"gpt_oss"``) from a Hugging Face config (no hub),
through the backend ``load_model(backend="auto")`` picks for the real seed model; see
:mod:`medinterp.models.tiny`.
"""

from __future__ import annotations

import functools
import re
from importlib.resources import files
from typing import Any, Iterable

_BASE_WORDS = """
a an the of and or with in on at to for from by is was are be has had have patient patients man woman
male female boy girl child adult infant year old years presents presented complains history
diagnosis diagnosed likely most probable the treatment treated treat used dose dosage mg g mcg ml units
daily twice once every hours hour day days week weeks month months tablet oral intravenous drug drugs
medication prescribed symptoms symptom disease diseases stage early late mild moderate severe end
pain chest fever cough headache nausea vomiting fatigue shortness breath rash angina pneumonia asthma
diabetes hypertension stroke migraine infection cancer heart lung liver kidney brain skin blood bone
aspirin ibuprofen metformin insulin lisinopril amoxicillin warfarin heparin atorvastatin omeprazole
parkinson copd tremor dyspnea exertion productive sputum wheezing sex age clinical examination shows
reports new onset acute chronic progressive normal healthy no signs mild this that which who what
""".split()


@functools.lru_cache(maxsize=1)
def _shipped_words() -> tuple[str, ...]:
    """Words of every shipped concept file, so shipped prompts tokenize without [UNK] where possible."""
    words: set[str] = set()
    try:
        data = files("medinterp.concepts").joinpath("data")
        for entry in data.iterdir():
            if entry.name.endswith((".csv", ".yaml", ".yml", ".json")):
                words.update(re.findall(r"\w+|[^\w\s]", entry.read_text(encoding="utf-8")))
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    return tuple(sorted(words))


def word_tokenizer(vocab: Iterable[str] | None = None, max_words: int = 6000):
    """A fast word-level tokenizer (whitespace + punctuation split) with ``<bos>``, ``<eos>``, ``<pad>``, ``[UNK]``.

    Args:
        vocab: words to include; default: a built-in medical list, numbers 0..200, and the words of
            the shipped concept files.
        max_words: cap on the vocabulary size (tiny models stay tiny).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "[UNK]"]
    if vocab is None:
        vocab = [
            *list(".,:;-'()/%?!"),
            *_BASE_WORDS,
            *(w.capitalize() for w in _BASE_WORDS),
            *(str(i) for i in range(201)),
            *_shipped_words(),
        ]
    seen: dict[str, int] = {s: i for i, s in enumerate(specials)}
    for w in vocab:
        if w not in seen and len(seen) < max_words:
            seen[w] = len(seen)
    tok = Tokenizer(models.WordLevel(vocab=seen, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # The tokenizer adds BOS itself (like Gemma's), so TransformerLens uses it as is.
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", seen["<bos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="[UNK]",
        add_bos_token=True,
        name_or_path="medinterp-word-tokenizer",
    )


def tiny_model(
    n_layers: int = 3,
    d_model: int = 64,
    n_heads: int = 4,
    d_mlp: int = 128,
    *,
    vocab: Iterable[str] | None = None,
    n_ctx: int = 128,
    seed: int = 0,
    arch: str | None = None,
    backend: str = "auto",
    dtype: Any = None,
    **cfg_overrides: Any,
):
    """A random-init ``HookedTransformer`` with a word-level tokenizer and ``medinterp_info``.

    With ``arch`` (``"llama"``, ``"gemma3"``, ``"qwen2"``, ``"qwen3"``, ``"gpt_oss"``): a random-init HF model
    of that architecture, wrapped by ``backend`` (``"auto"``: the one the real seed model gets), with
    ``cfg_overrides`` applied to the HF config (see :func:`medinterp.models.tiny.tiny_arch_model`).

    Args:
        n_layers, d_model, n_heads, d_mlp: architecture (``d_head = d_model // n_heads``).
        vocab: tokenizer vocabulary (see :func:`word_tokenizer`).
        n_ctx: context length.
        seed: weight initialisation seed.
        **cfg_overrides: any other ``HookedTransformerConfig`` field (e.g. ``positional_embedding_type="rotary"``,
            ``normalization_type="RMS"``, ``attn_only=True``).
        arch: a seed architecture (see above); ``None``: TL's own GPT-2-style block.
        backend: ``"auto"``, ``"hooked"`` or ``"bridge"`` (``arch`` models only).
        dtype: parameter dtype (``None``: float32).
    """
    import torch

    if arch is not None:
        from medinterp.models.tiny import tiny_arch_model

        return tiny_arch_model(arch, n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_mlp=d_mlp,
                               tokenizer=word_tokenizer(vocab), n_ctx=n_ctx, seed=seed, backend=backend,
                               dtype=dtype or torch.float32, **cfg_overrides)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = word_tokenizer(vocab)
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=d_mlp,
        n_ctx=n_ctx,
        d_vocab=len(tok),
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
        default_prepend_bos=True,
        tokenizer_prepends_bos=True,
        model_name=f"tiny-{n_layers}L-{d_model}d",
        **({"dtype": dtype} if dtype is not None else {}),
        **cfg_overrides,
    )
    torch.manual_seed(seed)
    model = HookedTransformer(cfg, tokenizer=tok, default_padding_side="right")
    from medinterp.models.construct import fast_weight_layout

    fast_weight_layout(model).eval()
    model.medinterp_info = {
        "spec": "tiny",
        "model_name": cfg.model_name,
        "source": {"kind": "random_init", "seed": seed},
        "fold_ln": False,
        "center_writing_weights": False,
        "center_unembed": False,
        "fold_value_biases": False,
        "dtype": str(cfg.dtype).replace("torch.", ""),
        "device": str(cfg.device),
        "backend": "hooked",
        "capabilities": {"backend": "hooked", "start_at_layer": True, "stop_at_layer": True,
                         "string_input": True, "device_map": False},
        "random_init": True,
        "seed": seed,
        "n_layers": n_layers,
        "d_model": d_model,
        "n_heads": n_heads,
        "d_vocab": cfg.d_vocab,
        "architecture": "random-init",
        "default_prepend_bos": True,
    }
    return model


class CrashWorkerOnce:
    """A ``before_job`` hook (:func:`medinterp.maps.ray_executor.knowledge_map_ray`) that logs every job start
    to ``log`` and kills its worker process the first time ``key`` starts (``flag`` marks that it happened).
    A module-level class, so Ray pickles it by reference: tests use it to check that a killed worker loses
    no finished job."""

    def __init__(self, key: str, flag: str, log: str):
        self.key, self.flag, self.log = key, flag, log

    def __call__(self, key: str) -> None:
        import os

        with open(self.log, "a") as f:
            f.write(key + "\n")
        if key == self.key and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            os._exit(1)  # a worker dying mid-map (out of memory, node lost): no cleanup, no exception


def assert_same_map(a, b) -> None:
    """Assert that two knowledge maps have the same curves, marks, statuses and control statistics, bit for
    bit (NaN equal to NaN); the provenance (timings, hosts) may differ. For sharded or distributed maps."""
    import numpy as np

    def eq(x, y, path):
        if isinstance(x, dict):
            assert isinstance(y, dict) and set(x) == set(y), f"{path}: keys differ"
            for k in x:
                eq(x[k], y[k], f"{path}/{k}")
        elif isinstance(x, (list, tuple)):
            assert isinstance(y, (list, tuple)) and len(x) == len(y), f"{path}: lengths differ"
            for i, (u, v) in enumerate(zip(x, y)):
                eq(u, v, f"{path}[{i}]")
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True), f"{path}: arrays differ"
        elif isinstance(x, float) and isinstance(y, float) and np.isnan(x) and np.isnan(y):
            pass
        else:
            assert x == y, f"{path}: {x!r} != {y!r}"

    for name in ("curves", "intervals", "status", "control_status", "control_stats", "control_notes",
                 "control_cells"):
        eq(getattr(a, name), getattr(b, name), name)
