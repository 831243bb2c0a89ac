"""The headline geometry of one concept set (METHOD.md §0-§1): per layer and read, the item-grouped
probe score per prompt, cosine silhouette, collapse, and the family questions.

Two reads, both template-centred (:func:`~medinterp.techniques.geometry.concept.template_centre`):
``span`` (the mean over the item's tokens) and ``last`` (the fixed final token). The map reads the
per-prompt probe scores of the ``span`` read on the primary labelling (``unit_span``); the ``last``
read is recorded beside it.

Table rows (same columns as the paper metrics, ``space`` = the read):

* ``probe``: mean per-prompt score (chance-corrected balanced accuracy, or R² for a continuous
  label) with a cluster-bootstrap CI over items: the primary labelling on both reads, the matched
  pair (drugs) on the span read (other labellings: silhouette and the lexical baseline only, for cost);
* ``balanced_accuracy`` (categorical) / ``r2`` (continuous): the raw probe score;
* ``silhouette_cos``: cosine silhouette of every categorical labelling (span read), CI by
  bootstrapping items on the per-point values;
* ``resid_norm``, ``mean_cosine``, ``mean_cosine_centred``, ``participation_ratio`` (collapse);
* drugs (``matched``): ``probe`` rows of both matched labellings and ``matched_diff`` (a − b per item);
* age: ``age_step_ratio`` (17→18 over matched x7→x8 steps, template-bootstrap CI, rank p) and
  ``age_jump`` (17→18 over the median two-digit step, baseline = that median, p = its percentile among
  all two-digit steps: :func:`age_jump_test`);
* progression: ``stage_spearman`` (baseline = stage-permutation null mean, p from the null), ``closes``,
  and per disease (``group``) ``circularity`` (circular minus linear stage order, baseline = the
  stage-permutation null median, p from that null);
* drugs: ``labelling_excess_diff`` at mid depth only: (a − its lexical) − (b − its lexical) with a
  refit-bootstrap CI (baseline = its SE; :func:`labelling_excess_difference`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Sequence

import numpy as np
import pandas as pd

from medinterp.errors import MedinterpError
from medinterp.stats import cluster_bootstrap
from medinterp.stats.spectrum import bootstrap_counts, participation_ratio_ci
from medinterp.techniques.geometry.concept import (
    collapse_stats,
    cosine_distances,
    cosine_silhouette_samples,
    lexical_features,
    reduce,
    template_centre,
    unit_scores_for,
)
from medinterp.techniques.geometry.embedding import is_constant
from medinterp.techniques.geometry.inference import _fmt
from medinterp.techniques.geometry.layer import TABLE_COLUMNS, _row
from medinterp.techniques.geometry.questions import (
    age_jump_test,
    age_step,
    labelling_excess_difference,
    matched_steps,
    paired_item_difference,
    progression_order,
)

READS = ("span", "last")


@dataclasses.dataclass
class HeadlineInput:
    """What the headline needs of one concept set (built by ``run._prepare``)."""

    layers: list[int]
    reads: dict[str, np.ndarray]  # read name -> [L, n, d]
    item_text: list[str]
    item_ids: list[Any]
    templates: list[Any]
    labels: dict[str, list]
    continuous: set[str]
    scored: list[str]  # labellings to probe; the first is the map's (primary) one
    matched: tuple[str, str] | None = None  # (a, b): report a − b (drugs: specialty vs mechanism)
    age: str | None = None
    disease: str | None = None
    stage: str | None = None


@dataclasses.dataclass
class HeadlineOutput:
    rows: list[dict]
    unit: dict[str, np.ndarray]  # read -> [n, L] per-prompt scores of the primary labelling
    lexical: np.ndarray  # [n] per-prompt lexical-baseline scores of the primary labelling
    findings: dict[str, Any]
    progression: pd.DataFrame | None
    seconds: float
    features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # read -> [L, n, k] probe features
    lexical_features: np.ndarray | None = None  # [n, k'] the lexical baseline's features
    groups: np.ndarray | None = None  # [n] CV groups of the primary labelling (the map's units)


def _groups(inp: HeadlineInput, label: str) -> np.ndarray:
    """CV groups: the age itself for the age label (GroupKFold by age), else the item (as
    :func:`~medinterp.techniques.geometry.inference.cv_groups`)."""
    if label == inp.age:
        return np.asarray(inp.labels[label], float)
    return np.asarray([str(u) for u in inp.item_ids])


def _present(values: Sequence[Any]) -> np.ndarray:
    return np.asarray([v is not None and v != "" and str(v) != "ungrouped"
                       and not (isinstance(v, float) and math.isnan(v)) for v in values])


def _ci_rows(rows: list, layers: list[int], read: str, metric: str, label: str, S: np.ndarray,
             units: np.ndarray, n_boot: int, ci: float, seed: int) -> None:
    """One row per layer: mean of per-prompt values ``S`` [n, L], cluster-bootstrap CI over ``units``."""
    bs = cluster_bootstrap(S, units=units, n_boot=n_boot, ci=ci, seed=seed)
    for j, layer in enumerate(layers):
        rows.append(_row(layer, metric, read, label, "", {"value": float(bs.estimate[j]), "ci_low": float(bs.low[j]),
                                                          "ci_high": float(bs.high[j]), "n": S.shape[0]}))


def headline(inp: HeadlineInput, *, pca_dims: int = 64, n_splits: int = 5, n_boot: int = 1000,
             n_null: int = 1000, ci: float = 0.95, seed: int = 0, jump: tuple[float, float] = (17, 18)) -> HeadlineOutput:
    """All headline rows of one concept set (see the module docstring)."""
    t0 = time.perf_counter()
    L = len(inp.layers)
    n = len(inp.item_ids)
    units = np.asarray([str(u) for u in inp.item_ids])
    uniq, unit_of = np.unique(units, return_inverse=True)  # PR CIs: resample items with all their prompts
    pr_draws = bootstrap_counts(len(uniq), min(n_boot, 200), seed)[:, unit_of]
    tpl = np.asarray([str(t) for t in inp.templates])
    if not inp.scored:
        raise MedinterpError("geometry headline: no labelling to score")
    rows: list[dict] = []
    unit: dict[str, np.ndarray] = {}
    feat_out: dict[str, np.ndarray] = {}
    findings: dict[str, Any] = {"primary_label": inp.scored[0]}
    progs: list[pd.DataFrame] = []
    lex = lexical_features(inp.item_text, pca_dims, seed)
    folds: dict = {}  # each labelling's CV folds, computed once for all layers and the lexical baseline
    probe_labels = [lab for lab in inp.scored]
    matched = [m for m in (inp.matched or ()) if m not in probe_labels]
    keep_m = _present(inp.labels[inp.matched[0]]) & _present(inp.labels[inp.matched[1]]) if inp.matched else None
    # lexical baseline: same probe, same folds, on TF-IDF of the item strings
    lexical_scores, findings["lexical"] = None, {}
    for lab in probe_labels + matched:
        sel = keep_m if inp.matched and lab in inp.matched else _present(inp.labels[lab])
        y = [v for v, ok in zip(inp.labels[lab], sel) if ok]
        s, raw = unit_scores_for(lex[sel], y, _groups(inp, lab)[sel], lab in inp.continuous, n_splits=n_splits,
                                 seed=seed, splits_cache=folds)
        lex_units = np.asarray([_fmt(g) for g in _groups(inp, lab)])[sel]  # the CV groups
        bs = cluster_bootstrap(s, units=lex_units, n_boot=n_boot, ci=ci, seed=seed)
        findings["lexical"][lab] = {"value": float(bs.estimate), "ci_low": float(bs.low), "ci_high": float(bs.high),
                                    "raw": raw}
        if lab == probe_labels[0]:
            lexical_scores = np.full(n, np.nan)
            lexical_scores[sel] = s
    main = "span" if "span" in inp.reads else next(iter(inp.reads))  # the read the questions are asked on
    for read, V in inp.reads.items():
        # per-layer probes (the cost): the primary labelling on both reads, the matched pair on the item
        # read; every categorical labelling gets a cosine silhouette (cheap)
        labs = list(dict.fromkeys(probe_labels[:1] + (list(inp.matched) if inp.matched and read == main else [])))
        sil_labs = [lab for lab in dict.fromkeys(probe_labels + labs) if lab not in inp.continuous] \
            if read == main else []
        per_label = {lab: np.full((n, L), np.nan) for lab in labs}
        feats: np.ndarray | None = None
        age_rows, prog_rows = [], []
        for j, layer in enumerate(inp.layers):
            raw_X = np.asarray(V[j], np.float64)
            constant = is_constant(raw_X)
            Xc = template_centre(raw_X, tpl)
            Z = reduce(Xc, pca_dims, seed)
            if feats is None:
                feats = np.empty((L, n, Z.shape[1]), np.float32)
            feats[j] = Z
            for lab in labs:
                in_m = inp.matched is not None and lab in inp.matched
                sel = keep_m if in_m else _present(inp.labels[lab])
                y = [v for v, ok in zip(inp.labels[lab], sel) if ok]
                if constant:  # one vector for every prompt: no information, scored as chance (0)
                    s, raw = np.zeros(int(sel.sum())), math.nan
                else:
                    s, raw = unit_scores_for(Z[sel], y, _groups(inp, lab)[sel], lab in inp.continuous,
                                             n_splits=n_splits, seed=seed, splits_cache=folds)
                per_label[lab][sel, j] = s
                rows.append(_row(layer, "r2" if lab in inp.continuous else "balanced_accuracy", read, lab, "",
                                 {"value": raw, "n": int(sel.sum())}))
            D = cosine_distances(Xc) if sil_labs else None
            for lab in sil_labs:
                sel = keep_m if inp.matched and lab in inp.matched else _present(inp.labels[lab])
                sil = cosine_silhouette_samples(None, [v for v, ok in zip(inp.labels[lab], sel) if ok],
                                                D=D[np.ix_(sel, sel)])
                bs = cluster_bootstrap(sil, units=units[sel], n_boot=min(n_boot, 200), ci=ci, seed=seed)
                rows.append(_row(layer, "silhouette_cos", read, lab, "", {"value": float(bs.estimate),
                                 "ci_low": float(bs.low), "ci_high": float(bs.high), "n": int(sel.sum())}))
            for m, v in collapse_stats(raw_X).items():
                d = {"value": v, "n": n}
                if m == "participation_ratio" and not constant and len(uniq) >= 3:  # item bootstrap, same draws per layer
                    pr = participation_ratio_ci(raw_X, n_boot=0, draws=pr_draws)
                    d.update(ci_low=pr["ci_low"], ci_high=pr["ci_high"])
                rows.append(_row(layer, m, read, "", "", d))
            if read == main and inp.age:
                ages = np.asarray(inp.labels[inp.age], float)
                if jump[0] in ages and jump[1] in ages and len(matched_steps(ages, jump)) >= 2:
                    r = age_step(Xc, ages, tpl, jump=jump, n_boot=n_boot, ci=ci, seed=seed)
                    age_rows.append({"layer": layer, **{k: r[k] for k in ("step", "matched_mean", "ratio", "ci_low",
                                                                          "ci_high", "p_rank", "outlier")}})
                    rows.append(_row(layer, "age_step_ratio", read, f"{inp.age}:{jump[0]:g}-{jump[1]:g}", "",
                                     {"value": r["ratio"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                                      "p_value": r["p_rank"], "n": r["n_matched"]}))
                if jump[0] >= 10 and jump[1] <= 99 and ((ages >= 10) & (ages <= 99)).sum():
                    try:
                        r = age_jump_test(Xc, ages, tpl, jump=jump)
                    except MedinterpError:  # too few two-digit ages: the step is not tested (no row)
                        r = None
                    if r is not None:
                        rows.append(_row(layer, "age_jump", read, f"{inp.age}:{jump[0]:g}-{jump[1]:g}", "",
                                         {"value": r["ratio"], "baseline": r["median_step"], "p_value": r["p"],
                                          "n": r["n_steps"]}))
            if read == main and inp.disease and inp.stage:
                r = progression_order(Xc, inp.labels[inp.disease], np.asarray(inp.labels[inp.stage], float), units,
                                      n_perm=n_null, seed=seed)
                rows.append(_row(layer, "stage_spearman", read, inp.stage, "mean",
                                 {"value": r["spearman"], "baseline": r["null_mean"], "baseline_high": r["null_q95"],
                                  "p_value": r["p_value"], "n": r["n_diseases"]}))
                rows.append(_row(layer, "closes", read, inp.stage, "mean", {"value": r["closes"], "n": r["n_diseases"]}))
                for dname, d in r["per_disease"].items():  # circular vs linear stage order, permutation p
                    rows.append(_row(layer, "circularity", read, inp.stage, str(dname),
                                     {"value": d["circularity"], "baseline": d["circ_null_median"],
                                      "p_value": d["circ_p"], "n": 1}))
                for dname, d in r["per_disease"].items():
                    for m in ("spearman", "csfs", "csls"):
                        prog_rows.append({"layer": layer, "space": read, "group": dname, "metric": m,
                                          "value": d[m], "ci_low": math.nan, "ci_high": math.nan, "n": 1})
        for lab, S in per_label.items():  # CIs resample the CV groups (the units: the age for age)
            sel = ~np.isnan(S[:, 0])
            cv_units = np.asarray([_fmt(g) for g in _groups(inp, lab)])
            _ci_rows(rows, inp.layers, read, "probe", lab, S[sel], cv_units[sel], n_boot, ci, seed)
        unit[read] = per_label[probe_labels[0]]
        feat_out[read] = feats
        if inp.matched and read == main:
            a, b = inp.matched
            d = paired_item_difference(per_label[a][keep_m], per_label[b][keep_m], units[keep_m], n_boot=n_boot,
                                       ci=ci, seed=seed)
            for j, layer in enumerate(inp.layers):
                rows.append(_row(layer, "matched_diff", read, f"{a}-{b}", "",
                                 {"value": float(d["diff"][j]), "ci_low": float(d["ci_low"][j]),
                                  "ci_high": float(d["ci_high"][j]), "n": d["n_items"]}))
            mid = (max(inp.layers) + 1) // 2  # mid depth, fixed in advance (as the findings read)
            if mid in inp.layers and feats is not None:
                j = inp.layers.index(mid)
                try:
                    e = labelling_excess_difference(
                        feats[j][keep_m], lex[keep_m], np.asarray(inp.labels[a], object)[keep_m],
                        np.asarray(inp.labels[b], object)[keep_m], units[keep_m], templates=tpl[keep_m],
                        n_perm=min(n_null, 200), n_boot=min(n_boot, 200), ci=ci, seed=seed)
                except MedinterpError:  # no common class structure: not measured (no row)
                    e = None
                if e is not None:
                    rows.append(_row(mid, "labelling_excess_diff", read, f"{a}-{b}", "",
                                     {**{k: e[k] for k in ("value", "ci_low", "ci_high")}, "p_value": e["p"],
                                      "baseline": e["se"], "n": int(len(np.unique(units[keep_m])))}))
        if age_rows:
            findings.setdefault("age_step", {})[read] = age_rows
        if prog_rows:
            progs.append(pd.DataFrame(prog_rows))
    if inp.disease and inp.stage:
        r = progression_order(lex, inp.labels[inp.disease], np.asarray(inp.labels[inp.stage], float), units,
                              n_perm=n_null, seed=seed)
        findings["progression_lexical"] = {k: r[k] for k in ("spearman", "null_mean", "null_q95", "p_value", "closes")}
    return HeadlineOutput(rows=rows, unit=unit, lexical=lexical_scores, findings=findings,
                          progression=pd.concat(progs, ignore_index=True) if progs else None,
                          seconds=time.perf_counter() - t0, features=feat_out,
                          lexical_features=np.asarray(lex, np.float32),
                          groups=np.asarray([_fmt(g) for g in _groups(inp, probe_labels[0])]))


def headline_table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)
