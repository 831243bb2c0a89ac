"""Data checks for concept and pair sets: lexical baseline, answer leaks, template fit, duplicates, tokenization.

:func:`check_set` returns a :class:`SetReport` for one set, :func:`check_sets` a :class:`CheckReport` for
several; both have ``ok`` and a ``render()`` text. ``medinterp concepts check`` prints that text.

* **lexical baseline** (concept sets): how well a model-free character n-gram view of the item strings
  already separates each labelling. Items are embedded with ``TfidfVectorizer(analyzer="char_wb",
  ngram_range=(3, 5))``; categorical labels get the cosine silhouette of the item vectors and the balanced
  accuracy of a logistic-regression probe on the rendered prompts with item-grouped cross-validation
  (``GroupKFold``: no item is in both train and test fold); continuous labels (age, stage) get the
  Spearman correlation of item-grouped ridge predictions (on pure noise this leans negative, the usual
  bias of held-out predictions, so it never reports a spurious positive ordering). A model's layer should beat these figures
  before it is said to hold more than spelling.
* **answer leaks** (pair sets, and concept sets whose templates have an answer): the answer word or its
  stem (a plural 's' dropped, then the first ``max(4, len - 3)`` letters) appears as the start of a word of its own prompt.
* **template misfits** (concept sets): an empty placeholder or answer, "a"/"an" that does not agree with
  the item, a word doubled across the item boundary ("the the"), doubled punctuation, or a lowercase item
  starting the prompt.
* **duplicates**: items (case, spacing and a leading article ignored), rendered prompts, pairs.
* **tokenization** (pair sets, when tokenizers are given): :meth:`PairSet.check` for each.
* **balance table** (:func:`pair_balance`, ``medinterp concepts check --family F``): a family's pair set
  against its control pair set on one model, per causal-tracing covariate (``subject_tokens``,
  ``tokens_after_subject``, ``prompt_tokens``, ``answer_prior``, ``intact_ld``) the medicine mean, control
  mean and standardized mean difference ``(m1 - m0) / sqrt((s1² + s0²) / 2)``, flagged when
  |SMD| > 0.25 (METHOD §0b), over the pairs the model knows; plus the map's item matching of the same
  covariates (:func:`medinterp.maps.balance.match_units`).

Label values named ``ungrouped`` (see the data README) are left out of the lexical baseline.

Example:
    >>> from medinterp.concepts.checks import check_set
    >>> rep = check_set("symptom_pairs")
    >>> rep.leaks
    []
"""

from __future__ import annotations

import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medinterp.concepts.pairs import PairSet
from medinterp.concepts.sets import ConceptSet

UNGROUPED = "ungrouped"
_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.I)


@dataclass
class SetReport:
    """Checks of one concept or pair set.

    Attributes:
        name, kind: the set's name and ``"concepts"`` or ``"pairs"``.
        n: items or pairs; n_templates: templates (0 for pairs); classes: label -> number of classes.
        lexical: label -> ``{"silhouette", "probe_bacc", "chance", "n_classes", "n_items"}`` (categorical)
            or ``{"spearman", "n_items"}`` (continuous).
        leaks, misfits, duplicates: one readable line per problem.
        pairs: tokenizer name -> ``{"valid", "n", "reasons"}``; item_tokens: tokenizer -> mean item tokens.
        dropped: one line per pair a tokenizer cannot use, with the reason.
    """

    name: str
    kind: str
    n: int
    n_templates: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    lexical: dict[str, dict[str, float]] = field(default_factory=dict)
    leaks: list[str] = field(default_factory=list)
    misfits: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    pairs: dict[str, dict[str, Any]] = field(default_factory=dict)
    item_tokens: dict[str, float] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    @property
    def n_invalid(self) -> int:
        return sum(v["n"] - v["valid"] for v in self.pairs.values())

    @property
    def ok(self) -> bool:
        """No leak, misfit, duplicate or invalid pair."""
        return not (self.leaks or self.misfits or self.duplicates or self.n_invalid)

    def render(self, verbose: bool = False) -> str:
        head = f"{self.name}: {self.n} {'pairs' if self.kind == 'pairs' else 'items'}"
        if self.kind == "concepts":
            head += f", {self.n_templates} templates"
            if self.classes:
                head += ", classes " + ", ".join(f"{k}={v}" for k, v in self.classes.items())
        lines = [head + ("" if self.ok else "  [PROBLEMS]")]
        for lab, d in self.lexical.items():
            if "spearman" in d:
                lines.append(f"  lexical baseline {lab}: ridge Spearman {d['spearman']:.2f} (n={d['n_items']:.0f})")
            else:
                lines.append(f"  lexical baseline {lab}: silhouette {d['silhouette']:.3f}, probe balanced "
                             f"accuracy {d['probe_bacc']:.2f} (chance {d['chance']:.2f}, {d['n_classes']:.0f} "
                             f"classes, n={d['n_items']:.0f})")
        for tok, v in self.pairs.items():
            r = ", ".join(f"{k} x{c}" for k, c in v["reasons"].items())
            lines.append(f"  {tok}: {v['valid']}/{v['n']} valid" + (f" — {r}" if r else ""))
        if verbose:
            lines += [f"    dropped {d}" for d in self.dropped]
        for tok, m in self.item_tokens.items():
            lines.append(f"  {tok}: {m:.2f} tokens per item")
        for what, probs in (("answer leaks", self.leaks), ("template misfits", self.misfits),
                            ("duplicates", self.duplicates)):
            lines.append(f"  {what}: {len(probs)}")
            lines += [f"    {p}" for p in (probs if verbose else probs[:5])]
            if not verbose and len(probs) > 5:
                lines.append(f"    ... {len(probs) - 5} more (--verbose)")
        return "\n".join(lines)


@dataclass
class CheckReport:
    """Checks of several sets: ``sets`` (one :class:`SetReport` each), ``ok`` and ``render()``."""

    sets: list[SetReport]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.sets)

    def render(self, verbose: bool = False) -> str:
        body = "\n".join(s.render(verbose) for s in self.sets)
        bad = [s.name for s in self.sets if not s.ok]
        return body + ("\nall sets pass" if not bad else f"\nproblems in: {', '.join(bad)}")

    def __str__(self) -> str:
        return self.render()


# --------------------------------------------------------------------------------------- single checks


def _stem(word: str) -> str:
    w = word.strip().lower()
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):  # plural: "eyes" leaks as "eye"
        w = w[:-1]
    return w if len(w) <= 4 else w[: max(4, len(w) - 3)]


def _leak(prompt: str, answer: str) -> str | None:
    word = re.sub(r"[^\w'-]", "", answer.strip())
    if not word or word.isdigit():
        return None
    st = _stem(word)
    m = re.search(r"(?<!\w)" + re.escape(st), prompt, re.I)
    return m.group(0) if m else None


def answer_leaks(s: ConceptSet | PairSet) -> list[str]:
    """Pairs (or templated concept prompts) whose answer word or its stem occurs in their own prompt."""
    out = []
    if isinstance(s, PairSet):
        for p in s.pairs:
            for which, prompt, ans in (("clean", p.clean, p.clean_answer), ("corrupted", p.corrupted, p.corrupted_answer)):
                hit = _leak(prompt, ans)
                if hit:
                    out.append(f"line {p.line}: {which} answer {ans!r} occurs in its prompt as {hit!r}: {prompt!r}")
        return out
    for ti, col in enumerate(s.template_answers):
        if not col:
            continue
        for i, it in enumerate(s.items):
            text, _ = s.render(s.templates[ti], it)
            hit = _leak(text, str(it.get(col) or ""))
            if hit:
                out.append(f"{it[s.item_key]!r}, template {ti}: answer {it[col]!r} occurs in the prompt as {hit!r}")
    return out


def _vowel_sound(word: str) -> bool:
    w = word.lower()
    if re.match(r"^(8|11|18)(\D|$)|^(8\d|8\d\d|11\d|18\d)(\D|$)", w):
        return True
    if w[:1].isdigit():
        return False
    if re.match(r"^(uni|use|usu|eu|one|once|ur[aeiou])", w):
        return False
    return w[:1] in "aeiou" or bool(re.match(r"^(hour|honest|heir|mri|mrsa|fev)", w))


def template_misfits(s: ConceptSet) -> list[str]:
    """(item, template) renderings that read wrong; see the module docstring for the rules."""
    import string

    out = []
    for ti, t in enumerate(s.templates):
        parsed = list(string.Formatter().parse(t))
        for i, it in enumerate(s.items):
            item = str(it[s.item_key])
            ans = s.template_answers[ti]
            probs = []
            for _, f, _, _ in parsed:
                if f is not None and str(it.get(f, "")).strip() == "":
                    probs.append(f"empty placeholder '{{{f}}}'")
            if ans and str(it.get(ans) or "").strip() == "":
                probs.append(f"empty answer column '{ans}'")
            text, (a, b) = s.render(t, it)
            before, after = text[:a], text[b:]
            art = re.search(r"(?:^|\s)(a|an)\s+$", before, re.I)
            if art and item:
                vowel = _vowel_sound(item)
                if art.group(1).lower() == "a" and vowel:
                    probs.append(f"'a {item.split()[0]}' should be 'an'")
                elif art.group(1).lower() == "an" and not vowel:
                    probs.append(f"'an {item.split()[0]}' should be 'a'")
            lw = re.findall(r"\w+", before)[-1:] + re.findall(r"\w+", item)[:1]
            rw = re.findall(r"\w+", item)[-1:] + re.findall(r"\w+", after)[:1]
            for pair in (lw, rw):
                if len(pair) == 2 and pair[0].lower() == pair[1].lower():
                    probs.append(f"doubled word {pair[0]!r} at the item boundary")
            if re.search(r"[.!?]$", item) and re.match(r"[.!?,;:]", after):
                probs.append("doubled punctuation after the item")
            if a == 0 and item[:1].islower():
                probs.append("the prompt starts with a lowercase item")
            for p in probs:
                out.append(f"{item!r}, template {ti} {t!r}: {p}")
    return out


def _norm(x: str) -> str:
    return _ARTICLE.sub("", re.sub(r"\s+", " ", x.strip().lower()))


def duplicates(s: ConceptSet | PairSet) -> list[str]:
    """Items that coincide up to case, spacing and a leading article; identical prompts; identical pairs."""
    out = []
    if isinstance(s, PairSet):
        seen: dict[tuple, Any] = {}
        for p in s.pairs:
            k = (_norm(p.clean), _norm(p.corrupted))
            if k in seen:
                out.append(f"line {p.line}: same pair as line {seen[k]}: {p.clean!r} / {p.corrupted!r}")
            seen.setdefault(k, p.line)
        return out
    groups: dict[tuple, list[str]] = defaultdict(list)
    ctx = _context_cols(s)
    for it in s.items:
        groups[(_norm(str(it[s.item_key])),) + tuple(str(it[c]) for c in ctx)].append(str(it[s.item_key]))
    for k, v in groups.items():
        if len(v) > 1:
            out.append(f"items {v} are the same item")
    texts = Counter(p.text for p in s.prompts())
    out += [f"prompt {t!r} is rendered {c} times" for t, c in texts.items() if c > 1]
    return out


def _context_cols(s: ConceptSet) -> list[str]:
    """Label columns that also appear in a template: items may repeat across them (age x sex)."""
    used = {f for t in s.templates for f in re.findall(r"\{(\w+)", t)}
    return [c for c in s.labels if c in used and c != s.item_key]


def lexical_baseline(s: ConceptSet, label: str, *, n_splits: int = 5, seed: int = 0) -> dict[str, float] | None:
    """Char 3-5-gram TF-IDF baseline of one labelling (see the module docstring); None when not computable."""
    from scipy.stats import spearmanr
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import GroupKFold, cross_val_predict

    keep = [i for i, it in enumerate(s.items) if str(it[label]) != UNGROUPED]
    items = [s.items[i] for i in keep]
    y_item = [it[label] for it in items]
    continuous = label in s.continuous_labels
    if len(items) < 4 or (not continuous and len(set(map(str, y_item))) < 2):
        return None
    # the prompts of each item under every template; groups = item, so CV never splits an item
    texts, y, groups = [], [], []
    for g, it in enumerate(items):
        for t in s.templates:
            texts.append(s.render(t, it)[0])
            y.append(it[label])
            groups.append(g)
    k = min(n_splits, len(items))
    # GroupKFold assigns equal-sized groups in order, which can hold out every item of one label
    # value at once (file order is often label order): shuffle its folds, seeded
    cv = GroupKFold(k, shuffle=True, random_state=seed)
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5))
    if continuous:
        Xp = vec.fit_transform(texts)
        pred = cross_val_predict(Ridge(alpha=1.0), Xp, np.asarray(y, float), groups=groups, cv=cv)
        rho = spearmanr(pred, y).statistic
        return {"spearman": float(rho), "n_items": float(len(items))}
    ys = np.asarray([str(v) for v in y_item])
    counts = Counter(ys)
    Xi = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5)).fit_transform([str(it[s.item_key]) for it in items])
    sil = float(silhouette_score(Xi, ys, metric="cosine")) if 2 <= len(counts) < len(items) else float("nan")
    # classes with fewer items than folds cannot be probed fairly: leave them out of the probe
    probe_ok = np.asarray([counts[v] >= 2 for v in ys])
    sel = [j for j, g in enumerate(groups) if probe_ok[g]]
    yy = np.asarray([str(y[j]) for j in sel])
    gg = np.asarray([groups[j] for j in sel])
    Xp = vec.fit_transform([texts[j] for j in sel])
    if len(set(gg)) < k:
        cv = GroupKFold(len(set(gg)), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # folds missing a class warn; balanced accuracy still defined
        pred = cross_val_predict(LogisticRegression(max_iter=2000), Xp, yy, groups=gg, cv=cv)
    from sklearn.metrics import balanced_accuracy_score

    return {"silhouette": sil, "probe_bacc": float(balanced_accuracy_score(yy, pred)),
            "chance": 1.0 / len(set(yy)), "n_classes": float(len(counts)), "n_items": float(len(items))}


# --------------------------------------------------------------------------------------- whole sets


def check_set(s: str | ConceptSet | PairSet, tokenizers: Sequence[Any] = (), *, lexical: bool = True) -> SetReport:
    """All checks of one set (a shipped name, a path, or a loaded set).

    Args:
        s: the set.
        tokenizers: HookedTransformers or Hugging Face tokenizers; pair sets are checked with
            :meth:`PairSet.check` on each, concept sets get their mean item length in tokens.
        lexical: compute the lexical baseline (concept sets).
    """
    from medinterp.concepts import load_concepts

    s = load_concepts(s) if not isinstance(s, (ConceptSet, PairSet)) else s
    if isinstance(s, PairSet):
        rep = SetReport(s.name, "pairs", len(s), leaks=answer_leaks(s), duplicates=duplicates(s))
        for tk in tokenizers:
            chk = s.check(tk)
            rep.pairs[chk.tokenizer] = {"valid": chk.n_valid, "n": len(s), "reasons": dict(chk.reasons())}
            rep.dropped += [f"{chk.tokenizer}, line {p.line}: {p.clean!r} / {p.corrupted!r}: {r}" for p, r in chk.dropped]
        return rep
    rep = SetReport(s.name, "concepts", len(s), n_templates=len(s.templates),
                    classes={c: len({str(v) for v in s.label(c)} - {UNGROUPED}) for c in s.categorical_labels},
                    leaks=answer_leaks(s), misfits=template_misfits(s), duplicates=duplicates(s))
    if lexical:
        for lab in s.labels:
            d = lexical_baseline(s, lab)
            if d is not None:
                rep.lexical[lab] = d
    for tk in tokenizers:
        from medinterp.concepts.pairs import _Tok

        t = _Tok(tk, None)
        items = sorted({str(it[s.item_key]) for it in s.items})
        rep.item_tokens[t.name] = float(np.mean([len(t.answer(" " + x)) for x in items]))
    return rep


def check_sets(sets: Iterable[str | ConceptSet | PairSet], tokenizers: Sequence[Any] = (), *,
               lexical: bool = True) -> CheckReport:
    """:func:`check_set` for each set."""
    return CheckReport([check_set(s, tokenizers, lexical=lexical) for s in sets])


# --------------------------------------------------------------------------------------- balance table

#: the covariates of the pair balance table (tracing's covariates, :mod:`medinterp.covariates`)
PAIR_COVARIATES: tuple[str, ...] = ("subject_tokens", "tokens_after_subject", "prompt_tokens", "answer_prior",
                                    "intact_ld")
#: |SMD| above which a covariate is flagged (METHOD §0b)
MAX_SMD = 0.25


@dataclass
class PairMeasures:
    """Per valid pair of one pair set on one model: tracing's covariates, units and the known flag.

    Attributes:
        name: the pair set; model: the model spec or name.
        covariates: covariate -> ``[valid pair]`` (:data:`PAIR_COVARIATES`).
        units: the item (unit) of each valid pair, as causal tracing names it.
        known: ``[valid pair]`` bool, the pairs the model knows (tracing's :func:`known_mask`).
        n_pairs: pairs in the set (valid or not); answers: the clean answer text of each valid pair.
    """

    name: str
    model: str
    covariates: dict[str, np.ndarray]
    units: list
    known: np.ndarray
    n_pairs: int
    answers: list = field(default_factory=list)

    @property
    def n_valid(self) -> int:
        return len(self.units)

    @property
    def n_known(self) -> int:
        return int(np.sum(self.known))

    def histogram(self, covariate: str = "subject_tokens", known_only: bool = False) -> dict[int, int]:
        """``{value: count}`` of an integer covariate over the valid (or known) pairs."""
        v = self.covariates[covariate][self.known] if known_only else self.covariates[covariate]
        return dict(sorted(Counter(int(x) for x in v if np.isfinite(x)).items()))


def pair_measures(model: Any, pairs: Any, *, min_margin: float = 1.0) -> PairMeasures:
    """Tracing's per-pair covariates and known flags of a pair set, without the sweep (one batched forward).

    The definitions are causal tracing's own (:func:`medinterp.techniques.patching.tracing.pair_covariates`,
    :func:`~medinterp.techniques.patching.tracing.known_mask`), so the table shows what the map will see.

    Args:
        model: a HookedTransformer.
        pairs: a pair set (name, path, :class:`PairSet`, list).
        min_margin: the known rule's margin (logits).
    """
    from medinterp.techniques.patching.common import pair_set, prepare_pairs
    from medinterp.techniques.patching.tracing import _item_span, _unit_id, baselines, known_mask, pair_covariates

    ps = pair_set(pairs)
    valid, _dropped, name = prepare_pairs(model, ps, on_bad="drop")
    cl, xl, _ = baselines(model, valid)
    known, _ = known_mask(cl, xl, min_margin, True)
    masks = [_item_span(model, tp, "span") for tp in valid]
    units = [_unit_id(model, tp, m, "item") for tp, m in zip(valid, masks)]
    cov = pair_covariates(model, valid, masks, cl)
    info = getattr(model, "medinterp_info", None) or {}
    return PairMeasures(name, str(info.get("spec") or getattr(model.cfg, "model_name", "model")), cov, units,
                        np.asarray(known, bool), len(ps), [tp.pair.clean_answer for tp in valid])


@dataclass
class BalanceTable:
    """Balance of a medical pair set against its control on one model (``medinterp concepts check``).

    Attributes:
        family, model: the knowledge-map row and the model.
        medicine, control: the two :class:`PairMeasures`.
        known_only: the table is over known pairs (what tracing scores); else over every valid pair.
        rows: per covariate ``{"covariate", "medicine", "control", "smd", "flag"}`` (means over pairs;
            ``flag`` when |SMD| > ``max_smd``).
        matched: the map's item matching (:func:`medinterp.maps.balance.match_units`) of the same
            covariates, or None when a group has no pairs.
        max_smd: the flag threshold.
    """

    family: str
    model: str
    medicine: PairMeasures
    control: PairMeasures
    known_only: bool
    rows: list[dict[str, Any]]
    matched: Any = None
    max_smd: float = MAX_SMD

    @property
    def flagged(self) -> list[str]:
        """Covariates with |SMD| > ``max_smd`` (before matching)."""
        return [r["covariate"] for r in self.rows if r["flag"]]

    @property
    def ok(self) -> bool:
        return not self.flagged

    def render(self) -> str:
        """The table as text: one line per covariate, then histograms and the matched balance."""
        which = "known pairs" if self.known_only else "valid pairs"
        m, c = self.medicine, self.control
        nm = m.n_known if self.known_only else m.n_valid
        nc = c.n_known if self.known_only else c.n_valid
        lines = [f"balance of {self.family} on {self.model} ({which}): {m.name} n={nm} "
                 f"({m.n_known}/{m.n_valid} valid known, {m.n_pairs} pairs) vs {c.name} n={nc} "
                 f"({c.n_known}/{c.n_valid} valid known, {c.n_pairs} pairs)",
                 f"  {'covariate':<22}{'medicine':>10}{'control':>10}{'SMD':>8}"]
        for r in self.rows:
            lines.append(f"  {r['covariate']:<22}{_num(r['medicine']):>10}{_num(r['control']):>10}"
                         f"{_num(r['smd'], 2):>8}" + (f"  |SMD| > {self.max_smd:g}" if r["flag"] else ""))
        for lab, pm in (("medicine", m), ("control", c)):
            h = pm.histogram("subject_tokens", self.known_only)
            lines.append(f"  subject tokens, {lab}: " + (", ".join(f"{k}: {v}" for k, v in h.items()) or "none"))
        if self.matched is not None:
            b = self.matched
            worst = max(b.covariates, key=lambda k: abs(b.smd_after[k]) if not np.isnan(b.smd_after[k]) else -1,
                        default=None)
            tail = f"; largest |SMD| {worst} {b.smd_after[worst]:.2f}" if worst is not None else ""
            lines.append(f"  after item matching: {len(b.medicine_units)} vs {len(b.control_units)} items"
                         f"{tail}; " + ("comparable" if b.comparable else str(b.reason)))
        if self.known_only and min(m.n_known, c.n_known) < 2:
            lines.append("  (fewer than 2 known pairs in a group: --all-pairs compares every valid pair)")
        lines.append("  balanced" if self.ok else f"  not balanced: {', '.join(self.flagged)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def _num(x: float, nd: int = 3) -> str:
    x = float(x)
    return "nan" if np.isnan(x) else ("inf" if np.isposinf(x) else "-inf" if np.isneginf(x) else f"{x:.{nd}g}"
                                      if nd == 3 else f"{x:.{nd}f}")


def balance_rows(medicine: dict[str, np.ndarray], control: dict[str, np.ndarray],
                 covariates: Sequence[str] = PAIR_COVARIATES, max_smd: float = MAX_SMD) -> list[dict[str, Any]]:
    """Per covariate: the two means, the standardized mean difference and the |SMD| > ``max_smd`` flag.

    SMD = (m1 - m0) / sqrt((s1² + s0²) / 2) with sample variances, medicine minus control
    (:func:`medinterp.maps.balance.smd`, shared with the map's balance check).

    Example:
        >>> r = balance_rows({"x": np.array([1., 2, 3])}, {"x": np.array([2., 3, 4])}, ["x"])[0]
        >>> r["medicine"], r["control"], round(r["smd"], 3), r["flag"]
        (2.0, 3.0, -1.0, True)
    """
    from medinterp.maps.balance import smd

    rows = []
    for k in covariates:
        a = np.asarray(medicine.get(k, []), float)
        b = np.asarray(control.get(k, []), float)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        d = smd(a, b)
        rows.append({"covariate": k, "medicine": float(a.mean()) if len(a) else float("nan"),
                     "control": float(b.mean()) if len(b) else float("nan"), "smd": d,
                     "flag": bool(np.isnan(d) or abs(d) > max_smd)})
    return rows


def pair_balance(model: Any, family: str, *, known_only: bool = True, min_margin: float = 1.0,
                 max_smd: float = MAX_SMD, medicine: Any = None, control: Any = None) -> BalanceTable:
    """The balance table of a family's pair set against its control pair set on ``model``.

    Args:
        model: a HookedTransformer.
        family: a knowledge-map row (:data:`medinterp.concepts.CONCEPT_FAMILIES`: its ``pairs`` and
            ``control_pairs``).
        known_only: compare the pairs the model knows (what causal tracing scores; default), else every
            valid pair. A group with no known pair falls back to nothing: its means are NaN and flagged.
        min_margin: the known rule's margin.
        max_smd: flag threshold.
        medicine, control: override the two pair sets (names, paths or sets).

    Raises:
        MedinterpError: an unknown family.
    """
    from medinterp.concepts import CONCEPT_FAMILIES
    from medinterp.errors import MedinterpError

    if family not in CONCEPT_FAMILIES:
        raise MedinterpError(f"unknown family {family!r}; families: {sorted(CONCEPT_FAMILIES)}")
    fam = CONCEPT_FAMILIES[family]
    med = pair_measures(model, medicine if medicine is not None else fam["pairs"], min_margin=min_margin)
    ctl = pair_measures(model, control if control is not None else fam["control_pairs"], min_margin=min_margin)

    def pick(pm: PairMeasures) -> tuple[dict[str, np.ndarray], list]:
        sel = pm.known if known_only else np.ones(pm.n_valid, bool)
        return {k: v[sel] for k, v in pm.covariates.items()}, [u for u, s in zip(pm.units, sel) if s]

    (mc, mu), (cc, cu) = pick(med), pick(ctl)
    rows = balance_rows(mc, cc, PAIR_COVARIATES, max_smd)
    matched = None
    if mu and cu:
        from medinterp.maps.balance import match_units

        matched = match_units(mc, mu, cc, cu, max_smd=max_smd)
    return BalanceTable(family, med.model, med, ctl, known_only, rows, matched, max_smd)
