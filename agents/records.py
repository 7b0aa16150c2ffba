"""The value objects that travel between stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from topology.errors import SinkRefused

#: a list (not a tuple): aiokafka's record batch builder takes exactly a list
Headers = list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]

#: One Flume event as a source hands it in: its headers as ``(name, value)`` pairs in wire
#: order (they become the Kafka record headers as they are) and its body. A plain tuple:
#: the decoder builds one per event, in a fraction of a NamedTuple's time.
Event = tuple[list[tuple[str, bytes]], bytes]


class Record(NamedTuple):
    """One event, routed: everything needed to send it to Kafka now or years later.

    A NamedTuple rather than a frozen dataclass: one is built per event on the hot path,
    and a tuple is built in about half the time.

    ``headers`` are all the event's headers (Kafka record headers), ``timestamp_ms``
    is the time spillway received it (epoch milliseconds).
    """

    topic: str
    key: bytes | None
    headers: Headers
    value: bytes
    timestamp_ms: int

    @property
    def size(self) -> int:
        """Approximate bytes this record weighs (for budgets and metrics)."""
        return len(self.value) + len(self.topic) + (len(self.key) if self.key else 0) + sum(
            len(k) + len(v) for k, v in self.headers
        )


@dataclass(slots=True)
class Delivery:
    """What Kafka made of a send.

    ``unacked``: not acknowledged for a retriable reason (keep them elsewhere), with the
    first such ``error``; ``refused``: refused for good, each with Kafka's reason.
    """

    unacked: list[Record] = field(default_factory=list)
    error: str | None = None
    refused: list[tuple[Record, SinkRefused]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unacked and not self.refused
