"""The paper's findings (METHOD.md "Findings") as decision rules: holds / does not hold / inconclusive.

The report opens with one row per finding, each with its statistic, CI and control. The statistics
come from the techniques through documented keys, never guessed:

* ``Technique.extras(model, result)`` may return ``{"findings": {KEY: STAT, ...}}``; the map stores it
  as ``km.extras["findings"][family]``. A ``STAT`` is a mapping with ``"value"`` (float) and optional
  ``"ci_low"``, ``"ci_high"``, ``"p"``, ``"control"`` (words, or a number / per-layer list), and for
  per-layer statistics ``"per_layer"`` (list), ``"per_layer_low"``, ``"per_layer_high"``,
  ``"per_layer_control"``. The keys read (see :data:`FINDING_KEYS`):

  - ``age_step_ratio`` (family ``age``): the 17→18 step over the mean matched x7→x8 step, CI;
  - ``progression_circularity`` (family ``progression``): circularity with a stage-permutation
    ``p``; optionally ``"by_disease": {name: {"value", "p"}}`` (Parkinson's, COPD);
  - ``specialty_minus_mechanism`` (family ``drugs``): paired difference (specialty − mechanism) at
    equal class count and size, CI;
  - ``collapse_centred_cosine`` (any family): centred mean pairwise cosine per layer
    (``per_layer`` + CI, ``per_layer_control`` e.g. the random twin's); ``collapse_participation_ratio``
    is shown beside it.
* ``Technique.extras`` may return ``{"block_criticality": {"curve": [...], "ci_low": [...],
  "ci_high": [...], "label": str}}`` (e.g. generic next-token KL when a block is skipped); it is
  drawn once as a strip for all families and read by the fragility rule.
* "knowledge in the first half" is read from the map's own marked layers.

When a statistic is absent the row says ``inconclusive: not measured`` (nothing is invented).

Example:
    >>> age_jump({"age": {"age_step_ratio": {"value": 2.0, "ci_low": 1.4, "ci_high": 2.9}}}).verdict
    'holds'
    >>> age_jump({}).detail
    'not measured'
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.stats

from medinterp import stats

HOLDS, FAILS, UNSURE = "holds", "does not hold", "inconclusive"

#: statistic keys the rules read from ``km.extras["findings"][family]``.
FINDING_KEYS = ("age_step_ratio", "progression_circularity", "specialty_minus_mechanism", "collapse_centred_cosine",
                "collapse_participation_ratio")


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

    def as_row(self) -> tuple[str, str, str, str, str]:
        ci = "" if self.ci is None else f"[{self.ci[0]:.3g}, {self.ci[1]:.3g}]"
        val = "" if self.value is None else f"{self.value:.3g}"
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
def first_half(marks: np.ndarray, families: Sequence[str], n_layers: int, alpha: float = 0.05) -> Finding:
    """Most marked layers lie in the first half, family by family (exact binomial test over families).

    Per family with marked layers, it counts as "first half" when more than half of its marked
    (technique, layer) cells have ``layer < n_layers / 2``. Holds when the one-sided binomial test
    (p = 0.5) rejects towards the first half at ``alpha``, does not hold when it rejects towards the
    second half; the CI is the Clopper-Pearson interval of the share of families.

    Args:
        marks: ``[n_families, n_techniques, n_layers]`` marked layers (the map's :meth:`marks`).
        families: family names (rows of ``marks``).
        n_layers: blocks of the model.
        alpha: significance level.
    """
    claim = "knowledge in the first half of the layers"
    half = np.arange(n_layers) < n_layers / 2
    k = n = 0
    for i in range(len(families)):
        m = np.asarray(marks[i], bool)
        if m.any():
            n += 1
            k += int(m[:, half].sum() > m.sum() / 2)
    if n == 0:
        return Finding(claim, UNSURE, "families mostly marked in the first half", control="marked layers only",
                       detail="no marked layer")
    greater = scipy.stats.binomtest(k, n, 0.5, alternative="greater")
    less = scipy.stats.binomtest(k, n, 0.5, alternative="less")
    two = scipy.stats.binomtest(k, n, 0.5).proportion_ci(confidence_level=1 - alpha)  # Clopper-Pearson
    verdict = HOLDS if greater.pvalue <= alpha else FAILS if less.pvalue <= alpha else UNSURE
    detail = f"{k} of {n} families, binomial p = {min(greater.pvalue, less.pvalue):.3g}"
    return Finding(claim, verdict, "share of families mostly marked in the first half", k / n,
                   (float(two.low), float(two.high)), "marked layers only (effect over control)", detail)


def age_jump(findings: Mapping[str, Any]) -> Finding:
    """Age is non-linear with a 17→18 jump: the 17→18 step over matched x7→x8 steps, CI above 1."""
    got = _stat(findings, "age", "age_step_ratio")
    claim = "age non-linear, with a 17→18 jump"
    if got is None:
        return Finding(claim, UNSURE, "17→18 step / matched x7→x8 steps", detail="not measured")
    return _by_ci(claim, "17→18 step / matched x7→x8 steps", got[1], 1.0, _control(got[1], "matched x7→x8 steps"))


def circular_progression(findings: Mapping[str, Any], alpha: float = 0.05) -> Finding:
    """Progression is circular: the stage-permutation p of circularity <= alpha (Holm across diseases).

    With ``"by_disease"`` every named disease must be significant after Holm across them; a p-value
    without an interval can say "holds" or "inconclusive", never "does not hold" (absence of
    evidence is not evidence of absence).
    """
    got = _stat(findings, "progression", "progression_circularity")
    claim = "circular disease progression (Parkinson's, COPD)"
    name = "circularity vs stage-permutation null"
    if got is None:
        return Finding(claim, UNSURE, name, detail="not measured")
    s = got[1]
    control = _control(s, "stage-permutation null")
    by = s.get("by_disease")
    if isinstance(by, Mapping) and by:
        names = list(by)
        p = stats.adjust(np.array([float(by[d]["p"]) for d in names]), "holm")
        ok = p <= alpha
        detail = ", ".join(f"{d} p_holm = {pv:.3g}" for d, pv in zip(names, p))
        return Finding(claim, HOLDS if ok.all() else UNSURE, name, float(s.get("value", np.nan)), _ci(s), control,
                       detail)
    if s.get("p") is None:
        return Finding(claim, UNSURE, name, float(s["value"]), _ci(s), control, "no p-value")
    p = float(s["p"])
    return Finding(claim, HOLDS if p <= alpha else UNSURE, name, float(s["value"]), _ci(s), control, f"p = {p:.3g}")


def drugs_by_specialty(findings: Mapping[str, Any]) -> Finding:
    """Drugs cluster by specialty over mechanism: the paired difference's CI above 0."""
    got = _stat(findings, "drugs", "specialty_minus_mechanism")
    claim = "drugs organised by specialty over mechanism"
    name = "specialty − mechanism (equal class count and size)"
    if got is None:
        return Finding(claim, UNSURE, name, detail="not measured")
    return _by_ci(claim, name, got[1], 0.0, _control(got[1], "mechanism labelling, matched classes"))


def collapse_mid_depth(findings: Mapping[str, Any]) -> Finding:
    """Activations collapse at mid depth and recover.

    Per family with ``collapse_centred_cosine``: the per-layer centred cosine peaks in the middle half
    (``n/4 <= argmax < 3n/4``), its lower CI bound at the peak exceeds the upper CI bounds of the first
    and last layers, and (when given) the per-layer control at the peak. Holds when every measured
    family collapses; does not hold when the peak of none is in the middle half; else inconclusive.
    """
    claim = "activation collapse at mid depth"
    name = "centred cosine peak, mid depth"
    fams = [(f, s["collapse_centred_cosine"]) for f, s in (findings or {}).items()
            if isinstance(s, Mapping) and isinstance(s.get("collapse_centred_cosine"), Mapping)]
    if not fams:
        return Finding(claim, UNSURE, name, detail="not measured")
    verdicts, mids, notes, peak_val, peak_ci = [], [], [], None, None
    for f, s in fams:
        y = np.asarray(s["per_layer"], float)
        lo = np.asarray(s.get("per_layer_low", y), float)
        hi = np.asarray(s.get("per_layer_high", y), float)
        n = len(y)
        k = int(np.argmax(y))
        mid = n / 4 <= k < 3 * n / 4
        above = lo[k] > max(hi[0], hi[-1])
        ctrl = s.get("per_layer_control")
        if ctrl is not None:
            above = above and lo[k] > float(np.asarray(ctrl, float)[k])
        verdicts.append(mid and above)
        mids.append(mid)
        notes.append(f"{f}: peak at layer {k}" + ("" if above else " (not above the ends/control)"))
        if peak_val is None:  # no CI shown where none was computed (not [x, x])
            has_ci = "per_layer_low" in s and "per_layer_high" in s
            peak_val, peak_ci = float(y[k]), ((float(lo[k]), float(hi[k])) if has_ci else None)
    verdict = HOLDS if all(verdicts) else FAILS if not any(mids) else UNSURE
    control = _control(fams[0][1], "first and last layer; control text / random twin where given")
    return Finding(claim, verdict, name, peak_val, peak_ci, control, "; ".join(notes))


def fragility(block_criticality: Mapping[str, Any] | None, threshold: float = 1.0) -> Finding:
    """Removing any single block degrades the model: every block's criticality CI above ``threshold``.

    ``block_criticality`` is the strip's data (``{"curve", "ci_low", "ci_high"}``; e.g. next-token KL
    in nats when the block is skipped). Holds when the lower CI bound of every block is >= ``threshold``;
    does not hold when fewer than half of the blocks reach it even at their upper bound; else inconclusive.
    """
    claim = "fragile to single-layer removal"
    name = f"blocks whose removal costs >= {threshold:g}"
    if not block_criticality or block_criticality.get("curve") is None:
        return Finding(claim, UNSURE, name, detail="not measured")
    y = np.asarray(block_criticality["curve"], float)
    lo = np.asarray(block_criticality.get("ci_low", y), float)
    hi = np.asarray(block_criticality.get("ci_high", y), float)
    share = float((lo >= threshold).mean())
    verdict = HOLDS if share == 1.0 else FAILS if (hi >= threshold).mean() < 0.5 else UNSURE
    label = str(block_criticality.get("label") or "block criticality")
    return Finding(claim, verdict, f"share of {name}", share, None, f"{label}; min {y.min():.3g}, median "
                   f"{np.median(y):.3g}", f"{int((lo >= threshold).sum())} of {len(y)} blocks")


def findings_table(km: Any, alpha: float | None = None) -> list[Finding]:
    """All six rows for a :class:`~medinterp.maps.KnowledgeMap` (in METHOD.md order)."""
    alpha = float(alpha if alpha is not None else (km.control_params or {}).get("alpha", 0.05))
    found = (km.extras or {}).get("findings") or {}
    crit = block_criticality(km)
    head = first_half(km.marks(), km.concepts, km.n_layers, alpha)
    if km.rule != "controls":
        head.detail = (head.detail + "; " if head.detail else "") + "paper rules, not effect over control"
    return [head, age_jump(found), circular_progression(found, alpha), drugs_by_specialty(found),
            collapse_mid_depth(found), fragility(crit)]


def block_criticality(km: Any) -> Mapping[str, Any] | None:
    """The block-criticality strip data of a map (first family offering it; it is generic)."""
    for value in ((km.extras or {}).get("block_criticality") or {}).values():
        if isinstance(value, Mapping) and value.get("curve") is not None:
            return value
    return None


__all__ = ["FINDING_KEYS", "Finding", "age_jump", "block_criticality", "circular_progression", "collapse_mid_depth",
           "drugs_by_specialty", "findings_table", "first_half", "fragility"]
