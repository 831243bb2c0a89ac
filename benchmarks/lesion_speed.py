"""Lesion speed: cached-prefix restart (``start_at_layer``) vs the naive full forward with hooks.

Measures, in one process (so machine load affects both sides alike; runs alternate):

* ``full``      the naive way: for every (mode, layer), the whole model with the lesion hooks and
  logits at every position;
* ``full_lean`` the whole model with hooks but unembedding only the read positions (separates the
  two savings);
* ``prefix``    what ``medinterp.lesion`` does: the intact run cached once (``resid_pre`` only), each
  lesion restarted at its block, unembedding only the read positions.

It also checks that the prefix path gives the same numbers as the naive one: the relative difference
‖a − b‖ / ‖b‖ of the final residual stream (over real tokens) and the largest absolute difference of
KL, log-prob drop and top-1 agreement, per lesion. And it times greedy continuations with and
without the KV cache and checks they give the same tokens.

Usage::

    python benchmarks/lesion_speed.py                      # Gemma 3 270M, drugs concept set
    python benchmarks/lesion_speed.py --model tiny --n-prompts 32
    python benchmarks/lesion_speed.py --modes skip,mlp_mean --repeats 3 --json out.json
    python benchmarks/lesion_speed.py --pair-sets --threads 1 --modes skip   # the map's preset on every family

``--pair-sets`` measures what the map's lesion preset costs instead: for each family's medical and control
pair set (``CONCEPT_FAMILIES``), ``lesion(..., only_known=True)`` on every distinct clean prompt, with the
known prompts, the CPU seconds of the known pass (intact clean + corrupted runs) and of the lesions (process
time: less sensitive than wall-clock to other load on a shared machine), and the spread of LD_clean and of the
fraction lost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

FALLBACK_PROMPTS = [
    ("Aspirin is a drug used in", " cardiology"),
    ("Metformin is prescribed for", " diabetes"),
    ("Warfarin is an", " anticoagulant"),
    ("Omeprazole reduces stomach", " acid"),
    ("Lisinopril is used to treat high blood", " pressure"),
    ("Amoxicillin is an", " antibiotic"),
    ("Insulin lowers blood", " sugar"),
    ("Atorvastatin lowers", " cholesterol"),
    ("Ibuprofen relieves", " pain"),
    ("Heparin prevents blood", " clots"),
    ("Levothyroxine treats an underactive", " thyroid"),
    ("Salbutamol relieves", " asthma"),
    ("Sertraline treats", " depression"),
    ("Furosemide is a", " diuretic"),
    ("Prednisone is a", " corticosteroid"),
    ("Morphine is an", " opioid"),
]


def load(spec: str):
    if spec == "tiny":
        from medinterp.testing import tiny_model

        return tiny_model(n_layers=6, d_model=128, n_heads=4, d_mlp=512, positional_embedding_type="rotary", rotary_dim=32)
    from medinterp.models import load_model

    return load_model(spec)


def prompts_for(model, concepts: str | None, n: int):
    from medinterp.techniques.lesion import items_from_inputs

    src = FALLBACK_PROMPTS
    if concepts:
        try:
            from medinterp.concepts import load_concepts

            src = load_concepts(concepts)
        except Exception as e:  # concept library absent: say so and use the fallback
            print(f"(concept set {concepts!r} unavailable: {e}; using {len(FALLBACK_PROMPTS)} built-in drug prompts)")
    items, _, _ = items_from_inputs(model, src)
    if len(items) > n:
        keep = np.linspace(0, len(items) - 1, n).round().astype(int)
        items = [items[i] for i in sorted(set(keep))]
    return items


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm((a - b).double()) / torch.linalg.vector_norm(b.double()).clamp(min=1e-30))


def main(argv=None) -> dict:
    from medinterp.hooks import compute_means, lesion_hooks, pad_token_id
    from medinterp.techniques.lesion import (
        compare,
        greedy_continuations,
        intact_run,
        lesioned_resid,
        lesioned_run,
        make_batch,
        readout_resid,
    )

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--concepts", default="drugs")
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--modes", default="skip,mlp_zero,attn_mean")
    ap.add_argument("--layers", default=None, help="comma-separated blocks (default all)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--gen-prompts", type=int, default=4)
    ap.add_argument("--gen-tokens", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--pair-sets", action="store_true", help="time the map preset on every family's pair sets")
    ap.add_argument("--families", default=None, help="with --pair-sets: comma-separated families (default all)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model = load(args.model)
    if args.pair_sets:
        return pair_sets(model, args.modes.split(","), args.families, args.json)
    print(f"model {args.model}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, d_vocab {model.cfg.d_vocab} "
          f"(loaded in {time.perf_counter() - t0:.1f} s); torch threads {torch.get_num_threads()}")
    items = prompts_for(model, args.concepts, args.n_prompts)
    modes = args.modes.split(",")
    n = model.cfg.n_layers
    layers = list(range(n)) if args.layers is None else [int(x) for x in args.layers.split(",")]
    dev = model.cfg.device
    batch = make_batch(items, list(range(len(items))), pad_token_id(model), dev)
    print(f"{len(items)} prompts in one batch of shape {tuple(batch.tokens.shape)}; modes {modes}; {len(layers)} layers")
    means = None
    if any(m.endswith("_mean") for m in modes):
        means = compute_means(model, [it.tokens for it in items], layers=layers,
                              sublayers=sorted({m.split("_")[0] for m in modes if m.endswith("_mean")}))

    # ---------------------------------------------------------------- equivalence
    intact_p, cache = intact_run(model, batch, layers, "prefix")
    intact_f, _ = intact_run(model, batch, layers, "full")
    real = batch.mask.bool()
    worst_rel, worst_metric = 0.0, 0.0
    with torch.no_grad():
        for mode in modes:
            for l in layers:
                a = lesioned_resid(model, batch, l, mode, cache=cache, means=means, method="prefix")
                b = lesioned_resid(model, batch, l, mode, means=means, method="full")
                worst_rel = max(worst_rel, rel(a[real], b[real]))
                mp = compare(intact_p, readout_resid(model, a, batch))
                mf = compare(intact_f, lesioned_run(model, batch, l, mode, means=means, method="full"))
                worst_metric = max(worst_metric, float(np.abs(mp - mf).max()))
    print(f"prefix vs naive: max relative difference of the final residual {worst_rel:.2e}; "
          f"max |Δ| of (KL, log-prob drop, top-1) {worst_metric:.2e}")

    # ---------------------------------------------------------------- timing
    def run_full():
        intact = intact_run(model, batch, layers, "full")[0]
        for mode in modes:
            for l in layers:
                compare(intact, lesioned_run(model, batch, l, mode, means=means, method="full"))

    def run_full_lean():
        intact = intact_run(model, batch, layers, "full")[0]
        for mode in modes:
            for l in layers:
                with torch.no_grad():
                    r = model.run_with_hooks(batch.tokens, attention_mask=batch.mask, stop_at_layer=n,
                                             fwd_hooks=lesion_hooks(l, mode, means=means))
                compare(intact, readout_resid(model, r, batch))

    def run_prefix():
        intact, c = intact_run(model, batch, layers, "prefix")
        for mode in modes:
            for l in layers:
                compare(intact, lesioned_run(model, batch, l, mode, cache=c, means=means, method="prefix"))

    times: dict[str, list[float]] = {"full": [], "full_lean": [], "prefix": []}
    fns = {"full": run_full, "full_lean": run_full_lean, "prefix": run_prefix}
    for r in range(args.repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    n_les = len(modes) * len(layers)
    for k in fns:
        print(f"{k:>10}: {med[k]:7.2f} s for {n_les} lesions × {len(items)} prompts "
              f"({1000 * med[k] / n_les:.0f} ms per lesion)  runs: {', '.join(f'{x:.2f}' for x in times[k])}")
    print(f"speed-up prefix vs full: {med['full'] / med['prefix']:.2f}×; prefix vs full_lean: "
          f"{med['full_lean'] / med['prefix']:.2f}×; full_lean vs full: {med['full'] / med['full_lean']:.2f}×")

    # ---------------------------------------------------------------- continuations
    ctx = [it.context for it in items[: args.gen_prompts]]
    mid = layers[len(layers) // 2]
    hooks = lambda pos: lesion_hooks(mid, modes[0], means=means, position_ids=pos)  # noqa: E731
    t = time.perf_counter()
    g_cache = greedy_continuations(model, ctx, args.gen_tokens, hooks)
    t_cache = time.perf_counter() - t
    t = time.perf_counter()
    g_nocache = greedy_continuations(model, ctx, args.gen_tokens, hooks, use_cache=False)
    t_nocache = time.perf_counter() - t
    same = bool(torch.equal(g_cache, g_nocache))
    print(f"greedy {args.gen_tokens} tokens × {len(ctx)} prompts, lesion {modes[0]}@{mid}: KV cache {t_cache:.2f} s, "
          f"no cache {t_nocache:.2f} s ({t_nocache / t_cache:.2f}×); same tokens: {same}")
    out = {
        "model": args.model, "n_prompts": len(items), "batch_shape": list(batch.tokens.shape), "modes": modes,
        "layers": layers, "max_rel_resid_diff": worst_rel, "max_abs_metric_diff": worst_metric,
        "times_s": times, "median_s": med, "speedup_prefix_vs_full": med["full"] / med["prefix"],
        "speedup_prefix_vs_full_lean": med["full_lean"] / med["prefix"],
        "generation": {"kv_cache_s": t_cache, "no_cache_s": t_nocache, "same_tokens": same},
        "note": "wall-clock on a shared machine; compare ratios, not absolute times",
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


def pair_sets(model, modes, families, json_path) -> dict:
    """CPU seconds of ``lesion(..., only_known=True)`` (the map preset) on every family's pair sets."""
    import types

    import medinterp.techniques.lesion.run as R
    from medinterp.concepts import CONCEPT_FAMILIES
    from medinterp.techniques.lesion import lesion

    R.time = types.SimpleNamespace(perf_counter=time.process_time)  # the run's stage timings in CPU seconds
    rows = []
    try:
        for fam in families.split(",") if families else list(CONCEPT_FAMILIES):
            for key in ("pairs", "control_pairs"):
                c = time.process_time()
                r = lesion(model, CONCEPT_FAMILIES[fam][key], modes=modes, only_known=True, n_continuations=0,
                           n_boot=200, progress=False, batch_size=16)
                ld = r.clean_ld[r.known]
                fr = r.values("ld_frac", modes[0])[r.known]
                rows.append(dict(family=fam, set=CONCEPT_FAMILIES[fam][key], prompts=r.n_prompts, known=r.n_known,
                                 cpu_s=round(time.process_time() - c, 2), known_pass_cpu_s=round(r.timings["known_s"], 2),
                                 lesions_cpu_s=round(r.timings["lesions_s"], 2),
                                 ld_clean_min_q10_median=[round(float(x), 2) for x in np.quantile(ld, [0, .1, .5])] if len(ld) else None,
                                 ld_frac_absmax=round(float(np.nanmax(np.abs(fr))), 2) if len(ld) else None))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        R.time = time
    out = {"modes": modes, "threads": torch.get_num_threads(), "sets": rows,
           "total_cpu_s": round(sum(r["cpu_s"] for r in rows), 1), "total_known": sum(r["known"] for r in rows)}
    print(f"total: {out['total_cpu_s']} CPU-s, {out['total_known']} known of {sum(r['prompts'] for r in rows)} prompts")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
