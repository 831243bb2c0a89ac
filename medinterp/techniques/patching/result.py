"""PatchingResult: patching values with axes ``[pair, layer, position, head]``, their means and CIs."""

from __future__ import annotations

import dataclasses
import warnings
from typing import ClassVar

import numpy as np
from jaxtyping import Float

from medinterp.errors import MedinterpError
from medinterp.techniques.base import TechniqueResult

_POSITION_WORDS = {"last": "at the last position", "all": "at the last position", "span": "at the differing tokens",
                   "all_at_once": "at all positions at once"}


@dataclasses.dataclass
class PatchingResult(TechniqueResult):
    """Patching values with axes ``[pair, layer, position, head]``.

    Fields (besides ``concept_set`` = the pair set's name, ``params``, ``timings``, ``provenance``):
        values: the metric per pair and cell (``P`` by default); NaN where a cell does not exist
            for a pair (shorter prompt) or the pair was excluded (near-zero denominator, P only).
        ld: the raw patched logit difference, same shape.
        mean, ci_low, ci_high: ``[layer, position, head]`` over the included pairs (bootstrap CI),
            computed once by the run function.
        clean_metric, corrupted_metric, clean_ld, corrupted_ld: ``[pair]`` baselines.
        included: ``[pair]`` bool, pairs that enter the mean.
        site, method (exact / attribution / path), metric, position_mode: what was run.
        layers, positions, heads: axis labels; ``position_tokens`` readable position labels.
        pairs: the kept pairs (row and texts); excluded: kept but left out of the mean, with reasons;
            dropped: invalid pairs with the reason (the pair rule of ``PairSet.check``).
        diagnostics: engine counters (rows, forward calls, resumed units), attribution checks
            (top-k verification, correlation with the exact sweep); was ``extra`` in 0.1.0.

    Example:
        >>> z = np.zeros((3, 1, 1), np.float32)
        >>> r = PatchingResult(values=np.zeros((2, 3, 1, 1)), mean=z, ci_low=z, ci_high=z, layers=[0, 1, 2],
        ...                    positions=["last"])
        >>> r.layer_curve().shape, r.curve_label
        ((3,), 'P after patching resid_pre at the last position')
    """

    kind: ClassVar[str] = "patching"
    _legacy_fields: ClassVar[dict] = {"extra": "diagnostics"}

    values: np.ndarray = None
    ld: np.ndarray = None
    mean: np.ndarray = None
    ci_low: np.ndarray = None
    ci_high: np.ndarray = None
    clean_metric: np.ndarray = None
    corrupted_metric: np.ndarray = None
    clean_ld: np.ndarray = None
    corrupted_ld: np.ndarray = None
    included: np.ndarray = None
    site: str = "resid_pre"
    method: str = "exact"
    metric: str = "P"
    position_mode: str = "all"
    layers: list = dataclasses.field(default_factory=list)
    positions: list = dataclasses.field(default_factory=list)
    position_tokens: list = dataclasses.field(default_factory=list)
    heads: list = dataclasses.field(default_factory=lambda: [0])
    axes: list = dataclasses.field(default_factory=lambda: ["pair", "layer", "position", "head"])
    pairs: list = dataclasses.field(default_factory=list)
    excluded: list = dataclasses.field(default_factory=list)
    dropped: list = dataclasses.field(default_factory=list)
    diagnostics: dict = dataclasses.field(default_factory=dict)

    # -------------------------------------------------------------- curves for the map
    def pos_index(self, position: int | str) -> int:
        """Column of the position axis: an index, ``"last"`` (the last column) or a label."""
        if isinstance(position, int):
            return position
        if position == "last":
            return len(self.positions) - 1
        if position in self.positions:
            return self.positions.index(position)
        raise MedinterpError(f"position {position!r} not in {self.positions}")

    def _reduce(self, arr: np.ndarray, position: int | str, heads: str) -> np.ndarray:
        if heads not in ("max", "sum", "mean"):
            raise MedinterpError(f"heads must be 'max', 'sum' or 'mean', got {heads!r}")
        a = arr[:, self.pos_index(position), :]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmax(a, axis=-1) if heads == "max" else np.nansum(a, axis=-1) if heads == "sum" else np.nanmean(a, axis=-1)

    def layer_curve(self, position: int | str = "last", heads: str = "max") -> Float[np.ndarray, "n_layers"]:
        """Per-layer score for the knowledge map: mean (over pairs) metric at ``position`` (default
        the last position column), reduced over heads by ``heads`` (``max``/``sum``/``mean``).
        For ``resid_pre`` with P this is the fraction of the clean behaviour restored by patching
        that layer's residual stream at the last token."""
        return self._reduce(np.asarray(self.mean), position, heads)

    def layer_curve_ci(self, position: int | str = "last", heads: str = "max") -> tuple[np.ndarray, np.ndarray]:
        """Bootstrap CI ``(low, high)`` matching :meth:`layer_curve` (exact when there is one head)."""
        return self._reduce(np.asarray(self.ci_low), position, heads), self._reduce(np.asarray(self.ci_high), position, heads)

    @property
    def curve_label(self) -> str:
        """What :meth:`layer_curve` measures, e.g. ``"P after patching resid_pre at the last position"``."""
        where = _POSITION_WORDS.get(self.position_mode)
        if where is None:  # a list of positions: the curve reads the last listed one
            where = f"at {self.positions[-1]}" if self.positions else "at the last listed position"
        heads = ", max over heads" if len(self.heads) > 1 else ""
        if self.method == "path":
            return f"{self.metric} after path patching from {self.site} {where}{heads}"
        est = " (attribution estimate)" if self.method == "attribution" else ""
        return f"{self.metric}{est} after patching {self.site} {where}{heads}"

    def summary(self) -> str:
        """Pairs used / dropped / excluded and where the layer curve peaks."""
        n_inc = int(np.sum(self.included)) if self.included is not None else 0
        head = (f"{self.method} patching of {self.site} on {self.concept_set or 'pairs'}: {len(self.pairs)} pairs kept "
                f"({n_inc} in the mean), {len(self.dropped)} dropped, {len(self.excluded)} excluded (near-zero denominator)")
        curve = np.asarray(self.layer_curve(), float) if self.mean is not None else np.array([])
        if not np.isfinite(curve).any():
            return head + "; no finite layer values"
        best = int(np.nanargmax(curve))
        return f"{head}; {self.curve_label}: max {curve[best]:.3f} at layer {self.layers[best]}"

    def to_dataframe(self):
        """Long-format pandas DataFrame (pair, layer, position, head, value, ld); ``to_frame`` is an alias."""
        import pandas as pd

        P, L, N, H = self.values.shape
        idx = np.array(np.meshgrid(np.arange(P), np.arange(L), np.arange(N), np.arange(H), indexing="ij")).reshape(4, -1)
        return pd.DataFrame({
            "pair": idx[0], "layer": np.asarray(self.layers)[idx[1]], "position": np.asarray(self.positions)[idx[2]],
            "head": np.asarray(self.heads)[idx[3]], "value": self.values.reshape(-1), "ld": self.ld.reshape(-1),
        })

    to_frame = to_dataframe  # the 0.x name
