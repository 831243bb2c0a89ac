"""``medinterp models`` and ``medinterp activations``."""

from __future__ import annotations

from pathlib import Path

import typer

from medinterp.cli._common import load_model
from medinterp.cli.app import app
from medinterp.errors import MedinterpError


@app.command("models")
def models_command() -> None:
    """List the models that load offline, and the other specs load_model accepts."""
    from rich.console import Console
    from rich.table import Table

    from medinterp.models import cache_dir, list_models

    table = Table(title="Built-in offline models")
    for col in ("name", "installed", "description", "install"):
        table.add_column(col)
    for m in list_models():
        table.add_row(m["name"], "yes" if m["installed"] else "no", m["description"], m["install"])
    console = Console()
    console.print(table)
    from medinterp.models import SEED_MODELS, seed_backends

    seeds = Table(title="The paper's seed models (hub; `medinterp plan --model NAME --gpus 4x80GB` sizes them)")
    for col in ("name", "hub name", "backend (auto)", "note"):
        seeds.add_column(col)
    backends = seed_backends()
    for m in SEED_MODELS.values():
        seeds.add_row(m.name, m.hf_name, backends[m.name], m.note)
    console.print(seeds)
    console.print(
        "Also accepted by --model: a path to a .gguf file, a local Hugging Face model folder, "
        "or a TransformerLens model name (needs the hub); append ':random' for the random-init twin.\n"
        "Backends: hooked = HookedTransformer (start_at_layer prefix reuse), bridge = TransformerBridge "
        "(device_map sharding, token-tensor input, hook path instead of start_at_layer).\n"
        f"Converted models are cached in {cache_dir()} (override with MEDINTERP_CACHE).",
        highlight=False,
    )


def read_prompts_file(path: Path) -> list[str]:
    """One prompt per line (.txt), a 'prompt'/'text' column (.csv), or a JSON list / JSONL of strings."""
    import csv
    import json

    if not path.is_file():
        raise MedinterpError(f"{path}: no such prompts file")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        col = next((c for c in ("prompt", "text") if rows and c in rows[0]), None)
        if col is None:
            raise MedinterpError(f"{path}: expected a column named 'prompt' or 'text' in the header line")
        prompts = [r[col] for r in rows]
        for i, p in enumerate(prompts):
            if not (p or "").strip():
                raise MedinterpError(f"{path}, line {i + 2}: empty prompt")
    elif suffix in (".json", ".jsonl"):
        try:
            if suffix == ".json":
                prompts = json.loads(text)
            else:
                prompts = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise MedinterpError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})") from None
        prompts = [p if isinstance(p, str) else (p or {}).get("prompt") or (p or {}).get("text") for p in prompts]
        if not all(isinstance(p, str) for p in prompts):
            raise MedinterpError(f"{path}: expected strings or objects with a 'prompt' field")
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise MedinterpError(f"{path}: no prompts in the file")
    return prompts


@app.command("activations")
def activations_command(
    prompts: Path = typer.Option(..., "--prompts", help="Prompts file: .txt (one per line), .csv (prompt column), .json/.jsonl."),
    out: Path = typer.Option(..., "--out", help="Output folder (manifest.json + arrays.safetensors); resumable."),
    model: str = typer.Option("gemma-3-270m", "--model", help="Model spec (see `medinterp models`)."),
    sites: str = typer.Option("resid_post", help="Comma-separated sites: resid_pre,resid_mid,resid_post,attn_out,mlp_out or hook names."),
    positions: str = typer.Option("last", help="'last' (plain prompts have no concept span)."),
    include_embed: bool = typer.Option(True, help="Also keep the embedding output as layer -1."),
    batch_size: int = typer.Option(32, help="Prompts per forward pass."),
) -> None:
    """Collect residual-stream activations of a prompts file and save them (no pickle)."""
    import medinterp as mi

    if batch_size < 1:
        raise MedinterpError(f"--batch-size {batch_size}: expected a positive number")
    if positions != "last":
        raise MedinterpError(f"--positions {positions!r}: plain prompts have no concept span; expected 'last'")
    texts = read_prompts_file(prompts)
    m = load_model(model)
    acts = mi.collect_activations(
        m,
        texts,
        sites=tuple(s.strip() for s in sites.split(",") if s.strip()),
        positions=positions,
        include_embed=include_embed,
        batch_size=batch_size,
        out_dir=out,
    )
    typer.echo(f"saved {acts.values.shape[0]} hooks x {acts.values.shape[1]} prompts x {acts.values.shape[2]} dims to {out}")
