"""``medinterp validate``: causal checks of one band of layers for one family, against random layer sets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medinterp.cli._common import DEFAULT_MODEL, DeviceOpt, ModelOpt, NBootOpt, OutDirOpt, ProgressOpt, SeedOpt
from medinterp.cli._common import ChatTemplateOpt, chat_template_option
from medinterp.cli._common import check_out_dir, load_model, write_result
from medinterp.cli.app import app
from medinterp.errors import MedinterpError


def parse_band(text: str) -> tuple[int, int]:
    """``"A-B"`` → ``(A, B)``, checked before the model loads (``A <= B``, both >= 0); the model's block count is
    checked once it is loaded.

    Example:
        >>> parse_band("5-12")
        (5, 12)
    """
    from medinterp.techniques.validate import band_arg

    return band_arg(text, 10**9, option="--band")


@app.command("validate")
def validate_cmd(
    band: str = typer.Option(..., "--band", "-b", help="Blocks A-B (inclusive, 0-based), e.g. 5-12."),
    out: OutDirOpt = ...,
    family: Optional[str] = typer.Option(None, "--family", "-f",
                                         help="Shipped family (drugs, age, ...): its pairs and its control family's."),
    concepts: Optional[str] = typer.Option(None, "--concepts", "-c",
                                           help="A family file with pairs (clean, corrupted, clean_answer, corrupted_answer)."),
    pairs: Optional[str] = typer.Option(None, "--pairs", "-p", help="Pair-set name or file (no control family)."),
    control: Optional[str] = typer.Option(None, "--control", help="Pair-set name or file of a matched control family."),
    model: ModelOpt = DEFAULT_MODEL,
    n_random: int = typer.Option(30, "--n-random", help="Random sets of the band's width added to every contiguous band."),
    max_pairs: int = typer.Option(32, "--max-pairs", help="At most this many known pairs (seeded subset); 0 = all."),
    parts: str = typer.Option("necessity,sufficiency", "--parts",
                              help="Comma-separated parts: necessity (with skip and selectivity), sufficiency, "
                                   "steering, erasure (the last two opt-in)."),
    n_directions: int = typer.Option(20, "--n-directions",
                                     help="Random directions (steering) / random subspaces (erasure): their null."),
    n_boot: NBootOpt = 1000,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    progress: ProgressOpt = True,
    chat_template: ChatTemplateOpt = False,
) -> None:
    """Necessity (the band's blocks mean-ablated at once; skip beside it), selectivity (against the control
    family) and sufficiency (the band's block outputs restored at the item span), each against random layer sets
    of the same width, with a verdict per check (METHOD.md, "Causal validation of a band"). Opt-in with
    --parts: steering (the class direction added at the band, against random directions) and erasure (LEACE at
    the band, against random subspaces of equal rank).

    Writes OUT/manifest.json, OUT/arrays.safetensors, OUT/checks.csv and OUT/validate.html.
    """
    chat_template_option(chat_template)  # the model option, also accepted after the command
    from medinterp.concepts import CONCEPT_FAMILIES, PairSet, load_concepts

    given = [x for x in (family, concepts, pairs) if x]
    if len(given) != 1:
        raise MedinterpError("give exactly one of --family NAME, --concepts FILE or --pairs FILE")
    a, b = parse_band(band)
    from medinterp.techniques.validate import RUN_PARTS

    part_list = [x.strip() for x in parts.split(",") if x.strip()]
    unknown = [x for x in part_list if x not in RUN_PARTS]
    if unknown or not part_list:
        raise MedinterpError(f"--parts {parts!r}: expected a comma-separated subset of {','.join(RUN_PARTS)}")
    if n_directions < 1:
        raise MedinterpError(f"--n-directions {n_directions}: expected >= 1")
    if n_random < 0 or max_pairs < 0:
        raise MedinterpError(f"--n-random {n_random} / --max-pairs {max_pairs}: expected >= 0")
    if n_boot < 1:
        raise MedinterpError(f"--n-boot {n_boot}: expected a positive number")
    if family is not None and family not in CONCEPT_FAMILIES:
        raise MedinterpError(f"--family {family!r}: not a shipped family; known: {', '.join(CONCEPT_FAMILIES)} "
                             "(a file of your own: --pairs FILE)")
    target = family
    for spec, opt in ((concepts, "--concepts"), (pairs, "--pairs"), (control, "--control")):
        if spec:
            s = load_concepts(spec)
            if not isinstance(s, PairSet):
                raise MedinterpError(f"{opt} {spec!r}: a concept set without pairs; the answer metric needs pairs "
                                     "(columns clean, corrupted, clean_answer, corrupted_answer)")
            if opt == "--control":
                control = s
            else:
                target = s
    check_out_dir(out)
    m = load_model(model, device=device)
    from medinterp.techniques.validate import band_arg, validate_band

    band_arg((a, b), int(m.cfg.n_layers), option="--band")
    res = validate_band(m, target, (a, b), control=control, n_random=n_random, max_pairs=max_pairs or None,
                        n_boot=n_boot, seed=seed, parts=tuple(part_list), n_directions=n_directions,
                        progress=progress)
    import pandas as pd

    Path(out).mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"check": k, **{f: v for f, v in c.items() if f != "ci"}, "ci_low": c["ci"][0], "ci_high": c["ci"][1]}
                  for k, c in res.checks.items()]).to_csv(Path(out) / "checks.csv", index=False)
    write_result(res, out, "validate.html", f"Causal validation of band {a}-{b}: {res.family} on {model}")
    typer.echo(f"timings (s): {', '.join(f'{k} {v:.1f}' for k, v in res.timings.items())}")
