"""A map rebuilt from the technique results saved in a work dir, without a model (:func:`map_from_work_dir`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medinterp.errors import MedinterpError
from medinterp.maps.cells import said
from medinterp.maps.controls import mark_all
from medinterp.maps.jobs import job_dir, load_saved
from medinterp.maps.families import CONTROL_SUFFIX, TWIN_SUFFIX, check_techniques
from medinterp.maps.run import _Run
from medinterp.maps.synthesis import KnowledgeMap, interval_rules, validate_params
from medinterp.maps.twin_plan import plan_twin_skips
from medinterp.techniques import REGISTRY

log = logging.getLogger("medinterp")


def map_from_work_dir(
    work_dir: str | os.PathLike,
    families: Sequence[str] | None = None,
    techniques: Sequence[str] | None = None,
    *,
    model_name: str = "",
    marking: Mapping[str, Any] | None = None,
    **params: Any,
) -> KnowledgeMap:
    """A map from the technique results saved in a work dir so far, without a model.

    Useful to look at an interrupted or still-running :func:`knowledge_map`: a family/technique with
    no finished result shows as "no saved result" (no numbers). Where the control-family and twin
    results are saved too (``<family>__control/``, ``<family>__twin/``), the map is marked by effect over
    control (``marking``: keyword arguments of :func:`~medinterp.maps.controls.effect_over_control`);
    with none saved, by the paper's rules.

    Example:
        >>> km = map_from_work_dir("report.work")           # doctest: +SKIP
    """
    work = Path(work_dir)
    if not work.is_dir():
        raise MedinterpError(f"{work}: no such work directory")
    techniques = check_techniques(techniques)
    validate_params(**params)
    if families is None:
        families = sorted(p.name for p in work.iterdir() if p.is_dir() and p.name != "map"
                          and not p.name.endswith((CONTROL_SUFFIX, TWIN_SUFFIX)))
    curves: dict[str, dict[str, Any]] = {f: {} for f in families}
    run = _Run(0, curves, {f: {} for f in families}, {f: {} for f in families})
    for f in families:
        for t in techniques:
            d = job_dir(work, f, t)
            if not (d / "manifest.json").is_file():
                run.status[f][t] = said("not_run", "no saved result")
                continue
            try:
                res = load_saved(d, f"{f}/{t}")
                run.n_layers = run.n_layers or len(np.asarray(res.layer_curve()))
                run.record(f, t, res, d)
            except (MedinterpError, NotImplementedError, AttributeError, ValueError) as e:
                run.status[f][t] = said("failed", f"failed to load: {type(e).__name__}: {e}"[:300])
                log.warning("map_from_work_dir: %s/%s: %s: %s", f, t, type(e).__name__, e)
    if not run.n_layers:
        raise MedinterpError(f"{work}: no finished technique result found")
    side: dict[str, tuple[dict, dict]] = {}
    for suffix in (CONTROL_SUFFIX, TWIN_SUFFIX):
        res, st = {}, {}
        for f in families:
            for t in techniques:
                d = job_dir(work, f + suffix, t)
                try:
                    res[f, t] = load_saved(d, f"{f}{suffix}/{t}")
                    st[f, t] = "ok"
                except MedinterpError as e:
                    st[f, t] = (said("not_run", "no saved result") if not (d / "manifest.json").is_file()
                                else said("failed", f"failed to load: {e}"[:300]))
        side[suffix] = (res, st)
    controls = bool(side[CONTROL_SUFFIX][0] or side[TWIN_SUFFIX][0])
    main = {(k.rsplit("/", 1)[0], k.rsplit("/", 1)[1]): r for k, r in run.results.items()}
    notes: dict = {}
    balance: dict = {}
    cells: dict = {}
    tw_res, tw_st = side[TWIN_SUFFIX]
    skipped, premarked = plan_twin_skips(main, {k: "ok" for k in main}, *side[CONTROL_SUFFIX], list(main),
                                         dict(marking or {}), REGISTRY)
    mstat = {(f, t): "ok" if (f, t) in main else run.status[f][t] for f in families for t in techniques}
    cstats, cstatus = mark_all(families, techniques, main, mstat, *side[CONTROL_SUFFIX],
                               {f: True for f in families}, tw_res, tw_st, controls=controls, notes=notes,
                               twin_skipped=skipped, premarked=premarked, balance_out=balance, cells_out=cells, **dict(marking or {}))
    km = KnowledgeMap.from_curves(curves, n_layers=run.n_layers, cis=run.cis, techniques=techniques,
                                  status=run.status, model_name=model_name, provenance={"work_dir": str(work)},
                                  rules=interval_rules(techniques), rule="controls" if controls else "paper",
                                  control_stats=cstats, control_status=cstatus, control_params=dict(marking or {}),
                                  control_notes=notes, control_balance=balance, control_cells=cells,
                                  **params)
    km.curve_names.update(run.curve_names)
    km.result_dirs.update(run.result_dirs)
    km._results = run.results
    return km


__all__ = ["map_from_work_dir"]
