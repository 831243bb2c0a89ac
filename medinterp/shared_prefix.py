"""Forward passes that compute a shared prompt prefix once (a frozen key-value cache per batch).

Concept prompts are templates filled with items ("The patient was started on {drug}"): on the shipped
concept sets about 45% of the tokens a geometry run feeds Gemma 3 270M lie before the item and are the
same for every item of a template. Their keys and values are computed once per batch (a batch-1
forward into TransformerLens' ``TransformerLensKeyValueCache``, expanded over the batch and frozen) and
only the rest of each prompt (the item and what follows, right-padded) runs through the blocks. A
prefix never reaches past the first token read, so every read lies in the part that runs.

Only ``HookedTransformer`` takes a ``past_kv_cache``; other backends use the left-padded path. The
numbers equal a full forward up to float rounding (tested against it on a Gemma-like model with local
attention), and the same prompts give the same batches, so a rerun is bit-identical.

Example:
    >>> from medinterp.testing import tiny_model
    >>> m = tiny_model(n_layers=2, seed=0)
    >>> plan = prefix_plan([[2, 5, 6, 7], [2, 5, 6, 9, 4], [2, 8, 1]], first_read=[3, 3, 1], batch_size=4)
    >>> [(b.rows, b.prefix_len) for b in plan]
    [([0, 1], 3), ([2], 1)]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class PrefixBatch:
    """One forward: the prompt ``rows`` (indices into the input) sharing their first ``prefix_len`` tokens."""

    rows: list[int]
    prefix_len: int


def supports_shared_prefix(model: Any) -> bool:
    """True for a ``HookedTransformer`` (the backend whose forward takes a frozen ``past_kv_cache``)."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError:  # pragma: no cover - transformer-lens is a dependency
        return False
    return isinstance(model, HookedTransformer)


def _lcp(a: Sequence[int], b: Sequence[int], cap: int) -> int:
    n = 0
    for x, y in zip(a[:cap], b[:cap]):
        if x != y:
            break
        n += 1
    return n


def prefix_plan(tokens: Sequence[Sequence[int]], first_read: Sequence[int], batch_size: int,
                max_tokens: int | None = None) -> list[PrefixBatch]:
    """Batches of prompts that share a token prefix, and the prefix each batch computes once.

    Prompts are grouped by their tokens before the first read (one group per template, typically).
    A group of at least ``batch_size // 2`` prompts is cut, sorted by length, into batches that share
    the whole group prefix (consecutive in the plan, so one prefix forward serves them all) and hold up
    to ``max_tokens`` suffix positions each: a suffix is a few tokens, and on a CPU a forward of few
    tokens costs about as much as reading the weights, so fewer, wider batches are faster. The prompts
    of smaller groups are pooled, sorted by tokens, and batched ``batch_size`` at a time with the longest
    prefix common to each batch (at least BOS), so no prompt runs alone for want of a partner.

    Args:
        tokens: token ids of each prompt (BOS included).
        first_read: the first token index read in each prompt (reads stay out of the cached prefix).
        batch_size: prompts per pooled batch; also the smallest group that gets its own batches.
        max_tokens: most suffix positions (rows x padded width) per batch of a group (default:
            ``batch_size`` times the median prompt length, what a plain batch holds).

    Returns:
        The batches in run order; every prompt is in exactly one.
    """
    caps = [max(0, min(int(r), len(t) - 1)) for r, t in zip(first_read, tokens)]
    if max_tokens is None:
        max_tokens = batch_size * max(1, sorted(len(t) for t in tokens)[len(tokens) // 2])
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(tokens):
        groups.setdefault(tuple(t[: caps[i]]), []).append(i)
    plan: list[PrefixBatch] = []
    pool: list[int] = []
    for key in sorted(groups):
        rows = sorted(groups[key], key=lambda i: (len(tokens[i]), i))
        if len(rows) < max(2, batch_size // 2):
            pool.extend(rows)
            continue
        cur: list[int] = []
        for i in rows:  # sorted by length: the newest row sets the padded width
            if cur and (len(cur) + 1) * (len(tokens[i]) - len(key)) > max_tokens:
                plan.append(PrefixBatch(cur, len(key)))
                cur = []
            cur.append(i)
        plan.append(PrefixBatch(cur, len(key)))
    pool.sort(key=lambda i: (list(tokens[i]), i))
    for a in range(0, len(pool), batch_size):
        rows = pool[a: a + batch_size]
        p = min(caps[i] for i in rows)
        p = min(_lcp(tokens[rows[0]], tokens[i], p) for i in rows)
        plan.append(PrefixBatch(rows, p))
    return plan


def plan_tokens(plan: Sequence[PrefixBatch], lengths: Sequence[int]) -> int:
    """Token positions a plan runs through the blocks: each batch's prefix and its padded suffixes (an upper
    bound: consecutive batches of one group share one prefix forward)."""
    return sum(b.prefix_len + len(b.rows) * (max(lengths[i] for i in b.rows) - b.prefix_len) for b in plan)


def padded_tokens(lengths: Sequence[int], batch_size: int) -> int:
    """Token positions of the plain path: prompts sorted by length, left-padded batches."""
    s = sorted(lengths)
    return sum(len(s[i: i + batch_size]) * s[min(i + batch_size, len(s)) - 1] for i in range(0, len(s), batch_size))


@torch.inference_mode()
def run_shared_prefix_batch(
    model: Any,
    tokens: Sequence[Sequence[int]],
    batch: PrefixBatch,
    fwd_hooks: list[tuple[str, Callable]],
    stop_at_layer: int | None,
    prefix_cache: dict | None = None,
) -> None:
    """Run one :class:`PrefixBatch`: the prefix once into a frozen cache, the suffixes right-padded.

    The hooks see ``[batch, suffix_len, d]`` activations: row ``j`` is prompt ``batch.rows[j]``, column
    ``c`` its token ``batch.prefix_len + c``; columns past a prompt's end are padding.

    Args:
        prefix_cache: a dict kept across calls: the last prefix's keys and values are kept there and
            reused while the next batches share that prefix (the batches of one group).
    """
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    device = model.cfg.device
    P, rows = batch.prefix_len, batch.rows
    suffixes = [list(tokens[i][P:]) for i in rows]
    width = max(len(s) for s in suffixes)
    pad = getattr(model.tokenizer, "pad_token_id", None) or 0
    suffix = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, s in enumerate(suffixes):
        suffix[j, : len(s)] = torch.tensor(s)
        mask[j, : len(s)] = 1
    cache = None
    if P > 0:
        key = (tuple(tokens[rows[0]][:P]), stop_at_layer)
        kv = prefix_cache.get(key) if prefix_cache is not None else None
        if kv is None:
            one = TransformerLensKeyValueCache.init_cache(model.cfg, device, 1)
            prefix = torch.tensor([list(key[0])], dtype=torch.long, device=device)
            # explicit mask: TL would otherwise infer one from pad ids, wrong where BOS == pad
            model(prefix, attention_mask=torch.ones_like(prefix), past_kv_cache=one, stop_at_layer=stop_at_layer)
            kv = [(e.past_keys, e.past_values) for e in one.entries]
            if prefix_cache is not None:
                prefix_cache.clear()  # one prefix at a time: the plan runs a group's batches in a row
                prefix_cache[key] = kv
        b = len(rows)
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, b)
        for e, (k, v) in zip(cache.entries, kv):
            e.past_keys, e.past_values = k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)
        cache.previous_attention_mask = torch.ones((b, P), dtype=torch.int, device=device)
        cache.freeze()
    model.run_with_hooks(suffix.to(device), attention_mask=mask.to(device), past_kv_cache=cache,
                         fwd_hooks=fwd_hooks, stop_at_layer=stop_at_layer)
