"""Supervisor stage: Flume's failover sink processor, corrected.

The sinks in priority order: the primary Kafka cluster, then each ``[[kafka.secondary]]``,
then the disk buffer. Each Kafka sink has its own :class:`Failover` state: a failed one is
*parked* for ``1 s · 2^(n-1)`` (jittered, capped at ``failover.max_penalty``, no overflow
however long the outage), and brought back by an active probe (a metadata request), not
by risking a live batch. :class:`Failover` is the pure state machine; the
:class:`Supervisor` applies it: it says which sink stage is live (:meth:`Supervisor.forward`
sends a call's batch to the first one up after a given one, else to the spill channel), the
supervisor agent feeds it the sinks' outcomes (:meth:`Supervisor.observe`), and the probe
timer calls :meth:`Supervisor.tick`.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agents.records import Batch, Delivery, Record
from agents.thrift_source import Status
from core.metrics import Metrics
from core.ratelog import Throttled
from core.settings import FailoverSettings

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
    """What the supervisor needs of a Kafka sink."""

    name: str

    async def send_within(self, records: Sequence[Record],
                          timeout: float, *, whole: bool = False) -> Delivery: ...  # noqa: ASYNC109
    async def probe(self, timeout: float) -> bool: ...  # noqa: ASYNC109


class Channel(Protocol):
    async def send(self, *, value: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a Kafka sink stage reports to the supervisor agent after a batch."""

    sink: str
    ok: bool
    events: int
    error: str = ""


class Supervisor:
    """Kafka sinks by priority, each with its penalty; which stage takes a call next."""

    def __init__(self, settings: FailoverSettings, sinks: Sequence[Sink], metrics: Metrics,
                 report: Callable[[Outcome], Awaitable[None]] | None = None) -> None:
        if not sinks:
            raise ValueError("at least one Kafka sink")
        self.settings = settings
        self.sinks = list(sinks)
        self.metrics = metrics
        self.failovers = [Failover(settings.max_penalty) for _ in self.sinks]
        self.report = report or self.observe
        self.channels: list[Channel] = []
        self.spill: Channel | None = None
        self._index = {sink.name: i for i, sink in enumerate(self.sinks)}
        self._throttled = Throttled(logger)
        #: events handed to the disk buffer since the primary last came back (or since start)
        self._spilled_during_outage = 0
        for sink in self.sinks:
            metrics.kafka_up.labels(sink=sink.name).set(1)
            metrics.acked.labels(sink=sink.name)  # present from the start, at 0
        metrics.sink_up.set(1)

    def connect(self, channels: Sequence[Channel], spill: Channel) -> None:
        """The channels of the sink stages, in the sinks' order, and the disk buffer's."""
        if len(channels) != len(self.sinks):
            raise ValueError("one channel per Kafka sink")
        self.channels, self.spill = list(channels), spill

    @property
    def failover(self) -> Failover:
        """The primary's state."""
        return self.failovers[0]

    @property
    def kafka_usable(self) -> bool:
        """True while any Kafka cluster takes traffic."""
        return any(f.kafka_usable for f in self.failovers)

    def live(self, after: int = -1) -> int | None:
        """The first sink up after position ``after`` (-1: from the primary), or None: the disk."""
        for i in range(after + 1, len(self.sinks)):
            if self.failovers[i].kafka_usable:
                return i
        return None

    def first_up(self) -> Sink | None:
        i = self.live()
        return None if i is None else self.sinks[i]

    async def forward(self, batch: Batch, after: int = -1) -> None:
        """Hand a call's batch to the next live sink stage after ``after``, else to the disk buffer."""
        i = self.live(after)
        if i is None:
            assert self.spill is not None, "Supervisor.connect() was not called"
            self._spilled_during_outage += len(batch.records)
            await self.spill.send(value=batch)
        else:
            await self.channels[i].send(value=batch)

    async def observe(self, outcome: Outcome) -> None:
        """Apply one outcome of a sink to its failover state (the supervisor agent's body)."""
        i = self._index.get(outcome.sink)
        if i is None:
            logger.error("supervisor: outcome of an unknown sink %r", outcome.sink)
            return
        failover, now = self.failovers[i], time.monotonic()
        if outcome.ok:
            failover.succeeded()
            return
        self.metrics.sink_errors.inc()
        if failover.failed(now):
            self.metrics.kafka_up.labels(sink=outcome.sink).set(0)
            self._set_sink_up()
            nxt = self.live()
            where = "the disk buffer" if nxt is None else f"Kafka sink {self.sinks[nxt].name!r}"
            logger.error("Kafka %r is DOWN (%s): live events go to %s; next probe in %.1fs",
                         outcome.sink, outcome.error, where, failover.current_penalty(now))

    def _set_sink_up(self) -> None:
        self.metrics.sink_up.set(1 if self.kafka_usable else 0)

    async def tick(self) -> None:
        """Probe each parked Kafka whose penalty is over (the probe timer's body)."""
        due = [i for i, f in enumerate(self.failovers) if f.probe_due(time.monotonic())]
        for i in due:
            await self._probe(i)

    async def _probe(self, i: int) -> None:
        sink, failover = self.sinks[i], self.failovers[i]
        ok = await sink.probe(self.settings.timeout)
        now = time.monotonic()
        parked_since = failover.parked_since or now
        if failover.probed(ok, now):
            self.metrics.kafka_up.labels(sink=sink.name).set(1)
            self._set_sink_up()
            logger.warning("Kafka %r is BACK after %.1fs: it takes live events again%s", sink.name,
                           now - parked_since, "" if i else f"; {self._spilled_during_outage} events were "
                           "buffered to disk meanwhile")
            if i == 0:
                self._spilled_during_outage = 0  # counted from here to the next recovery
        else:
            self._throttled.log(logging.WARNING, f"probe:{sink.name}", "Kafka %r still down after %.0fs (probe "
                                "%d failed); next probe in %.1fs", sink.name, now - parked_since,
                                failover.failures, failover.current_penalty(now))


class DrainSender:
    """The drain's Kafka: the highest-priority cluster that is up, at each chunk, through that
    cluster's sink in ``sinks`` when given (the drain's own producers), else the live one."""

    def __init__(self, supervisor: Supervisor, sinks: Sequence[Sink] | None = None) -> None:
        self.supervisor = supervisor
        self.sinks = sinks

    async def send_within(self, records: Sequence[Record], timeout: float) -> Delivery:  # noqa: ASYNC109
        i = self.supervisor.live()
        if i is None:
            return Delivery(list(records), "no Kafka cluster is up")
        sink = self.supervisor.sinks[i] if self.sinks is None else self.sinks[i]
        delivery = await sink.send_within(records, timeout)
        if delivery.unacked:
            await self.supervisor.report(Outcome(sink.name, False, len(delivery.unacked),
                                                 f"drain: {delivery.error}"))
        return delivery


def settle(batch: Batch, status: int, metrics: Metrics, sink: str | None = None) -> None:
    """Answer a call: ``OK`` when its last events became durable in ``sink`` (counted with what
    earlier stages made durable), ``FAILED`` or ``ERROR`` otherwise. A call is answered once."""
    if batch.reply.done():
        return
    if status == Status.OK:
        for name, n in batch.durable:
            metrics.acked.labels(sink=name).inc(n)
        if sink is not None and batch.records:
            metrics.acked.labels(sink=sink).inc(len(batch.records))
    elif status == Status.FAILED:
        metrics.failed.inc(batch.total)
    batch.reply.set_result(status)
