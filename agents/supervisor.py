"""Supervisor stage: decides where live events go, Kafka first, the disk buffer second.

Like Flume's failover sink processor, corrected: a failed Kafka is *parked* for
``1 s · 2^(n-1)`` (jittered, capped at ``failover.max_penalty``, no overflow however
long the outage), and brought back by an active probe (a metadata request), not by
risking a live batch. :class:`Failover` is the pure state machine; the
:class:`Supervisor` applies it: :meth:`Supervisor.deliver` answers one call, the
supervisor agent (``topology/app.py``) feeds it the sink's outcomes, and the probe
timer calls :meth:`Supervisor.tick`.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from agents.records import Delivery, Record
from agents.thrift_source import Status
from topology.errors import BufferError, BufferFull
from topology.metrics import Metrics
from topology.ratelog import Throttled
from topology.settings import FailoverSettings

logger = logging.getLogger(__name__)


def penalty(failures: int, max_penalty: float, rand: float = 1.0) -> float:
    """Seconds to park Kafka after ``failures`` consecutive failures (>= 1).

    ``rand`` in [0, 1] is the jitter draw: the result lies in [80 %, 100 %] of
    ``min(max_penalty, 2^(failures-1))``. The exponent is clamped before it is
    raised, so no failure count overflows (Flume's ``1 << n`` did after ~21).
    """
    base = min(max_penalty, 2.0 ** min(max(failures, 1) - 1, 62))
    return base * (0.8 + 0.2 * rand)


class SinkState(enum.Enum):
    UP = "up"
    PARKED = "parked"


class Failover:
    """Kafka's state: up, or parked until a probe is due. Pure; time is passed in."""

    def __init__(self, max_penalty: float, rng: Callable[[], float] = random.random) -> None:
        self.max_penalty = max_penalty
        self.rng = rng
        self.state = SinkState.UP
        self.failures = 0
        self.parked_until = 0.0
        self.parked_since: float | None = None

    @property
    def kafka_usable(self) -> bool:
        return self.state is SinkState.UP

    def failed(self, now: float) -> bool:
        """A live batch failed. True when this parks Kafka (a transition)."""
        if self.state is SinkState.PARKED:
            return False
        self.state = SinkState.PARKED
        self.parked_since = now
        self.failures += 1
        self.parked_until = now + penalty(self.failures, self.max_penalty, self.rng())
        return True

    def probe_due(self, now: float) -> bool:
        return self.state is SinkState.PARKED and now >= self.parked_until

    def probed(self, ok: bool, now: float) -> bool:
        """Record a probe's result. True when Kafka comes back (a transition)."""
        if ok:
            self.state = SinkState.UP
            self.parked_since = None
            return True
        self.failures += 1
        self.parked_until = now + penalty(self.failures, self.max_penalty, self.rng())
        return False

    def succeeded(self) -> None:
        """A live batch was acknowledged: the penalty schedule starts over."""
        if self.state is SinkState.UP:
            self.failures = 0

    def current_penalty(self, now: float) -> float:
        return max(0.0, self.parked_until - now) if self.state is SinkState.PARKED else 0.0


class Sink(Protocol):
    async def send_within(self, records: Sequence[Record], timeout: float, *, whole: bool = False) -> Delivery: ...
    async def probe(self, timeout: float) -> bool: ...


class Buffer(Protocol):
    async def append(self, records: Sequence[Record]) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the sink reports to the supervisor agent after a live batch."""

    ok: bool
    events: int
    error: str = ""


class Supervisor:
    def __init__(self, settings: FailoverSettings, sink: Sink, buffer: Buffer, metrics: Metrics,
                 report: Callable[[Outcome], Awaitable[None]] | None = None) -> None:
        self.settings = settings
        self.sink = sink
        self.buffer = buffer
        self.metrics = metrics
        self.failover = Failover(settings.max_penalty)
        self.report = report or self.observe
        self._throttled = Throttled(logger)
        self._spilled_during_outage = 0
        self._acked_kafka = metrics.acked.labels(sink="kafka")
        self._acked_disk = metrics.acked.labels(sink="disk")
        metrics.sink_up.set(1)

    async def deliver(self, records: Sequence[Record]) -> int:
        """Make ``records`` durable and answer the Status for the call that brought them."""
        to_disk: Sequence[Record] = records
        if self.failover.kafka_usable:
            delivery = await self._try_kafka(records)
            if delivery.refused:
                return self._refuse(records, delivery)
            to_disk = delivery.unacked
            if not to_disk:
                return Status.OK
        try:
            await self.buffer.append(to_disk)
        except BufferFull:
            self.metrics.failed.inc(len(records))
            self._throttled.log(logging.WARNING, "full", "disk buffer full: answering FAILED (back-pressure)")
            return Status.FAILED
        except BufferError as exc:
            self.metrics.failed.inc(len(records))
            self._throttled.log(logging.ERROR, "disk", "disk buffer cannot write: %s; answering FAILED", exc)
            return Status.FAILED
        self._acked_disk.inc(len(to_disk))
        self._acked_kafka.inc(len(records) - len(to_disk))
        self._spilled_during_outage += len(to_disk)
        return Status.OK

    def _refuse(self, records: Sequence[Record], delivery: Delivery) -> int:
        """Kafka refuses part of the call for good: the call is answered ERROR whole, Kafka stays up.

        Nothing goes to disk (the client must fix the call); events of it that Kafka already
        acknowledged stay there, and a client resending the rest may duplicate them.
        """
        record, refusal = delivery.refused[0]
        self.metrics.refused.labels(reason=refusal.reason).inc(len(records))
        self._throttled.log(logging.WARNING, f"refused:{refusal.reason}",
                            "Kafka refuses topic %s for good (%s): answering ERROR for a call of %d events; "
                            "Kafka stays up for everyone else", record.topic, refusal, len(records))
        return Status.ERROR

    async def _try_kafka(self, records: Sequence[Record]) -> Delivery:
        """Send to Kafka within failover.timeout; report the outcome to the supervisor agent."""
        delivery = await self.sink.send_within(records, self.settings.timeout, whole=True)
        if delivery.unacked:
            await self.report(Outcome(False, len(delivery.unacked), delivery.error or "not acknowledged"))
        elif not delivery.refused:
            self._acked_kafka.inc(len(records))
            if self.failover.failures:
                await self.report(Outcome(True, len(records)))
        return delivery

    async def observe(self, outcome: Outcome) -> None:
        """Apply one outcome of a live batch to the failover state (the supervisor agent's body)."""
        now = time.monotonic()
        if outcome.ok:
            self.failover.succeeded()
            return
        self.metrics.sink_errors.inc()
        if self.failover.failed(now):
            self.metrics.sink_up.set(0)
            self._spilled_during_outage = 0
            logger.error("Kafka is DOWN (%s): live events go to the disk buffer; next probe in %.1fs",
                         outcome.error, self.failover.current_penalty(now))

    async def tick(self) -> None:
        """Probe a parked Kafka when its penalty is over (the probe timer's body)."""
        now = time.monotonic()
        if not self.failover.probe_due(now):
            return
        ok = await self.sink.probe(self.settings.timeout)
        now = time.monotonic()
        parked_since = self.failover.parked_since or now
        if self.failover.probed(ok, now):
            self.metrics.sink_up.set(1)
            logger.warning("Kafka is BACK after %.1fs: live events go to Kafka again; %d events were "
                           "buffered to disk meanwhile", now - parked_since, self._spilled_during_outage)
        else:
            self._throttled.log(logging.WARNING, "probe", "Kafka still down after %.0fs (probe %d failed); "
                                "next probe in %.1fs", now - parked_since, self.failover.failures,
                                self.failover.current_penalty(now))
