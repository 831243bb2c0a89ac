"""The knowledge-map report renders in a real headless Chromium, offline, without console errors.

Needs Debian's ``chromium`` at /usr/bin/chromium (``apt-get install -y chromium``) and the Python
``playwright`` package (no ``playwright install``: that downloads a browser). Skips, saying why,
when either is absent, except under CI (``CI`` set), where a missing browser fails the test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import medinterp.viz  # noqa: F401  (registers the renderers)
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


def _skip_or_fail(why: str):
    if os.environ.get("CI"):
        pytest.fail(f"{why}: the browser tests must run in CI")
    pytest.skip(why)


def _browser_or_skip():
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        _skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set MEDINTERP_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("the Python package playwright is not installed (pip install playwright)")
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
            boxes = {k: [page.locator(f"#knowledge-map {sel}").nth(i).bounding_box()
                         for i in range(page.locator(f"#knowledge-map {sel}").count())]
                     for k, sel in BOX_SELECTORS.items()}
        finally:
            browser.close()
    return dict(console=console, requests=requests, page_errors=page_errors, dialogs=dialogs, n_bars=n_bars, n_cv=n_cv,
                boxes=boxes)


BOX_SELECTORS = {"legend": ".legend", "title": ".g-gtitle", "plot1": ".draglayer .xy .nsewdrag",
                 "plot2": ".draglayer .x2y2 .nsewdrag", "y1ticks": ".yaxislayer-above .ytick",
                 "y2ticks": ".yaxislayer-above .y2tick"}


def _overlap(a: dict, b: dict) -> bool:
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])


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
    # laid out as a person sees it: the legend clear of the title and of both panels; each model's row
    # labels beside its own panel, never over the other model's bars
    bx = out["boxes"]
    (legend,), (title,), (p1,), (p2,) = bx["legend"], bx["title"], bx["plot1"], bx["plot2"]
    assert not _overlap(legend, title) and not _overlap(legend, p1) and not _overlap(legend, p2)
    assert not _overlap(p1, p2)
    assert bx["y1ticks"] and bx["y2ticks"]
    for tick in bx["y2ticks"]:
        assert not _overlap(tick, p1) and not _overlap(tick, p2), tick
    for tick in bx["y1ticks"]:
        assert not _overlap(tick, p1) and not _overlap(tick, p2), tick
