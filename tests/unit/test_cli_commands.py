"""Issue 24 item 1: every command works end to end from the command line, on the tiny random-init model
(``load_model`` is patched to return it) and small inputs. ``compare`` first, on two maps that ``map``
itself makes; then each technique command writes a result that loads back.

Each test runs :func:`medinterp.cli.main` as the console script does (errors as one line, exit codes)."""

from __future__ import annotations

import pytest

from medinterp.cli import main


def _run(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    assert e.value.code in (0, None), out[-2000:] + err[-2000:]
    assert "Traceback" not in err
    return out


@pytest.fixture
def tiny_models(monkeypatch):
    """``load_model(spec)`` -> a tiny random-init model, one per spec (so two specs are two different models)."""
    import medinterp.models
    from medinterp.testing import tiny_model

    made: dict[str, object] = {}

    def load(spec, **kw):
        if spec not in made:
            made[spec] = tiny_model(n_layers=3 + len(made), d_model=64, n_heads=4, d_mlp=128, seed=len(made))
        return made[spec]

    monkeypatch.setattr(medinterp.models, "load_model", load)
    return made


# ---------------------------------------------------------------- map, then compare on the maps it made
def test_map_then_compare_end_to_end(tiny_models, tmp_path, capsys):
    maps = []
    for spec in ("tiny-a", "tiny-b"):
        out = tmp_path / f"{spec}.html"
        text = _run(["map", "--model", spec, "--out", str(out), "--concepts", "age", "--techniques",
                     "lesion,patching", "--quick", "--no-controls", "--rule", "paper", "--no-progress"], capsys)
        assert out.is_file() and (tmp_path / f"{spec}.map").is_dir() and f"report: {out}" in text
        maps.append(tmp_path / f"{spec}.map")
    # a second run on the same work dir says it resumes and recomputes nothing
    text = _run(["map", "--model", "tiny-a", "--out", str(tmp_path / "tiny-a.html"), "--concepts", "age",
                 "--techniques", "lesion,patching", "--quick", "--no-controls", "--rule", "paper", "--no-progress"],
                capsys)
    assert "resuming: 2 saved jobs" in text
    cmp = tmp_path / "cmp.html"
    text = _run(["compare", *map(str, maps), "--names", "A,B", "--out", str(cmp)], capsys)
    assert cmp.is_file() and "comparison of 2 maps" in text and "fragile" in text
    from medinterp.maps import load_maps

    assert [km.n_layers for km in load_maps(maps)] == [3, 4]


# ---------------------------------------------------------------- one technique command each
def test_geometry_command(tiny_models, tmp_path, capsys):
    from medinterp.results import Result

    out = tmp_path / "geo"
    _run(["geometry", "-c", "age", "-o", str(out), "--no-embed", "--n-perm", "5", "--n-boot", "5", "--n-epochs", "20",
          "--pca", "10", "--no-progress"], capsys)
    assert (out / "summary.json").is_file()
    res = Result.load(next(p.parent for p in out.glob("*/manifest.json")))
    assert res.concept_set == "age"


def test_lesion_command(tiny_models, tmp_path, capsys):
    from medinterp.results import Result

    out = tmp_path / "les"
    _run(["lesion", "-c", "drugs", "-o", str(out), "--modes", "skip,mlp_zero", "-n", "4", "--continuations", "1",
          "--max-new-tokens", "2", "--n-boot", "10", "--no-progress"], capsys)
    assert list(Result.load(out).modes) == ["skip", "mlp_zero"] and (out / "lesion.html").is_file()


def test_saliency_command(tiny_models, tmp_path, capsys):
    from medinterp.results import Result

    out = tmp_path / "sal"
    _run(["saliency", "-c", "drugs", "-o", str(out), "-n", "3", "--no-embed", "--n-boot", "10", "--no-progress"],
         capsys)
    assert Result.load(out).concept_set == "drugs" and (out / "saliency.html").is_file()


def test_patch_command(tiny_models, tmp_path, capsys):
    from medinterp.results import Result

    out = tmp_path / "patch"
    _run(["patch", "-p", "drug_pairs", "-o", str(out), "--layers", "0,2", "--drop-bad", "--no-progress"], capsys)
    assert (out / "heatmap.html").is_file() and Result.load(out) is not None


def test_activations_models_plan_and_concepts_commands(tiny_models, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("The patient has angina\nThe drug aspirin is used for\n")
    assert "saved" in _run(["activations", "--prompts", str(prompts), "--out", str(tmp_path / "acts")], capsys)
    assert "gemma-3-270m" in _run(["models"], capsys)
    assert '"model"' in _run(["plan", "--model", "gemma-3-27b", "--json"], capsys)
    assert "drugs" in _run(["concepts", "list"], capsys)
    assert "items" in _run(["concepts", "show", "age", "-n", "2"], capsys)
    assert "Data checks with model" in _run(["concepts", "check", "-m", "tiny-a", "--set", "age"], capsys)


def test_every_command_has_an_end_to_end_test_here_or_named_elsewhere():
    """A new command must get a test: this file's tests, or one named below (a file outside this one)."""
    import typer.main

    from medinterp.cli import app

    group = typer.main.get_command(app)
    names = set(group.commands)
    here = {"map", "compare", "geometry", "lesion", "saliency", "patch", "activations", "models", "plan", "concepts"}
    elsewhere = {"validate": "tests/unit/test_validate_band.py (main(['validate', ...]))"}
    assert names - here - set(elsewhere) == set()
