import pytest

import medinterp as mi
from medinterp.errors import ModelLoadError
from medinterp.models import list_models, model_info


def test_list_models_names_builtins():
    names = [m["name"] for m in list_models()]
    assert names == ["gemma-3-270m", "smollm2-135m"]
    gemma = list_models()[0]
    assert gemma["installed"] is True  # a dependency of medinterp


def test_unknown_spec_lists_choices(tmp_path):
    with pytest.raises(ModelLoadError, match="gemma-3-270m, smollm2-135m"):
        mi.load_model("no-such-model-xyz", cache=tmp_path)


def test_corrupt_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        mi.load_model(str(bad), cache=tmp_path / "cache")


def test_missing_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown model|no such GGUF"):
        mi.load_model(str(tmp_path / "missing.gguf"), cache=tmp_path)


def test_unreadable_folder_is_a_clear_error(tmp_path):
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        mi.load_model(str(folder), cache=tmp_path)
    (folder / "config.json").write_text("{ this is not json")
    with pytest.raises(ModelLoadError, match="not_a_model"):
        mi.load_model(str(folder), cache=tmp_path)


def test_model_info_of_tiny(tiny):
    info = model_info(tiny)
    assert info["n_layers"] == 3 and info["fold_ln"] is False
