"""How a :class:`~medinterp.maps.synthesis.KnowledgeMap` shows itself in a terminal, a notebook and pandas.

* ``repr(kmap)``: one line (class, model, families, columns, layers, rule, how many cells are marked);
* ``kmap._repr_html_()``: the same facts as a small HTML table (every text escaped);
* ``kmap.summary()``: a :class:`MapSummary`, a ``{family: headline}`` dict that prints as a labelled table;
* ``kmap.to_dataframe(what)``: the map in long form (``"curves"``), one row per cell (``"cells"``) or one row
  per marked interval (``"intervals"``): the one name for the three tables.

Example:
    >>> import numpy as np
    >>> from medinterp.maps.synthesis import KnowledgeMap
    >>> km = KnowledgeMap.from_curves({"drugs": {"peak": np.r_[0, 0, 5, 5, 5, 0, 0, 0, 0, 0.0]}}, n_layers=10,
    ...                               techniques=["peak"], rules={"peak": "percentile"}, model_name="toy")
    >>> repr(km)
    '<KnowledgeMap model: toy, families: 1 (drugs), columns: 1 (peak), layers: 10, rule: paper, marked: 1 of 1 cells (1 interval)>'
    >>> list(km.to_dataframe("intervals").columns)
    ['concept', 'technique', 'start', 'end', 'score', 'rule']
"""

from __future__ import annotations

import html
from typing import Any, Sequence

from medinterp.errors import MedinterpError

#: what :meth:`KnowledgeMap.to_dataframe` can give, and the method each one was called before
FRAMES = {"curves": "curves_frame", "cells": "cells_frame", "intervals": "table"}


def _names(names: Sequence[str], k: int = 4) -> str:
    shown = ", ".join(str(n) for n in names[:k]) + (", …" if len(names) > k else "")
    return f"{len(names)} ({shown})"


def map_fields(km: Any) -> list[tuple[str, str]]:
    """The ``(label, value)`` rows of the map's repr and notebook table."""
    marked_cells = {(iv["concept"], iv["technique"]) for iv in km.intervals}
    n_cells = len(km.concepts) * len(km.techniques)
    n_iv = len(km.intervals)
    rows = [("model", km.model_name or "?"), ("families", _names(km.concepts)), ("columns", _names(km.techniques)),
            ("layers", str(km.n_layers)), ("rule", km.rule),
            ("marked", f"{len(marked_cells)} of {n_cells} cells ({n_iv} interval{'s' if n_iv != 1 else ''})")]
    if km.rule == "controls" and km.control_params:
        p = km.control_params
        rows.append(("marking", ", ".join(f"{k} {p[k]}" for k in ("alpha", "min_run", "robustness") if k in p)))
    return rows


def map_frame(km: Any, what: str = "curves"):
    """:meth:`KnowledgeMap.to_dataframe`: the table named ``what`` (a key of :data:`FRAMES`)."""
    if what not in FRAMES:
        raise MedinterpError(f"to_dataframe: what={what!r}; expected one of {list(FRAMES)}")
    return getattr(km, FRAMES[what])()


class MapSummary(dict):
    """``{family: headline}`` (a dict, as before) that prints as a labelled two-column table."""

    def __repr__(self) -> str:
        if not self:
            return "MapSummary({})"
        w = max(len("family"), *(len(str(k)) for k in self))
        lines = [f"{'family':<{w}}  headline"] + [f"{str(k):<{w}}  {v}" for k, v in self.items()]
        return "\n".join(lines)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td style=\"text-align:left\">{html.escape(str(k))}</td>"
                       f"<td style=\"text-align:left\">{html.escape(str(v))}</td></tr>" for k, v in self.items())
        return f"<table><tr><th>family</th><th>headline</th></tr>{rows}</table>"

    def to_dataframe(self):
        """Columns ``family, headline``."""
        import pandas as pd

        return pd.DataFrame(list(self.items()), columns=["family", "headline"])
