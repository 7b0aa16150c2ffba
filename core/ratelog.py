"""Rate-limited logging: one line per kind of trouble per interval, with a count of the rest."""

from __future__ import annotations

import logging
import time


class Throttled:
    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, kind: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            msg += " (%d more like this in the last %.0fs)"
            args = (*args, suppressed, self.interval)
        self.logger.log(level, msg, *args)


class ThrottleFilter(logging.Filter):
    """A logging filter: each distinct message template passes at most once per interval.

    Installed on the chatty libraries' loggers (aiokafka logs every reconnect attempt at
    ERROR during an outage), so an outage costs a few lines a minute, not a line a retry.
    """

    def __init__(self, prefixes: tuple[str, ...], interval: float = 30.0) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        key = (record.name, str(record.msg)[:120])
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        if len(self._last) > 10_000:
            self._last.clear()
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} more like this in the last {self.interval:.0f}s)"
        return True


def throttle_library_logs(prefixes: tuple[str, ...] = ("aiokafka",), interval: float = 30.0) -> None:
    """Install a ThrottleFilter on every handler of the root logger (idempotent).

    On handlers, not loggers: a logger's filters do not apply to its children
    (``aiokafka.client``, ``aiokafka.producer.sender``, ...)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ThrottleFilter) for f in handler.filters):
            handler.addFilter(ThrottleFilter(prefixes, interval))


def drop_debug_overhead() -> None:
    """Make debug calls free again in the worker.

    Faust's worker leaves the root logger at DEBUG and adds a terminal spinner handler at
    DEBUG, so every ``log.debug`` in aiokafka's hot path (several per produce request)
    builds a LogRecord; measured at ~10 % of the worker's CPU under load. The spinner goes,
    and the root logger's level rises to that of the handlers that remain.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "SpinnerHandler":
            root.removeHandler(handler)
    levels = [h.level for h in root.handlers if h.level > logging.NOTSET]
    if levels and len(levels) == len(root.handlers):
        root.setLevel(min(levels))
