"""The one layer-curve figure: per-layer values with shaded confidence bands.

Every technique's per-layer plot (saliency components, lesion modes, patching sites, geometry metrics,
map curves) is drawn by :func:`layer_curve_figure`, so a CI band looks the same everywhere.

Example:
    >>> import numpy as np
    >>> fig = layer_curve_figure({"attn": (np.arange(4.0), np.arange(4.0) - 1, np.arange(4.0) + 1)},
    ...                          title="toy", y_title="value")
    >>> [t.name for t in fig.data]
    ['attn 95% CI', 'attn']
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def _free_color(name: str, used: set[str]) -> str:
    """The series' fixed colour (:func:`medinterp.viz.style.color_of`), or the next free one when a figure
    already uses it."""
    from medinterp.viz.style import FALLBACK, color_of

    c = color_of(name)
    return c if c not in used else next((f for f in FALLBACK if f not in used), c)


def rgba(hex_color: str, alpha: float) -> str:
    """``#rrggbb`` → ``rgba(r,g,b,alpha)``."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def add_curve(fig, name: str, y: Sequence[float], lo: Sequence[float] | None = None, hi: Sequence[float] | None = None,
              *, x: Sequence[float] | None = None, color: str = PALETTE[0], ci_label: str = "95% CI",
              dash: str | None = None, row: int | None = None, col: int | None = None, showlegend: bool = True):
    """Add one line (and its band underneath, when ``lo``/``hi`` are given) to ``fig``."""
    import plotly.graph_objects as go

    y = np.asarray(y, float)
    x = np.arange(len(y)) if x is None else np.asarray(x)
    where = {} if row is None else {"row": row, "col": col}
    if lo is not None and hi is not None:
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            xs = np.concatenate([x[ok], x[ok][::-1]])
            ys = np.concatenate([hi[ok], lo[ok][::-1]])
            fig.add_trace(go.Scatter(x=xs, y=ys, fill="toself", fillcolor=rgba(color, 0.18), line=dict(width=0),
                                     hoverinfo="skip", name=f"{name} {ci_label}", legendgroup=name,
                                     showlegend=False), **where)
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name, legendgroup=name, showlegend=showlegend,
                             line=dict(color=color, dash=dash)), **where)
    return fig


def layer_curve_figure(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float] | None, Sequence[float] | None]],
    *,
    title: str,
    y_title: str,
    x: Sequence[float] | None = None,
    x_title: str = "layer",
    ci_label: str = "95% CI",
    colors: Mapping[str, str] | None = None,
    log_y: bool = False,
):
    """A figure of named per-layer curves ``{name: (values, ci_low or None, ci_high or None)}``."""
    import plotly.graph_objects as go

    fig = go.Figure()
    used: set[str] = set()
    for name, (y, lo, hi) in curves.items():
        color = (colors or {}).get(name) or _free_color(name, used)  # a name has one colour in every figure
        used.add(color)
        add_curve(fig, name, y, lo, hi, x=x, color=color, ci_label=ci_label)
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, template="plotly_white",
                      legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0),
                      margin=dict(t=70))
    if log_y:
        fig.update_yaxes(type="log")
    return fig
