"""Router stage: picks each event's Kafka topic and key from its headers.

Pure: no I/O, no awaits. The router agent (``topology/app.py``) runs it over each
batch the source hands in; a batch with one refused event is refused whole, so a
client never has to guess which part of a call was written.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from agents.records import Record
from topology.errors import RoutingError
from topology.settings import TOPIC_RE, RouterSettings

logger = logging.getLogger(__name__)


class FlumeEvent(Protocol):
    """What the source hands in: Flume's ThriftFlumeEvent (headers, body)."""

    headers: Mapping[str, str | bytes] | None
    body: bytes | None


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def _as_str(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


class Router:
    """Maps Flume events to Kafka records; remembers each topic's verdict."""

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self._verdicts: dict[str, str | None] = {}  # topic -> None if allowed, else the reason

    def check_topic(self, topic: str) -> None:
        try:
            reason = self._verdicts[topic]
        except KeyError:
            reason = self._judge(topic)
            if len(self._verdicts) < 100_000:
                self._verdicts[topic] = reason
        if reason is not None:
            raise RoutingError(reason, topic=topic)

    def _judge(self, topic: str) -> str | None:
        if not TOPIC_RE.match(topic):
            return f"topic {topic[:300]!r} is not a valid Kafka topic name"
        if topic.startswith("__"):
            return f"topic {topic!r} is internal to Kafka"
        if not self.settings.topic_allowed(topic):
            return f"topic {topic!r} is not in router.allowed_topics"
        return None

    def route(self, events: Sequence[FlumeEvent], received_ms: int) -> list[Record]:
        """Route a whole batch, or raise RoutingError for its first refused event."""
        topic_header = self.settings.topic_header
        key_header = self.settings.key_header
        default_topic = self.settings.default_topic
        records: list[Record] = []
        append = records.append
        for event in events:
            headers = event.headers or {}
            topic = headers.get(topic_header)
            topic = default_topic if topic is None else _as_str(topic)
            self.check_topic(topic)
            key = headers.get(key_header)
            append(Record(
                topic=topic,
                key=None if key is None else _as_bytes(key),
                headers=[(_as_str(k), _as_bytes(v)) for k, v in headers.items()],
                value=event.body or b"",
                timestamp_ms=received_ms,
            ))
        return records
