"""``spillway import-flume FILE``: a Flume agent's properties file as a spillway TOML file.

The conversion is :mod:`topology.flume_import` (pure); this reads the file, writes the
TOML to stdout or ``-o OUT`` and lists on stderr what did not convert, each with its
property and why, then the notes (what a converted value means here).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import click
from faust.cli import argument, option

from topology.app import app
from topology.commands.base import SpillwayCommand
from topology.commands.core import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, CommandError, dumps
from topology.flume_import import FlumeImportError, SeveralAgents, convert


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@app.command(
    argument("file", type=click.Path(dir_okay=False)),
    option("--agent", default=None, help="The agent to convert (the -n of flume-ng agent); needed when the file "
                                         "configures several."),
    option("-o", "--output", "output", default=None, type=click.Path(dir_okay=False),
           help="Write the TOML here instead of stdout."),
    option("--strict", is_flag=True, default=False, help="Exit 1 when anything did not convert."),
    option("--json", "as_json", is_flag=True, default=False,
           help="Print the findings as JSON on stdout (needs -o for the TOML)."),
    base=SpillwayCommand,
)
async def import_flume(self: SpillwayCommand, file: str, agent: str | None, output: str | None, strict: bool,
                       as_json: bool) -> int:
    """Convert a Flume agent's properties file into a spillway configuration file.

    Converts the Thrift source, KafkaSinks (Flume 1.6 and 1.7+ keys), the failover sink
    group, the file_roll sink (the disk buffer, and the old spilled files to replay),
    Flume's interceptors spillway has, and reports the channels. Each key of the TOML
    cites its Flume property. What cannot be converted is listed on stderr with the
    property and why. Exit code: 0, or 1 with --strict when something did not convert;
    2 when the file cannot be read or names several agents and no --agent.
    """
    path = Path(file)
    try:
        text = await asyncio.to_thread(path.read_text, "utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"{path}: cannot read: {exc}") from None
    try:
        result = convert(text, agent, source_name=path.name)
    except SeveralAgents as exc:
        self.err(str(exc))
        for name in exc.agents:
            self.out(name)
        return EXIT_USAGE
    except FlumeImportError as exc:
        raise CommandError(f"{path}: {exc}") from None
    if as_json and not output:
        raise CommandError("--json prints the findings: give -o OUT for the TOML")
    if output:
        await asyncio.to_thread(_write, Path(output), result.toml)
    else:
        self.stdout.write(result.toml)
    if as_json or self.json:
        self.out(dumps({"agent": result.agent, "output": output,
                        "unconverted": [{"property": f.prop, "reason": f.reason} for f in result.unconverted],
                        "notes": [{"property": f.prop, "reason": f.reason} for f in result.notes],
                        "replay_directories": result.replay_directories}))
    else:
        for finding in result.unconverted:
            self.err(f"not converted: {finding.line()}")
        for finding in result.notes:
            self.err(f"note: {finding.line()}")
        where = output or "stdout"
        self.err(f"agent {result.agent!r}: written to {where}; {len(result.unconverted)} propert"
                 f"{'y' if len(result.unconverted) == 1 else 'ies'} not converted"
                 + (f"; check it: spillway check-config {output}" if output else ""))
    return EXIT_PARTIAL if strict and result.unconverted else EXIT_OK
