"""``medinterp`` command line: a thin layer over the public API.

Each module in this package (other than ``app`` and the private ``_common`` helpers) defines its
commands on :data:`app`; they are imported here so that adding a command means adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

from medinterp.cli.app import app

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "app" and not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_mod}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app, printing medinterp errors as one readable line (exit code 2)."""
    from medinterp.errors import MedinterpError

    try:
        app(args=argv, standalone_mode=True)
    except MedinterpError as e:
        # Plain print: no line wrapping, so the message stays greppable.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


__all__ = ["app", "main"]
