"""The exact sweep engine: clean activations written into corrupted runs, one cell per batch row.

Numbers equal TransformerLens's ``transformer_lens.patching`` functions; the engine is much faster because

1. the rows of one forward batch are the cells of the sweep (positions × heads × pairs);
2. the corrupted run's residual stream is cached once, so a patch at layer ``l`` starts at layer
   ``l`` (``start_at_layer``) instead of recomputing the identical prefix;
3. rows that leave a common prefix of positions unpatched skip it: causal attention leaves those
   positions equal to the corrupted run, so only the suffix is computed, attending to the corrupted
   run's cached keys/values (prefix reuse);
4. the unembedding runs only at the last position, and only on the two answer columns when the
   metric is a logit difference (:func:`medinterp.readout.unembed_at`);
5. rows are chunked by a memory budget; finished (group, layer) units are checkpointed
   (:class:`medinterp.store.Checkpoint`) so an interrupted sweep resumes.

Backends. Points 2 and 3 need ``start_at_layer`` (:func:`medinterp.models.capabilities`): on the
bridge backend every patched run is the exact hook path of :func:`medinterp.models.run_from_layer`
(the whole corrupted prompt runs, the cached residual is written into block ``l``) and no prefix of
positions is skipped; the numbers are the same.

Exactness notes. ``start_at_layer`` feeds the cached residual into block ``l``; TransformerLens
computes rotary positions and Gemma 3's sliding-window / global masks inside each attention layer
from the sequence positions, so they are identical to a full forward as long as no padding is
involved. The engine never pads: pairs are grouped by token length and every group runs alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from medinterp import sites
from medinterp.concepts.pairs import TokenizedPair
from medinterp.errors import MedinterpError
from medinterp.hooks import patch_hook
from medinterp.models.backends import capabilities, run_from_layer
from medinterp.results import make_provenance
from medinterp.store import Checkpoint, fingerprint
from medinterp.techniques.patching.common import (
    Metric,
    check_model,
    device_of,
    heads_arg,
    layers_arg,
    n_heads_for,
    normalise,
    position_specs,
    position_token_labels,
    positions_param,
    prepare_pairs,
    summarise,
    validate_patch_params,
)
from medinterp.techniques.patching.result import PatchingResult


@dataclasses.dataclass
class Group:
    """Pairs of one token length, with their cached runs."""

    idx: list[int]  # indices into the kept pair list
    clean_tokens: torch.Tensor
    corr_tokens: torch.Tensor
    cid: torch.Tensor
    xid: torch.Tensor
    corr_cache: dict
    clean_cache: dict
    kv: tuple | None = None  # corrupted keys/values per layer (for prefix reuse)


#: Weights TransformerLens copies on every forward call (``F.linear(x, W.T.contiguous())`` in the MLPs,
#: ``einops.rearrange`` to ``(head d_head) d_model`` / ``d_model (head d_head)`` in attention), and the
#: axis order those calls read them in.
_READ_ORDER = {"W_gate": (1, 0), "W_in": (1, 0), "W_out": (1, 0), "W_Q": (0, 2, 1), "W_K": (0, 2, 1),
               "W_V": (0, 2, 1), "_W_K": (0, 2, 1), "_W_V": (0, 2, 1), "W_O": (2, 0, 1)}


@contextlib.contextmanager
def read_order_weights(model: Any) -> Iterator[None]:
    """For the duration of a sweep, store the weights of :data:`_READ_ORDER` in the memory order TL's
    forward reads them, so its per-call copies become views (same shapes, same values, restored after).

    Why: on Gemma 3 270M on CPU those copies cost ~5 ms per block and forward call whatever the batch
    size (a profile of the 0.1.0 engine: 45% of a sweep's time); the sweep makes many calls. The
    matrices TL multiplies are the same contiguous values as before, so the numbers do not change.
    """
    saved = []
    try:
        for name, p in model.named_parameters():
            order = _READ_ORDER.get(name.rsplit(".", 1)[-1])
            if order is None or p.dim() != len(order) or p.permute(order).is_contiguous():
                continue
            back = [order.index(i) for i in range(len(order))]
            saved.append((p, p.data))
            p.data = p.data.permute(order).contiguous().permute(back)
        yield
    finally:
        for p, data in saved:
            p.data = data


def groups_by_length(pairs: list[TokenizedPair]) -> list[list[int]]:
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(pairs):
        by_len.setdefault(len(p.clean_tokens), []).append(i)
    return [by_len[k] for k in sorted(by_len)]


def run_cached(model: Any, tokens: torch.Tensor, names: set[str]) -> tuple[dict, torch.Tensor]:
    """One run keeping only ``names``; returns (cache, final residual [b, pos, d])."""
    store: dict[str, torch.Tensor] = {}

    def saver(name: str):  # keyed by the name asked for: the bridge's hook.name is its own alias target
        def save(act, hook):
            store[name] = act.detach()

        return save

    with torch.no_grad():
        resid = model.run_with_hooks(tokens, fwd_hooks=[(n, saver(n)) for n in sorted(names)],
                                     stop_at_layer=model.cfg.n_layers)
    return store, resid


def make_group(model: Any, kept: list[TokenizedPair], idx: list[int], corr_names: set[str],
               clean_names: set[str]) -> tuple[Group, torch.Tensor, torch.Tensor]:
    dev = device_of(model)
    ct = torch.tensor([kept[i].clean_tokens for i in idx], device=dev)
    xt = torch.tensor([kept[i].corrupted_tokens for i in idx], device=dev)
    cid = torch.tensor([kept[i].clean_id for i in idx], device=dev)
    xid = torch.tensor([kept[i].corrupted_id for i in idx], device=dev)
    corr_cache, corr_final = run_cached(model, xt, corr_names)
    clean_cache, clean_final = run_cached(model, ct, clean_names)
    return Group(idx, ct, xt, cid, xid, corr_cache, clean_cache), clean_final, corr_final


def cells(n_pos: int, heads: list[int], group: Group, masks: list[list], cell_filter: np.ndarray | None,
          layer_i: int) -> list[tuple[int, int, int, np.ndarray]]:
    """Rows for one group and layer: (local pair index, position column, head column, pos mask)."""
    out = []
    for gi, pi in enumerate(group.idx):
        for j in range(n_pos):
            m = masks[pi][j]
            if m is None:
                continue
            for hj in range(len(heads)):
                if cell_filter is not None and not cell_filter[layer_i, j, hj]:
                    continue
                out.append((gi, j, hj, m))
    return out


def _rows_per_chunk(model: Any, seq: int, budget_mb: float, full_vocab: bool) -> int:
    c = model.cfg
    d_mlp = c.d_mlp or 4 * c.d_model
    per_tok = 6 * c.d_model + 3 * d_mlp + 4 * c.n_heads * c.d_head + 3 * c.n_heads * seq
    per_row = 4 * (seq * per_tok + (c.d_vocab * 2 if full_vocab else 0))
    return max(1, int(budget_mb * 2**20 // per_row))


#: Cost of one extra forward call, in token-rows through the same layers (the unit of the batching cost
#: model). Measured on Gemma 3 270M on CPU (issue 15: 180 prefix-grouped calls for 360 rows took 40.0 s,
#: 18 full calls 8.1 s, i.e. ~0.2 s of fixed cost per call against ~0.24 ms per token-layer, ~90
#: token-rows); a lower value only splits batches more often, the numbers do not change.
CALL_COST_TOKENS = 64.0


def first_patched(row: tuple) -> int:
    """First position a row patches (its unpatched common prefix ends there)."""
    return int(np.argmax(row[3]))


def plan_batches(starts: Sequence[int], seq: int, chunk: int, call_cost: float = CALL_COST_TOKENS) -> list[tuple[int, int]]:
    """Split rows sorted by first patched position into forward batches of at most ``chunk`` rows.

    A batch runs positions ``start..seq-1`` of all its rows, ``start`` = its smallest first patched
    position (rows patched later leave ``start..p-1`` unpatched; those positions equal the corrupted
    run, so computing them changes nothing). Cost of a batch = ``call_cost + n_rows * (seq - start)``
    token-rows. A dynamic programme over the distinct first positions (at most ``seq`` of them) picks
    the cheapest way to merge runs of them; a merged run of more than ``chunk`` rows is cut into
    ``chunk``-row batches (each with the run's start).

    Args:
        starts: first patched position of each row, ascending.
        seq: tokens per row.
        chunk: the most rows a batch may hold (memory budget).
        call_cost: fixed cost of one forward call in token-rows.

    Returns:
        ``[(lo, hi), ...]`` row slices of ``starts``, in order.

    Example:
        >>> plan_batches([0, 0, 5, 9], seq=10, chunk=100, call_cost=64.0)  # one call beats three
        [(0, 4)]
        >>> plan_batches([0, 9, 9, 9], seq=10, chunk=100, call_cost=0.0)  # free calls: skip all prefixes
        [(0, 1), (1, 4)]
    """
    vals, first = np.unique(np.asarray(starts, int), return_index=True)
    bounds = [int(b) for b in first] + [len(starts)]  # distinct start k covers rows bounds[k]:bounds[k+1]
    K = len(vals)
    best = [0.0] + [float("inf")] * K
    back = [0] * (K + 1)
    for j in range(1, K + 1):
        for i in range(j):
            n = bounds[j] - bounds[i]
            c = best[i] + call_cost * -(-n // chunk) + n * (seq - int(vals[i]))
            if c < best[j]:
                best[j], back[j] = c, i
    runs, j = [], K
    while j > 0:
        runs.append((bounds[back[j]], bounds[j]))
        j = back[j]
    out = []
    for lo, hi in runs[::-1]:
        out += [(s, min(s + chunk, hi)) for s in range(lo, hi, chunk)]
    return out


def _batches(rows: list, chunk: int, mode: bool | str, seq: int, call_cost: float = CALL_COST_TOKENS) -> Iterator[tuple[int, list]]:
    """Split rows into forward batches of at most ``chunk`` rows, each with the prefix it may skip.

    ``mode``: ``False`` no prefix reuse (every batch starts at position 0); ``True`` rows grouped by
    their first patched position (0.1.0's prefix path); ``"auto"`` rows sorted by first patched
    position and split by :func:`plan_batches` (the default: few calls, most of the prefix skipped).
    """
    if mode is False:
        for s in range(0, len(rows), chunk):
            yield 0, rows[s:s + chunk]
        return
    if mode is True:
        by: dict[int, list] = {}
        for r in rows:
            by.setdefault(first_patched(r), []).append(r)
        for p in sorted(by):
            for s in range(0, len(by[p]), chunk):
                yield p, by[p][s:s + chunk]
        return
    rows = sorted(rows, key=first_patched)
    starts = [first_patched(r) for r in rows]
    for lo, hi in plan_batches(starts, seq, chunk, call_cost):
        yield starts[lo], rows[lo:hi]


def _corrupted_kv(model: Any, group: Group) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer keys/values of the corrupted run exactly as TL's KV cache stores them (after
    k-norm / clipping, before rotary): a run from the cached embedding with empty, growing entries."""
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry as Entry

    b = group.corr_tokens.shape[0]
    entries = [Entry.init_cache_entry(model.cfg, device_of(model), b) for _ in range(model.cfg.n_layers)]
    with torch.no_grad():
        model(group.corr_cache["blocks.0.hook_resid_pre"], start_at_layer=0, stop_at_layer=model.cfg.n_layers,
              past_kv_cache=entries)
    return [e.past_keys for e in entries], [e.past_values for e in entries]


def _forward_rows(
    model: Any, group: Group, site: str, layer: int, rows: list[tuple[int, int, int, np.ndarray]], heads: list[int],
    metric: Metric, prefix: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact patched runs of the given rows (all of one layer and group): (metric, LD) per row.

    ``prefix``: every row leaves positions ``< prefix`` unpatched. Causal attention means those
    positions are identical to the corrupted run at every later layer, so only positions
    ``prefix..S-1`` are computed, attending to the corrupted run's cached keys/values for the prefix
    (TL's KV-cache path: queries get rotary offset ``prefix``, the causal / sliding-window masks are
    built with that offset).
    """
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry as Entry

    dev = device_of(model)
    L = model.cfg.n_layers
    lay = sites.layout(site)
    row_pair = torch.tensor([r[0] for r in rows], device=dev)
    pos_mask = torch.from_numpy(np.stack([r[3] for r in rows])).to(dev)[:, prefix:]
    head_mask = None
    if sites.has_heads(site):
        head_mask = torch.zeros(len(rows), n_heads_for(model, site), dtype=torch.bool, device=dev)
        head_mask[torch.arange(len(rows)), torch.tensor([heads[r[2]] for r in rows])] = True
    cid, xid = group.cid[row_pair], group.xid[row_pair]

    def kv(start: int):
        if prefix == 0 or start >= L:
            return None
        K, V = group.kv
        return [None] * start + [Entry(K[m][row_pair, :prefix], V[m][row_pair, :prefix], frozen=True) for m in range(start, L)]

    def suffix(clean: torch.Tensor) -> torch.Tensor:
        return clean[:, :, prefix:] if lay == "pattern" else clean[:, prefix:]

    with torch.no_grad():
        name = sites.hook_name(site, layer)
        hook = patch_hook(suffix(group.clean_cache[name]), pos_mask, rows=row_pair, heads=head_mask, layout=lay)
        tokens = group.corr_tokens[row_pair]  # the hook path (no start_at_layer) reruns them; prefix is 0 there
        if site in ("resid_pre", "resid_post"):
            start = layer if site == "resid_pre" else layer + 1
            corr = group.corr_cache[f"blocks.{start}.hook_resid_pre"] if start < L else group.corr_cache["final"]
            x = hook(corr[row_pair][:, prefix:])
            resid = run_from_layer(model, tokens, x, start, stop_at_layer=L, **_kv_kwargs(kv(start))) if start < L else x
        else:
            x = group.corr_cache[f"blocks.{layer}.hook_resid_pre"][row_pair][:, prefix:]
            resid = run_from_layer(model, tokens, x, layer, stop_at_layer=L, fwd_hooks=[(name, hook)],
                                   **_kv_kwargs(kv(layer)))
        return metric(model, resid, cid, xid)


def _kv_kwargs(entries: list | None) -> dict:
    """``past_kv_cache`` for the forward only when there is one (the bridge's forward takes none)."""
    return {} if entries is None else {"past_kv_cache": entries}


def exact_sweep(
    model: Any, kept: list[TokenizedPair], masks: list[list], n_pos: int, site: str, layers: list[int],
    heads: list[int], metric: Metric, *, batch_budget_mb: float, progress: bool, checkpoint: Checkpoint | None,
    cell_filter: np.ndarray | None = None, desc: str = "patching", prefix_cache: bool | str = "auto",
    call_cost: float = CALL_COST_TOKENS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Returns values, ld [pair, layer, pos, head], baselines clean/corr metric & LD [pair], counters."""
    with read_order_weights(model):
        return _exact_sweep(model, kept, masks, n_pos, site, layers, heads, metric, batch_budget_mb=batch_budget_mb,
                            progress=progress, checkpoint=checkpoint, cell_filter=cell_filter, desc=desc,
                            prefix_cache=prefix_cache, call_cost=call_cost)


def _exact_sweep(
    model: Any, kept: list[TokenizedPair], masks: list[list], n_pos: int, site: str, layers: list[int],
    heads: list[int], metric: Metric, *, batch_budget_mb: float, progress: bool, checkpoint: Checkpoint | None,
    cell_filter: np.ndarray | None = None, desc: str = "patching", prefix_cache: bool | str = "auto",
    call_cost: float = CALL_COST_TOKENS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    from tqdm.auto import tqdm

    L = model.cfg.n_layers
    if not capabilities(model).start_at_layer:
        prefix_cache = False  # skipping a prefix needs start_at_layer + TL's KV cache (hooked backend only)
    P = len(kept)
    shape = (P, len(layers), n_pos, len(heads))
    vals = np.full(shape, np.nan, np.float32)
    lds = np.full(shape, np.nan, np.float32)
    base = np.full((4, P), np.nan, np.float32)
    clean_names = {sites.hook_name(site, l) for l in layers}
    corr_names = {f"blocks.{l}.hook_resid_pre" for l in range(L)}
    stats = {"rows": 0, "forward_calls": 0, "units_resumed": 0, "kv_runs": 0, "tokens_computed": 0}
    groups = groups_by_length(kept)
    bar = tqdm(total=len(groups) * len(layers), desc=desc, disable=not progress, leave=False)
    for g_i, idx in enumerate(groups):
        keys = [f"g{g_i}_l{l}" for l in layers]
        done = {k: checkpoint.load(k) for k in keys} if checkpoint else {}
        base_done = checkpoint.load(f"g{g_i}_base") if checkpoint else None
        if base_done is not None and all(done.get(k) is not None for k in keys):
            base[:, idx] = base_done["base"]
            for li, k in enumerate(keys):
                vals[idx, li], lds[idx, li] = done[k]["vals"], done[k]["lds"]
            stats["units_resumed"] += len(keys)
            bar.update(len(keys))
            continue
        group, clean_final, corr_final = make_group(model, kept, idx, corr_names, clean_names)
        group.corr_cache["final"] = corr_final
        with torch.no_grad():
            cm, cl = metric(model, clean_final, group.cid, group.xid)
            xm, xl = metric(model, corr_final, group.cid, group.xid)
        b = torch.stack([cm, xm, cl, xl]).float().cpu().numpy()
        base[:, idx] = b
        if checkpoint:
            checkpoint.save(f"g{g_i}_base", base=b)
        S_g = group.clean_tokens.shape[1]
        chunk = _rows_per_chunk(model, S_g, batch_budget_mb, metric.full_vocab)
        for li, l in enumerate(layers):
            if done.get(keys[li]) is not None:
                vals[idx, li], lds[idx, li] = done[keys[li]]["vals"], done[keys[li]]["lds"]
                stats["units_resumed"] += 1
                bar.update(1)
                continue
            rows = cells(n_pos, heads, group, masks, cell_filter, li)
            uv = np.full((len(idx), n_pos, len(heads)), np.nan, np.float32)
            ul = uv.copy()
            for prefix, part in _batches(rows, chunk, prefix_cache, S_g, call_cost):
                if prefix > 0 and group.kv is None:  # corrupted keys/values, computed once per group when needed
                    group.kv = _corrupted_kv(model, group)
                    stats["kv_runs"] += 1
                m, d = _forward_rows(model, group, site, l, part, heads, metric, prefix)
                m, d = m.float().cpu().numpy(), d.float().cpu().numpy()
                for r, (gi, j, hj, _) in enumerate(part):
                    uv[gi, j, hj], ul[gi, j, hj] = m[r], d[r]
                stats["rows"] += len(part)
                stats["tokens_computed"] += len(part) * (S_g - prefix)
                stats["forward_calls"] += 1
            vals[idx, li], lds[idx, li] = uv, ul
            if checkpoint and cell_filter is None:
                checkpoint.save(keys[li], vals=uv, lds=ul)
            bar.update(1)
    bar.close()
    return vals, lds, base[0], base[1], base[2], base[3], stats


def patch(
    model: Any,
    pairs: Any,
    site: str = "resid_pre",
    positions: str | Sequence[int] = "last",
    metric: str | Callable = "P",
    *,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    min_denominator: float = 1e-2,
    on_bad: str = "raise",
    batch_budget_mb: float = 1024.0,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    prefix_cache: bool | str = "auto",
    call_cost: float = CALL_COST_TOKENS,
) -> PatchingResult:
    """Exact activation patching of clean activations into corrupted runs, swept over cells.

    Args:
        model: a HookedTransformer.
        pairs: a ``PairSet``, a shipped pair-set name or a pair file (``.csv`` with or without the
            ``#`` YAML header, ``.yaml``, ``.jsonl``), or a list of ``PromptPair`` / dicts / 4-tuples
            ``(clean, corrupted, clean_answer, corrupted_answer)``. Pairs must pass the one pair rule
            (:meth:`medinterp.concepts.PairSet.check`).
        site: ``resid_pre|resid_mid|resid_post|attn_out|mlp_out`` (per layer) or a head site
            ``z|q|k|v|pattern`` (per layer × head; ``pattern`` patches a destination row); see
            :mod:`medinterp.sites`.
        positions: ``"last"``, ``"all"`` (each position separately, right-aligned), ``"span"``
            (the tokens that differ between clean and corrupted, together), ``"all_at_once"``, or a
            list of position indices.
        metric: ``"P"`` (normalised logit difference), ``"logit_diff"``, ``"logprob"`` or a callable
            ``f(logits [rows, vocab], clean_ids, corrupted_ids) -> [rows]`` (last-position logits).
        layers, heads: subsets to sweep (default all); ``heads`` on a site without heads is an error.
        min_denominator: pairs with ``|LD_clean − LD_corrupted|`` below this are excluded from
            means (P only) and listed in ``excluded``.
        on_bad: ``"raise"`` or ``"drop"`` for invalid pairs.
        batch_budget_mb: memory budget of one batch of rows.
        checkpoint_dir: finished (group, layer) units are written there; rerunning with the same
            inputs resumes where an interrupted sweep stopped (other pairs or parameters: recomputed).
        progress: show a tqdm bar.
        n_boot, seed: bootstrap of the mean over pairs.
        prefix_cache: how rows are batched. ``"auto"`` (default, the fast path): rows of a layer are
            sorted by first patched position and merged into few forward calls by a cost model
            (:func:`plan_batches`; each call starts at its smallest first patched position and attends
            to the corrupted run's cached keys/values for the skipped prefix). ``True``: one batch per
            first patched position (0.1.0's default, many small calls). ``False``: every call runs
            all positions. Same numbers up to float rounding in every mode.
        call_cost: the cost model's fixed cost of one forward call, in token-rows.

    Returns:
        A :class:`PatchingResult`, values ``[pair, layer, position, head]``.

    Example:
        >>> res = patch(model, "diagnosis_pairs", site="resid_pre", positions="all")  # doctest: +SKIP
        >>> res.layer_curve()  # mean P at the last token, per layer  # doctest: +SKIP
    """
    site = validate_patch_params(site, positions, metric, layers=layers, heads=heads, min_denominator=min_denominator,
                                 on_bad=on_bad, n_boot=n_boot, batch_budget_mb=batch_budget_mb)
    if prefix_cache not in (True, False, "auto"):
        raise MedinterpError(f"prefix_cache must be 'auto', True or False, got {prefix_cache!r}")
    check_model(model)
    met = Metric(metric)
    layer_list = layers_arg(model, layers)
    head_list = heads_arg(model, site, heads)
    kept, dropped, name = prepare_pairs(model, pairs, on_bad=on_bad)
    labels, masks = position_specs(kept, positions)
    params = dict(site=site, positions=positions_param(positions), metric=met.name, layers=layer_list,
                  heads=head_list, min_denominator=min_denominator, n_boot=n_boot, seed=seed)
    fp = fingerprint({"pairs": [(p.clean_tokens, p.corrupted_tokens, p.clean_id, p.corrupted_id) for p in kept],
                      "params": {k: params[k] for k in ("site", "positions", "metric", "layers", "heads")}}, model=model)
    ckpt = Checkpoint(checkpoint_dir, fp, name="patching") if checkpoint_dir is not None else None
    t0 = time.perf_counter()
    vals, lds, cm, xm, cl, xl, stats = exact_sweep(
        model, kept, masks, len(labels), site, layer_list, head_list, met,
        batch_budget_mb=batch_budget_mb, progress=progress, checkpoint=ckpt, prefix_cache=prefix_cache,
        call_cost=call_cost)
    sweep_s = time.perf_counter() - t0
    vals, cm, xm, included, excluded = normalise(met, vals, lds, cm, xm, cl, xl, kept, min_denominator)
    mean, lo, hi = summarise(vals, included, n_boot=n_boot, seed=seed)
    return PatchingResult(
        concept_set=name, params=params, timings={"sweep": sweep_s},
        values=vals, ld=lds, mean=mean, ci_low=lo, ci_high=hi, clean_metric=cm, corrupted_metric=xm, clean_ld=cl,
        corrupted_ld=xl, included=included, site=site, method="exact", metric=met.name,
        position_mode=positions if isinstance(positions, str) else "list", layers=layer_list, positions=labels,
        position_tokens=position_token_labels(model, kept, labels, positions), heads=head_list,
        pairs=[p.describe() for p in kept], excluded=excluded, dropped=dropped, diagnostics={"engine": stats},
        provenance=make_provenance(model, technique="patching", method="exact", **params, n_pairs=len(kept),
                                   n_dropped=len(dropped), fingerprint=fp),
    )
