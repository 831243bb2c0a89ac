"""Self-contained HTML: plotly.js inlined once, no CDN, every user-supplied string escaped.

:func:`escape` is THE escaping of user text (concept labels, prompts, model names) in medinterp's
HTML; :func:`figures_to_html` is registered as the ``"page"`` renderer that ``Result.to_html`` uses.

Example:
    >>> escape("<b>&")
    '&lt;b&gt;&amp;'
"""

from __future__ import annotations

import html
import json
from typing import Any, Sequence


def escape(text: Any) -> str:
    """HTML-escape any user-supplied text before it lands in a report (quotes included)."""
    return html.escape(str(text), quote=True)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
pre.prov{background:#f6f6f6;padding:8px;font-size:12px;overflow:auto;max-height:320px}
table.kv td{padding:2px 8px;border-bottom:1px solid #eee;font-size:13px}
"""


def plotly_js_tag() -> str:
    """A <script> tag holding the full plotly.js bundle (about 4.8 MB), so the page works offline."""
    from plotly.offline import get_plotlyjs

    return f'<script type="text/javascript">{get_plotlyjs()}</script>'


def figure_div(fig: Any, div_id: str | None = None) -> str:
    """One plotly figure as a <div> that relies on plotly.js being loaded once on the page."""
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"responsive": True})


def provenance_block(provenance: dict | None) -> str:
    if not provenance:
        return ""
    text = json.dumps(provenance, indent=2, default=str)
    return f"<details><summary>Provenance</summary><pre class='prov'>{escape(text)}</pre></details>"


def page(title: str, body: str, *, include_plotlyjs: bool = True, extra_head: str = "") -> str:
    """Wrap ``body`` (already-safe HTML) in a full page. ``title`` is escaped."""
    js = plotly_js_tag() if include_plotlyjs else ""
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{_CSS}</style>{js}{extra_head}</head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )


def figures_to_html(figs: Sequence[Any], *, title: str, provenance: dict | None = None) -> str:
    """A standalone page with the given plotly figures and a collapsible provenance block.

    Figure titles and hover texts are JSON-encoded by plotly (which escapes ``<`` as ``\\u003c``).
    """
    divs = "\n".join(figure_div(f) for f in figs)
    return page(title, divs + provenance_block(provenance))
