"""The wiring: builds every stage from the settings and starts/stops them in order.

    ThriftSource --(Envelope)--> ingress channel --> router agent --> Supervisor.deliver
                                                                      |-> KafkaSink (acks=all)
                                                                      '-> DiskBuffer (fsync)
    drain timer: DiskBuffer closed segments --> Kafka, each event to its own topic

Shutdown (SIGTERM/SIGINT): stop intake, let calls in flight finish (each is answered
only once durable), fsync and close the buffer, close the producer, within a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from mode import Service

from agents.disk_buffer import DiskBuffer
from agents.drain import Drain
from agents.interceptors import Chain
from agents.kafka_sink import KafkaSink
from agents.router import Router
from agents.supervisor import Outcome, Supervisor
from agents.thrift_source import Status, ThriftSource, now_ms
from topology.errors import RoutingError
from topology.metrics import Metrics
from topology.ratelog import Throttled, drop_debug_overhead, throttle_library_logs
from topology.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Envelope:
    """One client call travelling through the ingress channel; ``reply`` gets its Status."""

    events: Sequence[Any]
    received_ms: int
    reply: asyncio.Future[int] = field(repr=False)


class Pipeline(Service):
    """All stages of one spillway node."""

    shutdown_deadline = 20.0

    def __init__(self, settings: Settings, ingress: faust.ChannelT, outcomes: faust.ChannelT,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.ingress = ingress
        self.outcomes = outcomes
        self.metrics = Metrics()
        self.metrics.buffer_max_bytes.set(settings.buffer.max_bytes)
        self.interceptors = Chain(settings.interceptors, on_filtered=self._count_filtered)
        for label in self.interceptors.filter_labels():
            self.metrics.filtered.labels(interceptor=label)  # present from the start, at 0
        self.router = Router(settings.router)
        self.sink = KafkaSink(settings.kafka, on_late_ack=self.metrics.duplicates.inc)
        b = settings.buffer
        self.buffer = DiskBuffer(b.directory, max_bytes=b.max_bytes, segment_max_bytes=b.segment_max_bytes,
                                 segment_max_age=b.segment_max_age, fsync=b.fsync)
        self.kafka_supervisor = Supervisor(settings.failover, self.sink, self.buffer, self.metrics,
                                     report=self._report)
        self.drain = Drain(settings.drain, self.buffer, self.sink, self.kafka_supervisor, self.metrics)
        self.source = ThriftSource(settings.source.thrift, self.handle, self.metrics)
        self.started_at = time.time()
        self._inflight: set[asyncio.Task[None]] = set()
        self._quarantined_seen = 0
        self._throttled = Throttled(logger)
        # A call is never left waiting forever, whatever happens downstream.
        self._reply_guard = settings.failover.timeout * 2 + 30.0

    async def on_start(self) -> None:
        drop_debug_overhead()
        throttle_library_logs()
        if not self.settings.buffer.fsync:
            logger.warning("buffer.fsync is false: events answered OK from the disk buffer are NOT durable "
                           "(a crash or power cut can lose them); /status shows durable: false")
        await self.buffer.start()
        await self.sink.start()
        await self.source.start()
        app = self.app_or_none()
        if app is not None:
            app.flow_control.resume()
        logger.info("spillway ready: thrift on port %s, buffer at %s", self.source.port,
                    self.settings.buffer.directory)

    def app_or_none(self) -> faust.App | None:
        return getattr(self.ingress, "app", None)

    async def on_stop(self) -> None:
        logger.info("spillway stopping: closing intake")
        await self.source.stop_intake()
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=self.shutdown_deadline)
            if pending:
                logger.error("%d calls still in flight at the shutdown deadline; they were not answered OK",
                             len(pending))
        await self.source.stop()
        await self.buffer.stop()
        await self.sink.stop()
        logger.info("spillway stopped")

    def refresh_gauges(self) -> None:
        """Set the buffer gauges from the buffer's own accounting (at scrape time)."""
        st = self.buffer.stats()
        m = self.metrics
        m.buffer_bytes.set(st.bytes)
        m.buffer_events.set(st.events)
        m.buffer_segments.set(st.segments)
        m.buffer_oldest_age.set(0 if st.oldest_timestamp_ms is None
                                else max(0.0, time.time() - st.oldest_timestamp_ms / 1000))
        m.quarantined.inc(max(0, st.quarantined_records - self._quarantined_seen))
        self._quarantined_seen = max(self._quarantined_seen, st.quarantined_records)

    # -- source -> ingress -------------------------------------------------------------------------

    async def handle(self, events: Sequence[Any]) -> int:
        """The source's handler: hands the call to the ingress channel, waits for its Status."""
        reply: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self.ingress.send(value=Envelope(events, now_ms(), reply))
        try:
            return await asyncio.wait_for(asyncio.shield(reply), self._reply_guard)
        except TimeoutError:
            self._throttled.log(logging.ERROR, "guard", "a call got no answer within %.0fs; answering FAILED",
                                self._reply_guard)
            return Status.FAILED

    # -- the router agent's body -------------------------------------------------------------------

    def dispatch(self, envelope: Envelope) -> None:
        """Route one call and start its delivery; never raises, never waits on Kafka."""
        try:
            events = envelope.events
            if self.interceptors.active:  # Flume's interceptors, in order; they may filter events out
                events = self.interceptors.apply(events, envelope.received_ms)
            records = self.router.route(events, envelope.received_ms)
        except RoutingError as exc:
            self.metrics.refused.labels(reason="topic").inc(len(envelope.events))
            self._throttled.log(logging.WARNING, "route", "router: ERROR for a call: %s", exc)
            _answer(envelope.reply, Status.ERROR)
            return
        except Exception:  # a bug must cost this call a retry, never the router agent
            self.metrics.router_errors.inc()
            self.metrics.failed.inc(len(envelope.events))
            logger.exception("router: unexpected error routing a call of %d events; answering FAILED",
                             len(envelope.events))
            _answer(envelope.reply, Status.FAILED)
            return
        if not records:  # every event was filtered out: nothing to make durable (Flume answers OK)
            _answer(envelope.reply, Status.OK)
            return
        task = asyncio.create_task(self._deliver(records, envelope.reply))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _deliver(self, records: Sequence[Any], reply: asyncio.Future[int]) -> None:
        try:
            status = await self.kafka_supervisor.deliver(records)
        except BaseException as exc:  # answer FAILED, never OK, for anything unforeseen
            logger.exception("delivery failed unexpectedly; answering FAILED")
            self.metrics.failed.inc(len(records))
            _answer(reply, Status.FAILED)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        _answer(reply, status)

    def _count_filtered(self, interceptor: str, n: int) -> None:
        self.metrics.filtered.labels(interceptor=interceptor).inc(n)

    async def _report(self, outcome: Outcome) -> None:
        await self.outcomes.send(value=outcome)


def _answer(reply: asyncio.Future[int], status: int) -> None:
    if not reply.done():
        reply.set_result(status)
