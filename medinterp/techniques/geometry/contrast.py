"""The map's geometry cell (METHOD §0b): class structure, the refit inference of one family, and the
contrasts with the control family and the random twin.

Built on the refit nulls of :mod:`medinterp.techniques.geometry.inference`; :meth:`GeometryResult.control_contrast`
hands the map a :class:`~medinterp.techniques.base.ControlContrast` from :func:`geometry_cell` and
:func:`paired_contrast`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np
from jaxtyping import Shaped
from scipy import stats as sps

from medinterp.errors import MedinterpError
from medinterp.techniques.geometry.inference import bootstrap_levels, permutation_levels, present_mask


# ============================================================================ class structure
def class_structure(y: Sequence[Any], groups: Sequence[Any]) -> dict[str, int]:
    """``{class: items}`` (distinct CV groups per class) of a categorical labelling."""
    y = np.asarray([str(v) for v in y])
    groups = np.asarray([str(g) for g in groups])
    return {c: int(len(np.unique(groups[y == c]))) for c in np.unique(y)}


def common_structure(a: Mapping[str, int], b: Mapping[str, int], *, min_items: int = 2,
                     min_classes: int = 2) -> tuple[int, int]:
    """The largest ``(n_classes, items_per_class)`` both class structures can be subsampled to.

    A structure can give ``k`` classes of ``m`` items when ``k`` of its classes have ``>= m`` items; the
    pair feasible for both with the most items ``k * m`` (ties: more classes) is returned. ``a`` and ``b``
    are :func:`class_structure` outputs.

    Example:
        >>> common_structure({"x": 10, "y": 8, "z": 3}, {"p": 6, "q": 6, "r": 6, "s": 2})
        (2, 6)
    """
    ca, cb = sorted(a.values(), reverse=True), sorted(b.values(), reverse=True)
    best = None
    for m in range(min_items, max(ca[0] if ca else 0, cb[0] if cb else 0) + 1):
        k = min(sum(v >= m for v in ca), sum(v >= m for v in cb))
        if k >= min_classes:
            cand = (k * m, k, m)
            if best is None or cand > best:
                best = cand
    if best is None:
        raise MedinterpError(f"no common class structure with >= {min_classes} classes of >= {min_items} items "
                             f"(structures {dict(a)} and {dict(b)})")
    return best[1], best[2]


def subsample_structure(y: Sequence[Any], groups: Sequence[Any], n_classes: int, items_per_class: int, *,
                        seed: int = 0) -> Shaped[np.ndarray, "n"]:
    """Rows to keep so that the labelling has ``n_classes`` classes of ``items_per_class`` items (CV groups)
    each: classes drawn at random among those with enough items, then items within each (seeded).

    Returns:
        ``[n]`` boolean mask of the rows kept (all rows of a kept group).

    Example:
        >>> y = ["a"] * 8 + ["b"] * 6 + ["c"] * 2; g = list(range(16))
        >>> keep = subsample_structure(y, g, 2, 3, seed=0)
        >>> sorted(class_structure(np.asarray(y)[keep], np.asarray(g)[keep]).values())
        [3, 3]
    """
    y = np.asarray([str(v) for v in y])
    groups = np.asarray([str(g) for g in groups])
    if len(y) != len(groups):
        raise MedinterpError("subsample_structure: one group per label expected")
    rng = np.random.default_rng(seed)
    struct = class_structure(y, groups)
    ok = sorted(c for c, m in struct.items() if m >= items_per_class)
    if len(ok) < n_classes or n_classes < 1 or items_per_class < 1:
        raise MedinterpError(f"subsample_structure: {len(ok)} classes have >= {items_per_class} items; "
                             f"{n_classes} asked (structure {struct})")
    keep_groups: list[str] = []
    for c in sorted(rng.choice(ok, size=n_classes, replace=False)):
        gs = np.unique(groups[y == c])
        keep_groups += list(rng.choice(gs, size=items_per_class, replace=False))
    return np.isin(groups, keep_groups)


def structure_covariates(y: Sequence[Any], groups: Sequence[Any], continuous: bool) -> dict[str, np.ndarray]:
    """Per-row ``n_classes`` (classes of the task) and ``items_per_class`` (CV groups of the row's class);
    NaN for a continuous label or a row without a label."""
    n = len(y)
    out = {"n_classes": np.full(n, np.nan), "items_per_class": np.full(n, np.nan)}
    if continuous:
        return out
    ok = present_mask(y)
    if not ok.any():
        return out
    ys = np.asarray([str(v) for v in y])
    struct = class_structure(ys[ok], np.asarray([str(g) for g in groups])[ok])
    out["n_classes"][ok] = len(struct)
    out["items_per_class"][ok] = [struct[v] for v in ys[ok]]
    return out


# ============================================================================ the map's geometry cell
@dataclasses.dataclass
class ProbeInputs:
    """What the refit tests need of one family (:meth:`GeometryResult.probe_inputs`).

    Attributes:
        layers: block index per row of ``features``.
        features: ``[L, n, d]`` the probe's features per block (template-centred, PCA-reduced item reads,
            the headline's), rows with the label only.
        lexical: ``[n, d']`` the lexical baseline's features (character 3-5-gram TF-IDF of the item
            strings, PCA-reduced), or None.
        embedding: ``[n, d]`` the same read of the embedding output (layer -1), or None.
        y: label per row; groups: CV group per row (:func:`cv_groups`); templates: template per row.
        continuous: grouped ridge R² (True) or balanced accuracy (False).
        n_splits, fold_seed: the headline's folds; ``splits`` the headline's ``(train, test)`` pairs
            themselves (None: computed from these; a subset recomputes them).
    """

    layers: list[int]
    features: np.ndarray
    lexical: np.ndarray | None
    embedding: np.ndarray | None
    y: np.ndarray
    groups: np.ndarray
    templates: np.ndarray | None
    continuous: bool
    n_splits: int = 5
    fold_seed: int = 0
    splits: list | None = None

    def subset(self, keep: np.ndarray) -> "ProbeInputs":
        """The same inputs on the rows ``keep`` (boolean mask)."""
        keep = np.asarray(keep, bool)
        return dataclasses.replace(
            self, features=self.features[:, keep], lexical=None if self.lexical is None else self.lexical[keep],
            embedding=None if self.embedding is None else self.embedding[keep], y=self.y[keep],
            groups=self.groups[keep], templates=None if self.templates is None else self.templates[keep],
            splits=None)

    def structure(self) -> dict[str, int]:
        """``{class: items}`` (CV groups per class); ``{}`` for a continuous label."""
        return {} if self.continuous else class_structure(self.y, self.groups)


@dataclasses.dataclass
class FamilyLevels:
    """One family's geometry inference per block (:func:`family_levels`).

    Attributes:
        layers: block indices.
        level: ``[L]`` the probe's level (chance-corrected balanced accuracy, or ``max(R², 0)`` for a continuous
            label: :func:`information`).
        p_level: ``[L]`` refit permutation p of the level (H0: the block carries no label information).
        chance: ``[L]`` the level's permutation mean (what no information scores with this structure; 0 for a
            continuous label).
        lexical, lexical_chance, p_lexical: the lexical baseline's level, its permutation mean and p (NaN: none).
        embedding, p_embedding: the embedding layer's level and permutation p (NaN: not read).
        excess, excess_se, p_excess: ``[L]`` ``(level - chance) - (lexical - lexical_chance)``, its refit
            bootstrap SE and one-sided normal p (H0: the block decodes no better than the item strings).
        over_embedding, over_embedding_se, p_over_embedding: ``[L]`` ``level - embedding`` (what the
            block adds over the model's own embedding layer), SE and one-sided p (NaN without embedding).
        boot: ``[n_boot, L + 2]`` replicate levels (blocks, lexical, embedding; paired).
        n_groups: CV groups (units). n_classes, items_per_class: the task's structure (NaN: continuous;
            items_per_class is the smallest class).
    """

    layers: list[int]
    level: np.ndarray
    p_level: np.ndarray
    chance: np.ndarray
    lexical: float
    lexical_chance: float
    p_lexical: float
    embedding: float
    p_embedding: float
    excess: np.ndarray
    excess_se: np.ndarray
    p_excess: np.ndarray
    over_embedding: np.ndarray
    over_embedding_se: np.ndarray
    p_over_embedding: np.ndarray
    boot: np.ndarray
    n_groups: int
    n_classes: float
    items_per_class: float


def _sf(z: np.ndarray) -> np.ndarray:
    """One-sided ``1 - Phi(z)``; NaN where ``z`` is not finite (e.g. a zero SE)."""
    return np.where(np.isfinite(z), sps.norm.sf(np.where(np.isfinite(z), z, 0.0)), np.nan)


def information(level: Any, continuous: bool) -> np.ndarray:
    """What a level says the features carry about the label, on a scale where no information is 0.

    Categorical: the level as it is (chance-corrected balanced accuracy, centred on the refit permutation mean
    by :func:`family_levels`). Continuous: ``max(R², 0)``: a grouped ridge probe that predicts worse than the
    training mean carries no information about the label, however negative its R². Out-of-fold R² under
    label permutations is -1 to -16 on Gemma 3 270M's progression control and -43 for age's lexical baseline
    (a ridge fitted to noise extrapolates across folds), so centring R² on its permutation mean, or
    differencing raw negative R², measured the probe's overfitting, not the label (0.3.0's age and
    progression geometry cells: SEs of 1-7 and "effects" of 3-8).
    """
    x = np.asarray(level, float)
    return np.maximum(x, 0.0) if continuous else x


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(a, float) / np.asarray(b, float)


def family_levels(inp: ProbeInputs, *, n_perm: int = 1000, n_boot: int = 200, seed: int = 0,
                  alpha: float = 1.0) -> FamilyLevels:
    """Levels, refit permutation p-values and refit-bootstrap contrasts of one family (see the module docstring).

    The blocks, the lexical baseline and the embedding layer share every permutation and every bootstrap
    replicate. ``p_level`` is exact (refit permutation within test folds); ``p_excess`` and
    ``p_over_embedding`` are ``1 - Phi(estimate / SE)`` with the SE from :func:`bootstrap_levels`.
    """
    L = inp.features.shape[0]
    sets = [inp.features[j] for j in range(L)]
    has_lex, has_emb = inp.lexical is not None, inp.embedding is not None
    if has_lex:
        sets.append(inp.lexical)
    if has_emb:
        sets.append(inp.embedding)
    pl = permutation_levels(sets, inp.y, inp.groups, continuous=inp.continuous, n_perm=n_perm, seed=seed,
                            n_splits=inp.n_splits, fold_seed=inp.fold_seed, splits=inp.splits,
                            templates=inp.templates, alpha=alpha)
    bt = bootstrap_levels(sets, inp.y, inp.groups, continuous=inp.continuous, n_boot=n_boot, seed=seed + 1,
                          n_splits=inp.n_splits, alpha=alpha)
    cont = bool(inp.continuous)
    bt = information(bt, cont)
    stat, null_mean = information(pl.statistic, cont), pl.null_mean
    if cont:  # max(R², 0) is already 0 without information (see information())
        null_mean = np.zeros_like(null_mean)
    boot = np.full((n_boot, L + 2), np.nan)
    boot[:, :L] = bt[:, :L]
    nan_L = np.full(L, np.nan)
    level, chance = stat[:L], null_mean[:L]
    lex = lex_ch = p_lex = emb = p_emb = math.nan
    excess = se_x = p_x = over = se_o = p_o = nan_L
    if has_lex:
        boot[:, L] = bt[:, L]
        lex, lex_ch, p_lex = float(stat[L]), float(null_mean[L]), float(pl.p[L])
        excess = (level - chance) - (lex - lex_ch)
        se_x = np.nanstd(bt[:, :L] - bt[:, [L]], axis=0, ddof=1)
        p_x = _sf(_ratio(excess, se_x))
    if has_emb:
        e = L + int(has_lex)
        boot[:, L + 1] = bt[:, e]
        emb, p_emb = float(stat[e]), float(pl.p[e])
        over = level - emb
        se_o = np.nanstd(bt[:, :L] - bt[:, [e]], axis=0, ddof=1)
        p_o = _sf(_ratio(over, se_o))
    struct = inp.structure()
    return FamilyLevels(
        layers=list(inp.layers), level=level, p_level=pl.p[:L], chance=chance, lexical=lex, lexical_chance=lex_ch,
        p_lexical=p_lex, embedding=emb, p_embedding=p_emb, excess=excess, excess_se=se_x, p_excess=p_x,
        over_embedding=over, over_embedding_se=se_o, p_over_embedding=p_o, boot=boot, n_groups=pl.n_groups,
        n_classes=float(len(struct)) if struct else math.nan,
        items_per_class=float(min(struct.values())) if struct else math.nan)


@dataclasses.dataclass
class GeometryContrast:
    """Medicine's excess over its lexical baseline minus the control's, per block (:func:`contrast_families`).

    Attributes:
        effect: ``[L]`` ``excess_medicine - excess_control`` (chance-centred levels minus lexical levels).
        se: ``[L]`` ``sqrt(SE_med² + SE_ctrl²)`` from the two families' independent refit bootstraps.
        z, p: ``[L]`` ``effect / se`` and the one-sided ``1 - Phi(z)`` (H0: equal excess).
        ci_low, ci_high: ``[L]`` normal CI at ``ci``.
        over_embedding, over_embedding_se, p_over_embedding: the same for ``level - embedding``
            (medicine's gain over its embedding layer minus the control's; NaN without embeddings).
        medicine, control: the two :class:`FamilyLevels`.
        structure: ``(n_classes, items_per_class)`` both were subsampled to, or None.
        null: what ``p`` tests, in words.
    """

    effect: np.ndarray
    se: np.ndarray
    z: np.ndarray
    p: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    over_embedding: np.ndarray
    over_embedding_se: np.ndarray
    p_over_embedding: np.ndarray
    medicine: FamilyLevels
    control: FamilyLevels
    structure: tuple[int, int] | None = None
    null: str = ""


NULL_TWO_FAMILY = (
    "H0: the medical family's excess of the probe level over its lexical baseline equals the control family's "
    "(each level chance-centred by its own refit permutation mean). effect = excess_med - excess_ctrl; "
    "SE from independent refit cluster bootstraps of the two families (groups resampled within class, fresh "
    "folds, probe refitted; lexical and block paired within a family); p = 1 - Phi(effect / SE), one-sided.")


def contrast_families(med: FamilyLevels, ctrl: FamilyLevels, *, ci: float = 0.95,
                      structure: tuple[int, int] | None = None) -> GeometryContrast:
    """The two-family test of :class:`GeometryContrast` from two :func:`family_levels` (same layer count)."""
    if len(med.level) != len(ctrl.level):
        raise MedinterpError(f"contrast_families: layer counts differ ({len(med.level)} vs {len(ctrl.level)})")
    eff = med.excess - ctrl.excess
    se = np.sqrt(med.excess_se ** 2 + ctrl.excess_se ** 2)
    z = _ratio(eff, se)
    q = sps.norm.ppf(0.5 + ci / 2)
    o_eff = med.over_embedding - ctrl.over_embedding
    o_se = np.sqrt(med.over_embedding_se ** 2 + ctrl.over_embedding_se ** 2)
    return GeometryContrast(effect=eff, se=se, z=z, p=_sf(z), ci_low=eff - q * se, ci_high=eff + q * se,
                            over_embedding=o_eff, over_embedding_se=o_se, p_over_embedding=_sf(_ratio(o_eff, o_se)),
                            medicine=med, control=ctrl, structure=structure, null=NULL_TWO_FAMILY)


def geometry_cell(medicine: Any, control: Any, *, match_structure: bool = True, n_perm: int = 1000,
                  n_boot: int = 200, seed: int = 0, ci: float = 0.95) -> GeometryContrast:
    """The map's geometry cell: medicine's excess over its lexical baseline against the control's.

    Args:
        medicine, control: :class:`~medinterp.techniques.geometry.result.GeometryResult` (with stored probe
            features: a run of this version) or :class:`ProbeInputs`.
        match_structure: subsample both categorical tasks to their common class structure
            (:func:`common_structure`, :func:`subsample_structure`, seeded) before testing, so that the
            comparison is at equal class count and items per class.
        n_perm: refit permutations (level p-values; >= 1000 for Holm over ~18 blocks).
        n_boot: refit bootstrap replicates (the SEs of the contrasts).
        seed: seed of subsampling, permutations and bootstraps.
        ci: CI level of the effect.
    """
    a = medicine.probe_inputs() if hasattr(medicine, "probe_inputs") else medicine
    b = control.probe_inputs() if hasattr(control, "probe_inputs") else control
    structure = None
    if match_structure and not a.continuous and not b.continuous:
        structure = common_structure(a.structure(), b.structure(), min_items=2)
        a = a.subset(subsample_structure(a.y, a.groups, *structure, seed=seed))
        b = b.subset(subsample_structure(b.y, b.groups, *structure, seed=seed + 1))
    med = family_levels(a, n_perm=n_perm, n_boot=n_boot, seed=seed)
    ctrl = family_levels(b, n_perm=n_perm, n_boot=n_boot, seed=seed + 7)
    return contrast_families(med, ctrl, ci=ci, structure=structure)


@dataclasses.dataclass
class PairedContrast:
    """Level of one set of features minus another's on the same prompts, labels and folds, per block
    (:func:`paired_contrast`; e.g. the model against its random-init twin).

    Attributes:
        effect: ``[L]`` ``level_a - level_b``; se: refit-bootstrap SE (same draws and folds for both);
        z, p: ``effect / se`` and one-sided ``1 - Phi(z)``; ci_low, ci_high: normal CI;
        level_a, level_b: ``[L]`` the two levels on the headline's folds.
    """

    effect: np.ndarray
    se: np.ndarray
    z: np.ndarray
    p: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    level_a: np.ndarray
    level_b: np.ndarray


def paired_contrast(a: Any, b: Any, *, n_boot: int = 200, seed: int = 0, ci: float = 0.95) -> PairedContrast:
    """``level(a) - level(b)`` per block for two feature sets of the *same* prompts (e.g. the model and its
    random-init twin: the twin's geometry result on the family), with a paired refit-bootstrap SE.

    Both probes are refitted on every replicate with the same group draws and folds, so the SE holds the
    out-of-fold dependence and the pairing. ``a``, ``b``: GeometryResults or :class:`ProbeInputs` with the
    same labels and groups (row for row) and the same block count.
    """
    A = a.probe_inputs() if hasattr(a, "probe_inputs") else a
    B = b.probe_inputs() if hasattr(b, "probe_inputs") else b
    if A.features.shape[:2] != B.features.shape[:2] or not np.array_equal(A.groups, B.groups) \
            or not np.array_equal(np.asarray(A.y, str), np.asarray(B.y, str)):
        raise MedinterpError("paired_contrast: the two feature sets must cover the same prompts (labels, groups, "
                             f"block count); got {A.features.shape[:2]} and {B.features.shape[:2]}")
    L = A.features.shape[0]
    sets = [A.features[j] for j in range(L)] + [B.features[j] for j in range(L)]
    pl = permutation_levels(sets, A.y, A.groups, continuous=A.continuous, n_perm=1, seed=seed, n_splits=A.n_splits,
                            fold_seed=A.fold_seed, splits=A.splits)
    bt = bootstrap_levels(sets, A.y, A.groups, continuous=A.continuous, n_boot=n_boot, seed=seed + 1,
                          n_splits=A.n_splits)
    stat, bt = information(pl.statistic, A.continuous), information(bt, A.continuous)
    eff = stat[:L] - stat[L:]
    se = np.nanstd(bt[:, :L] - bt[:, L:], axis=0, ddof=1)
    z = _ratio(eff, se)
    q = sps.norm.ppf(0.5 + ci / 2)
    return PairedContrast(effect=eff, se=se, z=z, p=_sf(z), ci_low=eff - q * se, ci_high=eff + q * se,
                          level_a=stat[:L], level_b=stat[L:])


def shuffled_control(result: Any, *, seed: int = 0) -> Any:
    """A perfectly matched control for the map's geometry cell (issue 20, 8(f)): the same prompts, features
    and lexical baseline, with the primary label shuffled across CV groups (class counts kept, so the class
    structure is identical; every row of a group gets its group's new label).

    Example:
        >>> from medinterp.techniques.geometry.result import GeometryResult
        >>> r = GeometryResult(concept_set="toy", labels={"k": ["a", "a", "b", "b", "c", "c"]},
        ...                    primary={"label": "k"}, unit_ids=["1", "1", "2", "2", "3", "3"])
        >>> s = shuffled_control(r, seed=1)
        >>> sorted(s.labels["k"]) == sorted(r.labels["k"]), s.concept_set
        (True, 'toy (labels shuffled, seed 1)')
    """
    lab = result.primary.get("label")
    if lab not in result.labels:
        raise MedinterpError(f"shuffled_control: {result.concept_set!r} has no primary label")
    groups = np.asarray([str(g) for g in result._units()])
    y = list(result.labels[lab])
    ug = list(dict.fromkeys(groups.tolist()))
    first = {g: y[int(np.flatnonzero(groups == g)[0])] for g in ug}
    perm = np.random.default_rng(seed).permutation(len(ug))
    new = {g: first[ug[j]] for g, j in zip(ug, perm)}
    labels = dict(result.labels)
    labels[lab] = [new[g] for g in groups]
    return dataclasses.replace(result, labels=labels, covariates=None, covariate_names=[],
                               concept_set=f"{result.concept_set} (labels shuffled, seed {seed})")
