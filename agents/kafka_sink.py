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

    __slots__ = ("sink", "topic", "partition", "open", "open_fut", "queue", "task")

    def __init__(self, sink: KafkaSink, topic: str, partition: int) -> None:
        self.sink = sink
        self.topic = topic
        self.partition = partition
        self.open: Any = None
        self.open_fut: asyncio.Future[None] | None = None
        self.queue: deque[tuple[Any, asyncio.Future[None]]] = deque()
        self.task: asyncio.Task[None] | None = None

    def add(self, rec: Record) -> asyncio.Future[None]:
        if self.open is None or self.open.append(
            key=rec.key, value=rec.value, timestamp=rec.timestamp_ms, headers=list(rec.headers)
        ) is None:
            if self.open is not None:  # full: close it, open another
                assert self.open_fut is not None
                self.queue.append((self.open, self.open_fut))
            self.open = self.sink.producer.create_batch()
            self.open_fut = asyncio.get_running_loop().create_future()
            if self.open.append(key=rec.key, value=rec.value, timestamp=rec.timestamp_ms,
                                headers=list(rec.headers)) is None:  # pragma: no cover - limits prevent this
                raise SinkError(f"record of {rec.size} bytes does not fit a Kafka batch")
        if self.task is None:
            self.task = asyncio.create_task(self._run())
            self.sink.tasks.add(self.task)
            self.task.add_done_callback(self.sink.tasks.discard)
        assert self.open_fut is not None
        return self.open_fut

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
                    kfut = await self.sink.producer.send_batch(batch, self.topic, partition=self.partition)
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
    """Owns the producer; built in the running loop by :meth:`start`."""

    def __init__(self, settings: KafkaSettings, on_late_ack: Callable[[int], None] | None = None) -> None:
        self.settings = settings
        #: called with a count when batches given up on (timed out) are acknowledged after all
        self.on_late_ack = on_late_ack
        self.producer: AIOKafkaProducer = None  # type: ignore[assignment]
        self.tasks: set[asyncio.Task[None]] = set()
        self._lanes: dict[tuple[str, int], _Lane] = {}
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

    async def start(self) -> None:
        """Build the producer. Never fails for an unreachable Kafka: bootstrap is retried later."""
        if self._started:
            return
        self._started = True
        self.producer = self._build()
        try:
            await asyncio.wait_for(self.producer.start(), self.settings.request_timeout)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            logger.warning("kafka sink: Kafka at %s is not reachable at start (%s); buffering to disk",
                           self.settings.bootstrap_servers, exc or type(exc).__name__)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)
        try:
            await asyncio.wait_for(self.producer.stop(), self.settings.request_timeout)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            logger.warning("kafka sink: producer did not close cleanly: %r", exc)

    async def _ensure_bootstrapped(self) -> None:
        # A producer whose start() failed has no sender running: start it again;
        # one whose sender died (a fatal error) is replaced by a new one.
        task = self.producer._sender.sender_task
        if task is not None and task.done():
            logger.warning("kafka sink: producer's sender stopped; building a new producer")
            old, self.producer = self.producer, self._build()
            self._lanes.clear()
            closing = asyncio.create_task(old.stop())
            self.tasks.add(closing)
            closing.add_done_callback(self.tasks.discard)
            task = None
        if task is None:
            await self.producer.start()

    async def _partitions(self, topic: str) -> list[int]:
        parts = self.producer.client.cluster.partitions_for_topic(topic)
        if not parts:
            await self._ensure_bootstrapped()
            parts = await self.producer.partitions_for(topic)
        return sorted(parts)

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
        lanes = self._lanes
        futures: list[asyncio.Future[None]] = []
        for rec in records:
            if rec.key is None:
                p = sticky[rec.topic]
            else:
                parts = partitions[rec.topic]
                p = parts[(murmur2(rec.key) & 0x7FFFFFFF) % len(parts)]
            lane = lanes.get((rec.topic, p))
            if lane is None:
                lane = lanes[(rec.topic, p)] = _Lane(self, rec.topic, p)
            futures.append(lane.add(rec))
        return futures

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
