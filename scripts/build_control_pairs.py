"""Build the matched control pair sets (``*_pairs_control.yaml``, ``dosage_control.yaml``) from curated facts.

Each control family is a list of non-medical, common-knowledge facts ``(subject, answer)`` put in the
*same frame string* as its medical pair set, with one word swapped where grammar needs it (drugs: "The
drug {drug} is used for" -> "The device {object} is used for"; the swapped word has the same token count
on both offline tokenizers). The builder

1. renders every fact, keeps those whose answer is one token and the real next token on both
   tokenizers (Gemma 3 270M, SmolLM2-135M);
2. runs each prompt once on each model and reads the last-position logits of every candidate answer, so
   that the logit difference of any pair ``(i, j)`` is known without another forward pass;
3. forms every pair of facts with the same prompt token length on both tokenizers and different answer
   tokens, and keeps the pairs that Gemma 3 270M *knows* (causal tracing's rule,
   ``LD_clean > 0 > LD_corrupted``, ``|LD_clean - LD_corrupted| >= 1``);
4. picks pairs greedily so that the joint histogram of item-span size and prompt length (causal
   tracing's ``subject_tokens`` and ``prompt_tokens`` on Gemma's tokenizer) follows the medical set's
   (a second pass on the span size alone when fewer than 24 pairs are found), each fact used at most
   ``--max-use`` times, preferring pairs known on SmolLM2 too and, among those, answer prior
   (``log p(answer | BOS)``) and clean logit difference closest to the medical pairs' means;
5. writes the YAML file (``--write``) or prints what it would write.

Usage (from the repository root)::

    .venv/bin/python scripts/build_control_pairs.py --family drugs [--write]

Check the result with ``scripts/check_control_pairs.py`` or ``medinterp concepts check --family drugs``.
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections import Counter, defaultdict

import numpy as np
import torch

import medinterp as mi
from medinterp.concepts import CONCEPT_FAMILIES, data_path, load_concepts
from medinterp.covariates import answer_prior

from control_pair_facts import FAMILIES  # noqa: E402  (scripts/ is on sys.path when run as a script)


def _q(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


@torch.no_grad()
def last_logits(model, prompts: list[str], batch: int = 32) -> tuple[list[list[int]], torch.Tensor]:
    """Tokens of each prompt and the last-position logits (one forward per prompt, batched by length)."""
    toks = [model.to_tokens(p)[0].tolist() for p in prompts]
    out = torch.zeros(len(prompts), model.cfg.d_vocab)
    by_len = defaultdict(list)
    for i, t in enumerate(toks):
        by_len[len(t)].append(i)
    for _, idx in sorted(by_len.items()):
        for b in range(0, len(idx), batch):
            ii = idx[b:b + batch]
            x = torch.tensor([toks[i] for i in ii])
            out[ii] = model(x)[:, -1].float()
    return toks, out


def measure(model, facts: list[dict]) -> dict:
    """Per fact: prompt tokens, answer id (or None when not one valid next token), last logits."""
    prompts = [f["prompt"] for f in facts]
    toks, logits = last_logits(model, prompts)
    ids = []
    for f, t in zip(facts, toks):
        a = model.to_tokens(f["answer"], prepend_bos=False)[0].tolist()
        joined = model.to_tokens(f["prompt"] + f["answer"])[0].tolist()
        ids.append(a[0] if len(a) == 1 and joined == t + a else None)
    return {"toks": toks, "ids": ids, "logits": logits}


def medical_span_hist(model, family: str) -> tuple[Counter, float, float]:
    """Histogram of (item-span size, prompt length) of the medical pairs on ``model``'s tokenizer, and the
    mean and SD of their clean LD over the known pairs (causal tracing's rule)."""
    from medinterp.techniques.patching.tracing import baselines, known_mask

    ps = load_concepts(CONCEPT_FAMILIES[family]["pairs"])
    chk = ps.check(model)
    h = Counter()
    for tp in chk.tokenized:
        d = np.flatnonzero(np.array(tp.clean_tokens) != np.array(tp.corrupted_tokens))
        h[(int(d[-1] - d[0] + 1), len(tp.clean_tokens))] += 1
    cl, xl, _ = baselines(model, list(chk.tokenized))
    known, _ = known_mask(cl, xl)
    ld = cl[known] if known.sum() >= 2 else cl
    return h, float(np.mean(ld)), float(np.std(ld) + 1e-9)


def build(family: str, gemma, smol, *, n_target: int, max_use: int, seed: int = 0) -> tuple[list, dict]:
    spec = FAMILIES[family]
    facts, seen_facts = [], set()
    for f in spec["facts"]:  # a fact listed twice is one fact
        f = dict(f)
        f["prompt"] = spec["frame"].format(**f)
        if (f["prompt"], f["answer"]) not in seen_facts:
            seen_facts.add((f["prompt"], f["answer"]))
            facts.append(f)
    mg, ms = measure(gemma, facts), measure(smol, facts)
    from medinterp.concepts.checks import _leak

    ok = [i for i in range(len(facts)) if mg["ids"][i] is not None and ms["ids"][i] is not None
          and _leak(facts[i]["prompt"], facts[i]["answer"]) is None]
    bad = [facts[i]["prompt"] + " |" + facts[i]["answer"] for i in range(len(facts)) if i not in ok]
    prior_g = dict(zip([mg["ids"][i] for i in ok], answer_prior(gemma, [mg["ids"][i] for i in ok])))
    med_hist, med_ld, sd_ld = medical_span_hist(gemma, family)
    med = load_concepts(CONCEPT_FAMILIES[family]["pairs"]).check(gemma)
    med_prior = float(np.mean(answer_prior(gemma, [a for a, _ in med.answer_ids])))
    cands = []
    for i, j in itertools.permutations(ok, 2):
        if spec.get("same_group") and facts[i].get("group") != facts[j].get("group"):
            continue
        if len(mg["toks"][i]) != len(mg["toks"][j]) or len(ms["toks"][i]) != len(ms["toks"][j]):
            continue
        if mg["ids"][i] == mg["ids"][j] or ms["ids"][i] == ms["ids"][j] or facts[i]["answer"] == facts[j]["answer"]:
            continue
        if facts[i]["prompt"] == facts[j]["prompt"]:
            continue
        lds = []
        for m in (mg, ms):
            a, b = m["ids"][i], m["ids"][j]
            c = float(m["logits"][i, a] - m["logits"][i, b])
            x = float(m["logits"][j, a] - m["logits"][j, b])
            lds.append((c, x, c > 0 > x and c - x >= 1.0))
        if not lds[0][2] and spec.get("require_known", True):
            continue
        d = np.flatnonzero(np.array(mg["toks"][i]) != np.array(mg["toks"][j]))
        span = int(d[-1] - d[0] + 1)
        a = mg["ids"][i]
        cands.append(dict(i=i, j=j, span=(span, len(mg["toks"][i])), smol_known=lds[1][2], gemma_known=lds[0][2],
                          ld=lds[0][0], logp=float(torch.log_softmax(mg["logits"][i], -1)[a]),
                          prior=float(prior_g[mg["ids"][i]])))
    rng = np.random.default_rng(seed)
    rng.shuffle(cands)
    total = sum(med_hist.values())
    quota = {s: math.ceil(c * n_target / total) for s, c in med_hist.items()}
    use = Counter()
    chosen, seen = [], set()
    got = Counter()
    # fill the (span, prompt length) quotas: known on Gemma, then on SmolLM2, then answer prior and clean LD
    # closest to the medical means
    sd_prior = float(np.std([c["prior"] for c in cands]) + 1e-9) if cands else 1.0
    cands.sort(key=lambda c: (not c["gemma_known"], not c["smol_known"],
                              abs(c["prior"] - med_prior) / sd_prior + abs(c["ld"] - med_ld) / sd_ld))
    if spec.get("match_dist"):
        chosen = _match_dist(family, gemma, cands, quota, n_target, max_use, rng)
        for c in chosen:
            got[c["span"]] += 1
    for c in ([] if spec.get("match_dist") else cands):
        s = c["span"]
        key = frozenset((c["i"], c["j"]))
        if got[s] >= quota.get(s, 0) or key in seen or use[c["i"]] >= max_use or use[c["j"]] >= max_use:
            continue
        chosen.append(c)
        seen.add(key)
        use[c["i"]] += 1
        use[c["j"]] += 1
        got[s] += 1
    # too few for the map (< 24 pairs): a second pass on the span size alone (quota by span, any length)
    if len(chosen) < 24 and not spec.get("match_dist"):
        span_quota, span_got = Counter(), Counter(s[0] for s in got.elements())
        for (sp, _), q in quota.items():
            span_quota[sp] += q
        for c in cands:
            sp = c["span"][0]
            key = frozenset((c["i"], c["j"]))
            if span_got[sp] >= span_quota[sp] or key in seen or use[c["i"]] >= max_use or use[c["j"]] >= max_use:
                continue
            chosen.append(c)
            seen.add(key)
            use[c["i"]] += 1
            use[c["j"]] += 1
            got[c["span"]] += 1
            span_got[sp] += 1
    info = dict(n_facts=len(facts), n_ok=len(ok), n_bad=len(bad), n_cands=len(cands), med_hist=dict(sorted(med_hist.items())),
                med_ld=med_ld, ctl_ld=float(np.mean([c["ld"] for c in chosen])) if chosen else float("nan"),
                got=dict(sorted(got.items())), quota=dict(sorted(quota.items())), med_prior=med_prior,
                ctl_prior=float(np.mean([c["prior"] for c in chosen])) if chosen else float("nan"),
                ctl_logp=float(np.mean([c["logp"] for c in chosen])) if chosen else float("nan"),
                n_units=len({c["i"] for c in chosen}),
                smol_known=sum(c["smol_known"] for c in chosen), gemma_known=sum(c["gemma_known"] for c in chosen),
                cand_hist=dict(sorted(Counter(c["span"] for c in cands).items())), bad=bad)
    rows = []
    for c in chosen:
        fi, fj = facts[c["i"]], facts[c["j"]]
        rows.append((fi, fj))
    return rows, info


MATCH_COVS = ("intact_logp", "answer_prior", "intact_ld", "prompt_tokens")


def _match_dist(family: str, gemma, cands: list, quota: dict, n_target: int, max_use: int, rng) -> list:
    """Distribution matching (``spec["match_dist"]``): for each known medical pair in turn (shuffled, cycled
    until ``n_target`` pairs or no admissible candidate is left), the unused candidate pair nearest to it in
    intact log p, answer prior, clean LD and prompt length (each in units of the medical SD), with the
    vignette-span size quota of the medical set (by span alone, any prompt length) and ``max_use`` per fact;
    candidates known on SmolLM2 too are preferred by a small distance bonus. So the control follows the
    medical *distribution* of the covariates that the map matches on, not only their means."""
    from medinterp.concepts.checks import pair_measures

    pm = pair_measures(gemma, CONCEPT_FAMILIES[family]["pairs"])
    ps = load_concepts(CONCEPT_FAMILIES[family]["pairs"])
    assert pm.n_valid == len(ps), "medical pairs dropped: cannot align intact log p"
    mm = measure(gemma, [{"prompt": p.clean, "answer": p.clean_answer} for p in ps.pairs])
    cov = dict(pm.covariates)
    cov["intact_logp"] = np.array([float(torch.log_softmax(mm["logits"][n], -1)[a]) for n, a in enumerate(mm["ids"])])
    T = np.stack([np.asarray(cov[k], float)[pm.known] for k in MATCH_COVS], 1)
    sd = T.std(0) + 1e-9
    X = np.array([[c["logp"], c["prior"], c["ld"], c["span"][1] - 1] for c in cands], float)
    bonus = np.array([0.0 if c["smol_known"] else 0.25 for c in cands])
    span_quota = Counter()
    for (sp, _), q in quota.items():
        span_quota[sp] += q
    span_got, use, seen, chosen = Counter(), Counter(), set(), []
    order = rng.permutation(len(T))
    progress = True
    while len(chosen) < n_target and progress:
        progress = False
        for t in order:
            if len(chosen) >= n_target:
                break
            d = np.abs((X - T[t]) / sd).sum(1) + bonus
            for k in np.argsort(d):
                c = cands[k]
                key = frozenset((c["i"], c["j"]))
                if (key in seen or span_got[c["span"][0]] >= span_quota[c["span"][0]]
                        or use[c["i"]] >= max_use or use[c["j"]] >= max_use):
                    continue
                chosen.append(c)
                seen.add(key)
                use[c["i"]] += 1
                use[c["j"]] += 1
                span_got[c["span"][0]] += 1
                progress = True
                break
    return chosen


def build_swap(family: str, gemma, smol) -> tuple[list, dict]:
    """The medical pairs with the medical word swapped (``spec["swap"]``: old -> new); every prompt keeps
    its token count on both tokenizers (checked)."""
    spec = FAMILIES[family]
    med = load_concepts(CONCEPT_FAMILIES[family]["pairs"])
    rows, bad = [], []
    for p in med.pairs:
        texts = []
        for t in (p.clean, p.corrupted):
            new = t
            for old, rep in spec["swap"].items():
                new = new.replace(old, rep)
            if new == t:
                bad.append(f"no swap in {t!r}")
            for m in (gemma, smol):
                if len(m.to_tokens(new)[0]) != len(m.to_tokens(t)[0]):
                    bad.append(f"{new!r}: token count differs from {t!r}")
            texts.append(new)
        fi = {"prompt": texts[0], "answer": p.clean_answer, **{k: p.meta.get(k) for k in med.columns}}
        fj = {"prompt": texts[1], "answer": p.corrupted_answer, **{k: p.meta.get(k) for k in med.columns}}
        rows.append((fi, fj))
    return rows, {"n": len(rows), "bad": bad}


def write_swap(family: str) -> str:
    """The medical YAML's pair rows with the swap applied to the prompts, under the control's header."""
    spec = FAMILIES[family]
    med_text = (data_path() / f"{CONCEPT_FAMILIES[family]['pairs']}.yaml").read_text(encoding="utf-8")
    head, body = med_text.split("\npairs:\n", 1)
    keep = [ln for ln in head.splitlines() if ln.startswith(("labels:", "  clean_", "  corrupted_", "columns:"))]
    for old, new in spec["swap"].items():
        body = body.replace(old, new)
    lines = [f"# Non-medical control for medinterp ({spec['name']}), matched to `{CONCEPT_FAMILIES[family]['pairs']}`.",
             "# Built by scripts/build_control_pairs.py (the medical rows with the medical word swapped).",
             f"name: {spec['name']}", "kind: pairs", f'version: "{spec["version"]}"', "description: >"]
    lines += ["  " + ln for ln in spec["description"].strip().splitlines()]
    lines += ["provenance: >"] + ["  " + ln for ln in spec["provenance"].strip().splitlines()]
    text = "\n".join(lines + keep) + "\npairs:\n" + body
    (data_path() / f"{spec['name']}.yaml").write_text(text, encoding="utf-8")
    return text


def write(family: str, rows: list) -> str:
    spec = FAMILIES[family]
    if "swap" in spec:
        return write_swap(family)
    name = spec["name"]
    col = spec["column"]
    extra = spec.get("extra_columns", [])
    cols = [f"clean_{col}", f"corrupted_{col}"] + [f"{p}_{e}" for e in extra for p in ("clean", "corrupted")] + ["source", "reviewed"]
    lines = [f"# Non-medical control for medinterp ({name}), matched to `{CONCEPT_FAMILIES[family]['pairs']}`.",
             f"# Built by scripts/build_control_pairs.py from scripts/control_pair_facts.py; edit the facts there.",
             f"name: {name}", "kind: pairs", f'version: "{spec["version"]}"', "description: >"]
    lines += ["  " + ln for ln in spec["description"].strip().splitlines()]
    lines += ["provenance: >"] + ["  " + ln for ln in spec["provenance"].strip().splitlines()]
    lines.append(f"columns: [{', '.join(cols)}]")
    lines.append("pairs:")
    for fi, fj in rows:
        cells = [f"clean: {_q(fi['prompt'])}", f"corrupted: {_q(fj['prompt'])}", f"clean_answer: {_q(fi['answer'])}",
                 f"corrupted_answer: {_q(fj['answer'])}", f"clean_{col}: {_q(fi[spec['subject']])}",
                 f"corrupted_{col}: {_q(fj[spec['subject']])}"]
        for e in extra:
            cells += [f"clean_{e}: {_q(fi.get(e, ''))}", f"corrupted_{e}: {_q(fj.get(e, ''))}"]
        cells += [f"source: {_q(spec.get('source', 'common knowledge'))}", 'reviewed: ""']
        lines.append("  - {" + ", ".join(cells) + "}")
    text = "\n".join(lines) + "\n"
    (data_path() / f"{name}.yaml").write_text(text, encoding="utf-8")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description="build matched control pair sets")
    ap.add_argument("--family", action="append", choices=sorted(FAMILIES))
    ap.add_argument("--n", type=int, default=0, help="target pairs (default: the medical set's size)")
    ap.add_argument("--max-use", type=int, default=3)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    gemma, smol = mi.load_model("gemma-3-270m"), mi.load_model("smollm2-135m")
    for fam in args.family or sorted(FAMILIES):
        n = args.n or FAMILIES[fam].get("n_target") or len(load_concepts(CONCEPT_FAMILIES[fam]["pairs"]))
        if "swap" in FAMILIES[fam]:
            rows, info = build_swap(fam, gemma, smol)
        else:
            rows, info = build(fam, gemma, smol, n_target=n, max_use=FAMILIES[fam].get("max_use", args.max_use))
        print(f"== {fam}: {len(rows)} pairs; {info}")
        for fi, fj in rows[:5]:
            print(f"   {fi['prompt']!r}{fi['answer']!r} / {fj['prompt']!r}{fj['answer']!r}")
        if args.write:
            write(fam, rows)
            print(f"   wrote {FAMILIES[fam]['name']}.yaml")


if __name__ == "__main__":
    main()
