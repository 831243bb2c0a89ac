"""``medinterp geometry``: per-layer activation geometry (UMAP, silhouette, age and progression geometry)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import typer

from medinterp.cli._common import check_out_dir, load_concept_set, load_model
from medinterp.cli._common import ChatTemplateOpt, chat_template_option
from medinterp.cli._presets import PresetOpt, announce, check_preset, preset_params
from medinterp.cli.app import app
from medinterp.errors import MedinterpError


@app.command("geometry")
def geometry_cmd(
    concepts: Optional[List[str]] = typer.Option(
        None, "--concepts", "-c",
        help="Concept set name or file; repeat for several. Default: every shipped set that feeds geometry."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory; one sub-directory per concept set."),
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help="Model spec (see `medinterp models`)."),
    positions: Optional[str] = typer.Option(None, "--positions", help="span_mean (default) | span_last | last"),
    embed: Optional[bool] = typer.Option(None, "--embed/--no-embed", help="Also analyse the embedding output (layer -1)."),
    paper: Optional[bool] = typer.Option(None, "--paper/--no-paper",
                                         help="Also the paper's UMAP metrics (slow; the presets leave them out)."),
    n_neighbors: Optional[int] = typer.Option(None, "--n-neighbors", help="UMAP n_neighbors (--paper)."),
    min_dist: Optional[float] = typer.Option(None, "--min-dist", help="UMAP min_dist (--paper)."),
    metric: Optional[str] = typer.Option(None, "--metric", help="UMAP metric (euclidean, cosine, ...; --paper)."),
    pca: Optional[int] = typer.Option(None, "--pca", help="PCA components before UMAP (0 = no PCA; --paper)."),
    n_epochs: Optional[int] = typer.Option(None, "--n-epochs", help="UMAP epochs (0 = umap-learn's default; --paper)."),
    n_perm: Optional[int] = typer.Option(None, "--n-perm", help="Label permutations for the silhouette baseline."),
    n_boot: Optional[int] = typer.Option(None, "--n-boot", help="Bootstrap replicates for the CIs."),
    max_prompts: Optional[int] = typer.Option(
        None, "--max-prompts", "-n", help="Prompt budget per set: the first t templates with items x t <= N "
                                          "(0 = all templates; presets: quick 100, full 1000)."),
    seed: int = typer.Option(0, "--seed"),
    n_jobs: int = typer.Option(1, "--n-jobs", help="UMAP worker processes (1 = in this process)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    chat_template: ChatTemplateOpt = False,
    preset: PresetOpt = "quick",
) -> None:
    """Per-layer activation geometry (METHOD.md §1): item-grouped linear probes on template-centred item
    reads beside a lexical baseline, silhouette, collapse, the 17->18 age step and progression order, with
    item-level CIs; ``--paper`` adds the paper's UMAP metrics (slow). ``--preset quick`` (default) reads one
    template per item, as the quick map does.

    Writes, per concept set, OUT/<set>/manifest.json (provenance, parameters, labels),
    OUT/<set>/table.csv (tidy per-layer metrics with CIs), age_steps.csv / progression.csv where they
    apply, arrays.safetensors (UMAP embeddings) and OUT/<set>/geometry.html; plus OUT/summary.json.
    """
    chat_template_option(chat_template)  # the model option, also accepted after the command
    from medinterp.techniques.geometry import default_concept_sets, geometry_many

    check_preset(preset)
    for name, v in (("--n-neighbors", n_neighbors), ("--n-perm", None if n_perm is None else n_perm + 1),
                    ("--n-boot", None if n_boot is None else n_boot + 1), ("--n-jobs", n_jobs),
                    ("--batch-size", batch_size)):
        if v is not None and (v < 1 or (name == "--n-neighbors" and v < 2)):
            raise MedinterpError(f"{name}: expected a positive number")
    from medinterp.activations import POSITION_MODES

    if positions is not None and positions not in POSITION_MODES:
        raise MedinterpError(f"--positions {positions!r}: expected one of {', '.join(POSITION_MODES)}")
    if metric is not None:
        try:  # the exact k-NN graph UMAP starts from uses sklearn's distances: the metric must be one of them
            from sklearn.metrics import pairwise_distances

            pairwise_distances([[0.0, 1.0], [1.0, 0.0]], metric=metric)
        except (ValueError, TypeError):
            raise MedinterpError(f"--metric {metric!r}: not a distance sklearn / UMAP know (e.g. euclidean, cosine, "
                                 "manhattan, correlation)") from None
    if (min_dist or 0) < 0 or (pca or 0) < 0 or (n_epochs or 0) < 0 or (max_prompts or 0) < 0:
        raise MedinterpError(f"--min-dist {min_dist}, --pca {pca}, --n-epochs {n_epochs}, --max-prompts "
                             f"{max_prompts}: expected numbers >= 0")
    check_out_dir(out)
    names = list(concepts) if concepts else default_concept_sets()
    sets = [load_concept_set(c) for c in names]
    kw = preset_params("geometry", preset, dict(
        positions=positions, include_embed=embed, paper=paper, n_neighbors=n_neighbors, min_dist=min_dist,
        metric=metric, pca=pca, n_epochs=n_epochs, n_perm=n_perm, n_boot=n_boot, max_prompts=max_prompts,
        seed=seed, n_jobs=n_jobs, batch_size=batch_size))
    for k in ("pca", "n_epochs", "max_prompts"):  # 0: off / the library default / all
        if k in kw and not kw[k]:
            kw[k] = None
    counts = [_n_prompts(s, kw.get("max_prompts"), kw.get("min_templates", 4)) for s in sets]
    announce(f"geometry on {', '.join(s.name for s in sets)}", sum(counts), sum(len(s.prompts()) for s in sets),
             "prompts", preset=preset, rate="geometry")
    t0 = time.perf_counter()
    m = load_model(model, device=device)
    t_model = time.perf_counter() - t0
    results = geometry_many(m, sets, progress=progress, **kw)
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
        typer.echo("  time: " + ", ".join(f"{k} {v:.1f}" for k, v in res.timings.items()))
        typer.echo(f"  wrote {d}/manifest.json, table.csv, geometry.html")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    typer.echo(f"done in {total:.0f} s (model load {t_model:.0f} s); summary in {out}/summary.json")


def _n_prompts(cset, max_prompts: int | None, min_templates: int) -> int:
    """The prompts geometry reads from ``cset`` under its template budget (as ``geometry`` picks them)."""
    n_t, n_i = len(cset.templates), len(cset)
    if not max_prompts:
        return len(cset.prompts())
    t = max(min(min_templates, n_t), min(n_t, max_prompts // max(n_i, 1)))
    return len(cset.prompts(list(range(t)) if t < n_t else None))


def _dirname(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "concepts"
