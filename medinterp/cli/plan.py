"""``medinterp plan``: memory per device and time of each technique for a model on a set of GPUs."""

from __future__ import annotations

import json
from typing import Optional

import typer

from medinterp.cli.app import app


@app.command("plan")
def plan_command(
    model: list[str] = typer.Option(["all"], "--model", help="Seed model (see `medinterp models`), a local HF config.json or folder, or 'all' (the seed models). Repeatable."),
    gpus: str = typer.Option("1x80GB", "--gpus", help="Devices as COUNTxMEMORY, e.g. 4x80GB."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="bfloat16, float16 or float32."),
    backend: Optional[str] = typer.Option(None, "--backend", help="hooked or bridge (default: what load_model would pick; bridge when sharded)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Prompts per forward pass."),
    seq_len: int = typer.Option(48, "--seq-len", help="Tokens per prompt."),
    families: int = typer.Option(6, "--families", help="Concept families in the map."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Estimate memory per device (weights, activations, gradients) and time from FLOPs; say what does not fit and what would."""
    from rich.console import Console
    from rich.table import Table

    from medinterp.models import SEED_MODELS
    from medinterp.models.plan import GiB, Workload, plan_spec

    specs = list(SEED_MODELS) if model == ["all"] else model
    work = Workload(seq_len=seq_len, batch_size=batch_size, n_families=families)
    plans = [plan_spec(s, gpus, dtype=dtype, backend=backend, work=work) for s in specs]
    if as_json:
        typer.echo(json.dumps([p.to_dict() for p in plans], indent=2))
        return
    console = Console(width=160)
    for p in plans:
        t = Table(title=f"{p.model} on {p.gpus}, {p.dtype}, backend {p.backend}: {p.params_total / 1e9:.1f}B params "
                        f"({p.params_active / 1e9:.1f}B active); host RAM to load ~{p.host_ram_to_load / GiB:.0f} GiB")
        for col in ("technique", "weights GiB", "activations GiB", "gradients GiB", "total GiB/device", "fits", "time", "what would make it fit"):
            t.add_column(col)
        for r in p.rows:
            mins = r.seconds / 60
            t.add_row(r.technique, f"{r.weights / GiB:.1f}", f"{r.activations / GiB:.2f}", f"{r.gradients / GiB:.2f}",
                      f"{r.total / GiB:.1f}", "yes" if r.fits else "NO", f"{mins:.1f} min" if mins >= 1 else f"{r.seconds:.0f} s",
                      r.advice)
        console.print(t)
        for note in p.notes:
            console.print(f"  note: {note}", highlight=False)
    console.print("Estimates from the config alone (memory ±30 %, time within ~2x; H100 peak, mfu 0.35). "
                  "Time is for all families.", highlight=False)
