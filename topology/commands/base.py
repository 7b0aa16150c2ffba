"""The base of spillway's CLI commands: run the handler in a fresh event loop, nothing else.

Faust's own ``AppCommand`` runs a command inside a ``mode.Worker`` (its own logging,
signal handling, a one-second shutdown sentinel) and its exit code is 0 or 1. These
commands instead run their ``async def`` handler with :func:`asyncio.run` and exit
with what it returns: 0 success, 1 partial failure, 2 usage or configuration error
(:class:`~topology.commands.core.CommandError`). The app is never started, so
Faust's own Kafka producer and consumer are never built.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, ClassVar, NoReturn

import click
from faust.cli import AppCommand

from core.settings import Settings
from topology.commands.core import EXIT_USAGE, CommandError


class SpillwayCommand(AppCommand):
    """An ``@app.command(..., base=SpillwayCommand)`` handler returns its exit code."""

    abstract: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return self.ctx.info_name or type(self).__name__

    def out(self, text: str = "") -> None:
        """A line of the command's result (stdout)."""
        click.echo(text, file=self.stdout)

    def err(self, text: str) -> None:
        """A message for the operator (stderr)."""
        click.echo(f"spillway {self.name}: {text}", file=self.stderr)

    def settings(self) -> Settings:
        """The settings the app loaded; a usage error when they were invalid."""
        from topology.app import config_error, settings

        if config_error is not None:
            raise CommandError(f"invalid configuration: {config_error} (see `spillway check-config`)", EXIT_USAGE)
        return settings

    def _configure_logging(self) -> None:
        level = logging.DEBUG if self.debug else logging.getLevelName(self.loglevel.upper())
        if not isinstance(level, int):
            level = logging.WARNING
        logging.basicConfig(level=level, stream=self.stderr, format="%(levelname)s %(name)s: %(message)s")
        if level > logging.INFO:
            # aiokafka logs every refused connection at ERROR, and the sink's warnings speak of
            # the worker's failover; a command says what went wrong once, in its own words.
            logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
            logging.getLogger("agents.kafka_sink").setLevel(logging.ERROR)

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._configure_logging()
        try:
            code = asyncio.run(self.run(*self.args, *args, **{**self.kwargs, **kwargs}))
        except CommandError as exc:
            self.err(str(exc))
            code = exc.code
        except KeyboardInterrupt:
            self.err("interrupted")
            code = 130
        sys.stdout.flush()
        raise SystemExit(int(code or 0))
