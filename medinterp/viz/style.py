"""The report's one palette, number formatting, note shortening and metric axis ranges.

Every figure of :mod:`medinterp.viz` takes its colours from here, so a technique (or a restore
position, a read, a control) has the same colour in every figure of a report; numbers go through
:func:`num`, so a value that was not measured reads "not measured" and never "nan"; notes drawn on a
figure go through :func:`short_note`, which cuts at a word boundary (the full text goes in the hover).

Example:
    >>> color_of("lesion") == color_of("lesion") != color_of("patching")
    True
    >>> num(float("nan"))
    'not measured'
    >>> short_note("control not comparable: intact_logp differs", 30)
    'control not comparable …'
    >>> metric_range("linearity_r2", [-100.0, 0.4])
    [-1.0, 1.0]
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Iterable

#: One colour per technique, per restore position and per read, fixed across all figures of a report.
COLORS: dict[str, str] = {
    # techniques
    "geometry": "#1f77b4",
    "saliency": "#ff7f0e",
    "lesion": "#d62728",
    "patching": "#2ca02c",
    "validate": "#8c564b",
    "causal_trace": "#17becf",
    # restore positions of causal tracing
    "restore span": "#9467bd",
    "restore last": "#e377c2",
    # reads of a probe (span / UMAP and final token / raw), and the lexical baseline
    "span": "#1f77b4",
    "umap": "#1f77b4",
    "last": "#bcbd22",
    "raw": "#bcbd22",
    "lexical baseline": "#7f7f7f",
    # saliency's components: shades of the saliency colour
    "attn": "#e6550d",
    "mlp": "#fdae6b",
    "combined": "#a63603",
    # lesion modes: "skip" (the map's mode) in the lesion colour, the sub-layer modes in related shades
    "skip": "#d62728",
    "block_mean": "#7b4173",
    "mlp_zero": "#ff9896",
    "attn_zero": "#8c564b",
    "mlp_mean": "#c49c94",
    "attn_mean": "#e377c2",
    # controls: the random twin and marked-layer shading
    "random twin": "#636363",
    "marked": "#fff3b0",
}

#: Colours for series without a fixed colour (picked by a stable hash of the name, so fixed too).
FALLBACK = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#31a354", "#756bb1",
            "#636363", "#e6550d")

#: Concept colours (distinct from the technique colours), indexed by the concept's place in the map.
CONCEPT_COLORS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#31a354", "#756bb1",
                  "#e6550d", "#969696")

#: Diverging colour scale of effects over control (centred at 0).
DIVERGING = "RdBu_r"

#: Axis ranges of metrics with a meaningful bound: ``(floor, ceiling)``, ``None`` = free.
METRIC_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "r2": (-1.0, 1.0),
    "linearity_r2": (-1.0, 1.0),
    "grouped r²": (-1.0, 1.0),
    "chance-corrected balanced accuracy": (-1.0, 1.0),
    "probe": (-1.0, 1.0),
    "silhouette": (-1.0, 1.0),
    "silhouette_cos": (-1.0, 1.0),
    "spearman": (-1.0, 1.0),
    "stage_spearman": (-1.0, 1.0),
    "mean_cosine": (-1.0, 1.0),
    "mean_cosine_centred": (-1.0, 1.0),
    "anisotropy": (0.0, 1.0),
    "circularity": (0.0, 1.0),
}

#: Unit (or scale) of each metric, for axis titles.
METRIC_UNITS: dict[str, str] = {
    "probe": "score, 0 = chance",
    "linearity_r2": "R²",
    "silhouette": "silhouette, −1…1",
    "silhouette_cos": "cosine silhouette, −1…1",
    "matched_diff": "cosine difference",
    "age_step_ratio": "ratio",
    "step_ratio": "ratio",
    "stage_spearman": "Spearman ρ",
    "spearman": "Spearman ρ",
    "mean_cosine_centred": "cosine",
    "mean_cosine": "cosine",
    "participation_ratio": "dimensions",
    "eff_rank": "dimensions",
    "anisotropy": "fraction",
    "circularity": "fraction",
    "resid_norm": "L2 norm",
}


def color_of(name: str) -> str:
    """The fixed colour of a technique / restore / read / named series (a stable hash for other names)."""
    key = str(name)
    if key in COLORS:
        return COLORS[key]
    low = key.lower()
    for k in ("restore span", "restore last", "lexical baseline"):
        if low.startswith(k):
            return COLORS[k]
    return FALLBACK[zlib.crc32(key.encode()) % len(FALLBACK)]


def concept_color(index: int) -> str:
    """The colour of the ``index``-th concept of a map (the same in every technique's section)."""
    return CONCEPT_COLORS[index % len(CONCEPT_COLORS)]


def finite(x: Any) -> bool:
    """Whether ``x`` is a finite number."""
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def num(x: Any, spec: str = ".3g", missing: str = "not measured") -> str:
    """``x`` formatted with ``spec``; ``missing`` for None, NaN or ±inf (never "nan")."""
    return format(float(x), spec) if finite(x) else missing


def ci_text(value: Any, lo: Any, hi: Any, spec: str = ".3g", missing: str = "not measured") -> str:
    """``"v [lo, hi]"``, ``"v"`` when the interval is unknown, ``missing`` when ``v`` is."""
    if not finite(value):
        return missing
    if finite(lo) and finite(hi):
        return f"{format(float(value), spec)} [{format(float(lo), spec)}, {format(float(hi), spec)}]"
    return format(float(value), spec)


def short_note(text: Any, width: int = 60) -> str:
    """``text`` cut at the last word boundary before ``width`` characters, with "…" when cut (never mid-word)."""
    s = " ".join(str(text).split())
    if len(s) <= width:
        return s
    cut = s[: width - 1]
    space = cut.rfind(" ")
    if space > 0:
        cut = cut[:space]
    return cut.rstrip(" ,;:(") + " …"


def wrap_note(text: Any, width: int = 80, sep: str = "<br>") -> str:
    """``text`` wrapped at word boundaries into lines of at most ``width`` characters, joined by ``sep``."""
    import textwrap

    return sep.join(textwrap.wrap(" ".join(str(text).split()), width, break_long_words=False,
                                  break_on_hyphens=False)) or ""


def metric_range(metric: str, values: Iterable[Any], pad: float = 0.05) -> list[float] | None:
    """The y range of a metric's panel: its data range, clipped to the metric's meaningful bounds.

    An R² (or chance-corrected accuracy) far below −1 means "worse than predicting the mean"; the axis
    stops at −1 instead of running to −100. Returns None (autorange) for unbounded metrics.
    """
    lo_b, hi_b = METRIC_BOUNDS.get(str(metric).lower(), (None, None))
    if lo_b is None and hi_b is None:
        return None
    vals = [float(v) for v in values if finite(v)]
    if not vals:
        return [lo_b if lo_b is not None else 0.0, hi_b if hi_b is not None else 1.0]
    lo, hi = min(vals), max(vals)
    span = max(hi - lo, 1e-9)
    lo, hi = lo - pad * span, hi + pad * span
    if lo_b is not None:
        lo = max(lo, lo_b)
    if hi_b is not None:
        hi = min(hi, hi_b)
    if lo >= hi:
        lo, hi = (lo_b if lo_b is not None else hi - 1.0), (hi_b if hi_b is not None else lo + 1.0)
    return [lo, hi]


def metric_title(metric: str) -> str:
    """``metric (unit)`` for an axis title (the metric alone when its unit is unknown)."""
    unit = METRIC_UNITS.get(str(metric))
    return f"{metric} ({unit})" if unit else str(metric)


__all__ = ["COLORS", "CONCEPT_COLORS", "DIVERGING", "METRIC_BOUNDS", "METRIC_UNITS", "ci_text", "color_of",
           "concept_color", "finite", "metric_range", "metric_title", "num", "short_note", "wrap_note"]
