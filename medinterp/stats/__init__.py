"""Statistics with items as the unit of inference (METHOD §0): CIs, nulls, grouped CV, layer marking.

* :mod:`~medinterp.stats.resampling`: :func:`cluster_bootstrap`, :func:`item_permutations`,
  :func:`item_permutation_null`, :func:`permutation_pvalue`, :func:`unit_means`.
* :mod:`~medinterp.stats.cv`: :func:`probe_balanced_accuracy` (item-grouped linear probe),
  :func:`grouped_r2` (ridge, GroupKFold).
* :mod:`~medinterp.stats.layers`: :func:`layer_effects` (effect over control per layer with CI and p),
  :func:`adjust` (Holm / BH), :func:`mark_layers`, :func:`intervals_from_mask`,
  :func:`mark_layer_effects` (the whole marking pipeline), :func:`robustness`.
"""

from medinterp.stats.cv import grouped_r2, probe_balanced_accuracy
from medinterp.stats.layers import (
    LayerEffects,
    LayerMarking,
    Robustness,
    adjust,
    intervals_from_mask,
    layer_effects,
    mark_layer_effects,
    mark_layers,
    robustness,
    smallest_p,
    minimum_detectable_effect,
    n_assignments,
    EXACT_LIMIT,
)
from medinterp.stats.resampling import (
    BootstrapResult,
    cluster_bootstrap,
    item_permutation_null,
    item_permutations,
    permutation_pvalue,
    unit_means,
)

__all__ = [
    "BootstrapResult", "LayerEffects", "LayerMarking", "Robustness", "adjust", "cluster_bootstrap",
    "grouped_r2", "intervals_from_mask", "item_permutation_null", "item_permutations", "layer_effects",
    "mark_layer_effects", "mark_layers", "permutation_pvalue", "probe_balanced_accuracy", "robustness",
    "smallest_p", "unit_means", "minimum_detectable_effect", "n_assignments", "EXACT_LIMIT",
]
