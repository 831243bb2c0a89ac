"""Block criticality: the generic damage of removing each block, one strip per model for all families.

The KL between the intact and the block-removed next-token distribution measures how much a block
matters for *any* text: it is high at the first blocks and at the last on every model and every family,
so it says nothing about where medicine is. The map therefore does not draw it per family (its lesion
row is the drop in log p(answer) over controls) but once per model, as "block criticality".

:func:`block_criticality` runs it on any prompts (KL at each prompt's read position: the last token of a
plain string, the last prompt token of an answer prompt); :meth:`BlockCriticality.from_lesions` pools
the KL that the map's lesion runs already computed (no extra forward).

Example:
    >>> from medinterp.testing import tiny_model
    >>> bc = block_criticality(tiny_model(n_layers=2), ["fever and cough", "chest pain on exertion"], n_boot=50)
    >>> bc.layer_curve().shape, bool((bc.layer_curve() >= 0).all())
    ((2,), True)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from jaxtyping import Float

from medinterp.errors import MedinterpError
from medinterp.prompt_inputs import unit_ci, units_of
from medinterp.stats import unit_means
from medinterp.techniques.base import TechniqueResult, UnitScores
from medinterp.techniques.lesion.engine import METRICS
from medinterp.techniques.lesion.result import LesionResult
from medinterp.techniques.lesion.run import lesion


@dataclasses.dataclass
class BlockCriticality(TechniqueResult):
    """KL(intact ‖ block removed) per prompt and block, with a cluster-bootstrap CI over units.

    Attributes:
        kl: ``[n_prompts, n_layers]`` KL of the next-token distribution at each prompt's read position (nats).
        ci_low, ci_high: ``[n_layers]`` CI of the mean over prompts (cluster bootstrap over ``units``).
        units: the unit (item) of each prompt; ``prompts`` the prompt texts.
        n_boot, ci, seed: the bootstrap's settings.
    """

    kind = "block_criticality"
    kl: np.ndarray = None  # type: ignore[assignment]
    ci_low: np.ndarray = None  # type: ignore[assignment]
    ci_high: np.ndarray = None  # type: ignore[assignment]
    units: list = dataclasses.field(default_factory=list)
    prompts: list = dataclasses.field(default_factory=list)
    n_boot: int = 1000
    ci: float = 0.95
    seed: int = 0

    @property
    def curve_label(self) -> str:
        return "KL(intact ‖ block removed) of the next-token distribution (generic block criticality)"

    @property
    def n_layers(self) -> int:
        return int(self.kl.shape[1])

    def layer_curve(self) -> Float[np.ndarray, "n_layers"]:
        """Mean KL over prompts per removed block."""
        return np.asarray(self.kl, float).mean(axis=0)

    def layer_curve_ci(self) -> tuple[Float[np.ndarray, "n_layers"], Float[np.ndarray, "n_layers"]]:
        return np.asarray(self.ci_low, float), np.asarray(self.ci_high, float)

    def unit_scores(self) -> UnitScores:
        return UnitScores(values=self.kl, units=list(self.units), description="KL(intact ‖ block removed), nats")

    def summary(self, k: int = 3) -> str:
        cur, (lo, hi) = self.layer_curve(), self.layer_curve_ci()
        top = [int(i) for i in np.argsort(-cur)[:k]]
        tops = ", ".join(f"{l}: {cur[l]:.3g} [{lo[l]:.3g}, {hi[l]:.3g}]" for l in top)
        return (f"block criticality of {self.concept_set}: {len(self.kl)} prompts; most critical blocks "
                f"(KL, nats): {tops}")

    @classmethod
    def from_lesions(cls, results: Sequence[LesionResult], *, n_boot: int = 1000, ci: float = 0.95,
                     seed: int = 0) -> "BlockCriticality":
        """Pool the skip-lesion KL of lesion results that were already computed (e.g. the map's families).

        Units are ``"<concept_set>/<unit>"`` so items of different sets never merge. Prompts that were not
        lesioned (``only_known`` runs: the prompts the model does not know) are left out.

        Raises:
            MedinterpError: no results, a result without the ``skip`` mode or with a block subset,
                results of models with different depths, or no lesioned prompt at all.
        """
        results = list(results)
        if not results:
            raise MedinterpError("BlockCriticality.from_lesions: no lesion results given")
        depths = {r.n_layers for r in results}
        if len(depths) != 1:
            raise MedinterpError(f"BlockCriticality.from_lesions: results of models with different depths {sorted(depths)}")
        kl, units, prompts = [], [], []
        for r in results:
            if "skip" not in r.modes or list(r.layers) != list(range(r.n_layers)):
                raise MedinterpError(f"BlockCriticality.from_lesions: {r.concept_set!r} needs the skip mode on every "
                                     f"block (has modes {r.modes}, blocks {r.layers})")
            v = r.values("kl", "skip")
            rows = ~np.isnan(v).all(axis=1)  # prompts not lesioned (only_known runs) have no KL
            kl.append(v[rows])
            units += [f"{r.concept_set}/{u}" for u, k in zip(units_of(r.labels, r.n_prompts)[0], rows) if k]
            prompts += [p for p, k in zip(r.prompts, rows) if k]
        if not units:
            raise MedinterpError("BlockCriticality.from_lesions: no lesioned prompt in "
                                 f"{[r.concept_set for r in results]} (e.g. a model that knows none of the pairs)")
        return _build(np.concatenate(kl), units, prompts, "+".join(dict.fromkeys(r.concept_set for r in results)),
                      n_boot=n_boot, ci=ci, seed=seed, params={"pooled_from": [r.concept_set for r in results]},
                      timings={}, provenance=dict(results[0].provenance))


def _build(kl, units, prompts, name, *, n_boot, ci, seed, params, timings, provenance) -> BlockCriticality:
    _, lo, hi = unit_ci(kl, units, n_boot=n_boot, ci=ci, seed=seed)
    return BlockCriticality(kl=kl, ci_low=lo, ci_high=hi, units=list(units), prompts=list(prompts), n_boot=n_boot,
                            ci=ci, seed=seed, concept_set=name, params=params, timings=timings, provenance=provenance)


def block_criticality(
    model: Any,
    prompts: Any,
    *,
    max_prompts: int | None = None,
    batch_size: int = 16,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    progress: bool = False,
) -> BlockCriticality:
    """Generic block criticality: KL(intact ‖ block ``l`` removed) at each prompt's read position.

    Args:
        model: a HookedTransformer.
        prompts: anything :func:`medinterp.techniques.lesion.lesion` accepts (plain strings: read at
            their last token; answer prompts: at the last prompt token).
        max_prompts, batch_size, seed: as for :func:`lesion`.
        n_boot, ci: the cluster bootstrap over units (the ``item`` label, else one unit per prompt).
        progress: tqdm bars.

    Returns:
        A :class:`BlockCriticality` (one curve for the model; the map shows it once, for all families).
    """
    res = lesion(model, prompts, modes=["skip"], max_prompts=max_prompts, batch_size=batch_size, n_continuations=0,
                 n_boot=n_boot, ci=ci, seed=seed, progress=progress)
    units = units_of(res.labels, res.n_prompts)[0]
    return _build(res.metrics[:, 0, :, METRICS.index("kl")], units, res.prompts, res.concept_set, n_boot=n_boot,
                  ci=ci, seed=seed, params={"max_prompts": max_prompts, "batch_size": batch_size, "n_boot": n_boot,
                                            "ci": ci, "seed": seed},
                  timings={"total_s": res.timings["total_s"]}, provenance=res.provenance)


def criticality_extras(model: Any, res: LesionResult) -> dict[str, Any]:
    """The map's block-criticality strip: next-token KL when each block is skipped, from this run's
    skip lesions (no extra forward passes), item-level CI; nothing when no prompt was lesioned (a family
    the model does not know, run with ``only_known``)."""
    del model
    if not np.isfinite(res.values("kl", "skip")).any():  # nothing lesioned: the model knows none of the prompts
        return {}
    bc = BlockCriticality.from_lesions([res])
    return {"block_criticality": {"curve": bc.layer_curve().tolist(), "ci_low": np.asarray(bc.ci_low).tolist(),
                                  "ci_high": np.asarray(bc.ci_high).tolist(), "label": bc.curve_label,
                                  # per-item mean KL [n_items, n_blocks]: the fragility rule's item bootstrap
                                  "unit_kl": np.round(unit_means(bc.kl, np.asarray(bc.units)), 5).tolist()}}
