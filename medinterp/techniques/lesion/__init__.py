"""Layer lesioning (METHOD.md §3): remove or ablate one block at a time and measure the damage.

Lesion modes (see :mod:`medinterp.hooks`):

* ``skip``       block ``l`` becomes the identity: ``resid_post = resid_pre`` (the paper's lesion);
* ``attn_zero``  / ``mlp_zero``: the block's attention / MLP output (what it adds to the residual
  stream, after Gemma's post-norms) is set to zero;
* ``attn_mean``  / ``mlp_mean``: that output is replaced by its mean over a reference set of prompts
  (default: **cross-fitted**, never the prompt's own activations: the prompts are split by item into two
  seeded halves and each half is ablated with the mean of the other, :func:`crossfit_folds`; the split is
  saved in ``params["crossfit_fold"]``). ``mean_over="position"`` (default) uses the mean at the
  same absolute position (position 0 is the BOS token, so the BOS row is left as it is; positions
  longer than every reference prompt get the mean over all non-BOS positions); ``"overall"`` one
  vector, the mean over every non-BOS position; ``"last"`` one vector, the mean at the reference
  prompts' last tokens.
* ``block_mean``: the block's whole output (``resid_post - resid_pre``, what it adds to the residual
  stream) is replaced by its mean over the reference set (``mean_over`` as above): mean-ablation
  beside skip.

Metrics, per prompt × mode × layer, against the intact model (no judge needed):

* ``ld_frac``     the fraction of the clean logit difference lost, ``(LD_intact − LD_lesioned) / LD_intact``,
  LD = logit(answer's first token) − logit(foil's first token) at the read position, the foil being the
  pair's corrupted answer (pair sets only; NaN elsewhere). Scored **only on the prompts the model knows**
  (patching's rule: ``LD_clean > 0 > LD_corrupted`` and a margin ≥ 1 logit, LD_corrupted read on the pair's
  corrupted prompt by the intact model); the others are NaN. **The map's curve** (``layer_curve()``,
  ``unit_scores()``), with ``skip``, on the family's answer prompts; ``unavailable()`` says "not known by
  the model" when no prompt is known (a random-init twin), and ``only_known=True`` (the map's presets)
  then runs no lesion at all;
* ``ld_drop``     LD_intact − LD_lesioned (logits), every lesioned pair-set prompt;
* ``logp_drop``   log p_intact(target) − log p_lesioned(target), summed over the target's tokens
  (teacher-forced, nats; positive = the lesion made the target less likely): the curve for inputs without
  a foil (concept sets, strings), a saved column for pair sets;
* ``acc_drop``    intact − lesioned correctness (top-1 at the read position == the answer's first token);
* ``kl``          KL(intact ‖ lesioned) of the next-token distribution at the *read position* (nats):
  generic "block criticality", shown once per model (:func:`block_criticality`), not per family;
* ``top1_agree``  1 if the arg-max next token at the read position is unchanged, else 0.

For a subset of prompts (``n_continuations``, default 8, evenly spread over the set) and the modes in
``continuation_modes`` (default ``skip``), a greedy continuation of ``max_new_tokens`` (default 20)
tokens is generated from the read position (batched, left-padded, with TransformerLens's KV cache)
and compared with the intact one: ``first_diff`` (index of the first differing token; equal to
``max_new_tokens`` when identical), ``overlap`` (fraction of positions with the same token) and
``bag_overlap`` (multiset overlap of the two token lists / length, insensitive to shifts). An optional
``judge(prompt, intact_text, lesioned_text) -> 1..10`` (1 = unchanged, 10 = gibberish, the paper's
rubric) scores each continuation.

Targets and the read position (always *after* the item, METHOD.md §0):

* a pair set (the map's input): each distinct clean prompt with its clean answer;
* a prompt with an ``answer``: the context is the prompt, the target the answer (a space is put in
  front when neither side has one); next-token metrics read at the last prompt token, i.e. the
  distribution that predicts the answer's first token;
* a ``ConceptPrompt`` without an answer: the context is the text up to and including the item and the
  target the word after it; read at the item's last token. A prompt that ends on its item has nothing
  after it and is left out (``NothingAfterItemWarning``);
* a plain string: next-token metrics read at its last token and the target is the string's own tokens
  after the first (its LM log-likelihood).

Covariates per prompt (:mod:`medinterp.covariates`, ``result.covariates`` / ``covariate_names``, passed in
``unit_scores()``): for a pair set ``subject_tokens``, ``tokens_after_subject``, ``prompt_tokens`` (where the
clean and corrupted prompts differ), ``answer_prior`` (log p(answer's first token | BOS)), ``intact_logp``
(log p(answer's first token | prompt)) and ``intact_ld``; other inputs ``prompt_tokens``, ``answer_prior``,
``intact_logp``.

Each prompt is a :class:`medinterp.readout.Target` (shared with saliency; ``read_pos`` is the read
position). Runs checkpoint per batch and resume (``checkpoint_dir=``, see :mod:`.run`).

Layout: ``inputs`` (prompts → targets), ``engine`` (batches, intact and lesioned runs, metrics),
``continuations``, ``result`` (:class:`LesionResult`, :func:`lesion_table`), ``run`` (:func:`lesion`,
``TECHNIQUE``), ``criticality`` (:func:`block_criticality`). Figures: :mod:`medinterp.viz.lesion`.

Speed (``method="prefix"``, the default): prompts are batched with right padding (every real token
keeps its position and never sees padding, so batching changes nothing at real positions), the intact
model runs once with ``run_with_cache`` keeping only ``blocks.{l}.hook_resid_pre``, and a lesion at
block ``l`` restarts from that cached residual with ``model(resid, start_at_layer=l)`` (``l + 1`` for
``skip``: skipping block ``l`` *is* starting block ``l + 1`` from ``resid_pre[l]``), stopping before
``ln_final``; the final norm and the unembedding are applied only at the read and target positions
(Gemma's unembedding is 640 × 262144). ``method="full"`` runs the whole model with the lesion hooks (no
prefix reuse), read through the same readout, for checking and benchmarking (``benchmarks/lesion_speed.py``).
A bf16 model runs in bf16 and is read in float32 (:func:`medinterp.readout.final_logits`); the
mean-ablation references are float32 means (:func:`medinterp.hooks.compute_means`).

``start_at_layer`` and rotary / sliding-window models (Gemma 3): TransformerLens skips
``input_to_embed`` when ``start_at_layer`` is given, so no attention mask is derived from tokens; the
rotary position of each token then comes from the ``attention_mask`` argument (``cumsum - 1``) if one
is passed, else from its index. With *left* padding a missing mask shifts every rotary position and
lets real tokens attend to padding, so the restarted run silently differs from the full one. We
therefore right-pad (index = true position, padding only after real tokens) and pass the same explicit
mask to the intact, restarted and full runs. Gemma's sliding window (512) is computed from raw
indices, which equal true positions under right padding. Greedy continuations need left padding (one
new token per row per step); there the mask is passed on every step and TransformerLens's KV cache
keeps it, and mean-ablation hooks get explicit position ids.

Example:
    >>> from medinterp.testing import tiny_model
    >>> res = lesion(tiny_model(n_layers=3), [("The patient takes", " aspirin"), ("Chest pain suggests", " angina")],
    ...              modes=["skip", "mlp_zero"], n_continuations=1, max_new_tokens=4, n_boot=50, progress=False)
    >>> res.layer_curve().shape
    (3,)
    >>> res.metrics.shape   # prompts × modes × layers × (kl, logp_drop, top1_agree, acc_drop, ld_drop, ld_frac)
    (2, 2, 3, 6)
"""

import dataclasses


from medinterp.readout import Target
from medinterp.techniques.lesion.continuations import CONT_METRICS, continuation_metrics, greedy_continuations
from medinterp.techniques.lesion.engine import (
    MEAN_OVER,
    METHODS,
    METRICS,
    MODES,
    block_mean_hooks,
    compute_block_means,
    mode_hooks,
    compare,
    intact_run,
    lesioned_resid,
    lesioned_run,
    make_batch,
    readout_logits,
    readout_resid,
)
from medinterp.techniques.lesion.inputs import LesionItem, items_from_inputs
from medinterp.techniques.lesion.result import METRIC_TITLES, LesionResult, lesion_table
from medinterp.techniques.lesion.run import TECHNIQUE as _RUN_TECHNIQUE, crossfit_folds, lesion
from medinterp.techniques.lesion.criticality import BlockCriticality, block_criticality, criticality_extras

# the registry entry: the run's technique plus the block-criticality strip it feeds the map
TECHNIQUE = dataclasses.replace(_RUN_TECHNIQUE, extras=criticality_extras)

__all__ = [
    "BlockCriticality", "MODES", "block_criticality", "block_mean_hooks", "compute_block_means", "mode_hooks",
    "CONT_METRICS", "crossfit_folds", "LesionItem", "LesionResult", "MEAN_OVER", "METHODS", "METRICS", "METRIC_TITLES", "TECHNIQUE",
    "Target", "compare", "continuation_metrics", "greedy_continuations", "intact_run", "items_from_inputs", "lesion",
    "lesion_table", "lesioned_resid", "lesioned_run", "make_batch", "readout_logits", "readout_resid",
]
