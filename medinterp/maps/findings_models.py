"""Findings that compare models (the paper contrasts Gemma with Llama / Qwen / GPT-OSS).

:func:`compare_findings` takes two or more knowledge maps and returns, for each map against the first
(the reference), one row per contrast: the statistic on each model, their difference with a CI, and a
verdict. The contrasts (statistics from :mod:`medinterp.maps.findings_stats`):

* **fragility**: log(median block skip KL of A) − log(that of B), independent item bootstraps;
* **first half**: the first-half share of marked cells beyond each technique's depth bias (its excess
  over the control families, or the raw share when a map has no control curves), A − B, family bootstraps;
* **collapse by relative depth**: collapse depth ``1 − PR(dip) / PR(smaller end)`` at the mid-depth
  dip (relative depth 0.25-0.75), A − B; CI by interval arithmetic of the per-model CIs (conservative).

The CIs of a pair's contrasts are at level ``1 − alpha / 3`` (Bonferroni over the three contrasts).
A verdict "holds" means the CI of A − B lies above 0 (A more fragile / more first-half / more
collapsed), "does not hold" below 0, "inconclusive" when it includes 0 or a side is not measured.

Example:
    >>> import numpy as np
    >>> from medinterp.maps import KnowledgeMap
    >>> kw = dict(techniques=["peak"], rules={"peak": "percentile"})
    >>> a = KnowledgeMap.from_curves({"drugs": {"peak": np.r_[0, 5, 5, 0, 0, 0.0]}}, model_name="A", **kw)
    >>> b = KnowledgeMap.from_curves({"drugs": {"peak": np.r_[0, 0, 0, 0, 5, 5.0]}}, model_name="B", **kw)
    >>> [r.verdict for r in compare_findings([a, b])]
    ['inconclusive', 'inconclusive', 'inconclusive']
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from medinterp.maps.findings import FAILS, HOLDS, UNSURE, block_criticality
from medinterp.maps.findings_stats import (
    _share_and_excess,
    collapse_dip,
    first_half_marks,
    fragility_difference,
    fragility_stat,
)

#: contrasts per pair of models (the Bonferroni divisor of the CI level).
N_CONTRASTS = 3


@dataclasses.dataclass
class ModelContrast:
    """One row of the cross-model findings table: model A against model B."""

    claim: str
    statistic: str
    a: str
    b: str
    value_a: float | None = None
    value_b: float | None = None
    difference: float | None = None
    ci: tuple[float, float] | None = None
    verdict: str = UNSURE
    detail: str = ""

    def as_row(self) -> tuple[str, str, str, str, str, str]:
        """``(claim, statistic, A, B, difference [CI], verdict)`` as text (escape before HTML)."""
        f = lambda v: "—" if v is None or not np.isfinite(v) else f"{v:.3g}"  # noqa: E731
        diff = f(self.difference) + ("" if self.ci is None or not np.all(np.isfinite(self.ci))
                                     else f" [{self.ci[0]:.3g}, {self.ci[1]:.3g}]")
        return (self.claim, self.statistic, f"{self.a}: {f(self.value_a)}", f"{self.b}: {f(self.value_b)}", diff,
                self.verdict + (f": {self.detail}" if self.detail else ""))


def _verdict(ci: tuple[float, float] | None) -> str:
    if ci is None or not np.isfinite(ci).all():
        return UNSURE
    return HOLDS if ci[0] > 0 else FAILS if ci[1] < 0 else UNSURE


# ============================================================================ the three contrasts
def fragility_contrast(crit_a: Mapping[str, Any] | None, crit_b: Mapping[str, Any] | None, a: str = "A", b: str = "B",
                       *, ci: float = 0.95, n_boot: int = 2000, seed: int = 0) -> ModelContrast:
    """A more fragile to single-block removal than B: the CI of the log ratio of median skip KLs above 0.

    Args:
        crit_a, crit_b: the maps' block-criticality data (``unit_kl``: ``[n_items, n_blocks]`` per-item KL).
        a, b: display names. ci, n_boot, seed: the bootstrap.
    """
    row = ModelContrast(f"{a} more fragile to single-block removal than {b}",
                        "log(median block skip KL) A − B", a, b)
    ua, ub = ((c or {}).get("unit_kl") for c in (crit_a, crit_b))
    if ua is None or ub is None or len(ua) < 2 or len(ub) < 2:
        row.detail = "not measured (needs per-item block-criticality KL on both models)"
        return row
    d = fragility_difference(ua, ub, n_boot=n_boot, ci=ci, seed=seed)
    row.value_a, row.value_b, row.difference = d["a"], d["b"], d["value"]
    row.ci = (d["ci_low"], d["ci_high"])
    row.verdict = _verdict(row.ci)
    sa, sb = (fragility_stat(u, n_boot=min(n_boot, 1000), ci=ci, seed=seed) for u in (ua, ub))
    row.detail = (f"median block KL {a} {sa['value']:.3g} [{sa['ci_low']:.3g}, {sa['ci_high']:.3g}] nats "
                  f"({sa['n_blocks']} blocks), {b} {sb['value']:.3g} [{sb['ci_low']:.3g}, {sb['ci_high']:.3g}] "
                  f"({sb['n_blocks']} blocks); ratio {np.exp(d['value']):.3g}")
    return row


def _first_half_draws(marks: np.ndarray, ctrl: np.ndarray | None, n_boot: int,
                      rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """The first-half statistic (excess over depth bias, or the share without controls) and its family bootstrap."""
    L = marks.shape[-1]
    half = np.arange(L) < L / 2
    mh, mt = marks[..., half].sum(-1).astype(float), marks.sum(-1).astype(float)
    c = np.zeros_like(marks) if ctrl is None else ctrl
    ch, ct = c[..., half].sum(-1).astype(float), c.sum(-1).astype(float)
    k = 0 if ctrl is None else 1
    est = _share_and_excess(mh, mt, ch, ct, float(half.mean()))[k]
    idx = rng.integers(0, len(marks), size=(n_boot, len(marks)))
    draws = _share_and_excess(mh[idx], mt[idx], ch[idx], ct[idx], float(half.mean()))[k]
    return float(est), draws


def first_half_contrast(km_a: Any, km_b: Any, a: str = "A", b: str = "B", *, ci: float = 0.95, n_boot: int = 2000,
                        seed: int = 0) -> ModelContrast:
    """A keeps more of its marked knowledge in the first half than B (beyond the techniques' depth bias).

    Both maps with control curves: the excess of the first-half share over each technique's share on the
    control families; otherwise the raw first-half share (said in the row). Families resampled
    independently on each map; a map with one family or no marked cell is not measured.
    """
    ma, ca = first_half_marks(km_a)
    mb, cb = first_half_marks(km_b)
    both = ca is not None and cb is not None
    if not both:
        ca = cb = None
    what = "first-half share − depth-bias expectation" if both else "first-half share of marked cells (no depth-bias null)"
    row = ModelContrast(f"{a} keeps more knowledge in the first half than {b}", what + ", A − B", a, b)
    if min(len(ma), len(mb)) < 2 or not ma.any() or not mb.any():
        row.detail = "not measured (needs >= 2 families with marked layers on both models)"
        return row
    rng = np.random.default_rng(seed)
    va, da = _first_half_draws(ma, ca, n_boot, rng)
    vb, db = _first_half_draws(mb, cb, n_boot, rng)
    diff = da - db
    diff = diff[np.isfinite(diff)]
    tail = (1 - ci) / 2 * 100
    row.value_a, row.value_b, row.difference = va, vb, va - vb
    if len(diff) > 10:
        row.ci = tuple(float(v) for v in np.percentile(diff, [tail, 100 - tail]))  # type: ignore[assignment]
    row.verdict = _verdict(row.ci)
    row.detail = "family bootstrap on each model" + ("" if both else "; the techniques' depth bias is not removed")
    return row


def _dip(km: Any) -> tuple[str, dict] | None:
    """The first family's participation-ratio dip (with its control family and twin)."""
    found = (km.extras or {}).get("findings") or {}
    key = "collapse_participation_ratio"
    for f in km.concepts:
        s = (found.get(f) or {}).get(key)
        if isinstance(s, Mapping) and s.get("per_layer") is not None:
            side = [(found.get(f + suf) or {}).get(key) for suf in ("__control", "__twin")]
            return f, collapse_dip(s, *side)
    return None


def collapse_contrast(km_a: Any, km_b: Any, a: str = "A", b: str = "B") -> ModelContrast:
    """A collapses more at mid depth than B: collapse depth ``1 − PR(dip) / PR(smaller end)``, A − B.

    The dip is the minimum participation ratio at relative depth 0.25-0.75 (models of different depth
    compare by relative depth); the CI combines the per-model CI bounds (interval arithmetic, wider
    than a joint bootstrap: conservative).
    """
    row = ModelContrast(f"{a} collapses more at mid depth than {b}", "1 − PR(mid-depth dip) / PR(end), A − B", a, b)
    da, db = _dip(km_a), _dip(km_b)
    if da is None or db is None or da[1].get("layer") is None or db[1].get("layer") is None:
        row.detail = "not measured (needs the participation ratio per layer on both models)"
        return row
    (fa, xa), (fb, xb) = da, db
    row.value_a, row.value_b = 1 - xa["ratio"], 1 - xb["ratio"]
    row.difference = row.value_a - row.value_b
    if xa["has_ci"] and xb["has_ci"]:
        lo_a, hi_a = 1 - xa["ratio_ci"][1], 1 - xa["ratio_ci"][0]
        lo_b, hi_b = 1 - xb["ratio_ci"][1], 1 - xb["ratio_ci"][0]
        row.ci = (float(lo_a - hi_b), float(hi_a - lo_b))
    row.verdict = _verdict(row.ci)
    row.detail = (f"{a} ({fa}) dip at depth {xa['rel_depth']:.2f}, {b} ({fb}) at depth {xb['rel_depth']:.2f}"
                  + ("" if row.ci is not None else "; no per-layer CI"))
    return row


def compare_findings(maps: Sequence[Any], names: Sequence[str] | None = None, *, alpha: float = 0.05,
                     n_boot: int = 2000, seed: int = 0) -> list[ModelContrast]:
    """The cross-model findings table: each map against the first, three contrasts per pair.

    Args:
        maps: two or more :class:`~medinterp.maps.KnowledgeMap` objects.
        names: display names (default: the maps' model names).
        alpha: family-wise level per pair; each contrast's CI is at ``1 − alpha / 3``.
        n_boot, seed: the bootstraps.
    """
    names = list(names or [m.model_name or f"map {k}" for k, m in enumerate(maps)])
    ci = 1 - alpha / N_CONTRASTS
    rows: list[ModelContrast] = []
    ref, a = maps[0], names[0]
    for km, b in zip(maps[1:], names[1:]):
        rows.append(fragility_contrast(block_criticality(ref), block_criticality(km), a, b, ci=ci, n_boot=n_boot,
                                       seed=seed))
        rows.append(first_half_contrast(ref, km, a, b, ci=ci, n_boot=n_boot, seed=seed))
        rows.append(collapse_contrast(ref, km, a, b))
    return rows


__all__ = ["ModelContrast", "N_CONTRASTS", "collapse_contrast", "compare_findings", "first_half_contrast",
           "fragility_contrast"]
