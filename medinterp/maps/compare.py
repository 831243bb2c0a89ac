"""Two or more knowledge maps side by side on a relative-depth axis (no model needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from medinterp.errors import MedinterpError
from medinterp.maps.synthesis import KnowledgeMap
from medinterp.results import Result, renderer_for


def compare(
    maps_or_paths: Sequence["KnowledgeMap | str | os.PathLike"],
    names: Sequence[str] | None = None,
    *,
    out: str | os.PathLike | None = None,
    title: str = "medinterp model comparison",
) -> str:
    """Two or more knowledge maps side by side on a relative-depth axis; returns the HTML.

    Args:
        maps_or_paths: :class:`KnowledgeMap` objects or directories saved by ``KnowledgeMap.save``.
        names: a display name per map (default: each map's model name).
        out: write the self-contained HTML there too.

    Example:
        >>> import numpy as np
        >>> import medinterp.viz  # registers the renderers
        >>> from medinterp.maps import KnowledgeMap
        >>> kw = dict(techniques=["peak"], rules={"peak": "percentile"})
        >>> a = KnowledgeMap.from_curves({"drugs": {"peak": np.r_[0, 5, 5, 0, 0, 0.0]}}, model_name="A", **kw)
        >>> b = KnowledgeMap.from_curves({"drugs": {"peak": np.r_[0, 0, 0, 0, 5, 5, 0, 0, 0.0]}}, model_name="B", **kw)
        >>> "relative depth" in compare([a, b])
        True
    """
    maps = load_maps(maps_or_paths)
    if len(maps) < 2:
        raise MedinterpError(f"compare: need at least two maps, got {len(maps)}")
    if names is not None and len(names) != len(maps):
        raise MedinterpError(f"compare: {len(names)} names for {len(maps)} maps")
    text = renderer_for("knowledge_map_compare_page")(maps, names, title=title)
    if out is not None:
        Path(out).write_text(text, encoding="utf-8")
    return text


def load_maps(maps_or_paths: Sequence["KnowledgeMap | str | os.PathLike"]) -> list[KnowledgeMap]:
    """:class:`KnowledgeMap` objects from maps or saved-map paths (a ``X.map/`` directory or its ``X.html``)."""
    maps: list[KnowledgeMap] = []
    for m in maps_or_paths:
        if isinstance(m, KnowledgeMap):
            maps.append(m)
            continue
        loaded = Result.load(_map_dir(m))
        if not isinstance(loaded, KnowledgeMap):
            raise MedinterpError(f"{m}: holds a {loaded.kind!r} result, not a knowledge map")
        maps.append(loaded)
    return maps


def _map_dir(p: str | os.PathLike) -> Path:
    """Accept a saved map dir, or a report path ``X.html`` whose map was saved beside it as ``X.map/``."""
    p = Path(p)
    if p.is_dir():
        return p
    if p.suffix == ".html" and p.with_suffix(".map").is_dir():
        return p.with_suffix(".map")
    raise MedinterpError(f"{p}: not a saved knowledge map (expected a directory with manifest.json, or a report "
                         f"X.html with its map saved beside it as X.map/)")


