"""What the exact, attribution and path patching entry points share: pair input, positions, metric, arguments.

Pairs go through the one pair rule (:meth:`medinterp.concepts.PairSet.check`); :func:`validate_patch_params`
checks every model-independent parameter before a model is loaded.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float

from medinterp import sites
from medinterp.concepts import PairSet, load_concepts
from medinterp.concepts.pairs import TokenizedPair
from medinterp.errors import MedinterpError
from medinterp.readout import unembed_at
from medinterp.results import bootstrap_ci

POSITION_MODES = ("all", "last", "span", "all_at_once")
BUILTIN_METRICS = ("P", "logit_diff", "logprob")
METHODS = ("exact", "attribution")
_METRIC_ALIASES = {"normalized_logit_diff": "P", "p": "P", "ld": "logit_diff", "logit_difference": "logit_diff"}
PATH_SENDER_SITES = ("z", "attn_out", "mlp_out")


# ----------------------------------------------------------------------------------- parameters
def validate_patch_params(
    site: str = "resid_pre",
    positions: str | Sequence[int] = "last",
    metric: str | Callable = "P",
    *,
    method: str = "exact",
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    min_denominator: float = 1e-2,
    on_bad: str = "raise",
    n_boot: int = 1000,
    batch_budget_mb: float = 1024.0,
) -> str:
    """Check every patching parameter that does not need the model; returns the canonical site name.

    The CLI calls this before loading a model, so a wrong option fails in a second. Layer and head
    ranges (which depend on the model) are checked again when the run starts.

    Raises:
        MedinterpError: an unknown site / position mode / metric / method, heads on a site without
            heads, a negative layer list entry type, etc.
    """
    site = sites.canonical(site, what="patching site")
    sites.require_heads(site, heads)
    _position_mode(positions)
    if method not in METHODS:
        raise MedinterpError(f"method {method!r}; expected one of {', '.join(METHODS)}")
    name = metric_name(metric)
    if method == "attribution" and name != "P":
        raise MedinterpError(f"attribution patching supports only metric 'P', got {name!r}")
    if on_bad not in ("raise", "drop"):
        raise MedinterpError(f"on_bad must be 'raise' or 'drop', got {on_bad!r}")
    for what, xs in (("layers", layers), ("heads", heads)):
        if xs is not None:
            try:
                [int(x) for x in xs]
            except (TypeError, ValueError):
                raise MedinterpError(f"{what} must be integers, got {xs!r}") from None
    if heads is not None and any(int(h) < 0 for h in heads):
        raise MedinterpError(f"heads must be >= 0, got {list(heads)}")
    if not (isinstance(min_denominator, (int, float)) and min_denominator >= 0):
        raise MedinterpError(f"min_denominator must be a number >= 0, got {min_denominator!r}")
    if int(n_boot) < 1:
        raise MedinterpError(f"n_boot must be >= 1, got {n_boot!r}")
    if not batch_budget_mb > 0:
        raise MedinterpError(f"batch_budget_mb must be > 0, got {batch_budget_mb!r}")
    return site


def _position_mode(positions: Any) -> str:
    if isinstance(positions, str):
        if positions not in POSITION_MODES:
            raise MedinterpError(f"positions must be one of {POSITION_MODES} or a list of ints, got {positions!r}")
        return positions
    try:
        [int(i) for i in positions]
    except (TypeError, ValueError):
        raise MedinterpError(f"positions must be one of {POSITION_MODES} or a list of ints, got {positions!r}") from None
    return "list"


def positions_param(positions: Any) -> str | list[int]:
    """JSON-able form of ``positions`` for params / provenance / fingerprints."""
    return positions if isinstance(positions, str) else [int(i) for i in positions]


def layers_arg(model: Any, layers: Iterable[int] | None) -> list[int]:
    L = model.cfg.n_layers
    if layers is None:
        return list(range(L))
    out = []
    for l in layers:
        l = int(l)
        if not -L <= l < L:
            raise MedinterpError(f"layer {l} out of range for a {L}-layer model")
        out.append(l % L)
    return out


def n_heads_for(model: Any, site: str) -> int:
    if not sites.has_heads(site):
        return 1
    if site in ("k", "v") and getattr(model.cfg, "n_key_value_heads", None) and not getattr(model.cfg, "ungroup_grouped_query_attention", False):
        return int(model.cfg.n_key_value_heads)
    return int(model.cfg.n_heads)


def heads_arg(model: Any, site: str, heads: Iterable[int] | None) -> list[int]:
    """The head axis of a sweep: ``[0]`` for a site without heads (heads given there is an error)."""
    sites.require_heads(site, heads)
    if not sites.has_heads(site):
        return [0]
    nh = n_heads_for(model, site)
    if heads is None:
        return list(range(nh))
    out = [int(h) for h in heads]
    for h in out:
        if not 0 <= h < nh:
            raise MedinterpError(f"head {h} out of range (site {site!r} has {nh} heads)")
    return out


def check_model(model: Any) -> None:
    if getattr(model.cfg, "positional_embedding_type", "") == "shortformer":
        raise MedinterpError("shortformer positional embeddings are not supported by the patching engine")


def device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------------- pairs
def pair_set(pairs: Any) -> PairSet:
    """The pair set of any accepted input: a ``PairSet``; a shipped pair-set name or a pair file path
    (``.csv`` with or without ``#`` header, ``.yaml``, ``.jsonl``: the one reader); or a list of
    ``PromptPair`` / 4-tuples / dicts."""
    if isinstance(pairs, PairSet):
        return pairs
    if isinstance(pairs, (str, os.PathLike)):
        ps = load_concepts(pairs)
        if not isinstance(ps, PairSet):
            raise MedinterpError(f"{str(pairs)!r} is a concept set, not a pair set; patching needs pairs with the "
                                 "columns clean, corrupted, clean_answer, corrupted_answer")
        return ps
    if isinstance(pairs, (list, tuple)):
        return PairSet.from_pairs(pairs)
    raise MedinterpError(f"pairs: expected a PairSet, a pair-set name or file, or a list of pairs; got "
                         f"{type(pairs).__name__}")


def prepare_pairs(model: Any, pairs: Any, *, on_bad: str = "raise") -> tuple[list[TokenizedPair], list[dict], str]:
    """Apply the one pair rule (:meth:`PairSet.check`) with the model's tokenizer.

    Returns:
        ``(kept, dropped, name)``: the valid pairs tokenized, the dropped ones as dicts with ``row`` and
        ``reason``, and the pair set's name. With ``on_bad="raise"`` any invalid pair raises a
        :class:`MedinterpError` naming its row and reason.
    """
    if on_bad not in ("raise", "drop"):
        raise MedinterpError(f"on_bad must be 'raise' or 'drop', got {on_bad!r}")
    ps = pair_set(pairs)
    chk = ps.check(model)
    dropped = chk.dropped_rows()
    if dropped and on_bad == "raise":
        d = dropped[0]
        more = f" (and {len(dropped) - 1} more)" if len(dropped) > 1 else ""
        pair = {k: d[k] for k in ("clean", "corrupted", "clean_answer", "corrupted_answer")}
        raise MedinterpError(f"bad pair (row {d['row']}): {d['reason']}; pair = {pair}{more}; "
                             "drop invalid pairs with on_bad='drop' (CLI: --drop-bad)")
    if not chk.tokenized:
        raise MedinterpError(f"no valid pairs left in {ps.name!r}; dropped: {[(d['row'], d['reason']) for d in dropped]}")
    return list(chk.tokenized), dropped, ps.name


# ----------------------------------------------------------------------------------- positions
def position_specs(
    pairs: list[TokenizedPair], positions: Any
) -> tuple[list[str], list[list[Bool[np.ndarray, "pos"] | None]]]:
    """Position axis labels and, per pair, one boolean mask per position-axis entry (None = absent).

    ``"all"`` sweeps every position separately, right-aligned so the last token is the last column
    whatever the pair's length; ``"last"`` only the last token; ``"span"`` patches, as one cell,
    the tokens where clean and corrupted differ (the concept span); ``"all_at_once"`` patches every
    position together; a list of ints sweeps those positions (negative = from the end).
    """
    mode = _position_mode(positions)
    lens = [len(p.clean_tokens) for p in pairs]
    n = max(lens)
    if mode == "all":
        labels = [f"pos {i - n}" for i in range(n)]
        masks = []
        for S in lens:
            row = []
            for j in range(n):
                p = j - (n - S)
                if p < 0:
                    row.append(None)
                else:
                    m = np.zeros(S, bool)
                    m[p] = True
                    row.append(m)
            masks.append(row)
        return labels, masks
    if mode == "last":
        return ["last"], [[np.eye(S, dtype=bool)[-1]] for S in lens]
    if mode == "all_at_once":
        return ["all positions"], [[np.ones(S, bool)] for S in lens]
    if mode == "span":
        masks = []
        for p in pairs:
            m = np.array(p.clean_tokens) != np.array(p.corrupted_tokens)
            if not m.any():
                raise MedinterpError(f"pair (row {p.row}): clean and corrupted tokens are identical; no span to patch")
            masks.append([m])
        return ["span"], masks
    idx = [int(i) for i in positions]
    masks = []
    for p, S in zip(pairs, lens):
        row = []
        for i in idx:
            if not -S <= i < S:
                raise MedinterpError(f"pair (row {p.row}): position {i} is outside its {S} tokens")
            m = np.zeros(S, bool)
            m[i] = True
            row.append(m)
        masks.append(row)
    return [f"pos {i}" for i in idx], masks


def position_token_labels(model: Any, pairs: list[TokenizedPair], labels: list[str], positions: Any) -> list[str]:
    """Readable axis labels: the first pair's clean/corrupted token strings for a position sweep."""
    if positions != "all" or model.tokenizer is None:
        return labels
    n = len(labels)
    p0 = pairs[0]
    S = len(p0.clean_tokens)
    ct = [model.tokenizer.decode([t]) for t in p0.clean_tokens]
    xt = [model.tokenizer.decode([t]) for t in p0.corrupted_tokens]
    out = []
    for j in range(n):
        p = j - (n - S)
        if p < 0:
            out.append(labels[j])
        else:
            tok = ct[p] if ct[p] == xt[p] else f"{ct[p]}/{xt[p]}"
            out.append(f"{p}:{tok}")
    return out


# ----------------------------------------------------------------------------------- metric
def last_position_logits(
    model: Any, resid: Float[torch.Tensor, "rows pos d_model"], columns: torch.Tensor | None = None
) -> Float[torch.Tensor, "rows n_cols"]:
    """Logits at the last position from the final residual (after the last block), optionally only for
    the vocabulary ``columns``: :func:`medinterp.readout.unembed_at` at ``"last"``."""
    return unembed_at(model, resid, "last", token_ids=columns)


def metric_name(metric: str | Callable) -> str:
    if isinstance(metric, str):
        name = _METRIC_ALIASES.get(metric, metric)
        if name not in BUILTIN_METRICS:
            raise MedinterpError(f"unknown metric {metric!r}; expected one of {BUILTIN_METRICS} or a callable")
        return name
    if callable(metric):
        return getattr(metric, "__name__", "custom")
    raise MedinterpError(f"metric must be a name or a callable, got {type(metric).__name__}")


class Metric:
    """Turns last-position final residuals into (metric value, raw LD) per row."""

    def __init__(self, metric: str | Callable):
        self.name = metric_name(metric)
        self.fn = None if isinstance(metric, str) else metric
        self.full_vocab = self.name == "logprob" or self.fn is not None

    def __call__(self, model: Any, resid: torch.Tensor, cid: torch.Tensor, xid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.full_vocab:
            cols = torch.stack([cid, xid], 1)  # [rows, 2]
            uniq, inv = torch.unique(cols, return_inverse=True)
            lg = last_position_logits(model, resid, uniq)
            two = torch.gather(lg, 1, inv)
            ld = two[:, 0] - two[:, 1]
            return ld, ld
        logits = last_position_logits(model, resid)
        ld = logits.gather(1, cid[:, None])[:, 0] - logits.gather(1, xid[:, None])[:, 0]
        if self.fn is not None:
            val = torch.as_tensor(self.fn(logits, cid, xid)).reshape(-1)
            if val.shape[0] != logits.shape[0]:
                raise MedinterpError(f"custom metric returned {val.shape[0]} values for {logits.shape[0]} rows")
            return val.to(ld.dtype), ld
        lp = torch.log_softmax(logits.float(), -1).gather(1, cid[:, None])[:, 0]
        return lp.to(ld.dtype), ld


def normalise(
    metric: Metric, vals: np.ndarray, lds: np.ndarray, cm: np.ndarray, xm: np.ndarray, cl: np.ndarray, xl: np.ndarray,
    kept: list[TokenizedPair], min_denominator: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """For metric P: turn LDs into P, mark pairs with |LD_clean − LD_corrupted| < min_denominator."""
    included = np.ones(len(kept), bool)
    excluded: list[dict] = []
    if metric.name != "P":
        return vals, cm, xm, included, excluded
    denom = (cl - xl).astype(np.float64)
    P = (lds.astype(np.float64) - xl[:, None, None, None]) / np.where(np.abs(denom) > 0, denom, np.nan)[:, None, None, None]
    for i, d in enumerate(denom):
        if not np.isfinite(d) or abs(d) < min_denominator:
            included[i] = False
            excluded.append({**kept[i].describe(), "pair_index": i,
                             "reason": f"|LD_clean − LD_corrupted| = {abs(d):.3g} < min_denominator {min_denominator}"})
    cmP = np.where(included, 1.0, np.nan).astype(np.float32)
    xmP = np.where(included, 0.0, np.nan).astype(np.float32)
    P[~included] = np.nan
    return P.astype(np.float32), cmP, xmP, included, excluded


def summarise(values: np.ndarray, included: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over the included pairs and its percentile-bootstrap CI, ``[layer, position, head]`` each."""
    v = np.asarray(values, dtype=np.float64)
    inc = np.asarray(included, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if inc.any():
            est, lo, hi = bootstrap_ci(v[inc], statistic=lambda s: np.nanmean(s, axis=0), n_boot=n_boot, seed=seed)
        else:
            est = lo = hi = np.full(v.shape[1:], np.nan)
    return tuple(np.asarray(a, np.float32) for a in (est, lo, hi))  # type: ignore[return-value]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays over the entries finite in both (NaN if < 2 such)."""
    a, b = np.asarray(a, float).reshape(-1), np.asarray(b, float).reshape(-1)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])
