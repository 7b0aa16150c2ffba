"""The routing decision, without sockets."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agents.router import Router
from topology.errors import RoutingError
from topology.settings import RouterSettings


@dataclass
class Ev:
    headers: dict[str, str] | None
    body: bytes | None


def test_event_goes_to_topic_named_by_header_with_key_and_all_headers() -> None:
    [rec] = Router(RouterSettings()).route([Ev({"topic": "orders", "key": "u1", "h": "v"}, b"body")], 123)
    assert (rec.topic, rec.key, rec.value, rec.timestamp_ms) == ("orders", b"u1", b"body", 123)
    assert dict(rec.headers) == {"topic": b"orders", "key": b"u1", "h": b"v"}


def test_event_without_topic_header_goes_to_default_topic_without_key() -> None:
    [rec] = Router(RouterSettings(default_topic="fallback")).route([Ev(None, None)], 1)
    assert (rec.topic, rec.key, rec.value, list(rec.headers)) == ("fallback", None, b"", [])


def test_header_names_are_configurable() -> None:
    r = Router(RouterSettings(topic_header="dest", key_header="partition_key"))
    [rec] = r.route([Ev({"dest": "a", "topic": "b", "partition_key": "k"}, b"")], 1)
    assert (rec.topic, rec.key) == ("a", b"k")


@pytest.mark.parametrize("topic", ["__consumer_offsets", "__anything", "has space", "", "x" * 250, "ä", "a/b"])
def test_invalid_and_internal_topics_are_refused(topic: str) -> None:
    with pytest.raises(RoutingError) as err:
        Router(RouterSettings()).route([Ev({"topic": topic}, b"")], 1)
    assert err.value.topic == topic


def test_allow_list_patterns_decide_and_one_refused_event_refuses_the_batch() -> None:
    r = Router(RouterSettings(allowed_topics=("app.*", "events")))
    assert [x.topic for x in r.route([Ev({"topic": "app.clicks"}, b""), Ev({}, b"")], 1)] == ["app.clicks", "events"]
    with pytest.raises(RoutingError, match="allowed_topics"):
        r.route([Ev({"topic": "app.ok"}, b""), Ev({"topic": "other"}, b"")], 1)


def test_undecodable_header_values_keep_their_bytes() -> None:
    [rec] = Router(RouterSettings()).route([Ev({"key": b"\xff\x00"}, b"")], 1)  # type: ignore[dict-item]
    assert rec.key == b"\xff\x00"
