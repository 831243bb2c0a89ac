"""Technique 1: activation geometry per layer (METHOD.md §1).

For a concept set, the residual stream (``blocks.{l}.hook_resid_post`` of every block, plus the
embedding output as layer ``-1``) is read at one position per prompt (last token by default). Each
layer is embedded with UMAP to 30 dimensions (for metrics) and to 2 dimensions (for plots), and
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

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from jaxtyping import Float

from medinterp.errors import MedinterpError
from medinterp.results import Result, make_provenance

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
]

TABLE_COLUMNS = [
    "layer",
    "metric",
    "space",
    "label",
    "group",
    "value",
    "ci_low",
    "ci_high",
    "baseline",
    "baseline_high",
    "p_value",
    "n",
]


# ======================================================================== bootstrap helpers
def _boot_weights(n: int, n_boot: int, seed: int) -> Float[np.ndarray, "b n"]:
    """Multinomial resampling counts: row b says how often each of the n points is drawn."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    w = np.zeros((n_boot, n), dtype=np.float64)
    np.add.at(w, (np.arange(n_boot)[:, None], idx), 1.0)
    return w


def _strat_weights(cells: np.ndarray, n_boot: int, seed: int) -> Float[np.ndarray, "b n"]:
    """Resampling counts that keep every cell's size: points are drawn within their own cell."""
    rng = np.random.default_rng(seed)
    n = len(cells)
    w = np.zeros((n_boot, n), dtype=np.float64)
    rows = np.arange(n_boot)[:, None]
    for c in np.unique(cells):
        members = np.flatnonzero(cells == c)
        draw = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        np.add.at(w, (rows, draw), 1.0)
    return w


def _cluster_weights(units: Sequence[Any], n_boot: int, seed: int) -> Float[np.ndarray, "b n"]:
    """Resampling counts that draw whole units (e.g. templates) with replacement; each point gets
    the count of its unit. Used where every unit covers all cells (a crossed design), so a
    replicate changes which templates are averaged, not the template mix of single cells."""
    codes, names = _encode(units)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(names), size=(n_boot, len(names)))
    cnt = np.zeros((n_boot, len(names)))
    np.add.at(cnt, (np.arange(n_boot)[:, None], draw), 1.0)
    return cnt[:, codes]


def _ci(reps: np.ndarray, ci: float) -> tuple[float, float]:
    reps = np.asarray(reps, dtype=float)
    reps = reps[np.isfinite(reps)]
    if reps.size < 2:
        return math.nan, math.nan
    a = (1 - ci) / 2
    lo, hi = np.quantile(reps, [a, 1 - a])
    return float(lo), float(hi)


def _weighted_means(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean of per-point ``values`` [n] for each weight row [b, n], ignoring NaN values."""
    ok = np.isfinite(values)
    v = np.where(ok, values, 0.0)
    ww = w * ok[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ww @ v) / ww.sum(1)


def _encode(labels: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """Integer codes and the sorted list of distinct labels."""
    arr = np.asarray([str(x) for x in labels])
    names, codes = np.unique(arr, return_inverse=True)
    return codes.astype(np.int64), names.tolist()


# ======================================================================== silhouette
def _pairwise(X: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    from sklearn.metrics import pairwise_distances

    D = pairwise_distances(np.asarray(X, dtype=np.float64), metric=metric)
    np.fill_diagonal(D, 0.0)
    return D


def silhouette_samples(D: Float[np.ndarray, "n n"], codes: np.ndarray) -> np.ndarray:
    """Per-point silhouette values from a distance matrix, vectorised over label vectors.

    Same definition as ``sklearn.metrics.silhouette_samples`` (points in singleton clusters get 0),
    but ``codes`` may be a stack ``[p, n]`` of label vectors (e.g. permutations), which share one
    matrix product.

    Args:
        D: symmetric distance matrix with zero diagonal.
        codes: integer labels ``[n]`` or ``[p, n]`` with values ``0..k-1``.

    Returns:
        ``[n]`` or ``[p, n]`` silhouette values.

    Example:
        >>> D = _pairwise(np.array([[0.], [0.1], [5.], [5.1]]))
        >>> np.round(silhouette_samples(D, np.array([0, 0, 1, 1])), 2).tolist()
        [0.98, 0.98, 0.98, 0.98]
    """
    codes = np.asarray(codes)
    single = codes.ndim == 1
    C = np.atleast_2d(codes)
    p, n = C.shape
    k = int(C.max()) + 1
    counts = np.stack([np.bincount(c, minlength=k) for c in C]).astype(float)  # [p, k]
    sums = np.zeros((p, n, k))
    for j in range(p):  # summed distance of every point to each cluster: a segment sum, O(n²) per vector
        order = np.argsort(C[j], kind="stable")
        present = counts[j] > 0
        starts = np.r_[0, np.cumsum(counts[j][present])[:-1]].astype(int)
        sums[j][:, present] = np.add.reduceat(D[:, order], starts, axis=1)
    onehot = np.zeros((p, n, k), dtype=bool)
    onehot[np.arange(p)[:, None], np.arange(n)[None, :], C] = True
    own = np.take_along_axis(sums, C[..., None], axis=2)[..., 0]
    own_count = np.take_along_axis(counts, C, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = own / (own_count - 1)
        mean_other = sums / counts[:, None, :]
    mean_other[onehot] = np.inf
    mean_other[np.broadcast_to(counts[:, None, :] == 0, mean_other.shape)] = np.inf
    b = mean_other.min(2)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (b - a) / np.maximum(a, b)
    s[(own_count <= 1) | ~np.isfinite(s)] = 0.0
    return s[0] if single else s


def silhouette(
    X: Float[np.ndarray, "n d"],
    labels: Sequence[Any],
    *,
    metric: str = "euclidean",
    n_perm: int = 100,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    D: np.ndarray | None = None,
) -> dict[str, float]:
    """Silhouette of ground-truth labels, with a bootstrap CI and a label-permutation baseline.

    The CI resamples points and averages their (fixed) per-point silhouette values. The baseline
    shuffles the labels ``n_perm`` times on the same points: ``baseline`` is the mean shuffled
    silhouette, ``baseline_high`` its 95th percentile, and ``p_value`` the one-sided permutation
    p-value ``(1 + #{shuffled >= observed}) / (1 + n_perm)``.

    Args:
        X: points ``[n, d]``.
        labels: one label per point (at least 2 distinct labels).
        metric: distance (any ``sklearn.metrics.pairwise_distances`` metric).
        n_perm: label permutations for the baseline (0 = none).
        n_boot: bootstrap replicates.
        ci: confidence level.
        seed: RNG seed.
        D: precomputed distance matrix (skips computing it from ``X``).

    Returns:
        dict with ``value, ci_low, ci_high, baseline, baseline_high, p_value, n``.

    Example:
        >>> X = np.r_[np.zeros((5, 2)), np.ones((5, 2)) * 4] + np.arange(10)[:, None] * 0.01
        >>> round(silhouette(X, list("aaaaabbbbb"), n_perm=10)["value"], 2)
        1.0
    """
    codes, names = _encode(labels)
    n = len(codes)
    if len(names) < 2 or len(names) >= n:
        raise MedinterpError(
            f"silhouette needs 2..n-1 distinct labels for n={n} points; got {len(names)} distinct"
        )
    if D is None:
        D = _pairwise(X, metric)
    s = silhouette_samples(D, codes)
    value = float(s.mean())
    lo, hi = _ci(_weighted_means(s, _boot_weights(n, n_boot, seed)), ci) if n_boot else (math.nan, math.nan)
    out = {"value": value, "ci_low": lo, "ci_high": hi, "baseline": math.nan, "baseline_high": math.nan,
           "p_value": math.nan, "n": n}
    if n_perm:
        rng = np.random.default_rng(seed + 1)
        perms = np.stack([rng.permutation(codes) for _ in range(n_perm)])
        null = np.concatenate([silhouette_samples(D, perms[i : i + 25]).mean(1) for i in range(0, n_perm, 25)])
        out.update(
            baseline=float(null.mean()),
            baseline_high=float(np.quantile(null, 0.95)),
            p_value=float((1 + np.sum(null >= value)) / (1 + n_perm)),
        )
    return out


# ======================================================================== anisotropy / linearity
def local_anisotropy(
    X: Float[np.ndarray, "n d"], k: int = 20, *, D: np.ndarray | None = None
) -> Float[np.ndarray, " n"]:
    """Per-point local anisotropy ``1 - λ2/λ1`` over the point and its ``k`` nearest neighbours.

    λ1 ≥ λ2 are the two largest eigenvalues of the covariance of the ``k + 1`` points (computed from
    their small Gram matrix, so high ``d`` is cheap). Points on a line give 1, an isotropic cloud
    gives values near 0. ``k`` is capped at ``n - 1``; a neighbourhood of identical points gives NaN.
    ``D`` (euclidean distances of ``X``) may be passed to skip recomputing them; ties between
    equidistant neighbours are broken arbitrarily.

    Example:
        >>> t = np.linspace(0, 1, 50)[:, None]
        >>> round(float(local_anisotropy(np.c_[t, 2 * t, -t]).mean()), 3)
        1.0
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    k = int(min(k, n - 1))
    if k < 2:
        raise MedinterpError(f"local anisotropy needs at least 3 points; got {n}")
    G = X @ X.T
    if D is None:
        sq = np.diag(G)
        D = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2 * G, 0, None))
    D = D.copy()
    np.fill_diagonal(D, -1.0)  # each point is its own first neighbour
    idx = np.argpartition(D, k, axis=1)[:, : k + 1]  # the point and its k nearest neighbours
    # Gram matrix of each centred neighbourhood, gathered from G: same nonzero spectrum as its covariance
    g = G[idx[:, :, None], idx[:, None, :]]  # [n, k+1, k+1]
    g = g - g.mean(1, keepdims=True) - g.mean(2, keepdims=True) + g.mean((1, 2), keepdims=True)
    ev = np.linalg.eigvalsh(g)  # ascending
    l1, l2 = ev[:, -1], ev[:, -2]
    with np.errstate(invalid="ignore", divide="ignore"):
        a = 1.0 - np.clip(l2, 0, None) / l1
    a[~(l1 > 1e-12 * max(1.0, float(np.abs(ev).max())))] = np.nan
    return a


def anisotropy(
    X: Float[np.ndarray, "n d"], *, k: int = 20, n_boot: int = 200, ci: float = 0.95, seed: int = 0,
    D: np.ndarray | None = None,
) -> dict[str, float]:
    """Mean local anisotropy (:func:`local_anisotropy`) with a bootstrap CI over points."""
    a = local_anisotropy(X, k, D=D)
    lo, hi = _ci(_weighted_means(a, _boot_weights(len(a), n_boot, seed)), ci) if n_boot else (math.nan,) * 2
    return {"value": float(np.nanmean(a)) if np.isfinite(a).any() else math.nan, "ci_low": lo, "ci_high": hi,
            "n": int(len(a))}


def _oof_predictions(X: np.ndarray, y: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = np.empty_like(y)
    folds = KFold(n_splits=min(n_splits, len(y)), shuffle=True, random_state=seed)
    for train, test in folds.split(X):
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15)))
        model.fit(X[train], y[train])
        pred[test] = model.predict(X[test])
    return pred


def _r2_weighted(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> np.ndarray:
    sw = w.sum(1)
    ybar = (w @ y) / sw
    ss_res = w @ (y - pred) ** 2
    ss_tot = (w * (y[None, :] - ybar[:, None]) ** 2).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - ss_res / ss_tot


def linearity_r2(
    X: Float[np.ndarray, "n d"],
    y: Sequence[float],
    *,
    n_splits: int = 5,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Cross-validated R² of a linear (ridge) model predicting ``y`` from ``X``.

    Features are standardised and the ridge penalty is chosen inside each training fold (RidgeCV),
    so high-dimensional raw activations do not overfit. R² is computed from the out-of-fold
    predictions; the CI resamples (y, prediction) pairs. 1 = ``y`` is a linear function of the
    embedding; ≤ 0 = no better than predicting the mean.

    Example:
        >>> t = np.linspace(0, 10, 60)
        >>> round(linearity_r2(np.c_[t, -t], t, n_boot=0)["value"], 3)
        1.0
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(y) != len(X) or len(y) < 4:
        raise MedinterpError(f"linearity needs ≥ 4 points with one value each; got X {X.shape}, y {y.shape}")
    pred = _oof_predictions(X, y, n_splits, seed)
    value = float(_r2_weighted(y, pred, np.ones((1, len(y))))[0])
    lo, hi = _ci(_r2_weighted(y, pred, _boot_weights(len(y), n_boot, seed)), ci) if n_boot else (math.nan,) * 2
    return {"value": value, "ci_low": lo, "ci_high": hi, "n": int(len(y))}


# ======================================================================== age discontinuity
def _cell_means(X: np.ndarray, cell_idx: list[np.ndarray], w: np.ndarray | None) -> np.ndarray:
    """Means of X over each cell; with weights ``w`` [b, n] returns ``[b, cells, d]``."""
    if w is None:
        return np.stack([X[i].mean(0) for i in cell_idx])
    out = np.empty((w.shape[0], len(cell_idx), X.shape[1]))
    for c, i in enumerate(cell_idx):
        wc = w[:, i]
        out[:, c] = (wc @ X[i]) / wc.sum(1, keepdims=True)
    return out


def _consecutive_steps(G: np.ndarray, cells: list[np.ndarray], W: np.ndarray) -> np.ndarray:
    """Distances between the weighted means of consecutive cells, from the Gram matrix ``G``.

    ``‖m_a − m_b‖² = q_a + q_b − 2 c_ab`` with ``q_a = w_aᵀ G_aa w_a / s_a²`` and
    ``c_ab = w_aᵀ G_ab w_b / (s_a s_b)``: per replicate this costs O(cell size²), not O(d), so
    bootstrapping the steps of raw 640-d activations is as cheap as of a 2-d embedding.

    Args:
        G: Gram matrix of the (centred) points.
        cells: point indices of each cell, in order.
        W: weights ``[b, n]`` (a row of ones = the plain means).

    Returns:
        ``[b, cells - 1]`` step lengths.
    """
    q = np.empty((W.shape[0], len(cells)))
    for c, i in enumerate(cells):
        wc = W[:, i]
        q[:, c] = ((wc @ G[np.ix_(i, i)]) * wc).sum(1) / wc.sum(1) ** 2
    steps = np.empty((W.shape[0], len(cells) - 1))
    for c in range(len(cells) - 1):
        i, j = cells[c], cells[c + 1]
        wi, wj = W[:, i], W[:, j]
        cross = ((wi @ G[np.ix_(i, j)]) * wj).sum(1) / (wi.sum(1) * wj.sum(1))
        steps[:, c] = q[:, c] + q[:, c + 1] - 2 * cross
    return np.sqrt(np.clip(steps, 0, None))


def _centred_gram(X: np.ndarray) -> np.ndarray:
    Xc = np.asarray(X, dtype=np.float64)
    Xc = Xc - Xc.mean(0)
    return Xc @ Xc.T


def discontinuity_profile(
    X: Float[np.ndarray, "n d"],
    ages: Sequence[float],
    groups: Sequence[Any] | None = None,
) -> pd.DataFrame:
    """Distance between the mean embeddings of consecutive ages, against the median step.

    Ages are sorted and consecutive distinct values are paired (1→2, 2→3, ...); within each group
    (e.g. sex) separately when ``groups`` is given, else pooled.

    Returns:
        DataFrame with columns ``group, age_from, age_to, step, median_step, ratio``
        (``ratio = step / median_step``; a planted jump shows as a ratio well above 1).

    Example:
        >>> ages = np.repeat(np.arange(10), 3)
        >>> X = ages[:, None] + (ages[:, None] >= 5) * 10.0
        >>> p = discontinuity_profile(X, ages)
        >>> p.loc[p.ratio.idxmax(), ["age_from", "age_to"]].tolist(), float(p.ratio.max())
        ([4.0, 5.0], 11.0)
    """
    X = np.asarray(X, dtype=np.float64)
    ages = np.asarray(ages, dtype=np.float64)
    g = np.asarray(["all"] * len(ages) if groups is None else [str(x) for x in groups])
    G = _centred_gram(X)
    rows = []
    for grp in sorted(set(g.tolist())):
        sel = g == grp
        uniq = np.unique(ages[sel])
        if len(uniq) < 3:
            continue
        cells = [np.flatnonzero(sel & (ages == a)) for a in uniq]
        steps = _consecutive_steps(G, cells, np.ones((1, len(ages))))[0]
        med = float(np.median(steps))
        for a0, a1, st in zip(uniq[:-1], uniq[1:], steps):
            rows.append((grp, float(a0), float(a1), float(st), med, st / med if med > 0 else math.nan))
    return pd.DataFrame(rows, columns=["group", "age_from", "age_to", "step", "median_step", "ratio"])


def step_ratio(
    X: Float[np.ndarray, "n d"],
    ages: Sequence[float],
    jump: tuple[float, float] = (17, 18),
    *,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    units: Sequence[Any] | None = None,
) -> dict[str, float]:
    """Step between the mean embeddings at ``jump[0]`` and ``jump[1]`` divided by the median step.

    The CI recomputes all age means, steps and the median on resamples. With ``units`` (e.g. the
    template, or template × sex, of each prompt; every unit covering every age) whole units are
    resampled: resampling prompts within an age instead would change each age's template mix
    independently, which adds spurious steps and biases the ratio towards 1 (seen on Gemma, where
    templates dominate the geometry). Without ``units`` prompts are resampled within each age. ``baseline`` is 1 (a step as large as the median one) and
    ``baseline_high`` the 95th percentile of all consecutive step ratios: how large the largest
    ordinary steps are.

    Example:
        >>> ages = np.repeat(np.arange(10, 30), 4)
        >>> rng = np.random.default_rng(0)
        >>> X = ages[:, None] * 1.0 + (ages[:, None] >= 18) * 8.0 + rng.normal(0, .1, (80, 3))
        >>> r = step_ratio(X, ages, (17, 18), n_boot=50)
        >>> bool(r["value"] > 5 and r["ci_low"] > 3)
        True
    """
    X = np.asarray(X, dtype=np.float64)
    ages = np.asarray(ages, dtype=np.float64)
    uniq = np.unique(ages)
    if jump[0] not in uniq or jump[1] not in uniq or len(uniq) < 3:
        raise MedinterpError(f"step_ratio: ages {jump[0]} and {jump[1]} (and ≥ 3 ages) needed; have {uniq.tolist()[:10]}…")
    j = int(np.searchsorted(uniq, jump[0]))
    if uniq[j + 1] != jump[1]:
        raise MedinterpError(f"step_ratio: {jump[0]} and {jump[1]} are not consecutive ages in the data")
    cells = [np.flatnonzero(ages == a) for a in uniq]
    G = _centred_gram(X)

    def ratios(W: np.ndarray) -> np.ndarray:  # [b, n] -> [b, ages-1]
        steps = _consecutive_steps(G, cells, W)
        with np.errstate(invalid="ignore", divide="ignore"):
            return steps / np.median(steps, axis=-1, keepdims=True)

    r = ratios(np.ones((1, len(ages))))[0]
    out = {"value": float(r[j]), "ci_low": math.nan, "ci_high": math.nan, "baseline": 1.0,
           "baseline_high": float(np.quantile(r, 0.95)), "p_value": math.nan, "n": int(len(ages))}
    if n_boot:
        w = (_cluster_weights(units, n_boot, seed) if units is not None
             else _strat_weights(np.searchsorted(uniq, ages), n_boot, seed))
        with np.errstate(invalid="ignore", divide="ignore"):
            rb = ratios(w)[:, j]
        out["ci_low"], out["ci_high"] = _ci(rb, ci)
        # share of all ordinary steps that are at least as large: an empirical rank p-value
        out["p_value"] = float((np.sum(r >= r[j])) / len(r))
    return out


# ======================================================================== progression
def _progression_stats(means: np.ndarray) -> np.ndarray:
    """``[..., 4]`` (csfs, csls, spearman, circularity) for stage means ``[..., K, d]`` in stage order.

    Vectorised over leading (bootstrap) axes; Spearman uses average ranks (ties-correct).
    """
    from scipy.stats import rankdata

    d0 = np.linalg.norm(means - means[..., :1, :], axis=-1)  # [..., K] distance from the first stage
    dl = np.linalg.norm(means - means[..., -1:, :], axis=-1)  # distance from the last stage
    csfs = 1 + np.argmin(d0[..., 1:], axis=-1)
    csls = np.argmin(dl[..., :-1], axis=-1)
    far = d0[..., 1:].max(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        circ = np.where(far > 0, 1.0 - d0[..., -1] / far, np.nan)
    r = rankdata(d0[..., 1:], axis=-1)
    r = r - r.mean(-1, keepdims=True)
    x = np.arange(r.shape[-1], dtype=float)
    x = x - x.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (r * x).sum(-1) / np.sqrt((r**2).sum(-1) * (x**2).sum())
    return np.stack([csfs.astype(float), csls.astype(float), rho, circ], axis=-1)


def progression_scores(
    X: Float[np.ndarray, "n d"],
    disease: Sequence[Any],
    stage: Sequence[float],
    *,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    units: Sequence[Any] | None = None,
) -> pd.DataFrame:
    """Per-disease progression geometry from the mean embedding of each stage.

    For each disease with ≥ 3 stages (stages sorted; several prompts per stage are averaged):

    * ``csfs``: index (position in stage order) of the stage closest to the first stage;
    * ``csls``: index of the stage closest to the last stage (a small value = the path returns
      towards the start);
    * ``spearman``: Spearman ρ of stage index vs distance from the first stage (1 = every stage
      further away than the previous one);
    * ``circularity``: ``1 - d(first, last) / max_j d(first, j)``: 0 when the last stage is the
      farthest from the first, near 1 when the last stage is back next to the first.

    CIs: with ``units`` (the template of each prompt) whole templates are resampled (see
    :func:`step_ratio` for why); otherwise prompts are resampled within each (disease, stage) cell.
    With one prompt per cell (or one unit) they are NaN.

    Returns:
        DataFrame with one row per disease and metric: ``group (disease), metric, value, ci_low,
        ci_high, n``.

    Example:
        >>> t = np.linspace(0, 0.95 * 2 * np.pi, 10)  # stages around a circle, the last back near the first
        >>> X = np.c_[np.cos(t), np.sin(t)]
        >>> df = progression_scores(X, ["d"] * 10, range(10), n_boot=0).set_index("metric")
        >>> float(df.loc["csls", "value"]), round(float(df.loc["circularity", "value"]), 2)
        (0.0, 0.84)
    """
    X = np.asarray(X, dtype=np.float64)
    dis = np.asarray([str(d) for d in disease])
    st = np.asarray(stage, dtype=np.float64)
    rows = []
    names = ("csfs", "csls", "spearman", "circularity")
    for d in sorted(set(dis.tolist())):
        sel = np.flatnonzero(dis == d)
        stages = np.unique(st[sel])
        if len(stages) < 3:
            continue
        cells = [sel[st[sel] == s] for s in stages]
        est = _progression_stats(_cell_means(X, cells, None))
        lows = highs = (math.nan,) * 4
        if n_boot and max(len(c) for c in cells) > 1 and (units is None or len(set(units)) > 1):
            sub = np.concatenate(cells)
            cell_id = np.concatenate([np.full(len(c), i) for i, c in enumerate(cells)])
            w_sub = (_cluster_weights([units[i] for i in sub], n_boot, seed) if units is not None
                     else _strat_weights(cell_id, n_boot, seed))
            local = [np.flatnonzero(cell_id == i) for i in range(len(cells))]
            with np.errstate(invalid="ignore", divide="ignore"):
                reps = _progression_stats(_cell_means(X[sub], local, w_sub))
            cis = [_ci(reps[:, i], ci) for i in range(4)]
            lows, highs = [c[0] for c in cis], [c[1] for c in cis]
        for i, name in enumerate(names):
            rows.append((d, name, est[i], lows[i], highs[i], int(len(sel))))
    return pd.DataFrame(rows, columns=["group", "metric", "value", "ci_low", "ci_high", "n"])


# ======================================================================== collapse
def _collapse_weighted(X: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean norm, mean pairwise cosine, participation ratio) for each weight row of ``W`` [b, n].

    A row of non-negative integer weights is a multiset of the points (all ones = the data, one zero =
    a jackknife replicate, multinomial counts = a bootstrap resample). Everything is evaluated in
    closed form from the n×n Gram matrix: no eigendecomposition per replicate.
    """
    norms = np.linalg.norm(X, axis=1)
    G = X @ X.T
    with np.errstate(invalid="ignore", divide="ignore"):
        U = np.nan_to_num(X / norms[:, None])
    Gc = U @ U.T
    sw = W.sum(1)
    norm_b = (W @ norms) / sw
    # pairs of distinct draws: all ordered pairs minus each draw paired with itself
    cos_b = (((W @ Gc) * W).sum(1) - W @ np.diag(Gc)) / (sw**2 - sw)
    # covariance C_w = A - mu mu^T with A = X^T diag(w) X / sw and mu = X^T w / sw
    Gw = W @ G  # [b, n]: (G w)_i = x_i . (sw mu)
    mu2 = np.einsum("bi,bi->b", Gw, W) / sw**2  # |mu|^2
    tr_c = (W @ np.diag(G)) / sw - mu2
    a_f2 = ((W @ (G * G)) * W).sum(1) / sw**2  # |A|_F^2
    mu_a_mu = np.einsum("bi,bi->b", W, (Gw / sw[:, None]) ** 2) / sw  # mu^T A mu
    c_f2 = a_f2 - 2 * mu_a_mu + mu2**2  # |C_w|_F^2
    with np.errstate(invalid="ignore", divide="ignore"):
        pr_b = tr_c**2 / c_f2
    # (numerically) identical vectors: no variance, so no spectrum to measure
    pr_b[~(tr_c > 1e-10 * np.maximum((W @ norms**2) / sw, 1e-300))] = np.nan
    return norm_b, cos_b, pr_b


def collapse_metrics(
    X: Float[np.ndarray, "n d"], *, n_boot: int = 200, ci: float = 0.95, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Residual norm, mean pairwise cosine and effective rank of a set of activations.

    * ``resid_norm``: mean L2 norm of the vectors;
    * ``mean_cosine``: mean cosine similarity over pairs of distinct prompts;
    * ``eff_rank``: participation ratio ``(Σλ)² / Σλ²`` of the covariance eigenvalues (1 = all
      variance on one axis; d = isotropic).

    CIs: a **delete-one jackknife** normal interval ``value ± z·se``, not the percentile bootstrap:
    a bootstrap resample repeats points, which lowers the effective rank and raises the mean cosine
    of the resample (a repeated pair has cosine 1), so percentile bootstrap intervals of these two
    statistics are biased and can exclude the estimate. The jackknife never repeats a point. All
    replicates are evaluated in closed form from the Gram matrix. ``n_boot=0`` skips the CIs
    (``n_boot`` and ``seed`` are otherwise unused; kept for a uniform signature).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> iso = collapse_metrics(rng.normal(size=(400, 10)), n_boot=0)
        >>> 8 < iso["eff_rank"]["value"] <= 10, abs(iso["mean_cosine"]["value"]) < 0.05
        (True, True)
    """
    from scipy.stats import norm as _normal

    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    if n < 3:
        raise MedinterpError(f"collapse metrics need at least 3 points; got {n}")
    W = np.ones((1, n))
    if n_boot:
        W = np.concatenate([W, 1.0 - np.eye(n)])
    stats = _collapse_weighted(X, W)
    z = float(_normal.ppf(0.5 + ci / 2))
    out = {}
    for name, v in zip(("resid_norm", "mean_cosine", "eff_rank"), stats):
        lo = hi = math.nan
        if n_boot:
            jk = v[1:]
            se = math.sqrt((n - 1) / n * float(np.sum((jk - jk.mean()) ** 2)))
            lo, hi = float(v[0]) - z * se, float(v[0]) + z * se
        out[name] = {"value": float(v[0]), "ci_low": lo, "ci_high": hi, "n": n}
    return out


# ======================================================================== UMAP
def _pca(X: np.ndarray, n_components: int | None, seed: int) -> np.ndarray:
    if not n_components or n_components >= min(X.shape):
        return X
    from sklearn.decomposition import PCA

    return PCA(n_components=n_components, random_state=seed).fit_transform(X)


def _exact_knn(X: np.ndarray, n_neighbors: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (self first), as UMAP's own small-data path computes them.

    UMAP (n < 4096) would compute all pairwise distances through a per-pair Python callback
    (measured: 2 of 3 s of a 456-point fit); sklearn's vectorised distances are ~50x faster, and
    the neighbour graph is shared by the 30-d and the 2-d fit.
    """
    from sklearn.metrics import pairwise_distances

    D = pairwise_distances(X, metric=metric).astype(np.float32)
    np.fill_diagonal(D, -1.0)
    idx = np.argsort(D, axis=1, kind="stable")[:, :n_neighbors]
    dist = np.take_along_axis(D, idx, axis=1)
    dist[:, 0] = np.where(idx[:, 0] == np.arange(len(X)), 0.0, dist[:, 0])
    return idx.astype(np.int32), np.clip(dist, 0, None)


def _umap_one(
    X: np.ndarray, n_components: int, *, n_neighbors: int, min_dist: float, metric: str, n_epochs: int | None,
    seed: int, knn: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    import umap

    n = X.shape[0]
    nc = int(min(n_components, max(1, n - 2)))
    init = "spectral" if n > nc + 2 else "random"
    k = int(min(n_neighbors, n - 1))
    kw = dict(n_components=nc, n_neighbors=k, min_dist=min_dist, metric=metric, n_epochs=n_epochs,
              random_state=seed, low_memory=True, n_jobs=1, verbose=False)
    if knn is not None and k >= 2:
        kw["precomputed_knn"] = (knn[0][:, :k], knn[1][:, :k])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            emb = umap.UMAP(init=init, **kw).fit_transform(X)
        except Exception:  # noqa: BLE001 - degenerate input (e.g. identical points): retry without spectral init
            emb = umap.UMAP(init="random", **kw).fit_transform(X)
    if nc < n_components:
        emb = np.concatenate([emb, np.zeros((n, n_components - nc), emb.dtype)], axis=1)
    return emb.astype(np.float32)


def _embed_layer(X: np.ndarray, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
    """UMAP-``n_components`` and UMAP-2 of one layer (module level so joblib workers can run it)."""
    with _one_blas_thread():
        return _embed_layer_inner(X, params)


def _one_blas_thread():
    """Single-threaded BLAS for the many small matrix ops here.

    Measured on a loaded 2-core machine: a 480×480 ``eigh`` took 11 s with OpenBLAS's 2 threads
    (spin-waiting against other processes) and 0.09 s with one. Parallelism comes from worker
    processes (``n_jobs``) instead.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _embed_layer_inner(X: np.ndarray, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
    t0 = time.perf_counter()
    X = np.asarray(X, dtype=np.float32)
    Xs = X - X.mean(0, keepdims=True)
    if np.allclose(Xs, 0):  # all prompts identical at this layer: nothing to embed
        n = X.shape[0]
        return (np.zeros((n, params["n_components"]), np.float32), np.zeros((n, 2), np.float32),
                time.perf_counter() - t0)
    Xp = _pca(Xs, params["pca"], params["seed"]).astype(np.float32)
    kw = {k: params[k] for k in ("n_neighbors", "min_dist", "metric", "n_epochs", "seed")}
    kw["knn"] = _exact_knn(Xp, min(params["n_neighbors"], Xp.shape[0] - 1), params["metric"])
    e_hi = _umap_one(Xp, params["n_components"], **kw)
    e_2 = _umap_one(Xp, 2, **kw)
    return e_hi, e_2, time.perf_counter() - t0


def _align_2d(embs: np.ndarray) -> np.ndarray:
    """Rotate/reflect each layer's 2-D embedding onto the previous one (orthogonal Procrustes)."""
    from scipy.linalg import orthogonal_procrustes

    out = embs.copy()
    for i in range(1, len(out)):
        a = out[i] - out[i].mean(0)
        b = out[i - 1] - out[i - 1].mean(0)
        if not (np.abs(a).sum() and np.abs(b).sum()):
            continue
        R, _ = orthogonal_procrustes(a, b)
        out[i] = a @ R
    return out


def embed_layers(
    values: Float[np.ndarray, "layers n d"],
    *,
    n_components: int = 30,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "euclidean",
    pca: int | None = 50,
    n_epochs: int | None = 200,
    seed: int = 0,
    n_jobs: int = 1,
    progress: bool = True,
    desc: str = "UMAP",
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """UMAP every layer to ``n_components`` dims (metrics) and 2 dims (plots).

    Each layer is centred, optionally reduced with PCA (``pca`` components; None/0 = off), then
    embedded twice with a fixed ``seed``. ``n_jobs > 1`` runs layers in joblib worker processes
    (each compiles numba once and is reused across calls). The 2-D embeddings are aligned layer to
    layer with an orthogonal Procrustes rotation so a layer slider does not spin the picture.

    Returns:
        ``(emb [layers, n, n_components], emb2 [layers, n, 2], seconds per layer)``.
    """
    params = dict(n_components=n_components, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric,
                  pca=pca, n_epochs=n_epochs, seed=seed)
    out = _run_jobs(_embed_layer, [(values[i], params) for i in range(len(values))], n_jobs, progress, desc)
    e_hi = np.stack([o[0] for o in out])
    e_2 = _align_2d(np.stack([o[1] for o in out]))
    return e_hi, e_2, [o[2] for o in out]


def _run_jobs(fn: Any, jobs: list[tuple], n_jobs: int, progress: bool, desc: str) -> list:
    """``[fn(*job) for job in jobs]``, in joblib worker processes when ``n_jobs > 1``, in order."""
    from tqdm.auto import tqdm

    if n_jobs == 1 or len(jobs) <= 1:
        return [fn(*job) for job in tqdm(jobs, desc=desc, disable=not progress, leave=False)]
    from joblib import Parallel, delayed

    par = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator")
    gen = par(delayed(fn)(*job) for job in jobs)
    return list(tqdm(gen, total=len(jobs), desc=desc, disable=not progress, leave=False))


# ======================================================================== per-layer metrics
@dataclasses.dataclass
class _LabelSpec:
    categorical: dict[str, list[Any]]
    continuous: dict[str, list[float]]
    age: str | None = None
    group: str | None = None
    disease: str | None = None
    stage: str | None = None
    units: list[Any] | None = None  # template index per prompt (bootstrap unit), when known


def _row(layer: int, metric: str, space: str, label: str, group: str, d: Mapping[str, Any]) -> dict:
    return {
        "layer": layer, "metric": metric, "space": space, "label": label, "group": group,
        "value": d.get("value", math.nan), "ci_low": d.get("ci_low", math.nan), "ci_high": d.get("ci_high", math.nan),
        "baseline": d.get("baseline", math.nan), "baseline_high": d.get("baseline_high", math.nan),
        "p_value": d.get("p_value", math.nan), "n": d.get("n", math.nan),
    }


def _present(values: Sequence[Any]) -> np.ndarray:
    return np.asarray([v is not None and not (isinstance(v, float) and math.isnan(v)) and v != "" for v in values])


def layer_metrics(
    layer: int,
    raw: Float[np.ndarray, "n d"],
    emb: Float[np.ndarray, "n c"],
    spec: _LabelSpec,
    *,
    k: int = 20,
    n_perm: int = 100,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    jump: tuple[float, float] = (17, 18),
) -> tuple[list[dict], list[pd.DataFrame], list[pd.DataFrame]]:
    """All metrics of one layer: table rows, age-step profiles, per-disease progression rows."""
    rows: list[dict] = []
    steps: list[pd.DataFrame] = []
    progs: list[pd.DataFrame] = []
    spaces = {"umap": np.asarray(emb, np.float64), "raw": np.asarray(raw, np.float64)}
    dists = {name: _pairwise(X) for name, X in spaces.items()}
    for name, labels in spec.categorical.items():
        keep = _present(labels)
        lab = [x for x, ok in zip(labels, keep) if ok]
        if len(set(map(str, lab))) < 2:
            continue
        for sp, X in spaces.items():
            D = dists[sp][np.ix_(keep, keep)]
            rows.append(_row(layer, "silhouette", sp, name, "", silhouette(
                X[keep], lab, n_perm=n_perm, n_boot=n_boot, ci=ci, seed=seed, D=D)))
    for sp, X in spaces.items():
        rows.append(_row(layer, "anisotropy", sp, "", "",
                         anisotropy(X, k=k, n_boot=n_boot, ci=ci, seed=seed, D=dists[sp])))
        for name, y in spec.continuous.items():
            keep = _present(y)
            if keep.sum() < 10:
                continue
            yk = np.asarray([v for v, ok in zip(y, keep) if ok], dtype=float)
            rows.append(_row(layer, "linearity_r2", sp, name, "",
                             linearity_r2(X[keep], yk, n_boot=n_boot, ci=ci, seed=seed)))
    if spec.age:
        ages = np.asarray(spec.continuous[spec.age], dtype=float)
        grp = spec.categorical.get(spec.group) if spec.group else None
        for sp, X in spaces.items():
            prof = discontinuity_profile(X, ages, None)
            if grp is not None:
                prof = pd.concat([prof, discontinuity_profile(X, ages, grp)], ignore_index=True)
            prof.insert(0, "space", sp)
            prof.insert(0, "layer", layer)
            steps.append(prof)
            if jump[0] in ages and jump[1] in ages:
                label = f"{spec.age}:{jump[0]:g}-{jump[1]:g}"
                u = spec.units
                u_all = None if u is None else [f"{a}|{b}" for a, b in zip(u, grp)] if grp is not None else u
                rows.append(_row(layer, "step_ratio", sp, label, "all",
                                 step_ratio(X, ages, jump, n_boot=n_boot, ci=ci, seed=seed, units=u_all)))
                for g in sorted(set(map(str, grp))) if grp is not None else []:
                    sel = np.asarray([str(x) == g for x in grp])
                    u_g = None if u is None else [x for x, ok in zip(u, sel) if ok]
                    try:
                        r = step_ratio(X[sel], ages[sel], jump, n_boot=n_boot, ci=ci, seed=seed, units=u_g)
                    except MedinterpError:
                        continue
                    rows.append(_row(layer, "step_ratio", sp, label, g, r))
    if spec.disease and spec.stage:
        dis = spec.categorical[spec.disease]
        stg = spec.continuous[spec.stage]
        for sp, X in spaces.items():
            df = progression_scores(X, dis, stg, n_boot=n_boot, ci=ci, seed=seed, units=spec.units)
            if df.empty:
                continue
            df.insert(0, "space", sp)
            df.insert(0, "layer", layer)
            progs.append(df)
            n_dis = df.group.nunique()
            for m in ("spearman", "circularity"):
                sub = df[df.metric == m]
                vals = sub.value.to_numpy(float)
                est = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
                # CI of the mean over diseases: resample diseases (their own CIs shown per disease)
                lo, hi = _ci(_weighted_means(vals, _boot_weights(len(vals), n_boot, seed)), ci) if (
                    n_boot and len(vals) > 1) else (math.nan, math.nan)
                rows.append(_row(layer, m, sp, spec.stage, "mean",
                                 {"value": est, "ci_low": lo, "ci_high": hi, "n": n_dis}))
    for m, d in collapse_metrics(raw, n_boot=n_boot, ci=ci, seed=seed).items():
        rows.append(_row(layer, m, "raw", "", "", d))
    return rows, steps, progs


# ======================================================================== result
@dataclasses.dataclass
class GeometryResult(Result):
    """Per-layer activation geometry of one concept set.

    Attributes:
        concept: concept set name.
        layers: layer index per row of the embeddings (``-1`` = embedding output).
        table: tidy per-layer metrics: ``layer, metric, space (umap|raw), label, group, value,
            ci_low, ci_high, baseline, baseline_high, p_value, n``. Metrics: ``silhouette`` (per
            categorical labelling; baseline = label-permutation mean, baseline_high = its 95th
            percentile), ``anisotropy``, ``linearity_r2`` (per continuous label), ``step_ratio``
            (age jump; group = all / each sex), ``spearman`` and ``circularity`` (progression,
            mean over diseases), ``resid_norm``, ``mean_cosine``, ``eff_rank`` (raw space).
        age_steps: the full discontinuity profile (``layer, space, group, age_from, age_to, step,
            median_step, ratio``) or None.
        progression: per-disease progression scores (``layer, space, group, metric, value, ci_low,
            ci_high, n``) or None.
        embedding_2d: ``[layers, n, 2]`` UMAP-2 (aligned across layers) for plots.
        embedding: ``[layers, n, n_components]`` UMAP embedding the metrics were computed in.
        texts: prompt per point; items: concept item per point (hover text).
        labels: label name -> one value per point; label_kinds: name -> categorical|continuous.
        primary: which table rows :meth:`layer_curve` returns (metric, space, label, group).
        params, timings, provenance: how it was run.

    Example:
        >>> res = geometry(model, "drugs")                # doctest: +SKIP
        >>> res.best("silhouette", label="specialty")      # doctest: +SKIP
    """

    kind = "geometry"
    concept: str = ""
    layers: list[int] = dataclasses.field(default_factory=list)
    table: pd.DataFrame | None = None
    age_steps: pd.DataFrame | None = None
    progression: pd.DataFrame | None = None
    embedding_2d: np.ndarray | None = None
    embedding: np.ndarray | None = None
    texts: list[str] = dataclasses.field(default_factory=list)
    items: list[str] = dataclasses.field(default_factory=list)
    labels: dict[str, list] = dataclasses.field(default_factory=dict)
    label_kinds: dict[str, str] = dataclasses.field(default_factory=dict)
    primary: dict[str, str] = dataclasses.field(default_factory=dict)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    def _after_load(self) -> None:
        self.layers = [int(x) for x in self.layers]
        for name in ("age_steps", "progression", "table"):
            df = getattr(self, name)
            for col in ("group", "label"):
                if df is not None and col in df.columns:  # CSV turns "" into NaN
                    df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)

    # ------------------------------------------------------------ queries
    def metric(self, metric: str, *, space: str = "umap", label: str | None = None,
               group: str | None = None) -> pd.DataFrame:
        """Rows of one metric, one per layer (sorted by layer)."""
        t = self.table
        sel = (t.metric == metric) & (t.space == space)
        if label is not None:
            sel &= t.label == label
        if group is not None:
            sel &= t.group == group
        out = t[sel].sort_values("layer")
        if out.layer.duplicated().any():
            raise MedinterpError(
                f"{metric!r} in {space!r} has several rows per layer; pick label= from "
                f"{sorted(set(out.label))} and group= from {sorted(set(out.group))}"
            )
        return out.reset_index(drop=True)

    def best(self, metric: str = "silhouette", *, space: str = "umap", label: str | None = None,
             group: str | None = None, blocks_only: bool = True) -> tuple[int, float]:
        """(layer, value) of the highest value of a metric."""
        m = self.metric(metric, space=space, label=label, group=group)
        if blocks_only:
            m = m[m.layer >= 0]
        if m.value.isna().all():
            return -1, math.nan
        r = m.loc[m.value.idxmax()]
        return int(r.layer), float(r.value)

    def _primary_rows(self, **override: str) -> pd.DataFrame:
        p = {**self.primary, **{k: v for k, v in override.items() if v is not None}}
        if not p:
            raise MedinterpError(f"geometry result for {self.concept!r} has no primary metric")
        m = self.metric(p["metric"], space=p.get("space", "umap"), label=p.get("label"), group=p.get("group"))
        return m[m.layer >= 0]

    def layer_curve(self, **override: str) -> np.ndarray:
        """Primary per-layer score over blocks ``0..n_layers-1`` (higher = more structure).

        Categorical sets: silhouette in UMAP-30 space on the primary labelling (first scored
        labelling, e.g. drugs → specialty). Age: mean local anisotropy in UMAP-30 space (the paper's
        age geometry measure, METHOD §5). Progression: mean over diseases of the Spearman ρ of stage
        index vs distance from stage 0 in UMAP-30 space (ordered stages = the concept is laid out).
        ``override`` (metric=, space=, label=, group=) picks another table row set.
        """
        return self._primary_rows(**override).value.to_numpy(float)

    def layer_curve_ci(self, **override: str) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` bootstrap CI of :meth:`layer_curve`."""
        m = self._primary_rows(**override)
        return m.ci_low.to_numpy(float), m.ci_high.to_numpy(float)

    def summary(self) -> dict[str, Any]:
        """Headline numbers: best layer per silhouette labelling, age and progression scores."""
        out: dict[str, Any] = {"concept": self.concept}
        t = self.table
        for lab in sorted(set(t[t.metric == "silhouette"].label)):
            for sp in ("umap", "raw"):
                out[f"best_silhouette_{sp}[{lab}]"] = self.best("silhouette", space=sp, label=lab)
        for lab in sorted(set(t[t.metric == "linearity_r2"].label)):
            out[f"best_linearity_r2[{lab}]"] = self.best("linearity_r2", label=lab)
        if (t.metric == "step_ratio").any():
            r = self.metric("step_ratio", label=t[t.metric == "step_ratio"].label.iloc[0], group="all")
            out["max_step_ratio_layer"] = (int(r.loc[r.value.idxmax(), "layer"]), float(r.value.max()))
        for m in ("spearman", "circularity"):
            if (t.metric == m).any():
                out[f"mean_{m}"] = float(self.metric(m).value.mean())
        cos = self.metric("mean_cosine", space="raw")
        out["max_mean_cosine_layer"] = (int(cos.loc[cos.value.idxmax(), "layer"]), float(cos.value.max()))
        er = self.metric("eff_rank", space="raw")
        out["min_eff_rank_layer"] = (int(er.loc[er.value.idxmin(), "layer"]), float(er.value.min()))
        return out

    # ------------------------------------------------------------ figures
    def figure(self, color_by: str | None = None):
        """[UMAP-2 scatter with a layer slider (one per categorical labelling, or ``color_by``),
        metric-vs-layer curves with CI bands]."""
        if color_by is not None:
            return [self.umap_figure(color_by), self.curves_figure()]
        cats = [k for k, v in self.label_kinds.items() if v == "categorical"]
        conts = [k for k, v in self.label_kinds.items() if v == "continuous"]
        first = self.primary.get("label") if self.primary.get("label") in self.labels else None
        order = [first] if first else []
        order += [c for c in cats + conts[:1] if c not in order]
        figs = [self.umap_figure(c) for c in order[:3]] or [self.umap_figure(None)]
        return figs + [self.curves_figure()]

    def umap_figure(self, color_by: str | None = None):
        """Interactive 2-D UMAP per layer with a slider; points coloured by a label, hover = item."""
        import plotly.graph_objects as go

        if color_by is not None and color_by not in self.labels:
            raise MedinterpError(f"color_by={color_by!r} is not a label of {self.concept!r}; have {sorted(self.labels)}")
        emb = np.asarray(self.embedding_2d)
        L, n = emb.shape[:2]
        hover = [f"{it}<br>{tx}" if it and it != tx else tx for it, tx in zip(self.items or self.texts, self.texts)]
        hover = [h.replace("<", "&lt;").replace("&lt;br>", "<br>") for h in hover]
        extra = [" | ".join(f"{k}={v[i]}" for k, v in self.labels.items()) for i in range(n)]
        hover = [f"{h}<br>{e}" for h, e in zip(hover, extra)]
        kind = self.label_kinds.get(color_by, "categorical") if color_by else None
        traces, per_layer = [], 0
        if color_by is None or kind == "continuous":
            vals = np.asarray(self.labels[color_by], dtype=float) if color_by else None
            for li in range(L):
                marker = dict(size=6, color=vals, colorscale="Viridis", showscale=True,
                              colorbar=dict(title=color_by)) if vals is not None else dict(size=6)
                traces.append(go.Scattergl(x=emb[li, :, 0], y=emb[li, :, 1], mode="markers", marker=marker,
                                           text=hover, hoverinfo="text", visible=li == 0, name=color_by or "items"))
            per_layer = 1
        else:
            labs = np.asarray([str(x) for x in self.labels[color_by]])
            cats = sorted(set(labs.tolist()))
            palette = _palette(len(cats))
            for li in range(L):
                for ci_, c in enumerate(cats):
                    sel = labs == c
                    traces.append(go.Scattergl(
                        x=emb[li, sel, 0], y=emb[li, sel, 1], mode="markers", name=c, legendgroup=c,
                        showlegend=li == 0, marker=dict(size=7, color=palette[ci_]),
                        text=[hover[i] for i in np.flatnonzero(sel)], hoverinfo="text", visible=li == 0))
            per_layer = len(cats)
        steps = []
        sil = self._silhouette_lookup(color_by)
        for li, layer in enumerate(self.layers):
            vis = [False] * len(traces)
            vis[li * per_layer : (li + 1) * per_layer] = [True] * per_layer
            name = "embedding" if layer < 0 else f"layer {layer}"
            title = f"{self.concept}: UMAP of {name}" + (f" (silhouette[{color_by}] = {sil[layer]:.3f})"
                                                          if layer in sil else "")
            steps.append(dict(method="update", label=str(layer), args=[{"visible": vis}, {"title": title}]))
        first_title = steps[0]["args"][1]["title"] if steps else self.concept
        fig = go.Figure(traces)
        fig.update_layout(
            title=first_title, height=620, template="plotly_white",
            sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix="layer: "), pad=dict(t=40))],
            legend=dict(title=color_by or ""), xaxis=dict(title="UMAP 1"), yaxis=dict(title="UMAP 2"),
        )
        return fig

    def _silhouette_lookup(self, label: str | None) -> dict[int, float]:
        if not label or self.table is None:
            return {}
        t = self.table
        m = t[(t.metric == "silhouette") & (t.space == "umap") & (t.label == label)]
        return {int(r.layer): float(r.value) for r in m.itertuples()}

    def curves_figure(self):
        """Metric-vs-layer curves with bootstrap CI bands (and permutation baselines for silhouette)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        t = self.table
        panels: list[tuple[str, pd.DataFrame]] = []
        order = ["silhouette", "anisotropy", "linearity_r2", "step_ratio", "spearman", "circularity",
                 "resid_norm", "mean_cosine", "eff_rank"]
        for m in order:
            sub = t[t.metric == m]
            if not sub.empty:
                panels.append((m, sub))
        ncols = 3
        nrows = max(1, math.ceil(len(panels) / ncols))
        fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=[p[0] for p in panels],
                            vertical_spacing=0.12 if nrows > 1 else 0.2)
        palette = _palette(12)
        color_of: dict[str, str] = {}
        for pi, (m, sub) in enumerate(panels):
            r, c = pi // ncols + 1, pi % ncols + 1
            for (sp, lab, grp), s in sub.groupby(["space", "label", "group"], sort=True):
                s = s.sort_values("layer")
                key = " ".join(x for x in (str(lab), str(grp), str(sp)) if x)
                col = color_of.setdefault(key, palette[len(color_of) % len(palette)])
                x = s.layer.to_numpy()
                dash = "solid" if sp == "umap" else "dot"
                if s.ci_low.notna().any():
                    fig.add_trace(go.Scatter(
                        x=np.r_[x, x[::-1]], y=np.r_[s.ci_high.to_numpy(), s.ci_low.to_numpy()[::-1]],
                        fill="toself", fillcolor=_rgba(col, 0.15), line=dict(width=0), hoverinfo="skip",
                        showlegend=False, legendgroup=key), row=r, col=c)
                fig.add_trace(go.Scatter(x=x, y=s.value, mode="lines+markers", name=key, legendgroup=key,
                                         showlegend=key not in {tr.name for tr in fig.data if tr.showlegend},
                                         line=dict(color=col, dash=dash), marker=dict(size=4)), row=r, col=c)
                if m == "silhouette" and s.baseline.notna().any():
                    fig.add_trace(go.Scatter(x=x, y=s.baseline_high, mode="lines", name=f"{key} shuffled (95%)",
                                             legendgroup=key, showlegend=False,
                                             line=dict(color=col, width=1, dash="dashdot")), row=r, col=c)
            fig.update_xaxes(title_text="layer", row=r, col=c)
        fig.update_layout(title=f"{self.concept}: geometry metrics per layer (solid = UMAP-30, dotted = raw; "
                                f"bands = {int(100 * self.params.get('ci', 0.95))}% bootstrap CI)",
                          height=330 * nrows + 80, template="plotly_white")
        return fig


def _palette(k: int) -> list[str]:
    import plotly.express as px

    base = px.colors.qualitative.Dark24 if k > 10 else px.colors.qualitative.Plotly
    return [base[i % len(base)] for i in range(max(k, 1))]


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    if len(h) != 6:
        return f"rgba(100,100,100,{alpha})"
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"


# ======================================================================== pipeline
@dataclasses.dataclass
class _Prepared:
    name: str
    version: str
    values: np.ndarray  # [L, n, d]
    layers: list[int]
    texts: list[str]
    items: list[str]
    spec: _LabelSpec
    primary_label: str | None
    t_acts: float


def _family_labels(name: str) -> list[str] | None:
    """Labellings CONCEPT_FAMILIES says to score for this set (None when it says nothing)."""
    try:
        from medinterp.concepts import CONCEPT_FAMILIES
    except ImportError:
        return None
    fam = CONCEPT_FAMILIES.get(name) if isinstance(CONCEPT_FAMILIES, Mapping) else None
    if fam is None:
        for v in CONCEPT_FAMILIES.values() if isinstance(CONCEPT_FAMILIES, Mapping) else []:
            if isinstance(v, Mapping) and v.get("geometry") == name:
                fam = v
                break
    if isinstance(fam, Mapping):
        for key in ("labels", "labellings", "geometry_labels", "categorical"):
            if fam.get(key):
                v = fam[key]
                return [v] if isinstance(v, str) else list(v)
    return None


SHIPPED_GEOMETRY_SETS = ("age", "symptoms", "diseases", "progression", "drugs", "dosage")


def default_concept_sets() -> list[str]:
    """Names of the shipped concept sets that feed geometry (CONCEPT_FAMILIES order), pair sets excluded."""
    names: list[str] = []
    try:
        from medinterp.concepts import CONCEPT_FAMILIES
    except ImportError:
        CONCEPT_FAMILIES = None
    if isinstance(CONCEPT_FAMILIES, Mapping):
        for fam, v in CONCEPT_FAMILIES.items():
            c = v.get("concepts", v.get("geometry")) if isinstance(v, Mapping) else getattr(v, "concepts", None)
            if isinstance(c, str) and c not in names:
                names.append(c)
    if not names:
        names = list(SHIPPED_GEOMETRY_SETS)
    out = []
    try:
        from medinterp.concepts import load_concepts
    except ImportError as e:
        raise MedinterpError(f"the concept library is unavailable ({e})") from None
    for n in names:
        try:
            cs = load_concepts(n)
        except MedinterpError:
            continue
        if hasattr(cs, "prompts") and getattr(cs, "categorical_labels", None) is not None:
            out.append(n)
    return out


def _pick(names: Iterable[str], candidates: Sequence[str]) -> str | None:
    names = list(names)
    for c in candidates:
        if c in names:
            return c
    return None


def _build_spec(
    labels: Mapping[str, Sequence[Any]],
    categorical: Sequence[str],
    continuous: Sequence[str],
    *,
    score: Sequence[str] | None,
    age_label: str | None,
    group_label: str | None,
    disease_label: str | None,
    stage_label: str | None,
) -> _LabelSpec:
    for nm in list(categorical) + list(continuous):
        if nm not in labels:
            raise MedinterpError(f"label {nm!r} is not in the prompts' labels {sorted(labels)}")
    cat = {k: list(labels[k]) for k in (score if score is not None else categorical)}
    for k in cat:
        if k not in labels:
            raise MedinterpError(f"labelling {k!r} to score is not a label of the set; have {sorted(labels)}")
    cont = {k: [math.nan if v is None or v == "" else float(v) for v in labels[k]] for k in continuous}
    age = age_label if age_label in cont else _pick(cont, ["age"])
    group = group_label if group_label in labels else _pick(categorical, ["sex", "gender"])
    stage = stage_label if stage_label in cont else _pick(cont, ["stage", "stage_index", "stage_idx"])
    disease = disease_label if disease_label in labels else _pick(categorical, ["disease", "condition"])
    if group and group not in cat and age:
        cat[group] = list(labels[group])
    if disease and disease not in cat and stage:
        cat[disease] = list(labels[disease])
    return _LabelSpec(cat, cont, age=age, group=group if age else None,
                      disease=disease if stage else None, stage=stage if disease else None)


def _prepare(
    model: Any,
    concepts: Any,
    activations: Any,
    *,
    labels: Sequence[str] | None,
    positions: Any,
    templates: Any,
    include_embed: bool,
    layers: Sequence[int] | None,
    batch_size: int,
    progress: bool,
    age_label: str | None = None,
    group_label: str | None = None,
    disease_label: str | None = None,
    stage_label: str | None = None,
) -> _Prepared:
    t0 = time.perf_counter()
    cset = None
    if isinstance(concepts, str):
        from medinterp.concepts import load_concepts

        cset = load_concepts(concepts)
    elif concepts is not None:
        cset = concepts
    if cset is not None and not hasattr(cset, "prompts"):
        raise MedinterpError(f"geometry needs a ConceptSet (items with labels); got {type(cset).__name__}")
    prompts = cset.prompts(templates) if cset is not None else None
    if activations is None:
        if model is None or prompts is None:
            raise MedinterpError("geometry needs a model and concepts, or precomputed activations=")
        from medinterp.activations import collect_activations

        activations = collect_activations(
            model, prompts, sites=("resid_post",), layers=layers, positions=positions,
            include_embed=include_embed, batch_size=batch_size, progress=progress,
        )
    if hasattr(activations, "stack") and getattr(activations, "sites", None):
        act_layers, values = activations.stack("resid_post", include_embed=include_embed)
    else:
        act_layers, values = activations.layers, activations.values
    values = np.asarray(values, dtype=np.float32)
    act_layers = [int(x) for x in act_layers]
    if not include_embed:
        keep = [i for i, l in enumerate(act_layers) if l >= 0]
        values, act_layers = values[keep], [act_layers[i] for i in keep]
    if layers is not None:
        want = set(int(x) for x in layers) | ({-1} if include_embed else set())
        keep = [i for i, l in enumerate(act_layers) if l in want]
        values, act_layers = values[keep], [act_layers[i] for i in keep]
    order = np.argsort(act_layers, kind="stable")
    values, act_layers = values[order], [act_layers[i] for i in order]
    if values.ndim != 3 or values.shape[0] == 0:
        raise MedinterpError(f"activations must be [layers, prompts, d_model]; got shape {values.shape}")
    n = values.shape[1]
    if prompts is not None and len(prompts) == n:
        lab_dict: dict[str, list] = {}
        for p in prompts:
            for k in p.labels:
                lab_dict.setdefault(k, [])
        for k in lab_dict:
            lab_dict[k] = [p.labels.get(k) for p in prompts]
        texts = [p.text for p in prompts]
        items = [str(p.item) for p in prompts]
        units = [getattr(p, "template_index", None) for p in prompts]
        units = units if None not in units and len(set(units)) > 1 else None
    else:
        lab_dict = {k: list(v) for k, v in (getattr(activations, "labels", None) or {}).items()}
        texts = list(getattr(activations, "prompts", [""] * n))
        items = texts
        units = None
    if n < 5:
        raise MedinterpError(f"geometry needs at least 5 prompts; got {n}")
    for k, v in lab_dict.items():
        if len(v) != n:
            raise MedinterpError(f"label {k!r} has {len(v)} values for {n} prompts")
    if cset is not None:
        cat_names = list(getattr(cset, "categorical_labels", []) or [])
        cont_names = list(getattr(cset, "continuous_labels", []) or [])
        name = str(getattr(cset, "name", "concepts"))
        version = str(getattr(cset, "version", ""))
    else:
        cat_names, cont_names = [], []
        for k, v in lab_dict.items():
            vals = [x for x in v if x is not None]
            (cont_names if vals and all(isinstance(x, (int, float, np.number)) and not isinstance(x, bool)
                                        for x in vals) else cat_names).append(k)
        name = str((getattr(activations, "provenance", {}) or {}).get("params", {}).get("concepts", "activations"))
        version = ""
    if labels is not None:
        for lab in labels:
            if lab not in lab_dict:
                raise MedinterpError(f"labelling {lab!r} to score is not a label of {name!r}; have {sorted(lab_dict)}")
        score = list(labels)
    else:
        # CONCEPT_FAMILIES lists continuous labellings too (age, stage): those get the age /
        # progression / linearity metrics, only the categorical ones get a silhouette
        score = [s for s in (_family_labels(name) or []) if s in lab_dict and s in cat_names] or None
    spec = _build_spec(lab_dict, cat_names, cont_names, score=score, age_label=age_label,
                       group_label=group_label, disease_label=disease_label, stage_label=stage_label)
    spec.units = units
    primary = (list(score)[0] if score else (cat_names[0] if cat_names else None))
    return _Prepared(name, version, values, act_layers, texts, items, spec, primary, time.perf_counter() - t0)


def _primary_for(spec: _LabelSpec, primary_label: str | None) -> dict[str, str]:
    if spec.age:
        return {"metric": "anisotropy", "space": "umap", "label": "", "group": ""}
    if spec.disease and spec.stage:
        return {"metric": "spearman", "space": "umap", "label": spec.stage, "group": "mean"}
    lab = primary_label if primary_label in spec.categorical else next(iter(spec.categorical), None)
    if lab is None:
        return {"metric": "anisotropy", "space": "umap", "label": "", "group": ""}
    return {"metric": "silhouette", "space": "umap", "label": lab, "group": ""}


def _layer_job(X: np.ndarray, layer: int, spec: _LabelSpec, umap_params: dict[str, Any],
               params: dict[str, Any]) -> tuple:
    """One layer end to end (UMAP + metrics); module level so joblib worker processes can run it."""
    with _one_blas_thread():
        c0 = time.process_time()
        e_hi, e_2, _ = _embed_layer_inner(X, umap_params)
        c1 = time.process_time()
        rows, steps, progs = layer_metrics(
            layer, X, e_hi, spec, k=params["k_anisotropy"], n_perm=params["n_perm"], n_boot=params["n_boot"],
            ci=params["ci"], seed=params["seed"], jump=tuple(params["jump"]),
        )
    return e_hi, e_2, rows, steps, progs, c1 - c0, time.process_time() - c1


def _finish(prep: _Prepared, outs: list[tuple], model: Any, params: dict[str, Any]) -> GeometryResult:
    e_hi = np.stack([o[0] for o in outs])
    e_2 = _align_2d(np.stack([o[1] for o in outs]))
    rows = [r for o in outs for r in o[2]]
    steps = [s for o in outs for s in o[3]]
    progs = [p for o in outs for p in o[4]]
    t_umap = float(sum(o[5] for o in outs))
    t_metrics = float(sum(o[6] for o in outs))
    labels = {k: list(v) for k, v in prep.spec.categorical.items()}
    labels.update({k: list(v) for k, v in prep.spec.continuous.items()})
    kinds = {k: "categorical" for k in prep.spec.categorical} | {k: "continuous" for k in prep.spec.continuous}
    prov = make_provenance(model, concepts=prep.name, concepts_version=prep.version, **params)
    return GeometryResult(
        concept=prep.name,
        layers=list(prep.layers),
        table=pd.DataFrame(rows, columns=TABLE_COLUMNS),
        age_steps=pd.concat(steps, ignore_index=True) if steps else None,
        progression=pd.concat(progs, ignore_index=True) if progs else None,
        embedding_2d=e_2.astype(np.float32),
        embedding=e_hi.astype(np.float32),
        texts=prep.texts,
        items=prep.items,
        labels=labels,
        label_kinds=kinds,
        primary=_primary_for(prep.spec, prep.primary_label),
        params=params,
        timings={"activations_s": prep.t_acts, "umap_cpu_s": t_umap, "metrics_cpu_s": t_metrics},
        provenance=prov,
    )


def geometry(
    model: Any = None,
    concepts: Any = None,
    *,
    activations: Any = None,
    labels: Sequence[str] | None = None,
    positions: Any = "last",
    templates: Any = None,
    include_embed: bool = True,
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    n_components: int = 30,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "euclidean",
    pca: int | None = 50,
    n_epochs: int | None = 200,
    seed: int = 0,
    n_perm: int = 100,
    n_boot: int = 200,
    ci: float = 0.95,
    k_anisotropy: int = 20,
    jump: tuple[float, float] = (17, 18),
    n_jobs: int = 1,
    progress: bool = True,
) -> GeometryResult:
    """Activation geometry of one concept set, per layer (METHOD.md §1).

    Args:
        model: a HookedTransformer (from :func:`medinterp.load_model`); optional with ``activations``.
        concepts: a ConceptSet or a shipped set name (``"drugs"``, ``"age"``, ...).
        activations: a precomputed ActivationSet (``resid_post`` per layer, optionally the embedding
            as layer -1) to reuse instead of running the model; labels then come from ``concepts``
            when given (same prompt order) or from the ActivationSet.
        labels: categorical labellings to score (default: CONCEPT_FAMILIES, else all categorical).
        positions: ``"last"`` (default), ``"span_mean"``, ``"span_last"`` (see collect_activations).
        templates: which templates of the set to use (default all).
        include_embed: also analyse the embedding output (layer -1).
        layers: block indices (default all).
        n_components: UMAP dims for metrics (paper: 30).
        n_neighbors, min_dist, metric: UMAP parameters.
        pca: PCA components before UMAP (None/0 = off).
        n_epochs: UMAP epochs (None = umap-learn's default, 500 for small sets).
        seed: seed for UMAP, PCA, permutations and bootstrap.
        n_perm: label permutations for the silhouette baseline.
        n_boot: bootstrap replicates for CIs (on the fixed embedding, see module docstring).
        ci: confidence level.
        k_anisotropy: neighbours for local anisotropy (paper: 20).
        jump: the consecutive ages whose step is compared to the median step.
        n_jobs: worker processes for UMAP (1 = in this process).
        progress: show progress bars.

    Returns:
        :class:`GeometryResult`.

    Example:
        >>> import medinterp as mi
        >>> res = mi.geometry(mi.load_model(), "drugs")               # doctest: +SKIP
        >>> res.best("silhouette", label="mechanism")                  # doctest: +SKIP
        >>> res.to_html("drugs.html")                                   # doctest: +SKIP
    """
    return geometry_many(
        model, [concepts] if activations is None or concepts is not None else [None],
        activations=[activations] if activations is not None else None, labels=labels, positions=positions,
        templates=templates, include_embed=include_embed, layers=layers, batch_size=batch_size,
        n_components=n_components, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, pca=pca,
        n_epochs=n_epochs, seed=seed, n_perm=n_perm, n_boot=n_boot, ci=ci, k_anisotropy=k_anisotropy,
        jump=jump, n_jobs=n_jobs, progress=progress,
    )[0]


def geometry_many(
    model: Any,
    concepts: Sequence[Any],
    *,
    activations: Sequence[Any] | None = None,
    labels: Sequence[str] | None = None,
    positions: Any = "last",
    templates: Any = None,
    include_embed: bool = True,
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    n_components: int = 30,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "euclidean",
    pca: int | None = 50,
    n_epochs: int | None = 200,
    seed: int = 0,
    n_perm: int = 100,
    n_boot: int = 200,
    ci: float = 0.95,
    k_anisotropy: int = 20,
    jump: tuple[float, float] = (17, 18),
    n_jobs: int = 1,
    progress: bool = True,
) -> list[GeometryResult]:
    """:func:`geometry` for several concept sets; the UMAP jobs of all sets share one worker pool.

    Args: as :func:`geometry`; ``concepts`` is a list, ``activations`` (optional) a parallel list.
    ``labels`` applies to every set (usually leave it None).

    Example:
        >>> results = geometry_many(model, ["symptoms", "drugs"])     # doctest: +SKIP
    """
    if isinstance(concepts, (str, bytes)) or not isinstance(concepts, Sequence):
        raise MedinterpError("geometry_many: concepts must be a list of sets or names")
    if activations is not None and len(activations) != len(concepts):
        raise MedinterpError(f"geometry_many: {len(activations)} activation sets for {len(concepts)} concept sets")
    if not 0 < ci < 1:
        raise MedinterpError(f"ci must be in (0, 1); got {ci}")
    if n_components < 2:
        raise MedinterpError(f"n_components must be ≥ 2; got {n_components}")
    if isinstance(positions, str) and positions not in ("last", "span_mean", "span_last"):
        raise MedinterpError(f"positions must be 'last', 'span_mean' or 'span_last'; got {positions!r}")
    params = dict(positions=positions if isinstance(positions, str) else "custom", include_embed=include_embed,
                  n_components=n_components, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric,
                  pca=pca, n_epochs=n_epochs, seed=seed, n_perm=n_perm, n_boot=n_boot, ci=ci,
                  k_anisotropy=k_anisotropy, jump=list(jump), n_jobs=n_jobs,
                  labels=list(labels) if labels else None)
    preps = [
        _prepare(model, c, activations[i] if activations is not None else None, labels=labels, positions=positions,
                 templates=templates, include_embed=include_embed, layers=layers, batch_size=batch_size,
                 progress=progress)
        for i, c in enumerate(concepts)
    ]
    t0 = time.perf_counter()
    umap_params = dict(n_components=n_components, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric,
                       pca=pca, n_epochs=n_epochs, seed=seed)
    jobs = [(p.values[i], layer, p.spec, umap_params, params) for p in preps for i, layer in enumerate(p.layers)]
    out = _run_jobs(_layer_job, jobs, n_jobs, progress, "UMAP + metrics")
    t_wall = time.perf_counter() - t0
    results, k = [], 0
    for p in preps:
        chunk = out[k : k + len(p.layers)]
        k += len(p.layers)
        res = _finish(p, chunk, model, params)
        res.timings["layers_wall_all_sets_s"] = t_wall
        results.append(res)
    return results


# ============================================================================ technique contract
def _run_family(model: Any, family: Any, *, progress: bool = True, **params: Any) -> GeometryResult:
    return geometry(model, family.concepts, progress=progress, **params)


def _run_families(model: Any, families: Sequence[Any], *, progress: bool = True, **params: Any) -> list[GeometryResult]:
    return geometry_many(model, [f.concepts for f in families], progress=progress, **params)


from medinterp.techniques.base import Technique  # noqa: E402  (contract object, defined after the engine)

TECHNIQUE = Technique(
    name="geometry",
    run_fn=_run_family,
    run_many_fn=_run_families,
    presets={
        # all prompts of every template; UMAP jobs on 2 worker processes
        "full": {"n_boot": 100, "n_perm": 50, "n_jobs": 2},
        "quick": {"templates": [0], "n_boot": 30, "n_perm": 20, "n_jobs": 1, "n_epochs": 100},
    },
    needs=("concepts",),
    interval_rule="rise",
    description="activation geometry of the residual stream per layer (silhouette, age, progression, collapse)",
)
