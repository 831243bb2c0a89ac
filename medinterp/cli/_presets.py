"""The per-technique commands' ``--preset`` and the line they print before the model loads.

``--preset quick`` (default) and ``--preset full`` run a technique with the knowledge map's parameters
(:attr:`medinterp.techniques.base.Technique.presets`); options given on the command line still override
them; ``--preset none`` leaves the library function's own defaults (every prompt: that can take long).
Before loading the model each command says how many prompts it will run and roughly how long that
takes, from :data:`SECONDS_PER_PROMPT` (measured on Gemma 3 270M on 2 busy CPU cores; rough: other
models, hardware and machine load change it several-fold).

Example:
    >>> preset_params("saliency", "none", {"seed": 1})
    {'seed': 1}
    >>> preset_params("saliency", "quick", {"max_prompts": 9})["max_prompts"]
    9
    >>> rough_time(125.0)
    '~2 min'
"""

from __future__ import annotations

from typing import Annotated, Any, Mapping

import typer

from medinterp.errors import MedinterpError

PRESETS = ("quick", "full", "none")

PresetOpt = Annotated[str, typer.Option(
    "--preset", help="quick (default: the quick map's parameters, a few prompts, 1-3 min on Gemma 3 270M on a CPU), "
                     "full (the full map's parameters) or none (the function's defaults: every prompt, can take "
                     "long). Options given explicitly override the preset.")]

#: Rough wall-clock seconds per prompt (per prompt and lesion mode for ``lesion``, per pair and patched
#: position for ``patch``) on Gemma 3 270M, float32, and fixed seconds per run once the model is loaded; the
#: estimate printed before a run is ``fixed + n × per_prompt``. Measured with the commands themselves on
#: drugs (``--preset quick``; 0.4.0) on 2 CPU cores shared with other work (load average 6-11): a quiet
#: machine is about 2-4× faster (the issue's quiet figure for one-prompt-at-a-time saliency: 1.1 s).
#: saliency, 4 prompts, block shares only: 12.7 s (3.2 s a prompt); lesion, 5 prompts, skip: 29 s (286 ms
#: per block per prompt, 18 blocks; ``--preset full -n 16``, one batch of 16: 21 s, 42 ms); geometry,
#: 152 prompts: reads 51 s, probes and bootstrap 21 s; patch ``--positions all``, 10 pairs: 1,674 patched
#: rows (pair x layer x position) in 659 s (0.39 s a row).
SECONDS_PER_PROMPT: dict[str, float] = {
    "saliency": 6.5,  # embedding and unembedding gradients included (--preset none -n 16: 105 s, 6.5 s a prompt)
    "saliency_blocks": 3.2,  # block shares only (the presets), batched backward
    "lesion": 2.5,  # per prompt and lesion mode (quick, 5 prompts: 5.1 s; full -n 16, one batch: 0.76 s)
    "geometry": 0.34,  # the reads (one forward per prompt); the probes are the fixed part
    "patch": 7.0,  # per pair and patched position, all 18 layers (head sites: × heads, not counted)
}
FIXED_SECONDS: dict[str, float] = {"saliency": 2.0, "saliency_blocks": 2.0, "lesion": 3.0, "geometry": 21.0,
                                   "patch": 3.0}


def check_preset(preset: str) -> str:
    """``preset`` if it is one of :data:`PRESETS`, else a clear error (before any work)."""
    if preset not in PRESETS:
        raise MedinterpError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    return preset


def preset_params(technique: str, preset: str, explicit: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of a run: the map's ``preset`` of ``technique`` updated with the options given
    explicitly (those that are not None); ``preset="none"``: the explicit options only."""
    from medinterp.techniques import REGISTRY

    given = {k: v for k, v in explicit.items() if v is not None}
    if check_preset(preset) == "none":
        return given
    return REGISTRY[technique].params(preset, given)


def scorable_prompts(concept_set: Any) -> int:
    """Prompts of ``concept_set`` with something after the item to score (those ending on their item are left
    out by saliency and lesion)."""
    return sum(1 for p in concept_set.prompts() if getattr(p, "answer", None) is not None
               or not getattr(p, "ends_on_item", False))


def rough_time(seconds: float) -> str:
    """``"~40 s"``, ``"~3 min"`` or ``"~1.5 h"``."""
    if seconds < 90:
        return f"~{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


def announce(what: str, n: int, total: int, unit: str, *, preset: str, rate: str, factor: int = 1) -> str:
    """Say (and return) how much a run will do and roughly how long it takes, before the model loads.

    Args:
        what: the command and its input, e.g. ``"saliency on drugs"``.
        n: prompts (pairs) it will run; ``total``: how many the input has.
        unit: ``"prompts"`` or ``"pairs"``.
        preset: the ``--preset`` in force.
        rate: the key of :data:`SECONDS_PER_PROMPT` used.
        factor: work items per prompt (lesion modes, patched cells per pair).
    """
    secs = FIXED_SECONDS[rate] + n * factor * SECONDS_PER_PROMPT[rate]
    per = f"{SECONDS_PER_PROMPT[rate]:g} s per {'prompt' if factor == 1 else 'unit'}" + (
        f" × {factor} units per {unit[:-1]}" if factor > 1 else "")
    text = (f"{what}: {n} of {total} {unit} (--preset {preset}); rough estimate {rough_time(secs)} after the "
            f"model loads ({per} + {FIXED_SECONDS[rate]:g} s, measured on Gemma 3 270M on 2 busy CPU cores; rough: "
            "a quiet machine is faster, other models and hardware differ)")
    typer.echo(text)
    return text
