"""Covariates per prompt: what moves a technique's score with no medicine involved (METHOD §0b).

A control family that differs from its medical family in token structure, frame length, answer
frequency, baseline confidence or task size can move every technique without any medical knowledge
(longer subjects are read out later, rarer answers lose more when a block is skipped, a 15-class probe
task is not a 10-class one). Every technique records, per prompt, the covariates below that apply to
it (:class:`medinterp.techniques.base.UnitScores` ``covariates``); the map checks their balance between
medicine and its control (:mod:`medinterp.maps.balance`) before it marks anything.

Names (:data:`COVARIATES`) are shared by all techniques so that one balance table reads the same
everywhere.

Example:
    >>> import torch
    >>> span_covariates([[2, 5, 6, 7, 9]], [[2, 5, 8, 7, 9]], bos=True)
    {'subject_tokens': array([1.]), 'tokens_after_subject': array([2.]), 'prompt_tokens': array([4.])}
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float

#: covariate name -> what it is (shown in balance tables and the codebook)
COVARIATES: dict[str, str] = {
    "subject_tokens": "tokens in the item (subject) span",
    "tokens_after_subject": "prompt tokens after the item span (up to the read position)",
    "prompt_tokens": "prompt tokens, BOS excluded",
    "answer_prior": "log p(answer's first token | BOS alone): the model's frequency prior of the answer",
    "intact_logp": "log p(answer's first token | prompt), intact model",
    "intact_ld": "logit(answer) - logit(foil) at the read position, intact model (clean run)",
    "n_classes": "classes in the probe task of the prompt's labelling",
    "items_per_class": "items in the prompt's class",
}


def span_covariates(clean_tokens: Sequence[Sequence[int]], corrupted_tokens: Sequence[Sequence[int]], *,
                    bos: bool) -> dict[str, Float[np.ndarray, "n"]]:
    """Token-structure covariates of clean prompts whose item span is where they differ from their corrupted twin.

    Args:
        clean_tokens, corrupted_tokens: per pair, the prompt tokens (equal lengths per pair; BOS first when
            ``bos``). Pairs whose lengths differ or that do not differ get NaN.
        bos: whether position 0 is a BOS token (not counted in ``prompt_tokens``).

    Returns:
        ``subject_tokens`` (positions that differ, first to last inclusive), ``tokens_after_subject``
        (positions after the last differing one), ``prompt_tokens``.
    """
    n = len(clean_tokens)
    out = {k: np.full(n, np.nan) for k in ("subject_tokens", "tokens_after_subject", "prompt_tokens")}
    for i, (c, k) in enumerate(zip(clean_tokens, corrupted_tokens)):
        c, k = list(c), list(k)
        out["prompt_tokens"][i] = len(c) - (1 if bos else 0)
        if len(c) != len(k):
            continue
        diff = [j for j, (a, b) in enumerate(zip(c, k)) if a != b]
        if not diff:
            continue
        out["subject_tokens"][i] = diff[-1] - diff[0] + 1
        out["tokens_after_subject"][i] = len(c) - 1 - diff[-1]
    return out


@torch.no_grad()
def answer_prior(model: Any, token_ids: Sequence[int]) -> Float[np.ndarray, "n"]:
    """``log p(token | BOS alone)`` for each id: the model's own prior of an answer token, offline.

    One forward pass of the BOS token (or, for a model without one, NaN for every id). A proxy of the
    token's frequency that the model itself holds, so rarer answers are told from common ones with no
    corpus.

    Args:
        model: a HookedTransformer (or anything with ``tokenizer.bos_token_id`` and ``__call__`` on tokens).
        token_ids: answer token ids.
    """
    ids = np.asarray([int(t) for t in token_ids], dtype=np.int64)
    tok = getattr(model, "tokenizer", None)
    bos = getattr(tok, "bos_token_id", None) if tok is not None else None
    if bos is None or len(ids) == 0:
        return np.full(len(ids), np.nan)
    from medinterp.readout import final_logits

    dev = getattr(model.cfg, "device", None) or "cpu"
    toks = torch.tensor([[int(bos)]], device=dev)
    try:  # one residual and medinterp's readout: TL's own unembedding copies W_U.T on every call (Gemma: 670 MB)
        resid = model(toks, stop_at_layer=model.cfg.n_layers)
        logits = final_logits(model, resid[0, -1:])[0].float()
    except TypeError:  # a backend without stop_at_layer
        logits = model(toks, return_type="logits")[0, -1].float()
    logp = torch.log_softmax(logits, dim=-1).cpu().numpy().astype(np.float64)
    return logp[ids]


def as_columns(covariates: dict[str, Any] | None, n: int) -> dict[str, np.ndarray]:
    """Covariates as float arrays of length ``n`` (validated; unknown names are kept, NaN allowed)."""
    from medinterp.errors import MedinterpError

    out: dict[str, np.ndarray] = {}
    for k, v in (covariates or {}).items():
        a = np.asarray(v, dtype=float).reshape(-1)
        if a.shape[0] != n:
            raise MedinterpError(f"covariate {k!r}: {a.shape[0]} values for {n} prompts; expected one per prompt")
        out[str(k)] = a
    return out


def to_matrix(covariates: dict[str, np.ndarray] | None) -> tuple[np.ndarray | None, list[str]]:
    """``(matrix [n, k], names)`` for saving in a result (None, [] when there are none)."""
    if not covariates:
        return None, []
    names = list(covariates)
    return np.stack([np.asarray(covariates[k], float) for k in names], axis=1), names


def from_matrix(matrix: np.ndarray | None, names: Sequence[str] | None) -> dict[str, np.ndarray]:
    """Inverse of :func:`to_matrix` (a result's saved ``covariates`` / ``covariate_names``)."""
    if matrix is None or not names:
        return {}
    m = np.asarray(matrix, float)
    return {str(k): m[:, j] for j, k in enumerate(names)}


__all__ = ["COVARIATES", "answer_prior", "as_columns", "from_matrix", "span_covariates", "to_matrix"]
