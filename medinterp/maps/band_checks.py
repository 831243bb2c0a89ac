"""Causal checks of a map's marked bands (issue 22: "the full map validates each marked band").

On by default in a full map, off in a quick one (``knowledge_map(..., validate_bands=...)``,
``medinterp map --validate-bands/--no-validate-bands``): each marked interval
``(family, column, a, b)`` is intervened on as a unit by :func:`medinterp.techniques.validate.validate_band`
(necessity and sufficiency against random layer sets of the same width, on the family's pairs the model
knows; METHOD §6). A band that cannot be checked (no pair set, fewer known pairs than the check needs) says
why. Results are saved as ``<work>/<family>/band_check_<column>_<a>-<b>/`` and reused when their parameters
match. ``km.extras["band_checks"]`` holds one row per interval; the report shows it as the intervals table's
"causal check" column.

One band costs ~1 min on Gemma 3 270M (2 cores; necessity 32 s, sufficiency 24 s at 30 random sets), so the
quick map (3-minute budget) does not check; the default full map marks one band, which cannot be checked (0
known progression pairs), so the check costs it only the known-pair test.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from medinterp.errors import MedinterpError

log = logging.getLogger("medinterp.maps")

#: what a check runs by default (parts and random sets as validate_band's defaults)
DEFAULT_CHECK = {"n_random": 30, "parts": ["necessity", "sufficiency"], "seed": 0}


def _row(iv: Mapping[str, Any]) -> dict:
    return {"concept": str(iv["concept"]), "technique": str(iv["technique"]), "start": int(iv["start"]),
            "end": int(iv["end"])}


def _load_matching(d: Path, params: Mapping[str, Any], model: Any) -> Any | None:
    import json

    from medinterp.results import Result, make_provenance

    if not (d / "manifest.json").is_file():
        return None
    try:
        res = Result.load(d)
    except (MedinterpError, OSError, ValueError) as e:
        log.warning("band check in %s could not be loaded (%s); recomputing", d, e)
        return None
    saved = getattr(res, "params", {}) or {}
    if any(saved.get(k) != v for k, v in params.items()):
        return None
    same_model = json.dumps((res.provenance or {}).get("model"), sort_keys=True, default=str) == \
        json.dumps(make_provenance(model).get("model"), sort_keys=True, default=str)
    return res if same_model else None


def check_bands(model: Any, intervals: list, families: Mapping[str, Any], *, work: Path | None = None,
                check: Mapping[str, Any] | None = None) -> list[dict]:
    """One row per marked interval: its band, each check's verdict, or why it was not checked.

    Args:
        model: the mapped model (a hooked model: single blocks are run from a residual).
        intervals: the map's marked intervals (``km.intervals``).
        families: the map's families by row name (their ``pairs`` are checked).
        work: the map's work dir (results saved and reused there), or None.
        check: keyword arguments of ``validate_band`` (default :data:`DEFAULT_CHECK`).

    Returns:
        ``[{"concept", "technique", "start", "end", "verdicts": {part: verdict}, "text"}]``; ``verdicts`` is
        empty and ``text`` starts with "not run:" where the band could not be checked.
    """
    from medinterp.techniques.validate import validate_band

    kw = {**DEFAULT_CHECK, **dict(check or {})}
    rows = []
    for iv in intervals:
        row = _row(iv)
        fam = families.get(row["concept"])
        if fam is None or getattr(fam, "pairs", None) is None:
            rows.append({**row, "verdicts": {}, "text": "not run: the family has no pair set to intervene on"})
            continue
        d = (work / row["concept"] / f"band_check_{row['technique']}_{row['start']}-{row['end']}"
             if work is not None else None)
        res = _load_matching(d, {"band": [row["start"], row["end"]], **kw}, model) if d is not None else None
        if res is None:
            try:
                res = validate_band(model, fam, (row["start"], row["end"]), **kw)
            except MedinterpError as e:
                rows.append({**row, "verdicts": {}, "text": f"not run: {e}"[:300]})
                continue
            if d is not None:
                res.save(d)
        verdicts = dict(res.verdicts())
        text = "; ".join(f"{p}: {v}" for p, v in verdicts.items()) or "not run: no check applied"
        rows.append({**row, "verdicts": verdicts, "text": text})
    return rows


def check_text(km: Any, iv: Mapping[str, Any]) -> str:
    """The intervals table's "causal check" cell of ``iv``."""
    rows = (km.extras or {}).get("band_checks")
    if rows is None:
        return "not checked (map run with validate_bands=False, or --quick)"
    for r in rows:
        if (r["concept"], r["technique"], r["start"], r["end"]) == (iv["concept"], iv["technique"], iv["start"],
                                                                     iv["end"]):
            return str(r["text"])
    return "not checked"


__all__ = ["DEFAULT_CHECK", "check_bands", "check_text"]
