"""Activation patching (METHOD.md §4): exact layer × position × head sweeps, path and attribution patching.

Entry points (all but :func:`causal_trace` return a :class:`PatchingResult`):

* :func:`patch` -- exact activation patching (:mod:`.engine`). Clean activations are written into the
  corrupted run at one site (residual stream, attention / MLP output, one head's z / q / k / v /
  pattern; the site vocabulary is :mod:`medinterp.sites`), one cell at a time, and the metric is
  read at the last position. Numbers equal TransformerLens's ``transformer_lens.patching``
  functions; the engine batches cells, starts at the patched layer, reuses the unpatched prefix and
  unembeds only the answer columns.
* :func:`path_patch` -- path patching from a sender component to chosen receivers (IOI style, :mod:`.path`).
* :func:`causal_trace` -- causal tracing (Meng et al. 2022) of the item span and the last token on the
  pairs the model knows, returning a :class:`TracingResult` (:mod:`.tracing`); the map's patching row.
* :func:`attribution_patch` -- the first-order (gradient) approximation of a whole sweep in one
  forward + backward pass, optionally verified exactly on its top-k cells (:mod:`.attribution`).

Pairs are :class:`medinterp.concepts.PromptPair` and pass the one pair rule of
:meth:`medinterp.concepts.PairSet.check` (the same rule ``medinterp concepts check`` applies).

Metric (default ``"P"``): ``P = (LD_patched − LD_corrupted) / (LD_clean − LD_corrupted)`` with
``LD = logit(clean answer) − logit(corrupted answer)`` at the last position. Pairs whose
denominator is smaller than ``min_denominator`` are reported in ``excluded`` and left out of the
mean. ``"logit_diff"`` gives the raw LD, ``"logprob"`` the log-probability of the clean answer
(full log-softmax), and any callable ``f(logits [rows, d_vocab], clean_ids [rows],
corrupted_ids [rows]) -> [rows]`` is accepted.

Example:
    >>> from medinterp.testing import tiny_model
    >>> res = patch(tiny_model(n_layers=2), [("a man with chest pain has", "a man with cough pain has",
    ...                                       " angina", " pneumonia")], site="resid_pre", progress=False)
    >>> res.mean.shape, res.curve_label  # [layer, position, head]
    ((2, 1, 1), 'P after patching resid_pre at the last position')
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medinterp.concepts import PairSet
from medinterp.errors import MedinterpError
from medinterp.sites import SITES
from medinterp.sites import hook_name as site_hook_name
from medinterp.techniques.base import Technique
from medinterp.techniques.patching.attribution import attribution_patch
from medinterp.techniques.patching.common import (
    correlation,
    last_position_logits,
    pair_set,
    prepare_pairs,
    validate_patch_params,
)
from medinterp.techniques.patching.engine import patch
from medinterp.techniques.patching.path import make_freeze_hook, path_patch
from medinterp.techniques.patching.result import PatchingResult
from medinterp.techniques.patching.tracing import TracingResult, causal_trace, known_mask, spread_pairs

__all__ = [
    "PatchingResult",
    "TracingResult",
    "causal_trace",
    "spread_pairs",
    "known_mask",
    "patch",
    "path_patch",
    "attribution_patch",
    "pair_set",
    "prepare_pairs",
    "validate_patch_params",
    "SITES",
    "site_hook_name",
    "make_freeze_hook",
    "last_position_logits",
    "correlation",
    "attention_view_data",
    "TECHNIQUE",
]


def _family_pairs(family: Any, max_pairs: int | None) -> PairSet:
    """The family's pair set, or ``max_pairs`` rows of it spread evenly over the file (:func:`spread_pairs`)."""
    return spread_pairs(family.pairs, max_pairs)


def _run_family(model: Any, family: Any, *, progress: bool = True, mode: str = "trace",
                **params: Any) -> TracingResult | PatchingResult:
    """The map's run over the family's pair set (invalid pairs dropped; ``max_pairs`` keeps N rows spread
    evenly over the file, before the pair rule drops any).

    ``mode="trace"`` (default): :func:`causal_trace`. ``mode="resid_last"``: 0.1.0's sweep, ``patch`` of
    resid_pre at the last position (any :func:`patch` parameter may be given)."""
    if mode == "trace":  # the same call as causal_trace(model, family.pairs, preset=...) (max_pairs included)
        return causal_trace(model, family.pairs, progress=progress, **params)
    max_pairs = params.pop("max_pairs", None)
    ps = _family_pairs(family, max_pairs)
    if mode == "resid_last":
        params = {"site": "resid_pre", "positions": "last", "on_bad": "drop", **params}
        return patch(model, ps, progress=progress, **params)
    raise MedinterpError(f"patching mode must be 'trace' or 'resid_last', got {mode!r}")


def attention_view_data(model: Any, res: TracingResult | PatchingResult) -> dict[str, Any]:
    """All heads of the mover block on the first (known) clean prompt.

    For a :class:`TracingResult` the mover is its ``mover`` (largest rise of the last-token curve); for a
    resid_pre :class:`PatchingResult` the block ``l`` maximising ``curve[l+1] - curve[l]``."""
    if isinstance(res, TracingResult):
        if res.mover is None or not res.pairs:
            raise MedinterpError(f"attention view: no mover block ({res.not_known_reason or 'fewer than 2 layers'})")
        layer = int(res.mover)
    else:
        curve = np.asarray(res.layer_curve(), float)
        if len(curve) < 2 or not np.all(np.isfinite(curve)):
            raise MedinterpError("attention view: no usable patching curve (fewer than 2 layers or non-finite values)")
        layer = int(np.argmax(np.diff(curve)))
    pair = res.pairs[0]
    if not isinstance(pair, dict) or not isinstance(pair.get("clean"), str):
        raise MedinterpError("attention view: expected the result's first pair as a dict with a 'clean' prompt text")
    prompt = pair["clean"]
    name = f"blocks.{layer}.attn.hook_pattern"
    with torch.no_grad():
        _, cache = model.run_with_cache(prompt, names_filter=lambda n: n == name)
    att = cache[name][0].float().cpu().numpy()
    return {"attention": {"tokens": model.to_str_tokens(prompt), "attention": att.round(4).tolist(),
                          "head_names": [f"L{layer}H{h}" for h in range(att.shape[0])], "prompt": prompt,
                          "layer": layer}}


TECHNIQUE = Technique(
    name="patching",
    run_fn=_run_family,
    presets={
        # causal tracing (span and last-token restoration of resid_pre) on the pairs the model knows;
        # mode="resid_last" gives 0.1.0's resid_pre-at-the-last-position sweep
        "full": {"n_boot": 1000, "trace_unknown": False},
        "quick": {"max_pairs": 10, "n_boot": 200, "trace_unknown": False},
    },
    needs=("pairs",),
    extras=attention_view_data,
    description="causal tracing: recovered fraction after restoring the clean item span (and last token) per layer",
)

#: :func:`causal_trace` with ``preset="quick"|"full"``: the map's patching cell, from the API
causal_trace = TECHNIQUE.with_presets(causal_trace)
