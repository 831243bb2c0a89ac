"""Knowledge maps: where each medical concept lives in a model, merged from the four techniques.

The map follows the paper (METHOD.md §5). For every concept family (a map row) each technique gives a
per-layer curve over blocks ``0..n_layers-1`` (higher = more evidence). The synthesis:

1. smooths each curve with a Gaussian (``sigma=1`` layer, ``scipy.ndimage.gaussian_filter1d``,
   ``mode="nearest"``);
2. **geometry**: marks the ``window``-layer window (default 3) across which the smoothed curve rises
   the most, i.e. the ``l`` maximising ``s[l + window - 1] - s[l]``; no interval when no window rises
   by more than ``min_rise`` (default 0). For categorical families the geometry curve is the
   silhouette on the ground-truth labels; for age it is the age geometry score (anisotropy/linearity)
   the geometry result reports as its ``layer_curve()``;
3. **saliency, lesion, patching**: the runs of consecutive layers whose smoothed value is at or above
   the ``percentile``-th percentile (default 75) of that smoothed curve, at least ``min_len`` layers
   long (default 2); when more than ``max_intervals`` (default 3) runs qualify, the ones with the
   largest *area* (sum over the run of smoothed value minus threshold) are kept;
4. **consensus**: for each concept and layer, how many techniques mark that layer.

Every threshold is a parameter. The raw curves are stored with the map, so
:meth:`KnowledgeMap.rethreshold` redraws it with other thresholds without touching the model.

Example:
    >>> import numpy as np
    >>> curves = {"drugs": {"saliency": np.r_[0, 0, 5, 5, 5, 0, 0, 0, 0, 0.0]}}
    >>> km = KnowledgeMap.from_curves(curves, n_layers=10)
    >>> [(iv["start"], iv["end"]) for iv in km.intervals]
    [(2, 4)]
    >>> km.summary()["drugs"]
    'layers 2–4 by 1 of 4 techniques (saliency 2–4; not run: geometry, lesion, patching)'
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from jaxtyping import Float

from medinterp.errors import MedinterpError
from medinterp.results import Result, _jsonable, escape, make_provenance

TECHNIQUES: tuple[str, ...] = ("geometry", "saliency", "lesion", "patching")
FAMILIES: tuple[str, ...] = ("age", "symptoms", "diseases", "progression", "drugs", "dosage")

DEFAULT_PARAMS: dict[str, Any] = {
    "sigma": 1.0,  # Gaussian smoothing in layers (0 = none)
    "window": 3,  # geometry: width of the steepest-rise window
    "min_rise": 0.0,  # geometry: a window must rise by more than this to be marked
    "percentile": 75.0,  # saliency/lesion/patching: threshold percentile of the smoothed curve
    "min_len": 2,  # minimum run length in layers
    "max_intervals": 3,  # at most this many runs per technique (largest area kept)
    "rise_techniques": ["geometry"],  # techniques that use the steepest-rise rule
}


# ============================================================================ synthesis (no model)
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


def technique_intervals(curve: np.ndarray, technique: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Intervals one technique marks on one raw curve under ``params`` (see module docstring)."""
    s = smooth(curve, params["sigma"])
    if technique in params["rise_techniques"]:
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
        techniques: column groups, normally ``("geometry", "saliency", "lesion", "patching")``.
        n_layers: number of blocks of the model.
        curves: ``[n_concepts, n_techniques, n_layers]`` raw layer curves; NaN where a technique did
            not run for a concept (see ``status``).
        curves_low, curves_high: CI bounds of the curves (NaN where unknown).
        status: ``status[concept][technique]`` = ``"ok"`` or why it is missing.
        params: synthesis thresholds (see :data:`DEFAULT_PARAMS`).
        labels: display label per concept (user text; escaped wherever it lands in HTML).
        curve_names: what each technique's curve measures (e.g. ``"silhouette (UMAP-30)"``).
        intervals: derived: one dict per marked interval (concept, technique, start, end, score, rule).
        result_dirs: where the underlying technique results were saved (``concept/technique`` → dir).
        extras: small JSON data for the report (e.g. attention patterns of top patching heads).
        provenance: model, parameters, versions.
    """

    kind = "knowledge_map"
    concepts: list = dataclasses.field(default_factory=list)
    techniques: list = dataclasses.field(default_factory=lambda: list(TECHNIQUES))
    n_layers: int = 0
    curves: np.ndarray = None  # type: ignore[assignment]
    curves_low: np.ndarray = None  # type: ignore[assignment]
    curves_high: np.ndarray = None  # type: ignore[assignment]
    status: dict = dataclasses.field(default_factory=dict)
    params: dict = dataclasses.field(default_factory=dict)
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
        self.params = {**DEFAULT_PARAMS, **(self.params or {})}
        _check_params(self.params)
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
        techniques: Sequence[str] = TECHNIQUES,
        status: Mapping[str, Mapping[str, str]] | None = None,
        labels: Mapping[str, str] | None = None,
        model_name: str = "",
        provenance: dict | None = None,
        **params: Any,
    ) -> "KnowledgeMap":
        """Build a map from ``curves[concept][technique] = array[n_layers]`` (missing = not run).

        Example:
            >>> km = KnowledgeMap.from_curves({"age": {"geometry": np.arange(6.0)}}, window=2)
            >>> km.status["age"]["lesion"]
            'not run'
        """
        concepts = list(curves)
        techniques = list(techniques)
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
            labels=dict(labels or {}),
            model_name=model_name,
            provenance=provenance or {},
        )

    def rethreshold(self, **params: Any) -> "KnowledgeMap":
        """A copy of the map with other synthesis thresholds (same raw curves, no model needed).

        Example:
            >>> km = KnowledgeMap.from_curves({"d": {"lesion": np.r_[0, 1, 2, 3, 4, 5, 6, 7.0]}})
            >>> km.rethreshold(percentile=50, sigma=0).intervals[0]["start"]
            4
        """
        unknown = set(params) - set(DEFAULT_PARAMS)
        if unknown:
            raise MedinterpError(f"rethreshold: unknown parameter(s) {sorted(unknown)}; known {sorted(DEFAULT_PARAMS)}")
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
                for iv in technique_intervals(self.curves[i, j], t, self.params):
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
        """Per concept, e.g. ``'layers 3–7 by 3 of 4 techniques (geometry 3–5; ...)'``.

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
        """What the technique's curve measures (per concept where it differs, e.g. geometry)."""
        if concept is not None and f"{concept}/{technique}" in self.curve_names:
            return str(self.curve_names[f"{concept}/{technique}"])
        return str(self.curve_names.get(technique, "layer curve"))

    # ------------------------------------------------------------------ rendering
    def figure(self, *, relative_depth: bool = False):
        """The concept × layer map (plotly): one band per technique and a consensus strip per concept."""
        from medinterp.viz.figures import map_figure

        return map_figure(self, relative_depth=relative_depth)

    def heatmaps(self, *, relative_depth: bool = False):
        """Layer-by-concept heatmaps of each technique's normalised curve (one plotly figure)."""
        from medinterp.viz.figures import curve_heatmaps

        return curve_heatmaps(self, relative_depth=relative_depth)

    def to_html(self, path: str | os.PathLike | None = None, *, title: str | None = None, relative_depth: bool = False) -> str:  # type: ignore[override]
        """The full self-contained report (map, heatmaps, technique sections, parameters, provenance)."""
        from medinterp.viz.report import render_report

        text = render_report(self, title=title, relative_depth=relative_depth)
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
        >>> a = KnowledgeMap.from_curves({"drugs": {"lesion": np.r_[0, 5, 5, 0, 0, 0.0]}}, model_name="A")
        >>> b = KnowledgeMap.from_curves({"drugs": {"lesion": np.r_[0, 0, 0, 0, 5, 5, 0, 0, 0.0]}}, model_name="B")
        >>> "relative depth" in compare([a, b])
        True
    """
    from medinterp.viz.report import render_compare

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
    text = render_compare(maps, names, title=title)
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


# ============================================================================ running the techniques
# Default work sizes. "full" targets < 15 min and < 6 GB for Gemma 3 270M on 2 CPU cores (all six
# families × four techniques); "quick" is a smoke run of a few minutes. Every number can be overridden
# per technique with ``technique_kwargs={"saliency": {"max_prompts": 10}}``.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        # all prompts of every template; UMAP jobs on 2 worker processes
        "geometry": {"n_boot": 100, "n_perm": 50, "n_jobs": 2},
        # the embedding gradient (262k × 640 for Gemma) is not needed for the map: skip it
        "saliency": {"max_prompts": 16, "n_boot": 300, "include_embed": False},
        # block removal only (the paper's lesion). Greedy continuations are left to `medinterp lesion`:
        # 4 prompts x 20 tokens x 18 lesions cost ~5 min per family on 2 cores, over the 15-min budget.
        "lesion": {"modes": ["skip"], "max_prompts": 48, "n_continuations": 0, "n_boot": 300},
        # resid_pre at the last position, every valid pair of the family's pair set
        "patching": {"n_boot": 300},
    },
    "quick": {
        "geometry": {"templates": [0], "n_boot": 30, "n_perm": 20, "n_jobs": 1, "n_epochs": 100},
        "saliency": {"max_prompts": 4, "n_boot": 100, "include_embed": False},
        "lesion": {"modes": ["skip"], "max_prompts": 12, "n_continuations": 0, "n_boot": 100},
        "patching": {"max_pairs": 6, "n_boot": 100},
    },
}


@dataclasses.dataclass
class _Family:
    """What feeds one map row: the concept set (geometry/saliency/lesion) and the pair set (patching)."""

    name: str
    concepts: Any = None
    pairs: Any = None
    label: str = ""


def family_specs(families: Sequence[str] | Mapping[str, Any] | None = None) -> dict[str, _Family]:
    """Map rows → their concept and pair sets, from :data:`medinterp.concepts.CONCEPT_FAMILIES`.

    ``families`` may also be a mapping ``{row name: {"concepts": ..., "pairs": ...}}`` with your own
    concept sets / prompt lists and pair sets (either may be None).
    """
    if isinstance(families, Mapping):
        return {str(k): _family_from_spec(str(k), v) for k, v in families.items()}
    from medinterp.concepts import CONCEPT_FAMILIES

    fams = list(CONCEPT_FAMILIES) if families is None else list(families)
    out = {}
    for f in fams:
        if f not in CONCEPT_FAMILIES:
            raise MedinterpError(f"knowledge_map: unknown concept family {f!r}; known: {list(CONCEPT_FAMILIES)}")
        spec = CONCEPT_FAMILIES[f]
        out[f] = _family_from_spec(f, spec)
    return out


def _family_from_spec(name: str, spec: Any) -> _Family:
    if isinstance(spec, _Family):
        return spec
    if isinstance(spec, Mapping):
        get = lambda *ks: next((spec[k] for k in ks if k in spec and spec[k] is not None), None)
        return _Family(name, get("concepts", "concept_set", "concept"), get("pairs", "pair_set"),
                       str(get("label", "title") or name))
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return _Family(name, spec[0], spec[1], name)
    for attr in ("concepts", "concept_set"):
        if hasattr(spec, attr):
            return _Family(name, getattr(spec, attr), getattr(spec, "pairs", getattr(spec, "pair_set", None)),
                           str(getattr(spec, "label", name)))
    raise MedinterpError(f"knowledge_map: cannot read the concept-family spec of {name!r}: {spec!r}")


class _Missing(Exception):
    """A technique cannot run for a family (module absent, no input); the map shows the reason."""


def _run_geometry(model, fam: _Family, kw: dict, progress: bool):
    from medinterp.techniques.geometry import geometry

    if fam.concepts is None:
        raise _Missing("no concept set for this family")
    return geometry(model, fam.concepts, progress=progress, **kw)


def _run_saliency(model, fam: _Family, kw: dict, progress: bool):
    from medinterp.techniques.saliency import saliency

    if fam.concepts is None:
        raise _Missing("no concept set for this family")
    return saliency(model, fam.concepts, progress=progress, **kw)


def _run_lesion(model, fam: _Family, kw: dict, progress: bool):
    from medinterp.techniques.lesion import lesion

    if fam.concepts is None:
        raise _Missing("no concept set for this family")
    return lesion(model, fam.concepts, progress=progress, **kw)


def _run_patching(model, fam: _Family, kw: dict, progress: bool):
    from medinterp.techniques.patching import patch

    if fam.pairs is None:
        raise _Missing("no pair set for this family")
    kw = {"site": "resid_pre", "positions": "last", "on_bad": "drop", **kw}
    max_pairs = kw.pop("max_pairs", None)
    pairs = fam.pairs
    if max_pairs is not None:
        from medinterp.concepts import load_concepts

        ps = load_concepts(pairs) if isinstance(pairs, (str, os.PathLike)) else pairs
        items = list(getattr(ps, "pairs", ps))
        pairs = items[: int(max_pairs)]
    return patch(model, pairs, progress=progress, **kw)


RUNNERS: dict[str, Callable[..., Result]] = {
    "geometry": _run_geometry,
    "saliency": _run_saliency,
    "lesion": _run_lesion,
    "patching": _run_patching,
}


def result_curve(result: Any, n_layers: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None, str]:
    """``(curve, ci or None, curve name)`` of a technique result, validated to ``n_layers`` blocks."""
    curve = np.asarray(result.layer_curve(), dtype=float)
    if curve.shape != (n_layers,):
        raise MedinterpError(f"{result.kind}.layer_curve() has shape {curve.shape}, expected ({n_layers},)")
    ci = None
    if hasattr(result, "layer_curve_ci"):
        try:
            lo, hi = result.layer_curve_ci()
            lo, hi = np.asarray(lo, float), np.asarray(hi, float)
            if lo.shape == hi.shape == (n_layers,):
                ci = (lo, hi)
        except Exception:  # a technique without CIs for this run
            ci = None
    return curve, ci, curve_name(result)


def curve_name(result: Any) -> str:
    """What a technique result's ``layer_curve()`` measures, in words."""
    kind = getattr(result, "kind", "")
    if kind == "geometry" and getattr(result, "primary", None):
        p = result.primary
        extra = ", ".join(str(p[k]) for k in ("space", "label", "group") if p.get(k))
        return f"{p.get('metric', '?')} ({extra})" if extra else str(p.get("metric", "?"))
    if kind == "saliency":
        return "mean |∂(−log p)/∂w| over the block's attention + MLP weights"
    if kind == "patching":
        return f"{getattr(result, 'metric', 'P')} after patching {getattr(result, 'site', '?')} at the last position"
    if kind == "lesion":
        return "KL(intact ‖ lesioned) of the next-token distribution when the block is removed"
    return f"{kind} layer curve"


def _geometry_batch(model, fams: Mapping[str, _Family], work: Path | None, rerun: bool, kw: dict,
                    progress: bool, timing: dict) -> dict[str, Result]:
    """Geometry of every pending family in one ``geometry_many`` call (one UMAP worker pool), each
    result saved as it is returned. On any error returns what it has; the per-family loop retries
    the rest one by one and records their own errors."""
    if RUNNERS.get("geometry") is not _run_geometry:  # replaced (tests, plugins): use the per-family path
        return {}
    fps = {f: _job_fingerprint(model, fam, "geometry", kw) for f, fam in fams.items()}
    todo = [f for f, fam in fams.items() if fam.concepts is not None
            and (rerun or work is None or not _finished(work / _safe_dirname(f) / "geometry", fps[f]))]
    if len(todo) < 2:
        return {}
    try:
        from medinterp.techniques.geometry import geometry_many

        t0 = time.perf_counter()
        results = geometry_many(model, [fams[f].concepts for f in todo], progress=progress, **kw)
        timing["geometry_batch"] = round(time.perf_counter() - t0, 2)
    except Exception:
        return {}
    out = {}
    for f, res in zip(todo, results):
        if work is not None:
            _save_job(res, work / _safe_dirname(f) / "geometry", fps[f], f"{f}/geometry")
        out[f"{f}/geometry"] = res
    return out


def _job_fingerprint(model: Any, fam: _Family, technique: str, kw: Mapping[str, Any]) -> str:
    """Hash of what a saved technique result depends on: model identity, inputs, technique kwargs."""
    import hashlib

    from medinterp.models import model_info

    info = {k: v for k, v in model_info(model).items() if k not in ("load_seconds", "device")}

    def ident(x: Any) -> Any:
        if x is None or isinstance(x, (str, os.PathLike)):
            return None if x is None else str(x)
        return hashlib.sha1(repr(x).encode()).hexdigest()  # in-memory sets / prompt lists

    blob = json.dumps(_jsonable({"model": info, "technique": technique, "kwargs": dict(kw),
                                 "concepts": ident(fam.concepts), "pairs": ident(fam.pairs)}),
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _finished(rdir: Path | None, fingerprint: str) -> bool:
    """A saved result in ``rdir`` made by the same job (else it is recomputed and overwritten)."""
    if rdir is None or not (rdir / "manifest.json").is_file() or not (rdir / "job.json").is_file():
        return False
    try:
        return json.loads((rdir / "job.json").read_text()).get("fingerprint") == fingerprint
    except (OSError, json.JSONDecodeError):
        return False


def _save_job(res: Result, rdir: Path, fingerprint: str, key: str) -> None:
    res.save(rdir)
    (rdir / "job.json").write_text(json.dumps({"fingerprint": fingerprint, "job": key}))


def _safe_dirname(name: str) -> str:
    """A family name as a directory name: itself when plain, else a slug plus a short hash."""
    import hashlib
    import re

    if re.fullmatch(r"[A-Za-z0-9_.-]{1,80}", name) and name not in (".", ".."):
        return name
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:40] or "family"
    return f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def knowledge_map(
    model: Any,
    concepts: Sequence[str] | Mapping[str, Any] | None = None,
    techniques: Sequence[str] = TECHNIQUES,
    *,
    quick: bool = False,
    out_dir: str | os.PathLike | None = None,
    technique_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
    rerun: bool = False,
    model_name: str | None = None,
    **params: Any,
) -> KnowledgeMap:
    """Run the techniques on each concept family and merge their layer curves into a map.

    Args:
        model: a HookedTransformer (e.g. from :func:`medinterp.load_model`).
        concepts: concept families (map rows) to run; default all of ``CONCEPT_FAMILIES``
            (age, symptoms, diseases, progression, drugs, dosage). Or a mapping
            ``{row: {"concepts": concept set / prompts, "pairs": pair set}}`` of your own.
        techniques: which of geometry, saliency, lesion, patching to run. Those not run show as
            "not run" in the map (no numbers).
        quick: smaller defaults (a few minutes on 2 CPU cores) instead of the full run.
        out_dir: work directory; each technique result is saved there as it finishes
            (``<dir>/<family>/<technique>/``) and a rerun loads the finished ones instead of
            recomputing (resume after an interruption). The map itself is saved to ``<dir>/map``.
        technique_kwargs: per-technique keyword overrides, e.g. ``{"saliency": {"max_prompts": 8}}``.
        progress: progress bars.
        rerun: ignore finished results in ``out_dir`` and recompute.
        model_name: display name (default: the model's spec or config name).
        **params: synthesis thresholds (see :data:`DEFAULT_PARAMS`).

    Returns:
        A :class:`KnowledgeMap`. A technique that fails for a family is recorded in
        ``kmap.status[family][technique]`` with the error and left out of the map.

    Example:
        >>> import medinterp as mi                                          # doctest: +SKIP
        >>> kmap = mi.knowledge_map(mi.load_model(), quick=True, out_dir="work")  # doctest: +SKIP
        >>> kmap.to_html("report.html")                                     # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    techniques = list(techniques)
    bad = [t for t in techniques if t not in RUNNERS]
    if bad:
        raise MedinterpError(f"knowledge_map: unknown technique(s) {bad}; known {list(RUNNERS)}")
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise MedinterpError(f"knowledge_map: unknown parameter(s) {sorted(unknown)}; known {sorted(DEFAULT_PARAMS)}")
    size = "quick" if quick else "full"
    fams = family_specs(concepts)
    n_layers = int(model.cfg.n_layers)
    info = getattr(model, "medinterp_info", {}) or {}
    model_name = model_name or str(info.get("spec") or getattr(model.cfg, "model_name", "model"))
    work = Path(out_dir) if out_dir is not None else None
    curves: dict[str, dict[str, Any]] = {f: {} for f in fams}
    cis: dict[str, dict[str, Any]] = {f: {} for f in fams}
    status: dict[str, dict[str, str]] = {f: {} for f in fams}
    curve_names: dict[str, str] = {}
    results: dict[str, Result] = {}
    result_dirs: dict[str, str] = {}
    timing: dict[str, float] = {}
    kwargs_used: dict[str, dict[str, Any]] = {}
    jobs = [(f, t) for f in fams for t in techniques]
    t_start = time.perf_counter()
    pre: dict[str, Result] = {}
    if "geometry" in techniques:
        pre = _geometry_batch(model, fams, work, rerun, {**SIZES[size].get("geometry", {}),
                              **dict((technique_kwargs or {}).get("geometry", {}))}, progress, timing)
    bar = tqdm(jobs, desc="knowledge map", disable=not progress, unit="job")
    for f, t in bar:
        bar.set_postfix_str(f"{f}/{t}")
        kw = {**SIZES[size].get(t, {}), **dict((technique_kwargs or {}).get(t, {}))}
        kwargs_used[t] = _jsonable(kw)
        key = f"{f}/{t}"
        rdir = work / _safe_dirname(f) / t if work is not None else None
        t0 = time.perf_counter()
        try:
            fp = _job_fingerprint(model, fams[f], t, kw)
            if key in pre:
                res = pre[key]
            elif not rerun and _finished(rdir, fp):
                res = Result.load(rdir)
            else:
                res = RUNNERS[t](model, fams[f], kw, progress)
                if rdir is not None:
                    _save_job(res, rdir, fp, key)
            curve, ci, name = result_curve(res, n_layers)
        except _Missing as e:
            status[f][t] = f"not run: {e}"
            continue
        except ImportError as e:
            status[f][t] = f"not available: {e}"
            continue
        except Exception as e:  # keep the other techniques; the map says what failed
            status[f][t] = f"failed: {type(e).__name__}: {e}"[:300]
            if progress:
                tqdm.write(f"[knowledge map] {key} failed: {type(e).__name__}: {e}")
            continue
        finally:
            timing[key] = round(time.perf_counter() - t0, 2)
        curves[f][t] = curve
        if ci is not None:
            cis[f][t] = ci
        status[f][t] = "ok"
        curve_names.setdefault(t, name)
        curve_names[key] = name
        results[key] = res
        if rdir is not None:
            result_dirs[key] = str(rdir)
    timing["total"] = round(time.perf_counter() - t_start, 2)
    prov = make_provenance(model, concepts=list(fams), techniques=techniques, size=size,
                           technique_kwargs=kwargs_used, synthesis=params)
    prov["timing_s"] = timing
    prov["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    km = KnowledgeMap.from_curves(
        curves, n_layers=n_layers, cis=cis, techniques=techniques, status=status,
        labels={f: fams[f].label or f for f in fams}, model_name=model_name, provenance=prov, **params,
    )
    km.curve_names.update(curve_names)
    km.result_dirs.update(result_dirs)
    km._results = results
    km.extras.update(_extras(model, km, results))
    if work is not None:
        km.save(work / "map")
    return km


def map_from_work_dir(
    work_dir: str | os.PathLike,
    families: Sequence[str] | None = None,
    techniques: Sequence[str] = TECHNIQUES,
    *,
    model_name: str = "",
    **params: Any,
) -> KnowledgeMap:
    """A map from the technique results saved in a work dir so far, without a model.

    Useful to look at an interrupted or still-running :func:`knowledge_map`: a family/technique with
    no finished result shows as "no saved result" (no numbers).

    Example:
        >>> km = map_from_work_dir("report.work")           # doctest: +SKIP
    """
    work = Path(work_dir)
    if not work.is_dir():
        raise MedinterpError(f"{work}: no such work directory")
    if families is None:
        families = sorted(p.name for p in work.iterdir() if p.is_dir() and p.name != "map")
    curves: dict[str, dict[str, Any]] = {f: {} for f in families}
    cis: dict[str, dict[str, Any]] = {f: {} for f in families}
    status: dict[str, dict[str, str]] = {f: {} for f in families}
    names: dict[str, str] = {}
    dirs: dict[str, str] = {}
    n_layers = None
    for f in families:
        for t in techniques:
            d = work / _safe_dirname(f) / t
            if not (d / "manifest.json").is_file():
                status[f][t] = "no saved result"
                continue
            try:
                res = Result.load(d)
                curve = np.asarray(res.layer_curve(), float)
                n_layers = n_layers or len(curve)
                curve, ci, name = result_curve(res, n_layers)
            except Exception as e:
                status[f][t] = f"failed to load: {type(e).__name__}: {e}"[:300]
                continue
            curves[f][t] = curve
            if ci is not None:
                cis[f][t] = ci
            status[f][t] = "ok"
            names.setdefault(t, name)
            names[f"{f}/{t}"] = name
            dirs[f"{f}/{t}"] = str(d)
    if n_layers is None:
        raise MedinterpError(f"{work}: no finished technique result found")
    km = KnowledgeMap.from_curves(curves, n_layers=n_layers, cis=cis, techniques=techniques, status=status,
                                  model_name=model_name, provenance={"work_dir": str(work)}, **params)
    km.curve_names.update(names)
    km.result_dirs.update(dirs)
    return km


def _extras(model: Any, km: KnowledgeMap, results: Mapping[str, Result]) -> dict[str, Any]:
    """Attention patterns (for the report's circuitsvis view) at the block where patching's curve
    rises most, on the first clean prompt of each family's pairs. Optional decoration: skipped on error."""
    views = {}
    for key, res in results.items():
        fam, t = key.rsplit("/", 1)
        if t != "patching":
            continue
        try:
            views[fam] = _attention_view_data(model, res)
        except Exception:
            continue
    return {"attention": views} if views else {}


def _attention_view_data(model: Any, res: Any) -> dict[str, Any]:
    """All heads of the block ``l`` maximising ``curve[l+1] - curve[l]`` (resid_pre patching: the block
    whose output carries the clean answer to the last position), on the first clean prompt."""
    import torch

    curve = np.asarray(res.layer_curve(), float)
    if len(curve) < 2 or not np.all(np.isfinite(curve)):
        raise ValueError("no usable patching curve")
    layer = int(np.argmax(np.diff(curve)))
    pair = res.pairs[0]
    prompt = pair["clean"] if isinstance(pair, Mapping) else pair[0]
    if not isinstance(prompt, str):
        raise ValueError("clean prompt is not text")
    name = f"blocks.{layer}.attn.hook_pattern"
    with torch.no_grad():
        _, cache = model.run_with_cache(prompt, names_filter=lambda n: n == name)
    att = cache[name][0].float().cpu().numpy()
    return {"tokens": model.to_str_tokens(prompt), "attention": att.round(4).tolist(),
            "head_names": [f"L{layer}H{h}" for h in range(att.shape[0])], "prompt": prompt, "layer": layer}
