"""The result of marking one (family, technique) cell against its controls (:class:`ControlMarking`), shared
by the unit-score path (:mod:`medinterp.maps.controls`) and a technique's own contrast
(:mod:`medinterp.maps.contrast`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from jaxtyping import Float

from medinterp.errors import MedinterpError


#: the per-layer statistics a (family, technique) cell stores, in ``KnowledgeMap.control_stats`` order.
CONTROL_STATS: tuple[str, ...] = ("effect", "ci_low", "ci_high", "p_adj", "effect_twin", "twin_low", "twin_high",
                                  "p_adj_twin", "marked", "robustness", "mde")


class NoScores(MedinterpError):
    """A technique's unit scores cannot be compared (the message is the reason the map shows).

    Attributes:
        code: the cell's code (:data:`medinterp.maps.cells.CODES`): ``no_scores`` (all NaN, not unit
            scores), ``too_few_items`` (< 2 items), ``control_not_comparable``, ``failed`` (layer counts differ).
        what: which scores: ``"medicine"``, ``"control family"``, ``"random twin"`` or None.
    """

    def __init__(self, message: str, code: str = "failed", what: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.what = what


@dataclasses.dataclass
class ControlMarking:
    """Effect over control of one (family, technique): both comparisons, the marks, their robustness.

    Attributes:
        effect, ci_low, ci_high, p_adj: ``[n_layers]`` medicine minus control family (item-level CI,
            corrected p).
        effect_twin, twin_low, twin_high, p_adj_twin: ``[n_layers]`` medicine minus random twin (paired).
        significant: ``[n_layers]`` marked on the full data (both beaten, runs >= ``min_run``).
        robustness: ``[n_layers]`` fraction of resamples marking each layer (NaN when no resample was
            run: no layer significant on the full data, or robustness off).
        marked: ``[n_layers]`` the map's marks: ``significant`` and ``robustness >= threshold``.
        intervals: inclusive runs of ``marked``; ``[]`` is "no interval".
        n_items, n_control, n_twin: items in each comparison.
        smallest_p_adj: the smallest corrected p-value these item counts can give at any layer
            (:func:`medinterp.stats.smallest_p`, times the number of layers for Holm); above ``alpha`` no
            layer can be marked, whatever the data.
        mde: ``[n_layers]`` minimum detectable effect over the control family (80% power at
            ``alpha / n_layers``, :func:`medinterp.stats.minimum_detectable_effect`) on the compared items;
            inf where the item counts cannot reach alpha.
        balance: the control's :class:`medinterp.maps.balance.Balance` (None: not checked).
    """

    effect: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p_adj: np.ndarray
    effect_twin: np.ndarray
    twin_low: np.ndarray
    twin_high: np.ndarray
    p_adj_twin: np.ndarray
    significant: np.ndarray
    robustness: np.ndarray
    marked: np.ndarray
    intervals: list
    n_items: int
    n_control: int
    n_twin: int
    smallest_p_adj: float = 0.0
    mde: np.ndarray | None = None
    balance: Any = None

    @property
    def comparable(self) -> bool:
        """Whether the control family passed the balance check (True when it was not checked)."""
        return self.balance is None or bool(self.balance.comparable)

    def stats_array(self) -> Float[np.ndarray, "n_stats n_layers"]:
        """The :data:`CONTROL_STATS` rows stacked (``marked`` as 0/1)."""
        n = len(self.effect)
        return np.stack([np.asarray(getattr(self, k) if getattr(self, k) is not None else np.full(n, np.nan),
                                    dtype=float) for k in CONTROL_STATS])


__all__ = ["CONTROL_STATS", "ControlMarking", "NoScores"]
