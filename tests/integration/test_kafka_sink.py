"""The Kafka sink against the real broker: rebuilding a producer whose sender died."""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers import create_topics, read_topic, unique

from agents.kafka_sink import KafkaSink
from agents.records import Record
from core.settings import KafkaSettings
from devtools.kafka import Broker

pytestmark = pytest.mark.kafka


def keyed(topic: str, start: int, n: int) -> list[Record]:
    now = int(time.time() * 1000)
    return [Record(topic, b"one-key", (("seq", b"%d" % i),), b"%08d" % i, now) for i in range(start, start + n)]


def test_calls_racing_after_a_producer_died_build_one_producer_keep_their_lane_and_partition_order(
        kafka_up: Broker) -> None:
    topic = unique("rebuild")

    async def run() -> list[str]:
        sink = KafkaSink(KafkaSettings(bootstrap_servers=kafka_up.bootstrap))
        await sink.start()
        starts: list[int] = []
        try:
            assert (await sink.send_within(keyed(topic, 0, 50), 10)).ok
            (lane,) = sink._lanes.values()
            dead = sink.producer._sender.sender_task
            dead.cancel()  # the sender dies, as after a fatal error
            await asyncio.wait([dead])
            built = sink.producers_built
            real_build = sink._build

            def counting_build() -> object:
                producer = real_build()
                real_start = producer.start

                async def start() -> None:
                    starts.append(1)
                    await real_start()

                producer.start = start  # type: ignore[method-assign]
                return producer

            sink._build = counting_build  # type: ignore[method-assign]
            await asyncio.gather(*(sink._ensure_bootstrapped() for _ in range(10)))  # calls racing in
            assert sink.producers_built == built + 1, "one new producer, not one per racing call"
            assert len(starts) == 1, "the new producer is started once"
            assert list(sink._lanes.values()) == [lane], "the partition's lane is kept"
            deliveries = await asyncio.gather(*(sink.send_within(keyed(topic, 50 + 50 * i, 50), 10)
                                                for i in range(4)))
            return [d.error or "ok" for d in deliveries]
        finally:
            await sink.stop()

    outcomes = asyncio.run(run())
    assert outcomes == ["ok"] * 4
    got = read_topic(kafka_up.bootstrap, topic, 250, settle=1.0)
    partitions = {r.partition for r in got}
    assert len(partitions) == 1
    seqs = [int(r.value) for r in got]
    assert seqs == sorted(seqs) and len(seqs) == 250  # one key: one partition, in order


def test_a_refused_record_in_the_middle_of_a_batch_fails_alone_and_the_records_after_it_land(
        strict_up: Broker) -> None:
    """Kafka refuses the whole batch as too large; the sink splits it. The oversize single
    must give its sequence number back, or every single after it (and every later batch of
    the partition) is answered OutOfOrderSequenceNumber, which parks Kafka for everyone."""
    topic = unique("split")
    create_topics(strict_up.bootstrap, topic, partitions=1, config={"max.message.bytes": "20000"})
    now = int(time.time() * 1000)
    small = [Record(topic, None, (), b"s%03d" % i, now) for i in range(10)]
    big = Record(topic, None, (), b"B" * 60_000, now)

    async def run() -> tuple[list[object], list[str]]:
        sink = KafkaSink(KafkaSettings(bootstrap_servers=strict_up.bootstrap))
        await sink.start()
        try:
            # one submit: the records share one open batch, big in the middle
            d = await sink.send_within(small[:5] + [big] + small[5:], 15)
            later = [await sink.send_within([Record(topic, None, (), b"l%03d" % i, now)], 15) for i in range(3)]
            return [d.error, [r.value[:1] for r, _ in d.refused], len(d.unacked)], [x.error or "ok" for x in later]
        finally:
            await sink.stop()

    (error, refused, unacked), later = asyncio.run(run())
    assert (error, refused, unacked) == (None, [b"B"], 0)
    assert later == ["ok"] * 3
    got = sorted(r.value for r in read_topic(strict_up.bootstrap, topic, 13, settle=1.0))
    assert got == sorted([r.value for r in small] + [b"l%03d" % i for i in range(3)])


def test_racing_calls_on_one_partition_land_once_in_order_with_batches_joining_past_send_batch(
        kafka_up: Broker) -> None:
    """A lane hands its batches to aiokafka's accumulator itself (``_Lane._enqueue``) once the
    partition's previous batch is drained: every record lands once, in order, and most
    batches skipped ``send_batch``'s per-batch ``asyncio.wait``."""
    topic = unique("enqueue")
    calls, per_call = 200, 20

    async def run() -> tuple[list[str], int, int]:
        sink = KafkaSink(KafkaSettings(bootstrap_servers=kafka_up.bootstrap))
        await sink.start()
        try:
            assert (await sink.send_within(keyed(topic, 0, 1), 10)).ok
            producer = sink.producer
            acc = producer._message_accumulator
            via_send_batch = appended = 0
            real_send_batch, real_append = producer.send_batch, acc._append_batch

            async def send_batch(*args: object, **kwargs: object) -> object:
                nonlocal via_send_batch
                via_send_batch += 1
                return await real_send_batch(*args, **kwargs)

            def append(*args: object) -> object:
                nonlocal appended
                appended += 1
                return real_append(*args)

            producer.send_batch, acc._append_batch = send_batch, append  # type: ignore[method-assign]
            deliveries = []
            for wave in range(4):  # waves of racing calls, so batches queue behind in-flight ones
                deliveries += await asyncio.gather(*(
                    sink.send_within(keyed(topic, 1 + (wave * calls // 4 + i) * per_call, per_call), 10)
                    for i in range(calls // 4)))
            return [d.error or "ok" for d in deliveries], appended, via_send_batch
        finally:
            await sink.stop()

    outcomes, appended, via_send_batch = asyncio.run(run())
    assert outcomes == ["ok"] * calls
    got = read_topic(kafka_up.bootstrap, topic, 1 + calls * per_call, settle=1.0)
    seqs = [int(r.value) for r in got]
    assert seqs == list(range(1 + calls * per_call)), "every record once, in the order submitted"
    assert appended > 1, f"{appended} batches for {calls} calls"
    assert via_send_batch < appended, f"{via_send_batch} of {appended} batches went through send_batch"
