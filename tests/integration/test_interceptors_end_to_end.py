"""Flume's interceptors end to end: a real worker configured by file, a real broker, a real outage."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Status, TcpProxy, Worker, client, create_topics, event, read_topic, unique, wait_until

from agents.interceptors import machine_address
from agents.segments import iter_records
from devtools.kafka import Broker

pytestmark = pytest.mark.kafka

STAMPS = """
[[interceptors]]
type = "timestamp"
[[interceptors]]
type = "host"
[[interceptors]]
type = "static"
key = "dc"
value = "eu-1"
[[interceptors]]
type = "remove_header"
name = "secret"
[[interceptors]]
type = "uuid"
"""
FILTER = """
[[interceptors]]
type = "regex_filter"
regex = "^DEBUG"
exclude_events = true
"""


def configured(tmp_path: Path, text: str) -> dict[str, str]:
    """The worker's environment for a configuration file (arrays are not set from the environment)."""
    cfg = tmp_path / "spillway.toml"
    cfg.write_text(text)
    return {"SPILLWAY_CONFIG": str(cfg)}


def filtered(w: Worker, label: str) -> float:
    m = re.search(rf'^spillway_events_filtered_total{{interceptor="{re.escape(label)}"}} (\S+)$',
                  w.get("/metrics"), re.MULTILINE)
    assert m, f"no spillway_events_filtered_total for {label}"
    return float(m.group(1))


def acked(w: Worker) -> tuple[int, int]:
    counters = w.status()["counters"]
    return counters["acked_kafka"], counters["acked_disk"]


def test_headers_set_by_interceptors_are_kafka_record_headers_and_a_filter_drops_and_counts(
        kafka_up: Broker, make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    topic = unique("stamped")
    create_topics(kafka_up.bootstrap, topic)  # not left to auto-creation's timing on a broker just started
    w = make_worker(kafka_up.bootstrap, **configured(tmp_path, STAMPS + FILTER))
    assert filtered(w, "regex_filter[5]") == 0
    c = client(w.thrift_port)
    t0 = int(time.time() * 1000)
    call = [event(f"INFO {i}", topic=topic, key=f"k{i}", secret="s") for i in range(7)]
    call += [event(f"DEBUG {i}", topic=topic, secret="s") for i in range(3)]
    assert c.appendBatch(call) == Status.OK
    before = acked(w)
    assert c.appendBatch([event(f"DEBUG only {i}", topic=topic) for i in range(5)]) == Status.OK
    assert c.append(event("DEBUG alone", topic=topic)) == Status.OK
    t1 = int(time.time() * 1000)
    c.close()
    assert acked(w) == before  # the calls filtered out whole touched neither Kafka nor the disk
    assert w.status()["buffer"]["events"] == 0
    assert filtered(w, "regex_filter[5]") == 3 + 5 + 1

    got = read_topic(kafka_up.bootstrap, topic, 7, settle=2.0)
    assert sorted(r.value for r in got) == sorted(f"INFO {i}".encode() for i in range(7))
    ids = set()
    for r in got:
        h = dict(r.headers)
        assert len(h) == len(r.headers)  # no header twice
        assert set(h) == {"topic", "key", "timestamp", "host", "dc", "id"}  # "secret" removed
        assert t0 <= int(h["timestamp"]) <= t1 and int(h["timestamp"]) == r.timestamp  # the receive time
        assert h["host"] == machine_address().encode()
        assert h["dc"] == b"eu-1"
        assert r.key == h["key"]
        assert str(uuid.UUID(h["id"].decode())) == h["id"].decode()
        ids.add(h["id"])
    assert len(ids) == 7


def test_headers_set_by_interceptors_survive_the_disk_buffer_and_the_drain_unchanged(
        kafka_up: Broker, kafka_proxy: TcpProxy, make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    topic = unique("stamped-spilled")
    create_topics(kafka_up.bootstrap, topic)
    w = make_worker(kafka_up.bootstrap, **configured(tmp_path, STAMPS + FILTER))
    kafka_proxy.cut()
    c = client(w.thrift_port)
    for n in range(3):
        batch = [event(f"INFO {n}-{i}", topic=topic, secret="s") for i in range(10)]
        assert c.appendBatch(batch + [event(f"DEBUG {n}", topic=topic)]) == Status.OK
    c.close()
    assert w.status()["buffer"]["events"] == 30  # the filtered events never reached the disk
    assert filtered(w, "regex_filter[5]") == 3
    # what the disk holds, as it was acknowledged: headers in order, the id each event was given
    buffered = {r.value: r for seg in sorted(w.buffer_dir.glob("*.seg")) for _, _, r in iter_records(seg)}
    assert len(buffered) == 30
    assert len({dict(r.headers)["id"] for r in buffered.values()}) == 30
    assert all(dict(r.headers).keys() == {"topic", "timestamp", "host", "dc", "id"} for r in buffered.values())

    kafka_proxy.restore()
    wait_until(lambda: w.status()["buffer"]["events"] == 0, 90, what="the buffer to drain")
    got = read_topic(kafka_up.bootstrap, topic, 30, settle=1.0)
    assert sorted(r.value for r in got) == sorted(buffered)
    for r in got:
        stored = buffered[r.value]
        assert [(k, bytes(v)) for k, v in r.headers] == list(stored.headers)  # same headers, same order
        assert r.timestamp == stored.timestamp_ms == int(dict(r.headers)["timestamp"])
