"""Lean loading: a HookedTransformer built from a local safetensors folder one layer at a time.

TransformerLens's own path (``HookedTransformer.from_pretrained(hf_model=...)``) holds the whole Hugging
Face model, the converted state dict (``process_weights`` upcasts every tensor to float32 first, even with
no processing asked for) and the HookedTransformer at once: ~3x the weights in host RAM. Here:

1. the HookedTransformer is allocated empty on the target device (``init_weights=False``: untouched pages
   cost no RAM) and the Hugging Face model is a skeleton on the meta device (no weights);
2. one piece at a time (the unembedding and final norm, the embedding, then each decoder layer) the
   skeleton's tensors of that piece are read from the safetensors shards (plain file reads: a memory
   map would keep every page read resident) in the target dtype, TL's own converter (``get_pretrained_state_dict``) runs on a one-layer view of the skeleton,
   TL's own ``ProcessWeights.process_weights`` applies the requested folding to that piece, the result
   goes into the HookedTransformer, and the piece is freed.

Every processing step (fold_ln's final norm into the unembedding, centring, value-bias folding) is local
to a piece, so the weights are bit-identical to TL's path (tests/unit/test_lean_load.py checks logits and
every parameter). Peak host RAM is the HookedTransformer plus one piece (on a GPU: one piece).

The logits check against ``transformers`` (:func:`streamed_reference`) runs the skeleton with forward
hooks that load each module's weights just before it runs and free them after, so it costs no second copy.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from medinterp.errors import ModelLoadError

_INDEX = "model.safetensors.index.json"


class LeanUnavailable(ModelLoadError):
    """The folder cannot be streamed (the caller falls back to the full conversion and records why)."""


class Shards:
    """Tensor name -> safetensors file of a local HF folder (sharded with an index, or single files).

    Args:
        folder: the model folder.

    Raises:
        LeanUnavailable: no ``*.safetensors`` file, or an index naming a missing shard.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.file_of: dict[str, Path] = {}
        index = self.folder / _INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise LeanUnavailable(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
            for key, name in weight_map.items():
                path = self.folder / name
                if not path.is_file():
                    raise LeanUnavailable(f"{index} names {name}, which is missing")
                self.file_of[key] = path
        else:
            from safetensors import safe_open

            files = sorted(self.folder.glob("*.safetensors"))
            if not files:
                raise LeanUnavailable(f"{self.folder}: no *.safetensors weights")
            for path in files:
                with safe_open(str(path), framework="pt") as f:
                    for key in f.keys():
                        self.file_of[key] = path
        self._open: dict[Path, Any] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.file_of

    def _locate(self, key: str) -> tuple[Path, int, dict, torch.dtype | None]:
        """``(shard, data start, header entry, torch dtype or None if not a plain format)`` of one tensor."""
        path = self.file_of[key]
        if path not in self._open:
            self._open[path] = _header(path)
        start, header = self._open[path]
        meta = header[key]
        return path, start, meta, _DTYPES.get(meta["dtype"])

    def get(self, key: str, dtype: torch.dtype, device: str | torch.device) -> torch.Tensor:
        """One tensor, read on the CPU with plain file reads, then cast and moved (one tensor in flight).

        Plain reads, not ``safe_open``'s memory map: every page of a mapped shard that was read counts in
        the process's resident set until the map is closed, i.e. the whole checkpoint a second time."""
        path, start, meta, dt = self._locate(key)
        if dt is None:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                t = f.get_tensor(key)
        else:
            begin, end = meta["data_offsets"]
            t = torch.empty(end - begin, dtype=torch.uint8)
            with open(path, "rb") as f:
                f.seek(start + begin)
                if f.readinto(memoryview(t.numpy())) != end - begin:
                    raise ModelLoadError(f"{path}: truncated safetensors file (tensor {key})")
            t = t.view(dt).reshape(meta["shape"])
        if t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        return t.to(device)

    def rows(self, key: str, index: list[int] | range, dtype: torch.dtype,
             device: str | torch.device) -> torch.Tensor | None:
        """Rows ``index`` of a 2-D tensor (a range in one read), or ``None`` where the format is not plain."""
        path, start, meta, dt = self._locate(key)
        if dt is None or len(meta["shape"]) != 2:
            return None
        width = meta["shape"][1]
        row = width * torch.empty((), dtype=dt).element_size()
        runs = [(index.start, index.stop)] if isinstance(index, range) else [(i, i + 1) for i in index]
        t = torch.empty(sum(b - a for a, b in runs) * row, dtype=torch.uint8)
        view, at = memoryview(t.numpy()), 0
        with open(path, "rb") as f:
            for a, b in runs:
                f.seek(start + meta["data_offsets"][0] + a * row)
                n = (b - a) * row
                if f.readinto(view[at:at + n]) != n:
                    raise ModelLoadError(f"{path}: truncated safetensors file (tensor {key})")
                at += n
        t = t.view(dt).reshape(-1, width)
        return (t.to(dtype) if t.dtype != dtype else t).to(device)

    def close(self) -> None:
        """Forget the parsed headers."""
        self._open.clear()


_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def _header(path: Path) -> tuple[int, dict[str, Any]]:
    """(offset of the data, {tensor name: {dtype, shape, data_offsets}}) of a safetensors file."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{path}: not a safetensors file ({type(e).__name__})") from None
    return 8 + n, header


class Skeleton:
    """A Hugging Face causal LM on the meta device whose tensors are read from :class:`Shards` on demand.

    Args:
        config: the HF config (``AutoConfig.from_pretrained(folder)``).
        shards: where the tensors are.
        dtype, device: what each tensor is loaded as.

    Raises:
        LeanUnavailable: a parameter of the module has no tensor of its name in the folder (checkpoints
            whose names transformers rewrites on load, e.g. multimodal Gemma 3).
    """

    def __init__(self, config: Any, shards: Shards, *, dtype: torch.dtype, device: str | torch.device):
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        config = copy.deepcopy(config)
        config._attn_implementation = "eager"
        # Buffers (rotary frequencies, embedding scales) are real: they are computed, not stored.
        with init_empty_weights(include_buffers=False):
            self.hf = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")
        self.hf.tie_weights()  # from_config leaves a tied lm_head untied on the meta device; from_pretrained ties
        self.hf.eval()
        if str(device) != "cpu":
            for mod in self.hf.modules():
                for k, b in list(mod._buffers.items()):
                    if b is not None:
                        mod._buffers[k] = b.to(device)
        self.shards, self.dtype, self.device = shards, dtype, device
        params = dict(self.hf.named_parameters(remove_duplicate=False))
        self.meta = {n: (p.shape, p.dtype) for n, p in params.items()}
        groups: dict[int, list[str]] = {}
        for name, p in params.items():
            groups.setdefault(id(p), []).append(name)
        self.key_of: dict[str, str] = {}
        for names in groups.values():
            # Tied weights (lm_head = embed_tokens) are one parameter under several names; the
            # checkpoint stores it under one of them.
            src = next((n for n in names if n in shards), None)
            if src is None:
                raise LeanUnavailable(f"the checkpoint has no tensor named {names[0]!r} (its names differ from "
                                      f"{type(self.hf).__name__}'s parameters)")
            for n in names:
                self.key_of[n] = src
        self.layers_name = self._layers_name(config)
        self.n_layers = int(config.num_hidden_layers)

    def _layers_name(self, config: Any) -> str:
        n = getattr(config, "num_hidden_layers", None)
        for name, mod in self.hf.named_modules():
            if isinstance(mod, torch.nn.ModuleList) and len(mod) == n and name.endswith("layers"):
                return name
        raise LeanUnavailable(f"{type(self.hf).__name__}: no list of {n} decoder layers found")

    def _put(self, name: str, t: torch.Tensor) -> None:
        mod_name, _, attr = name.rpartition(".")
        mod = self.hf.get_submodule(mod_name)
        mod._parameters[attr] = torch.nn.Parameter(t, requires_grad=False)

    def load(self, names: list[str]) -> None:
        """Read these parameters (tied names share one tensor)."""
        got: dict[str, torch.Tensor] = {}
        for n in names:
            key = self.key_of[n]
            if key not in got:
                # The skeleton's dtype: from_config(dtype=...) keeps the modules transformers keeps in float32.
                got[key] = self.shards.get(key, self.meta[n][1], self.device)
            self._put(n, got[key])

    def free(self, names: list[str]) -> None:
        """Put these parameters back on the meta device (their memory is released)."""
        for n in names:
            shape, dtype = self.meta[n]
            self._put(n, torch.empty(shape, dtype=dtype, device="meta"))

    def names(self, prefix: str = "", *, exclude: str | None = None) -> list[str]:
        """Parameter names under ``prefix`` (not under ``exclude``)."""
        return [n for n in self.meta if n.startswith(prefix) and not (exclude and n.startswith(exclude))]

    def layer_names(self, layer: int) -> list[str]:
        return self.names(f"{self.layers_name}.{layer}.")

    def end_names(self) -> tuple[list[str], list[str]]:
        """(input-embedding parameters, the other non-layer ones: final norm, unembedding, ...)."""
        emb = self.hf.get_input_embeddings()
        emb_names = {f"{n}" for n, m in self.hf.named_modules() if m is emb}
        rest = self.names(exclude=f"{self.layers_name}.")
        embed = [n for n in rest if n.rpartition(".")[0] in emb_names]
        return embed, [n for n in rest if n not in embed]

    def only_layers(self, keep: list[int]) -> "_Swap":
        """Context: the decoder layer list holds only ``keep`` (TL's converter then sees a short model)."""
        return _Swap(self, keep)


class _Swap:
    def __init__(self, sk: Skeleton, keep: list[int]):
        parent_name, _, self.attr = sk.layers_name.rpartition(".")
        self.parent = sk.hf.get_submodule(parent_name)
        self.full = getattr(self.parent, self.attr)
        self.keep = keep

    def __enter__(self) -> None:
        setattr(self.parent, self.attr, torch.nn.ModuleList([self.full[i] for i in self.keep]))

    def __exit__(self, *a: Any) -> None:
        setattr(self.parent, self.attr, self.full)


def unavailable(folder: str | Path, config: Any) -> str | None:
    """Why ``folder`` cannot be streamed, or ``None`` (a quick check; :func:`hooked_streamed` may still
    find a reason once the skeleton is built)."""
    if getattr(config, "quantization_config", None):
        return "quantized checkpoint (transformers dequantizes it on load)"
    if not (Path(folder) / _INDEX).is_file() and not any(Path(folder).glob("*.safetensors")):
        return "no safetensors weights"
    return None


def _adjusted_flags(cfg: Any, flags: dict[str, bool]) -> dict[str, bool]:
    """The processing TL's ``from_pretrained`` / ``load_and_process_state_dict`` would actually apply."""
    from transformer_lens.utilities import softcap_enabled
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    out = {"fold_ln": flags["fold_ln"], "center_writing_weights": flags["center_writing_weights"],
           "center_unembed": flags["center_unembed"], "fold_value_biases": flags["fold_ln"]}
    if cfg.positional_embedding_type == "shortformer":
        out.update(fold_ln=False, center_unembed=False, center_writing_weights=False)
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        out.update(fold_ln=False, center_writing_weights=False)
    if out["center_unembed"] and softcap_enabled(cfg.output_logits_soft_cap):
        out["center_unembed"] = False
    if out["fold_ln"] and cfg.normalization_type not in ("LN", "LNPre", "RMS", "RMSPre"):
        out["fold_ln"] = False
    return out


def _pieces(sk: Skeleton) -> Iterator[tuple[list[str], list[int], Callable[[str], bool]]]:
    """(parameters to read, layers the converter sees, which converted keys to keep) for each piece.

    The unembedding comes first: a tied checkpoint makes the HookedTransformer hold it twice (W_E and
    W_U), and its transient copies then coincide with the least else allocated."""
    embed, rest = sk.end_names()
    yield rest, [], lambda k: not k.startswith("blocks.") and not k.startswith("embed.")
    yield embed, [], lambda k: k.startswith("embed.")
    for layer in range(sk.n_layers):
        yield sk.layer_names(layer), [layer], lambda k: k.startswith("blocks.0.")


def hooked_streamed(folder: str, tok: Any, *, config: Any, official_name: str | None, device: str,
                    dtype: torch.dtype, flags: dict[str, bool], prepend_bos: bool | None,
                    tl_cfg: Any = None) -> Any:
    """A HookedTransformer of a local safetensors folder, converted piece by piece (see the module doc).

    Args:
        folder: the HF folder (config.json and safetensors shards).
        tok: its tokenizer.
        config: its HF config.
        official_name: TL registry name where TL keys the architecture by name (Gemma 3), else ``None``.
        device, dtype: where and in what precision (the model is built there; nothing is moved later).
        flags: fold_ln / center_writing_weights / center_unembed (fold_value_biases follows fold_ln).
        prepend_bos: the model's default (``None``: TL's).
        tl_cfg: a ready HookedTransformerConfig (tiny test models), bypassing TL's config conversion.

    Returns:
        The model in eval mode, weights in :func:`medinterp.models.construct.fast_weight_layout`.

    Raises:
        LeanUnavailable: the folder cannot be streamed (the caller falls back to the full conversion).
        ModelLoadError: TL cannot convert the architecture.
    """
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.weight_processing import ProcessWeights

    from ._cache import offline_hf, tl_readable
    from .construct import _GEMMA3_BY_WIDTH, fast_weight_layout

    why = unavailable(folder, config)
    if why:
        raise LeanUnavailable(why)
    arch = (config.architectures or ["?"])[0]
    if official_name is None and tl_cfg is None and arch == "Gemma3ForCausalLM":
        official_name = _GEMMA3_BY_WIDTH.get(config.hidden_size)
    name = official_name or folder
    config = copy.deepcopy(config)
    config.dtype = dtype  # as a model loaded with from_pretrained(dtype=...) reports it
    hf_cfg = config.to_dict()
    with offline_hf(), tl_readable(name) if official_name is None else contextlib.nullcontext(name) as name:
        if tl_cfg is None:
            try:
                tl_cfg = loading.get_pretrained_model_config(name, hf_cfg=hf_cfg, fold_ln=flags["fold_ln"],
                                                             device=device, dtype=dtype,
                                                             default_prepend_bos=prepend_bos)
                if official_name is None:
                    tl_cfg.model_name = Path(folder).name
            except Exception as e:
                raise ModelLoadError(f"{folder}: architecture {arch!r} is not supported by TransformerLens "
                                     f"HookedTransformer ({type(e).__name__}: {e}); try backend='bridge'") from None
        cfg = copy.copy(tl_cfg)
        todo = _adjusted_flags(cfg, flags)
        if todo["fold_ln"] and cfg.normalization_type in ("LN", "RMS"):
            # TL swaps in the Pre norms when it folds; building them so from the start is the same model.
            cfg.normalization_type += "Pre"
        cfg.init_weights = False  # every parameter is written below; an init would touch all the pages
        cfg.device, cfg.dtype = device, dtype
        shards = Shards(folder)
        sk = Skeleton(config, shards, dtype=dtype, device=device)
        with torch.device(device):
            model = HookedTransformer(cfg, tok, move_to_device=False)
        params = dict(model.named_parameters())
        written: set[str] = set()
        try:
            for names, layers, keep in _pieces(sk):
                sk.load(names)
                piece_cfg = copy.copy(cfg)
                piece_cfg.n_layers = len(layers)
                with sk.only_layers(layers):
                    state = loading.get_pretrained_state_dict(name, piece_cfg, sk.hf, dtype=dtype)
                    if any(todo.values()):
                        state = ProcessWeights.process_weights(state, piece_cfg, **todo)
                sk.free(names)
                for key in [k for k in state if keep(k)]:
                    t = state.pop(key)
                    target = key if not layers else f"blocks.{layers[0]}." + key[len("blocks.0."):]
                    if target not in params:
                        continue  # TL's load_state_dict(strict=False) drops keys the model lacks too
                    if t.device.type == "meta":
                        raise LeanUnavailable(f"TL's converter computes {key} from another part of the model")
                    _assign(params[target], t, target)
                    written.add(target)
                del state
                _trim()
        finally:
            shards.close()
    missing = sorted(set(params) - written)
    if missing:
        raise LeanUnavailable(f"TL's converter gave no value for {', '.join(missing[:3])}")
    model = fast_weight_layout(model).eval()
    _trim()
    return model


def _trim() -> None:
    """Give the pieces' freed read buffers back to the OS (glibc keeps freed small chunks in its heap)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _assign(p: torch.nn.Parameter, t: torch.Tensor, name: str) -> None:
    """Put ``t`` into ``p``: take its storage where it already has ``p``'s dtype, device and a plain
    layout (no copy, and ``p``'s untouched allocation is released), else copy (TL's load_state_dict
    rounding: ``copy_`` casts)."""
    if tuple(t.shape) != tuple(p.shape):
        raise ModelLoadError(f"lean load: {name} has shape {tuple(t.shape)}; the model expects {tuple(p.shape)}")
    from .construct import _WEIGHT_MEMORY_ORDER

    order = _WEIGHT_MEMORY_ORDER.get(name.rsplit(".", 1)[-1])
    with torch.no_grad():
        if order is not None and name.startswith("blocks.") and p.dim() == len(order):
            # Straight into the memory order fast_weight_layout wants (it then copies nothing): one copy
            # instead of two, and no freed copy left behind in the allocator's heap.
            inv = [order.index(i) for i in range(len(order))]
            buf = torch.empty([p.shape[i] for i in order], dtype=p.dtype, device=p.device).permute(*inv)
            buf.copy_(t)
            p.data = buf
        elif t.dtype == p.dtype and t.device == p.device and t.is_contiguous():
            p.data = t
        else:
            p.data.copy_(t)


def streamed_reference(folder: str, config: Any, *, dtype: torch.dtype,
                       device: str | torch.device = "cpu") -> torch.nn.Module:
    """The plain ``transformers`` model of ``folder`` that reads each module's weights just before the
    module runs and frees them after (for the logits check; no second copy of the weights).

    Raises:
        LeanUnavailable: as :class:`Skeleton`.
    """
    sk = Skeleton(config, Shards(folder), dtype=dtype, device=device)
    owned: dict[str, list[str]] = {}
    for n in sk.meta:
        owned.setdefault(n.rpartition(".")[0], []).append(n)
    emb, head = sk.hf.get_input_embeddings(), sk.hf.get_output_embeddings()
    for mod_name, names in owned.items():
        mod = sk.hf.get_submodule(mod_name)
        key = sk.key_of[names[0]]
        if mod is emb and names == [f"{mod_name}.weight"] and isinstance(mod, torch.nn.Embedding):
            mod.register_forward_pre_hook(lambda m, a, key=key, n=names[0]: _rows_in(sk, m, a, key, n))
            mod.register_forward_hook(lambda m, a, o, names=names: _rows_out(sk, m, names))
        elif mod is head and names == [f"{mod_name}.weight"] and isinstance(mod, torch.nn.Linear):
            # The unembedding is the largest matrix: logits are computed a block of vocabulary rows at a time.
            parent, _, attr = mod_name.rpartition(".")
            setattr(sk.hf.get_submodule(parent) if parent else sk.hf, attr,
                    _StreamedHead(sk, key, sk.meta[names[0]]))
        else:
            mod.register_forward_pre_hook(lambda m, a, names=names: sk.load(names))
            mod.register_forward_hook(lambda m, a, o, names=names: sk.free(names))
    sk.hf.register_forward_hook(lambda m, a, o: _trim())  # the freed read buffers back to the OS
    sk.hf.medinterp_device = str(device)
    return sk.hf


def _rows_in(sk: Skeleton, mod: torch.nn.Embedding, args: tuple, key: str, name: str) -> tuple:
    """Embedding pre-hook: read only the rows of the ids being embedded, and renumber the ids."""
    ids = args[0]
    uniq, inverse = torch.unique(ids, return_inverse=True)
    rows = sk.shards.rows(key, uniq.tolist(), sk.meta[name][1], sk.device)
    if rows is None:
        sk.load([name])
        return args
    sk._put(name, rows)
    mod._medinterp_padding, mod.padding_idx = mod.padding_idx, None  # the renumbered table has no pad row
    return (inverse.reshape(ids.shape), *args[1:])


def _rows_out(sk: Skeleton, mod: torch.nn.Embedding, names: list[str]) -> None:
    mod.padding_idx = getattr(mod, "_medinterp_padding", mod.padding_idx)
    sk.free(names)


class _StreamedHead(torch.nn.Module):
    """``x @ W.T`` over the vocabulary, ``block`` rows of ``W`` read at a time (no whole unembedding)."""

    def __init__(self, sk: Skeleton, key: str, meta: tuple, block: int = 8192):
        super().__init__()
        self.sk, self.key, self.shape, self.dtype, self.block = sk, key, meta[0], meta[1], block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.shape[0]
        out = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
        for a in range(0, n, self.block):
            w = self.sk.shards.rows(self.key, range(a, min(n, a + self.block)), self.dtype, self.sk.device)
            if w is None:
                w = self.sk.shards.get(self.key, self.dtype, self.sk.device)[a:a + self.block]
            out[..., a:a + w.shape[0]] = torch.nn.functional.linear(x, w)
        return out


def write_random_checkpoint(config: Any, folder: str | Path, *, dtype: torch.dtype = torch.bfloat16,
                            shard_bytes: int = 1 << 30, seed: int = 0, std: float = 0.02) -> int:
    """Write a random checkpoint of ``config`` as sharded safetensors (with the index transformers
    writes), one shard in memory at a time: a full-size seed architecture with no download and no
    whole model in RAM. Weights ~ N(0, std), norm weights 1 (a working, if meaningless, model).

    Args:
        config: an HF config (e.g. :func:`medinterp.models.tiny.hf_config` or a seed's, scaled).
        folder: where (created; ``config.json`` is written too).
        dtype: stored precision.
        shard_bytes: largest shard.
        seed: generator seed.
        std: weight scale.

    Returns:
        Bytes of weights written.
    """
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    with init_empty_weights():
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    hf.tie_weights()
    gen = torch.Generator().manual_seed(seed)
    names = list(dict(hf.named_parameters()).items())  # tied weights once, under their first name
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    for name, p in names:
        n = p.numel() * torch.empty((), dtype=dtype).element_size()
        if sizes[-1] and sizes[-1] + n > shard_bytes:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = (p.shape, p.dtype if not p.dtype.is_floating_point else dtype)
        sizes[-1] += n
    weight_map: dict[str, str] = {}
    total = 0
    for i, spec in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, (shape, dt) in spec.items():
            if "norm" in name:  # RMSNorm scales: 1 keeps activations at a sane size through the layers
                t = torch.ones(shape, dtype=dt)
            else:
                t = (torch.randn(shape, generator=gen) * std).to(dt)
            tensors[name] = t
            weight_map[name] = fname
            total += t.numel() * t.element_size()
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
        del tensors
    (folder / _INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return total
