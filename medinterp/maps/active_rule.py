"""A saved map's manifest holds the parameters of the rule that marked it, and only those."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from medinterp.techniques import REGISTRY


def keep_active_rule(manifest: Path, rules: Mapping[str, str]) -> None:
    """Drop the paper rule's thresholds (``params``) and default interval rules from a controls map's manifest.

    They marked nothing in that map, so the manifest shows the active rule's parameters only
    (``rule``, ``control_params``); a loaded map gets the paper rule's defaults back. An interval rule
    the registry cannot give back (a column outside it, or a non-default rule) is kept, so the map loads.

    Args:
        manifest: the ``manifest.json`` just written.
        rules: the map's interval rule per column.
    """
    data = json.loads(manifest.read_text())
    data["fields"].pop("params", None)
    keep = {t: r for t, r in rules.items() if t not in REGISTRY or REGISTRY[t].interval_rule != r}
    if keep:
        data["fields"]["rules"] = keep
    else:
        data["fields"].pop("rules", None)
    tmp = manifest.with_name(".manifest.json.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False))
    os.chmod(tmp, 0o644)
    os.replace(tmp, manifest)


__all__ = ["keep_active_rule"]
