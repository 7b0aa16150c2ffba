"""The drain against a real disk buffer in a temp directory and a Kafka that fails on command.

Each test is one of the ways an acknowledged event could be lost or silently resent between
the buffer and Kafka (issue 9): it fails on the code before its fix.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio

from agents import drain as drain_module
from agents.disk_buffer import DiskBuffer, seal_path
from agents.drain import Drain, read_progress
from agents.records import Delivery, Record
from agents.segments import iter_records
from core.errors import SinkRefused
from core.metrics import Metrics
from core.settings import DrainSettings, Duration

MiB = 1024 * 1024
NOW_MS = int(time.time() * 1000)  # recent: older than drain.max_age would be archived, not sent


def records(n: int, *, topic: str = "t", sizes: Sequence[int] = (100,)) -> list[Record]:
    return [Record(topic, b"k%d" % i, (("topic", topic.encode()),), b"%06d:" % i + b"x" * sizes[i % len(sizes)],
                   NOW_MS + i) for i in range(n)]


class Kafka:
    """A Sender: acknowledges until ``ack_budget`` records are used up, refuses ``refuse`` topics."""

    def __init__(self) -> None:
        self.sent: list[Record] = []
        self.ack_budget: int | None = None
        self.refuse: set[str] = set()

    async def send_within(self, recs: Sequence[Record], timeout: float) -> Delivery:  # noqa: ASYNC109
        out = Delivery()
        for rec in recs:
            if rec.topic in self.refuse:
                out.refused.append((rec, SinkRefused("UnknownTopicOrPartitionError", topic=rec.topic,
                                                     reason="unknown_topic")))
            elif self.ack_budget is not None and self.ack_budget <= 0:
                out.unacked.append(rec)
                out.error = "KafkaConnectionError"
            else:
                self.sent.append(rec)
                if self.ack_budget is not None:
                    self.ack_budget -= 1
        return out


class Node:
    """What one worker process holds: a buffer, a drain, its metrics (a restart builds a new one)."""

    def __init__(self, directory: Path, kafka: Kafka, batch_events: int) -> None:
        self.buffer = DiskBuffer(directory, max_bytes=64 * MiB)
        self.metrics = Metrics()
        self.reports: list[Any] = []

        async def report(outcome: Any) -> None:
            self.reports.append(outcome)

        supervisor = SimpleNamespace(kafka_usable=True, report=report)
        settings = DrainSettings(interval=Duration(5.0), batch_events=batch_events, max_events_per_second=0,
                                 archive_directory=directory.parent / "archive")
        self.drain = Drain(settings, self.buffer, kafka, supervisor, self.metrics)  # type: ignore[arg-type]

    def duplicates(self) -> float:
        return self.metrics.registry.get_sample_value("spillway_duplicates_total") or 0.0

    async def drain_until_empty(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            await self.drain.run_once()
            if not self.buffer.closed_segments():
                return
        raise AssertionError(f"drain did not empty the buffer: {self.buffer.stats()}")


@pytest_asyncio.fixture
async def make_node(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    nodes: list[Node] = []

    async def make(kafka: Kafka, batch_events: int = 1) -> Node:
        node = Node(tmp_path / "buffer", kafka, batch_events)
        await node.buffer.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.buffer.stop()


async def buffered(node: Node, recs: list[Record]) -> Path:
    await node.buffer.append(recs)
    await node.buffer.roll()
    (path,) = node.buffer.closed_segments()
    return path


def offsets(path: Path) -> list[int]:
    return [off for off, _, _ in iter_records(path)]


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def bodies(recs: Sequence[Record]) -> list[bytes]:
    return [r.value[:6] for r in recs]


@pytest.mark.asyncio
@pytest.mark.parametrize("sizes", [(100,), (100, 700, 40, 3000)], ids=["equal-sizes", "unequal-sizes"])
@pytest.mark.parametrize("restarts", [1, 2], ids=["drained-after-recovery", "restarted-again-before-draining"])
@pytest.mark.parametrize("sealed", [False, True], ids=["unsealed", "sealed"])
async def test_progress_recorded_before_a_recovery_rewrite_never_skips_or_sticks(
    make_node: Callable[..., Any], sizes: Sequence[int], restarts: int, sealed: bool
) -> None:
    """The issue's reproduction: 4 records, progress at record 3, a byte flipped in record 1
    (already in Kafka), restart: records 3 and 4 must still reach Kafka. With the recovery in
    hand the drain carries its progress over the rewrite; when the rewrite happened in an
    earlier run, the progress no longer matches and the segment starts over, counted.
    Unsealed: start-up recovers the segment (as the one open at a crash). Sealed: start-up
    takes it unread; the drain resumes at its progress and never reads the damage."""
    kafka = Kafka()
    node = await make_node(kafka)
    recs = records(4, sizes=sizes)
    path = await buffered(node, recs)
    kafka.ack_budget = 2  # records 1 and 2 reach Kafka, then it goes down
    await node.drain.run_once()
    assert bodies(kafka.sent) == bodies(recs[:2])
    progress = read_progress(path.parent)
    assert progress is not None and progress.offset == offsets(path)[2]
    await node.buffer.stop()  # the worker stops; record 1 is damaged on disk meanwhile
    flip(path, offsets(path)[0] + 20)
    if not sealed:
        seal_path(path).unlink()

    kafka.ack_budget = None
    for _ in range(restarts - 1):  # a start that recovers the file, then stops before draining
        node = await make_node(kafka)
        await node.buffer.stop()
    node = await make_node(kafka)
    await node.drain_until_empty()

    assert set(bodies(kafka.sent)) == set(bodies(recs))  # 3 and 4 arrived (1 was in Kafka before the damage)
    resent = len(kafka.sent) - len(set(bodies(kafka.sent)))
    assert node.duplicates() >= resent  # whatever goes twice is counted
    if restarts == 2 and not sealed:
        assert resent >= 1  # started over: it cost duplicates, and said so
    else:
        assert resent == 0  # carried over the rewrite: nothing sent twice


@pytest.mark.asyncio
async def test_damage_found_ahead_of_progress_is_quarantined_and_nothing_before_it_resent(
    make_node: Callable[..., Any]
) -> None:
    kafka = Kafka()
    node = await make_node(kafka)
    recs = records(6, sizes=(100, 500))
    path = await buffered(node, recs)
    kafka.ack_budget = 2
    await node.drain.run_once()
    flip(path, offsets(path)[4] + 30)  # record 5, not yet drained, is damaged while the worker runs
    kafka.ack_budget = None
    await node.drain_until_empty()
    assert bodies(kafka.sent) == bodies(recs[:4] + recs[5:])  # nothing twice, nothing skipped but the damage
    assert node.duplicates() == 0
    assert node.buffer.stats().quarantined_records == 1


@pytest.mark.asyncio
async def test_closed_segment_cut_short_is_recovered_with_its_tail_kept_aside(
    make_node: Callable[..., Any]
) -> None:
    kafka = Kafka()
    node = await make_node(kafka, batch_events=10)
    recs = records(4)
    path = await buffered(node, recs)
    cut = path.stat().st_size - 7
    with path.open("r+b") as f:  # damage: the last frame loses its end
        tail = f.read()[offsets(path)[3]:cut]
        f.truncate(cut)
    await node.drain_until_empty()
    assert bodies(kafka.sent) == bodies(recs[:3])
    quarantined = list((path.parent / "quarantine").iterdir())
    assert quarantined and tail in quarantined[0].read_bytes()  # never deleted as if fully drained
    assert node.buffer.stats().quarantined_records >= 1 or quarantined


class Crash(BaseException):
    """The process dies here."""


@pytest.mark.asyncio
async def test_a_crash_after_a_segment_is_finished_resends_nothing_uncounted(
    make_node: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between 'segment done' and 'progress cleared' a crash must not resend the segment silently:
    whichever of the two steps comes first, the process dies right after it."""
    kafka = Kafka()
    node = await make_node(kafka, batch_events=2)
    recs = records(4)
    await buffered(node, recs)
    real_write, real_delete = drain_module.write_progress, node.buffer.delete_segment

    def write_then_crash(directory: Path, progress: Any) -> None:
        real_write(directory, progress)
        if progress is None:
            raise Crash

    async def delete_then_crash(path: Path) -> None:
        await real_delete(path)
        raise Crash

    monkeypatch.setattr(drain_module, "write_progress", write_then_crash)
    monkeypatch.setattr(node.buffer, "delete_segment", delete_then_crash)
    with pytest.raises(Crash):
        await node.drain.run_once()
    monkeypatch.setattr(drain_module, "write_progress", real_write)
    await node.buffer.stop()

    node = await make_node(kafka, batch_events=2)
    for _ in range(3):
        await node.drain.run_once()
    resent = len(kafka.sent) - len(recs)
    assert resent == node.duplicates()  # zero here: the segment was deleted first
    assert resent == 0


@pytest.mark.asyncio
async def test_duplicates_of_a_failed_chunk_are_counted_once_even_across_a_restart(
    make_node: Callable[..., Any]
) -> None:
    kafka = Kafka()
    node = await make_node(kafka, batch_events=4)
    recs = records(8)
    await buffered(node, recs)
    kafka.ack_budget = 6  # chunk 2 fails after two of its four records reached Kafka
    await node.drain.run_once()
    counted = node.duplicates()
    await node.buffer.stop()

    kafka.ack_budget = None
    node = await make_node(kafka, batch_events=4)
    await node.drain_until_empty()
    counted += node.duplicates()
    resent = len(kafka.sent) - len(set(bodies(kafka.sent)))
    assert set(bodies(kafka.sent)) == set(bodies(recs))
    assert resent == 2
    assert counted == resent  # counted once, not again at the restart


@pytest.mark.asyncio
async def test_events_kafka_refuses_for_good_go_to_undeliverable_and_the_drain_goes_on(
    make_node: Callable[..., Any]
) -> None:
    kafka = Kafka()
    kafka.refuse = {"nope"}
    node = await make_node(kafka, batch_events=3)
    good, poison = records(5, topic="good"), records(2, topic="nope")
    mixed = good[:2] + poison[:1] + good[2:4] + poison[1:] + good[4:]
    path = await buffered(node, mixed)
    await node.drain_until_empty()

    assert bodies(kafka.sent) == bodies(good)
    assert not path.exists()
    kept = [r for p in (path.parent / "undeliverable").glob("*.seg") for _, _, r in iter_records(p)]
    assert kept == poison  # topic, key, headers, body, timestamp: all kept for a replay
    assert node.metrics.registry.get_sample_value("spillway_events_undeliverable_total",
                                                  {"reason": "unknown_topic"}) == 2


class OneFailedCall(Kafka):
    """Fails the ``fail``-th call (1-based) once, acknowledges every other, as a window may meet."""

    def __init__(self, fail: int) -> None:
        super().__init__()
        self.calls = 0
        self.fail = fail

    async def send_within(self, recs: Sequence[Record], timeout: float) -> Delivery:  # noqa: ASYNC109
        self.calls += 1
        if self.calls == self.fail:
            return Delivery(list(recs), "NotEnoughReplicasError")
        return await super().send_within(recs, timeout)


@pytest.mark.asyncio
async def test_a_failed_chunk_inside_a_window_keeps_the_prefix_and_counts_what_goes_twice(
        make_node: Callable[..., Any]) -> None:
    """A segment's windows are 1, 2, 4, ... chunks. In the third (chunks 4-7): chunk 4
    acknowledged, chunk 5 not, chunks 6-7 acknowledged: the progress moves to the end of chunk 4
    only; chunks 6-7 go again and are counted."""
    kafka = OneFailedCall(fail=5)
    node = await make_node(kafka, batch_events=3)
    assert node.drain.settings.window >= 4
    recs = records(24)
    path = await buffered(node, recs)
    await node.drain.run_once()
    progress = read_progress(path.parent)
    assert progress is not None and progress.offset == offsets(path)[12] and progress.inflight_end is None
    assert node.duplicates() == 6  # chunks 6 and 7 reached Kafka and will be sent again
    await node.drain_until_empty()
    assert sorted(bodies(kafka.sent)) == sorted(bodies(recs) + bodies(recs[15:21]))
    assert len(kafka.sent) - len(recs) == node.duplicates()
