"""The wiring: builds every stage of a node from the settings, starts and stops them in order.

    ThriftSource, AvroSource, HttpSource --Envelope--> ingress --> RouterStage --Batch--> the live sink stage:
        kafka[0] (primary) --> kafka[1..] (secondaries) --> spill (disk buffer), by priority
    each Kafka stage --Outcome--> outcomes --> Supervisor (parks, probes, picks the live stage)
    Drain: closed buffer segments --> the highest-priority cluster that is up

``topology/app.py`` makes the channels and registers each stage's body as a Faust agent.

A *drain-only* node (``settings.process.drain_only``: a buffer directory left by a run with
more worker processes, see ``topology/processes.py``) starts the buffer and the sinks but
no source, drains, and tells the worker to stop once its buffer is empty (:attr:`Pipeline.drained`).

Shutdown (SIGTERM/SIGINT): stop intake, let calls in flight finish (each is answered only
once durable), fsync and close the buffer, close the producers, within a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import faust
from mode import Service

from agents.avro_source import AvroSource
from agents.disk_buffer import DiskBuffer
from agents.drain import Drain
from agents.http_source import HttpSource
from agents.ingress import RouterStage
from agents.interceptors import Chain
from agents.kafka_sink import KafkaSink
from agents.kafka_stage import KafkaStage
from agents.records import Envelope
from agents.router import Router
from agents.source_base import StreamSource
from agents.spill import SpillStage
from agents.supervisor import DrainSender, Outcome, Supervisor
from agents.thrift_source import Status, ThriftSource, now_ms
from core.errors import BufferError
from core.metrics import Metrics
from core.ratelog import Throttled, drop_debug_overhead, throttle_library_logs
from core.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["Envelope", "Pipeline"]


class Pipeline(Service):
    """All stages of one spillway node, built (not started) from the settings."""

    shutdown_deadline = 20.0

    def __init__(self, settings: Settings, ingress: faust.ChannelT, outcomes: faust.ChannelT,
                 kafka: Sequence[faust.ChannelT] = (), spill: faust.ChannelT | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.ingress = ingress
        self.outcomes = outcomes
        self.metrics = m = Metrics()
        m.buffer_max_bytes.set(settings.buffer.max_bytes)
        interceptors = Chain(settings.interceptors, on_filtered=self._count_filtered)
        for label in interceptors.filter_labels():
            m.filtered.labels(interceptor=label)  # present from the start, at 0
        b = settings.buffer
        self.buffer = DiskBuffer(b.directory, max_bytes=b.max_bytes, segment_max_bytes=b.segment_max_bytes,
                                 segment_max_age=b.segment_max_age, fsync=b.fsync)
        self.sinks = [KafkaSink(cluster, on_late_ack=m.duplicates.inc) for cluster in settings.kafka.clusters]
        #: the failover sink processor (not ``supervisor``: mode's Service.supervisor restarts crashed services)
        self.failover = Supervisor(settings.failover, self.sinks, m, report=self._report)
        if spill is not None:
            self.failover.connect(kafka, spill)
        self.router = RouterStage(Router(settings.router), self.failover, m, interceptors)
        self.kafka_stages = [KafkaStage(i, sink, self.failover, m, settings.failover.timeout)
                             for i, sink in enumerate(self.sinks)]
        self.spill = SpillStage(self.buffer, m)
        #: the drain's own sinks, one per cluster (``drain.own_producer``), else it shares the live ones
        self.drain_sinks = [KafkaSink(replace(cluster, client_id=f"{cluster.client_id}-drain"),
                                      on_late_ack=m.duplicates.inc)
                            for cluster in settings.kafka.clusters] if settings.drain.own_producer else []
        self.drain = Drain(settings.drain, self.buffer, DrainSender(self.failover, self.drain_sinks or None),
                           self.failover, m)
        self.drain.running = lambda: self.active  # ends its round when the node stops
        self.live_events = 0
        self.drain.live_events = lambda: self.live_events
        self.source = ThriftSource(settings.source.thrift, self.handle, m)
        self.avro = AvroSource(settings.source.avro, self.handle, m) if settings.source.avro.enabled else None
        self.http = HttpSource(settings.source.http, self.handle, m) if settings.source.http.enabled else None
        #: every source of this node, the Thrift source first (``source``: always on)
        self.sources: list[StreamSource | HttpSource] = [self.source]
        self.sources += [src for src in (self.avro, self.http) if src is not None]
        for src in self.sources:
            m.received.labels(source=src.name)  # present from the start, at 0
            m.connections.labels(source=src.name)
            m.bad_frames.labels(source=src.name)
        self.started_at = time.time()
        #: takes no events: only drains its buffer, then stops (a directory a larger run left behind)
        self.drain_only = settings.process.drain_only
        self._draining = False
        self._calls: set[asyncio.Future[int]] = set()  # replies not yet given: calls in flight
        self._quarantined_seen = 0
        self._throttled = Throttled(logger)
        # A call is never left waiting forever, whatever happens downstream.
        self._reply_guard = settings.failover.timeout * (len(self.sinks) + 1) + 30.0

    @property
    def sink(self) -> KafkaSink:
        """The primary cluster's sink."""
        return self.sinks[0]

    async def on_start(self) -> None:
        drop_debug_overhead()
        throttle_library_logs()
        if not self.settings.buffer.fsync:
            logger.warning("buffer.fsync is false: events answered OK from the disk buffer are NOT durable "
                           "(a crash or power cut can lose them); /status shows durable: false")
        try:
            await self.buffer.start()
        except BufferError as exc:  # e.g. another worker holds the directory: stop, saying why
            raise SystemExit(f"spillway: cannot start: {exc}") from None
        await asyncio.gather(*(sink.start() for sink in (*self.sinks, *self.drain_sinks)))
        app = self.app_or_none()
        if app is not None:
            app.flow_control.resume()  # the channels (outcomes to the supervisor) flow
        if self.drain_only:
            st = self.buffer.stats()
            logger.info("%s holds %d events (%d bytes) from a run with more processes; draining it, then stopping",
                        self.settings.buffer.directory.name, st.events, st.bytes)
            self._draining = True
            return
        for src in self.sources:
            await src.start()
        logger.info("spillway ready: %s, Kafka %s, buffer at %s",
                    ", ".join(f"{src.name} on port {src.port}" for src in self.sources),
                    " > ".join(f"{s.name} ({s.settings.bootstrap_servers})" for s in self.sinks),
                    self.settings.buffer.directory)

    @property
    def active(self) -> bool:
        """Started and not stopping: the sources listen (a drain-only node: its drain runs).
        The drain, probe and history timers run only then."""
        return self._draining if self.drain_only else self.source.listening

    @property
    def drained(self) -> bool:
        """A drain-only node whose buffer holds no segment any more: its work is done."""
        return self.drain_only and self._draining and self.buffer.stats().segments == 0

    @property
    def listening(self) -> bool:
        """Every source takes calls (what /ready asks of them)."""
        return all(src.listening for src in self.sources)

    def app_or_none(self) -> faust.App | None:
        return getattr(self.ingress, "app", None)

    async def on_stop(self) -> None:
        logger.info("spillway stopping: closing intake")
        self._draining = False
        for src in self.sources:
            await src.stop_intake()
        if self._calls:
            _, pending = await asyncio.wait(self._calls, timeout=self.shutdown_deadline)
            if pending:
                logger.error("%d calls still in flight at the shutdown deadline; they were not answered OK",
                             len(pending))
        for src in self.sources:
            await src.stop()
        await self.buffer.stop()
        await asyncio.gather(*(sink.stop() for sink in (*self.sinks, *self.drain_sinks)))
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
        self.live_events += len(events)
        self._calls.add(reply)
        reply.add_done_callback(self._calls.discard)
        await self.ingress.send(value=Envelope(events, now_ms(), reply))
        guard = asyncio.get_running_loop().call_later(self._reply_guard, self._unanswered, reply)
        try:
            return await asyncio.shield(reply)  # a cancelled caller leaves the call to finish (stop waits for it)
        finally:
            guard.cancel()

    def _unanswered(self, reply: asyncio.Future[int]) -> None:
        """The reply guard: a call no stage answered in time is answered FAILED (a stage's
        later answer is ignored: a call is answered once)."""
        if not reply.done():
            reply.set_result(Status.FAILED)
            self._throttled.log(logging.ERROR, "guard", "a call got no answer within %.0fs; answering FAILED",
                                self._reply_guard)

    def _count_filtered(self, interceptor: str, n: int) -> None:
        self.metrics.filtered.labels(interceptor=interceptor).inc(n)

    async def _report(self, outcome: Outcome) -> None:
        await self.outcomes.send(value=outcome)
