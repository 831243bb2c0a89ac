"""Integrity of the converted-weight cache and consent before code-running hub loads (no network, no model)."""

import json

import pytest

import medinterp as mi
import medinterp.models._cache as cache
import medinterp.models.construct as construct
from medinterp.errors import ModelLoadError
from medinterp.models.loader import hub_risk


def _fake_folder(root):
    folder = root / "converted" / "m-0123456789abcdef"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "config.json").write_text(json.dumps({"architectures": ["Gemma3ForCausalLM"], "hidden_size": 640}))
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 1}}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>"}))
    cache.write_manifest(folder, source_gguf="fake.gguf", seconds=0.0)
    return folder


def _flip_byte(path, at=5):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["tokenizer.json", "config.json", "tokenizer_config.json", "model.safetensors"])
def test_cache_flipped_byte_in_any_file_is_rebuilt(tmp_path, monkeypatch, name):
    folder = _fake_folder(tmp_path)
    manifest = json.loads((folder / "medinterp-cache.json").read_text())
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= set(manifest["files"])
    assert cache._cache_is_valid(folder)

    calls = []
    monkeypatch.setattr(cache, "_convert_gguf", lambda gguf, out: calls.append(out))
    assert cache.converted_folder(tmp_path / "fake.gguf", "0123456789abcdef" * 4, tmp_path, "fake") == folder
    assert calls == []  # valid: reused

    _flip_byte(folder / name)
    assert not cache._cache_is_valid(folder)
    cache.converted_folder(tmp_path / "fake.gguf", "0123456789abcdef" * 4, tmp_path, "fake")
    assert calls == [folder]  # corrupt: rebuilt


def test_cache_manifest_of_weights_only_is_rebuilt(tmp_path):
    # 0.1.0 manifests hashed the weights only: config and tokenizer were unchecked, so such a folder is rebuilt.
    folder = _fake_folder(tmp_path)
    info = json.loads((folder / "medinterp-cache.json").read_text())
    info["files"] = {"model.safetensors": info["files"]["model.safetensors"]}
    (folder / "medinterp-cache.json").write_text(json.dumps(info))
    assert not cache._cache_is_valid(folder)


def test_cache_missing_listed_file_is_rebuilt(tmp_path):
    folder = _fake_folder(tmp_path)
    (folder / "tokenizer.json").unlink()
    assert not cache._cache_is_valid(folder)


@pytest.mark.parametrize("name", ["NeelNanda/SoLU_1L_v9_old", "Qwen/Qwen-7B", "microsoft/phi-2"])
def test_code_running_hub_model_needs_trust_remote_code(tmp_path, monkeypatch, name):
    # No network: the refusal comes before any download; a mocked load_hf records whether it was reached.
    reached = []

    def fake_load_hf(source, **kw):
        reached.append(kw.get("trust_remote_code"))
        raise ModelLoadError("stop here (mocked)")

    monkeypatch.setattr(construct, "load_hf", fake_load_hf)
    assert hub_risk(name) is not None
    with pytest.raises(ModelLoadError, match="trust_remote_code=True"):
        mi.load_model(name, cache=tmp_path, backend="bridge")
    assert reached == []
    with pytest.raises(ModelLoadError, match="mocked"):
        mi.load_model(name, cache=tmp_path, backend="bridge", trust_remote_code=True)
    assert reached == [True]


def test_plain_hub_model_needs_no_consent():
    assert hub_risk("gpt2") is None
    assert hub_risk("google/gemma-3-270m") is None
