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


def test_gguf_metadata_is_parsed_once_per_conversion(monkeypatch):
    """Inside a conversion, the three GGUF reads share one reader and one metadata parse; callers get
    independent copies (they pop keys), and reads with tensors still go to the real loader."""
    import gguf
    import transformers.modeling_gguf_pytorch_utils as mgu

    built, parsed = [], []

    class FakeReader:
        def __init__(self, path):
            built.append(path)

    def fake_load(path, return_tensors=False, model_to_load=None):
        parsed.append((path, return_tensors))
        return {"config": {"vocab": [1, 2, 3]}, "tensors": {"w": 1} if return_tensors else {}}

    monkeypatch.setattr(gguf, "GGUFReader", FakeReader)
    monkeypatch.setattr(mgu, "load_gguf_checkpoint", fake_load)
    with cache._gguf_parsed_once():
        a = mgu.load_gguf_checkpoint("m.gguf", return_tensors=False)
        a["config"].pop("vocab")  # a caller mutating its copy must not change the next caller's
        b = mgu.load_gguf_checkpoint("m.gguf", return_tensors=False)
        w = mgu.load_gguf_checkpoint("m.gguf", return_tensors=True, model_to_load="model")
        r1, r2, r3 = gguf.GGUFReader("m.gguf"), gguf.GGUFReader("m.gguf"), gguf.GGUFReader("other.gguf")
    assert b["config"]["vocab"] == [1, 2, 3] and w["tensors"] == {"w": 1}
    assert parsed == [("m.gguf", False), ("m.gguf", True)]
    assert r1 is r2 and r1 is not r3 and built == ["m.gguf", "other.gguf"]
    # outside the block the real functions are back
    assert gguf.GGUFReader is FakeReader and mgu.load_gguf_checkpoint is fake_load
