"""The Typer application every CLI command module registers on."""

import typer

app = typer.Typer(
    name="medinterp",
    help="Knowledge maps of medical concepts inside LLMs (TransformerLens HookedTransformers).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
