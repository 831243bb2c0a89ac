"""The geometry statistics the map's findings table reads (``medinterp.maps.findings``).

:func:`findings_extras` is the geometry ``Technique.extras``: it turns a :class:`GeometryResult`'s
headline rows into ``{"findings": {KEY: STAT}}`` with the keys the map documents. Layer-wise questions
are read at **mid depth** (block ``n_layers // 2``), fixed in advance: picking the best layer after
looking would overstate every finding. Per-layer statistics (collapse) are passed whole.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medinterp.techniques.geometry.result import GeometryResult


def _rows(res: GeometryResult, metric: str, space: str | None = None):
    t = res.table
    if t is None or not len(t):
        return t.iloc[0:0] if t is not None else None
    sel = (t["metric"] == metric) & (t["layer"] >= 0)
    if space is not None:
        sel &= t["space"] == space
    return t[sel].sort_values("layer")


def _at_mid(rows, mid: int | None = None) -> dict[str, Any] | None:
    if rows is None or not len(rows):
        return None
    layers = rows["layer"].to_numpy()
    mid = int(layers.max() + 1) // 2 if mid is None else mid
    r = rows[rows["layer"] == mid]
    if not len(r):
        return None
    r = r.iloc[0]
    out = {"value": float(r["value"]), "layer": mid}
    for k in ("ci_low", "ci_high"):
        if np.isfinite(r.get(k, np.nan)):
            out[k] = float(r[k])
    if np.isfinite(r.get("p_value", np.nan)):
        out["p"] = float(r["p_value"])
    return out


def findings_extras(model: Any, res: GeometryResult, mid: int | None = None) -> dict[str, Any]:
    """``{"findings": {...}}`` for the map (see :mod:`medinterp.maps.findings` for the keys), plus
    ``{"findings_of": {variant: {...}}}`` where the run measured the set's variants.

    ``mid``: the block read as mid depth (default: ``n_layers // 2`` from the result's layers; give it when
    the result holds a subset of the layers)."""
    del model  # the statistics are in the result
    space = "span" if res.table is not None and (res.table["space"] == "span").any() else None
    out: dict[str, Any] = {}
    age = _at_mid(_rows(res, "age_jump", space), mid)
    if age is not None:  # p = the 17→18 step's percentile p among all two-digit steps
        age["control"] = f"all two-digit a→a+1 steps, layer {age['layer']} (mid depth)"
        out["age_step_ratio"] = age
    circ = _rows(res, "circularity", space)
    if circ is not None and len(circ):
        by = {}
        for dname, rows in circ.groupby("group"):
            d = _at_mid(rows, mid)
            if d is not None and np.isfinite(d["value"]):
                r = rows[rows["layer"] == d["layer"]].iloc[0]
                by[str(dname)] = {"value": d["value"], "p": d.get("p", float("nan")),
                                  "null_median": float(r["baseline"]), "layer": d["layer"]}
        if by:
            layer = next(iter(by.values()))["layer"]
            out["progression_circularity"] = {
                "value": float(np.mean([v["value"] for v in by.values()])), "by_disease": by, "layer": layer,
                "control": f"stage order permuted among each disease's items, layer {layer} (mid depth)"}
    diff = _rows(res, "labelling_excess_diff", space)
    if diff is not None and len(diff):
        a, b = str(diff["label"].iloc[0]).split("-", 1)
        d = _at_mid(diff, mid if mid is not None else
                    int(res.table.loc[res.table["layer"] >= 0, "layer"].max() + 1) // 2)  # stored at mid only
        if d is not None and "mechanism" in a and "specialty" in b:  # stored as mechanism − specialty
            d = {"value": -d["value"], "ci_low": -d.get("ci_high", np.nan), "ci_high": -d.get("ci_low", np.nan),
                 "p": 1 - d["p"] if "p" in d else np.nan, "layer": d["layer"]}
        if d is not None:
            d["control"] = (f"each labelling's lexical baseline (item strings), {a} vs {b} at equal class count "
                            f"and size, layer {d['layer']} (mid depth)")
            out["specialty_minus_mechanism"] = d
    for key, metric in (("collapse_centred_cosine", "mean_cosine_centred"),
                        ("collapse_participation_ratio", "participation_ratio")):
        rows = _rows(res, metric, space)
        if rows is not None and len(rows):
            y = rows["value"].to_numpy(float)
            out[key] = {"value": float(np.nanmax(y)) if np.isfinite(y).any() else float("nan"),
                        "per_layer": y.tolist(), "control": "first and last layer (no CI)"}
            lo, hi = (rows[c].to_numpy(float) if c in rows else np.full(len(y), np.nan) for c in ("ci_low", "ci_high"))
            if np.isfinite(lo).all() and np.isfinite(hi).all():  # item-bootstrap CIs (participation ratio)
                out[key].update(per_layer_low=lo.tolist(), per_layer_high=hi.tolist(),
                                control="first and last layer, control family and random twin (item-bootstrap CIs)")
    extra: dict[str, Any] = {"findings": out} if out else {}
    if getattr(res, "variant_findings", None):
        extra["findings_of"] = {str(k): dict(v) for k, v in res.variant_findings.items() if v}
    return extra
