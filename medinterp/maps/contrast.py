"""Marking from a technique's own comparison with its controls (METHOD §0b).

Where a technique's per-prompt scores are not independent units (out-of-fold probe scores of one fold's
probe move together), item-level permutation tests are anti-conservative. Such a technique implements
:meth:`~medinterp.techniques.base.TechniqueResult.control_contrast` (refit nulls, its own balance); the
map corrects, marks and checks robustness here exactly as for the unit-score path:

* Holm (or BH) across layers on the contrast's one-sided p-values, vs the control family and vs the twin;
* a layer is marked where both are rejected with positive effects, in runs of >= ``min_run``;
* robustness: the contrast redone ``min(n_resamples, 5)`` times with other seeds (``quick=True``: each redo
  is a full refit of both families), a layer kept where marked in >= ``robustness`` of them;
* the minimum detectable effect per layer is ``(z[1 - alpha/L] + z[0.8]) * SE``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.stats

from medinterp import stats
from medinterp.errors import MedinterpError
from medinterp.maps.balance import Balance
from medinterp.maps.marking import ControlMarking, NoScores

#: robustness resamples of a contrast (each refits both families: 15-30 s on Gemma 3 270M's full presets)
MAX_CONTRAST_RESAMPLES = 5


def _p(x: Any, n: int) -> np.ndarray:
    return np.nan_to_num(np.asarray(x, float), nan=1.0) if x is not None else np.ones(n)


def contrast_marking(medicine: Any, control: Any, twin: Any | None, *, alpha: float = 0.05,
                     correction: str = "holm", min_run: int = 2, robustness: float = 0.8, n_boot: int = 200,
                     n_resamples: int = 20, seed: int = 0, balance: bool = True, **_: Any) -> ControlMarking | None:
    """The cell's :class:`ControlMarking` from ``medicine.control_contrast(control, twin)``, or None when the
    technique has no contrast of its own (the map then tests its unit scores).

    Raises:
        NoScores: the contrast cannot be made (e.g. no common class structure: "control not comparable").
    """
    fn = getattr(medicine, "control_contrast", None)
    if not callable(fn):
        return None
    try:
        c = fn(control, twin, seed=seed, n_boot=n_boot, balance=balance)
    except MedinterpError as e:
        msg = str(e)
        raise NoScores(msg if msg.startswith("control not comparable") else f"control not comparable: {msg}",
                       "control_not_comparable", "control family") from None
    if c is None:
        return None
    n_layers = len(c.effect)
    has_twin = twin is not None and c.p_twin is not None

    def marks(cc) -> np.ndarray:
        p = stats.adjust(_p(cc.p, n_layers), correction)
        e = np.asarray(cc.effect, float)
        if has_twin:
            p = np.maximum(p, stats.adjust(_p(cc.p_twin, n_layers), correction))
            e = np.minimum(e, np.asarray(cc.effect_twin, float))
        return stats.mark_layers(p, alpha=alpha, min_run=min_run, effect=np.nan_to_num(e, nan=-np.inf),
                                 direction="greater")

    sig = marks(c)
    fraction = np.full(n_layers, np.nan)
    marked = sig.copy()
    if robustness > 0 and n_resamples > 0 and sig.any():
        def one(rng: np.random.Generator) -> np.ndarray:
            return marks(fn(control, twin, seed=int(rng.integers(2**31)), n_boot=n_boot, balance=balance, quick=True))

        rob = stats.robustness(one, min(int(n_resamples), MAX_CONTRAST_RESAMPLES), marked=sig, threshold=robustness,
                               seed=seed)
        fraction, marked = rob.fraction, rob.stable
    level = alpha / n_layers if correction == "holm" else alpha
    mde = (scipy.stats.norm.ppf(1 - level) + scipy.stats.norm.ppf(0.8)) * np.asarray(c.se, float)
    b = c.balance or {}
    names = list(b.get("covariates") or [])
    med, ctl, matched = b.get("medicine", {}), b.get("control", {}), b.get("matched") or b.get("medicine", {})

    def _d(x: float, y: float) -> float:  # the SMD of a task-level constant: 0 when equal, else +-inf
        return 0.0 if x == y else float(np.sign(x - y) * np.inf)

    bal = Balance(names, dict(med), dict(ctl), dict(matched), dict(matched), {k: _d(med[k], ctl[k]) for k in names},
                  {k: 0.0 for k in names}, np.asarray([]), np.asarray([]), int(c.n_items), int(c.n_control), True,
                  None, str(b.get("method", "the technique's own contrast")))
    nan = np.full(n_layers, np.nan)
    arr = (lambda x: np.asarray(x, float) if x is not None and has_twin else nan)
    return ControlMarking(
        effect=np.asarray(c.effect, float), ci_low=np.asarray(c.ci_low, float), ci_high=np.asarray(c.ci_high, float),
        p_adj=stats.adjust(_p(c.p, n_layers), correction), effect_twin=arr(c.effect_twin), twin_low=arr(c.twin_low),
        twin_high=arr(c.twin_high), p_adj_twin=stats.adjust(_p(c.p_twin, n_layers), correction) if has_twin else nan,
        significant=sig, robustness=fraction, marked=marked, intervals=stats.intervals_from_mask(marked),
        n_items=int(c.n_items), n_control=int(c.n_control), n_twin=int(c.n_items) if has_twin else 0,
        smallest_p_adj=0.0, mde=mde, balance=bal)


__all__ = ["MAX_CONTRAST_RESAMPLES", "contrast_marking"]
