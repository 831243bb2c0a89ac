"""Saliency engine: parameter groups, the gradient accumulator and hooks, the targeted loss.

Memory: statistics are accumulated *while* the gradients arrive (one
``register_post_accumulate_grad_hook`` per parameter) and each gradient is freed inside its hook
(``p.grad = None``), so the peak is one forward + backward, never plus a copy of all gradients.
Logits are computed only at the positions that predict target tokens, through
:func:`medinterp.readout.final_logits` (Gemma's unembedding is 640 × 262144, more than all blocks together).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np
import torch

from medinterp.errors import MedinterpError
from medinterp.models.backends import backend_of
from medinterp.precision import reduction_dtype
from medinterp.readout import Target, final_logits

COMPONENTS: tuple[str, ...] = ("attn", "mlp", "combined")
VARIANTS: tuple[str, ...] = ("grad", "grad_x_weight", "grad_norm_ratio")
OUTER: tuple[str, ...] = ("embed", "unembed")
_CHUNK = 1 << 22  # elements per statistics chunk (16 MB in float32); few, large ops: small ones cost
# an OpenMP barrier each, which is ruinous on a busy machine
_UNEMBED_BLOCK = 1 << 24  # elements of one row block of the unembedding gradient (64 MB in float32)


# ============================================================================ parameter groups
def parameter_groups(model: Any, params: str = "weights") -> dict[str, tuple[str, int | None]]:
    """Map parameter name -> (group, layer) for the parameters saliency measures.

    Groups: ``attn`` / ``mlp`` (with the block index), ``embed`` / ``unembed`` (layer None).

    Args:
        model: a HookedTransformer.
        params: ``"weights"`` (default): the weight matrices only: ``W_Q, W_K, W_V, W_O`` (also the
            grouped-query ``_W_K, _W_V``), ``W_in, W_gate, W_out``, ``W_E``, ``W_pos``, ``W_U``.
            ``"all"``: also biases, the q/k norms, each block's norms (``ln1*`` → attn, ``ln2*`` → mlp)
            and ``b_U`` / ``ln_final`` (→ unembed). TransformerLens adds zero biases to models that have
            none (Gemma, Llama), which is why they are left out by default.
    """
    if params not in ("weights", "all"):
        raise MedinterpError(f"saliency: params={params!r}; expected 'weights' or 'all'")
    if backend_of(model) == "bridge":
        return _bridge_parameter_groups(model, params)
    out: dict[str, tuple[str, int | None]] = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        is_matrix = parts[-1].lstrip("_").startswith("W_")
        group: str | None = None
        layer: int | None = None
        if parts[0] == "blocks":
            layer, sub = int(parts[1]), parts[2]
            if sub == "attn" or (params == "all" and sub.startswith("ln1")):
                group = "attn"
            elif sub == "mlp" or (params == "all" and sub.startswith("ln2")):
                group = "mlp"
            if group is not None and params == "weights" and not (sub in ("attn", "mlp") and is_matrix and len(parts) == 4):
                group = None
        elif parts[0] in ("embed", "pos_embed"):
            group = "embed" if (is_matrix or params == "all") else None
        elif parts[0] == "unembed" or (parts[0] == "ln_final" and params == "all"):
            group = "unembed" if (is_matrix or params == "all") else None
        if group is not None:
            out[name] = (group, layer)
    return out


def _bridge_parameter_groups(model: Any, params: str) -> dict[str, tuple[str, int | None]]:
    """:func:`parameter_groups` of a TransformerBridge, by its components (``blocks.{l}.attn`` /
    ``ln1*``, ``blocks.{l}.mlp`` / ``ln2*``, ``embed``, ``unembed`` / ``ln_final``) rather than by TL
    names. The parameters are the Hugging Face tensors (``q_proj.weight`` ``[heads·d_head, d_model]``
    where TL has ``W_Q [heads, d_model, d_head]``): the same elements in another layout, and every
    statistic here is a sum over elements, so the numbers equal the hooked backend's. "Weights" are
    the parameters with two or more dimensions (biases and norm scales are vectors).
    """
    name_of = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, tuple[str, int | None]] = {}

    def add(module: Any, group: str, layer: int | None, matrices_only: bool) -> None:
        for p in module.parameters():
            if id(p) in name_of and name_of[id(p)] not in out and (p.dim() >= 2 or not matrices_only):
                out[name_of[id(p)]] = (group, layer)

    weights = params == "weights"
    for l, block in enumerate(model.blocks):
        for child, module in block.named_children():
            if child == "attn" or (not weights and child.startswith("ln1")):
                add(module, "attn", l, weights)
            elif child == "mlp" or (not weights and child.startswith("ln2")):
                add(module, "mlp", l, weights)
    add(model.embed, "embed", None, weights)
    add(model.unembed, "unembed", None, weights)
    if not weights:
        add(model.ln_final, "unembed", None, False)
    return out


# ============================================================================ statistics
class _Accumulator:
    """Receives each gradient once (from a hook or a plain ``.grad`` read) and keeps three sums.

    For parameter i: ``l1[i] = Σ|g|``, ``l2sq[i] = Σ g²``, ``gw[i] = Σ|g·w|``.
    """

    def __init__(self, names: list[str], params: list[torch.Tensor]):
        self.index = {n: i for i, n in enumerate(names)}
        self.weights = [p.detach() for p in params]
        n = len(names)
        self.l1 = np.zeros(n)
        self.l2sq = np.zeros(n)
        self.gw = np.zeros(n)
        self.seen = np.zeros(n, dtype=bool)
        self._buf: torch.Tensor | None = None

    def reset(self) -> None:
        self.l1[:] = 0
        self.l2sq[:] = 0
        self.gw[:] = 0
        self.seen[:] = False

    @torch.no_grad()
    def add(self, name: str, grad: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        """Add the sums of ``grad`` (all of it, or a slice of the parameter whose values are ``weight``).

        Works chunk by chunk (``_CHUNK`` elements) so the ``g·w`` temporary stays small and each chunk
        is still in cache for its three reductions.
        """
        i = self.index[name]
        w = self.weights[i] if weight is None else weight
        if not grad.is_contiguous() and grad.shape == w.shape:
            # the sums are over elements in any order: walk both in the gradient's memory order (a view,
            # not a copy, for weights stored transposed, see medinterp.models.construct.fast_weight_layout)
            perm = sorted(range(grad.dim()), key=lambda d: -grad.stride(d))
            grad, w = grad.permute(*perm), w.permute(*perm)
        g = grad.reshape(-1)
        wf = w.reshape(-1)
        if wf.numel() != g.numel():
            raise RuntimeError(f"saliency: gradient of {name} has {g.numel()} elements, weight {wf.numel()}")
        l1 = l2sq = gw = 0.0
        # float32 at least: a bf16 model's gradients arrive in bf16, and bf16 sums (and g·w products)
        # are rounded to 8 mantissa bits; each chunk is upcast on its own, so no float32 copy of a whole
        # gradient is made
        dt = reduction_dtype(g.dtype)
        for s in range(0, g.numel(), _CHUNK):
            gc, wc = g[s : s + _CHUNK].to(dt), wf[s : s + _CHUNK].to(dt)
            if self._buf is None or self._buf.numel() < gc.numel() or self._buf.dtype != gc.dtype:
                self._buf = torch.empty(max(gc.numel(), min(_CHUNK, 1 << 16)), dtype=gc.dtype, device=gc.device)
            buf = self._buf[: gc.numel()]
            # torch.sum accumulates accurately (cascade sums: ~1e-7 relative on 4M float32 elements); float32
            # torch.dot does not (5e-5 relative on 3M elements of ~1, tests/unit/test_bf16.py), nor vector_norm
            l1 += float(torch.abs(gc, out=buf).sum())
            l2sq += float(torch.mul(gc, gc, out=buf).sum())
            gw += float(torch.mul(gc, wc, out=buf).abs_().sum())
        self.l1[i] += l1
        self.l2sq[i] += l2sq
        self.gw[i] += gw
        self.seen[i] = True


@torch.no_grad()
def _sum_of_squares(p: torch.Tensor) -> float:
    """Σ p² in chunks (each chunk squared and summed in float32 at least, the chunks summed in float64; a
    float32 ``torch.dot`` is off by ~5e-5 relative on a few million elements, torch.sum by ~1e-7)."""
    f = p.detach().reshape(-1)
    dt = reduction_dtype(f.dtype)
    return float(sum(float(c.square().sum()) for c in (f[s : s + _CHUNK].to(dt) for s in range(0, f.numel(), _CHUNK))))


def _group_stats(
    acc: _Accumulator,
    members: np.ndarray,
    numel: np.ndarray,
    wsq: np.ndarray,
) -> np.ndarray:
    """(mean |g|, mean |g·w|, ‖g‖/‖w‖) over the parameters selected by the boolean mask ``members``."""
    n = numel[members].sum()
    if n == 0:
        return np.full(3, np.nan)
    wn = np.sqrt(wsq[members].sum())
    return np.array(
        [
            acc.l1[members].sum() / n,
            acc.gw[members].sum() / n,
            np.sqrt(acc.l2sq[members].sum()) / wn if wn > 0 else np.nan,
        ]
    )


def _param_stats(acc: _Accumulator, numel: np.ndarray, wsq: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(wsq > 0, np.sqrt(acc.l2sq) / np.sqrt(np.where(wsq > 0, wsq, 1)), np.nan)
    return np.stack([acc.l1 / numel, acc.gw / numel, ratio], axis=1)


# ============================================================================ loss
def target_loss(
    model: Any,
    t: Target,
    device: torch.device | str,
    on_unembed: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    out: dict | None = None,
) -> torch.Tensor:
    """``-Σ log p(target tokens | preceding tokens)``, with logits only at the predicting positions.

    The logits are :func:`medinterp.readout.final_logits` of the residual after the last block at
    ``t.predict_positions``. If ``on_unembed`` is given, it is called during backward with
    ``(x, ∂L/∂logits)`` (``[k, d_model]``, ``[k, d_vocab]``), from which ``∂L/∂W_U = xᵀ·∂L/∂logits``.
    If ``out`` is given, ``out["logits"]`` receives those logits (detached, ``[k, d_vocab]``).
    """
    tokens = t.tokens.to(device)[None]
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)  # [1, T, d_model], before ln_final
    pos = torch.tensor(t.predict_positions, device=resid.device)
    logits = final_logits(model, resid[0, pos], on_unembed=on_unembed)  # [k, d_vocab]
    if out is not None:
        out["logits"] = logits.detach()
    logp = torch.log_softmax(logits.float(), dim=-1)
    tgt = tokens[0, t.n_context :].to(logp.device)
    return -logp.gather(-1, tgt.unsqueeze(-1)).sum()


# ============================================================================ memory
class PeakRSS:
    """Samples this process's resident set size in a thread; ``peak - start`` is the extra memory.

    ``tracemalloc`` does not see torch's allocations; RSS does (it also sees glibc keeping freed
    memory, so the figure is an upper bound on what the run needed).
    """

    def __init__(self, interval: float = 0.002):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def _masks(groups: dict[str, tuple[str, int | None]], names: list[str], n_layers: int) -> dict[str, np.ndarray]:
    g = np.array([groups[n][0] for n in names])
    lay = np.array([-1 if groups[n][1] is None else groups[n][1] for n in names])
    masks: dict[str, np.ndarray] = {"embed": g == "embed", "unembed": g == "unembed"}
    for l in range(n_layers):
        masks[f"attn{l}"] = (g == "attn") & (lay == l)
        masks[f"mlp{l}"] = (g == "mlp") & (lay == l)
        masks[f"combined{l}"] = masks[f"attn{l}"] | masks[f"mlp{l}"]
    return masks


def _summarise(acc, masks, numel, wsq, n_layers) -> tuple[np.ndarray, np.ndarray]:
    vals = np.stack(
        [np.stack([_group_stats(acc, masks[f"{c}{l}"], numel, wsq) for c in COMPONENTS]) for l in range(n_layers)]
    )
    out = np.stack([_group_stats(acc, masks[o], numel, wsq) for o in OUTER])
    return vals, out


class _grad_hooks:
    """Context that makes gradients arrive one parameter at a time and never be kept.

    * Every measured parameter requires grad and has a ``register_post_accumulate_grad_hook`` that feeds
      ``acc`` and sets ``p.grad = None`` at once.
    * Embedding (``fast_outer``): ``∂L/∂W_E`` is zero except on the rows of the prompt's tokens, so
      instead of a dense ``d_vocab × d_model`` gradient, ``W_E`` gets no gradient and a forward hook
      on ``model.embed`` catches ``∂L/∂(W_E[tokens])`` and scatter-adds it into the used rows.
    * Unembedding (``fast_outer``): ``W_U`` gets no gradient; :func:`target_loss` hands
      ``(x, ∂L/∂logits)`` to :meth:`on_unembed`, which forms ``∂L/∂W_U = xᵀ·∂L/∂logits`` a few rows at
      a time, so the full ``d_model × d_vocab`` gradient never exists.
    On exit hooks are removed and every parameter's ``requires_grad`` and ``.grad`` are restored.
    """

    def __init__(self, model: Any, names: list[str], acc: _Accumulator, fast_outer: bool = True):
        self.model, self.names, self.acc = model, set(names), acc
        self.handles: list[Any] = []
        self.saved: dict[str, tuple[bool, torch.Tensor | None]] = {}
        self.fast_embed = fast_outer and "embed.W_E" in self.names and _embed_is_plain_lookup(model)
        self.fast_unembed = fast_outer and "unembed.W_U" in self.names and not _shares_storage(model, "unembed.W_U")
        self.fast = {n for n, on in [("embed.W_E", self.fast_embed), ("unembed.W_U", self.fast_unembed),
                                      ("unembed.b_U", self.fast_unembed and "unembed.b_U" in self.names)] if on}

    def __enter__(self) -> "_grad_hooks":
        try:
            for name, p in self.model.named_parameters():
                self.saved[name] = (p.requires_grad, p.grad)
                p.grad = None
                hooked = name in self.names and name not in self.fast
                p.requires_grad_(hooked)
                if hooked:
                    self.handles.append(p.register_post_accumulate_grad_hook(self._hook(name)))
            if self.fast_embed:
                self.handles.append(self.model.embed.register_forward_hook(self._embed_hook))
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def on_unembed(self) -> Callable[[torch.Tensor, torch.Tensor], None] | None:
        return self._on_unembed if self.fast_unembed else None

    def _hook(self, name: str):
        acc = self.acc

        def hook(p: torch.Tensor) -> None:
            acc.add(name, p.grad)
            p.grad = None

        return hook

    def _embed_hook(self, module: Any, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return out
        tokens = args[0].reshape(-1)
        leaf = out.detach().requires_grad_(True)
        W_E = module.W_E

        def on_grad(g: torch.Tensor) -> None:
            with torch.no_grad():
                rows, inv = torch.unique(tokens, return_inverse=True)
                # a token that occurs several times sums its rows' gradients: in float32 for a bf16 model
                dt = reduction_dtype(g.dtype)
                g_rows = torch.zeros(len(rows), g.shape[-1], dtype=dt, device=g.device)
                g_rows.index_add_(0, inv.to(g.device), g.reshape(-1, g.shape[-1]).to(dt))
                self.acc.add("embed.W_E", g_rows, W_E.detach()[rows])

        leaf.register_hook(on_grad)
        return leaf

    @torch.no_grad()
    def _on_unembed(self, x: torch.Tensor, d_logits: torch.Tensor) -> None:
        W_U = self.model.unembed.W_U.detach()  # [d_model, d_vocab]
        step = max(1, _UNEMBED_BLOCK // W_U.shape[1])  # rows of ∂L/∂W_U per block
        for r in range(0, W_U.shape[0], step):
            g = x[:, r : r + step].T.to(d_logits.dtype) @ d_logits  # [step, d_vocab]
            self.acc.add("unembed.W_U", g, W_U[r : r + step])
        if "unembed.b_U" in self.fast:
            self.acc.add("unembed.b_U", d_logits.sum(0))

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for name, p in self.model.named_parameters():
            if name in self.saved:
                rg, g = self.saved[name]
                p.requires_grad_(rg)
                p.grad = g


def _shares_storage(model: Any, name: str) -> bool:
    """True if parameter ``name`` shares memory with another parameter (tied weights)."""
    named = dict(model.named_parameters())
    ptr = named[name].untyped_storage().data_ptr()
    return any(n != name and p.untyped_storage().data_ptr() == ptr for n, p in named.items())


def _embed_is_plain_lookup(model: Any) -> bool:
    """``model.embed(tokens)`` is exactly ``W_E[tokens]`` (TransformerLens ``Embed`` without post-LN)."""
    embed = getattr(model, "embed", None)
    return (
        type(embed).__name__ == "Embed"
        and not getattr(model.cfg, "post_embedding_ln", False)
        and not _shares_storage(model, "embed.W_E")
    )


