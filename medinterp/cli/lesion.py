"""``medinterp lesion``: remove / ablate one block at a time and measure the damage per layer."""

from __future__ import annotations

from pathlib import Path

import typer

from medinterp.cli._common import check_out_dir, load_concept_set, load_model, write_result
from medinterp.cli.app import app
from medinterp.errors import MedinterpError


@app.command("lesion")
def lesion_cmd(
    concepts: str = typer.Option(..., "--concepts", "-c", help="Concept set name (e.g. drugs) or path to a concept file."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (result manifest, per-layer CSV, HTML figure)."),
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help="Model spec (see `medinterp models`)."),
    modes: str = typer.Option("skip,attn_zero,attn_mean,mlp_zero,mlp_mean", "--modes", "--mode",
                              help="Comma-separated lesion modes: skip, attn_zero, attn_mean, mlp_zero, mlp_mean, "
                                   "block_mean (the map's full preset)."),
    max_prompts: int = typer.Option(64, "--max-prompts", "-n", help="Use at most this many prompts (seeded subset); 0 = all."),
    mean_over: str = typer.Option("position", "--mean-over", help="Mean ablation: position, overall or last."),
    continuations: int = typer.Option(8, "--continuations", help="Prompts that get greedy continuations (0 = none)."),
    max_new_tokens: int = typer.Option(20, "--max-new-tokens", help="Length of each greedy continuation."),
    batch_size: int = typer.Option(16, "--batch-size"),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates for the CIs."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """KL(intact || lesioned) of the next token, drop in log p(answer), top-1 agreement and greedy-continuation
    divergence when each block is skipped (identity) or its attention / MLP output is zeroed or mean-ablated.

    Writes OUT/manifest.json, OUT/arrays.safetensors, OUT/table.csv (one row per mode and layer, with
    bootstrap CIs) and OUT/lesion.html.
    """
    from medinterp.techniques.lesion import MEAN_OVER, MODES, lesion

    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    bad = [m for m in mode_list if m not in MODES]
    if bad or not mode_list:
        raise MedinterpError(f"--modes {modes!r}: expected a comma-separated subset of {', '.join(MODES)}")
    if mean_over not in MEAN_OVER:
        raise MedinterpError(f"--mean-over {mean_over!r}: expected one of {', '.join(MEAN_OVER)}")
    if max_prompts < 0 or continuations < 0 or max_new_tokens < 1 or batch_size < 1 or n_boot < 1:
        raise MedinterpError("--max-prompts/--continuations must be >= 0; --max-new-tokens, --batch-size, --n-boot >= 1")
    check_out_dir(out)
    concept_set = load_concept_set(concepts)
    m = load_model(model, device=device)
    res = lesion(
        m,
        concept_set,
        modes=mode_list,
        max_prompts=max_prompts or None,
        mean_over=mean_over,
        n_continuations=continuations,
        max_new_tokens=max_new_tokens,
        continuation_modes=[x for x in ("skip",) if x in mode_list] or mode_list[:1],
        batch_size=batch_size,
        n_boot=n_boot,
        seed=seed,
        progress=progress,
    )
    write_result(res, out, "lesion.html", f"Layer lesioning: {res.concept_set} on {model}")
