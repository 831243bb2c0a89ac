"""``medinterp map`` (the main job: all techniques on all concept families → HTML report) and
``medinterp compare`` (two or more saved maps side by side on a relative-depth axis)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from medinterp.cli.app import app
from medinterp.errors import MedinterpError


def _split(s: Optional[str]) -> Optional[list[str]]:
    return None if not s else [x.strip() for x in s.split(",") if x.strip()]


@app.command("map")
def map_cmd(
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help="Model spec (see `medinterp models`) or path."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="Report file (self-contained HTML)."),
    quick: bool = typer.Option(False, "--quick", help="A small, fast run (a few minutes on 2 CPU cores)."),
    work_dir: Optional[Path] = typer.Option(
        None, "--work-dir", help="Where each technique's result is saved as it finishes; a rerun resumes "
        "from it. Default: OUT without .html + '.work'."),
    concepts: Optional[str] = typer.Option(None, "--concepts", help="Comma-separated families (default: all)."),
    techniques: str = typer.Option("geometry,saliency,lesion,patching", "--techniques", help="Comma-separated."),
    relative_depth: bool = typer.Option(False, "--relative-depth", help="x axis = layer / n_layers."),
    rerun: bool = typer.Option(False, "--rerun", help="Ignore finished results in the work dir."),
    percentile: float = typer.Option(75.0, help="Threshold percentile for saliency/lesion/patching."),
    sigma: float = typer.Option(1.0, help="Gaussian smoothing of the layer curves (layers)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Run the four techniques on every concept family and write the knowledge-map report.

    The map is also saved beside the report as OUT.map/ (for `medinterp compare` and re-thresholding).
    """
    import medinterp as mi
    from medinterp.maps import _peak_rss_mb

    if out.suffix.lower() not in (".html", ".htm"):
        raise MedinterpError(f"--out {out}: expected an .html file name")
    work = work_dir or out.with_suffix(".work")
    t0 = time.perf_counter()
    m = mi.load_model(model)
    t_load = time.perf_counter() - t0
    km = mi.knowledge_map(
        m, concepts=_split(concepts), techniques=_split(techniques) or [], quick=quick, out_dir=work,
        progress=progress, rerun=rerun, model_name=model, percentile=percentile, sigma=sigma,
    )
    km.provenance.setdefault("timing_s", {})["model_load"] = round(t_load, 2)
    km.save(out.with_suffix(".map"))
    km.to_html(out, relative_depth=relative_depth)
    typer.echo(f"\nKnowledge map of {model} ({km.n_layers} layers):")
    for c, s in km.summary().items():
        typer.echo(f"  {km.label(c):<12} {s}")
    total = time.perf_counter() - t0
    typer.echo(f"\nreport: {out}\nmap:    {out.with_suffix('.map')}\nwork:   {work}")
    typer.echo(f"time {total:.0f} s (model load {t_load:.0f} s); peak RSS {_peak_rss_mb():.0f} MB")


@app.command("compare")
def compare_cmd(
    maps: List[Path] = typer.Argument(..., help="Saved maps (X.map/ directories, or the X.html reports beside them)."),
    out: Path = typer.Option(Path("compare.html"), "--out", "-o"),
    names: Optional[str] = typer.Option(None, "--names", help="Comma-separated display names, one per map."),
) -> None:
    """Put two or more models' maps side by side on a relative-depth axis."""
    from medinterp.maps import compare

    compare(maps, _split(names), out=out)
    typer.echo(f"comparison of {len(maps)} maps: {out}")
