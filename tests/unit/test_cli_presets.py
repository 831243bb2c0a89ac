"""The per-technique commands take the map's presets and say what they will run before the model loads
(issue #24 item 5)."""

from __future__ import annotations

import pytest

from medinterp.cli import main


def _run(argv, capsys, code=0) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    assert (e.value.code or 0) == code, out[-2000:] + err[-2000:]
    return out + err


@pytest.fixture
def tiny_loader(monkeypatch):
    import medinterp.models
    from medinterp.testing import tiny_model

    calls = []

    def load(spec, **kw):
        calls.append(spec)
        return tiny_model(n_layers=3, d_model=64, n_heads=4, d_mlp=128, seed=0)

    monkeypatch.setattr(medinterp.models, "load_model", load)
    return calls


def test_saliency_default_is_the_quick_preset_announced_before_the_model_loads(tiny_loader, tmp_path, capsys):
    from medinterp.results import Result
    from medinterp.techniques import REGISTRY

    out = _run(["saliency", "-c", "drugs", "-o", str(tmp_path / "s"), "--no-progress"], capsys)
    quick = REGISTRY["saliency"].presets["quick"]
    n = quick["max_prompts"]
    assert f"saliency on drugs: {n} of 760 prompts (--preset quick); rough estimate" in out
    assert "s per prompt" in out and "rough" in out
    assert out.index("rough estimate") < out.index("loading model")
    res = Result.load(tmp_path / "s")
    assert res.n_prompts == n and res.params["include_embed"] is False


def test_lesion_full_preset_with_an_explicit_override(tiny_loader, tmp_path, capsys):
    from medinterp.results import Result

    out = _run(["lesion", "-c", "drugs", "-o", str(tmp_path / "l"), "--preset", "full", "-n", "3", "--n-boot", "10",
                "--no-progress"], capsys)
    assert "lesion on drugs: 3 of 760 prompts (--preset full)" in out and "× 1 units per prompt" not in out
    res = Result.load(tmp_path / "l")
    assert list(res.modes) == ["skip"] and res.n_prompts == 3


def test_unknown_preset_is_refused_before_the_model_loads(tiny_loader, tmp_path, capsys):
    out = _run(["geometry", "-c", "age", "-o", str(tmp_path / "g"), "--preset", "fast"], capsys, code=2)
    assert "--preset 'fast': expected one of quick, full, none" in out and not tiny_loader


def test_patch_quick_keeps_the_quick_maps_pair_count(tiny_loader, tmp_path, capsys):
    out = _run(["patch", "-p", "drug_pairs", "-o", str(tmp_path / "p"), "--layers", "0", "--drop-bad",
                "--no-progress"], capsys)
    assert "patching of resid_pre on drug_pairs: 10 of" in out and "pairs (--preset quick)" in out
