"""Band validation (issue 22) end to end on the real Gemma 3 270M: a shipped family with its control, and a
user pair file with a user band through the CLI (small null and pair counts to keep both under ~3 min)."""

from __future__ import annotations

import numpy as np
import pytest

from medinterp.results import Result

pytestmark = pytest.mark.integration

CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Japan", "Tokyo"), ("Spain", "Madrid"),
            ("Germany", "Berlin"), ("Egypt", "Cairo"), ("Russia", "Moscow"), ("England", "London")]


def test_validate_drugs_band_on_gemma(gemma, tmp_path):
    from medinterp.techniques.validate import VERDICTS, validate_band

    r = validate_band(gemma, "drugs", (5, 12), n_random=10, max_pairs=12, n_boot=200)
    n_sets = 1 + 10 + 10  # the band, the 10 other 8-block contiguous bands, 10 random sets
    assert r.sets.shape == (n_sets, 8) and r.frac_lost.shape == (2, n_sets) and r.recovered.shape == (n_sets,)
    assert np.isfinite(r.frac_lost[0]).all() and np.isfinite(r.recovered).all()
    assert (r.kl[r.set_kind <= 1] > -1e-4).all() and np.isnan(r.kl[r.set_kind == 2]).all()
    assert np.isfinite(r.frac_lost[1][r.set_kind <= 1]).all() and np.isnan(r.frac_lost[1][r.set_kind == 2]).all()
    assert set(r.checks) == {"necessity", "necessity_skip", "selectivity", "sufficiency"}
    assert all(c["verdict"] in VERDICTS for c in r.checks.values())
    assert r.control["pairs"] == "drug_pairs_control"
    r.save(tmp_path / "v")
    back = Result.load(tmp_path / "v")
    assert back.verdicts() == r.verdicts() and "band 5-12" in back.summary()


def test_validate_cli_user_pairs_and_band_on_gemma(gemma, tmp_path, monkeypatch, capsys):
    import medinterp.models
    from medinterp.cli import main

    rows = ["clean,corrupted,clean_answer,corrupted_answer"]
    for (c1, a1), (c2, a2) in zip(CAPITALS, CAPITALS[1:] + CAPITALS[:1]):
        rows.append(f"The capital of {c1} is,The capital of {c2} is, {a1}, {a2}")
    f = tmp_path / "capitals.csv"
    f.write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(medinterp.models, "load_model", lambda spec, **k: gemma)
    with pytest.raises(SystemExit) as e:
        main(["validate", "--pairs", str(f), "--band", "3-6", "--out", str(tmp_path / "u"), "--n-random", "10",
              "--n-boot", "200", "--no-progress"])
    assert e.value.code == 0, capsys.readouterr().err
    back = Result.load(tmp_path / "u")
    assert back.band == [3, 6] and back.control == {} and "selectivity" not in back.checks
    assert (tmp_path / "u" / "checks.csv").is_file()


def test_validate_steering_and_erasure_on_gemma(gemma, tmp_path):
    """Parts 3-4 run end to end on the real model (small null: the numbers, not their verdicts, are checked)."""
    from medinterp.techniques.validate import VERDICTS, validate_band

    r = validate_band(gemma, "age", (5, 12), parts=("steering", "erasure"), n_directions=5, max_pairs=12, n_boot=200)
    assert set(r.checks) == {"steering", "erasure"} and all(c["verdict"] in VERDICTS for c in r.checks.values())
    st, er = r.steering, r.erasure
    assert st["n_scored"] >= 2 and len(st["curve"]) == len(st["alphas"]) and len(st["slopes_random"]) == 5
    assert np.isfinite(st["slope"]) and st["scale"] > 0
    assert np.isfinite(er["frac_lost"]) and len(er["frac_lost_random"]) == 5 and er["ranks"]
    r.save(tmp_path / "s")
    assert Result.load(tmp_path / "s").steering["curve"] == st["curve"]
