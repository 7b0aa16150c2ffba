"""Kafka sink stage: the stage's own aiokafka producer, acks=all, idempotent.

Records of concurrent calls share Kafka record batches: each topic-partition has a
*lane* holding one open batch; while the lane's previous batch is on its way, new
records pile into the open one, so batches grow with load and no linger is needed.
A call waits on the futures of the batches that hold its records
(:meth:`KafkaSink.submit`), never longer than its caller decides.

Errors retrying cannot fix (a topic Kafka does not have while auto-create is off, a
record over the broker's size limit, a topic this client may not write) are told apart
from outages: :class:`~core.errors.SinkRefused` for those records only, so one bad
event never parks Kafka for everyone. A batch refused as too large is split and its
records sent one by one, so only the oversize one is refused. Everything else is a
retriable :class:`~core.errors.SinkError`. This is the only module that imports
``aiokafka.errors``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.structs import TopicPartition

from agents.kafka_auth import explain, kafka_auth
from agents.records import Delivery, Record
from core.errors import SinkError, SinkRefused
from core.settings import KafkaSettings

logger = logging.getLogger(__name__)

#: Where some records of one call went: their batch's future, the index in that batch of
#: the first of them, and those records (contiguous in the batch, in call order).
Part = tuple["asyncio.Future[Any]", int, list[Record]]

#: Errors retrying cannot fix, with their metric label. Anything else counts as
#: retriable (Kafka is parked, the events wait on disk): an unknown error never refuses.
PERMANENT: dict[type[BaseException], str] = {
    kafka_errors.MessageSizeTooLargeError: "too_large",
    kafka_errors.RecordListTooLargeError: "too_large",
    kafka_errors.RecordTooLargeError: "too_large",
    kafka_errors.TopicAuthorizationFailedError: "not_authorized",
    kafka_errors.InvalidTopicError: "invalid_topic",
    kafka_errors.PolicyViolationError: "policy",
    kafka_errors.UnknownTopicOrPartitionError: "unknown_topic",  # only as a metadata answer
}
_TOO_LARGE = (kafka_errors.MessageSizeTooLargeError, kafka_errors.RecordListTooLargeError)
#: the broker and this producer disagree on sequence numbers: only a new producer (a new
#: producer id) can send to that partition again
_PRODUCER_STATE = (kafka_errors.OutOfOrderSequenceNumber, kafka_errors.UnknownProducerId,
                   kafka_errors.InvalidProducerEpoch, kafka_errors.InvalidProducerIdMapping,
                   kafka_errors.ProducerFenced)
#: how long a topic Kafka refused stays refused without asking again (a hostile client
#: must not turn every call into a metadata request)
REFUSAL_TTL = 2.0


def translate(exc: BaseException) -> SinkError:
    """Our error for one of aiokafka's: SinkRefused when retrying cannot help, else SinkError."""
    if isinstance(exc, SinkError):
        return exc
    reason = PERMANENT.get(type(exc))
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    err = SinkRefused(text, reason=reason) if reason is not None else SinkError(text)
    err.__cause__ = exc
    return err


class _Lane:
    """One topic-partition: an open batch, closed batches waiting, one sender task."""

    __slots__ = ("sink", "topic", "partition", "tp", "producer", "open", "open_fut", "open_recs", "queue", "task")

    def __init__(self, sink: KafkaSink, topic: str, partition: int, producer: int) -> None:
        self.sink = sink
        self.topic = topic
        self.partition = partition
        self.tp = TopicPartition(topic, partition)  # aiokafka's key for this partition
        self.producer = producer
        self.open: Any = None
        self.open_fut: asyncio.Future[Any] | None = None
        self.open_recs: list[Record] = []
        self.queue: deque[tuple[Any, asyncio.Future[Any], list[Record]]] = deque()
        self.task: asyncio.Task[None] | None = None

    def add(self, records: list[Record], out: list[Part]) -> None:
        """Append records to the open batch (opening more as they fill); for each batch they
        went into, ``(its future, the index in it of the first of them, those records)`` goes
        to ``out``.

        Records go straight into aiokafka's record-batch builder (its C builder, positional
        arguments; the offset is the record's index in the batch), past the BatchBuilder
        wrapper, whose record count is set to match when a batch is handed on or left open.
        """
        batch, fut, recs = self.open, self.open_fut, self.open_recs
        builder = batch._builder if batch is not None else None
        offset = len(recs)  # the next record's index in the open batch
        start = i = 0  # where in ``records`` the open batch's part begins; the next record
        for rec in records:
            headers = rec.headers if rec.headers.__class__ is list else list(rec.headers)
            if builder is None or builder.append(offset, rec.timestamp_ms, rec.key, rec.value, headers) is None:
                if batch is not None:  # full: close it, open another
                    assert fut is not None
                    if i > start:
                        part = records[start:i]
                        out.append((fut, offset - len(part), part))
                        recs.extend(part)
                    batch._relative_offset = len(recs)
                    batch.close()
                    self.queue.append((batch, fut, recs))
                batch = self.sink.producers[self.producer].create_batch()
                builder = batch._builder
                fut, recs, offset, start = asyncio.get_running_loop().create_future(), [], 0, i
                if builder.append(0, rec.timestamp_ms, rec.key, rec.value, headers) is None:  # pragma: no cover
                    raise SinkError(f"record of {rec.size} bytes does not fit a Kafka batch")  # limits prevent this
            offset += 1
            i += 1
        if i > start:
            assert fut is not None
            part = records if start == 0 else records[start:]
            out.append((fut, offset - len(part), part))
            recs.extend(part)
        if batch is not None:
            batch._relative_offset = len(recs)
        self.open, self.open_fut, self.open_recs = batch, fut, recs
        if self.task is None:
            self.task = self.sink.spawn(self._run())

    async def _run(self) -> None:
        try:
            while True:
                if self.queue:
                    batch, fut, recs = self.queue.popleft()
                elif self.open is not None:
                    assert self.open_fut is not None
                    batch, fut, recs = self.open, self.open_fut, self.open_recs
                    self.open, self.open_fut, self.open_recs = None, None, []
                else:
                    return
                try:
                    producer = self.sink.producers[self.producer]
                    generation = self.sink.generations[self.producer]
                    kfut = await self._enqueue(producer, batch)
                except BaseException as exc:
                    _fail(fut, exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                kfut.add_done_callback(lambda f, fut=fut, recs=recs, g=generation:  # type: ignore[misc]
                                       self._acked(f, fut, recs, g))
        except BaseException as exc:
            # Fail everything still waiting on this lane, so no caller waits forever.
            while self.queue:
                _fail(self.queue.popleft()[1], exc)
            if self.open_fut is not None:
                _fail(self.open_fut, exc)
                self.open, self.open_fut, self.open_recs = None, None, []
            raise
        finally:
            self.task = None

    async def _enqueue(self, producer: AIOKafkaProducer, batch: Any) -> asyncio.Future[Any]:
        """``producer.send_batch(batch, topic, partition=partition)``, at less cost a batch.

        A lane hands on one batch at a time (5,000 a second at 115k events/s: about 23 records a
        batch), and aiokafka's ``send_batch`` waits for the partition's previous batch with an
        ``asyncio.wait`` (a timer, a set, a callback each), then shields the batch's future:
        9 % of the healthy worker's py-spy samples. Here the wait is a done-callback on that
        batch's drain future, and the batch joins the accumulator as ``send_batch`` would add
        it (nothing awaits or cancels the future it returns, so no shield). Whatever is not the
        plain case (the partition's previous batch still queued after the wait, a closed or
        failed accumulator, a transactional producer, a partition not in the metadata, another
        aiokafka) goes through ``send_batch`` itself, with its checks and its timeout.
        """
        acc: Any = getattr(producer, "_message_accumulator", None)
        queued = getattr(acc, "_batches", None)
        tp = self.tp
        if queued is not None:
            pending = queued.get(tp)
            if pending:
                await _drained(pending[-1], self.sink.settings.request_timeout)
                pending = queued.get(tp)
            partitions = producer.client.cluster.partitions_for_topic(self.topic)
            txn = producer._txn_manager  # idempotence has one too; a transactional producer goes the long way
            if (not pending and not acc._closed and acc._exception is None
                    and (txn is None or txn.transactional_id is None)
                    and partitions is not None and self.partition in partitions):
                return acc._append_batch(batch, tp).future  # type: ignore[no-any-return]
        return await producer.send_batch(batch, self.topic, partition=self.partition)  # type: ignore[no-any-return]

    def _acked(self, kfut: asyncio.Future[Any], fut: asyncio.Future[Any], recs: list[Record], generation: int,
               resent: bool = False) -> None:
        if fut.done():
            return
        if kfut.cancelled():
            _fail(fut, asyncio.CancelledError())
        elif (exc := kfut.exception()) is not None:
            if isinstance(exc, _PRODUCER_STATE) and not resent:
                # The broker appended nothing of it: send it again on a new producer (a new
                # producer id, sequences from 0), once, as the Java client resets and retries.
                self.sink.spawn(self._resend(fut, recs, generation, exc))
                return
            if isinstance(exc, kafka_errors.BrokerResponseError) and not exc.retriable:
                self._unsequence(len(recs))
            if isinstance(exc, _TOO_LARGE) and len(recs) > 1:
                # Kafka refused the batch as too large: find the record(s) it refuses, so one
                # oversize event does not fail the events of every call that shared its batch.
                self.sink.spawn(self._split(fut, recs))
            else:
                _fail(fut, exc)
        else:
            fut.set_result(None)

    async def _send_alone(self, fut: asyncio.Future[Any], recs: list[Record], resent: bool = False) -> None:
        """Send ``recs`` as a batch of their own; its ack or error settles ``fut`` through :meth:`_acked`."""
        producer = self.sink.producers[self.producer]
        generation = self.sink.generations[self.producer]
        batch = producer.create_batch()
        for rec in recs:
            headers = rec.headers if rec.headers.__class__ is list else list(rec.headers)
            batch.append(key=rec.key, value=rec.value, timestamp=rec.timestamp_ms, headers=headers)
        kfut = await producer.send_batch(batch, self.topic, partition=self.partition)
        kfut.add_done_callback(lambda f: self._acked(f, fut, recs, generation, resent))

    async def _resend(self, fut: asyncio.Future[Any], recs: list[Record], generation: int,
                      why: BaseException) -> None:
        try:
            await self.sink.replace(self.producer, generation, why)
            await self._send_alone(fut, recs, resent=True)
        except BaseException as exc:
            _fail(fut, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _unsequence(self, count: int) -> None:
        """Give back the sequence numbers of a batch the broker refused without appending it.

        aiokafka numbered it when it was sent, and never takes numbers back: the next batch
        of this partition would then leave a gap the broker answers with
        OutOfOrderSequenceNumber, for good. While a batch is in flight its partition is muted
        (nothing else of it is numbered), and this runs, as the batch future's callback,
        before the sender's loop wakes up to send the next one.
        """
        txn = getattr(self.sink.producers[self.producer], "_txn_manager", None)
        numbers = getattr(txn, "_sequence_numbers", None)
        if numbers is None:  # pragma: no cover - a different aiokafka: the rebuild path still recovers
            return
        numbers[self.tp] = max(0, numbers[self.tp] - count)

    async def _split(self, fut: asyncio.Future[Any], recs: list[Record]) -> None:
        """Send the two halves of a batch Kafka refused as too large; resolve ``fut`` with each
        record's error (or None).

        Each half goes through :meth:`_acked` like any batch: one still too large is halved
        again (so finding the records Kafka refuses takes a few round trips, not one per
        record: a partition's batches go one at a time, and a long queue of singles outlasts
        the producer's timeout), a refused one gives its sequence numbers back (so the
        batches after it are not answered OutOfOrderSequenceNumber), and one that meets a
        lost producer state is sent again.
        """
        loop = asyncio.get_running_loop()
        mid = len(recs) // 2
        halves = [recs[:mid], recs[mid:]]
        subs = [loop.create_future() for _ in halves]
        try:
            for half, sub in zip(halves, subs, strict=True):
                await self._send_alone(sub, half)
            await asyncio.wait(subs)
        except BaseException as exc:
            _fail(fut, exc)
            for sub in subs:
                sub.cancel()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        errors: list[BaseException | None] = []
        for half, sub in zip(halves, subs, strict=True):
            err = sub.exception()
            if err is not None:
                errors += [err] * len(half)
            else:
                outcome = sub.result()  # None, or each record's error after a split of its own
                errors += outcome if outcome is not None else [None] * len(half)
        if not fut.done():
            fut.set_result(tuple(errors))


def _tell(delivery: Delivery, rec: Record, err: BaseException) -> None:
    """Adds one record Kafka did not take to ``delivery``: refused for good, or unacknowledged."""
    if isinstance(err, SinkRefused):
        delivery.refused.append((rec, err))
    else:
        delivery.unacked.append(rec)
        if delivery.error is None:
            delivery.error = repr(err)


async def _drained(batch: Any, timeout: float) -> None:  # noqa: ASYNC109
    """Until aiokafka's sender takes ``batch`` (or fails it), at most ``timeout`` seconds; never
    raises: the caller looks at the accumulator again, and ``send_batch`` reports its errors."""
    waiter = getattr(batch, "_drain_waiter", None)
    if waiter is None or waiter.done():
        return
    loop = waiter.get_loop()  # not asyncio.get_running_loop(): on Python 3.11 that is a getpid() syscall
    woken = loop.create_future()

    def wake(_: object) -> None:
        if not woken.done():
            woken.set_result(None)

    waiter.add_done_callback(wake)
    timer = loop.call_later(timeout, wake, None)
    try:
        await woken
    finally:
        timer.cancel()
        waiter.remove_done_callback(wake)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(translate(exc))


class KafkaSink:
    """Owns the producers; built in the running loop by :meth:`start`.

    aiokafka keeps one produce request in flight per broker and producer, so with
    ``kafka.producers`` > 1 more requests are in flight at once; a topic-partition
    always uses the same producer, so per-partition order (and idempotence) holds.
    """

    def __init__(self, settings: KafkaSettings, on_late_ack: Callable[[int], None] | None = None) -> None:
        self.settings = settings
        self.name = settings.name
        #: called with a count when batches given up on (timed out) are acknowledged after all
        self.on_late_ack = on_late_ack
        self.producers: list[AIOKafkaProducer] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.producers_built = 0
        self._lanes: dict[tuple[str, int], _Lane] = {}
        self._key_partitions: dict[str, dict[bytes, int]] = {}  # topic -> key -> partition
        self._refused_topics: dict[str, tuple[float, SinkRefused]] = {}
        self.generations: list[int] = []  # per producer slot: bumped each time it is replaced
        self._boot_lock = asyncio.Lock()
        self._started = False

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """A background task the sink keeps a reference to (and cancels at stop)."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def replace(self, index: int, generation: int, why: BaseException) -> None:
        """Replace producer ``index`` with a new, started one, unless that was done since ``generation``."""
        async with self._boot_lock:
            if self.generations[index] != generation:
                return
            logger.warning("kafka sink: producer %d lost its sequence state with the broker (%r); building a "
                           "new producer and sending its refused batches again", index, why)
            self._swap(index)
            await self.producers[index].start()

    def _swap(self, index: int) -> None:
        old = self.producers[index]
        self.producers[index] = self._build()
        self.generations[index] += 1
        self.spawn(old.stop())

    def _build(self) -> AIOKafkaProducer:
        s = self.settings
        p = s.producer
        self.producers_built += 1
        return AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=s.client_id,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=p.request_timeout_ms,
            retry_backoff_ms=p.retry_backoff_ms,
            linger_ms=p.linger_ms,
            max_batch_size=p.max_batch_size,
            max_request_size=p.request_size(),
            compression_type=None if p.compression_type == "none" else p.compression_type,
            metadata_max_age_ms=p.metadata_max_age_ms,
            connections_max_idle_ms=p.connections_max_idle_ms or None,
            **kafka_auth(s),
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
        self.generations = [0] * len(self.producers)
        try:
            await asyncio.wait_for(asyncio.gather(*(self._start_producer(p) for p in self.producers)),
                                   self.settings.request_timeout)
        except (TimeoutError, KafkaError, OSError) as exc:
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
            except (TimeoutError, KafkaError, OSError) as exc:
                logger.warning("kafka sink: producer did not close cleanly: %r", exc)

    async def _ensure_bootstrapped(self) -> None:
        # A producer whose start() failed has no sender running: start it again; one whose
        # sender died (a fatal error) is replaced by a new one. One caller at a time: calls
        # racing here must not build a producer each. Lanes stay (they pick the current
        # producer for each batch), so no second lane ever sends to the same partition.
        async with self._boot_lock:
            for i, producer in enumerate(self.producers):
                task = producer._sender.sender_task
                if task is not None and task.done():
                    logger.warning("kafka sink: producer %d's sender stopped; building a new producer", i)
                    self._swap(i)
                    producer, task = self.producers[i], None
                if task is None:
                    await self._start_producer(producer)

    async def _start_producer(self, producer: AIOKafkaProducer) -> None:
        """Start a producer. When it cannot bootstrap because the broker refuses our TLS or SASL
        settings (aiokafka says only "Unable to bootstrap"), raise a KafkaAuthError naming why."""
        try:
            await producer.start()
        except kafka_errors.KafkaConnectionError as exc:
            if self.settings.security_protocol == "PLAINTEXT":
                raise
            why = await explain(self.settings, self.settings.request_timeout)
            if why is None:
                raise
            raise why from exc

    async def _check_topic(self, topic: str) -> None:
        """Ask Kafka whether ``topic`` can be written; raise SinkRefused when it says no for good.

        aiokafka alone waits out its request timeout for a topic that does not exist and
        then raises a *retriable* error; one metadata request says at once.
        """
        now = time.monotonic()
        cached = self._refused_topics.get(topic)
        if cached is not None:
            if cached[0] > now:
                raise cached[1]
            del self._refused_topics[topic]
        client = self.producer.client
        error: type[BaseException] = kafka_errors.NoError
        for delay in (0.1, 0.2, 0.4, 0.8, None):
            node = client.get_random_node()
            if node is None:
                return  # no metadata at all yet: the caller's wait decides
            response = await client.send(node, MetadataRequest([topic]))
            code = next((t[0] for t in response.topics if t[1] == topic), 0)
            error = kafka_errors.for_code(code)
            if error not in PERMANENT:
                return
            if error is not kafka_errors.UnknownTopicOrPartitionError or delay is None:
                break
            # A topic created a moment ago (or being auto-created by a broker that has just
            # started) may not be known to every broker yet: ask again for about 1.5 s in all.
            await asyncio.sleep(delay)
        refusal = SinkRefused(f"Kafka refuses topic {topic!r}: {error.__name__}", topic=topic,
                              reason=PERMANENT[error])
        if len(self._refused_topics) > 10_000:
            self._refused_topics.clear()
        self._refused_topics[topic] = (time.monotonic() + REFUSAL_TTL, refusal)
        raise refusal

    async def _partitions(self, topic: str) -> list[int]:
        parts = self.producer.client.cluster.partitions_for_topic(topic)
        if not parts:
            await self._ensure_bootstrapped()
            await self._check_topic(topic)
            parts = await self.producer.partitions_for(topic)
        return sorted(parts)

    async def submit(self, records: Sequence[Record], whole: bool = False
                     ) -> tuple[list[Part], list[tuple[Record, SinkRefused]]]:
        """Put records into batches, grouped by topic-partition.

        Returns the parts of batches they went into (:data:`Part`: a batch's future, which
        resolves to None, or after a split to each of its records' error; the index in the
        batch of the part's first record; the part's records) and the records of topics
        Kafka refuses for good. With ``whole``, a refused topic sends nothing at all. Raises
        SinkError when metadata cannot be had. All awaiting happens before the first record
        is added, so a cancelled submit adds nothing.
        """
        # topic -> (its groups by partition, its key -> partition cache, its partitions, sticky partition)
        topics: dict[str, tuple[dict[int, list[Record]], dict[bytes, int], list[int], int]] = {}
        refused_topics: dict[str, SinkRefused] = {}
        key_partitions = self._key_partitions
        for rec in records:
            topic = rec.topic
            state = topics.get(topic)
            if state is None:
                if topic in refused_topics:
                    continue
                try:
                    parts = await self._partitions(topic)
                except SinkRefused as exc:
                    refused_topics[topic] = exc
                    if whole:
                        break
                    continue
                except (KafkaError, OSError) as exc:
                    raise translate(exc) from exc
                keyed = key_partitions.get(topic)
                if keyed is None or len(keyed) > 100_000:  # bounded, however many keys or topics
                    if len(key_partitions) > 10_000:
                        key_partitions.clear()
                    keyed = key_partitions[topic] = {}
                state = topics[topic] = ({}, keyed, parts, parts[random.randrange(len(parts))])
            groups, keyed, parts, partition = state
            key = rec.key
            if key is not None:
                partition = keyed.get(key, -1)
                if partition < 0:
                    partition = keyed[key] = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
            group = groups.get(partition)
            if group is None:
                groups[partition] = [rec]
            else:
                group.append(rec)
        refused: list[tuple[Record, SinkRefused]] = []
        if refused_topics:
            refused = [(rec, refused_topics[rec.topic]) for rec in records if rec.topic in refused_topics]
            if whole:
                return [], refused
        lanes = self._lanes
        out: list[Part] = []
        for topic, (groups, _, _, _) in topics.items():
            for partition, group in groups.items():
                lane = lanes.get((topic, partition))
                if lane is None:
                    tp = (topic, partition)
                    lane = lanes[tp] = _Lane(self, topic, partition, hash(tp) % len(self.producers))
                lane.add(group, out)
        return out, refused

    async def send_within(self, records: Sequence[Record],
                          timeout: float, *, whole: bool = False) -> Delivery:  # noqa: ASYNC109
        """Send and wait at most ``timeout`` seconds for Kafka's acks.

        ``whole`` (a client's call, answered as one): a record Kafka refuses for good ends
        the wait at once, and a refused topic sends nothing. Otherwise (the drain) every
        record's fate is waited for. A batch given up on may still be acknowledged later:
        ``on_late_ack`` counts those records (they will reach Kafka twice).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):  # no task of its own, unlike wait_for
                parts, refused = await self.submit(records, whole)
        except (SinkError, TimeoutError) as exc:
            return Delivery(list(records), repr(exc) if str(exc) else f"no metadata within {timeout:g}s")
        delivery = Delivery(refused=refused)
        if not parts:
            return delivery
        unique = {fut for fut, _, _ in parts}
        remaining = max(0.0, deadline - loop.time())
        _, pending = await asyncio.wait(unique, timeout=remaining,
                                        return_when=asyncio.FIRST_EXCEPTION if whole else asyncio.ALL_COMPLETED)
        if not pending and all(not f.cancelled() and f.exception() is None and f.result() is None for f in unique):
            return delivery  # every batch acknowledged whole: nothing to say record by record
        for fut, first, part in parts:
            if fut in pending:
                delivery.unacked.extend(part)
                continue
            err = fut.exception()
            if err is not None:
                for rec in part:
                    _tell(delivery, rec, err)
                continue
            outcome = fut.result()  # None, or each record's error after a split
            if outcome is not None:
                for index, rec in enumerate(part, first):
                    if (err := outcome[index]) is not None:
                        _tell(delivery, rec, err)
        if pending:
            if delivery.error is None:
                delivery.error = f"no ack within {timeout:g}s"
            if self.on_late_ack is not None:
                counts: dict[asyncio.Future[Any], int] = {}
                for fut, _, part in parts:
                    if fut in pending:
                        counts[fut] = counts.get(fut, 0) + len(part)
                for fut, n in counts.items():
                    fut.add_done_callback(lambda f, n=n: self._late(f, n))  # type: ignore[misc]
        return delivery

    def _late(self, fut: asyncio.Future[Any], n: int) -> None:
        if not fut.cancelled() and fut.exception() is None and self.on_late_ack is not None:
            self.on_late_ack(n)

    async def probe(self, timeout: float) -> bool:  # noqa: ASYNC109
        """An active check: does Kafka answer a metadata request now?"""
        try:
            async with asyncio.timeout(timeout):
                await self._ensure_bootstrapped()
                ok = await self.producer.client.force_metadata_update()
                return bool(ok) and bool(self.producer.client.cluster.brokers())
        except (KafkaError, OSError, TimeoutError) as exc:
            logger.debug("kafka sink: probe failed: %r", exc)
            return False
