"""``medinterp saliency``: per-layer weight-gradient saliency of a concept set."""

from __future__ import annotations

from pathlib import Path

import typer

from medinterp.cli._common import check_out_dir, load_concept_set, load_model, positive, write_result
from medinterp.cli.app import app
from medinterp.errors import MedinterpError


@app.command("saliency")
def saliency_cmd(
    concepts: str = typer.Option(..., "--concepts", "-c", help="Concept set name (e.g. drugs) or path to a concept file."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (result manifest, per-layer CSV, HTML figure)."),
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help="Model spec (see `medinterp models`)."),
    max_prompts: int = typer.Option(None, "--max-prompts", "-n", help="Use at most this many prompts (seeded subset)."),
    params: str = typer.Option("weights", "--params", help="'weights' (weight matrices) or 'all' (also biases, norms)."),
    embed: bool = typer.Option(True, "--embed/--no-embed", help="Also measure the embedding (dense d_vocab x d_model gradient)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates for the CIs."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Gradient of -log p(answer | prompt) w.r.t. every weight; mean |grad| per block (attention, MLP,
    combined), variants |grad*w| and ||grad||/||w||, bootstrap CIs over prompts.

    Writes OUT/manifest.json, OUT/arrays.safetensors, OUT/table.csv (per-layer table) and OUT/saliency.html.
    """
    from medinterp.techniques.saliency import saliency

    if params not in ("weights", "all"):
        raise MedinterpError(f"--params {params!r}: expected 'weights' or 'all'")
    positive(n_boot=n_boot)
    if max_prompts is not None:
        positive(max_prompts=max_prompts)
    check_out_dir(out)
    concept_set = load_concept_set(concepts)
    m = load_model(model, device=device)
    res = saliency(
        m,
        concept_set,
        params=params,
        include_embed=embed,
        max_prompts=max_prompts,
        seed=seed,
        n_boot=n_boot,
        progress=progress,
    )
    write_result(res, out, "saliency.html", f"Weight saliency: {res.concept_set} on {model}")
