"""The map's causal check of its marked bands (issue 22: "the full map validates each marked band")."""

from __future__ import annotations

import numpy as np
import pytest

import medinterp.maps.band_checks as bc
from medinterp.techniques.base import Family

from test_validate_band import planted_model, planted_pairs  # noqa: E402  (tests/unit is on sys.path)

IV = {"concept": "planted", "technique": "toy", "start": 2, "end": 3, "score": 1.0, "rule": "controls"}
OFF = {"concept": "planted", "technique": "toy", "start": 6, "end": 7, "score": 1.0, "rule": "controls"}


def test_a_planted_band_is_supported_an_unread_band_is_not_and_results_are_reused(tmp_path, monkeypatch):
    model = planted_model()
    fams = {"planted": Family("planted", pairs=planted_pairs()), "words": Family("words", concepts="x")}
    ivs = [IV, OFF, {**IV, "concept": "words"}]
    rows = bc.check_bands(model, ivs, fams, work=tmp_path, check={"n_boot": 200})
    v = rows[0]["verdicts"]
    assert v["necessity"] == "supports" and v["sufficiency"] == "supports", rows[0]
    assert "necessity: supports" in rows[0]["text"]
    assert rows[1]["verdicts"]["necessity"] != "supports"  # blocks 6-7 carry nothing the answer reads
    assert rows[2]["verdicts"] == {} and rows[2]["text"] == "not run: the family has no pair set to intervene on"
    assert (tmp_path / "planted" / "band_check_toy_2-3" / "manifest.json").is_file()

    # a rerun with the same parameters loads the saved checks; other parameters recompute
    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr("medinterp.techniques.validate.validate_band", boom)
    again = bc.check_bands(model, ivs[:2], fams, work=tmp_path, check={"n_boot": 200})
    assert [r["verdicts"] for r in again] == [r["verdicts"] for r in rows[:2]]
    with pytest.raises(AssertionError, match="recomputed"):
        bc.check_bands(model, ivs[:1], fams, work=tmp_path, check={"n_boot": 100})


def test_a_band_that_cannot_be_checked_says_why_and_the_report_shows_the_column(tmp_path):
    from medinterp.maps import KnowledgeMap

    import medinterp.viz  # noqa: F401  (registers the report renderer)

    model = planted_model()
    # fewer known pairs than the check needs: said, not raised
    fams = {"planted": Family("planted", pairs=planted_pairs())}
    rows = bc.check_bands(model, [{**IV, "start": 2, "end": 3}], fams, check={"min_known": 10_000})
    assert rows[0]["verdicts"] == {} and rows[0]["text"].startswith("not run: ")
    km = KnowledgeMap.from_curves({"planted": {"toy": np.arange(10.0)}}, n_layers=10, techniques=["toy"],
                                  rules={"toy": "percentile"}, rule="paper")
    assert bc.check_text(km, IV) == "not checked (map run with validate_bands=False, or --quick)"
    km.extras["band_checks"] = rows
    assert bc.check_text(km, IV) == rows[0]["text"]
    assert km.intervals
    iv = km.intervals[0]
    km.extras["band_checks"] = [{**{k: iv[k] for k in ("concept", "technique", "start", "end")}, "verdicts": {},
                                 "text": "not run: <b>few</b> pairs"}]
    html = km.to_html(tmp_path / "r.html")
    assert "causal check" in html and "not run: &lt;b&gt;few&lt;/b&gt; pairs" in html


def test_knowledge_map_checks_its_marked_bands_by_default_on_a_full_map_only(tmp_path, monkeypatch):
    import medinterp.maps as maps
    from medinterp.maps import KnowledgeMap
    from medinterp.techniques import REGISTRY
    from medinterp.techniques.base import Technique
    from medinterp.testing import tiny_model

    from test_map_controls import N_LAYERS, _fams, _planted  # noqa: E402

    monkeypatch.setitem(REGISTRY, "toy_planted", Technique("toy_planted", _planted))
    fams = {"drugs": _fams()["drugs"]}
    kw = dict(progress=False, n_perm=999, n_boot=100, n_resamples=10)
    km = maps.knowledge_map(tiny_model(n_layers=N_LAYERS), fams, ["toy_planted"], out_dir=tmp_path / "w",
                            validate_bands=True, **kw)
    assert [(iv["start"], iv["end"]) for iv in km.intervals] == [(2, 3)]
    assert km.extras["band_checks"] == [{"concept": "drugs", "technique": "toy_planted", "start": 2, "end": 3,
                                         "verdicts": {}, "text": "not run: the family has no pair set to intervene on"}]
    assert KnowledgeMap.load(tmp_path / "w" / "map").extras["band_checks"] == km.extras["band_checks"]
    off = maps.knowledge_map(tiny_model(n_layers=N_LAYERS), fams, ["toy_planted"], validate_bands=False, **kw)
    assert "band_checks" not in off.extras
    default_full = maps.knowledge_map(tiny_model(n_layers=N_LAYERS), fams, ["toy_planted"], **kw)
    assert default_full.extras["band_checks"] == km.extras["band_checks"]  # the full map checks its bands
    default_quick = maps.knowledge_map(tiny_model(n_layers=N_LAYERS), fams, ["toy_planted"], quick=True, **kw)
    assert "band_checks" not in default_quick.extras
