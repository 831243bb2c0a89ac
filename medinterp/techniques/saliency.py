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
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int

from medinterp.errors import MedinterpError
from medinterp.results import Result, bootstrap_ci, make_provenance

COMPONENTS: tuple[str, ...] = ("attn", "mlp", "combined")
VARIANTS: tuple[str, ...] = ("grad", "grad_x_weight", "grad_norm_ratio")
OUTER: tuple[str, ...] = ("embed", "unembed")
_CHUNK = 1 << 22  # elements per chunk for |g·w| (bounds the temporary to 16 MB in float32)


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
    set_name = "custom"
    if isinstance(inputs, str):
        from medinterp.concepts import load_concepts

        inputs = load_concepts(inputs)
    if hasattr(inputs, "prompts") and callable(inputs.prompts):
        set_name = str(getattr(inputs, "name", "custom"))
        inputs = inputs.prompts()
    inputs = list(inputs)
    if not inputs:
        raise MedinterpError("saliency: no prompts given; expected a concept set or a non-empty list of prompts")
    targets: list[SaliencyTarget] = []
    label_rows: list[dict] = []
    for i, p in enumerate(inputs):
        where = f"prompt {i}"
        if isinstance(p, str):
            toks = _to_tokens(model, p, bos=True)
            if toks.shape[1] < 2:
                raise MedinterpError(f"{where} ({p!r}): needs at least 2 tokens to score its own text")
            targets.append(SaliencyTarget(text=p, tokens=toks, n_context=1, target=p))
            label_rows.append({})
        elif isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(x, str) for x in p):
            targets.append(build_target(model, p[0], p[1], where=where))
            label_rows.append({})
        elif hasattr(p, "text"):
            where = f"{where} ({p.text!r})"
            answer = getattr(p, "answer", None)
            if answer is not None:
                targets.append(build_target(model, p.text, answer, where=where))
            elif getattr(p, "span", None) is not None:
                targets.append(_target_from_span(model, p.text, p.span, where))
            else:
                raise MedinterpError(f"{where}: has neither an answer nor an item span to score")
            row = dict(getattr(p, "labels", {}) or {})
            if getattr(p, "item", None) is not None:
                row.setdefault("item", p.item)
            label_rows.append(row)
        else:
            raise MedinterpError(
                f"{where}: expected a ConceptPrompt, a (prompt, answer) pair of strings or a string, "
                f"got {type(p).__name__}"
            )
    keys = sorted({k for r in label_rows for k in r})
    labels = {k: [_plain(r.get(k)) for r in label_rows] for k in keys}
    return targets, labels, set_name


def _plain(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return x if isinstance(x, (str, int, float, bool)) or x is None else str(x)


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
    def add(self, name: str, grad: torch.Tensor) -> None:
        i = self.index[name]
        w = self.weights[i]
        g = grad.reshape(-1)
        self.l1[i] += float(torch.linalg.vector_norm(g, 1))
        self.l2sq[i] += float(torch.linalg.vector_norm(g, 2)) ** 2
        wf = w.reshape(-1)
        total = 0.0
        for s in range(0, g.numel(), _CHUNK):
            gc, wc = g[s : s + _CHUNK], wf[s : s + _CHUNK]
            if self._buf is None or self._buf.numel() < gc.numel() or self._buf.dtype != gc.dtype:
                self._buf = torch.empty(min(_CHUNK, max(gc.numel(), 1 << 16)), dtype=gc.dtype, device=gc.device)
            buf = self._buf[: gc.numel()]
            torch.mul(gc, wc, out=buf)
            total += float(torch.linalg.vector_norm(buf, 1))
        self.gw[i] += total
        self.seen[i] = True


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
def target_loss(model: Any, t: SaliencyTarget, device: torch.device | str) -> torch.Tensor:
    """``-Σ log p(target tokens | preceding tokens)``, with logits only at the predicting positions."""
    tokens = t.tokens.to(device)
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)  # [1, T, d_model], before ln_final
    pos = torch.tensor(t.predict_positions, device=resid.device)
    x = resid[:, pos]
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    logits = model.unembed(x)
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    if cap is not None and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    logp = torch.log_softmax(logits.float(), dim=-1)
    tgt = tokens[:, t.n_context :]
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
    with torch.no_grad():
        wsq = np.array([float(torch.linalg.vector_norm(p.detach().reshape(-1), 2)) ** 2 for p in plist])
    masks = _masks(groups, names, n_layers)
    device = next(model.parameters()).device

    acc = _Accumulator(names, plist)
    values = np.zeros((len(targets), n_layers, len(COMPONENTS), len(VARIANTS)))
    outer = np.zeros((len(targets), len(OUTER), len(VARIANTS)))
    per_param = np.zeros((len(targets), len(names), len(VARIANTS)))
    losses = np.zeros(len(targets))

    tracker = PeakRSS() if track_memory else None
    t0 = time.perf_counter()
    with _grad_hooks(model, names, acc):
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
                    loss = target_loss(model, targets[i], device)
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
    """Context: selected params require grad, each has a post-accumulate hook that feeds ``acc`` and
    frees the gradient; on exit hooks are removed and ``requires_grad`` and ``.grad`` are restored."""

    def __init__(self, model: Any, names: list[str], acc: _Accumulator):
        self.model, self.names, self.acc = model, set(names), acc
        self.handles: list[Any] = []
        self.saved: dict[str, tuple[bool, torch.Tensor | None]] = {}

    def __enter__(self) -> "_grad_hooks":
        for name, p in self.model.named_parameters():
            self.saved[name] = (p.requires_grad, p.grad)
            p.grad = None
            p.requires_grad_(name in self.names)
            if name in self.names:
                self.handles.append(p.register_post_accumulate_grad_hook(self._hook(name)))
        return self

    def _hook(self, name: str):
        acc = self.acc

        def hook(p: torch.Tensor) -> None:
            acc.add(name, p.grad)
            p.grad = None

        return hook

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        for name, p in self.model.named_parameters():
            if name in self.saved:
                rg, g = self.saved[name]
                p.requires_grad_(rg)
                p.grad = g


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
