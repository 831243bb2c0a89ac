"""What saliency and lesioning accept as prompts, parsed once: concept-set names, ConceptSets,
ConceptPrompts, ``(prompt, answer)`` pairs or plain strings.

Each technique passes its own constructors for the three kinds of target, so the dispatch, the
error messages and the label table are shared.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import numpy as np

from medinterp.errors import MedinterpError

T = TypeVar("T")


def plain_label(x: Any) -> Any:
    """A JSON-friendly label value (numpy scalars unwrapped, other objects as strings)."""
    if isinstance(x, np.generic):
        return x.item()
    return x if isinstance(x, (str, int, float, bool)) or x is None else str(x)


def parse_prompt_inputs(
    inputs: Any,
    *,
    technique: str,
    from_text: Callable[[str, str], T],
    from_answer: Callable[[str, str, str], T],
    from_span: Callable[[str, tuple[int, int], str], T],
) -> tuple[list[T], dict[str, list], str]:
    """Turn a concept set / prompt list into the technique's items, per-prompt labels and a set name.

    Args:
        inputs: a concept-set name, a ``ConceptSet`` (anything with ``.prompts()``), or a list of
            ``ConceptPrompt`` (``.text``, ``.answer``, ``.span``, ``.labels``), ``(prompt, answer)``
            pairs of strings, or plain strings.
        technique: name used in error messages.
        from_text: ``(text, where) -> item`` for a plain string.
        from_answer: ``(text, answer, where) -> item`` for a prompt with an answer.
        from_span: ``(text, span, where) -> item`` for a ConceptPrompt without answer (scores its item).
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
    items: list[T] = []
    rows: list[dict] = []
    for i, p in enumerate(inputs):
        where = f"prompt {i}"
        row: dict = {}
        if isinstance(p, str):
            items.append(from_text(p, where))
        elif isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(x, str) for x in p):
            items.append(from_answer(p[0], p[1], f"{where} ({p[0]!r})"))
        elif hasattr(p, "text"):
            where = f"{where} ({p.text!r})"
            answer = getattr(p, "answer", None)
            if answer is not None:
                items.append(from_answer(p.text, answer, where))
            elif getattr(p, "span", None) is not None:
                items.append(from_span(p.text, p.span, where))
            else:
                raise MedinterpError(f"{where}: has neither an answer nor an item span to score")
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
