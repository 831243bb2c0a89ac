"""Weight-gradient saliency per layer (METHOD.md §2).

For every prompt with a target (the answer, or the item's own tokens), the loss is
``L = -log p(target | prompt)`` (summed over the target's tokens, teacher-forced, one forward). One
backward pass gives ``∂L/∂w`` for every weight; per block we report, over the block's attention weights,
over its MLP weights and over both ("combined"):

* ``grad``            mean |∂L/∂w|                 (the paper's statistic)
* ``grad_x_weight``   mean |∂L/∂w · w|             (first-order effect of removing each weight)
* ``grad_norm_ratio`` ‖∂L/∂w‖₂ / ‖w‖₂              (scale-free; norms over all weights of the group)

Means are element-weighted: the sum over every weight of the group divided by their number. The
embedding (``embed.W_E``, ``pos_embed.W_pos``) and unembedding (``unembed.W_U``) are reported separately.

Memory: statistics are accumulated *while* the gradients arrive (one
``register_post_accumulate_grad_hook`` per parameter) and each gradient is freed inside its hook
(``p.grad = None``), so the peak is one forward + backward, never plus a copy of all gradients.
Logits are computed only at the positions that predict target tokens (Gemma's unembedding is
640 × 262144, more than all blocks together).

Exactness vs batching: ``|∂(ΣᵢLᵢ)/∂w|`` is not the mean of ``|∂Lᵢ/∂w|`` (signs cancel across prompts),
so per-prompt statistics need one backward per prompt; that is what :func:`saliency` does. There is no
batched variant.

Example:
    >>> from medinterp.testing import tiny_model                      # doctest: +SKIP
    >>> res = saliency(tiny_model(), [("The patient takes", " aspirin")], progress=False)  # doctest: +SKIP
    >>> res.layer_curve().shape                                          # doctest: +SKIP
    (3,)
"""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int

from medinterp.errors import MedinterpError
from medinterp.prompt_inputs import parse_prompt_inputs
from medinterp.results import Result, bootstrap_ci, make_provenance

COMPONENTS: tuple[str, ...] = ("attn", "mlp", "combined")
VARIANTS: tuple[str, ...] = ("grad", "grad_x_weight", "grad_norm_ratio")
OUTER: tuple[str, ...] = ("embed", "unembed")
_CHUNK = 1 << 22  # elements per statistics chunk (16 MB in float32); few, large ops: small ones cost
# an OpenMP barrier each, which is ruinous on a busy machine
_UNEMBED_BLOCK = 1 << 24  # elements of one row block of the unembedding gradient (64 MB in float32)


# ============================================================================ targets
@dataclasses.dataclass(frozen=True)
class SaliencyTarget:
    """One prompt's token sequence and which of its tokens are scored.

    Attributes:
        text: the prompt text (without the target when the target is an answer).
        tokens: ``[1, T]`` context tokens followed by the target tokens.
        n_context: number of context tokens; tokens ``n_context..T-1`` are the target.
        target: the target text as scored (e.g. ``" aspirin"``).
    """

    text: str
    tokens: Int[torch.Tensor, "1 T"]
    n_context: int
    target: str

    @property
    def predict_positions(self) -> list[int]:
        """Positions whose logits predict the target tokens."""
        return list(range(self.n_context - 1, self.tokens.shape[1] - 1))


def _to_tokens(model: Any, text: str, bos: bool) -> torch.Tensor:
    if text == "":
        if bos and model.cfg.default_prepend_bos and model.tokenizer is not None:
            return torch.tensor([[model.tokenizer.bos_token_id]], dtype=torch.long)
        return torch.zeros((1, 0), dtype=torch.long)
    return model.to_tokens(text, prepend_bos=bos, move_to_device=False).cpu()


def build_target(model: Any, text: str, target: str, *, where: str = "prompt") -> SaliencyTarget:
    """Tokenize ``text`` (with the model's BOS rule) and ``target`` (no BOS) and join them.

    If neither ``text`` ends nor ``target`` starts with whitespace, one space is put in front of the
    target (``"The drug is" + "aspirin"`` scores ``" aspirin"``), because sentencepiece tokenizers
    give a different token to a word with and without its leading space.

    Raises:
        MedinterpError: empty target, or no context token to predict the first target token from.
    """
    if not isinstance(target, str) or target.strip() == "":
        raise MedinterpError(f"{where}: the target answer is empty; expected a non-empty string")
    if text and not text[-1].isspace() and not target[0].isspace():
        target = " " + target
    ctx = _to_tokens(model, text, bos=True)
    tgt = _to_tokens(model, target, bos=False)
    if tgt.shape[1] == 0:
        raise MedinterpError(f"{where}: target {target!r} tokenizes to no tokens")
    if ctx.shape[1] == 0:
        # No BOS and no context: the first target token has nothing to be predicted from.
        ctx, tgt = tgt[:, :1], tgt[:, 1:]
        if tgt.shape[1] == 0:
            raise MedinterpError(
                f"{where}: target {target!r} is a single token at the start of the text and the model "
                "prepends no BOS, so nothing predicts it; give the prompt some context"
            )
    tokens = torch.cat([ctx, tgt], dim=1)
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and tokens.shape[1] > n_ctx:
        raise MedinterpError(f"{where}: {tokens.shape[1]} tokens exceed the model's context of {n_ctx}")
    return SaliencyTarget(text=text, tokens=tokens, n_context=ctx.shape[1], target=target)


def _target_from_span(model: Any, text: str, span: Sequence[int], where: str) -> SaliencyTarget:
    """The item's own tokens given the text before them (DESIGN.md "Targets")."""
    try:
        start, end = int(span[0]), int(span[1])
    except (TypeError, ValueError, IndexError):
        raise MedinterpError(f"{where}: span {span!r} is not a (start, end) pair of character offsets") from None
    if not (0 <= start < end <= len(text)):
        raise MedinterpError(f"{where}: span ({start}, {end}) is outside the text of length {len(text)}")
    prefix = text[:start]
    stripped = prefix.rstrip()
    item = prefix[len(stripped):] + text[start:end]  # keep the whitespace before the item with it
    return build_target(model, stripped, item, where=where)


def targets_from_inputs(model: Any, inputs: Any) -> tuple[list[SaliencyTarget], dict[str, list], str]:
    """Turn what :func:`saliency` accepts into targets, labels and a concept-set name.

    Accepted: a concept-set name (``"drugs"``), a ``ConceptSet`` (anything with ``.prompts()``), a list of
    ``ConceptPrompt`` (``.text``, ``.answer``, ``.span``, ``.labels``), of ``(prompt, answer)`` pairs, or
    of plain strings (target = every token after the first: the text's own LM loss).
    """
    def from_text(text: str, where: str) -> SaliencyTarget:
        toks = _to_tokens(model, text, bos=True)
        if toks.shape[1] < 2:
            raise MedinterpError(f"{where} ({text!r}): needs at least 2 tokens to score its own text")
        return SaliencyTarget(text=text, tokens=toks, n_context=1, target=text)

    return parse_prompt_inputs(
        inputs,
        technique="saliency",
        from_text=from_text,
        from_answer=lambda text, answer, where: build_target(model, text, answer, where=where),
        from_span=lambda text, span, where: _target_from_span(model, text, span, where),
    )


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
        g = grad.reshape(-1)
        wf = (self.weights[i] if weight is None else weight).reshape(-1)
        if wf.numel() != g.numel():
            raise RuntimeError(f"saliency: gradient of {name} has {g.numel()} elements, weight {wf.numel()}")
        l1 = l2sq = gw = 0.0
        for s in range(0, g.numel(), _CHUNK):
            gc, wc = g[s : s + _CHUNK], wf[s : s + _CHUNK]
            if self._buf is None or self._buf.numel() < gc.numel() or self._buf.dtype != gc.dtype:
                self._buf = torch.empty(max(gc.numel(), min(_CHUNK, 1 << 16)), dtype=gc.dtype, device=gc.device)
            buf = self._buf[: gc.numel()]
            # torch.sum / dot accumulate accurately; float32 vector_norm is off by ~1e-5 on 1e5 elements.
            l1 += float(torch.abs(gc, out=buf).sum())
            l2sq += float(torch.dot(gc, gc))
            gw += float(torch.mul(gc, wc, out=buf).abs_().sum())
        self.l1[i] += l1
        self.l2sq[i] += l2sq
        self.gw[i] += gw
        self.seen[i] = True


@torch.no_grad()
def _sum_of_squares(p: torch.Tensor) -> float:
    """Σ p² in chunks (dot products summed in float64)."""
    f = p.detach().reshape(-1)
    return float(sum(float(torch.dot(f[s : s + _CHUNK], f[s : s + _CHUNK])) for s in range(0, f.numel(), _CHUNK)))


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
    t: SaliencyTarget,
    device: torch.device | str,
    on_unembed: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """``-Σ log p(target tokens | preceding tokens)``, with logits only at the predicting positions.

    The unembedding is applied as ``x @ W_U + b_U`` (TransformerLens' ``Unembed`` copies ``W_U.T`` on
    every call, 671 MB for Gemma). If ``on_unembed`` is given, it is called during backward with
    ``(x, ∂L/∂logits)`` (``[k, d_model]``, ``[k, d_vocab]``), from which ``∂L/∂W_U = xᵀ·∂L/∂logits``.
    """
    tokens = t.tokens.to(device)
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)  # [1, T, d_model], before ln_final
    pos = torch.tensor(t.predict_positions, device=resid.device)
    x = resid[0, pos]  # [k, d_model]
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x.unsqueeze(0))[0]
    logits = x @ model.unembed.W_U + model.unembed.b_U  # [k, d_vocab]
    if on_unembed is not None and logits.requires_grad:
        xd = x.detach()
        logits.register_hook(lambda d_logits: on_unembed(xd, d_logits))
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    if cap is not None and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    logp = torch.log_softmax(logits.float(), dim=-1)
    tgt = tokens[0, t.n_context :]
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


# ============================================================================ main
def saliency(
    model: Any,
    concepts_or_prompts: Any,
    *,
    params: str = "weights",
    include_embed: bool = True,
    max_prompts: int | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    ci: float = 0.95,
    progress: bool = True,
    track_memory: bool = True,
    fast_outer: bool = True,
) -> "SaliencyResult":
    """Per-layer weight-gradient saliency of ``-log p(target | prompt)``, one backward per prompt.

    Args:
        model: a HookedTransformer. Its weights, ``requires_grad`` flags and ``.grad`` are left as found.
        concepts_or_prompts: a concept-set name, a ``ConceptSet``, or a list of ``ConceptPrompt``,
            ``(prompt, answer)`` pairs or strings (see :func:`targets_from_inputs`). A prompt's target is
            its ``answer``; when that is None, the item's own tokens given the text before them.
        params: ``"weights"`` (weight matrices only, default) or ``"all"`` (also biases and norms), see
            :func:`parameter_groups`.
        include_embed: also measure the embedding (its gradient is a dense ``d_vocab × d_model`` tensor;
            turning it off saves that work).
        max_prompts: use at most this many prompts (a seeded random subset, kept in order).
        seed: seed of that subset and of the bootstrap.
        n_boot, ci: bootstrap replicates and confidence level of the aggregated table.
        progress: show a tqdm bar.
        track_memory: record the peak RSS increase during the run (``result.memory``).
        fast_outer: compute the embedding's gradient only on the prompt's token rows (the others are
            exactly zero) and the unembedding's gradient a few rows at a time, never materialising either
            ``d_vocab × d_model`` gradient. Same numbers (tested); False uses plain parameter hooks.

    Returns:
        A :class:`SaliencyResult`.

    Example:
        >>> res = saliency(model, "drugs", max_prompts=20)          # doctest: +SKIP
        >>> res.layer_curve("grad")                                 # doctest: +SKIP
    """
    targets, labels, set_name = targets_from_inputs(model, concepts_or_prompts)
    if max_prompts is not None:
        if max_prompts < 1:
            raise MedinterpError(f"saliency: max_prompts={max_prompts}; expected a positive number")
        if len(targets) > max_prompts:
            keep = np.sort(np.random.default_rng(seed).choice(len(targets), max_prompts, replace=False))
            targets = [targets[i] for i in keep]
            labels = {k: [v[i] for i in keep] for k, v in labels.items()}
    groups = parameter_groups(model, params)
    if not include_embed:
        groups = {n: g for n, g in groups.items() if g[0] != "embed"}
    named = dict(model.named_parameters())
    names = list(groups)
    plist = [named[n] for n in names]
    n_layers = int(model.cfg.n_layers)
    numel = np.array([p.numel() for p in plist], dtype=float)
    wsq = np.array([_sum_of_squares(p) for p in plist])
    masks = _masks(groups, names, n_layers)
    device = next(model.parameters()).device

    acc = _Accumulator(names, plist)
    values = np.zeros((len(targets), n_layers, len(COMPONENTS), len(VARIANTS)))
    outer = np.zeros((len(targets), len(OUTER), len(VARIANTS)))
    per_param = np.zeros((len(targets), len(names), len(VARIANTS)))
    losses = np.zeros(len(targets))

    tracker = PeakRSS() if track_memory else None
    t0 = time.perf_counter()
    with _grad_hooks(model, names, acc, fast_outer=fast_outer) as gh:
        if tracker:
            tracker.__enter__()
        try:
            it: Iterable[int] = range(len(targets))
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(it, desc="saliency", unit="prompt")
            for i in it:
                acc.reset()
                with torch.enable_grad():
                    loss = target_loss(model, targets[i], device, on_unembed=gh.on_unembed)
                    loss.backward()
                losses[i] = float(loss.detach())
                del loss
                # A parameter outside the loss's graph gets no hook call: its sums stay 0 (zero gradient).
                values[i], outer[i] = _summarise(acc, masks, numel, wsq, n_layers)
                per_param[i] = _param_stats(acc, numel, wsq)
        finally:
            if tracker:
                tracker.__exit__(None, None, None)
    seconds = time.perf_counter() - t0

    memory = {}
    if tracker:
        grads_mb = float(numel.sum() * plist[0].element_size() / 2**20)
        memory = {"peak_rss_delta_mb": round(tracker.delta_mb, 1), "all_grads_mb": round(grads_mb, 1)}
    prov = make_provenance(
        model,
        technique="saliency",
        concept_set=set_name,
        params=params,
        include_embed=include_embed,
        max_prompts=max_prompts,
        seed=seed,
        n_boot=n_boot,
        ci=ci,
    )
    return SaliencyResult.from_values(
        values=values,
        outer_values=outer,
        param_values=per_param,
        param_names=names,
        loss=losses,
        n_target_tokens=np.array([t.tokens.shape[1] - t.n_context for t in targets]),
        prompts=[t.text for t in targets],
        targets=[t.target for t in targets],
        labels=labels,
        concept_set=set_name,
        n_boot=n_boot,
        ci=ci,
        seed=seed,
        memory=memory,
        timing={"seconds": round(seconds, 3), "seconds_per_prompt": round(seconds / len(targets), 4)},
        provenance=prov,
    )


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
                g_rows = torch.zeros(len(rows), g.shape[-1], dtype=g.dtype, device=g.device)
                g_rows.index_add_(0, inv.to(g.device), g.reshape(-1, g.shape[-1]))
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


# ============================================================================ result
@dataclasses.dataclass
class SaliencyResult(Result):
    """Per-prompt and aggregated weight-gradient saliency.

    Attributes:
        values: ``[n_prompts, n_layers, 3, 3]``: prompt × block × component (``attn, mlp, combined``) ×
            variant (``grad, grad_x_weight, grad_norm_ratio``).
        outer_values: ``[n_prompts, 2, 3]``: prompt × (``embed, unembed``) × variant (NaN if not measured).
        param_values: ``[n_prompts, n_params, 3]``: the same variants for every measured parameter.
        param_names: names of those parameters.
        loss: ``[n_prompts]`` the loss ``-log p(target | prompt)`` (nats, summed over target tokens).
        n_target_tokens: ``[n_prompts]``.
        table: aggregated over prompts, long format: ``layer, component, variant, mean, ci_low, ci_high,
            n_prompts`` (embedding rows have layer −1, unembedding rows layer ``n_layers``).
        prompts, targets: the texts and the scored target strings.
        labels: per-prompt labels from the concept set (e.g. specialty, mechanism, item).
        memory: ``peak_rss_delta_mb`` (extra resident memory during the run) and ``all_grads_mb``
            (what holding every gradient at once would have cost).
        timing: wall-clock seconds, total and per prompt.
    """

    kind = "saliency"
    values: np.ndarray = None  # type: ignore[assignment]
    outer_values: np.ndarray = None  # type: ignore[assignment]
    param_values: np.ndarray = None  # type: ignore[assignment]
    param_names: list = dataclasses.field(default_factory=list)
    loss: np.ndarray = None  # type: ignore[assignment]
    n_target_tokens: np.ndarray = None  # type: ignore[assignment]
    table: Any = None
    prompts: list = dataclasses.field(default_factory=list)
    targets: list = dataclasses.field(default_factory=list)
    labels: dict = dataclasses.field(default_factory=dict)
    concept_set: str = "custom"
    components: list = dataclasses.field(default_factory=lambda: list(COMPONENTS))
    variants: list = dataclasses.field(default_factory=lambda: list(VARIANTS))
    ci: float = 0.95
    memory: dict = dataclasses.field(default_factory=dict)
    timing: dict = dataclasses.field(default_factory=dict)
    provenance: dict = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_values(
        cls,
        *,
        values: np.ndarray,
        outer_values: np.ndarray,
        n_boot: int = 1000,
        ci: float = 0.95,
        seed: int = 0,
        **fields: Any,
    ) -> "SaliencyResult":
        """Build the result and its bootstrap table from the per-prompt arrays."""
        table = aggregate_table(values, outer_values, n_boot=n_boot, ci=ci, seed=seed)
        return cls(values=values, outer_values=outer_values, table=table, ci=ci, **fields)

    @property
    def n_layers(self) -> int:
        return int(self.values.shape[1])

    @property
    def n_prompts(self) -> int:
        return int(self.values.shape[0])

    def _idx(self, component: str, variant: str) -> tuple[int, int]:
        if component not in self.components:
            raise MedinterpError(f"component {component!r}; expected one of {self.components}")
        if variant not in self.variants:
            raise MedinterpError(f"variant {variant!r}; expected one of {self.variants}")
        return self.components.index(component), self.variants.index(variant)

    # ------------------------------------------------------------------ curves
    def layer_curve(self, variant: str = "grad", component: str = "combined") -> Float[np.ndarray, "n_layers"]:
        """Mean over prompts of the per-block saliency (default: combined mean |∂L/∂w|)."""
        c, v = self._idx(component, variant)
        return self.values[:, :, c, v].mean(axis=0)

    def layer_curve_ci(
        self, variant: str = "grad", component: str = "combined"
    ) -> tuple[Float[np.ndarray, "n_layers"], Float[np.ndarray, "n_layers"]]:
        """Bootstrap ``(low, high)`` of :meth:`layer_curve`, from the aggregated table."""
        self._idx(component, variant)
        t = self.table
        rows = t[(t["component"] == component) & (t["variant"] == variant)].sort_values("layer")
        return rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float)

    def layer_curve_by(
        self, label: str, variant: str = "grad", component: str = "combined"
    ) -> dict[Any, Float[np.ndarray, "n_layers"]]:
        """:meth:`layer_curve` separately for each value of a per-prompt label (e.g. ``"specialty"``)."""
        if label not in self.labels:
            raise MedinterpError(f"label {label!r} not in this result; available: {sorted(self.labels)}")
        c, v = self._idx(component, variant)
        vals = np.asarray(self.labels[label], dtype=object)
        return {k: self.values[vals == k, :, c, v].mean(axis=0) for k in dict.fromkeys(self.labels[label])}

    def top_layers(self, k: int = 3, variant: str = "grad", component: str = "combined") -> list[int]:
        """The ``k`` blocks with the highest :meth:`layer_curve`."""
        return [int(i) for i in np.argsort(-self.layer_curve(variant, component))[:k]]

    # ------------------------------------------------------------------ figure
    def figure(self, variant: str | None = None):
        """Per-block attention vs MLP (and combined) saliency with bootstrap CIs, one figure per variant,
        plus a bar chart of embedding and unembedding."""
        import plotly.graph_objects as go

        variants = [variant] if variant else list(self.variants)
        layers = list(range(self.n_layers))
        colors = {"attn": "#1f77b4", "mlp": "#ff7f0e", "combined": "#2ca02c"}
        titles = {
            "grad": "mean |∂L/∂w|",
            "grad_x_weight": "mean |∂L/∂w · w|",
            "grad_norm_ratio": "‖∂L/∂w‖ / ‖w‖",
        }
        figs = []
        for v in variants:
            fig = go.Figure()
            for comp in self.components:
                mean = self.layer_curve(v, comp)
                lo, hi = self.layer_curve_ci(v, comp)
                err = dict(type="data", symmetric=False, array=hi - mean, arrayminus=mean - lo)
                if comp == "combined":
                    fig.add_trace(
                        go.Scatter(x=layers, y=mean, error_y=err, name=comp, mode="lines+markers",
                                   line=dict(color=colors[comp], dash="dash"))
                    )
                else:
                    fig.add_trace(go.Bar(x=layers, y=mean, error_y=err, name=comp, marker_color=colors[comp]))
            fig.update_layout(
                title=f"Weight saliency per block, {titles.get(v, v)}: {self.concept_set} "
                f"({self.n_prompts} prompts, {int(self.ci * 100)}% bootstrap CI)",
                xaxis_title="block", yaxis_title=titles.get(v, v), barmode="group", template="plotly_white",
            )
            figs.append(fig)
        t = self.table
        fig = go.Figure()
        for v in variants:
            rows = t[t["component"].isin(OUTER) & (t["variant"] == v)]
            fig.add_trace(
                go.Bar(
                    x=rows["component"], y=rows["mean"], name=titles.get(v, v),
                    error_y=dict(type="data", symmetric=False, array=rows["ci_high"] - rows["mean"],
                                 arrayminus=rows["mean"] - rows["ci_low"]),
                )
            )
        fig.update_layout(title="Embedding and unembedding saliency", barmode="group", yaxis_type="log",
                          template="plotly_white")
        figs.append(fig)
        return figs

    def summary(self, k: int = 3) -> str:
        """A few readable lines: top blocks (combined mean |grad|) with CIs, embed / unembed."""
        cur = self.layer_curve()
        lo, hi = self.layer_curve_ci()
        lines = [f"saliency of {self.concept_set}: {self.n_prompts} prompts, mean loss {np.mean(self.loss):.3f} nats"]
        for l in self.top_layers(k):
            lines.append(f"  block {l:>3}: mean|grad| {cur[l]:.4g}  [{lo[l]:.4g}, {hi[l]:.4g}]")
        t = self.table
        for o in OUTER:
            r = t[(t["component"] == o) & (t["variant"] == "grad")]
            if len(r) and np.isfinite(r["mean"].iloc[0]):
                lines.append(f"  {o:>9}: mean|grad| {r['mean'].iloc[0]:.4g}  [{r['ci_low'].iloc[0]:.4g}, {r['ci_high'].iloc[0]:.4g}]")
        if self.memory:
            lines.append(
                f"  peak extra RSS {self.memory.get('peak_rss_delta_mb')} MB "
                f"(all gradients at once would be {self.memory.get('all_grads_mb')} MB)"
            )
        return "\n".join(lines)


def aggregate_table(
    values: np.ndarray, outer_values: np.ndarray, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
):
    """Long-format table of prompt means with percentile-bootstrap CIs (NaN-aware)."""
    import pandas as pd

    n_layers = values.shape[1]
    stat = lambda s: np.nanmean(s, axis=0)  # noqa: E731
    rows = []
    est, lo, hi = bootstrap_ci(values, stat, n_boot=n_boot, ci=ci, seed=seed)
    for l in range(n_layers):
        for c, comp in enumerate(COMPONENTS):
            for v, var in enumerate(VARIANTS):
                rows.append((l, comp, var, est[l, c, v], lo[l, c, v], hi[l, c, v]))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN columns (embedding not measured)
        if np.isfinite(outer_values).any():
            est, lo, hi = bootstrap_ci(outer_values, stat, n_boot=n_boot, ci=ci, seed=seed)
        else:
            est = lo = hi = np.full(outer_values.shape[1:], np.nan)
    for o, name in enumerate(OUTER):
        layer = -1 if name == "embed" else n_layers
        for v, var in enumerate(VARIANTS):
            rows.append((layer, name, var, est[o, v], lo[o, v], hi[o, v]))
    df = pd.DataFrame(rows, columns=["layer", "component", "variant", "mean", "ci_low", "ci_high"])
    df["n_prompts"] = values.shape[0]
    return df


# ============================================================================ technique contract
def _run_family(model: Any, family: Any, *, progress: bool = True, **params: Any) -> SaliencyResult:
    return saliency(model, family.concepts, progress=progress, **params)


from medinterp.techniques.base import Technique  # noqa: E402

TECHNIQUE = Technique(
    name="saliency",
    run_fn=_run_family,
    presets={
        # the embedding gradient (262k × 640 for Gemma) is not needed for the map: skip it
        "full": {"max_prompts": 16, "n_boot": 300, "include_embed": False},
        "quick": {"max_prompts": 4, "n_boot": 100, "include_embed": False},
    },
    needs=("concepts",),
    description="gradient saliency of the loss w.r.t. each block's weights",
)
