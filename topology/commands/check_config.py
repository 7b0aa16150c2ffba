"""``spillway check-config [PATH]``: validate a configuration file, print the effective settings.

Loads the file itself with :func:`~core.loading.load_settings` (environment
overrides included), so it works even when the configuration the app loaded at
import is invalid.
"""

from __future__ import annotations

from pathlib import Path

import click
from faust.cli import argument, option

from core.errors import ConfigError
from core.loading import config_path, load_settings
from topology.app import app
from topology.commands.base import SpillwayCommand
from topology.commands.core import EXIT_OK, CommandError, dumps, toml_value


def origin_label(origin: str, path: Path) -> str:
    """``default``, ``file`` or ``env:NAME``."""
    return "file" if origin == str(path) else origin


@app.command(
    argument("path", required=False, type=click.Path()),
    option("--json", "as_json", is_flag=True, default=False, help="Print machine-readable JSON."),
    base=SpillwayCommand,
)
async def check_config(self: SpillwayCommand, path: str | None, as_json: bool) -> int:
    """Validate a configuration file and print every effective setting and where it came from.

    PATH defaults to $SPILLWAY_CONFIG, else ./spillway.toml if there is one, else
    the defaults shipped in the package. Environment
    overrides (SPILLWAY_<SECTION>_<KEY>) apply, as they would for the worker. Each
    key is printed as `key = value  # origin`, origin being default, file or
    env:NAME. Exit code: 0 valid, 2 invalid (the message names the key).
    """
    target = Path(path) if path else config_path()
    try:
        settings = load_settings(target)
    except ConfigError as exc:
        raise CommandError(f"{target}: invalid configuration: {exc}") from None
    flat = settings.flat()
    origins = {key: origin_label(settings.origins.get(key, "default"), target) for key in flat}
    if as_json or self.json:
        self.out(dumps({"config": str(target), "valid": True,
                        "settings": {k: {"value": v, "origin": origins[k]} for k, v in flat.items()}}))
        return EXIT_OK
    self.out(f"# {target}: valid")
    lines = [(f"{key} = {toml_value(value)}", origins[key]) for key, value in flat.items()]
    width = max(len(text) for text, _ in lines)
    for text, origin in lines:
        self.out(f"{text.ljust(width)}  # {origin}")
    return EXIT_OK
