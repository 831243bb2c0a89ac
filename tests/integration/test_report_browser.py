"""The knowledge-map report renders in a real headless Chromium, offline, without console errors.

Needs Debian's ``chromium`` at /usr/bin/chromium (``apt-get install -y chromium``) and the Python
``playwright`` package (no ``playwright install``: that downloads a browser). Skips, saying why,
when either is absent.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from medinterp.maps import KnowledgeMap, compare

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("MEDINTERP_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EVIL = "<script>alert(1)</script>"


def _browser_or_skip():
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set MEDINTERP_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package playwright is not installed (pip install playwright)")
    return sync_playwright


def _map_with_attention() -> KnowledgeMap:
    rng = np.random.default_rng(0)
    curves = {c: {t: rng.random(12) for t in ("geometry", "saliency", "lesion", "patching")}
              for c in ("age", "drugs", EVIL)}
    curves["age"].pop("patching")  # a missing technique must render as such
    km = KnowledgeMap.from_curves(curves, model_name=EVIL)
    km.extras["attention"] = {
        "drugs": {"tokens": ["<bos>", "The", EVIL, " drug"], "attention": rng.random((2, 4, 4)).tolist(),
                  "head_names": ["L3H1", EVIL], "prompt": EVIL}
    }
    return km


def _load(path: Path) -> dict:
    sync_playwright = _browser_or_skip()
    console, requests, page_errors, dialogs = [], [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(path.resolve().as_uri(), wait_until="load")
            page.wait_for_selector("#knowledge-map .main-svg", timeout=30_000)
            n_bars = page.locator("#knowledge-map .point").count()
            n_cv = page.locator("[id^=cv-] *").count()
            page.wait_for_timeout(300)
        finally:
            browser.close()
    return dict(console=console, requests=requests, page_errors=page_errors, dialogs=dialogs, n_bars=n_bars, n_cv=n_cv)


def test_report_renders_offline_without_errors(tmp_path):
    km = _map_with_attention()
    path = tmp_path / "report.html"
    km.to_html(path)
    out = _load(path)
    assert not out["page_errors"], out["page_errors"]
    errors = [m for m in out["console"] if m[0] == "error"]
    assert not errors, errors
    non_file = [u for u in out["requests"] if not u.startswith(("file:", "data:", "blob:", "about:"))]
    assert not non_file, non_file
    assert not out["dialogs"], f"a label's script ran: {out['dialogs']}"
    assert out["n_bars"] > 0  # the band bars were drawn
    assert out["n_cv"] > 0  # circuitsvis rendered into its div


def test_compare_renders_offline(tmp_path):
    a = _map_with_attention()
    b = KnowledgeMap.from_curves({"drugs": {"lesion": np.r_[0, 0, 5, 5, 0, 0, 0, 0.0]}}, model_name="other")
    path = tmp_path / "compare.html"
    compare([a, b], out=path)
    out = _load(path)
    assert not out["page_errors"] and not [m for m in out["console"] if m[0] == "error"]
    assert not [u for u in out["requests"] if not u.startswith(("file:", "data:", "blob:", "about:"))]
    assert not out["dialogs"]
    assert out["n_bars"] > 0
