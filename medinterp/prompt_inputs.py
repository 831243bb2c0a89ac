"""What saliency and lesioning accept as prompts, parsed once: pair-set and concept-set names,
PairSets, ConceptSets, ConceptPrompts, ``(prompt, answer)`` pairs or plain strings, each resolved to a
:class:`medinterp.readout.Target` by :func:`medinterp.readout.make_target`; and the one
``max_prompts`` subsample both techniques take.

Both techniques score a token *after* the item (METHOD.md §0): a pair set gives its clean prompts with
their clean answers (the map's input); a concept prompt scores its answer, or else the word after the
item; a prompt that ends on its item is skipped with a :class:`NothingAfterItemWarning`.

Example:
    >>> from medinterp.testing import tiny_model
    >>> targets, labels, name = parse_prompt_inputs(tiny_model(n_layers=1), [("The patient takes", "aspirin")],
    ...                                             technique="demo")
    >>> targets[0].target, targets[0].predict_positions
    (' aspirin', [3])
    >>> subsample(["a", "b", "c"], {"x": [1, 2, 3]}, max_prompts=2, seed=0, technique="demo")
    (['b', 'c'], {'x': [2, 3]})
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence, TypeVar

import numpy as np

from medinterp.errors import MedinterpError, clip
from medinterp.stats import cluster_bootstrap
from medinterp.readout import NothingAfterItem, Target, make_target

T = TypeVar("T")


def plain_label(x: Any) -> Any:
    """A JSON-friendly label value (numpy scalars unwrapped, other objects as strings)."""
    if isinstance(x, np.generic):
        return x.item()
    return x if isinstance(x, (str, int, float, bool)) or x is None else str(x)


class NothingAfterItemWarning(UserWarning):
    """Prompts that end on their item (no answer, nothing after the item) were left out."""


def answer_prompts(pairs: Any) -> tuple[list[tuple[str, str]], list[dict]]:
    """The answer prompts of a pair set: each distinct clean prompt with its clean answer, in file order.

    Several pairs of a set can share a clean prompt (one clean case against several corrupted ones);
    it is one prompt here. Each gets the labels ``item`` (its unit of inference: the clean prompt
    itself, the same for a model and its random-init twin), ``pair`` (the index of its first pair)
    and ``template`` when the pair's meta carries one.

    Args:
        pairs: a ``PairSet`` (anything with ``.pairs`` of ``PromptPair`` s: ``clean``, ``clean_answer``).

    Raises:
        MedinterpError: one clean prompt with two different clean answers.
    """
    seen: dict[str, str] = {}
    prompts: list[tuple[str, str]] = []
    rows: list[dict] = []
    name = getattr(pairs, "name", "pairs")
    for i, p in enumerate(pairs.pairs):
        if p.clean in seen:
            if seen[p.clean] != p.clean_answer:
                raise MedinterpError(f"{name} pair {i} ({clip(p.clean)}): clean answer {clip(p.clean_answer)} differs from "
                                     f"{clip(seen[p.clean])} given to the same prompt earlier; expected one answer per prompt")
            continue
        seen[p.clean] = p.clean_answer
        prompts.append((p.clean, p.clean_answer))
        row = {"item": p.clean, "pair": i}
        meta = getattr(p, "meta", None) or {}
        if "template" in meta:
            row["template"] = plain_label(meta["template"])
        rows.append(row)
    return prompts, rows


def _is_pair_set(x: Any) -> bool:
    return hasattr(x, "pairs") and not callable(getattr(x, "prompts", None))


def parse_prompt_inputs(model: Any, inputs: Any, *, technique: str) -> tuple[list[Target], dict[str, list], str]:
    """Turn a pair set / concept set / prompt list into targets, per-prompt labels and a set name.

    Args:
        model: the model whose tokenizer resolves the targets.
        inputs: a pair-set or concept-set name, a ``PairSet`` (its clean prompts with their clean
            answers, see :func:`answer_prompts`), a ``ConceptSet`` (anything with ``.prompts()``), or a
            list of ``ConceptPrompt`` (``.text``, ``.answer``, ``.span``, ``.labels``), ``(prompt,
            answer)`` pairs of strings, or plain strings. A ConceptPrompt's ``answer`` wins over its
            span; without one, the word after the item is scored, and a prompt that ends on its item
            is left out with a :class:`NothingAfterItemWarning`.
        technique: name used in error messages.

    Raises:
        MedinterpError: no prompts, or every concept prompt ends on its item.
    """
    set_name = "custom"
    if isinstance(inputs, str):
        from medinterp.concepts import load_concepts

        inputs = load_concepts(inputs)
    if _is_pair_set(inputs):
        prompts, rows = answer_prompts(inputs)
        if not prompts:
            raise MedinterpError(f"{technique}: pair set {getattr(inputs, 'name', '?')!r} has no pairs")
        items = [make_target(model, t, answer=a, where=f"{getattr(inputs, 'name', 'pairs')} prompt {i} ({clip(t)})")
                 for i, (t, a) in enumerate(prompts)]
        keys = sorted({k for r in rows for k in r})
        return items, {k: [r.get(k) for r in rows] for k in keys}, str(getattr(inputs, "name", "custom"))
    if hasattr(inputs, "prompts") and callable(inputs.prompts):
        set_name = str(getattr(inputs, "name", "custom"))
        inputs = inputs.prompts()
    inputs = list(inputs)
    if not inputs:
        raise MedinterpError(f"{technique}: no prompts given; expected a concept set or a non-empty list of prompts")
    items: list[Target] = []
    rows: list[dict] = []
    ends: list[str] = []
    for i, p in enumerate(inputs):
        where = f"prompt {i}"
        row: dict = {}
        if isinstance(p, str):
            items.append(make_target(model, p, where=where))
        elif isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(x, str) for x in p):
            items.append(make_target(model, p[0], answer=p[1], where=f"{where} ({clip(p[0])})"))
        elif hasattr(p, "text"):
            where = f"{where} ({clip(p.text)})"
            answer, span = getattr(p, "answer", None), getattr(p, "span", None)
            if answer is None and span is None:
                raise MedinterpError(f"{where}: has neither an answer nor an item span to score")
            try:
                items.append(make_target(model, p.text, answer=answer, span=None if answer is not None else span,
                                         where=where))
            except NothingAfterItem:
                ends.append(p.text)
                continue
            row = dict(getattr(p, "labels", {}) or {})
            if getattr(p, "item", None) is not None:
                row.setdefault("item", p.item)
            if isinstance(getattr(p, "template_index", None), int):
                row.setdefault("template", p.template_index)
        else:
            raise MedinterpError(
                f"{where}: expected a ConceptPrompt, a (prompt, answer) pair of strings or a string, "
                f"got {type(p).__name__}"
            )
        rows.append(row)
    if ends:
        if not items:
            raise MedinterpError(
                f"{technique}: all {len(ends)} prompts end on their item (e.g. {clip(ends[0])}), so nothing after the "
                "item can be scored; use templates with an answer or a word after the item, or a pair set")
        warnings.warn(f"{technique}: left out {len(ends)} prompts that end on their item (e.g. {clip(ends[0])}): "
                      "nothing after the item to score", NothingAfterItemWarning, stacklevel=3)
    keys = sorted({k for r in rows for k in r})
    labels = {k: [plain_label(r.get(k)) for r in rows] for k in keys}
    return items, labels, set_name


def subsample(
    items: Sequence[T], labels: dict[str, list], *, max_prompts: int | None, seed: int, technique: str
) -> tuple[list[T], dict[str, list]]:
    """At most ``max_prompts`` items: a seeded random subset, kept in their order (labels alike).

    ``numpy.random.default_rng(seed).choice(n, max_prompts, replace=False)``, sorted; None or
    ``max_prompts >= n`` keeps everything.
    """
    items = list(items)
    if max_prompts is None:
        return items, labels
    if max_prompts < 1:
        raise MedinterpError(f"{technique}: max_prompts={max_prompts}; expected a positive number")
    if len(items) <= max_prompts:
        return items, labels
    keep = np.sort(np.random.default_rng(seed).choice(len(items), max_prompts, replace=False))
    return [items[i] for i in keep], {k: [v[i] for i in keep] for k, v in labels.items()}


def units_of(labels: dict[str, list], n: int) -> tuple[list, list | None]:
    """``(units, templates)`` of ``n`` prompts: the ``item`` label (else the prompt index) and the
    ``template`` label (else None): the units of inference of :class:`medinterp.techniques.base.UnitScores`."""
    items = labels.get("item")
    units = list(items) if items is not None and len(items) == n and all(u is not None for u in items) else list(range(n))
    tmpl = labels.get("template")
    templates = list(tmpl) if tmpl is not None and len(tmpl) == n and all(t is not None for t in tmpl) else None
    return units, templates


def unit_ci(values: np.ndarray, units: Sequence, *, n_boot: int, ci: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean over prompts, low, high)``: a cluster bootstrap over units (items), NaN CIs under 2 units.

    :func:`medinterp.stats.cluster_bootstrap` with the mean: a resample draws items with all their prompts.
    """
    values = np.asarray(values, dtype=float)
    est = values.mean(axis=0)
    if len(set(map(str, units))) < 2:
        nan = np.full(est.shape, np.nan)
        return est, nan, nan.copy()
    keys = np.asarray([str(u) for u in units])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant columns: scipy warns of a degenerate CI
        res = cluster_bootstrap(values, units=keys, n_boot=n_boot, ci=ci, seed=seed)
    return est, np.asarray(res.low), np.asarray(res.high)
