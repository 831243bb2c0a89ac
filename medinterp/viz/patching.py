"""Figures of a :class:`~medinterp.techniques.patching.PatchingResult` (registered as the ``patching`` renderer).

1. the layer curve with its bootstrap CI band (:func:`medinterp.viz.curves.layer_curve_figure`);
2. a layer × position heatmap (max over heads for head sites) when there is more than one position
   column or no head axis;
3. for head sites, a layer × head heatmap at the last position column.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medinterp.techniques.base import register_renderer
from medinterp.viz.curves import layer_curve_figure
from medinterp.viz.style import color_of


def patching_figures(result: Any, **_: Any) -> list:
    """The figures of a patching result (see the module docstring)."""
    import plotly.graph_objects as go

    mean = np.asarray(result.mean, dtype=float)
    ylab = [str(l) for l in result.layers]
    xlab = result.position_tokens or result.positions
    n_inc = int(np.sum(result.included)) if result.included is not None else 0
    title = f"{result.method} patching: {result.site}, metric {result.metric}, {n_inc} pairs"
    lo, hi = result.layer_curve_ci()
    curve = layer_curve_figure({result.metric: (result.layer_curve(), lo, hi)}, title=f"{title}: {result.curve_label}",
                               y_title=result.metric, x=list(result.layers), colors={result.metric: color_of("patching")})
    figs = [curve]
    if mean.shape[1] > 1 or mean.shape[2] == 1:
        z = mean[:, :, 0] if mean.shape[2] == 1 else np.nanmax(mean, axis=2)
        figs.append(go.Figure(
            go.Heatmap(z=z, x=[f"{i}|{t}" for i, t in enumerate(xlab)], y=ylab, colorscale="RdBu", zmid=0.0,
                       colorbar={"title": result.metric}, hovertemplate="layer %{y}<br>%{x}<br>%{z:.4f}<extra></extra>"),
            layout={"title": title + ("" if mean.shape[2] == 1 else " (max over heads)"),
                    "xaxis": {"title": "position"}, "yaxis": {"title": "layer"}, "height": 300 + 18 * len(ylab)}))
    if mean.shape[2] > 1:
        j = result.pos_index("last")
        figs.append(go.Figure(
            go.Heatmap(z=mean[:, j, :], x=[f"head {h}" for h in result.heads], y=ylab, colorscale="RdBu", zmid=0.0,
                       colorbar={"title": result.metric}, hovertemplate="layer %{y}<br>%{x}<br>%{z:.4f}<extra></extra>"),
            layout={"title": f"{title}, position {xlab[j]}", "xaxis": {"title": "head"}, "yaxis": {"title": "layer"},
                    "height": 300 + 18 * len(ylab)}))
    return figs


register_renderer("patching", patching_figures)


def tracing_figures(result: Any, **_: Any) -> list:
    """Causal tracing: span and last-token curves (ratio of sums, item-level CI) and per-pair span P."""
    import plotly.graph_objects as go

    title = f"causal tracing on {result.concept_set}: {result.n_known}/{len(result.all_pairs)} pairs known"
    if not result.known_by_model:
        fig = go.Figure(layout={"title": f"{title}: not known by the model ({result.not_known_reason})"})
        return [fig]
    curves = {}
    for j, restore in enumerate(result.restores):
        curves[f"restore {restore}"] = (result.ratio[:, j], result.ratio_low[:, j], result.ratio_high[:, j])
    for c, site in enumerate(result.components or []):
        for j, restore in enumerate(result.restores):
            curves[f"{site} at {restore}"] = (result.component_ratio[c, :, j], None, None)
    band = ", ".join(f"{a}-{b}" for a, b in result.band) or "none"
    colors = {name: color_of(name) for name in curves}  # "restore span" / "restore last": fixed across figures
    figs = [layer_curve_figure(curves, title=f"{title}; band {band}, mover block {result.mover}",
                               y_title="recovered fraction P (ratio of sums)", x=list(result.layers), colors=colors)]
    span = np.asarray(result.P, float)[:, :, result.restores.index("span")]
    figs.append(go.Figure(
        go.Heatmap(z=np.clip(span, -1, 2), x=[str(l) for l in result.layers], y=[str(u) for u in result.units],
                   colorscale="RdBu", zmid=0.0, colorbar={"title": "P"},
                   hovertemplate="layer %{x}<br>%{y}<br>P %{z:.3f}<extra></extra>"),
        layout={"title": f"{title}: span-restore P per pair (clipped to [-1, 2])", "xaxis": {"title": "layer"},
                "height": 300 + 14 * len(result.units)}))
    return figs


register_renderer("causal_trace", tracing_figures)
