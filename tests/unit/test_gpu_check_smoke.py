"""benchmarks/gpu_check.py: its --cpu-smoke run (the code path the GPU check takes, at toy size on the CPU)
and its stage runner (time caps, failures and skips recorded, never lost)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
TECHNIQUES = ("patching", "saliency", "lesion", "geometry")


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _positive(x, what):
    assert isinstance(x, (int, float)) and not isinstance(x, bool), f"{what}: not a number ({x!r})"
    assert math.isfinite(x) and x > 0, f"{what}: expected finite and > 0, got {x!r}"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu.json"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, f"rc {proc.returncode}\nstdout tail: {proc.stdout[-2000:]}\nstderr tail: {proc.stderr[-4000:]}"
    return json.loads(proc.stdout), json.loads(out.read_text()), proc.stderr, wall


def test_stdout_is_one_json_document_equal_to_the_out_file(smoke):
    doc, from_file, _, _ = smoke
    assert doc == from_file
    assert doc["mode"] == "cpu-smoke" and doc["exit_code"] == 0


def test_every_stage_ran_or_says_why(smoke):
    doc, _, stderr, _ = smoke
    stages = doc["stages"]
    expected = ["env", "small_float32", "small_bfloat16", "small_bf16_vs_fp32", "big_plan", "big_meta", "big_build",
                *(f"big_map_{t}" for t in TECHNIQUES), "big_map_assemble"]
    assert list(stages) == expected
    for name, rec in stages.items():
        assert rec["status"] in ("ok", "skipped"), f"{name}: {rec.get('status')}: {rec.get('error') or rec.get('reason')}"
        if rec["status"] == "skipped":
            assert rec.get("reason"), name
        _positive(rec["seconds"] + 1e-9, f"{name}.seconds")
    # on the CPU at toy size nothing has a reason to be skipped: every stage really ran
    assert all(rec["status"] == "ok" for rec in stages.values()), {k: v.get("reason") for k, v in stages.items()}
    assert "big_map_geometry: ok" in stderr  # progress went to stderr


def test_small_model_numbers(smoke):
    doc, _, _, _ = smoke
    for dt in ("float32", "bfloat16"):
        rec = doc["stages"][f"small_{dt}"]
        assert rec["dtype"] == dt and rec["backends"] == {"hooked": "hooked", "bridge": "bridge"}
        for k, v in rec["parity"].items():
            assert math.isfinite(v) and v >= 0, (dt, k, v)
        # float32 parity of the tiny Gemma 3 is ~1e-6 (README); a broken comparison would be O(1)
        if dt == "float32":
            assert rec["parity"]["bridge_vs_hf_logits_max_abs"] <= 1e-4
            assert rec["parity"]["resid_post_rel_max"] <= 1e-4
        for group in ("patching_sweep_s", "bare_saliency_s"):
            for k, v in rec[group].items():
                _positive(v, f"{dt}.{group}.{k}")
        for t in ("causal_trace", "saliency"):
            for k in ("seconds", "tokens", "tokens_per_s"):
                _positive(rec["techniques"][t][k], f"{dt}.{t}.{k}")
        _positive(rec["peak_memory_GiB"], f"{dt}.peak_memory_GiB")
    cmp = doc["stages"]["small_bf16_vs_fp32"]
    for k, v in cmp["time_ratio_bf16_over_fp32"].items():
        _positive(v, k)


def test_plan_against_measured_for_every_technique(smoke):
    doc, _, _, _ = smoke
    rows = doc["summary"]["big_plan_vs_measured"]
    assert set(rows) == set(TECHNIQUES)
    for t in TECHNIQUES:
        rec = doc["stages"][f"big_map_{t}"]
        for k in ("seconds", "tokens", "tokens_per_s", "peak_memory_GiB", "plan_total_GiB", "measured_over_plan"):
            _positive(rec[k], f"{t}.{k}")
            assert rows[t].get(k, rec[k]) == rec[k]
        assert isinstance(rec["within_20pct"], bool)
        assert rec["measured_over_plan"] == pytest.approx(rec["peak_memory_GiB"] / rec["plan_total_GiB"])
        assert rec["job_status"]["model"], t
        assert rec["cell"]["code"], (t, rec["cell"])
    # the random model is run "as known", so patching and lesion did their sweeps, not only intact passes
    assert doc["stages"]["big_map_patching"]["technique_kwargs"]["trace_unknown"] is True
    assert doc["stages"]["big_map_lesion"]["technique_kwargs"]["only_known"] is False
    asm = doc["stages"]["big_map_assemble"]
    assert asm["jobs_loaded"] > 0 and asm["jobs_recomputed"] == []
    assert set(asm["cells"]) == set(TECHNIQUES)


def test_full_size_model_on_meta_matches_the_plan(smoke):
    doc, _, _, _ = smoke
    meta = doc["stages"]["big_meta"]
    assert meta["config"]["n_layers"] == 62 and meta["config"]["d_model"] == 5376
    assert meta["config"]["attn_types"] == {"local": 52, "global": 10}
    assert meta["devices"] == ["meta"]  # every tensor on the default device: none would reach the host
    # the hooked model unties the embedding (W_U is its own copy): 1.41B parameters over the plan's count;
    # the rest of the difference (TL's zero biases, QK-norm weights) is ~0.01%
    extra = meta["params"] - meta["plan_params_total"] - meta["params_unembed"]
    assert meta["params_bias"] > 0 and abs(extra) < 1e-3 * meta["plan_params_total"], extra
    assert 1.0 < meta["params_over_plan"] < 1.1
    build = doc["stages"]["big_build"]
    assert build["param_dtypes"] == ["torch.bfloat16"] and build["param_devices"] == ["cpu"]
    assert build["config"]["attn_types"]["global"] >= 1 and build["config"]["attn_types"]["local"] >= 1


# ----------------------------------------------------------------------------- the stage runner
@pytest.fixture()
def runner(tmp_path):
    mod = _load_script()
    report = mod.Report(str(tmp_path / "r.json"), {"stages": {}})
    return mod, report, mod.Runner(report, budget_s=60.0, device="cpu"), tmp_path / "r.json"


def test_runner_records_failure_timeout_and_skips_and_keeps_going(runner):
    mod, report, run, path = runner

    def boom():
        raise ValueError("bad input")

    def slow():
        time.sleep(5)
        return {"never": True}

    def cannot():
        raise mod.Skip("no CUDA device")

    run.run("a_fails", boom, cap_s=10, min_s=0)
    run.run("b_slow", slow, cap_s=0.3, min_s=0)
    run.run("c_needs_a", lambda: {"x": 1}, cap_s=10, min_s=0, needs=("a_fails",))
    run.run("d_skips", cannot, cap_s=10, min_s=0)
    run.run("e_no_time", lambda: {"x": 1}, cap_s=10, min_s=30, reserve_s=50)
    run.run("f_ok", lambda: {"value": 2.5}, cap_s=10, min_s=0)
    st = json.loads(path.read_text())["stages"]  # flushed after every stage
    assert st["a_fails"]["status"] == "failed" and "ValueError: bad input" in st["a_fails"]["error"]
    assert "Traceback" in st["a_fails"]["traceback"]
    assert st["b_slow"]["status"] == "timed_out" and st["b_slow"]["seconds"] < 3 and "never" not in st["b_slow"]
    assert st["c_needs_a"]["status"] == "skipped" and "a_fails (failed)" in st["c_needs_a"]["reason"]
    assert st["d_skips"] == {**st["d_skips"], "status": "skipped", "reason": "no CUDA device"}
    assert st["e_no_time"]["status"] == "skipped" and "out of time" in st["e_no_time"]["reason"]
    assert st["f_ok"]["status"] == "ok" and st["f_ok"]["value"] == 2.5


def test_report_is_strict_json(runner):
    mod, report, run, path = runner
    run.run("nan", lambda: {"x": float("nan"), "y": [1.0, float("inf")]}, cap_s=10, min_s=0)
    st = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert st["stages"]["nan"]["x"] is None and st["stages"]["nan"]["y"] == [1.0, None]


def test_bad_arguments_are_clear_errors(capsys):
    mod = _load_script()
    for args in (["--budget-s", "0"], ["--repeats", "0"]):
        with pytest.raises(SystemExit) as e:
            mod.main(args)
        assert e.value.code == 2
        assert args[0] in capsys.readouterr().err
