"""Statistics behind three findings rules (collapse, fragility, first half), with no verdicts.

The rules in :mod:`medinterp.maps.findings` turn these numbers into holds / does not hold /
inconclusive; :mod:`medinterp.maps.findings_models` compares them across models. Everything here is
plain numpy / scipy on arrays, so the tests feed synthetic data through the same functions the map uses.

* :func:`collapse_dip`: the mid-depth dip of a per-layer participation ratio (PR) curve with CIs,
  against its ends, the control family's PR and the random twin's PR at that layer.
* :func:`fragility_stat` / :func:`fragility_difference`: the median over blocks of the mean
  next-token KL when one block is skipped, with an item bootstrap; the log ratio between two models.
* :func:`first_half_test`: the share of marked cells in the first half of the layers, against each
  technique's own depth bias read from the control families' marks (paired swap permutation).

Example:
    >>> y = [9.0, 8.0, 2.0, 8.5, 9.5]
    >>> d = collapse_dip({"per_layer": y, "per_layer_low": [v - .5 for v in y], "per_layer_high": [v + .5 for v in y]})
    >>> d["layer"], d["dip"], d["beyond_ends"]
    (2, True, True)
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping

import numpy as np

#: relative depth (layer / (n_layers - 1)) of the "middle half" of the layers, both ends included.
MID_DEPTH = (0.25, 0.75)


# ============================================================================ collapse (participation ratio)
def _arr(s: Mapping, key: str, default: np.ndarray) -> np.ndarray:
    v = s.get(key)
    return default if v is None else np.asarray(v, float)


def collapse_dip(stat: Mapping[str, Any], control: Mapping[str, Any] | None = None,
                 twin: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Where the PR curve dips at mid depth, and whether the dip is beyond its ends and its controls.

    Args:
        stat: ``{"per_layer", "per_layer_low", "per_layer_high"}`` participation ratio per layer with CIs.
        control: the same for the control family (optional); ``twin`` the random twin's (optional).

    Returns:
        ``layer`` (argmin of PR among layers at relative depth in :data:`MID_DEPTH`), ``rel_depth``,
        ``value`` / ``ci`` (PR there), ``ratio`` / ``ratio_ci`` (PR there over the smaller end's PR; the
        CI by interval arithmetic of the per-layer CIs, conservative), ``dip`` (PR there below both
        ends, point estimates), ``beyond_ends`` (its upper CI bound below both ends' lower bounds),
        ``below`` ``{"control": bool|None, "twin": bool|None}`` (its upper bound below the control's lower
        bound at that layer; None when not given), ``has_ci``.
    """
    y = np.asarray(stat["per_layer"], float)
    lo, hi = _arr(stat, "per_layer_low", y), _arr(stat, "per_layer_high", y)
    has_ci = stat.get("per_layer_low") is not None and np.isfinite(lo).all() and np.isfinite(hi).all()
    n = len(y)
    rel = np.arange(n) / max(n - 1, 1)
    mid = np.flatnonzero((rel >= MID_DEPTH[0]) & (rel <= MID_DEPTH[1]) & np.isfinite(y))
    out: dict[str, Any] = {"n_layers": n, "has_ci": bool(has_ci), "below": {"control": None, "twin": None}}
    if n < 3 or not len(mid) or not (np.isfinite(y[0]) and np.isfinite(y[-1])):
        return {**out, "layer": None, "dip": False, "beyond_ends": False}
    k = int(mid[np.argmin(y[mid])])
    end = min(y[0], y[-1])
    out.update(layer=k, rel_depth=float(rel[k]), value=float(y[k]), ci=(float(lo[k]), float(hi[k])),
               dip=bool(y[k] < end), beyond_ends=bool(has_ci and hi[k] < min(lo[0], lo[-1])))
    with np.errstate(invalid="ignore", divide="ignore"):
        out["ratio"] = float(y[k] / end)
        out["ratio_ci"] = (float(lo[k] / min(hi[0], hi[-1])), float(hi[k] / min(lo[0], lo[-1])))
    for name, c in (("control", control), ("twin", twin)):
        if c is None or c.get("per_layer") is None or len(c["per_layer"]) != n:
            continue
        cy = np.asarray(c["per_layer"], float)
        clo = _arr(c, "per_layer_low", cy)
        ref = clo[k] if np.isfinite(clo[k]) else cy[k]
        out["below"][name] = bool(np.isfinite(ref) and hi[k] < ref)
    return out


# ============================================================================ fragility (block skip KL)
def _median_block_kl(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Median over blocks (last axis) of the mean over items (``axis``)."""
    return np.median(np.mean(x, axis=axis), axis=-1)


def fragility_stat(unit_kl: Any, *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Median over blocks of the mean next-token KL (nats) when that one block is skipped, item bootstrap.

    "Any single block's removal hurts" makes the *median* block costly; a model where only the first
    and last blocks matter has a small median. Items (rows) are resampled with all their blocks (percentile
    interval computed here: a statistic reducing two axes does not fit scipy's vectorised resample axis).

    Args:
        unit_kl: ``[n_items, n_blocks]`` per-item mean KL (the map's ``block_criticality["unit_kl"]``).
        n_boot, ci, seed: the bootstrap.

    Returns:
        ``{"value", "ci_low", "ci_high", "n_items", "n_blocks"}``.
    """
    x = np.asarray(unit_kl, float)
    x = x[np.isfinite(x).all(axis=1)]
    out = {"value": float(_median_block_kl(x)) if len(x) else float("nan"), "ci_low": float("nan"),
           "ci_high": float("nan"), "n_items": int(len(x)), "n_blocks": int(x.shape[1]) if x.ndim == 2 else 0}
    if len(x) < 2:
        return out
    tail = (1 - ci) / 2 * 100
    lo, hi = np.percentile(_boot_median_block_kl(x, n_boot, np.random.default_rng(seed)), [tail, 100 - tail])
    out.update(ci_low=float(lo), ci_high=float(hi))
    return out


def _boot_median_block_kl(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    return np.median(x[idx].mean(axis=1), axis=-1)


def fragility_difference(unit_kl_a: Any, unit_kl_b: Any, *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0,
                         floor: float = 1e-4) -> dict[str, Any]:
    """log(median block KL of A) − log(that of B), with a CI from independent item bootstraps.

    The two models have different depths (different block counts), which
    :func:`scipy.stats.bootstrap`'s multi-sample form cannot take (it broadcasts the samples), so the
    two item resamples are drawn here and the percentile interval of the differences is returned.
    ``floor`` (nats) keeps the log finite for a model whose median block costs nothing.

    Returns:
        ``{"value", "ci_low", "ci_high", "a", "b"}`` (``a``, ``b``: the two medians, nats).
    """
    xa, xb = (np.asarray(u, float) for u in (unit_kl_a, unit_kl_b))
    xa, xb = xa[np.isfinite(xa).all(axis=1)], xb[np.isfinite(xb).all(axis=1)]
    a, b = float(_median_block_kl(xa)), float(_median_block_kl(xb))
    out = {"value": float(np.log(max(a, floor)) - np.log(max(b, floor))), "a": a, "b": b,
           "ci_low": float("nan"), "ci_high": float("nan")}
    if len(xa) < 2 or len(xb) < 2:
        return out
    rng = np.random.default_rng(seed)
    d = (np.log(np.maximum(_boot_median_block_kl(xa, n_boot, rng), floor))
         - np.log(np.maximum(_boot_median_block_kl(xb, n_boot, rng), floor)))
    tail = (1 - ci) / 2 * 100
    lo, hi = np.percentile(d, [tail, 100 - tail])
    out.update(ci_low=float(lo), ci_high=float(hi))
    return out


# ============================================================================ first half (marked cells)
def _counts(marks: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first-half marks, all marks)`` per (family, technique)."""
    m = np.asarray(marks, bool)
    return m[..., half].sum(-1).astype(float), m.sum(-1).astype(float)


def _share_and_excess(mh, mt, ch, ct, half_frac):
    """Vectorised over leading axes: share ``S`` of first-half marks and excess ``S − E`` where ``E``
    expects each technique's marks at its control first-half share (``half_frac`` without control marks)."""
    tot = mt.sum((-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = mh.sum((-2, -1)) / tot
        ct_t = ct.sum(-2)
        q = np.where(ct_t > 0, ch.sum(-2) / np.where(ct_t > 0, ct_t, 1), half_frac)  # per technique
        expect = (mt.sum(-2) * q).sum(-1) / tot
    return share, share - expect


def first_half_test(marks: Any, control_marks: Any | None = None, *, n_boot: int = 2000, ci: float = 0.95,
                    seed: int = 0, n_perm: int = 4096) -> dict[str, Any]:
    """Share of marked cells in the first half of the layers, against each technique's depth bias.

    Statistic ``S`` = marked (family, technique, layer) cells with ``layer < n_layers / 2`` over all marked
    cells. Null: a technique marks early or late layers whatever the text (its depth bias), so the
    expected share is ``E = Σ_t m_t q_t / Σ_t m_t`` with ``m_t`` the technique's marked cells and
    ``q_t`` the first-half share of that technique's marks on the **control families**. The excess
    ``D = S − E`` is tested by a paired swap permutation: under the null a family's medical and
    control marks are exchangeable, so each family's pair is swapped (all ``2^F`` swaps when
    ``2^F <= n_perm``, else ``n_perm`` random ones plus the observed); one-sided p-values count swaps
    at least as extreme, the observed included. CIs of ``S`` and ``D``: percentile bootstrap over families
    (pairs).

    Args:
        marks: ``[n_families, n_techniques, n_layers]`` bool, the medical families' marks.
        control_marks: the same for each family's control family (same order), or None (no null:
            ``D`` and the p-values are NaN).
        n_boot, ci, seed: the bootstrap; ``n_perm`` the permutation budget.

    Returns:
        ``{"share", "share_ci", "excess", "excess_ci", "p_greater", "p_less", "n_families", "n_marked",
        "exact"}``.
    """
    m = np.asarray(marks, bool)
    F, _, L = m.shape
    half = np.arange(L) < L / 2
    half_frac = float(half.mean())
    mh, mt = _counts(m, half)
    rng = np.random.default_rng(seed)
    nan2 = (float("nan"), float("nan"))
    out: dict[str, Any] = {"n_families": int(F), "n_marked": int(mt.sum()), "share": float("nan"),
                           "share_ci": nan2, "excess": float("nan"), "excess_ci": nan2,
                           "p_greater": float("nan"), "p_less": float("nan"), "exact": False}
    if mt.sum() == 0:
        return out
    if control_marks is None:
        ch, ct = np.zeros_like(mh), np.zeros_like(mt)
    else:
        c = np.asarray(control_marks, bool)
        if c.shape != m.shape:
            raise ValueError(f"first_half_test: control marks {c.shape} vs marks {m.shape}")
        ch, ct = _counts(c, half)
    share, excess = _share_and_excess(mh, mt, ch, ct, half_frac)
    out.update(share=float(share), excess=float(excess) if control_marks is not None else float("nan"))
    tail = (1 - ci) / 2 * 100
    if F >= 2:
        idx = rng.integers(0, F, size=(n_boot, F))
        bs, be = _share_and_excess(mh[idx], mt[idx], ch[idx], ct[idx], half_frac)
        out["share_ci"] = tuple(float(v) for v in np.nanpercentile(bs, [tail, 100 - tail]))
        if control_marks is not None:
            out["excess_ci"] = tuple(float(v) for v in np.nanpercentile(be, [tail, 100 - tail]))
    if control_marks is None:
        return out
    exact = 2 ** F <= n_perm
    if exact:
        swaps = np.array(list(itertools.product([False, True], repeat=F)))
    else:
        swaps = np.vstack([np.zeros((1, F), bool), rng.random((n_perm, F)) < 0.5])
    s = swaps[:, :, None]
    _, d = _share_and_excess(np.where(s, ch, mh), np.where(s, ct, mt), np.where(s, mh, ch), np.where(s, mt, ct),
                             half_frac)
    d = d[np.isfinite(d)]
    eps = 1e-12
    out.update(p_greater=float(np.mean(d >= excess - eps)), p_less=float(np.mean(d <= excess + eps)), exact=exact)
    return out


def first_half_marks(km: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``(marks, control_marks)`` of a knowledge map for :func:`first_half_test`, under one rule.

    The control families have layer curves (``km.extras["control_curves"][family][technique]``) but no
    effect over a control of their own, so both sides are marked by the paper's interval rule with the
    map's thresholds: the medical curves and the control curves. A (family, technique) cell without a
    control curve is left out on both sides. Without any control curve: ``(km.marks(), None)``.
    """
    cc = (km.extras or {}).get("control_curves") or {}
    if not cc:
        return np.asarray(km.marks(), bool), None
    curves = {f: {t: np.asarray(cc[f][t], float) for t in km.techniques if t in (cc.get(f) or {})} for f in km.concepts}
    ctrl = type(km).from_curves(curves, n_layers=km.n_layers, techniques=list(km.techniques), rules=dict(km.rules),
                                rule="paper", **dict(km.params))
    med = km if km.rule == "paper" else km.rethreshold(rule="paper")
    m, c = np.asarray(med.marks(), bool), np.asarray(ctrl.marks(), bool)
    keep = np.array([[t in (cc.get(f) or {}) for t in km.techniques] for f in km.concepts], bool)[:, :, None]
    return m & keep, c & keep


__all__ = ["MID_DEPTH", "collapse_dip", "first_half_marks", "first_half_test", "fragility_difference",
           "fragility_stat"]
