"""Knowledge maps: where each medical concept lives in a model, merged from the registered techniques.

* :mod:`medinterp.maps.synthesis`: smoothing, interval maths, :class:`KnowledgeMap`
  (no model needed);
* :mod:`medinterp.maps.run`: :func:`knowledge_map` (jobs from :data:`medinterp.techniques.REGISTRY` on
  the model, the control family and the random twin, saved as they finish, resumed by fingerprint) and
  :func:`map_from_work_dir`;
* :mod:`medinterp.maps.controls`: :func:`effect_over_control` (the default marking: medicine beats the
  control family and the random twin, item-level statistics);
* :mod:`medinterp.maps.findings`: the paper's findings as decision rules (:func:`findings_table`);
* :mod:`medinterp.maps.rules`: the paper's interval rules (``rule="paper"``); :mod:`medinterp.maps.compare`.

The map reads only the registry: adding a technique there adds a column here.
"""

from __future__ import annotations

from medinterp.maps.controls import CONTROL_STATS, ControlMarking, NoScores, effect_over_control
from medinterp.maps.findings import Finding, findings_table
from medinterp.maps.findings_models import ModelContrast, compare_findings
from medinterp.maps.run import (
    check_techniques,
    control_specs,
    family_specs,
    input_content,
    job_dir,
    job_fingerprint,
    knowledge_map,
    peak_rss_mb,
    result_curve,
    saved_jobs,
)
from medinterp.maps.rebuild import map_from_work_dir
from medinterp.maps.matrix import Job, job_matrix, parse_shard, shard_of
from medinterp.maps.shards import ShardReport, run_shard
from medinterp.maps.compare import compare, load_maps
from medinterp.maps.synthesis import (
    DEFAULT_PARAMS,
    MAP_RULES,
    KnowledgeMap,
    interval_rules,
    percentile_intervals,
    registered_techniques,
    smooth,
    steepest_rise_window,
    technique_intervals,
    validate_params,
)
from medinterp.techniques import REGISTRY as _REGISTRY

#: The map's default columns (the registered techniques, in registry order).
TECHNIQUES: tuple[str, ...] = tuple(_REGISTRY)

__all__ = [
    "CONTROL_STATS", "ControlMarking", "Finding", "MAP_RULES", "NoScores", "control_specs", "effect_over_control",
    "findings_table", "compare_findings", "ModelContrast",
    "DEFAULT_PARAMS", "KnowledgeMap", "TECHNIQUES", "check_techniques", "compare", "load_maps", "family_specs",
    "input_content", "interval_rules", "job_dir", "job_fingerprint", "knowledge_map", "map_from_work_dir",
    "peak_rss_mb", "percentile_intervals", "registered_techniques", "result_curve", "saved_jobs", "smooth",
    "steepest_rise_window", "technique_intervals", "validate_params",
    "Job", "job_matrix", "parse_shard", "shard_of", "ShardReport", "run_shard",
]
