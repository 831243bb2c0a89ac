"""Every technique on both backends (issue 12): the same weights through HookedTransformer (prefix reuse,
``start_at_layer``) and TransformerBridge (the exact hook path) give the same numbers (<= 1e-4), and a
quick knowledge map runs on each tiny seed architecture."""

import numpy as np
import pytest
import torch

from medinterp.maps import knowledge_map
from medinterp.maps.run import family_specs
from medinterp.models import capabilities
from medinterp.techniques import REGISTRY
from medinterp.techniques.patching import patch
from medinterp.testing import tiny_model

TOL = 1e-4
GEOMETRY_SMALL = {"n_null": 50, "n_boot_items": 50, "max_prompts": 60}
# a random model knows no pair: let every valid pair into causal tracing so its numbers are finite
TRACE_ALL = {"min_known": 1, "min_margin": 0.0, "require_sign": False}


@pytest.fixture(scope="module")
def pair():
    """Tiny Llama 3 (GQA, RoPE scaling) with the same random weights through both backends."""
    h, b = tiny_model(arch="llama", n_layers=3, backend="hooked"), tiny_model(arch="llama", n_layers=3, backend="bridge")
    assert capabilities(h).start_at_layer and not capabilities(b).start_at_layer
    return h, b


@pytest.fixture(scope="module")
def family():
    return family_specs(["diseases"])["diseases"]


def _both(pair, family, name, **over):
    t = REGISTRY[name]
    p = t.params("quick", over)
    return [t.run(m, family, progress=False, **p) for m in pair]


def _close(a, b, what):
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert a.shape == b.shape, what
    assert np.array_equal(np.isnan(a), np.isnan(b)), f"{what}: NaNs differ"
    assert np.isfinite(a).any(), f"{what}: nothing to compare"
    diff = np.nanmax(np.abs(a - b))
    assert diff <= TOL, f"{what}: hooked vs bridge differ by {diff:.3g}"


def test_geometry_same_on_both_backends(pair, family):
    rh, rb = _both(pair, family, "geometry", **GEOMETRY_SMALL)
    _close(rh.layer_curve(), rb.layer_curve(), "geometry curve")


def test_saliency_same_on_both_backends(pair, family):
    rh, rb = _both(pair, family, "saliency")
    # per block and component, every variant: the bridge's HF tensors hold the same elements as TL's
    _close(rh.values, rb.values, "saliency values")
    _close(rh.loss, rb.loss, "saliency loss")
    assert np.nanmax(rh.values) > 0


def test_lesion_same_on_both_backends(pair, family):
    rh, rb = _both(pair, family, "lesion", only_known=False)  # a tiny random model knows no pair
    _close(rh.metrics, rb.metrics, "lesion metrics")
    # a tiny random model knows no pair, so the map's LD-fraction curve is NaN: compare the log-p drops
    _close(rh.values("logp_drop"), rb.values("logp_drop"), "lesion log-p drops")
    assert np.nanmax(np.abs(rh.metrics)) > 1e-3  # skipping a block changes the output


def test_causal_tracing_same_on_both_backends(pair, family):
    rh, rb = _both(pair, family, "patching", **TRACE_ALL)
    _close(rh.ld, rb.ld, "tracing LD")
    _close(rh.ratio, rb.ratio, "tracing ratio of sums")


@pytest.mark.parametrize("site", ["resid_pre", "attn_out"])
def test_patching_sweep_same_on_both_backends(pair, site):
    """All positions, prefix_cache=True: on hooked the engine skips unpatched prefixes (KV cache); the bridge
    reruns every position."""
    pairs = [("a man with chest pain has", "a man with cough pain has", " angina", " pneumonia"),
             ("the patient with fever and rash has", "the patient with fever and cough has", " measles", " pneumonia")]
    rh, rb = (patch(m, pairs, site=site, positions="all", progress=False, n_boot=20,
                         prefix_cache=True) for m in pair)
    assert rh.diagnostics["engine"]["kv_runs"] > 0 and rb.diagnostics["engine"]["kv_runs"] == 0
    _close(rh.ld, rb.ld, f"patching {site} LD")
    assert np.nanstd(rh.ld) > 1e-4  # the patches matter


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2", "qwen3", "gpt_oss"])
def test_quick_map_each_seed_architecture(arch):
    model = tiny_model(arch=arch, n_layers=3)  # the backend the real seed model gets
    km = knowledge_map(model, ["diseases"], quick=True, progress=False,
                       technique_kwargs={"geometry": GEOMETRY_SMALL, "patching": TRACE_ALL})
    status = km.status["diseases"]
    # a tiny random model knows no pair: lesion runs its intact pass and says so instead of a curve
    assert status["lesion"] == "ok" or status["lesion"].startswith("not known by the model"), (arch, status)
    assert {t: status[t] for t in ("geometry", "saliency", "patching")} == {t: "ok" for t in ("geometry", "saliency", "patching")}, (arch, status)


def test_cli_model_options_reach_load_model(monkeypatch):
    import medinterp as mi
    from medinterp.cli import _common, main

    seen = {}
    monkeypatch.setattr(mi, "load_model", lambda spec, **kw: seen.update(spec=spec, **kw) or (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        main(["--backend", "bridge", "--dtype", "bfloat16", "--device-map", '{"": 0}', "--no-verify",
              "lesion", "--model", "x", "--concepts", "drugs", "--out", "/nonexistent-dir-b12"])
    assert seen["spec"] == "x" and seen["backend"] == "bridge" and seen["dtype"] == "bfloat16"
    assert seen["device_map"] == {"": 0} and seen["verify"] is False
    _common.model_options()  # defaults back
    assert _common.LOAD_OPTIONS == {"backend": "auto", "dtype": "float32", "device_map": None, "verify": True}
