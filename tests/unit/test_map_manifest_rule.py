"""A controls map's manifest keeps the active rule's parameters only (issue #24, item 3): the paper rule's
thresholds (``params``, ``rules``) marked nothing in it and are not saved; a paper map keeps them."""

from __future__ import annotations

import json

from medinterp.maps import KnowledgeMap
from test_report_statistics import _toy  # tests/unit is on sys.path


def test_manifest_keeps_only_the_active_rules_parameters(tmp_path):
    km = _toy()
    paper = km.rethreshold(rule="paper")
    km.save(tmp_path / "c")
    fields = json.loads((tmp_path / "c" / "manifest.json").read_text())["fields"]
    assert fields["rule"] == "controls" and fields["control_params"]["alpha"] == 0.05
    assert "percentile" not in json.dumps(fields.get("params", {})) and not fields.get("rules")
    back = KnowledgeMap.load(tmp_path / "c")  # still loads, and the paper rule's defaults come back
    assert back.rule == "controls" and back.intervals == km.intervals
    assert back.rethreshold(rule="paper").params["percentile"] == paper.params["percentile"]
    paper.save(tmp_path / "p")
    pfields = json.loads((tmp_path / "p" / "manifest.json").read_text())["fields"]
    assert pfields["params"]["percentile"] == paper.params["percentile"] and pfields["rules"]["lesion"] == "percentile"


def test_a_controls_map_of_columns_outside_the_registry_keeps_their_rules_and_loads(tmp_path):
    import numpy as np

    from medinterp.maps.controls import CONTROL_STATS

    km = KnowledgeMap.from_curves({"a": {"t": np.arange(4.0)}}, techniques=["t"], rules={"t": "percentile"},
                                  rule="controls", control_stats={"a": {"t": np.zeros((len(CONTROL_STATS), 4))}},
                                  control_status={"a": {"t": "ok"}}, control_params={"alpha": 0.05})
    km.save(tmp_path / "m")
    fields = json.loads((tmp_path / "m" / "manifest.json").read_text())["fields"]
    assert fields["rules"] == {"t": "percentile"} and "params" not in fields
    assert KnowledgeMap.load(tmp_path / "m").rules == {"t": "percentile"}
