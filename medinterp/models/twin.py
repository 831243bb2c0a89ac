"""The random-init twin of a model: same architecture and tokenizer, fresh seeded weights.

The knowledge map runs every technique on the twin too: whatever a technique finds there is a
property of the architecture (block criticality, gradient scale, where the last token reads the
prompt), not of medical knowledge, so a layer is marked only where the trained model beats its twin.

* A model loaded by spec (``medinterp_info["spec"]``, e.g. ``"gemma-3-270m"``): the twin is
  ``load_model(spec + ":random", seed=seed, tokenizer=model.tokenizer)`` with the same backend and dtype.
* Any other ``HookedTransformer`` (e.g. :func:`medinterp.testing.tiny_model`):
  ``HookedTransformer(model.cfg, model.tokenizer)`` under ``torch.manual_seed(seed)`` (TransformerLens's
  own init, :func:`medinterp.models.construct.random_hooked`).
* Any other ``TransformerBridge``: the Hugging Face config of the wrapped model, random-init
  (transformers' ``_init_weights``, seeded), wrapped again.

Example:
    >>> from medinterp.testing import tiny_model
    >>> m = tiny_model(n_layers=2)
    >>> t = random_twin(m, seed=1)
    >>> t.cfg.n_layers == m.cfg.n_layers, t.tokenizer is m.tokenizer, t.medinterp_info["random_init"]
    (True, True, True)
"""

from __future__ import annotations

from typing import Any

from medinterp.models import construct
from medinterp.models.loader import RANDOM_SUFFIX, load_model

#: specs that name in-process test models (no files behind them): their twin is built from the config.
_IN_PROCESS_SPECS = ("tiny",)


def _in_process(spec: str) -> bool:
    return spec.split(":", 1)[0] in _IN_PROCESS_SPECS


def random_twin(model: Any, seed: int = 0) -> Any:
    """The random-init twin of ``model`` (see module docstring).

    Args:
        model: a HookedTransformer or TransformerBridge (from :func:`medinterp.load_model` or
            :func:`medinterp.testing.tiny_model`).
        seed: the twin's init seed.

    Returns:
        The twin, in eval mode, with ``medinterp_info`` (``spec`` ending in ``:random``,
        ``random_init=True``, ``seed``, ``twin_of``), so job fingerprints tell it from the model.
    """
    info = dict(getattr(model, "medinterp_info", None) or {})
    spec = str(info.get("spec") or "")
    base = spec[: -len(RANDOM_SUFFIX)] if spec.endswith(RANDOM_SUFFIX) else spec
    dtype = model.cfg.dtype
    device = str(model.cfg.device)
    if base and not _in_process(base):
        # the model's own tokenizer: the same files, and loading Gemma 3's again costs ~3-6 s
        from medinterp.models.chat import same_chat_setting  # the twin reads prompts as the model does

        return same_chat_setting(model, load_model(base + RANDOM_SUFFIX, seed=seed, backend=str(info.get("backend") or "auto"),
                                                   dtype=dtype, device=device, tokenizer=model.tokenizer))
    if hasattr(model, "original_model"):  # a TransformerBridge
        hf = construct.random_hf(model.original_model.config, seed=seed, dtype=dtype)
        twin = construct.bridge_from_hf(hf, model.tokenizer, name=f"{model.cfg.model_name}-twin", device=device,
                                        dtype=dtype, flags={"fold_ln": False, "center_writing_weights": False,
                                                            "center_unembed": False},
                                        prepend_bos=model.cfg.default_prepend_bos)
        init = "transformers"
    else:
        twin = construct.random_hooked(model.cfg, model.tokenizer, seed=seed, device=device, dtype=dtype)
        init = "transformer_lens"
    name = base or str(getattr(model.cfg, "model_name", "model"))
    twin.medinterp_info = {**info, "spec": name + RANDOM_SUFFIX, "random_init": True, "seed": seed, "init": init,
                           "twin_of": name, "source": {"kind": "random_init", "seed": seed, "twin_of": name}}
    return twin


__all__ = ["random_twin"]
