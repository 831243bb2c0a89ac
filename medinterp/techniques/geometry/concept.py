"""Concept-level geometry primitives (METHOD.md §0-§1): the headline probe, its per-prompt scores, the
lexical baseline, cosine silhouette and the centred collapse statistics.

Everything here reads activations that are already *template-centred* (:func:`template_centre`: the
mean of every template is removed, so what is left is what differs between items under one frame).

Per-prompt scores (what :meth:`GeometryResult.unit_scores` returns) are out-of-fold, with folds grouped
by item (by age for age), so no test item is seen in training:

* categorical: ``(correct * n / (k * n_c) - 1/k) / (1 - 1/k)``: out-of-fold correctness weighted by
  the inverse class frequency, chance-corrected. Its mean over prompts is the chance-corrected
  *balanced* accuracy (0 = chance, 1 = perfect), so families with unequal classes share one scale;
  with equal classes it is ``(correct - 1/k) / (1 - 1/k)``.
* continuous: ``1 - (yhat - y)² / Var(y)`` from a grouped ridge regression; its mean is the pooled
  out-of-fold R² (what :func:`medinterp.stats.grouped_r2` returns for the same folds).

The folds (:func:`medinterp.stats.cv.grouped_folds`) and the probe (:func:`medinterp.stats.cv.linear_probe`)
are those of :func:`medinterp.stats.probe_balanced_accuracy` and :func:`medinterp.stats.grouped_r2`; those
return only the pooled score, the map needs the per-prompt predictions (:func:`~medinterp.stats.cv.ridge_classifier_oof`,
:func:`~medinterp.stats.cv.out_of_fold_ridge`: sklearn's pipelines in closed form). The probe is fitted on a
PCA reduction (``pca_dims``, fitted on all rows without labels) to keep a layer under a second.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> items = np.repeat(np.arange(40), 3); y = items % 2
    >>> X = rng.normal(size=(120, 8)); X[:, 0] += 3 * y
    >>> s, ba = probe_unit_scores(X, y, items)
    >>> bool(s.mean() > 0.8 and ba > 0.9)
    True
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from jaxtyping import Float, Shaped
from sklearn.decomposition import PCA
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import balanced_accuracy_score, pairwise_distances, silhouette_samples

from medinterp.errors import MedinterpError
from medinterp.stats.cv import grouped_folds, out_of_fold_ridge, ridge_classifier_oof


def template_centre(X: Float[np.ndarray, "n d"], templates: Sequence[Any] | None) -> Float[np.ndarray, "n d"]:
    """``X`` with the mean of each template's rows removed (the frame's own direction); globally
    centred when ``templates`` is None or has one value."""
    X = np.asarray(X, dtype=np.float64)
    if templates is None:
        return X - X.mean(0)
    t = np.asarray([str(x) for x in templates])
    out = np.empty_like(X)
    for v in np.unique(t):
        sel = t == v
        out[sel] = X[sel] - X[sel].mean(0)
    return out


def reduce(X: Float[np.ndarray, "n d"], pca_dims: int | None, seed: int = 0) -> Float[np.ndarray, "n k"]:
    """PCA to ``pca_dims`` components (label-free, fitted on all rows); ``X`` itself when off or small.

    With fewer rows than features (the usual case: a few hundred prompts, d_model 640+) the scores come
    from the eigendecomposition of the n x n Gram matrix of the centred rows (``Xc Xcᵀ = U Λ Uᵀ``, scores
    ``U √Λ``: the same PCA scores, each component's sign fixed so its largest entry is positive); sklearn's
    PCA has no Gram solver and its d x d covariance route was 4 of 13 s of a geometry run. Otherwise
    sklearn's ``covariance_eigh`` PCA.

    With no more rows than ``pca_dims`` (but more features) the rows span at most ``n - 1`` centred
    directions, so the scores on those ``n - 1`` components are returned: the probe's features stay at most
    ``pca_dims`` wide. Returning ``X`` itself there (0.4.0) gave the quick map's progression cell, 60 prompts,
    640-wide probe features and a 3,926-wide TF-IDF baseline, and the refit bootstrap's per-group ``d x d``
    moments then took > 10 min and ~12 GB.
    """
    X = np.asarray(X, dtype=np.float64)
    if not pca_dims or X.shape[1] <= pca_dims:
        return X
    n, d = X.shape
    k = min(pca_dims, n - 1) if n <= pca_dims else pca_dims
    if k < 1:
        return X
    if n > d:  # a layer where every prompt gives one vector (total variance 0) only makes sklearn's explained-
        # variance ratio 0/0, which nothing here reads: no warning on the user's terminal for it
        with np.errstate(invalid="ignore", divide="ignore"):
            return PCA(n_components=k, random_state=seed, svd_solver="covariance_eigh").fit_transform(X)
    Xc = X - X.mean(0)
    w, U = np.linalg.eigh(Xc @ Xc.T)  # ascending
    w, U = w[::-1][:k], U[:, ::-1][:, :k]
    Z = U * np.sqrt(np.maximum(w, 0.0))
    sign = np.sign(Z[np.abs(Z).argmax(0), np.arange(Z.shape[1])])
    return Z * np.where(sign == 0, 1.0, sign)


def probe_unit_scores(
    X: Float[np.ndarray, "n d"],
    y: Shaped[np.ndarray, "n"],
    groups: Shaped[np.ndarray, "n"],
    *,
    n_splits: int = 5,
    seed: int = 0,
    alpha: float = 1.0,
    splits: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[Float[np.ndarray, "n"], float]:
    """Per-prompt chance-corrected out-of-fold correctness of a linear probe (item-grouped folds).

    Args:
        X: ``[n, d]`` features (already reduced / centred as wanted).
        y: class label per row (>= 2 classes).
        groups: item id per row.
        n_splits: folds (capped at the number of groups).
        seed: fold shuffling seed.
        alpha: L2 strength of the ridge probe (:func:`medinterp.stats.cv.linear_probe`).
        splits: ready ``(train, test)`` pairs (:func:`medinterp.stats.cv.grouped_folds` of these ``y``, ``groups``);
            the splitter is the slow part when one labelling is probed at every layer.

    Returns:
        ``(scores [n], balanced accuracy)``; ``scores.mean()`` = (BA - 1/k) / (1 - 1/k).
    """
    y = np.asarray([str(v) for v in y])
    groups = np.asarray(groups)
    classes, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    k = len(classes)
    if k < 2:
        raise MedinterpError("probe_unit_scores: need at least 2 classes")
    cv = list(splits) if splits is not None else grouped_folds(y, groups, False, n_splits=n_splits, seed=seed)
    pred = ridge_classifier_oof(X, y, cv, alpha)  # = cross_val_predict(linear_probe(alpha), ...)
    correct = (pred == y).astype(float)
    w = len(y) / (k * counts[codes])  # inverse class frequency: mean(correct * w) = balanced accuracy
    scores = (correct * w - 1.0 / k) / (1.0 - 1.0 / k)
    return scores, float(balanced_accuracy_score(y, pred))


def ridge_unit_scores(
    X: Float[np.ndarray, "n d"],
    y: Float[np.ndarray, "n"],
    groups: Shaped[np.ndarray, "n"],
    *,
    n_splits: int = 5,
    seed: int = 0,
    alpha: float = 1.0,
    splits: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[Float[np.ndarray, "n"], float]:
    """Per-prompt ``1 - (yhat - y)² / Var(y)`` of a ridge regression under GroupKFold (by ``groups``).

    Returns:
        ``(scores [n], R²)``; ``scores.mean()`` is the pooled out-of-fold R² (can be negative).
    """
    y = np.asarray(y, dtype=float)
    groups = np.asarray(groups)
    var = float(np.var(y))
    if not var > 0:
        raise MedinterpError("ridge_unit_scores: the target has no variance")
    cv = list(splits) if splits is not None else grouped_folds(y, groups, True, n_splits=n_splits, seed=seed)
    pred = out_of_fold_ridge(X, y, cv, alpha)  # = cross_val_predict(StandardScaler -> Ridge(alpha))
    scores = 1.0 - (pred - y) ** 2 / var
    return scores, float(scores.mean())


def unit_scores_for(X: np.ndarray, y: Sequence[Any], groups: np.ndarray, continuous: bool, *, n_splits: int,
                    seed: int, splits_cache: dict | None = None) -> tuple[np.ndarray, float]:
    """:func:`ridge_unit_scores` for a continuous label, :func:`probe_unit_scores` otherwise.

    ``splits_cache``: a dict the folds are kept in, keyed by the labels and groups (the same labelling
    probed at every layer reuses its folds)."""
    splits = None
    if splits_cache is not None:
        key = (continuous, n_splits, seed, tuple(map(str, y)), tuple(map(str, groups)))
        if key not in splits_cache:
            splits_cache[key] = grouped_folds(y, groups, continuous, n_splits=n_splits, seed=seed)
        splits = splits_cache[key]
    if continuous:
        return ridge_unit_scores(X, np.asarray(y, float), groups, n_splits=n_splits, seed=seed, splits=splits)
    return probe_unit_scores(X, np.asarray(y), groups, n_splits=n_splits, seed=seed, splits=splits)


def lexical_features(items: Sequence[str], pca_dims: int | None = 64, seed: int = 0) -> Float[np.ndarray, "n k"]:
    """Character 3-5-gram TF-IDF (``analyzer="char_wb"``) of the item strings, PCA-reduced like the
    activations: the lexical baseline a layer has to beat (METHOD §0)."""
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5))
    F = vec.fit_transform([str(s) for s in items]).toarray()
    return reduce(F, pca_dims, seed)


def cosine_distances(X: Float[np.ndarray, "n d"]) -> Float[np.ndarray, "n n"]:
    """Cosine distance matrix (zero diagonal, clipped at 0)."""
    D = pairwise_distances(np.asarray(X, np.float64), metric="cosine")
    np.fill_diagonal(D, 0.0)
    return np.maximum(D, 0.0)


def cosine_silhouette_samples(X: Float[np.ndarray, "n d"] | None, y: Sequence[Any], *,
                              D: Float[np.ndarray, "n n"] | None = None) -> Float[np.ndarray, "n"]:
    """Per-point silhouette with cosine distance (``sklearn.metrics.silhouette_samples``); pass ``D``
    (:func:`cosine_distances`) to reuse one matrix for several labellings."""
    D = cosine_distances(X) if D is None else D
    return silhouette_samples(D, np.asarray([str(v) for v in y]), metric="precomputed")


def collapse_stats(X: Float[np.ndarray, "n d"]) -> dict[str, float]:
    """Collapse diagnostics of raw activations: mean norm, raw and *centred* mean pairwise cosine
    (mean removed first, so a shared offset direction does not count as collapse) and the
    participation ratio ``(Σλ)² / Σλ²`` of the covariance spectrum (1 = one direction)."""
    X = np.asarray(X, np.float64)
    n = len(X)

    def mean_cos(Z: np.ndarray) -> float:
        nrm = np.linalg.norm(Z, axis=1)
        ok = nrm > 0
        if ok.sum() < 2:
            return float("nan")
        U = Z[ok] / nrm[ok, None]
        s = U.sum(0)
        m = ok.sum()
        return float((s @ s - m) / (m * (m - 1)))

    Xc = X - X.mean(0)
    small = Xc if Xc.shape[0] <= Xc.shape[1] else None  # eigenvalues of the smaller Gram / covariance
    sv = np.clip(np.linalg.eigvalsh(small @ small.T if small is not None else Xc.T @ Xc), 0, None)
    pr = float(sv.sum() ** 2 / (sv ** 2).sum()) if (sv ** 2).sum() > 0 else float("nan")
    return {"resid_norm": float(np.linalg.norm(X, axis=1).mean()), "mean_cosine": mean_cos(X) if n > 1 else float("nan"),
            "mean_cosine_centred": mean_cos(Xc), "participation_ratio": pr}
