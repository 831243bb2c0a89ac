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
        layer_chunk: most feature sets processed together (memory: ``layer_chunk * groups * d²`` floats,
            fewer where that passes ~512 MB).

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
        for width, idx_all in widths.items():
            # per-group d x d moments: cap a chunk at ~512 MB of them whatever the width
            chunk = max(1, min(layer_chunk, (512 << 20) // max(1, G * width * width * 8)))
            for c0 in range(0, len(idx_all), chunk):
                idx = idx_all[c0: c0 + chunk]
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


__all__ = ["PermutationLevels", "bootstrap_levels", "cv_groups", "geometry_permutation_test", "permutation_levels",
           "present_mask"]
