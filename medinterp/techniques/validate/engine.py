"""Band validation engine: the intact clean and corrupted runs, and many layer sets intervened on at once.

A *layer set* ``S`` (the band, a random band of the same width) is intervened on as a unit:

* ``ablate`` (necessity, on the clean prompts): every block in ``S`` has its output (``resid_post -
  resid_pre``, what it adds to the residual stream) replaced by its mean over reference prompts
  (``"mean"``, the lesion technique's ``block_mean``) or by nothing (``"skip"``, the block is the identity);
* ``restore`` (sufficiency, on the corrupted prompts): every block in ``S`` has its output at the item-span
  positions replaced by the clean run's output of that block there (ROME's window restore of a band of
  block outputs); the other positions and blocks run on the corrupted input.

All sets of one call share a stack (rows = sets x prompts), run block by block from the earliest block any
of them touches, so each block's weights are read once per stack (as
:func:`medinterp.techniques.lesion.engine.stacked_entry_resids` does for single lesions). Rows are
right-padded (real tokens keep their positions; the explicit attention mask is passed to every block).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float

from medinterp.errors import MedinterpError
from medinterp.hooks import MeanActivation, pad_token_id, right_pad
from medinterp.models.backends import capabilities
from medinterp.readout import final_logits

#: rows (sets x prompts) one block call may hold
STACK_ROWS = 512
#: rows of full-vocabulary logits one KL call may produce (Gemma: 1 MiB a row)
KL_ROWS = 256


@dataclasses.dataclass
class PairBatch:
    """The known pairs, right-padded, with the intact runs' residuals.

    Fields:
        clean, corrupted: ``[P, T]`` tokens; mask: ``[P, T]``; last: ``[P]`` last real position;
        span: ``[P, T]`` bool, the item-span positions; good, bad: ``[P]`` clean / corrupted answer ids;
        clean_pre, corrupt_pre: ``[n_layers + 1, P, T, d]`` residual entering each block (the last entry is
        the residual after the last block); clean_ld, corrupt_ld: ``[P]`` float64;
        clean_logp: ``[P, vocab]`` intact log-probs at the read position (for the KL), or None.
    """

    clean: torch.Tensor
    corrupted: torch.Tensor
    mask: torch.Tensor
    last: torch.Tensor
    span: torch.Tensor
    good: torch.Tensor
    bad: torch.Tensor
    clean_pre: torch.Tensor
    corrupt_pre: torch.Tensor
    clean_ld: np.ndarray
    corrupt_ld: np.ndarray


def check_stackable(model: Any) -> None:
    """Band validation restarts blocks from a residual (``start_at_layer``): hooked models only."""
    if not capabilities(model).start_at_layer:
        raise MedinterpError("validate_band needs a model that can run single blocks from a residual "
                             "(start_at_layer: the hooked backend); load it with backend='hooked'")


@torch.no_grad()
def _residuals(model: Any, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[n_layers + 1, P, T, d]``: ``resid_pre`` of every block and the residual after the last."""
    n = int(model.cfg.n_layers)
    names = {f"blocks.{l}.hook_resid_pre" for l in range(n)}
    final, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=lambda x: x in names,
                                        stop_at_layer=n)
    return torch.stack([cache[f"blocks.{l}.hook_resid_pre"] for l in range(n)] + [final])


def _ld(model: Any, resid: torch.Tensor, last: torch.Tensor, good: torch.Tensor, bad: torch.Tensor) -> np.ndarray:
    """``logit(good) - logit(bad)`` at each row's last position (float64 numpy)."""
    x = resid[torch.arange(resid.shape[0], device=resid.device), last]
    ids = torch.stack([good, bad], 1)
    uniq, inv = torch.unique(ids, return_inverse=True)
    lg = final_logits(model, x, uniq).double()
    return (lg.gather(1, inv[:, :1]) - lg.gather(1, inv[:, 1:]))[:, 0].cpu().numpy()


@torch.no_grad()
def pair_batch(model: Any, clean: Sequence[Sequence[int]], corrupted: Sequence[Sequence[int]],
               spans: Sequence[np.ndarray], good: Sequence[int], bad: Sequence[int]) -> PairBatch:
    """Right-pad the pairs (clean and corrupted have equal lengths) and run both sides intact."""
    dev = next(model.parameters()).device
    pad = pad_token_id(model)
    ct, mask, lengths = right_pad([torch.tensor(list(c)) for c in clean], pad_id=pad)
    xt, _, xlen = right_pad([torch.tensor(list(c)) for c in corrupted], pad_id=pad)
    if not torch.equal(lengths, xlen):
        raise MedinterpError("validate_band: a clean prompt and its corrupted prompt differ in token length")
    span = torch.zeros(ct.shape, dtype=torch.bool)
    for i, m in enumerate(spans):
        span[i, : len(m)] = torch.as_tensor(np.asarray(m, bool))
    ct, xt, mask, span = ct.to(dev), xt.to(dev), mask.to(dev), span.to(dev)
    last = (lengths - 1).to(dev)
    g = torch.tensor(list(good), device=dev)
    b = torch.tensor(list(bad), device=dev)
    cp, xp = _residuals(model, ct, mask), _residuals(model, xt, mask)
    return PairBatch(ct, xt, mask, last, span, g, b, cp, xp, _ld(model, cp[-1], last, g, b),
                     _ld(model, xp[-1], last, g, b))


def _groups(sets: Sequence[Sequence[int]], n_rows: int) -> list[list[int]]:
    """Indices of ``sets`` sorted by first block, cut into stacks of at most :data:`STACK_ROWS` rows."""
    order = sorted(range(len(sets)), key=lambda i: min(sets[i]))
    per = max(1, STACK_ROWS // max(1, n_rows))
    return [order[s : s + per] for s in range(0, len(order), per)]


@torch.no_grad()
def run_sets(model: Any, pb: PairBatch, sets: Sequence[Sequence[int]], how: str, *,
             means: Sequence[dict[int, torch.Tensor]] | None = None,
             fold: torch.Tensor | None = None) -> tuple[Float[np.ndarray, "n_sets P"], torch.Tensor]:
    """Intervene on every layer set in ``sets`` (each as a unit) and read the answer.

    Args:
        model: the hooked model; pb: :func:`pair_batch`.
        sets: block indices per set.
        how: ``"mean"`` / ``"skip"`` (ablate on the clean prompts) or ``"restore"`` (corrupted prompts, clean
            block outputs at the item span).
        means: ``"mean"``: per fold ``{block: [T', d] mean output per position}``; fold: ``[P]`` the fold whose
            means each prompt gets (cross-fitting).

    Returns:
        ``(ld [n_sets, P], the residual after the last block at each read position [n_sets, P, d])`` (for
        :func:`kl_at`).
    """
    if how not in ("mean", "skip", "restore"):
        raise MedinterpError(f"run_sets: how={how!r}; expected mean, skip or restore")
    n = int(model.cfg.n_layers)
    P, T = pb.clean.shape
    ld = np.full((len(sets), P), np.nan)
    base = pb.corrupt_pre if how == "restore" else pb.clean_pre
    reads = torch.zeros((len(sets), P, base.shape[-1]), dtype=base.dtype, device=base.device)
    mean_at: dict[int, torch.Tensor] = {}
    if how == "mean":
        if means is None or fold is None:
            raise MedinterpError("run_sets(how='mean') needs the reference means and the fold of each prompt")
        for l in sorted({l for s in sets for l in s}):
            per_fold = [m[l] for m in means]
            mean_at[l] = torch.stack([per_fold[int(f)] for f in fold.tolist()])  # [P, T, d]
    for group in _groups(sets, P):
        k = len(group)
        start = min(min(sets[i]) for i in group)
        x = base[start].repeat(k, 1, 1)
        mask = pb.mask.repeat(k, 1)
        for l in range(start, n):
            hit = torch.tensor([l in sets[i] for i in group], device=x.device).repeat_interleave(P)
            y = model(x, start_at_layer=l, stop_at_layer=l + 1, attention_mask=mask)
            if bool(hit.any()):
                if how == "skip":
                    repl = x
                elif how == "mean":
                    repl = x + mean_at[l].repeat(k, 1, 1).to(x.dtype)
                else:
                    delta = (pb.clean_pre[l + 1] - pb.clean_pre[l]).repeat(k, 1, 1)
                    repl = torch.where(pb.span.repeat(k, 1)[..., None], x + delta, y)
                y = torch.where(hit[:, None, None], repl, y)
            x = y
        last = pb.last.repeat(k)
        ld[group] = _ld(model, x, last, pb.good.repeat(k), pb.bad.repeat(k)).reshape(k, P)
        reads[group] = x[torch.arange(x.shape[0], device=x.device), last].reshape(k, P, -1)
    return ld, reads


@torch.no_grad()
def kl_at(model: Any, reads: Float[torch.Tensor, "n P d"], ref: Float[torch.Tensor, "P vocab"]) -> Float[np.ndarray, "n P"]:
    """KL(intact || intervened) of the next token at the read positions (nats), in row chunks of :data:`KL_ROWS`
    (each row is a full-vocabulary distribution)."""
    n, P = reads.shape[0], reads.shape[1]
    rows = reads.reshape(n * P, -1)
    out = []
    for s in range(0, rows.shape[0], KL_ROWS):
        lp = torch.log_softmax(final_logits(model, rows[s : s + KL_ROWS]).float(), -1)
        r = ref[torch.arange(s, min(s + KL_ROWS, rows.shape[0]), device=ref.device) % P]
        out.append((r.exp() * (r - lp)).sum(-1).double().cpu())
    return torch.cat(out).numpy().reshape(n, P)


@torch.no_grad()
def intact_logp(model: Any, pb: PairBatch) -> torch.Tensor:
    """``[P, vocab]`` intact next-token log-probs at each clean prompt's read position."""
    rows = pb.clean_pre[-1][torch.arange(pb.clean.shape[0], device=pb.clean.device), pb.last]
    return torch.cat([torch.log_softmax(final_logits(model, rows[s : s + KL_ROWS]).float(), -1)
                      for s in range(0, rows.shape[0], KL_ROWS)])


def block_means(means: dict[str, MeanActivation], layers: Sequence[int], T: int, device: Any) -> dict[int, torch.Tensor]:
    """``{block: [T, d]}`` per-position mean block outputs (:func:`medinterp.techniques.lesion.compute_block_means`)."""
    from medinterp.techniques.lesion.engine import block_delta_name

    pos = torch.arange(T, device=device)[None]
    return {l: means[block_delta_name(l)].at(pos, "position")[0].to(device) for l in layers}


@torch.no_grad()
def run_edited(model: Any, x0: Float[torch.Tensor, "R T d"], mask: torch.Tensor, last: torch.Tensor, start: int,
               blocks: Sequence[int], edit: Any, capture: int | None = None
               ) -> tuple[Float[torch.Tensor, "R d"], torch.Tensor | None]:
    """Run blocks ``start .. n-1`` from the residual ``x0`` entering block ``start``, editing the read position.

    After each block ``l`` in ``blocks`` (its output, after any permanent hook of the model), the residual at
    each row's read position ``last`` is replaced by ``edit(l, rows, x_read)`` (``rows``: the row indices of
    the chunk, ``x_read``: ``[r, d]``). Rows are run in chunks of :data:`STACK_ROWS` (steering, erasure).

    Returns:
        ``(final residual at the read positions [R, d], the residual entering block ``capture`` at the read
        positions [R, d] or None)`` (``capture`` in ``start .. n``; ``n``: after the last block).
    """
    n = int(model.cfg.n_layers)
    outs, caps = [], []
    want = set(blocks)
    for s in range(0, x0.shape[0], STACK_ROWS):
        rows = torch.arange(s, min(s + STACK_ROWS, x0.shape[0]), device=x0.device)
        x, m, lr = x0[rows], mask[rows], last[rows]
        ar = torch.arange(len(rows), device=x0.device)
        cap = x[ar, lr] if capture == start else None
        for l in range(start, n):
            x = model(x, start_at_layer=l, stop_at_layer=l + 1, attention_mask=m)
            if l in want:
                x = x.clone()
                x[ar, lr] = edit(l, rows, x[ar, lr]).to(x.dtype)
            if capture == l + 1:
                cap = x[ar, lr]
        outs.append(x[ar, lr])
        caps.append(cap)
    return torch.cat(outs), (torch.cat(caps) if capture is not None else None)


@torch.no_grad()
def read_ld(model: Any, x: Float[torch.Tensor, "R d"], good: torch.Tensor, bad: torch.Tensor) -> Float[np.ndarray, "R"]:
    """``logit(good) - logit(bad)`` from residuals after the last block, one row per read position."""
    return _ld(model, x[:, None], torch.zeros(x.shape[0], dtype=torch.long, device=x.device), good, bad)


def reads_at(pre: torch.Tensor, index: int, last: torch.Tensor) -> Float[torch.Tensor, "P d"]:
    """The residual entering block ``index`` (``n``: after the last block) at each prompt's read position."""
    return pre[index][torch.arange(pre.shape[1], device=pre.device), last]
