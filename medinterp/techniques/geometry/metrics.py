"""The geometry metrics on plain numpy arrays (METHOD.md §1); each usable on its own.

Silhouette with a label-permutation baseline, local anisotropy, cross-validated linearity, the age
discontinuity profile and step ratio, disease-progression scores and collapse diagnostics. Every
scalar carries a CI (see the package docstring for how each is resampled).

Example:
    >>> import numpy as np
    >>> t = np.linspace(0, 1, 40)[:, None]
    >>> line = np.c_[t, 3 * t]                      # points on a line: anisotropic and linear in t
    >>> round(anisotropy(line, n_boot=0)["value"], 3), round(linearity_r2(line, t[:, 0], n_boot=0)["value"], 3)
    (1.0, 1.0)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from jaxtyping import Float

from medinterp.errors import MedinterpError
from medinterp.techniques.geometry.bootstrap import (
    NAN2,
    boot_ci,
    crossed_weights,
    encode,
    mean_ci,
    percentile_ci,
)


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
    codes, names = encode(labels)
    n = len(codes)
    if len(names) < 2 or len(names) >= n:
        raise MedinterpError(
            f"silhouette needs 2..n-1 distinct labels for n={n} points; got {len(names)} distinct"
        )
    if D is None:
        D = _pairwise(X, metric)
    s = silhouette_samples(D, codes)
    value = float(s.mean())
    lo, hi = mean_ci(s, n_boot, ci, seed)
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
    lo, hi = mean_ci(a, n_boot, ci, seed)
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
    lo, hi = boot_ci(lambda w: _r2_weighted(y, pred, w), len(y), n_boot, ci, seed)
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


def jump_index(ages: Sequence[float], jump: tuple[float, float]) -> tuple[np.ndarray, int]:
    """``(sorted distinct ages, index of jump[0] in them)``; a clear error unless ``jump`` names two
    consecutive ages of the data and there are at least 3 ages."""
    uniq = np.unique(np.asarray(ages, dtype=np.float64))
    if jump[0] not in uniq or jump[1] not in uniq or len(uniq) < 3:
        raise MedinterpError(f"step_ratio: ages {jump[0]} and {jump[1]} (and ≥ 3 ages) needed; have {uniq.tolist()[:10]}…")
    j = int(np.searchsorted(uniq, jump[0]))
    if uniq[j + 1] != jump[1]:
        raise MedinterpError(f"step_ratio: {jump[0]} and {jump[1]} are not consecutive ages in the data")
    return uniq, j


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
    uniq, j = jump_index(ages, jump)
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
        w = crossed_weights(units, np.searchsorted(uniq, ages), n_boot, seed)
        with np.errstate(invalid="ignore", divide="ignore"):
            rb = ratios(w)[:, j]
        out["ci_low"], out["ci_high"] = percentile_ci(rb, ci)
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
        lows = highs = NAN2 * 2
        if n_boot and max(len(c) for c in cells) > 1 and (units is None or len(set(units)) > 1):
            sub = np.concatenate(cells)
            cell_id = np.concatenate([np.full(len(c), i) for i, c in enumerate(cells)])
            w_sub = crossed_weights(None if units is None else [units[i] for i in sub], cell_id, n_boot, seed)
            local = [np.flatnonzero(cell_id == i) for i in range(len(cells))]
            with np.errstate(invalid="ignore", divide="ignore"):
                reps = _progression_stats(_cell_means(X[sub], local, w_sub))
            cis = [percentile_ci(reps[:, i], ci) for i in range(4)]
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

