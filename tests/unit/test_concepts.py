"""Concept library: shipped data shape and facts, API, validation errors, pair tokenization checks."""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import pytest

from medinterp.concepts import (
    CONCEPT_FAMILIES,
    SHIPPED,
    ConceptPrompt,
    ConceptSet,
    PairSet,
    PromptPair,
    list_concepts,
    load_concepts,
)
from medinterp.errors import ConceptFileError, MedinterpError

PAIR_SETS = ["diagnosis_pairs", "dosage", "age_pairs", "symptom_pairs", "drug_pairs", "progression_pairs"]
CONCEPT_SETS = ["age", "symptoms", "diseases", "progression", "drugs", "dosage_drugs"]
CONTROL_PAIRS = [f"{n}_control" for n in PAIR_SETS]
CONTROL_SETS = [f"{n}_control" for n in CONCEPT_SETS]
VARIANTS = ["age_words", "progression_plain"]
ALL_PAIRS = PAIR_SETS + CONTROL_PAIRS
ALL_CONCEPTS = CONCEPT_SETS + CONTROL_SETS + VARIANTS


# ----------------------------------------------------------------------------- shipped data: shape


def test_every_shipped_set_loads_with_version_and_provenance():
    assert set(ALL_PAIRS + ALL_CONCEPTS) == set(SHIPPED)
    for name in SHIPPED:
        s = load_concepts(name)
        assert s.name == name
        assert re.fullmatch(r"\d+\.\d+\.\d+", s.version), name
        assert len(s.provenance) > 40 and len(s.description) > 20, name
        assert isinstance(s, PairSet) == (name in ALL_PAIRS)


def test_list_concepts_counts_match():
    rows = {r["name"]: r for r in list_concepts()}
    assert rows["drugs"]["n"] == len(load_concepts("drugs"))
    assert rows["diagnosis_pairs"]["kind"] == "pairs"


def test_age_every_year_both_sexes_no_article_before_age():
    age = load_concepts("age")
    df = age.to_dataframe()
    assert list(df.columns)[:2] == ["age", "sex"]
    assert len(age.templates) >= 3
    for sex in ("male", "female"):
        assert sorted(df[df.sex == sex].age) == list(range(1, 101))
    assert age.continuous_labels == ["age"] and age.categorical_labels == ["sex"]
    # "a 18-year-old" / "an 18-year-old" would change the surface form exactly at the adult boundary
    for t in age.templates:
        assert not re.search(r"\b(a|an)\s+\{age\}", t, re.I), t


def test_symptoms_and_diseases_coverage():
    sym = load_concepts("symptoms").to_dataframe()
    assert len(sym) >= 60 and "system" in sym.columns
    counts = sym.system.value_counts()
    assert len(counts) >= 8 and counts.min() >= 5, counts
    dis = load_concepts("diseases").to_dataframe()
    assert len(dis) >= 60 and "specialty" in dis.columns
    counts = dis.specialty.value_counts()
    assert len(counts) >= 8 and counts.min() >= 5, counts
    assert not dis.disease.str.lower().duplicated().any()


def test_progression_stages_ordered_and_complete():
    prog = load_concepts("progression")
    df = prog.to_dataframe()
    assert {"disease", "stage"} <= set(df.columns)
    diseases = set(df.disease)
    assert len(diseases) >= 6 and {"Parkinson's disease", "COPD"} <= diseases
    for d, g in df.groupby("disease"):
        stages = list(g.stage)
        assert 8 <= len(stages) <= 10, d
        assert stages == list(range(len(stages))), f"{d}: stages must be 0..n-1 in file order, got {stages}"
        assert g.description.is_unique
    # spot-check clinical ordering where the description carries a number: FEV1 falls, eGFR falls
    for d, pat in (("COPD", r"FEV1 (\d+)%"), ("chronic kidney disease", r"eGFR (\d+)")):
        vals = [int(m.group(1)) for m in (re.search(pat, x) for x in df[df.disease == d].description) if m]
        assert len(vals) >= 5 and vals == sorted(vals, reverse=True), (d, vals)


def test_drug_labels_cross_cut():
    drugs = load_concepts("drugs")
    df = drugs.to_dataframe()
    assert len(df) >= 60 and {"specialty", "mechanism"} <= set(df.columns)
    assert not df.drug.str.lower().duplicated().any()
    spec_per_mech = df.groupby("mechanism").specialty.nunique()
    mech_per_spec = df.groupby("specialty").mechanism.nunique()
    assert (spec_per_mech >= 2).sum() >= 5, spec_per_mech[spec_per_mech >= 2]
    assert (mech_per_spec >= 2).sum() >= 8, mech_per_spec
    # the two labellings are not the same partition
    assert df.specialty.nunique() >= 8 and df.mechanism.nunique() >= 20
    for it in drugs:
        assert it["indication"].startswith(" ") and it["indication"].strip(), it["drug"]
        assert isinstance(it["keywords"], list)


def test_known_drug_facts():
    """A handful of facts a pharmacist would check first (guards against a shuffled column)."""
    by = {it["drug"]: it for it in load_concepts("drugs")}
    assert by["metformin"]["mechanism"] == "biguanide" and by["metformin"]["indication"] == " diabetes"
    assert by["timolol"]["mechanism"] == by["metoprolol"]["mechanism"] == "beta blocker"
    assert by["timolol"]["specialty"] == "ophthalmology" and by["metoprolol"]["specialty"] == "cardiology"
    assert by["levodopa"]["indication"] == " Parkinson"
    assert by["omeprazole"]["mechanism"] == "proton pump inhibitor"
    dose = {it["drug"]: it for it in load_concepts("dosage_drugs")}
    assert dose["amlodipine"]["dose_mg"] == 5 and dose["metformin"]["dose_mg"] == 500
    assert dose["clopidogrel"]["dose_mg"] == 75


def test_pair_files_columns_and_answers():
    for name in ALL_PAIRS:
        ps = load_concepts(name)
        df = ps.to_dataframe()
        assert list(df.columns[:4]) == ["clean", "corrupted", "clean_answer", "corrupted_answer"]
        assert len(ps) >= 18, name
        for p in ps:
            assert p.clean != p.corrupted and p.clean_answer != p.corrupted_answer, (name, p)
    diag = load_concepts("diagnosis_pairs")
    assert len(diag) >= 30
    specs = set(diag.to_dataframe().clean_specialty) | set(diag.to_dataframe().corrupted_specialty)
    assert len(specs) >= 8


def test_item_pairs_differ_only_in_the_item_and_agree_with_concept_sets():
    drugs = {it["drug"]: it for it in load_concepts("drugs")}
    for p in load_concepts("drug_pairs"):
        a, b = p.meta["clean_drug"], p.meta["corrupted_drug"]
        assert p.clean.replace(a, "X") == p.corrupted.replace(b, "X")
        assert p.clean_answer == drugs[a]["indication"] and p.corrupted_answer == drugs[b]["indication"]
    doses = {it["drug"]: it for it in load_concepts("dosage_drugs")}
    for p in load_concepts("dosage"):
        a, b = p.meta["clean_drug"], p.meta["corrupted_drug"]
        assert p.clean.replace(a, "X") == p.corrupted.replace(b, "X")
        assert p.clean_answer == str(doses[a]["dose_mg"])[0] == doses[a]["answer"]
        assert p.corrupted_answer == str(doses[b]["dose_mg"])[0]
        assert p.meta["clean_dose"] == f"{doses[a]['dose_mg']} mg" == doses[a]["dose"]
        assert p.meta["corrupted_dose_x10"] == doses[b]["dose_x10"] and p.meta["clean_dose_div10"] == doses[a]["dose_div10"]
    for p in load_concepts("age_pairs"):
        assert p.clean.replace(str(p.meta["clean_age"]), "X") == p.corrupted.replace(str(p.meta["corrupted_age"]), "X")
        if "Legal status" in p.clean:
            assert p.clean_answer == (" minor" if p.meta["clean_age"] < 18 else " adult")


def test_concept_families_point_at_real_sets_and_labels():
    assert set(CONCEPT_FAMILIES) == {"age", "symptoms", "diseases", "progression", "drugs", "dosage"}
    for row, fam in CONCEPT_FAMILIES.items():
        cs, ps = load_concepts(fam["concepts"]), load_concepts(fam["pairs"])
        assert isinstance(cs, ConceptSet) and isinstance(ps, PairSet), row
        assert fam["labels"] and set(fam["labels"]) <= set(cs.labels), row
    assert CONCEPT_FAMILIES["drugs"]["labels"] == ["specialty", "mechanism"]


def test_every_family_has_a_matched_control_with_the_same_label_structure():
    for row, fam in CONCEPT_FAMILIES.items():
        cs, ctl = load_concepts(fam["concepts"]), load_concepts(fam["control"])
        ps, cps = load_concepts(fam["pairs"]), load_concepts(fam["control_pairs"])
        assert isinstance(ctl, ConceptSet) and isinstance(cps, PairSet), row
        assert set(fam["control_labels"]) <= set(ctl.labels), row
        assert len(ctl.templates) == len(cs.templates), row  # the same frames, medical words swapped
        assert bool(ctl.continuous_labels) == bool(cs.continuous_labels), row
        assert len(cps) >= 18 and all(not any(w in (p.clean + p.corrupted).lower() for w in
                                             ("patient", "drug", "disease", "diagnosis", "dose")) for p in cps), row
    assert len(load_concepts("drugs_control").categorical_labels) == 2  # two cross-cutting labellings


def test_at_least_eight_templates_of_both_kinds():
    for name in ALL_CONCEPTS:
        s = load_concepts(name)
        assert len(s.templates) >= 8, name
        assert len(s.template_ends_on_item) == len(s.templates)
        assert any(s.template_ends_on_item) and not all(s.template_ends_on_item), name
        for t, e in zip(s.templates, s.template_ends_on_item):
            assert e == t.endswith("{" + s.item_key + "}"), (name, t)
    p = load_concepts("diseases").prompts(templates=[8])[0]
    assert p.ends_on_item and p.text.endswith(p.item)


def test_review_columns_on_every_row():
    for name in SHIPPED:
        s = load_concepts(name)
        if isinstance(s, PairSet):
            assert {"source", "reviewed"} <= set(s.columns), name
            assert all(p.meta["source"] for p in s), name
        else:
            assert {"source", "reviewed"} <= set(s.extra_columns), name
            assert all(it["source"] for it in s), name


def test_mechanism_classes_have_three_drugs_and_a_matched_specialty_labelling():
    drugs = load_concepts("drugs")
    mech = Counter(v for v in drugs.label("mechanism_class") if v != "ungrouped")
    spec = Counter(v for v in drugs.label("specialty_matched") if v != "ungrouped")
    assert min(mech.values()) >= 3 and len(mech) >= 10
    assert sorted(mech.values()) == sorted(spec.values())  # same class count and sizes
    for it in drugs:
        assert it["mechanism_class"] in (it["mechanism"], "ungrouped")
        assert it["specialty_matched"] in (it["specialty"], "ungrouped")
    assert CONCEPT_FAMILIES["drugs"]["matched_labels"] == ["mechanism_class", "specialty_matched"]


def test_dosage_answers_are_whole_doses_with_tenfold_foils():
    for it in load_concepts("dosage_drugs"):
        num = float(it["dose"].split()[0])
        assert it["dose"].endswith(" mg") and num == it["dose_mg"]
        assert float(it["dose_x10"].split()[0]) == pytest.approx(10 * num)
        assert float(it["dose_div10"].split()[0]) == pytest.approx(num / 10)


def test_variants_have_no_number_cues_and_ages_in_words():
    for it in load_concepts("progression_plain"):
        assert not re.search(r"\d", it["description"]), it
        assert not re.search(r"\b(mild|moderate|severe|palliative|bedbound)\b", it["description"], re.I), it
    words = {it["age"]: it["age_words"] for it in load_concepts("age_words") if it["sex"] == "female"}
    assert words[17] == "seventeen" and words[9] == "nine" and words[10] == "ten" and words[100] == "one hundred"
    assert words[42] == "forty-two" and len(words) == 100


def test_rows_fixed_in_review_stay_fixed():
    diag = load_concepts("diagnosis_pairs")
    assert all(" vertigo" not in (p.clean_answer, p.corrupted_answer) for p in diag)
    assert all("lymph " not in p.clean + p.corrupted for p in diag)
    assert not any("living with" in t or "several years" in t for t in load_concepts("diseases").templates)
    drugs = load_concepts("drugs")
    assert drugs.templates[0] == "The drug {drug} is used for" and drugs.template_answers[0] == "indication"
    assert not any("used to treat" in t for t in drugs.templates)
    by = {it["drug"]: it for it in drugs}
    assert by["rivaroxaban"]["specialty"] == by["apixaban"]["specialty"] == "cardiology"
    assert by["neostigmine"]["indication"] == " reversal"
    assert by["sildenafil"]["mechanism"] == by["tadalafil"]["mechanism"] == "PDE5 inhibitor"
    assert by["roflumilast"]["mechanism"] == "PDE4 inhibitor" != by["theophylline"]["mechanism"]
    sym = {it["symptom"]: it["system"] for it in load_concepts("symptoms")}
    assert all(v == "ear nose and throat" for k, v in sym.items() if "spinning" in k)
    for p in load_concepts("symptom_pairs"):
        for prompt, ans in ((p.clean, p.clean_answer), (p.corrupted, p.corrupted_answer)):
            assert not ("double vision" in prompt and ans == " eyes")
    prog = load_concepts("progression_pairs")
    assert not any("ejection fraction" in p.clean or "Severity" in p.clean for p in prog)
    assert any("NYHA" in p.clean for p in prog)
    assert not any("{disease}" in t for t in load_concepts("progression").templates)


# ----------------------------------------------------------------------------- API


def test_to_dataframe_label_columns():
    expect = {"age": ["age", "sex"], "symptoms": ["system"], "diseases": ["specialty"],
              "progression": ["disease", "stage"], "drugs": ["specialty", "mechanism"]}
    for name, cols in expect.items():
        s = load_concepts(name)
        df = s.to_dataframe()
        assert len(df) == len(s) and set(cols) <= set(df.columns), name


def test_prompts_spans_labels_answers():
    drugs = load_concepts("drugs")
    ps = drugs.prompts()
    assert len(ps) == len(drugs) * len(drugs.templates)
    assert all(isinstance(p, ConceptPrompt) for p in ps)
    for p in ps[:30]:
        assert p.text[p.span[0]:p.span[1]] == p.item == drugs.items[p.item_index]["drug"]
        it = drugs.items[p.item_index]
        assert p.labels == {k: it[k] for k in ("specialty", "mechanism", "mechanism_class", "specialty_matched")}
        assert (p.answer is not None) == (drugs.template_answers[p.template_index] is not None)
    first = drugs.prompts(templates=[0])
    assert all(p.answer == drugs.items[p.item_index]["indication"] for p in first)
    custom = drugs.prompts(templates=["Dose of {drug}:"])
    assert custom[0].template_index == -1 and custom[0].answer is None and custom[0].text.startswith("Dose of ")
    age = load_concepts("age").prompts(templates=[1])
    assert age[0].labels == {"sex": "male", "age": 1} and age[0].item == "1"
    with pytest.raises(MedinterpError, match="out of range"):
        drugs.prompts(templates=[99])
    with pytest.raises(MedinterpError, match="placeholder"):
        drugs.prompts(templates=["no placeholder"])


def test_filter_and_iteration():
    drugs = load_concepts("drugs")
    card = drugs.filter(specialty="cardiology")
    assert 0 < len(card) < len(drugs) and all(it["specialty"] == "cardiology" for it in card)
    two = drugs.filter(specialty=["cardiology", "neurology"], mechanism="calcium channel blocker")
    assert {it["drug"] for it in two} >= {"amlodipine", "nimodipine"}
    adults = load_concepts("age").filter(age=range(18, 66), sex="female")
    assert len(adults) == 48
    assert len(drugs) == len(load_concepts("drugs"))  # filter does not mutate
    with pytest.raises(MedinterpError, match="no label"):
        drugs.filter(colour="red")
    with pytest.raises(MedinterpError, match="leaves no item"):
        drugs.filter(specialty="astrology")
    diag = load_concepts("diagnosis_pairs").filter(clean_specialty="neurology")
    assert len(diag) >= 2 and all(isinstance(p, PromptPair) for p in diag)


# ----------------------------------------------------------------------------- validation errors

GOOD = """name: mini
version: "0.1"
item: drug
labels:
  specialty: {type: categorical, values: [cardiology, neurology]}
templates:
  - "The drug {drug} is"
items:
  - {drug: amlodipine, specialty: cardiology}
  - {drug: levodopa, specialty: neurology}
"""


def _write(tmp_path, text, name="set.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_user_yaml_file_loads(tmp_path):
    s = load_concepts(_write(tmp_path, GOOD))
    assert isinstance(s, ConceptSet) and len(s) == 2 and s.prompts()[1].text == "The drug levodopa is"


@pytest.mark.parametrize(
    "old,new,line,column,expect",
    [
        ("  - {drug: levodopa, specialty: neurology}", "  - {drug: levodopa}", 10, "specialty", "missing column"),
        ("specialty: neurology}", "specialty: neurolgy}", 10, "specialty", "unknown label 'neurolgy'"),
        ("{drug: levodopa,", "{drug: Amlodipine,", 10, "drug", "duplicate item.*line 9"),
        ('  - "The drug {drug} is"', '  - ""', 7, "templates", "empty"),
        ('  - "The drug {drug} is"', '  - "The drug is"', 7, "templates", "no placeholder '{drug}'"),
        ('  - "The drug {drug} is"', '  - "The {dose} of {drug}"', 7, "templates", "unknown placeholder"),
        ("specialty: cardiology}", "specialty: cardiology, colour: red}", 9, "colour", "unknown column"),
    ],
)
def test_validation_errors_name_file_line_column(tmp_path, old, new, line, column, expect):
    assert old in GOOD
    p = _write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(ConceptFileError) as e:
        load_concepts(p)
    msg = str(e.value)
    assert "set.yaml" in msg and f"line {line}" in msg and f"column '{column}'" in msg, msg
    assert re.search(expect, msg), msg


def test_non_numeric_age(tmp_path):
    text = """name: ages
version: "1"
item: age
labels: {age: continuous, sex: {values: [male, female]}}
templates: ["Age {age}, {sex}."]
items:
  - {age: 40, sex: male}
  - {age: forty, sex: female}
"""
    with pytest.raises(ConceptFileError, match=r"ages.yaml, line 8, column 'age': expected a number.*'forty'"):
        load_concepts(_write(tmp_path, text, "ages.yaml"))


def test_csv_user_files_with_header_and_line_numbers(tmp_path):
    csv_text = ("# name: csvset\n# version: '2'\n# item: symptom\n# labels: {system: categorical}\n"
                "# templates: ['Complains of {symptom}.']\n"
                "symptom,system\ncough,respiratory\nwheeze,respiratory\nrash,skin\n")
    s = load_concepts(_write(tmp_path, csv_text, "sym.csv"))
    assert len(s) == 3 and s.version == "2" and s.prompts()[2].text == "Complains of rash."
    bad = csv_text.replace("rash,skin\n", "cough,respiratory\n")
    with pytest.raises(ConceptFileError, match=r"sym.csv, line 9, column 'symptom': duplicate item.*line 7"):
        load_concepts(_write(tmp_path, bad, "sym.csv"))
    pairs = 'clean,corrupted,clean_answer,corrupted_answer\nA,B," x"," y"\nC,D," z"\n'
    with pytest.raises(ConceptFileError, match=r"p.csv, line 3, column 'corrupted_answer': expected non-empty"):
        load_concepts(_write(tmp_path, pairs, "p.csv"))
    ps = load_concepts(_write(tmp_path, pairs.replace('" z"\n', '" z"," w"\n'), "p.csv"))
    assert isinstance(ps, PairSet) and ps.pairs[1].corrupted_answer == " w" and ps.pairs[1].line == 3
    missing = "clean,corrupted,clean_answer\nA,B, x\n"
    with pytest.raises(ConceptFileError, match=r"column 'corrupted_answer'.*missing"):
        load_concepts(_write(tmp_path, missing, "m.csv"))


def test_pair_yaml_errors(tmp_path):
    text = """name: p
kind: pairs
version: "1"
pairs:
  - {clean: "a b", corrupted: "a c", clean_answer: " x", corrupted_answer: " y"}
  - {clean: "a d", corrupted: "a e", clean_answer: " x"}
"""
    with pytest.raises(ConceptFileError, match=r"p.yaml, line 6, column 'corrupted_answer': missing column"):
        load_concepts(_write(tmp_path, text, "p.yaml"))
    # duplicates are handled in one place, PairSet.check: the reader keeps them, check drops the repeat
    dup = text.replace('{clean: "a d", corrupted: "a e", clean_answer: " x"}',
                       '{clean: "a b", corrupted: "a c", clean_answer: " x", corrupted_answer: " y"}')
    ps = load_concepts(_write(tmp_path, dup, "p.yaml"))
    assert len(ps) == 2 and [p.line for p in ps] == [5, 6]


def test_check_drops_duplicates_naming_the_first_line(tiny, tmp_path):
    text = ("clean,corrupted,clean_answer,corrupted_answer\n"
            "The patient has chest pain,The patient has a cough, angina, pneumonia\n"
            "The patient has chest pain,The patient has a fever, asthma, pneumonia\n"   # other prompts: not a repeat
            "The patient has chest pain,The patient has a cough, angina, pneumonia\n")  # repeat of line 2
    chk = load_concepts(_write(tmp_path, text, "d.csv")).check(tiny)
    assert [p.line for p in chk.valid] == [2, 3]
    assert [(p.line, r) for p, r in chk.dropped] == [(4, "duplicate: the same pair (prompts and answers) as line 2")]
    assert chk.dropped_rows()[0]["row"] == "d.csv:4"
    assert [t.index for t in chk.tokenized] == [0, 1] and chk.tokenized[0].clean_tokens == tiny.to_tokens(
        "The patient has chest pain")[0].tolist()
    # the same two prompts with other answers contradict each other (issue 24): both are dropped
    text = text.replace("a fever, asthma", "a cough, asthma")
    chk = load_concepts(_write(tmp_path, text, "c.csv")).check(tiny)
    assert chk.valid == [] and [p.line for p, _ in chk.dropped] == [2, 3, 4]
    assert chk.dropped[1][1].startswith("contradictory answers: the same clean and corrupted prompts as line 2")


def test_jsonl_and_plain_csv_pair_files(tmp_path):
    import json

    rows = [{"clean": "a b", "corrupted": "a c", "clean_answer": " x", "corrupted_answer": " y", "topic": "t1"},
            {"clean": "a d", "corrupted": "a e", "clean_answer": " x", "corrupted_answer": " z", "topic": "t2"}]
    f = _write(tmp_path, "\n".join(json.dumps(r) for r in rows) + "\n\n", "p.jsonl")
    ps = load_concepts(f)
    assert isinstance(ps, PairSet) and ps.name == "p" and len(ps) == 2 and ps.columns == ["topic"]
    assert ps.pairs[1].meta["topic"] == "t2" and ps.pairs[1].line == 2 and ps.pairs[1].meta["row"] == "p.jsonl:2"
    plain = _write(tmp_path, "clean,corrupted,clean_answer,corrupted_answer,topic\n"
                   "a b,a c, x, y,t1\na d,a e, x, z,t2\n", "plain.csv")
    assert [(p.clean, p.corrupted_answer, p.meta["topic"]) for p in load_concepts(plain)] == \
        [(p.clean, p.corrupted_answer, p.meta["topic"]) for p in ps]
    with pytest.raises(ConceptFileError, match=r"p2.jsonl, line 2: not valid JSON"):
        load_concepts(_write(tmp_path, json.dumps(rows[0]) + "\n{oops\n", "p2.jsonl"))
    with pytest.raises(ConceptFileError, match=r"p3.jsonl, line 1, column 'corrupted_answer': missing column"):
        load_concepts(_write(tmp_path, json.dumps({"clean": "a", "corrupted": "b", "clean_answer": " x"}), "p3.jsonl"))


def test_unknown_name_and_bad_files(tmp_path):
    with pytest.raises(MedinterpError, match="unknown concept set 'drugz'.*drugs"):
        load_concepts("drugz")
    with pytest.raises(ConceptFileError, match="no such file"):
        load_concepts(tmp_path / "missing.yaml")
    with pytest.raises(ConceptFileError, match=r"line \d+.*not valid YAML"):
        load_concepts(_write(tmp_path, "name: x\nitems: [\n  {a: 1\n", "broken.yaml"))


# ----------------------------------------------------------------------------- tokenization check


def test_check_reasons_on_tiny_model(tiny):
    ps = PairSet("t", "1", "", [
        PromptPair("The patient has chest pain", "The patient has a cough", " angina", " pneumonia"),   # valid
        PromptPair("The patient has chest pain", "The patient has pain", " angina", " pneumonia"),      # length
        PromptPair("The patient has chest pain", "The patient has a cough", " angina pectoris", " asthma"),
        PromptPair("The patient has chest pain", "The patient has a cough", " angina", " angina"),
        PromptPair("The patient has chest pain", "The patient has chest pain", " angina", " asthma"),
        PromptPair("The patient has chest pain", "The patient has a cough", " zzqx", " asthma"),
    ])
    chk = ps.check(tiny)
    assert chk.n_valid + chk.n_dropped == len(ps)  # never silent
    assert [p.corrupted_answer for p in chk.valid] == [" pneumonia"]
    reasons = [r for _, r in chk.dropped]
    assert "unequal length: clean is 6 tokens, corrupted is 5" in reasons[0]  # 5 words + BOS
    assert "multi-token answer" in reasons[1] and "2 tokens" in reasons[1]
    assert "identical answers" in reasons[2]
    assert "identical prompts" in reasons[3]
    assert "unknown token" in reasons[4]
    a, b = chk.answer_ids[0]
    assert a == tiny.to_single_token(" angina") and b == tiny.to_single_token(" pneumonia")
    assert chk.n_tokens == [6]
    df = chk.to_dataframe()
    assert len(df) == 6 and df.valid.sum() == 1 and (df.reason != "").sum() == 5
    assert "1/6 valid" in chk.summary() and "dropped" in chk.report()


def test_check_with_hf_tokenizer_matches_model(tiny):
    ps = load_concepts("symptom_pairs")
    via_model, via_tok = ps.check(tiny), ps.check(tiny.tokenizer)
    assert via_model.n_valid + via_model.n_dropped == len(ps)
    assert [p.clean for p in via_model.valid] == [p.clean for p in via_tok.valid]
    assert via_model.answer_ids == via_tok.answer_ids
    with pytest.raises(MedinterpError, match="expected a HookedTransformer or a Hugging Face tokenizer"):
        ps.check(42)


def test_check_answer_must_continue_prompt(tiny):
    # a prompt ending in a space followed by an answer with its own space is not one next token
    # (the sentencepiece case is in the Gemma integration tests). Known answers on the word-level tokenizer,
    # where whitespace is no token: both known words continue the prompt as one token each; an unknown
    # word is dropped as the unknown token.
    ps = PairSet("s", "1", "", [PromptPair("The dose is", "The drug is", " five", " ten"),
                                PromptPair("The dose is ", "The drug is ", " five", " ten"),
                                PromptPair("The patient has", "The patient had", " zzqx", " cough")])
    chk = ps.check(tiny)
    assert [p.clean for p in chk.valid] == ["The dose is", "The dose is "]
    assert chk.n_dropped == 1 and "unknown token" in str(chk.dropped[0][1])
    for name in PAIR_SETS:
        chk = load_concepts(name).check(tiny)
        assert chk.n_valid + chk.n_dropped == len(load_concepts(name))


# ----------------------------------------------------------------------------- CLI


def test_cli_list_show_check(tmp_path, tiny):
    from typer.testing import CliRunner

    from medinterp.cli import app

    r = CliRunner().invoke(app, ["concepts", "list"])
    assert r.exit_code == 0, r.output
    assert "drugs" in r.output and "diagnosis_pairs" in r.output and "152" in r.output
    r = CliRunner().invoke(app, ["concepts", "show", "drugs", "-n", "3", "--filter", "specialty=ophthalmology"])
    assert r.exit_code == 0, r.output
    assert "latanoprost" in r.output and "metformin" not in r.output
    tiny.tokenizer.save_pretrained(tmp_path / "tok")
    r = CliRunner().invoke(app, ["concepts", "check", "--tokenizer", str(tmp_path / "tok"), "-p", "diagnosis_pairs",
                                 "-v"])
    assert r.exit_code == 0, r.output
    assert "diagnosis_pairs:" in r.output and "valid" in r.output
    bad = tmp_path / "leaky.yaml"
    bad.write_text('name: leaky\nversion: "1"\nkind: pairs\npairs:\n  - {clean: "A sore throat: the", corrupted: '
                   '"A bad cough: the", clean_answer: " throat", corrupted_answer: " lungs"}\n', encoding="utf-8")
    args = ["concepts", "check", "--tokenizer", str(tmp_path / "tok"), "-s", "symptoms", "-s", str(bad)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "lexical baseline system" in r.output and "answer leaks: 1" in r.output and "leaky: 1 pairs" in r.output
    r = CliRunner().invoke(app, args + ["--strict"])
    assert r.exit_code == 1 and "problems in: leaky" in r.output


# ----------------------------------------------------------------------------- README and placeholders


def test_readme_example_loads_as_written(tmp_path):
    from medinterp.concepts import data_path

    text = (data_path() / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    f = tmp_path / "my_drugs.yaml"
    f.write_text(block, encoding="utf-8")
    s = load_concepts(f)
    assert isinstance(s, ConceptSet) and len(s) == 2
    assert s.templates == ["The drug {drug} is used for", "Medication list: {drug}"]
    assert s.template_ends_on_item == [False, True]
    assert s.prompts(templates=[0])[0].text == "The drug metoprolol is used for"
    assert "{item}" in text and "{drug}" in text  # the README documents both spellings


def test_item_placeholder_alias_and_ends_on_item_must_agree(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text('name: a\nversion: "1"\nitem: symptom\ntemplates:\n  - "Complains of {item}."\n'
                 '  - "Complaint: {symptom}"\nitems:\n  - {symptom: rash}\n', encoding="utf-8")
    s = load_concepts(f)
    assert s.templates[0] == "Complains of {symptom}." and s.prompts()[0].text == "Complains of rash."
    assert s.prompts(templates=["Seen for {item}"])[0].text == "Seen for rash"
    f.write_text('name: a\nversion: "1"\nitem: symptom\ntemplates:\n  - text: "Complains of {item}."\n'
                 '    ends_on_item: true\nitems:\n  - {symptom: rash}\n', encoding="utf-8")
    with pytest.raises(ConceptFileError, match=r"a.yaml, line 5, column 'templates'.*ends_on_item"):
        load_concepts(f)


# ----------------------------------------------------------------------------- matched controls (issue 20)
# A control family can be matched to its medical family only if it has at least the medical class structure
# (the map subsamples the control down to it), the same template frames and items whose token counts cover
# the medical ones. scripts/control_structure.py prints the comparison; these tests hold the floor.


def _class_sizes(s, label):
    vals = [str(it[label]) for it in s.items if it.get(label) not in (None, "") and str(it[label]) != "ungrouped"]
    return sorted(Counter(vals).values(), reverse=True)


def _dominates(ctl, med):
    """The control's classes can be subsampled to the medical structure: as many classes, and the k-th largest
    control class at least as large as the k-th largest medical one for every k."""
    c, m = sorted(ctl, reverse=True), sorted(med, reverse=True)
    return len(c) >= len(m) and all(a >= b for a, b in zip(c, m))


def test_dominance_check_known_answers():
    assert _dominates([5, 5, 5], [5, 4, 1]) and _dominates([9, 2, 2, 1], [2, 2, 2])
    assert not _dominates([5, 5], [5, 4, 1])  # too few classes
    assert not _dominates([9, 3, 1], [4, 4, 1])  # a size cannot be matched, though the totals can
    # a shipped control cut below its medical family is caught: drop all but 4 signs of each symptoms_control part
    ctl = load_concepts("symptoms_control")
    kept = Counter()
    cut = [it for it in ctl.items if (kept.update([it["part"]]) or kept[it["part"]] <= 4)]
    assert not _dominates(Counter(it["part"] for it in cut).values(), _class_sizes(load_concepts("symptoms"), "system"))


@pytest.mark.parametrize("row", ["age", "symptoms", "diseases", "progression", "drugs", "dosage"])
def test_control_class_structure_and_templates_at_least_the_medical_ones(row):
    fam = CONCEPT_FAMILIES[row]
    med, ctl = load_concepts(fam["concepts"]), load_concepts(fam["control"])
    assert len(fam["control_labels"]) == len(fam["labels"]), row
    for lm, lc in zip(fam["labels"], fam["control_labels"]):
        sm, sc = _class_sizes(med, lm), _class_sizes(ctl, lc)
        assert _dominates(sc, sm), (row, lm, lc, sm, sc)
    # the same frames: as many templates (>= 8), each of the same kind (ends on the item or not, has an answer or not)
    assert len(ctl.templates) == len(med.templates) >= 8, row
    assert ctl.template_ends_on_item == med.template_ends_on_item, row
    assert [a is not None for a in ctl.template_answers] == [a is not None for a in med.template_answers], row
    for lab in med.continuous_labels:  # age: the same ages; progression: the same stages
        if lab in ctl.continuous_labels:
            assert {float(v) for v in med.label(lab)} == {float(v) for v in ctl.label(lab)}, (row, lab)
    assert ctl.version.split(".")[0] >= "3", row  # rebuilt for matching (v3)


def test_controls_have_no_leaks_misfits_or_duplicates():
    from medinterp.concepts.checks import answer_leaks, duplicates, template_misfits

    for fam in CONCEPT_FAMILIES.values():
        ctl = load_concepts(fam["control"])
        assert not answer_leaks(ctl) and not template_misfits(ctl) and not duplicates(ctl), ctl.name


def _cached_builtin_tokenizers():
    """Tokenizers of the two offline models from medinterp's converted-model cache (no conversion is started:
    a model that is not converted yet is missing here)."""
    import json

    from transformers import AutoTokenizer

    from medinterp.models._cache import _cache_is_valid, cache_dir

    out = {}
    for folder in sorted((cache_dir() / "converted").glob("m-*")):
        if not _cache_is_valid(folder) or not (folder / "config.json").is_file():
            continue
        cfg = json.loads((folder / "config.json").read_text())
        arch = (cfg.get("architectures") or [""])[0]
        if arch.startswith("Gemma3") and cfg.get("hidden_size") == 640:
            out["gemma-3-270m"] = AutoTokenizer.from_pretrained(str(folder))
        elif arch.startswith("Llama") and cfg.get("hidden_size") == 576 and cfg.get("num_hidden_layers") == 30:
            out["smollm2-135m"] = AutoTokenizer.from_pretrained(str(folder))
    return out


@pytest.fixture(scope="module")
def builtin_tokenizers():
    toks = _cached_builtin_tokenizers()
    if not toks:
        pytest.skip("no converted built-in model in the medinterp cache (run medinterp.load_model once)")
    return toks


def _n_tokens(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"]) if text else 0


def _frames(tok, s):
    """Per template: the set of (tokens before the item, tokens after it) over the set's prompts."""
    out = []
    for t in range(len(s.templates)):
        seen = set()
        for p in s.prompts(templates=[t]):
            pre = p.text[:p.span[0]]
            seen.add((_n_tokens(tok, pre[:-1] if pre.endswith(" ") else pre), _n_tokens(tok, p.text[p.span[1]:])))
        out.append(seen)
    return out


@pytest.mark.parametrize("row", ["age", "symptoms", "diseases", "progression", "drugs", "dosage"])
def test_control_items_cover_medical_token_counts_and_frames_match(builtin_tokenizers, row):
    fam = CONCEPT_FAMILIES[row]
    med, ctl = load_concepts(fam["concepts"]), load_concepts(fam["control"])
    for name, tok in builtin_tokenizers.items():
        hm = Counter(_n_tokens(tok, " " + x) for x in {str(it[med.item_key]) for it in med.items})
        hc = Counter(_n_tokens(tok, " " + x) for x in {str(it[ctl.item_key]) for it in ctl.items})
        short = {k: (v, hc.get(k, 0)) for k, v in hm.items() if hc.get(k, 0) < v}
        assert not short, (row, name, "token count: (medical, control) items", short)
        assert _frames(tok, ctl) == _frames(tok, med), (row, name)
