"""Every notebook in notebooks/ runs top to bottom on the default model (nbclient, this venv's kernel)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    names = {p.stem for p in NOTEBOOKS}
    assert "00_quickstart" in names and "05_hook_experiments" in names
    assert len(NOTEBOOKS) >= 6  # quickstart, one per technique, hooks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(path, as_version=4)
    # only the public API: no private medinterp names in the code cells
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "medinterp." not in code.replace("import medinterp as mi", ""), "notebooks use `mi.` only"
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
        extra_arguments=[], allow_errors=False,
    )
    t0 = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:  # show the failing cell's error, not a kernel dump
        pytest.fail(f"{path.name}: {str(e)[-2000:]}")
    sys.stderr.write(f"{path.name}: {time.perf_counter() - t0:.0f} s\n")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_saved_with_its_outputs(path):
    """A reader sees what each cell gives without running it (scripts/execute_notebooks.py saves them):
    every code cell was executed, in order, most show something, none an error, and no output names a path
    of the machine that ran it."""
    import re

    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.get("execution_count") for c in code]
    assert all(isinstance(n, int) for n in counts) and counts == sorted(counts), \
        f"{path.name}: not executed top to bottom; run scripts/execute_notebooks.py {path.stem}"
    outs = [o for c in code for o in c.get("outputs", [])]
    assert sum(bool(c.get("outputs")) for c in code) >= len(code) / 2
    assert not [o for o in outs if o.get("output_type") == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outs)
    assert not re.search(r"(?<![\w<])/(tmp|home|root|work|Users)/", text), f"{path.name}: a machine path in its outputs"
