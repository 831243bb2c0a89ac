"""Which random-twin jobs a map run makes: only those whose result can change the map.

A cell is marked only where the model beats the control family *and* the random twin at the same layers,
in runs of at least ``min_run`` layers (:func:`medinterp.maps.controls.effect_over_control`). The twin's run
is not made where it cannot change the cell:

0. **nothing to compare**: the model's own result has no curve (``unavailable()``, e.g. it knows none of
   the family's pairs); the cell is ``not_known`` whatever the twin scores;
1. **too few items**: the paired test against the twin cannot reach ``alpha`` after correction with the
   cell's item count, whatever the twin scores (:func:`medinterp.maps.controls.twin_not_needed`);
2. **no layer beats the control family**: the test against the control family uses the same items, the
   same covariate matching and the same seed with or without the twin, and the twin's test can only remove
   layers from its marks (a run of layers that beat both lies inside a run that beats the control), so a
   cell with no mark against the control family alone is unmarked whatever the twin scores. Applied to the
   techniques compared by unit scores only (a control that cannot be balanced on the covariates, never
   marked, skips the twin too): one with a contrast of its own (``control_contrast``: refit nulls
   that fit both controls together) or whose findings statistics are read from the twin's result
   (``extras_on_controls``) keeps its twin run.

On Gemma 3 270M's full map the twin's unit-score jobs took ~84 s of the ~820 s map (0.4.0, quiet); case 2
removes all but the cells that beat their control family.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from medinterp.errors import MedinterpError
from medinterp.maps.controls import ControlMarking, NoScores, effect_over_control, twin_not_needed
from medinterp.techniques.base import TechniqueResult

Key = tuple[str, str]


def _compared_by_unit_scores(result: Any, technique: Any) -> bool:
    own = getattr(type(result), "control_contrast", None)
    if own is not None and own is not TechniqueResult.control_contrast:  # the base's returns None: unit scores
        return False
    return not getattr(technique, "extras_on_controls", False)


def _no_control_layer_reason(m: ControlMarking, *, alpha: float, correction: str) -> str:
    p = np.asarray(m.p_adj, float)
    pos = np.where(np.asarray(m.effect, float) > 0, p, np.nan)
    closest = ""
    if np.isfinite(pos).any():
        j = int(np.nanargmin(pos))
        closest = f" (closest: layer {j}, p_adj {pos[j]:.2g})"
    corr = "Holm" if correction == "holm" else "BH"
    return (f"no run of layers beats the control family at α = {alpha:g} after {corr} correction{closest}, so the "
            "random twin, whose test can only remove marks, was not run")


def plan_twin_skips(
    main: Mapping[Key, Any],
    main_status: Mapping[Key, str],
    ctrl: Mapping[Key, Any],
    ctrl_status: Mapping[Key, str],
    keys: Sequence[Key],
    marking: Mapping[str, Any],
    techniques: Mapping[str, Any],
) -> tuple[dict[Key, str], dict[Key, ControlMarking]]:
    """The twin jobs among ``keys`` that cannot change the map, and why.

    Args:
        main, main_status: the model's results and job statuses by ``(row, technique)``.
        ctrl, ctrl_status: the control family's, same keys.
        keys: the twin jobs planned.
        marking: the map's marking keyword arguments (``alpha``, ``correction``, ``min_run``, ``n_perm`` ...).
        techniques: the technique registry (``name -> Technique``).

    Returns:
        ``(skips, premarked)``: ``skips[key]`` is the reason shown in the cell; ``premarked[key]`` is the
        marking against the control family alone of the case-2 cells (the map reuses it: the same numbers it
        would compute again without the twin).
    """
    skips: dict[Key, str] = {}
    premarked: dict[Key, ControlMarking] = {}
    alpha = float(marking.get("alpha", 0.05))
    correction = str(marking.get("correction", "holm"))
    for key in keys:
        if main_status.get(key) != "ok":
            continue
        unavailable = getattr(main[key], "unavailable", None)
        if callable(unavailable) and (why := unavailable()) is not None:  # e.g. no pair known by the model
            skips[key] = f"{why}; the random twin was not run (nothing to compare)"
            continue
        if (why := twin_not_needed(main[key], **marking)) is not None:
            skips[key] = why
            continue
        if ctrl_status.get(key) != "ok" or not _compared_by_unit_scores(main[key], techniques.get(key[1])):
            continue
        try:
            # robustness off: only the full-data marks decide; they are the same with it on when there are none
            m = effect_over_control(main[key].unit_scores(), ctrl[key].unit_scores(), None,
                                    **{**marking, "robustness": 0.0})
        except (NoScores, NotImplementedError, MedinterpError, AttributeError):
            continue  # the map's own marking reports it
        if not m.comparable:  # never marked whatever the twin scores; the balance says why
            skips[key] = f"{m.balance.reason}; the random twin was not run (it cannot change an unmarked cell)"
            premarked[key] = m
        elif not np.asarray(m.significant, bool).any():
            skips[key] = _no_control_layer_reason(m, alpha=alpha, correction=correction)
            premarked[key] = m
    return skips, premarked


__all__ = ["plan_twin_skips"]
