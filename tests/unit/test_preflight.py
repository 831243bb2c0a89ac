"""Issue 24 item 6: every map, plan, check and lesion option is checked before the model loads or any work
starts, and bad input is one ``error:`` line (exit code 2), never a traceback."""

from __future__ import annotations

import pytest

from medinterp.cli import main
from medinterp.errors import MedinterpError


def _no_model(monkeypatch):
    import medinterp.models

    def boom(spec, **k):
        raise AssertionError("the model must not load before the arguments are checked")

    monkeypatch.setattr(medinterp.models, "load_model", boom)


def _one_error_line(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err and err.startswith("error: "), err
    assert len(err.strip().splitlines()) == 1, err
    return err


def _ok(argv) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code in (0, None)


# ---------------------------------------------------------------- map
def test_map_options_fail_before_the_model_loads(monkeypatch, tmp_path, capsys):
    _no_model(monkeypatch)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    out = ["--out", str(tmp_path / "r.html"), "--no-progress"]
    assert "--n-perm 0: expected a positive number" in _one_error_line(["map", *out, "--n-perm", "0"], capsys)
    err = _one_error_line(["map", "--out", str(blocker / "r.html"), "--no-progress"], capsys)
    assert "is a file, so nothing can be written under it" in err
    err = _one_error_line(["map", *out, "--work-dir", str(blocker / "w")], capsys)
    assert "--work-dir" in err and "is a file" in err
    assert "--backend 'banana': expected one of auto, hooked, bridge" in _one_error_line(
        ["--backend", "banana", "map", *out], capsys)
    assert "--dtype 'int3'" in _one_error_line(["--dtype", "int3", "map", *out], capsys)
    assert not (tmp_path / "r.work").exists()


def test_knowledge_map_rejects_a_malformed_user_pair_file_before_any_job(tiny, tmp_path, monkeypatch):
    from medinterp.maps import knowledge_map
    from medinterp.techniques import REGISTRY
    from medinterp.techniques.base import Technique

    def run(model, fam, **kw):
        raise AssertionError("no job may run before the family inputs are checked")

    monkeypatch.setitem(REGISTRY, "toy_preflight", Technique("toy_preflight", run, needs=("pairs",)))
    f = tmp_path / "mine.yaml"
    f.write_text("name: mine\nkind: pairs\npairs:\n"
                 "  - {clean: a, corrupted: b, clean_answer: ' c', corrupted_answer: ' d', colour: red}\n")
    with pytest.raises(MedinterpError, match=r"line 4, column 'colour': unknown column"):
        knowledge_map(tiny, concepts={"mine": {"pairs": str(f)}}, techniques=["toy_preflight"], controls=False,
                      rule="paper", progress=False, out_dir=tmp_path / "w")
    assert not list((tmp_path / "w").glob("*/*/job.json"))


def test_knowledge_map_rejects_zero_permutations(tiny):
    from medinterp.maps import knowledge_map

    with pytest.raises(MedinterpError, match="n_perm, n_boot and n_resamples must be >= 1"):
        knowledge_map(tiny, concepts=["drugs"], techniques=["geometry"], n_perm=0, progress=False)


# ---------------------------------------------------------------- plan
@pytest.mark.parametrize("args, message", [
    (["--gpus", "0x80GB"], "--gpus '0x80GB': expected at least 1 device"),
    (["--gpus", "4x0GB"], "--gpus '4x0GB': expected at least 1 device"),
    (["--batch-size", "0"], "--batch-size 0: expected a positive whole number"),
    (["--seq-len", "-3"], "--seq-len -3: expected a positive whole number"),
    (["--families", "0"], "--families 0: expected a positive whole number"),
    (["--backend", "banana"], "--backend 'banana': expected hooked or bridge"),
    (["--dtype", "int3"], "--dtype 'int3': expected one of"),
])
def test_plan_rejects_bad_sizes_in_one_line(args, message, capsys):
    err = _one_error_line(["plan", "--model", "gemma-3-27b", *args], capsys)
    assert message in err


def test_plan_still_plans_good_input(capsys):
    _ok(["plan", "--model", "gemma-3-27b", "--gpus", "2x80GB", "--json"])
    assert '"gpus": "2x80GB"' in capsys.readouterr().out


# ---------------------------------------------------------------- concepts check
def test_check_tokenizer_folder_that_is_no_tokenizer(monkeypatch, tmp_path, capsys):
    _no_model(monkeypatch)
    (tmp_path / "notes.txt").write_text("not a tokenizer")
    err = _one_error_line(["concepts", "check", "--tokenizer", str(tmp_path), "--set", "drugs"], capsys)
    assert f"--tokenizer {tmp_path}: not a Hugging Face tokenizer folder" in err
    err = _one_error_line(["concepts", "check", "--tokenizer", str(tmp_path / "notes.txt"), "--set", "drugs"],
                          capsys)
    assert "no such folder" in err


# ---------------------------------------------------------------- lesion
def test_lesion_cli_takes_the_librarys_block_mean_mode(tiny, monkeypatch, tmp_path, capsys):
    import medinterp.models
    from medinterp.results import Result

    monkeypatch.setattr(medinterp.models, "load_model", lambda spec, **k: tiny)
    _ok(["lesion", "--mode", "block_mean", "-c", "drugs", "-o", str(tmp_path / "les"), "-n", "4",
          "--continuations", "0", "--n-boot", "10", "--no-progress"])
    res = Result.load(tmp_path / "les")
    assert list(res.modes) == ["block_mean"]
    err = _one_error_line(["lesion", "--modes", "blockmean", "-c", "drugs", "-o", str(tmp_path / "x")], capsys)
    assert "block_mean" in err


# ---------------------------------------------------------------- size cap on concept and pair files
def _pairs_file(path, n):
    rows = "".join(f"  - {{clean: a{i}, corrupted: b{i}, clean_answer: ' c', corrupted_answer: ' d'}}\n"
                   for i in range(n))
    path.write_text("name: many\nkind: pairs\npairs:\n" + rows)
    return path


def test_row_cap_names_the_cap_and_the_override(tmp_path, monkeypatch):
    from medinterp.concepts import load_concepts

    f = _pairs_file(tmp_path / "many.yaml", 12)
    with pytest.raises(MedinterpError, match=r"12 rows .*over the cap of 10 rows.*max_rows=12.*MEDINTERP_MAX_ROWS=12"):
        load_concepts(f, max_rows=10)
    assert len(load_concepts(f, max_rows=12)) == 12
    monkeypatch.setenv("MEDINTERP_MAX_ROWS", "5")
    with pytest.raises(MedinterpError, match="over the cap of 5 rows"):
        load_concepts(f)
    monkeypatch.setenv("MEDINTERP_MAX_ROWS", "many")
    with pytest.raises(MedinterpError, match="MEDINTERP_MAX_ROWS='many': expected a positive whole number"):
        load_concepts(f)
    monkeypatch.delenv("MEDINTERP_MAX_ROWS")
    assert len(load_concepts("drugs")) > 100  # the shipped sets stay under the default cap


def test_default_cap_stops_a_huge_concept_file(tmp_path, capsys):
    from medinterp.concepts._files import MAX_ROWS

    f = _pairs_file(tmp_path / "huge.yaml", MAX_ROWS + 1)
    err = _one_error_line(["concepts", "show", str(f)], capsys)
    assert f"over the cap of {MAX_ROWS:,} rows" in err


# ---------------------------------------------------------------- model specs
@pytest.mark.parametrize("spec, message", [
    (":random", "expected a model spec before ':random', e.g. 'gemma-3-270m:random'"),
    ("", "expected a model spec (see `medinterp models`)"),
])
def test_an_empty_model_spec_names_what_is_missing(spec, message):
    import medinterp as mi

    with pytest.raises(MedinterpError) as e:
        mi.load_model(spec)
    assert message in str(e.value) and "'.'" not in str(e.value) and ".:" not in str(e.value)


# ---------------------------------------------------------------- contradictory duplicate pairs
def test_pairs_with_the_same_prompts_and_other_answers_are_all_dropped(tiny, tmp_path, monkeypatch, capsys):
    from medinterp.concepts import load_concepts

    f = tmp_path / "dup.yaml"
    f.write_text("name: dup\nkind: pairs\npairs:\n"
                 "  - {clean: The patient has angina, corrupted: The patient has asthma, "
                 "clean_answer: ' aspirin', corrupted_answer: ' insulin'}\n"
                 "  - {clean: The patient has angina, corrupted: The patient has asthma, "
                 "clean_answer: ' insulin', corrupted_answer: ' aspirin'}\n"
                 "  - {clean: The patient has fever, corrupted: The patient has cough, "
                 "clean_answer: ' aspirin', corrupted_answer: ' insulin'}\n")
    chk = load_concepts(f).check(tiny)
    reasons = {p.line: r for p, r in chk.dropped}
    assert sorted(reasons) == [4, 5] and [p.line for p in chk.valid] == [6]
    assert "contradictory answers: the same clean and corrupted prompts as line 5" in reasons[4]
    assert "as line 4 (answers ' aspirin' / ' insulin')" in reasons[5]
    # patch (default --strict) stops on them instead of averaging opposite targets
    import medinterp.models

    monkeypatch.setattr(medinterp.models, "load_model", lambda spec, **k: tiny)
    with pytest.raises(SystemExit) as e:
        main(["patch", "-p", str(f), "-o", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "contradictory answers" in err and "Traceback" not in err


# ---------------------------------------------------------------- the technique commands, before the model loads
@pytest.mark.parametrize("argv, message", [
    (["geometry", "-c", "age", "--positions", "middle"], "--positions 'middle': expected one of last, span_mean"),
    (["geometry", "-c", "age", "--min-dist", "-1"], "expected numbers >= 0"),
    (["geometry", "-c", "age", "--metric", "banana"], "--metric 'banana': not a distance sklearn / UMAP know"),
    (["geometry", "-c", "age", "--pca", "-5"], "expected numbers >= 0"),
    (["lesion", "-c", "drugs", "--device", "banana"], "--device 'banana': expected a torch device"),
    (["saliency", "-c", "drugs", "-n", "-2"], "--max-prompts -2: expected a number >= 0 (0 = all)"),
    (["activations", "--prompts", "{p}", "--batch-size", "0"], "--batch-size 0: expected a positive number"),
    (["activations", "--prompts", "{p}", "--positions", "span"], "plain prompts have no concept span"),
])
def test_technique_commands_check_options_before_the_model_loads(argv, message, monkeypatch, tmp_path, capsys):
    _no_model(monkeypatch)
    prompts = tmp_path / "p.txt"
    prompts.write_text("The patient has angina\n")
    argv = [a.replace("{p}", str(prompts)) for a in argv] + ["--out", str(tmp_path / "out")]
    assert message in _one_error_line(argv, capsys)
    assert not (tmp_path / "out").exists()
