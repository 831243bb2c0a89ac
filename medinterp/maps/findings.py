"""The paper's findings (METHOD.md "Findings") as decision rules: holds / does not hold / inconclusive.

The report opens with one row per finding, each with its statistic, CI and control. The statistics
come from the techniques through documented keys, never guessed:

* ``Technique.extras(model, result)`` may return ``{"findings": {KEY: STAT, ...}}``; the map stores it
  as ``km.extras["findings"][family]``. A ``STAT`` is a mapping with ``"value"`` (float) and optional
  ``"ci_low"``, ``"ci_high"``, ``"p"``, ``"control"`` (words, or a number / per-layer list), and for
  per-layer statistics ``"per_layer"`` (list), ``"per_layer_low"``, ``"per_layer_high"``,
  ``"per_layer_control"``. The keys read (see :data:`FINDING_KEYS`):

  - ``age_step_ratio`` (families ``age``, ``age_words``, control ``age_control``): the 17→18 step over
    the median two-digit step, ``p`` = its percentile p among all two-digit steps;
  - ``progression_circularity`` (family ``progression``): circularity with a stage-permutation
    ``p``; optionally ``"by_disease": {name: {"value", "p", "null_median"}}`` (Parkinson's, COPD);
  - ``specialty_minus_mechanism`` (family ``drugs``): (specialty − its lexical level) − (mechanism −
    its lexical level) at equal class count and size, CI;
  - ``collapse_participation_ratio`` (any family): participation ratio per layer (``per_layer`` +
    item-bootstrap ``per_layer_low`` / ``per_layer_high``); the same key in the rows
    ``<family>__control`` and ``<family>__twin`` (the control family's and the random twin's runs,
    :mod:`medinterp.maps.side_extras`) is the collapse rule's control (``per_layer_control`` also
    accepted). ``collapse_centred_cosine`` may be present; no rule reads it.
* ``Technique.extras`` may return ``{"block_criticality": {"curve": [...], "ci_low": [...],
  "ci_high": [...], "label": str, "unit_kl": [[...]]}}`` (e.g. generic next-token KL when a block is
  skipped; ``unit_kl`` per item and block); it is drawn once as a strip for all families and read by
  the fragility rule.
* "knowledge in the first half" is read from the map's marked layers against the same rule's marks on
  the control families' curves (``km.extras["control_curves"]``; :mod:`medinterp.maps.findings_stats`).
* Rules comparing models: :mod:`medinterp.maps.findings_models`.

When a statistic is absent the row says ``inconclusive: not measured`` (nothing is invented).

Example:
    >>> age_jump({"age": {"age_step_ratio": {"value": 3.0, "p": 0.011}},
    ...           "age_control": {"age_step_ratio": {"value": 1.0, "p": 0.5}}}).verdict
    'holds'
    >>> age_jump({}).detail
    'not measured'
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from medinterp import stats

HOLDS, FAILS, UNSURE = "holds", "does not hold", "inconclusive"

#: statistic keys the rules read from ``km.extras["findings"][family]``.
FINDING_KEYS = ("age_step_ratio", "progression_circularity", "specialty_minus_mechanism", "collapse_centred_cosine",
                "collapse_participation_ratio")


#: the paper the findings come from (named above the report's table)
PAPER = ("Medical Interpretability and Knowledge Maps of Large Language Models (Marinescu et al., "
         "arXiv 2510.11390)")

#: claim -> the null its rule tests against, in words (the report's "null" column; METHOD "Findings rules")
NULLS: dict[str, str] = {
    "knowledge in the first half of the layers":
        "the first-half share the same techniques give on the matched control families (medical and control marks "
        "swapped per family, exact swap permutation): each technique's own depth bias",
    "age non-linear, with a 17→18 jump":
        "17→18 is one more two-digit step: its rank among all other two-digit steps (10→11 ... 98→99) after a "
        "smooth cubic age trend, at mid depth; the building-age control must not show it",
    "circular disease progression (Parkinson's, COPD)":
        "stage labels permuted among each disease's items (circular − linear stage-order fit), Holm over diseases",
    "drugs organised by specialty over mechanism":
        "equal excess of the two labellings over their own lexical baselines (refit cluster bootstrap SEs), at "
        "equal class count and size, mid depth",
    "activation collapse at mid depth":
        "no dip: the mid-depth participation ratio within the item-bootstrap CIs of the first and last layers, or "
        "not below the control family's and the random twin's at that layer",
    "fragile to single-layer removal":
        "the median block's skip KL is below 1 nat (item-bootstrap CI); across models, equal medians",
}


@dataclasses.dataclass
class Finding:
    """One row of the findings table."""

    claim: str
    verdict: str
    statistic: str = ""
    value: float | None = None
    ci: tuple[float, float] | None = None
    control: str = ""
    detail: str = ""

    @property
    def null(self) -> str:
        """What the rule's statistic is tested against, in words (:data:`NULLS`; "" for an unknown claim)."""
        return NULLS.get(self.claim, "")

    def as_row(self) -> tuple[str, str, str, str]:
        """``(claim, verdict, statistic [CI], control)`` as text; an unmeasured value or CI in words, never "nan"."""
        finite = self.ci is not None and all(v is not None and np.isfinite(float(v)) for v in self.ci)
        ci = f"[{self.ci[0]:.3g}, {self.ci[1]:.3g}]" if finite else ("(no CI)" if self.ci is not None else "")
        val = "" if self.value is None else (f"{self.value:.3g}" if np.isfinite(self.value) else "not measured")
        verdict = self.verdict + (f": {self.detail}" if self.detail else "")
        return self.claim, verdict, f"{self.statistic} {val} {ci}".strip(), self.control


def _stat(findings: Mapping[str, Any], family: str | None, key: str) -> tuple[str, Mapping] | None:
    """The first ``(family, stat)`` holding ``key`` (in ``family`` only, when given)."""
    for fam, stats_ in (findings or {}).items():
        if family is not None and fam != family:
            continue
        if isinstance(stats_, Mapping) and isinstance(stats_.get(key), Mapping):
            return fam, stats_[key]
    return None


def _ci(s: Mapping) -> tuple[float, float] | None:
    if s.get("ci_low") is None or s.get("ci_high") is None:
        return None
    return float(s["ci_low"]), float(s["ci_high"])


def _control(s: Mapping, default: str) -> str:
    c = s.get("control")
    return str(c) if isinstance(c, str) else (f"{default} ({float(c):.3g})" if isinstance(c, (int, float)) else default)


def _by_ci(claim: str, statistic: str, s: Mapping, threshold: float, control: str) -> Finding:
    """Holds if the CI is above ``threshold``, does not hold if below; inconclusive if it straddles."""
    ci = _ci(s)
    value = float(s["value"])
    if ci is None:
        return Finding(claim, UNSURE, statistic, value, None, control, "no confidence interval")
    verdict = HOLDS if ci[0] > threshold else FAILS if ci[1] < threshold else UNSURE
    detail = "" if verdict != UNSURE else f"CI includes {threshold:g}"
    return Finding(claim, verdict, statistic, value, ci, control, detail)


# ============================================================================ the rules
def first_half(marks: np.ndarray, families: Sequence[str], n_layers: int, alpha: float = 0.05,
               control_marks: np.ndarray | None = None, *, n_boot: int = 2000, seed: int = 0) -> Finding:
    """Most marked cells lie in the first half of the layers, beyond each technique's depth bias.

    Statistic: the share ``S`` of marked (family, technique, layer) cells with ``layer < n_layers / 2``
    (:func:`~medinterp.maps.findings_stats.first_half_test`). Null: each technique's first-half share on
    the control families (``control_marks``, the same rule applied to the control families' curves), so
    a technique that marks early layers on any text does not count; the excess ``D = S − E`` is tested
    by swapping each family's medical and control marks (exact over all swaps up to 4,096). Holds when
    the one-sided p (towards the first half) <= ``alpha`` and ``S > 0.5``; does not hold when the
    opposite p <= ``alpha`` or the CI of ``S`` is below 0.5; else inconclusive. Without control marks the
    depth bias is unknown: inconclusive. CIs: bootstrap over families.

    Args:
        marks: ``[n_families, n_techniques, n_layers]`` marked layers (the map's :meth:`marks`).
        families: family names (rows of ``marks``).
        n_layers: blocks of the model.
        alpha: significance level.
        control_marks: the control families' marks, same shape and order (None: not measured).
        n_boot, seed: the family bootstrap.
    """
    from medinterp.maps.findings_stats import first_half_test

    claim = "knowledge in the first half of the layers"
    name = "share of marked cells in the first half"
    m = np.asarray(marks, bool)[:len(families), :, :n_layers]
    t = first_half_test(m, None if control_marks is None else np.asarray(control_marks, bool)[:len(families), :, :n_layers],
                        n_boot=n_boot, seed=seed)
    if t["n_marked"] == 0:
        return Finding(claim, UNSURE, name, control="marked layers only", detail="no marked layer")
    share, ci = t["share"], t["share_ci"]
    ci = ci if np.isfinite(ci).all() else None
    if control_marks is None:
        return Finding(claim, UNSURE, name, share, ci, "none: no control-family marks",
                       f"{t['n_marked']} marked cells; the techniques' depth bias is not measured")
    detail = (f"excess over the techniques' depth bias {t['excess']:+.3g} [{t['excess_ci'][0]:.3g}, "
              f"{t['excess_ci'][1]:.3g}], swap p = {t['p_greater']:.3g} ({'exact' if t['exact'] else 'sampled'}), "
              f"{t['n_families']} families, {t['n_marked']} marked cells")
    if t["p_greater"] <= alpha and share > 0.5:
        verdict = HOLDS
    elif t["p_less"] <= alpha or (ci is not None and ci[1] < 0.5):
        verdict = FAILS
    else:
        verdict = UNSURE
    return Finding(claim, verdict, name, share, ci, "each technique's first-half share on the control families",
                   detail)


def age_jump(findings: Mapping[str, Any], alpha: float = 0.05) -> Finding:
    """Age has a 17→18 jump: the 17→18 step is extreme among all two-digit steps, and not in the control.

    Reads ``age_step_ratio`` of ``age`` and, where measured, ``age_words`` (``value`` = the 17→18 step /
    the median two-digit a→a+1 step at mid depth, ``p`` = its percentile p among the 88 other two-digit
    steps) and of the control family ``age_control`` (the age of a building; also looked up as
    ``age__control``). Holds when every measured medical family has ``p <= alpha`` and the control family
    is measured, has ``p > alpha`` and a smaller ratio (the excess over the control is positive); a
    control with the same jump makes it inconclusive (not medicine). Does not hold when the step lies
    within the bulk of the steps in every measured medical family (``p > 0.5``); else inconclusive.
    """
    key, claim = "age_step_ratio", "age non-linear, with a 17→18 jump"
    name = "17→18 step / median two-digit step"
    med = [(f, g[1]) for f in ("age", "age_words") if (g := _stat(findings, f, key)) is not None]
    if not med:
        return Finding(claim, UNSURE, name, detail="not measured")
    if any(s.get("p") is None for _, s in med):
        return Finding(claim, UNSURE, name, float(med[0][1]["value"]), _ci(med[0][1]),
                       _control(med[0][1], "all two-digit steps"), "no p-value")
    ctrl = next((g[1] for f in ("age_control", "age__control") if (g := _stat(findings, f, key)) is not None), None)
    notes = [f"{f}: ratio {float(s['value']):.3g}, p = {float(s['p']):.3g}" for f, s in med]
    control = "all two-digit steps; control family (building ages) "
    control += "not measured" if ctrl is None else f"ratio {float(ctrl['value']):.3g}, p = {float(ctrl.get('p', np.nan)):.3g}"
    ps = np.array([float(s["p"]) for _, s in med])
    value = float(med[0][1]["value"])
    if (ps > 0.5).all():
        verdict, why = FAILS, "the 17→18 step lies within the bulk of the two-digit steps"
    elif not (ps <= alpha).all():
        verdict, why = UNSURE, f"not every medical family has p <= {alpha:g}"
    elif ctrl is None:
        verdict, why = UNSURE, "no control family measured"
    elif not float(ctrl.get("p", 0.0)) > alpha or float(ctrl["value"]) >= min(float(s["value"]) for _, s in med):
        verdict, why = UNSURE, "the control family (building ages) shows the same jump"
    else:
        verdict, why = HOLDS, ""
    return Finding(claim, verdict, name, value, None, control, "; ".join(([why] if why else []) + notes))


def _disease_key(name: str) -> str:
    return str(name).lower().replace("'s disease", "").replace(" disease", "").strip()


def circular_progression(findings: Mapping[str, Any], alpha: float = 0.05,
                         named: Sequence[str] = ("Parkinson's disease", "COPD")) -> Finding:
    """Progression is circular in the named diseases: circularity beyond the stage-permutation null.

    ``by_disease`` holds per disease the circularity (Spearman of the stage-mean distances with the
    circular stage order minus with the linear one, mid depth), its one-sided stage-permutation ``p``
    and ``null_median``. The diseases the paper names (``named``; all measured ones when none of them
    is measured) are tested with Holm across them. Holds when every one rejects at ``alpha``; does not
    hold when none is above its null median (no more circular than a random stage order); else
    inconclusive. Without ``by_disease`` a single ``p`` can say "holds" or "inconclusive" only.
    """
    claim = "circular disease progression (Parkinson's, COPD)"
    name = "circular − linear stage order vs stage-permutation null"
    forms = [(f, g[1]) for f in ("progression", "progression_plain")
             if (g := _stat(findings, f, "progression_circularity")) is not None]
    if not forms:
        return Finding(claim, UNSURE, name, detail="not measured")
    verdicts, details = [], []
    for form, s in forms:
        verdict, detail = _circularity_verdict(s, alpha, named)
        verdicts.append(verdict)
        details.append(f"{form}: {detail}" if len(forms) > 1 or form != "progression" else detail)
    s = forms[0][1]
    by = s.get("by_disease")
    if isinstance(by, Mapping) and by:
        want = {_disease_key(n) for n in named}
        names = [d for d in by if _disease_key(d) in want] or list(by)
        value = float(np.mean([float(by[d].get("value", np.nan)) for d in names]))
    else:
        value = float(s["value"])
    # every measured form (stage numbers, and the plain wording without them) must agree
    verdict = verdicts[0] if len(set(verdicts)) == 1 else UNSURE
    if verdict == UNSURE and len(set(verdicts)) > 1:
        details.append("the forms disagree")
    return Finding(claim, verdict, name, value, _ci(s), _control(s, "stage-permutation null"), "; ".join(details))


def _circularity_verdict(s: Mapping[str, Any], alpha: float, named: Sequence[str]) -> tuple[str, str]:
    """One form's verdict: Holm over the named diseases (holds / does not hold / inconclusive) and its detail."""
    by = s.get("by_disease")
    if isinstance(by, Mapping) and by:
        want = {_disease_key(n) for n in named}
        names = [d for d in by if _disease_key(d) in want] or list(by)
        p = stats.adjust(np.array([float(by[d]["p"]) for d in names]), "holm")
        med = [by[d].get("null_median") for d in names]
        below = all(m is not None and np.isfinite(float(m)) and float(by[d].get("value", np.nan)) <= float(m)
                    for d, m in zip(names, med))
        verdict = HOLDS if (p <= alpha).all() else FAILS if below else UNSURE
        return verdict, ", ".join(f"{d} p_holm = {pv:.3g}" for d, pv in zip(names, p))
    if s.get("p") is None:
        return UNSURE, "no p-value"
    p = float(s["p"])
    return (HOLDS if p <= alpha else UNSURE), f"p = {p:.3g}"


def drugs_by_specialty(findings: Mapping[str, Any]) -> Finding:
    """Drugs are organised by specialty over mechanism, beyond the drug names: the difference's CI above 0.

    ``specialty_minus_mechanism`` = (specialty level − its lexical level) − (mechanism level − its
    lexical level) at mid depth, equal class count and size, CI from refit-bootstrap SEs (the lexical
    baselines read the item strings, so shared name stems count for neither). Holds when the CI is
    above 0, does not hold when below, else inconclusive.
    """
    got = _stat(findings, "drugs", "specialty_minus_mechanism")
    claim = "drugs organised by specialty over mechanism"
    name = "(specialty − lexical) − (mechanism − lexical)"
    if got is None:
        return Finding(claim, UNSURE, name, detail="not measured")
    return _by_ci(claim, name, got[1], 0.0, _control(got[1], "each labelling's lexical baseline, matched classes"))


def collapse_mid_depth(findings: Mapping[str, Any]) -> Finding:
    """Activations collapse at mid depth and recover: a dip of the participation ratio (PR) in the middle.

    Per family with ``collapse_participation_ratio`` (PR per layer with item-bootstrap CIs;
    :func:`~medinterp.maps.findings_stats.collapse_dip`): the minimum PR among layers at relative depth
    0.25-0.75 must lie below both ends beyond the CIs (its upper bound under both ends' lower bounds) and
    below the control family's and the random twin's PR at that layer (rows ``<family>__control``,
    ``<family>__twin``, or a ``per_layer_control`` list), when measured. Holds when every measured family
    collapses; does not hold when no family has a mid-depth dip at all (point estimates); else
    inconclusive. (The centred mean cosine is not used: for centred vectors it sits near −1/(n−1)
    whatever the rank and moves only with outliers.)
    """
    from medinterp.maps.findings_stats import collapse_dip

    claim = "activation collapse at mid depth"
    name = "min participation ratio at mid depth"
    key = "collapse_participation_ratio"
    side = ("__control", "__twin")
    fams = [(f, s[key]) for f, s in (findings or {}).items() if not str(f).endswith(side)
            and isinstance(s, Mapping) and isinstance(s.get(key), Mapping) and s[key].get("per_layer") is not None]
    if not fams:
        return Finding(claim, UNSURE, name, detail="not measured")

    def side_stat(f: str, suffix: str, s: Mapping) -> Mapping | None:
        row = (findings or {}).get(f + suffix)
        if isinstance(row, Mapping) and isinstance(row.get(key), Mapping):
            return row[key]
        if suffix == "__twin" and s.get("per_layer_control") is not None:
            return {"per_layer": s["per_layer_control"]}
        return None

    oks, dips, notes, first = [], [], [], None
    for f, s in fams:
        d = collapse_dip(s, side_stat(f, "__control", s), side_stat(f, "__twin", s))
        first = first or d
        dips.append(d["dip"])
        if d["layer"] is None:
            oks.append(False)
            notes.append(f"{f}: too few layers")
            continue
        vs = {k: v for k, v in d["below"].items() if v is not None}
        ok = d["dip"] and d["beyond_ends"] and all(vs.values())
        oks.append(ok)
        why = [] if d["dip"] else ["no dip"]
        why += [] if not d["dip"] or d["beyond_ends"] else ["within the ends' CIs" if d["has_ci"] else "no CI"]
        why += [f"not below the {k}" for k, v in vs.items() if not v]
        why += [f"{k} not measured" for k in ("control", "twin") if k not in vs]
        notes.append(f"{f}: layer {d['layer']} (depth {d['rel_depth']:.2f}), PR / end {d['ratio']:.3g}"
                     + (f" ({', '.join(why)})" if why else ""))
    verdict = HOLDS if all(oks) else FAILS if not any(dips) else UNSURE
    has_ci = bool(first.get("has_ci")) and first.get("ci") is not None
    return Finding(claim, verdict, name, first.get("value"), first["ci"] if has_ci else None,
                   "first and last layer; control family and random twin at that layer", "; ".join(notes))


def fragility(block_criticality: Mapping[str, Any] | None, threshold: float = 1.0, *, n_boot: int = 2000,
              seed: int = 0) -> Finding:
    """Removing any single block degrades the model: the median block's skip cost is large.

    Statistic: the median over blocks of the mean next-token KL (nats) when that block is skipped, with an
    item bootstrap over ``block_criticality["unit_kl"]`` (:func:`~medinterp.maps.findings_stats.fragility_stat`);
    a model where only the first and last blocks matter has a small median. On one model the verdict
    needs an absolute anchor: holds when the CI is above ``threshold`` (1 nat: the median block's
    removal changes the next-token distribution by a nat), does not hold when below, else inconclusive.
    The paper's claim compares models: see :func:`medinterp.maps.findings_models.compare_findings`.
    Without ``unit_kl`` (maps saved before 0.3.1) the CI is the median of the per-block CI bounds.
    """
    from medinterp.maps.findings_stats import fragility_stat

    claim = "fragile to single-layer removal"
    name = "median block skip KL (nats)"
    if not block_criticality or block_criticality.get("curve") is None:
        return Finding(claim, UNSURE, name, detail="not measured")
    y = np.asarray(block_criticality["curve"], float)
    if block_criticality.get("unit_kl") is not None and len(block_criticality["unit_kl"]) >= 2:
        st = fragility_stat(block_criticality["unit_kl"], n_boot=n_boot, seed=seed)
        value, ci, how = st["value"], (st["ci_low"], st["ci_high"]), f"item bootstrap, {st['n_items']} items"
    else:
        lo = np.asarray(block_criticality.get("ci_low", y), float)
        hi = np.asarray(block_criticality.get("ci_high", y), float)
        value, ci, how = float(np.median(y)), (float(np.median(lo)), float(np.median(hi))), "per-block CIs"
    verdict = HOLDS if ci[0] >= threshold else FAILS if ci[1] < threshold else UNSURE
    label = str(block_criticality.get("label") or "block criticality")
    return Finding(claim, verdict, name, value, ci, f"{label}; threshold {threshold:g} nat",
                   f"{len(y)} blocks, min {y.min():.3g}, max {y.max():.3g} ({how})")


def findings_table(km: Any, alpha: float | None = None) -> list[Finding]:
    """All six rows for a :class:`~medinterp.maps.KnowledgeMap` (in METHOD.md order)."""
    alpha = float(alpha if alpha is not None else (km.control_params or {}).get("alpha", 0.05))
    found = (km.extras or {}).get("findings") or {}
    crit = block_criticality(km)
    from medinterp.maps.findings_stats import first_half_marks

    marks, ctrl_marks = first_half_marks(km)
    head = first_half(marks, km.concepts, km.n_layers, alpha, ctrl_marks)
    if ctrl_marks is not None:  # both sides under one rule: the control families have no control of their own
        head.detail = (head.detail + "; " if head.detail else "") + "paper-rule marks on medical and control curves"
    return [head, age_jump(found), circular_progression(found, alpha), drugs_by_specialty(found),
            collapse_mid_depth(found), fragility(crit)]


def block_criticality(km: Any) -> Mapping[str, Any] | None:
    """The block-criticality strip data of a map (first family offering it; it is generic)."""
    for value in ((km.extras or {}).get("block_criticality") or {}).values():
        if isinstance(value, Mapping) and value.get("curve") is not None:
            return value
    return None


__all__ = ["FINDING_KEYS", "NULLS", "PAPER", "Finding", "age_jump", "block_criticality", "circular_progression", "collapse_mid_depth",
           "drugs_by_specialty", "findings_table", "first_half", "fragility"]
