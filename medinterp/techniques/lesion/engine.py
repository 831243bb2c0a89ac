"""Lesion engine: right-padded batches, the intact run, one lesioned run, and the metrics.

Logits are read through :func:`medinterp.readout.unembed_at` (final norm, unembedding, soft-cap) only
at the read and target-predicting positions of each batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from jaxtyping import Float

from medinterp.errors import MedinterpError
from medinterp.hooks import MeanActivation, lesion_hooks, right_pad
from medinterp.readout import Target, unembed_at

METRICS: tuple[str, ...] = ("kl", "logp_drop", "top1_agree")
METHODS: tuple[str, ...] = ("prefix", "full")
MEAN_OVER: tuple[str, ...] = ("position", "overall", "last")


@dataclasses.dataclass
class _Batch:
    """A right-padded batch and the flat list of (row, position) pairs whose logits are read."""

    index: list[int]  # positions of these items in the full list
    tokens: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T]
    rows: torch.Tensor  # [R] batch row of each read position
    cols: torch.Tensor  # [R] position
    read_idx: torch.Tensor  # [B] index into the R read rows of each item's read position
    tgt_idx: torch.Tensor  # [N] index into the R rows of every target-predicting position
    tgt_ids: torch.Tensor  # [N] the target token there
    tgt_owner: torch.Tensor  # [N] batch row it belongs to


def make_batch(items: Sequence[Target], index: Sequence[int], pad_id: int, device: Any) -> _Batch:
    """Right-pad ``items`` and list the positions whose logits the metrics need."""
    tokens, mask, _ = right_pad([it.tokens for it in items], pad_id=pad_id)
    rows, cols, read_idx, tgt_idx, tgt_ids, owner = [], [], [], [], [], []
    for b, it in enumerate(items):
        where: dict[int, int] = {}
        for p in [it.read_pos, *it.predict_positions]:
            if p not in where:
                where[p] = len(rows)
                rows.append(b)
                cols.append(p)
        read_idx.append(where[it.read_pos])
        for p in it.predict_positions:
            tgt_idx.append(where[p])
            tgt_ids.append(int(it.tokens[p + 1]))
            owner.append(b)
    lt = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return _Batch(list(index), tokens.to(device), mask.to(device), lt(rows), lt(cols), lt(read_idx), lt(tgt_idx), lt(tgt_ids), lt(owner))


def _from_logprobs(logp: torch.Tensor, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs at each item's read position ``[B, V]``, log p(target) ``[B]``) from the R read rows."""
    B = batch.tokens.shape[0]
    tl = logp[batch.tgt_idx, batch.tgt_ids].double()
    tgt = torch.zeros(B, dtype=torch.float64, device=logp.device).index_add_(0, batch.tgt_owner, tl)
    return logp[batch.read_idx], tgt


@torch.no_grad()
def readout_resid(model: Any, resid: Float[torch.Tensor, "B T d"], batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Metrics inputs from the residual after the last block: unembed only the positions read."""
    logits = unembed_at(model, resid, batch.cols, rows=batch.rows)
    return _from_logprobs(torch.log_softmax(logits.float(), dim=-1), batch)


@torch.no_grad()
def readout_logits(logits: Float[torch.Tensor, "B T V"], batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Metrics inputs from full logits (the ``method="full"`` path)."""
    return _from_logprobs(torch.log_softmax(logits[batch.rows, batch.cols].float(), dim=-1), batch)


@torch.no_grad()
def compare(
    intact: tuple[torch.Tensor, torch.Tensor], lesioned: tuple[torch.Tensor, torch.Tensor]
) -> Float[np.ndarray, "B 3"]:
    """Per item ``(kl, logp_drop, top1_agree)`` of a lesioned readout against the intact one."""
    lp_i, t_i = intact
    lp_l, t_l = lesioned
    a, b = lp_i.double(), lp_l.double()
    kl = (a.exp() * (a - b)).sum(-1)
    agree = (lp_i.argmax(-1) == lp_l.argmax(-1)).double()
    return torch.stack([kl, t_i - t_l, agree], dim=-1).cpu().numpy()


# ============================================================================ forward passes
def _resid_pre_names(layers: Iterable[int]) -> set[str]:
    return {f"blocks.{l}.hook_resid_pre" for l in layers}


@torch.no_grad()
def intact_run(model: Any, batch: _Batch, layers: Sequence[int], method: str = "prefix"):
    """The intact model on a batch: ``(readout, cache of resid_pre at the lesion layers or None)``."""
    if method == "full":
        logits = model(batch.tokens, attention_mask=batch.mask, return_type="logits")
        return readout_logits(logits, batch), None
    names = _resid_pre_names(layers)
    resid, cache = model.run_with_cache(
        batch.tokens, attention_mask=batch.mask, names_filter=lambda n: n in names, stop_at_layer=model.cfg.n_layers
    )
    return readout_resid(model, resid, batch), cache


@torch.no_grad()
def lesioned_resid(
    model: Any,
    batch: _Batch,
    layer: int,
    mode: str,
    *,
    cache: Any = None,
    means: dict[str, MeanActivation] | None = None,
    mean_over: str = "position",
    method: str = "prefix",
) -> Float[torch.Tensor, "B T d_model"]:
    """The residual stream after the last block (before ``ln_final``) with one lesion applied.

    ``method="prefix"`` restarts from ``cache["blocks.{layer}.hook_resid_pre"]`` (from
    :func:`intact_run`); ``method="full"`` runs the whole model with the lesion hooks.
    """
    n = model.cfg.n_layers
    if method == "full":
        hooks = lesion_hooks(layer, mode, means=means, how=mean_over)
        return model.run_with_hooks(batch.tokens, attention_mask=batch.mask, stop_at_layer=n, fwd_hooks=hooks)
    if cache is None:
        raise MedinterpError("lesioned_resid(method='prefix') needs the cache from intact_run")
    x = cache[f"blocks.{layer}.hook_resid_pre"]
    if mode == "skip":
        # Skipping block `layer` is starting block `layer + 1` from resid_pre[layer]; past the last
        # block the loop is empty and x goes straight to ln_final.
        return model(x, start_at_layer=layer + 1, stop_at_layer=n, attention_mask=batch.mask)
    hooks = lesion_hooks(layer, mode, means=means, how=mean_over)
    return model.run_with_hooks(x, start_at_layer=layer, stop_at_layer=n, attention_mask=batch.mask, fwd_hooks=hooks)


@torch.no_grad()
def lesioned_run(
    model: Any,
    batch: _Batch,
    layer: int,
    mode: str,
    *,
    cache: Any = None,
    means: dict[str, MeanActivation] | None = None,
    mean_over: str = "position",
    method: str = "prefix",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One lesion on one batch, returning its readout (see :func:`compare`).

    ``method="prefix"``: :func:`lesioned_resid` from the cached residual, then the unembedding at the
    read positions only. ``method="full"``: the whole model with the lesion hooks and full logits.
    """
    if method == "full":
        hooks = lesion_hooks(layer, mode, means=means, how=mean_over)
        logits = model.run_with_hooks(batch.tokens, attention_mask=batch.mask, return_type="logits", fwd_hooks=hooks)
        return readout_logits(logits, batch)
    resid = lesioned_resid(model, batch, layer, mode, cache=cache, means=means, mean_over=mean_over, method=method)
    return readout_resid(model, resid, batch)


