"""Why each (family, technique) cell of a map is or is not marked: one code, one plain line, the closest miss.

Every cell of a :class:`~medinterp.maps.synthesis.KnowledgeMap` gets a :class:`CellStatus`: a short
``code`` from the closed vocabulary :data:`CODES`, a one-line ``reason`` in plain words (no nested
parentheses), the marking's full text (``detail``, the map's ``control_status``) and the **closest miss**:
the best layer with its effect over the control family and over the twin, corrected p-values, robustness
and minimum detectable effect, plus whether the cell **could have been marked** at all (its smallest
attainable corrected p-value <= α and a comparable control).

The codes are set where the map's marking takes each path (:func:`medinterp.maps.controls.mark_all`, the
job runner's statuses through :func:`said`), never parsed from the texts. A cell that passed the
balance check and the item-count check is classified from its statistics (:func:`classify`):

* ``marked``: some layer is marked;
* ``not_robust``: layers beat both controls in a run of >= ``min_run`` on the full data, but none held in
  >= ``robustness`` of the resamples;
* ``short_run``: layers beat both controls, but no run reaches ``min_run`` adjacent layers;
* ``not_significant``: no layer beats both controls after correction with positive effects.

Example:
    >>> CellStatus("too_few_items", "4 items cannot reach α = 0.05").short()
    'too_few_items'
    >>> code_of(said("failed", "failed: ValueError: x"), "not_run"), code_of("no saved result", "not_run")
    ('failed', 'not_run')
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from jaxtyping import Float

from medinterp import stats
from medinterp.maps.marking import CONTROL_STATS

if TYPE_CHECKING:  # pragma: no cover
    from medinterp.maps.marking import ControlMarking

KnowledgeMap = Any  # medinterp.maps.synthesis.KnowledgeMap (which imports this module)

#: the closed vocabulary of cell codes and what each means (the codebook's "code" rows).
CODES: dict[str, str] = {
    "marked": "at least one layer beats both controls (the control family and the random twin, or the control "
              "family alone where the twin cannot be measured) after correction across layers, in a run of >= "
              "min_run layers, kept in >= the robustness fraction of resamples",
    "not_robust": "layers beat both controls in a run of >= min_run on the full data, but none is kept in >= the "
                  "robustness fraction of item x template x seed resamples",
    "short_run": "single layers (or runs shorter than min_run) beat both controls; no run is long enough",
    "not_significant": "the cell could be marked (smallest attainable corrected p <= alpha, comparable control) "
                       "but no layer beats both controls after correction with a positive effect",
    "too_few_items": "too few items for any layer to reach alpha after correction whatever the data (smallest "
                     "attainable corrected p > alpha), or fewer than 2 items left to compare",
    "control_not_comparable": "the control family cannot be balanced on the covariates (|SMD| > 0.25 after "
                              "matching, too few matched items, no covariates) or has no common structure; the "
                              "effect on all items is shown, never marked",
    "not_known": "the model does not know the family by the technique's own rule (e.g. no pair with "
                 "LD_clean > 0 > LD_corrupted); there is nothing to compare",
    "no_scores": "no per-item scores to test: the technique gives none (no unit_scores()) or all are NaN",
    "no_control": "the map row has no control family",
    "not_run": "the job or the controls were not run (controls=False, a missing input, no saved result)",
    "failed": "a job or the marking raised an error (the reason names it)",
    "no_interval": "rule='paper': the paper's thresholds mark no layer of the smoothed curve (no test is made)",
    "unclassified": "a map saved before cells carried codes (medinterp < 0.4) whose cell was not compared; the "
                    "reason is the saved text (re-mark the work dir with map_from_work_dir for a code)",
}

#: the fields of a cell (``cells.csv`` columns, ``KnowledgeMap.cells_frame()``), in order.
CELL_FIELDS: dict[str, str] = {
    "family": "the map row (concept family)",
    "technique": "the map column",
    "status_code": "the cell's code (see the code rows)",
    "status_reason": "why, in one plain line",
    "layers": "the marked layers ('3–5, 9'); empty when none",
    "best_layer": "the closest miss: the marked layer, else the layer nearest to being marked (smallest "
                  "deciding p_adj; for not_robust the most robust significant layer)",
    "effect": "effect over the control family at best_layer (medicine minus control, item means)",
    "effect_twin": "effect over the random twin at best_layer (paired); empty where not compared",
    "p_adj": "corrected p-value vs the control family at best_layer",
    "p_adj_twin": "corrected p-value vs the random twin at best_layer; empty where not compared",
    "robustness": "fraction of resamples marking best_layer; empty where no resample was run",
    "mde": "minimum detectable effect over the control family at best_layer (80% power, alpha / layers); inf "
           "where the item counts cannot reach alpha",
    "smallest_p_adj": "the smallest corrected p-value the cell's item counts can give at any layer",
    "could_mark": "whether any data could have marked the cell: smallest_p_adj <= alpha and a comparable control",
    "detail": "the marking's full text (the map's control_status)",
}

#: the columns of ``curves.csv`` (``KnowledgeMap.curves_frame()``).
CURVES_COLUMNS: dict[str, str] = {
    "family": "the map row (concept family)",
    "technique": "the map column",
    "layer": "block index, 0-based",
    "curve": "the technique's raw layer curve (its own units, see the report)",
    "effect": "medicine minus this row's control ('control family' or 'random twin'); the curve when control is "
              "'none'",
    "control": "'control family', 'random twin', or 'none' (no effect over control computed)",
    "ci_low": "lower bound of the item-level 95% CI of effect",
    "ci_high": "upper bound of the item-level 95% CI of effect",
    "p_adj": "one-sided p-value of effect > 0, corrected across layers (Holm or BH)",
    "marked": "the layer is marked by the map's rule; said once, on the 'control family' row (never on twin rows)",
    "robustness": "fraction of resamples marking the layer (empty where no resample was run)",
    "mde": "minimum detectable effect over the control family (control family rows only)",
    "comparable": "whether the control family passed the balance check (control family rows only)",
    "status": "the marking's full text for the cell (kept from medinterp 0.3)",
    "status_code": "the cell's code (see the code rows); the same on every row of the cell",
    "status_reason": "the cell's reason in one plain line",
    "rule": "the map's marking rule: 'controls' (effect over control) or 'paper'",
}


class Said(str):
    """A status text that carries its :data:`CODES` code (still a ``str``: code comparing texts keeps working)."""

    code: str

    def __new__(cls, text: str, code: str) -> "Said":
        obj = super().__new__(cls, text)
        obj.code = code
        return obj


def said(code: str, text: str) -> Said:
    """``text`` tagged with ``code`` (one of :data:`CODES`)."""
    if code not in CODES:
        raise ValueError(f"unknown cell code {code!r}; known {sorted(CODES)}")
    return Said(text, code)


def code_of(text: Any, default: str) -> str:
    """The code a status text carries (:func:`said`), else ``default``."""
    return getattr(text, "code", default)


@dataclasses.dataclass(frozen=True)
class CellStatus:
    """One cell: its code, the reason, the closest miss and whether it could have been marked.

    Attributes:
        code: one of :data:`CODES`.
        reason: one plain line.
        detail: the marking's full text.
        layers, best_layer, effect, effect_twin, p_adj, p_adj_twin, robustness, mde, smallest_p_adj,
            could_mark: see :data:`CELL_FIELDS` (None where unknown).
    """

    code: str
    reason: str
    detail: str = ""
    layers: str = ""
    best_layer: int | None = None
    effect: float | None = None
    effect_twin: float | None = None
    p_adj: float | None = None
    p_adj_twin: float | None = None
    robustness: float | None = None
    mde: float | None = None
    smallest_p_adj: float | None = None
    could_mark: bool | None = None

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"unknown cell code {self.code!r}; known {sorted(CODES)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN as None; an infinite MDE as the string "inf")."""
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CellStatus":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("mde") in ("inf", "-inf"):
            kw["mde"] = float(kw["mde"])
        return cls(**kw)

    def short(self) -> str:
        """``code`` and the closest miss, labelled and rounded (no parentheses), e.g.
        ``'not_robust: layer 12, p_adj 0.018, robustness 0.55'``; ``p_adj`` is the deciding one, the larger
        of the corrected p-values vs the control family and vs the twin."""
        parts = []
        if self.best_layer is not None:
            parts.append(f"layer {self.best_layer}")
            p = max((x for x in (self.p_adj, self.p_adj_twin) if x is not None), default=None)
            if p is not None:
                parts.append(f"p_adj {_g(p)}")
            if self.robustness is not None:
                parts.append(f"robustness {self.robustness:.2f}")
        head = self.code + (f" {self.layers}" if self.code == "marked" and self.layers else "")
        return head + (": " + ", ".join(parts) if parts else "")


def _g(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "–"
    if not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    return f"{x:.{digits}g}"


def _opt(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else (x if math.isinf(x) else None)


# ============================================================================ classification
def decision(arr: Float[np.ndarray, "n_stats n_layers"]) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(deciding p_adj, deciding effect, twin compared)`` per layer from a cell's :data:`CONTROL_STATS`
    array, as the marking combines them: the larger corrected p and the smaller effect of the two
    comparisons (the control family alone where the twin was not compared; NaN p as 1, NaN effect as -inf)."""
    k = {n: i for i, n in enumerate(CONTROL_STATS)}
    p = np.nan_to_num(arr[k["p_adj"]], nan=1.0)
    e = np.nan_to_num(arr[k["effect"]], nan=-np.inf)
    twin = bool(np.isfinite(arr[k["p_adj_twin"]]).any())
    if twin:
        p = np.maximum(p, np.nan_to_num(arr[k["p_adj_twin"]], nan=1.0))
        e = np.minimum(e, np.nan_to_num(arr[k["effect_twin"]], nan=-np.inf))
    return p, e, twin


def classify(arr: Float[np.ndarray, "n_stats n_layers"], *, alpha: float, min_run: int,
             significant: np.ndarray | None = None) -> str:
    """The code of a comparable cell whose items can reach ``alpha``: ``marked``, ``not_robust``,
    ``short_run`` or ``not_significant``.

    Args:
        arr: the cell's :data:`CONTROL_STATS` array.
        alpha, min_run: the marking's.
        significant: the marking's own full-data marks (``ControlMarking.significant``); None: recomputed
            from the stored p-values and effects (:func:`medinterp.stats.mark_layers`, as the marking does).
    """
    if (arr[CONTROL_STATS.index("marked")] > 0.5).any():
        return "marked"
    p, e, _ = decision(arr)
    sig = (stats.mark_layers(p, alpha=alpha, min_run=min_run, effect=e, direction="greater")
           if significant is None else np.asarray(significant, bool))
    if sig.any():
        return "not_robust"
    if stats.mark_layers(p, alpha=alpha, min_run=1, effect=e, direction="greater").any():
        return "short_run"
    return "not_significant"


def closest_miss(arr: Float[np.ndarray, "n_stats n_layers"], code: str, *, alpha: float,
                 min_run: int) -> dict[str, Any]:
    """The best layer of a cell and its numbers (:data:`CELL_FIELDS`); ``{}`` when nothing was computed."""
    k = {n: i for i, n in enumerate(CONTROL_STATS)}
    p, e, twin = decision(arr)
    if not np.isfinite(arr[k["effect"]]).any():
        return {}
    marked = arr[k["marked"]] > 0.5
    rob = arr[k["robustness"]]
    if marked.any():
        cand = np.flatnonzero(marked)
    elif code == "not_robust":
        cand = np.flatnonzero(stats.mark_layers(p, alpha=alpha, min_run=min_run, effect=e, direction="greater"))
    else:
        cand = np.flatnonzero(np.isfinite(arr[k["effect"]]))
    if not len(cand):
        cand = np.flatnonzero(np.isfinite(arr[k["effect"]]))
    r = np.nan_to_num(rob, nan=-1.0)
    if code == "not_robust":
        best = int(min(cand, key=lambda l: (-r[l], p[l], -e[l])))
    else:
        best = int(min(cand, key=lambda l: (p[l], -e[l])))
    at = {n: _opt(arr[k[n], best]) for n in ("effect", "effect_twin", "p_adj", "p_adj_twin", "robustness", "mde")}
    if not twin:
        at["effect_twin"] = at["p_adj_twin"] = None
    return {"best_layer": best, **at,
            "layers": _ranges(np.flatnonzero(marked))}


def _ranges(layers: Any) -> str:
    from medinterp.maps.rules import _ranges_text

    return _ranges_text(int(x) for x in layers)


def _layers_word(text: str) -> str:
    return "layers" if ("," in text or "–" in text) else "layer"


def _both(arr: np.ndarray) -> str:
    return "both controls" if decision(arr)[2] else "the control family"


def reason_for(code: str, arr: np.ndarray, miss: Mapping[str, Any], *, alpha: float, min_run: int,
               robustness: float, correction: str) -> str:
    """The plain line of a classified cell (:func:`classify`'s codes)."""
    corr = {"holm": "Holm", "fdr_bh": "BH"}.get(correction, correction)
    best = miss.get("best_layer")
    if code == "marked":
        return (f"layers {miss.get('layers')} beat {_both(arr)} after {corr} correction at α = {alpha:g}, "
                f"in runs of ≥ {min_run}, held in ≥ {robustness:.0%} of resamples")
    if code == "not_robust":
        p, e, _ = decision(arr)
        sig = _ranges(np.flatnonzero(stats.mark_layers(p, alpha=alpha, min_run=min_run, effect=e)))
        rob = miss.get("robustness")
        verb = "beat" if ("," in sig or "–" in sig) else "beats"
        return (f"{_layers_word(sig)} {sig} {verb} {_both(arr)} on the full data but none held in ≥ {robustness:.0%} of "
                f"resamples: best layer {best} held in {_g(rob)}")
    if code == "short_run":
        p, e, _ = decision(arr)
        raw = _ranges(np.flatnonzero(stats.mark_layers(p, alpha=alpha, min_run=1, effect=e)))
        verb = "beat" if ("," in raw or "–" in raw) else "beats"
        return f"{_layers_word(raw)} {raw} {verb} {_both(arr)} but no run reaches {min_run} adjacent layers"
    mde = miss.get("mde")
    see = f"; it could have seen an effect ≥ {_g(mde)}" if mde is not None and math.isfinite(mde) else ""
    return (f"no layer beats {_both(arr)} at α = {alpha:g} after {corr} correction: closest is layer {best} "
            f"with p_adj {_g(max(x for x in (miss.get('p_adj'), miss.get('p_adj_twin'), 0.0) if x is not None))}"
            f"{see}")


def from_marking(m: "ControlMarking", code: str | None, reason: str | None, *, detail: str, alpha: float = 0.05,
                 min_run: int = 2, robustness: float = 0.8, correction: str = "holm",
                 floor: float | None = None, **_: Any) -> CellStatus:
    """The cell of a computed marking ``m``: ``code``/``reason`` when the map decided them (not comparable,
    too few items), else classified from ``m`` (:func:`classify` with ``m.significant``).

    Args:
        floor: the cell's smallest attainable corrected p when it is above ``m.smallest_p_adj`` (a twin
            that was not run because its paired test could not reject).
    """
    arr = m.stats_array()
    smallest = max(float(m.smallest_p_adj), float(floor or 0.0))
    could = bool(m.comparable and smallest <= alpha)
    classified = code is None
    if classified:
        code = classify(arr, alpha=alpha, min_run=min_run, significant=m.significant)
    miss = closest_miss(arr, code, alpha=alpha, min_run=min_run)
    if reason is None:
        reason = reason_for(code, arr, miss, alpha=alpha, min_run=min_run, robustness=robustness,
                            correction=correction) if classified else detail
    return CellStatus(code, reason, detail=detail, smallest_p_adj=smallest, could_mark=could, **miss)


def from_stats(arr: np.ndarray, detail: str, *, alpha: float = 0.05, min_run: int = 2, robustness: float = 0.8,
               correction: str = "holm", **_: Any) -> CellStatus:
    """The cell of a map saved before cells carried codes: classified from its stored statistics where the
    marking was made (``detail == "ok"``), else ``unclassified`` with the saved text."""
    if detail != "ok":
        return CellStatus("unclassified", str(detail), detail=str(detail))
    mde = arr[CONTROL_STATS.index("mde")]
    could = None if np.isnan(mde).all() else bool(np.isfinite(mde).any())
    code = classify(arr, alpha=alpha, min_run=min_run)
    if could is False and code != "marked":
        code = "too_few_items"
    miss = closest_miss(arr, code, alpha=alpha, min_run=min_run)
    reason = ("the item counts cannot reach α after correction: no finite minimum detectable effect"
              if code == "too_few_items" else
              reason_for(code, arr, miss, alpha=alpha, min_run=min_run, robustness=robustness, correction=correction))
    return CellStatus(code, reason, detail=str(detail), could_mark=could, **miss)


# ============================================================================ the map's views
def cell_rows(km: "KnowledgeMap") -> list[dict[str, Any]]:
    """One dict per (family, technique) of ``km`` with the :data:`CELL_FIELDS`."""
    rows = []
    for c in km.concepts:
        for t in km.techniques:
            d = km.cell(c, t).to_dict()
            rows.append({"family": c, "technique": t, "status_code": d.pop("code"), "status_reason": d.pop("reason"),
                         **d})
    return rows


def codebook_frame():
    """The codebook of ``curves.csv`` and ``cells.csv``: one row per column of each and per code."""
    import pandas as pd

    rows = [{"file": "curves.csv", "kind": "column", "name": k, "meaning": v} for k, v in CURVES_COLUMNS.items()]
    rows += [{"file": "cells.csv", "kind": "column", "name": k, "meaning": v} for k, v in CELL_FIELDS.items()]
    rows += [{"file": "curves.csv, cells.csv", "kind": "code", "name": k, "meaning": v} for k, v in CODES.items()]
    return pd.DataFrame(rows, columns=["file", "kind", "name", "meaning"])


def cell_table_text(km: "KnowledgeMap", *, reasons: bool = True) -> str:
    """The map as one plain table, family x technique -> code and closest miss, then one reason per cell.

    Example line: ``diseases  marked 3–5: layer 4, p_adj 0.001 | not_robust: layer 12, p_adj 0.018, ...``.
    """
    cells = {(c, t): km.cell(c, t) for c in km.concepts for t in km.techniques}
    texts = {k: v.short() for k, v in cells.items()}
    wf = max([len("family")] + [len(km.label(c)) for c in km.concepts])
    wt = {t: max([len(t)] + [len(texts[c, t]) for c in km.concepts]) for t in km.techniques}
    lines = ["  ".join([f"{'family':<{wf}}"] + [f"{t:<{wt[t]}}" for t in km.techniques]).rstrip()]
    for c in km.concepts:
        lines.append("  ".join([f"{km.label(c):<{wf}}"] + [f"{texts[c, t]:<{wt[t]}}" for t in km.techniques]).rstrip())
    used = sorted({v.code for v in cells.values()}, key=list(CODES).index)
    lines.append("")
    lines += [f"  {code}: {CODES[code]}" for code in used]
    if reasons:
        lines.append("")
        lines += [f"  {km.label(c)} / {t}: {v.reason}" for (c, t), v in cells.items() if v.code != "marked"]
    return "\n".join(lines)


__all__ = ["CELL_FIELDS", "CODES", "CURVES_COLUMNS", "CellStatus", "Said", "cell_rows", "cell_table_text",
           "classify", "closest_miss", "code_of", "codebook_frame", "decision", "from_marking", "from_stats", "said"]
