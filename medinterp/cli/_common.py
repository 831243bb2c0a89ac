"""What every CLI command shares: the common options, model and concept loading, out-dir checks, writing.

A command file is its own options plus one library call; everything else comes from here.

Example:
    >>> split_list(" a, b,,c ")
    ['a', 'b', 'c']
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from medinterp.cli.app import app
from medinterp.errors import MedinterpError

DEFAULT_MODEL = "gemma-3-270m"

# ---------------------------------------------------------------- shared options (typing.Annotated)
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model spec (see `medinterp models`) or path.")]
OutDirOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (subsets, bootstrap, UMAP).")]
QuickOpt = Annotated[bool, typer.Option("--quick", help="A small, fast run (a few minutes on 2 CPU cores).")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="torch device (cpu, cuda, mps).")]
NBootOpt = Annotated[int, typer.Option("--n-boot", help="Bootstrap replicates for the CIs.")]
ConceptsOpt = Annotated[str, typer.Option("--concepts", "-c",
                                          help="Concept set name (e.g. drugs) or path to a concept file.")]


def split_list(text: Optional[str]) -> Optional[list[str]]:
    """``"a,b"`` → ``["a", "b"]``; None or empty → None."""
    return None if not text else [x.strip() for x in text.split(",") if x.strip()] or None


def int_list(text: Optional[str], option: str) -> Optional[list[int]]:
    """``"0,3,5"`` → ``[0, 3, 5]``; a clear error naming ``--option`` otherwise."""
    if text is None or text.strip() == "":
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MedinterpError(f"--{option} {text!r}: expected comma-separated integers, e.g. 0,3,5") from None


def positive(**values: int) -> None:
    """Each ``name=value`` must be >= 1 (names as ``n_boot`` → ``--n-boot`` in the error)."""
    for name, v in values.items():
        if v is None or v < 1:
            raise MedinterpError(f"--{name.replace('_', '-')} {v}: expected a positive number")


BackendOpt = Annotated[str, typer.Option("--backend", help="auto, hooked (HookedTransformer) or bridge (TransformerBridge).")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32 (parity), bfloat16 or float16.")]
DeviceMapOpt = Annotated[Optional[str], typer.Option(
    "--device-map", help="Hugging Face device map (auto, balanced, sequential or a JSON object); bridge only.")]
NoVerifyOpt = Annotated[bool, typer.Option("--no-verify", help="Skip the logits check against transformers on load.")]
ChatTemplateOpt = Annotated[bool, typer.Option(
    "--chat-template", help="Wrap every prompt in the model's chat template (the user's turn, then the generation "
    "prompt; answers read at the assistant's first token). Instruct models only; recorded in provenance.")]

#: what :func:`load_model` passes to :func:`medinterp.load_model` (set by the options before the command)
#: (``chat_template`` only when ``--chat-template`` is given: a plain run calls it exactly as before)
LOAD_OPTIONS: dict[str, Any] = {"backend": "auto", "dtype": "float32", "device_map": None, "verify": True}


@app.callback()
def model_options(backend: BackendOpt = "auto", dtype: DtypeOpt = "float32", device_map: DeviceMapOpt = None,
                  no_verify: NoVerifyOpt = False, chat_template: ChatTemplateOpt = False) -> None:
    """Knowledge maps of medical concepts inside LLMs. Model options go before the command
    (``medinterp --backend bridge --dtype bfloat16 --chat-template map ...``) and apply to every command that
    loads a model (map, geometry, saliency, lesion, patch, validate, concepts check, ...)."""
    from medinterp.models import BACKENDS

    if backend not in BACKENDS:
        raise MedinterpError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise MedinterpError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    LOAD_OPTIONS.update(backend=backend, dtype=dtype, device_map=parse_device_map(device_map), verify=not no_verify)
    if chat_template:
        LOAD_OPTIONS["chat_template"] = True
    else:
        LOAD_OPTIONS.pop("chat_template", None)


def chat_template_option(flag: bool) -> None:
    """``--chat-template`` given after a command (``medinterp map --chat-template``): the same as before it."""
    if flag:
        LOAD_OPTIONS["chat_template"] = True


#: what ``--dtype`` accepts (the names :func:`medinterp.load_model` takes)
DTYPES = ("float32", "bfloat16", "float16", "fp32", "bf16", "fp16")


def parse_device_map(text: Optional[str]) -> Any:
    """``--device-map``: None, a name (``auto``...) or a JSON object ``{"module": device}``."""
    if text is None or text.strip() == "":
        return None
    text = text.strip()
    if text.startswith("{"):
        import json

        try:
            return json.loads(text)
        except ValueError as e:
            raise MedinterpError(f"--device-map {text!r}: not a JSON object ({e})") from None
    return text


# ---------------------------------------------------------------- loading
def load_model(spec: str, device: str = "cpu", **overrides: Any) -> Any:
    """Load a model with the model options (:data:`LOAD_OPTIONS`; ``overrides`` win), saying so first
    (loading takes seconds to minutes)."""
    import medinterp as mi

    opts = {**LOAD_OPTIONS, **{k: v for k, v in overrides.items() if v is not None}}
    check_device(device)
    chat = ", chat template" if opts.get("chat_template") else ""
    typer.echo(f"loading model {spec} (backend {opts['backend']}, {opts['dtype']}{chat}) ...")
    return mi.load_model(spec, device=device, **opts)


def check_device(device: str, option: str = "--device") -> str:
    """A device string torch understands (``cpu``, ``cuda``, ``cuda:1``, ``mps``), checked before the model loads."""
    import torch

    try:
        torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise MedinterpError(f"{option} {device!r}: expected a torch device such as cpu, cuda, cuda:1 or mps") from None
    return device


def load_concept_set(spec: str, option: str = "--concepts"):
    """A concept set (not a pair set) by shipped name or file; a clear error otherwise."""
    from medinterp.concepts import PairSet, load_concepts

    s = load_concepts(spec)
    if isinstance(s, PairSet):
        raise MedinterpError(f"{option} {spec!r}: is a pair set; expected a concept set with items and labels")
    return s


def load_pair_set(spec: str, option: str = "--pairs"):
    """A pair set by shipped name or file; a clear error otherwise."""
    from medinterp.concepts import PairSet, load_concepts

    s = load_concepts(spec)
    if not isinstance(s, PairSet):
        raise MedinterpError(f"{option} {spec!r}: is a concept set, not a pair set; pair sets have the columns "
                             "clean, corrupted, clean_answer, corrupted_answer")
    return s


# ---------------------------------------------------------------- output
def _check_parents(out: Path, option: str) -> None:
    """Every existing folder above ``out`` must be a folder (not a file), so ``out`` can be made."""
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise MedinterpError(f"{option} {out}: {parent} is a file, so nothing can be written under it")
            return


def check_out_dir(out: Path, option: str = "--out") -> Path:
    """``out`` may be absent or a directory (checked before any work)."""
    if out.exists() and not out.is_dir():
        raise MedinterpError(f"{option} {out}: exists and is not a directory")
    _check_parents(out, option)
    return out


def check_out_file(out: Path, suffixes: tuple[str, ...] = (".html", ".htm"), option: str = "--out") -> Path:
    """``out`` is a file name with one of ``suffixes`` whose folder exists or can be made."""
    if out.suffix.lower() not in suffixes:
        raise MedinterpError(f"{option} {out}: expected a file name ending in {' or '.join(suffixes)}")
    if out.exists() and out.is_dir():
        raise MedinterpError(f"{option} {out}: is a directory; expected a file name")
    _check_parents(out, option)
    return out


def write_result(res: Any, out: Path, html_name: str, title: str, *, echo_summary: bool = True) -> None:
    """Save a result to ``out``, write its HTML page beside it and print its summary."""
    res.save(out)
    res.to_html(out / html_name, title=title)
    if echo_summary:
        typer.echo(res.summary())
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    typer.echo(f"wrote {out}/: {', '.join(files)}")
