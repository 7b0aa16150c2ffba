"""The walking skeleton against a real broker: Flume clients in, the right Kafka topic out."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from helpers import ROOT, Status, Worker, client, event, free_port, read_topic, unique, wait_until

from devtools.kafka import Broker

pytestmark = pytest.mark.kafka


def headers_of(rec) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    return dict(rec.headers)


@pytest.mark.parametrize("protocol", ["compact", "binary"])
def test_events_land_in_the_topic_their_header_names_with_key_headers_and_body(
        kafka_up: Broker, make_worker: Callable[..., Worker], protocol: str) -> None:
    a, b, default = unique("orders"), unique("clicks"), unique("default")
    w = make_worker(kafka_up.bootstrap, SPILLWAY_SOURCE_THRIFT_PROTOCOL=protocol,
                    SPILLWAY_ROUTER_DEFAULT_TOPIC=default)
    c = client(w.thrift_port, protocol)
    assert c.append(event(b"\x00\xffone", topic=a, key="k-1", origin="app")) == Status.OK
    batch = [event(f"b{i}", topic=b, key=f"user-{i % 7}", seq=str(i)) for i in range(250)]
    assert c.appendBatch(batch) == Status.OK
    assert c.appendBatch([event("no topic header", seq="x")]) == Status.OK
    assert c.appendBatch([]) == Status.OK

    [rec] = read_topic(kafka_up.bootstrap, a, 1, settle=1.0)
    assert rec.value == b"\x00\xffone" and rec.key == b"k-1"
    assert headers_of(rec) == {"topic": a.encode(), "key": b"k-1", "origin": b"app"}

    got = read_topic(kafka_up.bootstrap, b, 250, settle=1.0)
    assert sorted(r.value for r in got) == sorted(f"b{i}".encode() for i in range(250))
    for r in got:
        seq = int(headers_of(r)["seq"])
        assert r.key == f"user-{seq % 7}".encode()
    # one key, one partition: Kafka's ordering per key holds
    by_key: dict[bytes, set[int]] = {}
    for r in got:
        by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(parts) == 1 for parts in by_key.values())

    [d] = read_topic(kafka_up.bootstrap, default, 1, settle=0.5)
    assert d.value == b"no topic header" and d.key is None

    st = w.status()["counters"]
    assert st["received"] == 252 and st["acked_kafka"] == 252 and st["failed"] == 0


def test_refused_topics_answer_error_write_nothing_and_the_server_keeps_serving(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    ok_topic, denied = unique("allowed.ok"), unique("denied")
    w = make_worker(kafka_up.bootstrap, SPILLWAY_ROUTER_ALLOWED_TOPICS='["allowed.*", "events"]')
    c = client(w.thrift_port)
    assert c.append(event("x", topic=denied)) == Status.ERROR
    assert c.append(event("x", topic="__consumer_offsets")) == Status.ERROR
    assert c.append(event("x", topic="bad topic!")) == Status.ERROR
    # one refused event refuses the whole batch: nothing of it is written
    assert c.appendBatch([event("good", topic=ok_topic), event("bad", topic=denied)]) == Status.ERROR
    assert c.appendBatch([event("after", topic=ok_topic)]) == Status.OK

    got = read_topic(kafka_up.bootstrap, ok_topic, 1, settle=1.5)
    assert [r.value for r in got] == [b"after"]
    counters = w.status()["counters"]
    assert counters["refused"] == 5 and counters["acked_kafka"] == 1


def _raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def _closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def _rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_garbage_truncated_and_oversize_frames_close_only_that_connection(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    topic = unique("survivor")
    w = make_worker(kafka_up.bootstrap)
    assert w.proc is not None
    good = client(w.thrift_port)
    assert good.append(event("before", topic=topic)) == Status.OK
    rss_before = _rss_kb(w.proc.pid)

    for _ in range(20):
        # a length prefix far over the cap: refused before anything is allocated
        s = _raw(w.thrift_port)
        s.sendall(struct.pack("!i", 2_000_000_000) + b"\x00" * 64)
        assert _closed_by_server(s)
        s.close()
        # a negative length
        s = _raw(w.thrift_port)
        s.sendall(struct.pack("!i", -5))
        assert _closed_by_server(s)
        s.close()
        # a frame of garbage
        s = _raw(w.thrift_port)
        junk = os.urandom(200)
        s.sendall(struct.pack("!i", len(junk)) + junk)
        assert _closed_by_server(s)
        s.close()
    # a truncated frame: the client goes away mid-frame; nothing is acknowledged, nothing breaks
    s = _raw(w.thrift_port)
    s.sendall(struct.pack("!i", 1000) + b"\x82\x21" + b"\x00" * 50)
    s.close()

    assert good.append(event("after", topic=topic)) == Status.OK  # the long-lived client still works
    assert client(w.thrift_port).append(event("new client", topic=topic)) == Status.OK
    got = read_topic(kafka_up.bootstrap, topic, 3, settle=0.5)
    assert sorted(r.value for r in got) == [b"after", b"before", b"new client"]
    assert _rss_kb(w.proc.pid) - rss_before < 50_000, "memory grew on hostile frames"
    assert wait_until(lambda: w.status()["counters"]["bad_frames"] >= 40, 5, what="bad frame counter")


def test_limits_answer_error_for_oversize_events_and_batches(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    topic = unique("limits")
    w = make_worker(kafka_up.bootstrap, SPILLWAY_SOURCE_THRIFT_MAX_EVENT_BYTES="2000",
                    SPILLWAY_SOURCE_THRIFT_MAX_BATCH_EVENTS="10", SPILLWAY_SOURCE_THRIFT_MAX_HEADERS="4")
    c = client(w.thrift_port)
    assert c.append(event(b"x" * 5000, topic=topic)) == Status.ERROR
    assert c.appendBatch([event("x", topic=topic)] * 11) == Status.ERROR
    assert c.append(event("x", topic=topic, a="1", b="2", c="3", d="4")) == Status.ERROR
    assert c.appendBatch([event("fits", topic=topic)] * 10) == Status.OK
    assert len(read_topic(kafka_up.bootstrap, topic, 10, settle=1.0)) == 10


def test_many_concurrent_long_lived_connections_are_served(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    import threading

    topic = unique("many")
    w = make_worker(kafka_up.bootstrap)
    clients = [client(w.thrift_port) for _ in range(50)]
    results: list[int] = []

    def run(c) -> None:  # type: ignore[no-untyped-def]
        for i in range(5):
            results.append(c.appendBatch([event(f"{id(c)}-{i}-{j}", topic=topic) for j in range(20)]))
            time.sleep(0.3)  # idle between calls: the server must not cut long-lived clients

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [Status.OK] * 250
    assert len(read_topic(kafka_up.bootstrap, topic, 5000, settle=1.0)) == 5000


def test_with_kafka_stopped_and_no_room_on_disk_calls_fail_fast_then_recover(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    """Kafka really stopped and a buffer too small to hold a call: FAILED within the bound,
    never OK; the broker back, OK again without restarting the worker."""
    topic = unique("outage")
    w = make_worker(kafka_up.bootstrap, SPILLWAY_BUFFER_MAX_BYTES="3000",
                    SPILLWAY_SOURCE_THRIFT_MAX_EVENT_BYTES="3000")
    c = client(w.thrift_port)
    big = [event(b"x" * 1000, topic=topic) for _ in range(10)]
    assert c.appendBatch(big) == Status.OK
    kafka_up.stop()
    try:
        for _ in range(5):
            t0 = time.monotonic()
            assert c.appendBatch(big) == Status.FAILED
            assert time.monotonic() - t0 < 3 + 2  # failover.timeout (3 s in tests) plus slack
    finally:
        kafka_up.start()
    wait_until(lambda: c.appendBatch(big) == Status.OK, 60, interval=1, what="OK after the broker returned")
    got = read_topic(kafka_up.bootstrap, topic, 20, timeout=30, settle=1.0)
    assert len(got) >= 20


def test_a_bad_configuration_stops_the_worker_with_the_key_named(tmp_path, kafka_up: Broker) -> None:  # type: ignore[no-untyped-def]
    w = Worker(tmp_path, kafka_up.bootstrap, env_extra={"SPILLWAY_SOURCE_THRIFT_PROTOCOL": "json"})
    with pytest.raises(RuntimeError) as err:
        w.start(timeout=30)
    assert "source.thrift.protocol" in str(err.value)
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[buffer]\nmax_bytes = \"lots\"\n")
    out = subprocess.run([sys.executable, "-m", "topology.cli", "worker"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "SPILLWAY_CONFIG": str(cfg),
                                                     "SPILLWAY_WEB_PORT": str(free_port())})
    assert out.returncode != 0
    assert "buffer.max_bytes" in out.stdout + out.stderr
