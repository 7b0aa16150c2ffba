"""The ``spillway`` console script: the Faust app's own command line (worker, commands).

spillway's top-level packages are ``core``, ``agents``, ``topology`` and ``devtools`` (the
layout DESIGN.md asks for). ``agents``, ``core`` and ``devtools`` are also the import names
of other PyPI projects; when one of those is on ``sys.path`` too, :func:`main` still imports
spillway's own (they are installed side by side with this file), and says so plainly when
another project's files have replaced them.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

#: spillway's top-level packages, installed next to each other
PACKAGES = ("core", "agents", "topology", "devtools")


def own_packages_first() -> None:
    """Put the directory spillway is installed in first on ``sys.path``, then check that each
    of its top-level packages imports from there; exit with the reason when one does not."""
    root = Path(__file__).resolve().parent.parent
    if sys.path[:1] != [str(root)]:
        sys.path.insert(0, str(root))
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # e.g. another project's __init__.py over ours
            raise SystemExit(f"spillway: cannot import its package {name!r} from {root}: {exc}. Another "
                             f"distribution with a top-level {name!r} package was probably installed into the "
                             "same environment; install spillway into its own virtual environment.") from None
        where = Path(getattr(module, "__file__", None) or "").resolve().parent
        if where != root / name:
            raise SystemExit(f"spillway: `import {name}` finds {where}, not spillway's {root / name}; "
                             "install spillway into its own virtual environment.")


def main() -> None:
    # uvloop unless told otherwise (-L/--loop, FAUST_LOOP): faust reads this when imported.
    os.environ.setdefault("FAUST_LOOP", "uvloop")
    own_packages_first()
    # `worker --processes N` (or [node] processes > 1): a parent of N workers, before Faust parses argv
    from topology.processes import run_if_asked

    status = run_if_asked(sys.argv[1:])
    if status is not None:
        raise SystemExit(status)
    from topology.app import app

    app.main()


if __name__ == "__main__":
    main()
