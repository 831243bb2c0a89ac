"""The techniques, each one module behind the same contract (:mod:`medinterp.techniques.base`).

:data:`REGISTRY` maps a technique name to its :class:`~medinterp.techniques.base.Technique`; the
knowledge map reads only this. Adding a technique is one new module plus one line here (or a call to
:func:`register` from your own code).

Example:
    >>> import medinterp.techniques as t
    >>> sorted(t.REGISTRY)
    ['geometry', 'lesion', 'patching', 'saliency']
"""

from __future__ import annotations

from medinterp.techniques.base import Family, MissingInput, Technique, TechniqueResult

REGISTRY: dict[str, Technique] = {}


def register(technique: Technique) -> Technique:
    """Add (or replace) a technique in :data:`REGISTRY`; returns it."""
    REGISTRY[technique.name] = technique
    return technique


from medinterp.techniques import geometry as _geometry  # noqa: E402
from medinterp.techniques import lesion as _lesion  # noqa: E402
from medinterp.techniques import patching as _patching  # noqa: E402
from medinterp.techniques import saliency as _saliency  # noqa: E402
from medinterp.techniques import validate as _validate  # noqa: E402,F401  (its result kind; not a map technique)

register(_geometry.TECHNIQUE)
register(_saliency.TECHNIQUE)
register(_lesion.TECHNIQUE)
register(_patching.TECHNIQUE)

__all__ = ["REGISTRY", "register", "Technique", "TechniqueResult", "Family", "MissingInput"]
