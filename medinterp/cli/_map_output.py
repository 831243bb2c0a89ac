"""What ``medinterp map`` writes and prints once its map is made (in one process, merged, or by Ray)."""

from __future__ import annotations

import time

import typer


def finish_map(km, a: dict, t0: float, t_load: float) -> None:
    """Save the map beside the report, write the report, print the cells (``a``: the command's arguments)."""
    from medinterp.maps import peak_rss_mb

    model, out, rule, work = a["model"], a["out"], a["rule"], a["work"]
    km.provenance.setdefault("timing_s", {})["model_load"] = round(t_load, 2)
    km.save(out.with_suffix(".map"))
    km.to_html(out, relative_depth=a["relative_depth"])
    typer.echo(f"\nKnowledge map of {model} ({km.n_layers} layers; "
               f"{'effect over control family and random twin' if rule == 'controls' else 'paper rules'}):")
    from medinterp.maps.cells import cell_table_text

    typer.echo(cell_table_text(km))  # one table (code and closest miss per cell), then one plain reason per cell
    total = time.perf_counter() - t0
    typer.echo(f"\nreport: {out}\nmap:    {out.with_suffix('.map')}\nwork:   {work}")
    typer.echo(f"time {total:.0f} s (model load {t_load:.0f} s); peak RSS {peak_rss_mb():.0f} MB")
