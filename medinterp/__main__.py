"""``python -m medinterp`` = the ``medinterp`` command."""

from medinterp.cli import main

main()
