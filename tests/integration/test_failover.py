"""The failover loop against a real broker, with real outages: nothing acknowledged is lost."""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Load, Status, TcpProxy, Worker, check_all_in_kafka, client, event, read_topic, unique, wait_until

from agents.segments import FILE_HEADER, HEADER_LEN, iter_records
from devtools.kafka import Broker

pytestmark = pytest.mark.kafka

FAILOVER_TIMEOUT = 3.0  # what helpers.Worker sets
BOUND = FAILOVER_TIMEOUT + 3.0  # plus the disk write and a noisy shared machine


def drained(w: Worker) -> bool:
    st = w.status()
    return st["buffer"]["events"] == 0 and st["sink"]["state"] == "up"


def test_broker_killed_mid_stream_every_ok_call_lands_in_its_topic(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    topics = [unique("kill-a"), unique("kill-b"), unique("kill-c")]
    w = make_worker(kafka_up.bootstrap)
    load = Load(w.thrift_port, topics, clients=4, batch=50).start()
    time.sleep(3)
    kafka_up.kill()
    killed_at = time.monotonic()
    time.sleep(8)
    kafka_up.start()
    time.sleep(3)
    load.stop()

    during = [r for r in load.results if r.started >= killed_at and r.started < killed_at + 8]
    assert during, "no calls were made during the outage"
    assert all(r.status == Status.OK for r in during), load.statuses()
    assert max(r.latency for r in during) < BOUND
    assert w.status()["counters"]["acked_disk"] > 0
    wait_until(lambda: drained(w), 90, what="the buffer to drain")
    counts = check_all_in_kafka(kafka_up.bootstrap, load.acked())
    assert counts["duplicates"] <= w.status()["counters"]["duplicates"]


def test_worker_killed_with_events_buffered_restarts_with_kafka_down_and_loses_nothing(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    topics = [unique("crash-a"), unique("crash-b")]
    kafka_up.kill()
    w = make_worker(kafka_up.bootstrap)  # starts with Kafka down
    load = Load(w.thrift_port, topics, clients=2, batch=100).start()
    wait_until(lambda: len(load.results) > 20, 30, what="calls during the outage")
    w.kill()  # kill -9 with events in the buffer and calls in flight
    load.stop()
    first = load.acked()
    assert first

    w.start()  # Kafka still down: it starts and takes events
    assert w.status()["sink"]["state"] in ("up", "parked")
    c = client(w.thrift_port)
    late = [event(f"after-restart-{i}", topic=topics[0], key="k") for i in range(10)]
    assert c.appendBatch(late) == Status.OK
    assert w.status()["buffer"]["events"] >= len(first) + 10

    kafka_up.start()
    wait_until(lambda: drained(w), 90, what="the buffer to drain")
    acked = dict(first)
    acked.update({e.body: (topics[0], b"k") for e in late})
    check_all_in_kafka(kafka_up.bootstrap, acked)


def test_a_stalled_broker_fails_over_within_the_bound_and_recovers(
        kafka_up: Broker, kafka_proxy: TcpProxy, make_worker: Callable[..., Worker]) -> None:
    topics = [unique("stall-a"), unique("stall-b")]
    w = make_worker(kafka_up.bootstrap)
    load = Load(w.thrift_port, topics, clients=3, batch=50).start()
    time.sleep(2)
    kafka_proxy.stall()  # connections stay open, nothing answers
    stalled_at = time.monotonic()
    time.sleep(8)
    kafka_proxy.restore()
    wait_until(lambda: w.status()["sink"]["state"] == "up", 60, what="Kafka back up")
    acked_kafka_before = w.status()["counters"]["acked_kafka"]
    time.sleep(3)
    load.stop()

    during = [r for r in load.results if stalled_at + 0.1 < r.started < stalled_at + 8]
    assert during and all(r.status == Status.OK for r in during), load.statuses()
    assert max(r.latency for r in during) < BOUND
    assert w.status()["counters"]["acked_kafka"] > acked_kafka_before  # live traffic back on Kafka
    wait_until(lambda: drained(w), 90, what="the buffer to drain")
    counts = check_all_in_kafka(kafka_up.bootstrap, load.acked())
    assert counts["duplicates"] <= w.status()["counters"]["duplicates"]


def test_worker_killed_mid_drain_resumes_and_counts_duplicates(
        kafka_up: Broker, kafka_proxy: TcpProxy, make_worker: Callable[..., Worker]) -> None:
    topic = unique("middrain")
    w = make_worker(kafka_up.bootstrap, SPILLWAY_DRAIN_MAX_EVENTS_PER_SECOND="4000",
                    SPILLWAY_DRAIN_BATCH_EVENTS="500")
    kafka_proxy.cut()
    c = client(w.thrift_port)
    acked: dict[bytes, tuple[str, bytes]] = {}
    for i in range(60):
        evs = [event(f"md-{i}-{j}", topic=topic, key=f"k{j % 5}") for j in range(500)]
        assert c.appendBatch(evs) == Status.OK
        acked.update({e.body: (topic, e.headers["key"].encode()) for e in evs})
    c.close()
    assert w.status()["buffer"]["events"] == 30_000
    kafka_proxy.restore()
    wait_until(lambda: w.status()["drain"]["drained_total"] >= 5000, 60, what="the drain to start")
    w.kill()
    w.start()
    wait_until(lambda: drained(w), 120, what="the buffer to drain after restart")
    counts = check_all_in_kafka(kafka_up.bootstrap, acked)
    assert counts["found"] == 30_000
    assert counts["duplicates"] <= w.status()["counters"]["duplicates"]


def test_torn_tail_and_flipped_bit_are_recovered_at_start_and_the_rest_is_kept(
        kafka_up: Broker, kafka_proxy: TcpProxy, make_worker: Callable[..., Worker]) -> None:
    topic = unique("damaged")
    w = make_worker(kafka_up.bootstrap)
    kafka_proxy.cut()
    c = client(w.thrift_port)
    for i in range(10):
        assert c.appendBatch([event(f"d-{i}-{j}", topic=topic) for j in range(10)]) == Status.OK
    c.close()
    w.kill()
    [seg] = sorted(w.buffer_dir.glob("*.seg"))
    offsets = [(o, n) for o, n, _ in iter_records(seg)]
    assert len(offsets) == 100
    data = bytearray(seg.read_bytes())
    o, n = offsets[50]
    data[n - 3] ^= 0x10  # a flipped bit in the body of the 51st record
    data += b"SW\x00\x00\x01\x00partial"  # a torn tail: an append cut short by the crash
    seg.write_bytes(bytes(data))

    w.start()  # no crash loop
    st = w.status()
    assert st["buffer"]["quarantined_records"] == 1
    assert st["buffer"]["events"] == 99
    assert list((w.buffer_dir / "quarantine").iterdir())
    kafka_proxy.restore()
    wait_until(lambda: drained(w), 60, what="the buffer to drain")
    got = read_topic(kafka_up.bootstrap, topic, 99, settle=1.0)
    values = {r.value for r in got}
    assert len(values) == 99
    assert b"d-5-0" not in values  # the damaged record, quarantined
    assert {b"d-4-9", b"d-5-1"} <= values  # its neighbours, kept


def test_budget_reached_with_kafka_down_answers_failed_then_recovers(
        kafka_up: Broker, kafka_proxy: TcpProxy, make_worker: Callable[..., Worker]) -> None:
    topic = unique("budget")
    w = make_worker(kafka_up.bootstrap, SPILLWAY_BUFFER_MAX_BYTES="60000",
                    SPILLWAY_SOURCE_THRIFT_MAX_EVENT_BYTES="60000")
    kafka_proxy.cut()
    c = client(w.thrift_port)
    statuses = []
    sent: dict[bytes, int] = {}
    for i in range(40):
        evs = [event(f"b-{i}-{j}".ljust(200, "."), topic=topic) for j in range(10)]
        t0 = time.monotonic()
        status = c.appendBatch(evs)
        if status == Status.FAILED:
            assert time.monotonic() - t0 < BOUND
        statuses.append(status)
        for e in evs:
            sent[e.body] = status
    assert Status.OK in statuses and Status.FAILED in statuses
    assert statuses.index(Status.FAILED) > 0
    assert w.status()["buffer"]["bytes"] <= 60000
    kafka_proxy.restore()
    wait_until(lambda: drained(w), 60, what="the buffer to drain")
    assert c.appendBatch([event("after", topic=topic)]) == Status.OK
    got = {r.value for r in read_topic(kafka_up.bootstrap, topic, statuses.count(Status.OK) * 10 + 1, settle=1.5)}
    ok_bodies = {b for b, s in sent.items() if s == Status.OK}
    failed_bodies = {b for b, s in sent.items() if s == Status.FAILED}
    assert ok_bodies <= got
    assert not (failed_bodies & got), "an event of a FAILED call was written"


def test_events_older_than_max_age_are_archived_not_sent(
        kafka_up: Broker, kafka_proxy: TcpProxy, make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    topic = unique("aged")
    w = make_worker(kafka_up.bootstrap, SPILLWAY_DRAIN_MAX_AGE="2s")
    kafka_proxy.cut()
    c = client(w.thrift_port)
    assert c.appendBatch([event(f"old-{j}", topic=topic) for j in range(20)]) == Status.OK
    time.sleep(2.5)
    kafka_proxy.restore()
    wait_until(lambda: drained(w), 60, what="the buffer to empty")
    assert c.appendBatch([event("fresh", topic=topic)]) == Status.OK
    got = [r.value for r in read_topic(kafka_up.bootstrap, topic, 1, settle=2.0)]
    assert got == [b"fresh"]
    [archived] = list((w.directory / "archive").glob("*.gz"))
    plain = tmp_path / "archived.seg"
    plain.write_bytes(gzip.decompress(archived.read_bytes()))
    assert plain.read_bytes()[:HEADER_LEN] == FILE_HEADER
    recs = [r for _, _, r in iter_records(plain)]
    assert sorted(r.value for r in recs) == sorted(f"old-{j}".encode() for j in range(20))
    assert all(r.topic == topic for r in recs)
    assert w.status()["drain"]["archived_total"] == 20
