"""Activation geometry on the real Gemma 3 270M, end to end (shipped concept sets, CLI).

Kept small for CI: progression (180 prompts), a slice of the age set (ages 10-25, 96 prompts) and the
drugs of four specialties. The full run over every shipped set is `medinterp geometry --out DIR`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medinterp.concepts import load_concepts
from medinterp.results import Result
from medinterp.techniques.geometry import GeometryResult, geometry_many

pytestmark = pytest.mark.integration

FAST = dict(n_perm=50, n_boot=100, n_epochs=100, n_jobs=1, progress=False)


@pytest.fixture(scope="module")
def results(gemma):
    sets = [
        load_concepts("progression"),
        load_concepts("age").filter(age=range(10, 26)),
        load_concepts("drugs").filter(specialty=["cardiology", "psychiatry", "infectious disease", "oncology"]),
    ]
    return dict(zip(("progression", "age", "drugs"), geometry_many(gemma, sets, **FAST)))


def test_every_layer_is_scored_with_cis(results, gemma):
    L = gemma.cfg.n_layers
    for name, res in results.items():
        assert res.layers == [-1, *range(L)], name
        n = len(res.texts)
        assert res.embedding_2d.shape == (L + 1, n, 2) and np.isfinite(res.embedding_2d).all()
        curve = res.layer_curve()
        lo, hi = res.layer_curve_ci()
        assert curve.shape == (L,) and np.isfinite(curve).all(), name
        ok = np.isfinite(lo) & np.isfinite(hi)
        assert ok.sum() >= L // 2 and np.all(lo[ok] <= hi[ok]), name
        er = res.metric("eff_rank", space="raw")
        blocks = er[er.layer >= 0]
        assert (blocks.value >= 1 - 1e-6).all() and (blocks.value <= n).all()
        cos = res.metric("mean_cosine", space="raw")
        assert cos.value.between(-1 - 1e-9, 1 + 1e-9).all()
        assert (res.metric("resid_norm", space="raw").value > 0).all()


def test_drug_specialty_clusters_beat_shuffled_labels_somewhere(results):
    sil = results["drugs"].metric("silhouette", space="raw", label="specialty")
    blocks = sil[sil.layer >= 0]
    # at its best block the real labelling is above the 95th percentile of shuffled labellings
    best = blocks.loc[blocks.value.idxmax()]
    assert best.value > best.baseline_high and best.p_value <= 0.05


def test_age_is_linearly_decodable_and_the_step_profile_is_complete(results):
    res = results["age"]
    r2 = res.metric("linearity_r2", space="raw", label="age")
    assert r2[r2.layer >= 0].value.max() > 0.5
    steps = res.age_steps
    sub = steps[(steps.layer == 5) & (steps.space == "raw")]
    assert set(sub.group) == {"all", "male", "female"}
    assert len(sub[sub.group == "all"]) == 15  # ages 10..25: 15 consecutive steps
    sr = res.metric("step_ratio", space="raw", label="age:17-18", group="all")
    ok = sr[sr.ci_low.notna()]
    assert len(ok) >= 10 and ((ok.ci_low <= ok.value + 1e-9) & (ok.value <= ok.ci_high + 1e-9)).mean() > 0.8


def test_progression_scores_for_every_disease(results):
    prog = results["progression"].progression
    diseases = set(load_concepts("progression").label("disease"))
    assert set(prog.group) == diseases
    for m, lo, hi in (("csfs", 1, 9), ("csls", 0, 8), ("spearman", -1, 1), ("circularity", 0, 1)):
        v = prog[prog.metric == m].value.dropna()
        assert v.between(lo - 1e-9, hi + 1e-9).all(), m


def test_save_load_and_html(results, tmp_path):
    res = results["drugs"]
    res.save(tmp_path / "drugs")
    back = Result.load(tmp_path / "drugs")
    assert isinstance(back, GeometryResult)
    np.testing.assert_allclose(back.layer_curve(), res.layer_curve())
    html = back.to_html(tmp_path / "drugs.html")
    assert "<script src=" not in html and "metoprolol" in html


def test_cli_writes_manifest_tables_and_html(tmp_path):
    from typer.testing import CliRunner

    from medinterp.cli import app

    out = tmp_path / "geo"
    r = CliRunner().invoke(app, ["geometry", "--concepts", "progression", "--out", str(out), "--n-perm", "20",
                                 "--n-boot", "50", "--n-epochs", "50", "--no-progress"])
    assert r.exit_code == 0, r.output
    d = out / "progression"
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["kind"] == "geometry" and manifest["fields"]["provenance"]["model"]
    assert (d / "table.csv").is_file() and (d / "progression.csv").is_file() and (d / "geometry.html").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert "progression" in summary["sets"] and not math.isnan(summary["total_s"])
    bad = CliRunner().invoke(app, ["geometry", "--concepts", "no_such_set", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0
