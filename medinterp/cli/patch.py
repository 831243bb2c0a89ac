"""``medinterp patch``: exact (or attribution) activation patching of clean/corrupted prompt pairs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer

from medinterp.cli._common import check_out_dir, int_list, load_model
from medinterp.cli._common import ChatTemplateOpt, chat_template_option
from medinterp.cli._presets import PresetOpt, announce, check_preset
from medinterp.cli.app import app
from medinterp.errors import MedinterpError


@app.command("patch")
def patch_cmd(
    pairs: str = typer.Option(..., "--pairs", "-p", help="Pair set: a shipped name or a file (.csv with or without the '#' YAML header, .yaml, .jsonl) with clean, corrupted, clean_answer, corrupted_answer; the same reader and pair rule as `medinterp concepts check`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help="Model spec (see `medinterp models`)."),
    site: str = typer.Option("resid_pre", "--site", "-s", help="resid_pre, resid_mid, resid_post, attn_out, mlp_out, z, q, k, v or pattern."),
    positions: str = typer.Option("last", "--positions", help="all (each position), last, span, all_at_once, or comma-separated indices."),
    metric: str = typer.Option("P", "--metric", help="P (normalised logit difference), logit_diff or logprob."),
    method: str = typer.Option("exact", "--method", help="exact or attribution (gradient approximation)."),
    layers: str = typer.Option(None, "--layers", help="Comma-separated layers (default all)."),
    heads: str = typer.Option(None, "--heads", help="Comma-separated heads, only for the head sites z, q, k, v, pattern (default all)."),
    min_denominator: float = typer.Option(1e-2, "--min-denominator", help="Pairs with |LD_clean - LD_corrupted| below this are excluded from means."),
    drop_bad: bool = typer.Option(False, "--drop-bad/--strict", help="Drop invalid pairs (recorded in the manifest) instead of stopping."),
    budget_mb: float = typer.Option(1024.0, "--budget-mb", help="Memory budget of one batch of patched runs."),
    device: str = typer.Option("cpu", "--device"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    chat_template: ChatTemplateOpt = False,
    max_pairs: Optional[int] = typer.Option(
        None, "--max-pairs", "-n", help="Keep at most this many rows, spread evenly over the file (0 = all)."),
    preset: PresetOpt = "quick",
) -> None:
    """Patch clean activations into corrupted runs, cell by cell (layer x position x head).

    Writes OUT/manifest.json (provenance, axes, metric, kept/dropped/excluded pairs),
    OUT/arrays.safetensors (every array), OUT/values.npy (axes: pair, layer, position, and head for head sites),
    OUT/mean.npy (layer, position, head) and OUT/heatmap.html. An interrupted exact sweep resumes
    from OUT/_checkpoint when rerun with the same arguments.
    """
    chat_template_option(chat_template)  # the model option, also accepted after the command
    import numpy as np

    import medinterp.viz  # noqa: F401  (registers the figure renderers)
    from medinterp.techniques.patching import attribution_patch, pair_set, patch, validate_patch_params

    # everything that does not need the model is checked before it loads
    check_out_dir(out)
    pos = positions if positions in ("all", "last", "span", "all_at_once") else int_list(positions, "positions")
    layer_list, head_list = int_list(layers, "layers"), int_list(heads, "heads")
    on_bad = "drop" if drop_bad else "raise"
    validate_patch_params(site, pos, metric, method=method, layers=layer_list, heads=head_list,
                          min_denominator=min_denominator, on_bad=on_bad, batch_budget_mb=budget_mb)
    check_preset(preset)
    if max_pairs is not None and max_pairs < 0:
        raise MedinterpError(f"--max-pairs {max_pairs}: expected a number >= 0 (0 = all)")
    from medinterp.techniques import REGISTRY
    from medinterp.concepts.pairs import contradictions
    from medinterp.techniques.patching import spread_pairs

    if max_pairs is None:  # quick: the quick map's pair count; full and none: every pair
        max_pairs = REGISTRY["patching"].presets["quick"].get("max_pairs") if preset == "quick" else None
    pair_data = pair_set(pairs)
    bad = contradictions(pair_data) if on_bad == "raise" else []
    if bad:  # found on the text: no need to load the model first
        raise MedinterpError(f"{pairs}: {len(bad)} group(s) of pairs with contradictory answers (patching would average "
                             f"opposite targets): {'; '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}; fix the file or pass "
                             "--drop-bad to drop them")
    total = len(pair_data)
    pair_data = spread_pairs(pair_data, max_pairs or None)
    per_pair = _positions_per_pair(pair_data, pos)
    announce(f"{method} patching of {site} on {pair_data.name}", len(pair_data), total, "pairs", preset=preset,
             rate="patch", factor=per_pair)
    m = load_model(model, device=device)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "_checkpoint"
    kw = dict(site=site, positions=pos, layers=layer_list, heads=head_list, min_denominator=min_denominator,
              on_bad=on_bad, batch_budget_mb=budget_mb, progress=progress)
    if method == "exact":
        res = patch(m, pair_data, metric=metric, checkpoint_dir=ckpt, **kw)
    else:
        res = attribution_patch(m, pair_data, **kw)
    res.save(out)
    squeeze = res.values.shape[-1] == 1
    np.save(out / "values.npy", res.values[..., 0] if squeeze else res.values)
    np.save(out / "mean.npy", np.asarray(res.mean)[..., 0] if squeeze else np.asarray(res.mean))
    res.to_html(out / "heatmap.html", title=f"{method} patching of {res.site} on {model}")
    if ckpt.exists():
        shutil.rmtree(ckpt)
    typer.echo(res.summary())
    for d in res.dropped:
        typer.echo(f"  dropped row {d['row']}: {d['reason']}")
    axes = "[pair, layer, position]" if squeeze else "[pair, layer, position, head]"
    typer.echo(f"wrote {out}/manifest.json, arrays.safetensors, values.npy {axes}, mean.npy, heatmap.html")


def _positions_per_pair(pair_data, pos) -> int:
    """Patched positions per pair (a rough count before tokenizing: words for ``all``)."""
    if isinstance(pos, list):
        return max(len(pos), 1)
    if pos == "all" and len(pair_data):
        return max(1, round(sum(len(p.clean.split()) for p in pair_data.pairs) / len(pair_data) * 1.3))
    return 1
