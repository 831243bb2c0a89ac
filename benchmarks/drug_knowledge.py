"""Does the model know the drug facts we probe? Top-5 indication recall and dose-digit accuracy.

For every drug of the shipped ``drugs`` set, the model reads "The drug {drug} is used to treat" (and
optionally other templates) and we check whether any of its top-5 next tokens is a word of that drug's
indication (the ``indication`` column plus the ``keywords`` list). Two scores:

* strict: a top-5 token equals a whole word of an indication keyword (e.g. " hypertension");
* lenient: a top-5 token of >= 4 letters is also accepted when it is the start of such a word
  (" hyp" for "hypertension": the model began the right word but the tokenizer split it).

Both are compared with a shuffled-indication baseline (each drug scored against another drug's
indication words), which shows what generic continuations such as " pain" or " cancer" score.

For the ``dosage_drugs`` set it also reports how often the top-1 next token after
"The usual adult dose of {drug} is " is the leading digit of the usual adult dose.
Nothing is asserted: the numbers are printed (and written as JSON with --json) for the record.

Usage:
    .venv/bin/python benchmarks/drug_knowledge.py [--model gemma-3-270m] [--k 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections import defaultdict

import torch

import medinterp as mi
from medinterp.concepts import load_concepts

TEMPLATES = ("The drug {drug} is used to treat", "{drug} is a medication used to treat")


def _words(drug_item: dict) -> set[str]:
    texts = [drug_item["indication"]] + list(drug_item.get("keywords") or [])
    out: set[str] = set()
    for t in texts:
        out.update(w for w in re.findall(r"[a-z0-9]+", str(t).lower()) if len(w) >= 3)
    return out


def _match(token: str, words: set[str]) -> tuple[bool, bool]:
    """(strict, lenient) match of one decoded token against the indication words."""
    w = re.sub(r"[^a-z0-9]", "", token.lower())
    if len(w) < 3:
        return False, False
    strict = w in words
    lenient = strict or (len(w) >= 4 and any(x.startswith(w) for x in words))
    return strict, lenient


@torch.no_grad()
def last_logits(model, prompts: list[str], batch_size: int = 32) -> torch.Tensor:
    """Next-token logits at the last real position of each prompt (left padding), ``[n, d_vocab]``."""
    outs = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        toks = model.to_tokens(chunk, padding_side="left")
        logits = model(toks, padding_side="left")
        outs.append(logits[:, -1, :].float())
    return torch.cat(outs)


def _score(tops: list[list[str]], words: list[set[str]]) -> tuple[float, float]:
    """Fraction of prompts whose top-k tokens hit their indication words (strict, lenient)."""
    s = l_ = 0
    for toks, w in zip(tops, words):
        m = [_match(x, w) for x in toks]
        s += any(a for a, _ in m)
        l_ += any(b for _, b in m)
    return s / len(tops), l_ / len(tops)


def drug_recall(model, k: int = 5, templates=TEMPLATES, n_perm: int = 20, seed: int = 0) -> dict:
    """Top-k indication recall per template, with a shuffled-indication baseline.

    The baseline scores each drug's top-k tokens against the indication words of a *random other*
    drug (mean over ``n_perm`` permutations): what generic continuations (" pain", " cancer", " high")
    would score without drug-specific knowledge.
    """
    rng = random.Random(seed)
    drugs = load_concepts("drugs")
    words = [_words(it) for it in drugs.items]
    res: dict = {"k": k, "templates": list(templates), "per_template": {}, "misses": []}
    by_spec: dict[str, list[int]] = defaultdict(list)
    any_strict = [False] * len(drugs)
    any_len = [False] * len(drugs)
    for t in templates:
        prompts = [drugs.render(t, it)[0] for it in drugs.items]
        top = last_logits(model, prompts).topk(k, dim=-1).indices
        tops = [[model.to_string(int(x)) for x in row] for row in top]
        strict, lenient = _score(tops, words)
        base = []
        for _ in range(n_perm):
            perm = list(range(len(words)))
            rng.shuffle(perm)
            base.append(_score(tops, [words[j] for j in perm]))
        res["per_template"][t] = {"strict": strict, "lenient": lenient,
                                  "shuffled_baseline_strict": sum(b[0] for b in base) / n_perm,
                                  "shuffled_baseline_lenient": sum(b[1] for b in base) / n_perm}
        for i, it in enumerate(drugs.items):
            m = [_match(x, words[i]) for x in tops[i]]
            s_, l_ = any(a for a, _ in m), any(b for _, b in m)
            any_strict[i] |= s_
            any_len[i] |= l_
            if t == templates[0]:
                by_spec[it["specialty"]].append(int(s_))
                if not l_:
                    res["misses"].append({"drug": it["drug"], "indication": it["indication"].strip(), "top": tops[i]})
    res["n_drugs"] = len(drugs)
    res["any_template_strict"] = sum(any_strict) / len(drugs)
    res["any_template_lenient"] = sum(any_len) / len(drugs)
    res["by_specialty_strict"] = {s: sum(v) / len(v) for s, v in sorted(by_spec.items())}
    return res


def dose_digit(model) -> dict:
    dd = load_concepts("dosage_drugs")
    prompts = dd.prompts(templates=[0])
    logits = last_logits(model, [p.text for p in prompts])
    top1 = [model.to_string(int(x)) for x in logits.argmax(-1)]
    hits = [t == p.answer for t, p in zip(top1, prompts)]
    # chance level: always answering the most common leading digit
    common = max({p.answer for p in prompts}, key=lambda d: sum(q.answer == d for q in prompts))
    return {"n": len(prompts), "top1_digit_accuracy": sum(hits) / len(prompts),
            "majority_digit_baseline": sum(p.answer == common for p in prompts) / len(prompts),
            "majority_digit": common}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--json", default=None, help="write the numbers to this JSON file")
    args = ap.parse_args()
    t0 = time.time()
    model = mi.load_model(args.model)
    torch.set_grad_enabled(False)
    r = drug_recall(model, k=args.k)
    d = dose_digit(model)
    print(f"model {args.model}: {r['n_drugs']} drugs, top-{args.k} next tokens")
    for t, v in r["per_template"].items():
        print(f"  {t!r}: strict {v['strict']:.1%}  lenient {v['lenient']:.1%}   (shuffled-indication baseline: "
              f"strict {v['shuffled_baseline_strict']:.1%}, lenient {v['shuffled_baseline_lenient']:.1%})")
    print(f"  either template: strict {r['any_template_strict']:.1%}  lenient {r['any_template_lenient']:.1%}")
    print("  by specialty (strict, first template): "
          + ", ".join(f"{s} {v:.0%}" for s, v in r["by_specialty_strict"].items()))
    print(f"  misses (first template, lenient): {len(r['misses'])}; e.g. "
          + "; ".join(f"{m['drug']} ({m['indication']}): {m['top']}" for m in r["misses"][:5]))
    print(f"dosage: top-1 next token = leading dose digit for {d['top1_digit_accuracy']:.1%} of {d['n']} drugs "
          f"(always '{d['majority_digit']}' would give {d['majority_digit_baseline']:.1%})")
    print(f"({time.time() - t0:.0f} s including model load)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "drugs": r, "dosage": d}, f, indent=1)


if __name__ == "__main__":
    main()
