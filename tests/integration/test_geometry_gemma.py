"""Activation geometry on the real Gemma 3 270M, end to end (shipped concept sets, CLI).

Kept small for CI: progression and drugs of four specialties under 4 templates, ages 10-40 under 4
templates (17->18 and the matched 27->28, 37->38 steps). The headline (item-grouped probe on
template-centred reads) runs on all three; the 0.1.0 / paper metrics (UMAP) once, on progression.
The full run over every shipped set is `medinterp geometry --out DIR`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medinterp.concepts import load_concepts
from medinterp.results import Result
from medinterp.techniques.base import UnitScores
from medinterp.techniques.geometry import GeometryResult, geometry, geometry_many

pytestmark = pytest.mark.integration

FAST = dict(templates=[0, 1, 2, 3], n_boot_items=500, n_null=1000, progress=False)


@pytest.fixture(scope="module")
def results(gemma):
    sets = [
        load_concepts("progression"),
        load_concepts("age").filter(age=range(10, 41)),
        load_concepts("drugs").filter(specialty=["cardiology", "psychiatry", "infectious disease", "oncology"]),
    ]
    return dict(zip(("progression", "age", "drugs"), geometry_many(gemma, sets, **FAST)))


def test_every_block_has_unit_scores_a_curve_with_cis_and_a_lexical_baseline(results, gemma):
    L = gemma.cfg.n_layers
    for name, res in results.items():
        assert res.layers == [-1, *range(L)], name
        us = res.unit_scores()
        assert isinstance(us, UnitScores) and us.values.shape == (len(res.unit_ids), L), name
        assert np.isfinite(us.values).all() and len(set(us.templates)) == 4
        curve = res.layer_curve()
        lo, hi = res.layer_curve_ci()
        np.testing.assert_allclose(curve, us.values.mean(0), atol=1e-12)
        assert np.all(lo <= curve + 1e-12) and np.all(curve <= hi + 1e-12), name
        assert res.unit_scores("last").values.shape == us.values.shape
        assert res.lexical_scores.shape == (len(res.unit_ids),)
        pr = res.metric("participation_ratio", space="span")
        assert (pr[pr.layer >= 0].value >= 1 - 1e-6).all()


def test_drugs_specialty_is_decodable_and_the_matched_comparison_is_reported(results):
    res = results["drugs"]
    h = res.headline_dict()
    v, lo, hi = h["probe"]
    assert v > 0 and lo <= v <= hi  # (on this 4-specialty, 4-template slice the CI reaches chance: measured)
    md = res.metric("matched_diff", space="span")
    assert len(md) == len(res.layers) and (md.ci_low <= md.ci_high).all()


def test_age_grouped_r2_and_the_step_against_matched_steps(results):
    res = results["age"]
    assert res.curve_label.endswith("grouped R²")
    assert res.layer_curve().max() > 0.5  # ages generalise to unseen ages somewhere
    st = res.metric("age_step_ratio", space="span")
    assert len(st) == len(res.layers) and (st.n == 2).all() and st.p_value.between(0, 1).all()


def test_progression_order_null_and_lexical_floor(results):
    res = results["progression"]
    sp = res.metric("stage_spearman", space="span", group="mean")
    assert len(sp) == len(res.layers) and sp.p_value.between(1 / 1001 - 1e-12, 1).all()
    assert {"spearman", "p_value"} <= set(res.findings["progression_lexical"])
    diseases = set(load_concepts("progression").label("disease"))
    assert set(res.progression.group) == diseases
    for m, lo, hi in (("csfs", 1, 9), ("csls", 0, 8), ("spearman", -1, 1)):
        v = res.progression[res.progression.metric == m].value.dropna()
        assert v.between(lo - 1e-9, hi + 1e-9).all(), m


def test_paper_metrics_still_run(gemma):
    res = geometry(gemma, load_concepts("progression"), paper=True, templates=[0, 1], n_perm=20, n_boot=30,
                   n_epochs=50, n_boot_items=200, n_null=100, progress=False)
    L = gemma.cfg.n_layers
    assert res.embedding_2d.shape[:2] == (L + 1, len(res.texts))
    assert res.layer_curve(**res.paper_primary).shape == (L,)


def test_save_load_and_html(results, tmp_path):
    res = results["drugs"]
    res.save(tmp_path / "drugs")
    back = Result.load(tmp_path / "drugs")
    assert isinstance(back, GeometryResult)
    np.testing.assert_allclose(back.layer_curve(), res.layer_curve())
    np.testing.assert_allclose(back.unit_scores().values, res.unit_scores().values)
    assert back.findings == json.loads(json.dumps(res.findings))
    html = back.to_html(tmp_path / "drugs.html")
    assert "<script src=" not in html and "lexical baseline" in html


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


def test_refit_inference_on_real_reads(results):
    """Issue 20: the refit tests run on the stored reads of a real run. The age units are the ages; the
    refit statistic of the observed labels is the map's level; drugs' specialty (4 classes) is decodable
    at some block by the refit permutation test, and every contrast has a finite SE."""
    import time

    import types

    from medinterp.techniques.geometry import contrast as _con, inference as _inf
    GI = types.SimpleNamespace(**{**vars(_inf), **vars(_con)})

    age = results["age"]
    us = age.unit_scores()
    assert set(us.units) == {str(a) for a in range(10, 41)}  # 31 ages, both sexes x 4 templates each
    drugs = results["drugs"]
    inp = drugs.probe_inputs()
    assert inp.embedding is not None and inp.lexical is not None
    t0 = time.perf_counter()
    fam = GI.family_levels(inp, n_perm=200, n_boot=100, seed=0)
    seconds = time.perf_counter() - t0
    np.testing.assert_allclose(fam.level, drugs.layer_curve(), atol=1e-6)
    assert fam.p_level.min() <= 0.01 and np.isfinite(fam.excess_se).all() and np.isfinite(fam.over_embedding).all()
    a_inp = age.probe_inputs()
    a_fam = GI.family_levels(a_inp, n_perm=100, n_boot=30, seed=0)
    np.testing.assert_allclose(a_fam.level, age.layer_curve(), atol=1e-6)
    print(f"drugs (4 specialties, {len(inp.y)} prompts): {seconds:.1f} s; level {np.round(fam.level, 2)}; "
          f"p_level {np.round(fam.p_level, 3)}; excess over lexical {np.round(fam.excess, 2)} (lexical {fam.lexical:.2f}); "
          f"over embedding {np.round(fam.over_embedding, 2)} (embedding {fam.embedding:.2f})")
