"""The jobs a knowledge map will run, known before the model loads (for job counts and resume messages)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from medinterp.maps.families import TWIN_SUFFIX, control_specs, family_specs
from medinterp.techniques import REGISTRY


def planned_jobs(families: Sequence[str] | Mapping[str, Any] | None, techniques: Sequence[str],
                 controls: bool) -> list[str]:
    """The ``row/technique`` keys (as :func:`~medinterp.maps.jobs.saved_jobs` names them) of the jobs a map
    will run at most: main jobs whose inputs exist, the control family's where the row has one, and the
    random twin's (a twin job that cannot change the map is skipped at run time: an upper bound).

    Args:
        families: the map rows, as :func:`~medinterp.maps.family_specs` takes them (None: every family).
        techniques: registered technique names.
        controls: whether the control-family and random-twin runs are made.
    """
    fams = family_specs(families)
    ctrl = control_specs(families) if controls else {}
    out = []
    for f, fam in fams.items():
        for t in techniques:
            runs = [(fam, fam.name)]
            if controls:
                runs.append((fam, fam.name + TWIN_SUFFIX))
                if ctrl.get(f) is not None:
                    runs.append((ctrl[f], ctrl[f].name))
            for spec, name in runs:
                if all(getattr(spec, need) is not None for need in REGISTRY[t].needs):
                    out.append(f"{name}/{t}")
    return out
