"""The failover penalty and state machine, with time passed in."""

from __future__ import annotations

import math

from agents.supervisor import Failover, SinkState, penalty


def test_penalty_doubles_from_one_second_up_to_the_cap() -> None:
    assert [penalty(n, 30.0) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_penalty_never_overflows_however_long_the_outage() -> None:
    for n in (21, 22, 63, 64, 1000, 10_000, 10**9):
        p = penalty(n, 30.0)
        assert math.isfinite(p) and 0 < p <= 30.0


def test_jitter_stays_within_a_fifth_below_the_schedule() -> None:
    assert penalty(3, 30.0, 0.0) == 4 * 0.8
    assert penalty(3, 30.0, 1.0) == 4
    assert penalty(10, 30.0, 0.5) == 30 * 0.9


def test_a_failure_parks_kafka_and_a_probe_brings_it_back() -> None:
    f = Failover(30.0, rng=lambda: 1.0)
    assert f.kafka_usable
    assert f.failed(now=100.0) is True
    assert f.state is SinkState.PARKED and not f.kafka_usable
    assert f.failed(now=100.1) is False  # concurrent failures do not add up
    assert not f.probe_due(100.5) and f.probe_due(101.0)
    assert f.probed(False, now=101.0) is False
    assert f.parked_until == 103.0  # second failure: 2 s
    assert f.probed(True, now=103.0) is True
    assert f.kafka_usable
    f.succeeded()
    assert f.failures == 0


def test_thousands_of_failed_probes_keep_the_penalty_at_the_cap() -> None:
    f = Failover(30.0, rng=lambda: 1.0)
    f.failed(0.0)
    now = 0.0
    for _ in range(5000):
        now = f.parked_until
        f.probed(False, now)
    assert f.failures == 5001
    assert f.parked_until - now == 30.0
