"""The family questions of METHOD.md §1 on template-centred item reads, with item-level statistics.

* :func:`age_step`: the 17→18 step between consecutive age means against the matched x7→x8 steps
  (27→28, 37→38, ...): ratio with a template-bootstrap CI and a rank p-value (is it an outlier?).
* :func:`progression_order`: per disease, Spearman of stage index vs distance from stage 0, averaged
  over diseases, against a stage-permutation null that moves stage labels with items
  (:func:`medinterp.stats.item_permutations`, stratified by disease); and nearest-stage circularity
  (CSFS / CSLS) with argmin ties → undefined.
* :func:`paired_item_difference`: mean per-item difference of two per-prompt scores with a cluster
  bootstrap CI over items (drugs: specialty vs mechanism at matched class count and size).

Example:
    >>> import numpy as np
    >>> ages = np.repeat(np.arange(1, 101), 4); tpl = np.tile(np.arange(4), 100)
    >>> X = np.random.default_rng(0).normal(size=(400, 6)); X[ages >= 18, 0] += 10
    >>> r = age_step(X, ages, tpl, n_boot=200)
    >>> bool(r["ratio"] > 3 and r["outlier"])
    True
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from jaxtyping import Float, Shaped
from scipy.stats import rankdata

from medinterp.errors import MedinterpError
from medinterp.stats import cluster_bootstrap, item_permutations, unit_means

NAN = float("nan")


# ------------------------------------------------------------------------------------------ age
def _cell_means(X: np.ndarray, ages: np.ndarray, templates: np.ndarray, want: np.ndarray) -> np.ndarray:
    """``[n_templates, len(want), d]``: mean of the rows of each (template, age)."""
    tpls = np.unique(templates)
    out = np.full((len(tpls), len(want), X.shape[1]), np.nan)
    for i, t in enumerate(tpls):
        for j, a in enumerate(want):
            sel = (templates == t) & (ages == a)
            if sel.any():
                out[i, j] = X[sel].mean(0)
    return out


def matched_steps(ages: Sequence[float], jump: tuple[float, float] = (17, 18)) -> list[tuple[float, float]]:
    """The steps with the jump's units digits in the other decades present in ``ages`` (17→18: 27→28, ...,
    97→98; 7→8 is left out: a one-digit age tokenises differently)."""
    present = set(float(a) for a in ages)
    lo_d = jump[0] % 10
    out = [(10 * x + lo_d, 10 * x + lo_d + 1) for x in range(1, 10)]
    return [m for m in out if tuple(m) != tuple(jump) and m[0] in present and m[1] in present]


def age_step(
    X: Float[np.ndarray, "n d"],
    ages: Float[np.ndarray, "n"],
    templates: Shaped[np.ndarray, "n"],
    *,
    jump: tuple[float, float] = (17, 18),
    matched: Sequence[tuple[float, float]] | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The jump step between consecutive age means against matched steps (same last digits).

    Step(a→b) = ‖mean(X | age b) − mean(X | age a)‖ (Euclidean, on template-centred reads). The
    matched steps default to (x7→x8) for x = 2..9: the same units digit change, so the tokeniser does
    the same thing as at 17→18 (9→10 and 99→100 are tokenisation events and are excluded).

    CI: bootstrap over templates (whole templates drawn with replacement: every template covers every
    age, so each replicate keeps all ages and changes only which frames are averaged). The p-value is
    the rank of the jump among jump + matched steps: ``(1 + #{matched >= jump}) / (1 + n_matched)``;
    ``outlier`` = jump larger than every matched step.

    Returns:
        dict with ``step`` (jump), ``matched_mean``, ``ratio``, ``ci_low``, ``ci_high``, ``p_rank``,
        ``outlier``, ``matched_steps`` (list), ``n_matched``.
    """
    X = np.asarray(X, np.float64)
    ages = np.asarray(ages, float)
    templates = np.asarray([str(t) for t in templates])
    matched = matched_steps(ages, jump) if matched is None else \
        [m for m in matched if tuple(m) != tuple(jump) and m[0] in ages and m[1] in ages]
    if jump[0] not in ages or jump[1] not in ages:
        raise MedinterpError(f"age_step: ages {jump} are not both present")
    if len(matched) < 2:
        raise MedinterpError(f"age_step: fewer than 2 matched steps {matched} present in the ages")
    pairs = [tuple(jump)] + [tuple(m) for m in matched]
    want = np.unique(np.asarray(pairs, float).ravel())
    pos = {a: i for i, a in enumerate(want)}
    C = _cell_means(X, ages, templates, want)  # [T, A, d]
    T = C.shape[0]

    def steps(weights: np.ndarray) -> np.ndarray:  # weights [b, T] -> [b, n_pairs]
        M = np.einsum("bt,tad->bad", weights, np.nan_to_num(C)) / weights.sum(1)[:, None, None]
        return np.stack([np.linalg.norm(M[:, pos[b]] - M[:, pos[a]], axis=-1) for a, b in pairs], axis=1)

    s = steps(np.ones((1, T)))[0]
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, T, size=(n_boot, T))
    W = np.zeros((n_boot, T))
    np.add.at(W, (np.arange(n_boot)[:, None], draw), 1.0)
    S = steps(W) if n_boot else np.zeros((0, len(pairs)))
    ratios = S[:, 0] / S[:, 1:].mean(1)
    a = (1 - ci) / 2
    lo, hi = (np.quantile(ratios, [a, 1 - a]) if n_boot > 1 and T > 1 else (NAN, NAN))
    jump_s, m_s = float(s[0]), s[1:]
    return {"step": jump_s, "matched_mean": float(m_s.mean()), "ratio": float(jump_s / m_s.mean()),
            "ci_low": float(lo), "ci_high": float(hi),
            "p_rank": float((1 + (m_s >= jump_s).sum()) / (1 + len(m_s))), "outlier": bool(jump_s > m_s.max()),
            "matched_steps": [float(v) for v in m_s], "n_matched": len(m_s)}


# ---------------------------------------------------------------------------------- progression
def _spearman_rows(stage: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Spearman ρ of ``stage`` [s] with each row of ``dist`` [p, s] (ranks, then Pearson)."""
    rs = rankdata(stage)
    rd = rankdata(dist, axis=1)
    rs = rs - rs.mean()
    rd = rd - rd.mean(1, keepdims=True)
    den = np.sqrt((rs ** 2).sum() * (rd ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rd @ rs) / den


def _nearest(d: np.ndarray, tol: float = 1e-9) -> float:
    """Index of the unique smallest entry of ``d`` (NaN entries ignored); NaN when tied."""
    ok = np.isfinite(d)
    if not ok.any():
        return NAN
    m = np.nanmin(d)
    ties = np.flatnonzero(ok & (d <= m + tol * max(1.0, abs(m))))
    return float(ties[0]) if len(ties) == 1 else NAN


def progression_order(
    X: Float[np.ndarray, "n d"],
    disease: Sequence[Any],
    stage: Float[np.ndarray, "n"],
    items: Shaped[np.ndarray, "n"],
    *,
    n_perm: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Stage order and circularity of each disease's path, with a stage-permutation null.

    Per disease: the stage means ``m_s`` (mean over the items and templates of stage ``s``), the
    distances ``d_s = ‖m_s − m_0‖`` for ``s ≥ 1``, and ρ = Spearman(s, d_s) (1 = every stage is farther
    from the first than the one before: an ordered path). The statistic is ρ averaged over diseases.
    Null: stage labels permuted among each disease's items (all prompts of an item move together),
    ``n_perm`` times; p = (1 + #{null >= observed}) / (1 + n_perm).

    Circularity (the paper's nearest-stage proxies): CSFS = the stage nearest the first stage, CSLS =
    the stage nearest the last stage; a tie of the nearest distance makes it undefined (NaN), never
    stage 0. ``closes`` = the share of diseases whose last stage is nearest the first (CSLS = 0).

    Returns:
        dict with ``spearman`` (mean), ``null_mean``, ``null_q95``, ``p_value``, ``per_disease``
        (disease → {spearman, csfs, csls}), ``closes``, ``n_diseases``.
    """
    X = np.asarray(X, np.float64)
    disease = np.asarray([str(v) for v in disease])
    stage = np.asarray(stage, float)
    items = np.asarray([str(v) for v in items])
    first = np.unique(items, return_index=True)[1]
    it_names = items[first]
    I = unit_means(X, items)  # [n_items, d] in sorted item order (np.unique order)
    it_dis, it_stage = disease[first], stage[first]
    perms = item_permutations(stage, items, strata=disease, n_perm=n_perm, seed=seed)[:, first] if n_perm else None
    per, obs, null = {}, [], []
    for dname in np.unique(it_dis):
        sel = np.flatnonzero(it_dis == dname)
        stages = np.unique(it_stage[sel])
        if len(stages) < 3:
            continue
        G = I[sel] @ I[sel].T

        def stage_dist(assign: np.ndarray) -> np.ndarray:  # assign [p, m] stage per item -> D [p, S, S]
            H = (assign[:, None, :] == stages[None, :, None]).astype(float)  # [p, S, m]
            H /= np.maximum(H.sum(2, keepdims=True), 1)
            M = (H @ G) @ H.transpose(0, 2, 1)  # [p, S, S] Gram of the stage means
            diag = np.einsum("pss->ps", M)
            return np.sqrt(np.maximum(diag[:, :, None] + diag[:, None, :] - 2 * M, 0.0))

        D = stage_dist(it_stage[sel][None])[0]
        rho = float(_spearman_rows(stages[1:], D[0, 1:][None])[0])
        d_first = D[0].copy()
        d_first[0] = np.nan
        d_last = D[-1].copy()
        d_last[-1] = np.nan
        per[dname] = {"spearman": rho, "csfs": _nearest(d_first), "csls": _nearest(d_last)}
        obs.append(rho)
        if perms is not None:
            Dp = stage_dist(perms[:, sel])
            null.append(_spearman_rows(stages[1:], Dp[:, 0, 1:]))
    if not obs:
        raise MedinterpError("progression_order: no disease with >= 3 stages")
    stat = float(np.nanmean(obs))
    out = {"spearman": stat, "per_disease": per, "n_diseases": len(obs),
           "closes": float(np.mean([v["csls"] == 0 for v in per.values()])),
           "null_mean": NAN, "null_q95": NAN, "p_value": NAN}
    if null:
        nl = np.nanmean(np.stack(null), axis=0)
        out.update(null_mean=float(np.nanmean(nl)), null_q95=float(np.nanquantile(nl, 0.95)),
                   p_value=float((1 + (nl >= stat - 1e-12).sum()) / (1 + len(nl))))
    return out


# ----------------------------------------------------------------------------- paired difference
def paired_item_difference(
    a: Float[np.ndarray, "n *layers"],
    b: Float[np.ndarray, "n *layers"],
    units: Shaped[np.ndarray, "n"],
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Mean per-item difference ``a − b`` of two per-prompt scores, CI by bootstrapping items.

    Returns:
        dict of arrays (scalars or ``[layers]``): ``diff``, ``ci_low``, ``ci_high``, ``n_items``.
    """
    d = np.asarray(a, float) - np.asarray(b, float)
    per_item = unit_means(d, np.asarray(units))
    if per_item.shape[0] < 2:
        raise MedinterpError("paired_item_difference: need at least 2 items")
    bs = cluster_bootstrap(per_item, n_boot=n_boot, ci=ci, seed=seed)
    return {"diff": np.asarray(bs.estimate), "ci_low": np.asarray(bs.low), "ci_high": np.asarray(bs.high),
            "n_items": per_item.shape[0]}
