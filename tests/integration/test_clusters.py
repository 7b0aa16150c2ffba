"""Failover across two real Kafka clusters by priority (Flume's failover sink group), then the disk.

The primary is the session broker; the secondary (``[[kafka.secondary]]``, name ``dr``) is the
second session broker, which has auto-create off, so its topics are created first."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import Status, TcpProxy, Worker, client, create_topics, event, read_topic, unique, wait_until

from devtools.kafka import Broker

pytestmark = pytest.mark.kafka


def acked(w: Worker, sink: str) -> float:
    for line in w.get("/metrics").splitlines():
        name, _, value = line.rpartition(" ")
        if name == f'spillway_events_acked_total{{sink="{sink}"}}':
            return float(value)
    raise AssertionError(f"no acked counter for {sink}")


def send(c: Any, topic: str, tag: str, calls: int = 10, size: int = 20) -> list[bytes]:
    bodies = []
    for i in range(calls):
        evs = [event(f"{tag}-{i}-{j}", topic=topic, key=f"k{j}") for j in range(size)]
        assert c.appendBatch(evs) == Status.OK
        bodies += [e.body for e in evs]
    return bodies


def sinks(w: Worker) -> dict[str, str]:
    return {s["name"]: s["state"] for s in w.status()["sinks"]}


def test_calls_fail_over_to_the_secondary_cluster_then_to_disk_and_come_back_to_the_primary(
        kafka_up: Broker, kafka_proxy: TcpProxy, strict_up: Broker, strict_proxy: TcpProxy,
        make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    topic = unique("clusters")
    create_topics(strict_up.bootstrap, topic)
    config = tmp_path / "spillway.toml"
    config.write_text(f'[[kafka.secondary]]\nname = "dr"\nbootstrap_servers = "{strict_up.bootstrap}"\n'
                      f'request_timeout = "3s"\n')
    w = make_worker(kafka_up.bootstrap, SPILLWAY_CONFIG=str(config))
    assert sinks(w) == {"kafka": "up", "dr": "up"} and w.status()["live"] == "kafka"
    c = client(w.thrift_port)
    sent = send(c, topic, "healthy")
    assert acked(w, "kafka") == len(sent) and acked(w, "dr") == 0

    # 1. the primary is killed: calls go to the secondary, none to disk
    kafka_up.kill()
    try:
        on_dr = send(c, topic, "primary-down")
        st = w.status()
        assert st["sink"]["state"] == "parked" and st["live"] == "dr"
        assert st["counters"]["acked_disk"] == 0 and st["buffer"]["events"] == 0
        assert acked(w, "dr") == len(on_dr)

        # 2. both down: calls go to disk
        strict_proxy.cut()
        on_disk = send(c, topic, "both-down", calls=5)
        st = w.status()
        assert st["live"] == "disk" and st["counters"]["acked_disk"] == len(on_disk)
        assert st["buffer"]["events"] == len(on_disk)
    finally:
        kafka_up.start(timeout=120)  # 3. the primary comes back (the secondary stays cut)

    wait_until(lambda: w.status()["live"] == "kafka", 60, what="the primary to be live again")
    wait_until(lambda: w.status()["buffer"]["events"] == 0, 60, what="the drain to empty the buffer")
    before = acked(w, "kafka")
    back = send(c, topic, "primary-back", calls=5)
    assert acked(w, "kafka") == before + len(back)  # live traffic on the primary
    strict_proxy.restore()
    c.close()

    # 4. every acknowledged event is in one of the clusters: the drained ones on the primary
    on_primary = {r.value for r in read_topic(kafka_up.bootstrap, topic, len(sent) + len(on_disk) + len(back),
                                               settle=1.0)}
    on_secondary = {r.value for r in read_topic(strict_up.bootstrap, topic, len(on_dr), settle=1.0)}
    assert set(sent + on_disk + back) <= on_primary
    assert set(on_dr) <= on_secondary
    assert not (set(on_dr) - on_secondary - on_primary)
    log = w.log_tail(300)
    assert "Kafka 'kafka' is DOWN" in log and "live events go to Kafka sink 'dr'" in log
