"""Layer lesioning (METHOD.md §3): remove or ablate one block at a time and measure the damage.

Lesion modes (see :mod:`medinterp.hooks`):

* ``skip``       block ``l`` becomes the identity: ``resid_post = resid_pre`` (the paper's lesion);
* ``attn_zero``  / ``mlp_zero``: the block's attention / MLP output (what it adds to the residual
  stream, after Gemma's post-norms) is set to zero;
* ``attn_mean``  / ``mlp_mean``: that output is replaced by its mean over a reference set of prompts
  (default: the lesioned prompts themselves). ``mean_over="position"`` (default) uses the mean at the
  same absolute position (position 0 is the BOS token, so the BOS row is left as it is; positions
  longer than every reference prompt get the mean over all non-BOS positions); ``"overall"`` one
  vector, the mean over every non-BOS position; ``"last"`` one vector, the mean at the reference
  prompts' last tokens.

Metrics, per prompt × mode × layer, against the intact model (no judge needed):

* ``kl``          KL(intact ‖ lesioned) of the next-token distribution at the *read position* (nats);
* ``logp_drop``   log p_intact(target) − log p_lesioned(target), summed over the target's tokens
  (teacher-forced, nats; positive = the lesion made the target less likely);
* ``top1_agree``  1 if the arg-max next token at the read position is unchanged, else 0.

For a subset of prompts (``n_continuations``, default 8, evenly spread over the set) and the modes in
``continuation_modes`` (default ``skip``), a greedy continuation of ``max_new_tokens`` (default 20)
tokens is generated from the read position (batched, left-padded, with TransformerLens's KV cache)
and compared with the intact one: ``first_diff`` (index of the first differing token; equal to
``max_new_tokens`` when identical), ``overlap`` (fraction of positions with the same token) and
``bag_overlap`` (multiset overlap of the two token lists / length, insensitive to shifts). An optional
``judge(prompt, intact_text, lesioned_text) -> 1..10`` (1 = unchanged, 10 = gibberish, the paper's
rubric) scores each continuation.

Targets and the read position (DESIGN.md "Targets"):

* a prompt with an ``answer``: the context is the prompt, the target the answer (a space is put in
  front when neither side has one); next-token metrics read at the last prompt token, i.e. the
  distribution that predicts the answer's first token;
* a ``ConceptPrompt`` without an answer: the context is the text *before* the item and the target is
  the item's own tokens; next-token metrics read at the last token before the item (the prompt
  "ending before its item"), and continuations start there too;
* a plain string: next-token metrics read at its last token and the target is the string's own tokens
  after the first (its LM log-likelihood).

Speed (``method="prefix"``, the default): prompts are batched with right padding (every real token
keeps its position and never sees padding, so batching changes nothing at real positions), the intact
model runs once with ``run_with_cache`` keeping only ``blocks.{l}.hook_resid_pre``, and a lesion at
block ``l`` restarts from that cached residual with ``model(resid, start_at_layer=l)`` (``l + 1`` for
``skip``: skipping block ``l`` *is* starting block ``l + 1`` from ``resid_pre[l]``), stopping before
``ln_final``; the final norm and the unembedding are applied only at the read and target positions
(Gemma's unembedding is 640 × 262144). ``method="full"`` runs the whole model with the lesion hooks and
full logits, for checking and benchmarking (``benchmarks/lesion_speed.py``).

``start_at_layer`` and rotary / sliding-window models (Gemma 3): TransformerLens skips
``input_to_embed`` when ``start_at_layer`` is given, so no attention mask is derived from tokens; the
rotary position of each token then comes from the ``attention_mask`` argument (``cumsum - 1``) if one
is passed, else from its index. With *left* padding a missing mask shifts every rotary position and
lets real tokens attend to padding, so the restarted run silently differs from the full one. We
therefore right-pad (index = true position, padding only after real tokens) and pass the same explicit
mask to the intact, restarted and full runs. Gemma's sliding window (512) is computed from raw
indices, which equal true positions under right padding. Greedy continuations need left padding (one
new token per row per step); there the mask is passed on every step and TransformerLens's KV cache
keeps it, and mean-ablation hooks get explicit position ids.

Example:
    >>> from medinterp.testing import tiny_model
    >>> res = lesion(tiny_model(n_layers=3), [("The patient takes", " aspirin"), ("Chest pain suggests", " angina")],
    ...              modes=["skip", "mlp_zero"], n_continuations=1, max_new_tokens=4, n_boot=50, progress=False)
    >>> res.layer_curve().shape
    (3,)
    >>> res.metrics.shape   # prompts × modes × layers × (kl, logp_drop, top1_agree)
    (2, 2, 3, 3)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int

from medinterp.errors import MedinterpError
from medinterp.prompt_inputs import parse_prompt_inputs
from medinterp.hooks import (
    LESION_MODES,
    FwdHooks,
    MeanActivation,
    compute_means,
    left_pad,
    lesion_hooks,
    pad_token_id,
    right_pad,
    sublayer_hook_name,
)
from medinterp.results import Result, bootstrap_ci, escape, make_provenance

METRICS: tuple[str, ...] = ("kl", "logp_drop", "top1_agree")
CONT_METRICS: tuple[str, ...] = ("first_diff", "overlap", "bag_overlap")
METHODS: tuple[str, ...] = ("prefix", "full")
MEAN_OVER: tuple[str, ...] = ("position", "overall", "last")
METRIC_TITLES = {
    "kl": "KL(intact ‖ lesioned), nats",
    "logp_drop": "drop in log p(target), nats",
    "top1_agree": "top-1 agreement",
    "first_diff": "first differing token of the greedy continuation",
    "overlap": "continuation positions unchanged (fraction)",
    "bag_overlap": "continuation token overlap (fraction)",
    "judge": "judge score (1 = unchanged .. 10 = gibberish)",
}


# ============================================================================ items
@dataclasses.dataclass(frozen=True)
class LesionItem:
    """One prompt's tokens, where next-token metrics read, and which tokens are the target.

    Attributes:
        text: the prompt as given.
        tokens: ``[T]`` context tokens followed by the target tokens (when the target follows the context).
        read_pos: position whose next-token distribution is compared (KL, top-1); continuations start
            after ``tokens[: read_pos + 1]``.
        target_start: index of the first target token; tokens ``target_start..T-1`` are scored.
        target: the target as scored (text).
    """

    text: str
    tokens: Int[torch.Tensor, "T"]
    read_pos: int
    target_start: int
    target: str

    @property
    def predict_positions(self) -> list[int]:
        """Positions whose logits predict the target tokens."""
        return list(range(self.target_start - 1, int(self.tokens.shape[0]) - 1))

    @property
    def context(self) -> Int[torch.Tensor, "n"]:
        return self.tokens[: self.read_pos + 1]


def _tokens(model: Any, text: str, bos: bool) -> torch.Tensor:
    if text == "":
        if bos and model.cfg.default_prepend_bos and model.tokenizer is not None and model.tokenizer.bos_token_id is not None:
            return torch.tensor([model.tokenizer.bos_token_id], dtype=torch.long)
        return torch.zeros(0, dtype=torch.long)
    return model.to_tokens(text, prepend_bos=bos, move_to_device=False)[0].cpu()


def item_with_target(model: Any, text: str, target: str, *, where: str = "prompt", original: str | None = None) -> LesionItem:
    """Context ``text`` (with the model's BOS rule) followed by ``target`` (no BOS).

    A space is put in front of the target when neither ``text`` ends nor ``target`` starts with
    whitespace (``"The drug is" + "aspirin"`` scores ``" aspirin"``), as sentencepiece tokenizers give
    a different token to a word with and without its leading space.
    """
    if not isinstance(target, str) or target.strip() == "":
        raise MedinterpError(f"{where}: the target answer is empty; expected a non-empty string")
    if text and not text[-1].isspace() and not target[0].isspace():
        target = " " + target
    ctx = _tokens(model, text, bos=True)
    tgt = _tokens(model, target, bos=False)
    if tgt.shape[0] == 0:
        raise MedinterpError(f"{where}: target {target!r} tokenizes to no tokens")
    if ctx.shape[0] == 0:
        raise MedinterpError(
            f"{where}: nothing precedes the target {target!r} (empty context and no BOS token); give the prompt some context"
        )
    tokens = torch.cat([ctx, tgt])
    _check_len(model, tokens, where)
    return LesionItem(original if original is not None else text, tokens, int(ctx.shape[0]) - 1, int(ctx.shape[0]), target)


def _check_len(model: Any, tokens: torch.Tensor, where: str) -> None:
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and tokens.shape[0] > n_ctx:
        raise MedinterpError(f"{where}: {tokens.shape[0]} tokens exceed the model's context of {n_ctx}")


def item_from_span(model: Any, text: str, span: Sequence[int], *, where: str = "prompt") -> LesionItem:
    """The item's own tokens given the text before them (DESIGN.md "Targets")."""
    try:
        start, end = int(span[0]), int(span[1])
    except (TypeError, ValueError, IndexError):
        raise MedinterpError(f"{where}: span {span!r} is not a (start, end) pair of character offsets") from None
    if not (0 <= start < end <= len(text)):
        raise MedinterpError(f"{where}: span ({start}, {end}) is outside the text of length {len(text)}")
    prefix = text[:start]
    stripped = prefix.rstrip()
    item = prefix[len(stripped):] + text[start:end]
    return item_with_target(model, stripped, item, where=where, original=text)


def item_from_text(model: Any, text: str, *, where: str = "prompt") -> LesionItem:
    """A plain string: read at its last token; target = its own tokens after the first."""
    toks = _tokens(model, text, bos=True)
    if toks.shape[0] < 2:
        raise MedinterpError(f"{where} ({text!r}): needs at least 2 tokens to score its own text")
    _check_len(model, toks, where)
    return LesionItem(text, toks, int(toks.shape[0]) - 1, 1, text)


def items_from_inputs(model: Any, inputs: Any) -> tuple[list[LesionItem], dict[str, list], str]:
    """Turn what :func:`lesion` accepts into items, per-prompt labels and a concept-set name.

    Accepted: a concept-set name (``"drugs"``), a ``ConceptSet`` (anything with ``.prompts()``), a
    mapping ``{concept name: any of these}`` (adds the label ``concept``), a list of concept-set names,
    or a list of ``ConceptPrompt`` (``.text``, ``.answer``, ``.span``, ``.labels``), ``(prompt, answer)``
    pairs, or plain strings.
    """
    if isinstance(inputs, Mapping):
        return _merge({str(k): v for k, v in inputs.items()}, model)
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, str) for x in inputs) and _all_set_names(inputs):
        return _merge({x: x for x in inputs}, model)
    if isinstance(inputs, str):
        inputs = _load_concepts(inputs)
    return parse_prompt_inputs(
        inputs,
        technique="lesion",
        from_text=lambda text, where: item_from_text(model, text, where=where),
        from_answer=lambda text, answer, where: item_with_target(model, text, answer, where=where),
        from_span=lambda text, span, where: item_from_span(model, text, span, where=where),
    )


def _all_set_names(xs: Sequence[str]) -> bool:
    try:
        from medinterp.concepts import list_concepts
    except ImportError:
        return False
    try:
        known = {d["name"] if isinstance(d, Mapping) else str(d) for d in list_concepts()}
    except Exception:
        return False
    return all(x in known for x in xs)


def _load_concepts(name: str):
    try:
        from medinterp.concepts import load_concepts
    except ImportError as e:
        raise MedinterpError(f"lesion: concept set {name!r} given by name, but the concept library is unavailable ({e})") from None
    return load_concepts(name)


def _merge(sets: dict[str, Any], model: Any) -> tuple[list[LesionItem], dict[str, list], str]:
    items: list[LesionItem] = []
    rows: list[dict] = []
    for name, spec in sets.items():
        its, labs, _ = items_from_inputs(model, spec)
        items += its
        for i in range(len(its)):
            r = {k: v[i] for k, v in labs.items()}
            r["concept"] = name
            rows.append(r)
    keys = sorted({k for r in rows for k in r})
    labels = {k: [r.get(k) for r in rows] for k in keys}
    return items, labels, "+".join(sets)


# ============================================================================ batches and readout
@dataclasses.dataclass
class _Batch:
    """A right-padded batch and the flat list of (row, position) pairs whose logits are read."""

    index: list[int]  # positions of these items in the full list
    tokens: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T]
    rows: torch.Tensor  # [R] batch row of each read position
    cols: torch.Tensor  # [R] position
    read_idx: torch.Tensor  # [B] index into the R read rows of each item's read position
    tgt_idx: torch.Tensor  # [N] index into the R rows of every target-predicting position
    tgt_ids: torch.Tensor  # [N] the target token there
    tgt_owner: torch.Tensor  # [N] batch row it belongs to


def make_batch(items: Sequence[LesionItem], index: Sequence[int], pad_id: int, device: Any) -> _Batch:
    """Right-pad ``items`` and list the positions whose logits the metrics need."""
    tokens, mask, _ = right_pad([it.tokens for it in items], pad_id=pad_id)
    rows, cols, read_idx, tgt_idx, tgt_ids, owner = [], [], [], [], [], []
    for b, it in enumerate(items):
        where: dict[int, int] = {}
        for p in [it.read_pos, *it.predict_positions]:
            if p not in where:
                where[p] = len(rows)
                rows.append(b)
                cols.append(p)
        read_idx.append(where[it.read_pos])
        for p in it.predict_positions:
            tgt_idx.append(where[p])
            tgt_ids.append(int(it.tokens[p + 1]))
            owner.append(b)
    lt = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return _Batch(list(index), tokens.to(device), mask.to(device), lt(rows), lt(cols), lt(read_idx), lt(tgt_idx), lt(tgt_ids), lt(owner))


def unembed(model: Any, x: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_vocab"]:
    """``ln_final`` (if any), unembedding and the logit soft-cap (if any), at the given residuals only."""
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    logits = model.unembed(x)
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    if cap is not None and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


def _from_logprobs(logp: torch.Tensor, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs at each item's read position ``[B, V]``, log p(target) ``[B]``) from the R read rows."""
    B = batch.tokens.shape[0]
    tl = logp[batch.tgt_idx, batch.tgt_ids].double()
    tgt = torch.zeros(B, dtype=torch.float64, device=logp.device).index_add_(0, batch.tgt_owner, tl)
    return logp[batch.read_idx], tgt


@torch.no_grad()
def readout_resid(model: Any, resid: Float[torch.Tensor, "B T d"], batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Metrics inputs from the residual after the last block: unembed only the positions read."""
    logits = unembed(model, resid[batch.rows, batch.cols])
    return _from_logprobs(torch.log_softmax(logits.float(), dim=-1), batch)


@torch.no_grad()
def readout_logits(logits: Float[torch.Tensor, "B T V"], batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Metrics inputs from full logits (the ``method="full"`` path)."""
    return _from_logprobs(torch.log_softmax(logits[batch.rows, batch.cols].float(), dim=-1), batch)


@torch.no_grad()
def compare(
    intact: tuple[torch.Tensor, torch.Tensor], lesioned: tuple[torch.Tensor, torch.Tensor]
) -> Float[np.ndarray, "B 3"]:
    """Per item ``(kl, logp_drop, top1_agree)`` of a lesioned readout against the intact one."""
    lp_i, t_i = intact
    lp_l, t_l = lesioned
    a, b = lp_i.double(), lp_l.double()
    kl = (a.exp() * (a - b)).sum(-1)
    agree = (lp_i.argmax(-1) == lp_l.argmax(-1)).double()
    return torch.stack([kl, t_i - t_l, agree], dim=-1).cpu().numpy()


# ============================================================================ forward passes
def _resid_pre_names(layers: Iterable[int]) -> set[str]:
    return {f"blocks.{l}.hook_resid_pre" for l in layers}


@torch.no_grad()
def intact_run(model: Any, batch: _Batch, layers: Sequence[int], method: str = "prefix"):
    """The intact model on a batch: ``(readout, cache of resid_pre at the lesion layers or None)``."""
    if method == "full":
        logits = model(batch.tokens, attention_mask=batch.mask, return_type="logits")
        return readout_logits(logits, batch), None
    names = _resid_pre_names(layers)
    resid, cache = model.run_with_cache(
        batch.tokens, attention_mask=batch.mask, names_filter=lambda n: n in names, stop_at_layer=model.cfg.n_layers
    )
    return readout_resid(model, resid, batch), cache


@torch.no_grad()
def lesioned_resid(
    model: Any,
    batch: _Batch,
    layer: int,
    mode: str,
    *,
    cache: Any = None,
    means: dict[str, MeanActivation] | None = None,
    mean_over: str = "position",
    method: str = "prefix",
) -> Float[torch.Tensor, "B T d_model"]:
    """The residual stream after the last block (before ``ln_final``) with one lesion applied.

    ``method="prefix"`` restarts from ``cache["blocks.{layer}.hook_resid_pre"]`` (from
    :func:`intact_run`); ``method="full"`` runs the whole model with the lesion hooks.
    """
    n = model.cfg.n_layers
    if method == "full":
        hooks = lesion_hooks(layer, mode, means=means, how=mean_over)
        return model.run_with_hooks(batch.tokens, attention_mask=batch.mask, stop_at_layer=n, fwd_hooks=hooks)
    if cache is None:
        raise MedinterpError("lesioned_resid(method='prefix') needs the cache from intact_run")
    x = cache[f"blocks.{layer}.hook_resid_pre"]
    if mode == "skip":
        # Skipping block `layer` is starting block `layer + 1` from resid_pre[layer]; past the last
        # block the loop is empty and x goes straight to ln_final.
        return model(x, start_at_layer=layer + 1, stop_at_layer=n, attention_mask=batch.mask)
    hooks = lesion_hooks(layer, mode, means=means, how=mean_over)
    return model.run_with_hooks(x, start_at_layer=layer, stop_at_layer=n, attention_mask=batch.mask, fwd_hooks=hooks)


@torch.no_grad()
def lesioned_run(
    model: Any,
    batch: _Batch,
    layer: int,
    mode: str,
    *,
    cache: Any = None,
    means: dict[str, MeanActivation] | None = None,
    mean_over: str = "position",
    method: str = "prefix",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One lesion on one batch, returning its readout (see :func:`compare`).

    ``method="prefix"``: :func:`lesioned_resid` from the cached residual, then the unembedding at the
    read positions only. ``method="full"``: the whole model with the lesion hooks and full logits.
    """
    if method == "full":
        hooks = lesion_hooks(layer, mode, means=means, how=mean_over)
        logits = model.run_with_hooks(batch.tokens, attention_mask=batch.mask, return_type="logits", fwd_hooks=hooks)
        return readout_logits(logits, batch)
    resid = lesioned_resid(model, batch, layer, mode, cache=cache, means=means, mean_over=mean_over, method=method)
    return readout_resid(model, resid, batch)


# ============================================================================ greedy continuations
@torch.no_grad()
def greedy_continuations(
    model: Any,
    contexts: Sequence[Int[torch.Tensor, "t"]],
    max_new_tokens: int = 20,
    hooks_fn: Callable[[torch.Tensor], FwdHooks] | None = None,
    *,
    use_cache: bool = True,
) -> Int[torch.Tensor, "batch max_new_tokens"]:
    """Greedy continuations of a batch of token contexts (left-padded, one KV cache), under hooks.

    Args:
        model: a HookedTransformer.
        contexts: 1-D token tensors (BOS included where the model uses one).
        max_new_tokens: fixed length; generation does not stop at EOS (so lengths compare).
        hooks_fn: maps the absolute position ids ``[batch, pos]`` of the tokens a forward call
            processes to the hooks to apply (e.g. a lesion); None = intact model.
        use_cache: reuse keys/values between steps (``False`` recomputes the whole sequence each step,
            for checking).

    Returns:
        ``[batch, max_new_tokens]`` token ids.
    """
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    dev = model.cfg.device
    n = model.cfg.n_layers
    tokens, mask, pos = left_pad(list(contexts), pad_id=pad_token_id(model))
    tokens, mask, pos = tokens.to(dev), mask.to(dev), pos.to(dev)
    B = tokens.shape[0]
    hooks = (lambda p: hooks_fn(p) if hooks_fn is not None else [])  # noqa: E731
    out = torch.zeros((B, max_new_tokens), dtype=torch.long, device=dev)
    if use_cache:
        kv = TransformerLensKeyValueCache.init_cache(model.cfg, dev, B)
        resid = model.run_with_hooks(tokens, attention_mask=mask, past_kv_cache=kv, stop_at_layer=n, fwd_hooks=hooks(pos))
    else:
        resid = model.run_with_hooks(tokens, attention_mask=mask, stop_at_layer=n, fwd_hooks=hooks(pos))
    cur = pos[:, -1:]
    for step in range(max_new_tokens):
        nxt = unembed(model, resid[:, -1]).argmax(-1)
        out[:, step] = nxt
        if step == max_new_tokens - 1:
            break
        cur = cur + 1
        one = torch.ones((B, 1), dtype=mask.dtype, device=dev)
        if use_cache:
            resid = model.run_with_hooks(nxt[:, None], attention_mask=one, past_kv_cache=kv, stop_at_layer=n, fwd_hooks=hooks(cur))
        else:
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            mask = torch.cat([mask, one], dim=1)
            pos = torch.cat([pos, cur], dim=1)
            resid = model.run_with_hooks(tokens, attention_mask=mask, stop_at_layer=n, fwd_hooks=hooks(pos))
    return out


def continuation_metrics(intact: Int[np.ndarray, "L"], lesioned: Int[np.ndarray, "L"]) -> tuple[float, float, float]:
    """``(first_diff, overlap, bag_overlap)`` of two equal-length token sequences.

    Example:
        >>> continuation_metrics(np.array([1, 2, 3, 4]), np.array([1, 2, 4, 3]))
        (2.0, 0.5, 1.0)
    """
    from collections import Counter

    a, b = np.asarray(intact), np.asarray(lesioned)
    L = len(a)
    diff = np.nonzero(a != b)[0]
    first = float(diff[0]) if len(diff) else float(L)
    overlap = float((a == b).mean()) if L else 1.0
    bag = float(sum((Counter(a.tolist()) & Counter(b.tolist())).values()) / L) if L else 1.0
    return first, overlap, bag


def _decode(model: Any, toks: Sequence[int]) -> str:
    try:
        return str(model.tokenizer.decode(list(map(int, toks))))
    except Exception:  # no tokenizer: show ids
        return " ".join(map(str, toks))


# ============================================================================ main
def lesion(
    model: Any,
    concepts_or_prompts: Any,
    *,
    modes: Sequence[str] = LESION_MODES,
    layers: Sequence[int] | None = None,
    reference: Any = None,
    mean_over: str = "position",
    max_prompts: int | None = None,
    batch_size: int = 16,
    n_continuations: int = 8,
    max_new_tokens: int = 20,
    continuation_modes: Sequence[str] = ("skip",),
    judge: Callable[[str, str, str], float] | None = None,
    method: str = "prefix",
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    progress: bool = True,
) -> "LesionResult":
    """Lesion each block (and sub-layer) of ``model`` in turn; judge-free damage metrics per layer.

    Args:
        model: a HookedTransformer (left unchanged: hooks are removed after every call).
        concepts_or_prompts: a concept-set name, a ``ConceptSet``, ``{name: set}`` for several concepts
            (per-concept curves), or a list of ``ConceptPrompt``, ``(prompt, answer)`` pairs or strings.
        modes: lesions to run, from ``skip, attn_zero, attn_mean, mlp_zero, mlp_mean``.
        layers: blocks to lesion (default all).
        reference: prompts (strings / anything ``concepts_or_prompts`` accepts) whose mean sub-layer
            output the ``*_mean`` modes substitute; default the lesioned prompts themselves.
        mean_over: ``"position"`` (default), ``"overall"`` or ``"last"`` (see the module docstring).
        max_prompts: use at most this many prompts (a seeded random subset, kept in order).
        batch_size: prompts per forward pass.
        n_continuations: prompts (evenly spread) that get greedy continuations; 0 turns them off.
        max_new_tokens: length of every continuation.
        continuation_modes: the modes whose lesions are also scored by continuation.
        judge: optional ``judge(prompt, intact_text, lesioned_text) -> score in [1, 10]``.
        method: ``"prefix"`` (restart from the cached residual, default) or ``"full"``.
        n_boot, ci, seed: bootstrap of the aggregated table (and the seed of the prompt subset).
        progress: tqdm bars.

    Returns:
        A :class:`LesionResult`.

    Example:
        >>> import medinterp as mi                                       # doctest: +SKIP
        >>> res = mi.lesion(mi.load_model(), "drugs", modes=["skip"])    # doctest: +SKIP
        >>> res.top_layers(3)                                            # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    modes = list(modes)
    bad = [m for m in modes if m not in LESION_MODES]
    if bad or not modes:
        raise MedinterpError(f"lesion: modes {bad or modes}; expected a non-empty subset of {list(LESION_MODES)}")
    cmodes = [m for m in continuation_modes if m in modes] if n_continuations > 0 else []
    bad = [m for m in continuation_modes if m not in LESION_MODES]
    if bad:
        raise MedinterpError(f"lesion: continuation_modes {bad}; expected a subset of {list(LESION_MODES)}")
    if method not in METHODS:
        raise MedinterpError(f"lesion: method={method!r}; expected one of {list(METHODS)}")
    if mean_over not in MEAN_OVER:
        raise MedinterpError(f"lesion: mean_over={mean_over!r}; expected one of {list(MEAN_OVER)}")
    if batch_size < 1 or max_new_tokens < 1 or n_continuations < 0 or n_boot < 1:
        raise MedinterpError(
            f"lesion: batch_size={batch_size}, max_new_tokens={max_new_tokens}, n_continuations={n_continuations}, "
            f"n_boot={n_boot}; expected positive numbers (n_continuations may be 0)"
        )
    if judge is not None and not callable(judge):
        raise MedinterpError(f"lesion: judge must be callable(prompt, intact_text, lesioned_text), got {type(judge).__name__}")
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad or not layers:
        raise MedinterpError(f"lesion: layers {bad or layers}; the model has blocks 0..{n_layers - 1}")

    items, labels, set_name = items_from_inputs(model, concepts_or_prompts)
    if max_prompts is not None:
        if max_prompts < 1:
            raise MedinterpError(f"lesion: max_prompts={max_prompts}; expected a positive number")
        if len(items) > max_prompts:
            keep = np.sort(np.random.default_rng(seed).choice(len(items), max_prompts, replace=False))
            items = [items[i] for i in keep]
            labels = {k: [v[i] for i in keep] for k, v in labels.items()}
    n_prompts = len(items)
    dev = model.cfg.device

    # ---- reference means for the *_mean modes
    means: dict[str, MeanActivation] | None = None
    mean_subs = sorted({m.split("_")[0] for m in modes if m.endswith("_mean")})
    ref_desc = None
    if mean_subs:
        if reference is None:
            ref_tokens = [it.tokens for it in items]
            ref_desc = f"the {n_prompts} lesioned prompts (context + target tokens)"
        else:
            ref_tokens = _reference_tokens(model, reference)
            ref_desc = f"{len(ref_tokens)} reference prompts"
        means = compute_means(model, ref_tokens, layers=layers, sublayers=mean_subs, batch_size=batch_size)

    # ---- per-prompt metrics, batched (sorted by length to limit padding)
    order = sorted(range(n_prompts), key=lambda i: -int(items[i].tokens.shape[0]))
    metrics = np.full((n_prompts, len(modes), len(layers), len(METRICS)), np.nan)
    intact_logp = np.zeros(n_prompts)
    intact_top1 = np.zeros(n_prompts, dtype=np.int64)
    pad = pad_token_id(model)
    t_intact = t_lesion = 0.0
    n_batches = (n_prompts + batch_size - 1) // batch_size
    bar = tqdm(total=n_batches * len(modes) * len(layers), desc="lesion", disable=not progress)
    for s in range(0, n_prompts, batch_size):
        idx = order[s : s + batch_size]
        batch = make_batch([items[i] for i in idx], idx, pad, dev)
        t0 = time.perf_counter()
        intact, cache = intact_run(model, batch, layers, method)
        t_intact += time.perf_counter() - t0
        intact_logp[idx] = intact[1].cpu().numpy()
        intact_top1[idx] = intact[0].argmax(-1).cpu().numpy()
        t0 = time.perf_counter()
        for mi_, mode in enumerate(modes):
            for li, l in enumerate(layers):
                out = lesioned_run(model, batch, l, mode, cache=cache, means=means, mean_over=mean_over, method=method)
                metrics[idx, mi_, li] = compare(intact, out)
                bar.update(1)
        t_lesion += time.perf_counter() - t0
        del cache
    bar.close()

    # ---- greedy continuations on a subset
    cont = _continuations(
        model, items, layers, cmodes, n_continuations, max_new_tokens, means, mean_over, judge, progress
    )
    n_tokens = np.array([len(it.predict_positions) for it in items])
    params = dict(
        concept_set=set_name, n_prompts=n_prompts, modes=modes, layers=layers, mean_over=mean_over,
        reference=ref_desc, max_prompts=max_prompts, batch_size=batch_size, n_continuations=n_continuations,
        max_new_tokens=max_new_tokens, continuation_modes=cmodes, method=method, n_boot=n_boot, ci=ci, seed=seed,
        judge=None if judge is None else getattr(judge, "__name__", type(judge).__name__),
    )
    timing = {
        "total_s": time.perf_counter() - t_start,
        "intact_s": t_intact,
        "lesions_s": t_lesion,
        "per_lesion_per_prompt_ms": 1000 * t_lesion / max(1, n_prompts * len(modes) * len(layers)),
        "continuations_s": cont.pop("seconds"),
    }
    return LesionResult.from_values(
        metrics=metrics,
        intact_logp=intact_logp,
        intact_top1=intact_top1,
        n_target_tokens=n_tokens,
        prompts=[it.text for it in items],
        targets=[it.target for it in items],
        labels=labels,
        concept_set=set_name,
        modes=modes,
        layers=layers,
        n_layers=n_layers,
        mean_over=mean_over,
        method=method,
        max_new_tokens=max_new_tokens,
        timing=timing,
        provenance=make_provenance(model, **params),
        n_boot=n_boot,
        ci=ci,
        seed=seed,
        **cont,
    )


def _reference_tokens(model: Any, reference: Any) -> list[torch.Tensor]:
    if isinstance(reference, (list, tuple)) and reference and all(isinstance(x, torch.Tensor) for x in reference):
        return [x.reshape(-1) for x in reference]
    if isinstance(reference, (list, tuple)) and reference and all(isinstance(x, str) for x in reference) and not _all_set_names(reference):
        return [_tokens(model, x, bos=True) for x in reference]
    its, _, _ = items_from_inputs(model, reference)
    return [it.tokens for it in its]


def _continuations(
    model: Any,
    items: list[LesionItem],
    layers: list[int],
    cmodes: list[str],
    n_cont: int,
    L: int,
    means: dict[str, MeanActivation] | None,
    mean_over: str,
    judge: Callable | None,
    progress: bool,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    empty = {
        "cont_index": [], "cont_modes": [], "cont_metrics": None, "cont_tokens": None, "intact_cont_tokens": None,
        "intact_continuations": [], "lesioned_continuations": {}, "judge_scores": None, "seconds": 0.0,
    }
    if not cmodes or n_cont == 0:
        return empty
    n = len(items)
    pick = sorted({int(round(x)) for x in np.linspace(0, n - 1, min(n_cont, n))})
    contexts = [items[i].context for i in pick]
    intact = greedy_continuations(model, contexts, L).cpu().numpy()
    K = len(pick)
    toks = np.zeros((K, len(cmodes), len(layers), L), dtype=np.int64)
    cm = np.zeros((K, len(cmodes), len(layers), len(CONT_METRICS)))
    scores = np.full((K, len(cmodes), len(layers)), np.nan) if judge is not None else None
    texts: dict[str, list[list[str]]] = {m: [] for m in cmodes}
    intact_texts = [_decode(model, intact[k]) for k in range(K)]
    bar = tqdm(total=len(cmodes) * len(layers), desc="continuations", disable=not progress)
    for mi_, mode in enumerate(cmodes):
        for li, l in enumerate(layers):
            fn = lambda pos, l=l, mode=mode: lesion_hooks(l, mode, means=means, how=mean_over, position_ids=pos)  # noqa: E731
            out = greedy_continuations(model, contexts, L, fn).cpu().numpy()
            toks[:, mi_, li] = out
            row = []
            for k in range(K):
                cm[k, mi_, li] = continuation_metrics(intact[k], out[k])
                text = _decode(model, out[k])
                row.append(text)
                if judge is not None:
                    scores[k, mi_, li] = _judge_score(judge, items[pick[k]].text, intact_texts[k], text)
            texts[mode].append(row)
            bar.update(1)
    bar.close()
    return {
        "cont_index": pick, "cont_modes": cmodes, "cont_metrics": cm, "cont_tokens": toks,
        "intact_cont_tokens": intact, "intact_continuations": intact_texts, "lesioned_continuations": texts,
        "judge_scores": scores, "seconds": time.perf_counter() - t0,
    }


def _judge_score(judge: Callable, prompt: str, intact: str, lesioned: str) -> float:
    try:
        s = float(judge(prompt, intact, lesioned))
    except (TypeError, ValueError) as e:
        raise MedinterpError(f"lesion: the judge returned a non-number for prompt {prompt!r} ({e}); expected 1..10") from None
    if not 1 <= s <= 10:
        raise MedinterpError(f"lesion: the judge returned {s} for prompt {prompt!r}; expected a score in 1..10")
    return s


# ============================================================================ result
def _nanmean0(x: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; all-NaN columns (blocks not lesioned) stay NaN without a warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=0)


@dataclasses.dataclass
class LesionResult(Result):
    """Damage per prompt × lesion mode × layer, aggregated with bootstrap CIs, plus continuations.

    Attributes:
        metrics: ``[n_prompts, n_modes, n_layers, 3]``: ``kl, logp_drop, top1_agree`` (see module doc).
        intact_logp: ``[n_prompts]`` log p(target) of the intact model (nats, summed over target tokens).
        intact_top1: ``[n_prompts]`` intact arg-max token at the read position.
        n_target_tokens: ``[n_prompts]``.
        table: one row per (mode, layer): each metric's mean over prompts with ``_ci_low``/``_ci_high``,
            the continuation metrics (and ``judge``) where measured, ``n_prompts``, ``n_continuations``.
        prompts, targets, labels: the prompts, scored targets and per-prompt labels (``concept`` when
            several concept sets were given).
        cont_index: prompts (indices) that got continuations; ``cont_modes`` their lesion modes.
        cont_metrics: ``[n_cont, n_cont_modes, n_layers, 3]``: ``first_diff, overlap, bag_overlap``.
        cont_tokens: ``[n_cont, n_cont_modes, n_layers, max_new_tokens]``; ``intact_cont_tokens``
            ``[n_cont, max_new_tokens]``; the decoded texts in ``intact_continuations`` and
            ``lesioned_continuations[mode][layer index][prompt]``.
        judge_scores: ``[n_cont, n_cont_modes, n_layers]`` or None.
    """

    kind = "lesion"
    metrics: np.ndarray = None  # type: ignore[assignment]
    intact_logp: np.ndarray = None  # type: ignore[assignment]
    intact_top1: np.ndarray = None  # type: ignore[assignment]
    n_target_tokens: np.ndarray = None  # type: ignore[assignment]
    table: Any = None
    prompts: list = dataclasses.field(default_factory=list)
    targets: list = dataclasses.field(default_factory=list)
    labels: dict = dataclasses.field(default_factory=dict)
    concept_set: str = "custom"
    modes: list = dataclasses.field(default_factory=list)
    layers: list = dataclasses.field(default_factory=list)
    n_layers: int = 0
    metric_names: list = dataclasses.field(default_factory=lambda: list(METRICS))
    cont_metric_names: list = dataclasses.field(default_factory=lambda: list(CONT_METRICS))
    cont_index: list = dataclasses.field(default_factory=list)
    cont_modes: list = dataclasses.field(default_factory=list)
    cont_metrics: np.ndarray | None = None
    cont_tokens: np.ndarray | None = None
    intact_cont_tokens: np.ndarray | None = None
    intact_continuations: list = dataclasses.field(default_factory=list)
    lesioned_continuations: dict = dataclasses.field(default_factory=dict)
    judge_scores: np.ndarray | None = None
    mean_over: str = "position"
    method: str = "prefix"
    max_new_tokens: int = 20
    n_boot: int = 1000
    ci: float = 0.95
    seed: int = 0
    timing: dict = dataclasses.field(default_factory=dict)
    provenance: dict = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_values(cls, **fields: Any) -> "LesionResult":
        """Build the result and its bootstrap table from the per-prompt arrays."""
        res = cls(**fields)
        res.table = res.aggregate()
        return res

    def aggregate(self):
        """The per-(mode, layer) table: means over prompts with percentile-bootstrap CIs (NaN-aware)."""
        import pandas as pd

        stat = _nanmean0
        kw = dict(n_boot=self.n_boot, ci=self.ci, seed=self.seed)
        est, lo, hi = bootstrap_ci(self.metrics, stat, **kw)
        cols: dict[str, list] = {"mode": [], "layer": []}
        names = list(self.metric_names)
        cont = self.cont_metrics is not None and len(self.cont_modes) > 0
        cnames = list(self.cont_metric_names) + (["judge"] if self.judge_scores is not None else [])
        if cont:
            carr = self.cont_metrics
            if self.judge_scores is not None:
                carr = np.concatenate([carr, self.judge_scores[..., None]], axis=-1)
            with np.errstate(all="ignore"):
                cest, clo, chi = bootstrap_ci(carr, stat, **kw)
        for k in names + (cnames if cont else []):
            for suffix in ("", "_ci_low", "_ci_high"):
                cols[k + suffix] = []
        for mi_, mode in enumerate(self.modes):
            for li, l in enumerate(self.layers):
                cols["mode"].append(mode)
                cols["layer"].append(int(l))
                for k, name in enumerate(names):
                    cols[name].append(est[mi_, li, k])
                    cols[name + "_ci_low"].append(lo[mi_, li, k])
                    cols[name + "_ci_high"].append(hi[mi_, li, k])
                if cont:
                    ci_ = self.cont_modes.index(mode) if mode in self.cont_modes else None
                    for k, name in enumerate(cnames):
                        for arr, suf in ((cest, ""), (clo, "_ci_low"), (chi, "_ci_high")):
                            cols[name + suf].append(np.nan if ci_ is None else arr[ci_, li, k])
        df = pd.DataFrame(cols)
        df["n_prompts"] = self.metrics.shape[0]
        df["n_continuations"] = [len(self.cont_index) if m in self.cont_modes else 0 for m in df["mode"]]
        return df

    def _after_load(self) -> None:
        self.metrics = np.asarray(self.metrics, dtype=float)
        self.layers = [int(l) for l in self.layers]

    # ------------------------------------------------------------------ access
    @property
    def n_prompts(self) -> int:
        return int(self.metrics.shape[0])

    @property
    def curve_metric(self) -> str:
        """What :meth:`layer_curve` measures (the map shows it)."""
        return "mean KL(intact ‖ lesioned) of the next-token distribution"

    def _check(self, metric: str, mode: str) -> tuple[int, int]:
        if mode not in self.modes:
            raise MedinterpError(f"lesion mode {mode!r} was not run; this result has {self.modes}")
        if metric not in self.metric_names:
            raise MedinterpError(f"metric {metric!r}; expected one of {self.metric_names} (continuations: continuation_curve)")
        return self.modes.index(mode), self.metric_names.index(metric)

    def _mask(self, where: Mapping[str, Any] | None) -> np.ndarray:
        m = np.ones(self.n_prompts, dtype=bool)
        for k, v in (where or {}).items():
            if k not in self.labels:
                raise MedinterpError(f"label {k!r} not in this result; labels: {sorted(self.labels)}")
            m &= np.array([x == v for x in self.labels[k]])
        if not m.any():
            raise MedinterpError(f"no prompt matches {dict(where or {})}")
        return m

    def values(self, metric: str = "kl", mode: str = "skip", where: Mapping[str, Any] | None = None) -> np.ndarray:
        """Per-prompt values ``[n_selected, n_layers]`` (``where``: label filter, e.g. ``{"concept": "drugs"}``)."""
        mi_, k = self._check(metric, mode)
        return self._full(self.metrics[self._mask(where), mi_, :, k])

    def _full(self, v: np.ndarray) -> np.ndarray:
        """Lay a ``[.., len(layers)]`` array onto all ``n_layers`` blocks (NaN where not lesioned)."""
        if list(self.layers) == list(range(self.n_layers)):
            return v
        out = np.full(v.shape[:-1] + (self.n_layers,), np.nan)
        out[..., self.layers] = v
        return out

    def layer_curve(self, metric: str = "kl", mode: str = "skip", where: Mapping[str, Any] | None = None) -> Float[np.ndarray, "n_layers"]:
        """Mean over prompts per block (default: KL when the block is skipped; higher = more damage).

        For ``top1_agree`` higher means *less* damage; use ``1 - curve`` for the map.
        """
        return _nanmean0(self.values(metric, mode, where))

    def layer_curve_ci(
        self, metric: str = "kl", mode: str = "skip", where: Mapping[str, Any] | None = None
    ) -> tuple[Float[np.ndarray, "n_layers"], Float[np.ndarray, "n_layers"]]:
        """Bootstrap ``(low, high)`` of :meth:`layer_curve` (from the table unless ``where`` filters)."""
        self._check(metric, mode)
        if where:
            _, lo, hi = bootstrap_ci(self.values(metric, mode, where), _nanmean0,
                                     n_boot=self.n_boot, ci=self.ci, seed=self.seed)
            return lo, hi
        t = self.table[self.table["mode"] == mode].sort_values("layer")
        lo = self._full(t[metric + "_ci_low"].to_numpy(float))
        hi = self._full(t[metric + "_ci_high"].to_numpy(float))
        return lo, hi

    def continuation_curve(self, metric: str = "overlap", mode: str = "skip") -> Float[np.ndarray, "n_layers"]:
        """Mean continuation metric per block (``first_diff``, ``overlap``, ``bag_overlap`` or ``judge``)."""
        if self.cont_metrics is None or mode not in self.cont_modes:
            raise MedinterpError(f"no continuations for mode {mode!r} in this result (cont_modes={self.cont_modes})")
        mi_ = self.cont_modes.index(mode)
        if metric == "judge":
            if self.judge_scores is None:
                raise MedinterpError("this result has no judge scores (run lesion(..., judge=...))")
            return self._full(_nanmean0(self.judge_scores[:, mi_]))
        if metric not in self.cont_metric_names:
            raise MedinterpError(f"continuation metric {metric!r}; expected one of {self.cont_metric_names} or 'judge'")
        return self._full(_nanmean0(self.cont_metrics[:, mi_, :, self.cont_metric_names.index(metric)]))

    def top_layers(self, k: int = 3, metric: str = "kl", mode: str = "skip") -> list[int]:
        """The ``k`` blocks whose lesion does the most damage by ``metric`` (least agreement for top-1)."""
        c = self.layer_curve(metric, mode)
        c = -c if metric == "top1_agree" else c
        order = [int(i) for i in np.argsort(-np.nan_to_num(c, nan=-np.inf))]
        return order[:k]

    def summary(self, k: int = 3, mode: str | None = None) -> str:
        """A few readable lines: the most damaging blocks by KL and by log-prob drop, with CIs."""
        mode = mode or ("skip" if "skip" in self.modes else self.modes[0])
        lines = [
            f"lesion ({mode}) of {self.concept_set}: {self.n_prompts} prompts, {len(self.layers)} blocks, "
            f"intact mean log p(target) {np.mean(self.intact_logp):.3f} nats"
        ]
        for metric in ("kl", "logp_drop"):
            cur = self.layer_curve(metric, mode)
            lo, hi = self.layer_curve_ci(metric, mode)
            tops = ", ".join(f"{l}: {cur[l]:.3g} [{lo[l]:.3g}, {hi[l]:.3g}]" for l in self.top_layers(k, metric, mode))
            lines.append(f"  top blocks by {metric}: {tops}")
        agree = self.layer_curve("top1_agree", mode)
        lines.append(f"  top-1 agreement: min {np.nanmin(agree):.2f} (block {int(np.nanargmin(agree))}), median {np.nanmedian(agree):.2f}")
        if self.cont_metrics is not None and mode in self.cont_modes:
            ov = self.continuation_curve("overlap", mode)
            lines.append(f"  continuation overlap: min {np.nanmin(ov):.2f} (block {int(np.nanargmin(ov))}), median {np.nanmedian(ov):.2f}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ figures
    def _group_label(self) -> str | None:
        if "concept" in self.labels and len(set(self.labels["concept"])) > 1:
            return "concept"
        for k, v in sorted(self.labels.items()):
            if k == "item":
                continue
            vals = {x for x in v if isinstance(x, str)}
            if 2 <= len(vals) <= 12 and len(vals) == len(set(v)):
                return k
        return None

    def figure(self, mode: str | None = None, group_by: str | None = None):
        """Figures: layer × metric heatmap, mode × layer KL heatmap, per-mode curves with CIs,
        per-concept (or per-label) curves, and example continuations."""
        import plotly.graph_objects as go

        mode = mode or ("skip" if "skip" in self.modes else self.modes[0])
        L = list(range(self.n_layers))
        figs = []

        # 1. layer × metric heatmap (each row scaled to its maximum; hover shows the raw value + CI)
        rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        for metric in self.metric_names:
            cur = self.layer_curve(metric, mode)
            lo, hi = self.layer_curve_ci(metric, mode)
            if metric == "top1_agree":
                rows.append(("top-1 changed (1 − agreement)", 1 - cur, 1 - hi, 1 - lo))
            else:
                rows.append((METRIC_TITLES[metric], cur, lo, hi))
        if self.cont_metrics is not None and mode in self.cont_modes:
            ov = self.continuation_curve("overlap", mode)
            rows.append(("continuation changed (1 − overlap)", 1 - ov, 1 - ov, 1 - ov))
            if self.judge_scores is not None:
                j = self.continuation_curve("judge", mode)
                rows.append((METRIC_TITLES["judge"], j, j, j))
        z, text, hover = [], [], []
        for name, cur, lo, hi in rows:
            m = np.nanmax(np.abs(cur)) if np.isfinite(cur).any() else 1.0
            z.append(cur / m if m > 0 else cur)
            text.append([f"{v:.2g}" for v in cur])
            hover.append([f"{escape(name)}<br>block {l}: {cur[l]:.4g} [{lo[l]:.4g}, {hi[l]:.4g}]" for l in L])
        fig = go.Figure(go.Heatmap(
            z=z, x=L, y=[r[0] for r in rows], text=text, texttemplate="%{text}", hovertext=hover,
            hoverinfo="text", colorscale="Reds", colorbar=dict(title="÷ row max"),
        ))
        fig.update_layout(
            title=f"Damage when each block is lesioned ({escape(mode)}): {escape(self.concept_set)}, "
            f"{self.n_prompts} prompts, {int(self.ci * 100)}% bootstrap CI in hover",
            xaxis_title="block", template="plotly_white", height=180 + 45 * len(rows),
        )
        figs.append(fig)

        # 2. mode × layer heatmap of mean KL
        z = [self.layer_curve("kl", m) for m in self.modes]
        fig = go.Figure(go.Heatmap(z=z, x=L, y=list(self.modes), colorscale="Reds", colorbar=dict(title="KL (nats)"),
                                   hovertemplate="mode %{y}<br>block %{x}<br>mean KL %{z:.4g}<extra></extra>"))
        fig.update_layout(title="Mean KL(intact ‖ lesioned) per lesion mode and block", xaxis_title="block",
                          template="plotly_white", height=160 + 40 * len(self.modes))
        figs.append(fig)

        # 3. curves per mode with CIs: KL and log-prob drop
        for metric in ("kl", "logp_drop"):
            fig = go.Figure()
            for m in self.modes:
                cur = self.layer_curve(metric, m)
                lo, hi = self.layer_curve_ci(metric, m)
                fig.add_trace(go.Scatter(
                    x=L, y=cur, mode="lines+markers", name=m,
                    error_y=dict(type="data", symmetric=False, array=hi - cur, arrayminus=cur - lo),
                ))
            fig.update_layout(title=f"{METRIC_TITLES[metric]} per lesioned block (mean, {int(self.ci * 100)}% CI)",
                              xaxis_title="block", yaxis_title=METRIC_TITLES[metric], template="plotly_white")
            figs.append(fig)

        # 4. per-concept / per-label curves
        group = group_by or self._group_label()
        if group is not None:
            fig = go.Figure()
            for g in sorted({str(x) for x in self.labels[group]}):
                sel = {group: next(x for x in self.labels[group] if str(x) == g)}
                cur = self.layer_curve("kl", mode, sel)
                n = int(self._mask(sel).sum())
                fig.add_trace(go.Scatter(x=L, y=cur, mode="lines+markers", name=f"{escape(g)} (n={n})"))
            fig.update_layout(title=f"KL when each block is lesioned ({escape(mode)}), by {escape(group)}",
                              xaxis_title="block", yaxis_title="mean KL (nats)", template="plotly_white")
            figs.append(fig)

        # 5. example continuations at the most damaging block
        if self.cont_metrics is not None and mode in self.cont_modes and self.intact_continuations:
            li = self.layers.index(self.top_layers(1, "kl", mode)[0]) if self.top_layers(1, "kl", mode)[0] in self.layers else 0
            les = self.lesioned_continuations[mode][li]
            fig = go.Figure(go.Table(
                header=dict(values=["prompt", "intact continuation", f"block {self.layers[li]} lesioned ({escape(mode)})"]),
                cells=dict(values=[
                    [escape(self.prompts[i]) for i in self.cont_index],
                    [escape(t) for t in self.intact_continuations],
                    [escape(t) for t in les],
                ], align="left"),
            ))
            fig.update_layout(title=f"Greedy continuations ({self.max_new_tokens} tokens) at the most damaging block")
            figs.append(fig)
        return figs


# ============================================================================ technique contract
def _run_family(model: Any, family: Any, *, progress: bool = True, **params: Any) -> LesionResult:
    return lesion(model, family.concepts, progress=progress, **params)


from medinterp.techniques.base import Technique  # noqa: E402

TECHNIQUE = Technique(
    name="lesion",
    run_fn=_run_family,
    presets={
        # block removal only (the paper's lesion). Greedy continuations are left to `medinterp lesion`:
        # 4 prompts x 20 tokens x 18 lesions cost ~5 min per family on 2 cores, over the 15-min budget.
        "full": {"modes": ["skip"], "max_prompts": 48, "n_continuations": 0, "n_boot": 300},
        "quick": {"modes": ["skip"], "max_prompts": 12, "n_continuations": 0, "n_boot": 100},
    },
    needs=("concepts",),
    description="remove one block at a time and measure how the model's predictions degrade",
)
