"""Per-layer effect over control, correction across layers, and marking of layer runs (METHOD §0).

The pipeline a technique's curve goes through before it enters the map:

1. :func:`layer_effects`: per layer, medicine minus control (difference of means), an item-level CI
   (cluster bootstrap over items) and a permutation p-value (items moved between the two groups, or a
   per-item sign flip when the two curves are paired on the same items, e.g. trained vs random-init).
2. :func:`adjust`: Holm or Benjamini-Hochberg across layers (statsmodels ``multipletests``).
3. :func:`mark_layers`: layers significant after correction, with the effect in the tested direction,
   in runs of at least ``min_run`` adjacent layers. An empty mask ("no interval") is a valid outcome.
4. :func:`robustness`: the fraction of resamples (items × templates × seeds) marking each layer; only
   layers marked in >= 80% are kept.

:func:`mark_layer_effects` runs 1-3 in one call.

Why the family-wise rate holds: under the null (no layer differs from control) a layer is marked
only if it is rejected by Holm, and Holm keeps P(any rejection) <= alpha for any dependence between
layers; requiring runs of >= 2 can only remove marks. So P(some layer marked) <= alpha. With BH the
guarantee is on the false discovery rate (equal to the family-wise rate under the global null, for
independent or positively dependent p-values).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> med = rng.normal(size=(30, 6)); med[:, 2:4] += 1.5      # effect at layers 2-3
    >>> ctrl = rng.normal(size=(30, 6))
    >>> out = mark_layer_effects(med, ctrl, n_perm=999, n_boot=200)
    >>> out.intervals
    [(2, 3)]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Literal

import numpy as np
import scipy.stats
from jaxtyping import Bool, Float, Shaped
from statsmodels.stats.multitest import multipletests

from medinterp.errors import MedinterpError
from medinterp.stats.resampling import Alternative, unit_means

Correction = Literal["holm", "fdr_bh", "bonferroni", "none"]


@dataclasses.dataclass
class LayerEffects:
    """Per-layer effect of medicine over control.

    Attributes:
        effect: ``[n_layers]`` mean(medicine) - mean(control) (mean of paired differences when paired).
        ci_low: ``[n_layers]`` lower end of the item-level bootstrap CI of ``effect``.
        ci_high: ``[n_layers]`` upper end.
        p: ``[n_layers]`` uncorrected permutation p-values.
        paired: whether medicine and control rows were the same items (sign-flip test).
        n_medicine: number of medicine units (items).
        n_control: number of control units.
        alternative: the tested direction.
    """

    effect: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p: np.ndarray
    paired: bool
    n_medicine: int
    n_control: int
    alternative: str


@dataclasses.dataclass
class LayerMarking:
    """The result of :func:`mark_layer_effects`: effects, corrected p-values, the marked layers.

    Attributes:
        effects: the :class:`LayerEffects`.
        p_adj: ``[n_layers]`` p-values corrected across layers.
        marked: ``[n_layers]`` boolean mask of marked layers.
        intervals: inclusive ``(start, end)`` layer runs of ``marked``; ``[]`` is "no interval".
        method: the correction used.
        alpha: the significance level.
    """

    effects: LayerEffects
    p_adj: np.ndarray
    marked: np.ndarray
    intervals: list[tuple[int, int]]
    method: str
    alpha: float


def _diff_of_means(x, y, axis):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def _check_curves(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if a.ndim != 2:
        raise MedinterpError(f"layer_effects: {name} must be [n_items, n_layers], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise MedinterpError(f"layer_effects: {name} has NaN or inf values")
    return a


def layer_effects(
    medicine: Float[np.ndarray, "n_items n_layers"],
    control: Float[np.ndarray, "n_ctrl n_layers"],
    *,
    paired: bool = False,
    medicine_units: Shaped[np.ndarray, "n_items"] | None = None,
    control_units: Shaped[np.ndarray, "n_ctrl"] | None = None,
    n_boot: int = 2000,
    n_perm: int = 1000,
    ci: float = 0.95,
    alternative: Alternative = "greater",
    seed: int = 0,
    exact: bool = True,
) -> LayerEffects:
    """Effect over control per layer with an item-level CI and a permutation p-value.

    Rows are items. If rows are prompts, pass ``medicine_units`` / ``control_units`` (the item of each
    row): rows are first averaged per item (:func:`unit_means`), so every item counts once.

    * Unpaired (``paired=False``; a control family of other items): effect = difference of means;
      CI by :func:`scipy.stats.bootstrap` resampling the items of each group independently; p by
      :func:`scipy.stats.permutation_test` (``"independent"``) moving whole items between the groups.
    * Paired (``paired=True``; the same items under two conditions, e.g. trained vs random-init
      model): effect = mean per-item difference; CI by bootstrapping items; p by a per-item sign flip
      (``permutation_type="samples"``: swaps the two values of an item).

    All layers share the same resamples/permutations, so the layer curves keep their correlation.

    Args:
        medicine: ``[n_items, n_layers]`` per-item (or per-prompt, with units) medicine curve.
        control: ``[n_ctrl, n_layers]`` control curve (same rows as ``medicine`` when paired).
        paired: whether row i of both arrays is the same item.
        medicine_units: optional item id per medicine row.
        control_units: optional item id per control row (paired: must give the same items).
        n_boot: bootstrap resamples for the CI.
        n_perm: permutations for the p-value (>= 1000 for headline numbers).
        ci: confidence level.
        alternative: "greater" (medicine above control), "less" or "two-sided".
        seed: seed for both the bootstrap and the permutations.
        exact: enumerate every assignment when there are at most :data:`EXACT_LIMIT` (default); False:
            ``n_perm`` random draws whatever the count (robustness resamples, where speed matters more).

    Returns:
        A :class:`LayerEffects`.

    Raises:
        MedinterpError: shape mismatch, NaNs, or fewer than 2 items in a group.
    """
    medicine = _check_curves(medicine, "medicine")
    control = _check_curves(control, "control")
    if medicine_units is not None:
        medicine = unit_means(medicine, medicine_units)
    if control_units is not None:
        control = unit_means(control, control_units)
    if medicine.shape[1] != control.shape[1]:
        raise MedinterpError(f"layer_effects: medicine has {medicine.shape[1]} layers, control {control.shape[1]}")
    if min(len(medicine), len(control)) < 2:
        raise MedinterpError("layer_effects: need >= 2 items in medicine and in control")
    if paired and medicine.shape != control.shape:
        raise MedinterpError(f"layer_effects: paired needs equal shapes, got {medicine.shape} vs {control.shape}")
    rng = np.random.default_rng(seed)
    boot_rng, perm_rng = rng.spawn(2)
    # Exact enumeration whenever the assignments are few (METHOD §0b): scipy's permutation_test enumerates
    # them all when n_resamples covers them (np.inf), so the p-value has no Monte Carlo error and can reach
    # 1/distinct; 1,000 random draws of 1,024 sign flips (10 items) could not reliably pass alpha / 18.
    if exact and n_assignments(len(medicine), len(control), paired=paired) <= EXACT_LIMIT:
        n_perm = np.inf
    if paired:
        diff = medicine - control
        effect = diff.mean(axis=0)
        boot = scipy.stats.bootstrap((diff,), np.mean, n_resamples=n_boot, confidence_level=ci,
                                     method="percentile", axis=0, vectorized=True, rng=boot_rng)
        test = scipy.stats.permutation_test((medicine, control), _diff_of_means, permutation_type="samples",
                                            vectorized=True, n_resamples=n_perm, alternative=alternative,
                                            axis=0, rng=perm_rng)
    else:
        effect = _diff_of_means(medicine, control, axis=0)
        boot = scipy.stats.bootstrap((medicine, control), _diff_of_means, n_resamples=n_boot,
                                     confidence_level=ci, method="percentile", axis=0, vectorized=True,
                                     rng=boot_rng)
        test = scipy.stats.permutation_test((medicine, control), _diff_of_means,
                                            permutation_type="independent", vectorized=True,
                                            n_resamples=n_perm, alternative=alternative, axis=0, rng=perm_rng)
    return LayerEffects(
        effect=np.asarray(effect), ci_low=np.asarray(boot.confidence_interval.low),
        ci_high=np.asarray(boot.confidence_interval.high), p=np.asarray(test.pvalue, dtype=float),
        paired=paired, n_medicine=len(medicine), n_control=len(control), alternative=alternative,
    )


#: at most this many distinct assignments (sign flips / splits) are enumerated exactly, not sampled
EXACT_LIMIT = 65_536


def n_assignments(n_medicine: int, n_control: int, *, paired: bool) -> int:
    """Distinct permutations of the test: ``2**n`` sign flips (paired) or ``C(n + m, n)`` splits.

    Example:
        >>> n_assignments(10, 10, paired=True), n_assignments(4, 4, paired=False)
        (1024, 70)
    """
    return 2 ** int(n_medicine) if paired else math.comb(int(n_medicine) + int(n_control), int(n_medicine))


def minimum_detectable_effect(
    medicine: Float[np.ndarray, "n_items n_layers"],
    control: Float[np.ndarray, "n_ctrl n_layers"],
    *,
    alpha: float,
    power: float = 0.8,
    paired: bool = False,
) -> Float[np.ndarray, "n_layers"]:
    """Per layer, the smallest true effect the test would detect with ``power`` at level ``alpha``.

    Normal approximation of the difference of item means (Welch's standard error; paired: the SD of the
    per-item differences over sqrt(n)): ``MDE = (z[1 - alpha] + z[power]) * SE``. Pass the *corrected*
    level (``alpha / n_layers`` for Holm's first step, a conservative bound). Rows are items.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.normal(size=(400, 1)), rng.normal(size=(400, 1))
        >>> round(float(minimum_detectable_effect(a, b, alpha=0.05)[0]), 1)  # (1.645 + 0.842) * sqrt(2/400)
        0.2
    """
    a = np.asarray(medicine, float)
    b = np.asarray(control, float)
    z = scipy.stats.norm.ppf(1 - alpha) + scipy.stats.norm.ppf(power)
    if paired:
        d = a - b
        se = d.std(axis=0, ddof=1) / np.sqrt(len(d))
    else:
        se = np.sqrt(a.var(axis=0, ddof=1) / len(a) + b.var(axis=0, ddof=1) / len(b))
    return z * se


def smallest_p(n_medicine: int, n_control: int, *, paired: bool, n_perm: int) -> float:
    """The smallest p-value :func:`layer_effects` can return for these group sizes.

    scipy's ``permutation_test`` is exact when ``n_perm`` covers every distinct permutation (paired:
    ``2**n`` sign flips; unpaired: ``C(n_medicine + n_control, n_medicine)`` splits), and its p-value then
    counts the observed one, so it is at least ``1 / distinct``; otherwise (Monte Carlo) at least
    ``1 / (n_perm + 1)``. :func:`layer_effects` enumerates exactly whenever ``distinct <= EXACT_LIMIT``.
    With few items no layer can reach a corrected α: the map says so instead of
    showing "no interval".

    Example:
        >>> smallest_p(3, 3, paired=True, n_perm=1000), smallest_p(20, 20, paired=False, n_perm=999)
        (0.125, 0.001)
    """
    distinct = n_assignments(n_medicine, n_control, paired=paired)
    return 1.0 / distinct if (n_perm >= distinct or distinct <= EXACT_LIMIT) else 1.0 / (int(n_perm) + 1)


def adjust(pvals: Float[np.ndarray, "n_layers"], method: Correction = "holm") -> Float[np.ndarray, "n_layers"]:
    """Correct per-layer p-values across layers (``statsmodels.stats.multitest.multipletests``).

    Args:
        pvals: uncorrected p-values, one per layer.
        method: "holm" (family-wise error, any dependence), "fdr_bh" (Benjamini-Hochberg false
            discovery rate), "bonferroni", or "none" (returns the input; for comparisons only).

    Returns:
        Adjusted p-values (capped at 1), same order as ``pvals``.

    Raises:
        MedinterpError: NaN or values outside [0, 1], or an unknown method.
    """
    p = np.asarray(pvals, dtype=float)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise MedinterpError(f"adjust: p-values must be a 1-D array in [0, 1] without NaN, got {p}")
    if method == "none":
        return p.copy()
    if method not in ("holm", "fdr_bh", "bonferroni"):
        raise MedinterpError(f"adjust: method must be holm, fdr_bh, bonferroni or none, got {method!r}")
    if method == "holm":
        # statsmodels' Holm branch (0.15) calls gc.collect() on every call: ~0.2 s in a process that
        # has torch and TransformerLens loaded, which would dominate robustness loops. This is the same
        # formula as statsmodels (sorted p times (n - i), running max, cap 1); the tests check equality
        # with multipletests(method="holm") and with a brute-force step-down loop.
        order = np.argsort(p, kind="stable")
        stepped = np.maximum.accumulate(p[order] * np.arange(len(p), 0, -1))
        out = np.empty_like(p)
        out[order] = np.minimum(stepped, 1.0)
        return out
    return multipletests(p, method=method)[1]


def mark_layers(
    p_adj: Float[np.ndarray, "n_layers"],
    alpha: float = 0.05,
    min_run: int = 2,
    effect: Float[np.ndarray, "n_layers"] | None = None,
    direction: Alternative = "greater",
) -> Bool[np.ndarray, "n_layers"]:
    """Layers with ``p_adj <= alpha`` (and the effect in ``direction``) in runs of >= ``min_run``.

    Args:
        p_adj: corrected p-values per layer.
        alpha: significance level.
        min_run: shortest run of adjacent significant layers that is kept (1 keeps single layers).
        effect: optional effect per layer; when given, "greater" needs effect > 0, "less" effect < 0.
        direction: "greater", "less" or "two-sided" (no sign condition).

    Returns:
        Boolean mask; all False ("no interval") is a valid result.
    """
    p_adj = np.asarray(p_adj, dtype=float)
    sig = p_adj <= alpha
    if effect is not None:
        effect = np.asarray(effect, dtype=float)
        if effect.shape != p_adj.shape:
            raise MedinterpError(f"mark_layers: effect shape {effect.shape} != p_adj shape {p_adj.shape}")
        if direction == "greater":
            sig &= effect > 0
        elif direction == "less":
            sig &= effect < 0
    out = np.zeros_like(sig)
    for start, end in intervals_from_mask(sig):
        if end - start + 1 >= min_run:
            out[start:end + 1] = True
    return out


def intervals_from_mask(mask: Bool[np.ndarray, "n_layers"]) -> list[tuple[int, int]]:
    """Inclusive ``(start, end)`` runs of True in a boolean layer mask; ``[]`` when none.

    Example:
        >>> intervals_from_mask(np.array([0, 1, 1, 0, 1], dtype=bool))
        [(1, 2), (4, 4)]
    """
    m = np.asarray(mask, dtype=bool).astype(np.int8)
    edges = np.diff(np.concatenate([[0], m, [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return [(int(s), int(e)) for s, e in zip(starts, ends)]


def mark_layer_effects(
    medicine: Float[np.ndarray, "n_items n_layers"],
    control: Float[np.ndarray, "n_ctrl n_layers"],
    *,
    paired: bool = False,
    alpha: float = 0.05,
    method: Correction = "holm",
    min_run: int = 2,
    alternative: Alternative = "greater",
    medicine_units: Shaped[np.ndarray, "n_items"] | None = None,
    control_units: Shaped[np.ndarray, "n_ctrl"] | None = None,
    n_boot: int = 2000,
    n_perm: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> LayerMarking:
    """The full marking pipeline: :func:`layer_effects` → :func:`adjust` → :func:`mark_layers`.

    Args: as :func:`layer_effects`, plus ``alpha``, ``method`` (correction) and ``min_run``.

    Returns:
        A :class:`LayerMarking`; ``intervals == []`` means "no interval".
    """
    eff = layer_effects(medicine, control, paired=paired, medicine_units=medicine_units,
                        control_units=control_units, n_boot=n_boot, n_perm=n_perm, ci=ci,
                        alternative=alternative, seed=seed)
    p_adj = adjust(eff.p, method)
    marked = mark_layers(p_adj, alpha=alpha, min_run=min_run, effect=eff.effect, direction=alternative)
    return LayerMarking(effects=eff, p_adj=p_adj, marked=marked, intervals=intervals_from_mask(marked),
                        method=method, alpha=alpha)


@dataclasses.dataclass
class Robustness:
    """Per-layer stability of a marking across resamples.

    Attributes:
        fraction: ``[n_layers]`` fraction of resamples in which each layer was marked.
        stable: ``[n_layers]`` ``fraction >= threshold`` (and marked on the full data, when given).
        threshold: the stability threshold (default 0.8).
        n_resamples: how many resamples were run.
    """

    fraction: np.ndarray
    stable: np.ndarray
    threshold: float
    n_resamples: int


def robustness(
    resample_fn: Callable[[np.random.Generator], Bool[np.ndarray, "n_layers"]],
    n_resamples: int = 20,
    *,
    marked: Bool[np.ndarray, "n_layers"] | None = None,
    threshold: float = 0.8,
    seed: int = 0,
) -> Robustness:
    """How often each layer is marked when the items / templates / seeds are resampled.

    ``resample_fn(rng)`` draws one resample with ``rng`` (e.g. a subset of items and templates, a new
    model seed), reruns the marking, and returns its boolean layer mask. The generators given to the
    calls are independent children of ``seed``, so the whole run is reproducible.

    Args:
        resample_fn: one resample → mask of marked layers.
        n_resamples: number of resamples.
        marked: optional mask on the full data; a layer is stable only if it is also marked there.
        threshold: minimum fraction of resamples marking a layer for it to be kept (0.8 per METHOD §0).
        seed: seed of the resample generators.

    Returns:
        A :class:`Robustness`.
    """
    if n_resamples < 1:
        raise MedinterpError(f"robustness: n_resamples must be >= 1, got {n_resamples}")
    rngs = np.random.default_rng(seed).spawn(n_resamples)
    masks = np.stack([np.asarray(resample_fn(r), dtype=bool) for r in rngs])
    if masks.ndim != 2:
        raise MedinterpError(f"robustness: resample_fn must return a 1-D layer mask, got shape {masks.shape[1:]}")
    fraction = masks.mean(axis=0)
    stable = fraction >= threshold
    if marked is not None:
        stable &= np.asarray(marked, dtype=bool)
    return Robustness(fraction=fraction, stable=stable, threshold=threshold, n_resamples=n_resamples)
