"""``medinterp concepts list | show | check``: the concept library from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medinterp.cli.app import app
from medinterp.errors import MedinterpError

concepts_app = typer.Typer(help="Concept sets and patching pairs: list, show, check tokenization.",
                           no_args_is_help=True)
app.add_typer(concepts_app, name="concepts")


def _console():
    from rich.console import Console

    return Console(highlight=False)


@concepts_app.command("list")
def list_command() -> None:
    """List the shipped concept sets and pair sets with their sizes, labels and versions."""
    from rich.table import Table

    from medinterp.concepts import CONCEPT_FAMILIES, list_concepts

    table = Table(title="Shipped concept sets (medinterp concepts show NAME)")
    for col in ("name", "kind", "n", "labels / columns", "templates", "version"):
        table.add_column(col)
    for s in list_concepts():
        table.add_row(s["name"], s["kind"], str(s["n"]), ", ".join(map(str, s["labels"])),
                      str(s["templates"] or ""), s["version"])
    con = _console()
    con.print(table)
    con.print("Knowledge-map rows: " + "; ".join(
        f"{row}: concepts={f['concepts']}, pairs={f['pairs']}, labels={f['labels']}"
        for row, f in CONCEPT_FAMILIES.items()))


@concepts_app.command("show")
def show_command(
    name: str = typer.Argument(..., help="shipped set name (e.g. drugs) or path to a .yaml/.csv file"),
    rows: int = typer.Option(10, "--rows", "-n", help="how many rows to print"),
    label: Optional[str] = typer.Option(None, "--filter", help="LABEL=VALUE: show only matching items"),
) -> None:
    """Show one set: header, label counts, templates with an example prompt, and the first rows."""
    import pandas as pd

    from medinterp.concepts import PairSet, load_concepts

    s = load_concepts(name)
    if label:
        if "=" not in label:
            raise MedinterpError(f"--filter expects LABEL=VALUE, got {label!r}")
        k, v = label.split("=", 1)
        s = s.filter(**{k.strip(): v.strip()})
    con = _console()
    con.print(f"[bold]{s.name}[/bold] v{s.version} — {s.description}")
    if s.provenance:
        con.print(f"[dim]provenance: {s.provenance}[/dim]")
    if isinstance(s, PairSet):
        con.print(f"{len(s)} pairs; columns: clean, corrupted, clean_answer, corrupted_answer"
                  + (", " + ", ".join(s.columns) if s.columns else ""))
    else:
        con.print(f"{len(s)} items (item column: {s.item_key})")
        for lab in s.categorical_labels:
            counts = pd.Series([str(x) for x in s.label(lab)]).value_counts()
            con.print(f"  {lab} ({len(counts)} values): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        for lab in s.continuous_labels:
            vals = [float(x) for x in s.label(lab)]
            con.print(f"  {lab} (continuous): {min(vals):g} .. {max(vals):g}")
        ex = s.items[0]
        for i, t in enumerate(s.templates):
            text, _ = s.render(t, ex)
            ans = s.template_answers[i]
            con.print(f"  template {i}: {t!r} -> {text!r}" + (f" (answer {ex[ans]!r})" if ans else ""))
    with pd.option_context("display.max_colwidth", 70, "display.width", 200):
        con.print(s.to_dataframe().head(rows).to_string(index=False))


@concepts_app.command("check")
def check_command(
    model: Optional[str] = typer.Option("gemma-3-270m", "--model", "-m",
                                        help="model spec for medinterp.load_model (uses its tokenizer)"),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer",
                                             help="check with a local Hugging Face tokenizer folder instead "
                                                  "of loading a model (fast)"),
    pairs: Optional[list[str]] = typer.Option(None, "--pairs", "-p",
                                              help="pair set name or file (repeatable)"),
    sets: Optional[list[str]] = typer.Option(None, "--set", "-s",
                                             help="any concept or pair set name or file (repeatable); "
                                                  "default: every shipped set"),
    family: Optional[list[str]] = typer.Option(None, "--family", "-f",
                                               help="print the balance table of this family's pair set against "
                                                    "its control on the model (repeatable; 'all' for every "
                                                    "family); only those two pair sets are checked"),
    all_pairs: bool = typer.Option(False, "--all-pairs",
                                   help="balance table over every valid pair, not only the pairs the model knows"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="print every problem and dropped pair"),
    strict: bool = typer.Option(False, "--strict", help="exit with status 1 when any check fails (or, with "
                                                        "--family, any covariate is flagged)"),
) -> None:
    """Data checks: lexical baseline, answer leaks, template fit, duplicates, and pair tokenization.

    With --family: the balance table of the family's pair set against its control pair set on the
    model (per covariate the medicine mean, control mean and standardized mean difference, flagged when
    |SMD| > 0.25), after the data checks of those two sets.
    """
    from medinterp.concepts import CONCEPT_FAMILIES, SHIPPED, PairSet, load_concepts
    from medinterp.concepts.checks import check_sets

    fams = list(family or [])
    if "all" in fams:
        fams = list(CONCEPT_FAMILIES)
    bad = [f for f in fams if f not in CONCEPT_FAMILIES]
    if bad:
        raise MedinterpError(f"--family {bad[0]!r}: unknown; families are {', '.join(CONCEPT_FAMILIES)} (or all)")
    if fams and tokenizer is not None:
        raise MedinterpError("--family needs a model (its answer prior and logit differences), not --tokenizer")
    fam_sets = [n for f in fams for n in (CONCEPT_FAMILIES[f]["pairs"], CONCEPT_FAMILIES[f]["control_pairs"])]
    loaded = [load_concepts(n) for n in (list(pairs or []) + list(sets or []) + fam_sets
                                         or SHIPPED)]
    for n, s in zip(pairs or [], loaded):
        if not isinstance(s, PairSet):
            raise MedinterpError(f"{n!r} is a concept set, not a pair set; pair sets have the columns "
                                 "clean, corrupted, clean_answer, corrupted_answer (use --set for concept sets)")
    if tokenizer is not None:
        from transformers import AutoTokenizer

        if not tokenizer.is_dir():
            raise MedinterpError(f"--tokenizer {tokenizer}: no such folder")
        try:
            target = AutoTokenizer.from_pretrained(str(tokenizer))
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds for a folder that is no tokenizer
            said = " ".join(str(e).split())
            said = said if len(said) <= 160 else said[:157] + "..."
            raise MedinterpError(f"--tokenizer {tokenizer}: not a Hugging Face tokenizer folder (expected "
                                 f"tokenizer.json or tokenizer_config.json with its vocabulary; transformers said: "
                                 f"{type(e).__name__}: {said})") from None
        what = f"tokenizer {tokenizer.name}"
    else:
        from medinterp.cli._common import load_model

        target, what = load_model(model), f"model {model}"
    report = check_sets(loaded, [target])
    con = _console()
    con.print(f"Data checks with {what}:")
    con.print(report.render(verbose), markup=False)
    tables = []
    if fams:
        from medinterp.concepts.checks import pair_balance

        for f in fams:
            tables.append(pair_balance(target, f, known_only=not all_pairs))
            con.print(tables[-1].render(), markup=False)
    if strict and (not report.ok or not all(t.ok for t in tables)):
        raise typer.Exit(1)
