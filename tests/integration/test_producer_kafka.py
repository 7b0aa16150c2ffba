"""``[kafka.producer]`` against the real broker: each compression codec is written, stored
compressed (measured in the partition's log on the broker's disk) and read back intact."""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers import read_topic, unique, wait_until

from agents.kafka_sink import KafkaSink
from agents.records import Record
from core.settings import KafkaSettings, ProducerSettings, Size
from devtools.kafka import Broker

pytestmark = pytest.mark.kafka

EVENTS = 200
BODY = 1000  # bytes of a very compressible body: 200 kB a topic uncompressed


def records(topic: str) -> list[Record]:
    now = int(time.time() * 1000)
    return [Record(topic, b"k", (("seq", b"%d" % i),), (b"%06d " % i).ljust(BODY, b"a"), now) for i in range(EVENTS)]


def log_bytes(broker: Broker, topic: str) -> int:
    return sum(p.stat().st_size for p in (broker.data_dir / "logs").glob(f"{topic}-*/*.log"))


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_each_compression_type_is_stored_compressed_and_reads_back_intact(kafka_up: Broker, codec: str) -> None:
    topic = unique(f"codec-{codec}")
    producer = ProducerSettings(compression_type=codec, linger_ms=5, max_batch_size=Size(64 * 1024),  # type: ignore[arg-type]
                                request_timeout_ms=10_000)

    async def run() -> None:
        sink = KafkaSink(KafkaSettings(bootstrap_servers=kafka_up.bootstrap, producer=producer))
        await sink.start()
        try:
            delivery = await sink.send_within(records(topic), 30)
            assert delivery.ok, delivery.error
        finally:
            await sink.stop()

    asyncio.run(run())
    got = read_topic(kafka_up.bootstrap, topic, EVENTS, timeout=60)
    assert [bytes(r.value) for r in got] == [r.value for r in records(topic)]
    stored = wait_until(lambda: log_bytes(kafka_up, topic), 10, what="the partition's log")
    raw = EVENTS * BODY
    print(f"{codec}: {raw} body bytes stored in {stored} log bytes ({stored / raw:.1%})")
    if codec == "none":
        assert stored > raw
    else:
        assert stored < raw / 5, f"{codec}: {stored} bytes on disk for {raw} bytes of bodies"
