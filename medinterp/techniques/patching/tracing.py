"""Causal tracing (METHOD.md §4, after Meng et al. 2022) on clean / corrupted prompt pairs.

The corrupted run is the pair's corrupted prompt: it differs from the clean prompt in the *item span*
(the token positions where the two prompts differ; pairs have equal token length, plus the tokens of
an explicit ``span`` column when the pair carries one: a substring of the clean prompt). For every
layer ``l`` two restorations are run on the fast exact engine (:func:`.engine.exact_sweep`):

* **span**: the clean run's ``resid_pre`` of block ``l`` at the item-span positions;
* **last**: the clean run's ``resid_pre`` of block ``l`` at the last token.

``resid_pre`` (the residual entering block ``l``) and not ``resid_post``: layer 0 then restores the
embeddings, so the span curve starts at exactly 1 when the span covers every differing token (a
built-in check), and the last-token curve at ``l`` says whether the answer already reached the last
position *before* block ``l``; its largest rise ``curve[l+1] - curve[l]`` names block ``l``, the
**mover** (the block whose attention carries the item to the last token). ``resid_post`` of ``l``
equals ``resid_pre`` of ``l+1``, so nothing is lost.

Per known pair and layer the recovered fraction is
``P = (LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)``, ``LD = logit(clean answer) -
logit(corrupted answer)`` at the last position. Only pairs the model knows enter:
``LD_clean > 0 > LD_corrupted`` and ``LD_clean - LD_corrupted >= min_margin`` (1 logit). Aggregates are
the ratio of sums ``sum(LD_patched - LD_corrupted) / sum(LD_clean - LD_corrupted)`` (headline, with an
item-level cluster-bootstrap CI) and the median of per-pair P; never the mean of ratios (tiny
denominators blow it up). With fewer than ``min_known`` known pairs the result says "not known by the
model" (:attr:`TracingResult.known_by_model` False, a reason string) and its unit scores are NaN.

The **band** (METHOD §4) is where restoring the span still recovers the answer, plus the mover block:
the layers whose span ratio of sums is at least ``band_threshold`` (runs of layers,
:func:`medinterp.stats.intervals_from_mask`; kept alone as ``span_band``) united with the one-block
interval ``(mover, mover)``; a mover adjacent to or inside a span run merges into it
(:func:`band_with_mover`). The span curve falls where the item has been read out of the span; the
mover is the block that carries it to the last token, so the band covers both the storage and the move.

**Covariates** (METHOD §0b, :mod:`medinterp.covariates`) of every valid pair, stored in ``covariates``
(``[valid pair, k]``, column names in ``covariate_names``): ``subject_tokens`` (first to last position of
the item span, inclusive), ``tokens_after_subject`` (positions after the span), ``prompt_tokens`` (BOS
excluded), ``answer_prior`` (``log p(clean answer's token | BOS)``) and ``intact_ld`` (the clean LD).
:meth:`TracingResult.unit_scores` passes the rows of the pairs it scores.

Example:
    >>> from medinterp.testing import tiny_model
    >>> pairs = [("a man with chest pain has", "a man with cough pain has", " angina", " pneumonia")]
    >>> res = causal_trace(tiny_model(n_layers=2), pairs, min_known=1, min_margin=0.0, require_sign=False,
    ...                    progress=False)
    >>> res.ld.shape  # [known pair, layer, (span, last)]
    (1, 2, 2)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
import torch
from jaxtyping import Float

from medinterp import sites
from medinterp.activations import _char_span_to_tokens
from medinterp.models.chat import wrap_text
from medinterp.concepts.pairs import TokenizedPair
from medinterp.covariates import answer_prior, from_matrix, to_matrix
from medinterp.errors import MedinterpError
from medinterp.hooks import pad_token_id, right_pad
from medinterp.readout import final_logits
from medinterp.results import make_provenance
from medinterp.stats import cluster_bootstrap, intervals_from_mask
from medinterp.techniques.base import TechniqueResult, UnitScores
from medinterp.techniques.patching.common import Metric, check_model, device_of, layers_arg, pair_set, prepare_pairs
from medinterp.techniques.patching.engine import CALL_COST_TOKENS, exact_sweep

RESTORES = ("span", "last")
COMPONENT_SITES = ("attn_out", "mlp_out", "resid_mid", "resid_post")
#: unit_scores() clips per-pair P to this range: a pair with a denominator near ``min_margin`` can give
#: |P| of several units from one noisy layer; the clip keeps one pair from dominating an item mean.
CLIP = (-1.0, 2.0)


@dataclasses.dataclass
class TracingResult(TechniqueResult):
    """Causal tracing curves: span and last-token restoration of ``resid_pre`` per layer.

    Fields (besides ``concept_set``, ``params``, ``timings``, ``provenance``):
        ld: ``[known pair, layer, restore]`` patched LD (restore axis ``("span", "last")``).
        P: same shape, per-pair recovered fraction (unclipped).
        ratio, ratio_low, ratio_high: ``[layer, restore]`` ratio of sums over known pairs and its
            item-level cluster-bootstrap CI (NaN with fewer than 2 items).
        median: ``[layer, restore]`` median of per-pair P.
        clean_ld, corrupted_ld: ``[valid pair]`` baselines of every valid pair (known or not).
        known: ``[valid pair]`` bool, the pairs the model knows (they enter every aggregate).
        top1: ``[valid pair]`` bool, both answers are the model's top-1 token on their own prompt.
        accuracy: fraction of valid pairs with ``LD_clean > 0 > LD_corrupted`` (both sides right in
            the two-way choice); accuracy_top1: fraction with ``top1``.
        known_by_model: False when fewer than ``min_known`` pairs are known; not_known_reason says why.
        band: ``[(start, end), ...]``: the span band united with the mover block (:func:`band_with_mover`).
        span_band: ``[(start, end), ...]`` layer runs where the span ratio is >= ``band_threshold`` alone
            (empty in saves made before the mover entered the band).
        mover: the block ``l`` maximising ``ratio[l+1, last] - ratio[l, last]`` (None if undefined).
        covariates: ``[valid pair, k]`` per-pair covariates (rows as ``all_pairs`` / ``known``; None in
            older saves); covariate_names: their names (:data:`medinterp.covariates.COVARIATES`).
        layers: the layer axis; units: item id per known pair; spans: item-span positions per known pair.
        pairs: the known pairs (row, texts); all_pairs: every valid pair with its LDs, known flag and
            reason; dropped: pairs the pair rule dropped.
        components, component_ld, component_ratio: optional per-component sweeps (same restorations at
            ``attn_out`` / ``mlp_out`` / ...): ``[component, known pair, layer, restore]`` and
            ``[component, layer, restore]``.
        diagnostics: engine counters.
    """

    kind: ClassVar[str] = "causal_trace"

    ld: np.ndarray = None
    P: np.ndarray = None
    ratio: np.ndarray = None
    ratio_low: np.ndarray = None
    ratio_high: np.ndarray = None
    median: np.ndarray = None
    clean_ld: np.ndarray = None
    corrupted_ld: np.ndarray = None
    known: np.ndarray = None
    top1: np.ndarray = None
    accuracy: float = float("nan")
    accuracy_top1: float = float("nan")
    known_by_model: bool = False
    not_known_reason: str = ""
    band: list = dataclasses.field(default_factory=list)
    span_band: list = dataclasses.field(default_factory=list)
    mover: int | None = None
    covariates: np.ndarray | None = None
    covariate_names: list = dataclasses.field(default_factory=list)
    site: str = "resid_pre"
    layers: list = dataclasses.field(default_factory=list)
    restores: list = dataclasses.field(default_factory=lambda: list(RESTORES))
    units: list = dataclasses.field(default_factory=list)
    spans: list = dataclasses.field(default_factory=list)
    pairs: list = dataclasses.field(default_factory=list)
    all_pairs: list = dataclasses.field(default_factory=list)
    dropped: list = dataclasses.field(default_factory=list)
    components: list = dataclasses.field(default_factory=list)
    component_ld: np.ndarray = None
    component_ratio: np.ndarray = None
    diagnostics: dict = dataclasses.field(default_factory=dict)

    @property
    def n_known(self) -> int:
        return int(np.sum(self.known)) if self.known is not None else 0

    def curve(self, restore: str = "span") -> Float[np.ndarray, "n_layers"]:
        """Ratio-of-sums recovered fraction per layer for ``restore`` (``"span"`` or ``"last"``)."""
        return np.asarray(self.ratio, float)[:, self.restores.index(restore)]

    def unavailable(self) -> str | None:
        """"not known by the model: <reason>" when too few pairs are known (the curves are NaN)."""
        return None if self.known_by_model else f"not known by the model: {self.not_known_reason}"

    def layer_curve(self) -> Float[np.ndarray, "n_layers"]:
        """The span curve (ratio of sums); all NaN when the family is not known by the model."""
        c = self.curve("span")
        return c if self.known_by_model else np.full_like(c, np.nan)

    def layer_curve_ci(self) -> tuple[np.ndarray, np.ndarray]:
        """Item-level cluster-bootstrap CI of :meth:`layer_curve` (NaN when not known)."""
        j = self.restores.index("span")
        lo, hi = np.asarray(self.ratio_low, float)[:, j], np.asarray(self.ratio_high, float)[:, j]
        if not self.known_by_model:
            return np.full_like(lo, np.nan), np.full_like(hi, np.nan)
        return lo, hi

    @property
    def curve_label(self) -> str:
        return ("recovered fraction P (ratio of sums over known pairs) after restoring the clean resid_pre "
                "at the item span into the corrupted run")

    def unit_scores(self) -> UnitScores:
        """Per known pair and layer: span-restore P clipped to ``CLIP`` ([-1, 2]); unit = item id.

        When the family is not known by the model: one all-NaN row per valid pair (units = their ids).
        ``covariates``: the rows of :attr:`covariates` of the pairs scored (none for saves without them).
        """
        desc = f"span-restore recovered fraction P per known pair, clipped to [{CLIP[0]}, {CLIP[1]}]"
        cov = from_matrix(self.covariates, self.covariate_names)
        if not self.known_by_model:
            units = [p["unit"] for p in self.all_pairs]
            if cov and len(next(iter(cov.values()))) != len(units):
                cov = {}
            return UnitScores(np.full((len(units), len(self.layers)), np.nan), units, None,
                              desc + f"; NaN: {self.not_known_reason}", covariates=cov)
        v = np.clip(np.asarray(self.P, float)[:, :, self.restores.index("span")], *CLIP)
        if cov and self.known is not None and len(self.known) == len(next(iter(cov.values()))):
            cov = {k: a[np.asarray(self.known, bool)] for k, a in cov.items()}
        else:
            cov = {}
        return UnitScores(v, list(self.units), None, desc, covariates=cov)

    def summary(self) -> str:
        n_valid = len(self.all_pairs)
        head = (f"causal tracing on {self.concept_set or 'pairs'}: {self.n_known}/{n_valid} valid pairs known "
                f"(accuracy {self.accuracy:.2f} two-way, {self.accuracy_top1:.2f} top-1), {len(self.dropped)} dropped")
        if not self.known_by_model:
            return f"{head}; not known by the model: {self.not_known_reason}"
        band = ", ".join(f"{a}-{b}" for a, b in self.band) or "none"
        span = ", ".join(f"{a}-{b}" for a, b in self.span_band) or "none"
        return (f"{head}; band layers {band} (span ratio >= {self.params.get('band_threshold')}: {span}; "
                f"mover block {self.mover})")


def _item_span(model: Any, tp: TokenizedPair, span_column: str | None) -> np.ndarray:
    """Positions where clean and corrupted tokens differ, plus the explicit span's tokens if any."""
    m = np.array(tp.clean_tokens) != np.array(tp.corrupted_tokens)
    text = tp.pair.meta.get(span_column) if span_column else None
    if text:
        start = tp.pair.clean.find(str(text))
        if start < 0:
            raise MedinterpError(f"pair (row {tp.row}): span {text!r} is not a substring of the clean prompt")
        m[_char_span_to_tokens(model, *wrap_text(model, tp.pair.clean, (start, start + len(str(text)))), tp.index)] = True
    if not m.any():
        raise MedinterpError(f"pair (row {tp.row}): clean and corrupted tokens are identical; no item span")
    return m


def _unit_id(model: Any, tp: TokenizedPair, span: np.ndarray, item_column: str | None) -> str:
    """The pair's item: its ``item_column`` value, else the clean tokens of its span as text."""
    if item_column and tp.pair.meta.get(item_column) is not None:
        return str(tp.pair.meta[item_column])
    toks = [t for t, s in zip(tp.clean_tokens, span) if s]
    return model.tokenizer.decode(toks).strip() if model.tokenizer is not None else str(toks)


def baselines(model: Any, kept: list[TokenizedPair], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clean / corrupted LD and the both-sides top-1 flag of every pair.

    All prompts (both sides) run right-padded in batches of ``batch_size`` (real tokens keep their
    positions and never see the padding, :func:`medinterp.hooks.right_pad`); the last real position of
    each is unembedded, all in one call."""
    dev = device_of(model)
    P = len(kept)
    cl, xl, top = (np.zeros(P) for _ in range(3))
    if not P:
        return cl, xl, top.astype(bool)
    seqs = [torch.tensor(tp.clean_tokens) for tp in kept] + [torch.tensor(tp.corrupted_tokens) for tp in kept]
    pad = pad_token_id(model)
    n = int(model.cfg.n_layers)
    last = []
    with torch.no_grad():
        for b0 in range(0, len(seqs), batch_size):
            toks, mask, lengths = right_pad(seqs[b0 : b0 + batch_size], pad_id=pad)
            resid = model(toks.to(dev), attention_mask=mask.to(dev), stop_at_layer=n)
            last.append(resid[torch.arange(len(lengths), device=resid.device), (lengths - 1).to(resid.device)])
        logits = final_logits(model, torch.cat(last))
    lc, lx = logits[:P], logits[P:]
    cid = torch.tensor([tp.clean_id for tp in kept], device=logits.device)[:, None]
    xid = torch.tensor([tp.corrupted_id for tp in kept], device=logits.device)[:, None]
    cl[:] = (lc.gather(1, cid) - lc.gather(1, xid))[:, 0].double().cpu().numpy()
    xl[:] = (lx.gather(1, cid) - lx.gather(1, xid))[:, 0].double().cpu().numpy()
    top[:] = ((lc.argmax(1) == cid[:, 0]) & (lx.argmax(1) == xid[:, 0])).cpu().numpy()
    return cl, xl, top.astype(bool)


def band_with_mover(span_band: Sequence[tuple[int, int]], mover: int | None) -> list[tuple[int, int]]:
    """The tracing band (METHOD §4): the span runs united with the mover block, merged where they touch.

    Args:
        span_band: ``[(start, end), ...]`` inclusive layer runs where restoring the span recovers the answer.
        mover: the mover block, or None (then the span runs alone).

    Returns:
        Sorted, merged inclusive runs; runs that overlap or are adjacent (``end + 1 == start``) merge.

    Example:
        >>> band_with_mover([(0, 3)], 4), band_with_mover([(0, 3)], 7), band_with_mover([], None)
        ([(0, 4)], [(0, 3), (7, 7)], [])
    """
    runs = sorted((int(a), int(b)) for a, b in span_band)
    if mover is not None:
        runs = sorted(runs + [(int(mover), int(mover))])
    out: list[tuple[int, int]] = []
    for a, b in runs:
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def pair_covariates(model: Any, valid: Sequence[TokenizedPair], span_masks: Sequence[np.ndarray],
                    clean_ld: np.ndarray) -> dict[str, Float[np.ndarray, "n"]]:
    """The per-pair covariates of tracing (METHOD §0b): span size, tokens after it, prompt length, the
    clean answer's prior and the clean LD.

    Args:
        model: the HookedTransformer (its BOS forward gives the prior, :func:`medinterp.covariates.answer_prior`).
        valid: the valid pairs; span_masks: their item-span masks over the clean tokens; clean_ld: ``[pair]``.

    Returns:
        ``{name: [pair]}`` with ``subject_tokens``, ``tokens_after_subject``, ``prompt_tokens``,
        ``answer_prior``, ``intact_ld``.
    """
    tok = getattr(model, "tokenizer", None)
    bos_id = getattr(tok, "bos_token_id", None) if tok is not None else None
    out = {k: np.full(len(valid), np.nan) for k in ("subject_tokens", "tokens_after_subject", "prompt_tokens")}
    for i, (tp, m) in enumerate(zip(valid, span_masks)):
        pos = np.flatnonzero(m)
        n = len(tp.clean_tokens)
        bos = bos_id is not None and n > 0 and int(tp.clean_tokens[0]) == int(bos_id)
        out["prompt_tokens"][i] = n - (1 if bos else 0)
        if len(pos):
            out["subject_tokens"][i] = pos[-1] - pos[0] + 1
            out["tokens_after_subject"][i] = n - 1 - pos[-1]
    out["answer_prior"] = answer_prior(model, [tp.clean_id for tp in valid]) if len(valid) else np.zeros(0)
    out["intact_ld"] = np.asarray(clean_ld, float).copy()
    return out


def known_mask(clean_ld: np.ndarray, corrupted_ld: np.ndarray, min_margin: float = 1.0,
               require_sign: bool = True) -> tuple[np.ndarray, list[str]]:
    """The pairs the model knows: ``LD_clean > 0 > LD_corrupted`` (if ``require_sign``) and
    ``|LD_clean - LD_corrupted| >= min_margin``; the reason per pair ("" when known).

    Example:
        >>> known_mask(np.array([2.0, 0.5, 3.0]), np.array([-1.0, -0.2, 1.0]))[0].tolist()
        [True, False, False]
    """
    reasons = []
    for c, x in zip(clean_ld, corrupted_ld):
        r = []
        if require_sign and not c > 0:
            r.append(f"LD_clean = {c:.3g} <= 0 (clean prompt prefers the corrupted answer)")
        if require_sign and not x < 0:
            r.append(f"LD_corrupted = {x:.3g} >= 0 (corrupted prompt prefers the clean answer)")
        if not abs(c - x) >= min_margin:
            r.append(f"|LD_clean - LD_corrupted| = {abs(c - x):.3g} < {min_margin} logit")
        reasons.append("; ".join(r))
    return np.array([not r for r in reasons], bool), reasons


def aggregate(ld: np.ndarray, clean_ld: np.ndarray, corrupted_ld: np.ndarray, units: Sequence[Any], *,
              n_boot: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-pair P, ratio of sums with its item-level cluster-bootstrap CI, and the median of P.

    Args:
        ld: ``[pair, ...]`` patched LD; clean_ld, corrupted_ld: ``[pair]``; units: item id per pair.

    Returns:
        ``(P, ratio, low, high, median)``; ``ratio`` etc. have ``ld``'s trailing shape.
    """
    ld = np.asarray(ld, float)
    x = np.asarray(corrupted_ld, float).reshape((-1,) + (1,) * (ld.ndim - 1))
    den = np.asarray(clean_ld, float).reshape(x.shape) - x
    num = ld - x
    rest = ld.shape[1:]
    if ld.shape[0] == 0:
        nan = np.full(rest, np.nan)
        return ld.copy(), nan, nan.copy(), nan.copy(), nan.copy()
    P = num / den
    ratio = num.sum(0) / den.sum(0)
    median = np.median(P, axis=0)
    if len(set(units)) >= 2:
        stacked = np.stack([num, np.broadcast_to(den, num.shape)], 1)  # [pair, 2, ...]
        bs = cluster_bootstrap(stacked, lambda s, axis=0: s[:, 0].sum(0) / s[:, 1].sum(0), units=np.asarray(units),
                               n_boot=n_boot, seed=seed)
        lo, hi = np.asarray(bs.low, float), np.asarray(bs.high, float)
    else:
        lo = hi = np.full(rest, np.nan)
    return P, ratio, lo, hi, median


def spread_pairs(pairs: Any, max_pairs: int | None) -> Any:
    """The pair set of ``pairs``, or ``max_pairs`` rows of it spread evenly over the file (first and last row
    included): files are often ordered by difficulty (age: 17 vs 18 first), so the first N rows would
    make a quick run answer a different question than the full one.

    Args:
        pairs: anything :func:`.common.pair_set` accepts.
        max_pairs: rows to keep (None: all).

    Returns:
        A ``PairSet``.
    """
    from medinterp.concepts import PairSet

    ps = pair_set(pairs)
    rows = list(ps.pairs)
    if max_pairs is not None and int(max_pairs) < len(rows):
        keep = np.unique(np.linspace(0, len(rows) - 1, max(1, int(max_pairs))).round().astype(int))
        ps = PairSet(ps.name, ps.version, ps.description, [rows[i] for i in keep], ps.columns, ps.provenance, ps.path)
    return ps


def causal_trace(
    model: Any,
    pairs: Any,
    *,
    layers: Iterable[int] | None = None,
    min_margin: float = 1.0,
    require_sign: bool = True,
    min_known: int = 4,
    band_threshold: float = 0.5,
    components: Sequence[str] = (),
    span_column: str | None = "span",
    item_column: str | None = "item",
    on_bad: str = "drop",
    n_boot: int = 1000,
    seed: int = 0,
    batch_budget_mb: float = 1024.0,
    call_cost: float = CALL_COST_TOKENS,
    trace_unknown: bool = True,
    max_pairs: int | None = None,
    progress: bool = True,
) -> TracingResult:
    """Causal tracing of the item span and the last token on the pairs the model knows.

    Args:
        model: a HookedTransformer.
        pairs: anything :func:`.common.pair_set` accepts (a ``PairSet``, a shipped name, a file, a list).
        layers: blocks to restore (default all).
        min_margin: a pair is known when ``|LD_clean - LD_corrupted| >= min_margin`` logits and ...
        require_sign: ... ``LD_clean > 0 > LD_corrupted`` (both sides right in the two-way choice).
        min_known: fewer known pairs than this: "not known by the model" (unit scores all NaN).
        band_threshold: span ratio of sums at or above which a layer is in the band.
        components: optional extra sites (``attn_out``, ``mlp_out``, ``resid_mid``, ``resid_post``)
            restored at the same positions (per-head sweeps: :func:`.engine.patch` with ``site="z"``).
        span_column: meta column holding an explicit item span (a substring of the clean prompt) whose
            tokens join the differing positions; missing or empty in a pair: only the differences.
        item_column: meta column naming the pair's item (its unit); default the clean span's text.
        on_bad: ``"drop"`` (default) or ``"raise"`` for pairs the pair rule rejects.
        n_boot, seed: the item-level cluster bootstrap of the ratio of sums.
        batch_budget_mb, call_cost: engine batching (memory budget, cost of one forward call).
        trace_unknown: also trace the known pairs of a family with fewer than ``min_known`` of them (their
            raw numbers kept in ``ratio`` / ``ld``; the curves are NaN either way). The map turns it off:
            its random twin knows almost no pair, and the sweep would be its whole cost.
        max_pairs: keep at most this many rows of the pair set, spread evenly over the file
            (:func:`spread_pairs`, before the pair rule drops any); None: all (the map's quick preset: 10).
        progress: show a progress bar.

    Returns:
        A :class:`TracingResult`.
    """
    if max_pairs is not None:
        pairs = spread_pairs(pairs, max_pairs)
    comps = [sites.canonical(c, what="causal tracing component") for c in components]
    bad = [c for c in comps if c not in COMPONENT_SITES]
    if bad:
        raise MedinterpError(f"causal tracing components must be among {COMPONENT_SITES}, got {bad}; per-head "
                             "sweeps: patch(model, pairs, site='z', positions='last')")
    if int(min_known) < 1 or not min_margin >= 0:
        raise MedinterpError(f"min_known must be >= 1 and min_margin >= 0, got {min_known!r}, {min_margin!r}")
    check_model(model)
    layer_list = layers_arg(model, layers)
    valid, dropped, name = prepare_pairs(model, pairs, on_bad=on_bad)
    t0 = time.perf_counter()
    cl, xl, top1 = baselines(model, valid)
    t_base = time.perf_counter() - t0
    known, reasons = known_mask(cl, xl, min_margin, require_sign)
    span_masks = [_item_span(model, tp, span_column) for tp in valid]
    unit_all = [_unit_id(model, tp, m, item_column) for tp, m in zip(valid, span_masks)]
    kidx = np.flatnonzero(known)
    kept = [valid[i] for i in kidx]
    masks = [[span_masks[i], np.eye(len(valid[i].clean_tokens), dtype=bool)[-1]] for i in kidx]
    L = len(layer_list)
    stats: dict = {}
    ld = np.full((len(kept), L, 2), np.nan)
    comp_ld = np.full((len(comps), len(kept), L, 2), np.nan)
    traced = bool(kept) and (trace_unknown or len(kept) >= int(min_known))
    t1 = time.perf_counter()
    if traced:
        met = Metric("logit_diff")
        outs = []
        for site in ["resid_pre"] + comps:
            v, _, _, _, _, _, st = exact_sweep(model, kept, masks, 2, site, layer_list, [0], met,
                                               batch_budget_mb=batch_budget_mb, progress=progress, checkpoint=None,
                                               desc=f"causal trace ({site})", call_cost=call_cost)
            outs.append(v[..., 0].astype(float))
            stats[site] = st
        ld, comp_ld = outs[0], np.stack(outs[1:]) if comps else comp_ld
    t_sweep = time.perf_counter() - t1
    units = [unit_all[i] for i in kidx]
    if traced:
        P, ratio, lo, hi, median = aggregate(ld, cl[kidx], xl[kidx], units, n_boot=n_boot, seed=seed)
        comp_ratio = np.stack([aggregate(c, cl[kidx], xl[kidx], units, n_boot=1)[1] for c in comp_ld]) if comps else None
    else:
        P, ratio, lo, hi, median = ld.copy(), *(np.full((L, 2), np.nan) for _ in range(4))
        comp_ratio = np.full((len(comps), L, 2), np.nan) if comps else None
    n_known = len(kidx)
    ok = n_known >= int(min_known)
    reason = "" if ok else (f"{n_known} of {len(valid)} valid pairs known (LD_clean > 0 > LD_corrupted, margin >= "
                            f"{min_margin} logit); at least {min_known} needed")
    span_curve, last_curve = ratio[:, 0], ratio[:, 1]
    span_band = intervals_from_mask(np.nan_to_num(span_curve, nan=-np.inf) >= band_threshold) if ok else []
    mover = None
    if ok and L >= 2 and np.isfinite(np.diff(last_curve)).any():
        mover = int(layer_list[int(np.nanargmax(np.diff(last_curve)))])
    span_band = [(int(layer_list[a]), int(layer_list[b])) for a, b in span_band]
    band = band_with_mover(span_band, mover)
    cov_matrix, cov_names = to_matrix(pair_covariates(model, valid, span_masks, cl))
    params = dict(layers=layer_list, min_margin=min_margin, require_sign=require_sign, min_known=int(min_known),
                  band_threshold=band_threshold, components=comps, span_column=span_column, item_column=item_column,
                  n_boot=n_boot, seed=seed, site="resid_pre")
    all_pairs = [{**tp.describe(), "unit": u, "clean_ld": float(c), "corrupted_ld": float(x), "known": bool(k),
                  "top1": bool(t), "reason": r}
                 for tp, u, c, x, k, t, r in zip(valid, unit_all, cl, xl, known, top1, reasons)]
    two_way = (cl > 0) & (xl < 0)
    return TracingResult(
        concept_set=name, params=params, timings={"baselines": t_base, "sweep": t_sweep},
        ld=ld, P=P, ratio=ratio, ratio_low=lo, ratio_high=hi, median=median, clean_ld=cl, corrupted_ld=xl,
        known=known, top1=top1, accuracy=float(two_way.mean()) if len(valid) else float("nan"),
        accuracy_top1=float(top1.mean()) if len(valid) else float("nan"), known_by_model=ok, not_known_reason=reason,
        band=band, span_band=span_band, mover=mover, covariates=cov_matrix, covariate_names=cov_names,
        layers=layer_list, units=units,
        spans=[np.flatnonzero(span_masks[i]).tolist() for i in kidx], pairs=[valid[i].describe() for i in kidx],
        all_pairs=all_pairs, dropped=dropped, components=comps, component_ld=comp_ld if comps else None,
        component_ratio=comp_ratio, diagnostics={"engine": stats},
        provenance=make_provenance(model, technique="patching", method="causal_trace", **params,
                                   n_pairs=len(valid), n_known=n_known, n_dropped=len(dropped)),
    )
