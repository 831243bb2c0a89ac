"""The saliency result: per-prompt statistics and their bootstrap table (computed once, by the run)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar

import numpy as np
from jaxtyping import Float

from medinterp.errors import MedinterpError
from medinterp.results import bootstrap_ci
from medinterp.techniques.base import TechniqueResult
from medinterp.techniques.saliency.engine import COMPONENTS, OUTER, VARIANTS


@dataclasses.dataclass
class SaliencyResult(TechniqueResult):
    """Per-prompt and aggregated weight-gradient saliency.

    Attributes:
        values: ``[n_prompts, n_layers, 3, 3]``: prompt × block × component (``attn, mlp, combined``) ×
            variant (``grad, grad_x_weight, grad_norm_ratio``).
        outer_values: ``[n_prompts, 2, 3]``: prompt × (``embed, unembed``) × variant (NaN if not measured).
        param_values: ``[n_prompts, n_params, 3]``: the same variants for every measured parameter.
        param_names: names of those parameters.
        loss: ``[n_prompts]`` the loss ``-log p(target | prompt)`` (nats, summed over target tokens).
        n_target_tokens: ``[n_prompts]``.
        table: aggregated over prompts (:func:`aggregate_table`), long format: ``layer, component,
            variant, mean, ci_low, ci_high, n_prompts`` (embedding rows have layer −1, unembedding rows
            layer ``n_layers``).
        prompts, targets: the prompts as given and the scored target strings.
        labels: per-prompt labels from the concept set (e.g. specialty, mechanism, item).
        memory: ``peak_rss_delta_mb`` (extra resident memory during the run) and ``all_grads_mb``
            (what holding every gradient at once would have cost).
        timings: wall-clock seconds, total and per prompt.
    """

    kind = "saliency"
    _legacy_fields: ClassVar[dict] = {"timing": "timings"}
    values: np.ndarray = None  # type: ignore[assignment]
    outer_values: np.ndarray = None  # type: ignore[assignment]
    param_values: np.ndarray = None  # type: ignore[assignment]
    param_names: list = dataclasses.field(default_factory=list)
    loss: np.ndarray = None  # type: ignore[assignment]
    n_target_tokens: np.ndarray = None  # type: ignore[assignment]
    table: Any = None
    prompts: list = dataclasses.field(default_factory=list)
    targets: list = dataclasses.field(default_factory=list)
    labels: dict = dataclasses.field(default_factory=dict)
    concept_set: str = "custom"
    components: list = dataclasses.field(default_factory=lambda: list(COMPONENTS))
    variants: list = dataclasses.field(default_factory=lambda: list(VARIANTS))
    ci: float = 0.95
    memory: dict = dataclasses.field(default_factory=dict)

    @property
    def curve_label(self) -> str:
        return "mean |∂(−log p)/∂w| over the block's attention + MLP weights"

    @property
    def n_layers(self) -> int:
        return int(self.values.shape[1])

    @property
    def n_prompts(self) -> int:
        return int(self.values.shape[0])

    def _idx(self, component: str, variant: str) -> tuple[int, int]:
        if component not in self.components:
            raise MedinterpError(f"component {component!r}; expected one of {self.components}")
        if variant not in self.variants:
            raise MedinterpError(f"variant {variant!r}; expected one of {self.variants}")
        return self.components.index(component), self.variants.index(variant)

    # ------------------------------------------------------------------ curves
    def layer_curve(self, variant: str = "grad", component: str = "combined") -> Float[np.ndarray, "n_layers"]:
        """Mean over prompts of the per-block saliency (default: combined mean |∂L/∂w|)."""
        c, v = self._idx(component, variant)
        return self.values[:, :, c, v].mean(axis=0)

    def layer_curve_ci(
        self, variant: str = "grad", component: str = "combined"
    ) -> tuple[Float[np.ndarray, "n_layers"], Float[np.ndarray, "n_layers"]]:
        """Bootstrap ``(low, high)`` of :meth:`layer_curve`, from the aggregated table."""
        self._idx(component, variant)
        t = self.table
        rows = t[(t["component"] == component) & (t["variant"] == variant)].sort_values("layer")
        return rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float)

    def layer_curve_by(
        self, label: str, variant: str = "grad", component: str = "combined"
    ) -> dict[Any, Float[np.ndarray, "n_layers"]]:
        """:meth:`layer_curve` separately for each value of a per-prompt label (e.g. ``"specialty"``)."""
        if label not in self.labels:
            raise MedinterpError(f"label {label!r} not in this result; available: {sorted(self.labels)}")
        c, v = self._idx(component, variant)
        vals = np.asarray(self.labels[label], dtype=object)
        return {k: self.values[vals == k, :, c, v].mean(axis=0) for k in dict.fromkeys(self.labels[label])}

    def top_layers(self, k: int = 3, variant: str = "grad", component: str = "combined") -> list[int]:
        """The ``k`` blocks with the highest :meth:`layer_curve`."""
        return [int(i) for i in np.argsort(-self.layer_curve(variant, component))[:k]]

    def summary(self, k: int = 3) -> str:
        """A few readable lines: top blocks (combined mean |grad|) with CIs, embed / unembed."""
        cur = self.layer_curve()
        lo, hi = self.layer_curve_ci()
        lines = [f"saliency of {self.concept_set}: {self.n_prompts} prompts, mean loss {np.mean(self.loss):.3f} nats"]
        for l in self.top_layers(k):
            lines.append(f"  block {l:>3}: mean|grad| {cur[l]:.4g}  [{lo[l]:.4g}, {hi[l]:.4g}]")
        t = self.table
        for o in OUTER:
            r = t[(t["component"] == o) & (t["variant"] == "grad")]
            if len(r) and np.isfinite(r["mean"].iloc[0]):
                lines.append(f"  {o:>9}: mean|grad| {r['mean'].iloc[0]:.4g}  [{r['ci_low'].iloc[0]:.4g}, {r['ci_high'].iloc[0]:.4g}]")
        if self.memory:
            lines.append(
                f"  peak extra RSS {self.memory.get('peak_rss_delta_mb')} MB "
                f"(all gradients at once would be {self.memory.get('all_grads_mb')} MB)"
            )
        return "\n".join(lines)


def aggregate_table(
    values: np.ndarray, outer_values: np.ndarray, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
):
    """Long-format table of prompt means with percentile-bootstrap CIs (NaN-aware)."""
    import pandas as pd

    n_layers = values.shape[1]
    stat = lambda s: np.nanmean(s, axis=0)  # noqa: E731
    rows = []
    est, lo, hi = bootstrap_ci(values, stat, n_boot=n_boot, ci=ci, seed=seed)
    for l in range(n_layers):
        for c, comp in enumerate(COMPONENTS):
            for v, var in enumerate(VARIANTS):
                rows.append((l, comp, var, est[l, c, v], lo[l, c, v], hi[l, c, v]))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN columns (embedding not measured)
        if np.isfinite(outer_values).any():
            est, lo, hi = bootstrap_ci(outer_values, stat, n_boot=n_boot, ci=ci, seed=seed)
        else:
            est = lo = hi = np.full(outer_values.shape[1:], np.nan)
    for o, name in enumerate(OUTER):
        layer = -1 if name == "embed" else n_layers
        for v, var in enumerate(VARIANTS):
            rows.append((layer, name, var, est[o, v], lo[o, v], hi[o, v]))
    df = pd.DataFrame(rows, columns=["layer", "component", "variant", "mean", "ci_low", "ci_high"])
    df["n_prompts"] = values.shape[0]
    return df

