"""``KnowledgeMap.rethreshold`` under the controls rule re-marks from the stored statistics, and raises on a
parameter the active rule does not use (issue #24 item 4; the quickstart taught ``percentile=90``, a
silent no-op under the default rule)."""

from __future__ import annotations

import numpy as np
import pytest

from medinterp.errors import MedinterpError
from medinterp.maps.controls import CONTROL_STATS
from medinterp.maps.synthesis import KnowledgeMap

L = 10
K = {n: i for i, n in enumerate(CONTROL_STATS)}


def _cell(p, rob, marked):
    arr = np.full((len(CONTROL_STATS), L), np.nan)
    arr[K["effect"]] = arr[K["effect_twin"]] = 0.5
    arr[K["ci_low"]], arr[K["ci_high"]] = 0.1, 0.9
    arr[K["p_adj"]] = arr[K["p_adj_twin"]] = p
    arr[K["robustness"]] = rob
    arr[K["marked"]] = 0.0
    arr[K["marked"], marked] = 1.0
    arr[K["mde"]] = 0.3
    return arr


def _map() -> KnowledgeMap:
    p = np.full(L, 0.5)
    p[[2, 3, 4]], p[7] = 0.01, 0.03  # a run of 3 and a single layer
    rob = np.zeros(L)
    rob[[2, 3, 4, 7]] = 0.9, 0.85, 0.6, 0.95  # resampled (the run marked layers 2-3)
    quiet = np.full(L, 0.5)
    quiet[[5, 6]] = 0.1  # nothing significant at the run's alpha: never resampled
    stats = {"drugs": {"a": _cell(p, rob, [2, 3])}, "age": {"a": _cell(quiet, np.full(L, np.nan), [])}}
    curves = {f: {"a": np.arange(L, dtype=float)} for f in stats}
    return KnowledgeMap.from_curves(curves, n_layers=L, techniques=["a"], rules={"a": "rise"}, rule="controls",
                                    control_stats=stats, control_status={f: {"a": "ok"} for f in stats},
                                    control_params={"alpha": 0.05, "min_run": 2, "robustness": 0.8,
                                                    "correction": "holm"})


def _marked(km, fam="drugs"):
    return [l for iv in km.intervals if iv["concept"] == fam for l in range(iv["start"], iv["end"] + 1)]


def test_same_thresholds_give_the_stored_marks():
    km = _map()
    assert _marked(km) == [2, 3]
    assert _marked(km.rethreshold(alpha=0.05, min_run=2, robustness=0.8)) == [2, 3]


def test_stricter_and_looser_robustness_use_the_stored_fractions():
    km = _map()
    assert _marked(km.rethreshold(robustness=0.9)) == [2]
    assert _marked(km.rethreshold(robustness=0.5)) == [2, 3, 4]
    assert km.rethreshold(robustness=0.5).control_params["robustness"] == 0.5


def test_alpha_and_min_run_re_mark_from_the_stored_p_values():
    km = _map()
    strict = km.rethreshold(alpha=0.005)
    assert _marked(strict) == [] and strict.cell("drugs", "a").code == "not_significant"
    assert _marked(km.rethreshold(min_run=1)) == [2, 3, 7]
    assert km.cell("drugs", "a").code == "marked"  # the original is untouched


def test_robustness_on_layers_that_were_not_resampled_is_an_error():
    km = _map()
    with pytest.raises(MedinterpError, match=r"age/a: layers \[5, 6\] were not resampled"):
        km.rethreshold(alpha=0.2)
    assert _marked(km.rethreshold(alpha=0.2, robustness=0), "age") == [5, 6]


def test_parameters_of_the_other_rule_raise_instead_of_doing_nothing():
    km = _map()
    with pytest.raises(MedinterpError, match="percentile applies to rule='paper' only"):
        km.rethreshold(percentile=90)
    with pytest.raises(MedinterpError, match="alpha applies to rule='controls' only"):
        km.rethreshold(rule="paper", alpha=0.01)
    with pytest.raises(MedinterpError, match="unknown parameter"):
        km.rethreshold(alpah=0.01)
    paper = km.rethreshold(rule="paper", percentile=90)
    assert paper.rule == "paper" and paper.params["percentile"] == 90
