"""The one readout: residual stream → logits at chosen positions (final norm, unembedding, soft-cap).

Every technique that scores tokens (saliency, lesion, patching) reads logits through
:func:`unembed_at`, so the final norm, the unembedding and Gemma's logit soft-cap are applied in one
place, and only at the positions (and vocabulary columns) that are read.

Example:
    >>> import torch
    >>> from medinterp.testing import tiny_model
    >>> m = tiny_model(n_layers=2)
    >>> toks = m.to_tokens(["a patient with angina"])
    >>> resid = m(toks, stop_at_layer=m.cfg.n_layers)
    >>> full = m(toks)
    >>> pos = torch.tensor([toks.shape[1] - 1])
    >>> bool(torch.allclose(unembed_at(m, resid, pos), full[:, -1], atol=1e-5))
    True
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor


def final_logits(
    model: Any,
    x: Float[Tensor, "n d_model"],
    token_ids: Int[Tensor, "n_ids"] | None = None,
    on_unembed: Callable[[Tensor, Tensor], None] | None = None,
) -> Float[Tensor, "n vocab"]:
    """``ln_final`` (if any), unembedding (only ``token_ids`` columns when given) and soft-cap.

    ``x`` is the residual after the last block, one row per read position. The unembedding is
    ``x @ W_U + b_U`` (TransformerLens' ``Unembed`` module copies ``W_U.T`` on every call). When
    ``on_unembed`` is given it is called during backward with ``(x, ∂L/∂logits)`` (before the
    soft-cap), from which ``∂L/∂W_U = xᵀ·∂L/∂logits`` (saliency uses it to avoid holding that gradient).
    """
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x.unsqueeze(0))[0]
    W, b = model.unembed.W_U, model.unembed.b_U
    if token_ids is not None:
        W, b = W[:, token_ids], b[token_ids]
    if W.device != x.device:  # sharded models: read on the unembedding's device
        x = x.to(W.device)
    logits = x @ W + b
    if on_unembed is not None and logits.requires_grad:
        xd = x.detach()
        logits.register_hook(lambda d_logits: on_unembed(xd, d_logits))
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    if cap is not None and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


def unembed_at(
    model: Any,
    resid: Float[Tensor, "batch pos d_model"],
    positions: Int[Tensor, "batch"] | Int[Tensor, "batch k"] | str = "last",
    token_ids: Int[Tensor, "n_ids"] | None = None,
    *,
    rows: Int[Tensor, "batch"] | None = None,
    on_unembed: Callable[[Tensor, Tensor], None] | None = None,
) -> Float[Tensor, "batch ... vocab"]:
    """Logits at ``positions`` of each row of ``resid`` (the residual after the last block).

    Args:
        model: a HookedTransformer-like model (``cfg``, ``ln_final``, ``unembed``).
        resid: ``[batch, pos, d_model]`` residual stream after the last block (before ``ln_final``).
        positions: ``"last"``; a ``[batch]`` tensor (one read position per row); a ``[batch, k]``
            tensor (k positions per row); or, with ``rows``, a flat ``[n]`` list of (row, position)
            pairs.
        token_ids: only these vocabulary columns (e.g. the two answers of a patching pair).
        rows: row index per entry of a flat ``positions`` tensor.
        on_unembed: see :func:`final_logits`.

    Returns:
        ``[batch, vocab]`` for ``"last"`` or ``[batch]`` positions; ``[batch, k, vocab]`` for
        ``[batch, k]``; ``[n, vocab]`` with ``rows``. ``vocab`` is ``len(token_ids)`` when given.
    """
    B, T = resid.shape[0], resid.shape[1]
    if isinstance(positions, str):
        if positions != "last":
            raise ValueError(f"positions must be 'last' or a tensor, not {positions!r}")
        return final_logits(model, resid[:, T - 1, :], token_ids, on_unembed)
    positions = positions.to(resid.device)
    if rows is not None:
        return final_logits(model, resid[rows.to(resid.device), positions], token_ids, on_unembed)
    if positions.ndim == 1:
        return final_logits(model, resid[torch.arange(B, device=resid.device), positions], token_ids, on_unembed)
    k = positions.shape[1]
    r = torch.arange(B, device=resid.device).repeat_interleave(k)
    out = final_logits(model, resid[r, positions.reshape(-1)], token_ids, on_unembed)
    return out.reshape(B, k, -1)
