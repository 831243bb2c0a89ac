"""``medinterp lesion``: remove / ablate one block at a time and measure the damage per layer."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medinterp.cli._common import check_out_dir, load_concept_set, load_model, write_result
from medinterp.cli._common import ChatTemplateOpt, chat_template_option
from medinterp.cli._presets import PresetOpt, announce, check_preset, preset_params, scorable_prompts
from medinterp.cli.app import app
from medinterp.errors import MedinterpError


@app.command("lesion")
def lesion_cmd(
    concepts: str = typer.Option(..., "--concepts", "-c", help="Concept set name (e.g. drugs) or path to a concept file."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (result manifest, per-layer CSV, HTML figure)."),
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help="Model spec (see `medinterp models`)."),
    modes: Optional[str] = typer.Option(
        None, "--modes", "--mode", help="Comma-separated lesion modes: skip, attn_zero, attn_mean, mlp_zero, mlp_mean, "
                                        "block_mean (the presets: skip)."),
    max_prompts: Optional[int] = typer.Option(None, "--max-prompts", "-n",
                                              help="Use at most this many prompts (seeded subset); 0 = all."),
    mean_over: str = typer.Option("position", "--mean-over", help="Mean ablation: position, overall or last."),
    continuations: Optional[int] = typer.Option(None, "--continuations",
                                                help="Prompts that get greedy continuations (0 = none; presets: 0)."),
    max_new_tokens: int = typer.Option(20, "--max-new-tokens", help="Length of each greedy continuation."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    n_boot: Optional[int] = typer.Option(None, "--n-boot", help="Bootstrap replicates for the CIs."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    chat_template: ChatTemplateOpt = False,
    preset: PresetOpt = "quick",
) -> None:
    """KL(intact || lesioned) of the next token, drop in log p(answer), top-1 agreement and greedy-continuation
    divergence when each block is skipped (identity) or its attention / MLP output is zeroed or mean-ablated.

    Writes OUT/manifest.json, OUT/arrays.safetensors, OUT/table.csv (one row per mode and layer, with
    bootstrap CIs) and OUT/lesion.html.
    """
    chat_template_option(chat_template)  # the model option, also accepted after the command
    from medinterp.techniques.lesion import MEAN_OVER, MODES, lesion

    check_preset(preset)
    mode_list = None if modes is None else [m.strip() for m in modes.split(",") if m.strip()]
    bad = [m for m in mode_list or [] if m not in MODES]
    if bad or mode_list == []:
        raise MedinterpError(f"--modes {modes!r}: expected a comma-separated subset of {', '.join(MODES)}")
    if mean_over not in MEAN_OVER:
        raise MedinterpError(f"--mean-over {mean_over!r}: expected one of {', '.join(MEAN_OVER)}")
    if (max_prompts or 0) < 0 or (continuations or 0) < 0 or max_new_tokens < 1 or (batch_size or 1) < 1 \
            or (n_boot or 1) < 1:
        raise MedinterpError("--max-prompts/--continuations must be >= 0; --max-new-tokens, --batch-size, --n-boot >= 1")
    check_out_dir(out)
    concept_set = load_concept_set(concepts)
    kw = preset_params("lesion", preset, dict(modes=mode_list, max_prompts=max_prompts, n_continuations=continuations,
                                              batch_size=batch_size, n_boot=n_boot, seed=seed, mean_over=mean_over,
                                              max_new_tokens=max_new_tokens))
    kw["max_prompts"] = kw.get("max_prompts") or None  # 0: all
    used = list(kw.get("modes") or MODES)
    kw["continuation_modes"] = [x for x in ("skip",) if x in used] or used[:1]
    total = scorable_prompts(concept_set)
    n = total if kw["max_prompts"] is None else min(total, int(kw["max_prompts"]))
    announce(f"lesion on {concept_set.name}", n, total, "prompts", preset=preset, rate="lesion", factor=len(used))
    m = load_model(model, device=device)
    res = lesion(m, concept_set, progress=progress, **kw)
    write_result(res, out, "lesion.html", f"Layer lesioning: {res.concept_set} on {model}")
