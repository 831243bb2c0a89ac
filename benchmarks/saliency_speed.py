"""Saliency cost vs a bare forward+backward of the same model on the same prompts.

Speed (one process, interleaved repeats, medians per prompt):

* ``bare``          ``loss = -Σ log p(target)`` from the full logits, ``loss.backward()``, every ``.grad``
                    kept (``zero_grad(set_to_none=True)`` before each prompt): what a user would write.
* ``bare_targeted`` the same loss computed as saliency does (logits only at predicting positions),
                    ``.grad`` kept: isolates the cost of the hooks and statistics.
* ``saliency``      :func:`medinterp.techniques.saliency.saliency` one prompt at a time (``batch_size=1``:
                    hooks, statistics, bootstrap).
* ``saliency_batched``  the same numbers from padded batches of ``--batch-size`` prompts (per-prompt
                    statistics reduced during one batched backward); ``ratio_one_prompt_vs_batched`` is
                    the speed-up, measured in the same process, interleaved (a busy machine slows both).
* ``saliency_plain_hooks``  the same with ``fast_outer=False``: every parameter, embedding and
                    unembedding included, through a post-accumulate-grad hook (dense vocab gradients).

Memory (``--memory``): each mode runs in a fresh subprocess (glibc keeps freed memory, so modes
must not share a process); a thread samples RSS every 2 ms; reported is peak RSS minus RSS after the
model was loaded.

Usage::

    python benchmarks/saliency_speed.py --model gemma-3-270m --n-prompts 8 --repeats 3 --memory
    python benchmarks/saliency_speed.py --model tiny
    # the map's set-up: a family's answer prompts, block shares only
    python benchmarks/saliency_speed.py --pairs drug_pairs --n-prompts 32 --blocks-only --modes saliency,saliency_batched
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

DRUG_PROMPTS = [
    ("Metformin is a first-line medication for type 2", " diabetes"),
    ("Warfarin is an oral anticoagulant that antagonizes vitamin", " K"),
    ("Omeprazole is a proton pump", " inhibitor"),
    ("Atorvastatin lowers blood", " cholesterol"),
    ("Levothyroxine is used to treat an underactive", " thyroid"),
    ("Amoxicillin is a penicillin-class", " antibiotic"),
    ("Salbutamol is inhaled to relieve the symptoms of", " asthma"),
    ("Insulin is a hormone that lowers blood", " glucose"),
    ("Lisinopril is an angiotensin-converting enzyme", " inhibitor"),
    ("Sertraline is a selective serotonin reuptake", " inhibitor"),
    ("Furosemide is a loop", " diuretic"),
    ("Morphine is an opioid used to treat severe", " pain"),
]


def load(spec: str):
    if spec == "tiny":
        from medinterp.testing import tiny_model

        return tiny_model(n_layers=4, d_model=128, d_mlp=512)
    from medinterp.models import load_model

    return load_model(spec)


def prompts(n: int, pairs: str | None = None) -> list[tuple[str, str]]:
    if pairs:
        from medinterp.concepts import load_concepts
        from medinterp.prompt_inputs import answer_prompts

        got, _ = answer_prompts(load_concepts(pairs))
        return [got[i % len(got)] for i in range(n)]
    return [DRUG_PROMPTS[i % len(DRUG_PROMPTS)] for i in range(n)]


def run_bare(model, targets, targeted: bool) -> None:
    from medinterp.techniques.saliency import target_loss

    for t in targets:
        model.zero_grad(set_to_none=True)
        if targeted:
            loss = target_loss(model, t, "cpu")
        else:
            logp = torch.log_softmax(model(t.tokens[None]), dim=-1)[0]
            pos = torch.tensor(t.predict_positions)
            loss = -logp[pos, torch.as_tensor(t.target_ids)].sum()
        loss.backward()


OPTS: dict = {"batch_size": 16, "blocks_only": False}


def run_saliency(model, pairs, fast_outer: bool = True, batch_size: int = 1) -> None:
    from medinterp.techniques.saliency import saliency

    outer = not OPTS["blocks_only"]
    saliency(model, pairs, progress=False, track_memory=False, n_boot=100, fast_outer=fast_outer,
             batch_size=batch_size, include_embed=outer, include_unembed=outer)


def speed(model, pairs, repeats: int, modes: list[str] | None = None) -> dict:
    from medinterp.techniques.saliency import build_target

    targets = [build_target(model, p, a) for p, a in pairs]
    fns = {
        "bare": lambda: run_bare(model, targets, False),
        "bare_targeted": lambda: run_bare(model, targets, True),
        "saliency": lambda: run_saliency(model, pairs),
        "saliency_batched": lambda: run_saliency(model, pairs, batch_size=OPTS["batch_size"]),
        "saliency_plain_hooks": lambda: run_saliency(model, pairs, fast_outer=False),
    }
    fns = {k: v for k, v in fns.items() if modes is None or k in modes}
    # warm-up (allocator, lazy init)
    run_bare(model, targets[:1], False)
    run_saliency(model, pairs[:2], batch_size=2)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append((time.perf_counter() - t0) / len(pairs))
    model.zero_grad(set_to_none=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "seconds_per_prompt": {k: round(v, 4) for k, v in med.items()},
        "all_times": {k: [round(x, 4) for x in v] for k, v in times.items()},
    }
    for name, a, b in [("ratio_saliency_vs_bare", "saliency", "bare"),
                       ("ratio_saliency_vs_bare_targeted", "saliency", "bare_targeted"),
                       ("ratio_plain_hooks_vs_bare_targeted", "saliency_plain_hooks", "bare_targeted"),
                       ("ratio_one_prompt_vs_batched", "saliency", "saliency_batched"),
                       ("ratio_batched_vs_bare", "saliency_batched", "bare")]:
        if a in med and b in med:
            out[name] = round(med[a] / med[b], 3)
    return out


def memory_child(spec: str, mode: str, n: int, pair_set: str | None = None) -> None:
    """Runs in a fresh subprocess: peak RSS increase of one mode after the model is loaded."""
    from medinterp.techniques.saliency import PeakRSS, build_target

    model = load(spec)
    pairs = prompts(n, pair_set)
    targets = [build_target(model, p, a) for p, a in pairs]
    with PeakRSS() as tr:
        if mode == "saliency_batched":
            run_saliency(model, pairs, batch_size=OPTS["batch_size"])
        elif mode.startswith("saliency"):
            run_saliency(model, pairs, fast_outer=(mode == "saliency"))
        else:
            run_bare(model, targets, targeted=(mode == "bare_targeted"))
    n_params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"mode": mode, "peak_rss_delta_mb": round(tr.delta_mb, 1),
                      "model_params_mb": round(n_params * 4 / 2**20, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m", help="model spec, or 'tiny'")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory", action="store_true", help="also measure peak RSS per mode (subprocesses)")
    ap.add_argument("--memory-modes", default="bare,bare_targeted,saliency,saliency_batched,saliency_plain_hooks",
                    help="comma-separated modes for --memory")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--pairs", default=None, help="take the prompts from this pair set's answer prompts")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per batch of saliency_batched")
    ap.add_argument("--blocks-only", action="store_true", help="no embedding / unembedding (the map's set-up)")
    ap.add_argument("--modes", default=None, help="comma-separated speed modes (default: all)")
    args = ap.parse_args()
    OPTS.update(batch_size=args.batch_size, blocks_only=args.blocks_only)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._child:
        memory_child(args.model, args._child, args.n_prompts, args.pairs)
        return
    out: dict = {"model": args.model, "n_prompts": args.n_prompts, "threads": torch.get_num_threads()}
    if not args.no_speed:
        model = load(args.model)
        out["speed"] = speed(model, prompts(args.n_prompts, args.pairs), args.repeats,
                             args.modes.split(",") if args.modes else None)
        del model
    if args.memory:
        out["memory"] = {}
        for mode in args.memory_modes.split(","):
            cmd = [sys.executable, __file__, "--model", args.model, "--n-prompts", str(args.n_prompts), "--_child", mode,
                   "--batch-size", str(args.batch_size)] + (["--pairs", args.pairs] if args.pairs else []) + (
                   ["--blocks-only"] if args.blocks_only else [])
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out["memory"][mode] = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
