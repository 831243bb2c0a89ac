"""Build a model of either backend from a loaded Hugging Face module, with no hub call."""

from __future__ import annotations

import copy
import functools
import logging
from pathlib import Path
from typing import Any

import torch

from medinterp.errors import MedinterpError, ModelLoadError

from ._cache import _strip_quantization, offline_hf, tl_readable

log = logging.getLogger("medinterp.models")

# TL's Gemma 3 configs are keyed by official name (no generic converter): pick it by width.
_GEMMA3_BY_WIDTH = {640: "google/gemma-3-270m", 1152: "google/gemma-3-1b-pt"}


def load_hf(source: str, *, dtype: torch.dtype, device_map: Any = None, max_memory: Any = None,
            local: bool = True, trust_remote_code: bool = False, bos_tokenizer: bool = False) -> tuple[Any, Any]:
    """(tokenizer, HF causal LM in eval mode, eager attention) from a folder or hub name.

    ``bos_tokenizer``: load the tokenizer with ``add_bos_token=True``, the one a HookedTransformer uses
    (TL's ``set_tokenizer`` otherwise loads the tokenizer files a second time to get it: ~3 s for Gemma 3's
    262k-token vocabulary)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"local_files_only": True} if local else {}
    if trust_remote_code:
        kw["trust_remote_code"] = True
    extra: dict[str, Any] = {}
    if device_map is not None:
        extra["device_map"] = device_map
        if max_memory is not None:
            extra["max_memory"] = max_memory
    try:
        ctx = offline_hf() if local else _null()
        with ctx:
            tok = _tokenizer(source, bos_tokenizer, **kw)
            # Eager attention: the bridge forces it, and it is the reference the parity checks use.
            hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="eager", **kw, **extra)
    except OSError as e:
        where = "not a readable Hugging Face model folder" if local else "could not be loaded from the hub (offline?)"
        raise ModelLoadError(f"{source}: {where} ({e})") from None
    except Exception as e:
        raise ModelLoadError(f"{source}: failed to load ({type(e).__name__}: {e})") from None
    _strip_quantization(hf)
    return tok, hf.eval()


def _tokenizer(source: str, bos: bool, **kw: Any) -> Any:
    """``AutoTokenizer.from_pretrained(source)``; with ``bos``, the tokenizer TL's ``get_tokenizer_with_bos``
    would re-load (``add_bos_token=True``), loaded once. A tokenizer without a BOS token, or whose
    post-processor cannot take it, is loaded plainly, as TL then keeps it."""
    from transformers import AutoTokenizer

    if bos:
        try:
            tok = AutoTokenizer.from_pretrained(source, add_bos_token=True, **kw)
        except ValueError:
            tok = None
        if tok is not None and tok.bos_token is not None:
            return tok
    return AutoTokenizer.from_pretrained(source, **kw)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None


#: memory order each HookedTransformer weight is stored in, so that the transposed / rearranged view
#: TransformerLens builds on every forward call is already contiguous (no copy): TL 3.9's GatedMLP calls
#: ``W.T.contiguous()`` and attention ``rearrange(W_Q, "h d_model d_head -> (h d_head) d_model")``
#: (and W_O to ``d_model (h d_head)``), i.e. a fresh copy of every block's weights per forward. The values
#: are the same, so every output is bit-identical; only the strides differ.
_WEIGHT_MEMORY_ORDER: dict[str, tuple[int, ...]] = {
    "W_in": (1, 0), "W_gate": (1, 0), "W_out": (1, 0),
    "W_Q": (0, 2, 1), "W_K": (0, 2, 1), "W_V": (0, 2, 1), "_W_K": (0, 2, 1), "_W_V": (0, 2, 1),
    "W_O": (2, 0, 1),
}


def fast_weight_layout(model: Any) -> Any:
    """Store a HookedTransformer's block weights in the memory order TL's forward reads them (see
    :data:`_WEIGHT_MEMORY_ORDER`); shapes and values unchanged. Measured on Gemma 3 270M (CPU, 2 threads):
    the ``contiguous`` copies were ~20% of a lesion or causal-tracing run. Returns ``model``.

    Example:
        >>> from medinterp.testing import tiny_model
        >>> m = tiny_model(n_layers=1)
        >>> w = m.blocks[0].attn.W_Q
        >>> w.permute(0, 2, 1).is_contiguous() and tuple(w.shape) == (m.cfg.n_heads, m.cfg.d_model, m.cfg.d_head)
        True
    """
    for name, p in model.named_parameters():
        order = _WEIGHT_MEMORY_ORDER.get(name.rsplit(".", 1)[-1])
        if order is None or p.dim() != len(order) or not name.startswith("blocks."):
            continue
        inv = [order.index(i) for i in range(len(order))]
        with torch.no_grad():
            p.data = p.data.permute(*order).contiguous().permute(*inv)
    return model


def hooked_from_hf(hf: Any, tok: Any, *, folder: str | None, official_name: str | None, device: str,
                   dtype: torch.dtype, flags: dict[str, bool], prepend_bos: bool | None,
                   tl_cfg: Any = None) -> Any:
    """A HookedTransformer holding ``hf``'s weights (TL's conversion), on ``device``.

    Args:
        hf: the Hugging Face model (weights source; not kept).
        tok: its tokenizer.
        folder: local folder with the model's config.json (TL reads architecture fields from it).
        official_name: TL registry name, where TL keys the architecture by name (Gemma 3).
        device, dtype: where and in what precision.
        flags: fold_ln / center_writing_weights / center_unembed.
        prepend_bos: the model's default (``None``: TL's).
        tl_cfg: a ready HookedTransformerConfig (tiny test models), bypassing TL's config conversion.
    """
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    arch = (hf.config.architectures or ["?"])[0]
    if official_name is None and tl_cfg is None and arch == "Gemma3ForCausalLM":
        official_name = _GEMMA3_BY_WIDTH.get(hf.config.hidden_size)
    with offline_hf():
        if official_name is not None and tl_cfg is None:
            hf.config.architectures = [arch]
            processed = any(flags.values())
            ctor = HookedTransformer.from_pretrained if processed else HookedTransformer.from_pretrained_no_processing
            model = ctor(official_name, hf_model=hf, tokenizer=tok, device=device, dtype=dtype,
                         default_prepend_bos=prepend_bos, **(flags if processed else {}))
        else:
            if tl_cfg is None:
                if folder is None:
                    raise ModelLoadError(f"architecture {arch!r}: HookedTransformer needs a config folder")
                try:
                    with tl_readable(folder) as name:
                        tl_cfg = loading.get_pretrained_model_config(
                            name, hf_cfg=hf.config.to_dict(), fold_ln=flags["fold_ln"], device=device,
                            dtype=dtype, default_prepend_bos=prepend_bos)
                    tl_cfg.model_name = Path(folder).name
                except Exception as e:
                    raise ModelLoadError(f"{folder}: architecture {arch!r} is not supported by TransformerLens "
                                         f"HookedTransformer ({type(e).__name__}: {e}); try backend='bridge'") from None
            model = HookedTransformer(tl_cfg, tok, move_to_device=False)
            with tl_readable(folder) as name:
                state = loading.get_pretrained_state_dict(name, tl_cfg, hf, dtype=dtype)
            model.load_and_process_state_dict(
                state, fold_ln=flags["fold_ln"], center_writing_weights=flags["center_writing_weights"],
                center_unembed=flags["center_unembed"], fold_value_biases=flags["fold_ln"])
            model.to(device)
    return fast_weight_layout(model).eval()


def _bridge_guard(br: Any, method: Any) -> Any:
    """``method`` (forward / run_with_hooks / run_with_cache) of a bridge, with two TL 3.9 fixes.

    * Strings are refused (TL 3.9's TransformerBridge mishandles ``prepend_bos`` for them).
    * ``stop_at_layer=n_layers`` returns the residual after the last block, as HookedTransformer does:
      TL 3.9's bridge stops only inside a block (``blocks.{l}.hook_in``), so with ``l == n_layers``
      nothing stopped and the logits came back. A pre-hook on ``ln_final`` stops there instead.
    """
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    def stop(module: Any, args: tuple) -> None:
        raise StopAtLayerException(args[0])

    @functools.wraps(method)
    def guarded(input: Any = None, *args: Any, stop_at_layer: int | None = None, **kwargs: Any) -> Any:
        if isinstance(input, str) or (isinstance(input, (list, tuple)) and input and isinstance(input[0], str)):
            raise MedinterpError(
                "the bridge backend takes token tensors only (TL 3.9's TransformerBridge mishandles "
                "prepend_bos for strings): pass model.to_tokens(text)")
        n = len(br.blocks)
        if stop_at_layer is not None and (stop_at_layer + n if stop_at_layer < 0 else stop_at_layer) >= n:
            handle = br.ln_final.register_forward_pre_hook(stop)
            try:
                return method(input, *args, **kwargs)
            finally:
                handle.remove()
        return method(input, *args, stop_at_layer=stop_at_layer, **kwargs)

    return guarded


def bridge_from_hf(hf: Any, tok: Any, *, name: str, device: str | None, dtype: torch.dtype,
                   flags: dict[str, bool], prepend_bos: bool | None) -> Any:
    """A TransformerBridge (compatibility mode) around ``hf`` itself, with :func:`_bridge_guard`'s fixes."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except Exception as e:  # pragma: no cover - part of TL 3.9
        raise ModelLoadError(f"TransformerBridge is not importable from transformer_lens ({e})") from None
    sharded = getattr(hf, "hf_device_map", None) is not None
    try:
        with offline_hf():
            br = TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=tok,
                                                     device=None if sharded else device, dtype=dtype)
            processed = any(flags.values())
            br.enable_compatibility_mode(disable_warnings=True, no_processing=not processed,
                                         fold_ln=flags["fold_ln"], center_writing_weights=flags["center_writing_weights"],
                                         center_unembed=flags["center_unembed"], fold_value_biases=flags["fold_ln"])
    except MedinterpError:
        raise
    except Exception as e:
        raise ModelLoadError(f"{name}: TransformerBridge could not wrap this model ({type(e).__name__}: {e})") from None
    if prepend_bos is not None:
        br.cfg.default_prepend_bos = prepend_bos
    for name in ("forward", "run_with_hooks", "run_with_cache"):
        setattr(br, name, _bridge_guard(br, getattr(br, name)))
    return br.eval()


def random_hooked(cfg: Any, tok: Any, *, seed: int, device: str, dtype: torch.dtype) -> Any:
    """A HookedTransformer of ``cfg``'s architecture with TransformerLens's own init (seeded)."""
    from transformer_lens import HookedTransformer

    cfg = copy.deepcopy(cfg)
    cfg.seed = seed
    cfg.dtype = dtype
    cfg.device = device
    cfg.init_weights = True
    torch.manual_seed(seed)
    return fast_weight_layout(HookedTransformer(cfg, tok)).eval()


def random_hf(config: Any, *, seed: int, dtype: torch.dtype) -> Any:
    """A random-init HF causal LM of ``config`` (transformers' ``_init_weights``, seeded)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = copy.deepcopy(config)
    config._attn_implementation = "eager"
    hf = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")
    return hf.eval()


def verify_against_hf(model: Any, reference: Any, tok: Any, *, dtype: torch.dtype,
                      text: str = "A 45-year-old man with chest pain was given aspirin") -> dict[str, Any]:
    """Short logits check: ``model`` vs the plain transformers module ``reference`` on one prompt.

    Compares logits centred over the vocabulary (TL's ``center_unembed`` shifts each position by a
    constant) and reports the raw difference too.
    """
    ids = tok(text, return_tensors="pt")["input_ids"]
    # A streamed reference (medinterp.models.lean) holds meta tensors between calls: it names its device.
    dev = getattr(reference, "medinterp_device", None) or next(reference.parameters()).device
    with torch.no_grad():
        ref = reference(ids.to(dev)).logits.float().cpu()
        got = model(ids.to(model.cfg.device) if not getattr(reference, "hf_device_map", None) else ids).float().cpu()
    if ref.shape[-1] != got.shape[-1]:
        n = min(ref.shape[-1], got.shape[-1])
        ref, got = ref[..., :n], got[..., :n]
    raw = (ref - got).abs().max().item()
    centred = ((ref - ref.mean(-1, keepdim=True)) - (got - got.mean(-1, keepdim=True))).abs().max().item()
    tol = 1e-3 if dtype == torch.float32 else 0.5
    out = {"checked": True, "n_tokens": int(ids.shape[1]), "max_abs_logit_diff": raw,
           "max_abs_centred_logit_diff": centred, "tolerance": tol, "passed": bool(centred <= tol)}
    if not out["passed"]:
        log.warning("medinterp: logits differ from transformers by %.3g (> %.3g): %s", centred, tol, out)
    return out


def is_local(path: str) -> bool:
    """True for an existing local path."""
    return Path(path).expanduser().exists()
