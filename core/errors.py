"""Spillway's one exception root, with policy on the class.

    SpillwayError
     ├── ConfigError           a setting is missing or invalid (names the key)
     ├── SourceError           a client sent something we refuse
     │    └── FrameError       a frame is malformed, truncated or too large
     ├── RoutingError          an event cannot be routed (topic refused, ...)
     ├── SinkError             Kafka did not acknowledge (retriable)
     │    ├── SinkTimeout      ... within the failover timeout
     │    └── SinkRefused      Kafka refuses the record for good (not retriable):
     │                         unknown topic with auto-create off, record too large,
     │                         not authorised; ``reason`` is the metric label
     └── BufferError           the disk buffer cannot take or give events
          ├── BufferFull       the byte budget is reached (retriable)
          └── CorruptRecord    a record fails its CRC or does not decode

``retriable`` says whether the same call may succeed later unchanged; the Thrift
source answers FAILED for retriable errors and ERROR for the others.
"""

from __future__ import annotations


class SpillwayError(Exception):
    retriable: bool = False


class ConfigError(SpillwayError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class SourceError(SpillwayError):
    pass


class FrameError(SourceError):
    pass


class LimitError(SourceError):
    """A call over one of the source's limits; ``reason`` labels the refusal metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RoutingError(SpillwayError):
    def __init__(self, message: str, *, topic: str | None = None) -> None:
        super().__init__(message)
        self.topic = topic


class SinkError(SpillwayError):
    retriable = True


class SinkTimeout(SinkError):
    pass


class SinkRefused(SinkError):
    """Kafka refuses these records for good: retrying cannot help, parking Kafka would hurt
    everyone else. The live path answers ERROR; the drain sets them aside (undeliverable)."""

    retriable = False

    def __init__(self, message: str, *, topic: str | None = None, reason: str = "refused") -> None:
        super().__init__(message)
        self.topic = topic
        self.reason = reason


class BufferError(SpillwayError):  # noqa: A001 - deliberately ours, never the builtin
    retriable = True


class BufferFull(BufferError):
    pass


class CorruptRecord(BufferError):
    retriable = False

    def __init__(self, message: str, *, segment: str | None = None, offset: int | None = None) -> None:
        super().__init__(message if segment is None else f"{segment}@{offset}: {message}")
        self.segment = segment
        self.offset = offset
