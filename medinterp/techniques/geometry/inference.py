"""Geometry inference that holds (METHOD §0b, issue 20 item 5): nulls that refit the probe.

Out-of-fold probe scores of one fold's probe are not independent units: a noise probe that favours one
class makes every test item of that class right together. An item-level permutation of those scores
rejects too often (pure-noise families at the shipped class structures: 0.089 at alpha = .05). Here
the probe itself is refitted under the null, so the null contains that dependence.

Units are the CV groups: the item, or the age for age (all (age, sex, template) rows of one age move
together; :func:`cv_groups`).

**One family, "the probe decodes the label at this layer"** (:func:`permutation_levels`,
:func:`geometry_permutation_test`): the statistic is the level the map shows (mean chance-corrected
out-of-fold score: chance-corrected balanced accuracy, or grouped R²) with the headline's folds. The
null permutes the groups' labels *within each test fold* (and within groups of the same template set
and row count, and any ``strata``), keeps the folds and the features, and refits the probe on every
permutation. Under H0 (the groups' feature blocks are exchangeable and carry no label) the observed
statistic is exchangeable with the permuted ones (the folds depend on labels and group ids only, and
a within-fold permutation keeps every fold's label multiset, so every training fold sees the same
classes), so ``p = (1 + #{null >= observed}) / (n_perm + 1)`` is exact. The features never change, so
each fold's ridge is a fixed linear map of the training labels (:func:`medinterp.stats.cv.ridge_fold_operator`)
and ``n_perm`` refits cost one matrix product per fold.

**Differences of levels** (excess over the lexical baseline, what a layer adds over the embedding layer,
medicine vs control): these compare two probes that *both* decode (the lexical baseline does, for drugs'
suffixes), so a label-permutation null is the wrong null (it has no signal, and a probe's score varies
more away from chance). Their standard errors come from a **cluster bootstrap that refits the probe**
(:func:`bootstrap_levels`): groups drawn with replacement (within class for a categorical label), a
fresh stratified group fold assignment per replicate (copies of a group stay in one fold), every probe
refitted on the weighted rows. All feature sets of one family (layers, lexical, embedding) share the
draws, so their differences are paired. :func:`two_family_test` turns this into the map's geometry cell.

Example:
    >>> rng = np.random.default_rng(0)
    >>> groups = np.repeat(np.arange(40), 3); y = groups % 4
    >>> X = rng.normal(size=(2, 120, 6)); X[1, :, 0] += 2.0 * (y == 0)    # layer 1 knows class 0
    >>> r = permutation_levels(X, y, groups, continuous=False, n_perm=199, seed=0)
    >>> bool(r.p[0] > 0.05 and r.p[1] <= 0.01)
    True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np
from jaxtyping import Float, Shaped
from scipy import stats as sps

from medinterp.errors import MedinterpError
from medinterp.stats.cv import grouped_folds, ridge_fold_operator
from medinterp.techniques.geometry.embedding import _one_blas_thread


# ============================================================================ groups and labels
def cv_groups(labels: Mapping[str, Sequence[Any]], label: str, item_ids: Sequence[Any], *,
              age_label: str | None = "age", continuous: bool = False) -> np.ndarray:
    """The CV groups (= the units of inference) of a labelling: the age itself for the age label (every
    (age, sex, template) row of one age is one group), else the item id. Strings."""
    if label == age_label and continuous:
        return np.asarray([_fmt(v) for v in labels[label]])
    return np.asarray([str(u) for u in item_ids])


def _fmt(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "nan" if math.isnan(f) else f"{f:g}"


def present_mask(values: Sequence[Any]) -> np.ndarray:
    """Rows that have the label (not None, "", "ungrouped" or NaN)."""
    out = []
    for v in values:
        bad = v is None or v == "" or str(v) == "ungrouped"
        if not bad:
            try:
                bad = isinstance(v, (float, np.floating)) and math.isnan(v)
            except TypeError:
                bad = False
        out.append(not bad)
    return np.asarray(out, dtype=bool)


@dataclasses.dataclass
class _Groups:
    """One row per CV group: its label (code or value), rows, size and exchangeability stratum."""

    ids: np.ndarray  # [G] group id strings
    row_group: np.ndarray  # [n] group index of each row
    label: np.ndarray  # [G] class code (categorical) or value (continuous)
    size: np.ndarray  # [G] rows per group
    stratum: np.ndarray  # [G] int: groups that may swap labels (template set, size, strata)
    classes: np.ndarray | None  # categorical: class names (sorted strings)


def _group_table(y: np.ndarray, groups: np.ndarray, continuous: bool, templates: np.ndarray | None,
                 strata: np.ndarray | None) -> _Groups:
    ids, row_group = np.unique(groups, return_inverse=True)
    G = len(ids)
    if continuous:
        yv = np.asarray(y, dtype=float)
        classes = None
    else:
        classes, yv = np.unique(np.asarray([str(v) for v in y]), return_inverse=True)
    label = np.empty(G, dtype=float if continuous else int)
    size = np.bincount(row_group, minlength=G)
    keys = []
    for g in range(G):
        rows = np.flatnonzero(row_group == g)
        vals = np.unique(yv[rows])
        if len(vals) != 1:
            raise MedinterpError(f"geometry inference: group {ids[g]!r} has {len(vals)} different labels; the label "
                                 "must be constant within a CV group (item, or age for age)")
        label[g] = vals[0]
        tk = tuple(sorted(map(str, templates[rows]))) if templates is not None else ()
        sk = tuple(sorted(set(map(str, strata[rows])))) if strata is not None else ()
        keys.append((len(rows), tk, sk))
    _, stratum = np.unique(np.asarray([repr(k) for k in keys]), return_inverse=True)
    return _Groups(ids, row_group, label, size, stratum, classes)


def _check_inputs(X_by_layer: Any, y: Any, groups: Any) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    Xs = [np.asarray(X, dtype=np.float64) for X in X_by_layer]
    y = np.asarray(y)
    groups = np.asarray([str(g) for g in groups])
    if not Xs:
        raise MedinterpError("geometry inference: no feature sets (layers) given")
    n = len(y)
    for i, X in enumerate(Xs):
        if X.ndim != 2 or X.shape[0] != n:
            raise MedinterpError(f"geometry inference: feature set {i} must be [n, d] with n = {n} (one row per "
                                 f"label); got {X.shape}")
        if not np.isfinite(X).all():
            raise MedinterpError(f"geometry inference: feature set {i} has non-finite values")
    if len(groups) != n:
        raise MedinterpError(f"geometry inference: {len(groups)} groups for {n} labels")
    if len(np.unique(groups)) < 4:
        raise MedinterpError("geometry inference: need at least 4 CV groups")
    return Xs, y, groups


# ============================================================================ the refit permutation null
@dataclasses.dataclass
class PermutationLevels:
    """The probe's level per feature set (layer) and its refit permutation null.

    Attributes:
        statistic: ``[L]`` observed level: mean chance-corrected out-of-fold score (= the map's level).
        null: ``[n_perm, L]`` the same statistic with the groups' labels permuted (all layers share each
            permutation, so maxima / differences across layers are valid too).
        p: ``[L]`` one-sided ``(1 + #{null >= statistic}) / (n_perm + 1)``.
        n_groups: CV groups (units).
        n_cells: exchangeability cells (test fold x stratum) the labels were permuted within.
    """

    statistic: np.ndarray
    null: np.ndarray
    p: np.ndarray
    n_groups: int
    n_cells: int

    @property
    def null_mean(self) -> np.ndarray:
        """``[L]`` the level expected with no label information (the permutation mean: chance)."""
        return self.null.mean(0)


def _permuted_labels(gt: _Groups, fold_of_group: np.ndarray, n_perm: int, seed: int) -> tuple[np.ndarray, int]:
    """``[n_perm + 1, G]`` group labels, row 0 the observed ones; each other row permutes labels within
    (test fold x stratum) cells."""
    rng = np.random.default_rng(seed)
    cell_key = fold_of_group * (gt.stratum.max() + 1) + gt.stratum
    out = np.empty((n_perm + 1, len(gt.label)), dtype=gt.label.dtype)
    out[0] = gt.label
    cells = np.unique(cell_key)
    for c in cells:
        idx = np.flatnonzero(cell_key == c)
        src = np.tile(gt.label[idx], (n_perm, 1))
        out[1:, idx] = rng.permuted(src, axis=1)
    return out, len(cells)


def _fold_of_group(gt: _Groups, splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    fold = np.full(len(gt.ids), -1)
    for f, (_, test) in enumerate(splits):
        gs = np.unique(gt.row_group[test])
        if (fold[gs] >= 0).any():
            raise MedinterpError("geometry inference: a CV group is in two test folds (folds must be grouped)")
        fold[gs] = f
    if (fold < 0).any():
        raise MedinterpError("geometry inference: the test folds do not cover every group")
    for f, (train, test) in enumerate(splits):
        if np.isin(gt.row_group[train], gt.row_group[test]).any():
            raise MedinterpError("geometry inference: a group is in both the training and test part of a fold")
    return fold


def permutation_levels(
    X_by_layer: Sequence[Float[np.ndarray, "n d"]] | Float[np.ndarray, "L n d"],
    y: Shaped[np.ndarray, "n"],
    groups: Shaped[np.ndarray, "n"],
    *,
    continuous: bool,
    n_perm: int = 1000,
    seed: int = 0,
    n_splits: int = 5,
    fold_seed: int = 0,
    splits: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    templates: Sequence[Any] | None = None,
    strata: Sequence[Any] | None = None,
    alpha: float = 1.0,
    chunk: int = 256,
) -> PermutationLevels:
    """The probe's level per layer and its null from refitting the probe under group-label permutations.

    Args:
        X_by_layer: one ``[n, d]`` feature matrix per layer (or any feature set: lexical, embedding;
            ``d`` may differ between sets), rows aligned with ``y``.
        y: label per row (constant within a group).
        groups: CV group per row (:func:`cv_groups`: item, or age for age).
        continuous: grouped ridge R² (True) or the ridge classifier's balanced accuracy (False).
        n_perm: permutations (all layers share each one).
        seed: permutation seed.
        n_splits, fold_seed: the folds (:func:`medinterp.stats.cv.grouped_folds`, as the headline's) when
            ``splits`` is None.
        splits: ready ``(train, test)`` pairs (grouped). Otherwise the folds are ``grouped_folds`` of ``y``
            and ``groups`` *as passed* (their sort order decides the shuffled folds: pass the headline's).
        templates: template per row: groups only swap labels with groups of the same template set.
        strata: an extra stratum per row (e.g. the disease of a progression stage).
        alpha: ridge L2 strength (the headline's probe: 1.0).
        chunk: permutations scored per matrix product (memory).

    Returns:
        :class:`PermutationLevels`; ``statistic`` equals the mean of the headline's per-prompt scores on the
        same folds (up to rounding).
    """
    groups_raw = np.asarray(groups)
    Xs, y, groups = _check_inputs(X_by_layer, y, groups)
    if n_perm < 1:
        raise MedinterpError(f"permutation_levels: n_perm must be >= 1; got {n_perm}")
    tpl = np.asarray([str(t) for t in templates]) if templates is not None else None
    st = np.asarray([str(s) for s in strata]) if strata is not None else None
    gt = _group_table(y, groups, continuous, tpl, st)
    if splits is None:
        splits = grouped_folds(y.astype(float) if continuous else [str(v) for v in y], groups_raw, continuous,
                               n_splits=n_splits, seed=fold_seed)
    splits = [(np.asarray(a), np.asarray(b)) for a, b in splits]
    fold = _fold_of_group(gt, splits)
    labels, n_cells = _permuted_labels(gt, fold, n_perm, seed)  # [P+1, G]
    stat = np.zeros((n_perm + 1, len(Xs)))
    n = len(y)
    if continuous:
        yv = gt.label[gt.row_group]
        var = float(np.var(yv))
        if not var > 0:
            raise MedinterpError("permutation_levels: the target has no variance")
    else:
        k = len(gt.classes)
        if k < 2:
            raise MedinterpError("permutation_levels: need at least 2 classes")
        counts = np.bincount(gt.label[gt.row_group], minlength=k)
        wclass = n / (k * counts)  # inverse class frequency (the multiset of labels never changes)
    with _one_blas_thread():
        for train, test in splits:
            _perm_fold(Xs, gt, labels, train, test, stat, alpha, chunk, continuous,
                       var if continuous else None, None if continuous else wclass)
    stat /= n
    obs, null = stat[0], stat[1:]
    pval = (1.0 + (null >= obs[None, :] - 1e-12).sum(0)) / (n_perm + 1.0)
    return PermutationLevels(statistic=obs, null=null, p=pval, n_groups=len(gt.ids), n_cells=n_cells)


def _perm_fold(Xs: list[np.ndarray], gt: _Groups, labels: np.ndarray, train: np.ndarray, test: np.ndarray,
               stat: np.ndarray, alpha: float, chunk: int, continuous: bool, var: float | None,
               wclass: np.ndarray | None) -> None:
    """Add one fold's summed test-row scores of every permutation and feature set to ``stat`` [P+1, L].

    Per feature set the fold's ridge is ``pred = M @ Y_train + mean(Y_train)`` (:func:`ridge_fold_operator`),
    ``M`` summed over each training group's rows; every permutation's ``Y`` (-1/+1 class columns for the
    classes present in training, the same in every within-fold permutation) is one more column of one
    matrix product. (A gather + segment sum of ``M`` per class was 2-3x slower than this BLAS product.)"""
    g_tr, inv_tr = np.unique(gt.row_group[train], return_inverse=True)
    Gm = np.zeros((len(train), len(g_tr)))
    Gm[np.arange(len(train)), inv_tr] = 1.0
    n_g = Gm.sum(0)  # training rows per training group
    test_g = gt.row_group[test]
    # one operator per feature set: the fold's ridge as a map from training-group labels to test predictions
    Ms = [ridge_fold_operator(X[train], X[test], alpha) @ Gm for X in Xs]  # [n_test, g_tr]
    n_te = len(test)
    if not continuous:
        k = len(gt.classes)
        present = np.unique(gt.label[g_tr])  # the same in every permutation (within-fold swaps)
        c = 1 if len(present) == 2 else len(present)
    for c0 in range(0, len(labels), chunk):
        lab = labels[c0: c0 + chunk]  # [p, G]
        p = len(lab)
        y_te = lab[:, test_g]  # [p, n_test]
        if continuous:
            Yg = lab[:, g_tr].T  # [g_tr, p]
        else:
            Yg = np.where(lab[:, g_tr, None] == present[None, None, -c:], 1.0, -1.0)  # [p, g_tr, c]
            Yg = Yg.transpose(1, 0, 2).reshape(len(g_tr), p * c)
        mean = (n_g @ Yg) / n_g.sum()
        for j, M in enumerate(Ms):
            pred = M @ Yg + mean  # [n_test, p] or [n_test, p * c]
            if continuous:
                s = 1.0 - (pred.T - y_te) ** 2 / var  # [p, n_test]
            else:
                if len(present) == 1:
                    hat = np.full((p, n_te), present[0])
                elif len(present) == 2:
                    hat = present[(pred.T > 0).astype(int)]
                else:
                    hat = present[pred.reshape(n_te, p, c).argmax(2).T]
                s = ((hat == y_te) * wclass[y_te] - 1.0 / k) / (1.0 - 1.0 / k)
            stat[c0: c0 + p, j] += s.sum(1)


def geometry_permutation_test(
    X_by_layer: Sequence[Float[np.ndarray, "n d"]] | Float[np.ndarray, "L n d"],
    y: Shaped[np.ndarray, "n"],
    groups: Shaped[np.ndarray, "n"],
    *,
    continuous: bool = False,
    n_perm: int = 1000,
    seed: int = 0,
    **kwargs: Any,
) -> tuple[Float[np.ndarray, "L"], Float[np.ndarray, "n_perm L"], Float[np.ndarray, "L"]]:
    """``(statistic [L], null [n_perm, L], p [L])`` of :func:`permutation_levels` (same arguments)."""
    r = permutation_levels(X_by_layer, y, groups, continuous=continuous, n_perm=n_perm, seed=seed, **kwargs)
    return r.statistic, r.null, r.p


# ============================================================================ refit cluster bootstrap
def _boot_folds(rng: np.random.Generator, label: np.ndarray, drawn: np.ndarray, n_splits: int,
                continuous: bool) -> np.ndarray:
    """Fold per drawn (unique) group: shuffled, dealt round-robin within each class (categorical) or
    over all groups (continuous), each class starting at a random fold."""
    fold = np.empty(len(drawn), dtype=int)
    keys = np.zeros(len(drawn), dtype=int) if continuous else label[drawn]
    for c in np.unique(keys):
        idx = np.flatnonzero(keys == c)
        idx = rng.permutation(idx)
        fold[idx] = (np.arange(len(idx)) + rng.integers(n_splits)) % n_splits
    return fold


def bootstrap_levels(
    X_by_layer: Sequence[Float[np.ndarray, "n d"]] | Float[np.ndarray, "L n d"],
    y: Shaped[np.ndarray, "n"],
    groups: Shaped[np.ndarray, "n"],
    *,
    continuous: bool,
    n_boot: int = 200,
    seed: int = 0,
    n_splits: int = 5,
    alpha: float = 1.0,
    layer_chunk: int = 20,
) -> Float[np.ndarray, "n_boot L"]:
    """The probe's level per feature set on ``n_boot`` cluster-bootstrap replicates, refitted each time.

    Each replicate draws the CV groups with replacement (within class for a categorical label, so every
    class keeps its item count), assigns the drawn groups fresh folds (stratified by class, dealt at
    random; copies of a group stay in one fold, so no item is in its own training set), and refits the
    probe of every feature set on the rows weighted by their group's draw count: ``StandardScaler ->
    Ridge(alpha)`` (the headline's probe, :func:`medinterp.stats.cv.weighted_ridge_fold` in closed form
    from per-group moments, so a replicate costs a weighted sum over groups, not over rows). All feature
    sets share the draws and folds, so their differences are paired. The spread of a difference of
    levels (layer - lexical, layer - embedding) over replicates is its standard error, with the fold
    split's randomness and the dependence of one fold's out-of-fold scores included.

    Args:
        X_by_layer, y, groups, continuous, alpha: as :func:`permutation_levels`.
        n_boot: replicates.
        seed: seed of the draws and fold assignments.
        n_splits: folds per replicate.
        layer_chunk: feature sets processed together (memory: ``layer_chunk * groups * d²`` floats).

    Returns:
        ``[n_boot, L]`` levels (chance-corrected balanced accuracy, or R², as the headline's); a replicate
        whose target has no variance is NaN.
    """
    Xs, y, groups = _check_inputs(X_by_layer, y, groups)
    if n_boot < 2:
        raise MedinterpError(f"bootstrap_levels: n_boot must be >= 2; got {n_boot}")
    gt = _group_table(y, groups, continuous, None, None)
    G = len(gt.ids)
    rng = np.random.default_rng(seed)
    strata = [np.arange(G)] if continuous else [np.flatnonzero(gt.label == c) for c in np.unique(gt.label)]
    designs = []
    for _ in range(n_boot):
        m = np.zeros(G, dtype=int)
        for idx in strata:
            np.add.at(m, rng.choice(idx, size=len(idx), replace=True), 1)
        drawn = np.flatnonzero(m > 0)
        fold = np.full(G, -1)
        fold[drawn] = _boot_folds(rng, gt.label, drawn, n_splits, continuous)
        designs.append((m, fold))
    widths: dict[int, list[int]] = {}
    for j, X in enumerate(Xs):
        widths.setdefault(X.shape[1], []).append(j)
    out = np.full((n_boot, len(Xs)), np.nan)
    order = np.argsort(gt.row_group, kind="stable")
    starts = np.searchsorted(gt.row_group[order], np.arange(G))
    equal = bool((gt.size == gt.size[0]).all())
    with _one_blas_thread():
        for idx_all in widths.values():
            for c0 in range(0, len(idx_all), layer_chunk):
                idx = idx_all[c0: c0 + layer_chunk]
                X = np.stack([Xs[j] for j in idx])  # [l, n, d]
                Xo = X[:, order]
                if equal:  # every group has the same rows: one batched product
                    Xg = Xo.reshape(len(idx), G, int(gt.size[0]), X.shape[2])
                    s1 = Xg.sum(2)  # [l, G, d] per-group sums
                    s2 = np.matmul(Xg.transpose(0, 1, 3, 2), Xg)  # [l, G, d, d] per-group second moments
                else:
                    s1 = np.add.reduceat(Xo, starts, axis=1)
                    s2 = np.stack([np.add.reduceat(np.einsum("ri,rj->rij", Xl, Xl), starts, axis=0) for Xl in Xo])
                del Xo
                for b, (m, fold) in enumerate(designs):
                    out[b, idx] = _boot_levels_one(X, s1, s2, m, fold, gt, n_splits, continuous, alpha)
    return out


def _boot_levels_one(X: np.ndarray, s1: np.ndarray, s2: np.ndarray, m: np.ndarray, fold: np.ndarray, gt: _Groups,
                     n_splits: int, continuous: bool, alpha: float) -> np.ndarray:
    """Levels ``[l]`` of one bootstrap design (draw counts ``m`` and folds per group) for the stack ``X``."""
    l, _, d = X.shape
    mf = m.astype(float)
    cnt = gt.size * mf  # weighted rows per group
    N = cnt.sum()
    lab_g = gt.label
    if continuous:
        mu_y = cnt @ lab_g / N
        var = cnt @ (lab_g - mu_y) ** 2 / N
        if not var > 0:
            return np.full(l, np.nan)
    else:
        n_cls = len(gt.classes)
        ccount = np.bincount(lab_g, weights=cnt, minlength=n_cls)
        k = int((ccount > 0).sum())
        wcls = np.where(ccount > 0, N / (k * np.maximum(ccount, 1e-300)), 0.0)
    # per-fold weighted moment sums in one pass over the per-group moments (the memory-bound part)
    Mf = np.where(fold[None, :] == np.arange(n_splits)[:, None], mf[None, :], 0.0)  # [n_splits, G]
    F1 = np.matmul(Mf, s1)  # [l, n_splits, d]
    F2 = np.matmul(Mf, s2.reshape(l, len(mf), d * d))  # [l, n_splits, d * d]
    S1_all, S2_all = F1.sum(1), F2.sum(1)
    acc = np.zeros(l)
    eps = np.finfo(np.float64).eps
    for f in range(n_splits):
        te_g = np.flatnonzero(fold == f)
        tr_g = np.flatnonzero((fold >= 0) & (fold != f))
        if not len(te_g) or not len(tr_g):
            continue
        n_tr = cnt[tr_g].sum()
        S1 = S1_all - F1[:, f]
        S2 = (S2_all - F2[:, f]).reshape(l, d, d)
        mu = S1 / n_tr  # [l, d]
        C = S2 / n_tr - mu[:, :, None] * mu[:, None, :]  # population covariance
        var_x = np.maximum(np.einsum("lii->li", C), 0.0)
        sd = np.sqrt(var_x)
        sd = np.where(var_x <= n_tr * eps * var_x + (n_tr * mu * eps) ** 2, 1.0, sd)  # sklearn's rule
        A = n_tr * C / (sd[:, :, None] * sd[:, None, :])
        A[:, np.arange(d), np.arange(d)] += alpha
        if continuous:
            Yg = lab_g[tr_g].astype(float)[:, None]
        else:
            present = np.unique(lab_g[tr_g])
            Yg = np.where(lab_g[tr_g, None] == present[None, :], 1.0, -1.0)
            if len(present) == 2:
                Yg = Yg[:, 1:]
        y_mean = cnt[tr_g] @ Yg / n_tr  # [k]
        # sum_rows w (x - mu)(y - ybar)' = sum_g m_g s1_g y_g' - n_tr mu ybar'
        m_tr = mf[tr_g]
        B = np.matmul((s1[:, tr_g] * m_tr[None, :, None]).transpose(0, 2, 1), Yg) \
            - n_tr * mu[:, :, None] * y_mean[None, None, :]
        W = np.linalg.solve(A, B / sd[:, :, None])  # [l, d, k]
        rows = np.flatnonzero(np.isin(gt.row_group, te_g))
        wr = mf[gt.row_group[rows]]
        Zt = (X[:, rows] - mu[:, None, :]) / sd[:, None, :]
        pred = np.matmul(Zt, W) + y_mean  # [l, n_te, k]
        ytrue = lab_g[gt.row_group[rows]]
        if continuous:
            sc = 1.0 - (pred[:, :, 0] - ytrue[None, :]) ** 2 / var
        else:
            if len(present) == 1:
                hat = np.full((l, len(rows)), present[0])
            else:
                hat = present[(pred[:, :, 0] > 0).astype(int) if len(present) == 2 else pred.argmax(2)]
            sc = ((hat == ytrue[None, :]) * wcls[ytrue][None, :] - 1.0 / k) / (1.0 - 1.0 / k)
        acc += sc @ wr
    return acc / N


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
        level: ``[L]`` the probe's level (the map's curve: chance-corrected balanced accuracy or R²).
        p_level: ``[L]`` refit permutation p of the level (H0: the block carries no label information).
        chance: ``[L]`` the level's permutation mean (what no information scores with this structure).
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
    boot = np.full((n_boot, L + 2), np.nan)
    boot[:, :L] = bt[:, :L]
    nan_L = np.full(L, np.nan)
    level, chance = pl.statistic[:L], pl.null_mean[:L]
    lex = lex_ch = p_lex = emb = p_emb = math.nan
    excess = se_x = p_x = over = se_o = p_o = nan_L
    if has_lex:
        boot[:, L] = bt[:, L]
        lex, lex_ch, p_lex = float(pl.statistic[L]), float(pl.null_mean[L]), float(pl.p[L])
        excess = (level - chance) - (lex - lex_ch)
        se_x = np.nanstd(bt[:, :L] - bt[:, [L]], axis=0, ddof=1)
        p_x = _sf(_ratio(excess, se_x))
    if has_emb:
        e = L + int(has_lex)
        boot[:, L + 1] = bt[:, e]
        emb, p_emb = float(pl.statistic[e]), float(pl.p[e])
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
    eff = pl.statistic[:L] - pl.statistic[L:]
    se = np.nanstd(bt[:, :L] - bt[:, L:], axis=0, ddof=1)
    z = _ratio(eff, se)
    q = sps.norm.ppf(0.5 + ci / 2)
    return PairedContrast(effect=eff, se=se, z=z, p=_sf(z), ci_low=eff - q * se, ci_high=eff + q * se,
                          level_a=pl.statistic[:L], level_b=pl.statistic[L:])
