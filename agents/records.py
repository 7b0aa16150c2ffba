"""The value objects that travel between stages."""

from __future__ import annotations

from typing import NamedTuple

#: a list (not a tuple): aiokafka's record batch builder takes exactly a list
Headers = list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]


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
