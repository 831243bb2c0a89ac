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
    'layers 2–4 by 1 of 2 techniques. peak marked 2–4; step not_run: not run'
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
from medinterp.maps.controls import CONTROL_STATS
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


#: the map's marking rules: effect over control (default of knowledge_map) or the paper's (§5).
MAP_RULES = ("controls", "paper")


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


from medinterp.maps.rules import (  # noqa: E402,F401  (public here since 0.1.0)
    _ranges_text,
    percentile_intervals,
    smooth,
    steepest_rise_window,
    technique_intervals,
)


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
        rule: ``"controls"`` (intervals = layers where medicine beats its control family and the random
            twin, see :mod:`medinterp.maps.controls`) or ``"paper"`` (the paper's rules, module docstring).
        control_stats: ``[n_concepts, n_techniques, len(CONTROL_STATS), n_layers]`` effect-over-control
            statistics (:data:`medinterp.maps.controls.CONTROL_STATS`); NaN where not computed.
        control_status: ``control_status[concept][technique]`` = ``"ok"`` or why there is no effect over
            control (no unit scores, all NaN, control not run...).
        control_params: alpha, correction, min_run, robustness, n_perm, n_boot of the marking.
        control_notes: ``control_notes[concept][technique]``: how a cell's marking departs from the rule
            (e.g. "vs control family only: random twin not known by the model: ...").
        control_balance: ``control_balance[concept][technique]``: the control family's balance table
            (covariate means and SMDs before and after matching, :mod:`medinterp.maps.balance`), whether it
            is comparable, and the cell's minimum detectable effect (``mde_min`` / ``mde_median``).
        control_cells: ``control_cells[concept][technique]``: the marking's
            :class:`~medinterp.maps.cells.CellStatus` as a dict (code, reason, closest miss); read it with
            :meth:`cell` (which follows the map's rule). Maps saved before 0.4 have none: :meth:`cell`
            classifies their compared cells from the stored statistics.
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
    rule: str = "paper"
    control_stats: np.ndarray = None  # type: ignore[assignment]
    control_status: dict = dataclasses.field(default_factory=dict)
    control_params: dict = dataclasses.field(default_factory=dict)
    control_notes: dict = dataclasses.field(default_factory=dict)
    control_balance: dict = dataclasses.field(default_factory=dict)
    control_cells: dict = dataclasses.field(default_factory=dict)

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
        cshape = shape[:2] + (len(CONTROL_STATS), shape[2])
        self.control_stats = (np.full(cshape, np.nan) if self.control_stats is None
                              else np.asarray(self.control_stats, dtype=np.float64))
        if self.control_stats.ndim == 4 and self.control_stats.shape[2] == len(CONTROL_STATS) - 1:
            # a map saved before "mde" was added (0.2.x): its minimum detectable effect is unknown
            pad = np.full(self.control_stats.shape[:2] + (1, self.control_stats.shape[3]), np.nan)
            self.control_stats = np.concatenate([self.control_stats, pad], axis=2)
        if self.control_stats.shape != cshape:
            raise MedinterpError(f"KnowledgeMap: control_stats has shape {self.control_stats.shape}, expected {cshape}")
        if self.rule not in MAP_RULES:
            raise MedinterpError(f"KnowledgeMap: rule must be one of {MAP_RULES}, not {self.rule!r}")
        for c in self.concepts:
            self.control_status.setdefault(c, {})
            for t in self.techniques:
                self.control_status[c].setdefault(t, "controls not run")
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
        rule: str = "paper",
        control_stats: Mapping[str, Mapping[str, np.ndarray]] | None = None,
        control_status: Mapping[str, Mapping[str, str]] | None = None,
        control_params: Mapping[str, Any] | None = None,
        control_notes: Mapping[str, Mapping[str, str]] | None = None,
        control_balance: Mapping[str, Mapping[str, Any]] | None = None,
        control_cells: Mapping[str, Mapping[str, Any]] | None = None,
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
        cst = np.full((len(concepts), len(techniques), len(CONTROL_STATS), n_layers), np.nan)
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
            for t, a in ((control_stats or {}).get(c) or {}).items():
                cst[i, techniques.index(t)] = np.asarray(a, float)
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
            rule=rule,
            control_stats=cst,
            control_status={c: dict(v) for c, v in (control_status or {}).items()},
            control_params=dict(control_params or {}),
            control_notes={c: dict(v) for c, v in (control_notes or {}).items()},
            control_balance={c: dict(v) for c, v in (control_balance or {}).items()},
            control_cells={c: dict(v) for c, v in (control_cells or {}).items()},
        )

    def rethreshold(self, **params: Any) -> "KnowledgeMap":
        """A copy of the map redrawn with other thresholds from its stored curves and statistics (no model).

        Under ``rule="controls"``: ``alpha``, ``min_run``, ``robustness`` re-mark from the stored corrected
        p-values, effects and robustness fractions (:mod:`medinterp.maps.remark`); under ``rule="paper"``:
        the :data:`DEFAULT_PARAMS` thresholds. ``rule=`` switches the rule; a parameter of the other rule
        raises :class:`MedinterpError` (never a silent no-op).

        Example:
            >>> km = KnowledgeMap.from_curves({"d": {"peak": np.r_[0, 1, 2, 3, 4, 5, 6, 7.0]}},
            ...                               techniques=["peak"], rules={"peak": "percentile"})
            >>> km.rethreshold(percentile=50, sigma=0).intervals[0]["start"]
            4
        """
        from medinterp.maps.remark import applicable, remark

        rule = params.pop("rule", self.rule)
        ran = any(not str(v).startswith("controls not run") for row in self.control_status.values() for v in row.values())
        if rule == "controls" and not ran:
            raise MedinterpError("rethreshold: rule='controls' needs a map run with controls (none here)")
        ctrl = applicable(rule, params, paper_params=tuple(DEFAULT_PARAMS))
        paper = {k: v for k, v in params.items() if k not in ctrl}
        validate_params(**{**self.params, **paper})
        new = dataclasses.replace(self, params={**self.params, **paper}, intervals=[], rule=rule,
                                  status=json.loads(json.dumps(self.status)),
                                  control_status=json.loads(json.dumps(self.control_status)),
                                  **(remark(self, **ctrl) if ctrl else {}))
        new._results = self._results
        return new

    # ------------------------------------------------------------------ derived views
    def _compute_intervals(self) -> list[dict[str, Any]]:
        out = []
        k_mark, k_eff = CONTROL_STATS.index("marked"), CONTROL_STATS.index("effect")
        for i, c in enumerate(self.concepts):
            for j, t in enumerate(self.techniques):
                if self.status[c].get(t) != "ok":
                    continue
                if self.rule == "controls":
                    if self.control_status[c].get(t) != "ok":
                        continue
                    st = self.control_stats[i, j]
                    for a, b in _runs(st[k_mark] > 0.5):
                        out.append({"concept": c, "technique": t, "start": a, "end": b,
                                    "score": float(st[k_eff, a:b + 1].mean()), "rule": "controls"})
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

    def available(self, concept: str, technique: str) -> bool:
        """Whether the technique can mark layers of the concept under the map's rule."""
        ok = self.status[concept].get(technique) == "ok"
        return ok and (self.rule != "controls" or self.control_status[concept].get(technique) == "ok")

    def n_available(self, concept: str) -> int:
        return sum(self.available(concept, t) for t in self.techniques)

    def summary(self, min_agree: int | None = None) -> dict[str, str]:  # a MapSummary: prints as a table
        """Per concept, e.g. ``'layers 3–5 by 1 of 4 techniques. A marked 3–5: layer 4, p_adj 0.001;
        B not_robust: layer 12, p_adj 0.018, robustness 0.55; ...'``: the headline, then each
        technique's code and closest miss, rounded and labelled (:meth:`cell`; reasons: :meth:`cells_frame`).

        The headline layers are those where the consensus reaches its maximum for that concept (or
        ``min_agree`` techniques when given).
        """
        cons = self.consensus()
        out = {}
        for i, c in enumerate(self.concepts):
            k = int(cons[i].max()) if min_agree is None else int(min_agree)
            layers = np.nonzero(cons[i] >= max(k, 1))[0]
            head = (
                f"{'layer' if len(layers) == 1 else 'layers'} {_ranges_text(layers)} by {k} of {len(self.techniques)} techniques"
                if len(layers) and k > 0
                else "no layer marked"
            )
            cells = {t: self.cell(c, t) for t in self.techniques}
            out[c] = f"{head}. " + "; ".join(  # a cell without numbers says why in words
                f"{t} {v.short()}" + (f": {v.reason}" if v.best_layer is None and v.code != "marked" else "")
                for t, v in cells.items())
        from medinterp.maps.display import MapSummary

        return MapSummary(out)

    def cell(self, concept: str, technique: str):
        """Why the cell is (not) marked under the map's rule: a :class:`~medinterp.maps.cells.CellStatus`
        (code, plain reason, closest miss, whether it could have been marked)."""
        import medinterp.maps.cells as C

        i, j = self.concepts.index(concept), self.techniques.index(technique)
        stored = (self.control_cells.get(concept) or {}).get(technique)
        job_ok = self.status[concept].get(technique) == "ok"
        if self.rule == "paper" and job_ok:
            ivs = [l for iv in self.intervals if iv["concept"] == concept and iv["technique"] == technique
                   for l in range(iv["start"], iv["end"] + 1)]
            if ivs:
                return C.CellStatus("marked", f"layers {_ranges_text(ivs)} by the paper's {self.rules[technique]} "
                                    "rule (no test)", layers=_ranges_text(ivs))
            return C.CellStatus("no_interval", f"the paper's {self.rules[technique]} rule marks no layer (no test)")
        if stored:
            return C.CellStatus.from_dict(stored)
        if not job_ok:  # a map without cells (saved before 0.4, or built from curves)
            st = str(self.status[concept].get(technique, "not run"))
            return C.CellStatus("not_run" if st == "not run" else "unclassified", st, detail=st)
        return C.from_stats(self.control_stats[i, j], str(self.control_status[concept].get(technique, "")),
                            **self.control_params)

    def cells_frame(self):
        """One row per (family, technique): code, reason, marked layers and the closest miss, as saved in
        ``cells.csv`` (columns: :data:`medinterp.maps.cells.CELL_FIELDS`)."""
        import pandas as pd

        from medinterp.maps.cells import CELL_FIELDS, cell_rows

        df = pd.DataFrame(cell_rows(self), columns=list(CELL_FIELDS))
        df["best_layer"] = df["best_layer"].astype("Int64")
        return df

    def to_dataframe(self, what: str = "curves"):
        """The map as one pandas DataFrame: ``"curves"`` (long form, :meth:`curves_frame`), ``"cells"`` (one row
        per family and column, :meth:`cells_frame`) or ``"intervals"`` (:meth:`table`); those names stay."""
        from medinterp.maps.display import map_frame

        return map_frame(self, what)

    def _repr_fields(self) -> list[tuple[str, str]]:
        from medinterp.maps.display import map_fields

        return map_fields(self)

    def table(self):
        """The intervals as a pandas DataFrame (concept, technique, start, end, score, rule)."""
        import pandas as pd

        cols = ["concept", "technique", "start", "end", "score", "rule"]
        return pd.DataFrame([{k: iv.get(k) for k in cols} for iv in self.intervals], columns=cols)

    def curves_frame(self):
        """The map in long form (one row per family, technique, layer and control), as saved in ``curves.csv``.

        Columns: family, technique, layer, curve (the raw layer curve), effect, control
        (``"control family"``, ``"random twin"``, or ``"none"`` where the effect over control was not
        computed: then effect = curve and ci = the curve's CI), ci_low, ci_high, p_adj, marked (by the
        map's rule), robustness, mde, comparable, status, status_code, status_reason, rule
        (:data:`medinterp.maps.cells.CURVES_COLUMNS`; the codebook is written beside it by :meth:`save`).
        """
        import pandas as pd

        k = {name: i for i, name in enumerate(CONTROL_STATS)}
        marks = self.marks()
        rows = []
        for i, c in enumerate(self.concepts):
            for j, t in enumerate(self.techniques):
                if self.status[c].get(t) != "ok":
                    continue
                st = self.control_stats[i, j]
                cell = self.cell(c, t)
                has = self.control_status[c].get(t) == "ok"
                kinds = ([("control family", "effect", "ci_low", "ci_high", "p_adj"),
                          ("random twin", "effect_twin", "twin_low", "twin_high", "p_adj_twin")] if has else [None])
                for l in range(self.n_layers):
                    for kind in kinds:
                        if kind is None:
                            vals = ("none", self.curves[i, j, l], self.curves_low[i, j, l], self.curves_high[i, j, l],
                                    np.nan, np.nan)
                        else:
                            vals = (kind[0], *(st[k[n], l] for n in kind[1:]), st[k["robustness"], l])
                        fam_row = kind is not None and kind[0] == "control family"
                        bal = (self.control_balance.get(c) or {}).get(t) or {}
                        rows.append({"family": c, "technique": t, "layer": l, "curve": self.curves[i, j, l],
                                     "effect": vals[1], "control": vals[0], "ci_low": vals[2], "ci_high": vals[3],
                                     "p_adj": vals[4], "marked": bool(marks[i, j, l]) and (kind is None or fam_row),
                                     "robustness": vals[5], "mde": st[k["mde"], l] if fam_row else np.nan,
                                     "comparable": bal.get("comparable") if fam_row else None,
                                     "status": self.control_status.get(c, {}).get(t, ""),
                                     "status_code": cell.code, "status_reason": cell.reason, "rule": self.rule})
        from medinterp.maps.cells import CURVES_COLUMNS

        return pd.DataFrame(rows, columns=list(CURVES_COLUMNS))

    def save(self, path: str | os.PathLike) -> "KnowledgeMap":  # type: ignore[override]
        """Save the map (``manifest.json``, arrays) and, beside it, ``curves.csv`` (:meth:`curves_frame`),
        ``cells.csv`` (:meth:`cells_frame`) and ``curves_codebook.csv`` (every column of both and every code)."""
        from medinterp.maps.cells import codebook_frame

        super().save(path)
        if self.rule == "controls":
            from medinterp.maps.active_rule import keep_active_rule

            keep_active_rule(Path(path) / "manifest.json", self.rules)
        for name, frame in (("curves", self.curves_frame()), ("cells", self.cells_frame()),
                            ("curves_codebook", codebook_frame())):
            tmp = Path(path) / f".{name}.csv.tmp"
            frame.to_csv(tmp, index=False)
            os.chmod(tmp, 0o644)
            os.replace(tmp, Path(path) / f"{name}.csv")
        return self

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

    def figures(self, *, relative_depth: bool = False) -> list:  # type: ignore[override]
        """The map's figures as a list: :meth:`figure` and :meth:`heatmaps`."""
        return [self.figure(relative_depth=relative_depth), self.heatmaps(relative_depth=relative_depth)]

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


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    from medinterp.stats import intervals_from_mask

    return intervals_from_mask(mask)


def _check_params(p: Mapping[str, Any]) -> None:
    if not (0 <= float(p["percentile"]) <= 100):
        raise MedinterpError(f"knowledge map: percentile must be in [0, 100], got {p['percentile']}")
    if float(p["sigma"]) < 0:
        raise MedinterpError(f"knowledge map: sigma must be >= 0, got {p['sigma']}")
    if int(p["window"]) < 2:
        raise MedinterpError(f"knowledge map: window must be >= 2 layers, got {p['window']}")
    if int(p["min_len"]) < 1 or int(p["max_intervals"]) < 1:
        raise MedinterpError("knowledge map: min_len and max_intervals must be >= 1")

