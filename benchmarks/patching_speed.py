"""Benchmark: medinterp's patching engine vs TransformerLens's own patching, same process.

Gemma 3 270M, a full resid_pre layer × position sweep on >= 8 diagnosis pairs:

* wall time of ``transformer_lens.patching.get_act_patch_resid_pre`` (one call per pair, the
  normalised logit difference P as its metric) against ``medinterp.patch(..., positions="all")`` in
  its default (fast) batching, 0.1.0's prefix path (``prefix_cache=True``) and no prefix reuse
  (``prefix_cache=False``), all in this one process; the per-pair ratio (target >= 50x) and the
  largest absolute difference of P (target <= 1e-5);
* the sweep's FLOPs (ours and TL's) against the minimum the sweep needs: per cell (layer l,
  position p) only layers >= l at positions >= p change (causal attention), and the metric needs
  two logits at the last position;
* attribution patching: time ratio to the exact sweep and correlation with it;
* with ``--trace``: causal tracing (:func:`medinterp.techniques.patching.causal_trace`) on every shipped
  family's pair set: wall time, pairs known, band and mover block.

Run: ``.venv/bin/python benchmarks/patching_speed.py [--pairs 8] [--tl-pairs 1] [--model gemma-3-270m] [--trace]``
(``--tl-pairs``: how many pairs TL runs, default 1, its time is compared per pair). Prints a JSON
summary; ``--out FILE`` writes it too. The summary records the 1-minute load average: on a shared,
busy machine all times are "under load" (ours and TL's alike, measured in the same process).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import numpy as np
import torch

SYMPTOMS = {
    " angina": "exertional chest pain",
    " pneumonia": "fever and productive cough",
    " asthma": "episodic wheezing",
    " diabetes": "polyuria and thirst",
    " stroke": "sudden hemiparesis",
    " migraine": "throbbing headache with aura",
    " gout": "a swollen big toe",
    " malaria": "cyclic fevers",
    " anemia": "pallor and fatigue",
    " epilepsy": "recurrent seizures",
    " hepatitis": "jaundice",
    " tuberculosis": "night sweats and hemoptysis",
    " influenza": "fever and myalgia",
    " measles": "fever and rash",
}
TEMPLATE = "Patient with {s}. Diagnosis:"


def diagnosis_pairs(model, n: int = 8) -> list[tuple[str, str, str, str]]:
    """Clean/corrupted pairs of equal token length with single-token answers (ours; the concept
    library's ``diagnosis_pairs`` can be passed instead)."""
    items = [(d, TEMPLATE.format(s=s)) for d, s in SYMPTOMS.items()
             if len(model.to_tokens(d, prepend_bos=False)[0]) == 1]
    by_len: dict[int, list] = {}
    for d, text in items:
        by_len.setdefault(len(model.to_tokens(text)[0]), []).append((d, text))
    out = []
    for group in sorted(by_len.values(), key=len, reverse=True):
        for (d1, t1), (d2, t2) in itertools.permutations(group, 2):
            out.append((t1, t2, d1, d2))
            if len(out) >= n:
                return out
    return out


def _macs_layer_token(cfg, keys: int) -> float:
    """Multiply-accumulates of one transformer block for one query token attending to ``keys``."""
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    attn_proj = cfg.d_model * cfg.d_head * (2 * cfg.n_heads + 2 * n_kv)
    attn_mix = 2 * cfg.n_heads * cfg.d_head * keys
    mlp = (3 if cfg.gated_mlp else 2) * cfg.d_model * cfg.d_mlp
    return attn_proj + attn_mix + mlp


def flops(cfg, S: int) -> dict[str, float]:
    """FLOPs (2 × MACs) of a full resid_pre layer × position sweep of one pair of length S."""
    L, V, D = cfg.n_layers, cfg.d_vocab, cfg.d_model
    full_fwd = sum(_macs_layer_token(cfg, k + 1) for k in range(S)) * L
    embed_unembed_all = S * D * V
    tl = L * S * (full_fwd + embed_unembed_all)
    # ours: per layer l, S rows of S tokens through layers l..L-1, 2-column unembed at the last
    # position; plus the clean and corrupted cached runs (no unembed).
    per_layer_all_pos = sum(_macs_layer_token(cfg, k + 1) for k in range(S))
    ours = sum(S * (L - l) * per_layer_all_pos for l in range(L)) + L * S * 2 * D + 2 * full_fwd
    # floor: cell (l, p) needs positions p..S-1 in layers l..L-1, and 2 logits at the last token.
    floor = 0.0
    for l in range(L):
        for p in range(S):
            floor += (L - l) * sum(_macs_layer_token(cfg, k + 1) for k in range(p, S)) + 2 * D
    floor += 2 * full_fwd  # the clean and corrupted runs are needed by any method
    # with prefix reuse (default) ours = floor + one more corrupted run that fills the KV cache
    ours_prefix = floor + full_fwd
    return {"tl": 2 * tl, "ours": 2 * ours_prefix, "ours_no_prefix": 2 * ours, "floor": 2 * floor}


def trace_families(model, max_pairs: int | None = None) -> dict:
    """Causal tracing on each shipped family's pair set: time, pairs known, accuracy, band, mover."""
    from medinterp.concepts import CONCEPT_FAMILIES
    from medinterp.techniques import REGISTRY, Family

    out = {}
    for fam, spec in CONCEPT_FAMILIES.items():
        params = {"n_boot": 200} if max_pairs is None else {"n_boot": 200, "max_pairs": max_pairs}
        t = time.perf_counter()
        r = REGISTRY["patching"].run(model, Family(fam, pairs=spec["pairs"]), progress=False, **params)
        out[fam] = {"pairs": spec["pairs"], "s": round(time.perf_counter() - t, 2), "valid": len(r.all_pairs),
                    "dropped": len(r.dropped), "known": r.n_known, "accuracy_two_way": round(r.accuracy, 3),
                    "accuracy_top1": round(r.accuracy_top1, 3), "known_by_model": r.known_by_model,
                    "band": r.band, "mover": r.mover,
                    "span_curve": np.round(r.curve("span"), 3).tolist(), "last_curve": np.round(r.curve("last"), 3).tolist(),
                    "span_median": np.round(r.median[:, 0], 3).tolist() if r.n_known else []}
        print(f"trace {fam}: {out[fam]['known']}/{out[fam]['valid']} known, band {r.band}, mover {r.mover}, "
              f"{out[fam]['s']}s", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--tl-pairs", type=int, default=1)
    ap.add_argument("--trace", action="store_true", help="also time causal tracing on every shipped pair set")
    ap.add_argument("--trace-pairs", type=int, default=None, help="first N rows of each pair set (default all)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is faster on a shared, busy CPU)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import medinterp as mi
    from transformer_lens import patching as tlp

    from medinterp.techniques.patching import attribution_patch, correlation, patch

    torch.set_grad_enabled(False)
    t = time.perf_counter()
    model = mi.load_model(args.model, device=args.device)
    load_s = time.perf_counter() - t
    pairs = diagnosis_pairs(model, args.pairs)
    S = len(model.to_tokens(pairs[0][0])[0])
    print(f"model loaded in {load_s:.1f}s; {len(pairs)} pairs of {S} tokens", file=sys.stderr, flush=True)

    # --- ours: default batching, 0.1.0's prefix path, no prefix reuse (same process, one after the other)
    times, results = {}, {}
    for label, mode in (("default", "auto"), ("prefix_by_position", True), ("no_prefix", False)):
        t = time.perf_counter()
        results[label] = patch(model, pairs, site="resid_pre", positions="all", metric="P", progress=False,
                               min_denominator=0.0, prefix_cache=mode)
        times[label] = time.perf_counter() - t
        print(f"ours ({label}): {times[label]:.1f}s", file=sys.stderr, flush=True)
    res = results["default"]
    ours_s = times["default"]

    # --- TransformerLens, the same metric, pair by pair
    n_tl = max(1, min(args.tl_pairs, len(pairs)))
    tl_vals = []
    t = time.perf_counter()
    for clean, corr, ca, xa in pairs[:n_tl]:
        ct, xt = model.to_tokens(clean), model.to_tokens(corr)
        cid, xid = model.to_single_token(ca), model.to_single_token(xa)
        clean_logits, cache = model.run_with_cache(ct)
        lc = clean_logits[0, -1, cid] - clean_logits[0, -1, xid]
        corr_logits = model(xt)
        lx = corr_logits[0, -1, cid] - corr_logits[0, -1, xid]

        def metric(lg, cid=cid, xid=xid, lc=lc, lx=lx):
            return (lg[0, -1, cid] - lg[0, -1, xid] - lx) / (lc - lx)

        tl_vals.append(tlp.get_act_patch_resid_pre(model, xt, cache, metric).cpu().numpy())
    tl_s = time.perf_counter() - t
    print(f"TL: {tl_s:.1f}s for {n_tl} pair(s)", file=sys.stderr, flush=True)
    tl_per_pair = tl_s / n_tl
    tl_all = np.stack(tl_vals)  # [pair, layer, pos]
    max_abs = float(np.nanmax(np.abs(tl_all - res.values[:n_tl, :, :, 0])))

    # --- attribution
    t = time.perf_counter()
    attr = attribution_patch(model, pairs, site="resid_pre", positions="all", progress=False, min_denominator=0.0)
    attr_s = time.perf_counter() - t

    f = flops(model.cfg, S)
    summary = {
        "device": str(args.device),
        "torch_threads": torch.get_num_threads(),
        "model": args.model,
        "model_load_s": round(load_s, 1),
        "n_pairs": len(pairs),
        "tokens_per_prompt": S,
        "cells": int(np.prod(res.values.shape[:3])),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "ours_s": round(ours_s, 2),
        "ours_prefix_by_position_s": round(times["prefix_by_position"], 2),
        "ours_no_prefix_s": round(times["no_prefix"], 2),
        "max_abs_diff_default_vs_prefix_by_position": float(np.nanmax(np.abs(res.values - results["prefix_by_position"].values))),
        "max_abs_diff_default_vs_no_prefix": float(np.nanmax(np.abs(res.values - results["no_prefix"].values))),
        "engine_calls": {k: r.diagnostics["engine"]["forward_calls"] for k, r in results.items()},
        "tl_pairs_run": n_tl,
        "tl_s": round(tl_s, 2),
        "tl_s_per_pair": round(tl_per_pair, 2),
        "speedup_per_pair": round(tl_per_pair / (ours_s / len(pairs)), 1),
        "speedup_per_pair_prefix_by_position": round(tl_per_pair / (times["prefix_by_position"] / len(pairs)), 1),
        "speedup_target_50x_met": bool(tl_per_pair / (ours_s / len(pairs)) >= 50),
        "max_abs_diff_P": max_abs,
        "parity_target_1e-5_met": bool(max_abs <= 1e-5),
        "denominators": (res.clean_ld - res.corrupted_ld).round(3).tolist(),
        "flops_tl": f["tl"] * len(pairs),
        "flops_ours": f["ours"] * len(pairs),
        "flops_floor": f["floor"] * len(pairs),
        "flops_ours_no_prefix": f["ours_no_prefix"] * len(pairs),
        "flops_tl_over_ours": round(f["tl"] / f["ours"], 2),
        "floor_fraction_reached_no_prefix": round(f["floor"] / f["ours_no_prefix"], 3),
        "floor_fraction_reached": round(f["floor"] / f["ours"], 3),
        "attribution_s": round(attr_s, 2),
        "exact_over_attribution_time": round(ours_s / attr_s, 1),
        "attribution_correlation_per_pair": round(correlation(attr.values, res.values), 4),
        "attribution_correlation_mean": round(correlation(attr.mean, res.mean), 4),
        "layer_curve_last_pos": np.round(res.layer_curve(), 3).tolist(),
        "engine": res.diagnostics.get("engine"),
    }
    if args.trace:
        summary["causal_trace"] = trace_families(model, args.trace_pairs)
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(summary, fh, indent=2)


if __name__ == "__main__":
    main()
