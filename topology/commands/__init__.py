"""CLI commands (``spillway <command>``): replay, buffer, send, check-config, init.

Each is an ``@app.command`` on :class:`~topology.commands.base.SpillwayCommand`: it
runs in its own event loop without starting the app, so it works with Kafka down
and no worker running, and exits 0 (success), 1 (partial failure) or 2 (usage or
configuration error).

    replay PATH...                 segments / archives / directories back into Kafka
    buffer ls|inspect|verify [P]   what the disk buffer holds; CRC check
    send                           a Flume-protocol test client
    check-config [PATH]            validate a file, print effective settings and origins
    init [PATH]                    write the commented default configuration (./spillway.toml)

Faust's built-in commands register when ``faust.cli.faust`` is first imported; it is
imported here first so that ours (``send`` shares a name) replace them, not the
other way round.
"""

from __future__ import annotations

import faust.cli.faust  # noqa: F401  - register Faust's built-ins before ours

from topology.commands import buffer, check_config, init, replay, send

__all__ = ["buffer", "check_config", "init", "replay", "send"]
