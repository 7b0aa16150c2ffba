"""Events Kafka refuses for good, against a real broker run as production clusters are
(``auto.create.topics.enable=false``): one bad event is refused alone, at once; Kafka stays
up for every other client; in the drain it is set aside in undeliverable/, never retried
forever. Also the honest-status parts of issue 9 (fsync off, /ready)."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    Status,
    TcpProxy,
    Worker,
    client,
    create_topics,
    event,
    read_topic,
    unique,
    wait_until,
)

from agents.segments import iter_records
from devtools.kafka import Broker

pytestmark = pytest.mark.kafka


def metric(w: Worker, sample: str) -> float:
    """One sample of /metrics, e.g. ``spillway_events_refused_total{reason="too_large"}``."""
    for line in w.get("/metrics").splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    raise AssertionError(f"{sample} not in /metrics")


def test_unknown_topic_is_refused_at_once_and_kafka_stays_up_for_everyone(
        strict_up: Broker, make_worker: Callable[..., Worker]) -> None:
    good = unique("good")
    create_topics(strict_up.bootstrap, good)
    w = make_worker(strict_up.bootstrap)
    c = client(w.thrift_port)
    assert c.appendBatch([event(f"warm-{i}", topic=good) for i in range(5)]) == Status.OK

    missing = unique("never-created")
    t0 = time.monotonic()
    status = c.appendBatch([event("a", topic=good), event("poison", topic=missing), event("b", topic=good)])
    took = time.monotonic() - t0
    assert status == Status.ERROR
    # Kafka said no: no failover.timeout (3 s here) waited out, no spill to disk
    assert took < 3.0, f"answered after {took:.1f}s"

    st = w.status()
    assert st["sink"]["state"] == "up" and st["counters"]["acked_disk"] == 0
    assert metric(w, 'spillway_events_refused_total{reason="unknown_topic"}') == 3
    before = st["counters"]["acked_kafka"]
    for i in range(3):  # the next calls go to Kafka, not to the disk
        assert c.appendBatch([event(f"after-{i}-{j}", topic=good) for j in range(10)]) == Status.OK
    after = w.status()["counters"]
    assert after["acked_kafka"] == before + 30 and after["acked_disk"] == 0
    got = sorted(r.value for r in read_topic(strict_up.bootstrap, good, 35, settle=1.0))
    assert b"poison" not in got and len(got) == 35
    assert "Kafka refuses topic" in w.log_tail(200)
    c.close()


def test_one_record_over_the_topics_size_limit_is_refused_alone_while_others_share_its_batches(
        strict_up: Broker, make_worker: Callable[..., Worker]) -> None:
    topic = unique("small")
    create_topics(strict_up.bootstrap, topic, partitions=1, config={"max.message.bytes": "20000"})
    w = make_worker(strict_up.bootstrap)

    def small_calls(n: int) -> list[int]:
        c = client(w.thrift_port)
        out = [c.appendBatch([event(f"s{n}-{i}-{j}", topic=topic) for j in range(20)]) for i in range(15)]
        c.close()
        return out

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        smalls = [pool.submit(small_calls, n) for n in range(4)]
        big_client = client(w.thrift_port)
        big = pool.submit(big_client.appendBatch, [event(b"B" * 60_000, topic=topic)])
        assert big.result(30) == Status.ERROR
        statuses = [s for f in smalls for s in f.result(60)]
    big_client.close()
    assert statuses == [Status.OK] * len(statuses)
    assert w.status()["sink"]["state"] == "up"
    assert metric(w, 'spillway_events_refused_total{reason="too_large"}') == 1
    got = read_topic(strict_up.bootstrap, topic, len(statuses) * 20, settle=1.0)
    assert len({r.value for r in got}) == len(statuses) * 20


def test_poison_event_buffered_in_an_outage_goes_to_undeliverable_and_replays_once_its_topic_exists(
        strict_up: Broker, strict_proxy: TcpProxy, make_worker: Callable[..., Worker]) -> None:
    good, missing = unique("good"), unique("poison")
    create_topics(strict_up.bootstrap, good)
    w = make_worker(strict_up.bootstrap)
    c = client(w.thrift_port)
    strict_proxy.cut()
    try:
        calls = [[event(f"g{i}-{j}", topic=good, key=f"k{j}") for j in range(10)] for i in range(20)]
        calls[7].insert(3, event("the-poison", topic=missing, key="pk", extra="kept"))
        assert [c.appendBatch(evs) for evs in calls] == [Status.OK] * 20  # durable on disk
        assert w.status()["counters"]["acked_disk"] == 201
    finally:
        strict_proxy.restore()

    wait_until(lambda: w.status()["buffer"]["events"] == 0, 60, what="the buffer to drain")
    got = read_topic(strict_up.bootstrap, good, 200, settle=1.0)
    assert sorted(r.value for r in got) == sorted(e.body for evs in calls for e in evs if e.body != b"the-poison")
    st = w.status()
    assert st["sink"]["state"] == "up" and st["undeliverable"]["events_total"] == 1
    sink_errors = st["counters"]["sink_errors"]
    time.sleep(2)  # the drain does not flap Kafka over it
    assert w.status()["counters"]["sink_errors"] == sink_errors
    udir = Path(st["undeliverable"]["directory"])
    kept = [r for p in udir.glob("*.seg") for _, _, r in iter_records(p)]
    assert [(r.topic, r.key, dict(r.headers)["extra"], r.value) for r in kept] == [
        (missing, b"pk", b"kept", b"the-poison")]
    log = w.log_tail(300)
    assert f"topic {missing} for good" in log and "UnknownTopicOrPartition" in log

    # What the README tells an operator to do: create the topic, then replay the directory.
    create_topics(strict_up.bootstrap, missing)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
    env["SPILLWAY_KAFKA_BOOTSTRAP_SERVERS"] = strict_up.bootstrap
    inspect = subprocess.run([sys.executable, "-m", "topology.cli", "buffer", "inspect", str(udir)], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=60)
    assert inspect.returncode == 0 and missing in inspect.stdout
    replay = subprocess.run([sys.executable, "-m", "topology.cli", "replay", str(udir)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stderr
    landed = read_topic(strict_up.bootstrap, missing, 1, settle=0.5)
    assert [(r.key, r.value) for r in landed] == [(b"pk", b"the-poison")]
    c.close()


def test_fsync_off_is_warned_at_start_and_status_says_not_durable(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    w = make_worker(kafka_up.bootstrap, SPILLWAY_BUFFER_FSYNC="false")
    assert w.status()["buffer"]["durable"] is False
    assert "buffer.fsync is false" in w.log_tail(200)
    on = make_worker(kafka_up.bootstrap, name="fsync-on")
    assert on.status()["buffer"]["durable"] is True
    ready = on.get("/ready")
    assert ready == {"ready": True, "source": True, "buffer": True}
