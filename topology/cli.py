"""The ``spillway`` console script: the Faust app's own command line (worker, commands)."""

from __future__ import annotations


def main() -> None:
    import os

    # uvloop unless told otherwise (-L/--loop, FAUST_LOOP): faust reads this when imported.
    os.environ.setdefault("FAUST_LOOP", "uvloop")
    from topology.app import app

    app.main()


if __name__ == "__main__":
    main()
