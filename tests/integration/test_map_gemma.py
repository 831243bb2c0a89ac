"""End to end on the real Gemma 3 270M: a quick knowledge map with controls (control families and the
random-init twin), resume from the work dir, curves.csv, report, CLI."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medinterp.maps import TECHNIQUES, KnowledgeMap, saved_jobs
from medinterp.maps.twin_plan import plan_twin_skips
from medinterp.results import Result
from medinterp.techniques import REGISTRY

pytestmark = pytest.mark.integration

FAMILIES = ["drugs", "age"]
MARKING = ("alpha", "correction", "min_run", "robustness", "n_perm", "n_boot", "n_resamples")


def _twin_skips(km, work):
    """The twin jobs the map should not have made, planned again from the saved model and control results."""
    def load(suffix):
        return {(c, t): Result.load(work / f"{c}{suffix}" / t) for c in FAMILIES for t in TECHNIQUES
                if (work / f"{c}{suffix}" / t / "job.json").is_file()}
    main, ctrl = load(""), load("__control")
    marking = {k: v for k, v in km.control_params.items() if k in MARKING}
    return plan_twin_skips(main, {k: "ok" for k in main}, ctrl, {k: "ok" for k in ctrl}, list(main), marking,
                           REGISTRY)[0]


@pytest.fixture(scope="module")
def quick_map(gemma, tmp_path_factory):
    import medinterp as mi

    work = tmp_path_factory.mktemp("map") / "work"
    t0 = time.perf_counter()
    km = mi.knowledge_map(gemma, concepts=FAMILIES, quick=True, out_dir=work, progress=False)
    return km, work, time.perf_counter() - t0


def test_quick_map_runs_every_technique(quick_map, gemma):
    km, work, _ = quick_map
    n = gemma.cfg.n_layers
    skips = _twin_skips(km, work)
    assert km.n_layers == n and km.concepts == FAMILIES and km.techniques == list(TECHNIQUES)
    for c in FAMILIES:
        for j, t in enumerate(km.techniques):
            # a family whose pairs the model gets wrong is shown as such instead of a band
            if km.status[c][t].startswith("not known by the model"):
                # patching and lesion score only what the model knows (lesion: the LD fraction on known prompts)
                assert np.all(np.isnan(km.curves[km.concepts.index(c), j])) and t in ("patching", "lesion")
                continue
            assert km.status[c][t] == "ok", (c, t, km.status[c][t])
            # every cell has an effect over control, or says why not (never a band without controls)
            cs = km.control_status[c][t]
            assert cs == "ok" or cs.startswith(("no unit scores", "no finite unit scores", "control family",
                                                "random twin", "too few items to mark",
                                                "control not comparable", "medicine: fewer than 2",
                                                "no run of layers beats the control family")), (c, t, cs)
            # a twin that cannot change the map (too few items for its paired test, no layer beats the
            # control family, a control that cannot be balanced) is not run
            twin_run = (c, t) not in skips
            assert twin_run or t in ("lesion", "saliency", "patching"), (c, t, cs)  # unit-score techniques only
            if "twin was not run" in cs or "was not run" in km.cell(c, t).reason:
                assert not twin_run
            for d in (c, f"{c}__control") + ((f"{c}__twin",) if twin_run else ()):
                assert (work / d / t / "job.json").is_file(), (d, t)
            assert (work / f"{c}__twin" / t / "job.json").is_file() == twin_run, (c, t)
            curve = km.curves[km.concepts.index(c), j]
            assert curve.shape == (n,) and np.all(np.isfinite(curve))
            # the stored curve is the saved technique result's own layer_curve
            res = Result.load(work / c / t)
            np.testing.assert_allclose(res.layer_curve(), curve, rtol=1e-6)
    assert km.rule == "controls"
    for iv in km.intervals:  # "no interval" is a valid outcome; what is marked is a marked, robust run
        assert 0 <= iv["start"] <= iv["end"] < n and iv["rule"] == "controls"
        assert km.control_status[iv["concept"]][iv["technique"]] == "ok"
    cons = km.consensus()
    assert cons.shape == (len(FAMILIES), n) and cons.max() <= len(TECHNIQUES)
    assert set(km.summary()) == set(FAMILIES)
    from medinterp.maps.cells import CODES

    codes = {km.cell(c, t).code for c in FAMILIES for t in TECHNIQUES}  # every cell says why, in the vocabulary
    assert codes <= set(CODES) - {"unclassified", "no_interval"}, codes
    assert km.provenance["model"]["n_layers"] == n and km.provenance["params"]["size"] == "quick"
    not_run = set(skips)
    assert {t for _, t in not_run} >= {"lesion", "saliency"}  # the quick previews (5 and 2 prompts)
    assert sorted(saved_jobs(work)) == sorted(f"{c}{k}/{t}" for c in FAMILIES for t in TECHNIQUES
                                              for k in ("", "__control", "__twin")
                                              if not (k == "__twin" and (c, t) in not_run))
    import pandas as pd

    df = pd.read_csv(work / "map" / "curves.csv")
    assert set(df.family) == set(FAMILIES) and df.layer.max() == n - 1
    assert all(km.curve_names[t] for t in TECHNIQUES)  # every technique says what its curve measures


def test_rerun_resumes_from_work_dir(quick_map, gemma):
    import medinterp as mi

    km, work, first = quick_map
    t0 = time.perf_counter()
    km2 = mi.knowledge_map(gemma, concepts=FAMILIES, quick=True, out_dir=work, progress=False)
    second = time.perf_counter() - t0
    np.testing.assert_array_equal(km2.curves, km.curves)
    assert km2.intervals == km.intervals
    assert second < 0.3 * first, (first, second)
    loaded = KnowledgeMap.load(work / "map")
    np.testing.assert_array_equal(loaded.curves, km.curves)


def test_report_and_cli(quick_map, tmp_path):
    from typer.testing import CliRunner

    from medinterp.cli import app

    def main(args):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, (r.output, r.exception)
        return r.output

    km, work, _ = quick_map
    text = km.to_html(tmp_path / "r.html")
    assert "https://" not in "".join(text.split("<script")[0])  # nothing external before the scripts
    assert 'src="http' not in text and "src='http" not in text
    assert "knowledge-map" in text and "Findings of the paper" in text
    # CLI: resumes from the same work dir (no recomputation), writes report + map beside it
    out = tmp_path / "cli.html"
    output = main(["map", "--quick", "--concepts", ",".join(FAMILIES), "--work-dir", str(work), "--out", str(out), "--no-progress"])
    assert out.is_file() and (tmp_path / "cli.map" / "manifest.json").is_file()
    assert "Knowledge map of gemma-3-270m" in output and "peak RSS" in output
    km_cli = KnowledgeMap.load(tmp_path / "cli.map")
    np.testing.assert_array_equal(km_cli.curves, km.curves)
    km.rethreshold(rule="paper", percentile=90).save(tmp_path / "strict.map")
    main(["compare", str(out), str(tmp_path / "strict.map"), "--names", "p75,p90", "--out", str(tmp_path / "c.html")])
    assert "p90" in (tmp_path / "c.html").read_text()
