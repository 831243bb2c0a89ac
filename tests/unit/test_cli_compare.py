"""`medinterp compare` from the command line on two saved maps (it once failed on every valid pair)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from typer.testing import CliRunner

from medinterp.cli import app
from medinterp.errors import MedinterpError
from medinterp.maps import KnowledgeMap

runner = CliRunner()


def _saved(tmp_path, name, curve):
    km = KnowledgeMap.from_curves({"drugs": {"peak": np.asarray(curve, float)}}, model_name=name,
                                  techniques=["peak"], rules={"peak": "percentile"})
    path = tmp_path / f"{name}.map"
    km.save(path)
    return path


def test_compare_writes_the_page_and_prints_the_cross_model_findings(tmp_path):
    a = _saved(tmp_path, "A", [0, 5, 5, 0, 0, 0])
    b = _saved(tmp_path, "B", [0, 0, 0, 0, 5, 5, 0, 0, 0])
    out = tmp_path / "cmp.html"
    # a fresh interpreter, as a user runs it: in this test process another test may have imported the
    # renderers already, which hid the bug this guards against
    res = subprocess.run([sys.executable, "-m", "medinterp", "compare", str(a), str(b), "--names", "first,second",
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    res.output = res.stdout
    html = out.read_text(encoding="utf-8")
    assert "relative depth" in html and "first" in html and "second" in html
    # the three cross-model rows, each with a verdict (these maps carry no lesion or geometry data)
    assert res.output.count("first") >= 3 and "fragile" in res.output and "first half" in res.output
    assert "collapses" in res.output and "not measured" in res.output


def test_compare_needs_two_maps_and_says_so(tmp_path):
    a = _saved(tmp_path, "A", [0, 5, 5, 0])
    res = runner.invoke(app, ["compare", str(a), "--out", str(tmp_path / "x.html")])
    # the CLI's main() turns a MedinterpError into one line; the runner hands it back as the exception
    assert res.exit_code != 0 and isinstance(res.exception, MedinterpError)
    assert "at least two maps" in str(res.exception) and not (tmp_path / "x.html").exists()
