"""Activation collection throughput on the default model vs a bare HF ``transformers`` forward.

Same prompts, same batches (left padding), same process, interleaved repeats; reports prompts/s,
the ratio hooked / bare (target ≥ 0.85) and the peak RSS. Run: ``python benchmarks/activation_throughput.py``.

Two baselines: ``hf_forward`` is ``model(**batch)`` (full logits, what a bare forward costs), and
``hf_hidden_states`` is ``model(**batch, output_hidden_states=True)`` (how one would get every layer's
residual stream from plain transformers).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch


def prompts(n: int) -> list[str]:
    sexes = ["man", "woman"]
    templates = [
        "A {age}-year-old {sex} presents with chest pain and shortness of breath. The most likely diagnosis is",
        "The patient, a {age}-year-old {sex}, was started on metformin for",
    ]
    out = []
    i = 0
    while len(out) < n:
        out.append(templates[i % 2].format(age=1 + i % 100, sex=sexes[(i // 2) % 2]))
        i += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import medinterp as mi
    from medinterp.models import cache_dir
    from transformers import AutoModelForCausalLM

    model = mi.load_model("gemma-3-270m")
    folder = cache_dir() / "converted" / f"m-{model.medinterp_info['source']['gguf_sha256'][:16]}"
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).eval()
    tok = model.tokenizer
    texts = prompts(args.n)
    batches = [texts[i : i + args.batch_size] for i in range(0, len(texts), args.batch_size)]

    def run_medinterp():
        mi.collect_activations(model, texts, include_embed=True, batch_size=args.batch_size, progress=False)

    @torch.inference_mode()
    def run_hf(hidden: bool):
        tok.padding_side = "left"
        for b in batches:
            enc = tok(b, return_tensors="pt", padding=True)
            hf(**enc, output_hidden_states=hidden)

    runs = {"medinterp_collect": run_medinterp, "hf_forward": lambda: run_hf(False), "hf_hidden_states": lambda: run_hf(True)}
    for f in runs.values():  # warm-up
        f()
    best = {k: float("inf") for k in runs}
    for _ in range(args.repeats):
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"{args.n} prompts, batch {args.batch_size}, best of {args.repeats}, torch threads {torch.get_num_threads()}")
    for k, t in best.items():
        print(f"  {k:18s} {t:7.2f} s  {args.n / t:7.1f} prompts/s")
    for base in ("hf_forward", "hf_hidden_states"):
        print(f"  throughput ratio medinterp / {base}: {best[base] / best['medinterp_collect']:.2f}x")
    print(f"  peak RSS: {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
