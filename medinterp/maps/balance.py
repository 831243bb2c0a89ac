"""Balance of a cell's control: covariates, standardized mean differences and matching (METHOD §0b).

The map's null before 0.3 was "medical and control items are exchangeable"; it did not ask whether the
two families are *comparable*. Token counts, frame length, answer rarity, baseline confidence and task
size move every technique with no medicine involved, so a cell is compared on **matched units** and is
never marked when its control cannot be balanced:

1. per item (the unit of inference), the mean of each per-prompt covariate the technique records
   (:data:`medinterp.covariates.COVARIATES`) in both groups;
2. the standardized mean difference of each covariate before matching (:func:`smd`);
3. **matching** (:func:`match_units`): exact strata on the subject token count (and a task's class
   structure); inside a stratum a 1:k optimal assignment without replacement
   (:func:`scipy.optimize.linear_sum_assignment`; k = control items // medical items, at least 1) on the
   root-mean-square standardized difference of the other covariates, with a caliper (pairs farther
   apart than ``caliper`` pooled SDs are dropped); then trimming: while a covariate's |SMD| is above
   ``max_smd``, the matched set that tilts it most is dropped;
4. SMD after matching; a cell is **comparable** when every covariate's |SMD| after matching is <=
   ``max_smd`` (0.25) and at least ``min_units`` items of each group are left.

The test of the cell then runs on the matched items only (the effect is the effect on the matched
medical items, an ATT on the region of common support): both groups keep whole items, so the
permutation null of :func:`medinterp.stats.layer_effects` is unchanged.

Example:
    >>> import numpy as np
    >>> med = {"subject_tokens": np.array([1, 1, 2, 2, 3.]), "answer_prior": np.array([-9, -8, -9, -7, -8.])}
    >>> ctl = {"subject_tokens": np.array([1, 1, 1, 2, 2, 2.]), "answer_prior": np.array([-8, -9, -2, -7, -9, -3.])}
    >>> b = match_units(med, np.arange(5), ctl, np.arange(6), min_units=2)
    >>> b.comparable, b.medicine_units.tolist(), round(b.smd_before["subject_tokens"], 2)
    (True, ['0', '1', '2', '3'], 0.42)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.optimize

from medinterp.covariates import COVARIATES

#: covariates whose values are integer token counts: matched exactly (strata), not by distance
EXACT_COVARIATES: tuple[str, ...] = ("subject_tokens", "n_classes", "items_per_class")
#: the largest |SMD| after matching that a comparable control may keep (METHOD §0b; Stuart 2010's 0.25 rule)
MAX_SMD = 0.25



def _var(x: np.ndarray) -> float:
    """Sample variance of the finite values (0 with fewer than two: no spread to scale by, and no numpy
    "degrees of freedom" warning on the user's terminal)."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.var(x, ddof=1)) if len(x) > 1 else 0.0

def smd(a: Sequence[float], b: Sequence[float], scale: float | None = None) -> float:
    """Standardized mean difference ``(mean(a) - mean(b)) / sqrt((var(a) + var(b)) / 2)`` (ddof 1).

    With no spread in either group: 0 when the means are equal, else ±inf (a difference that no scale
    can call small). NaN values are ignored; NaN when a group is empty. ``scale``: the denominator to use
    instead of these groups' own pooled SD: after matching, the pooled SD of the groups *before* matching
    (Austin 2011; Stuart 2010), so that a matched subset whose spread shrank is not called imbalanced for a
    difference that did not grow.

    Example:
        >>> round(smd([1, 2, 3], [2, 3, 4]), 3), smd([2, 2], [2, 2]), smd([3, 3], [2, 2])
        (-1.0, 0.0, inf)
        >>> round(smd([3.1, 3.2], [3.0, 3.1], scale=1.0), 6)   # a 0.1 difference on a scale of 1 SD
        0.1
    """
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    diff = float(a.mean() - b.mean())
    if scale is not None and np.isfinite(scale) and scale > 0:
        return diff / float(scale)
    va = float(a.var(ddof=1)) if len(a) > 1 else 0.0
    vb = float(b.var(ddof=1)) if len(b) > 1 else 0.0
    pooled = np.sqrt((va + vb) / 2)
    if pooled <= 1e-12 * max(1.0, abs(float(a.mean())), abs(float(b.mean()))):
        return 0.0 if abs(diff) <= 1e-12 * max(1.0, abs(float(a.mean()))) else float(np.sign(diff) * np.inf)
    return float(diff / pooled)


@dataclasses.dataclass
class Balance:
    """The balance of one cell's control family: covariates before and after matching, and the matched items.

    Attributes:
        covariates: the covariates checked (recorded for both groups and not all NaN).
        medicine_mean, control_mean: covariate -> item-level mean before matching.
        medicine_mean_matched, control_mean_matched: the same after matching.
        smd_before, smd_after: covariate -> standardized mean difference (medicine - control).
        medicine_units, control_units: the matched item ids (all items when nothing was matched away).
        n_medicine, n_control: items before matching.
        comparable: every |SMD after| <= ``max_smd`` and >= ``min_units`` items left in each group.
        reason: why not comparable ("control not comparable: ..."), else None.
        method: how the units were matched, in words.
    """

    covariates: list
    medicine_mean: dict
    control_mean: dict
    medicine_mean_matched: dict
    control_mean_matched: dict
    smd_before: dict
    smd_after: dict
    medicine_units: np.ndarray
    control_units: np.ndarray
    n_medicine: int
    n_control: int
    comparable: bool
    reason: str | None
    method: str

    def table(self) -> list[dict[str, Any]]:
        """One row per covariate: means and SMD before and after matching (for curves, manifest and report)."""
        return [{"covariate": c, "medicine": _r(self.medicine_mean[c]), "control": _r(self.control_mean[c]),
                 "smd_before": _r(self.smd_before[c]), "medicine_matched": _r(self.medicine_mean_matched[c]),
                 "control_matched": _r(self.control_mean_matched[c]), "smd_after": _r(self.smd_after[c])}
                for c in self.covariates]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no unit lists)."""
        return {"comparable": self.comparable, "reason": self.reason, "method": self.method,
                "n_medicine": self.n_medicine, "n_control": self.n_control,
                "n_medicine_matched": int(len(self.medicine_units)), "n_control_matched": int(len(self.control_units)),
                "table": self.table()}


def _r(x: float) -> float | None:
    x = float(x)
    if np.isnan(x):
        return None
    return x if np.isinf(x) else round(x, 4)


def item_covariates(covariates: Mapping[str, np.ndarray], units: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(item ids in sorted order, covariate -> per-item mean)`` of per-prompt covariates (NaN-aware)."""
    units = np.asarray([str(u) for u in units])
    ids, inv = np.unique(units, return_inverse=True)
    out = {}
    for k, v in covariates.items():
        v = np.asarray(v, float)
        ok = np.isfinite(v)
        s = np.bincount(inv[ok], weights=v[ok], minlength=len(ids))
        n = np.bincount(inv[ok], minlength=len(ids))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[k] = np.where(n > 0, s / np.maximum(n, 1), np.nan)
    return ids, out


def match_units(
    medicine: Mapping[str, np.ndarray],
    medicine_units: Sequence[Any],
    control: Mapping[str, np.ndarray],
    control_units: Sequence[Any],
    *,
    max_smd: float = MAX_SMD,
    caliper: float = 1.0,
    min_units: int = 2,
    exact: Sequence[str] = EXACT_COVARIATES,
) -> Balance:
    """Match control items to medical items on their covariates; the balance before and after.

    Args:
        medicine, control: covariate -> per-prompt values (rows as ``*_units``).
        medicine_units, control_units: the item of each prompt row.
        max_smd: the largest |SMD| after matching a comparable control may keep.
        caliper: pairs whose root-mean-square standardized difference over the continuous covariates
            exceeds this many pooled SDs are dropped.
        min_units: fewest matched items per group for a comparable control.
        exact: covariates matched exactly (integer token counts; per-item means are rounded).

    Returns:
        A :class:`Balance`. With no covariate recorded by both groups: not comparable ("no covariates").
    """
    mids, mcov = item_covariates(medicine, medicine_units)
    cids, ccov = item_covariates(control, control_units)
    names = [k for k in COVARIATES if k in mcov and k in ccov
             and np.isfinite(mcov[k]).any() and np.isfinite(ccov[k]).any()]
    names += sorted(k for k in mcov if k in ccov and k not in COVARIATES
                    and np.isfinite(mcov[k]).any() and np.isfinite(ccov[k]).any())
    before_m = {k: float(np.nanmean(mcov[k])) for k in names}
    before_c = {k: float(np.nanmean(ccov[k])) for k in names}
    smd_b = {k: smd(mcov[k], ccov[k]) for k in names}
    # the SMD after matching keeps the denominator of the SMD before (the unmatched groups' pooled SD)
    scale = {k: _pooled_sd(mcov[k], ccov[k]) for k in names}
    if not names:
        return Balance([], {}, {}, {}, {}, {}, {}, mids, cids, len(mids), len(cids), False,
                       "control not comparable: no covariates recorded, so balance cannot be checked", "none")
    ex = [k for k in names if k in exact]
    cont = [k for k in names if k not in exact]
    # items with a missing covariate cannot be matched on it: left out
    mok = np.all([np.isfinite(mcov[k]) for k in names], axis=0)
    cok = np.all([np.isfinite(ccov[k]) for k in names], axis=0)
    sd = {k: np.sqrt((_var(mcov[k]) + _var(ccov[k])) / 2) if len(mids) > 1 and len(cids) > 1 else 0.0 for k in cont}
    mkey = [tuple(int(round(mcov[k][i])) for k in ex) if mok[i] else None for i in range(len(mids))]
    ckey = [tuple(int(round(ccov[k][j])) for k in ex) if cok[j] else None for j in range(len(cids))]
    # k control items per medical item where the control family is k times larger (power is kept; the
    # controls of one medical item are its k nearest in the optimal assignment)
    ratio = max(1, int(cok.sum()) // max(1, int(mok.sum())))
    groups: dict[int, list[int]] = {}  # medical item -> its matched control items
    for stratum in sorted({mkey[i] for i in range(len(mids)) if mok[i]}):
        mi = [i for i in range(len(mids)) if mok[i] and mkey[i] == stratum]
        ci = [j for j in range(len(cids)) if cok[j] and ckey[j] == stratum]
        if not ci:
            continue
        # root-mean-square standardized difference over the continuous covariates (0 SD: any difference is far)
        d = np.zeros((len(mi), len(ci)))
        for k in cont:
            diff = np.abs(mcov[k][mi][:, None] - ccov[k][ci][None, :])
            d += (diff / sd[k]) ** 2 if sd[k] > 0 else np.where(diff > 0, np.inf, 0.0)
        d = np.sqrt(d / max(1, len(cont)))
        # pairs beyond the caliper cost more than any set of pairs within it, so the assignment first maximizes
        # how many medical items find a control within the caliper (a far medical item must not take the
        # near control of another), then minimizes distance; they are dropped below
        big = 1e6 * (1 + len(mi))
        # 1:k: each medical item's row repeated k times, each control item used at most once
        cost = np.repeat(np.where(np.isfinite(d) & (d <= caliper), d, big), ratio, axis=0)
        r, c = scipy.optimize.linear_sum_assignment(cost)
        for a, b in zip(r, c):
            if d[a // ratio, b] <= caliper:
                groups.setdefault(mi[a // ratio], []).append(ci[b])
    # Trim: while a covariate's |SMD| stays above max_smd, drop the matched set (a medical item and its
    # controls) that pulls it furthest in the imbalanced direction. Matching within a caliper balances
    # pairs, not means; this removes the few pairs that still tilt a mean, instead of refusing the cell.
    n_trimmed = 0
    while groups:
        km = np.asarray(sorted(groups), int)
        kc = np.asarray(sorted(c for cs in groups.values() for c in cs), int)
        cur = {k: smd(mcov[k][km], ccov[k][kc], scale[k]) for k in names}
        worst = max(names, key=lambda k: abs(cur[k]) if not np.isnan(cur[k]) else -1.0)
        if not abs(cur[worst]) > max_smd or len(groups) <= min_units:
            break
        sign = np.sign(cur[worst]) if np.isfinite(cur[worst]) else np.sign(np.mean(mcov[worst][km]) - np.mean(ccov[worst][kc]))
        pull = {i: sign * (mcov[worst][i] - np.mean(ccov[worst][cs])) for i, cs in groups.items()}
        drop = max(sorted(pull), key=lambda i: pull[i])
        if pull[drop] <= 0:
            break
        del groups[drop]
        n_trimmed += 1
    keep_m = np.asarray(sorted(groups), int)
    keep_c = np.asarray(sorted(c for cs in groups.values() for c in cs), int)
    after_m = {k: float(np.mean(mcov[k][keep_m])) if len(keep_m) else float("nan") for k in names}
    after_c = {k: float(np.mean(ccov[k][keep_c])) if len(keep_c) else float("nan") for k in names}
    smd_a = {k: smd(mcov[k][keep_m], ccov[k][keep_c], scale[k]) for k in names}
    method = (f"1:{ratio} optimal matching of items without replacement, exact on {', '.join(ex) or 'nothing'}, "
              f"caliper {caliper:g} pooled SD (RMS) on {', '.join(cont) or 'nothing'}"
              + (f"; {n_trimmed} matched sets trimmed to balance the means" if n_trimmed else ""))
    reason = None
    if min(len(keep_m), len(keep_c)) < min_units:
        worst = max(names, key=lambda k: abs(smd_b[k]) if np.isfinite(smd_b[k]) or np.isinf(smd_b[k]) else -1)
        reason = (f"control not comparable: {len(keep_m)} matched items (< {min_units}); "
                  f"{worst} {_fmt(before_m[worst])} vs {_fmt(before_c[worst])}")
    else:
        bad = [k for k in names if not abs(smd_a[k]) <= max_smd]
        if bad:
            k = max(bad, key=lambda k: abs(smd_a[k]) if not np.isnan(smd_a[k]) else np.inf)
            reason = (f"control not comparable: {k} {_fmt(after_m[k])} vs {_fmt(after_c[k])} after matching "
                      f"(SMD {smd_a[k]:.2f} > {max_smd:g})")
    return Balance(names, before_m, before_c, after_m, after_c, smd_b, smd_a, mids[keep_m], cids[keep_c],
                   len(mids), len(cids), reason is None, reason, method)


def _pooled_sd(a: np.ndarray, b: np.ndarray) -> float:
    """``sqrt((var(a) + var(b)) / 2)`` over the finite values (ddof 1); NaN with fewer than 2 in a group."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2))


def _fmt(x: float) -> str:
    return "nan" if np.isnan(x) else f"{x:.3g}"


__all__ = ["Balance", "EXACT_COVARIATES", "MAX_SMD", "item_covariates", "match_units", "smd"]
