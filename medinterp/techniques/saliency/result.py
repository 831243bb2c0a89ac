"""The saliency result: per-prompt statistics and their bootstrap table (computed once, by the run)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar

import numpy as np
from jaxtyping import Float

from medinterp.covariates import from_matrix
from medinterp.errors import MedinterpError
from medinterp.results import bootstrap_ci
from medinterp.prompt_inputs import units_of
from medinterp.techniques.base import TechniqueResult, UnitScores
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
        share: ``[n_prompts, n_layers, 3]``: the block's (attention's, MLP's, both's) share of the
            prompt's total ``Σ|∂L/∂w · w|`` over all blocks (combined sums to 1 over layers). The map's
            curve: scale-free, so a family, its control and the random-init twin compare.
        share_ci: ``[2, n_layers, 3]`` low / high of the mean share, by a cluster bootstrap over units
            (items: all prompts of one item move together).
        block_numel: ``[n_layers, 3]`` number of weights of each block's group.
        covariates: ``[n_prompts, k]`` per-prompt covariates (METHOD §0b), named by
            :attr:`covariate_names` (``subject_tokens``, ``tokens_after_subject``, ``prompt_tokens``,
            ``answer_prior``, ``intact_logp``, ``intact_ld``); None in results saved before 0.3.
        covariate_names: the names of the columns of :attr:`covariates`.

    Why ``|g·w|`` by default: Gemma 3's post-norms and QK-norm make most block weights scale-invariant
    (``⟨g, w⟩ = 0`` and ``‖g‖ ∝ 1/‖W‖``), so mean ``|g|`` ranks layers by inverse weight norm; ``|g·w|``
    (the first-order effect of removing each weight) does not change when a weight is rescaled.
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
    share: np.ndarray = None  # type: ignore[assignment]
    share_ci: np.ndarray = None  # type: ignore[assignment]
    block_numel: np.ndarray = None  # type: ignore[assignment]
    covariates: np.ndarray | None = None
    covariate_names: list = dataclasses.field(default_factory=list)

    @property
    def curve_label(self) -> str:
        return "block's share of Σ|∂(−log p(answer))/∂w · w| over all blocks (attention + MLP weights)"

    def unit_scores(self, component: str = "combined") -> UnitScores:
        """Per prompt and block: the block's share of the prompt's total ``|g·w|`` (higher = more of
        the answer's gradient there); units are the items (``item`` label, else the prompt index);
        covariates: :attr:`covariates` by name (empty for results saved without them)."""
        c = self._idx(component, "grad_x_weight")[0]
        units, templates = units_of(self.labels, self.n_prompts)
        return UnitScores(values=self.share[:, :, c], units=units, templates=templates,
                          description=f"share of Σ|∂(−log p)/∂w · w| over blocks ({component})",
                          covariates=from_matrix(self.covariates, self.covariate_names))

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
    def layer_curve(self, variant: str = "share", component: str = "combined") -> Float[np.ndarray, "n_layers"]:
        """Mean over prompts of the per-block saliency.

        Default ``"share"``: the block's share of the total ``|g·w|`` (:attr:`share`); otherwise one
        of :data:`VARIANTS` (a per-weight mean, e.g. ``"grad"``, the paper's mean ``|∂L/∂w|``).
        """
        if variant == "share":
            return self.share[:, :, self._idx(component, "grad_x_weight")[0]].mean(axis=0)
        c, v = self._idx(component, variant)
        return self.values[:, :, c, v].mean(axis=0)

    def layer_curve_ci(
        self, variant: str = "share", component: str = "combined"
    ) -> tuple[Float[np.ndarray, "n_layers"], Float[np.ndarray, "n_layers"]]:
        """``(low, high)`` of :meth:`layer_curve`: for the share, the cluster bootstrap over units computed
        by the run; for the other variants, the prompt bootstrap of the aggregated table."""
        if variant == "share":
            c = self._idx(component, "grad_x_weight")[0]
            return self.share_ci[0, :, c], self.share_ci[1, :, c]
        self._idx(component, variant)
        t = self.table
        rows = t[(t["component"] == component) & (t["variant"] == variant)].sort_values("layer")
        return rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float)

    def layer_curve_by(
        self, label: str, variant: str = "share", component: str = "combined"
    ) -> dict[Any, Float[np.ndarray, "n_layers"]]:
        """:meth:`layer_curve` separately for each value of a per-prompt label (e.g. ``"specialty"``)."""
        if label not in self.labels:
            raise MedinterpError(f"label {label!r} not in this result; available: {sorted(self.labels)}")
        if variant == "share":
            arr = self.share[:, :, self._idx(component, "grad_x_weight")[0]]
        else:
            c, v = self._idx(component, variant)
            arr = self.values[:, :, c, v]
        vals = np.asarray(self.labels[label], dtype=object)
        return {k: arr[vals == k].mean(axis=0) for k in dict.fromkeys(self.labels[label])}

    def top_layers(self, k: int = 3, variant: str = "share", component: str = "combined") -> list[int]:
        """The ``k`` blocks with the highest :meth:`layer_curve`."""
        return [int(i) for i in np.argsort(-self.layer_curve(variant, component))[:k]]

    def summary(self, k: int = 3) -> str:
        """A few readable lines: top blocks by share of |g·w| with cluster-bootstrap CIs, embed / unembed."""
        cur = self.layer_curve()
        lo, hi = self.layer_curve_ci()
        lines = [f"saliency of {self.concept_set}: {self.n_prompts} prompts, mean loss {np.mean(self.loss):.3f} nats"]
        for l in self.top_layers(k):
            lines.append(f"  block {l:>3}: share of |g·w| {cur[l]:.3g}  [{lo[l]:.3g}, {hi[l]:.3g}]")
        t = self.table
        for o in OUTER:
            r = t[(t["component"] == o) & (t["variant"] == "grad")]
            if len(r) and np.isfinite(r["mean"].iloc[0]):
                lines.append(f"  {o:>9}: mean|grad| {r['mean'].iloc[0]:.3g}  [{r['ci_low'].iloc[0]:.3g}, {r['ci_high'].iloc[0]:.3g}]")
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

