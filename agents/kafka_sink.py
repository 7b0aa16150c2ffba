"""Kafka sink stage: the stage's own aiokafka producer, acks=all, idempotent.

Records of concurrent calls share Kafka record batches: each topic-partition has a
*lane* holding one open batch; while the lane's previous batch is on its way, new
records pile into the open one, so batches grow with load and no linger is needed.
A call waits on the futures of the batches that hold its records
(:meth:`KafkaSink.submit`), never longer than its caller decides.

This is the only module that imports ``aiokafka.errors``; failures leave it as
:class:`~topology.errors.SinkError`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from agents.records import Record
from topology.errors import SinkError
from topology.settings import KafkaSettings

logger = logging.getLogger(__name__)


class _Lane:
    """One topic-partition: an open batch, closed batches waiting, one sender task."""

    __slots__ = ("sink", "topic", "partition", "producer", "open", "open_fut", "queue", "task")

    def __init__(self, sink: KafkaSink, topic: str, partition: int, producer: int) -> None:
        self.sink = sink
        self.topic = topic
        self.partition = partition
        self.producer = producer
        self.open: Any = None
        self.open_fut: asyncio.Future[None] | None = None
        self.queue: deque[tuple[Any, asyncio.Future[None]]] = deque()
        self.task: asyncio.Task[None] | None = None

    def add(self, records: list[Record], out: list[asyncio.Future[None]]) -> None:
        """Append records to the open batch (opening more as they fill); their futures go to ``out``."""
        batch, fut = self.open, self.open_fut
        for rec in records:
            headers = rec.headers if rec.headers.__class__ is list else list(rec.headers)
            if batch is None or batch.append(key=rec.key, value=rec.value, timestamp=rec.timestamp_ms,
                                             headers=headers) is None:
                if batch is not None:  # full: close it, open another
                    assert fut is not None
                    self.queue.append((batch, fut))
                batch = self.sink.producers[self.producer].create_batch()
                fut = asyncio.get_running_loop().create_future()
                if batch.append(key=rec.key, value=rec.value, timestamp=rec.timestamp_ms,
                                headers=headers) is None:  # pragma: no cover - limits prevent this
                    raise SinkError(f"record of {rec.size} bytes does not fit a Kafka batch")
            out.append(fut)  # type: ignore[arg-type]
        self.open, self.open_fut = batch, fut
        if self.task is None:
            self.task = asyncio.create_task(self._run())
            self.sink.tasks.add(self.task)
            self.task.add_done_callback(self.sink.tasks.discard)

    async def _run(self) -> None:
        try:
            while True:
                if self.queue:
                    batch, fut = self.queue.popleft()
                elif self.open is not None:
                    batch, fut = self.open, self.open_fut
                    self.open = self.open_fut = None
                else:
                    return
                try:
                    producer = self.sink.producers[self.producer]
                    kfut = await producer.send_batch(batch, self.topic, partition=self.partition)
                except BaseException as exc:
                    _fail(fut, exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                kfut.add_done_callback(lambda f, fut=fut: _chain(f, fut))  # type: ignore[misc]
        except BaseException as exc:
            # Fail everything still waiting on this lane, so no caller waits forever.
            while self.queue:
                _fail(self.queue.popleft()[1], exc)
            if self.open_fut is not None:
                _fail(self.open_fut, exc)
                self.open = self.open_fut = None
            raise
        finally:
            self.task = None


def _fail(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        err = exc if isinstance(exc, SinkError) else SinkError(f"{type(exc).__name__}: {exc}")
        if err is not exc:
            err.__cause__ = exc
        fut.set_exception(err)


def _chain(kfut: asyncio.Future[Any], fut: asyncio.Future[None]) -> None:
    if fut.done():
        return
    if kfut.cancelled():
        _fail(fut, asyncio.CancelledError())
    elif (exc := kfut.exception()) is not None:
        _fail(fut, exc)
    else:
        fut.set_result(None)


class KafkaSink:
    """Owns the producers; built in the running loop by :meth:`start`.

    aiokafka keeps one produce request in flight per broker and producer, so with
    ``kafka.producers`` > 1 more requests are in flight at once; a topic-partition
    always uses the same producer, so per-partition order (and idempotence) holds.
    """

    def __init__(self, settings: KafkaSettings, on_late_ack: Callable[[int], None] | None = None) -> None:
        self.settings = settings
        #: called with a count when batches given up on (timed out) are acknowledged after all
        self.on_late_ack = on_late_ack
        self.producers: list[AIOKafkaProducer] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self._lanes: dict[tuple[str, int], _Lane] = {}
        self._key_partition: dict[tuple[str, bytes], int] = {}
        self._started = False

    def _build(self) -> AIOKafkaProducer:
        s = self.settings
        timeout_ms = int(s.request_timeout * 1000)
        return AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=s.client_id,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=timeout_ms,
            retry_backoff_ms=100,
            linger_ms=int(s.linger * 1000),
            max_batch_size=s.max_batch_bytes,
            max_request_size=max(s.max_batch_bytes + 4096, 1_048_576),
            compression_type=None if s.compression == "none" else s.compression,
            metadata_max_age_ms=int(s.metadata_max_age * 1000),
            connections_max_idle_ms=540_000,
        )

    @property
    def producer(self) -> AIOKafkaProducer:
        """The first producer: metadata and probes go through it."""
        return self.producers[0]

    async def start(self) -> None:
        """Build the producers. Never fails for an unreachable Kafka: bootstrap is retried later."""
        if self._started:
            return
        self._started = True
        self.producers = [self._build() for _ in range(self.settings.producers)]
        try:
            await asyncio.wait_for(asyncio.gather(*(p.start() for p in self.producers)),
                                   self.settings.request_timeout)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            logger.warning("kafka sink: Kafka at %s is not reachable at start (%s)",
                           self.settings.bootstrap_servers, exc or type(exc).__name__)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)
        for producer in self.producers:
            try:
                await asyncio.wait_for(producer.stop(), self.settings.request_timeout)
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                logger.warning("kafka sink: producer did not close cleanly: %r", exc)

    async def _ensure_bootstrapped(self) -> None:
        # A producer whose start() failed has no sender running: start it again;
        # one whose sender died (a fatal error) is replaced by a new one.
        for i, producer in enumerate(self.producers):
            task = producer._sender.sender_task
            if task is not None and task.done():
                logger.warning("kafka sink: producer %d's sender stopped; building a new producer", i)
                self.producers[i] = self._build()
                self._lanes = {k: v for k, v in self._lanes.items() if v.producer != i}
                closing = asyncio.create_task(producer.stop())
                self.tasks.add(closing)
                closing.add_done_callback(self.tasks.discard)
                producer, task = self.producers[i], None
            if task is None:
                await producer.start()

    async def _partitions(self, topic: str) -> list[int]:
        parts = self.producer.client.cluster.partitions_for_topic(topic)
        if not parts:
            await self._ensure_bootstrapped()
            parts = await self.producer.partitions_for(topic)
        return sorted(parts)

    def _partition_of_key(self, topic: str, key: bytes, parts: list[int]) -> int:
        cache = self._key_partition
        p = cache.get((topic, key))
        if p is None:
            if len(cache) > 200_000:
                cache.clear()
            p = cache[(topic, key)] = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
        return p

    async def submit(self, records: Sequence[Record]) -> list[asyncio.Future[None]]:
        """Put records into batches; return, for each record, the future of its batch.

        Raises SinkError when Kafka's metadata for a topic cannot be had. All awaiting
        happens before the first record is added, so a cancelled submit adds nothing.
        """
        partitions: dict[str, list[int]] = {}
        for rec in records:
            if rec.topic not in partitions:
                try:
                    partitions[rec.topic] = await self._partitions(rec.topic)
                except (KafkaError, OSError) as exc:
                    raise SinkError(f"no metadata for topic {rec.topic}: {exc!r}") from exc
        sticky = {topic: parts[random.randrange(len(parts))] for topic, parts in partitions.items()}
        groups: dict[tuple[str, int], list[Record]] = {}
        lane_of: list[tuple[str, int]] = []
        for rec in records:
            topic = rec.topic
            if rec.key is None:
                tp = (topic, sticky[topic])
            else:
                tp = (topic, self._partition_of_key(topic, rec.key, partitions[topic]))
            group = groups.get(tp)
            if group is None:
                group = groups[tp] = []
            group.append(rec)
            lane_of.append(tp)
        lanes = self._lanes
        futures_of: dict[tuple[str, int], list[asyncio.Future[None]]] = {}
        for tp, group in groups.items():
            lane = lanes.get(tp)
            if lane is None:
                lane = lanes[tp] = _Lane(self, tp[0], tp[1], hash(tp) % len(self.producers))
            futs: list[asyncio.Future[None]] = []
            lane.add(group, futs)
            futs.reverse()
            futures_of[tp] = futs
        return [futures_of[tp].pop() for tp in lane_of]

    async def send_within(self, records: Sequence[Record], timeout: float) -> tuple[list[Record], str | None]:
        """Send and wait at most ``timeout`` seconds for Kafka's acks.

        Returns the records Kafka did not acknowledge (to be kept elsewhere) and the
        first error, or ``([], None)``. A batch given up on may still be acknowledged
        later: ``on_late_ack`` counts those records (they will reach Kafka twice).
        """
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            futures = await asyncio.wait_for(self.submit(records), timeout)
        except (SinkError, TimeoutError) as exc:
            return list(records), repr(exc) if str(exc) else f"no metadata within {timeout:g}s"
        unique = set(futures)
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        _, pending = await asyncio.wait(unique, timeout=remaining)
        failed = {f for f in unique if f in pending or f.exception() is not None}
        if not failed:
            return [], None
        if self.on_late_ack is not None:
            for fut in pending:
                n = futures.count(fut)
                fut.add_done_callback(lambda f, n=n: self._late(f, n))  # type: ignore[misc]
        first = next((f.exception() for f in failed if f not in pending), None)
        error = repr(first) if first is not None else f"no ack within {timeout:g}s"
        return [rec for rec, fut in zip(records, futures, strict=True) if fut in failed], error

    def _late(self, fut: asyncio.Future[None], n: int) -> None:
        if not fut.cancelled() and fut.exception() is None and self.on_late_ack is not None:
            self.on_late_ack(n)

    async def probe(self, timeout: float) -> bool:
        """An active check: does Kafka answer a metadata request now?"""
        try:
            async with asyncio.timeout(timeout):
                await self._ensure_bootstrapped()
                ok = await self.producer.client.force_metadata_update()
                return bool(ok) and bool(self.producer.client.cluster.brokers())
        except (KafkaError, OSError, TimeoutError) as exc:
            logger.debug("kafka sink: probe failed: %r", exc)
            return False
