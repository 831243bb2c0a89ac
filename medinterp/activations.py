"""Batched, hook-filtered, position-reducing activation collection, and its on-disk format.

Only the requested hooks run a caching function (``fwd_hooks`` on exactly those names), each hook keeps
only the requested token positions (reduced inside the hook, so memory is O(hooks × prompts × d_model)),
and the forward pass stops after the last block that is needed (``stop_at_layer``), so the
unembedding — most of a forward for Gemma's 262k-token vocabulary — never runs.

Example:
    >>> from medinterp.testing import tiny_model
    >>> model = tiny_model(n_layers=2)
    >>> acts = collect_activations(model, ["A man with chest pain", "A woman with fever"], progress=False)
    >>> acts.values.shape       # [hooks, prompts, d_model]
    (2, 2, 64)
    >>> acts.layer(1).shape
    (2, 64)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from medinterp.sites import RESID_SITES
from medinterp.sites import hook_name as site_hook_name
from medinterp.errors import MedinterpError, clip
from medinterp.models.backends import capabilities
from medinterp.models.chat import wrap_prompts
from medinterp.results import Result, make_provenance
from medinterp.precision import reduction_dtype
from medinterp.shared_prefix import (padded_tokens, plan_tokens, prefix_plan, run_shared_prefix_batch,
                                     supports_shared_prefix)

SHORT_SITES = RESID_SITES  # the [batch, pos, d_model] sites of the one site vocabulary
POSITION_MODES = ("last", "span_mean", "span_last")
SHARED_PREFIX_MAX_RATIO = 0.85  # use the shared-prefix path when it runs <= this share of the plain path's tokens


@dataclasses.dataclass
class ActivationSet(Result):
    """Activations of many prompts at selected hooks, one vector per (hook, prompt).

    Attributes:
        values: ``[n_hooks, n_prompts, d_model]`` float32.
        hook_names: TransformerLens hook name of each row of ``values``.
        layers: block index of each hook (−1 for the embedding output).
        sites: short site name of each hook (``resid_post``, ..., ``embed``).
        prompts: the prompt texts.
        labels: label name → one value per prompt.
        positions: the position mode (``"last"``, ``"span_mean"``, ``"span_last"``) or ``"explicit"``.
        token_positions: for each prompt, the token indices (in the unpadded prompt, BOS = 0) that were
            reduced into its vector.
        provenance: model, parameters, versions.
    """

    kind = "activations"
    values: np.ndarray = None  # type: ignore[assignment]
    hook_names: list = dataclasses.field(default_factory=list)
    layers: list = dataclasses.field(default_factory=list)
    sites: list = dataclasses.field(default_factory=list)
    prompts: list = dataclasses.field(default_factory=list)
    labels: dict = dataclasses.field(default_factory=dict)
    positions: str = "last"
    token_positions: list = dataclasses.field(default_factory=list)
    provenance: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def layer(self, layer: int, site: str = "resid_post") -> Float[np.ndarray, "prompts d_model"]:
        """The ``[n_prompts, d_model]`` activations at one block (−1 or ``site="embed"``: embedding output)."""
        if layer == -1:
            site = "embed"
        for i, (l, s) in enumerate(zip(self.layers, self.sites)):
            if l == layer and s == site:
                return self.values[i]
        have = sorted({(s, l) for s, l in zip(self.sites, self.layers)})
        raise MedinterpError(f"no activations for site {site!r} layer {layer}; this set has {have}")

    def stack(self, site: str = "resid_post", include_embed: bool = True) -> tuple[list[int], np.ndarray]:
        """``(layers, values[layers, prompts, d_model])`` for one site in layer order (embedding first)."""
        idx = [i for i, s in enumerate(self.sites) if s == site or (include_embed and s == "embed")]
        idx.sort(key=lambda i: self.layers[i])
        if not idx:
            raise MedinterpError(f"no activations for site {site!r}; sites here: {sorted(set(self.sites))}")
        return [self.layers[i] for i in idx], self.values[idx]

    def to_torch(self) -> Float[Tensor, "hooks prompts d_model"]:
        return torch.from_numpy(self.values)


# --------------------------------------------------------------------------- inputs
def _prompt_texts(prompts: Sequence[Any]) -> tuple[list[str], list[tuple[int, int] | None], dict[str, list]]:
    texts: list[str] = []
    spans: list[tuple[int, int] | None] = []
    labels: dict[str, list] = {}
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            text, span, lab = p, None, None
        elif hasattr(p, "text"):
            text, span, lab = p.text, getattr(p, "span", None), getattr(p, "labels", None)
        else:
            raise MedinterpError(f"prompt {i}: expected a string or a ConceptPrompt, got {type(p).__name__}")
        if not isinstance(text, str) or not text.strip():
            raise MedinterpError(f"prompt {i}: empty prompt text")
        texts.append(text)
        spans.append(tuple(span) if span is not None else None)
        if lab:
            for k, v in lab.items():
                labels.setdefault(k, [None] * i).append(v)
        for k in labels:
            if len(labels[k]) < i + 1:
                labels[k].append(None)
    return texts, spans, labels


def resolve_hooks(model: Any, sites: Sequence[str], layers: Sequence[int] | None, include_embed: bool) -> list[tuple[str, int, str]]:
    """Turn site names into ``(hook_name, layer, site)`` triples, validated against the model."""
    n = model.cfg.n_layers
    layer_list = list(range(n)) if layers is None else list(layers)
    for l in layer_list:
        if not -n <= l < n:
            raise MedinterpError(f"layer {l} is outside the model's blocks 0..{n - 1}")
    layer_list = [l % n for l in layer_list]
    out: list[tuple[str, int, str]] = []
    if include_embed:
        out.append(("blocks.0.hook_resid_pre", -1, "embed"))
    if isinstance(sites, str):
        sites = [sites]
    for site in sites:
        if site in SHORT_SITES:
            for l in layer_list:
                out.append((site_hook_name(site, l), l, site))
        elif site in model.hook_dict:
            parts = site.split(".")
            layer = int(parts[1]) if parts[0] == "blocks" else -1
            out.append((site, layer, site))
        else:
            raise MedinterpError(
                f"unknown site {site!r}: expected one of {', '.join(SHORT_SITES)} or a hook name of this model "
                f"(e.g. blocks.0.hook_resid_post)"
            )
    seen: set[str] = set()
    uniq = []
    for h in out:
        if h[0] not in seen:
            seen.add(h[0])
            uniq.append(h)
    return uniq


def _char_span_to_tokens(model: Any, text: str, span: tuple[int, int], index: int) -> list[int]:
    """Token indices (BOS included at 0 when the model prepends it) covering the char span of ``text``."""
    tok = model.tokenizer
    start, end = span
    if not (0 <= start < end <= len(text)):
        raise MedinterpError(f"prompt {index}: concept span {span} is outside the text (length {len(text)})")
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    offsets = enc["offset_mapping"]
    bos = 1 if model.cfg.default_prepend_bos else 0
    idx = [i + bos for i, (a, b) in enumerate(offsets) if b > start and a < end]
    if not idx:
        raise MedinterpError(f"prompt {index}: no token covers the concept span {span} ({text[start:end]!r})")
    return idx


def token_positions(
    model: Any, texts: list[str], spans: list[tuple[int, int] | None], positions: Any
) -> tuple[list[list[int]], list[int], str]:
    """For each prompt: the token indices to reduce, and its token length (BOS included)."""
    lengths = [int(model.to_tokens(t, truncate=False).shape[-1]) for t in texts]  # TL truncates at n_ctx by default
    n_ctx = getattr(model.cfg, "n_ctx", None)
    over = [i for i, n in enumerate(lengths) if n_ctx is not None and n > n_ctx]
    if over:
        i = over[0]
        raise MedinterpError(f"prompt {i} ({clip(texts[i])}): {lengths[i]} tokens exceed the model's context of "
                             f"{n_ctx} ({len(over)} prompt(s) too long); shorten the item or template")
    if isinstance(positions, str):
        if positions not in POSITION_MODES:
            raise MedinterpError(f"unknown positions {positions!r}: expected one of {POSITION_MODES} or a list of ints")
        if positions == "last":
            return [[n - 1] for n in lengths], lengths, positions
        out = []
        for i, (t, s) in enumerate(zip(texts, spans)):
            if s is None:
                raise MedinterpError(f"prompt {i}: positions={positions!r} needs a concept span (pass ConceptPrompts)")
            idx = _char_span_to_tokens(model, t, s, i)
            out.append(idx if positions == "span_mean" else [idx[-1]])
        return out, lengths, positions
    pos = list(positions)
    if len(pos) != len(texts):
        raise MedinterpError(f"positions: got {len(pos)} entries for {len(texts)} prompts")
    out = []
    for i, (p, n) in enumerate(zip(pos, lengths)):
        p = int(p)
        if not -n <= p < n:
            raise MedinterpError(f"prompt {i}: position {p} is outside the prompt ({n} tokens incl. BOS)")
        out.append([p % n])
    return out, lengths, "explicit"


# --------------------------------------------------------------------------- collection
@torch.inference_mode()
def collect_activations(
    model: Any,
    prompts: Sequence[Any],
    *,
    sites: Sequence[str] = ("resid_post",),
    layers: Sequence[int] | None = None,
    positions: str | Sequence[int] = "last",
    include_embed: bool = False,
    batch_size: int = 32,
    labels: dict[str, Sequence] | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> ActivationSet:
    """Run prompts in left-padded batches and keep one vector per (hook, prompt).

    Args:
        model: a HookedTransformer.
        prompts: strings or ``ConceptPrompt`` objects (these bring labels and concept spans).
        sites: short site names (``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``)
            expanded over ``layers``, or full hook names.
        layers: blocks to read (default all).
        positions: ``"last"`` (last real token), ``"span_mean"`` / ``"span_last"`` (the concept's
            tokens), or one token index per prompt.
        include_embed: also keep the embedding output (``blocks.0.hook_resid_pre``) as layer −1.
        batch_size: prompts per forward pass.
        labels: extra labels, name → one value per prompt (merged with ConceptPrompt labels).
        out_dir: if given, finished batches are written there and a rerun skips them (resumable);
            the complete set is saved there at the end.
        progress: show a progress bar.

    Returns:
        An :class:`ActivationSet`.
    """
    if prompts is None or len(prompts) == 0:
        raise MedinterpError("collect_activations: the prompt list is empty")
    if batch_size < 1:
        raise MedinterpError(f"batch_size must be ≥ 1, got {batch_size}")
    texts, spans, prompt_labels = _prompt_texts(prompts)
    texts, spans = wrap_prompts(model, texts, spans)  # chat template (if set) and the BOS check
    for k, v in (labels or {}).items():
        if len(v) != len(texts):
            raise MedinterpError(f"label {k!r}: {len(v)} values for {len(texts)} prompts")
        prompt_labels[k] = list(v)
    hooks = resolve_hooks(model, sites, layers, include_embed)
    pos_lists, lengths, pos_mode = token_positions(model, texts, spans, positions)
    chunk_dir = Path(out_dir) / "chunks" if out_dir is not None else None
    if chunk_dir is not None:
        chunk_dir.mkdir(parents=True, exist_ok=True)
    key = _run_key(model, texts, hooks, pos_lists)
    (values,), padding = _run_batches(model, texts, hooks, [pos_lists], lengths, batch_size, progress, chunk_dir, key)
    n = len(texts)

    result = ActivationSet(
        values=values.numpy(),
        hook_names=[h for h, _, _ in hooks],
        layers=[l for _, l, _ in hooks],
        sites=[s for _, _, s in hooks],
        prompts=texts,
        labels=prompt_labels,
        positions=pos_mode,
        token_positions=pos_lists,
        provenance=make_provenance(
            model,
            technique="activations",
            sites=list(sites) if not isinstance(sites, str) else [sites],
            layers=None if layers is None else list(layers),
            positions=pos_mode,
            include_embed=include_embed,
            batch_size=batch_size,
            padding_side=padding,
            n_prompts=n,
        ),
    )
    if out_dir is not None:
        result.save(out_dir)
    return result


def left_padded_kwargs(lengths: list[int], width: int, device: Any) -> dict[str, Tensor]:
    """``attention_mask`` and ``position_ids`` of a left-padded batch for the bridge backend (Hugging
    Face's forward numbers positions from 0 at the first column, pads included; HookedTransformer
    offsets them by the mask, as here, so both backends give the same numbers)."""
    mask = (torch.arange(width)[None, :] >= (width - torch.tensor(lengths))[:, None]).long().to(device)
    return {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}


def _span_reduce(weights: Tensor, act: Tensor) -> Tensor:
    """``[sets, batch, d]`` weighted means of ``act`` ``[batch, pos, d]`` over positions, float32 on the CPU.

    The mean runs in float32 at least: a bf16 einsum rounds each span mean to 8 mantissa bits (~0.4%),
    before any centring, PCA or probe sees it.
    """
    dt = reduction_dtype(act.dtype)
    return torch.einsum("sbp,bpd->sbd", weights.to(device=act.device, dtype=dt), act.to(dt)).float().cpu()


def _run_batches(model: Any, texts: list[str], hooks: list, pos_sets: list[list[list[int]]], lengths: list[int],
                 batch_size: int, progress: bool, chunk_dir: Path | None = None,
                 key: str = "") -> tuple[list[Tensor], str]:
    """:func:`_run_batches_in_order` on the prompts sorted by token count (stable), results in input order,
    or, on a HookedTransformer where it runs <= ``SHARED_PREFIX_MAX_RATIO`` of the tokens, the shared-prefix
    path (:mod:`medinterp.shared_prefix`). Returns the outputs and the path taken (``"left"`` or
    ``"shared_prefix"``, recorded in provenance as ``padding_side``).

    Batches of similar lengths carry little padding: on the concept sets (templates of different
    lengths, items of 1-8 tokens) about a fifth of a length-unsorted batch was padding."""
    outside = any(not name.startswith("blocks.") for name, _, _ in hooks)
    if chunk_dir is None and not outside and supports_shared_prefix(model):
        toks = model.to_tokens(texts, padding_side="right", truncate=False)
        tokens = [toks[i, : lengths[i]].tolist() for i in range(len(texts))]
        plan = prefix_plan(tokens, [min(min(ps[i]) for ps in pos_sets) for i in range(len(texts))], batch_size)
        # worth it only where the prefixes outweigh the extra padding of template-sorted batches
        # (progression's items come early: 1.06x the plain path's tokens on Gemma 3 270M; the other
        # families 0.54-0.73x)
        if plan_tokens(plan, lengths) <= SHARED_PREFIX_MAX_RATIO * padded_tokens(lengths, batch_size):
            return _run_shared_prefix(model, tokens, hooks, pos_sets, lengths, plan, progress), "shared_prefix"
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    if order == list(range(len(texts))):
        return _run_batches_in_order(model, texts, hooks, pos_sets, lengths, batch_size, progress, chunk_dir, key), "left"
    outs = _run_batches_in_order(model, [texts[i] for i in order], hooks,
                                 [[ps[i] for i in order] for ps in pos_sets], [lengths[i] for i in order],
                                 batch_size, progress, chunk_dir, key + "-by-length")
    inv = torch.tensor(order)
    res = []
    for o in outs:
        r = torch.empty_like(o)
        r[:, inv] = o
        res.append(r)
    return res, "left"


def _run_shared_prefix(model: Any, tokens: list[list[int]], hooks: list, pos_sets: list[list[list[int]]],
                       lengths: list[int], plan: list, progress: bool) -> list[Tensor]:
    """As :func:`_run_batches_in_order`, with each batch's shared prefix computed once
    (:mod:`medinterp.shared_prefix`); results in input order."""
    from tqdm.auto import tqdm

    stop_at = max(max(l for _, l, _ in hooks), 0) + 1
    n, d = len(tokens), model.cfg.d_model
    outs = [torch.zeros(len(hooks), n, d, dtype=torch.float32) for _ in pos_sets]
    prefix_cache: dict = {}
    for batch in tqdm(plan, desc="activations", unit="batch", disable=not progress):
        rows, P = batch.rows, batch.prefix_len
        width = max(lengths[i] for i in rows) - P
        weights = torch.zeros(len(pos_sets), len(rows), width)
        for s_, pos_lists in enumerate(pos_sets):
            for j, i in enumerate(rows):
                idx = torch.tensor(pos_lists[i]) - P
                weights[s_, j, idx] = 1.0 / len(idx)
        index = torch.tensor(rows)

        def make_hook(row: int):
            def hook(act: Tensor, hook: Any) -> None:
                red = _span_reduce(weights, act)
                for s_ in range(len(pos_sets)):
                    outs[s_][row, index] = red[s_]

            return hook

        run_shared_prefix_batch(model, tokens, batch, [(name, make_hook(r)) for r, (name, _, _) in enumerate(hooks)],
                                stop_at, prefix_cache)
    return outs


def _run_batches_in_order(model: Any, texts: list[str], hooks: list, pos_sets: list[list[list[int]]],
                          lengths: list[int], batch_size: int, progress: bool, chunk_dir: Path | None = None,
                          key: str = "") -> list[Tensor]:
    """Left-padded batched forwards; for each position set, one ``[hooks, n, d]`` tensor of reduced vectors.

    The forward stops after the last block read (``stop_at_layer``, also when that is the last block:
    the residual is returned before ``ln_final``), so the unembedding never runs. Chunks are cached in
    ``chunk_dir`` only for a single position set.
    """
    from tqdm.auto import tqdm

    # a hook outside the blocks (ln_final, unembed) needs the whole forward
    outside = any(not name.startswith("blocks.") for name, _, _ in hooks)
    stop_at = None if outside else max(max(l for _, l, _ in hooks), 0) + 1
    n, d = len(texts), model.cfg.d_model
    outs = [torch.zeros(len(hooks), n, d, dtype=torch.float32) for _ in pos_sets]
    cache = chunk_dir is not None and len(pos_sets) == 1
    for b0 in tqdm(range(0, n, batch_size), desc="activations", unit="batch", disable=not progress):
        b1 = min(n, b0 + batch_size)
        if cache and _load_chunk(chunk_dir, key, b0, b1, outs[0]):
            continue
        batch_texts = texts[b0:b1]
        width = max(lengths[b0:b1])
        # Reduction weights [sets, batch, width]: left padding shifts prompt i by (width - len_i).
        weights = torch.zeros(len(pos_sets), b1 - b0, width)
        for s_, pos_lists in enumerate(pos_sets):
            for j, i in enumerate(range(b0, b1)):
                idx = torch.tensor(pos_lists[i]) + (width - lengths[i])
                weights[s_, j, idx] = 1.0 / len(idx)

        def make_hook(row: int):
            def hook(act: Tensor, hook: Any) -> None:
                red = _span_reduce(weights, act)
                for s_ in range(len(pos_sets)):
                    outs[s_][row, b0:b1] = red[s_]

            return hook

        fwd_hooks = [(name, make_hook(r)) for r, (name, _, _) in enumerate(hooks)]
        tokens = model.to_tokens(batch_texts, padding_side="left")
        if tokens.shape[-1] != width:
            raise MedinterpError("internal: batch tokenization differs from per-prompt tokenization")
        if capabilities(model).string_input:
            model.run_with_hooks(batch_texts, fwd_hooks=fwd_hooks, stop_at_layer=stop_at, padding_side="left")
        else:  # the bridge: token tensors only, with the mask and the positions a left-padded batch needs
            model.run_with_hooks(tokens, fwd_hooks=fwd_hooks, stop_at_layer=stop_at,
                                 **left_padded_kwargs(lengths[b0:b1], width, tokens.device))
        if cache:
            _save_chunk(chunk_dir, key, b0, b1, outs[0])
    return outs


@torch.inference_mode()
def collect_reads(
    model: Any,
    prompts: Sequence[Any],
    reads: Sequence[str],
    *,
    sites: Sequence[str] = ("resid_post",),
    layers: Sequence[int] | None = None,
    include_embed: bool = False,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, ActivationSet]:
    """:func:`collect_activations` for several position modes from one forward pass.

    Args:
        reads: position modes (``"last"``, ``"span_mean"``, ``"span_last"``), e.g. ``("span_mean", "last")``.
        Others: as :func:`collect_activations`.

    Returns:
        ``{mode: ActivationSet}``, one per read, each as :func:`collect_activations` would give it.

    Example:
        >>> from medinterp.testing import tiny_model
        >>> r = collect_reads(tiny_model(n_layers=2), ["A man with chest pain"], ["last"], progress=False)
        >>> r["last"].values.shape
        (2, 1, 64)
    """
    if prompts is None or len(prompts) == 0:
        raise MedinterpError("collect_reads: the prompt list is empty")
    if not reads or any(not isinstance(r, str) for r in reads):
        raise MedinterpError(f"collect_reads: reads must be position mode names {POSITION_MODES}; got {reads!r}")
    if batch_size < 1:
        raise MedinterpError(f"batch_size must be ≥ 1, got {batch_size}")
    texts, spans, prompt_labels = _prompt_texts(prompts)
    texts, spans = wrap_prompts(model, texts, spans)  # chat template (if set) and the BOS check
    hooks = resolve_hooks(model, sites, layers, include_embed)
    pos = [token_positions(model, texts, spans, r) for r in reads]
    lengths = pos[0][1]
    values, padding = _run_batches(model, texts, hooks, [p[0] for p in pos], lengths, batch_size, progress)
    out = {}
    for r, (pos_lists, _, mode), v in zip(reads, pos, values):
        out[r] = ActivationSet(
            values=v.numpy(), hook_names=[h for h, _, _ in hooks], layers=[l for _, l, _ in hooks],
            sites=[s for _, _, s in hooks], prompts=texts, labels=dict(prompt_labels), positions=mode,
            token_positions=pos_lists,
            provenance=make_provenance(model, technique="activations", sites=list(sites) if not isinstance(sites, str)
                                       else [sites], layers=None if layers is None else list(layers), positions=mode,
                                       include_embed=include_embed, batch_size=batch_size, padding_side=padding,
                                       n_prompts=len(texts)),
        )
    return out


def _run_key(model: Any, texts: list[str], hooks: list, pos_lists: list) -> str:
    import hashlib

    h = hashlib.sha256()
    h.update(json.dumps([getattr(model.cfg, "model_name", ""), texts, [x[0] for x in hooks], pos_lists]).encode())
    return h.hexdigest()[:16]


def _chunk_path(chunk_dir: Path, key: str, b0: int, b1: int) -> Path:
    return chunk_dir / f"{key}_{b0:07d}_{b1:07d}.safetensors"


def _save_chunk(chunk_dir: Path, key: str, b0: int, b1: int, values: Tensor) -> None:
    from safetensors.torch import save_file

    path = _chunk_path(chunk_dir, key, b0, b1)
    tmp = path.with_suffix(".tmp")
    save_file({"values": values[:, b0:b1].contiguous()}, str(tmp))
    os.replace(tmp, path)


def _load_chunk(chunk_dir: Path, key: str, b0: int, b1: int, values: Tensor) -> bool:
    from safetensors.torch import load_file

    path = _chunk_path(chunk_dir, key, b0, b1)
    if not path.is_file():
        return False
    try:
        values[:, b0:b1] = load_file(str(path))["values"]
    except Exception:
        return False  # a torn chunk is recomputed
    return True
