"""Figures of a geometry result: the UMAP-2 scatter with a layer slider and the metric curves.

``figure(result)`` is registered as the renderer of kind ``"geometry"``, so ``result.figures()`` (all of
them), ``result.figure()`` (the first) and
``result.to_html()`` work once :mod:`medinterp.viz` is imported. The per-layer curves are drawn with
:func:`medinterp.viz.curves.add_curve` (the one CI-band style).

Example:
    >>> import medinterp.viz                                    # doctest: +SKIP
    >>> figs = res.figures()             # [UMAP per labelling..., curves]   # doctest: +SKIP
    >>> umap_figure(res, "mechanism")                            # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from medinterp.errors import MedinterpError
from medinterp.techniques.base import register_renderer
from medinterp.viz.curves import add_curve
from medinterp.viz.style import color_of, metric_range, metric_title

_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")

if TYPE_CHECKING:
    import pandas as pd

    from medinterp.techniques.geometry import GeometryResult

#: Panel order of the curves figure.
CURVE_METRICS = ("probe", "silhouette_cos", "matched_diff", "age_step_ratio", "stage_spearman",
                 "mean_cosine_centred", "participation_ratio",
                 "silhouette", "anisotropy", "linearity_r2", "step_ratio", "spearman", "circularity",
                 "resid_norm", "mean_cosine", "eff_rank")


def figure(res: "GeometryResult", color_by: str | None = None) -> list:
    """[headline probe curves, UMAP-2 scatter with a layer slider (one per categorical labelling, or
    ``color_by``; only when the run computed the paper metrics), metric-vs-layer curves with CI bands]."""
    head = [headline_figure(res)] if res.primary.get("metric") == "probe" else []
    if res.embedding_2d is None:
        return head + [curves_figure(res)]
    return head + _paper_figures(res, color_by)


def headline_figure(res: "GeometryResult"):
    """The headline per block: probe score on the span and final-token reads with cluster-bootstrap CI
    bands over items, and the lexical baseline (same probe on character n-grams) as a flat line."""
    from medinterp.viz.curves import layer_curve_figure

    t = res.table
    lab = res.primary.get("label")
    curves, colors = {}, {}
    for read in ("span", "last"):
        m = t[(t.metric == "probe") & (t.space == read) & (t.label == lab) & (t.layer >= 0)].sort_values("layer")
        if len(m):
            name = f"{read} read" + (" (item tokens, template-centred)" if read == "span" else " (final token)")
            curves[name] = (m.value.to_numpy(float), m.ci_low.to_numpy(float), m.ci_high.to_numpy(float))
            colors[name] = color_of(read)
    x = None
    if curves:
        n = len(next(iter(curves.values()))[0])
        x = np.arange(n)
        if res.lexical_scores is not None and np.isfinite(res.lexical_scores).any():
            v, lo, hi = res.lexical_baseline()
            curves["lexical baseline (char 3-5-gram TF-IDF)"] = (np.full(n, v), np.full(n, lo), np.full(n, hi))
            colors["lexical baseline (char 3-5-gram TF-IDF)"] = color_of("lexical baseline")
    kind = "grouped R²" if res.label_kinds.get(lab) == "continuous" else "chance-corrected balanced accuracy"
    fig = layer_curve_figure(curves, x=x, colors=colors, title=f"{res.concept_set}: item-grouped linear probe "
                             f"({lab}) per block", y_title=f"{kind} (0 = chance)", ci_label="95% CI (items)")
    rng = metric_range(kind, [v for y, lo, hi in curves.values() for a in (y, lo, hi) if a is not None for v in a])
    if rng is not None:  # an R² of −100 means "worse than the mean": the axis stops at −1
        fig.update_yaxes(range=rng)
    return fig


def _paper_figures(res: "GeometryResult", color_by: str | None) -> list:
    if color_by is not None:
        return [umap_figure(res, color_by), curves_figure(res)]
    cats = [k for k, v in res.label_kinds.items() if v == "categorical"]
    conts = [k for k, v in res.label_kinds.items() if v == "continuous"]
    first = res.primary.get("label") if res.primary.get("label") in res.labels else None
    order = [first] if first else []
    order += [c for c in cats + conts[:1] if c not in order]
    figs = [umap_figure(res, c) for c in order[:3]] or [umap_figure(res, None)]
    return figs + [curves_figure(res)]


def _hover(res: "GeometryResult") -> list[str]:
    n = len(res.texts)
    hover = [f"{it}<br>{tx}" if it and it != tx else tx for it, tx in zip(res.items or res.texts, res.texts)]
    hover = [h.replace("<", "&lt;").replace("&lt;br>", "<br>") for h in hover]
    extra = [" | ".join(f"{k}={v[i]}" for k, v in res.labels.items()) for i in range(n)]
    return [f"{h}<br>{e}" for h, e in zip(hover, extra)]


def umap_figure(res: "GeometryResult", color_by: str | None = None):
    """Interactive 2-D UMAP per layer with a slider; points coloured by a label, hover = item."""
    import plotly.graph_objects as go

    if color_by is not None and color_by not in res.labels:
        raise MedinterpError(f"color_by={color_by!r} is not a label of {res.concept_set!r}; have {sorted(res.labels)}")
    emb = np.asarray(res.embedding_2d)
    L = emb.shape[0]
    hover = _hover(res)
    kind = res.label_kinds.get(color_by, "categorical") if color_by else None
    traces = []
    if color_by is None or kind == "continuous":
        vals = np.asarray(res.labels[color_by], dtype=float) if color_by else None
        for li in range(L):
            marker = dict(size=6, color=vals, colorscale="Viridis", showscale=True,
                          colorbar=dict(title=color_by)) if vals is not None else dict(size=6)
            traces.append(go.Scattergl(x=emb[li, :, 0], y=emb[li, :, 1], mode="markers", marker=marker,
                                       text=hover, hoverinfo="text", visible=li == 0, name=color_by or "items"))
        per_layer = 1
    else:
        labs = np.asarray([str(x) for x in res.labels[color_by]])
        cats = sorted(set(labs.tolist()))
        palette = _palette(len(cats))
        for li in range(L):
            for ci_, c in enumerate(cats):
                sel = labs == c
                traces.append(go.Scattergl(
                    x=emb[li, sel, 0], y=emb[li, sel, 1], mode="markers", name=c, legendgroup=c,
                    showlegend=li == 0, marker=dict(size=7, color=palette[ci_]),
                    text=[hover[i] for i in np.flatnonzero(sel)], hoverinfo="text", visible=li == 0))
        per_layer = len(cats)
    steps = []
    sil = _silhouette_lookup(res, color_by)
    for li, layer in enumerate(res.layers):
        vis = [False] * len(traces)
        vis[li * per_layer : (li + 1) * per_layer] = [True] * per_layer
        name = "embedding" if layer < 0 else f"layer {layer}"
        score = f" (silhouette[{color_by}] = {sil[layer]:.3f})" if layer in sil else ""
        steps.append(dict(method="update", label=str(layer),
                          args=[{"visible": vis}, {"title": f"{res.concept_set}: UMAP of {name}{score}"}]))
    fig = go.Figure(traces)
    fig.update_layout(
        title=steps[0]["args"][1]["title"] if steps else res.concept_set, height=620, template="plotly_white",
        sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix="layer: "), pad=dict(t=40))],
        legend=dict(title=color_by or ""), xaxis=dict(title="UMAP 1"), yaxis=dict(title="UMAP 2"),
    )
    return fig


def _silhouette_lookup(res: "GeometryResult", label: str | None) -> dict[int, float]:
    if not label or res.table is None:
        return {}
    t = res.table
    m = t[(t.metric == "silhouette") & (t.space == "umap") & (t.label == label)]
    return {int(r.layer): float(r.value) for r in m.itertuples() if np.isfinite(r.value)}


def curves_figure(res: "GeometryResult"):
    """Metric-vs-layer curves with bootstrap CI bands (and permutation baselines for silhouette)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    t = res.table
    panels: list[tuple[str, "pd.DataFrame"]] = [(m, t[t.metric == m]) for m in CURVE_METRICS
                                                 if (t.metric == m).any()]
    ncols = 3
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=[p[0] for p in panels],
                        vertical_spacing=0.12 if nrows > 1 else 0.2)
    # colour = the read (span / UMAP vs final token / raw, as in the headline figure), dash = the labelling
    dashes = {lg: _DASHES[k % len(_DASHES)] for k, lg in enumerate(sorted({(str(a), str(b)) for a, b in
                                                                         zip(t.label, t.group)}))}
    for pi, (m, sub) in enumerate(panels):
        r, c = pi // ncols + 1, pi % ncols + 1
        for (sp, lab, grp), s in sub.groupby(["space", "label", "group"], sort=True):
            s = s.sort_values("layer")
            key = " ".join(x for x in (str(lab), str(grp), str(sp)) if x)
            col = color_of(str(sp))
            x = s.layer.to_numpy()
            first = key not in {tr.name for tr in fig.data if tr.showlegend}
            add_curve(fig, key, s.value.to_numpy(float), s.ci_low.to_numpy(float), s.ci_high.to_numpy(float), x=x,
                      color=col, dash=dashes[(str(lab), str(grp))], row=r, col=c, showlegend=first)
            if m == "silhouette" and s.baseline.notna().any():
                fig.add_trace(go.Scatter(x=x, y=s.baseline_high, mode="lines", name=f"{key} shuffled (95%)",
                                         legendgroup=key, showlegend=False,
                                         line=dict(color=col, width=1, dash="dashdot")), row=r, col=c)
        fig.update_xaxes(title_text="layer", row=r, col=c)
        fig.update_yaxes(title_text=metric_title(m), range=metric_range(m, np.r_[sub.value, sub.ci_low, sub.ci_high]),
                         row=r, col=c)
    fig.update_layout(title=f"{res.concept_set}: geometry metrics per layer (colour = the read: span / UMAP-30 "
                            f"or final token / raw; dash = the labelling; "
                            f"bands = {int(100 * res.params.get('ci', 0.95))}% bootstrap CI)",
                      height=330 * nrows + 80, template="plotly_white")
    return fig


def _palette(k: int) -> list[str]:
    import plotly.express as px

    base = px.colors.qualitative.Dark24 if k > 10 else px.colors.qualitative.Plotly
    return [base[i % len(base)] for i in range(max(k, 1))]


register_renderer("geometry", figure)
