"""Knowledge-map synthesis (no model): smoothing, interval maths, the :class:`KnowledgeMap`, comparison.

The map follows the paper (METHOD.md §5). For every concept family (a map row) each technique gives a
per-layer curve over blocks ``0..n_layers-1`` (higher = more evidence). The synthesis:

1. smooths each curve with a Gaussian (``sigma=1`` layer, ``scipy.ndimage.gaussian_filter1d``,
   ``mode="nearest"``);
2. techniques whose :attr:`~medinterp.techniques.base.Technique.interval_rule` is ``"rise"``: marks the
   ``window``-layer window (default 3) across which the smoothed curve rises the most, i.e. the ``l``
   maximising ``s[l + window - 1] - s[l]``; no interval when no window rises by more than ``min_rise``
   (default 0);
3. techniques whose rule is ``"percentile"``: the runs of consecutive layers whose smoothed value is at
   or above the ``percentile``-th percentile (default 75) of that smoothed curve, at least ``min_len``
   layers long (default 2); when more than ``max_intervals`` (default 3) runs qualify, the ones with
   the largest *area* (sum over the run of smoothed value minus threshold) are kept;
4. **consensus**: for each concept and layer, how many techniques mark that layer.

Every threshold is a parameter. The raw curves are stored with the map, so
:meth:`KnowledgeMap.rethreshold` redraws it with other thresholds without touching the model. The
rule of each column comes from :data:`medinterp.techniques.REGISTRY` (stored with the map).

Example:
    >>> import numpy as np
    >>> curves = {"drugs": {"peak": np.r_[0, 0, 5, 5, 5, 0, 0, 0, 0, 0.0]}}
    >>> km = KnowledgeMap.from_curves(curves, n_layers=10, techniques=["peak", "step"],
    ...                               rules={"peak": "percentile", "step": "rise"})
    >>> [(iv["start"], iv["end"]) for iv in km.intervals]
    [(2, 4)]
    >>> km.summary()["drugs"]
    'layers 2–4 by 1 of 2 techniques (peak 2–4; not run: step)'
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from jaxtyping import Float

from medinterp.errors import MedinterpError
from medinterp.results import Result, renderer_for
from medinterp.techniques import REGISTRY
from medinterp.techniques.base import INTERVAL_RULES

DEFAULT_PARAMS: dict[str, Any] = {
    "sigma": 1.0,  # Gaussian smoothing in layers (0 = none)
    "window": 3,  # "rise" rule: width of the steepest-rise window
    "min_rise": 0.0,  # "rise" rule: a window must rise by more than this to be marked
    "percentile": 75.0,  # "percentile" rule: threshold percentile of the smoothed curve
    "min_len": 2,  # minimum run length in layers
    "max_intervals": 3,  # at most this many runs per technique (largest area kept)
}


def registered_techniques() -> list[str]:
    """The map's default columns: every technique in :data:`medinterp.techniques.REGISTRY`."""
    return list(REGISTRY)


def validate_params(**params: Any) -> dict[str, Any]:
    """The synthesis thresholds ``params`` over :data:`DEFAULT_PARAMS`, checked (a clear error otherwise).

    Example:
        >>> validate_params(percentile=150)
        Traceback (most recent call last):
        ...
        medinterp.errors.MedinterpError: knowledge map: percentile must be in [0, 100], got 150
    """
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise MedinterpError(f"knowledge map: unknown parameter(s) {sorted(unknown)}; known {sorted(DEFAULT_PARAMS)}")
    p = {**DEFAULT_PARAMS, **params}
    _check_params(p)
    return p


def interval_rules(techniques: Sequence[str], given: Mapping[str, str] | None = None) -> dict[str, str]:
    """The interval rule of each technique: ``given`` first, else the registry's; a clear error otherwise."""
    out = {}
    for t in techniques:
        rule = (given or {}).get(t)
        if rule is None:
            if t not in REGISTRY:
                raise MedinterpError(f"knowledge map: technique {t!r} is not in medinterp.techniques.REGISTRY "
                                     f"({sorted(REGISTRY)}) and no interval rule was given for it")
            rule = REGISTRY[t].interval_rule
        if rule not in INTERVAL_RULES:
            raise MedinterpError(f"knowledge map: interval rule of {t!r} must be one of {INTERVAL_RULES}, not {rule!r}")
        out[t] = rule
    return out


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
        ...                                                       {**DEFAULT_PARAMS, "sigma": 0})]
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


# ============================================================================ the map object
@dataclasses.dataclass
class KnowledgeMap(Result):
    """A concept × layer knowledge map with the raw per-technique curves it was drawn from.

    Fields:
        concepts: row keys (concept families, e.g. ``"drugs"``).
        techniques: column groups (default: every registered technique).
        n_layers: number of blocks of the model.
        curves: ``[n_concepts, n_techniques, n_layers]`` raw layer curves; NaN where a technique did
            not run for a concept (see ``status``).
        curves_low, curves_high: CI bounds of the curves (NaN where unknown).
        status: ``status[concept][technique]`` = ``"ok"`` or why it is missing.
        params: synthesis thresholds (see :data:`DEFAULT_PARAMS`).
        rules: interval rule of each technique (``"rise"`` / ``"percentile"``; default the registry's).
        labels: display label per concept (user text; escaped wherever it lands in HTML).
        curve_names: what each technique's curve measures (e.g. ``"silhouette (UMAP-30)"``).
        intervals: derived: one dict per marked interval (concept, technique, start, end, score, rule).
        result_dirs: where the underlying technique results were saved (``concept/technique`` → dir).
        extras: small JSON data for the report (``Technique.extras`` per family, e.g. attention patterns).
        provenance: model, parameters, versions.
    """

    kind = "knowledge_map"
    concepts: list = dataclasses.field(default_factory=list)
    techniques: list = dataclasses.field(default_factory=registered_techniques)
    n_layers: int = 0
    curves: np.ndarray = None  # type: ignore[assignment]
    curves_low: np.ndarray = None  # type: ignore[assignment]
    curves_high: np.ndarray = None  # type: ignore[assignment]
    status: dict = dataclasses.field(default_factory=dict)
    params: dict = dataclasses.field(default_factory=dict)
    rules: dict = dataclasses.field(default_factory=dict)
    labels: dict = dataclasses.field(default_factory=dict)
    curve_names: dict = dataclasses.field(default_factory=dict)
    intervals: list = dataclasses.field(default_factory=list)
    result_dirs: dict = dataclasses.field(default_factory=dict)
    extras: dict = dataclasses.field(default_factory=dict)
    model_name: str = ""
    provenance: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.concepts = [str(c) for c in self.concepts]
        self.techniques = [str(t) for t in self.techniques]
        shape = (len(self.concepts), len(self.techniques), int(self.n_layers))
        if self.curves is None:
            self.curves = np.full(shape, np.nan)
        self.curves = np.asarray(self.curves, dtype=np.float64)
        if self.curves.shape != shape:
            raise MedinterpError(f"KnowledgeMap: curves have shape {self.curves.shape}, expected {shape}")
        for name in ("curves_low", "curves_high"):
            arr = getattr(self, name)
            arr = np.full(shape, np.nan) if arr is None else np.asarray(arr, dtype=np.float64)
            if arr.shape != shape:
                raise MedinterpError(f"KnowledgeMap: {name} has shape {arr.shape}, expected {shape}")
            setattr(self, name, arr)
        params = dict(self.params or {})
        legacy_rise = params.pop("rise_techniques", None)  # maps saved by 0.1.0 named the "rise" columns
        if legacy_rise is not None and not self.rules:
            self.rules = {t: ("rise" if t in legacy_rise else "percentile") for t in self.techniques}
        self.params = validate_params(**params)
        self.rules = interval_rules(self.techniques, self.rules)
        for c in self.concepts:
            self.status.setdefault(c, {})
            for t in self.techniques:
                ok = bool(np.all(np.isfinite(self.curves[self.concepts.index(c), self.techniques.index(t)])))
                self.status[c].setdefault(t, "ok" if ok else "not run")
                if self.status[c][t] == "ok" and not ok:
                    self.status[c][t] = "curve has non-finite values"
        self._results: dict[str, Any] = {}
        self.intervals = self._compute_intervals()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_curves(
        cls,
        curves: Mapping[str, Mapping[str, Any]],
        *,
        n_layers: int | None = None,
        cis: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]] | None = None,
        techniques: Sequence[str] | None = None,
        rules: Mapping[str, str] | None = None,
        status: Mapping[str, Mapping[str, str]] | None = None,
        labels: Mapping[str, str] | None = None,
        model_name: str = "",
        provenance: dict | None = None,
        **params: Any,
    ) -> "KnowledgeMap":
        """Build a map from ``curves[concept][technique] = array[n_layers]`` (missing = not run).

        Example:
            >>> km = KnowledgeMap.from_curves({"age": {"step": np.arange(6.0)}}, window=2,
            ...                               techniques=["step", "peak"], rules={"step": "rise", "peak": "percentile"})
            >>> km.status["age"]["peak"]
            'not run'
        """
        concepts = list(curves)
        techniques = registered_techniques() if techniques is None else list(techniques)
        if n_layers is None:
            lens = {len(np.asarray(v)) for row in curves.values() for v in row.values() if v is not None}
            if len(lens) != 1:
                raise MedinterpError(f"KnowledgeMap.from_curves: curves have lengths {sorted(lens)}; pass n_layers")
            n_layers = lens.pop()
        arr = np.full((len(concepts), len(techniques), n_layers), np.nan)
        lo, hi = arr.copy(), arr.copy()
        st: dict[str, dict[str, str]] = {c: {} for c in concepts}
        for i, c in enumerate(concepts):
            for t, v in curves[c].items():
                if t not in techniques:
                    raise MedinterpError(f"KnowledgeMap.from_curves: unknown technique {t!r} for {c!r}; known {techniques}")
                if v is None:
                    continue
                v = np.asarray(v, dtype=float)
                if v.shape != (n_layers,):
                    raise MedinterpError(
                        f"KnowledgeMap.from_curves: curve {c}/{t} has shape {v.shape}, expected ({n_layers},)"
                    )
                arr[i, techniques.index(t)] = v
            for t, (l, h) in ((cis or {}).get(c) or {}).items():
                lo[i, techniques.index(t)] = np.asarray(l, float)
                hi[i, techniques.index(t)] = np.asarray(h, float)
            for t, s in ((status or {}).get(c) or {}).items():
                st[c][t] = s
        return cls(
            concepts=concepts,
            techniques=techniques,
            n_layers=n_layers,
            curves=arr,
            curves_low=lo,
            curves_high=hi,
            status=st,
            params=params,
            rules=dict(rules or {}),
            labels=dict(labels or {}),
            model_name=model_name,
            provenance=provenance or {},
        )

    def rethreshold(self, **params: Any) -> "KnowledgeMap":
        """A copy of the map with other synthesis thresholds (same raw curves, no model needed).

        Example:
            >>> km = KnowledgeMap.from_curves({"d": {"peak": np.r_[0, 1, 2, 3, 4, 5, 6, 7.0]}},
            ...                               techniques=["peak"], rules={"peak": "percentile"})
            >>> km.rethreshold(percentile=50, sigma=0).intervals[0]["start"]
            4
        """
        validate_params(**{**self.params, **params})
        new = dataclasses.replace(self, params={**self.params, **params}, intervals=[], status=json.loads(json.dumps(self.status)))
        new._results = self._results
        return new

    # ------------------------------------------------------------------ derived views
    def _compute_intervals(self) -> list[dict[str, Any]]:
        out = []
        for i, c in enumerate(self.concepts):
            for j, t in enumerate(self.techniques):
                if self.status[c].get(t) != "ok":
                    continue
                for iv in technique_intervals(self.curves[i, j], self.rules[t], self.params):
                    out.append({"concept": c, "technique": t, **iv})
        return out

    def smoothed(self) -> Float[np.ndarray, "n_concepts n_techniques n_layers"]:
        """Smoothed curves (NaN where missing)."""
        out = np.full_like(self.curves, np.nan)
        for i in range(len(self.concepts)):
            for j in range(len(self.techniques)):
                if np.all(np.isfinite(self.curves[i, j])):
                    out[i, j] = smooth(self.curves[i, j], self.params["sigma"])
        return out

    def normalised(self) -> Float[np.ndarray, "n_concepts n_techniques n_layers"]:
        """Each smoothed curve min-max scaled to [0, 1] (NaN where missing; 0 for flat curves)."""
        s = self.smoothed()
        out = np.full_like(s, np.nan)
        for idx in np.ndindex(*s.shape[:2]):
            row = s[idx]
            if np.all(np.isfinite(row)):
                span = row.max() - row.min()
                out[idx] = (row - row.min()) / span if span > 0 else 0.0
        return out

    def marks(self) -> np.ndarray:
        """``[n_concepts, n_techniques, n_layers]`` bool: layer marked by that technique."""
        m = np.zeros(self.curves.shape, dtype=bool)
        for iv in self.intervals:
            i, j = self.concepts.index(iv["concept"]), self.techniques.index(iv["technique"])
            m[i, j, iv["start"] : iv["end"] + 1] = True
        return m

    def consensus(self) -> np.ndarray:
        """``[n_concepts, n_layers]`` int: how many techniques mark each layer of each concept."""
        return self.marks().sum(axis=1)

    def n_available(self, concept: str) -> int:
        return sum(self.status[concept].get(t) == "ok" for t in self.techniques)

    def summary(self, min_agree: int | None = None) -> dict[str, str]:
        """Per concept, e.g. ``'layers 3–7 by 3 of 4 techniques (A 3–5; ...)'``.

        The headline layers are those where the consensus reaches its maximum for that concept (or
        ``min_agree`` techniques when given).
        """
        cons = self.consensus()
        out = {}
        for i, c in enumerate(self.concepts):
            per = []
            for t in self.techniques:
                if self.status[c].get(t) != "ok":
                    continue
                ivs = [iv for iv in self.intervals if iv["concept"] == c and iv["technique"] == t]
                layers = [l for iv in ivs for l in range(iv["start"], iv["end"] + 1)]
                per.append(f"{t} {_ranges_text(layers)}" if layers else f"{t}: no interval")
            k = int(cons[i].max()) if min_agree is None else int(min_agree)
            layers = np.nonzero(cons[i] >= max(k, 1))[0]
            head = (
                f"{'layer' if len(layers) == 1 else 'layers'} {_ranges_text(layers)} by {k} of {len(self.techniques)} techniques"
                if len(layers) and k > 0
                else "no layer marked"
            )
            missing = [t for t in self.techniques if self.status[c].get(t) != "ok"]
            if missing:
                per.append("not run: " + ", ".join(missing))
            out[c] = f"{head} ({'; '.join(per)})"
        return out

    def table(self):
        """The intervals as a pandas DataFrame (concept, technique, start, end, score, rule)."""
        import pandas as pd

        cols = ["concept", "technique", "start", "end", "score", "rule"]
        return pd.DataFrame([{k: iv.get(k) for k in cols} for iv in self.intervals], columns=cols)

    def label(self, concept: str) -> str:
        return str(self.labels.get(concept, concept))

    def curve_name(self, technique: str, concept: str | None = None) -> str:
        """What the technique's curve measures (per concept where it differs)."""
        if concept is not None and f"{concept}/{technique}" in self.curve_names:
            return str(self.curve_names[f"{concept}/{technique}"])
        return str(self.curve_names.get(technique, "layer curve"))

    # ------------------------------------------------------------------ rendering
    def figure(self, *, relative_depth: bool = False):
        """The concept × layer map (plotly): one band per technique and a consensus strip per concept."""
        return renderer_for("knowledge_map")(self, relative_depth=relative_depth)

    def heatmaps(self, *, relative_depth: bool = False):
        """Layer-by-concept heatmaps of each technique's normalised curve (one plotly figure)."""
        return renderer_for("knowledge_map_heatmaps")(self, relative_depth=relative_depth)

    def to_html(self, path: str | os.PathLike | None = None, *, title: str | None = None, relative_depth: bool = False) -> str:  # type: ignore[override]
        """The full self-contained report (map, heatmaps, technique sections, parameters, provenance).

        Drawn by the ``"knowledge_map_page"`` renderer that ``medinterp.viz`` registers.
        """
        text = renderer_for("knowledge_map_page")(self, title=title, relative_depth=relative_depth)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def _after_load(self) -> None:
        self.intervals = self._compute_intervals()


def _check_params(p: Mapping[str, Any]) -> None:
    if not (0 <= float(p["percentile"]) <= 100):
        raise MedinterpError(f"knowledge map: percentile must be in [0, 100], got {p['percentile']}")
    if float(p["sigma"]) < 0:
        raise MedinterpError(f"knowledge map: sigma must be >= 0, got {p['sigma']}")
    if int(p["window"]) < 2:
        raise MedinterpError(f"knowledge map: window must be >= 2 layers, got {p['window']}")
    if int(p["min_len"]) < 1 or int(p["max_intervals"]) < 1:
        raise MedinterpError("knowledge map: min_len and max_intervals must be >= 1")


# ============================================================================ comparison
def compare(
    maps_or_paths: Sequence["KnowledgeMap | str | os.PathLike"],
    names: Sequence[str] | None = None,
    *,
    out: str | os.PathLike | None = None,
    title: str = "medinterp model comparison",
) -> str:
    """Two or more knowledge maps side by side on a relative-depth axis; returns the HTML.

    Args:
        maps_or_paths: :class:`KnowledgeMap` objects or directories saved by ``KnowledgeMap.save``.
        names: a display name per map (default: each map's model name).
        out: write the self-contained HTML there too.

    Example:
        >>> import medinterp.viz  # registers the renderers
        >>> kw = dict(techniques=["peak"], rules={"peak": "percentile"})
        >>> a = KnowledgeMap.from_curves({"drugs": {"peak": np.r_[0, 5, 5, 0, 0, 0.0]}}, model_name="A", **kw)
        >>> b = KnowledgeMap.from_curves({"drugs": {"peak": np.r_[0, 0, 0, 0, 5, 5, 0, 0, 0.0]}}, model_name="B", **kw)
        >>> "relative depth" in compare([a, b])
        True
    """
    maps: list[KnowledgeMap] = []
    for m in maps_or_paths:
        if isinstance(m, KnowledgeMap):
            maps.append(m)
            continue
        loaded = Result.load(_map_dir(m))
        if not isinstance(loaded, KnowledgeMap):
            raise MedinterpError(f"{m}: holds a {loaded.kind!r} result, not a knowledge map")
        maps.append(loaded)
    if len(maps) < 2:
        raise MedinterpError(f"compare: need at least two maps, got {len(maps)}")
    if names is not None and len(names) != len(maps):
        raise MedinterpError(f"compare: {len(names)} names for {len(maps)} maps")
    text = renderer_for("knowledge_map_compare_page")(maps, names, title=title)
    if out is not None:
        Path(out).write_text(text, encoding="utf-8")
    return text


def _map_dir(p: str | os.PathLike) -> Path:
    """Accept a saved map dir, or a report path ``X.html`` whose map was saved beside it as ``X.map/``."""
    p = Path(p)
    if p.is_dir():
        return p
    if p.suffix == ".html" and p.with_suffix(".map").is_dir():
        return p.with_suffix(".map")
    raise MedinterpError(f"{p}: not a saved knowledge map (expected a directory with manifest.json, or a report "
                         f"X.html with its map saved beside it as X.map/)")


