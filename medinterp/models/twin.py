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

import logging
from typing import Any

from medinterp.models import construct
from medinterp.models.loader import RANDOM_SUFFIX, load_model

log = logging.getLogger("medinterp")

#: specs that name in-process test models (no files behind them): their twin is built from the config.
_IN_PROCESS_SPECS = ("tiny",)


def _in_process(spec: str) -> bool:
    return spec.split(":", 1)[0] in _IN_PROCESS_SPECS


def random_twin(model: Any, seed: int = 0, device: str | None = None) -> Any:
    """The random-init twin of ``model`` (see module docstring).

    Args:
        model: a HookedTransformer or TransformerBridge (from :func:`medinterp.load_model` or
            :func:`medinterp.testing.tiny_model`).
        seed: the twin's init seed.
        device: where to build it (default: the model's device; the map passes the model's own device while
            the model waits in host memory: :class:`parked`).

    Returns:
        The twin, in eval mode, with ``medinterp_info`` (``spec`` ending in ``:random``,
        ``random_init=True``, ``seed``, ``twin_of``), so job fingerprints tell it from the model.
    """
    info = dict(getattr(model, "medinterp_info", None) or {})
    spec = str(info.get("spec") or "")
    base = spec[: -len(RANDOM_SUFFIX)] if spec.endswith(RANDOM_SUFFIX) else spec
    dtype = model.cfg.dtype
    device = device or str(model.cfg.device)
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


__all__ = ["parked", "random_twin", "twin_needs_room"]


def twin_needs_room(model: Any, free_bytes: int | None = None, margin: float = 1.2) -> bool:
    """Whether the random twin would not fit beside ``model`` on its GPU, so the model must step aside
    (:func:`parked`) while the twin runs: a full-size model (Gemma-3-27B in bf16: 54 GB) and its twin do not
    both fit on one 80 GB GPU. False on the CPU and for a model spread over devices (``device_map``).

    Args:
        model: the mapped model.
        free_bytes: free memory of its GPU (default: ``torch.cuda.mem_get_info``).
        margin: room the twin needs, as a multiple of the model's parameter bytes (activations, workspace).

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(1000, 1000)            # 4 MB of float32 parameters
        >>> m.cfg = type("Cfg", (), {"device": "cuda:0"})()
        >>> twin_needs_room(m, free_bytes=3_000_000), twin_needs_room(m, free_bytes=10_000_000)
        (True, False)
        >>> m.cfg.device = "cpu"; twin_needs_room(m, free_bytes=0)
        False
    """
    import torch

    device = str(getattr(getattr(model, "cfg", None), "device", "cpu"))
    if not device.startswith("cuda") or getattr(model, "hf_device_map", None):
        return False
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(torch.device(device))[0]
    need = sum(p.numel() * p.element_size() for p in model.parameters()) * margin
    return free_bytes < need


class parked:
    """Context manager: the model waits in host memory while the block runs, and comes back to its device
    after (a no-op unless ``park``). Its weights are moved, not copied: bit-identical when it returns."""

    def __init__(self, model: Any, park: bool):
        self.model, self.park = model, park
        self.device = str(getattr(getattr(model, "cfg", None), "device", "cpu"))

    def __enter__(self) -> "parked":
        if self.park:
            import torch

            log.info("random twin: moving the model to host memory while its twin runs (both do not fit on %s)",
                     self.device)
            self.model.to("cpu")
            torch.cuda.empty_cache()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.park:
            self.model.to(self.device)
