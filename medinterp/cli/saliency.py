"""``medinterp saliency``: per-layer weight-gradient saliency of a concept set."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medinterp.cli._common import check_out_dir, load_concept_set, load_model, positive, write_result
from medinterp.cli._common import ChatTemplateOpt, chat_template_option
from medinterp.cli._presets import PresetOpt, announce, check_preset, preset_params, scorable_prompts
from medinterp.cli.app import app
from medinterp.errors import MedinterpError


@app.command("saliency")
def saliency_cmd(
    concepts: str = typer.Option(..., "--concepts", "-c", help="Concept set name (e.g. drugs) or path to a concept file."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (result manifest, per-layer CSV, HTML figure)."),
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help="Model spec (see `medinterp models`)."),
    max_prompts: Optional[int] = typer.Option(None, "--max-prompts", "-n",
                                              help="Use at most this many prompts (seeded subset); 0 = all."),
    params: str = typer.Option("weights", "--params", help="'weights' (weight matrices) or 'all' (also biases, norms)."),
    embed: Optional[bool] = typer.Option(
        None, "--embed/--no-embed", help="Also measure the embedding and unembedding (dense d_vocab x d_model "
                                         "gradients; the presets leave them out: block shares only)."),
    n_boot: Optional[int] = typer.Option(None, "--n-boot", help="Bootstrap replicates for the CIs."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    chat_template: ChatTemplateOpt = False,
    preset: PresetOpt = "quick",
) -> None:
    """Gradient of -log p(answer | prompt) w.r.t. every weight, per block (attention, MLP, combined): the
    curve is the block's share of sum |grad*w| (also kept: mean |grad| and ||grad||/||w||), bootstrap CIs over
    prompts.

    Writes OUT/manifest.json, OUT/arrays.safetensors, OUT/table.csv (per-layer table) and OUT/saliency.html.
    """
    chat_template_option(chat_template)  # the model option, also accepted after the command
    from medinterp.techniques.saliency import saliency

    check_preset(preset)
    if params not in ("weights", "all"):
        raise MedinterpError(f"--params {params!r}: expected 'weights' or 'all'")
    if n_boot is not None:
        positive(n_boot=n_boot)
    if max_prompts is not None and max_prompts < 0:
        raise MedinterpError(f"--max-prompts {max_prompts}: expected a number >= 0 (0 = all)")
    check_out_dir(out)
    concept_set = load_concept_set(concepts)
    kw = preset_params("saliency", preset, dict(
        params=params, include_embed=embed, include_unembed=embed, n_boot=n_boot, seed=seed, max_prompts=max_prompts))
    kw["max_prompts"] = kw.get("max_prompts") or None  # 0: all
    total = scorable_prompts(concept_set)
    n = total if kw.get("max_prompts") is None else min(total, int(kw["max_prompts"]))
    blocks_only = kw.get("include_embed") is False and kw.get("include_unembed") is False
    announce(f"saliency on {concept_set.name}", n, total, "prompts", preset=preset,
             rate="saliency_blocks" if blocks_only else "saliency")
    m = load_model(model, device=device)
    res = saliency(m, concept_set, progress=progress, **kw)
    write_result(res, out, "saliency.html", f"Weight saliency: {res.concept_set} on {model}")
