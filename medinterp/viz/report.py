"""The knowledge-map report: one self-contained HTML file (no CDN, no network request).

plotly.js is inlined once (``medinterp.viz.html.page``); the circuitsvis bundle is inlined once when
an attention view is shown, and each view is a small ``CircuitsVis.render`` call whose data is JSON
with ``<``, ``>`` and ``&`` escaped, so no user text can close the script. Every user string placed in
raw HTML goes through :func:`medinterp.viz.html.escape`.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import TYPE_CHECKING, Any, Sequence

from medinterp.maps.band_checks import check_text
from medinterp.maps.findings import PAPER, block_criticality, findings_table
from medinterp.maps.synthesis import _ranges_text
from medinterp.viz.html import escape
from medinterp.viz.html import figure_div, page, provenance_block
from medinterp.viz.style import num, short_note

if TYPE_CHECKING:  # pragma: no cover
    from medinterp.maps import KnowledgeMap

log = logging.getLogger(__name__)

_EXTRA_CSS = """
<style>
table.iv{border-collapse:collapse;font-size:13px} table.iv td,table.iv th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}
.note{color:#555;font-size:13px} .missing{color:#a00}
nav a{margin-right:12px}
</style>
"""


def safe_json(obj: Any) -> str:
    """JSON safe to embed in a <script>: ``<``, ``>``, ``&`` and U+2028/9 are \\u-escaped."""
    s = json.dumps(obj, allow_nan=False, default=str)
    for a, b in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        s = s.replace(a, b)
    return s


@functools.lru_cache(maxsize=1)
def circuitsvis_bundle() -> str:
    """The circuitsvis JavaScript bundle (defines ``CircuitsVis``), taken from its offline render."""
    import circuitsvis as cv
    import numpy as np

    src = cv.attention.attention_patterns(tokens=["a", "b"], attention=np.ones((1, 2, 2))).local_src
    start = src.index(">", src.index("<script")) + 1
    end = src.index("CircuitsVis.render(")
    js = src[start:end]
    js = "\n".join(line for line in js.splitlines() if not line.startswith("//# sourceMappingURL"))
    if "</script" in js.lower():  # pragma: no cover - would break inlining
        raise RuntimeError("circuitsvis bundle contains </script>; cannot inline")
    return js


def circuitsvis_tag() -> str:
    return f'<script type="text/javascript">{circuitsvis_bundle()}</script>'


def attention_view(div_id: str, tokens: Sequence[str], attention: Any, head_names: Sequence[str] | None = None) -> str:
    """HTML for one circuitsvis AttentionPatterns view (needs :func:`circuitsvis_tag` on the page).

    Args:
        div_id: unique element id (alphanumeric and dashes).
        tokens: token strings (user text: JSON-escaped).
        attention: ``[n_heads, n_dest, n_src]`` pattern.
        head_names: names of the heads (e.g. ``"L3H1"``).
    """
    import numpy as np

    att = np.asarray(attention, dtype=float).round(4).tolist()
    props: dict[str, Any] = {"tokens": [str(t) for t in tokens], "attention": att}
    if head_names is not None:
        props["headLabels"] = [str(h) for h in head_names]
    did = "".join(ch for ch in div_id if ch.isalnum() or ch in "-_")
    return (
        f'<div id="{did}" style="margin: 15px 0;"></div>'
        f'<script type="text/javascript">CircuitsVis.render({safe_json(did)}, CircuitsVis.AttentionPatterns, {safe_json(props)});</script>'
    )


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='iv'><tr>{head}</tr>{body}</table>"


def _findings_section(km: "KnowledgeMap") -> str:
    """The paper's findings as rows: holds / does not hold / inconclusive, with statistic, CI and control."""
    rows = [(*f.as_row(), f.null) for f in findings_table(km)]
    return ("<h2 id='findings'>Findings of the paper, tested on this model</h2>"
            f"<p class='note'>The claims of <i>{escape(PAPER)}</i>, each decided by a rule in "
            "<code>medinterp.maps.findings</code> (docs/METHOD.md, “Findings rules”): <b>holds</b> where its test "
            "rejects the null in the claim's direction and the control does not explain it, <b>does not hold</b> where "
            "the data point the other way, else <b>inconclusive</b>; a statistic the run did not measure is shown as "
            "“inconclusive: not measured”.</p>"
            + _table(rows, ["finding", "verdict", "statistic [95% CI]", "control", "null"]))


def _rule_note(km: "KnowledgeMap", model: dict) -> str:
    head = (f"<p class='note'>Model: <b>{escape(km.model_name or model.get('spec', '?'))}</b>, {km.n_layers} layers. "
            f"Concepts: {escape(', '.join(km.label(c) for c in km.concepts))}. ")
    cp = km.control_params or {}
    if km.rule == "controls":
        return head + (
            "A layer is marked only where the technique's per-item evidence beats <b>both</b> the matched "
            "non-medical control family (unpaired, on items matched on token counts, answer prior and baseline "
            "confidence; a control that cannot be balanced is never used) and the random-init twin of the model (paired "
            f"on item and template), after {escape(cp.get('correction', 'holm'))} correction across layers at "
            f"α = {escape(cp.get('alpha', 0.05))}, in runs of ≥ {escape(cp.get('min_run', 2))} layers, kept when marked "
            f"in ≥ {escape(format(100 * float(cp.get('robustness', 0.8)), '.0f'))}% of item × template × seed "
            "resamples. “No interval” is a valid outcome. The consensus strip counts only marked layers.</p>")
    rise = [t for t in km.techniques if km.rules.get(t) == "rise"]
    return head + (
        "<b>Paper rules</b> (not effect over control): each technique's per-layer curve is smoothed (Gaussian σ = "
        f"{escape(km.params['sigma'])}); {escape(', '.join(rise) or 'no technique')} "
        f"{'marks' if len(rise) == 1 else 'mark'} the {escape(km.params['window'])}-layer window of "
        f"steepest rise, the other techniques mark runs above the {escape(format(float(km.params['percentile']), 'g'))}th "
        f"percentile (≥ {escape(km.params['min_len'])} layers, ≤ {escape(km.params['max_intervals'])} per "
        "technique, largest area kept). The consensus strip counts the techniques marking each layer.</p>")


def _cell(km: "KnowledgeMap", c: str, t: str) -> str:
    """One map cell in words: the marked layers, "no interval", or why there is no band."""
    if km.status[c].get(t) != "ok" or not km.available(c, t):
        cell = km.cell(c, t)
        return f"{cell.code}: {cell.reason}"
    layers = [l for iv in km.intervals if iv["concept"] == c and iv["technique"] == t
              for l in range(iv["start"], iv["end"] + 1)]
    note = (km.control_notes or {}).get(c, {}).get(t)
    if not layers and km.rule == "controls":
        cell = km.cell(c, t)  # a cell that beat both controls but not robustly / not long enough says so
        return ("no interval · " if cell.code == "not_significant" else "") + f"{cell.code}: {cell.reason}"
    return (_ranges_text(layers) if layers else "no interval") + (f" ({note})" if note else "")


def _balance_section(km: "KnowledgeMap") -> str:
    """Per cell: is the control comparable, its covariates before and after matching, and the smallest
    effect the cell could detect (METHOD §0b)."""
    bal = km.control_balance or {}
    if not any(bal.values()):
        return ""
    out = ["<h2 id='balance'>Balance of each cell's control</h2>",
           "<p class='note'>A cell is compared on matched items (exact on token counts, a caliper on the other "
           "covariates) and is never marked when a covariate's standardized mean difference stays above 0.25 after "
           "matching (“control not comparable”). MDE: the smallest effect over control the cell would detect with "
           "80% power at α / layers.</p>"]
    rows = []
    for c in km.concepts:
        for t in km.techniques:
            b = (bal.get(c) or {}).get(t)
            if not b:
                continue
            comp = {True: "yes", False: "no", None: "not checked"}[b.get("comparable")]
            rows.append((km.label(c), t, comp, f"{b.get('n_items_compared', '')} / {b.get('n_control_compared', '')}",
                         "; ".join(f"{r['covariate']} {_num(r['medicine'])} vs {_num(r['control'])} "
                                   f"(SMD {_num(r['smd_before'])} → {_num(r['smd_after'])})" for r in b.get("table") or []),
                         _num(b.get("mde_min")), b.get("reason") or ""))
    out.append(_table(rows, ["concept", "technique", "comparable", "items / control items compared",
                             "covariate: medicine vs control (SMD before → after matching)", "MDE (min)", "why not"]))
    return "".join(out)


def _num(x: Any) -> str:
    """A number to 3 significant digits; "not measured" for None / NaN (never "nan"), other values as text."""
    if x is None or isinstance(x, (int, float)) or hasattr(x, "dtype"):
        return num(x)
    try:
        return num(float(x))
    except (TypeError, ValueError):
        return str(x)


def active_rule_params(km: "KnowledgeMap") -> list[tuple[str, str]]:
    """``(parameter, value)`` rows of the rule that marked the map, and only that rule.

    Under the controls rule: alpha, correction, min_run, robustness, n_perm, ... (the paper rule's
    percentile / sigma thresholds marked nothing and are left out); under the paper rule: sigma,
    window, percentile, ... and each technique's interval rule.

    Args:
        km: the knowledge map.

    Returns:
        Rows, the rule's name first.
    """
    if km.rule == "controls":
        rows = [("rule", "controls (effect over the control family and the random twin)")]
        rows += sorted((k, v if isinstance(v, str) else json.dumps(v, default=str))
                       for k, v in (km.control_params or {}).items())
        return rows
    rows = [("rule", "paper (per-layer curve thresholds, no control)")]
    rows += sorted((k, json.dumps(v, default=str)) for k, v in km.params.items())
    rows += [(f"interval rule of {t}", str(km.rules.get(t, ""))) for t in km.techniques]
    return rows


def _params_section(km: "KnowledgeMap") -> str:
    """The parameters table: the active rule's parameters only (see :func:`active_rule_params`)."""
    return ("<p class='note'>Parameters of the rule that marked this map (the other rule's are not used "
            "and not shown).</p>" + _table(active_rule_params(km), ["parameter", "value"]))


def _technique_result_figures(km: "KnowledgeMap", technique: str, max_figs: int = 12) -> list[str]:
    """Figures of the saved/in-memory technique results (one per concept), as divs."""
    from pathlib import Path

    from medinterp.results import Result

    divs = []
    for c in km.concepts:
        key = f"{c}/{technique}"
        res = km._results.get(key)
        if res is None and key in km.result_dirs and Path(km.result_dirs[key], "manifest.json").is_file():
            try:
                res = Result.load(km.result_dirs[key])
            except Exception as e:  # noqa: BLE001 - a stale or foreign dir: logged and shown, the report stands
                log.warning("report: %s: could not load saved result (%s: %s)", key, type(e).__name__, e)
                divs.append(f"<p class='missing'>{escape(key)}: could not load saved result ({escape(e)})</p>")
                continue
        if res is None:
            continue
        try:
            figs = res.figures()
        except Exception as e:  # noqa: BLE001 - logged and shown in the report, the report stands
            log.warning("report: %s: figure failed (%s: %s)", key, type(e).__name__, e)
            divs.append(f"<p class='missing'>{escape(key)}: figure failed ({escape(type(e).__name__)}: {escape(e)})</p>")
            continue
        divs.append(f"<h4>{escape(km.label(c))}</h4>")
        divs.extend(figure_div(f) for f in figs[:max_figs])
    return divs


def render_report(
    km: "KnowledgeMap",
    *,
    title: str | None = None,
    relative_depth: bool = False,
    include_technique_figures: bool = True,
) -> str:
    """The full report of a knowledge map as one HTML string (see module docstring)."""
    from medinterp.viz.figures import (block_criticality_figure, control_curves_figure, curve_heatmaps, curves_figure,
                                       map_figure)

    title = title or f"medinterp knowledge map{' — ' + km.model_name if km.model_name else ''}"
    parts: list[str] = [_EXTRA_CSS]
    parts.append(
        "<nav>" + "".join(f"<a href='#{a}'>{escape(b)}</a>" for a, b in [
            ("findings", "Findings"), ("map", "Map"), ("summary", "Summary"), ("curves", "Curves")] +
            [(f"t-{t}", t) for t in km.techniques] + [("params", "Parameters")]) + "</nav>"
    )
    model = (km.provenance or {}).get("model") or {}
    parts.append(_findings_section(km))
    parts.append(_rule_note(km, model))
    parts.append("<h2 id='map'>Knowledge map</h2>")
    parts.append(figure_div(map_figure(km, relative_depth=relative_depth), div_id="knowledge-map"))
    crit = block_criticality(km)
    if crit is not None:
        parts.append(figure_div(block_criticality_figure(crit, km.n_layers), div_id="block-criticality"))
        parts.append("<p class='note'>Block criticality is a property of the model, not of a family: shown once, "
                     "never counted as a band.</p>")
    parts.append("<h2 id='summary'>Summary</h2>")
    summ = km.summary()
    parts.append(_table([(km.label(c), summ[c]) for c in km.concepts], ["concept", "where"]))
    parts.append(_table([[km.label(c)] + [_cell(km, c, t) for t in km.techniques] for c in km.concepts],
                        ["concept"] + list(km.techniques)))
    parts.append(_balance_section(km))
    missing = [(km.label(c), t, s) for c in km.concepts for t, s in km.status[c].items() if s != "ok"]
    if missing:
        parts.append("<p class='missing'>Techniques missing from this map (no numbers are shown for them):</p>")
        parts.append(_table(missing, ["concept", "technique", "status"]))
    parts.append("<h2 id='curves'>Layer curves</h2>")
    parts.append(figure_div(curve_heatmaps(km, relative_depth=relative_depth)))
    parts.append("<h3>Marked intervals</h3>")
    parts.append(_table([(km.label(iv["concept"]), iv["technique"], iv["start"], iv["end"], num(iv["score"], ".4g"), iv["rule"],
                          check_text(km, iv)) for iv in km.intervals],
                        ["concept", "technique", "first layer", "last layer", "score", "rule", "causal check"]))
    needs_cv = False
    for t in km.techniques:
        parts.append(f"<h2 id='t-{escape(t)}'>{escape(t)}</h2>")
        names = {c: km.curve_name(t, c) for c in km.concepts if km.status[c].get(t) == "ok"}
        if len(set(names.values())) > 1:
            parts.append("<p class='note'>Curve: " + "; ".join(f"{escape(km.label(c))}: {escape(v)}" for c, v in names.items()) + ".</p>")
        else:
            parts.append(f"<p class='note'>Curve: {escape(km.curve_name(t))}.</p>")
        if not any(km.status[c].get(t) == "ok" for c in km.concepts):  # ran, or not: say which, per concept
            why = "; ".join(f"{escape(km.label(c))}: {escape(short_note(str(km.status[c].get(t) or 'not run'), 90))}"
                            for c in km.concepts)
            parts.append(f"<p class='missing'>No concept has a curve for this technique ({why}).</p>")
            continue
        cf = control_curves_figure(km, t)
        if cf is not None:
            parts.append(figure_div(cf))
        parts.append(figure_div(curves_figure(km, t)))
        if include_technique_figures:
            parts.append("<details><summary>Full results per concept</summary>")
            parts.extend(_technique_result_figures(km, t))
            parts.append("</details>")
        views = {c: v for c, v in ((km.extras or {}).get("attention") or {}).items()
                 if isinstance(v, dict) and v.get("technique", "patching") == t}  # 0.1.0 maps: patching's
        if views:
            needs_cv = True
            parts.append(f"<h3>Attention patterns of the heads {escape(t)} ranks highest</h3>")
            for k, (c, v) in enumerate(views.items()):
                parts.append(f"<p class='note'>{escape(km.label(c))}: heads {escape(', '.join(v.get('head_names', [])))} "
                             f"on the clean prompt “{escape(v.get('prompt', ''))}”.</p>")
                parts.append(attention_view(f"cv-{t}-{k}", v["tokens"], v["attention"], v.get("head_names")))
    parts.append("<h2 id='params'>Parameters and provenance</h2>")
    parts.append(_params_section(km))
    prov = km.provenance or {}
    run_params = prov.get("params") or {}
    if run_params.get("technique_kwargs"):
        parts.append("<h3>Technique settings</h3>")
        parts.append(_table(sorted((t, json.dumps(v)) for t, v in run_params["technique_kwargs"].items()),
                            ["technique", "keyword arguments"]))
    if prov.get("timing_s"):
        parts.append("<h3>Run time</h3>")
        rows = [(k, f"{v:.1f} s") for k, v in prov["timing_s"].items() if isinstance(v, (int, float))]
        if prov.get("peak_rss_mb") is not None:
            rows.append(("peak resident memory of the process", f"{prov['peak_rss_mb']:.0f} MB"))
        parts.append(_table(rows, ["job", "time"]))
    parts.append(provenance_block(km.provenance))
    return page(title, "\n".join(parts), extra_head=circuitsvis_tag() if needs_cv else "")


def _compare_findings_html(maps: Sequence["KnowledgeMap"], names: Sequence[str]) -> str:
    """The cross-model findings table (:func:`medinterp.maps.compare_findings`), every cell escaped."""
    from medinterp.maps.findings_models import N_CONTRASTS, compare_findings

    rows = [r.as_row() for r in compare_findings(maps, names)]
    return ("<h2 id='findings-models'>Findings that compare models</h2>"
            f"<p class='note'>Each model against the first. CIs of a pair's {N_CONTRASTS} contrasts at level "
            f"1 − 0.05/{N_CONTRASTS} (Bonferroni); “holds” = the CI of A − B above 0, “does not hold” = below 0. "
            "Rules in <code>medinterp.maps.findings_models</code>.</p>"
            + _table(rows, ["contrast", "statistic", "model A", "model B", "A − B [CI]", "verdict"]))


def render_compare(maps: Sequence["KnowledgeMap"], names: Sequence[str] | None = None, *, title: str = "medinterp model comparison") -> str:
    """Two or more maps side by side on a relative-depth axis, with per-concept summaries."""
    from medinterp.viz.figures import compare_figure, consensus_compare_figure

    names = list(names or [m.model_name or f"map {k}" for k, m in enumerate(maps)])
    parts = [_EXTRA_CSS]
    parts.append("<p class='note'>Layers are shown as relative depth (layer / n_layers) so models of different "
                 "depth line up.</p>")
    parts.append(figure_div(compare_figure(maps, names), div_id="knowledge-map"))
    parts.append(figure_div(consensus_compare_figure(maps, names)))
    parts.append(_compare_findings_html(maps, names))
    for m, nm in zip(maps, names):
        parts.append(f"<h2>{escape(nm)} ({m.n_layers} layers)</h2>")
        s = m.summary()
        parts.append(_table([(m.label(c), s[c]) for c in m.concepts], ["concept", "where"]))
        parts.append(provenance_block(m.provenance))
    return page(title, "\n".join(parts))


__all__ = ["render_report", "render_compare", "attention_view", "circuitsvis_tag", "safe_json"]
