"""The saliency run: targets → batched backward (or one backward per prompt) → per-block statistics → the result.

Prompts are run in padded batches of ``batch_size`` with per-prompt statistics reduced during the
backward (:mod:`.batched`; exact, equal to the one-prompt path to float rounding, tested), or one
prompt at a time (``batch_size=1``, the original path; also where the batched path does not apply).

Long runs checkpoint: with ``checkpoint_dir`` each chunk of ``checkpoint_every`` prompts is saved as
one unit of a :class:`medinterp.store.Checkpoint` tied to a :func:`medinterp.store.fingerprint` of the
targets, the measured parameters and the model; a rerun loads the finished chunks and computes only
the rest (other inputs: the stale units are cleared and everything is recomputed).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from medinterp.covariates import answer_prior, span_covariates, to_matrix
from medinterp.errors import MedinterpError
from medinterp.prompt_inputs import _is_pair_set, parse_prompt_inputs, subsample, unit_ci, units_of
from medinterp.readout import Target, make_target, tokens_of
from medinterp.results import make_provenance
from medinterp.store import Checkpoint, fingerprint
from medinterp.techniques.base import Technique
from medinterp.techniques.saliency.engine import (
    COMPONENTS,
    OUTER,
    VARIANTS,
    PeakRSS,
    _Accumulator,
    _grad_hooks,
    _masks,
    _param_stats,
    _sum_of_squares,
    _summarise,
    parameter_groups,
    target_loss,
)
from medinterp.techniques.saliency.batched import _SampleStats, batch_loss, batched_unsupported, per_sample_hooks
from medinterp.techniques.saliency.result import SaliencyResult, aggregate_table

#: prompts per padded batch when ``batch_size`` is None (measured on Gemma 3 270M, see the report)
DEFAULT_BATCH = 16
#: the per-prompt covariates saliency records (names of :data:`medinterp.covariates.COVARIATES`)
SALIENCY_COVARIATES = ("subject_tokens", "tokens_after_subject", "prompt_tokens", "answer_prior", "intact_logp",
                       "intact_ld")

#: the one target type (kept under its old name)
SaliencyTarget = Target


def build_target(model: Any, text: str, target: str, *, where: str = "prompt") -> Target:
    """``text`` as context and ``target`` as the scored answer (:func:`medinterp.readout.make_target`)."""
    return make_target(model, text, answer=target, where=where)


def targets_from_inputs(model: Any, inputs: Any) -> tuple[list[Target], dict[str, list], str]:
    """Targets, labels and a concept-set name from what :func:`saliency` accepts.

    Accepted: a concept-set name (``"drugs"``), a ``ConceptSet`` (anything with ``.prompts()``), a list of
    ``ConceptPrompt`` (``.text``, ``.answer``, ``.span``, ``.labels``), of ``(prompt, answer)`` pairs, or
    of plain strings (target = every token after the first: the text's own LM loss).
    """
    return parse_prompt_inputs(model, inputs, technique="saliency")


def saliency(
    model: Any,
    concepts_or_prompts: Any,
    *,
    params: str = "weights",
    include_embed: bool = True,
    include_unembed: bool = True,
    max_prompts: int | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    ci: float = 0.95,
    progress: bool = True,
    track_memory: bool = True,
    fast_outer: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 32,
    batch_size: int | None = None,
) -> SaliencyResult:
    """Per-layer weight-gradient saliency of ``-log p(target | prompt)``, per prompt, from batched backwards.

    Args:
        model: a HookedTransformer. Its weights, ``requires_grad`` flags and ``.grad`` are left as found.
        concepts_or_prompts: a pair-set or concept-set name, a ``PairSet`` (its clean prompts with their
            clean answers: the map's input), a ``ConceptSet``, or a list of ``ConceptPrompt``,
            ``(prompt, answer)`` pairs or strings (see :func:`targets_from_inputs`). A prompt's target is
            its ``answer``; when that is None, the word after the item (prompts ending on their item are
            left out with a ``NothingAfterItemWarning``).
        params: ``"weights"`` (weight matrices only, default) or ``"all"`` (also biases and norms), see
            :func:`parameter_groups`.
        include_embed: also measure the embedding (its gradient is a dense ``d_vocab × d_model`` tensor;
            turning it off saves that work).
        include_unembed: also measure the unembedding (``d_model × d_vocab``: on Gemma more weights than
            all blocks; the block shares do not need it).
        max_prompts: use at most this many prompts (:func:`medinterp.prompt_inputs.subsample`).
        seed: seed of that subset and of the bootstrap.
        n_boot, ci: bootstrap replicates and confidence level of the aggregated table.
        progress: show a tqdm bar.
        track_memory: record the peak RSS increase during the run (``result.memory``).
        fast_outer: compute the embedding's gradient only on the prompt's token rows (the others are
            exactly zero) and the unembedding's gradient a few rows at a time, never materialising either
            ``d_vocab × d_model`` gradient. Same numbers (tested); False uses plain parameter hooks.
        checkpoint_dir: save each finished chunk of prompts there and resume from it (None: no checkpoint).
        checkpoint_every: prompts per checkpoint unit (a batch never spans two units).
        batch_size: prompts per padded forward + backward, whose per-prompt statistics are reduced as
            the gradient passes (:mod:`medinterp.techniques.saliency.batched`); 1: one backward per
            prompt (the original path). None: :data:`DEFAULT_BATCH` where the batched path applies
            (HookedTransformer, ``params="weights"``, see :func:`.batched.batched_unsupported`), else 1.

    Returns:
        A :class:`SaliencyResult`, with the per-prompt covariates (:data:`SALIENCY_COVARIATES`):
        ``subject_tokens``, ``tokens_after_subject``, ``prompt_tokens`` from the clean vs corrupted
        prompt of each pair when the input is a pair set (NaN otherwise), ``answer_prior`` and
        ``intact_logp`` of the target's first token, and ``intact_ld`` (its logit minus the pair's
        corrupted answer's, at the read position; NaN without a pair).

    Raises:
        MedinterpError: ``batch_size > 1`` where the batched path does not apply (the reason is named),
            or ``batch_size`` / ``checkpoint_every`` below 1.

    Example:
        >>> res = saliency(model, "drugs", max_prompts=20)          # doctest: +SKIP
        >>> res.layer_curve("grad")                                 # doctest: +SKIP
    """
    if checkpoint_every < 1:
        raise MedinterpError(f"saliency: checkpoint_every={checkpoint_every}; expected a positive number")
    if isinstance(concepts_or_prompts, str):
        from medinterp.concepts import load_concepts

        concepts_or_prompts = load_concepts(concepts_or_prompts)
    targets, labels, set_name = targets_from_inputs(model, concepts_or_prompts)
    targets, labels = subsample(targets, labels, max_prompts=max_prompts, seed=seed, technique="saliency")
    pairs = _pairs_of(concepts_or_prompts, labels, len(targets))
    groups = parameter_groups(model, params)
    if not include_embed:
        groups = {n: g for n, g in groups.items() if g[0] != "embed"}
    if not include_unembed:
        groups = {n: g for n, g in groups.items() if g[0] != "unembed"}
    named = dict(model.named_parameters())
    names = list(groups)
    plist = [named[n] for n in names]
    n_layers = int(model.cfg.n_layers)
    numel = np.array([p.numel() for p in plist], dtype=float)
    wsq = np.array([_sum_of_squares(p) for p in plist])
    masks = _masks(groups, names, n_layers)
    device = next(model.parameters()).device
    n = len(targets)
    if batch_size is not None and batch_size < 1:
        raise MedinterpError(f"saliency: batch_size={batch_size}; expected a positive number or None")
    why_not = batched_unsupported(model, names, fast_outer)
    if batch_size is None:
        batch_size = DEFAULT_BATCH if why_not is None else 1
    elif batch_size > 1 and why_not is not None:
        raise MedinterpError(f"saliency: batch_size={batch_size} needs the batched path, which does not apply here: "
                             f"{why_not}; use batch_size=1 (or None)")
    foil_ids = _foil_ids(model, pairs, n)
    ckpt = Checkpoint(
        checkpoint_dir,
        fingerprint("saliency", targets, names, {"params": params, "fast_outer": fast_outer,
                                                   "checkpoint_every": checkpoint_every, "batch_size": batch_size,
                                                   "foils": foil_ids}, model=model),
        name="saliency",
    )

    acc = _Accumulator(names, plist)
    values = np.zeros((n, n_layers, len(COMPONENTS), len(VARIANTS)))
    outer = np.zeros((n, len(OUTER), len(VARIANTS)))
    per_param = np.zeros((n, len(names), len(VARIANTS)))
    losses = np.zeros(n)
    first_logp = np.full(n, np.nan)
    intact_ld = np.full(n, np.nan)

    tracker = PeakRSS() if track_memory else None
    t0 = time.perf_counter()
    n_resumed = 0
    batched = batch_size > 1
    stats = _SampleStats(names, plist, batch_size) if batched else None
    hooks = per_sample_hooks(model, names, stats) if batched else _grad_hooks(model, names, acc, fast_outer=fast_outer)
    with hooks as gh:
        if tracker:
            tracker.__enter__()
        try:
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=n, desc="saliency", unit="prompt")
            for s in range(0, n, checkpoint_every):
                sl = slice(s, min(n, s + checkpoint_every))
                key = f"{s:06d}"
                unit = ckpt.load(key)
                if unit is not None:
                    values[sl], outer[sl], per_param[sl], losses[sl] = (
                        unit["values"], unit["outer"], unit["per_param"], unit["loss"])
                    first_logp[sl], intact_ld[sl] = unit["first_logp"], unit["intact_ld"]
                    n_resumed += sl.stop - sl.start
                elif batched:
                    for b0 in range(sl.start, sl.stop, batch_size):
                        idx = list(range(b0, min(sl.stop, b0 + batch_size)))
                        stats.reset(len(idx))
                        with torch.enable_grad():
                            total, per, fl, ld = batch_loss(model, [targets[i] for i in idx], device, gh,
                                                            [foil_ids[i] for i in idx])
                            total.backward()
                        del total
                        for j, i in enumerate(idx):
                            a = stats.accs[j]
                            losses[i], first_logp[i], intact_ld[i] = per[j], fl[j], ld[j]
                            values[i], outer[i] = _summarise(a, masks, numel, wsq, n_layers)
                            per_param[i] = _param_stats(a, numel, wsq)
                else:
                    for i in range(sl.start, sl.stop):
                        acc.reset()
                        got: dict = {}
                        with torch.enable_grad():
                            loss = target_loss(model, targets[i], device, on_unembed=gh.on_unembed, out=got)
                            loss.backward()
                        losses[i] = float(loss.detach())
                        del loss
                        first_logp[i], intact_ld[i] = _read_stats(got["logits"], targets[i], foil_ids[i])
                        # A parameter outside the loss's graph gets no hook call: its sums stay 0 (zero gradient).
                        values[i], outer[i] = _summarise(acc, masks, numel, wsq, n_layers)
                        per_param[i] = _param_stats(acc, numel, wsq)
                if unit is None:
                    ckpt.save(key, values=values[sl], outer=outer[sl], per_param=per_param[sl], loss=losses[sl],
                              first_logp=first_logp[sl], intact_ld=intact_ld[sl])
                if bar is not None:
                    bar.update(sl.stop - sl.start)
            if bar is not None:
                bar.close()
        finally:
            if tracker:
                tracker.__exit__(None, None, None)
    seconds = time.perf_counter() - t0

    memory = {}
    if tracker:
        grads_mb = float(numel.sum() * plist[0].element_size() / 2**20)
        memory = {"peak_rss_delta_mb": round(tracker.delta_mb, 1), "all_grads_mb": round(grads_mb, 1)}
    run_params = dict(params=params, include_embed=include_embed, include_unembed=include_unembed,
                      max_prompts=max_prompts, seed=seed, n_boot=n_boot, ci=ci, fast_outer=fast_outer,
                      batch_size=batch_size)
    prov = make_provenance(model, technique="saliency", concept_set=set_name, **{k: run_params[k] for k in (
        "params", "include_embed", "include_unembed", "max_prompts", "seed", "n_boot", "ci")})
    block_numel = np.array([[numel[masks[f"{c}{l}"]].sum() for c in COMPONENTS] for l in range(n_layers)])
    share = block_shares(values[:, :, :, VARIANTS.index("grad_x_weight")], block_numel)
    units, _ = units_of(labels, n)
    _, lo, hi = unit_ci(share, units, n_boot=n_boot, ci=ci, seed=seed)
    timings = {"seconds": round(seconds, 3), "seconds_per_prompt": round(seconds / n, 4)}
    cov_matrix, cov_names = to_matrix(prompt_covariates(model, targets, pairs, first_logp, intact_ld))
    if n_resumed:
        timings["prompts_resumed"] = n_resumed
    return SaliencyResult(
        values=values,
        outer_values=outer,
        param_values=per_param,
        param_names=names,
        loss=losses,
        n_target_tokens=np.array([len(t.target_ids) for t in targets]),
        table=aggregate_table(values, outer, n_boot=n_boot, ci=ci, seed=seed),
        prompts=[t.text for t in targets],
        targets=[t.target for t in targets],
        labels=labels,
        concept_set=set_name,
        ci=ci,
        memory=memory,
        share=share,
        share_ci=np.stack([lo, hi]),
        block_numel=block_numel,
        covariates=cov_matrix,
        covariate_names=cov_names,
        params=run_params,
        timings=timings,
        provenance=prov,
    )


def _pairs_of(inputs: Any, labels: dict[str, list], n: int) -> list | None:
    """The ``PromptPair`` of each prompt (its first pair, label ``pair``) when the input is a pair set."""
    if not _is_pair_set(inputs) or len(labels.get("pair", [])) != n:
        return None
    return [inputs.pairs[int(k)] for k in labels["pair"]]


def _foil_ids(model: Any, pairs: list | None, n: int) -> list[int | None]:
    """First token of each pair's corrupted answer, tokenized as the clean answer is (:func:`make_target`)."""
    if pairs is None:
        return [None] * n
    return [int(make_target(model, p.clean, answer=p.corrupted_answer).target_ids[0]) for p in pairs]


def _read_stats(logits: torch.Tensor, t: Target, foil: int | None) -> tuple[float, float]:
    """``log p`` of the first target token at the read position and its logit minus the foil's."""
    row = logits[0].float()
    first = int(t.target_ids[0])
    logp = float(torch.log_softmax(row, dim=-1)[first])
    return logp, (float(row[first] - row[int(foil)]) if foil is not None else float("nan"))


def prompt_covariates(
    model: Any, targets: list[Target], pairs: list | None, intact_logp: np.ndarray, intact_ld: np.ndarray
) -> dict[str, Float[np.ndarray, "n_prompts"]]:
    """The per-prompt covariates of saliency (:data:`SALIENCY_COVARIATES`, METHOD §0b).

    Token structure (``subject_tokens``, ``tokens_after_subject``, ``prompt_tokens``) comes from
    :func:`medinterp.covariates.span_covariates` on each pair's clean vs corrupted prompt (NaN without
    a pair set); ``answer_prior`` is :func:`medinterp.covariates.answer_prior` of the target's first
    token; ``intact_logp`` / ``intact_ld`` are read from the run's own forward.
    """
    n = len(targets)
    if pairs is not None:
        clean = [tokens_of(model, p.clean, bos=True).tolist() for p in pairs]
        corrupted = [tokens_of(model, p.corrupted, bos=True).tolist() for p in pairs]
        tok = getattr(model, "tokenizer", None)
        bos_id = getattr(tok, "bos_token_id", None) if tok is not None else None
        bos = bos_id is not None and bool(clean) and len(clean[0]) > 0 and clean[0][0] == bos_id
        out = span_covariates(clean, corrupted, bos=bos)
    else:
        out = {k: np.full(n, np.nan) for k in ("subject_tokens", "tokens_after_subject", "prompt_tokens")}
    out["answer_prior"] = answer_prior(model, [int(t.target_ids[0]) for t in targets])
    out["intact_logp"] = np.asarray(intact_logp, float)
    out["intact_ld"] = np.asarray(intact_ld, float)
    return {k: out[k] for k in SALIENCY_COVARIATES}


def block_shares(
    gw_mean: Float[np.ndarray, "n_prompts n_layers 3"], block_numel: Float[np.ndarray, "n_layers 3"]
) -> Float[np.ndarray, "n_prompts n_layers 3"]:
    """Each block's share of a prompt's total ``Σ|g·w|`` over all blocks (combined sums to 1 over layers).

    ``gw_mean`` is the per-weight mean ``|g·w|`` of each group; times the group's size it is the sum.
    A prompt whose total is 0 (no gradient reaches any block) gets NaN.
    """
    sums = gw_mean * block_numel[None]
    total = sums[:, :, COMPONENTS.index("combined")].sum(axis=1)  # [n_prompts]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total[:, None, None] > 0, sums / total[:, None, None], np.nan)


# ============================================================================ technique contract
def _run_family(model: Any, family: Any, *, progress: bool = True, **params: Any) -> SaliencyResult:
    # The map's input: the family's answer prompts (clean prompts of its pair set with their clean
    # answers), so the scored token comes after the item.
    return saliency(model, family.pairs, progress=progress, **params)


TECHNIQUE = Technique(
    name="saliency",
    run_fn=_run_family,
    presets={
        # The map reads the block shares only: the embedding (262k × 640 for Gemma) and unembedding
        # gradients are skipped. Padded batches of 16 with per-prompt statistics from the batched
        # backward (sizes and times measured on Gemma 3 270M, see benchmarks/saliency_speed.py).
        # batch_size is left to saliency (DEFAULT_BATCH where the batched path applies, else 1).
        # full: up to 32 answer prompts per family (>= 30 where the pair set has them: the issue's
        # power floor), two batches of 16
        "full": {"max_prompts": 32, "n_boot": 1000, "include_embed": False, "include_unembed": False},
        # quick: a curve preview, one batch of 4 (too few items to mark: the map says so)
        "quick": {"max_prompts": 4, "n_boot": 300, "include_embed": False, "include_unembed": False},
    },
    needs=("pairs",),
    description="each block's share of |∂(−log p(answer))/∂w · w| on the family's answer prompts",
)

#: :func:`saliency` with ``preset="quick"|"full"``: the map's saliency cell, from the API
saliency = TECHNIQUE.with_presets(saliency)
