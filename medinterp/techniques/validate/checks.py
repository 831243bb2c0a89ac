"""The statistics of a check of the band validation: item-cluster bootstrap of a ratio of sums, and the
statistic of the band against the random sets' (percentile, permutation p, verdict; METHOD.md section 6)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: what the checks are judged at (METHOD.md): one-sided permutation level
ALPHA = 0.05


def _unit_sums(num: np.ndarray, den: np.ndarray, units: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    keys = list(dict.fromkeys(units))
    idx = np.array([keys.index(u) for u in units])
    U = len(keys)
    n = np.zeros(num.shape[:-1] + (U,))
    d = np.zeros(den.shape[:-1] + (U,))
    for j in range(U):
        n[..., j] = num[..., idx == j].sum(-1)
        d[..., j] = den[..., idx == j].sum(-1)
    return n, d


def ratio_boot(num: np.ndarray, den: np.ndarray, units: Sequence[str], n_boot: int, seed: int) -> np.ndarray:
    """Item-cluster bootstrap draws of ``sum(num) / sum(den)`` (items drawn with replacement, all their pairs)."""
    n, d = _unit_sums(np.asarray(num, float), np.asarray(den, float), units)
    U = n.shape[-1]
    draws = np.random.default_rng(seed).integers(0, U, size=(n_boot, U))
    return n[draws].sum(-1) / d[draws].sum(-1)


def _check(name: str, values: np.ndarray, boot: np.ndarray, ci: float, *, gate: tuple[bool, str] | None = None,
           alpha: float = ALPHA) -> dict[str, Any]:
    """Statistic of the band (values[0]) against the random sets (values[1:]): percentile, permutation p,
    item-bootstrap CI and the verdict by the rule of METHOD.md."""
    s = float(values[0])
    null = np.asarray(values[1:], float)
    null = null[np.isfinite(null)]
    lo, hi = (float(x) for x in np.nanpercentile(boot, [50 * (1 - ci), 50 * (1 + ci)]))
    p = float((1 + np.sum(null >= s)) / (1 + len(null))) if len(null) else float("nan")
    pct = float(100 * (np.sum(null < s) + 0.5 * np.sum(null == s)) / len(null)) if len(null) else float("nan")
    floor = 1 / (1 + len(null)) if len(null) else 1.0
    if not np.isfinite(s):
        verdict, reason = "inconclusive", "not computable"
    elif hi <= 0:
        verdict, reason = "does not", f"CI upper end {hi:.3g} <= 0"
    elif p > 0.5:
        verdict, reason = "does not", "at or below the median of the random sets"
    elif gate is not None and not gate[0]:
        verdict, reason = ("does not" if gate[1].startswith("!") else "inconclusive"), gate[1].lstrip("!")
    elif floor > alpha:
        verdict, reason = "inconclusive", f"only {len(null)} random sets: p cannot reach {alpha}"
    elif p <= alpha and lo > 0:
        verdict, reason = "supports", f"p = {p:.3g} <= {alpha} and CI above 0"
    else:
        verdict, reason = "inconclusive", f"p = {p:.3g}" + ("" if lo > 0 else f", CI lower end {lo:.3g} <= 0")
    return {"statistic_name": name, "statistic": s, "ci": [lo, hi], "percentile": pct, "p": p, "n_null": int(len(null)),
            "verdict": verdict, "reason": reason}
