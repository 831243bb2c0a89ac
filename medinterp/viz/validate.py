"""Band validation figure: each check's statistic for the band against its random layer sets (kind
``"band_validation"``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medinterp.techniques.base import register_renderer


def validation_figure(result: Any):
    """One panel per check (mean-ablation, skip, restore): the random sets' values as a strip, the band as a
    red line with its CI, the verdict in the title."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = [("necessity", result.frac_lost[0]), ("necessity_skip", result.frac_lost[1]),
              ("sufficiency", result.recovered)]
    titles = [f"{k}: {result.checks.get(k, {}).get('verdict', '?')}" for k, _ in panels]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=titles)
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
    fig.update_layout(title=f"Causal validation of band {result.band[0]}-{result.band[1]} on {result.family}",
                      height=450, width=1100)
    return fig


register_renderer("band_validation", validation_figure)
