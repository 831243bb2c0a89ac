"""The real Gemma 3 270M: offline loading, parity with HF transformers, tokenization, padding."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from medinterp.activations import collect_activations
from medinterp.models import _cache_is_valid, cache_dir

pytestmark = pytest.mark.integration

MEDICAL_PROMPTS = [
    "A 67-year-old man presents with crushing chest pain radiating to the left arm. The most likely diagnosis is",
    "Metformin is a first-line treatment for",
    "The usual adult dose of amoxicillin is 500",
]


def _hf_model_and_tokenizer(gemma):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache_dir() / "converted" / f"m-{gemma.medinterp_info['source']['gguf_sha256'][:16]}"
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    return hf.eval(), tok


def test_logits_and_tokens_match_hf(gemma):
    hf, tok = _hf_model_and_tokenizer(gemma)
    worst = 0.0
    for p in MEDICAL_PROMPTS:
        ids = tok(p, return_tensors="pt")["input_ids"]
        tl_ids = gemma.to_tokens(p)
        assert torch.equal(ids, tl_ids), "TL tokenization differs from HF"
        with torch.no_grad():
            ref = hf(ids).logits
            got = gemma(tl_ids)
        worst = max(worst, (ref - got).abs().max().item())
    print(f"max |logit_TL - logit_HF| over {len(MEDICAL_PROMPTS)} medical prompts: {worst:.3g}")
    assert worst < 1e-3


def test_provenance_flags(gemma):
    info = gemma.medinterp_info
    assert info["spec"] == "gemma-3-270m"
    assert info["n_layers"] == 18 and info["d_model"] == 640
    assert info["fold_ln"] is False and info["center_unembed"] is False
    assert info["source"]["gguf_sha256"].startswith("a5fd3b62")


def test_padding_invariance_relative(gemma):
    batched = collect_activations(gemma, MEDICAL_PROMPTS, include_embed=True, progress=False)
    worst = 0.0
    for i, p in enumerate(MEDICAL_PROMPTS):
        alone = collect_activations(gemma, [p], include_embed=True, progress=False)
        a, b = batched.values[:, i], alone.values[:, 0]
        rel = np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)
        worst = max(worst, float(rel.max()))
    print(f"max relative difference alone vs left-padded batch: {worst:.2g}")
    # An absolute 1e-4 bound is below float32 resolution for Gemma's residual norms (~1e3); see README.
    assert worst < 1e-5


def test_cache_is_checksummed(gemma, tmp_path):
    folder = cache_dir() / "converted" / f"m-{gemma.medinterp_info['source']['gguf_sha256'][:16]}"
    assert _cache_is_valid(folder)
    copy = tmp_path / "copy"
    copy.mkdir()
    manifest = json.loads((folder / "medinterp-cache.json").read_text())
    (copy / "medinterp-cache.json").write_text(json.dumps(manifest))
    for name in manifest["files"]:
        data = bytearray((folder / name).read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte deep in the weights
        (copy / name).write_bytes(bytes(data))
    assert not _cache_is_valid(copy)


def test_loads_with_network_blocked():
    """No network call may be attempted: sockets raise, and HF offline flags are NOT set by hand."""
    code = textwrap.dedent(
        """
        import socket
        def refuse(*a, **k):
            raise RuntimeError("network access attempted")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        import medinterp as mi
        m = mi.load_model("gemma-3-270m")
        print("OK", m.cfg.n_layers, m.to_string(m(m.to_tokens("Aspirin is used to treat"))[0, -1].argmax()))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK 18" in out.stdout
