"""Reusable TransformerLens hook factories: skip a block, zero- or mean-ablate a sub-layer, patch from a cache.

Every factory returns ``(hook_name, hook_fn)`` pairs (a list), ready for ``model.run_with_hooks(...,
fwd_hooks=...)`` or ``with model.hooks(fwd_hooks=...)``, so they compose with your own hooks and with
``start_at_layer`` / ``stop_at_layer`` / a KV cache.

Sub-layers are addressed by the hooks that hold *what the sub-layer adds to the residual stream*:
``blocks.{l}.hook_attn_out`` (``"attn"``) and ``blocks.{l}.hook_mlp_out`` (``"mlp"``). On Gemma these
come after the post-attention / post-MLP norms, so ablating them removes the sub-layer's whole
contribution.

Example (runs on a tiny random model in milliseconds):
    >>> import torch
    >>> from medinterp.testing import tiny_model
    >>> from medinterp.hooks import skip_block_hooks, zero_ablate_hooks
    >>> model = tiny_model(n_layers=2)
    >>> tokens = model.to_tokens("chest pain on exertion")
    >>> out = model.run_with_hooks(tokens, fwd_hooks=skip_block_hooks(1) + zero_ablate_hooks(0, "mlp"))
    >>> out.shape[:2] == tokens.shape
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Literal, Sequence

import torch
from jaxtyping import Float, Int

from medinterp import sites
from medinterp.errors import MedinterpError
from medinterp.precision import reduction_dtype

HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]
FwdHooks = list[tuple[str, HookFn]]
Sublayer = Literal["attn", "mlp"]

#: Sub-layer name → hook suffix (the ``attn_out`` / ``mlp_out`` sites of :mod:`medinterp.sites`).
SUBLAYER_HOOKS: dict[str, str] = {"attn": sites.SITES["attn_out"].hook, "mlp": sites.SITES["mlp_out"].hook}
#: Lesion modes understood by :func:`lesion_hooks` (and ``medinterp.techniques.lesion``).
LESION_MODES: tuple[str, ...] = ("skip", "attn_zero", "attn_mean", "mlp_zero", "mlp_mean")


# ============================================================================ names
def sublayer_hook_name(layer: int, sublayer: str) -> str:
    """The hook holding a sub-layer's output, e.g. ``sublayer_hook_name(3, "mlp") == "blocks.3.hook_mlp_out"``."""
    if sublayer not in SUBLAYER_HOOKS:
        raise MedinterpError(f"sub-layer {sublayer!r}; expected one of {sorted(SUBLAYER_HOOKS)}")
    return sites.hook_name(sites.ALIASES[sublayer], layer)


def _check_layer(model: Any, layer: int) -> None:
    if model is not None and not (0 <= layer < model.cfg.n_layers):
        raise MedinterpError(f"layer {layer} is out of range; the model has blocks 0..{model.cfg.n_layers - 1}")


# ============================================================================ skip a block
def skip_block_hooks(layer: int, model: Any = None) -> FwdHooks:
    """Make block ``layer`` the identity: its ``hook_resid_post`` is replaced by its ``hook_resid_pre``.

    Two hooks share one slot: the first remembers the block's input, the second returns it as the
    block's output, so everything after the block sees ``resid_post = resid_pre`` exactly. (The
    block still computes; when you control the forward, ``model(resid_pre, start_at_layer=layer + 1)``
    gives the same result without computing it.) Works with a KV cache (the hooks see whatever
    positions the current call processes).

    Args:
        layer: block index.
        model: optional; if given the index is checked.

    Example:
        >>> import torch
        >>> from medinterp.testing import tiny_model
        >>> model = tiny_model(n_layers=3)
        >>> tokens = model.to_tokens("fever and cough")
        >>> with model.hooks(fwd_hooks=skip_block_hooks(1)):
        ...     _, cache = model.run_with_cache(tokens, names_filter=lambda n: "resid" in n)
        >>> torch.equal(cache["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_pre"])
        True
    """
    _check_layer(model, layer)
    slot: dict[str, torch.Tensor] = {}

    def remember(resid_pre: torch.Tensor, hook: Any) -> None:
        slot["x"] = resid_pre

    def identity(resid_post: torch.Tensor, hook: Any) -> torch.Tensor:
        x = slot.pop("x", None)
        if x is None or x.shape != resid_post.shape:
            raise MedinterpError(
                f"skip_block_hooks({layer}): hook_resid_post ran without its hook_resid_pre "
                "(did the forward start after this block?)"
            )
        return x

    return [(f"blocks.{layer}.hook_resid_pre", remember), (f"blocks.{layer}.hook_resid_post", identity)]


# ============================================================================ zero ablation
def zero_hook() -> HookFn:
    """A hook that replaces its activation by zeros (any hook point)."""

    def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return torch.zeros_like(act)

    return fn


def zero_ablate_hooks(layer: int, sublayer: Sublayer, model: Any = None) -> FwdHooks:
    """Zero the attention (``"attn"``) or MLP (``"mlp"``) output of block ``layer``.

    Example:
        >>> from medinterp.testing import tiny_model
        >>> model = tiny_model(n_layers=2)
        >>> tokens = model.to_tokens("severe headache")
        >>> with model.hooks(fwd_hooks=zero_ablate_hooks(0, "attn")):
        ...     _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_attn_out")
        >>> float(cache["blocks.0.hook_attn_out"].abs().max())
        0.0
    """
    _check_layer(model, layer)
    return [(sublayer_hook_name(layer, sublayer), zero_hook())]


# ============================================================================ mean ablation
@dataclasses.dataclass
class MeanActivation:
    """Reference means of one hook's activation over a set of prompts.

    The means are float32 for a bf16 / fp16 model (:func:`compute_means`), else in the model's dtype.

    Attributes:
        per_position: ``[P, d]`` mean at each absolute position ``p`` over the reference prompts that
            have a real token at ``p`` (``P`` = the longest reference prompt).
        counts: ``[P]`` how many prompts contributed to each position.
        overall: ``[d]`` mean over every real position ``>= 1`` of every prompt (position 0, the BOS
            token where one is prepended, is an outlier on most models and is left out).
        last: ``[d]`` mean at the prompts' last real tokens.
    """

    per_position: Float[torch.Tensor, "P d"]
    counts: Int[torch.Tensor, "P"]
    overall: Float[torch.Tensor, "d"]
    last: Float[torch.Tensor, "d"]

    def at(
        self, position_ids: Int[torch.Tensor, "batch pos"], how: str = "position"
    ) -> Float[torch.Tensor, "batch pos d"]:
        """The mean to substitute at the given absolute positions.

        ``how="position"``: the per-position mean; positions ``>= P`` (longer than every reference
        prompt) get ``overall``. ``how="overall"`` / ``"last"``: one vector broadcast to every position.
        """
        if how == "position":
            table = torch.cat([self.per_position, self.overall[None]], dim=0)
            P = self.per_position.shape[0]
            idx = position_ids.clamp(min=0).to(torch.long)
            idx = torch.where(idx < P, idx, torch.full_like(idx, P))
            return table.to(idx.device)[idx]
        if how in ("overall", "last"):
            vec = self.overall if how == "overall" else self.last
            return vec.to(position_ids.device).expand(*position_ids.shape, vec.shape[-1])
        raise MedinterpError(f"mean ablation how={how!r}; expected 'position', 'overall' or 'last'")


def mean_hook(
    mean: MeanActivation | torch.Tensor,
    *,
    how: str = "position",
    position_ids: Int[torch.Tensor, "batch pos"] | None = None,
) -> HookFn:
    """A hook replacing its activation ``[batch, pos, d]`` by a reference mean.

    Args:
        mean: a :class:`MeanActivation`, or a plain tensor ``[d]`` (broadcast) or ``[pos, d]``.
        how: for a ``MeanActivation``: ``"position"`` (default), ``"overall"`` or ``"last"``.
        position_ids: absolute position of each token ``[batch, pos]``; default ``0..pos-1`` for every
            row, which is right for unpadded or right-padded batches without a KV cache. Pass it for
            left-padded batches or KV-cache decoding steps.
    """

    def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
        b, t = act.shape[0], act.shape[1]
        pos = position_ids
        if pos is None:
            pos = torch.arange(t, device=act.device).expand(b, t)
        if pos.shape != (b, t):
            raise MedinterpError(f"mean_hook: position_ids {tuple(pos.shape)} do not match activation {(b, t)}")
        if isinstance(mean, MeanActivation):
            m = mean.at(pos.to(act.device), how)
        elif mean.ndim == 1:
            m = mean.expand(b, t, mean.shape[0])
        elif mean.ndim == 2:
            m = mean.to(act.device)[pos.clamp(0, mean.shape[0] - 1)]
        else:
            raise MedinterpError(f"mean_hook: mean must be [d] or [pos, d], got {tuple(mean.shape)}")
        return m.to(device=act.device, dtype=act.dtype).expand_as(act).clone()

    return fn


def mean_ablate_hooks(
    layer: int,
    sublayer: Sublayer,
    mean: MeanActivation | torch.Tensor,
    *,
    how: str = "position",
    position_ids: Int[torch.Tensor, "batch pos"] | None = None,
    model: Any = None,
) -> FwdHooks:
    """Replace the attention or MLP output of block ``layer`` by its mean over a reference set.

    Compute the mean with :func:`compute_means`.

    Example:
        >>> from medinterp.testing import tiny_model
        >>> model = tiny_model(n_layers=2)
        >>> means = compute_means(model, ["fever and cough", "chest pain"], layers=[1], sublayers=["mlp"])
        >>> m = means["blocks.1.hook_mlp_out"]
        >>> tokens = model.to_tokens("chest pain")
        >>> with model.hooks(fwd_hooks=mean_ablate_hooks(1, "mlp", m, how="last")):
        ...     _, cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_mlp_out")
        >>> bool((cache["blocks.1.hook_mlp_out"][0, -1] - m.last).abs().max() < 1e-6)
        True
    """
    _check_layer(model, layer)
    return [(sublayer_hook_name(layer, sublayer), mean_hook(mean, how=how, position_ids=position_ids))]


@torch.no_grad()
def compute_means(
    model: Any,
    prompts: Sequence[str] | Sequence[torch.Tensor],
    *,
    layers: Iterable[int] | None = None,
    sublayers: Iterable[str] = ("attn", "mlp"),
    hook_names: Iterable[str] | None = None,
    batch_size: int = 32,
) -> dict[str, MeanActivation]:
    """Mean activations of the given hooks over reference prompts (one batched pass, cached hooks only).

    Args:
        model: a HookedTransformer.
        prompts: strings (tokenized with the model's BOS rule) or 1-D token tensors.
        layers: blocks (default all); with ``sublayers`` they name ``blocks.{l}.hook_{attn,mlp}_out``.
        sublayers: ``"attn"`` and/or ``"mlp"``.
        hook_names: instead of layers/sublayers, any hooks whose activation is ``[batch, pos, d]``.
        batch_size: prompts per forward (right-padded; padding never reaches a real token).

    Returns:
        ``{hook_name: MeanActivation}``.
    """
    if hook_names is None:
        layers = range(model.cfg.n_layers) if layers is None else list(layers)
        hook_names = [sublayer_hook_name(l, s) for l in layers for s in sublayers]
    names = list(hook_names)
    if not names:
        raise MedinterpError("compute_means: no hooks selected")
    seqs = [_as_tokens(model, p, i) for i, p in enumerate(prompts)]
    if not seqs:
        raise MedinterpError("compute_means: no reference prompts given")
    P = max(s.shape[0] for s in seqs)
    dev = model.cfg.device
    sums: dict[str, torch.Tensor] = {}
    last_sums: dict[str, torch.Tensor] = {}
    counts = torch.zeros(P, dtype=torch.float64)
    name_set = set(names)
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        tokens, mask, lengths = right_pad(chunk, pad_id=pad_token_id(model))
        stop = _stop_layer(names)
        _, cache = model.run_with_cache(
            tokens.to(dev),
            attention_mask=mask.to(dev),
            names_filter=lambda n: n in name_set,
            stop_at_layer=stop,
            return_type=None,
        )
        m = mask.to(torch.float64)
        T = tokens.shape[1]
        counts[:T] += m.sum(0)
        rows = torch.arange(len(chunk))
        for n in names:
            act = cache[n].detach().to("cpu", torch.float64)
            if act.ndim != 3:
                raise MedinterpError(f"compute_means: hook {n} gives shape {tuple(act.shape)}, expected [batch, pos, d]")
            s = (act * m[..., None]).sum(0)
            if n not in sums:
                sums[n] = torch.zeros(P, act.shape[-1], dtype=torch.float64)
                last_sums[n] = torch.zeros(act.shape[-1], dtype=torch.float64)
            sums[n][:T] += s
            last_sums[n] += act[rows, lengths - 1].sum(0)
        del cache
    out: dict[str, MeanActivation] = {}
    # kept in float32 at least: a bf16 mean is rounded to ~0.4% of the residual's size, and a block's
    # mean output (resid_post - resid_pre, medinterp.techniques.lesion) is a small difference of two of
    # them; hooks cast the mean to the activation's dtype where it is written into the model
    dtype = reduction_dtype(model.cfg.dtype)
    n_prompts = len(seqs)
    for n in names:
        per_pos = sums[n] / counts.clamp(min=1)[:, None]
        rest = counts[1:].sum()
        overall = sums[n][1:].sum(0) / rest if rest > 0 else sums[n][0] / counts[0].clamp(min=1)
        out[n] = MeanActivation(
            per_position=per_pos.to(dtype),
            counts=counts.to(torch.long),
            overall=overall.to(dtype),
            last=(last_sums[n] / n_prompts).to(dtype),
        )
    return out


# ============================================================================ patching
def patch_hook(
    source: torch.Tensor,
    positions: Sequence[int] | Int[torch.Tensor, "n"] | torch.Tensor | None = None,
    *,
    rows: Int[torch.Tensor, "batch"] | None = None,
    heads: torch.Tensor | None = None,
    layout: str = "resid",
) -> HookFn:
    """THE patch hook: writes ``source`` (e.g. a clean run's cached activation) into the activation.

    The activation patching engine uses it with one cell per batch row (``rows``, a boolean
    ``positions`` mask per row, ``heads``); the simple form patches every row alike.

    Args:
        source: activations to write, in the hook's layout; ``[n_source, ...]`` with ``rows``, else the
            activation's shape (or broadcastable over batch).
        positions: ``None`` (every position), a list / 1-D tensor of position indices (every row), or a
            boolean ``[batch, pos]`` mask (per row). For ``layout="pattern"`` these are query positions.
        rows: ``[batch]`` which row of ``source`` each batch row takes (default: ``source`` as is).
        heads: boolean ``[batch, head]``: which heads each row patches (head layouts; default all).
        layout: ``"resid"`` ``[b, pos, d]``, ``"head"`` ``[b, pos, head, d]`` or ``"pattern"``
            ``[b, head, q, k]`` (see :mod:`medinterp.sites`).

    Rows whose masks are all False leave the activation untouched, so a batch may mix cells.

    Example:
        >>> from medinterp.testing import tiny_model
        >>> model = tiny_model(n_layers=2)
        >>> clean, corrupt = model.to_tokens("chest pain"), model.to_tokens("fever cough")
        >>> _, cache = model.run_with_cache(clean, names_filter="blocks.1.hook_resid_post")
        >>> src = cache["blocks.1.hook_resid_post"]
        >>> out = model.run_with_hooks(corrupt, fwd_hooks=[("blocks.1.hook_resid_post", patch_hook(src))])
        >>> bool(torch.allclose(out, model(clean), atol=1e-5))
        True
    """
    if layout not in ("resid", "head", "pattern"):
        raise MedinterpError(f"patch_hook: layout {layout!r}; expected 'resid', 'head' or 'pattern'")

    def fn(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
        src = source[rows] if rows is not None else source
        if positions is None and heads is None:
            return src.to(device=act.device, dtype=act.dtype).expand_as(act).clone()
        b = act.shape[0]
        n_pos = act.shape[2] if layout == "pattern" else act.shape[1]
        if isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
            pm = positions
        else:
            pm = torch.ones(b, n_pos, dtype=torch.bool, device=act.device)
            if positions is not None:
                pm = torch.zeros(b, n_pos, dtype=torch.bool, device=act.device)
                pm[:, positions] = True
        if layout == "resid":
            m = pm[:, :, None]
        elif layout == "head":
            hm = heads if heads is not None else torch.ones(b, act.shape[2], dtype=torch.bool)
            m = (pm[:, :, None] & hm[:, None, :])[..., None]
        else:
            hm = heads if heads is not None else torch.ones(b, act.shape[1], dtype=torch.bool)
            m = (hm[:, :, None] & pm[:, None, :])[..., None]
        return torch.where(m.to(act.device), src.to(act.dtype), act)

    return fn


# ============================================================================ dispatch
def lesion_hooks(
    layer: int,
    mode: str,
    *,
    means: dict[str, MeanActivation] | None = None,
    how: str = "position",
    position_ids: Int[torch.Tensor, "batch pos"] | None = None,
    model: Any = None,
) -> FwdHooks:
    """Hooks for one lesion ``mode`` at block ``layer`` (see :data:`LESION_MODES`).

    ``"skip"`` → :func:`skip_block_hooks`; ``"attn_zero"`` / ``"mlp_zero"`` → :func:`zero_ablate_hooks`;
    ``"attn_mean"`` / ``"mlp_mean"`` → :func:`mean_ablate_hooks` with ``means[sublayer_hook_name(...)]``.
    """
    if mode == "skip":
        return skip_block_hooks(layer, model)
    if mode not in LESION_MODES:
        raise MedinterpError(f"lesion mode {mode!r}; expected one of {list(LESION_MODES)}")
    sub, kind = mode.split("_")
    if kind == "zero":
        return zero_ablate_hooks(layer, sub, model)  # type: ignore[arg-type]
    name = sublayer_hook_name(layer, sub)
    if means is None or name not in means:
        raise MedinterpError(f"lesion mode {mode!r} at layer {layer} needs a reference mean for {name} (compute_means)")
    return mean_ablate_hooks(layer, sub, means[name], how=how, position_ids=position_ids, model=model)  # type: ignore[arg-type]


# ============================================================================ batching helpers
def pad_token_id(model: Any) -> int:
    """The tokenizer's pad id (else its EOS id, else 0); padded positions are never read."""
    tok = getattr(model, "tokenizer", None)
    for attr in ("pad_token_id", "eos_token_id"):
        v = getattr(tok, attr, None) if tok is not None else None
        if v is not None:
            return int(v)
    return 0


def right_pad(
    seqs: Sequence[Int[torch.Tensor, "t"]], pad_id: int = 0
) -> tuple[Int[torch.Tensor, "batch T"], Int[torch.Tensor, "batch T"], Int[torch.Tensor, "batch"]]:
    """Stack 1-D token tensors, padding on the right. Returns ``(tokens, attention_mask, lengths)``.

    With right padding every real token keeps its absolute position and attends only to real tokens
    (the causal mask hides the padding after it), so results at real positions equal unbatched runs.
    """
    lengths = torch.tensor([int(s.shape[0]) for s in seqs], dtype=torch.long)
    T = int(lengths.max())
    tokens = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
    return tokens, mask, lengths


def left_pad(
    seqs: Sequence[Int[torch.Tensor, "t"]], pad_id: int = 0
) -> tuple[Int[torch.Tensor, "batch T"], Int[torch.Tensor, "batch T"], Int[torch.Tensor, "batch T"]]:
    """Stack 1-D token tensors, padding on the left (for batched generation).

    Returns ``(tokens, attention_mask, position_ids)``; position ids count real tokens from 0 (pads get 0).
    """
    T = max(int(s.shape[0]) for s in seqs)
    tokens = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        n = int(s.shape[0])
        tokens[i, T - n :] = s
        mask[i, T - n :] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return tokens, mask, pos


def _stop_layer(names: Sequence[str]) -> int | None:
    """The block after the last hooked one when every hook is inside a block (saves the rest)."""
    if not all(n.startswith("blocks.") for n in names):
        return None
    return max(int(n.split(".")[1]) for n in names) + 1


def _as_tokens(model: Any, p: str | torch.Tensor, i: int) -> torch.Tensor:
    if isinstance(p, torch.Tensor):
        t = p.reshape(-1).to(torch.long).cpu()
    elif isinstance(p, str):
        t = model.to_tokens(p, move_to_device=False)[0].cpu()
    else:
        raise MedinterpError(f"reference prompt {i}: expected a string or a 1-D token tensor, got {type(p).__name__}")
    if t.numel() == 0:
        raise MedinterpError(f"reference prompt {i}: tokenizes to no tokens")
    return t
