"""The family questions of METHOD.md §1 on template-centred item reads, with item-level statistics.

* :func:`age_step`: the 17→18 step between consecutive age means against the matched x7→x8 steps
  (27→28, 37→38, ...): ratio with a template-bootstrap CI and a rank p-value (is it an outlier?).
* :func:`progression_order`: per disease, Spearman of stage index vs distance from stage 0, averaged
  over diseases, against a stage-permutation null that moves stage labels with items
  (:func:`medinterp.stats.item_permutations`, stratified by disease); and nearest-stage circularity
  (CSFS / CSLS) with argmin ties → undefined.
* :func:`paired_item_difference`: mean per-item difference of two per-prompt scores with a cluster
  bootstrap CI over items (drugs: specialty vs mechanism at matched class count and size).

The findings rules (issue 21) read three tests with a null that can reject: :func:`age_jump_test` (17→18
against all two-digit steps, percentile p), :func:`circularity_stat` inside :func:`progression_order`
(circular − linear stage order per disease, stage-permutation p) and :func:`labelling_excess_difference`
(specialty's excess over its lexical baseline minus mechanism's, refit-bootstrap CI).

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
from medinterp.techniques.geometry.contrast import (
    ProbeInputs,
    class_structure,
    common_structure,
    family_levels,
    subsample_structure,
)

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


def age_jump_test(
    X: Float[np.ndarray, "n d"],
    ages: Float[np.ndarray, "n"],
    templates: Shaped[np.ndarray, "n"] | None = None,
    *,
    jump: tuple[float, float] = (17, 18),
    span: tuple[float, float] = (10, 99),
    detrend: int = 3,
) -> dict[str, Any]:
    """The jump step against every same-digit-count step: is 17→18 one more step like the others?

    Age means ``m_a`` (mean over templates of each (template, age) cell mean of the template-centred
    reads ``X``); step(a) = ‖m_{a+1} − m_a‖ for every a with a and a + 1 in ``span`` (two-digit ages:
    10→11 ... 98→99, so no step changes the digit count), the jump excluded from the reference steps.
    A smooth trend is removed first: the age means minus their least-squares polynomial of degree
    ``detrend`` in age over the span (0: none). Without it a concave trend (larger steps at young ages,
    as a log-like age code gives) makes 17→18 larger than most two-digit steps with no boundary at all
    (a log trend 6x the per-age noise: 7.8% of p <= .05 without it, 4.5% with it, nominal 4.5%); the
    cubic absorbs almost nothing of a step.
    H0: the jump is exchangeable with the other steps (no boundary at 18). One-sided
    ``p = (1 + #{steps >= jump}) / (n_steps + 1)`` (88 reference steps: p can reach 0.011); ``ratio`` =
    jump / median step; ``percentile`` = share of steps below the jump.

    Args:
        X: template-centred reads of one block, one row per prompt.
        ages: age per row; templates: template per row (None: one template).
        jump: the step tested; span: the ages whose steps form the reference (same digit count).
        detrend: degree of the polynomial trend removed from the age means (0: none).

    Returns:
        dict with ``step``, ``median_step``, ``ratio``, ``p``, ``percentile``, ``n_steps``, ``steps``.
    """
    X = np.asarray(X, np.float64)
    ages = np.asarray(ages, float)
    tpl = np.zeros(len(ages), int) if templates is None else np.asarray([str(t) for t in templates])
    want = np.unique(ages[(ages >= span[0]) & (ages <= span[1])])
    if jump[0] not in want or jump[1] not in want:
        raise MedinterpError(f"age_jump_test: ages {jump} are not both present in {span}")
    keep = np.isin(ages, want)
    _, t_idx = np.unique(tpl[keep], return_inverse=True)
    a_idx = np.searchsorted(want, ages[keep])
    n_t, n_a = int(t_idx.max()) + 1, len(want)
    cell = t_idx * n_a + a_idx  # (template, age) cells, summed in one pass
    sums = np.zeros((n_t * n_a, X.shape[1]))
    np.add.at(sums, cell, X[keep])
    cnt = np.bincount(cell, minlength=n_t * n_a).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        C = (sums / cnt[:, None]).reshape(n_t, n_a, X.shape[1])
        M = np.nanmean(C, axis=0)  # [A, d]: mean over templates of the (template, age) cell means
    if detrend > 0:
        t = (want - want.mean()) / want.std()
        V = np.vander(t, detrend + 1)
        M = M - V @ np.linalg.lstsq(V, M, rcond=None)[0]
    pos = {a: i for i, a in enumerate(want)}
    ref = [a for a in want if a + 1 in pos and a != jump[0]]
    if len(ref) < 9:
        raise MedinterpError(f"age_jump_test: {len(ref)} reference steps (need >= 9)")
    steps = np.array([np.linalg.norm(M[pos[a + 1]] - M[pos[a]]) for a in ref])
    s = float(np.linalg.norm(M[pos[jump[1]]] - M[pos[jump[0]]]))
    med = float(np.median(steps))
    return {"step": s, "median_step": med, "ratio": s / med if med > 0 else NAN,
            "p": float((1 + (steps >= s - 1e-12).sum()) / (len(steps) + 1)),
            "percentile": float((steps < s).mean()), "n_steps": len(steps), "steps": steps.tolist()}


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


def circularity_stat(D: Float[np.ndarray, "p s s"]) -> Float[np.ndarray, "p"]:
    """Circular minus linear stage order of stage-mean distance matrices ``D`` (stages in order).

    Over the pairs ``i < j``: Spearman of ``D_ij`` with the circular index distance
    ``min(j − i, S − (j − i))`` minus Spearman with the linear one ``j − i``. Stages on a closed loop
    in order give > 0 (the last stage comes back near the first while the path went away), a path
    ordered on a line < 0, unordered stages ~ 0. NaN with fewer than 4 stages (no circle to tell).
    """
    D = np.asarray(D, float)
    S = D.shape[-1]
    if S < 4:
        return np.full(D.shape[0], NAN)
    i, j = np.triu_indices(S, 1)
    lin = (j - i).astype(float)
    circ = np.minimum(lin, S - lin)
    return _spearman_rows(circ, D[:, i, j]) - _spearman_rows(lin, D[:, i, j])


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
    The tested circularity is :func:`circularity_stat` (circular minus linear stage order of the stage-mean
    distances) against the same stage-permutation null: per disease ``circ_p`` = (1 + #{null >= observed})
    / (1 + n_perm) and ``circ_null_median``; ``closure`` = d(first, last) / max_s d(first, s) is shown
    beside it (alone it cannot reject: on a circle the first stage has two equally near neighbours).

    Returns:
        dict with ``spearman`` (mean), ``null_mean``, ``null_q95``, ``p_value``, ``per_disease``
        (disease → {spearman, csfs, csls, circularity, circ_p, circ_null_median, closure}), ``closes``,
        ``n_diseases``.
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
        circ = float(circularity_stat(D[None])[0])
        with np.errstate(invalid="ignore", divide="ignore"):
            closure = float(D[0, -1] / np.max(D[0, 1:]))
        per[dname] = {"spearman": rho, "csfs": _nearest(d_first), "csls": _nearest(d_last), "circularity": circ,
                      "closure": closure, "circ_p": NAN, "circ_null_median": NAN}
        obs.append(rho)
        if perms is not None:
            Dp = stage_dist(perms[:, sel])
            null.append(_spearman_rows(stages[1:], Dp[:, 0, 1:]))
            cn = circularity_stat(Dp)
            if np.isfinite(circ):  # one-sided: more circular than the stage order permuted among the items
                per[dname].update(circ_p=float((1 + (cn >= circ - 1e-12).sum()) / (1 + len(cn))),
                                  circ_null_median=float(np.nanmedian(cn)))
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


# ------------------------------------------------------------------ labelling over labelling, over lexical
def labelling_excess_difference(
    features: Float[np.ndarray, "n d"],
    lexical: Float[np.ndarray, "n k"],
    y_a: Sequence[Any],
    y_b: Sequence[Any],
    groups: Sequence[Any],
    *,
    templates: Sequence[Any] | None = None,
    match_structure: bool = True,
    n_perm: int = 200,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Does one labelling (a: specialty) decode better than another (b: mechanism), beyond the item strings?

    Per labelling, on one block's features: ``excess = (level − chance) − (lexical level − its chance)``
    (:func:`~medinterp.techniques.geometry.contrast.family_levels`: the headline's ridge probe, chance =
    refit permutation mean, the lexical baseline = the same probe on the item strings' character
    n-grams, so shared name stems count for the lexical baseline, not for the block). With
    ``match_structure`` both labellings are first subsampled to their common class structure (equal class
    count and items per class). The difference ``excess_a − excess_b`` has the SE
    ``sqrt(SE_a² + SE_b²)`` from the two labellings' refit cluster bootstraps (probe refitted on every
    replicate); the bootstraps are drawn independently, so for labellings of the same items (positively
    correlated levels) the SE is conservative. CI = normal at ``ci``; ``p`` = one-sided ``1 − Φ(diff/SE)``.

    Args:
        features: ``[n, d]`` one block's probe features (template-centred, PCA-reduced item reads).
        lexical: ``[n, k]`` the lexical baseline's features of the same rows.
        y_a, y_b: the two labellings per row; groups: CV group (item) per row; templates: template per row.
        match_structure: subsample both to their common class structure first.
        n_perm, n_boot: refit permutations (chance) and refit bootstrap replicates (SEs) per labelling.
        ci: CI level; seed: seed of subsampling, permutations and bootstraps.

    Returns:
        dict with ``value``, ``se``, ``ci_low``, ``ci_high``, ``p``, ``excess_a``, ``excess_b``,
        ``level_a``, ``lexical_a``, ``level_b``, ``lexical_b``, ``structure`` ((classes, items) or None).
    """
    from scipy.stats import norm

    X = np.asarray(features, np.float64)
    lex = np.asarray(lexical, np.float64)
    groups = np.asarray([str(g) for g in groups])
    tpl = None if templates is None else np.asarray([str(t) for t in templates])
    ins = [ProbeInputs(layers=[0], features=X[None], lexical=lex, embedding=None,
                       y=np.asarray([str(v) for v in y], dtype=object), groups=groups, templates=tpl,
                       continuous=False) for y in (y_a, y_b)]
    structure = None
    if match_structure:
        structure = common_structure(class_structure(ins[0].y, groups), class_structure(ins[1].y, groups))
        ins = [inp.subset(subsample_structure(inp.y, inp.groups, *structure, seed=seed + k))
               for k, inp in enumerate(ins)]
    fl = [family_levels(inp, n_perm=n_perm, n_boot=n_boot, seed=seed + 11 * k) for k, inp in enumerate(ins)]
    xa, xb = float(fl[0].excess[0]), float(fl[1].excess[0])
    se = float(np.hypot(fl[0].excess_se[0], fl[1].excess_se[0]))
    diff = xa - xb
    q = float(norm.ppf(0.5 + ci / 2))
    p = float(norm.sf(diff / se)) if se > 0 else NAN
    return {"value": diff, "se": se, "ci_low": diff - q * se, "ci_high": diff + q * se, "p": p,
            "excess_a": xa, "excess_b": xb, "level_a": float(fl[0].level[0]), "lexical_a": fl[0].lexical,
            "level_b": float(fl[1].level[0]), "lexical_b": fl[1].lexical, "structure": structure}
