"""The rows of a map (families and their control families) and its columns (techniques), checked before any
work; shared by :func:`~medinterp.maps.knowledge_map`, the job matrix, shards, the Ray executor and the
job list known before the model loads."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from medinterp.errors import MedinterpError
from medinterp.maps.synthesis import registered_techniques
from medinterp.techniques import REGISTRY
from medinterp.techniques.base import Family

#: job-dir suffixes of the control runs: ``<family>__control`` (control family), ``<family>__twin`` (random twin)
CONTROL_SUFFIX, TWIN_SUFFIX = "__control", "__twin"
_FAMILY_KEYS = frozenset({"concepts", "pairs", "label", "control"})


# ============================================================================ families
def family_specs(families: Sequence[str | Family] | Mapping[str, Any] | None = None) -> dict[str, Family]:
    """Map rows → :class:`~medinterp.techniques.base.Family` (their concept and pair sets).

    Args:
        families: None (every family of :data:`medinterp.concepts.CONCEPT_FAMILIES`); a list of shipped
            family names or ``Family`` objects; or a mapping ``{row: Family}`` or ``{row: {"concepts":
            ..., "pairs": ..., "label": ...}}`` (those keys only, each optional) of your own.

    Example:
        >>> family_specs(["drugs"])["drugs"].pairs
        'drug_pairs'
        >>> family_specs({"mine": {"concept": "x"}})
        Traceback (most recent call last):
        ...
        medinterp.errors.MedinterpError: knowledge_map: family 'mine': unknown key(s) ['concept']; a family mapping has the keys ['concepts', 'control', 'label', 'pairs'] (or pass a Family)
    """
    from medinterp.concepts import CONCEPT_FAMILIES

    if isinstance(families, Mapping):
        return {str(k): _family(str(k), v) for k, v in families.items()}
    names = list(CONCEPT_FAMILIES) if families is None else list(families)
    out: dict[str, Family] = {}
    for f in names:
        if isinstance(f, Family):
            out[f.name] = f
            continue
        if not isinstance(f, str) or f not in CONCEPT_FAMILIES:
            raise MedinterpError(f"knowledge_map: unknown concept family {f!r}; known: {list(CONCEPT_FAMILIES)} "
                                 "(or pass a Family / a mapping {row: {'concepts': ..., 'pairs': ...}})")
        spec = CONCEPT_FAMILIES[f]
        out[f] = Family(f, concepts=spec["concepts"], pairs=spec["pairs"], label=f,
                        variants=tuple(spec.get("variants", ())))
    return out


def _family(name: str, spec: Any) -> Family:
    if isinstance(spec, Family):
        return spec if spec.name == name else dataclasses.replace(spec, name=name)
    if isinstance(spec, Mapping):
        bad = sorted(set(map(str, spec)) - _FAMILY_KEYS)
        if bad:
            raise MedinterpError(f"knowledge_map: family {name!r}: unknown key(s) {bad}; a family mapping has the "
                                 f"keys {sorted(_FAMILY_KEYS)} (or pass a Family)")
        return Family(name, concepts=spec.get("concepts"), pairs=spec.get("pairs"), label=str(spec.get("label") or name))
    raise MedinterpError(f"knowledge_map: family {name!r} is a {type(spec).__name__}; expected a Family or a mapping "
                         f"with the keys {sorted(_FAMILY_KEYS)}")


def _is_shipped(row: str, spec: Any) -> bool:
    """A row given as the shipped family itself (its ``Family`` with the shipped inputs): it keeps the
    shipped control."""
    from medinterp.concepts import CONCEPT_FAMILIES

    fam = CONCEPT_FAMILIES[row]
    return isinstance(spec, Family) and spec.concepts == fam.get("concepts") and spec.pairs == fam.get("pairs")


def control_specs(families: Sequence[str | Family] | Mapping[str, Any] | None = None) -> dict[str, Family | None]:
    """The control family of each map row (None where there is none).

    Shipped families: ``CONCEPT_FAMILIES[f]["control"]`` / ``["control_pairs"]``. A user mapping may give
    ``{"control": Family | {"concepts": ..., "pairs": ...}}`` per row; a bare ``Family`` has none.

    Example:
        >>> control_specs({"mine": {"concepts": ["p"], "control": {"concepts": ["q"]}}})["mine"].concepts
        ['q']
    """
    from medinterp.concepts import CONCEPT_FAMILIES

    rows = family_specs(families)
    out: dict[str, Family | None] = {}
    for row in rows:
        spec = families.get(row) if isinstance(families, Mapping) else None
        ctrl = None
        if isinstance(spec, Mapping) and spec.get("control") is not None:
            ctrl = _family(row + CONTROL_SUFFIX, spec["control"])
        elif row in CONCEPT_FAMILIES and (spec is None or _is_shipped(row, spec)):
            fam = CONCEPT_FAMILIES[row]
            if fam.get("control") or fam.get("control_pairs"):
                ctrl = Family(row + CONTROL_SUFFIX, concepts=fam.get("control"), pairs=fam.get("control_pairs"),
                              label=f"{row} control")
        out[row] = ctrl
    return out


def check_techniques(techniques: Sequence[str] | None) -> list[str]:
    """The technique names, checked against :data:`medinterp.techniques.REGISTRY` (default: all)."""
    techniques = registered_techniques() if techniques is None else list(techniques)
    bad = [t for t in techniques if t not in REGISTRY]
    if bad:
        raise MedinterpError(f"knowledge_map: unknown technique(s) {bad}; known {sorted(REGISTRY)}")
    if not techniques:
        raise MedinterpError("knowledge_map: no technique to run")
    return techniques
