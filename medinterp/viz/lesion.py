"""Lesion figures: layer × metric heatmap, mode × layer KL heatmap, per-mode curves with bootstrap
bands, per-concept curves and example continuations. Registered as the renderer of ``LesionResult``
(kind ``"lesion"``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medinterp.viz.html import escape
from medinterp.techniques.base import register_renderer
from medinterp.techniques.lesion.result import METRIC_TITLES
from medinterp.viz.curves import layer_curve_figure
from medinterp.viz.style import ci_text, color_of, num


def group_label(result: Any) -> str | None:
    """The label whose values split the prompts into the per-group curves (``concept`` first)."""
    if "concept" in result.labels and len(set(result.labels["concept"])) > 1:
        return "concept"
    for k, v in sorted(result.labels.items()):
        if k == "item":
            continue
        vals = {x for x in v if isinstance(x, str)}
        if 2 <= len(vals) <= 12 and len(vals) == len(set(v)):
            return k
    return None


def lesion_figures(result: Any, mode: str | None = None, group_by: str | None = None):
    """Figures: layer × metric heatmap, mode × layer KL heatmap, per-mode curves with CIs,
    per-concept (or per-label) curves, and example continuations."""
    import plotly.graph_objects as go

    mode = mode or ("skip" if "skip" in result.modes else result.modes[0])
    L = list(range(result.n_layers))
    figs = []

    # 1. layer × metric heatmap (each row scaled to its maximum; hover shows the raw value + CI)
    rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    for metric in result.metric_names:
        cur = result.layer_curve(metric, mode)
        lo, hi = result.layer_curve_ci(metric, mode)
        if metric == "top1_agree":
            rows.append(("top-1 changed (1 − agreement)", 1 - cur, 1 - hi, 1 - lo))
        else:
            rows.append((METRIC_TITLES[metric], cur, lo, hi))
    if result.cont_metrics is not None and mode in result.cont_modes:
        ov = result.continuation_curve("overlap", mode)
        rows.append(("continuation changed (1 − overlap)", 1 - ov, 1 - ov, 1 - ov))
        if result.judge_scores is not None:
            j = result.continuation_curve("judge", mode)
            rows.append((METRIC_TITLES["judge"], j, j, j))
    z, text, hover = [], [], []
    missing = "not measured (no known prompt)" if getattr(result, "known", None) is not None else "not measured"
    for name, cur, lo, hi in rows:
        m = np.nanmax(np.abs(cur)) if np.isfinite(cur).any() else 1.0
        z.append(cur / m if m > 0 else cur)
        text.append([num(v, ".2g", "–") for v in cur])
        hover.append([f"{escape(name)}<br>block {l}: {ci_text(cur[l], lo[l], hi[l], '.4g', missing)}" for l in L])
    fig = go.Figure(go.Heatmap(
        z=z, x=L, y=[r[0] for r in rows], text=text, texttemplate="%{text}", hovertext=hover,
        hoverinfo="text", colorscale="Reds", colorbar=dict(title="÷ row max"),
    ))
    fig.update_layout(
        title=f"Damage when each block is lesioned ({escape(mode)}): {escape(result.concept_set)}, "
        f"{result.n_prompts} prompts"
        + (f" ({result.n_known} known)" if getattr(result, "known", None) is not None else "")
        + f", {int(result.ci * 100)}% bootstrap CI in hover",
        xaxis_title="block", template="plotly_white", height=180 + 45 * len(rows),
    )
    figs.append(fig)

    # 2. mode × layer heatmap of mean KL
    z = [result.layer_curve("kl", m) for m in result.modes]
    fig = go.Figure(go.Heatmap(z=z, x=L, y=list(result.modes), colorscale="Reds", colorbar=dict(title="KL (nats)"),
                               hovertemplate="mode %{y}<br>block %{x}<br>mean KL %{z:.4g}<extra></extra>"))
    fig.update_layout(title="Mean KL(intact ‖ lesioned) per lesion mode and block", xaxis_title="block",
                      template="plotly_white", height=160 + 40 * len(result.modes))
    figs.append(fig)

    # 3. curves per mode with CI bands: the map's metric (pair sets: fraction of the clean logit difference lost,
    #    on the known prompts), log-prob drop, accuracy drop and KL
    first = getattr(result, "default_metric", "logp_drop")
    for metric in [m for m in dict.fromkeys((first, "logp_drop", "acc_drop", "kl")) if m in result.metric_names]:
        curves = {m: (result.layer_curve(metric, m), *result.layer_curve_ci(metric, m)) for m in result.modes}
        figs.append(layer_curve_figure(
            curves, title=f"{METRIC_TITLES[metric]} per lesioned block (mean, {int(result.ci * 100)}% CI)",
            y_title=METRIC_TITLES[metric], x_title="block", ci_label=f"{int(result.ci * 100)}% CI",
            colors={"skip": color_of("lesion")}))

    # 4. per-concept / per-label curves
    group = group_by or group_label(result)
    if group is not None:
        fig = go.Figure()
        for g in sorted({str(x) for x in result.labels[group]}):
            sel = {group: next(x for x in result.labels[group] if str(x) == g)}
            cur = result.layer_curve("kl", mode, sel)
            n = int(result._mask(sel).sum())
            fig.add_trace(go.Scatter(x=L, y=cur, mode="lines+markers", name=f"{escape(g)} (n={n})"))
        fig.update_layout(title=f"KL when each block is lesioned ({escape(mode)}), by {escape(group)}",
                          xaxis_title="block", yaxis_title="mean KL (nats)", template="plotly_white")
        figs.append(fig)

    # 5. example continuations at the most damaging block
    if result.cont_metrics is not None and mode in result.cont_modes and result.intact_continuations:
        li = result.layers.index(result.top_layers(1, "kl", mode)[0]) if result.top_layers(1, "kl", mode)[0] in result.layers else 0
        les = result.lesioned_continuations[mode][li]
        fig = go.Figure(go.Table(
            header=dict(values=["prompt", "intact continuation", f"block {result.layers[li]} lesioned ({escape(mode)})"]),
            cells=dict(values=[
                [escape(result.prompts[i]) for i in result.cont_index],
                [escape(t) for t in result.intact_continuations],
                [escape(t) for t in les],
            ], align="left"),
        ))
        fig.update_layout(title=f"Greedy continuations ({result.max_new_tokens} tokens) at the most damaging block")
        figs.append(fig)
    return figs


def block_criticality_figure(result: Any) -> list:
    """The generic block-criticality strip: mean KL(intact ‖ block removed) per block with its CI."""
    return [layer_curve_figure(
        {"KL": (result.layer_curve(), *result.layer_curve_ci())},
        title=f"Block criticality (generic, all families): {escape(result.concept_set)}, {len(result.kl)} prompts, "
        f"{int(result.ci * 100)}% cluster-bootstrap CI", y_title="KL(intact ‖ block removed), nats", x_title="block",
        ci_label=f"{int(result.ci * 100)}% CI", colors={"KL": color_of("lesion")})]


register_renderer("lesion", lesion_figures)
register_renderer("block_criticality", block_criticality_figure)
