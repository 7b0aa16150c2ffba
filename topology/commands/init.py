"""``spillway init [PATH]``: write the commented default configuration, a first run without a checkout.

The file is the one shipped in the package (:data:`~core.settings.DEFAULT_CONFIG`): every
key with its default and what it does. Written as ``./spillway.toml`` (the default), the
worker and the commands started in that directory read it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
from faust.cli import argument, option

from core.settings import DEFAULT_CONFIG, LOCAL_CONFIG
from topology.app import app
from topology.commands.base import SpillwayCommand
from topology.commands.core import EXIT_OK, CommandError


def write_config(target: Path, force: bool) -> None:
    """Copy the shipped defaults to ``target``; never over an existing file unless ``force``."""
    text = DEFAULT_CONFIG.read_bytes()
    try:
        with open(target, "wb" if force else "xb") as fh:
            fh.write(text)
    except FileExistsError:
        raise CommandError(f"{target} exists; --force overwrites it") from None
    except OSError as exc:
        raise CommandError(f"cannot write {target}: {exc.strerror or exc}") from None


@app.command(
    argument("path", required=False, type=click.Path(dir_okay=False)),
    option("--force", is_flag=True, default=False, help="Overwrite an existing file."),
    base=SpillwayCommand,
)
async def init(self: SpillwayCommand, path: str | None, force: bool) -> int:
    """Write the commented default configuration to PATH (default: ./spillway.toml).

    Every key is there with its default. `spillway worker` and the commands started in
    the directory of ./spillway.toml read it (unless $SPILLWAY_CONFIG names another file).
    Exit code: 0 written, 2 the file exists (without --force) or cannot be written.
    """
    target = Path(path or LOCAL_CONFIG)
    await asyncio.to_thread(write_config, target, force)
    self.out(f"wrote {target}: every setting with its default; edit it, then `spillway check-config`")
    return EXIT_OK
