"""What the findings rules need from the control-family and random-twin runs.

:func:`add_side_extras` stores, next to the model's own ``km.extras["findings"][family]``:

* ``km.extras["findings"]["<family>__control"]`` and ``["<family>__twin"]``: the same
  ``Technique.extras`` findings statistics computed on the control family's and the random twin's
  results (the collapse rule compares the participation ratio with them);
* ``km.extras["control_curves"][family][technique]``: the control family's layer curve (the
  first-half rule reads each technique's depth bias from the marks these curves get).

Only the ``"findings"`` part of a technique's extras is kept for these runs: the report's other
decorations (strips, attention views) stay the model's own.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from medinterp.techniques import REGISTRY

log = logging.getLogger(__name__)

#: suffixes of the side runs' rows in ``km.extras["findings"]`` (the work-dir names of :mod:`medinterp.maps.run`).
CONTROL_ROW, TWIN_ROW = "__control", "__twin"


def add_side_extras(model: Any, km: Any, ctrl_res: Mapping[tuple[str, str], Any] | None,
                    twin_res: Mapping[tuple[str, str], Any] | None, curve_of: Any = None) -> None:
    """Add the control family's and the twin's findings statistics (and the control curves) to ``km.extras``.

    Args:
        model: the model (passed to ``Technique.extras``; the findings parts do not use it).
        km: the :class:`~medinterp.maps.KnowledgeMap` being built.
        ctrl_res, twin_res: ``{(family, technique): Result}`` of the control-family and random-twin runs.
        curve_of: ``f(result, n_layers) -> (curve, ci, name)`` (the map's ``result_curve``); None: no curves.
    """
    for suffix, res in ((CONTROL_ROW, ctrl_res), (TWIN_ROW, twin_res)):
        for (fam, t), r in (res or {}).items():
            tech = REGISTRY.get(t)
            if tech is not None and tech.extras is not None and getattr(tech, "extras_on_controls", False):
                try:
                    found = (tech.extras(model, r) or {}).get("findings")
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # noqa: BLE001 - optional: the rule then says "not compared"
                    log.warning("findings of %s%s/%s failed: %s: %s", fam, suffix, t, type(e).__name__, e)
                    found = None
                if isinstance(found, Mapping):
                    slot = km.extras.setdefault("findings", {})
                    slot[fam + suffix] = {**(slot.get(fam + suffix) or {}), **found}
            if suffix == CONTROL_ROW and curve_of is not None:
                try:
                    curve = curve_of(r, km.n_layers)[0]
                except Exception as e:  # noqa: BLE001 - a result without a layer curve: no depth bias from it
                    log.warning("control curve of %s/%s: %s: %s", fam, t, type(e).__name__, e)
                    continue
                km.extras.setdefault("control_curves", {}).setdefault(fam, {})[t] = [float(v) for v in curve]


__all__ = ["CONTROL_ROW", "TWIN_ROW", "add_side_extras"]
