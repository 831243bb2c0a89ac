"""Bootstrap helpers shared by the geometry metrics: resampling weights and percentile intervals.

A replicate is a row of non-negative resampling counts over the points (multinomial for a plain
bootstrap, within cells for a stratified one, whole units for a cluster bootstrap); a statistic
evaluated on weighted points gives one value per row, and :func:`boot_ci` turns the rows into a
percentile interval. Everything is vectorised over replicates.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
from jaxtyping import Float

NAN2 = (math.nan, math.nan)


def boot_weights(n: int, n_boot: int, seed: int) -> Float[np.ndarray, "b n"]:
    """Multinomial resampling counts: row b says how often each of the n points is drawn."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    w = np.zeros((n_boot, n), dtype=np.float64)
    np.add.at(w, (np.arange(n_boot)[:, None], idx), 1.0)
    return w


def strat_weights(cells: np.ndarray, n_boot: int, seed: int) -> Float[np.ndarray, "b n"]:
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


def cluster_weights(units: Sequence[Any], n_boot: int, seed: int) -> Float[np.ndarray, "b n"]:
    """Resampling counts that draw whole units (e.g. templates) with replacement; each point gets
    the count of its unit. Used where every unit covers all cells (a crossed design), so a
    replicate changes which templates are averaged, not the template mix of single cells."""
    codes, names = encode(units)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(names), size=(n_boot, len(names)))
    cnt = np.zeros((n_boot, len(names)))
    np.add.at(cnt, (np.arange(n_boot)[:, None], draw), 1.0)
    return cnt[:, codes]


def percentile_ci(reps: np.ndarray, ci: float) -> tuple[float, float]:
    reps = np.asarray(reps, dtype=float)
    reps = reps[np.isfinite(reps)]
    if reps.size < 2:
        return math.nan, math.nan
    a = (1 - ci) / 2
    lo, hi = np.quantile(reps, [a, 1 - a])
    return float(lo), float(hi)


def weighted_means(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean of per-point ``values`` [n] for each weight row [b, n], ignoring NaN values."""
    ok = np.isfinite(values)
    v = np.where(ok, values, 0.0)
    ww = w * ok[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ww @ v) / ww.sum(1)


def encode(labels: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """Integer codes and the sorted list of distinct labels."""
    arr = np.asarray([str(x) for x in labels])
    names, codes = np.unique(arr, return_inverse=True)
    return codes.astype(np.int64), names.tolist()



def boot_ci(statistic: Callable[[np.ndarray], np.ndarray], n: int, n_boot: int, ci: float,
            seed: int) -> tuple[float, float]:
    """Percentile CI of ``statistic(weights [b, n]) -> [b]`` over ``n_boot`` multinomial replicates.

    ``(nan, nan)`` when ``n_boot`` is 0. The one bootstrap loop of the point-resampled metrics
    (silhouette, anisotropy, linearity, the mean over diseases).

    Example:
        >>> lo, hi = boot_ci(lambda w: weighted_means(np.arange(100.0), w), 100, 200, 0.95, 0)
        >>> bool(lo < 49.5 < hi)
        True
    """
    if not n_boot:
        return NAN2
    return percentile_ci(statistic(boot_weights(n, n_boot, seed)), ci)


def mean_ci(values: Float[np.ndarray, " n"], n_boot: int, ci: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of the NaN-ignoring mean of per-point ``values``."""
    values = np.asarray(values, dtype=float)
    return boot_ci(lambda w: weighted_means(values, w), len(values), n_boot, ci, seed)


def crossed_weights(units: Sequence[Any] | None, cells: np.ndarray, n_boot: int,
                    seed: int) -> Float[np.ndarray, "b n"]:
    """Weights for statistics of cell means: whole ``units`` (e.g. templates) when given, else
    points resampled within their own cell (see :func:`cluster_weights` and :func:`strat_weights`)."""
    return cluster_weights(units, n_boot, seed) if units is not None else strat_weights(cells, n_boot, seed)
