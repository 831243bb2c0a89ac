"""All metrics of one layer: the label roles of a concept set and the per-layer table rows.

Example:
    >>> import numpy as np
    >>> spec = LabelSpec({"c": ["a"] * 10 + ["b"] * 10}, {})
    >>> X = np.r_[np.zeros((10, 3)), np.ones((10, 3)) * 5] + np.arange(20)[:, None] * 1e-3
    >>> rows, _, _ = layer_metrics(0, X, X, spec, n_perm=5, n_boot=5)
    >>> sorted({r["metric"] for r in rows})
    ['anisotropy', 'eff_rank', 'mean_cosine', 'resid_norm', 'silhouette']
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from jaxtyping import Float

from medinterp.errors import MedinterpError
from medinterp.techniques.geometry.bootstrap import NAN2, mean_ci
from medinterp.techniques.geometry.metrics import (
    _pairwise,
    anisotropy,
    collapse_metrics,
    discontinuity_profile,
    jump_index,
    linearity_r2,
    progression_scores,
    silhouette,
    step_ratio,
)

TABLE_COLUMNS = [
    "layer",
    "metric",
    "space",
    "label",
    "group",
    "value",
    "ci_low",
    "ci_high",
    "baseline",
    "baseline_high",
    "p_value",
    "n",
]

#: Collapse statistics that stay defined when every prompt gives the same vector (a constant layer).
DEFINED_WHEN_CONSTANT = ("resid_norm", "mean_cosine")


@dataclasses.dataclass
class LabelSpec:
    """The labellings of a concept set by role: what is scored and which label plays age, sex, ..."""

    categorical: dict[str, list[Any]]
    continuous: dict[str, list[float]]
    age: str | None = None
    group: str | None = None
    disease: str | None = None
    stage: str | None = None
    units: list[Any] | None = None  # template index per prompt (bootstrap unit), when known


def _row(layer: int, metric: str, space: str, label: str, group: str, d: Mapping[str, Any]) -> dict:
    return {
        "layer": layer, "metric": metric, "space": space, "label": label, "group": group,
        "value": d.get("value", math.nan), "ci_low": d.get("ci_low", math.nan), "ci_high": d.get("ci_high", math.nan),
        "baseline": d.get("baseline", math.nan), "baseline_high": d.get("baseline_high", math.nan),
        "p_value": d.get("p_value", math.nan), "n": d.get("n", math.nan),
    }


def _present(values: Sequence[Any]) -> np.ndarray:
    return np.asarray([v is not None and not (isinstance(v, float) and math.isnan(v)) and v != "" for v in values])


def _blank(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``df`` with ``columns`` set to NaN: the rows a constant layer has, without numbers of noise."""
    df = df.copy()
    for c in columns:
        df[c] = math.nan
    return df


def layer_metrics(
    layer: int,
    raw: Float[np.ndarray, "n d"],
    emb: Float[np.ndarray, "n c"],
    spec: LabelSpec,
    *,
    k: int = 20,
    n_perm: int = 100,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    jump: tuple[float, float] = (17, 18),
    constant: bool = False,
) -> tuple[list[dict], list[pd.DataFrame], list[pd.DataFrame]]:
    """All metrics of one layer: table rows, age-step profiles, per-disease progression rows.

    ``constant=True`` (every prompt gives the same vector, see ``embedding.is_constant``) gives the
    same rows with NaN values: only the residual norm and the mean cosine are computed.
    """
    rows: list[dict] = []
    steps: list[pd.DataFrame] = []
    progs: list[pd.DataFrame] = []
    n = int(np.asarray(raw).shape[0])
    spaces = {"umap": np.asarray(emb, np.float64), "raw": np.asarray(raw, np.float64)}
    dists = {} if constant else {name: _pairwise(X) for name, X in spaces.items()}

    def score(fn: Any, *args: Any, n_points: int = n, **kw: Any) -> dict[str, Any]:
        return {"n": n_points} if constant else fn(*args, **kw)

    for name, labels in spec.categorical.items():
        keep = _present(labels)
        lab = [x for x, ok in zip(labels, keep) if ok]
        if len(set(map(str, lab))) < 2:
            continue
        for sp, X in spaces.items():
            D = None if constant else dists[sp][np.ix_(keep, keep)]
            rows.append(_row(layer, "silhouette", sp, name, "", score(
                silhouette, X[keep], lab, n_points=int(keep.sum()), n_perm=n_perm, n_boot=n_boot, ci=ci, seed=seed,
                D=D)))
    for sp, X in spaces.items():
        rows.append(_row(layer, "anisotropy", sp, "", "",
                         score(anisotropy, X, k=k, n_boot=n_boot, ci=ci, seed=seed, D=dists.get(sp))))
        for name, y in spec.continuous.items():
            keep = _present(y)
            if keep.sum() < 10:
                continue
            yk = np.asarray([v for v, ok in zip(y, keep) if ok], dtype=float)
            rows.append(_row(layer, "linearity_r2", sp, name, "",
                             score(linearity_r2, X[keep], yk, n_points=len(yk), n_boot=n_boot, ci=ci, seed=seed)))
    if spec.age:
        ages = np.asarray(spec.continuous[spec.age], dtype=float)
        grp = spec.categorical.get(spec.group) if spec.group else None
        for sp, X in spaces.items():
            prof = discontinuity_profile(X, ages, None)
            if grp is not None:
                prof = pd.concat([prof, discontinuity_profile(X, ages, grp)], ignore_index=True)
            if constant:
                prof = _blank(prof, ("step", "median_step", "ratio"))
            prof.insert(0, "space", sp)
            prof.insert(0, "layer", layer)
            steps.append(prof)
            if jump[0] in ages and jump[1] in ages:
                label = f"{spec.age}:{jump[0]:g}-{jump[1]:g}"
                u = spec.units
                u_all = None if u is None else [f"{a}|{b}" for a, b in zip(u, grp)] if grp is not None else u
                rows.append(_row(layer, "step_ratio", sp, label, "all",
                                 score(step_ratio, X, ages, jump, n_boot=n_boot, ci=ci, seed=seed, units=u_all)))
                for g in sorted(set(map(str, grp))) if grp is not None else []:
                    sel = np.asarray([str(x) == g for x in grp])
                    u_g = None if u is None else [x for x, ok in zip(u, sel) if ok]
                    try:
                        jump_index(ages[sel], jump)  # this group lacks one of the two ages: no row
                    except MedinterpError:
                        continue
                    r = score(step_ratio, X[sel], ages[sel], jump, n_points=int(sel.sum()), n_boot=n_boot, ci=ci,
                              seed=seed, units=u_g)
                    rows.append(_row(layer, "step_ratio", sp, label, g, r))
    if spec.disease and spec.stage:
        dis = spec.categorical[spec.disease]
        stg = spec.continuous[spec.stage]
        for sp, X in spaces.items():
            df = progression_scores(X, dis, stg, n_boot=0 if constant else n_boot, ci=ci, seed=seed, units=spec.units)
            if df.empty:
                continue
            if constant:
                df = _blank(df, ("value", "ci_low", "ci_high"))
            df.insert(0, "space", sp)
            df.insert(0, "layer", layer)
            progs.append(df)
            n_dis = df.group.nunique()
            for m in ("spearman", "circularity"):
                sub = df[df.metric == m]
                vals = sub.value.to_numpy(float)
                est = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
                # CI of the mean over diseases: resample diseases (their own CIs shown per disease)
                lo, hi = mean_ci(vals, n_boot, ci, seed) if len(vals) > 1 else NAN2
                rows.append(_row(layer, m, sp, spec.stage, "mean",
                                 {"value": est, "ci_low": lo, "ci_high": hi, "n": n_dis}))
    for m, d in collapse_metrics(raw, n_boot=n_boot, ci=ci, seed=seed).items():
        rows.append(_row(layer, m, "raw", "", "", d if not constant or m in DEFINED_WHEN_CONSTANT else {"n": n}))
    return rows, steps, progs
