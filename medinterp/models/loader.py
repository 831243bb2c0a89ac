"""``load_model``: a spec to a TransformerLens model of the chosen backend, with provenance."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medinterp.errors import ModelLoadError

import medinterp.models.construct as construct
from ._cache import BUILTIN_MODELS, DEFAULT_MODEL, _builtin_folder, _check_gguf, _sha256, cache_dir, converted_folder
from .backends import capabilities, choose_backend, hooked_converts, in_hooked_registry
from .seeds import find_seed, match_seed_config

RANDOM_SUFFIX = ":random"


@dataclass
class _Resolved:
    """Where a spec's weights, tokenizer and config come from."""

    source: dict[str, Any]
    path: str  # local folder or hub name
    local: bool
    builtin: bool = False
    official_name: str | None = None
    prepend_bos: bool | None = None
    model_name: str | None = None
    registry_name: str | None = None
    seed_backend: str | None = None
    convertible: bool | None = None
    hf_cfg: dict[str, Any] = field(default_factory=dict)


def _folder_facts(folder: Path) -> tuple[dict[str, Any], bool, str | None]:
    """(HF config dict, HookedTransformer-convertible?, seed backend) of a local HF folder."""
    from transformers import AutoConfig

    from ._cache import offline_hf
    from .construct import _GEMMA3_BY_WIDTH

    try:
        with offline_hf():
            cfg = AutoConfig.from_pretrained(str(folder), local_files_only=True).to_dict()
    except Exception as e:
        raise ModelLoadError(f"{folder}: not a readable Hugging Face model folder ({type(e).__name__}: {e})") from None
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch == "Gemma3ForCausalLM":
        convertible = cfg.get("hidden_size") in _GEMMA3_BY_WIDTH
    else:
        convertible = hooked_converts(str(folder), cfg)
    seed = match_seed_config(cfg)
    seed_backend = None if seed is None else ("hooked" if in_hooked_registry(seed.hf_name) else "bridge")
    return cfg, convertible, seed_backend


def _unknown(name: str) -> ModelLoadError:
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

    from .seeds import SEED_MODELS

    return ModelLoadError(
        f"unknown model {name!r}: expected one of the built-in models ({', '.join(BUILTIN_MODELS)}), a path to a "
        f".gguf file or a Hugging Face model folder, a seed model ({', '.join(SEED_MODELS)}; needs the hub), "
        f"or a TransformerLens model name ({len(OFFICIAL_MODEL_NAMES)} known, e.g. "
        f"{', '.join(OFFICIAL_MODEL_NAMES[:3])}, ...)")


# TransformerLens reads these hub names' weights with torch.load(weights_only=False) (a pickle: it can run
# code) or turns trust_remote_code on by itself; medinterp asks for the caller's explicit consent first.
_PICKLE_PREFIXES = ("NeelNanda", "ArthurConmy", "Baidicoot")


def hub_risk(name: str) -> str | None:
    """Why loading the hub model ``name`` through TransformerLens could run code, or ``None``.

    Example:
        >>> hub_risk("NeelNanda/SoLU_1L_v9_old") is not None
        True
        >>> hub_risk("gpt2") is None
        True
    """
    from transformer_lens.loading_from_pretrained import NEED_REMOTE_CODE_MODELS

    if name.startswith(_PICKLE_PREFIXES):
        return "TransformerLens loads its weights with torch.load(weights_only=False), which unpickles (can run code)"
    if name.startswith(NEED_REMOTE_CODE_MODELS):
        return "TransformerLens turns on trust_remote_code for it (runs the model repository's Python code)"
    return None


def _resolve(spec: str, root: Path, trust_remote_code: bool = False) -> _Resolved:
    if spec in BUILTIN_MODELS:
        m = BUILTIN_MODELS[spec]
        folder, gguf_name, sha = _builtin_folder(m, root)
        gemma = m.name == "gemma-3-270m"
        return _Resolved(
            source={"kind": "builtin", "package": m.package, "gguf": gguf_name, "gguf_sha256": sha, "hf_name": m.hf_name},
            path=str(folder), local=True, builtin=True, official_name=m.hf_name if gemma else None,
            prepend_bos=None if gemma else False,  # SmolLM2's tokenizer adds no BOS
            model_name=m.hf_name.split("/")[-1], convertible=True)
    if spec.lower().endswith(".gguf"):
        gguf = Path(spec).expanduser()
        _check_gguf(gguf)
        sha = _sha256(gguf)
        folder = converted_folder(gguf, sha, root, gguf.name)
        cfg, conv, seed_backend = _folder_facts(folder)
        return _Resolved(source={"kind": "gguf", "gguf": gguf.name, "gguf_sha256": sha}, path=str(folder), local=True,
                         convertible=conv, seed_backend=seed_backend, hf_cfg=cfg)
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise ModelLoadError(f"{p}: expected a .gguf file or a Hugging Face model folder containing config.json")
        cfg, conv, seed_backend = _folder_facts(p)
        return _Resolved(source={"kind": "hf_folder", "folder": p.name}, path=str(p), local=True,
                         convertible=conv, seed_backend=seed_backend, hf_cfg=cfg)
    seed = find_seed(spec)
    name = seed.hf_name if seed is not None else spec
    if seed is None and not in_hooked_registry(name) and "/" not in name:
        raise _unknown(name)
    official = None
    if in_hooked_registry(name):
        from transformer_lens.loading_from_pretrained import get_official_model_name

        official = get_official_model_name(name)
    risk = hub_risk(official or name)
    if risk is not None and not trust_remote_code:
        raise ModelLoadError(f"model {name!r}: {risk}; pass trust_remote_code=True to load_model if you trust its "
                             f"source")
    return _Resolved(source={"kind": "hub", "name": name}, path=official or name, local=False,
                     official_name=official, registry_name=name)


def load_model(
    spec: str | os.PathLike = DEFAULT_MODEL,
    *,
    backend: str = "auto",
    device: str = "cpu",
    device_map: Any = None,
    max_memory: dict[Any, Any] | None = None,
    dtype: torch.dtype | str = torch.float32,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    cache: str | os.PathLike | None = None,
    verify: bool = True,
    seed: int = 0,
    trust_remote_code: bool = False,
    tokenizer: Any = None,
    lean: bool = True,
    chat_template: bool = False,
):
    """Load a model as a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.

    Args:
        spec: ``"gemma-3-270m"`` (default), ``"smollm2-135m"``, a ``.gguf`` path, a local HF folder, a
            seed model (``"qwen3-32b"``...; hub) or a TransformerLens model name. Append ``":random"`` for
            the random-init twin (same architecture and tokenizer, seeded init).
        backend: ``"auto"`` (hooked where TL's HookedTransformer registry has the architecture and size,
            else bridge), ``"hooked"`` or ``"bridge"``.
        device: torch device (ignored when ``device_map`` is given).
        device_map: Hugging Face device map (``"auto"``, ``"balanced"``, a dict); bridge only.
        max_memory: per-device budget for ``device_map`` (``{0: "70GiB", 1: "70GiB"}``).
        dtype: ``torch.float32`` (parity), ``torch.bfloat16`` or ``torch.float16`` (or their names).
        fold_ln, center_writing_weights, center_unembed: TL weight processing (off: raw HF numerics).
        cache: folder for converted GGUF models.
        verify: compare logits with plain transformers on one prompt (non-built-in models) and record it.
        seed: init seed of a ``:random`` twin.
        tokenizer: a ``:random`` twin only: use this tokenizer (the trained model's, ``model.tokenizer``)
            instead of loading the same files again (:func:`medinterp.models.twin.random_twin` passes it).
        chat_template: wrap every prompt in the tokenizer's chat template as the user's turn, with the
            generation prompt (:func:`medinterp.models.chat.use_chat_template`; recorded in ``medinterp_info``).
        lean: hooked backend, local safetensors folder: convert one piece (layer) at a time
            (:mod:`medinterp.models.lean`; peak host RAM ~ the model plus one layer; the same weights bit for
            bit). ``False``: TransformerLens's own path (a whole transformers model and a converted copy: ~3x).
            ``model.medinterp_info["loading"]`` records the path taken and why.
        trust_remote_code: allow a hub model whose loading unpickles weights (``torch.load`` with
            ``weights_only=False``) or runs the repository's Python code; refused without it.

    Returns:
        The model, in eval mode, with ``model.medinterp_info`` (spec, source, backend, capabilities,
        flags, verification).

    Raises:
        ModelLoadError: unknown spec, missing package, corrupt GGUF, unreadable folder, a backend that
            cannot wrap the architecture, a hub model that would run code without ``trust_remote_code=True``.
    """
    dtype = _dtype(dtype)
    flags = {"fold_ln": fold_ln, "center_writing_weights": center_writing_weights, "center_unembed": center_unembed}
    spec_str = str(spec)
    random_init = spec_str.endswith(RANDOM_SUFFIX)
    base = spec_str[: -len(RANDOM_SUFFIX)] if random_init else spec_str
    if not base.strip():
        raise ModelLoadError(f"load_model({spec_str!r}): expected a model spec"
                             + (" before ':random', e.g. 'gemma-3-270m:random'" if random_init else
                                " (see `medinterp models`), e.g. 'gemma-3-270m'"))
    t0 = time.time()
    r = _resolve(base, cache_dir(cache), trust_remote_code=trust_remote_code)
    chosen = choose_backend(backend, registry_name=r.registry_name, seed_backend=r.seed_backend,
                            convertible=r.convertible, device_map=device_map)
    if tokenizer is not None and not random_init:
        raise ModelLoadError(f"load_model({spec_str!r}): tokenizer= is for a ':random' twin only")
    if random_init:
        model = _random_twin(r, chosen, seed=seed, device=device, dtype=dtype, flags=flags,
                             trust_remote_code=trust_remote_code, tokenizer=tokenizer)
        verification: dict[str, Any] = {"checked": False, "reason": "random-init twin"}
        loading: dict[str, Any] = {"mode": "random_init"}
    else:
        model, verification, loading = _load_weights(r, chosen, lean=lean, device=device, device_map=device_map,
                                                     max_memory=max_memory, dtype=dtype, flags=flags, verify=verify,
                                                     trust_remote_code=trust_remote_code)
    if r.model_name:
        model.cfg.model_name = r.model_name  # not the neutral cache-folder name
    model.medinterp_info = _info(model, spec_str, r.source, flags, dtype, time.time() - t0,
                                 random_init=random_init, seed=seed, verification=verification)
    model.medinterp_info["loading"] = loading
    from medinterp.models.chat import finish_load  # BOS checked (one or none, never two); chat template applied

    return finish_load(model, chat_template=chat_template)


def _load_weights(r: _Resolved, chosen: str, *, lean: bool, device: str, device_map: Any, max_memory: Any,
                  dtype: torch.dtype, flags: dict[str, bool], verify: bool,
                  trust_remote_code: bool) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(model, verification, how it was loaded) of a trained model: streamed (hooked backend, local
    safetensors folder, ``lean``) or through a whole transformers model."""
    unverified = {"checked": False, "reason": "built-in model (parity checked by its tests)" if r.builtin
                  else "verify=False"}
    lean_reason = None
    if chosen == "hooked" and lean and r.local:
        import medinterp.models.lean as lean_mod

        model, tok, config, lean_reason = _lean_hooked(r, device=device, dtype=dtype, flags=flags)
        if model is not None:
            verification = unverified
            if verify and not r.builtin:
                ref = lean_mod.streamed_reference(r.path, config, dtype=dtype, device=device)
                verification = construct.verify_against_hf(model, ref, tok, dtype=dtype)
            return model, verification, {"mode": "streamed", "reason": "safetensors converted one piece at a time "
                                         "(host RAM: the model plus one layer)"}
    tok, hf = construct.load_hf(r.path, dtype=dtype, device_map=device_map if chosen == "bridge" else None,
                                max_memory=max_memory, local=r.local,
                                trust_remote_code=trust_remote_code and not r.local,
                                bos_tokenizer=chosen == "hooked")
    if chosen == "hooked":
        model = construct.hooked_from_hf(hf, tok, folder=r.path if r.local else None, official_name=r.official_name,
                                         device=device, dtype=dtype, flags=flags, prepend_bos=r.prepend_bos)
        how = {"mode": "full_conversion", "reason": (lean_reason or ("lean=False" if not lean else "hub model"))
               + ": TransformerLens converts a whole transformers model (host RAM ~3x the weights)"}
    else:
        model = construct.bridge_from_hf(hf, tok, name=r.path, device=device, dtype=dtype, flags=flags,
                                         prepend_bos=r.prepend_bos)
        how = {"mode": "hf_module", "reason": "the bridge wraps the model transformers' from_pretrained loads"
               + (" (device_map: placed shard by shard)" if device_map is not None else "")}
    verification = unverified
    if verify and not r.builtin:
        ref = hf if chosen == "hooked" else model.original_model
        verification = construct.verify_against_hf(model, ref, tok, dtype=dtype)
    del hf
    return model, verification, how


def _lean_hooked(r: _Resolved, *, device: str, dtype: torch.dtype,
                 flags: dict[str, bool]) -> tuple[Any, Any, Any, str | None]:
    """(model, tokenizer, HF config, None) by :func:`medinterp.models.lean.hooked_streamed`, or
    ``(None, None, None, why)`` where the folder cannot be streamed."""
    from transformers import AutoConfig

    import medinterp.models.lean as lean_mod
    from ._cache import offline_hf

    try:
        with offline_hf():
            config = AutoConfig.from_pretrained(r.path, local_files_only=True)
            tok = construct._tokenizer(r.path, True, local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"{r.path}: not a readable Hugging Face model folder ({type(e).__name__}: {e})") from None
    try:
        model = lean_mod.hooked_streamed(r.path, tok, config=config, official_name=r.official_name, device=device,
                                         dtype=dtype, flags=flags, prepend_bos=r.prepend_bos)
    except lean_mod.LeanUnavailable as e:
        return None, None, None, f"not streamed ({e})"
    return model, tok, config, None


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ModelLoadError(f"dtype must be one of {', '.join(names)}; got {dtype!r}")
    return names[dtype]


def _random_twin(r: _Resolved, backend: str, *, seed: int, device: str, dtype: torch.dtype,
                 flags: dict[str, bool], trust_remote_code: bool = False, tokenizer: Any = None) -> Any:
    from transformers import AutoConfig
    from transformer_lens import loading_from_pretrained as loading

    from ._cache import offline_hf

    kw: dict[str, Any] = {"local_files_only": True} if r.local else {}
    if trust_remote_code and not r.local:
        kw["trust_remote_code"] = True
    with offline_hf() if r.local else construct._null():
        tok = tokenizer if tokenizer is not None else construct._tokenizer(r.path, backend == "hooked", **kw)
        hf_config = AutoConfig.from_pretrained(r.path, **kw)
    if backend == "hooked":
        with offline_hf() if r.local else construct._null():
            name = r.official_name or r.path
            if r.official_name is None and (hf_config.architectures or [""])[0] == "Gemma3ForCausalLM":
                name = construct._GEMMA3_BY_WIDTH[hf_config.hidden_size]
            cfg = loading.get_pretrained_model_config(name, hf_cfg=hf_config.to_dict(), device=device, dtype=dtype,
                                                      default_prepend_bos=r.prepend_bos)
        return construct.random_hooked(cfg, tok, seed=seed, device=device, dtype=dtype)
    hf = construct.random_hf(hf_config, seed=seed, dtype=dtype)
    return construct.bridge_from_hf(hf, tok, name=r.path, device=device, dtype=dtype, flags=flags,
                                    prepend_bos=r.prepend_bos)


def _devices(model: Any) -> list[str]:
    hf = getattr(model, "original_model", None)
    dmap = getattr(hf, "hf_device_map", None) if hf is not None else None
    if dmap:
        return sorted({str(v) for v in dmap.values()})
    return sorted({str(p.device) for p in model.parameters()})


def _info(model: Any, spec: str, source: dict, flags: dict, dtype: torch.dtype, seconds: float, *,
          random_init: bool, seed: int, verification: dict[str, Any]) -> dict[str, Any]:
    cfg = model.cfg
    caps = capabilities(model)
    info = {
        "spec": spec,
        "model_name": cfg.model_name,
        "source": source,
        **flags,
        "fold_value_biases": bool(flags["fold_ln"]),
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(cfg.device),
        "devices": _devices(model),
        "backend": caps.backend,
        "capabilities": caps.to_dict(),
        "random_init": random_init,
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "n_heads": cfg.n_heads,
        "d_vocab": cfg.d_vocab,
        "architecture": getattr(cfg, "original_architecture", None) or getattr(cfg, "architecture", None),
        "default_prepend_bos": cfg.default_prepend_bos,
        "verify": verification,
        "load_seconds": round(seconds, 2),
    }
    if random_init:
        info["seed"] = seed
        info["init"] = "transformer_lens" if caps.backend == "hooked" else "transformers"
    return json.loads(json.dumps(info, default=str))


def model_info(model: Any) -> dict[str, Any]:
    """Provenance of a model: what :func:`load_model` recorded, or a best effort for any TL model."""
    info = getattr(model, "medinterp_info", None)
    if info is not None:
        return dict(info)
    cfg = model.cfg
    caps = capabilities(model)
    return {
        "spec": None,
        "model_name": getattr(cfg, "model_name", None),
        "source": {"kind": "unknown"},
        "backend": caps.backend,
        "capabilities": caps.to_dict(),
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "n_heads": cfg.n_heads,
        "d_vocab": cfg.d_vocab,
        "architecture": getattr(cfg, "original_architecture", None),
        "dtype": str(getattr(cfg, "dtype", "")).replace("torch.", ""),
        "normalization_type": getattr(cfg, "normalization_type", None),
    }
