"""The lesion run: targets → batched intact and lesioned runs → metrics → the result.

Long runs checkpoint: with ``checkpoint_dir`` each batch of prompts (its metrics, intact log-probs
and top-1 tokens) is saved as one unit of a :class:`medinterp.store.Checkpoint` tied to a
:func:`medinterp.store.fingerprint` of the targets, the lesion parameters and the model; a rerun
loads the finished batches and computes only the rest (other inputs: everything is recomputed).
Greedy continuations (off in the map presets) are not checkpointed.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from jaxtyping import Int

from medinterp.covariates import answer_prior, span_covariates, to_matrix
from medinterp.errors import MedinterpError
from medinterp.hooks import MeanActivation, compute_means, pad_token_id, right_pad
from medinterp.prompt_inputs import subsample, units_of
from medinterp.readout import Target, final_logits
from medinterp.results import make_provenance
from medinterp.store import Checkpoint, fingerprint
from medinterp.techniques.base import Technique
from medinterp.techniques.lesion.continuations import _continuations
from medinterp.techniques.lesion.engine import (
    MEAN_OVER,
    METHODS,
    METRICS,
    MODES,
    answer_ld,
    answer_logp,
    compute_block_means,
    intact_run,
    lesioned_metrics,
    make_batch,
)
from medinterp.techniques.lesion.inputs import items_from_inputs, pair_contexts, pair_set_of, reference_tokens
from medinterp.techniques.patching.tracing import known_mask
from medinterp.techniques.lesion.result import LesionResult, lesion_table


def lesion(
    model: Any,
    concepts_or_prompts: Any,
    *,
    modes: Sequence[str] = MODES,
    layers: Sequence[int] | None = None,
    reference: Any = None,
    mean_over: str = "position",
    max_prompts: int | None = None,
    batch_size: int = 16,
    n_continuations: int = 8,
    max_new_tokens: int = 20,
    continuation_modes: Sequence[str] = ("skip",),
    judge: Callable[[str, str, str], float] | None = None,
    method: str = "prefix",
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    only_known: bool = False,
    min_margin: float = 1.0,
    min_known: int = 1,
) -> "LesionResult":
    """Lesion each block (and sub-layer) of ``model`` in turn; judge-free damage metrics per layer.

    Args:
        model: a HookedTransformer (left unchanged: hooks are removed after every call).
        concepts_or_prompts: a pair-set or concept-set name, a ``PairSet`` (its clean prompts with their
            clean answers: the map's input), a ``ConceptSet``, ``{name: set}`` for several concepts
            (per-concept curves), or a list of ``ConceptPrompt``, ``(prompt, answer)`` pairs or strings.
            A concept prompt without an answer scores the word after its item; one that ends on its item
            is left out with a ``NothingAfterItemWarning``.
        modes: lesions to run, from ``skip, attn_zero, attn_mean, mlp_zero, mlp_mean, block_mean``
            (``block_mean``: the block's whole output ``resid_post - resid_pre`` replaced by its mean).
        layers: blocks to lesion (default all).
        reference: prompts (strings / anything ``concepts_or_prompts`` accepts) whose mean sub-layer
            (or block) output the ``*_mean`` modes substitute. Default (None): **cross-fitted** means, never
            the lesioned prompt's own activations: the prompts are split by item into two halves
            (:func:`crossfit_folds`, seeded by ``seed``) and each half is ablated with the mean of the other.
        mean_over: ``"position"`` (default: the mean at the same absolute position over the reference
            prompts; BOS is position 0 in all, so its row is its own), ``"overall"`` or ``"last"``.
        max_prompts: use at most this many prompts (a seeded random subset, kept in order).
        batch_size: prompts per forward pass.
        n_continuations: prompts (evenly spread) that get greedy continuations; 0 turns them off.
        max_new_tokens: length of every continuation.
        continuation_modes: the modes whose lesions are also scored by continuation.
        judge: optional ``judge(prompt, intact_text, lesioned_text) -> score in [1, 10]``.
        method: ``"prefix"`` (restart from the cached residual, default) or ``"full"``.
        n_boot, ci, seed: bootstrap of the aggregated table (and the seed of the prompt subset).
        progress: tqdm bars.
        checkpoint_dir: save each finished batch of prompts there and resume from it (None: no checkpoint).
        only_known: pair sets only: lesion only the prompts the model knows (the others keep their intact
            values and covariates, with NaN metrics); a model that knows none (a random-init twin) then
            costs one intact pass. The map's presets set it.
        min_margin: pair sets: a prompt is known when ``LD_clean > 0 > LD_corrupted`` and
            ``LD_clean - LD_corrupted >= min_margin`` logits (patching's rule,
            :func:`medinterp.techniques.patching.tracing.known_mask`), LD = logit(clean answer's first
            token) - logit(foil's first token) at the read position, the foil the pair's corrupted answer,
            LD_corrupted read on the pair's corrupted prompt (intact model).
        min_known: fewer known prompts than this: :meth:`LesionResult.unavailable` says "not known by the model".

    Returns:
        A :class:`LesionResult`.

    Example:
        >>> import medinterp as mi                                       # doctest: +SKIP
        >>> res = mi.lesion(mi.load_model(), "drugs", modes=["skip"])    # doctest: +SKIP
        >>> res.top_layers(3)                                            # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    modes = list(modes)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise MedinterpError(f"lesion: modes {bad or modes}; expected a non-empty subset of {list(MODES)}")
    cmodes = [m for m in continuation_modes if m in modes] if n_continuations > 0 else []
    bad = [m for m in continuation_modes if m not in MODES]
    if bad:
        raise MedinterpError(f"lesion: continuation_modes {bad}; expected a subset of {list(MODES)}")
    if method not in METHODS:
        raise MedinterpError(f"lesion: method={method!r}; expected one of {list(METHODS)}")
    if mean_over not in MEAN_OVER:
        raise MedinterpError(f"lesion: mean_over={mean_over!r}; expected one of {list(MEAN_OVER)}")
    if not min_margin >= 0 or int(min_known) < 1:
        raise MedinterpError(f"lesion: min_margin={min_margin!r}, min_known={min_known!r}; expected min_margin >= 0 "
                             "and min_known >= 1")
    if batch_size < 1 or max_new_tokens < 1 or n_continuations < 0 or n_boot < 1:
        raise MedinterpError(
            f"lesion: batch_size={batch_size}, max_new_tokens={max_new_tokens}, n_continuations={n_continuations}, "
            f"n_boot={n_boot}; expected positive numbers (n_continuations may be 0)"
        )
    if judge is not None and not callable(judge):
        raise MedinterpError(f"lesion: judge must be callable(prompt, intact_text, lesioned_text), got {type(judge).__name__}")
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad or not layers:
        raise MedinterpError(f"lesion: layers {bad or layers}; the model has blocks 0..{n_layers - 1}")

    items, labels, set_name = items_from_inputs(model, concepts_or_prompts)
    items, labels = subsample(items, labels, max_prompts=max_prompts, seed=seed, technique="lesion")
    n_prompts = len(items)
    dev = model.cfg.device
    pad = pad_token_id(model)
    units = units_of(labels, n_prompts)[0]

    # ---- pair sets: the foil, the intact logit differences, the known prompts, the token covariates
    pairs = pair_set_of(concepts_or_prompts)
    if pairs is not None and "pair" not in labels:
        pairs = None  # defensive: answer prompts always carry their pair index
    foils = None
    known = clean_ld = corrupted_ld = None
    intact_logp = np.zeros(n_prompts)
    intact_top1 = np.zeros(n_prompts, dtype=np.int64)
    answer_lp = np.full(n_prompts, np.nan)
    covariates: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    if pairs is not None:
        ctx = pair_contexts(model, pairs, items, labels["pair"])
        foils = ctx["foil"]
        clean_ld, answer_lp, intact_logp, intact_top1 = intact_pass(model, items, foils, pad, dev, batch_size)
        corrupted_ld = last_token_ld(model, ctx["corrupted"], ctx["answer"], foils, pad, dev, batch_size)
        known, _ = known_mask(clean_ld, corrupted_ld, min_margin=min_margin, require_sign=True)
        covariates.update(span_covariates([t.tolist() for t in ctx["clean"]], [t.tolist() for t in ctx["corrupted"]],
                                          bos=_has_bos(model, items)))
        covariates["answer_prior"] = answer_prior(model, ctx["answer"])
        covariates["intact_logp"] = answer_lp
        covariates["intact_ld"] = clean_ld
    t_known = time.perf_counter() - t0
    todo = [i for i in range(n_prompts) if known is None or not only_known or known[i]]

    # ---- reference means for the *_mean modes: a given reference, else cross-fitted halves
    mean_subs = sorted({m.split("_")[0] for m in modes if m.endswith("_mean") and m != "block_mean"})
    needs_means = bool(mean_subs) or "block_mean" in modes
    ref_desc = None
    ref_tokens = None
    fold = np.zeros(n_prompts, dtype=np.int64)
    means_by_fold: list[dict[str, MeanActivation] | None] = [None]
    if needs_means and todo:
        def _means(tokens: list) -> dict[str, MeanActivation]:
            out: dict[str, MeanActivation] = {}
            if mean_subs:
                out.update(compute_means(model, tokens, layers=layers, sublayers=mean_subs, batch_size=batch_size))
            if "block_mean" in modes:
                out.update(compute_block_means(model, tokens, layers, batch_size))
            return out

        if reference is None:
            fold = crossfit_folds(units, seed)
            sizes = [int((fold == f).sum()) for f in (0, 1)]
            means_by_fold = [_means([items[i].tokens for i in np.flatnonzero(fold == 1 - f)]) for f in (0, 1)]
            ref_desc = (f"cross-fitted: the {n_prompts} prompts (context + target tokens) split by item into two halves "
                        f"({sizes[0]} and {sizes[1]} prompts; seed {seed}), each half ablated with the mean of the other")
        else:
            ref_tokens = reference_tokens(model, reference)
            ref_desc = f"{len(ref_tokens)} reference prompts"
            means_by_fold = [_means(ref_tokens)]
    elif needs_means:
        ref_desc = "none needed: no prompt lesioned"

    # ---- per-prompt metrics, batched within a fold (sorted by length to limit padding)
    batches: list[list[int]] = []
    for f in sorted(set(fold[todo].tolist())) if todo else []:
        members = sorted((i for i in todo if fold[i] == f), key=lambda i: -int(items[i].tokens.shape[0]))
        batches += [members[s : s + batch_size] for s in range(0, len(members), batch_size)]
    metrics = np.full((n_prompts, len(modes), len(layers), len(METRICS)), np.nan)
    t_intact = t_lesion = 0.0
    ckpt = Checkpoint(
        checkpoint_dir,
        fingerprint("lesion", items, {"modes": modes, "layers": layers, "mean_over": mean_over, "method": method,
                                      "batch_size": batch_size, "reference": ref_desc, "only_known": only_known,
                                      "min_margin": min_margin, "todo": todo, "fold": fold.tolist(), "foils": foils},
                    None if reference is None else ref_tokens, model=model),
        name="lesion",
    )
    n_resumed = 0
    bar = tqdm(total=len(batches) * len(modes) * len(layers), desc="lesion", disable=not progress)
    for b, idx in enumerate(batches):
        key = f"{b:06d}"
        unit = ckpt.load(key)
        if unit is not None:
            metrics[idx], intact_logp[idx], intact_top1[idx] = unit["metrics"], unit["intact_logp"], unit["intact_top1"]
            n_resumed += len(idx)
            bar.update(len(modes) * len(layers))
            continue
        batch = make_batch([items[i] for i in idx], idx, pad, dev, None if foils is None else [foils[i] for i in idx])
        t0 = time.perf_counter()
        intact, cache = intact_run(model, batch, layers, method)
        t_intact += time.perf_counter() - t0
        if pairs is None:  # pair sets: the intact values of every prompt come from the known-prompt pass
            intact_logp[idx] = intact[1].cpu().numpy()
            intact_top1[idx] = intact[0].argmax(-1).cpu().numpy()
            answer_lp[idx] = answer_logp(intact[0], batch).cpu().numpy()
        t0 = time.perf_counter()
        metrics[idx] = lesioned_metrics(model, batch, intact, modes, layers, cache=cache,
                                        means=means_by_fold[int(fold[idx[0]])] if needs_means else None,
                                        mean_over=mean_over, method=method, on_step=lambda: bar.update(1))
        t_lesion += time.perf_counter() - t0
        del cache
        ckpt.save(key, metrics=metrics[idx], intact_logp=intact_logp[idx], intact_top1=intact_top1[idx])
    bar.close()
    k_frac = METRICS.index("ld_frac")
    if known is not None:
        metrics[~known, :, :, k_frac] = np.nan  # the fraction lost is scored only where the model knows the pair
    if pairs is None:
        covariates["prompt_tokens"] = np.array([it.n_context - (1 if _has_bos(model, items) else 0) for it in items], float)
        first = [int(it.tokens[it.read_pos + 1]) if it.n_context <= it.read_pos + 1 < it.tokens.shape[0] else -1
                 for it in items]  # the answer's first token right after the read position (plain strings: none)
        prior = answer_prior(model, [max(t, 0) for t in first])
        covariates["answer_prior"] = np.where(np.array(first) >= 0, prior, np.nan)
        covariates["intact_logp"] = answer_lp

    # ---- greedy continuations on a subset of the lesioned prompts
    cont = _continuations(
        model, [items[i] for i in todo], layers, cmodes, n_continuations, max_new_tokens,
        [means_by_fold[int(fold[i])] for i in todo] if needs_means else None, mean_over, judge, progress
    )
    cont["cont_index"] = [todo[k] for k in cont["cont_index"]]
    n_tokens = np.array([len(it.predict_positions) for it in items])
    cov_matrix, cov_names = to_matrix(covariates)
    n_known = None if known is None else int(known.sum())
    params = dict(
        concept_set=set_name, n_prompts=n_prompts, modes=modes, layers=layers, mean_over=mean_over,
        reference=ref_desc, max_prompts=max_prompts, batch_size=batch_size, n_continuations=n_continuations,
        max_new_tokens=max_new_tokens, continuation_modes=cmodes, method=method, n_boot=n_boot, ci=ci, seed=seed,
        judge=None if judge is None else getattr(judge, "__name__", type(judge).__name__),
        only_known=only_known, min_margin=min_margin, min_known=min_known, n_known=n_known, n_lesioned=len(todo),
        known_rule=None if known is None else f"LD_clean > 0 > LD_corrupted and LD_clean - LD_corrupted >= {min_margin} "
                                              "logit (LD = logit(clean answer) - logit(foil), first tokens, intact model)",
    )
    if needs_means and reference is None and todo:
        params["crossfit_fold"] = fold.tolist()
    timings = {
        "total_s": time.perf_counter() - t_start,
        "known_s": t_known,
        "intact_s": t_intact,
        "lesions_s": t_lesion,
        "per_lesion_per_prompt_ms": 1000 * t_lesion / max(1, (len(todo) - n_resumed) * len(modes) * len(layers)),
        "continuations_s": cont.pop("seconds"),
    }
    if n_resumed:
        timings["prompts_resumed"] = n_resumed
    table = lesion_table(metrics, modes, layers, units=units, cont_metrics=cont["cont_metrics"], cont_modes=cont["cont_modes"],
                         cont_index=cont["cont_index"], judge_scores=cont["judge_scores"], n_boot=n_boot, ci=ci, seed=seed)
    return LesionResult(
        metrics=metrics,
        intact_logp=intact_logp,
        intact_top1=intact_top1,
        n_target_tokens=n_tokens,
        table=table,
        prompts=[it.text for it in items],
        targets=[it.target for it in items],
        labels=labels,
        concept_set=set_name,
        modes=modes,
        layers=layers,
        n_layers=n_layers,
        mean_over=mean_over,
        method=method,
        max_new_tokens=max_new_tokens,
        params=params,
        timings=timings,
        provenance=make_provenance(model, **params),
        n_boot=n_boot,
        ci=ci,
        seed=seed,
        known=known,
        clean_ld=clean_ld,
        corrupted_ld=corrupted_ld,
        min_margin=float(min_margin),
        min_known=int(min_known),
        covariates=cov_matrix,
        covariate_names=cov_names,
        **cont,
    )


def crossfit_folds(units: Sequence[Any], seed: int) -> Int[np.ndarray, "n"]:
    """Two halves of the prompts, split by unit (item): the cross-fitting of mean ablation.

    The distinct units, in order of first appearance, are permuted by ``numpy.random.default_rng(seed)``
    and dealt alternately to halves 0 and 1 (sizes differ by at most one unit); every prompt goes with
    its unit, so neither a prompt nor another prompt of its item enters its own reference mean.

    Raises:
        MedinterpError: fewer than 2 units (nothing to cross-fit against; pass ``reference=``).

    Example:
        >>> crossfit_folds(["a", "b", "a", "c"], 0).tolist()
        [1, 0, 1, 0]
    """
    keys = [str(u) for u in units]
    distinct = list(dict.fromkeys(keys))
    if len(distinct) < 2:
        raise MedinterpError(f"lesion: mean ablation cross-fits its reference over items, but there are {len(distinct)} "
                             "item(s); give at least 2 or pass reference= (prompts whose mean replaces the output)")
    perm = np.random.default_rng(seed).permutation(len(distinct))
    half = {distinct[u]: j % 2 for j, u in enumerate(perm)}
    return np.array([half[k] for k in keys], dtype=np.int64)


def _has_bos(model: Any, items: Sequence[Target]) -> bool:
    """Whether the targets' position 0 is the model's BOS token."""
    tok = getattr(model, "tokenizer", None)
    bos = getattr(tok, "bos_token_id", None) if tok is not None else None
    return bos is not None and bool(items) and all(int(it.tokens[0]) == int(bos) for it in items)


@torch.no_grad()
def intact_pass(model: Any, items: Sequence[Target], foils: Sequence[int], pad: int, dev: Any,
                batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The intact model on every answer prompt: ``(LD_clean, log p(answer's first token), log p(target),
    top-1 at the read position)``, right-padded batches, unembedded at the read positions only."""
    n = len(items)
    ld, lp1, lp, top = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
    for s in range(0, n, batch_size):
        idx = list(range(s, min(n, s + batch_size)))
        batch = make_batch([items[i] for i in idx], idx, pad, dev, [foils[i] for i in idx])
        (read, tgt, _), _ = intact_run(model, batch, [], "prefix")
        ld[idx] = answer_ld(read, batch).cpu().numpy()
        lp1[idx] = answer_logp(read, batch).cpu().numpy()
        lp[idx] = tgt.cpu().numpy()
        top[idx] = read.argmax(-1).cpu().numpy()
    return ld, lp1, lp, top


@torch.no_grad()
def last_token_ld(model: Any, prompts: Sequence[torch.Tensor], good: Sequence[int], bad: Sequence[int], pad: int,
                  dev: Any, batch_size: int) -> np.ndarray:
    """``logit(good) - logit(bad)`` at the last token of each prompt (the intact model; LD_corrupted)."""
    n = len(prompts)
    out = np.zeros(n)
    n_layers = int(model.cfg.n_layers)
    for s in range(0, n, batch_size):
        toks, mask, lengths = right_pad(list(prompts[s : s + batch_size]), pad_id=pad)
        resid = model(toks.to(dev), attention_mask=mask.to(dev), stop_at_layer=n_layers)
        last = resid[torch.arange(len(lengths), device=resid.device), (lengths - 1).to(resid.device)]
        logits = final_logits(model, last).double()
        g = torch.tensor(list(good[s : s + batch_size]), device=logits.device)[:, None]
        b = torch.tensor(list(bad[s : s + batch_size]), device=logits.device)[:, None]
        out[s : s + len(lengths)] = (logits.gather(1, g) - logits.gather(1, b))[:, 0].cpu().numpy()
    return out


# ============================================================================ technique contract
def _run_family(model: Any, family: Any, *, progress: bool = True, **params: Any) -> LesionResult:
    # The map's input: the family's answer prompts (clean prompts of its pair set with their clean
    # answers), so log p(answer) is read after the item.
    return lesion(model, family.pairs, progress=progress, **params)


TECHNIQUE = Technique(
    name="lesion",
    run_fn=_run_family,
    presets={
        # Block removal (skip: the map's curve and unit scores), scored as the fraction of the clean logit
        # difference lost on the prompts the model knows (only_known: the others, and a model that knows
        # none, e.g. the random twin, cost only the intact clean + corrupted pass). The full map lesions every
        # distinct clean prompt of the pair set (max_prompts None): measured on Gemma 3 270M (1 thread, CPU
        # time; benchmarks/lesion_speed.py --pair-sets) the 12 medical + control pair sets have 304 prompts,
        # 158 known, and cost 173 CPU-s (~0.6 s per known prompt, ~0.2 s per prompt for the known pass),
        # est. ~110 s wall on 2 quiet cores (not measured: the machine was shared). block_mean (cross-fitted)
        # adds 0.4-1.0 CPU-s per known prompt (lesions of diagnosis_pairs / its control: 22.7 / 11.0 CPU-s
        # skip alone, 51.3 / 19.8 with block_mean, the two half means included), est. +40-95 s on 2 cores:
        # over the ~120 s budget, so the map runs skip only; `medinterp lesion` still offers it.
        # The quick map: 5 prompts (a curve preview: too few items to mark). Greedy continuations are left
        # to `medinterp lesion`.
        "full": {"modes": ["skip"], "max_prompts": None, "only_known": True, "n_continuations": 0, "n_boot": 1000,
                 "batch_size": 16},
        "quick": {"modes": ["skip"], "max_prompts": 5, "only_known": True, "n_continuations": 0, "n_boot": 300,
                  "batch_size": 5},
    },
    needs=("pairs",),
    description=("fraction of the clean logit difference (answer - foil) lost when one block is removed, on the "
                 "answer prompts the model knows"),
)

#: :func:`lesion` with ``preset="quick"|"full"``: the map's lesion cell, from the API
lesion = TECHNIQUE.with_presets(lesion)
