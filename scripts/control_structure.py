"""Print, per concept family, how its matched control compares with the medical set in structure.

For every family of ``medinterp.concepts.CONCEPT_FAMILIES`` and every scored labelling pair
(``labels[i]`` vs ``control_labels[i]``): class count and items per class (min / median / sorted sizes,
``ungrouped`` left out) and whether the control *dominates* (as many classes, and its k-th smallest class
at least as large as medicine's, for every k: the control can then be subsampled to the medical class
structure); the template count; and per tokenizer: the item token-count histogram of both sets, whether
the control's histogram covers medicine's (at every token count the control has at least as many items),
the share of medical items an exact one-to-one token-count match can pair, and the frame (tokens before
and after the item) of each template pair.

Usage (from the repository root; the tokenizers come from the converted built-in models)::

    .venv/bin/python scripts/control_structure.py                 # both offline tokenizers
    .venv/bin/python scripts/control_structure.py --models none   # structure only, no tokenizer
    .venv/bin/python scripts/control_structure.py --families drugs dosage
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from typing import Any, Sequence

from medinterp.concepts import CONCEPT_FAMILIES, load_concepts

UNGROUPED = "ungrouped"


def class_sizes(cs: Any, label: str) -> list[int]:
    """Sorted class sizes of a labelling (items, not prompts), ``ungrouped``/empty left out; a continuous
    labelling counts each distinct value as a class (age: the ages, progression: the stages)."""
    vals = [str(it[label]) for it in cs.items if it.get(label) not in (None, "") and str(it[label]) != UNGROUPED]
    return sorted(Counter(vals).values())


def dominates(ctl: Sequence[int], med: Sequence[int]) -> bool:
    """The control's class structure can be subsampled to medicine's: at least as many classes, and
    the largest k control classes each at least as large as the largest k medical ones (greedy on sorted
    sizes is exact for this assignment)."""
    c, m = sorted(ctl, reverse=True), sorted(med, reverse=True)
    return len(c) >= len(m) and all(a >= b for a, b in zip(c, m))


def _tokenizer(spec: str) -> Any:
    """The built-in model's tokenizer, read from its converted folder (no weights loaded)."""
    from transformers import AutoTokenizer

    from medinterp.models._cache import cache_dir
    from medinterp.models.loader import _resolve

    return AutoTokenizer.from_pretrained(_resolve(spec, cache_dir()).path)


def item_tokens(tok: Any, item: str) -> int:
    """Sub-word tokens of an item as it sits after a space in a prompt (no special tokens)."""
    return len(tok(" " + str(item), add_special_tokens=False)["input_ids"])


def frame_tokens(tok: Any, cs: Any) -> list[tuple[float, float]]:
    """Per template: mean tokens before and after the item over the set's prompts (the item's leading
    space counts with the item)."""
    out = []
    for t in range(len(cs.templates)):
        before, after = [], []
        for p in cs.prompts(templates=[t]):
            s0, s1 = p.span
            pre = p.text[:s0]
            pre = pre[:-1] if pre.endswith(" ") else pre
            before.append(len(tok(pre, add_special_tokens=False)["input_ids"]) if pre else 0)
            after.append(len(tok(p.text[s1:], add_special_tokens=False)["input_ids"]) if p.text[s1:] else 0)
        out.append((statistics.mean(before), statistics.mean(after)))
    return out


def histogram(tok: Any, cs: Any) -> Counter:
    return Counter(item_tokens(tok, x) for x in sorted({str(it[cs.item_key]) for it in cs.items}))


def covers(ctl: Counter, med: Counter) -> bool:
    return all(ctl.get(k, 0) >= v for k, v in med.items())


def exact_match_share(ctl: Counter, med: Counter) -> float:
    return sum(min(v, ctl.get(k, 0)) for k, v in med.items()) / max(1, sum(med.values()))


def family_report(fam: str, tokenizers: dict[str, Any],
                  control_labels: Sequence[str] | None = None) -> tuple[list[str], bool]:
    f = CONCEPT_FAMILIES[fam]
    med, ctl = load_concepts(f["concepts"]), load_concepts(f["control"])
    ok = True
    lines = [f"== {fam}: {med.name} v{med.version} ({len(med)} items) vs {ctl.name} v{ctl.version} ({len(ctl)} items)",
             f"   templates: {len(med.templates)} vs {len(ctl.templates)}"]
    ok &= len(ctl.templates) == len(med.templates) >= 8
    clabels = list(control_labels or f["control_labels"])
    missing = [c for c in clabels if c not in ctl.labels]
    if missing or len(clabels) != len(f["labels"]):
        lines.append(f"   control labellings {clabels} do not fit {ctl.name} (labels {ctl.labels}) / {f['labels']}")
        return lines, False
    for lm, lc in zip(f["labels"], clabels):
        sm, sc = class_sizes(med, lm), class_sizes(ctl, lc)
        d = dominates(sc, sm)
        ok &= d
        lines.append(f"   {lm} vs {lc}: classes {len(sm)} vs {len(sc)}; items/class min {min(sm)} vs {min(sc)}, "
                     f"median {statistics.median(sm):g} vs {statistics.median(sc):g}, max {max(sm)} vs {max(sc)}; "
                     f"control dominates: {d}")
        if len(sm) <= 20:
            lines.append(f"      sizes {sm}\n         vs {sc}")
    for name, tok in tokenizers.items():
        hm, hc = histogram(tok, med), histogram(tok, ctl)
        cov = covers(hc, hm)
        ok &= cov
        ks = sorted(set(hm) | set(hc))
        mean_m = sum(k * v for k, v in hm.items()) / sum(hm.values())
        mean_c = sum(k * v for k, v in hc.items()) / sum(hc.values())
        lines.append(f"   [{name}] item tokens mean {mean_m:.2f} vs {mean_c:.2f}; control covers medicine: {cov}; "
                     f"exact one-to-one token-count match of medical items: {exact_match_share(hc, hm):.0%}")
        lines.append("      tokens  " + " ".join(f"{k:>3d}" for k in ks))
        lines.append("      med     " + " ".join(f"{hm.get(k, 0):>3d}" for k in ks))
        lines.append("      ctl     " + " ".join(f"{hc.get(k, 0):>3d}" for k in ks))
        fm, fc = frame_tokens(tok, med), frame_tokens(tok, ctl)
        same = [abs(a[0] - b[0]) < 1e-9 and abs(a[1] - b[1]) < 1e-9 for a, b in zip(fm, fc)]
        lines.append(f"      frames (before/after item) equal in {sum(same)}/{len(same)} templates: " + "; ".join(
            f"{a[0]:g}/{a[1]:g}" + ("" if s else f"≠{b[0]:g}/{b[1]:g}") for a, b, s in zip(fm, fc, same)))
    return lines, ok


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["gemma-3-270m", "smollm2-135m"],
                    help="built-in models whose tokenizers to use ('none': structure only)")
    ap.add_argument("--families", nargs="+", default=list(CONCEPT_FAMILIES))
    ap.add_argument("--control-labels", nargs="*", default=[], metavar="FAMILY=A,B",
                    help="score these control labellings instead of CONCEPT_FAMILIES' control_labels")
    args = ap.parse_args(argv)
    override = {k: v.split(",") for k, v in (x.split("=", 1) for x in args.control_labels)}
    toks = {} if args.models == ["none"] else {m: _tokenizer(m) for m in args.models}
    all_ok = True
    for fam in args.families:
        lines, ok = family_report(fam, toks, override.get(fam))
        all_ok &= ok
        print("\n".join(lines))
    print("all controls match or exceed the medical structure" if all_ok else "SOME CONTROL FALLS SHORT (see above)")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
