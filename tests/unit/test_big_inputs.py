"""Big inputs give one short line before any model work: field size limit, CSV field limit, n_ctx, clipped text."""

from __future__ import annotations

import pytest

from medinterp.activations import collect_reads
from medinterp.concepts import load_concepts
from medinterp.errors import ConceptFileError, MedinterpError, clip
from medinterp.techniques.saliency import saliency
from medinterp.testing import tiny_model

HEADER = "# name: big\n# item: disease\n# labels:\n#   system: categorical\n# templates:\n#   - 'The patient has {disease}.'\n"


def _csv(tmp_path, item: str, name: str = "big.csv"):
    p = tmp_path / name
    p.write_text(HEADER + "disease,system\npneumonia,lung\n" + f"{item},heart\n", encoding="utf-8")
    return p


def test_csv_5mb_field_names_file_and_line_not_csv_error(tmp_path):
    p = _csv(tmp_path, "x" * 5_000_000)  # over csv's own 131,072 limit: was a _csv.Error traceback
    with pytest.raises(ConceptFileError) as e:
        load_concepts(p)
    msg = str(e.value)
    assert "big.csv, line 9" in msg and len(msg) < 300 and "\n" not in msg


def test_field_over_the_size_limit_names_line_and_column(tmp_path):
    p = _csv(tmp_path, "y" * 20_000)  # under csv's limit, over medinterp's 10,000
    with pytest.raises(ConceptFileError, match=r"big\.csv, line 9, column 'disease': 20,000 characters; expected at "
                                               r"most 10,000"):
        load_concepts(p)
    s = load_concepts(p, max_field_chars=30_000)  # the limit is a parameter
    assert len(s) == 2


def test_yaml_field_over_the_size_limit(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("name: big\nitem: disease\nlabels: {system: categorical}\ntemplates: ['The patient has {disease}.']\n"
                 "items:\n  - {disease: pneumonia, system: lung}\n  - {disease: " + "z" * 10_001 + ", system: heart}\n")
    with pytest.raises(ConceptFileError, match=r"big\.yaml, line 7, column 'disease': 10,001 characters"):
        load_concepts(p)


def test_prompt_over_n_ctx_is_one_line_before_any_forward(monkeypatch):
    model = tiny_model(n_layers=2, n_ctx=16)
    calls = []
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1))
    long = "the patient has " + "fever " * 40
    with pytest.raises(MedinterpError, match=r"prompt 1 .*tokens exceed the model's context of 16") as e:
        collect_reads(model, ["a short prompt", long], ["last"], progress=False)
    assert calls == [] and len(str(e.value)) < 400


def test_saliency_error_clips_long_user_text():
    model = tiny_model(n_layers=2, n_ctx=32)
    huge = "fever " * 2000
    with pytest.raises(MedinterpError) as e:
        saliency(model, [(huge, "pneumonia")], progress=False, n_boot=10)
    msg = str(e.value)
    assert "exceed the model's context of 32" in msg
    assert len(msg) < 500, len(msg)  # was the whole 12,000-character prompt


def test_clip_known_answer():
    assert clip("abc") == "'abc'"
    out = clip("x" * 1000, 50)
    assert out.startswith("'xxx") and out.endswith("(1002 chars)") and len(out) < 70
