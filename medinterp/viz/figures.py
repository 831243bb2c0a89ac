"""Plotly figures of knowledge maps: the band map, the normalised-curve heatmaps, model comparison.

All user text (concept labels, model names) is HTML-escaped before it goes into hover text or tick
labels: plotly renders a subset of HTML in those strings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from medinterp.maps.controls import CONTROL_STATS
from medinterp.viz.curves import add_curve, layer_curve_figure
from medinterp.viz.heatmaps import curve_heatmaps  # noqa: F401  (public here since 0.1.0)
from medinterp.viz.html import escape
from medinterp.viz.style import COLORS, color_of, concept_color, short_note, wrap_note

if TYPE_CHECKING:  # pragma: no cover
    from medinterp.maps import KnowledgeMap

#: The technique colours (:data:`medinterp.viz.style.COLORS`; kept here under its 0.1 name).
TECH_COLORS = {t: COLORS[t] for t in ("geometry", "saliency", "lesion", "patching")}
_GAP = 0.8  # vertical gap between concept blocks, in lane units


def _color(t: str) -> str:
    return color_of(t)


def _x_edges(start: int, end: int, n_layers: int, relative: bool) -> tuple[float, float]:
    """Left/right x of a band covering layers ``start..end``."""
    if relative:
        return start / n_layers, (end + 1) / n_layers
    return start - 0.5, end + 0.5


def _lane_y(i: int, j: int, n_tech: int) -> float:
    return i * (n_tech + 1 + _GAP) + j


def _layer_stats(values: np.ndarray) -> str:
    """One layer's effect over each control and its corrected p, in words; a comparison not made is said so
    (never "nan (p_adj nan)")."""
    st = dict(zip(CONTROL_STATS, values))
    parts = []
    for name, e, p in (("control family", "effect", "p_adj"), ("random twin", "effect_twin", "p_adj_twin")):
        if np.isfinite(st[e]):
            parts.append(f"over {name} {st[e]:.3g}" + (f", p_adj {st[p]:.2g}" if np.isfinite(st[p]) else ""))
        else:
            parts.append(f"{name}: not compared")
    if np.isfinite(st["robustness"]):
        parts.append(f"robustness {st['robustness']:.2f}")
    return "; ".join(parts)


def add_map_traces(fig, km: "KnowledgeMap", *, relative: bool = False, row=None, col=None, showlegend=True, name_prefix=""):
    """Add the band map of ``km`` to ``fig`` (optionally in a subplot); returns (tickvals, ticktext)."""
    import plotly.graph_objects as go

    T = len(km.techniques)
    n = km.n_layers
    sub = {} if row is None else {"row": row, "col": col}
    smoothed = km.smoothed()
    # technique bands
    for j, t in enumerate(km.techniques):
        xs, bases, ys, hov = [], [], [], []
        for iv in km.intervals:
            if iv["technique"] != t:
                continue
            i = km.concepts.index(iv["concept"])
            x0, x1 = _x_edges(iv["start"], iv["end"], n, relative)
            xs.append(x1 - x0)
            bases.append(x0)
            ys.append(_lane_y(i, j, T))
            depth = f" (depth {iv['start'] / n:.2f}–{(iv['end'] + 1) / n:.2f})"
            hov.append(
                f"<b>{escape(km.label(iv['concept']))}</b><br>technique: {escape(t)}<br>"
                f"layers {iv['start']}–{iv['end']}{depth}<br>score: {iv['score']:.4g}<br>"
                f"rule: {escape(iv.get('rule', ''))}<br>curve: {escape(km.curve_name(t, iv['concept']))}"
            )
        fig.add_trace(
            go.Bar(
                x=xs, base=bases, y=ys, orientation="h", width=0.8, marker_color=_color(t),
                name=f"{name_prefix}{t}", legendgroup=t, showlegend=showlegend,
                hovertext=hov, hoverinfo="text",
            ),
            **sub,
        )
        # per-layer smoothed value dots, faint, so the hover tells the score of every layer
        dx, dy, dh = [], [], []
        for i, c in enumerate(km.concepts):
            if not km.available(c, t):
                continue
            cell = km.cell(c, t)
            for l in range(n):
                dx.append((l + 0.5) / n if relative else l)
                dy.append(_lane_y(i, j, T))
                if km.rule == "controls":
                    dh.append(f"{escape(km.label(c))} · {escape(t)}<br>layer {l}: "
                              f"{_layer_stats(km.control_stats[i, j, :, l])}<br>"
                              f"cell: {escape(cell.code)}: {escape(cell.reason)}")
                else:
                    dh.append(f"{escape(km.label(c))} · {escape(t)}<br>layer {l}: smoothed {smoothed[i, j, l]:.4g}, "
                              f"raw {km.curves[i, j, l]:.4g}")
        fig.add_trace(
            go.Scatter(
                x=dx, y=dy, mode="markers", marker=dict(size=4, color=_color(t), opacity=0.25),
                showlegend=False, hovertext=dh, hoverinfo="text", legendgroup=t,
            ),
            **sub,
        )
    # missing techniques: say so, draw nothing numeric
    mx, my, mt, mh = [], [], [], []
    for i, c in enumerate(km.concepts):
        for j, t in enumerate(km.techniques):
            if not km.available(c, t):  # the code on the lane, the plain reason in the hover (never cut)
                cell = km.cell(c, t)
                mx.append(0.5 if relative else (n - 1) / 2)
                my.append(_lane_y(i, j, T))
                mt.append(f"{t}: {cell.code.replace('_', ' ')}: {short_note(cell.reason, 48)}")
                mh.append(f"{escape(km.label(c))} · {escape(t)}<br>{escape(cell.code)}: {escape(cell.reason)}")
    if mx:
        fig.add_trace(
            go.Scatter(
                x=mx, y=my, mode="text", text=[escape(s) for s in mt], textfont=dict(color="#999", size=10),
                showlegend=False, hoverinfo="text", hovertext=mh,
            ),
            **sub,
        )
    # consensus strip
    cons = km.consensus()
    cx, cb, cy, cz, ch = [], [], [], [], []
    for i, c in enumerate(km.concepts):
        for l in range(n):
            x0, x1 = _x_edges(l, l, n, relative)
            cx.append(x1 - x0)
            cb.append(x0)
            cy.append(_lane_y(i, T, T))
            cz.append(int(cons[i, l]))
            ch.append(f"{escape(km.label(c))}<br>layer {l}: {int(cons[i, l])} of {km.n_available(c)} available techniques agree")
    fig.add_trace(
        go.Bar(
            x=cx, base=cb, y=cy, orientation="h", width=0.8,
            marker=dict(color=cz, colorscale="Purples", cmin=0, cmax=T, line=dict(width=0),
                        colorbar=dict(title="agree", len=0.4, y=0.2) if showlegend else None,
                        showscale=showlegend),
            name=f"{name_prefix}consensus", showlegend=False, hovertext=ch, hoverinfo="text",
        ),
        **sub,
    )
    tickvals, ticktext = [], []
    for i, c in enumerate(km.concepts):
        for j, t in enumerate(km.techniques):
            tickvals.append(_lane_y(i, j, T))
            ticktext.append(f"<b>{escape(km.label(c))}</b> · {escape(t)}" if j == 0 else escape(t))
        tickvals.append(_lane_y(i, T, T))
        ticktext.append("consensus")
    return tickvals, ticktext


def map_figure(km: "KnowledgeMap", *, relative_depth: bool = False, title: str | None = None):
    """Concept × layer map: a coloured band per technique interval, a consensus strip per concept."""
    import plotly.graph_objects as go

    fig = go.Figure()
    tickvals, ticktext = add_map_traces(fig, km, relative=relative_depth)
    n = km.n_layers
    T = len(km.techniques)
    height = max(300, 60 + int(len(km.concepts) * (T + 1 + _GAP) * 22))
    fig.update_layout(
        title=title or f"Knowledge map{' — ' + escape(km.model_name) if km.model_name else ''}",
        barmode="overlay", height=height, template="plotly_white", bargap=0,
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0),
        margin=dict(l=180),
    )
    fig.update_yaxes(tickvals=tickvals, ticktext=ticktext, autorange="reversed", showgrid=False, zeroline=False)
    if relative_depth:
        fig.update_xaxes(title="relative depth (layer / n_layers)", range=[0, 1])
    else:
        fig.update_xaxes(title="layer", range=[-0.5, n - 0.5], dtick=1)
    return fig


def curves_figure(km: "KnowledgeMap", technique: str):
    """Raw and smoothed layer curves of one technique for every concept, with CI bands where known."""
    import plotly.graph_objects as go

    j = km.techniques.index(technique)
    fig = go.Figure()
    sm = km.smoothed()
    x = np.arange(km.n_layers)
    for i, c in enumerate(km.concepts):
        if km.status[c].get(technique) != "ok":
            continue
        color = concept_color(i)
        lo, hi = km.curves_low[i, j], km.curves_high[i, j]
        if np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)):
            fig.add_trace(go.Scatter(x=np.r_[x, x[::-1]], y=np.r_[hi, lo[::-1]], fill="toself", fillcolor=color,
                                     opacity=0.15, line=dict(width=0), hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(x=x, y=km.curves[i, j], mode="lines+markers", name=escape(km.label(c)),
                                 line=dict(color=color, width=1), marker=dict(size=4), legendgroup=c))
        fig.add_trace(go.Scatter(x=x, y=sm[i, j], mode="lines", name=f"{escape(km.label(c))} (smoothed)",
                                 line=dict(color=color, dash="dot"), legendgroup=c, showlegend=False))
    fig.update_layout(title=f"{escape(technique)}: {escape(km.curve_names.get(technique, 'layer curve'))} per layer",
                      xaxis_title="layer", yaxis_title=wrap_note(escape(km.curve_name(technique)), 50),
                      template="plotly_white", height=380)
    return fig


def compare_figure(maps: Sequence["KnowledgeMap"], names: Sequence[str] | None = None):
    """Two or more maps on a relative-depth axis: one panel per model, stacked, nothing overlapping.

    Each panel is its own subplot with its own y axis (row labels in the left margin, never over
    another panel's bars) and its own title; the legend sits below the last panel, clear of the
    figure title. Panel heights follow their number of lanes; gaps are fixed in pixels.
    """
    from plotly.subplots import make_subplots

    names = list(names or [m.model_name or f"map {k}" for k, m in enumerate(maps)])
    lanes = [len(m.concepts) * (len(m.techniques) + 1 + _GAP) for m in maps]
    lane_px, gap_px, top_px, bottom_px = 22, 110, 90, 150
    plot_px = sum(max(4.0, n) * lane_px for n in lanes) + gap_px * (len(maps) - 1)
    height = int(plot_px + top_px + bottom_px)
    fig = make_subplots(rows=len(maps), cols=1, shared_xaxes=False, shared_yaxes=False,
                        vertical_spacing=gap_px / plot_px if len(maps) > 1 else 0,
                        row_heights=[max(4.0, n) for n in lanes],
                        subplot_titles=[f"{escape(nm)} ({m.n_layers} layers)" for nm, m in zip(names, maps)])
    for k, m in enumerate(maps):
        tv, tt = add_map_traces(fig, m, relative=True, row=k + 1, col=1, showlegend=(k == 0))
        fig.update_yaxes(tickvals=tv, ticktext=tt, autorange="reversed", showgrid=False, zeroline=False,
                         automargin=True, row=k + 1, col=1)
        fig.update_xaxes(range=[0, 1], title="relative depth (layer / n_layers)", row=k + 1, col=1)
    for trace in fig.data:  # the consensus colour bar beside the first panel only, inside the right margin
        if getattr(trace, "marker", None) is not None and getattr(trace.marker, "colorbar", None) is not None \
                and trace.marker.showscale:
            trace.marker.colorbar.update(len=min(1.0, 240 / plot_px), y=1.0, yanchor="top", x=1.02)
    fig.update_layout(barmode="overlay", template="plotly_white", height=height, width=1100,
                      title=dict(text="Knowledge maps on a relative-depth axis", y=1 - 30 / height, yanchor="top"),
                      margin=dict(t=top_px, b=bottom_px, l=230, r=90),
                      legend=dict(orientation="h", x=0, xanchor="left", y=-70 / plot_px, yanchor="top"))
    return fig


def consensus_compare_figure(maps: Sequence["KnowledgeMap"], names: Sequence[str] | None = None):
    """Per concept, the consensus count vs relative depth for every model (lines)."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    names = list(names or [m.model_name or f"map {k}" for k, m in enumerate(maps)])
    concepts: list[str] = []
    for m in maps:
        concepts += [c for c in m.concepts if c not in concepts]
    fig = make_subplots(rows=len(concepts), cols=1, shared_xaxes=True, vertical_spacing=0.03,
                        subplot_titles=[escape(maps[0].label(c) if c in maps[0].concepts else c) for c in concepts])
    for k, (m, nm) in enumerate(zip(maps, names)):
        cons = m.consensus()
        x = (np.arange(m.n_layers) + 0.5) / m.n_layers
        for r, c in enumerate(concepts):
            if c not in m.concepts:
                continue
            fig.add_trace(go.Scatter(x=x, y=cons[m.concepts.index(c)], mode="lines+markers", line_shape="hvh",
                                     name=escape(nm), legendgroup=str(k), showlegend=(r == 0),
                                     line=dict(color=concept_color(k))), row=r + 1, col=1)
    fig.update_layout(height=max(300, 140 * len(concepts)), template="plotly_white",
                      title="Techniques agreeing per layer (consensus) vs relative depth")
    fig.update_xaxes(range=[0, 1])
    fig.update_xaxes(title="relative depth", row=len(concepts), col=1)
    return fig


def control_curves_figure(km: "KnowledgeMap", technique: str):
    """Effect over the control family and over the random twin per layer (item-level 95% CIs), per family.

    One subplot per family with an effect over control; marked layers are shaded.
    """
    from plotly.subplots import make_subplots

    j = km.techniques.index(technique)
    fams = [c for c in km.concepts
            if km.status[c].get(technique) == "ok" and km.control_status[c].get(technique) == "ok"]
    if not fams:
        return None
    k = {name: i for i, name in enumerate(CONTROL_STATS)}
    fig = make_subplots(rows=len(fams), cols=1, shared_xaxes=True, vertical_spacing=min(0.08, 0.5 / len(fams)),
                        subplot_titles=[escape(km.label(c)) for c in fams])
    x = np.arange(km.n_layers)
    for r, c in enumerate(fams):
        st = km.control_stats[km.concepts.index(c), j]
        add_curve(fig, "over control family", st[k["effect"]], st[k["ci_low"]], st[k["ci_high"]], x=x,
                  color=color_of(technique), row=r + 1, col=1, showlegend=(r == 0))
        add_curve(fig, "over random twin", st[k["effect_twin"]], st[k["twin_low"]], st[k["twin_high"]], x=x,
                  color=color_of("random twin"), dash="dot", row=r + 1, col=1, showlegend=(r == 0))
        for a, b in _mask_runs(st[k["marked"]] > 0.5):
            fig.add_vrect(x0=a - 0.5, x1=b + 0.5, fillcolor=color_of("marked"), opacity=0.6, line_width=0,
                          layer="below", row=r + 1, col=1)
        fig.add_hline(y=0, line=dict(color="#999", width=1), row=r + 1, col=1)
    fig.update_layout(title=f"{escape(technique)}: effect over control per layer (item-level 95% CI; marked layers shaded)",
                      template="plotly_white", height=max(320, 200 * len(fams)),
                      legend=dict(orientation="h", y=-0.08, yanchor="top", x=0))
    fig.update_xaxes(title="layer", row=len(fams), col=1)
    fig.update_yaxes(title_text="effect over control<br>(curve's units)")
    return fig


def block_criticality_figure(data, n_layers: int):
    """The block-criticality strip (generic, shown once for all families): cost of removing each block."""
    y = np.asarray(data["curve"], float)
    lo = data.get("ci_low")
    hi = data.get("ci_high")
    label = str(data.get("label") or "block criticality")
    fig = layer_curve_figure({label: (y, lo, hi)}, title="Block criticality (generic: the same for every family)",
                             y_title=escape(label), colors={label: color_of("lesion")})
    fig.update_layout(height=300)
    fig.update_xaxes(range=[-0.5, n_layers - 0.5], dtick=1)
    return fig


def _mask_runs(mask):
    from medinterp.stats import intervals_from_mask

    return intervals_from_mask(mask)
