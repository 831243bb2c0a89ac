"""Technique 1: activation geometry per layer (METHOD.md §0-§1).

**Headline (the map's curve; ``headline``, ``concept``, ``questions``).** The residual stream after
each block (``blocks.{l}.hook_resid_post``) is read at the concept, the mean over the item's tokens
(``positions="span_mean"``), and separately at the fixed final token (``"last"``), both from one
forward pass (:func:`medinterp.activations.collect_reads`). Each read is **template-centred** (every
template's mean removed). Per layer: an item-grouped linear probe (StratifiedGroupKFold; GroupKFold by
age for age; on a label-free PCA to ``pca_dims``) gives every prompt an out-of-fold score, chance-
corrected and class-balanced for categorical labels, ``1 - (yhat - y)² / Var(y)`` from a grouped
ridge for continuous ones (age, stage, dose): :meth:`GeometryResult.unit_scores`, whose mean over
prompts is :meth:`~GeometryResult.layer_curve` (CI: cluster bootstrap over items). Beside it: the
**lexical baseline** (the same probe on character 3-5-gram TF-IDF of the item strings,
``lexical_scores``), cosine silhouette, centred mean cosine and participation ratio (collapse), and the
family questions: drugs' specialty vs mechanism at matched class count and size (paired per-item
difference), age's 17→18 step against the matched x7→x8 steps, progression's stage order against a
stage-permutation null (labels move with items) with its lexical floor and nearest-stage circularity.

**Paper metrics (``paper=True``; the 0.1.0 pipeline, for ``rule="paper"`` and the UMAP pictures).**
Each layer is embedded with UMAP to 30 dimensions (for metrics) and to 2 dimensions (for plots), and
scored:

* **silhouette** of the ground-truth labels (every categorical labelling, e.g. drugs: specialty *and*
  mechanism), in UMAP-30 space and in the raw activation space, with a **label-permutation baseline**
  (mean and 95th percentile of the silhouette of shuffled labels: what chance gives at that layer);
* **local anisotropy**: ``1 - λ2/λ1`` of the covariance of each point and its ``k = 20`` nearest
  neighbours, averaged over points (1 = points lie locally on a line, 0 = isotropic);
* **linearity**: cross-validated R² of a ridge regression predicting each continuous label (age) from
  the embedding (out-of-fold predictions, 5 folds);
* **discontinuity profile** (age): the distance between the mean embeddings of consecutive ages,
  against the median such step; the ratio for the boundary ``jump=(17, 18)`` is reported pooled and
  separately per sex;
* **progression** (disease stages): per disease, CSFS = the stage nearest to the first stage, CSLS =
  the stage nearest to the last stage, the Spearman correlation of stage index vs distance from stage
  0, and the **circularity** ``1 - d(first, last) / max_j d(first, j)`` on the stage means: 0 when the
  last stage is the one farthest from the first (an outward path), near 1 when the path comes back to
  where it started (a closed loop);
* **collapse diagnostics** on the raw activations: mean residual norm, mean pairwise cosine
  similarity, and effective rank (participation ratio ``(Σλ)² / Σλ²`` of the covariance spectrum).
  A collapse shows as cosine → 1 and effective rank → 1; a plain norm change moves neither.

Uncertainty: every scalar metric carries a percentile bootstrap CI. UMAP is **not** re-run per
replicate: prompts are resampled (multinomial weights) on the fixed embedding and the cheap statistic
is recomputed: the mean of per-point silhouette values, the mean per-point anisotropy, R² of the
out-of-fold predictions, the step ratio and progression scores from age/stage means recomputed with
whole templates resampled (a cluster bootstrap: every template covers every age/stage, and
resampling single prompts would change each mean's template mix and bias the steps). The collapse statistics (norm,
cosine, effective rank) use a delete-one jackknife instead (resampling with repeats biases the
effective rank down and the cosine up), evaluated in closed form from the Gram matrix. The CIs therefore describe the sampling of prompts given the embedding, not
UMAP's own randomness (run with other ``seed`` values for that).

A layer where every prompt gives the same vector (up to float32 rounding; e.g. the embedding output
when all prompts end on one token) is not embedded: its metrics are NaN (residual norm and mean
cosine kept) and the run emits a :class:`ConstantLayerWarning`, also listed in ``result.warnings``.

**Inference (``inference``; issue 20).** Out-of-fold scores of one fold's probe are not independent
units, so the map's geometry tests refit the probe: :func:`permutation_levels` (the level's exact null:
group labels permuted within test folds, the probe refitted in closed form on every permutation),
:func:`bootstrap_levels` (refit cluster bootstrap: SEs of level differences), :func:`family_levels`
(level, excess over the lexical baseline, gain over the embedding layer), :func:`geometry_cell`
(medicine's excess minus the control's, at a common class structure) and :func:`paired_contrast` (the
model against its twin on the same prompts). Units are the CV groups (the age for age).

Layout: ``bootstrap`` (resampling weights, percentile CIs), ``metrics`` (the metric functions on
numpy arrays), ``embedding`` (PCA, kNN, UMAP, alignment, worker pool), ``layer`` (label roles, all
metrics of one layer), ``inference`` (the refit tests), ``result`` (:class:`GeometryResult`), ``run`` (:func:`geometry`,
:func:`geometry_many`), ``technique`` (the ``TECHNIQUE`` adapter, variants' findings). Figures: ``medinterp.viz.geometry``.

Metric functions work on plain numpy arrays and are usable on their own; :func:`geometry` runs the
whole pipeline for one concept set and :func:`geometry_many` for several sets with one shared pool of
UMAP workers.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.r_[rng.normal(0, .1, (20, 5)), rng.normal(3, .1, (20, 5))]
    >>> s = silhouette(X, [0] * 20 + [1] * 20, n_perm=20, n_boot=50)
    >>> bool(s["value"] > 0.9 and s["baseline"] < 0.2)
    True
"""

from medinterp.techniques.geometry.embedding import embed_layers, is_constant
from medinterp.techniques.geometry.layer import TABLE_COLUMNS, LabelSpec, layer_metrics
from medinterp.techniques.geometry.metrics import (
    anisotropy,
    collapse_metrics,
    discontinuity_profile,
    linearity_r2,
    local_anisotropy,
    progression_scores,
    silhouette,
    silhouette_samples,
    step_ratio,
)
from medinterp.techniques.geometry.concept import (
    collapse_stats,
    cosine_silhouette_samples,
    lexical_features,
    probe_unit_scores,
    ridge_unit_scores,
    template_centre,
)
from medinterp.techniques.geometry.contrast import (
    FamilyLevels,
    GeometryContrast,
    PairedContrast,
    ProbeInputs,
    common_structure,
    family_levels,
    geometry_cell,
    paired_contrast,
    subsample_structure,
)
from medinterp.techniques.geometry.inference import (
    bootstrap_levels,
    cv_groups,
    geometry_permutation_test,
    permutation_levels,
)
from medinterp.techniques.geometry.questions import (
    age_jump_test,
    age_step,
    circularity_stat,
    labelling_excess_difference,
    paired_item_difference,
    progression_order,
)
from medinterp.techniques.geometry.result import GeometryResult
from medinterp.techniques.geometry.run import (
    ConstantLayerWarning,
    default_concept_sets,
    family_labels,
    family_matched,
    family_variants,
    geometry_many,
    variant_findings,
)
from medinterp.techniques.geometry.technique import TECHNIQUE, geometry

#: The shipped concept sets that feed geometry (0.1.0 name; see :func:`default_concept_sets`).
SHIPPED_GEOMETRY_SETS = tuple(default_concept_sets())

__all__ = [
    "GeometryResult",
    "geometry",
    "geometry_many",
    "embed_layers",
    "silhouette",
    "silhouette_samples",
    "local_anisotropy",
    "anisotropy",
    "linearity_r2",
    "discontinuity_profile",
    "step_ratio",
    "progression_scores",
    "collapse_metrics",
    "layer_metrics",
    "default_concept_sets",
    "family_labels",
    "family_matched",
    "family_variants",
    "variant_findings",
    "probe_unit_scores",
    "ridge_unit_scores",
    "template_centre",
    "lexical_features",
    "cosine_silhouette_samples",
    "collapse_stats",
    "age_step",
    "age_jump_test",
    "circularity_stat",
    "labelling_excess_difference",
    "progression_order",
    "paired_item_difference",
    "is_constant",
    "ConstantLayerWarning",
    "LabelSpec",
    "TABLE_COLUMNS",
    "SHIPPED_GEOMETRY_SETS",
    "TECHNIQUE",
    "ProbeInputs",
    "FamilyLevels",
    "GeometryContrast",
    "PairedContrast",
    "permutation_levels",
    "geometry_permutation_test",
    "bootstrap_levels",
    "family_levels",
    "geometry_cell",
    "paired_contrast",
    "cv_groups",
    "common_structure",
    "subsample_structure",
]
