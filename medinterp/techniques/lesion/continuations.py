"""Greedy continuations under a lesion (left-padded batch, one KV cache) and how much they change."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from jaxtyping import Int

from medinterp.errors import MedinterpError
from medinterp.hooks import FwdHooks, MeanActivation, left_pad, pad_token_id
from medinterp.readout import Target, unembed_at
from medinterp.techniques.lesion.engine import mode_hooks

CONT_METRICS: tuple[str, ...] = ("first_diff", "overlap", "bag_overlap")


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
        nxt = unembed_at(model, resid, "last").argmax(-1)
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


def _continuations(
    model: Any,
    items: list[Target],
    layers: list[int],
    cmodes: list[str],
    n_cont: int,
    L: int,
    means: dict[str, MeanActivation] | Sequence[dict[str, MeanActivation] | None] | None,
    mean_over: str,
    judge: Callable | None,
    progress: bool,
) -> dict[str, Any]:
    """Greedy continuations of an evenly spread subset of ``items`` (``means``: one dict for all, or one per
    item, e.g. the cross-fitted half each item is ablated with; prompts sharing a dict run together)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    empty = {
        "cont_index": [], "cont_modes": [], "cont_metrics": None, "cont_tokens": None, "intact_cont_tokens": None,
        "intact_continuations": [], "lesioned_continuations": {}, "judge_scores": None, "seconds": 0.0,
    }
    if not cmodes or n_cont == 0 or not items:
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
    per_item = means if isinstance(means, (list, tuple)) else [means] * n
    groups: dict[int, list[int]] = {}
    for k, i in enumerate(pick):
        groups.setdefault(id(per_item[i]), []).append(k)
    for mi_, mode in enumerate(cmodes):
        for li, l in enumerate(layers):
            out = np.zeros((K, L), dtype=np.int64)
            for ks in groups.values():
                mk = per_item[pick[ks[0]]]
                fn = lambda pos, l=l, mode=mode, mk=mk: mode_hooks(l, mode, means=mk, how=mean_over, position_ids=pos)  # noqa: E731
                out[ks] = greedy_continuations(model, [contexts[k] for k in ks], L, fn).cpu().numpy()
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


