"""Band validation figure: each check's statistic for the band against its random layer sets (kind
``"band_validation"``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medinterp.techniques.base import register_renderer


def validation_figure(result: Any):
    """One panel per check (mean-ablation, skip, restore): the random sets' values as a strip, the band as a
    red line with its CI, the verdict in the title; when run, a steering panel (mean LD against alpha) and an
    erasure panel (fraction of LD lost by LEACE against random subspaces)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = [(k, v) for k, v in (("necessity", result.frac_lost[0]), ("necessity_skip", result.frac_lost[1]),
                                  ("sufficiency", result.recovered)) if k in result.checks]
    st, er = getattr(result, "steering", None) or {}, getattr(result, "erasure", None) or {}
    extra = [k for k, d, key in (("steering", st, "curve"), ("erasure", er, "frac_lost")) if d.get(key) is not None]
    titles = [f"{k}: {result.checks.get(k, {}).get('verdict', '?')}" for k, _ in panels] + \
        [f"{k}: {result.checks.get(k, {}).get('verdict', '?')}" for k in extra]
    fig = make_subplots(rows=1, cols=max(1, len(panels) + len(extra)), subplot_titles=titles)
    kinds = np.asarray(result.set_kind)
    labels = [",".join(str(int(x)) for x in s) for s in np.asarray(result.sets)]
    for j, (key, vals) in enumerate(panels, start=1):
        vals = np.asarray(vals, float)
        for k, name, color in ((1, "contiguous band", "#7f7f7f"), (2, "random set", "#1f77b4")):
            m = kinds == k
            fig.add_trace(go.Box(y=vals[m], name=name, boxpoints="all", jitter=0.4, marker_color=color,
                                 text=[labels[i] for i in np.flatnonzero(m)], showlegend=j == 1, legendgroup=name),
                          row=1, col=j)
        ci = result.checks.get(key, {}).get("ci") or [None, None]
        fig.add_trace(go.Scatter(x=["band"], y=[vals[0]], mode="markers", marker=dict(color="red", size=12),
                                 error_y=dict(type="data", symmetric=False,
                                              array=[(ci[1] if ci[1] is not None else vals[0]) - vals[0]],
                                              arrayminus=[vals[0] - (ci[0] if ci[0] is not None else vals[0])]),
                                 name=f"band {result.band[0]}-{result.band[1]}", showlegend=j == 1), row=1, col=j)
    col = len(panels)
    if "steering" in extra:
        col += 1
        _steering_panel(fig, go, st, col)
    if "erasure" in extra:
        col += 1
        _erasure_panel(fig, go, er, col)
    fig.update_layout(title=f"Causal validation of band {result.band[0]}-{result.band[1]} on {result.family}",
                      height=450, width=max(1100, 370 * col))
    return fig


def _steering_panel(fig: Any, go: Any, st: dict, col: int) -> None:
    """Mean LD against alpha: the band (red), each random direction (light), the same direction elsewhere."""
    x = st["alphas"]
    for j, c in enumerate(st.get("curve_random") or []):
        fig.add_trace(go.Scatter(x=x, y=c, mode="lines", line=dict(color="#aec7e8", width=1), name="random direction",
                                 legendgroup="rdir", showlegend=j == 0), row=1, col=col)
    if st.get("curve_other") is not None:
        ob = st.get("other_band") or ["?", "?"]
        fig.add_trace(go.Scatter(x=x, y=st["curve_other"], mode="lines+markers", line=dict(color="#7f7f7f"),
                                 name=f"same direction at {ob[0]}-{ob[1]}"), row=1, col=col)
    fig.add_trace(go.Scatter(x=x, y=st["curve"], mode="lines+markers", line=dict(color="red"),
                             name="class direction at the band"), row=1, col=col)
    fig.update_xaxes(title_text="alpha (x median centred-residual norm)", row=1, col=col)
    fig.update_yaxes(title_text="mean LD", row=1, col=col)


def _erasure_panel(fig: Any, go: Any, er: dict, col: int) -> None:
    """Fraction of LD lost: random subspaces of equal rank (strip), the band's LEACE (red, CI), elsewhere (grey)."""
    fig.add_trace(go.Box(y=er.get("frac_lost_random") or [], name="random subspace", boxpoints="all", jitter=0.4,
                         marker_color="#1f77b4", showlegend=False), row=1, col=col)
    if er.get("frac_lost_other") is not None:
        ob = er.get("other_band") or ["?", "?"]
        fig.add_trace(go.Scatter(x=[f"LEACE at {ob[0]}-{ob[1]}"], y=[er["frac_lost_other"]], mode="markers",
                                 marker=dict(color="#7f7f7f", size=11), showlegend=False), row=1, col=col)
    v = float(er["frac_lost"])
    ci = [c if c is not None else v for c in (er.get("frac_lost_ci") or [None, None])]
    fig.add_trace(go.Scatter(x=["LEACE at the band"], y=[v], mode="markers", marker=dict(color="red", size=12),
                             error_y=dict(type="data", symmetric=False, array=[ci[1] - v], arrayminus=[v - ci[0]]),
                             showlegend=False), row=1, col=col)
    fig.update_yaxes(title_text="fraction of LD lost", row=1, col=col)


register_renderer("band_validation", validation_figure)
