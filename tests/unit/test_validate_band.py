"""Band validation (issue 22) on a tiny model with a PLANTED mechanism.

The planted model: item words of two classes carry +/-A along a direction e1 in their embeddings; a hook on
the residual after each block of the write layers adds ``c * u * tanh(x . e1 / A)`` (the class written along
u); the unembedding reads the answer (" yes" - " no") along a readout direction. With readout u the write
layers are the mechanism; with readout v (written elsewhere) the band that writes u is correlational only: a
probe would decode the class there, but the answer never reads it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medinterp.concepts import PairSet
from medinterp.errors import MedinterpError
from medinterp.results import Result
from medinterp.techniques.validate import BandValidation, band_arg, null_sets, validate_band
from medinterp.testing import tiny_model

C1 = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "omega", "sigma"]
C0 = ["eta", "theta", "iota", "kappa", "lambda", "mu", "nu", "xi"]
FRAMES = ["the patient takes", "my doctor said"]
VOCAB = ["the", "patient", "takes", "my", "doctor", "said", "yes", "no", *C1, *C0]
N_LAYERS = 10


def _directions(d: int, k: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(d, k, generator=g)
    q, _ = torch.linalg.qr(m - m.mean(0, keepdim=True))  # zero-mean columns: LayerNorm's centring keeps them
    return [q[:, i] for i in range(k)]


def planted_model(write=(2, 3), read_from=None, *, A=10.0, c=10.0, seed=0):
    """Tiny model whose answer reads the class written at ``write`` (or, with ``read_from``, at those blocks
    along another direction, the ``write`` band then being written and never read)."""
    model = tiny_model(n_layers=N_LAYERS, d_model=64, vocab=VOCAB, seed=seed)
    tok = model.tokenizer
    e1, u, v = _directions(64, 3, seed + 1)
    with torch.no_grad():
        for w in C1:
            model.embed.W_E[tok.convert_tokens_to_ids(w)] += A * e1
        for w in C0:
            model.embed.W_E[tok.convert_tokens_to_ids(w)] -= A * e1

    def writer(direction):
        def fn(x, hook):
            return x + c * direction * torch.tanh((x @ e1) / A)[..., None]
        return fn

    for l in write:
        model.add_hook(f"blocks.{l}.hook_resid_post", writer(u), is_permanent=True)
    readout = u
    if read_from is not None:
        for l in read_from:
            model.add_hook(f"blocks.{l}.hook_resid_post", writer(v), is_permanent=True)
        readout = v
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    with torch.no_grad():
        model.unembed.W_U[:, yes] = readout
        model.unembed.W_U[:, no] = -readout
        model.unembed.b_U[[yes, no]] = 0
    return model


def planted_pairs(items=None) -> PairSet:
    out = []
    for f in FRAMES:
        for a, b in items or zip(C1, C0):
            out.append({"clean": f"{f} {a}", "corrupted": f"{f} {b}", "clean_answer": " yes",
                        "corrupted_answer": " no", "item": a})
            out.append({"clean": f"{f} {b}", "corrupted": f"{f} {a}", "clean_answer": " no",
                        "corrupted_answer": " yes", "item": b})
    return PairSet.from_pairs(out, name="planted")


@pytest.fixture(scope="module")
def mech():
    return planted_model()


@pytest.fixture(scope="module")
def mech_result(mech):
    return validate_band(mech, planted_pairs(), (2, 3), n_random=100, n_boot=300)


def test_planted_band_passes_necessity_and_sufficiency(mech_result):
    v = mech_result.verdicts()
    assert v["necessity"] == "supports" and v["sufficiency"] == "supports"
    # block skip is compared with the 8 other contiguous 2-block bands only: top of them, p at its floor 1/9 > 0.05
    assert mech_result.checks["necessity_skip"]["percentile"] == 100
    assert v["necessity_skip"] == "inconclusive" and "only 8 random sets" in mech_result.checks["necessity_skip"]["reason"]
    assert mech_result.frac_lost[0, 0] > 0.7 and mech_result.recovered[0] > 0.7
    # the band is the largest of all 44 other 2-block sets (C(10, 2) - 1), so p is the floor 1/45
    assert len(mech_result.sets) == 45
    assert mech_result.checks["necessity"]["p"] == pytest.approx(1 / 45)


def test_random_bands_and_a_band_elsewhere_fail(mech):
    ps = planted_pairs()
    for band in [(0, 1), (5, 6), (8, 9)]:
        r = validate_band(mech, ps, band, n_random=100, n_boot=200)
        assert r.verdicts()["necessity"] != "supports", band
        assert r.verdicts()["sufficiency"] != "supports", band
        assert r.checks["necessity"]["p"] > 0.3


def test_correlational_only_band_fails_necessity():
    # the band 2-3 writes the class along u (decodable there), the answer reads v written at 6-7
    m = planted_model(write=(2, 3), read_from=(6, 7))
    r = validate_band(m, planted_pairs(), (2, 3), n_random=100, n_boot=200)
    assert r.verdicts()["necessity"] == "does not"
    assert r.verdicts()["sufficiency"] == "does not"
    # and the band that is read passes
    assert validate_band(m, planted_pairs(), (6, 7), n_random=100, n_boot=200).verdicts()["necessity"] == "supports"


@torch.no_grad()
def _ld_with_hooks(model, toks, good, bad, hooks):
    logits = model.run_with_hooks(toks, return_type="logits", fwd_hooks=hooks)[:, -1]
    return (logits[:, good] - logits[:, bad]).double()


def test_stacked_runs_equal_hook_reference(mech, mech_result):
    """Skip and restore of the band, redone one pair at a time with plain hooks on a full forward."""
    from medinterp.hooks import skip_block_hooks

    r = mech_result
    for j, p in enumerate(r.pairs[:4]):
        ct = mech.to_tokens(p["clean"])
        xt = mech.to_tokens(p["corrupted"])
        good = mech.tokenizer.convert_tokens_to_ids(p["clean_answer"].strip())
        bad = mech.tokenizer.convert_tokens_to_ids(p["corrupted_answer"].strip())
        hooks = [h for l in (2, 3) for h in skip_block_hooks(l, mech)]
        assert float(_ld_with_hooks(mech, ct, good, bad, hooks)[0]) == pytest.approx(r.ld_ablate[1, 0, j], abs=1e-4)
        _, cache = mech.run_with_cache(ct)
        span = (ct != xt)[0]
        slot = {}

        def remember(x, hook):
            slot["x"] = x.clone()

        def restore(y, hook, l):
            delta = cache[f"blocks.{l}.hook_resid_post"] - cache[f"blocks.{l}.hook_resid_pre"]
            y = y.clone()
            y[:, span] = slot["x"][:, span] + delta[:, span]
            return y

        hooks = [h for l in (2, 3) for h in [(f"blocks.{l}.hook_resid_pre", remember),
                                             (f"blocks.{l}.hook_resid_post", lambda y, hook, l=l: restore(y, hook, l))]]
        assert float(_ld_with_hooks(mech, xt, good, bad, hooks)[0]) == pytest.approx(r.ld_restore[0, j], abs=1e-4)


def test_selectivity_against_a_control_that_uses_the_same_band(mech):
    # control pairs read by the same mechanism (other items): it loses as much, so necessity is not "supports"
    fam = planted_pairs(list(zip(C1[:4], C0[:4])))
    ctrl = planted_pairs(list(zip(C1[4:], C0[4:])))
    r = validate_band(mech, fam, (2, 3), control=ctrl, n_random=100, n_boot=300)
    assert r.checks["selectivity"]["ci"][0] <= 0 <= r.checks["selectivity"]["ci"][1]
    assert r.verdicts()["necessity"] != "supports"


def test_save_load_roundtrip(mech_result, tmp_path):
    mech_result.save(tmp_path / "v")
    back = Result.load(tmp_path / "v")
    assert isinstance(back, BandValidation)
    assert back.verdicts() == mech_result.verdicts()
    np.testing.assert_allclose(back.frac_lost, mech_result.frac_lost)
    assert back.sets.tolist() == mech_result.sets.tolist()
    assert "band 2-3" in back.summary()
    assert back.layer_curve().shape == (N_LAYERS,)
    assert back.provenance["params"]["band"] == [2, 3]


def test_figure(mech_result):
    import medinterp.viz  # noqa: F401  (registers the renderer)

    fig = mech_result.figure()
    assert len(fig.data) == 9


def test_bad_band_and_inputs(mech):
    for band, msg in [("9-3", "after the last"), ((0, 10), "blocks 0-9"), ("x", "A-B"), ((-1, 2), "blocks 0-9")]:
        with pytest.raises(MedinterpError, match=msg):
            band_arg(band, N_LAYERS)
    with pytest.raises(MedinterpError, match="known pairs"):
        validate_band(mech, [("the patient takes alpha", "the patient takes eta",
                                                                 " no", " yes")], (2, 3))


def test_whole_model_band_has_no_null_and_saves(mech, tmp_path):
    r = validate_band(mech, planted_pairs(), (0, N_LAYERS - 1), n_random=10, n_boot=50)
    assert len(r.sets) == 1 and r.checks["necessity"]["verdict"] == "inconclusive"
    r.save(tmp_path / "w")
    assert "band 0-9" in Result.load(tmp_path / "w").summary()  # NaN p saved as null still prints


def test_null_sets():
    sets, kind = null_sets((2, 3), 6, 100, 0)
    assert sets[0] == [2, 3] and kind.count(1) == 4 and len(sets) == 15  # all C(6, 2) sets
    assert len({tuple(s) for s in sets}) == len(sets)
    sets, kind = null_sets((5, 12), 18, 100, 0)
    assert kind.count(1) == 10 and kind.count(2) == 100 and all(len(s) == 8 for s in sets)


def test_cli_end_to_end_with_a_user_pair_file(mech, tmp_path, monkeypatch, capsys):
    import medinterp.models
    from medinterp.cli import main

    f = tmp_path / "mine.csv"
    rows = ["clean,corrupted,clean_answer,corrupted_answer,item"]
    for p in planted_pairs().pairs:
        rows.append(f"{p.clean},{p.corrupted},{p.clean_answer},{p.corrupted_answer},{p.meta['item']}")
    f.write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(medinterp.models, "load_model", lambda spec, **k: mech)
    with pytest.raises(SystemExit) as e:
        main(["validate", "--pairs", str(f), "--band", "2-3", "--out", str(tmp_path / "v"), "--model", "tiny",
              "--n-boot", "100", "--no-progress"])
    assert e.value.code == 0
    back = Result.load(tmp_path / "v")
    assert back.band == [2, 3] and back.verdicts()["necessity"] == "supports"
    assert (tmp_path / "v" / "checks.csv").is_file() and (tmp_path / "v" / "validate.html").is_file()
    out = capsys.readouterr().out
    assert "necessity" in out and "no control family: selectivity not tested" in out


@pytest.mark.parametrize("argv, msg", [
    (["--family", "drugs", "--band", "9-3"], "--band 9-3: the first block is after the last"),
    (["--family", "drugs", "--band", "five"], "expected A-B"),
    (["--family", "nosuch", "--band", "1-2"], "--family 'nosuch': not a shipped family"),
    (["--band", "1-2"], "exactly one of --family"),
    (["--family", "drugs", "--pairs", "drug_pairs", "--band", "1-2"], "exactly one of --family"),
    (["--concepts", "drugs", "--band", "1-2"], "a concept set without pairs"),
])
def test_cli_errors_before_the_model_loads(argv, msg, tmp_path, monkeypatch, capsys):
    import medinterp.models
    from medinterp.cli import main

    def no_load(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(medinterp.models, "load_model", no_load)
    with pytest.raises(SystemExit) as e:
        main(["validate", *argv, "--out", str(tmp_path / "v")])
    assert e.value.code == 2
    assert msg in capsys.readouterr().err


def test_cli_band_beyond_the_model(mech, tmp_path, monkeypatch, capsys):
    import medinterp.models
    from medinterp.cli import main

    monkeypatch.setattr(medinterp.models, "load_model", lambda spec, **k: mech)
    with pytest.raises(SystemExit) as e:
        main(["validate", "--family", "drugs", "--band", "5-12", "--out", str(tmp_path / "v"), "--model", "tiny"])
    assert e.value.code == 2
    assert "--band 5-12: the model has blocks 0-9" in capsys.readouterr().err
