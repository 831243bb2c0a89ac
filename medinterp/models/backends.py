"""Backends behind one model protocol, what each can do, and an exact "run from layer l" for both.

Two backends, both TransformerLens 3.9 and both with the same hook names:

* ``hooked``: :class:`transformer_lens.HookedTransformer` (TL's own re-implementation of each
  architecture; prefix reuse through ``forward(resid, start_at_layer=l)``).
* ``bridge``: :class:`transformer_lens.model_bridge.TransformerBridge` in compatibility mode around the
  Hugging Face module itself (any architecture TL has an adapter for; ``device_map`` sharding). Its
  ``forward`` refuses ``start_at_layer`` (HF owns the layer loop), so engines rerun the prefix and
  overwrite the residual with a hook (:func:`run_from_layer`): exact, but no prefix saving.

Example:
    >>> from medinterp.testing import tiny_model
    >>> capabilities(tiny_model(n_layers=2)).start_at_layer
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float, Int

BACKENDS = ("auto", "hooked", "bridge")


@dataclass(frozen=True)
class Capabilities:
    """What a loaded model's backend supports.

    Attributes:
        backend: ``"hooked"`` or ``"bridge"``.
        start_at_layer: ``forward(resid, start_at_layer=l)`` works (prefix reuse).
        stop_at_layer: ``forward(tokens, stop_at_layer=l)`` works.
        string_input: strings may be passed to ``forward`` (the bridge accepts token tensors only:
            TL 3.9's bridge ignored ``prepend_bos=False`` for strings, shifting every position).
        device_map: weights may be spread over devices with a Hugging Face ``device_map``.
    """

    backend: str
    start_at_layer: bool
    stop_at_layer: bool
    string_input: bool
    device_map: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return asdict(self)


HOOKED = Capabilities("hooked", start_at_layer=True, stop_at_layer=True, string_input=True, device_map=False)
BRIDGE = Capabilities("bridge", start_at_layer=False, stop_at_layer=True, string_input=False, device_map=True)


def backend_of(model: Any) -> str:
    """``"bridge"`` for a TransformerBridge, else ``"hooked"``."""
    from transformer_lens.model_bridge import TransformerBridge

    return "bridge" if isinstance(model, TransformerBridge) else "hooked"


def capabilities(model: Any) -> Capabilities:
    """The capabilities of a model's backend (from the model's class, so any model works)."""
    return BRIDGE if backend_of(model) == "bridge" else HOOKED


# --------------------------------------------------------------------------- backend choice
def in_hooked_registry(name: str) -> bool:
    """True when TL 3.9's HookedTransformer registry lists ``name`` (official name or alias)."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        get_official_model_name(name)
    except ValueError:
        return False
    return True


def hooked_converts(folder: str, hf_cfg: dict[str, Any]) -> bool:
    """True when TL's HookedTransformer can build a config from a local HF folder's config (offline)."""
    from transformer_lens import loading_from_pretrained as loading

    from ._cache import offline_hf, tl_readable

    try:
        with offline_hf(), tl_readable(folder) as name:
            loading.get_pretrained_model_config(name, hf_cfg=hf_cfg)
    except Exception:
        return False
    return True


def choose_backend(requested: str, *, registry_name: str | None, seed_backend: str | None,
                   convertible: bool | None, device_map: Any) -> str:
    """The backend ``auto`` resolves to.

    Args:
        requested: ``"auto"``, ``"hooked"`` or ``"bridge"``.
        registry_name: hub/official name to look up in TL's HookedTransformer registry, if any.
        seed_backend: backend of the seed model this one matches in size (local folders), if any.
        convertible: whether HookedTransformer can convert the architecture (local folders), if known.
        device_map: a Hugging Face device map; only the bridge shards with one.
    """
    from medinterp.errors import MedinterpError

    if requested not in BACKENDS:
        raise MedinterpError(f"backend must be one of {', '.join(BACKENDS)}; got {requested!r}")
    if requested != "auto":
        if requested == "hooked" and device_map is not None:
            raise MedinterpError(
                "backend='hooked' cannot shard with a device_map (HookedTransformer's n_devices split is "
                "frozen in TL 3.x); use backend='bridge' or 'auto'"
            )
        return requested
    if device_map is not None:
        return "bridge"
    if seed_backend is not None:
        return seed_backend
    if registry_name is not None and in_hooked_registry(registry_name):
        return "hooked"
    if convertible:
        return "hooked"
    return "bridge"


def seed_backends() -> dict[str, str]:
    """Backend ``auto`` picks for each seed model (by TL's registry: architecture and size)."""
    from .seeds import SEED_MODELS

    return {m.name: ("hooked" if in_hooked_registry(m.hf_name) else "bridge") for m in SEED_MODELS.values()}


# --------------------------------------------------------------------------- exact run from layer l
def _resid_hook_name(model: Any, layer: int) -> str:
    n = model.cfg.n_layers
    if not 0 <= layer <= n:
        from medinterp.errors import MedinterpError

        raise MedinterpError(f"run_from_layer: layer must be in 0..{n}; got {layer}")
    return f"blocks.{layer}.hook_resid_pre" if layer < n else f"blocks.{n - 1}.hook_resid_post"


def run_from_layer(
    model: Any,
    tokens: Int[torch.Tensor, "batch pos"],
    resid: Float[torch.Tensor, "batch pos d_model"],
    layer: int,
    *,
    attention_mask: torch.Tensor | None = None,
    stop_at_layer: int | None = None,
    fwd_hooks: Sequence[tuple[Any, Callable]] = (),
    use_prefix_reuse: bool | None = None,
    **forward_kwargs: Any,
) -> torch.Tensor:
    """Run the model from layer ``layer`` on the residual ``resid`` (the input of block ``layer``).

    With prefix reuse (``start_at_layer``; hooked backend) only blocks ``layer..`` run. Without it
    (bridge) the whole model runs on ``tokens`` and a hook overwrites ``blocks.{layer}.hook_resid_pre``
    with ``resid`` (``layer == n_layers``: the last block's output), so the result is the same, at the
    price of recomputing the prefix.

    Args:
        model: a HookedTransformer or TransformerBridge.
        tokens: the prompts' tokens (the hook path reruns them; also used for the attention mask).
        resid: residual stream entering block ``layer``, same batch and positions as ``tokens``.
        layer: first block to run, ``0..n_layers``.
        attention_mask: padding mask, passed through.
        stop_at_layer: passed through (``None``: to the logits).
        fwd_hooks: more ``(name, hook)`` pairs applied during the run.
        use_prefix_reuse: force a path (``None``: prefix reuse where the backend has it).
        **forward_kwargs: passed to the forward (e.g. ``return_type``).

    Returns:
        Whatever the model's forward returns (logits by default).
    """
    reuse = capabilities(model).start_at_layer if use_prefix_reuse is None else use_prefix_reuse
    if reuse:
        return model.run_with_hooks(resid, start_at_layer=layer, stop_at_layer=stop_at_layer,
                                    attention_mask=attention_mask, fwd_hooks=list(fwd_hooks), **forward_kwargs)

    def put(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return resid.to(act.device, act.dtype)

    hooks = [(_resid_hook_name(model, layer), put), *fwd_hooks]
    return model.run_with_hooks(tokens, stop_at_layer=stop_at_layer, attention_mask=attention_mask,
                                fwd_hooks=hooks, **forward_kwargs)
