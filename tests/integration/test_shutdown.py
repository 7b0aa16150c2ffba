"""Graceful shutdown: SIGTERM under load loses nothing acknowledged."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from helpers import Load, TcpProxy, Worker, check_all_in_kafka, unique, wait_until

from devtools.kafka import Broker

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("kafka_reachable", [True, False])
def test_sigterm_under_load_exits_in_time_and_loses_nothing_acknowledged(
        kafka_up: Broker, kafka_proxy: TcpProxy, make_worker: Callable[..., Worker], kafka_reachable: bool) -> None:
    topics = [unique("term-a"), unique("term-b")]
    w = make_worker(kafka_up.bootstrap)
    if not kafka_reachable:
        kafka_proxy.cut()
    load = Load(w.thrift_port, topics, clients=4, batch=100).start()
    wait_until(lambda: len(load.results) > 40, 60, what="load to flow")
    t0 = time.monotonic()
    code = w.stop(timeout=40)
    took = time.monotonic() - t0
    load.stop()
    assert code == 0, w.log_tail()
    assert took < 30
    acked = load.acked()
    assert acked

    kafka_proxy.restore()
    w.start()  # anything spilled to disk drains now
    wait_until(lambda: w.status()["buffer"]["events"] == 0, 90, what="the buffer to drain")
    check_all_in_kafka(kafka_up.bootstrap, acked)
