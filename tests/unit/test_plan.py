"""medinterp plan: parameter counts against published numbers and real modules, fit decisions, the CLI."""

import json

import pytest

from medinterp.errors import MedinterpError
from medinterp.models import SEED_MODELS
from medinterp.models.plan import GiB, Gpus, Workload, plan_model, plan_spec, shape_from_config
from medinterp.models.tiny import hf_config


@pytest.mark.parametrize(
    "name,published_total,published_active",
    [
        ("llama-3.3-70b", 70.6e9, None),   # Meta: 70.6B
        ("qwen3-32b", 32.8e9, None),       # Qwen: 32.8B
        ("qwen2.5-32b", 32.5e9, None),     # Qwen: 32.5B
        ("gpt-oss-120b", 116.8e9, 5.1e9),  # OpenAI model card: 116.8B total, 5.1B active
        ("gemma-3-27b", 27.0e9, None),     # text tower of Gemma 3 27B (27.4B with the vision encoder)
    ],
)
def test_param_counts_match_published(name, published_total, published_active):
    s = shape_from_config(SEED_MODELS[name].config, name)
    assert s.total_params == pytest.approx(published_total, rel=0.015)
    if published_active:
        assert s.active_params == pytest.approx(published_active, rel=0.03)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gpt_oss"])
def test_param_count_matches_a_real_module(arch):
    from transformers import AutoModelForCausalLM

    cfg = hf_config(arch, n_layers=2, d_model=64, n_heads=4, d_mlp=128, vocab_size=500, n_ctx=64)
    real = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    assert shape_from_config(cfg.to_dict()).total_params == pytest.approx(real, rel=0.01)


def test_weights_split_over_devices():
    s = shape_from_config(SEED_MODELS["llama-3.3-70b"].config)
    one = plan_model(s, Gpus(1, 80), dtype="bfloat16").rows[0].weights
    four = plan_model(s, Gpus(4, 80), dtype="bfloat16", backend="bridge").rows[0].weights
    assert one == pytest.approx(2 * s.total_params)
    assert one / 4 <= four <= one / 4 + 2 * s.embed_params * 2  # busiest device: a quarter plus one end
    fp32 = plan_model(s, Gpus(1, 80), dtype="float32").rows[0].weights
    assert fp32 == pytest.approx(2 * one)


def test_fit_decisions_and_advice():
    llama1 = plan_spec("llama-3.3-70b", "1x80GB")
    assert not any(r.fits for r in llama1.rows) and "device_map" in llama1.rows[0].advice
    llama4 = plan_spec("llama-3.3-70b", "4x80GB")
    assert all(r.fits for r in llama4.rows) and llama4.backend == "bridge"
    gemma_fp32 = plan_spec("gemma-3-27b", "1x80GB", dtype="float32")
    assert not gemma_fp32.rows[0].fits and "bfloat16" in gemma_fp32.rows[0].advice
    assert plan_spec("gemma-3-27b", "1x80GB").rows[-1].fits
    huge_batch = plan_spec("qwen2.5-32b", "1x80GB", work=Workload(batch_size=512, seq_len=512))
    patch = next(r for r in huge_batch.rows if r.technique == "patching")
    assert not patch.fits and "fewer prompts per batch" in patch.advice
    oss = plan_spec("gpt-oss-120b", "1x80GB")
    assert oss.backend == "bridge" and not oss.rows[0].fits
    assert all(r.fits for r in plan_spec("gpt-oss-120b", "4x80GB").rows)


def test_prefix_reuse_halves_lesion_passes():
    s = shape_from_config(SEED_MODELS["qwen2.5-32b"].config)
    h = {r.technique: r for r in plan_model(s, Gpus(1, 80), backend="hooked").rows}
    b = {r.technique: r for r in plan_model(s, Gpus(1, 80), backend="bridge").rows}
    assert b["lesion"].passes == pytest.approx(3 * (1 + 64))
    assert h["lesion"].passes == pytest.approx(3 * (1 + 32))
    assert h["geometry"].passes == b["geometry"].passes


def test_local_config_and_errors(tmp_path):
    cfg = hf_config("qwen3", n_layers=2, d_model=64, n_heads=4, d_mlp=128, vocab_size=500, n_ctx=64)
    cfg.save_pretrained(str(tmp_path / "m"))
    p = plan_spec(str(tmp_path / "m"), "2x24GB")
    assert p.model == "m" and p.gpus == "2x24GB" and all(r.fits for r in p.rows)
    with pytest.raises(MedinterpError, match="COUNTxMEMORY"):
        Gpus.parse("four gpus")
    with pytest.raises(MedinterpError, match="neither a seed model"):
        plan_spec("no-such-model", "1x80GB")
    bad = tmp_path / "bad.json"
    bad.write_text('{"hidden_size": 8}')
    with pytest.raises(MedinterpError, match="num_attention_heads"):
        plan_spec(str(bad), "1x80GB")


def test_cli_plan_prints_all_seed_models():
    from typer.testing import CliRunner

    from medinterp.cli import app

    out = CliRunner().invoke(app, ["plan", "--gpus", "4x80GB"])
    assert out.exit_code == 0, out.output
    for name in SEED_MODELS:
        assert name in out.output
    js = CliRunner().invoke(app, ["plan", "--model", "gpt-oss-120b", "--gpus", "1x80GB", "--json"])
    data = json.loads(js.output)
    assert data[0]["rows"][0]["fits"] is False and data[0]["rows"][0]["weights"] / GiB > 200


def test_cli_models_names_backends():
    from typer.testing import CliRunner

    from medinterp.cli import app

    out = CliRunner().invoke(app, ["models"], terminal_width=200)
    assert out.exit_code == 0
    assert "qwen3-32b" in out.output and "bridge" in out.output and "hooked" in out.output
