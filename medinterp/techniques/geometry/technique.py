"""The geometry technique's contract with the map: the ``TECHNIQUE`` adapter and its presets.

:func:`geometry` here is :func:`medinterp.techniques.geometry.run.geometry` with ``preset="quick"|"full"`` (the
map's geometry cell, from the API).
"""

from __future__ import annotations

from typing import Any, Sequence

from medinterp.techniques.base import Technique
from medinterp.techniques.geometry.findings import findings_extras
from medinterp.techniques.geometry.result import GeometryResult
from medinterp.techniques.geometry.run import geometry as _geometry
from medinterp.techniques.geometry.run import geometry_many


# ============================================================================ technique contract
def _family_params(family: Any, params: dict[str, Any]) -> dict[str, Any]:
    """A map job runs the variants only where the map gave the row some (never a control or twin run)."""
    if params.get("variants") and not getattr(family, "variants", ()):
        params = {**params, "variants": False}
    return params


def _run_family(model: Any, family: Any, *, progress: bool = True, **params: Any) -> GeometryResult:
    return _geometry(model, family.concepts, progress=progress, **_family_params(family, params))


def _run_families(model: Any, families: Sequence[Any], *, progress: bool = True, on_result: Any = None,
                  **params: Any) -> list[GeometryResult]:
    """Several families: one shared UMAP worker pool when UMAP metrics are asked for (``paper=True``);
    otherwise nothing is shared, so each family runs (and is handed to ``on_result``) as it finishes."""
    if params.get("paper") and len({bool(_family_params(f, params).get("variants")) for f in families}) == 1:
        out = geometry_many(model, [f.concepts for f in families], progress=progress,
                            **_family_params(families[0], params))
        for i, res in enumerate(out):
            if on_result is not None:
                on_result(i, res)
        return out
    out = []
    for i, fam in enumerate(families):
        out.append(_geometry(model, fam.concepts, progress=progress, **_family_params(fam, params)))
        if on_result is not None:
            on_result(i, out[-1])
    return out


TECHNIQUE = Technique(
    name="geometry",
    run_fn=_run_family,
    run_many_fn=_run_families,
    presets={
        # headline only (no UMAP): template-centred span + final-token reads, item-grouped probes
        # (the embedding output, layer -1, is read so that the map can report what a block adds over it;
        # it is not a block: the map's curve never reads it)
        # max_prompts: the time budget, in templates per item (full: drugs 6 of 9 templates, age 5, the rest
        # all; quick, a first look: one frame per item, every item, so no template-centring)
        "full": {"paper": False, "include_embed": True, "max_prompts": 1000, "min_templates": 4,
                 "n_boot_items": 1000, "n_null": 1000, "variants": True},
        "quick": {"paper": False, "include_embed": True, "max_prompts": 100, "min_templates": 1,
                  "n_boot_items": 1000, "n_null": 1000},
    },
    needs=("concepts",),
    interval_rule="rise",
    extras=findings_extras,
    extras_on_controls=True,  # statistics read from the result: the findings compare control and twin
    reads_variants=True,  # the full preset adds age_words / progression_plain findings (mid depth only)
    description="activation geometry per layer: item-grouped linear probe on template-centred item reads "
                "(+ lexical baseline, silhouette, collapse, age step, progression order)",
)

#: :func:`geometry` with ``preset="quick"|"full"``: the map's geometry cell, from the API
geometry = TECHNIQUE.with_presets(_geometry)


__all__ = ["TECHNIQUE", "geometry"]
