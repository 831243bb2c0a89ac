"""Effect over control: a layer enters the map only where medicine beats its control family and the twin.

For one (family, technique) the map has three :class:`~medinterp.techniques.base.UnitScores`
(per-prompt evidence per block, with item ids and templates):

* ``medicine``: the model on the family;
* ``control``: the model on the family's matched non-medical control family (other items, same frames);
* ``twin``: the random-init twin (same architecture and tokenizer) on the family (same prompts).

:func:`effect_over_control` compares them with :mod:`medinterp.stats`:

1. **vs control family**, unpaired (the items differ): :func:`medinterp.stats.layer_effects` with the
   item of every prompt as its unit (prompts are averaged per item; the bootstrap resamples items, the
   permutation moves whole items between the groups);
2. **vs twin**, paired: medicine and twin rows are matched on (item, template); the per-item paired
   difference is tested by a per-item sign flip and bootstrapped over items;
3. both sets of p-values corrected across layers (``correction``: Holm or BH, :func:`medinterp.stats.adjust`);
4. a layer is **marked** where both corrected p-values are <= ``alpha`` and both effects are > 0, in
   runs of >= ``min_run`` adjacent layers (:func:`medinterp.stats.mark_layers` on the larger of the two
   p-values and the smaller of the two effects);
5. **robustness** (:func:`medinterp.stats.robustness`): steps 1-4 are redone on ``n_resamples``
   resamples (items of each group drawn with replacement, a bootstrap subset of the templates when
   there are >= 3, a fresh permutation seed); a marked layer is kept only when marked in >=
   ``robustness`` of them.

"No interval" (nothing kept) is a valid outcome. Scores that cannot be compared give a *reason*
instead of numbers (:class:`NoScores`): all NaN (e.g. a technique whose model does not know the family, with the
technique's own description), fewer than 2 items left, layer counts that differ.

Why the false-marking rate holds: under the null each of the two tests controls its family-wise
error across layers at ``alpha`` (Holm), a mark needs *both* rejections at the same layer, and run
length and robustness only remove marks; so P(any layer marked) <= alpha. ``tests/unit/test_map_controls``
checks it on 1,000 pure-noise score sets.

Example:
    >>> import numpy as np
    >>> from medinterp.techniques.base import UnitScores
    >>> rng = np.random.default_rng(0)
    >>> units = np.repeat(np.arange(20), 3); tmpl = np.tile(np.arange(3), 20)
    >>> med = rng.normal(size=(60, 6)); med[:, 2:4] += 2.0
    >>> same = {"subject_tokens": np.ones(60)}  # a covariate balanced between the families
    >>> mk = lambda v: UnitScores(v, list(units), list(tmpl), covariates=same)
    >>> out = effect_over_control(mk(med), mk(rng.normal(size=(60, 6))), mk(rng.normal(size=(60, 6))),
    ...                           n_perm=999, n_boot=200, n_resamples=10)
    >>> out.intervals
    [(2, 3)]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
from jaxtyping import Bool

from medinterp import stats
from medinterp.errors import MedinterpError
from medinterp.techniques.base import UnitScores

Correction = Literal["holm", "fdr_bh"]

#: permutations per test inside a robustness resample: its smallest p, 1/2,000, stays far below alpha / n_layers
#: for the map's layer counts (0.05 / 80 = 6e-4 for an 80-layer model), and resamples ask only "still marked?"
RESAMPLE_N_PERM = 2000

from medinterp.maps.marking import CONTROL_STATS, ControlMarking, NoScores  # noqa: E402  (re-exported)
from medinterp.maps.contrast import contrast_marking  # noqa: E402


# ============================================================================ cleaning and pairing
def clean(scores: Any, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values, units, templates)`` of a :class:`UnitScores` without the prompts that have NaN values.

    The kept rows' covariates are :func:`clean_covariates`.

    Raises:
        NoScores: not a UnitScores, all values NaN (the reason names the scores' description), or < 2 items.
    """
    if not isinstance(scores, UnitScores):
        raise NoScores(f"{what}: unit_scores() returned a {type(scores).__name__}, expected UnitScores", "failed", what)
    v = np.asarray(scores.values, dtype=float)
    units = np.asarray([str(u) for u in scores.units])
    tmpl = np.asarray([str(t) for t in scores.templates]) if scores.templates is not None else _order_in_unit(units)
    ok = np.isfinite(v).all(axis=1)
    if not ok.any():
        desc = f" ({scores.description})" if scores.description else ""
        raise NoScores(f"{what}: no finite unit scores{desc}", "no_scores", what)
    v, units, tmpl = v[ok], units[ok], tmpl[ok]
    if len(np.unique(units)) < 2:
        raise NoScores(f"{what}: fewer than 2 items with finite scores", "too_few_items", what)
    return v, units, tmpl


def clean_covariates(scores: Any) -> dict[str, np.ndarray]:
    """The covariates of the rows :func:`clean` keeps (finite values), as ``{name: array}``."""
    cov = getattr(scores, "covariates", None) or {}
    ok = np.isfinite(np.asarray(scores.values, dtype=float)).all(axis=1)
    return {k: np.asarray(v, float)[ok] for k, v in cov.items()}


def _order_in_unit(units: np.ndarray) -> np.ndarray:
    """Without template ids, the k-th prompt of an item is matched with the k-th (as strings)."""
    seen: dict[str, int] = {}
    out = []
    for u in units:
        out.append(str(seen.get(u, 0)))
        seen[u] = seen.get(u, 0) + 1
    return np.asarray(out)


def pair_rows(a_units, a_tmpl, b_units, b_tmpl) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(ia, ib)`` of the prompts present in both, matched on (unit, template).

    Example:
        >>> pair_rows(np.array(["x", "x", "y"]), np.array(["0", "1", "0"]), np.array(["y", "x"]), np.array(["0", "1"]))
        (array([1, 2]), array([1, 0]))
    """
    index = {(u, t): i for i, (u, t) in enumerate(zip(b_units, b_tmpl))}
    ia, ib = [], []
    for i, key in enumerate(zip(a_units, a_tmpl)):
        j = index.get(key)
        if j is not None:
            ia.append(i)
            ib.append(j)
    return np.asarray(ia, dtype=int), np.asarray(ib, dtype=int)


# ============================================================================ the marking
@dataclasses.dataclass
class _Data:
    med: np.ndarray
    med_u: np.ndarray
    med_t: np.ndarray
    ctrl: np.ndarray
    ctrl_u: np.ndarray
    ctrl_t: np.ndarray
    tw_med: np.ndarray | None  # None: no twin comparison (the twin cannot be measured, see mark_all)
    tw: np.ndarray | None
    tw_u: np.ndarray | None
    tw_t: np.ndarray | None


def _subset(d: _Data, med_units: np.ndarray, ctrl_units: np.ndarray) -> _Data:
    """``d`` restricted to the given medicine and control items (twin rows follow the medicine items)."""
    m = np.isin(d.med_u, med_units)
    c = np.isin(d.ctrl_u, ctrl_units)
    if d.tw is None:
        return _Data(d.med[m], d.med_u[m], d.med_t[m], d.ctrl[c], d.ctrl_u[c], d.ctrl_t[c], None, None, None, None)
    t = np.isin(d.tw_u, med_units)
    return _Data(d.med[m], d.med_u[m], d.med_t[m], d.ctrl[c], d.ctrl_u[c], d.ctrl_t[c],
                 d.tw_med[t], d.tw[t], d.tw_u[t], d.tw_t[t])


def _prepare(medicine: UnitScores, control: UnitScores, twin: UnitScores | None) -> _Data:
    med, mu, mt = clean(medicine, "medicine")
    ctrl, cu, ct = clean(control, "control family")
    if twin is None:
        if med.shape[1] != ctrl.shape[1]:
            raise NoScores(f"layer counts differ: medicine {med.shape[1]}, control {ctrl.shape[1]}")
        return _Data(med, mu, mt, ctrl, cu, ct, None, None, None, None)
    tw, tu, tt = clean(twin, "random twin")
    if not med.shape[1] == ctrl.shape[1] == tw.shape[1]:
        raise NoScores(f"layer counts differ: medicine {med.shape[1]}, control {ctrl.shape[1]}, twin {tw.shape[1]}")
    ia, ib = pair_rows(mu, mt, tu, tt)
    if len(np.unique(mu[ia])) < 2:
        raise NoScores(f"random twin: fewer than 2 items matched on (item, template) with the model ({len(ia)} prompts)",
                       "too_few_items", "random twin")
    return _Data(med, mu, mt, ctrl, cu, ct, med[ia], tw[ib], mu[ia], mt[ia])


def _mark(d: _Data, *, alpha: float, correction: str, min_run: int, n_perm: int, n_boot: int, seed: int,
          exact: bool = True):
    """Steps 1-4 of the module docstring: ``(vs control, vs twin, p_adj both, marked mask)``."""
    vs_c = stats.layer_effects(d.med, d.ctrl, medicine_units=d.med_u, control_units=d.ctrl_u,
                               n_boot=n_boot, n_perm=n_perm, seed=seed, exact=exact)
    pc = stats.adjust(vs_c.p, correction)
    if d.tw is None:  # control family only: one corrected test per layer, FWER <= alpha still
        marked = stats.mark_layers(pc, alpha=alpha, min_run=min_run, effect=vs_c.effect, direction="greater")
        return vs_c, None, pc, np.full_like(pc, np.nan), marked
    # paired: per-item means of matched rows, in the same (sorted) item order for both
    vs_t = stats.layer_effects(stats.unit_means(d.tw_med, d.tw_u), stats.unit_means(d.tw, d.tw_u), paired=True,
                               n_boot=n_boot, n_perm=n_perm, seed=seed + 1, exact=exact)
    pt = stats.adjust(vs_t.p, correction)
    marked = stats.mark_layers(np.maximum(pc, pt), alpha=alpha, min_run=min_run,
                               effect=np.minimum(vs_c.effect, vs_t.effect), direction="greater")
    return vs_c, vs_t, pc, pt, marked


def _boot_items(rng, units, tmpl, keep_t=None):
    """Items drawn with replacement (each draw a new unit id), optionally only the templates ``keep_t``."""
    ids = np.unique(units)
    picked = rng.choice(ids, size=len(ids), replace=True)
    rows, new_u = [], []
    for k, u in enumerate(picked):
        r = np.flatnonzero((units == u) & (np.isin(tmpl, keep_t) if keep_t is not None else True))
        rows.append(r)
        new_u += [f"{u}#{k}"] * len(r)
    rows = np.concatenate(rows) if rows else np.zeros(0, int)
    return rows, np.asarray(new_u)


def _resample(d: _Data, rng: np.random.Generator) -> _Data:
    """One item x template resample of all three score sets (twin rows follow the medicine items)."""
    templates = np.unique(d.med_t)
    keep_t = None
    if len(templates) >= 3:
        keep_t = np.unique(rng.choice(templates, size=len(templates), replace=True))
    rows, mu = _boot_items(rng, d.med_u, d.med_t, keep_t)
    c_keep = keep_t if keep_t is not None and np.isin(keep_t, d.ctrl_t).all() else None
    crow, cu = _boot_items(rng, d.ctrl_u, d.ctrl_t, c_keep)
    if d.tw is None:
        return _Data(d.med[rows], mu, d.med_t[rows], d.ctrl[crow], cu, d.ctrl_t[crow], None, None, None, None)
    trows, tu = _boot_items(rng, d.tw_u, d.tw_t, keep_t)
    return _Data(d.med[rows], mu, d.med_t[rows], d.ctrl[crow], cu, d.ctrl_t[crow],
                 d.tw_med[trows], d.tw[trows], tu, d.tw_t[trows])


def effect_over_control(
    medicine: UnitScores,
    control: UnitScores,
    twin: UnitScores | None,
    *,
    alpha: float = 0.05,
    correction: Correction = "holm",
    min_run: int = 2,
    robustness: float = 0.8,
    n_perm: int = 1000,
    n_boot: int = 2000,
    n_resamples: int = 20,
    seed: int = 0,
    balance: bool = True,
    max_smd: float = 0.25,
    caliper: float = 1.0,
) -> ControlMarking:
    """Per-layer effect of medicine over its control family and over the random twin, and the marks.

    With ``balance`` (the map's default) the control family must first be **comparable**
    (:func:`medinterp.maps.balance.match_units` on the scores' covariates): medicine and control items
    are matched (exact on token counts, caliper on the continuous covariates) and the tests run on the
    matched items only; a control that cannot be balanced (|SMD| > ``max_smd`` after matching, too few
    matched items, or no covariates recorded) gives a marking whose effect is shown on all items and
    that is never marked (``comparable`` is False; ``balance.reason`` says why).

    Args:
        medicine: the model's unit scores on the family.
        control: the model's unit scores on the control family (other items).
        twin: the random-init twin's unit scores on the family (same prompts; paired on item + template);
            None: marked against the control family alone (the twin's columns are NaN), for a technique
            the twin cannot be measured with (e.g. pairs a random model does not know, so nothing to restore).
        alpha: significance level after correction.
        correction: "holm" (family-wise) or "fdr_bh" (Benjamini-Hochberg).
        min_run: shortest run of marked layers kept.
        robustness: fraction of resamples a layer must be marked in (0 disables the resamples).
        n_perm: permutations per test (>= 1000 for headline numbers; Holm over L layers needs
            ``1 / (n_perm + 1) <= alpha / L`` for any layer to be markable).
        n_boot: bootstrap resamples for the CIs on the full data (resamples use 100: their CIs are unused).
        n_resamples: robustness resamples.
        seed: seed of every test, bootstrap and resample.
        balance: check and match the covariates of medicine and control (False: all items, unchecked).
        max_smd: the largest |SMD| after matching of a comparable control.
        caliper: matching caliper in pooled SDs of the continuous covariates.

    Returns:
        A :class:`ControlMarking`.

    Raises:
        NoScores: the scores cannot be compared (the reason is the message).
        MedinterpError: a bad parameter.
    """
    if correction not in ("holm", "fdr_bh"):
        raise MedinterpError(f"effect_over_control: correction must be 'holm' or 'fdr_bh', got {correction!r}")
    if not 0 < alpha < 1 or not 0 <= robustness <= 1 or min_run < 1:
        raise MedinterpError(f"effect_over_control: need 0 < alpha < 1, 0 <= robustness <= 1, min_run >= 1 "
                             f"(got {alpha}, {robustness}, {min_run})")
    d = _prepare(medicine, control, twin)
    kw = dict(alpha=alpha, correction=correction, min_run=min_run, n_perm=n_perm)
    bal = None
    if balance:
        from medinterp.maps.balance import match_units

        bal = match_units(clean_covariates(medicine), d.med_u, clean_covariates(control), d.ctrl_u,
                          max_smd=max_smd, caliper=caliper)
        if bal.comparable:
            d = _subset(d, bal.medicine_units, bal.control_units)
            if d.tw_u is not None and len(np.unique(d.tw_u)) < 2:
                raise NoScores("random twin: fewer than 2 matched items paired with the twin", "too_few_items",
                               "random twin")
    vs_c, vs_t, pc, pt, sig = _mark(d, n_boot=n_boot, seed=seed, **kw)
    n_layers = d.med.shape[1]
    if bal is not None and not bal.comparable:
        sig = np.zeros(n_layers, dtype=bool)  # never marked: the control is not comparable
    if robustness > 0 and n_resamples > 0 and sig.any():
        def one(rng: np.random.Generator) -> Bool[np.ndarray, "n_layers"]:
            r = _resample(d, rng)
            tw_items = len(np.unique(r.tw_u)) if r.tw_u is not None else 2
            if min(len(np.unique(r.med_u)), len(np.unique(r.ctrl_u)), tw_items) < 2:
                return np.zeros(n_layers, dtype=bool)
            # Monte Carlo p-values in the resamples (exact enumeration of 65,536 sign flips per resample
            # would dominate the map's marking time); 1/(n_perm + 1) stays far below alpha / n_layers
            kw_r = {**kw, "n_perm": min(int(kw["n_perm"]), RESAMPLE_N_PERM)}
            return _mark(r, n_boot=100, seed=int(rng.integers(2**31)), exact=False, **kw_r)[-1]

        rob = stats.robustness(one, n_resamples, marked=sig, threshold=robustness, seed=seed)
        fraction, marked = rob.fraction, rob.stable
    else:  # nothing significant (no resample can add a kept mark) or robustness off: no resamples
        fraction = np.full(n_layers, np.nan)
        marked = sig.copy()
    nan = np.full(n_layers, np.nan)
    floor = stats.smallest_p(vs_c.n_medicine, vs_c.n_control, paired=False, n_perm=n_perm)
    if vs_t is not None:
        floor = max(floor, stats.smallest_p(vs_t.n_medicine, vs_t.n_medicine, paired=True, n_perm=n_perm))
    smallest_adj = min(1.0, floor * n_layers) if correction == "holm" else floor  # BH: the smallest stays p
    level = alpha / n_layers if correction == "holm" else alpha  # Holm's first step: a conservative power bound
    mde = stats.minimum_detectable_effect(stats.unit_means(d.med, d.med_u), stats.unit_means(d.ctrl, d.ctrl_u),
                                          alpha=level)
    if smallest_adj > alpha:
        mde = np.full(n_layers, np.inf)
    return ControlMarking(
        effect=vs_c.effect, ci_low=vs_c.ci_low, ci_high=vs_c.ci_high, p_adj=pc,
        effect_twin=vs_t.effect if vs_t is not None else nan, twin_low=vs_t.ci_low if vs_t is not None else nan,
        twin_high=vs_t.ci_high if vs_t is not None else nan, p_adj_twin=pt,
        significant=sig, robustness=fraction, marked=marked, intervals=stats.intervals_from_mask(marked),
        n_items=vs_c.n_medicine, n_control=vs_c.n_control, n_twin=vs_t.n_medicine if vs_t is not None else 0,
        smallest_p_adj=float(smallest_adj), mde=np.asarray(mde, float), balance=bal,
    )


# ============================================================================ the map's use
def mark_all(fams, techniques, main, main_status, ctrl, ctrl_status, ctrl_fams, twin, twin_status, *,
             controls: bool, notes: dict | None = None, twin_skipped: dict | None = None,
             premarked: dict | None = None, balance_out: dict | None = None, cells_out: dict | None = None,
             **marking: Any) -> tuple[dict, dict]:
    """Effect over control of every (row, technique) of a map run.

    Args:
        fams: the map rows; techniques: the columns.
        main, ctrl, twin: results keyed by ``(row, technique)`` of the model, the control family, the twin.
        main_status, ctrl_status, twin_status: ``"ok"`` or why the job has no result, same keys (a
            :func:`medinterp.maps.cells.said` text carries its code; a plain text counts as ``not_run``).
        ctrl_fams: the control family of each row (None: none).
        controls: whether the control runs were made.
        notes: a dict that receives ``notes[row][technique]`` for cells marked against the control family
            alone: where the twin's result says it cannot be measured (``unavailable()``, e.g. the random
            twin knows none of the pairs, so there is nothing to trace) the twin comparison is dropped,
            not the cell (the control family, same model and architecture, still controls for routing).
        twin_skipped: ``{(row, technique): reason}`` of cells whose twin was not run because it could not
            change the map (:func:`medinterp.maps.twin_plan.plan_twin_skips`): the effect over the control
            family is computed and shown, never marked, and the reason is the cell's status.
        premarked: ``{(row, technique): ControlMarking}`` against the control family alone, already
            computed for a skipped twin (reused, not recomputed).
        balance_out: a dict that receives ``balance_out[row][technique]``: the control's balance table
            (:meth:`medinterp.maps.balance.Balance.to_dict`) and the cell's minimum detectable effect.
        cells_out: a dict that receives ``cells_out[row][technique]``: the cell's
            :class:`medinterp.maps.cells.CellStatus` as a dict (code, reason, closest miss), decided on the
            path below that the cell takes.
        **marking: keyword arguments of :func:`effect_over_control`.

    Returns:
        ``(stats, status)``: ``stats[row][technique]`` = ``[len(CONTROL_STATS), n_layers]`` where computed;
        ``status[row][technique]`` = ``"ok"`` or the reason shown in the map instead of a band.
    """
    from medinterp.maps.cells import CellStatus, code_of, from_marking

    out: dict = {f: {} for f in fams}
    status: dict = {f: {} for f in fams}
    cells: dict = {f: {} for f in fams}
    alpha = float(marking.get("alpha", 0.05))

    def put(f: str, t: str, code: str, text: str, reason: str | None = None) -> None:
        status[f][t] = text
        cells[f][t] = CellStatus(code, reason or text, detail=text)

    def put_m(f: str, t: str, m: ControlMarking, text: str, code: str | None = None, reason: str | None = None,
              floor: float | None = None) -> None:
        out[f][t] = m.stats_array()
        _record_balance(balance_out, f, t, m)
        status[f][t] = text
        cells[f][t] = from_marking(m, code, reason, detail=text, floor=floor, **marking)

    pending: list = []
    for f in fams:
        for t in techniques:
            key = (f, t)
            if main_status.get(key) != "ok":
                why = main_status.get(key)
                put(f, t, code_of(why, "not_run"), "no result on the model", f"the model's job: {why or 'not run'}")
            elif (unknown := _unavailable(main[key])) is not None:  # e.g. no pair known by the model
                put(f, t, "not_known", unknown)
            elif not controls:
                put(f, t, "not_run", "controls not run (controls=False)")
            elif ctrl_fams.get(f) is None:
                put(f, t, "no_control", "no control family for this row")
            elif ctrl_status.get(key) != "ok":
                put(f, t, code_of(ctrl_status.get(key), "not_run"), f"control family {ctrl_status.get(key, 'not run')}")
            elif (skip := (twin_skipped or {}).get(key)) is not None:
                try:  # effect over the control family shown; never marked (the twin could not change that)
                    m = (premarked or {}).get(key) or effect_over_control(main[key].unit_scores(),
                                                                          ctrl[key].unit_scores(), None, **marking)
                except (NotImplementedError, NoScores, MedinterpError) as e:
                    put(f, t, "too_few_items", f"too few items to mark: {skip} ({e})"[:400], skip)
                else:
                    m = dataclasses.replace(m, marked=np.zeros_like(m.marked), intervals=[])
                    n = len(m.effect)
                    floor = _paired_floor(m.n_items, n, correction=marking.get("correction", "holm"),
                                          n_perm=marking.get("n_perm", 1000))
                    if not m.comparable:
                        put_m(f, t, m, m.balance.reason, "control_not_comparable", floor=floor)
                    elif floor <= alpha:  # the twin was skipped because no layer beats the control family
                        put_m(f, t, m, skip, "not_significant", skip)
                    else:
                        put_m(f, t, m, f"too few items to mark: {m.n_items} items, {_ctrl_count(m)}; {skip}",
                              "too_few_items", f"{m.n_items} items: {skip}", floor=floor)
            elif twin_status.get(key) != "ok":
                put(f, t, code_of(twin_status.get(key), "not_run"), f"random twin {twin_status.get(key, 'not run')}")
            else:
                pending.append(key)
    # the cells that are compared run in parallel (their statistics are numpy with one BLAS thread,
    # and a refit bootstrap of one cell can take seconds): same numbers as one at a time
    done = _mark_cells_parallel(pending, main, ctrl, twin, marking)
    for key in pending:
        f, t = key
        try:
            result, error = done[key]
            if error is not None:
                raise error
            m, tw_reason = result
        except NotImplementedError:
            put(f, t, "no_scores", f"no unit scores: the {t} result does not provide unit_scores()")
        except NoScores as e:
            put(f, t, e.code, str(e))
        except MedinterpError as e:
            put(f, t, "failed", f"failed: {e}"[:300])
        else:
            if not m.comparable:  # never marked; the effect on all items is still shown
                put_m(f, t, m, m.balance.reason, "control_not_comparable")
            elif m.smallest_p_adj > alpha:  # "no interval" would claim a test that could not reject
                twin_n = f", {m.n_twin} paired with the twin" if m.n_twin else ""
                put_m(f, t, m, f"too few items to mark: {m.n_items} items, {_ctrl_count(m)}{twin_n}; the "
                      f"smallest attainable corrected p is {m.smallest_p_adj:.3g} > α = {alpha:g} (a larger "
                      "preset or more items)", "too_few_items",
                      f"{m.n_items} items and {_ctrl_count(m)}{twin_n} cannot reach α = {alpha:g}: smallest "
                      f"attainable corrected p {m.smallest_p_adj:.3g}; a larger preset or more items")
            else:
                put_m(f, t, m, "ok")
                if tw_reason and notes is not None:  # only on a markable cell
                    notes.setdefault(f, {})[t] = f"vs control family only: random twin {tw_reason}"
    for d in (out, status, cells):  # the cells in row x technique order, as one at a time gave them
        for f in fams:
            d[f] = {t: d[f][t] for t in techniques if t in d[f]}
    if cells_out is not None:
        for f in fams:
            cells_out.setdefault(f, {}).update({t: c.to_dict() for t, c in cells[f].items()})
    return out, status


def _mark_cells_parallel(keys: list, main: dict, ctrl: dict, twin: dict, marking: dict,
                         n_workers: int | None = None) -> dict:
    """``{key: (result, error)}``: :func:`_mark_cell`'s result for ``key``, or the exception it raised
    (re-raised by the caller in row order, where it is handled).

    Run on ``n_workers`` threads (default: the CPU count, at most 4) under a one-thread BLAS limit held
    for the whole pool, so no worker's BLAS changes thread count (and so its rounding) mid-run."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    def run(key: tuple) -> tuple[Any, Exception | None]:
        try:
            return _mark_cell(main[key], ctrl[key], twin[key], marking), None
        except Exception as e:  # noqa: BLE001 - handed back to the caller, which decides
            return None, e

    n = max(1, min(n_workers or (os.cpu_count() or 1), 4, len(keys) or 1))
    with threadpool_limits(limits=1, user_api="blas"):
        if n == 1:
            return {k: run(k) for k in keys}
        with ThreadPoolExecutor(n) as ex:
            return dict(zip(keys, ex.map(run, keys)))


def _mark_cell(main: Any, ctrl: Any, twin: Any, marking: dict) -> tuple[ControlMarking, str | None]:
    """One cell's marking against the control family and the twin (dropped where the twin cannot be
    measured or scores too few items): ``(marking, why the twin was dropped or None)``."""
    tw_reason = _unavailable(twin)
    # a technique whose unit scores are not independent units compares itself (refit nulls)
    m = contrast_marking(main, ctrl, None if tw_reason else twin, **marking)
    if m is not None:
        return m, tw_reason
    scores = [main.unit_scores(), ctrl.unit_scores(), None if tw_reason else twin.unit_scores()]
    try:
        m = effect_over_control(*scores, **marking)
    except NoScores as e:  # the twin scores (knows) fewer than 2 of the matched items: dropped
        if scores[2] is None or e.what != "random twin":  # as when it knows none
            raise
        tw_reason = f"scored on fewer than 2 of the matched items ({e})"
        m = effect_over_control(scores[0], scores[1], None, **marking)
    weak = _twin_too_few(m, **marking)
    if weak and not tw_reason:  # the twin scores only a few of the model's items (restoring: the pairs a
        # random model gets right by chance), too few for its paired test to reject: dropped as when it
        # knows none, not a cell that can never be marked
        tw_reason = weak
        m = effect_over_control(scores[0], scores[1], None, **marking)
    return m, tw_reason


def _record_balance(out: dict | None, f: str, t: str, m: ControlMarking) -> None:
    if out is None:
        return
    d = m.balance.to_dict() if m.balance is not None else {"comparable": None, "reason": "balance not checked"}
    mde = np.asarray(m.mde, float) if m.mde is not None else np.full(len(m.effect), np.nan)
    fin = mde[np.isfinite(mde)]
    d["mde_min"] = round(float(fin.min()), 4) if len(fin) else None
    d["mde_median"] = round(float(np.median(fin)), 4) if len(fin) else None
    d["n_items_compared"], d["n_control_compared"] = int(m.n_items), int(m.n_control)
    out.setdefault(f, {})[t] = d


def _ctrl_count(m: ControlMarking) -> str:
    """"N control items" (and how many there were before matching)."""
    b = m.balance
    if b is not None and b.comparable and b.n_control != m.n_control:
        return f"{m.n_control} matched control items (of {b.n_control})"
    return f"{m.n_control} control items"


def _paired_floor(n: int, n_layers: int, *, correction: str, n_perm: int) -> float:
    """The smallest corrected p-value a paired test on ``n`` items can reach across ``n_layers`` layers."""
    floor = stats.smallest_p(n, n, paired=True, n_perm=n_perm)
    return min(1.0, floor * n_layers) if correction == "holm" else floor  # BH: the smallest stays p


def _twin_too_few(m: ControlMarking, *, alpha: float = 0.05, correction: str = "holm", n_perm: int = 1000,
                  **_: Any) -> str | None:
    """Why the twin comparison of ``m`` is dropped, or None: the twin was scored on fewer items than the
    model and its paired test cannot reach ``alpha`` after correction with that many."""
    if not 0 < m.n_twin < m.n_items:
        return None
    adj = _paired_floor(m.n_twin, len(m.effect), correction=correction, n_perm=n_perm)
    if adj <= alpha:
        return None
    return (f"scored on only {m.n_twin} of the {m.n_items} items (too few for a paired test at α = {alpha:g}: "
            f"smallest corrected p {adj:.3g})")


def twin_not_needed(result: Any, *, alpha: float = 0.05, correction: str = "holm", n_perm: int = 1000,
                    **_: Any) -> str | None:
    """Why the random twin's run of this (row, technique) cannot change the map, or None.

    A cell is marked only where the paired test against the twin rejects too; with ``n`` scored items
    that test's smallest p-value is ``stats.smallest_p(n, n, paired=True)`` (x the layers under Holm).
    Where even that is above ``alpha`` the cell can never be marked, whatever the twin scores, so the map
    does not run the twin for it (e.g. the quick presets' 2-5 prompt curve previews).

    Args:
        result: the model's result for the cell (its ``unit_scores()`` are counted).
        alpha, correction, n_perm: the marking's.

    Returns:
        The reason (shown in the cell), or None when the twin may matter (or the scores are unreadable:
        the normal path reports that).
    """
    try:
        v, units, _ = clean(result.unit_scores(), "medicine")
    except (NoScores, NotImplementedError, MedinterpError, AttributeError):
        return None
    n = len(np.unique(units))
    adj = _paired_floor(n, v.shape[1], correction=correction, n_perm=n_perm)
    if adj <= alpha:
        return None
    return (f"the paired test against the random twin cannot reach α = {alpha:g} with {n} items (smallest "
            f"corrected p {adj:.3g}), so the twin was not run")


def _unavailable(result: Any) -> str | None:
    """The result's own reason it has no curve (``TechniqueResult.unavailable()``), None if it has one."""
    fn = getattr(result, "unavailable", None)
    return fn() if callable(fn) else None


__all__ = ["CONTROL_STATS", "twin_not_needed", "mark_all", "ControlMarking", "NoScores", "clean", "effect_over_control", "pair_rows"]
