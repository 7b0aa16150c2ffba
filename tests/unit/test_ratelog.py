"""Outage logs stay readable: repeated library errors are rate-limited, with counts."""

from __future__ import annotations

import logging

from core.ratelog import Throttled, ThrottleFilter


def record(name: str, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, (), None)


def test_a_repeated_library_error_passes_once_per_interval_then_says_how_many_were_held_back() -> None:
    f = ThrottleFilter(("aiokafka",), interval=60.0)
    assert f.filter(record("aiokafka.client", 'Unable connect to "%s"'))
    assert not any(f.filter(record("aiokafka.client", 'Unable connect to "%s"')) for _ in range(50))
    assert f.filter(record("aiokafka.client", "another message"))
    assert f.filter(record("spillway", 'Unable connect to "%s"'))  # not a throttled library
    f.interval = 0.0
    r = record("aiokafka.client", 'Unable connect to "%s"')
    assert f.filter(r) and "50 more like this" in str(r.msg)


def test_throttled_logs_count_what_they_held_back(caplog) -> None:  # type: ignore[no-untyped-def]
    t = Throttled(logging.getLogger("t"), interval=60.0)
    with caplog.at_level(logging.WARNING):
        for _ in range(10):
            t.log(logging.WARNING, "k", "disk full")
    assert [r.getMessage() for r in caplog.records] == ["disk full"]
