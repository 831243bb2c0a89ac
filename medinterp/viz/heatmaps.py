"""The concept × layer heatmaps of a knowledge map: what the statistics say, per technique.

Under the controls rule each panel shows the effect over the control family per layer on a diverging
scale centred at 0 (a symmetric range per panel, in the technique's own units), with the marked layers
outlined; a cell that was not compared is blank and its hover says why (the cell's status code and
reason), never "nan". Under the paper rule (no control) the panels show the smoothed curve min–max
scaled per concept, said so in the title, with the paper rule's marks outlined.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from medinterp.maps.controls import CONTROL_STATS
from medinterp.viz.html import escape
from medinterp.viz.style import DIVERGING, ci_text, finite, num

if TYPE_CHECKING:  # pragma: no cover
    from medinterp.maps import KnowledgeMap

_K = {name: i for i, name in enumerate(CONTROL_STATS)}


def _why(km: "KnowledgeMap", c: str, t: str) -> str:
    """The cell's status code and reason, escaped (``"not run: <reason>"`` style)."""
    cell = km.cell(c, t)
    return f"{escape(cell.code.replace('_', ' '))}: {escape(cell.reason)}"


def _effect_hover(km: "KnowledgeMap", i: int, j: int, l: int, why: str) -> str:
    """One layer of a compared cell in words: effect [CI], p_adj, the twin's, marked or not, the cell's status."""
    st = km.control_stats[i, j, :, l]
    if not finite(st[_K["effect"]]):
        return f"layer {l}: not measured at this layer<br>cell {why}"
    twin = ("over random twin " + ci_text(st[_K["effect_twin"]], st[_K["twin_low"]], st[_K["twin_high"]])
            + (f", p_adj {num(st[_K['p_adj_twin']], '.2g')}" if finite(st[_K["p_adj_twin"]]) else "")
            if finite(st[_K["effect_twin"]]) else "random twin: not compared")
    return (f"layer {l}: effect over control {ci_text(st[_K['effect']], st[_K['ci_low']], st[_K['ci_high']])}, "
            f"p_adj {num(st[_K['p_adj']], '.2g', 'not tested')}<br>{twin}<br>"
            f"{'marked' if st[_K['marked']] > 0.5 else 'not marked'} · cell {why}")


def _panel(km: "KnowledgeMap", j: int, controls: bool, norm: np.ndarray):
    """``(z, hover)`` of technique ``j``: the effect over control (or the normalised curve) and hover texts."""
    t = km.techniques[j]
    n = km.n_layers
    z = np.full((len(km.concepts), n), np.nan)
    hover = []
    for i, c in enumerate(km.concepts):
        head = f"{escape(km.label(c))} · {escape(t)}<br>{escape(km.curve_name(t, c))}<br>"
        why = _why(km, c, t)
        if not km.available(c, t):
            hover.append([f"{head}layer {l}: {why}" for l in range(n)])
            continue
        if controls:
            z[i] = km.control_stats[i, j, _K["effect"]]
            hover.append([head + _effect_hover(km, i, j, l, why) for l in range(n)])
        else:
            z[i] = norm[i, j]
            hover.append([f"{head}layer {l}: raw {num(km.curves[i, j, l], '.4g')}, "
                          f"normalised {num(norm[i, j, l], '.2f')}<br>cell {why}" for l in range(n)])
    return z, hover


def curve_heatmaps(km: "KnowledgeMap", *, relative_depth: bool = False):
    """One concept × layer heatmap per technique (see the module docstring); marked layers outlined.

    Args:
        km: the knowledge map.
        relative_depth: x as layer / n_layers instead of the layer index.

    Returns:
        A plotly figure, one panel (and colour bar) per technique.
    """
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    T = len(km.techniques)
    n = km.n_layers
    controls = km.rule == "controls"
    norm = None if controls else km.normalised()
    marks = km.marks()
    x = (np.arange(n) + 0.5) / n if relative_depth else np.arange(n)
    labels = [escape(km.label(c)) for c in km.concepts]
    what = "effect over control" if controls else "smoothed curve, min–max normalised per concept"
    fig = make_subplots(rows=T, cols=1, shared_xaxes=True, vertical_spacing=0.06 if T > 1 else 0.0,
                        subplot_titles=[f"{escape(t)}: {what} ({escape(km.curve_names.get(t, 'layer curve'))})"
                                        for t in km.techniques])
    shown_mark = False
    for j, t in enumerate(km.techniques):
        z, hover = _panel(km, j, controls, norm)
        dom = fig.layout[f"yaxis{j + 1 if j else ''}"].domain
        bar = dict(title="effect" if controls else "norm.", len=(dom[1] - dom[0]) * 0.95, y=(dom[0] + dom[1]) / 2,
                   yanchor="middle", thickness=12)
        if controls:
            zmax = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
            zmax = zmax if zmax > 0 else 1.0
            scale = dict(colorscale=DIVERGING, zmid=0.0, zmin=-zmax, zmax=zmax)
        else:
            scale = dict(colorscale="Viridis", zmin=0.0, zmax=1.0)
        fig.add_trace(go.Heatmap(z=z, x=x, y=labels, hovertext=hover, hoverinfo="text", colorbar=bar,
                                 showscale=controls or j == 0, hoverongaps=True, **scale), row=j + 1, col=1)
        mi, ml = np.nonzero(marks[:, j, :])
        if len(mi):
            fig.add_trace(go.Scatter(
                x=x[ml], y=[labels[i] for i in mi], mode="markers", name="marked layer", legendgroup="marked",
                showlegend=not shown_mark, hovertext=[hover[i][l] for i, l in zip(mi, ml)], hoverinfo="text",
                marker=dict(symbol="square-open", size=13, color="#111", line=dict(width=2))), row=j + 1, col=1)
            shown_mark = True
    title = ("Effect over control per layer (diverging, 0 = no effect over control; marked layers outlined)"
             if controls else "Per-technique layer curves (paper rule: smoothed, min–max normalised per concept; "
             "not effect over control; marked layers outlined)")
    fig.update_layout(height=max(350, T * (60 + 22 * len(km.concepts))), template="plotly_white", title=title,
                      legend=dict(orientation="h", y=-0.06, yanchor="top", x=0))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title="relative depth" if relative_depth else "layer", row=T, col=1)
    return fig


__all__ = ["curve_heatmaps"]
