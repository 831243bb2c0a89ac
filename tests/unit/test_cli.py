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
