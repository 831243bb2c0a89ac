"""Data checks (medinterp.concepts.checks): each check fails on a file built to fail it, passes on shipped data."""

from __future__ import annotations

import numpy as np
import pytest

from medinterp.concepts import SHIPPED, ConceptSet, PairSet, PromptPair, load_concepts
from medinterp.concepts.checks import (
    answer_leaks,
    check_set,
    check_sets,
    duplicates,
    lexical_baseline,
    template_misfits,
)


def _cs(items, templates, labels=("cls",), continuous=(), answers=None, item_key="x"):
    return ConceptSet(name="t", version="1", description="", items=items, item_key=item_key,
                      categorical_labels=list(labels), continuous_labels=list(continuous), templates=templates,
                      template_answers=answers or [])


def _write(tmp_path, text, name="f.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ----------------------------------------------------------------------------- leaks


def test_answer_leak_found_by_word_and_by_stem(tmp_path):
    f = _write(tmp_path, 'name: l\nversion: "1"\nkind: pairs\npairs:\n'
                         '  - {clean: "A patient with a heart murmur has a problem with the", corrupted: "A patient with '
                         'jaundice has a problem with the", clean_answer: " heart", corrupted_answer: " liver"}\n'
                         '  - {clean: "A patient with joint swelling has a problem with the", corrupted: "A patient with '
                         'red painful eye has a problem with the", clean_answer: " joints", corrupted_answer: " eyes"}\n'
                         '  - {clean: "A patient with wheeze has a problem with the", corrupted: "A patient with hives has '
                         'a problem with the", clean_answer: " lungs", corrupted_answer: " skin"}\n')
    leaks = answer_leaks(load_concepts(f))
    assert len(leaks) == 3
    assert "line 5" in leaks[0] and "' heart'" in leaks[0]
    assert any("'join'" in x for x in leaks) and any("' eyes'" in x and "'eye'" in x for x in leaks)
    assert not any("line 7" in x for x in leaks)  # wheeze -> lungs does not leak


def test_answer_leak_in_a_concept_template_answer():
    s = _cs([{"x": "metformin", "cls": "a", "ans": " diabetes"}, {"x": "diabetic insulin", "cls": "b", "ans": " diabetes"}],
            ["The drug {x} is used for"], answers=["ans"])
    s.extra_columns = ["ans"]
    leaks = answer_leaks(s)
    assert len(leaks) == 1 and "diabetic insulin" in leaks[0]


# ----------------------------------------------------------------------------- template fit


def test_template_misfits_each_rule():
    items = [{"x": "asthma", "cls": "a"}, {"x": "cough", "cls": "a"}, {"x": "the flu", "cls": "b"},
             {"x": "rash.", "cls": "b"}, {"x": "", "cls": "b"}]
    s = _cs(items, ["He has a {x}", "She has an {x}", "Seen for the {x}.", "{x} today"])
    out = template_misfits(s)
    joined = "\n".join(out)
    assert "'asthma', template 0" in joined and "should be 'an'" in joined
    assert "'cough', template 1" in joined and "should be 'a'" in joined
    assert "doubled word 'the'" in joined
    assert "'rash.', template 2" in joined and "doubled punctuation" in joined
    assert "empty placeholder '{x}'" in joined
    assert "lowercase item" in joined
    ok = _cs([{"x": "Asthma", "cls": "a"}, {"x": "Cough", "cls": "b"}], ["Diagnosis: {x}", "{x} was noted."])
    assert template_misfits(ok) == []


def test_article_rule_for_numbers():
    s = _cs([{"x": "18", "cls": "a"}, {"x": "20", "cls": "b"}, {"x": "8", "cls": "a"}], ["a {x}-year-old"])
    bad = template_misfits(s)
    assert len(bad) == 2 and "'18'" in bad[0] and "'8'" in bad[1]


# ----------------------------------------------------------------------------- duplicates


def test_duplicates_in_concepts_and_pairs():
    s = _cs([{"x": "Asthma", "cls": "a"}, {"x": "the  asthma", "cls": "a"}, {"x": "cough", "cls": "b"}], ["Dx: {x}"])
    d = duplicates(s)
    assert len(d) == 1 and "Asthma" in d[0]
    p = PromptPair("A b", "C d", " x", " y", line=3)
    q = PromptPair("a  B", "c d", " x", " y", line=9)
    d = duplicates(PairSet("p", "1", "", [p, q]))
    assert len(d) == 1 and "line 9" in d[0] and "line 3" in d[0]
    # the same item under another value of a templated label (age x sex) is not a duplicate
    age = load_concepts("age")
    assert duplicates(age) == []


# ----------------------------------------------------------------------------- lexical baseline


def test_lexical_baseline_finds_a_planted_spelling_cue_and_not_noise():
    rng = np.random.default_rng(0)
    letters = list("bcdfghjklmnprstvz")

    def word():
        return "".join(rng.choice(letters) + rng.choice(list("aeiou")) for _ in range(3))

    planted = [{"x": word() + ("olol" if i % 2 else "pril"), "cls": "beta" if i % 2 else "ace"} for i in range(40)]
    noise = [{"x": word(), "cls": rng.choice(["a", "b"])} for i in range(40)]
    t = ["The drug {x} is", "Take {x} daily."]
    hi = lexical_baseline(_cs(planted, t), "cls")
    lo = lexical_baseline(_cs(noise, t), "cls")
    assert hi["probe_bacc"] > 0.9 and hi["silhouette"] > 0.05
    assert lo["probe_bacc"] < 0.75 and abs(lo["silhouette"]) < 0.05
    assert hi["chance"] == 0.5 and hi["n_classes"] == 2


def test_lexical_baseline_continuous_and_ungrouped():
    level = ["alpha", "bravo", "charlie", "delta", "echo"]
    words = "ab cd ef gh ij kl mn op qr st uv wx yz ba dc fe hg ji lk nm".split()
    items = [{"x": f"{level[i % 5]} {w}", "cls": "ungrouped" if i < 5 else "a" if i % 2 else "b", "k": i % 5}
             for i, w in enumerate(words)]
    s = _cs(items, ["Note: {x}."], continuous=["k"])
    cont = lexical_baseline(s, "k")
    assert cont["spearman"] > 0.8 and cont["n_items"] == 20
    rng = np.random.default_rng(1)
    noise = [{"x": w, "cls": "a" if i % 2 else "b", "k": int(rng.integers(0, 5))} for i, w in enumerate(words)]
    # pure noise: no positive correlation (held-out CV predictions of noise lean negative, never positive)
    assert lexical_baseline(_cs(noise, ["Note: {x}."], continuous=["k"]), "k")["spearman"] < 0.3
    cat = lexical_baseline(s, "cls")
    assert cat["n_items"] == 15  # the ungrouped rows are left out


# ----------------------------------------------------------------------------- whole reports


def test_report_flags_a_bad_user_file_and_renders(tmp_path, tiny):
    f = _write(tmp_path, 'name: bad\nversion: "1"\nitem: x\nlabels:\n  cls: categorical\n'
                         'templates:\n  - "He has a {x}"\n  - text: "The {x} affects the"\n    answer: organ\n'
                         'columns: [organ]\nitems:\n  - {x: asthma, cls: a, organ: " lungs"}\n'
                         '  - {x: heart murmur, cls: b, organ: " heart"}\n  - {x: cough, cls: a, organ: " lungs"}\n'
                         '  - {x: palpitations, cls: b, organ: " heart"}\n')
    rep = check_set(str(f), [tiny])
    assert not rep.ok and len(rep.leaks) == 1 and len(rep.misfits) == 1
    assert rep.n_templates == 2 and rep.classes == {"cls": 2} and "cls" in rep.lexical
    text = rep.render()
    assert "bad: 4 items, 2 templates" in text and "answer leaks: 1" in text and "[PROBLEMS]" in text
    assert "tokens per item" in text


def test_pair_report_counts_invalid_pairs(tiny):
    ps = PairSet("p", "1", "", [PromptPair("The patient has angina", "The patient has a rash now", " a", " b", line=1)])
    rep = check_set(ps, [tiny])
    assert rep.n_invalid == 1 and not rep.ok and "unequal length" in rep.render(verbose=True)


def test_every_shipped_set_passes_the_model_free_checks():
    rep = check_sets(SHIPPED, lexical=False)
    bad = {s.name: (s.leaks[:2], s.misfits[:2], s.duplicates[:2]) for s in rep.sets if not s.ok}
    assert not bad, bad
    assert rep.ok and "all sets pass" in rep.render()


@pytest.mark.parametrize("name", ["drugs", "progression", "symptoms_control"])
def test_shipped_lexical_baselines_are_computed(name):
    rep = check_set(name)
    assert rep.lexical and all(np.isfinite(list(d.values())).all() for d in rep.lexical.values())


# ----------------------------------------------------------------------------- balance table


def test_balance_rows_smd_by_hand():
    from medinterp.concepts.checks import balance_rows

    a, b = np.array([1.0, 2.0, 4.0, 5.0]), np.array([2.0, 2.0, 3.0])
    ref = (a.mean() - b.mean()) / np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    r = balance_rows({"x": a}, {"x": b}, ["x"])[0]
    assert r["smd"] == pytest.approx(ref) and r["medicine"] == 3.0 and r["control"] == pytest.approx(7 / 3)
    assert r["flag"] == (abs(ref) > 0.25)
    same = balance_rows({"x": a}, {"x": a + 0.01}, ["x"])[0]
    assert abs(same["smd"]) < 0.01 and not same["flag"]
    assert balance_rows({"x": a}, {"x": np.array([])}, ["x"])[0]["flag"]  # no control: flagged, not passed


_MED = [("The drug chest is used for", "The drug cough is used for", " angina", " pneumonia"),
        ("The drug fever is used for", "The drug wheezing is used for", " pneumonia", " asthma"),
        ("The drug chest is used for", "The drug fever is used for", " angina", " asthma")]


def test_pair_balance_same_set_is_balanced_longer_frame_is_flagged(tiny):
    from medinterp.concepts.checks import pair_balance

    med = PairSet.from_pairs(_MED)
    t = pair_balance(tiny, "drugs", known_only=False, medicine=med, control=med)
    assert t.ok and all(r["smd"] == 0 for r in t.rows) and t.medicine.n_valid == 3
    # the same subjects in a longer frame: tokens after the subject and prompt length differ, nothing else
    longer = PairSet.from_pairs([(c.replace("used for", "mostly used by people for"),
                                  x.replace("used for", "mostly used by people for"), a, b) for c, x, a, b in _MED])
    t = pair_balance(tiny, "drugs", known_only=False, medicine=med, control=longer)
    # (the intact LD moves too on a random model; the subjects and answers are the same)
    assert {"tokens_after_subject", "prompt_tokens"} <= set(t.flagged)
    assert "subject_tokens" not in t.flagged and "answer_prior" not in t.flagged
    row = {r["covariate"]: r for r in t.rows}
    assert row["tokens_after_subject"]["control"] - row["tokens_after_subject"]["medicine"] == pytest.approx(
        len(tiny.to_tokens(" mostly used by people for", prepend_bos=False)[0]) - len(tiny.to_tokens(" used for", prepend_bos=False)[0]))
    assert "not balanced" in t.render() and "|SMD| > 0.25" in t.render()
    with pytest.raises(Exception, match="unknown family"):
        pair_balance(tiny, "nope")


def test_cli_check_family_prints_the_balance_table(tiny, monkeypatch):
    from typer.testing import CliRunner

    import medinterp.cli._common as common
    from medinterp.cli import app

    monkeypatch.setattr(common, "load_model", lambda spec, **kw: tiny)
    r = CliRunner().invoke(app, ["concepts", "check", "-f", "drugs", "--all-pairs"])
    assert r.exit_code == 0, r.output
    assert "balance of drugs" in r.output and "drug_pairs_control" in r.output
    for cov in ("subject_tokens", "tokens_after_subject", "prompt_tokens", "answer_prior", "intact_ld"):
        assert cov in r.output
    from medinterp.concepts.checks import pair_balance

    t = pair_balance(tiny, "drugs", known_only=False)
    for row in t.rows:  # the printed SMD is the function's
        line = next(ln for ln in r.output.splitlines() if ln.strip().startswith(row["covariate"] + " "))
        assert f"{row['smd']:.2f}" in line.replace("inf", "inf")
    strict = CliRunner().invoke(app, ["concepts", "check", "-f", "drugs", "--all-pairs", "--strict"])
    assert strict.exit_code == (0 if t.ok else 1)
    bad = CliRunner().invoke(app, ["concepts", "check", "-f", "nope"])
    assert bad.exit_code != 0
