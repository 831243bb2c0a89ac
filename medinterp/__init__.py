"""medinterp: where a language model keeps and processes medical knowledge.

The public API is imported lazily so that ``import medinterp`` stays fast (torch and
TransformerLens load on first use). The first access to any API name also imports
:mod:`medinterp.maps` (which imports :mod:`medinterp.techniques`) and :mod:`medinterp.viz`, so every
shipped result kind and renderer is registered: the top floor importing downwards.

Example:
    >>> import medinterp as mi
    >>> callable(mi.load_model)
    True
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.5.1"

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
    "causal_trace": "medinterp.techniques.patching",
    "path_patch": "medinterp.techniques.patching",
    "attribution_patch": "medinterp.techniques.patching",
    "validate_band": "medinterp.techniques.validate",
    "REGISTRY": "medinterp.techniques",
    "knowledge_map": "medinterp.maps",
    "KnowledgeMap": "medinterp.maps",
    "compare": "medinterp.maps",
    "map_from_work_dir": "medinterp.maps",
    "Result": "medinterp.results",
    "MedinterpError": "medinterp.errors",
}

#: Submodules reachable as ``mi.<name>`` (imported on first access): the hook factories.
_MODULES = {"hooks": "medinterp.hooks"}

#: Imported on first API access so result kinds and renderers are registered.
_FLOORS = ("medinterp.activations", "medinterp.maps", "medinterp.viz")

__all__ = sorted(_API) + sorted(_MODULES) + ["__version__"]

_ready = False


def __getattr__(name: str) -> Any:
    global _ready
    if name in _API:
        if not _ready:
            for mod in _FLOORS:
                importlib.import_module(mod)
            _ready = True
        return getattr(importlib.import_module(_API[name]), name)
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    raise AttributeError(f"module 'medinterp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
