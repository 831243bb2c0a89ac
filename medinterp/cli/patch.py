"""``medinterp patch``: exact (or attribution) activation patching of clean/corrupted prompt pairs."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from medinterp.cli._common import check_out_dir, int_list, load_model
from medinterp.cli.app import app
from medinterp.errors import MedinterpError


@app.command("patch")
def patch_cmd(
    pairs: str = typer.Option(..., "--pairs", "-p", help="Pairs file (CSV/JSONL with clean, corrupted, clean_answer, corrupted_answer) or a shipped pair-set name."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help="Model spec (see `medinterp models`)."),
    site: str = typer.Option("resid_pre", "--site", "-s", help="resid_pre, resid_mid, resid_post, attn_out, mlp_out, z, q, k, v or pattern."),
    positions: str = typer.Option("last", "--positions", help="all (each position), last, span, all_at_once, or comma-separated indices."),
    metric: str = typer.Option("P", "--metric", help="P (normalised logit difference), logit_diff or logprob."),
    method: str = typer.Option("exact", "--method", help="exact or attribution (gradient approximation)."),
    layers: str = typer.Option(None, "--layers", help="Comma-separated layers (default all)."),
    heads: str = typer.Option(None, "--heads", help="Comma-separated heads for head sites (default all)."),
    min_denominator: float = typer.Option(1e-2, "--min-denominator", help="Pairs with |LD_clean - LD_corrupted| below this are excluded from means."),
    drop_bad: bool = typer.Option(False, "--drop-bad/--strict", help="Drop invalid pairs (recorded in the manifest) instead of stopping."),
    budget_mb: float = typer.Option(1024.0, "--budget-mb", help="Memory budget of one batch of patched runs."),
    device: str = typer.Option("cpu", "--device"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Patch clean activations into corrupted runs, cell by cell (layer x position x head).

    Writes OUT/manifest.json (provenance, axes, metric, kept/dropped/excluded pairs),
    OUT/arrays.safetensors (every array), OUT/values.npy (axes: pair, layer, position, and head for head sites),
    OUT/mean.npy (layer, position, head) and OUT/heatmap.html. An interrupted exact sweep resumes
    from OUT/_checkpoint when rerun with the same arguments.
    """
    import numpy as np

    from medinterp.techniques.patching import attribution_patch, patch

    if method not in ("exact", "attribution"):
        raise MedinterpError(f"--method {method!r}: expected 'exact' or 'attribution'")
    check_out_dir(out)
    pos = positions if positions in ("all", "last", "span", "all_at_once") else int_list(positions, "positions")
    layer_list, head_list = int_list(layers, "layers"), int_list(heads, "heads")
    m = load_model(model, device=device)
    on_bad = "drop" if drop_bad else "raise"
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "_checkpoint"
    if method == "exact":
        res = patch(m, pairs, site=site, positions=pos, metric=metric, layers=layer_list, heads=head_list,
                    min_denominator=min_denominator, on_bad=on_bad, batch_budget_mb=budget_mb,
                    checkpoint_dir=ckpt, progress=progress)
    else:
        if metric != "P":
            raise MedinterpError("--method attribution supports only --metric P")
        res = attribution_patch(m, pairs, site=site, positions=pos, layers=layer_list, heads=head_list,
                                min_denominator=min_denominator, on_bad=on_bad, progress=progress)
    res.save(out)
    squeeze = res.values.shape[-1] == 1
    np.save(out / "values.npy", res.values[..., 0] if squeeze else res.values)
    np.save(out / "mean.npy", np.asarray(res.mean)[..., 0] if squeeze else np.asarray(res.mean))
    res.to_html(out / "heatmap.html", title=f"{method} patching of {site} on {model}")
    if ckpt.exists():
        shutil.rmtree(ckpt)
    n_inc = int(np.sum(res.included))
    typer.echo(f"{len(res.pairs)} pairs kept ({n_inc} in the mean), {len(res.dropped)} dropped, {len(res.excluded)} excluded "
               "(near-zero denominator)")
    for d in res.dropped:
        typer.echo(f"  dropped row {d['row']}: {d['reason']}")
    curve = res.layer_curve()
    best = int(np.nanargmax(curve)) if np.isfinite(curve).any() else None
    if best is not None:
        typer.echo(f"layer curve ({res.metric} at the last position column): max {curve[best]:.3f} at layer {res.layers[best]}")
    axes = "[pair, layer, position]" if squeeze else "[pair, layer, position, head]"
    typer.echo(f"wrote {out}/manifest.json, arrays.safetensors, values.npy {axes}, mean.npy, heatmap.html")
