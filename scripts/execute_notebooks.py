"""Execute every notebook in notebooks/ on the default model and save it with its outputs (issue 24: a reader
sees what each cell gives without running it). Run from the repository root:

    .venv/bin/python scripts/execute_notebooks.py            # all notebooks
    .venv/bin/python scripts/execute_notebooks.py 01_geometry

Outputs that would bloat the repository are trimmed: a plotly figure keeps its JSON (GitHub and JupyterLab draw
it) without the HTML copy that embeds plotly.js (~4.6 MB each); stderr progress bars and any output still
over 300 kB are replaced by a one-line note. tests/integration/test_notebooks.py checks the saved outputs.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]
MAX_OUTPUT = 300_000  # bytes of one output, after trimming


def _scrub(text: str) -> str:
    """No path of the machine that ran it: the repository root and temporary dirs become relative / <tmp>."""
    text = text.replace(str(ROOT) + "/", "")
    return re.sub(re.escape(tempfile.gettempdir()) + r"/[^\s'\"]*?(?=/|\s|$|'|\")", "<tmp>", text)


def trim(nb) -> None:
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/vnd.plotly.v1+json" in data:
                data.pop("text/html", None)
            elif "text/html" in data and "plotly.js" in data["text/html"][:2000] and "text/plain" not in data:
                continue  # plotly's one-off library injection: nothing to read
            if out.get("output_type") == "stream" and out.get("name") == "stderr" and "\r" in out.get("text", ""):
                continue  # progress bars
            if "text" in out:
                out["text"] = _scrub(out["text"])
            for mime in ("text/plain", "text/html"):
                if isinstance(data.get(mime), str):
                    data[mime] = _scrub(data[mime])
            if len(json.dumps(out)) > MAX_OUTPUT:
                out = nbformat.v4.new_output("stream", name="stdout",
                                             text="[output over 300 kB not saved: run the notebook to see it]\n")
            kept.append(out)
        cell["outputs"] = kept


def execute(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        nbclient.NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": tmp}},
                                allow_errors=False).execute()
    trim(nb)
    nbformat.write(nb, path)
    return time.perf_counter() - t0


if __name__ == "__main__":
    args = sys.argv[1:]
    trim_only = "--trim-only" in args  # re-trim saved outputs without running the notebooks
    names = [a for a in args if not a.startswith("--")]
    for p in sorted((ROOT / "notebooks").glob("*.ipynb")):
        if names and p.stem not in names:
            continue
        if trim_only:
            nb = nbformat.read(p, as_version=4)
            trim(nb)
            nbformat.write(nb, p)
            continue
        print(f"{p.name}: {execute(p):.0f} s", flush=True)
