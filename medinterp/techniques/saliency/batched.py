"""Per-prompt saliency statistics from one forward + backward over a padded batch of prompts.

``|∂(Σᵢ Lᵢ)/∂w|`` is not ``Σᵢ |∂Lᵢ/∂w|`` (signs cancel across prompts), so a batched backward cannot
read the parameters' ``.grad``. It does not need to: every measured block weight is used as a linear
map ``y = x W`` on the batch, and prompt ``b``'s gradient of it is exactly

    ``G_b = Σ_t x[b, t]ᵀ ⊗ δ[b, t]``,  ``δ = ∂(Σᵢ Lᵢ)/∂y = ∂L_b/∂y`` on prompt b's rows

(prompts do not interact in a forward pass, so the summed loss's output gradient on prompt b's rows
is prompt b's own). Hooks keep ``x`` from the forward (the module's input, or ``hook_z`` /
``hook_post`` for the output projections) and catch ``δ`` as it arrives in the backward (tensor
hooks on ``hook_q/k/v``, ``hook_pre``, ``hook_pre_linear`` and the attention / MLP outputs); each
``G_b`` is formed by a batched matmul, reduced at once to the three sums of
:class:`.engine._Accumulator` (``Σ|G|``, ``ΣG²``, ``Σ|G ⊙ W|``) per prompt, and freed. No parameter
requires grad during the run (the backward starts from a leaf at the embedding's output), so the
dense summed weight gradients are never formed either.

Padding: prompts are right-padded and an explicit attention mask is passed; with causal attention no
real position reads a later (pad) position, so the loss does not depend on pad positions and their
``δ`` is zero; it is also multiplied by the mask before use, so pad positions contribute exactly nothing.

Embedding / unembedding (``fast_outer`` only): ``∂L_b/∂W_E`` is prompt b's embedding-output
gradient scattered into its own token rows, ``∂L_b/∂W_pos`` its first ``len_b`` rows, and
``∂L_b/∂W_U = x_bᵀ·∂L_b/∂logits`` over prompt b's predicting rows: each computed per prompt, as
the one-prompt path does.

Supported: HookedTransformer blocks with ``Attention`` / ``GroupedQueryAttention`` (no split-QKV
input, no 4-bit weights, grouped K/V not ungrouped) and ``MLP`` / ``GatedMLP``, the weight matrices
only (``params="weights"``). Anything else (biases and norm weights with ``params="all"``, the bridge
backend, mixtures of experts, tied embeddings) is run one prompt at a time:
:func:`batched_unsupported` names the reason.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
import torch

from medinterp.models.backends import backend_of
from medinterp.precision import reduction_dtype
from medinterp.readout import Target, final_logits
from medinterp.techniques.saliency.engine import _Accumulator, _embed_is_plain_lookup, _shares_storage

#: elements of one chunk of per-prompt gradients ``[prompts, d_in, d_out]`` (64 MB in float32)
_SAMPLE_CHUNK = 1 << 24
_ATTN_TYPES = ("Attention", "GroupedQueryAttention")
_MLP_TYPES = ("MLP", "GatedMLP")


def batched_unsupported(model: Any, names: Sequence[str], fast_outer: bool = True) -> str | None:
    """Why the batched path cannot measure ``names`` on ``model`` exactly (None: it can)."""
    if backend_of(model) != "hooked":
        return f"backend {backend_of(model)!r} (the batched path reads TransformerLens hook points)"
    cfg = model.cfg
    for flag in ("use_split_qkv_input", "use_attn_in", "load_in_4bit", "ungroup_grouped_query_attention"):
        if getattr(cfg, flag, False):
            return f"cfg.{flag} is set"
    for l, block in enumerate(model.blocks):
        if type(block.attn).__name__ not in _ATTN_TYPES:
            return f"block {l} attention is a {type(block.attn).__name__}"
        mlp = getattr(block, "mlp", None)
        if mlp is not None and type(mlp).__name__ not in _MLP_TYPES:
            return f"block {l} MLP is a {type(mlp).__name__}"
        if mlp is not None and type(mlp).__name__ == "GatedMLP" and cfg.is_layer_norm_activation():
            return "gated MLP with a layer-norm activation"
    for n in names:
        parts = n.split(".")
        if parts[0] == "blocks":
            ok = (parts[2] == "attn" and parts[3] in ("W_Q", "W_K", "W_V", "_W_K", "_W_V", "W_O")) or (
                parts[2] == "mlp" and parts[3] in ("W_in", "W_gate", "W_out"))
            if not ok or len(parts) != 4:
                return f"parameter {n} (the batched path measures weight matrices only; params='all' runs per prompt)"
        elif n == "embed.W_E":
            if not fast_outer or not _embed_is_plain_lookup(model):
                return "embedding that is not a plain lookup (or fast_outer=False)"
        elif n == "pos_embed.W_pos":
            if not fast_outer:
                return "fast_outer=False"
        elif n == "unembed.W_U":
            if not fast_outer or _shares_storage(model, n):
                return "tied unembedding (or fast_outer=False)"
        else:
            return f"parameter {n}"
    return None


class _SampleStats:
    """One :class:`_Accumulator` per prompt of a batch (its ``l1``, ``l2sq``, ``gw``, ``seen`` rows)."""

    def __init__(self, names: list[str], params: list[torch.Tensor], batch: int):
        self.accs = [_Accumulator(names, params) for _ in range(batch)]
        self.index = self.accs[0].index
        self.n_active = batch

    def reset(self, n_active: int) -> None:
        self.n_active = n_active
        for a in self.accs:
            a.reset()

    @torch.no_grad()
    def add_linear(self, name: str, x: torch.Tensor, d: torch.Tensor, weight: torch.Tensor) -> None:
        """Per-prompt sums of ``G_b = x_bᵀ d_b`` against ``weight`` (``[d_in, d_out]``, a view in any layout).

        ``x``: ``[B, T, d_in]``, ``d``: ``[B, T, d_out]`` (pad rows of ``d`` already zero).
        ``Σ G_b²`` comes from the Gram matrices, ``Σ_{t,s} (x_t·x_s)(δ_t·δ_s)`` (no ``G_b`` needed);
        ``Σ|G_b|`` and ``Σ|G_b ⊙ W|`` from ``G_b`` formed in the weight's memory order (``Gᵀ = δᵀx``
        for weights stored transposed), made absolute in place, summed, multiplied in place by ``|W|``
        and summed again: two reads and two in-place passes, no temporary of its size.
        """
        i = self.index[name]
        B = x.shape[0]
        # G_b sums x_t ⊗ δ_t over prompt b's tokens, and its three sums run over millions of weights: all in
        # float32 at least (a bf16 model's x, δ and W arrive in bf16; bf16 results keep 8 mantissa bits)
        dt = reduction_dtype(d.dtype)
        x, d, weight = x.to(dt), d.to(dt), weight.to(dt)
        l2 = (torch.bmm(x, x.transpose(1, 2)).double() * torch.bmm(d, d.transpose(1, 2)).double()).sum((1, 2))
        if weight.dim() == 2 and weight.T.is_contiguous():
            left, right, w = d.transpose(1, 2), x, weight.T  # Gᵀ: [B, d_out, d_in]
        else:
            left, right, w = x.transpose(1, 2), d, weight.contiguous()  # G: [B, d_in, d_out]
        absw = w.abs()
        per = max(1, _SAMPLE_CHUNK // max(1, w.numel()))
        l1, gw = [], []
        for s in range(0, B, per):
            G = torch.bmm(left[s : s + per], right[s : s + per]).abs_()
            l1.append(G.sum((1, 2)))
            gw.append(G.mul_(absw).sum((1, 2)))
        sums = zip(torch.cat(l1).tolist(), l2.tolist(), torch.cat(gw).tolist())
        for b, (a1, a2, a3) in enumerate(sums):
            acc = self.accs[b]
            acc.l1[i] += a1
            acc.l2sq[i] += a2
            acc.gw[i] += a3
            acc.seen[i] = True


class per_sample_hooks:
    """Context: hooks that fill a :class:`_SampleStats` from one backward of a padded batch.

    On entry every parameter's ``requires_grad`` is turned off (saved and restored on exit, with its
    ``.grad``); the embedding's output becomes a leaf that requires grad, so the backward runs through
    the activations only. Call :meth:`set_batch` before each forward.
    """

    def __init__(self, model: Any, names: list[str], stats: _SampleStats):
        self.model, self.names, self.stats = model, set(names), stats
        self.named = dict(model.named_parameters())
        self.handles: list[Any] = []
        self.saved: dict[str, tuple[bool, torch.Tensor | None]] = {}
        self.inputs: dict[tuple[int, str], torch.Tensor] = {}
        self.tokens: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.lengths: list[int] = []
        self.row_sample: torch.Tensor | None = None

    # -------------------------------------------------------------- set-up
    def __enter__(self) -> "per_sample_hooks":
        try:
            m = self.model
            for name, p in m.named_parameters():
                self.saved[name] = (p.requires_grad, p.grad)
                p.grad = None
                p.requires_grad_(False)
            self.handles.append(m.embed.register_forward_hook(self._embed_hook))
            if "pos_embed.W_pos" in self.names:
                self.handles.append(m.pos_embed.register_forward_hook(self._pos_hook))
            for l, block in enumerate(m.blocks):
                self._hook_attention(l, block.attn)
                if getattr(block, "mlp", None) is not None:
                    self._hook_mlp(l, block.mlp)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.inputs.clear()
        for name, p in self.model.named_parameters():
            if name in self.saved:
                rg, g = self.saved[name]
                p.requires_grad_(rg)
                p.grad = g

    def set_batch(self, tokens: torch.Tensor, mask: torch.Tensor, lengths: list[int], row_sample: torch.Tensor) -> None:
        """The padded ``tokens`` ``[B, T]``, their ``mask``, lengths and the prompt of each logit row."""
        self.tokens, self.mask, self.lengths, self.row_sample = tokens, mask, lengths, row_sample

    def _w(self, name: str) -> torch.Tensor:
        return self.named[name].detach()

    def _masked(self, d: torch.Tensor) -> torch.Tensor:
        m = self.mask.to(d.device, d.dtype)
        return d * m.reshape(m.shape + (1,) * (d.dim() - 2))

    def _on_grad(self, out: torch.Tensor, fn: Any) -> None:
        if torch.is_grad_enabled() and out.requires_grad:
            out.register_hook(lambda d: fn(self._masked(d)))

    # -------------------------------------------------------------- attention
    def _hook_attention(self, l: int, attn: Any) -> None:
        pre = f"blocks.{l}.attn."
        grouped = type(attn).__name__ == "GroupedQueryAttention"
        k_name, v_name = (pre + "_W_K", pre + "_W_V") if grouped else (pre + "W_K", pre + "W_V")

        def keep_inputs(module: Any, args: tuple, kwargs: dict) -> None:
            for j, key in enumerate(("query_input", "key_input", "value_input")):
                x = kwargs.get(key, args[j] if j < len(args) else None)
                self.inputs[(l, key)] = x.detach() if x is not None else None

        self.handles.append(attn.register_forward_pre_hook(keep_inputs, with_kwargs=True))
        for hp, name, key in ((attn.hook_q, pre + "W_Q", "query_input"), (attn.hook_k, k_name, "key_input"),
                              (attn.hook_v, v_name, "value_input")):
            if name in self.names:
                self.handles.append(hp.register_forward_hook(functools.partial(self._proj_hook, l, key, name)))
        if pre + "W_O" in self.names:
            def keep_z(module: Any, args: tuple, out: torch.Tensor) -> None:
                self.inputs[(l, "z")] = out.detach()

            def out_hook(module: Any, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
                z = self.inputs[(l, "z")]
                W_O = self._w(pre + "W_O")  # [H, d_head, d_model]
                self._on_grad(out, lambda d: self.stats.add_linear(
                    pre + "W_O", z.flatten(2), d, W_O.reshape(-1, W_O.shape[-1])))

            self.handles.append(attn.hook_z.register_forward_hook(keep_z))
            self.handles.append(attn.register_forward_hook(out_hook, with_kwargs=True))

    def _proj_hook(self, l: int, key: str, name: str, module: Any, args: tuple, out: torch.Tensor) -> None:
        # out: [B, T, heads, d_head] = x @ W[h] (+ b), W: [heads, d_model, d_head]
        x = self.inputs[(l, key)]
        W = self._w(name)  # [heads, d_model, d_head]; [d_model, heads·d_head] as the transpose of a (heads·d_head, d_model) view
        W2 = W.permute(0, 2, 1).reshape(-1, W.shape[1]).T
        self._on_grad(out, lambda d: self.stats.add_linear(name, x, d.flatten(2), W2))

    # -------------------------------------------------------------- MLP
    def _hook_mlp(self, l: int, mlp: Any) -> None:
        pre = f"blocks.{l}.mlp."
        gated = type(mlp).__name__ == "GatedMLP"

        def keep_input(module: Any, args: tuple) -> None:
            self.inputs[(l, "mlp_in")] = args[0].detach()

        self.handles.append(mlp.register_forward_pre_hook(keep_input))
        # hook_pre: x W_gate (gated) or x W_in + b_in; hook_pre_linear: x W_in (gated)
        routes = [(mlp.hook_pre, pre + ("W_gate" if gated else "W_in"))]
        if gated:
            routes.append((mlp.hook_pre_linear, pre + "W_in"))
        for hp, name in routes:
            if name in self.names:
                def hook(module: Any, args: tuple, out: torch.Tensor, name: str = name) -> None:
                    x, W = self.inputs[(l, "mlp_in")], self._w(name)
                    self._on_grad(out, lambda d: self.stats.add_linear(name, x, d, W))

                self.handles.append(hp.register_forward_hook(hook))
        if pre + "W_out" in self.names:
            def keep_post(module: Any, args: tuple, out: torch.Tensor) -> None:
                self.inputs[(l, "post")] = out.detach()

            def out_hook(module: Any, args: tuple, out: torch.Tensor) -> None:
                post, W = self.inputs[(l, "post")], self._w(pre + "W_out")
                self._on_grad(out, lambda d: self.stats.add_linear(pre + "W_out", post, d, W))

            self.handles.append(mlp.hook_post.register_forward_hook(keep_post))
            self.handles.append(mlp.register_forward_hook(out_hook))

    # -------------------------------------------------------------- embedding, unembedding
    def _embed_hook(self, module: Any, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return out
        leaf = out.detach().requires_grad_(True)
        if "embed.W_E" in self.names:
            tokens, W_E = args[0], module.W_E.detach()

            def on_grad(g: torch.Tensor) -> None:
                with torch.no_grad():
                    for b, n in enumerate(self.lengths):
                        rows, inv = torch.unique(tokens[b, :n], return_inverse=True)
                        dt = reduction_dtype(g.dtype)  # repeated tokens' rows summed in float32 at least
                        g_rows = torch.zeros(len(rows), g.shape[-1], dtype=dt, device=g.device)
                        g_rows.index_add_(0, inv.to(g.device), g[b, :n].to(dt))
                        self.stats.accs[b].add("embed.W_E", g_rows, W_E[rows])

            leaf.register_hook(on_grad)
        return leaf

    def _pos_hook(self, module: Any, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return out
        leaf = out.detach().requires_grad_(True)
        W_pos = module.W_pos.detach()

        def on_grad(g: torch.Tensor) -> None:
            with torch.no_grad():
                for b, n in enumerate(self.lengths):  # right padding: prompt b sits at positions 0..n-1
                    self.stats.accs[b].add("pos_embed.W_pos", g[b, :n], W_pos[:n])

        leaf.register_hook(on_grad)
        return leaf

    @torch.no_grad()
    def on_unembed(self, x: torch.Tensor, d_logits: torch.Tensor) -> None:
        """``∂L_b/∂W_U = x_bᵀ·∂L_b/∂logits`` over prompt b's rows, a few rows of ``W_U`` at a time."""
        from medinterp.techniques.saliency.engine import _UNEMBED_BLOCK

        W_U = self.model.unembed.W_U.detach()
        step = max(1, _UNEMBED_BLOCK // W_U.shape[1])
        rs = self.row_sample.to(x.device)
        for b in range(len(self.lengths)):
            sel = torch.nonzero(rs == b).reshape(-1)
            xb, db = x[sel], d_logits[sel]
            for r in range(0, W_U.shape[0], step):
                self.stats.accs[b].add("unembed.W_U", xb[:, r : r + step].T.to(db.dtype) @ db, W_U[r : r + step])


def pad_batch(model: Any, targets: Sequence[Target]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Right-padded ``tokens`` ``[B, T]``, the attention ``mask`` and each prompt's length."""
    lengths = [int(t.tokens.shape[0]) for t in targets]
    tok = getattr(model, "tokenizer", None)
    pad = getattr(tok, "pad_token_id", None) if tok is not None else None
    tokens = torch.full((len(targets), max(lengths)), int(pad if pad is not None else 0), dtype=torch.long)
    mask = torch.zeros(tokens.shape, dtype=torch.long)
    for b, t in enumerate(targets):
        tokens[b, : lengths[b]] = t.tokens
        mask[b, : lengths[b]] = 1
    return tokens, mask, lengths


def batch_loss(
    model: Any,
    targets: Sequence[Target],
    device: torch.device | str,
    hooks: per_sample_hooks | None = None,
    foil_ids: Sequence[int | None] | None = None,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """``Σ_b L_b`` over a padded batch, ``L_b = -Σ log p(target_b | prompt_b)`` (as :func:`.engine.target_loss`).

    Returns:
        ``(total, losses [B], first_logp [B], ld [B])``: the summed loss (to call ``.backward()`` on),
        each prompt's loss, ``log p`` of its first target token at the read position, and
        ``logit(first target token) - logit(foil)`` there (NaN where ``foil_ids[b]`` is None).
    """
    tokens, mask, lengths = pad_batch(model, targets)
    rows_b = torch.cat([torch.full((len(t.predict_positions),), b, dtype=torch.long) for b, t in enumerate(targets)])
    rows_p = torch.cat([torch.tensor(t.predict_positions, dtype=torch.long) for t in targets])
    if hooks is not None:
        hooks.set_batch(tokens, mask, lengths, rows_b)
    resid = model(tokens.to(device), stop_at_layer=model.cfg.n_layers, attention_mask=mask.to(device))
    x = resid[rows_b.to(resid.device), rows_p.to(resid.device)]
    logits = final_logits(model, x, on_unembed=hooks.on_unembed if hooks is not None and
                          "unembed.W_U" in hooks.names else None)
    logp = torch.log_softmax(logits.float(), dim=-1)
    tgt = torch.cat([t.target_ids for t in targets]).to(logp.device)
    tok_logp = logp.gather(-1, tgt.unsqueeze(-1))[:, 0]
    per = torch.zeros(len(targets), dtype=tok_logp.dtype, device=tok_logp.device).index_add(
        0, rows_b.to(tok_logp.device), -tok_logp)
    first = torch.tensor(np.cumsum([0] + [len(t.predict_positions) for t in targets[:-1]]), dtype=torch.long)
    with torch.no_grad():
        first_logp = tok_logp[first.to(tok_logp.device)].double().cpu().numpy()
        ld = np.full(len(targets), np.nan)
        for b, f in enumerate(foil_ids or [None] * len(targets)):
            if f is not None:
                row = logits[int(first[b])].float()
                ld[b] = float(row[int(targets[b].target_ids[0])] - row[int(f)])
    return per.sum(), per.detach().double().cpu().numpy(), first_logp, ld
