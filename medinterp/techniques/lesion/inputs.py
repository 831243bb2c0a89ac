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


def pair_set_of(inputs: Any) -> Any:
    """The ``PairSet`` behind ``inputs`` (a pair-set name or object), else None (concept sets, lists, mappings)."""
    from medinterp.prompt_inputs import _is_pair_set

    if isinstance(inputs, str):
        names = {d["name"] for d in list_concepts()}
        if inputs not in names:
            return None
        inputs = load_concepts(inputs)
    return inputs if _is_pair_set(inputs) else None


def pair_contexts(model: Any, pairs: Any, items: Sequence[Target], pair_index: Sequence[int]) -> dict[str, Any]:
    """What the logit difference and the token covariates need from each answer prompt's pair.

    Args:
        model: the model (its tokenizer).
        pairs: the ``PairSet``; items: the answer prompts' targets (their clean prompts with clean answers);
        pair_index: per item the index of its pair (the ``pair`` label: the first pair of its clean prompt).

    Returns:
        ``foil``: per item the first token of the pair's corrupted answer, tokenized after the clean
        prompt as the clean answer is (``make_target``); ``answer``: the clean answer's first token;
        ``clean``, ``corrupted``: the clean and corrupted prompt tokens (BOS by the model's rule).
    """
    from medinterp.readout import make_target

    out: dict[str, list] = {"foil": [], "answer": [], "clean": [], "corrupted": []}
    for it, j in zip(items, pair_index):
        p = pairs.pairs[int(j)]
        foil = make_target(model, p.clean, answer=p.corrupted_answer, where=f"pair {j} foil")
        out["foil"].append(int(foil.tokens[foil.n_context]))
        out["answer"].append(int(it.tokens[it.n_context]))
        out["clean"].append(it.tokens[: it.n_context])
        out["corrupted"].append(tokens_of(model, p.corrupted, bos=True))
    return out
