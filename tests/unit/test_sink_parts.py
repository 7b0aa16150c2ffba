"""How the Kafka sink tells a call which batches hold its records (``KafkaSink.submit``'s
parts), and how ``send_within`` turns the batches' outcomes into the call's delivery.

No broker: the producer is built but never started, its partitions are given, and the lanes'
sender tasks are never run, so the batches stay where ``submit`` put them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from agents.kafka_sink import KafkaSink, Part
from agents.records import Record
from core.errors import SinkRefused
from core.settings import KafkaSettings, ProducerSettings, Size


class _Never:
    """Stands in for a lane's sender task: the batches stay in the lane."""


@pytest_asyncio.fixture
async def sink() -> AsyncIterator[KafkaSink]:
    sink = KafkaSink(KafkaSettings(producer=ProducerSettings(max_batch_size=Size(4096))))
    sink.producers, sink.generations = [sink._build()], [0]

    async def partitions(topic: str) -> list[int]:
        if topic == "refused":
            raise SinkRefused("no such topic", topic=topic, reason="unknown_topic")
        return [0, 1, 2]

    sink._partitions = partitions  # type: ignore[method-assign]
    sink.spawn = lambda coro: (coro.close(), _Never())[1]  # type: ignore[assignment,method-assign,func-returns-value,return-value]
    yield sink
    sink.producers[0]._closed = True  # never started: nothing to stop


def records(n: int, tag: str, size: int = 900, topics: tuple[str, ...] = ("a", "b")) -> list[Record]:
    return [Record(topics[i % len(topics)], f"key-{i % 7}".encode(), [("n", f"{tag}{i}".encode())], b"x" * size, 1)
            for i in range(n)]


def batches_of(sink: KafkaSink) -> dict[asyncio.Future[Any], list[Record]]:
    """Every batch in the sink's lanes (closed or open): its future and its records."""
    out = {}
    for lane in sink._lanes.values():
        for _, fut, recs in lane.queue:
            out[fut] = recs
        if lane.open_fut is not None:
            out[lane.open_fut] = lane.open_recs
    return out


def check_parts(sink: KafkaSink, call: list[Record], parts: list[Part]) -> None:
    held = batches_of(sink)
    for fut, first, part in parts:
        assert held[fut][first:first + len(part)] == part  # the part is where it says, in its batch
    assert sorted(id(r) for _, _, part in parts for r in part) == sorted(id(r) for r in call)  # each record once
    for topic in {r.topic for r in call}:  # per partition, the call's order
        for lane in (lane for (t, _), lane in sink._lanes.items() if t == topic):
            mine = [r for _, _, part in parts for r in part if (r.topic, sink._key_partitions[r.topic][r.key or b""])
                    == (topic, lane.partition)]
            assert mine == [r for r in call if r.topic == topic and
                            sink._key_partitions[topic][r.key or b""] == lane.partition]


@pytest.mark.asyncio
async def test_parts_of_calls_that_fill_batches_say_where_each_record_is(sink: KafkaSink) -> None:
    first, second = records(40, "first-"), records(25, "second-")
    parts1, refused1 = await sink.submit(first, whole=True)
    parts2, refused2 = await sink.submit(second, whole=True)
    assert not refused1 and not refused2
    check_parts(sink, first, parts1)
    check_parts(sink, second, parts2)
    assert len({fut for fut, _, _ in parts1}) > len(sink._lanes)  # batches filled: some lane has several
    # the second call went on in the batches the first left open: some part starts past index 0
    assert any(first_index > 0 for _, first_index, _ in parts2)


@pytest.mark.asyncio
async def test_a_refused_topic_sends_nothing_of_a_whole_call_and_only_itself_otherwise(sink: KafkaSink) -> None:
    call = records(9, "r-", topics=("a", "refused", "b"))
    parts, refused = await sink.submit(call, whole=True)
    assert parts == [] and not batches_of(sink)
    assert [r for r, _ in refused] == [r for r in call if r.topic == "refused"]
    parts, refused = await sink.submit(call)
    assert [r for r, _ in refused] == [r for r in call if r.topic == "refused"]
    check_parts(sink, [r for r in call if r.topic != "refused"], parts)


@pytest.mark.asyncio
async def test_send_within_reports_each_record_of_a_split_batch_and_of_a_batch_never_acknowledged(
        sink: KafkaSink) -> None:
    await sink.submit(records(3, "before-"))  # another call's records open the batches
    call = records(30, "s-")
    task = asyncio.ensure_future(sink.send_within(call, 0.5))
    for _ in range(3):  # the task runs up to its wait on the batches
        await asyncio.sleep(0)
    held = batches_of(sink)
    assert len(held) >= 4
    shared = [fut for fut, recs in held.items() if recs[0] not in call and recs[-1] in call]
    split = shared[0]  # a batch both calls share, split after Kafka refused it as too large
    silent = next(fut for fut in held if fut is not split)
    acked = [fut for fut in held if fut is not split and fut is not silent]
    index = next(i for i, r in enumerate(held[split]) if r in call)
    bad = held[split][index]  # the one record Kafka refused of the split batch: not the batch's first
    errors: list[SinkRefused | None] = [None] * len(held[split])
    errors[index] = SinkRefused("too large", topic=bad.topic, reason="too_large")
    split.set_result(tuple(errors))
    for fut in acked:
        fut.set_result(None)
    delivery = await task  # ``silent`` never settles: its records are unacknowledged at the deadline
    assert [r for r, _ in delivery.refused] == [bad]
    assert sorted(id(r) for r in delivery.unacked) == sorted(id(r) for r in held[silent] if r in call)
    assert delivery.error is not None and "no ack" in delivery.error


@pytest.mark.asyncio
async def test_waiting_for_a_batch_to_drain_ends_when_it_drains_or_at_the_timeout_and_leaves_no_callback() -> None:
    from agents.kafka_sink import _drained

    class Batch:
        def __init__(self) -> None:
            self._drain_waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    loop = asyncio.get_running_loop()
    stuck = Batch()
    t0 = loop.time()
    await _drained(stuck, 0.2)
    waited = loop.time() - t0
    assert 0.15 <= waited < 2.0, f"a batch that never drains is waited for {waited:.3f}s, not the 0.2 s timeout"
    assert not stuck._drain_waiter.done()
    assert len(stuck._drain_waiter._callbacks or []) == 0, "the timed-out wait left its callback on the batch"  # type: ignore[attr-defined]

    drains = Batch()
    loop.call_later(0.05, drains._drain_waiter.set_result, None)
    t0 = loop.time()
    await _drained(drains, 30)
    assert loop.time() - t0 < 5, "the wait ends when the batch drains, not at the timeout"

    failed = Batch()
    loop.call_later(0.05, failed._drain_waiter.set_exception, RuntimeError("expired"))
    await _drained(failed, 30)  # never raises: send_batch reports the batch's error
    failed._drain_waiter.exception()
