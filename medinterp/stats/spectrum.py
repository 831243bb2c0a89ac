"""Participation ratio of a point cloud with an item-bootstrap CI (the collapse statistic).

The participation ratio ``PR = (Σλ)² / Σλ²`` of the covariance eigenvalues is an effective number of
dimensions: 1 when all variance lies on one axis (a rank-1 collapse), ``d`` for an isotropic cloud, and
barely moved by a handful of outliers in a large cloud. (The centred mean pairwise cosine, in contrast,
sits near ``-1/(n-1)`` for *any* centred cloud and only departs from it through outliers.)

Example:
    >>> rng = np.random.default_rng(0)
    >>> iso = participation_ratio_ci(rng.normal(size=(200, 8)), n_boot=100)
    >>> one = participation_ratio_ci(np.outer(rng.normal(size=200), rng.normal(size=8)), n_boot=100)
    >>> bool(iso["value"] > 6), bool(one["value"] < 1.01)
    (True, True)
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

from medinterp.errors import MedinterpError


def _pr_weighted(X: np.ndarray, W: np.ndarray) -> np.ndarray:
    """PR of the weighted covariance for each row of non-negative weights ``W`` ``[b, n]``, in closed form
    from the Gram matrix (no eigendecomposition per resample)."""
    G = X @ X.T
    sw = W.sum(1)
    Gw = W @ G
    mu2 = np.einsum("bi,bi->b", Gw, W) / sw**2  # |mean|²
    tr = (W @ np.diag(G)) / sw - mu2  # trace of the covariance
    a_f2 = ((W @ (G * G)) * W).sum(1) / sw**2  # |X^T diag(w) X / sw|_F²
    mu_a_mu = np.einsum("bi,bi->b", W, (Gw / sw[:, None]) ** 2) / sw
    c_f2 = a_f2 - 2 * mu_a_mu + mu2**2  # |covariance|_F²
    with np.errstate(invalid="ignore", divide="ignore"):
        pr = tr**2 / c_f2
    pr[~(tr > 1e-12 * np.maximum((W @ np.diag(G)) / sw, 1e-300))] = np.nan  # no variance: no spectrum
    return pr


def participation_ratio_ci(
    X: Float[np.ndarray, "n d"], *, n_boot: int = 200, ci: float = 0.95, seed: int = 0,
    draws: np.ndarray | None = None,
) -> dict[str, float]:
    """Participation ratio of the rows of ``X`` with an item-bootstrap CI.

    A bootstrap resample repeats items, which lowers the PR of every resample (a repeated point adds no
    direction), so the raw percentile interval sits below the estimate. The interval reported is the
    percentile interval of the resamples shifted by the bootstrap bias (``value − mean(resamples)``).

    Args:
        X: ``[n_items, d]`` one read per item (e.g. the residual stream at one layer).
        n_boot: resamples (0: no CI).
        ci: confidence level.
        seed: seed of the resampling.
        draws: optional ``[n_boot, n]`` resample counts (the same draws at every layer make the layer
            CIs of one family comparable); overrides ``n_boot`` and ``seed``.

    Returns:
        ``{"value", "ci_low", "ci_high", "n"}`` (NaN CI when ``n_boot`` is 0 or ``n < 3``).

    Raises:
        MedinterpError: fewer than 2 rows.
    """
    X = np.asarray(X, np.float64)
    n = len(X)
    if n < 2:
        raise MedinterpError(f"participation_ratio_ci: need >= 2 items, got {n}")
    X = X - X.mean(0)  # the Gram-matrix form is exact for any offset; centring keeps it well conditioned
    value = float(_pr_weighted(X, np.ones((1, n)))[0])
    out = {"value": value, "ci_low": float("nan"), "ci_high": float("nan"), "n": n}
    if draws is None and (n_boot <= 0 or n < 3):
        return out
    if draws is None:
        draws = bootstrap_counts(n, n_boot, seed)
    boot = _pr_weighted(X, np.asarray(draws, float))
    boot = boot[np.isfinite(boot)]
    if len(boot) < 2 or not np.isfinite(value):
        return out
    tail = (1 - ci) / 2 * 100
    lo, hi = np.percentile(boot + (value - boot.mean()), [tail, 100 - tail])
    out.update(ci_low=float(lo), ci_high=float(hi))
    return out


def bootstrap_counts(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]`` multinomial resample counts of ``n`` items (one row per bootstrap resample)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n), idx.ravel()), 1.0)
    return counts


def participation_ratio_curve(
    reads: Float[np.ndarray, "n_layers n d"], *, n_boot: int = 200, ci: float = 0.95, seed: int = 0
) -> dict[str, list[float]]:
    """Per-layer participation ratio with item-bootstrap CIs (the same item resamples at every layer).

    Returns:
        ``{"per_layer", "per_layer_low", "per_layer_high"}`` (lists), the form the map's collapse rule reads.
    """
    reads = np.asarray(reads, np.float64)
    draws = bootstrap_counts(reads.shape[1], n_boot, seed) if n_boot > 0 and reads.shape[1] >= 3 else None
    rows = [participation_ratio_ci(X, n_boot=0, draws=draws) for X in reads]
    return {"per_layer": [r["value"] for r in rows], "per_layer_low": [r["ci_low"] for r in rows],
            "per_layer_high": [r["ci_high"] for r in rows]}


__all__ = ["bootstrap_counts", "participation_ratio_ci", "participation_ratio_curve"]
