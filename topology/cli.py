"""The ``spillway`` console script: the Faust app's own command line (worker, commands)."""

from __future__ import annotations


def main() -> None:
    from topology.app import app

    app.main()


if __name__ == "__main__":
    main()
