"""Saliency figures: per-block attention / MLP / combined curves with bootstrap bands, and the
embedding / unembedding bars. Registered as the renderer of ``SaliencyResult`` (kind ``"saliency"``)."""

from __future__ import annotations

from typing import Any

from medinterp.techniques.base import register_renderer
from medinterp.techniques.saliency.engine import OUTER
from medinterp.viz.curves import layer_curve_figure
from medinterp.viz.style import color_of

TITLES = {"grad": "mean |∂L/∂w|", "grad_x_weight": "mean |∂L/∂w · w|", "grad_norm_ratio": "‖∂L/∂w‖ / ‖w‖"}
COLORS = {c: color_of(c) for c in ("attn", "mlp", "combined")}  # shades of saliency's colour (viz.style)


def saliency_figures(result: Any, variant: str | None = None) -> list:
    """The block-share figure (the map's curve), one per-block figure per variant (attention, MLP, combined
    with CI bands) and one bar chart of the embedding and unembedding."""
    import plotly.graph_objects as go

    variants = [variant] if variant else list(result.variants)
    ci_label = f"{int(result.ci * 100)}% CI"
    figs = []
    if result.share is not None and variant in (None, "share"):
        curves = {c: (result.layer_curve("share", c), *result.layer_curve_ci("share", c)) for c in result.components}
        figs.append(layer_curve_figure(
            curves, title=f"Share of Σ|∂L/∂w · w| per block: {result.concept_set} ({result.n_prompts} prompts, "
            f"{int(result.ci * 100)}% cluster-bootstrap CI over items)",
            y_title="share of |g·w| over blocks", x_title="block", ci_label=ci_label, colors=COLORS))
    if variant == "share":
        return figs
    for v in variants:
        curves = {c: (result.layer_curve(v, c), *result.layer_curve_ci(v, c)) for c in result.components}
        figs.append(layer_curve_figure(
            curves, title=f"Weight saliency per block, {TITLES.get(v, v)}: {result.concept_set} "
            f"({result.n_prompts} prompts, {int(result.ci * 100)}% bootstrap CI)",
            y_title=TITLES.get(v, v), x_title="block", ci_label=ci_label, colors=COLORS))
    t = result.table
    fig = go.Figure()
    for v in variants:
        rows = t[t["component"].isin(OUTER) & (t["variant"] == v)]
        fig.add_trace(go.Bar(
            x=rows["component"], y=rows["mean"], name=TITLES.get(v, v),
            error_y=dict(type="data", symmetric=False, array=rows["ci_high"] - rows["mean"],
                         arrayminus=rows["mean"] - rows["ci_low"])))
    fig.update_layout(title="Embedding and unembedding saliency", barmode="group", yaxis_type="log",
                      template="plotly_white")
    figs.append(fig)
    return figs


register_renderer("saliency", saliency_figures)
