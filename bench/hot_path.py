"""The per-event steps of a healthy call, each alone, in the process (no broker, no sockets).

    .venv/bin/python -m bench.hot_path

- decode: one appendBatch frame of 100 × 512 B events (the load generator's, compact), by the
  decoder this install runs (mypyc's build or the plain Python one: ``SPILLWAY_PURE_PYTHON=1``
  chooses the latter) — µs an event;
- reply: the framed reply of one call — µs a call;
- submit: a routed call of 100 records over 3 topics × 3 partitions into the Kafka sink's
  batches (aiokafka's C builder; the producer is built, never started) — µs a record;
- drain read: a segment of 60,000 such events read back in the drain's chunks of 2,000, the
  last two chunks kept alive as the drain keeps them in flight — µs a record, with CPython's
  collector as it comes and then as the worker tunes it (``core/heap.py``).

Best of 7 repetitions each: these are CPU costs, so the least disturbed run is the figure.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from agents import thrift_codec
from agents.kafka_sink import KafkaSink
from agents.records import Record
from agents.segments import FILE_HEADER, encode_records, iter_chunks
from bench.loadgen import make_batches
from core import heap
from core.settings import KafkaSettings

TOPICS = ["bench-a", "bench-b", "bench-c"]


def best(run: Any, n: int, reps: int = 7) -> float:
    """µs a unit: the fastest of ``reps`` runs of ``run()``, which does ``n`` units."""
    fastest = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        fastest = min(fastest, time.perf_counter() - t0)
    return fastest / n * 1e6


def decode_and_reply() -> tuple[float, float]:
    frames = [f[4:] for f in make_batches(8, 100, 512, TOPICS, "p0", "compact")]
    codec = thrift_codec.Codec("compact")

    def decode() -> None:
        for _ in range(50):
            for frame in frames:
                codec.decode(frame)

    call = codec.decode(frames[0])

    def reply() -> None:
        for _ in range(20_000):
            codec.reply(call, 0)

    return best(decode, 50 * len(frames) * 100), best(reply, 20_000)


async def submit() -> float:
    sink = KafkaSink(KafkaSettings())
    sink.producers, sink.generations = [sink._build()], [0]

    async def partitions(topic: str) -> list[int]:
        return [0, 1, 2]

    sink._partitions = partitions  # type: ignore[method-assign]
    sink.spawn = lambda coro: (coro.close(), object())[1]  # type: ignore[assignment,method-assign,func-returns-value,return-value]
    calls = []
    for c in range(50):
        calls.append([Record(TOPICS[seq % 3], f"key-{seq % 1000}".encode(),
                             [("topic", TOPICS[seq % 3].encode()), ("key", f"key-{seq % 1000}".encode())],
                             b"x" * 512, 1_700_000_000_000) for seq in range(c * 100, c * 100 + 100)])
    fastest = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(20):
            sink._lanes.clear()  # fresh batches: they never go anywhere
            for records in calls:
                await sink.submit(records, True)
        fastest = min(fastest, time.perf_counter() - t0)
    sink.producers[0]._closed = True  # built, never started: nothing to stop
    return fastest / (20 * 50 * 100) * 1e6


def drain_read() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.seg"
        path.write_bytes(FILE_HEADER + encode_records(
            Record(TOPICS[seq % 3], f"key-{seq % 1000}".encode(),
                   (("topic", TOPICS[seq % 3].encode()), ("key", f"key-{seq % 1000}".encode())),
                   b"x" * 512, 1_700_000_000_000 + seq) for seq in range(60_000)))

        def read() -> None:
            in_flight: list[list[Record]] = []
            for _, _, chunk in iter_chunks(path, size=2000):
                in_flight = [*in_flight[-1:], chunk]

        return best(read, 60_000, reps=5)


def main() -> None:
    decode, reply = decode_and_reply()
    which = "mypyc's build" if thrift_codec.COMPILED else "plain Python"
    print(f"decode ({which}): {decode:.2f} µs/event")
    print(f"reply: {reply:.2f} µs/call")
    print(f"sink submit: {asyncio.run(submit()):.2f} µs/record")
    default = drain_read()
    heap.settle()
    print(f"drain read: {default:.2f} µs/record with the collector's defaults, "
          f"{drain_read():.2f} after core.heap.settle()")


if __name__ == "__main__":
    main()
