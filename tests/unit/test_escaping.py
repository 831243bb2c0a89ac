"""medinterp's own escaping of the HTML it writes (titles, provenance, table cells, family labels).

plotly JSON-encodes figure text and escapes ``<`` as ``\\u003c`` by itself, so a check that only looks for
the raw payload anywhere would pass even if :func:`medinterp.viz.html.escape` did nothing. These tests strip
every typed ``<script type=...>`` block (plotly's data, plotly.js, CircuitsVis) and look for the payload in
what is left, then show that the same check fails when ``escape`` is replaced by the identity.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

import medinterp.viz  # noqa: F401  (registers the renderers)
import medinterp.viz.html as vhtml
from medinterp.maps import KnowledgeMap

EVIL = "<script>alert(1)</script>"
_TYPED_SCRIPT = re.compile(r"<script\s+type=[\"'][^\"']*[\"'][^>]*>.*?</script>", re.S | re.I)


def raw_payload_outside_plotly(text: str) -> list[str]:
    """The places where the raw ``<script>alert`` payload appears in HTML medinterp wrote itself."""
    rest = _TYPED_SCRIPT.sub("", text)
    return [rest[max(0, m.start() - 60): m.end() + 20] for m in re.finditer(r"<script>alert", rest)]


def _identity_escape(monkeypatch) -> int:
    """Replace ``escape`` by the identity wherever medinterp bound it; returns how many modules."""
    import importlib
    import pkgutil

    for m in pkgutil.iter_modules(medinterp.viz.__path__):  # the renderers import escape by name
        importlib.import_module(f"medinterp.viz.{m.name}")
    original, n = vhtml.escape, 0
    for name, mod in list(sys.modules.items()):
        if name.startswith("medinterp") and getattr(mod, "escape", None) is original:
            monkeypatch.setattr(mod, "escape", lambda t: str(t))
            n += 1
    return n


def _evil_map() -> KnowledgeMap:
    curve = np.zeros(10)
    curve[3:5] = 10.0
    return KnowledgeMap.from_curves({EVIL: {"lesion": curve, "saliency": np.roll(curve, 3)}},
                                    labels={EVIL: EVIL}, model_name=EVIL)


def test_report_writes_no_raw_payload_outside_plotly(tmp_path):
    text = _evil_map().to_html(tmp_path / "r.html")
    assert raw_payload_outside_plotly(text) == []
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # the label is shown, escaped


def test_report_check_fails_when_escape_is_the_identity(tmp_path, monkeypatch):
    assert _identity_escape(monkeypatch) >= 2
    text = _evil_map().to_html(tmp_path / "r.html")
    assert raw_payload_outside_plotly(text) != []  # the check above would have caught the bug


def test_page_title_and_provenance_are_escaped(monkeypatch):
    fig_free = vhtml.page(EVIL, vhtml.provenance_block({"model": EVIL}), include_plotlyjs=False)
    assert raw_payload_outside_plotly(fig_free) == []
    assert fig_free.count("&lt;script&gt;alert(1)") == 3  # <title>, <h1>, provenance <pre>
    _identity_escape(monkeypatch)
    broken = vhtml.page(EVIL, vhtml.provenance_block({"model": EVIL}), include_plotlyjs=False)
    assert len(raw_payload_outside_plotly(broken)) >= 2
