import subprocess
import sys

import pytest
from typer.testing import CliRunner

from medinterp.cli import app, main

runner = CliRunner()


def _commands():
    import typer.main

    group = typer.main.get_command(app)
    return sorted(group.commands)


def test_core_commands_registered():
    names = _commands()
    for expected in ("models", "activations"):
        assert expected in names


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_help_describes_the_curves_the_map_draws():
    """The saliency help names the curve the map reads (the block's share of sum |grad*w|), not the 0.1 metric."""
    top = runner.invoke(app, ["--help"], terminal_width=200).output
    sal = " ".join(runner.invoke(app, ["saliency", "--help"], terminal_width=200).output.split())
    assert "mean |grad| per block" not in top + sal
    assert "share of sum |grad*w|" in sal


def test_models_lists_builtins():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "gemma-3-270m" in result.output and "smollm2-135m" in result.output


def test_bad_prompts_file_is_one_readable_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "medinterp", "activations", "--prompts", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "missing.txt: no such prompts file" in out.stderr
    assert "Traceback" not in out.stderr


def test_activations_cli_end_to_end_on_tiny(tiny, tmp_path, monkeypatch):
    import medinterp.models
    from medinterp.results import Result

    monkeypatch.setattr(medinterp.models, "load_model", lambda spec, **k: tiny)
    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt\nA man with chest pain\nA woman with fever\n")
    with pytest.raises(SystemExit) as e:
        main(["activations", "--prompts", str(prompts), "--out", str(tmp_path / "acts"), "--model", "tiny"])
    assert e.value.code == 0
    acts = Result.load(tmp_path / "acts")
    assert acts.values.shape == (tiny.cfg.n_layers + 1, 2, tiny.cfg.d_model)


def test_csv_prompts_error_names_line(tmp_path):
    from medinterp.cli.models import read_prompts_file
    from medinterp.errors import MedinterpError

    f = tmp_path / "p.csv"
    f.write_text("prompt\nfirst\n\"\"\n")
    with pytest.raises(MedinterpError, match="line 3: empty prompt"):
        read_prompts_file(f)
    g = tmp_path / "p2.csv"
    g.write_text("question\nfirst\n")
    with pytest.raises(MedinterpError, match="column named 'prompt'"):
        read_prompts_file(g)


# ---------------------------------------------------------------- map: validate first, Ctrl-C says how to resume
def _no_model(monkeypatch):
    import medinterp.models

    def boom(spec, **k):
        raise AssertionError("the model must not load before the arguments are checked")

    monkeypatch.setattr(medinterp.models, "load_model", boom)


@pytest.mark.parametrize("args, message", [
    (["--percentile", "150"], "percentile must be in [0, 100], got 150"),
    (["--sigma", "-1"], "sigma must be >= 0"),
    (["--techniques", "geometry,umap"], "unknown technique(s) ['umap']"),
    (["--concepts", "drugz"], "unknown concept family 'drugz'"),
    (["--out", "report.txt"], "expected a file name ending in .html"),
])
def test_map_rejects_bad_arguments_before_the_model_loads(args, message, monkeypatch, tmp_path, capsys):
    _no_model(monkeypatch)
    argv = ["map", "--out", str(tmp_path / "r.html"), "--no-progress"] + args
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_map_interrupt_says_how_many_jobs_are_saved_and_how_to_resume(monkeypatch, tmp_path, capsys, tiny):
    import dataclasses

    import numpy as np

    import medinterp.models
    from medinterp.techniques import REGISTRY
    from medinterp.techniques.base import Technique, TechniqueResult

    @dataclasses.dataclass
    class Toy(TechniqueResult):
        kind = "test_cli_toy"
        curve: np.ndarray = None

        def layer_curve(self):
            return self.curve

        def layer_curve_ci(self):
            return self.curve, self.curve

        @property
        def curve_label(self):
            return "toy"

    def run(model, fam, *, progress=True, **kw):
        if fam.name == "drugs":
            raise KeyboardInterrupt
        return Toy(concept_set=fam.name, curve=np.arange(float(model.cfg.n_layers)))

    monkeypatch.setitem(REGISTRY, "toy_cli", Technique("toy_cli", run))
    monkeypatch.setattr(medinterp.models, "load_model", lambda spec, **k: tiny)
    with pytest.raises(SystemExit) as e:
        main(["map", "--out", str(tmp_path / "r.html"), "--concepts", "age,drugs", "--techniques", "toy_cli",
              "--no-progress", "--no-controls", "--rule", "paper"])
    assert e.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted: 1 of 2 jobs are saved in" in err and "run the same command again to resume" in err
    assert (tmp_path / "r.work" / "age" / "toy_cli" / "manifest.json").is_file()


def test_cli_imports_no_private_name():
    import ast
    from pathlib import Path

    import medinterp.cli

    bad = []
    for f in Path(medinterp.cli.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medinterp"):
                if node.module.startswith("medinterp.cli"):
                    continue
                bad += [f"{f.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert bad == []


def test_patch_rejects_contradictory_pairs_before_the_model_loads(monkeypatch, tmp_path, capsys):
    _no_model(monkeypatch)
    f = tmp_path / "dup.yaml"
    f.write_text("name: dup\nkind: pairs\npairs:\n"
                 "  - {clean: The patient has angina, corrupted: The patient has asthma, clean_answer: ' aspirin', "
                 "corrupted_answer: ' insulin'}\n"
                 "  - {clean: The patient has angina, corrupted: The patient has asthma, clean_answer: ' insulin', "
                 "corrupted_answer: ' aspirin'}\n"
                 "  - {clean: The patient has fever, corrupted: The patient has cough, clean_answer: ' aspirin', "
                 "corrupted_answer: ' insulin'}\n")
    with pytest.raises(SystemExit) as e:
        main(["patch", "--pairs", str(f), "--out", str(tmp_path / "o"), "--no-progress"])
    assert e.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "contradictory answers" in err and "line 4 and line 5" in err and "--drop-bad" in err and "Traceback" not in err


def test_map_whose_model_fails_to_load_leaves_no_empty_work_dir(monkeypatch, tmp_path, capsys):
    import medinterp.models
    from medinterp.errors import MedinterpError

    def fail(spec, **k):
        raise MedinterpError(f"{spec}: no such model")

    monkeypatch.setattr(medinterp.models, "load_model", fail)
    with pytest.raises(SystemExit) as e:
        main(["map", "--model", "nowhere", "--quick", "--out", str(tmp_path / "r.html"), "--no-progress"])
    assert e.value.code == 2 and "nowhere: no such model" in capsys.readouterr().err
    assert not (tmp_path / "r.work").exists()
    (tmp_path / "kept.work").mkdir()  # a work dir the user made (or an earlier run left) is never removed
    with pytest.raises(SystemExit):
        main(["map", "--model", "nowhere", "--quick", "--out", str(tmp_path / "kept.html"), "--no-progress"])
    assert (tmp_path / "kept.work").is_dir()
