"""What saliency and lesioning accept as prompts, parsed once: concept-set names, ConceptSets,
ConceptPrompts, ``(prompt, answer)`` pairs or plain strings, each resolved to a
:class:`medinterp.readout.Target` by :func:`medinterp.readout.make_target`; and the one
``max_prompts`` subsample both techniques take.

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

from typing import Any, Sequence, TypeVar

import numpy as np

from medinterp.errors import MedinterpError
from medinterp.readout import Target, make_target

T = TypeVar("T")


def plain_label(x: Any) -> Any:
    """A JSON-friendly label value (numpy scalars unwrapped, other objects as strings)."""
    if isinstance(x, np.generic):
        return x.item()
    return x if isinstance(x, (str, int, float, bool)) or x is None else str(x)


def parse_prompt_inputs(model: Any, inputs: Any, *, technique: str) -> tuple[list[Target], dict[str, list], str]:
    """Turn a concept set / prompt list into targets, per-prompt labels and a set name.

    Args:
        model: the model whose tokenizer resolves the targets.
        inputs: a concept-set name, a ``ConceptSet`` (anything with ``.prompts()``), or a list of
            ``ConceptPrompt`` (``.text``, ``.answer``, ``.span``, ``.labels``), ``(prompt, answer)``
            pairs of strings, or plain strings. A ConceptPrompt's ``answer`` wins over its span.
        technique: name used in error messages.
    """
    set_name = "custom"
    if isinstance(inputs, str):
        from medinterp.concepts import load_concepts

        inputs = load_concepts(inputs)
    if hasattr(inputs, "prompts") and callable(inputs.prompts):
        set_name = str(getattr(inputs, "name", "custom"))
        inputs = inputs.prompts()
    inputs = list(inputs)
    if not inputs:
        raise MedinterpError(f"{technique}: no prompts given; expected a concept set or a non-empty list of prompts")
    items: list[Target] = []
    rows: list[dict] = []
    for i, p in enumerate(inputs):
        where = f"prompt {i}"
        row: dict = {}
        if isinstance(p, str):
            items.append(make_target(model, p, where=where))
        elif isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(x, str) for x in p):
            items.append(make_target(model, p[0], answer=p[1], where=f"{where} ({p[0]!r})"))
        elif hasattr(p, "text"):
            where = f"{where} ({p.text!r})"
            answer, span = getattr(p, "answer", None), getattr(p, "span", None)
            if answer is None and span is None:
                raise MedinterpError(f"{where}: has neither an answer nor an item span to score")
            items.append(make_target(model, p.text, answer=answer, span=None if answer is not None else span,
                                     where=where))
            row = dict(getattr(p, "labels", {}) or {})
            if getattr(p, "item", None) is not None:
                row.setdefault("item", p.item)
        else:
            raise MedinterpError(
                f"{where}: expected a ConceptPrompt, a (prompt, answer) pair of strings or a string, "
                f"got {type(p).__name__}"
            )
        rows.append(row)
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
