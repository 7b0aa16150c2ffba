"""The routing decision, without sockets."""

from __future__ import annotations

import pytest

from agents.router import Event, Router, from_thrift
from agents.thrift_source import ThriftFlumeEvent
from core.errors import RoutingError
from core.settings import RouterSettings


def ev(body: bytes = b"", **headers: str) -> Event:
    return ([(k, v.encode()) for k, v in headers.items()], body)


def test_event_goes_to_topic_named_by_header_with_key_and_all_headers() -> None:
    [rec] = Router(RouterSettings()).route([ev(b"body", topic="orders", key="u1", h="v")], 123)
    assert (rec.topic, rec.key, rec.value, rec.timestamp_ms) == ("orders", b"u1", b"body", 123)
    assert dict(rec.headers) == {"topic": b"orders", "key": b"u1", "h": b"v"}


def test_event_without_topic_header_goes_to_default_topic_without_key() -> None:
    [rec] = Router(RouterSettings(default_topic="fallback")).route([ev()], 1)
    assert (rec.topic, rec.key, rec.value, list(rec.headers)) == ("fallback", None, b"", [])


def test_header_names_are_configurable() -> None:
    r = Router(RouterSettings(topic_header="dest", key_header="partition_key"))
    [rec] = r.route([ev(dest="a", topic="b", partition_key="k")], 1)
    assert (rec.topic, rec.key) == ("a", b"k")


@pytest.mark.parametrize("topic", ["__consumer_offsets", "__anything", "has space", "", "x" * 250, "ä", "a/b"])
def test_invalid_and_internal_topics_are_refused_every_time(topic: str) -> None:
    r = Router(RouterSettings())
    for _ in range(2):  # the verdict is remembered, and still refuses
        with pytest.raises(RoutingError) as err:
            r.route([ev(topic=topic)], 1)
        assert err.value.topic == topic


def test_allow_list_patterns_decide_and_one_refused_event_refuses_the_batch() -> None:
    r = Router(RouterSettings(allowed_topics=("app.*", "events")))
    assert [x.topic for x in r.route([ev(topic="app.clicks"), ev()], 1)] == ["app.clicks", "events"]
    with pytest.raises(RoutingError, match="allowed_topics"):
        r.route([ev(topic="app.ok"), ev(topic="other")], 1)


def test_undecodable_key_bytes_are_kept_exactly() -> None:
    [rec] = Router(RouterSettings()).route([([("key", b"\xff\x00")], b"")], 1)
    assert rec.key == b"\xff\x00"


def test_thrift_events_from_the_general_decoder_take_the_same_shape() -> None:
    e = from_thrift(ThriftFlumeEvent(headers={"topic": "t", "k": b"\xff"}, body=None))
    assert e == ([("topic", b"t"), ("k", b"\xff")], b"")
