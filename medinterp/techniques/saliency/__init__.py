"""Weight-gradient saliency per layer (METHOD.md §2).

For every prompt with a target (its answer, or the word after the item: always a token *after* the
item, never the item's own name after a generic prefix), the loss is
``L = -log p(target | prompt)`` (summed over the target's tokens, teacher-forced, one forward). One
backward pass gives ``∂L/∂w`` for every weight; per block we report, over the block's attention weights,
over its MLP weights and over both ("combined"):

* ``grad``            mean |∂L/∂w|                 (the paper's statistic)
* ``grad_x_weight``   mean |∂L/∂w · w|             (first-order effect of removing each weight)
* ``grad_norm_ratio`` ‖∂L/∂w‖₂ / ‖w‖₂              (scale-free; norms over all weights of the group)

The map's curve (``layer_curve()``, ``unit_scores()``) is each block's **share** of the prompt's total
``Σ|∂L/∂w · w|`` over all blocks: ``|g·w|`` is invariant to rescaling a weight, which matters on Gemma 3
(post-norms and QK-norm make most block weights scale-invariant, so mean ``|g|`` ranks layers by
``1/‖W‖``), and a share compares across a family, its control family and the random-init twin. The
map runs it on the family's answer prompts (the clean prompts of its pair set with their clean answers).

Means are element-weighted: the sum over every weight of the group divided by their number. The
embedding (``embed.W_E``, ``pos_embed.W_pos``) and unembedding (``unembed.W_U``) are reported separately.

Memory: statistics are accumulated *while* the gradients arrive and each gradient is freed inside
its hook, so the peak is one forward + backward (see :mod:`.engine`). Logits are read through
:func:`medinterp.readout.final_logits` only at the positions that predict target tokens.

Targets are :class:`medinterp.readout.Target` (shared with lesioning). Runs checkpoint per chunk of
prompts and resume (``checkpoint_dir=``, see :mod:`.run`).

Layout: ``engine`` (parameter groups, accumulator, gradient hooks, loss), ``result``
(:class:`SaliencyResult`, :func:`aggregate_table`), ``run`` (:func:`saliency`, ``TECHNIQUE``).
Figures: :mod:`medinterp.viz.saliency`.

Exactness vs batching: ``|∂(ΣᵢLᵢ)/∂w|`` is not the mean of ``|∂Lᵢ/∂w|`` (signs cancel across prompts),
so the summed gradient of a batch cannot be read. :func:`saliency` runs padded batches anyway
(``batch_size``, default 16) and forms each prompt's own gradient of every block weight matrix ``W``
(used as ``y = x W``) during the backward, ``G_b = Σ_t x[b,t]ᵀ δ[b,t]``, from the forward input and the
output gradient, reduced at once to the prompt's sums (:mod:`.batched`); the numbers equal the
one-backward-per-prompt path (``batch_size=1``, kept) to float rounding (tested to 1e-5 relative on
ragged batches). Biases and norm weights (``params="all"``) and non-TransformerLens backends run one
prompt at a time.

Covariates (METHOD §0b): each result stores per prompt ``subject_tokens``, ``tokens_after_subject``,
``prompt_tokens`` (clean vs corrupted prompt of the pair; NaN without a pair set), ``answer_prior``,
``intact_logp`` and ``intact_ld`` (answer vs the pair's corrupted answer at the read position), passed
to the map by ``unit_scores()``.

Example:
    >>> from medinterp.testing import tiny_model                      # doctest: +SKIP
    >>> res = saliency(tiny_model(), [("The patient takes", " aspirin")], progress=False)  # doctest: +SKIP
    >>> res.layer_curve().shape                                          # doctest: +SKIP
    (3,)
"""


from medinterp.readout import Target
from medinterp.techniques.saliency.engine import (
    COMPONENTS,
    OUTER,
    VARIANTS,
    PeakRSS,
    _Accumulator,
    _grad_hooks,
    parameter_groups,
    target_loss,
)
from medinterp.techniques.saliency.batched import batch_loss, batched_unsupported
from medinterp.techniques.saliency.result import SaliencyResult, aggregate_table
from medinterp.techniques.saliency.run import (
    DEFAULT_BATCH,
    SALIENCY_COVARIATES,
    TECHNIQUE,
    SaliencyTarget,
    block_shares,
    build_target,
    prompt_covariates,
    saliency,
    targets_from_inputs,
)

__all__ = [
    "COMPONENTS", "DEFAULT_BATCH", "OUTER", "SALIENCY_COVARIATES", "VARIANTS", "PeakRSS", "SaliencyResult",
    "SaliencyTarget", "TECHNIQUE", "Target", "aggregate_table", "batch_loss", "batched_unsupported", "block_shares",
    "build_target", "parameter_groups", "prompt_covariates", "saliency", "target_loss", "targets_from_inputs",
]
