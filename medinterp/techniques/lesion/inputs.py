"""What :func:`lesion` accepts as prompts, resolved to :class:`medinterp.readout.Target` s."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from medinterp.concepts import list_concepts, load_concepts
from medinterp.prompt_inputs import parse_prompt_inputs
from medinterp.readout import Target, tokens_of

#: the one target type (kept under its old name)
LesionItem = Target


def items_from_inputs(model: Any, inputs: Any) -> tuple[list[Target], dict[str, list], str]:
    """Turn what :func:`lesion` accepts into targets, per-prompt labels and a concept-set name.

    Accepted: a concept-set name (``"drugs"``), a ``ConceptSet`` (anything with ``.prompts()``), a
    mapping ``{concept name: any of these}`` (adds the label ``concept``), a list of concept-set names,
    or a list of ``ConceptPrompt`` (``.text``, ``.answer``, ``.span``, ``.labels``), ``(prompt, answer)``
    pairs, or plain strings.
    """
    if isinstance(inputs, Mapping):
        return _merge({str(k): v for k, v in inputs.items()}, model)
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, str) for x in inputs) and _all_set_names(inputs):
        return _merge({x: x for x in inputs}, model)
    if isinstance(inputs, str):
        inputs = load_concepts(inputs)
    return parse_prompt_inputs(model, inputs, technique="lesion")


def _all_set_names(xs: Sequence[str]) -> bool:
    known = {d["name"] for d in list_concepts()}
    return all(x in known for x in xs)


def _merge(sets: dict[str, Any], model: Any) -> tuple[list[Target], dict[str, list], str]:
    items: list[Target] = []
    rows: list[dict] = []
    for name, spec in sets.items():
        its, labs, _ = items_from_inputs(model, spec)
        items += its
        for i in range(len(its)):
            r = {k: v[i] for k, v in labs.items()}
            r["concept"] = name
            rows.append(r)
    keys = sorted({k for r in rows for k in r})
    labels = {k: [r.get(k) for r in rows] for k in keys}
    return items, labels, "+".join(sets)


def reference_tokens(model: Any, reference: Any) -> list[torch.Tensor]:
    """Token rows of the mean-ablation reference: 1-D tensors, strings, or anything :func:`items_from_inputs` takes."""
    if isinstance(reference, (list, tuple)) and reference and all(isinstance(x, torch.Tensor) for x in reference):
        return [x.reshape(-1) for x in reference]
    if isinstance(reference, (list, tuple)) and reference and all(isinstance(x, str) for x in reference) and not _all_set_names(reference):
        return [tokens_of(model, x, bos=True) for x in reference]
    its, _, _ = items_from_inputs(model, reference)
    return [it.tokens for it in its]
