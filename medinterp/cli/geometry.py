"""``medinterp geometry``: per-layer activation geometry (UMAP, silhouette, age and progression geometry)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import typer

from medinterp.cli._common import check_out_dir, load_concept_set, load_model
from medinterp.cli.app import app
from medinterp.errors import MedinterpError


@app.command("geometry")
def geometry_cmd(
    concepts: Optional[List[str]] = typer.Option(
        None, "--concepts", "-c",
        help="Concept set name or file; repeat for several. Default: every shipped set that feeds geometry."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory; one sub-directory per concept set."),
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help="Model spec (see `medinterp models`)."),
    positions: str = typer.Option("last", "--positions", help="last | span_mean | span_last"),
    embed: bool = typer.Option(True, "--embed/--no-embed", help="Also analyse the embedding output (layer -1)."),
    n_neighbors: int = typer.Option(15, "--n-neighbors", help="UMAP n_neighbors."),
    min_dist: float = typer.Option(0.1, "--min-dist", help="UMAP min_dist."),
    metric: str = typer.Option("euclidean", "--metric", help="UMAP metric (euclidean, cosine, ...)."),
    pca: int = typer.Option(50, "--pca", help="PCA components before UMAP (0 = no PCA)."),
    n_epochs: int = typer.Option(200, "--n-epochs", help="UMAP epochs (0 = umap-learn's default)."),
    n_perm: int = typer.Option(100, "--n-perm", help="Label permutations for the silhouette baseline."),
    n_boot: int = typer.Option(200, "--n-boot", help="Bootstrap replicates for the CIs."),
    seed: int = typer.Option(0, "--seed"),
    n_jobs: int = typer.Option(1, "--n-jobs", help="UMAP worker processes (1 = in this process)."),
    batch_size: int = typer.Option(32, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """UMAP every layer's residual stream (30-d for metrics, 2-d for plots) and score it: silhouette of
    every categorical labelling (with a label-permutation baseline), anisotropy, linearity and the
    17->18 step for age, stage ordering and circularity for progression, and collapse diagnostics.

    Writes, per concept set, OUT/<set>/manifest.json (provenance, parameters, labels),
    OUT/<set>/table.csv (tidy per-layer metrics with CIs), age_steps.csv / progression.csv where they
    apply, arrays.safetensors (UMAP embeddings) and OUT/<set>/geometry.html; plus OUT/summary.json.
    """
    from medinterp.techniques.geometry import default_concept_sets, geometry_many

    for name, v in (("--n-neighbors", n_neighbors), ("--n-perm", n_perm + 1), ("--n-boot", n_boot + 1),
                    ("--n-jobs", n_jobs), ("--batch-size", batch_size)):
        if v < 1 or (name == "--n-neighbors" and v < 2):
            raise MedinterpError(f"{name}: expected a positive number")
    from medinterp.activations import POSITION_MODES

    if positions not in POSITION_MODES:
        raise MedinterpError(f"--positions {positions!r}: expected one of {', '.join(POSITION_MODES)}")
    try:  # the exact k-NN graph UMAP starts from uses sklearn's distances: the metric must be one of them
        from sklearn.metrics import pairwise_distances

        pairwise_distances([[0.0, 1.0], [1.0, 0.0]], metric=metric)
    except (ValueError, TypeError):
        raise MedinterpError(f"--metric {metric!r}: not a distance sklearn / UMAP know (e.g. euclidean, cosine, "
                             "manhattan, correlation)") from None
    if min_dist < 0 or pca < 0 or n_epochs < 0:
        raise MedinterpError(f"--min-dist {min_dist}, --pca {pca}, --n-epochs {n_epochs}: expected numbers >= 0")
    check_out_dir(out)
    names = list(concepts) if concepts else default_concept_sets()
    sets = [load_concept_set(c) for c in names]
    t0 = time.perf_counter()
    m = load_model(model, device=device)
    t_model = time.perf_counter() - t0
    results = geometry_many(
        m, sets, positions=positions, include_embed=embed, batch_size=batch_size, n_neighbors=n_neighbors,
        min_dist=min_dist, metric=metric, pca=pca or None, n_epochs=n_epochs or None, n_perm=n_perm,
        n_boot=n_boot, seed=seed, n_jobs=n_jobs, progress=progress,
    )
    total = time.perf_counter() - t0
    summary = {"model": model, "model_load_s": round(t_model, 1), "total_s": round(total, 1), "sets": {}}
    out.mkdir(parents=True, exist_ok=True)
    for res in results:
        d = out / _dirname(res.concept_set)
        res.save(d)
        res.to_html(d / "geometry.html", title=f"Activation geometry: {res.concept_set} on {model}")
        s = res.summary_dict()
        s["timings"] = {k: round(v, 1) for k, v in res.timings.items()}
        summary["sets"][res.concept_set] = s
        typer.echo(res.summary())  # the result's own rendering (was a second copy here)
        typer.echo("  time: " + ", ".join(f"{k} {v}" for k, v in res.timings.items()))
        typer.echo(f"  wrote {d}/manifest.json, table.csv, geometry.html")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    typer.echo(f"done in {total:.0f} s (model load {t_model:.0f} s); summary in {out}/summary.json")


def _dirname(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "concepts"
