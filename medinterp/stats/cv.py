"""Cross-validated probes with items (or ages) as groups, so no test item is ever seen in training.

A prompt-level KFold puts other templates of the test item into the training set; a probe then only has
to recognise the item, not generalise the concept. The issue's example: random per-age vectors with no
ordinal structure score R² 0.905 under KFold over prompts and −0.385 under GroupKFold by age.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ages = np.repeat(np.arange(20, 80, 2), 4)                     # 30 ages x 4 templates
    >>> X = np.outer(ages, rng.normal(size=16)) + rng.normal(size=(120, 16))
    >>> round(grouped_r2(X, ages, ages), 2) > 0.9
    True
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from jaxtyping import Float, Shaped
from scipy import linalg
from sklearn.linear_model import RidgeClassifier
from sklearn.metrics import balanced_accuracy_score, r2_score
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medinterp.errors import MedinterpError


def _check(X, y, groups, n_splits, name):
    X = np.asarray(X, dtype=float)
    y = np.asarray(y)
    groups = np.asarray(groups)
    if X.ndim != 2 or len(y) != len(X) or len(groups) != len(X):
        raise MedinterpError(f"{name}: X must be [n, d] with one y and one group per row; "
                             f"got X {X.shape}, y {y.shape}, groups {groups.shape}")
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise MedinterpError(f"{name}: {n_groups} groups but n_splits={n_splits}; need at least one group per fold")
    return X, y, groups


def linear_probe(alpha: float = 1.0) -> Any:
    """The categorical probe: standardisation + a least-squares (ridge) linear classifier
    (``sklearn.linear_model.RidgeClassifier``, one-vs-rest, closed form).

    Why not logistic regression: on Gemma 3 270M's drug reads (304 prompts, 64 PCA dims, 15 classes,
    5 item-grouped folds) lbfgs logistic regression took 50-130 ms per cross-validation against 20 ms, with
    the same balanced accuracy (0.09-0.21 vs 0.08-0.27 over layers); the map fits ~80 per concept set.
    """
    return make_pipeline(StandardScaler(), RidgeClassifier(alpha=alpha))


def _standardise(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``StandardScaler`` fitted on the training rows (population std; a constant feature keeps scale 1)."""
    mu = X_train.mean(0)
    sd = X_train.std(0)
    # sklearn's rule for a constant feature (_is_constant_feature): var below its rounding bound -> scale 1
    eps = np.finfo(np.float64).eps
    var, n = sd ** 2, len(X_train)
    sd = np.where(var <= n * eps * var + (n * mu * eps) ** 2, 1.0, sd)
    return (X_train - mu) / sd, (X_test - mu) / sd


def out_of_fold_ridge(
    X: Float[np.ndarray, "n d"],
    Y: Float[np.ndarray, "n k"],
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    alpha: float = 1.0,
) -> Float[np.ndarray, "n k"]:
    """Out-of-fold predictions of ``StandardScaler() -> Ridge(alpha)`` (intercept, closed form).

    The same numbers as ``cross_val_predict(make_pipeline(StandardScaler(), Ridge(alpha)), X, Y, cv=splits)``
    (sklearn's ``cholesky`` solver: the n x n kernel system when a fold has fewer rows than features, the
    d x d normal equations otherwise; checked against it in the tests to 1e-8). Written out because the map
    fits ~1,300 of these per run kind on a few hundred rows x 64 features, where sklearn's per-call
    input validation is ~95% of the time (9 ms vs 0.3 ms per cross-validation on Gemma 3 270M's reads).

    Args:
        X: ``[n, d]`` features.
        Y: ``[n, k]`` targets (``[n]`` is read as one column).
        splits: ``(train, test)`` index pairs whose test parts cover every row once.
        alpha: L2 strength on the standardised features.

    Returns:
        ``[n, k]`` predictions (``[n]`` when ``Y`` was 1-D), each row from the fold that held it out.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    one = Y.ndim == 1
    Y = Y[:, None] if one else Y
    out = np.full(Y.shape, np.nan)
    for train, test in splits:
        out[test] = _ridge_fold(X[train], Y[train], X[test], alpha)
    if np.isnan(out).any():
        raise MedinterpError("out_of_fold_ridge: the test folds do not cover every row")
    return out[:, 0] if one else out


def _ridge_fold(X_train: np.ndarray, Y_train: np.ndarray, X_test: np.ndarray, alpha: float) -> np.ndarray:
    """Test-row predictions of ``StandardScaler -> Ridge(alpha)`` fitted on one training fold."""
    Z, Zt = _standardise(X_train, X_test)
    z_mean, y_mean = Z.mean(0), Y_train.mean(0)
    Zc, Yc = Z - z_mean, Y_train - y_mean
    n, d = Zc.shape
    if d > n:  # dual (kernel) form, as sklearn's _solve_cholesky_kernel
        K = Zc @ Zc.T
        K.flat[:: n + 1] += alpha
        W = Zc.T @ linalg.solve(K, Yc, assume_a="pos", overwrite_a=True)
    else:
        A = Zc.T @ Zc
        A.flat[:: d + 1] += alpha
        W = linalg.solve(A, Zc.T @ Yc, assume_a="pos", overwrite_a=True)
    return Zt @ W + (y_mean - z_mean @ W)


def ridge_classifier_oof(
    X: Float[np.ndarray, "n d"],
    y: Shaped[np.ndarray, "n"],
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    alpha: float = 1.0,
) -> np.ndarray:
    """Out-of-fold class predictions of :func:`linear_probe` (``StandardScaler -> RidgeClassifier``).

    RidgeClassifier regresses on the labels coded -1/+1 (one column per class; one column for two
    classes) and predicts the largest decision value (two classes: the second where it is > 0); here on
    :func:`out_of_fold_ridge`. Classes are those of all of ``y`` (sorted, as sklearn's LabelBinarizer),
    so a training fold missing a class is not an error but never predicts it.
    """
    y = np.asarray(y)
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise MedinterpError("ridge_classifier_oof: need at least 2 classes")
    # per fold, sklearn binarises over the classes *present in training*; a class absent from a training
    # fold then has no column. Match that: fit per fold on its own classes.
    pred = np.empty(len(y), dtype=classes.dtype)
    for train, test in splits:
        present = np.unique(codes[train])
        if len(present) == 1:  # one class in training: sklearn's binariser gives a constant -1 column
            pred[test] = classes[present[0]]
            continue
        Yb = np.where(codes[train, None] == present[None, :], 1.0, -1.0)
        if len(present) == 2:
            Yb = Yb[:, 1:]
        dec = _ridge_fold(np.asarray(X[train], np.float64), Yb, np.asarray(X[test], np.float64), alpha)
        idx = (dec[:, 0] > 0).astype(int) if len(present) == 2 else dec.argmax(1)
        pred[test] = classes[present[idx]]
    return pred


def grouped_folds(y: Sequence[Any], groups: Sequence[Any], continuous: bool = False, *, n_splits: int = 5,
                  seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` index pairs that never split a group (item, or age for age).

    Categorical ``y``: :class:`~sklearn.model_selection.StratifiedGroupKFold` (classes balanced across
    folds, so no training fold loses a class), or plain GroupKFold when every class has fewer groups
    than folds (stratifying is then impossible: sklearn raises). Continuous ``y``: GroupKFold.
    ``n_splits`` is capped at the number of groups.

    Example:
        >>> folds = grouped_folds(["a", "a", "b", "b"] * 3, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5], n_splits=3)
        >>> len(folds), all(len(set(np.repeat(np.arange(6), 2)[te])) == 2 for _, te in folds)
        (3, True)
    """
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise MedinterpError(f"grouped cross-validation needs at least 2 groups (items); got {n_groups}")
    n_folds = min(int(n_splits), n_groups)
    dummy = np.zeros((len(groups), 1))
    if continuous:
        cv = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        return list(cv.split(dummy, np.asarray(y, float), groups))
    y = np.asarray([str(v) for v in y])
    _, codes = np.unique(y, return_inverse=True)
    largest = max(len(np.unique(groups[codes == c])) for c in range(codes.max() + 1))
    if largest >= n_folds:
        cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    else:
        cv = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # small classes: sklearn warns that a class has < n_splits members
        warnings.simplefilter("ignore", UserWarning)
        return list(cv.split(dummy, y, groups))


def probe_balanced_accuracy(
    X: Float[np.ndarray, "n_obs d"],
    y: Shaped[np.ndarray, "n_obs"],
    groups: Shaped[np.ndarray, "n_obs"],
    n_splits: int = 5,
    seed: int = 0,
    alpha: float = 1.0,
) -> float:
    """Balanced accuracy of a linear probe under item-grouped cross-validation.

    The probe is :func:`linear_probe` (standardisation + ridge classifier); folds are
    :func:`grouped_folds` (StratifiedGroupKFold: all prompts of an item in one fold, classes balanced
    across folds). The score is the balanced accuracy of the pooled out-of-fold predictions
    (chance = 1 / n_classes).

    Args:
        X: ``[n_obs, d]`` activations, one row per prompt.
        y: class label per prompt.
        groups: item id per prompt (all templates of an item share it).
        n_splits: number of folds.
        seed: shuffling seed of the folds.
        alpha: L2 strength of the ridge classifier (on standardised features).

    Returns:
        Balanced accuracy in [0, 1].
    """
    X, y, groups = _check(X, y, groups, n_splits, "probe_balanced_accuracy")
    if len(np.unique(y)) < 2:
        raise MedinterpError("probe_balanced_accuracy: need at least 2 classes in y")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pred = ridge_classifier_oof(X, y, grouped_folds(y, groups, n_splits=n_splits, seed=seed), alpha)
    return float(balanced_accuracy_score(y, pred))


def grouped_r2(
    X: Float[np.ndarray, "n_obs d"],
    y: Float[np.ndarray, "n_obs"],
    groups: Shaped[np.ndarray, "n_obs"],
    n_splits: int = 5,
    alpha: float = 1.0,
    seed: int = 0,
    grouped: bool = True,
) -> float:
    """Out-of-fold R² of a ridge regression, folds grouped (e.g. by age for the age family).

    With ``grouped=True`` (the default, and the only setting for reported numbers) the folds are
    :class:`sklearn.model_selection.GroupKFold`: every test group (age) is absent from training, so a
    lookup table of per-age vectors cannot score. ``grouped=False`` uses a plain shuffled KFold over
    rows; it leaks the test groups into training and exists only to show that leak.

    Args:
        X: ``[n_obs, d]`` activations.
        y: numeric target per row (e.g. the age).
        groups: group per row (the age itself for age; the item otherwise).
        n_splits: number of folds.
        alpha: ridge L2 strength (on standardised features).
        seed: shuffling seed of the folds.
        grouped: group the folds (True) or not (False, leaky).

    Returns:
        R² of the pooled out-of-fold predictions (``sklearn.metrics.r2_score``); can be negative.
    """
    X, y, groups = _check(X, y, groups, n_splits, "grouped_r2")
    y = y.astype(float)
    if grouped:
        cv = grouped_folds(y, groups, True, n_splits=n_splits, seed=seed)
    else:
        cv = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
    splits = list(cv.split(X)) if isinstance(cv, KFold) else cv
    pred = out_of_fold_ridge(X, y, splits, alpha)  # = cross_val_predict(StandardScaler -> Ridge(alpha))
    return float(r2_score(y, pred))


# ============================================================================ refit nulls (issue 20)
def ridge_fold_operator(
    X_train: Float[np.ndarray, "n_train d"],
    X_test: Float[np.ndarray, "n_test d"],
    alpha: float = 1.0,
) -> Float[np.ndarray, "n_test n_train"]:
    """``StandardScaler -> Ridge(alpha)`` fitted on one fold, as a linear map of the training targets.

    For any targets ``Y [n_train, k]`` the fold's test predictions are ``M @ Y + Y.mean(0)``: the same
    numbers as :func:`out_of_fold_ridge` on that fold (primal or dual form as there; equal up to
    rounding). The features never change under a label permutation, so one ``M`` per fold scores any
    number of permuted label sets with one matrix product (the refit null of
    :func:`medinterp.techniques.geometry.inference.permutation_levels`).

    Example:
        >>> rng = np.random.default_rng(0); X = rng.normal(size=(30, 4)); y = rng.normal(size=(30, 1))
        >>> M = ridge_fold_operator(X[:20], X[20:])
        >>> bool(np.allclose(M @ y[:20] + y[:20].mean(0), _ridge_fold(X[:20], y[:20], X[20:], 1.0)))
        True
    """
    Z, Zt = _standardise(np.asarray(X_train, np.float64), np.asarray(X_test, np.float64))
    z_mean = Z.mean(0)
    Zc = Z - z_mean
    Zt = Zt - z_mean
    n, d = Zc.shape
    if d > n:  # dual: W = Zcᵀ K⁻¹ Yc and Zcᵀ K⁻¹ 1 = 0 (K 1 = alpha 1), so Yc may be Y
        K = Zc @ Zc.T
        K.flat[:: n + 1] += alpha
        return linalg.solve(K, Zc @ Zt.T, assume_a="pos", overwrite_a=True).T
    A = Zc.T @ Zc
    A.flat[:: d + 1] += alpha
    return Zt @ linalg.solve(A, Zc.T, assume_a="pos", overwrite_a=True)


def weighted_ridge_fold(
    X_train: Float[np.ndarray, "n_train d"],
    weights: Float[np.ndarray, "n_train"],
    Y_train: Float[np.ndarray, "n_train k"],
    X_test: Float[np.ndarray, "n_test d"],
    alpha: float = 1.0,
) -> Float[np.ndarray, "n_test k"]:
    """Test predictions of ``StandardScaler -> Ridge(alpha)`` fitted on training rows repeated ``weights``
    times (integer weights: a bootstrap sample), without copying rows.

    Row ``i`` counted ``w_i`` times gives the weighted mean and (population) variance of the scaler and
    the weighted normal equations of the ridge (primal form; the dual's solution is the same).

    Example:
        >>> rng = np.random.default_rng(0); X = rng.normal(size=(30, 4)); y = rng.normal(size=(30, 2))
        >>> w = np.array([2] * 5 + [1] * 15)
        >>> rep = np.repeat(np.arange(20), w)
        >>> bool(np.allclose(weighted_ridge_fold(X[:20], w, y[:20], X[20:]), _ridge_fold(X[rep], y[rep], X[20:], 1.0)))
        True
    """
    X = np.asarray(X_train, np.float64)
    w = np.asarray(weights, np.float64)
    Y = np.asarray(Y_train, np.float64)
    Y = Y[:, None] if Y.ndim == 1 else Y
    Xt = np.asarray(X_test, np.float64)
    n = w.sum()
    if not n > 0:
        raise MedinterpError("weighted_ridge_fold: the training weights sum to 0")
    mu = w @ X / n
    var = w @ (X - mu) ** 2 / n
    eps = np.finfo(np.float64).eps
    sd = np.sqrt(var)
    sd = np.where(var <= n * eps * var + (n * mu * eps) ** 2, 1.0, sd)  # sklearn's constant-feature rule
    Z, Zt = (X - mu) / sd, (Xt - mu) / sd
    z_mean, y_mean = w @ Z / n, w @ Y / n
    Zc, Yc = Z - z_mean, Y - y_mean
    Zw = Zc * w[:, None]
    A = Zw.T @ Zc
    A.flat[:: A.shape[0] + 1] += alpha
    W = linalg.solve(A, Zw.T @ Yc, assume_a="pos", overwrite_a=True)
    return Zt @ W + (y_mean - z_mean @ W)


def weighted_ridge_fold_stack(
    X_train: Float[np.ndarray, "L n_train d"],
    weights: Float[np.ndarray, "n_train"],
    Y_train: Float[np.ndarray, "n_train k"],
    X_test: Float[np.ndarray, "L n_test d"],
    alpha: float = 1.0,
) -> Float[np.ndarray, "L n_test k"]:
    """:func:`weighted_ridge_fold` for ``L`` feature sets of one width at once (same rows, weights and
    targets; one batched solve instead of ``L`` calls)."""
    X = np.asarray(X_train, np.float64)
    Xt = np.asarray(X_test, np.float64)
    w = np.asarray(weights, np.float64)
    Y = np.asarray(Y_train, np.float64)
    Y = Y[:, None] if Y.ndim == 1 else Y
    n = w.sum()
    if not n > 0:
        raise MedinterpError("weighted_ridge_fold_stack: the training weights sum to 0")
    mu = np.einsum("i,lid->ld", w, X) / n
    Xc = X - mu[:, None, :]
    var = np.einsum("i,lid->ld", w, Xc ** 2) / n
    eps = np.finfo(np.float64).eps
    sd = np.sqrt(var)
    sd = np.where(var <= n * eps * var + (n * mu * eps) ** 2, 1.0, sd)  # sklearn's constant-feature rule
    Zc = Xc / sd[:, None, :]  # weighted-centred already (z_mean = 0 up to rounding)
    z_mean = np.einsum("i,lid->ld", w, Zc) / n
    Zc = Zc - z_mean[:, None, :]
    Zt = (Xt - mu[:, None, :]) / sd[:, None, :] - z_mean[:, None, :]
    y_mean = w @ Y / n
    Zw = Zc * w[None, :, None]
    A = np.matmul(Zw.transpose(0, 2, 1), Zc)
    d = A.shape[1]
    A[:, np.arange(d), np.arange(d)] += alpha
    W = np.linalg.solve(A, np.matmul(Zw.transpose(0, 2, 1), Y - y_mean))
    return np.matmul(Zt, W) + y_mean
