"""Router stage: picks each event's Kafka topic and key from its headers.

Pure: no I/O, no awaits. The router agent (``topology/app.py``) runs it over each
batch the source hands in; a batch with one refused event is refused whole, so a
client never has to guess which part of a call was written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from agents.records import Event, Record, new_record
from core.errors import RoutingError
from core.settings import TOPIC_RE, RouterSettings

logger = logging.getLogger(__name__)


def from_thrift(event: Any) -> Event:
    """A thriftpy2 ``ThriftFlumeEvent`` (as a Thrift client builds it) as an :data:`Event`."""
    return ([(_as_str(k), _as_bytes(v)) for k, v in (event.headers or {}).items()], event.body or b"")


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def _as_str(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


class Router:
    """Maps Flume events to Kafka records; remembers each topic's verdict."""

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self._verdicts: dict[str, str | None] = {}  # topic -> None if allowed, else the reason
        self._names: dict[bytes, str] = {}  # topic header value -> topic name

    def check_topic(self, topic: str) -> None:
        try:
            reason = self._verdicts[topic]
        except KeyError:
            reason = self._judge(topic)
            if len(self._verdicts) < 100_000 and len(topic) <= 249:  # bounded: never a giant refused name
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

    def route(self, events: Sequence[Event], received_ms: int) -> list[Record]:
        """Route a whole batch, or raise RoutingError for its first refused event."""
        topic_header = self.settings.topic_header
        key_header = self.settings.key_header
        default_topic = self.settings.default_topic
        verdicts = self._verdicts
        records: list[Record] = []
        append = records.append
        for headers, body in events:
            topic = key = None
            for name, value in headers:
                if name == topic_header:
                    topic = value
                elif name == key_header:
                    key = value
            if topic is None:
                topic_name = default_topic
            else:
                topic_name = self._names.get(topic) or self._topic_name(topic)
            if verdicts.get(topic_name, _UNJUDGED) is not None:
                self.check_topic(topic_name)
            append(new_record((topic_name, key, headers, body, received_ms)))
        return records

    def _topic_name(self, raw: bytes) -> str:
        name = raw.decode("utf-8", "replace")
        if len(self._names) < 100_000 and len(raw) <= 249:
            self._names[raw] = name
        return name


_UNJUDGED = object()
