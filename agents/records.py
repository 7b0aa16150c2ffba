"""The value objects that travel between stages."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from core.errors import LimitError, SinkRefused

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


def new_record(fields: tuple[str, bytes | None, Headers, bytes, int]) -> Record:
    """``Record(*fields)`` without the NamedTuple's Python ``__new__`` (half its 0.7 µs): for
    the loops that build one per event (the router, the drain's reader). No checks: ``fields``
    must be the five fields, in order."""
    return _tuple_new(Record, fields)


_tuple_new: Any = tuple.__new__


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


@dataclass(slots=True)
class Envelope:
    """One client call travelling through the ingress channel; ``reply`` gets its Status."""

    events: Sequence[Any]
    received_ms: int
    reply: asyncio.Future[int] = field(repr=False)


@dataclass(slots=True)
class Batch:
    """A routed call on its way through the sinks: what is still to make durable, and its reply.

    The stage that makes the last of it durable answers ``reply``. ``durable`` lists what
    earlier stages already made durable (sink name, events), counted once the call is answered.
    """

    records: Sequence[Record]
    reply: asyncio.Future[int] = field(repr=False)
    total: int = 0
    durable: tuple[tuple[str, int], ...] = ()

    def rest(self, records: Sequence[Record], sink: str, acked: int) -> Batch:
        """This call with only ``records`` left to make durable, ``acked`` more durable in ``sink``."""
        durable = self.durable + ((sink, acked),) if acked else self.durable
        return Batch(records, self.reply, self.total, durable)


@dataclass(frozen=True, slots=True)
class Call:
    """One decoded call; ``refused`` is the first limit its events break (answer ERROR)."""

    name: str
    seqid: int
    events: list[Event]
    refused: LimitError | None = None
