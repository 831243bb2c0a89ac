"""medinterp: where a language model keeps and processes medical knowledge.

The public API is imported lazily so that ``import medinterp`` stays fast (torch and
TransformerLens load on first use).

Example:
    >>> import medinterp as mi
    >>> callable(mi.load_model)
    True
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_model": "medinterp.models",
    "list_models": "medinterp.models",
    "model_info": "medinterp.models",
    "collect_activations": "medinterp.activations",
    "ActivationSet": "medinterp.activations",
    "load_concepts": "medinterp.concepts",
    "list_concepts": "medinterp.concepts",
    "ConceptSet": "medinterp.concepts",
    "PairSet": "medinterp.concepts",
    "geometry": "medinterp.techniques.geometry",
    "saliency": "medinterp.techniques.saliency",
    "lesion": "medinterp.techniques.lesion",
    "patch": "medinterp.techniques.patching",
    "path_patch": "medinterp.techniques.patching",
    "attribution_patch": "medinterp.techniques.patching",
    "knowledge_map": "medinterp.maps",
    "KnowledgeMap": "medinterp.maps",
    "compare": "medinterp.maps",
    "Result": "medinterp.results",
    "MedinterpError": "medinterp.errors",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'medinterp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
