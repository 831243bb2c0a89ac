"""The paper's interval rules (METHOD.md §5) on one layer curve: smoothing, steepest rise, percentile runs.

Kept for ``rule="paper"`` (labelled as such in the report); the default marking is effect over
control (:mod:`medinterp.maps.controls`).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
from jaxtyping import Float

from medinterp.errors import MedinterpError
from medinterp.techniques.base import INTERVAL_RULES


def smooth(curve: Float[np.ndarray, "n_layers"], sigma: float = 1.0) -> Float[np.ndarray, "n_layers"]:
    """Gaussian-smooth a per-layer curve (``mode="nearest"`` at the ends). NaNs are not allowed.

    Example:
        >>> smooth(np.array([0.0, 0, 3, 0, 0]), sigma=0).tolist()
        [0.0, 0.0, 3.0, 0.0, 0.0]
    """
    curve = np.asarray(curve, dtype=float)
    if sigma <= 0:
        return curve.copy()
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(curve, sigma=sigma, mode="nearest")


def steepest_rise_window(
    smoothed: Float[np.ndarray, "n_layers"], window: int = 3, min_rise: float = 0.0
) -> dict[str, Any] | None:
    """The ``window``-layer window ``[l, l + window - 1]`` maximising ``s[l + window - 1] - s[l]``.

    Returns ``{"start", "end", "score"}`` (score = the rise) or None when no window rises by more
    than ``min_rise`` or the curve is shorter than the window.

    Example:
        >>> steepest_rise_window(np.array([0, 0, 0, 1, 3, 4, 4.0]))
        {'start': 2, 'end': 4, 'score': 3.0}
    """
    s = np.asarray(smoothed, dtype=float)
    if window < 2 or len(s) < window:
        return None
    rises = s[window - 1 :] - s[: len(s) - window + 1]
    best = int(np.argmax(rises))
    if not rises[best] > min_rise:
        return None
    return {"start": best, "end": best + window - 1, "score": float(rises[best])}


def percentile_intervals(
    smoothed: Float[np.ndarray, "n_layers"],
    percentile: float = 75.0,
    min_len: int = 2,
    max_intervals: int = 3,
) -> list[dict[str, Any]]:
    """Runs of consecutive layers at or above the curve's ``percentile``-th percentile.

    Runs shorter than ``min_len`` are dropped; of the rest the ``max_intervals`` with the largest
    area (sum of ``s - threshold`` over the run) are kept, returned in layer order. Each is
    ``{"start", "end", "score", "area", "threshold"}`` (score = mean smoothed value over the run).
    A flat curve (all values equal) has no informative interval and returns ``[]``.

    Example:
        >>> [(d["start"], d["end"]) for d in percentile_intervals(np.r_[0, 4, 4, 0, 0, 0, 3, 3, 0, 0.0])]
        [(1, 2), (6, 7)]
    """
    s = np.asarray(smoothed, dtype=float)
    if len(s) == 0 or np.ptp(s) <= 1e-12 * max(1.0, float(np.abs(s).max())):
        return []
    thr = float(np.percentile(s, percentile))
    # at or above the threshold; strictly above when the threshold is the curve's floor (ties at the
    # minimum are not evidence)
    above = s >= thr if thr > s.min() else s > thr
    runs: list[tuple[int, int]] = []
    start = None
    for i, a in enumerate(above):
        if a and start is None:
            start = i
        if not a and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(s) - 1))
    out = []
    for a, b in runs:
        if b - a + 1 < min_len:
            continue
        seg = s[a : b + 1]
        out.append(
            {"start": a, "end": b, "score": float(seg.mean()), "area": float((seg - thr).sum()), "threshold": thr}
        )
    out.sort(key=lambda d: -d["area"])
    out = out[:max_intervals]
    out.sort(key=lambda d: d["start"])
    return out


def technique_intervals(curve: np.ndarray, rule: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Intervals one curve gets under an interval ``rule`` (``"rise"`` or ``"percentile"``) and ``params``.

    Example:
        >>> [(d["start"], d["end"]) for d in technique_intervals(np.r_[0, 0, 0, 1, 3, 4, 4.0], "rise",
        ...                                                       {"sigma": 0, "window": 3, "min_rise": 0.0})]
        [(2, 4)]
    """
    if rule not in INTERVAL_RULES:
        raise MedinterpError(f"interval rule must be one of {INTERVAL_RULES}, not {rule!r}")
    s = smooth(curve, params["sigma"])
    if rule == "rise":
        w = steepest_rise_window(s, params["window"], params["min_rise"])
        return [] if w is None else [dict(w, rule="steepest_rise")]
    return [
        dict(d, rule="percentile")
        for d in percentile_intervals(s, params["percentile"], params["min_len"], params["max_intervals"])
    ]


def _ranges_text(layers: Iterable[int]) -> str:
    """``[3,4,5,9]`` → ``'3–5, 9'``."""
    layers = sorted(set(int(x) for x in layers))
    parts: list[str] = []
    i = 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        parts.append(f"{layers[i]}" if i == j else f"{layers[i]}–{layers[j]}")
        i = j + 1
    return ", ".join(parts)
