"""Band validation, parts 3-4 (issue 22): steering along the class direction and LEACE erasure at the band.

Planted, never one draw of a random model: the tiny model of ``test_validate_band`` whose unembedding reads
the direction ``u`` that blocks 2-3 write from the item's class (so the class direction read after block 3
carries ``u``), and synthetic activations with a planted linear label for the eraser.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from medinterp.errors import MedinterpError
from medinterp.results import Result
from medinterp.techniques.validate import BandValidation, validate_band
from medinterp.techniques.validate.erasure import (
    NOT_INSTALLED,
    apply_eraser,
    leace_eraser,
    probe_accuracy,
    random_eraser,
)
from medinterp.techniques.validate.steering import other_band, slopes

from test_validate_band import planted_model, planted_pairs  # noqa: E402  (tests/unit is on sys.path)


@pytest.fixture(scope="module")
def steered():
    m = planted_model()
    return m, validate_band(m, planted_pairs(), (2, 3), parts=("steering", "erasure"), n_directions=20, n_boot=300,
                           max_pairs=16)


def test_planted_direction_steers_the_answer(steered):
    _, r = steered
    st, c = r.steering, r.checks["steering"]
    assert st["n_scored"] == 16  # every pair has both answers in the other item half
    assert st["slope"] > 1.0 and c["ci"][0] > 0  # the answer moves toward the clean answer, CI excludes 0
    rs = np.asarray(st["slopes_random"])
    assert len(rs) == 20 and abs(np.median(rs)) < 0.15 * st["slope"]  # random directions of equal norm: ~0
    assert (rs < st["slope"]).all() and c["p"] == pytest.approx(1 / 21) and c["verdict"] == "supports"
    assert st["monotone_curve"] and st["monotone_pairs"] > 0.9
    assert st["other_band"] == [4, 5] and np.isfinite(st["slope_other"])
    assert set(r.checks) == {"steering", "erasure"}  # necessity / sufficiency not run: no checks, NaN arrays
    assert np.isnan(r.frac_lost).all() and np.isnan(r.recovered).all()


def test_leace_at_the_planted_band_removes_the_answer(steered):
    _, r = steered
    er, c = r.erasure, r.checks["erasure"]
    assert er["ranks"] == [1]  # two classes: a rank-1 eraser per half and block
    assert er["frac_lost"] > 0.7 and c["ci"][0] > 0
    assert max(er["frac_lost_random"]) < 0.2 and c["verdict"] == "supports"
    assert er["probe_intact"] > 0.9 and er["probe_random"] > 0.9 and er["probe_erased"] < er["probe_intact"] - 0.3


def test_leace_removes_a_planted_linear_label_a_random_subspace_does_not():
    rng = np.random.default_rng(0)
    n, d = 240, 24
    y = np.repeat([0, 1], n // 2)
    w = rng.normal(size=d)
    w /= np.linalg.norm(w)
    x = rng.normal(size=(n, d)) + 3.0 * (2 * y[:, None] - 1) * w
    fit = rng.permutation(n) < n // 2  # fitted on one half, probed on the other (as the band's halves are)
    xt, yt, groups = torch.as_tensor(x), y[~fit], np.arange(n // 2)
    assert probe_accuracy(x[~fit], yt, groups) > 0.9
    eraser = leace_eraser(xt[fit], y[fit])
    assert eraser[3] == 1
    # the class means coincide after erasure (LEACE's guarantee on its fitting data)
    on_fit = apply_eraser(xt[fit], eraser).numpy()
    np.testing.assert_allclose(on_fit[y[fit] == 0].mean(0), on_fit[y[fit] == 1].mean(0), atol=1e-8)
    erased = apply_eraser(xt[~fit], eraser).numpy()
    assert abs(probe_accuracy(erased, yt, groups)) < 0.25  # chance-corrected: ~0 on the held-out half
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        rnd = apply_eraser(xt[~fit], random_eraser(d, 1, eraser[2], g)).numpy()
        assert probe_accuracy(rnd, yt, groups) > 0.8


def test_save_load_roundtrip_of_steering_and_erasure(steered, tmp_path):
    _, r = steered
    r.save(tmp_path / "s")
    back = Result.load(tmp_path / "s")
    assert isinstance(back, BandValidation)
    assert back.verdicts() == r.verdicts()
    assert back.steering["alphas"] == r.steering["alphas"]
    np.testing.assert_allclose(back.steering["curve"], r.steering["curve"])
    np.testing.assert_allclose(back.steering["slopes_random"], r.steering["slopes_random"])
    np.testing.assert_allclose(back.erasure["frac_lost_random"], r.erasure["frac_lost_random"])
    assert back.erasure["probe_erased"] == pytest.approx(r.erasure["probe_erased"])
    params = back.provenance["params"]
    assert params["parts"] == ["steering", "erasure"] and params["n_directions"] == 20
    assert params["alphas"] == list(r.steering["alphas"]) and "centred residual" in params["steering_scale"]
    text = back.summary()
    assert "steering: mean slope" in text and "erasure: fraction of LD lost" in text
    assert "no control family" not in text


def test_figure_with_steering_and_erasure(steered):
    import medinterp.viz  # noqa: F401  (registers the renderer)

    _, r = steered
    fig = r.figure()
    names = [t.name for t in fig.data]
    assert "class direction at the band" in names and "random subspace" in names
    assert sum(n == "random direction" for n in names) == 20


def test_erasure_without_concept_erasure_says_not_run(steered, monkeypatch):
    m, _ = steered
    monkeypatch.setitem(sys.modules, "concept_erasure", None)  # import raises ImportError
    r = validate_band(m, planted_pairs(), (2, 3), parts=("erasure",), n_directions=2, n_boot=20)
    assert r.erasure == {"error": NOT_INSTALLED}
    assert r.checks["erasure"]["reason"] == NOT_INSTALLED and r.checks["erasure"]["verdict"] == "inconclusive"
    assert NOT_INSTALLED in r.summary()


def test_bad_parts(steered):
    m, _ = steered
    for kw, msg in [(dict(parts=("lesion",)), "expected one or more of"), (dict(parts=()), "expected one or more"),
                    (dict(parts=("steering",), n_directions=0), "n_directions >= 1"),
                    (dict(parts=("steering",), alphas=(1.0, 1.0)), "2 distinct alphas")]:
        with pytest.raises(MedinterpError, match=msg):
            validate_band(m, planted_pairs(), (2, 3), **kw)


def test_slopes_and_other_band():
    a = [-1.0, 0.0, 1.0]
    ld = np.array([[0.0, 3.0], [1.0, 3.0], [2.0, 3.0]])
    assert slopes(a, ld).tolist() == [1.0, 0.0]
    assert other_band(2, 3, 10) == (4, 5) and other_band(8, 9, 10) == (6, 7)
    assert other_band(5, 12, 18) == (0, 7) and other_band(0, 9, 10) is None


def test_cli_parts(steered, tmp_path, monkeypatch, capsys):
    import medinterp.models
    from medinterp.cli import main

    m, _ = steered
    monkeypatch.setattr(medinterp.models, "load_model", lambda spec, **k: m)
    f = tmp_path / "mine.csv"
    rows = ["clean,corrupted,clean_answer,corrupted_answer,item"]
    rows += [f"{p.clean},{p.corrupted},{p.clean_answer},{p.corrupted_answer},{p.meta['item']}"
             for p in planted_pairs().pairs]
    f.write_text("\n".join(rows) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["validate", "--pairs", str(f), "--band", "2-3", "--out", str(tmp_path / "v"), "--model", "tiny",
              "--parts", "steering", "--n-directions", "3", "--n-boot", "50", "--no-progress"])
    assert e.value.code == 0, capsys.readouterr().err
    back = Result.load(tmp_path / "v")
    assert set(back.checks) == {"steering"} and len(back.steering["slopes_random"]) == 3
    with pytest.raises(SystemExit) as e:
        main(["validate", "--pairs", str(f), "--band", "2-3", "--out", str(tmp_path / "w"), "--parts", "steer"])
    assert e.value.code == 2 and "--parts 'steer'" in capsys.readouterr().err
