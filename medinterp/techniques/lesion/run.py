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

from medinterp.errors import MedinterpError
from medinterp.hooks import MeanActivation, compute_means, pad_token_id
from medinterp.prompt_inputs import subsample, units_of
from medinterp.results import make_provenance
from medinterp.store import Checkpoint, fingerprint
from medinterp.techniques.base import Technique
from medinterp.techniques.lesion.continuations import _continuations
from medinterp.techniques.lesion.engine import (
    MEAN_OVER,
    METHODS,
    METRICS,
    MODES,
    compute_block_means,
    intact_run,
    lesioned_metrics,
    make_batch,
)
from medinterp.techniques.lesion.inputs import items_from_inputs, reference_tokens
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
            (or block) output the ``*_mean`` modes substitute; default the lesioned prompts themselves.
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

    # ---- reference means for the *_mean modes
    means: dict[str, MeanActivation] | None = None
    mean_subs = sorted({m.split("_")[0] for m in modes if m.endswith("_mean") and m != "block_mean"})
    ref_desc = None
    ref_tokens = None
    if mean_subs or "block_mean" in modes:
        if reference is None:
            ref_tokens = [it.tokens for it in items]
            ref_desc = f"the {n_prompts} lesioned prompts (context + target tokens)"
        else:
            ref_tokens = reference_tokens(model, reference)
            ref_desc = f"{len(ref_tokens)} reference prompts"
        means = {}
        if mean_subs:
            means.update(compute_means(model, ref_tokens, layers=layers, sublayers=mean_subs, batch_size=batch_size))
        if "block_mean" in modes:
            means.update(compute_block_means(model, ref_tokens, layers, batch_size))

    # ---- per-prompt metrics, batched (sorted by length to limit padding)
    order = sorted(range(n_prompts), key=lambda i: -int(items[i].tokens.shape[0]))
    metrics = np.full((n_prompts, len(modes), len(layers), len(METRICS)), np.nan)
    intact_logp = np.zeros(n_prompts)
    intact_top1 = np.zeros(n_prompts, dtype=np.int64)
    pad = pad_token_id(model)
    t_intact = t_lesion = 0.0
    ckpt = Checkpoint(
        checkpoint_dir,
        fingerprint("lesion", items, {"modes": modes, "layers": layers, "mean_over": mean_over, "method": method,
                                      "batch_size": batch_size, "reference": ref_desc},
                    None if reference is None else ref_tokens, model=model),
        name="lesion",
    )
    n_resumed = 0
    n_batches = (n_prompts + batch_size - 1) // batch_size
    bar = tqdm(total=n_batches * len(modes) * len(layers), desc="lesion", disable=not progress)
    for s in range(0, n_prompts, batch_size):
        idx = order[s : s + batch_size]
        key = f"{s:06d}"
        unit = ckpt.load(key)
        if unit is not None:
            metrics[idx], intact_logp[idx], intact_top1[idx] = unit["metrics"], unit["intact_logp"], unit["intact_top1"]
            n_resumed += len(idx)
            bar.update(len(modes) * len(layers))
            continue
        batch = make_batch([items[i] for i in idx], idx, pad, dev)
        t0 = time.perf_counter()
        intact, cache = intact_run(model, batch, layers, method)
        t_intact += time.perf_counter() - t0
        intact_logp[idx] = intact[1].cpu().numpy()
        intact_top1[idx] = intact[0].argmax(-1).cpu().numpy()
        t0 = time.perf_counter()
        metrics[idx] = lesioned_metrics(model, batch, intact, modes, layers, cache=cache, means=means,
                                        mean_over=mean_over, method=method, on_step=lambda: bar.update(1))
        t_lesion += time.perf_counter() - t0
        del cache
        ckpt.save(key, metrics=metrics[idx], intact_logp=intact_logp[idx], intact_top1=intact_top1[idx])
    bar.close()

    # ---- greedy continuations on a subset
    cont = _continuations(
        model, items, layers, cmodes, n_continuations, max_new_tokens, means, mean_over, judge, progress
    )
    n_tokens = np.array([len(it.predict_positions) for it in items])
    params = dict(
        concept_set=set_name, n_prompts=n_prompts, modes=modes, layers=layers, mean_over=mean_over,
        reference=ref_desc, max_prompts=max_prompts, batch_size=batch_size, n_continuations=n_continuations,
        max_new_tokens=max_new_tokens, continuation_modes=cmodes, method=method, n_boot=n_boot, ci=ci, seed=seed,
        judge=None if judge is None else getattr(judge, "__name__", type(judge).__name__),
    )
    timings = {
        "total_s": time.perf_counter() - t_start,
        "intact_s": t_intact,
        "lesions_s": t_lesion,
        "per_lesion_per_prompt_ms": 1000 * t_lesion / max(1, (n_prompts - n_resumed) * len(modes) * len(layers)),
        "continuations_s": cont.pop("seconds"),
    }
    if n_resumed:
        timings["prompts_resumed"] = n_resumed
    table = lesion_table(metrics, modes, layers, units=units_of(labels, n_prompts)[0], cont_metrics=cont["cont_metrics"], cont_modes=cont["cont_modes"],
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
        **cont,
    )


# ============================================================================ technique contract
def _run_family(model: Any, family: Any, *, progress: bool = True, **params: Any) -> LesionResult:
    # The map's input: the family's answer prompts (clean prompts of its pair set with their clean
    # answers), so log p(answer) is read after the item.
    return lesion(model, family.pairs, progress=progress, **params)


TECHNIQUE = Technique(
    name="lesion",
    run_fn=_run_family,
    presets={
        # Block removal (skip: the map's curve and unit scores); the full map also mean-ablates each block's
        # output ("block_mean", shown beside skip in the report): with all lesions of a batch unembedded
        # together it fits the budget (Gemma 3 270M, quiet: skip alone 80 s of the 9-min full map).
        # The quick map skips only, on 5 prompts (a curve preview: too few items to mark). Greedy continuations are left to `medinterp lesion`.
        "full": {"modes": ["skip", "block_mean"], "max_prompts": 12, "n_continuations": 0, "n_boot": 1000,
                 "batch_size": 12},
        "quick": {"modes": ["skip"], "max_prompts": 5, "n_continuations": 0, "n_boot": 300, "batch_size": 5},
    },
    needs=("pairs",),
    description="drop in log p(answer) when one block is removed, on the family's answer prompts",
)
