"""Re-marking a map from its stored statistics (no model): what :meth:`KnowledgeMap.rethreshold` does.

Under the ``"controls"`` rule a layer is marked where the stored corrected p-values of both comparisons are
<= ``alpha`` with positive effects, in runs of >= ``min_run`` layers, and kept where the stored
robustness fraction (the share of item x template x seed resamples that marked it) is >= ``robustness``
(:mod:`medinterp.maps.controls`). Corrected p-values (Holm or BH adjusted) do not depend on ``alpha``,
so a new ``alpha`` or ``min_run`` is exact on the full data; the robustness fractions were counted
with the run's ``alpha`` and ``min_run``. Resamples are only run where the run marked something (and
``robustness > 0``): a layer that becomes significant under a looser ``alpha`` / ``min_run`` in a cell
that was never resampled has no fraction, and a robustness threshold cannot be applied to it: that is
an error that says to rerun the marking.

The thresholds of the ``"paper"`` rule (:data:`PAPER_PARAMS`) do nothing under ``"controls"`` and the
marking parameters (:data:`CONTROLS_PARAMS`) nothing under ``"paper"``: giving one for the other rule is
an error, never a silent no-op.

Example:
    >>> applicable("controls", {"alpha": 0.01}, paper_params=("percentile",))
    {'alpha': 0.01}
    >>> applicable("controls", {"percentile": 90}, paper_params=("percentile",))
    Traceback (most recent call last):
    ...
    medinterp.errors.MedinterpError: rethreshold: percentile applies to rule='paper' only; this map's rule is 'controls' (its thresholds: alpha, min_run, robustness), or pass rule='paper' to redraw it by the paper's rule
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

from medinterp import stats
from medinterp.errors import MedinterpError
from medinterp.maps.marking import CONTROL_STATS

#: the thresholds of the controls rule that :meth:`KnowledgeMap.rethreshold` can change
CONTROLS_PARAMS = ("alpha", "min_run", "robustness")
#: codes whose cell is reclassified after a re-marking (the others do not depend on the thresholds)
_RECLASSIFY = ("marked", "not_robust", "short_run", "not_significant")


def applicable(rule: str, params: Mapping[str, Any], *, paper_params: Sequence[str]) -> dict[str, Any]:
    """The controls-rule parameters of ``params``, after checking every one applies under ``rule``.

    Args:
        rule: the rule the redrawn map will use (``"controls"`` or ``"paper"``).
        params: the keyword arguments of ``rethreshold`` (without ``rule``).
        paper_params: the paper rule's threshold names.

    Returns:
        ``{name: value}`` of :data:`CONTROLS_PARAMS` given.

    Raises:
        MedinterpError: a parameter of the other rule, or one neither rule knows.
    """
    unknown = sorted(set(params) - set(paper_params) - set(CONTROLS_PARAMS))
    if unknown:
        raise MedinterpError(f"rethreshold: unknown parameter(s) {unknown}; rule='controls' takes "
                             f"{list(CONTROLS_PARAMS)}, rule='paper' takes {sorted(paper_params)}")
    if rule == "controls":
        wrong = [k for k in params if k in paper_params]
        if wrong:
            raise MedinterpError(f"rethreshold: {', '.join(wrong)} applies to rule='paper' only; this map's rule is "
                                 f"'controls' (its thresholds: {', '.join(CONTROLS_PARAMS)}), or pass rule='paper' "
                                 "to redraw it by the paper's rule")
        return {k: params[k] for k in CONTROLS_PARAMS if k in params}
    wrong = [k for k in params if k in CONTROLS_PARAMS]
    if wrong:
        raise MedinterpError(f"rethreshold: {', '.join(wrong)} applies to rule='controls' only; rule='paper' marks "
                             f"by the smoothed curve's thresholds ({', '.join(sorted(paper_params))})")
    return {}


def remark(km: Any, **given: Any) -> dict[str, Any]:
    """Re-mark ``km``'s compared cells with new ``alpha`` / ``min_run`` / ``robustness`` (others as run).

    Returns:
        The changed fields of the map: ``control_stats``, ``control_params`` and ``control_cells``.

    Raises:
        MedinterpError: a value out of range, or a robustness threshold on layers that were not resampled.
    """
    from medinterp.maps.cells import CellStatus, decision, from_stats

    run = dict(km.control_params or {})
    p = {"alpha": float(run.get("alpha", 0.05)), "min_run": int(run.get("min_run", 2)),
         "robustness": float(run.get("robustness", 0.8)), **given}
    alpha, min_run, rob = float(p["alpha"]), p["min_run"], float(p["robustness"])
    if not 0 < alpha < 1 or not 0 <= rob <= 1 or int(min_run) != min_run or min_run < 1:
        raise MedinterpError(f"rethreshold: need 0 < alpha < 1, 0 <= robustness <= 1 and an integer min_run >= 1 "
                             f"(got alpha {alpha}, robustness {rob}, min_run {min_run})")
    k_mark, k_rob = CONTROL_STATS.index("marked"), CONTROL_STATS.index("robustness")
    new_stats = km.control_stats.copy()
    cells = json.loads(json.dumps(km.control_cells))
    params = {**run, "alpha": alpha, "min_run": int(min_run), "robustness": rob}
    for i, c in enumerate(km.concepts):
        for j, t in enumerate(km.techniques):
            if km.control_status[c].get(t) != "ok":
                continue
            arr = new_stats[i, j]
            pv, eff, _ = decision(arr)
            sig = stats.mark_layers(pv, alpha=alpha, min_run=int(min_run), effect=eff, direction="greater")
            if ((km.control_balance.get(c) or {}).get(t) or {}).get("comparable") is False:
                sig[:] = False  # never marked: the control is not comparable (as the marking does)
            frac = arr[k_rob]
            if rob > 0 and sig.any():
                missing = np.flatnonzero(sig & ~np.isfinite(frac))
                if missing.size:
                    raise MedinterpError(
                        f"rethreshold: robustness {rob:g} cannot be applied to {c}/{t}: layers "
                        f"{missing.tolist()} were not resampled in the run (alpha {run.get('alpha')}, min_run "
                        f"{run.get('min_run')}, robustness {run.get('robustness')}: resamples are made only where the "
                        "run marked a layer); pass robustness=0 to mark without resamples, or rerun the map with "
                        "these thresholds")
                sig &= frac >= rob
            arr[k_mark] = sig.astype(float)
            stored = (cells.get(c) or {}).get(t)
            if stored is None or stored.get("code") in _RECLASSIFY:
                fresh: CellStatus = from_stats(arr, "ok", **params)
                cells.setdefault(c, {})[t] = fresh.to_dict()
    return {"control_stats": new_stats, "control_params": params, "control_cells": cells}
