"""GPU check: Gemma 3 270M parity and speed in bf16 / float32, then a random-init full-size Gemma-3-27B quick map.

Stages (each independent: a failing stage is recorded with its error and the next one runs; the JSON is
rewritten after every stage, so a run killed half-way still leaves what it measured):

1. ``env``: device, versions, free memory.
2. ``small_float32``, ``small_bfloat16``: Gemma 3 270M (offline, as ``mi.load_model("gemma-3-270m")``) on
   both backends: logits parity against plain ``transformers`` (eager) and hooked vs bridge residuals; the
   bare patching sweep (resid_pre at the last position over every layer: prefix reuse vs the hook path) and
   bare saliency (forward + backward per prompt), as ``benchmarks/patching_speed.py`` /
   ``saliency_speed.py`` time them; and the library's own quick-preset ``causal_trace`` and ``saliency`` on
   ``drug_pairs`` (seconds, tokens per second, curves).
3. ``small_bf16_vs_fp32``: the two dtypes side by side (curve differences, time ratios).
4. ``big_plan``: ``medinterp plan``'s estimate (``plan_spec("gemma-3-27b", "1x<GPU>GB", dtype="bfloat16",
   backend="hooked")``, work sizes of the quick map, one family) for the run below.
   ``big_meta``: the full-size model built on the ``meta`` device (no memory; also in ``--cpu-smoke``): its
   parameter count against the plan's, and every tensor on the default device (so none reaches the host below).
5. ``big_build``: a random-init Gemma-3-27B at its real size (TL's Gemma-3-27B config, checked against
   ``medinterp.models.seeds``), built directly on the GPU in bf16 (``torch.device("cuda")`` as the default
   device: no download, no host copy of the weights). Skipped with a reason where there is no CUDA device or
   less free GPU memory than the plan says it needs.
6. ``big_map_<technique>``: ``mi.knowledge_map(model, ["drugs"], techniques=[t], quick=True)`` with controls,
   one technique at a time (so each gets its own time, tokens per second and peak GPU memory, set against
   the plan's row for it). The twin is the model itself (a second 27B does not fit beside it on one 80 GB
   GPU; both are random-init, so the twin runs are the same computation; the map's own twin plan skips the
   twin jobs that cannot change a cell, which on a random model is most of them). A random model knows none of
   the pairs, so patching and lesion would only run their intact passes: they are run "as known"
   (``min_margin=0, require_sign=False, trace_unknown=True`` / ``only_known=False``) so that the sweep a
   trained model costs is what is measured.
7. ``big_map_assemble``: the same map with every technique that finished, from the shared work dir (jobs
   are loaded, not recomputed: ``jobs_recomputed`` lists any job file rewritten), and each cell's code.

A global time guard (``--budget-s``, default 570 s) keeps the whole run under 10 minutes: each stage has a
cap, stages that no longer fit are skipped with the reason, and a stage that overruns is stopped
(``timed_out``); a watchdog thread writes the JSON and exits if the process is stuck in native code.
Progress goes to stderr; stdout gets exactly one JSON document at the end (also in ``--out``).

``--cpu-smoke``: the same code path on the CPU in seconds, to test this script (CI): tiny random Gemma-3
models (:func:`medinterp.testing.tiny_model`) in place of Gemma 3 270M and a scaled-down Gemma-3 config
(same layout: sliding-window layers and a global one, QK-norm, GQA; 4 layers) in place of the 27B, one
torch thread, fewer permutations / bootstraps and 30 geometry prompts; memory is the peak RSS growth there, not
GPU memory, and its numbers say nothing about a GPU.

Exit code: 0 when every stage is ok or skipped with a reason (no CUDA device: the GPU stages are skipped),
1 when a stage failed or timed out, 2 for bad arguments, 3 when the watchdog stopped the run.

Run: ``python benchmarks/gpu_check.py [--out gpu.json] [--budget-s 570] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

# The borrowed machine has no internet: any hub call must fail at once instead of waiting on timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

GiB = 2**30
FAMILY = "drugs"
PAIRS = "drug_pairs"
BIG_SEED = "gemma-3-27b"
TL_GEMMA3_27B = "google/gemma-3-27b-it"  # TransformerLens's own (offline) config for the hooked backend
TECHNIQUES = ("patching", "saliency", "lesion", "geometry")  # most memory-hungry first: a short run checks those
# A random model knows none of the pairs; without these the sweeps a trained model runs would be skipped.
AS_KNOWN = {"patching": {"min_margin": 0.0, "require_sign": False, "trace_unknown": True},
            "lesion": {"only_known": False}}
# --cpu-smoke: a Gemma-3 layout (sliding-window layers then a global one; GQA; QK-norm) at toy size, 4 layers
# (3 local + 1 global where the 27B has 5 + 1: geometry's statistics cost grows with the layer count).
SMOKE_BIG = {"num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 16, "intermediate_size": 128, "sliding_window": 8, "max_position_embeddings": 256}
# --cpu-smoke: fewer permutations / resamples, so that the marking of the toy map takes seconds, not minutes.
SMOKE_MARKING = {"n_perm": 100, "n_boot": 100, "n_resamples": 2}
SMOKE_TECH = {"geometry": {"n_null": 20, "n_boot_items": 20, "n_perm": 20, "n_boot": 20, "max_prompts": 30}, "saliency": {"n_boot": 50}, "lesion": {"n_boot": 50},
              "patching": {"n_boot": 50}}
PROMPTS = [
    "A 67-year-old man presents with crushing chest pain radiating to the left arm. The most likely diagnosis is",
    "Metformin is a first-line treatment for",
    "The usual adult dose of amoxicillin is",
    "A child with fever and a barking cough most likely has",
]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ============================================================================ plumbing
class OutOfTime(BaseException):
    """Raised by the stage alarm. A BaseException, so that the library's per-job ``except Exception``
    (a failed job is recorded and the map goes on) does not swallow it and the stage really stops."""


class Skip(Exception):
    """A stage that cannot run here: recorded as ``skipped`` with this reason (not a failure)."""


_T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[gpu_check {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def clean(x: Any) -> Any:
    """JSON-safe: numpy / torch scalars to Python, non-finite floats to None (strict JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, torch.Tensor):
        return clean(x.tolist())
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return clean(x.tolist())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, (bool, int, str)):
        return x
    return str(x)


class Report:
    """The JSON document: rewritten atomically after every stage (a killed run keeps what it measured)."""

    def __init__(self, out: str | None, doc: dict[str, Any]) -> None:
        self.out = Path(out) if out else None
        self.doc = doc
        self.lock = threading.Lock()

    def text(self) -> str:
        self.doc["elapsed_s"] = round(time.monotonic() - _T0, 2)
        return json.dumps(clean(self.doc), indent=2, allow_nan=False)

    def flush(self, text: str | None = None) -> None:
        if self.out is None:
            return
        with self.lock:
            text = text if text is not None else self.text()
            try:
                self.out.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.out.with_name(self.out.name + ".tmp")
                tmp.write_text(text + "\n")
                os.replace(tmp, self.out)
            except OSError as e:  # the result still reaches stdout at the end
                say(f"could not write {self.out}: {e}")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _proc_status(field: str) -> int | None:
    """A ``/proc/self/status`` memory field in bytes (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Memory:
    """Peak memory of a span: GPU bytes allocated by torch on CUDA (``max_memory_allocated``, what the plan
    estimates); on the CPU the peak RSS growth over the RSS at ``start`` (``/proc/self/clear_refs`` resets
    the high-water mark, Linux only), which also counts the allocator's and the libraries' own memory."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.kind = "cuda max_memory_allocated" if self.cuda else "cpu peak RSS growth (VmHWM - VmRSS at start)"
        self.base = 0

    def start(self, base: int | None = None) -> None:
        """Start a span; on the CPU ``base`` (an earlier RSS, e.g. before the model was built) replaces the
        RSS now as the level the growth is measured from, so that the weights count as on the GPU."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = 0  # absolute: what is allocated before (the model's weights) is part of the peak
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        self.base = base if base is not None else (_proc_status("VmRSS") or 0)

    def peak(self) -> int | None:
        if self.cuda:
            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated())
        hwm = _proc_status("VmHWM")
        return None if hwm is None else max(hwm - self.base, 0)


class TokenCounter:
    """Counts the tokens every block processes (forward pre-hooks on ``model.blocks``): ``tokens`` is the
    full-model equivalent (block tokens / n_layers), so prefix reuse, which runs only the later blocks, and
    key-value-cached suffixes count what they really computed. Forward only (saliency's backward is not
    counted)."""

    def __init__(self, model: Any) -> None:
        self.blocks = list(model.blocks)
        self.block_tokens = 0
        self.handles: list[Any] = []

    def _pre(self, module: Any, args: tuple, kwargs: dict) -> None:
        for a in (*args, *kwargs.values()):
            if isinstance(a, torch.Tensor) and a.dim() == 3:
                self.block_tokens += int(a.shape[0]) * int(a.shape[1])
                return

    def __enter__(self) -> "TokenCounter":
        self.handles = [b.register_forward_pre_hook(self._pre, with_kwargs=True) for b in self.blocks]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()

    @property
    def tokens(self) -> float:
        return self.block_tokens / max(len(self.blocks), 1)


class Runner:
    """Runs stages under the global time guard and records each one in the report."""

    def __init__(self, report: Report, budget_s: float, device: str) -> None:
        self.report = report
        self.deadline = _T0 + budget_s
        self.device = device
        self.stages: dict[str, dict[str, Any]] = report.doc["stages"]
        signal.signal(signal.SIGALRM, self._alarm)

    def _alarm(self, signum: int, frame: Any) -> None:
        raise OutOfTime("stage time cap reached")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, fn: Callable[[], dict[str, Any]], *, cap_s: float, min_s: float, reserve_s: float = 0.0,
            needs: tuple[str, ...] = ()) -> dict[str, Any]:
        """Run ``fn`` as stage ``name``: at most ``cap_s`` seconds and never into the last ``reserve_s`` of the
        budget (kept for later stages); skipped with a reason if a stage it ``needs`` is not ok or if fewer
        than ``min_s`` seconds are left."""
        rec: dict[str, Any] = {"status": "skipped"}
        self.stages[name] = rec
        bad = [n for n in needs if self.stages.get(n, {}).get("status") != "ok"]
        allowed = min(cap_s, self.left() - reserve_s)
        if bad:
            rec["reason"] = "needs " + ", ".join(f"{n} ({self.stages.get(n, {}).get('status', 'not run')})" for n in bad)
        elif allowed < min_s:
            rec["reason"] = (f"out of time: {max(allowed, 0):.0f} s left for it (budget {self.left():.0f} s, "
                             f"{reserve_s:.0f} s kept for later stages); it needs >= {min_s:.0f} s")
        if "reason" in rec:
            say(f"{name}: skipped: {rec['reason']}")
            self.report.flush()
            return rec
        say(f"{name}: start (cap {allowed:.0f} s)")
        rec["status"] = "running"
        self.report.flush()
        t0, c0 = time.perf_counter(), time.process_time()
        signal.setitimer(signal.ITIMER_REAL, max(allowed, 1.0))
        try:
            rec.update(fn() or {})
            rec["status"] = "ok"
        except OutOfTime:
            rec["status"] = "timed_out"
            rec["reason"] = f"stopped at its time cap ({allowed:.0f} s)"
        except Skip as e:
            rec["status"] = "skipped"
            rec["reason"] = str(e)
        except Exception as e:  # noqa: BLE001 - recorded: one failing stage must not lose the others
            rec["status"] = "failed"
            rec["error"] = f"{type(e).__name__}: {e}"[:2000]
            rec["traceback"] = traceback.format_exc()[-4000:]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        rec["cpu_seconds"] = round(time.process_time() - c0, 3)  # this process, all threads: wall >> cpu = a busy machine
        try:  # a stage stopped in the middle may hold tensors: free them before the next one
            free_memory(self.device)
        except BaseException as e:  # noqa: BLE001 - a broken CUDA context is recorded, the report still goes out
            rec["cleanup_error"] = f"{type(e).__name__}: {e}"[:500]
        say(f"{name}: {rec['status']} in {rec['seconds']:.1f} s"
            + (f": {rec.get('reason') or rec.get('error')}" if rec["status"] != "ok" else ""))
        self.report.flush()
        return rec


# ============================================================================ small model: parity and speed
def _timed(fn: Callable[[], Any], device: str, repeats: int) -> float:
    fn()  # warm-up (kernels, allocator)
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t) / repeats


def _tokens(model: Any, device: str) -> torch.Tensor:
    toks = [model.to_tokens(p)[0] for p in PROMPTS]
    n = min(len(t) for t in toks)  # same length, no padding: the check is about numerics and speed
    return torch.stack([t[:n] for t in toks]).to(device)


def parity(hooked: Any, bridge: Any, hf: Any, toks: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        ref = hf(toks).logits.float()
        lh, ch = hooked.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_resid_post"))
        lb, cb = bridge.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_resid_post"))
    rel = max(((ch[k].float() - cb[k].float()).norm() / ch[k].float().norm()).item() for k in ch.keys())
    return {"hooked_vs_hf_logits_max_abs": (lh.float() - ref).abs().max().item(),
            "bridge_vs_hf_logits_max_abs": (lb.float() - ref).abs().max().item(),
            "bridge_vs_hooked_logits_max_abs": (lb.float() - lh.float()).abs().max().item(),
            "resid_post_rel_max": rel, "logit_scale_max_abs": ref.abs().max().item()}


def patch_sweep(model: Any, toks: torch.Tensor, donor_last: list[torch.Tensor], use_prefix_reuse: bool) -> None:
    """resid_pre at the last position patched from a donor, every layer: what causal tracing sweeps."""
    from medinterp.models import run_from_layer

    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_resid_pre"))
        for layer in range(model.cfg.n_layers):
            resid = cache[f"blocks.{layer}.hook_resid_pre"].clone()
            resid[:, -1] = donor_last[layer]
            run_from_layer(model, toks, resid, layer, use_prefix_reuse=use_prefix_reuse)


def saliency_step(model: Any, toks: torch.Tensor) -> None:
    """Bare forward + backward with weight gradients, one prompt at a time (saliency_speed.py's 'bare')."""
    for i in range(toks.shape[0]):
        model.zero_grad(set_to_none=True)
        logits = model(toks[i : i + 1])
        loss = -torch.log_softmax(logits[0, -2].float(), -1)[toks[i, -1]]
        loss.backward()
    model.zero_grad(set_to_none=True)


def load_small(smoke: bool, device: str, dtype: torch.dtype) -> tuple[Any, Any, Any, str]:
    """(hooked, bridge, plain transformers reference, name) of the small model."""
    if smoke:
        from medinterp.testing import tiny_model

        hooked = tiny_model(arch="gemma3", n_layers=3, backend="hooked", dtype=dtype)
        bridge = tiny_model(arch="gemma3", n_layers=3, backend="bridge", dtype=dtype)
        return hooked, bridge, hooked.hf_reference, "tiny-gemma3 (smoke)"
    import medinterp as mi
    from transformers import AutoModelForCausalLM

    from medinterp.models import BUILTIN_MODELS, _builtin_folder, cache_dir

    hooked = mi.load_model("gemma-3-270m", backend="hooked", device=device, dtype=dtype)
    bridge = mi.load_model("gemma-3-270m", backend="bridge", device=device, dtype=dtype)
    folder, _, _ = _builtin_folder(BUILTIN_MODELS["gemma-3-270m"], cache_dir())
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True,
                                              attn_implementation="eager").to(device).eval()
    return hooked, bridge, hf, "gemma-3-270m"


def _curve(res: Any) -> list[float]:
    import numpy as np

    return [float(v) for v in np.asarray(res.layer_curve(), dtype=float).ravel()]


def small_stage(smoke: bool, device: str, dtype_name: str, repeats: int, store: dict[str, Any]) -> dict[str, Any]:
    import medinterp as mi

    dtype = DTYPES[dtype_name]
    mem = Memory(device)
    mem.start()
    t0 = time.perf_counter()
    hooked, bridge, hf, name = load_small(smoke, device, dtype)
    out: dict[str, Any] = {"model": name, "dtype": dtype_name, "load_s": round(time.perf_counter() - t0, 2),
                           "backends": {"hooked": hooked.medinterp_info.get("backend"),
                                        "bridge": bridge.medinterp_info.get("backend")}}
    try:
        toks = _tokens(hooked, device)
        out["tokens_shape"] = list(toks.shape)
        out["parity"] = parity(hooked, bridge, hf, toks)
        del hf
        say(f"  parity {dtype_name}: {out['parity']}")
        with torch.no_grad():
            _, donor = hooked.run_with_cache(toks.flip(0), names_filter=lambda n: n.endswith("hook_resid_pre"))
        last = [donor[f"blocks.{layer}.hook_resid_pre"][:, -1] for layer in range(hooked.cfg.n_layers)]
        del donor
        out["patching_sweep_s"] = {
            "hooked_prefix_reuse": _timed(lambda: patch_sweep(hooked, toks, last, True), device, repeats),
            "hooked_hook_path": _timed(lambda: patch_sweep(hooked, toks, last, False), device, repeats),
            "bridge_hook_path": _timed(lambda: patch_sweep(bridge, toks, last, False), device, repeats),
        }
        out["bare_saliency_s"] = {
            "hooked": _timed(lambda: saliency_step(hooked, toks), device, repeats),
            "bridge": _timed(lambda: saliency_step(bridge, toks), device, repeats),
        }
        say(f"  bare patching / saliency {dtype_name}: {out['patching_sweep_s']} {out['bare_saliency_s']}")
        # the library's own techniques, as the quick map runs them (hooked backend)
        techs: dict[str, Any] = {}
        for tname, fn in (("causal_trace", mi.causal_trace), ("saliency", mi.saliency)):
            with TokenCounter(hooked) as c:
                sync(device)
                t1 = time.perf_counter()
                res = fn(hooked, PAIRS, preset="quick", progress=False)
                sync(device)
                dt = time.perf_counter() - t1
            techs[tname] = {"seconds": round(dt, 3), "tokens": c.tokens, "tokens_per_s": c.tokens / dt if dt > 0 else None,
                            "curve": _curve(res), "unavailable": res.unavailable()}
            say(f"  {tname} {dtype_name}: {dt:.1f} s, {c.tokens:.0f} tokens")
        out["techniques"] = techs
        store[dtype_name] = out
    finally:
        out["peak_memory_GiB"] = (mem.peak() or 0) / GiB
        out["memory_kind"] = mem.kind
        del hooked, bridge
    return out


def compare_dtypes(store: dict[str, Any]) -> dict[str, Any]:
    """bf16 against float32 on the same small model: curve differences and time ratios."""
    f, b = store.get("float32"), store.get("bfloat16")
    if not f or not b:
        raise Skip("needs both small_float32 and small_bfloat16 results")
    out: dict[str, Any] = {"curve_max_abs_diff": {}, "time_ratio_bf16_over_fp32": {}}
    for t in f["techniques"]:
        cf, cb = f["techniques"][t]["curve"], b["techniques"][t]["curve"]
        pairs = [(x, y) for x, y in zip(cf, cb) if math.isfinite(x) and math.isfinite(y)]
        out["curve_max_abs_diff"][t] = max((abs(x - y) for x, y in pairs), default=None)
        out["curve_finite_layers"] = {**out.get("curve_finite_layers", {}), t: [len(pairs), len(cf)]}
        out["time_ratio_bf16_over_fp32"][t] = b["techniques"][t]["seconds"] / f["techniques"][t]["seconds"]
    for k in f["patching_sweep_s"]:
        out["time_ratio_bf16_over_fp32"][f"patching_sweep {k}"] = b["patching_sweep_s"][k] / f["patching_sweep_s"][k]
    for k in f["bare_saliency_s"]:
        out["time_ratio_bf16_over_fp32"][f"bare_saliency {k}"] = b["bare_saliency_s"][k] / f["bare_saliency_s"][k]
    for dt, x in (("float32", f), ("bfloat16", b)):
        p = x["patching_sweep_s"]
        out[f"{dt}: bridge hook path / hooked prefix reuse"] = p["bridge_hook_path"] / p["hooked_prefix_reuse"]
        out[f"{dt}: hooked hook path / prefix reuse"] = p["hooked_hook_path"] / p["hooked_prefix_reuse"]
        out[f"{dt}: bridge / hooked bare saliency"] = x["bare_saliency_s"]["bridge"] / x["bare_saliency_s"]["hooked"]
    return out


# ============================================================================ big model: plan, build, map
def big_hf_config(smoke: bool, vocab: int | None = None) -> dict[str, Any]:
    """The seed model's HF config (``medinterp.models.seeds``); scaled down to toy size for the smoke run."""
    from medinterp.models.seeds import SEED_MODELS

    cfg = dict(SEED_MODELS[BIG_SEED].config)
    if smoke:
        cfg.update(SMOKE_BIG)
        cfg["query_pre_attn_scalar"] = SMOKE_BIG["head_dim"]
        if vocab is not None:
            cfg["vocab_size"] = vocab
    return cfg


def quick_workload() -> Any:
    """``plan``'s work sizes for the map run here: the quick presets' prompt counts, one family."""
    from medinterp.models.plan import Workload
    from medinterp.techniques import REGISTRY

    q = {t: REGISTRY[t].params("quick") for t in TECHNIQUES}
    return Workload(geometry_prompts=int(q["geometry"].get("max_prompts") or 300),
                    saliency_prompts=int(q["saliency"].get("max_prompts") or 16),
                    lesion_prompts=int(q["lesion"].get("max_prompts") or 48),
                    lesion_modes=len(q["lesion"].get("modes") or ["skip"]),
                    patching_pairs=int(q["patching"].get("max_pairs") or 40), n_families=1)


def gpu_mem_gb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory / 1e9
    return 80.0  # smoke: the 80 GB GPU the check is for


def big_plan(smoke: bool, device: str, state: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import asdict

    from medinterp.models.plan import Gpus, plan_model, plan_spec, shape_from_config

    gpus = f"1x{gpu_mem_gb(device):.0f}GB"
    work = quick_workload()
    if smoke:
        tok = big_tokenizer(smoke)  # the toy model's vocabulary is the word tokenizer's
        state["tokenizer"] = tok
        shape = shape_from_config(big_hf_config(True, len(tok)), "gemma-3 (smoke size)")
        plan = plan_model(shape, Gpus.parse(gpus), dtype="bfloat16", backend="hooked", work=work)
    else:  # exactly what `medinterp plan --model gemma-3-27b --gpus 1xNGB --dtype bfloat16 --backend hooked` computes
        plan = plan_spec(BIG_SEED, gpus, dtype="bfloat16", backend="hooked", work=work)
    state["plan"] = plan
    rows = {r.technique: {"total_GiB": r.total / GiB, "weights_GiB": r.weights / GiB,
                          "activations_GiB": r.activations / GiB, "gradients_GiB": r.gradients / GiB,
                          "seconds_one_run": r.seconds, "fits": r.fits} for r in plan.rows}
    return {"gpus": gpus, "workload": asdict(work), "params_total": plan.params_total, "backend": plan.backend,
            "rows": rows, "notes": plan.notes,
            "call": (f"plan_model(<smoke shape>, {gpus!r}, ...)" if smoke else
                     f"plan_spec({BIG_SEED!r}, {gpus!r}, dtype='bfloat16', backend='hooked', work=<quick, 1 family>)")}


def big_tokenizer(smoke: bool) -> Any:
    """Gemma 3's tokenizer (every Gemma 3 size shares it) from the offline 270M package; the word-level
    test tokenizer for the smoke run."""
    if smoke:
        from medinterp.testing import word_tokenizer

        return word_tokenizer()
    from transformers import AutoTokenizer

    from medinterp.models import BUILTIN_MODELS, _builtin_folder, cache_dir, offline_hf

    folder, _, _ = _builtin_folder(BUILTIN_MODELS["gemma-3-270m"], cache_dir())
    with offline_hf():
        # add_bos_token: the tokenizer HookedTransformer uses (load_model's hooked path loads it so too)
        return AutoTokenizer.from_pretrained(str(folder), add_bos_token=True, local_files_only=True)


def big_tl_config(smoke: bool, device: str, dtype: torch.dtype, vocab: int) -> tuple[Any, dict[str, Any]]:
    """TransformerLens's Gemma-3-27B config (what ``load_model`` builds the hooked model from), checked
    against the seed config in ``medinterp.models.seeds``; resized to the smoke config for ``--cpu-smoke``."""
    from transformer_lens import HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading

    seed = big_hf_config(smoke, vocab)
    d = loading.convert_hf_model_config(TL_GEMMA3_27B)
    if not smoke:
        want = {"d_model": seed["hidden_size"], "n_layers": seed["num_hidden_layers"],
                "n_heads": seed["num_attention_heads"], "n_key_value_heads": seed["num_key_value_heads"],
                "d_head": seed["head_dim"], "d_mlp": seed["intermediate_size"], "d_vocab": seed["vocab_size"],
                "window_size": seed["sliding_window"]}
        diff = {k: (d.get(k), v) for k, v in want.items() if d.get(k) != v}
        if diff:
            raise RuntimeError(f"TL's {TL_GEMMA3_27B} config differs from medinterp.models.seeds: {diff}")
    else:
        L = seed["num_hidden_layers"]
        d.update(d_model=seed["hidden_size"], d_head=seed["head_dim"], n_heads=seed["num_attention_heads"],
                 n_key_value_heads=seed["num_key_value_heads"], d_mlp=seed["intermediate_size"], n_layers=L,
                 n_ctx=seed["max_position_embeddings"], d_vocab=vocab, window_size=seed["sliding_window"],
                 attn_types=["global" if (i + 1) % 4 == 0 else "local" for i in range(L)])
    d.update(tokenizer_name=None, device=device, dtype=dtype, default_prepend_bos=True, tokenizer_prepends_bos=True,
             original_architecture="Gemma3ForCausalLM")
    facts = {k: d[k] for k in ("n_layers", "d_model", "n_heads", "n_key_value_heads", "d_head", "d_mlp", "d_vocab",
                               "n_ctx", "window_size")}
    facts["attn_types"] = {"local": d["attn_types"].count("local"), "global": d["attn_types"].count("global")}
    return HookedTransformerConfig(**d), facts


def big_meta(state: dict[str, Any]) -> dict[str, Any]:
    """The full-size Gemma-3-27B built on the ``meta`` device (shapes only, no memory, ~1 s on a CPU), in both
    modes: its parameter count against the plan's, and proof that the build creates every tensor on the
    default device (so under ``torch.device("cuda")`` nothing of the 27B is put on the host)."""
    from medinterp.models import construct
    from medinterp.models.plan import plan_spec

    plan = state.get("plan")
    if plan is None or state.get("smoke"):  # the smoke plan is of the toy model: plan the real one here
        plan = plan_spec(BIG_SEED, "1x80GB", dtype="bfloat16", backend="hooked", work=quick_workload())
    from medinterp.models.seeds import SEED_MODELS

    cfg, facts = big_tl_config(False, "meta", torch.bfloat16, int(SEED_MODELS[BIG_SEED].config["vocab_size"]))
    t0 = time.perf_counter()
    with torch.device("meta"):  # no tokenizer: shapes only (the vocabulary comes from the config)
        model = construct.random_hooked(cfg, None, seed=0, device="meta", dtype=torch.bfloat16)
    params = {n: p for n, p in model.named_parameters()}
    n = sum(p.numel() for p in params.values())
    out = {"config": facts, "build_s": round(time.perf_counter() - t0, 3), "params": n,
           "params_embed": params["embed.W_E"].numel(), "params_unembed": params["unembed.W_U"].numel(),
           "params_bias": sum(p.numel() for k, p in params.items() if k.rsplit(".", 1)[-1].startswith("b_")),
           "weights_GiB": sum(p.numel() * p.element_size() for p in params.values()) / GiB,
           "devices": sorted({str(t.device) for t in (*params.values(), *model.buffers())}),
           "plan_params_total": plan.params_total, "plan_weights_GiB": plan.rows[0].weights / GiB,
           "params_over_plan": n / plan.params_total}
    # TransformerLens keeps its own unembedding (W_U) where the checkpoint ties it to the embedding
    if plan.params_total and n > plan.params_total:
        out["note"] = (f"{(n - plan.params_total) / 1e9:.2f}B parameters more than the plan: the hooked model's "
                       "W_U is a separate copy of the tied embedding (and TL keeps zero biases)")
    del model, params
    return out


def big_build(smoke: bool, device: str, state: dict[str, Any]) -> dict[str, Any]:
    from medinterp.models import construct
    from medinterp.models.backends import capabilities

    if not smoke and not device.startswith("cuda"):
        raise Skip("no CUDA device (run with --cpu-smoke to test the script on the CPU)")
    plan = state.get("plan")
    need = max(r.total for r in plan.rows) if plan is not None else None
    out: dict[str, Any] = {"plan_need_GiB": None if need is None else need / GiB}
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info(torch.device(device))
        out["gpu_free_GiB_before"], out["gpu_total_GiB"] = free / GiB, total / GiB
        if need is not None and free < need:
            raise Skip(f"{free / GiB:.1f} GiB free on {device}, the plan needs {need / GiB:.1f} GiB for this run")
    tok = state.get("tokenizer") or big_tokenizer(smoke)
    dtype = torch.bfloat16
    cfg, facts = big_tl_config(smoke, device, dtype, len(tok))
    out["config"] = facts
    host_before = _proc_status("VmRSS")
    state["rss_before_build"] = host_before
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    mem = Memory(device)
    mem.start()
    t0 = time.perf_counter()
    # The default device makes every parameter and buffer be created on the GPU: the 27B never exists on
    # the host (random_hooked then moves nothing). TransformerLens's own init, seeded.
    with torch.device(device):
        model = construct.random_hooked(cfg, tok, seed=0, device=device, dtype=dtype)
    sync(device)
    out["build_s"] = round(time.perf_counter() - t0, 2)
    host_hwm = _proc_status("VmHWM")
    out["host_peak_growth_GiB"] = None if host_before is None or host_hwm is None else (host_hwm - host_before) / GiB
    n_params = sum(p.numel() for p in model.parameters())
    wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bbytes = sum(b.numel() * b.element_size() for b in model.buffers())
    out.update(params=n_params, weights_GiB=wbytes / GiB, buffers_GiB=bbytes / GiB,
               param_devices=sorted({str(p.device) for p in model.parameters()}),
               param_dtypes=sorted({str(p.dtype) for p in model.parameters()}),
               peak_memory_GiB_build=(mem.peak() or 0) / GiB, memory_kind=mem.kind)
    if plan is not None:
        out["plan_weights_GiB"] = plan.rows[0].weights / GiB
        out["plan_params_total"] = plan.params_total
    caps = capabilities(model)
    model.medinterp_info = {
        "spec": f"{BIG_SEED}:random" if not smoke else "gpu_check:gemma3-smoke:random",
        "model_name": model.cfg.model_name or BIG_SEED, "source": {"kind": "random_init", "seed": 0,
                                                                   "config": TL_GEMMA3_27B, "smoke": smoke},
        "fold_ln": False, "center_writing_weights": False, "center_unembed": False, "fold_value_biases": False,
        "dtype": "bfloat16", "device": device, "backend": caps.backend, "capabilities": caps.to_dict(),
        "random_init": True, "seed": 0, "init": "transformer_lens", "n_layers": model.cfg.n_layers,
        "d_model": model.cfg.d_model, "n_heads": model.cfg.n_heads, "d_vocab": model.cfg.d_vocab,
        "architecture": "Gemma3ForCausalLM", "default_prepend_bos": True,
    }
    state["model"] = model
    say(f"  built {n_params / 1e9:.2f}B params ({wbytes / GiB:.1f} GiB) on {out['param_devices']} in {out['build_s']} s")
    return out


def _cell(kmap: Any, technique: str) -> dict[str, Any]:
    try:
        c = kmap.cell(FAMILY, technique)
        return {"code": c.code, "reason": c.reason}
    except Exception as e:  # noqa: BLE001 - the cell's text is a nicety; the timings stand without it
        return {"code": None, "reason": f"cell unavailable: {type(e).__name__}: {e}"[:300]}


def _map_kwargs(smoke: bool, techniques: list[str], work: Path) -> dict[str, Any]:
    tk = {t: {**AS_KNOWN.get(t, {}), **(SMOKE_TECH.get(t, {}) if smoke else {})} for t in techniques}
    return dict(techniques=techniques, quick=True, out_dir=str(work), progress=False,
                technique_kwargs={t: v for t, v in tk.items() if v}, **(SMOKE_MARKING if smoke else {}))


def big_map(smoke: bool, device: str, technique: str, state: dict[str, Any]) -> dict[str, Any]:
    import medinterp as mi

    model, plan = state["model"], state.get("plan")
    kw = _map_kwargs(smoke, [technique], state["work"])
    mem = Memory(device)
    mem.start(base=state.get("rss_before_build"))
    with TokenCounter(model) as c:
        t0 = time.perf_counter()
        # twin=model: a second random-init 27B would not fit beside this one on one 80 GB GPU, and the
        # model is itself random-init, so the twin's jobs are the same computation
        kmap = mi.knowledge_map(model, [FAMILY], twin=model, **kw)
        sync(device)
        dt = time.perf_counter() - t0
    peak = mem.peak()
    out: dict[str, Any] = {"seconds": round(dt, 3), "tokens": c.tokens, "tokens_per_s": c.tokens / dt if dt > 0 else None,
                           "peak_memory_GiB": None if peak is None else peak / GiB, "memory_kind": mem.kind,
                           "technique_kwargs": kw["technique_kwargs"].get(technique, {}),
                           "job_seconds": {k: v for k, v in (kmap.provenance.get("timing_s") or {}).items()},
                           "job_status": {"model": kmap.status.get(FAMILY, {}).get(technique)},
                           "cell": _cell(kmap, technique)}
    if plan is not None:
        row = next(r for r in plan.rows if r.technique == technique)
        out["plan_total_GiB"] = row.total / GiB
        out["plan_seconds_one_run"] = row.seconds
        if peak:
            out["measured_over_plan"] = peak / row.total
            out["within_20pct"] = abs(peak / row.total - 1) <= 0.2
    state["done"].append(technique)
    return out


def _job_files(work: Path) -> dict[str, int]:
    """Every saved job's ``job.json`` in the work dir and its modification time (a rewritten one: recomputed)."""
    return {str(p.relative_to(work)): p.stat().st_mtime_ns for p in work.rglob("job.json")}


def big_assemble(smoke: bool, device: str, state: dict[str, Any]) -> dict[str, Any]:
    import medinterp as mi

    done = list(state["done"])
    if not done:
        raise Skip("no technique's map finished")
    model, work = state["model"], state["work"]
    before = _job_files(work)
    with TokenCounter(model) as c:
        t0 = time.perf_counter()
        kmap = mi.knowledge_map(model, [FAMILY], twin=model, **_map_kwargs(smoke, done, work))
        dt = time.perf_counter() - t0
    after = _job_files(work)
    # the jobs were saved by the stages above and must be loaded, not run again; the tokens here are the
    # report decorations that run the model (the patching cell's attention view: one prompt)
    return {"seconds": round(dt, 3), "techniques": done, "jobs_loaded": len(before),
            "jobs_recomputed": sorted(k for k, v in after.items() if before.get(k) != v),
            "tokens_run": c.tokens, "cells": {t: _cell(kmap, t) for t in done}, "intervals": list(kmap.intervals)}


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    st = doc["stages"]
    rows = {}
    for t in TECHNIQUES:
        r = st.get(f"big_map_{t}", {})
        rows[t] = {k: r.get(k) for k in ("status", "peak_memory_GiB", "plan_total_GiB", "measured_over_plan",
                                         "within_20pct", "tokens_per_s", "seconds")}
    b = st.get("big_build", {})
    m = st.get("big_meta", {})
    return {"big_meta_params_over_plan": m.get("params_over_plan"),"stage_status": {k: v.get("status") for k, v in st.items()},
            "big_plan_vs_measured": rows,
            "big_weights": {"measured_GiB": b.get("weights_GiB"), "plan_GiB": b.get("plan_weights_GiB"),
                            "params": b.get("params"), "plan_params": b.get("plan_params_total")},
            "small_bf16_vs_fp32": st.get("small_bf16_vs_fp32", {}).get("curve_max_abs_diff")}


# ============================================================================ main
def _env(device: str, smoke: bool) -> dict[str, Any]:
    import transformer_lens
    import transformers

    import medinterp

    env: dict[str, Any] = {"device": device, "smoke": smoke, "python": platform.python_version(),
                           "torch": torch.__version__, "transformers": transformers.__version__,
                           "transformer_lens": getattr(transformer_lens, "__version__", "?"),
                           "medinterp": medinterp.__version__, "cpu_count": os.cpu_count(),
                           "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                           cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.device(device))
        free, total = torch.cuda.mem_get_info(torch.device(device))
        env.update(gpu=p.name, gpu_total_GiB=total / GiB, gpu_free_GiB=free / GiB, cuda=torch.version.cuda,
                   capability=f"{p.major}.{p.minor}")
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out", default=None, help="also write the JSON here (rewritten after every stage)")
    ap.add_argument("--budget-s", type=float, default=570.0, help="whole-run time limit in seconds (default 570)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed repeats of the bare benchmarks (default 3; 1 with --cpu-smoke)")
    ap.add_argument("--cpu-smoke", action="store_true", help="the same code path on the CPU at toy size (tests this script)")
    ap.add_argument("--skip-small", action="store_true", help="skip the Gemma 3 270M stages")
    ap.add_argument("--skip-big", action="store_true", help="skip the 27B stages")
    args = ap.parse_args(argv)
    if not args.budget_s > 0:
        ap.error(f"--budget-s {args.budget_s}: expected a positive number of seconds")
    if args.repeats is None:
        args.repeats = 1 if args.cpu_smoke else 3
    if args.repeats < 1:
        ap.error(f"--repeats {args.repeats}: expected 1 or more")
    smoke = args.cpu_smoke
    if smoke:
        # toy-sized matrices: extra intra-op threads only spin (measured 4x the CPU time on 2 busy cores)
        torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    device = "cpu" if smoke or not cuda else "cuda:0"
    real_stdout = sys.stdout
    report = Report(args.out, {"script": "benchmarks/gpu_check.py", "mode": "cpu-smoke" if smoke else "gpu",
                               "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "budget_s": args.budget_s, "family": FAMILY, "big_model": BIG_SEED, "stages": {}})
    done = threading.Event()

    def watchdog() -> None:  # the main thread stuck in native code past the budget: report and leave
        if done.wait(args.budget_s + 15):
            return
        report.doc["watchdog"] = "the run overran its budget inside native code; stopped by the watchdog"
        for _ in range(3):  # the main thread may be writing into the document right now
            try:
                text = report.text()
                break
            except RuntimeError:
                time.sleep(0.1)
        else:
            text = json.dumps({"watchdog": report.doc["watchdog"], "error": "report unreadable"})
        report.flush(text)
        print(text, file=real_stdout, flush=True)
        os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()
    runner = Runner(report, args.budget_s, device)
    state: dict[str, Any] = {"done": [], "small": {}, "smoke": smoke}
    # stdout carries the JSON document alone: anything a library prints goes to stderr with the progress
    with contextlib.redirect_stdout(sys.stderr), contextlib.ExitStack() as stack:
        import tempfile

        state["work"] = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_check-")))
        try:
            _run_stages(runner, report, args, state, device, smoke, cuda)
        except BaseException as e:  # noqa: BLE001 - Ctrl-C or a bug between stages: the report still goes out
            report.doc["script_error"] = f"{type(e).__name__}: {e}"[:2000]
            report.doc["script_traceback"] = traceback.format_exc()[-4000:]
        state.pop("model", None)
        try:
            free_memory(device)
            report.doc["summary"] = clean(summarize(report.doc))
            for line in summary_lines(report.doc):
                say(line)
        except Exception as e:  # noqa: BLE001 - the stages' own records stand without the summary
            report.doc["summary_error"] = f"{type(e).__name__}: {e}"[:500]
        statuses = [s.get("status") for s in report.doc["stages"].values()]
        rc = 1 if "script_error" in report.doc or any(s in ("failed", "timed_out") for s in statuses) else 0
        report.doc["exit_code"] = rc
        final = report.text()
        report.flush(final)  # the file and stdout hold the same document
    done.set()
    print(final, file=real_stdout, flush=True)
    return rc


def _run_stages(runner: Runner, report: Report, args: argparse.Namespace, state: dict[str, Any], device: str,
                smoke: bool, cuda: bool) -> None:
    runner.run("env", lambda: _env(device, smoke), cap_s=60, min_s=1)
    if not smoke and not cuda:
        say("no CUDA device: GPU stages are skipped (--cpu-smoke tests this script on the CPU)")
    gpu_ok = smoke or cuda
    small_reserve = 0.0 if args.skip_big else (30.0 if smoke else 330.0)  # time kept for the 27B stages
    for dt in ("float32", "bfloat16"):
        name = f"small_{dt}"
        if args.skip_small:
            report.doc["stages"][name] = {"status": "skipped", "reason": "--skip-small"}
        elif not gpu_ok:
            report.doc["stages"][name] = {"status": "skipped",
                                          "reason": "no CUDA device (--cpu-smoke tests this script on the CPU)"}
        else:
            runner.run(name, lambda dt=dt: small_stage(smoke, device, dt, args.repeats, state["small"]),
                       cap_s=150 if dt == "float32" else 100, min_s=5 if smoke else 30, reserve_s=small_reserve)
    if not args.skip_small and gpu_ok:
        runner.run("small_bf16_vs_fp32", lambda: compare_dtypes(state["small"]), cap_s=10, min_s=0.5,
                   needs=("small_float32", "small_bfloat16"))
    big = ("big_plan", "big_meta", "big_build", *(f"big_map_{t}" for t in TECHNIQUES), "big_map_assemble")
    if args.skip_big:
        for n in big:
            report.doc["stages"][n] = {"status": "skipped", "reason": "--skip-big"}
        return
    runner.run("big_plan", lambda: big_plan(smoke, device, state), cap_s=60, min_s=2)
    runner.run("big_meta", lambda: big_meta(state), cap_s=60, min_s=2)
    runner.run("big_build", lambda: big_build(smoke, device, state), cap_s=150, min_s=10 if smoke else 40,
               reserve_s=5 if smoke else 60)
    for t in TECHNIQUES:
        runner.run(f"big_map_{t}", lambda t=t: big_map(smoke, device, t, state), cap_s=240,
                   min_s=3 if smoke else 30, reserve_s=2 if smoke else 15, needs=("big_build",))
    runner.run("big_map_assemble", lambda: big_assemble(smoke, device, state), cap_s=60, min_s=1 if smoke else 5,
               needs=("big_build",))


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """The plan-vs-measured table, for the person watching stderr."""
    def f(x: Any, spec: str) -> str:
        ok = isinstance(x, (int, float)) and not isinstance(x, bool)
        return format(x, spec) if ok else "-".rjust(int(spec.split(".")[0] or 0))

    lines = [f"{'stage':<22} {'status':<10} {'seconds':>8}"]
    lines += [f"{k:<22} {str(v.get('status')):<10} {f(v.get('seconds'), '8.1f')}" for k, v in doc["stages"].items()]
    lines.append(f"{'27B technique':<14} {'peak GiB':>9} {'plan GiB':>9} {'meas/plan':>9} {'tokens/s':>10}")
    for t, r in (doc.get("summary", {}).get("big_plan_vs_measured") or {}).items():
        lines.append(f"{t:<14} {f(r.get('peak_memory_GiB'), '9.2f')} {f(r.get('plan_total_GiB'), '9.2f')} "
                     f"{f(r.get('measured_over_plan'), '9.2f')} {f(r.get('tokens_per_s'), '10.0f')}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
