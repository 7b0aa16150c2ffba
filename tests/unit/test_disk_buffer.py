"""The disk buffer stage (agents.disk_buffer): durability, group commit, budget, rolling."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agents import disk_buffer as disk_buffer_module
from agents.disk_buffer import DiskBuffer, seal_path
from agents.records import Record
from agents.segments import HEADER_LEN, encode_records, iter_records, scan_segment
from core.errors import BufferError, BufferFull

MiB = 1024 * 1024


def batch(start: int, n: int = 10, topic: str = "events") -> list[Record]:
    return [Record(topic, b"k%06d" % i, (("topic", topic.encode()),), b"v" * 100 + b"%06d" % i, 1_000 + i)
            for i in range(start, start + n)]


def all_records(paths: list[Path]) -> list[Record]:
    return [r for path in paths for _, _, r in iter_records(path)]


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.seg"))


@pytest_asyncio.fixture
async def make_buffer(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    buffers: list[DiskBuffer] = []

    async def make(**kwargs: Any) -> DiskBuffer:
        kwargs.setdefault("max_bytes", 64 * MiB)
        buf = DiskBuffer(kwargs.pop("directory", tmp_path / "buffer"), **kwargs)
        await buf.start()
        buffers.append(buf)
        return buf

    yield make
    for buf in buffers:
        await buf.stop()


@pytest.mark.asyncio
async def test_append_returns_after_the_records_are_on_disk_and_counted(make_buffer: Any, tmp_path: Path) -> None:
    buf = await make_buffer()
    await buf.append(batch(0))
    stats = buf.stats()
    assert (stats.events, stats.segments, stats.appended_events, stats.fsyncs) == (10, 1, 10, 1)
    assert stats.bytes == disk_bytes(tmp_path / "buffer") == HEADER_LEN + len(encode_records(batch(0)))
    assert stats.oldest_timestamp_ms == 1_000 and stats.pending_bytes == 0
    assert buf.closed_segments() == []


@pytest.mark.asyncio
async def test_fifty_concurrent_appends_share_far_fewer_fsyncs(make_buffer: Any) -> None:
    buf = await make_buffer()
    await asyncio.gather(*(buf.append(batch(i * 10)) for i in range(50)))
    stats = buf.stats()
    assert stats.events == 500 and stats.appended_events == 500
    assert 1 <= stats.fsyncs < 50


@pytest.mark.asyncio
async def test_budget_reached_raises_buffer_full_and_writes_nothing_for_that_call(
    make_buffer: Any, tmp_path: Path
) -> None:
    one = len(encode_records(batch(0)))
    buf = await make_buffer(max_bytes=HEADER_LEN + 3 * one + one // 2)
    for i in range(3):
        await buf.append(batch(i * 10))
    before = disk_bytes(tmp_path / "buffer")
    with pytest.raises(BufferFull) as info:
        await buf.append(batch(30))
    assert info.value.retriable
    assert disk_bytes(tmp_path / "buffer") == before == buf.stats().bytes
    assert buf.stats().events == 30


@pytest.mark.asyncio
async def test_segments_roll_by_size_and_none_exceeds_the_limit(make_buffer: Any, tmp_path: Path) -> None:
    one = len(encode_records(batch(0)))
    buf = await make_buffer(segment_max_bytes=HEADER_LEN + 3 * one)
    for i in range(10):
        await buf.append(batch(i * 10))
    closed = buf.closed_segments()
    assert len(closed) == 3 and buf.stats().segments == 4
    assert all(p.stat().st_size <= HEADER_LEN + 3 * one for p in closed)
    await buf.roll()
    assert all_records(buf.closed_segments()) == [r for i in range(10) for r in batch(i * 10)]


@pytest.mark.asyncio
async def test_group_larger_than_a_segment_is_split_across_segments(make_buffer: Any) -> None:
    one = len(encode_records(batch(0)))
    buf = await make_buffer(segment_max_bytes=HEADER_LEN + 2 * one)
    await asyncio.gather(*(buf.append(batch(i * 10)) for i in range(7)))
    await buf.roll()
    assert len(buf.closed_segments()) == 4
    assert buf.stats().events == 70 and len(all_records(buf.closed_segments())) == 70


@pytest.mark.asyncio
async def test_explicit_roll_closes_the_active_segment_only_when_it_holds_events(make_buffer: Any) -> None:
    buf = await make_buffer()
    assert await buf.roll() is False
    await buf.append(batch(0))
    assert await buf.roll() is True
    assert await buf.roll() is False
    assert len(buf.closed_segments()) == 1
    await buf.append(batch(10))
    assert len(buf.closed_segments()) == 1 and buf.stats().segments == 2
    assert all_records(buf.closed_segments()) == batch(0)


@pytest.mark.asyncio
async def test_segment_older_than_its_max_age_rolls(make_buffer: Any) -> None:
    buf = await make_buffer(segment_max_age=0.2)
    await buf.append(batch(0))
    assert await buf.roll_if_due() is False
    await asyncio.sleep(0.25)
    assert await buf.roll_if_due() is True
    await buf.append(batch(10))
    await asyncio.sleep(0.25)
    await buf.append(batch(20))  # the append itself rolls the aged segment first
    assert len(buf.closed_segments()) == 2


@pytest.mark.asyncio
async def test_restart_sees_every_event_in_closed_segments_in_order(tmp_path: Path) -> None:
    directory = tmp_path / "buffer"
    first = DiskBuffer(directory, max_bytes=64 * MiB, segment_max_bytes=4096)
    await first.start()
    for i in range(20):
        await first.append(batch(i * 10))
    await first.stop()

    second = DiskBuffer(directory, max_bytes=64 * MiB)
    await second.start()
    try:
        closed = second.closed_segments()
        assert len(closed) == second.stats().segments > 1
        assert closed == sorted(closed)
        assert second.stats().events == 200 and second.stats().bytes == disk_bytes(directory)
        assert second.stats().oldest_timestamp_ms == 1_000
        assert all_records(closed) == [r for i in range(20) for r in batch(i * 10)]
        await second.append(batch(500))
        assert second.closed_segments() == closed  # old segments are never reopened
    finally:
        await second.stop()


@pytest.mark.asyncio
async def test_restart_quarantines_a_corrupt_record_and_removes_empty_segments(tmp_path: Path) -> None:
    """A segment without a seal (the one open at a crash) is recovered before the buffer starts."""
    directory = tmp_path / "buffer"
    first = DiskBuffer(directory, max_bytes=64 * MiB)
    await first.start()
    for i in range(3):
        await first.append(batch(i * 10, n=1))
    await first.stop()
    (segment,) = directory.glob("*.seg")
    seal_path(segment).unlink()  # as after a crash: it was never closed
    offsets = [o for o, _, _ in iter_records(segment)]
    data = bytearray(segment.read_bytes())
    data[offsets[1] + 40] ^= 0xFF
    segment.write_bytes(bytes(data))
    (directory / "00000000000000000001.seg").write_bytes(b"SPWSEG1\n")

    second = DiskBuffer(directory, max_bytes=64 * MiB)
    await second.start()
    try:
        assert second.closed_segments() == [segment]
        assert second.stats().events == 2 and second.stats().quarantined_records == 1
        assert list((directory / "quarantine").iterdir())
        assert [r.timestamp_ms for r in all_records([segment])] == [1_000, 1_020]
    finally:
        await second.stop()


@pytest.mark.asyncio
async def test_write_error_fails_that_append_and_the_next_one_succeeds(
    make_buffer: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    buf = await make_buffer()
    await buf.append(batch(0))
    real_pwrite = os.pwrite
    calls = {"n": 0}

    def failing_pwrite(fd: int, data: Any, offset: int) -> int:
        calls["n"] += 1
        if calls["n"] == 1:  # half the group reaches the file, then the disk is full
            real_pwrite(fd, bytes(data[: len(data) // 2]), offset)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(disk_buffer_module.os, "pwrite", failing_pwrite)
    with pytest.raises(BufferError) as info:
        await buf.append(batch(10))
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert buf.stats().bytes == disk_bytes(tmp_path / "buffer")
    await buf.append(batch(20))
    assert buf.stats().events == 20 and buf.stats().pending_bytes == 0
    await buf.stop()

    (segment,) = (tmp_path / "buffer").glob("*.seg")
    assert scan_segment(segment).clean
    assert all_records([segment]) == batch(0) + batch(20)


@pytest.mark.asyncio
async def test_fsync_error_fails_that_append_and_keeps_only_acknowledged_data(
    make_buffer: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    buf = await make_buffer()
    await buf.append(batch(0))
    real_fsync = os.fsync
    calls = {"n": 0}

    def failing_fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(disk_buffer_module.os, "fsync", failing_fsync)
    with pytest.raises(BufferError):
        await buf.append(batch(10))
    await buf.append(batch(20))
    await buf.stop()
    (segment,) = (tmp_path / "buffer").glob("*.seg")
    assert all_records([segment]) == batch(0) + batch(20)


@pytest.mark.asyncio
async def test_stop_flushes_queued_appends_then_refuses_new_ones(make_buffer: Any) -> None:
    buf = await make_buffer()
    appends = [asyncio.create_task(buf.append(batch(i * 10))) for i in range(20)]
    await asyncio.sleep(0)
    await buf.stop()
    await asyncio.gather(*appends)
    assert buf.stats().events == 200
    with pytest.raises(BufferError):
        await buf.append(batch(0))
    await buf.stop()  # idempotent


@pytest.mark.asyncio
async def test_cancelled_stop_still_resolves_every_queued_append(make_buffer: Any) -> None:
    buf = await make_buffer()
    appends = [asyncio.create_task(buf.append(batch(i * 10))) for i in range(20)]
    await asyncio.sleep(0)
    stopping = asyncio.create_task(buf.stop())
    await asyncio.sleep(0)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    await asyncio.wait_for(asyncio.gather(*appends), timeout=5)
    await buf.stop()
    assert buf.stats().events == 200


@pytest.mark.asyncio
async def test_writer_that_dies_fails_every_waiting_append(
    make_buffer: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    buf = await make_buffer()

    async def broken_commit(batch: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(buf, "_commit", broken_commit)
    results = await asyncio.gather(*(buf.append(batch(i)) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, BufferError) for r in results)
    assert "writer task DIED" in caplog.text
    with pytest.raises(BufferError):
        await buf.append(batch(0))


@pytest.mark.asyncio
async def test_writer_that_dies_is_reported_unhealthy_then_restarted_and_appends_work_again(
    make_buffer: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(disk_buffer_module, "WRITER_RESTART_DELAY", 0.05)
    buf = await make_buffer()
    await buf.append(batch(0))  # acknowledged before the failure
    real_commit = buf._commit
    calls = {"n": 0}

    async def commit_that_fails_once(items: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("bug")
        await real_commit(items)

    monkeypatch.setattr(buf, "_commit", commit_that_fails_once)
    assert buf.healthy
    with pytest.raises(BufferError):
        await buf.append(batch(1))
    assert not buf.healthy  # /ready tells the truth while the writer is down
    assert "writer task DIED" in caplog.text
    await asyncio.sleep(0.3)
    assert buf.healthy and buf.writer_restarts == 1
    await buf.append(batch(2))
    await buf.roll()
    seen = [r for p in buf.closed_segments() for _, _, r in iter_records(p)]
    assert seen == batch(0) + batch(2)


@pytest.mark.asyncio
async def test_writer_that_keeps_dying_stays_down_and_unhealthy(
    make_buffer: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(disk_buffer_module, "WRITER_RESTART_DELAY", 0.01)
    buf = await make_buffer()

    async def broken_commit(items: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(buf, "_commit", broken_commit)
    for _ in range(disk_buffer_module.WRITER_MAX_RESTARTS + 1):
        with pytest.raises(BufferError):
            await buf.append(batch(1))
        await asyncio.sleep(0.1)
    assert not buf.healthy
    assert buf.writer_restarts == disk_buffer_module.WRITER_MAX_RESTARTS
    assert "not restarting it" in caplog.text


@pytest.mark.asyncio
async def test_drained_and_deleted_segments_leave_the_accounting_right(make_buffer: Any, tmp_path: Path) -> None:
    buf = await make_buffer()
    await buf.append(batch(0))
    await buf.roll()
    await buf.append(batch(100))
    await buf.roll()
    first, second = buf.closed_segments()
    buf.note_drained(first, 4)
    assert buf.stats().events == 16 and buf.segment_events(first) == 6
    buf.note_drained(first, 100)
    assert buf.stats().events == 10 and buf.stats().oldest_timestamp_ms == 1_100
    await buf.delete_segment(first)
    assert not first.exists() and buf.closed_segments() == [second]
    assert buf.stats().bytes == disk_bytes(tmp_path / "buffer") and buf.stats().segments == 1
    await buf.delete_segment(second)
    assert buf.stats().events == 0 and buf.stats().oldest_timestamp_ms is None and buf.stats().bytes == 0
    with pytest.raises(BufferError):
        await buf.delete_segment(second)


@pytest.mark.asyncio
async def test_closed_segment_damaged_after_start_is_recovered_with_accounting(make_buffer: Any) -> None:
    buf = await make_buffer()
    for i in range(3):
        await buf.append(batch(i * 10, n=1))
    await buf.roll()
    (segment,) = buf.closed_segments()
    offsets = [o for o, _, _ in iter_records(segment)]
    data = bytearray(segment.read_bytes())
    data[offsets[1] + 40] ^= 0xFF
    segment.write_bytes(bytes(data))
    buf.note_drained(segment, 1)

    report = await buf.recover(segment)

    assert report.kept_events == 2 and len(report.quarantined_ranges) == 1
    assert buf.stats().events == 1 and buf.stats().quarantined_records == 1
    assert buf.stats().bytes == segment.stat().st_size
    assert [r.timestamp_ms for r in all_records([segment])] == [1_000, 1_020]


@pytest.mark.asyncio
async def test_active_segment_cannot_be_deleted_or_drained(make_buffer: Any) -> None:
    buf = await make_buffer()
    await buf.append(batch(0))
    (active,) = (Path(p) for p in buf._segments)
    with pytest.raises(BufferError):
        await buf.delete_segment(active)
    with pytest.raises(BufferError):
        buf.note_drained(active, 1)


@pytest.mark.asyncio
async def test_start_takes_sealed_segments_unread_and_scans_only_the_unsealed_one(tmp_path: Path) -> None:
    """Issue 12: start-up must not grow with the backlog. Closed segments carry a seal (size,
    events, first receive time); only a segment without one that matches is read at start."""
    directory = tmp_path / "buffer"
    first = DiskBuffer(directory, max_bytes=64 * MiB)
    await first.start()
    for i in range(3):
        await first.append(batch(i * 10))
        assert await first.roll()
    await first.append(batch(100, n=4))  # left open: the crash below never closes it
    stats = first.stats()
    *sealed, open_one = sorted(directory.glob("*.seg"))
    assert [seal_path(p).exists() for p in (*sealed, open_one)] == [True, True, True, False]
    await first.stop()
    seal_path(open_one).unlink()  # as if the worker died before closing it
    # damage one sealed segment: start trusts its seal, the drain's CRC check finds it later
    data = bytearray(sealed[1].read_bytes())
    data[HEADER_LEN + 40] ^= 0xFF
    sealed[1].write_bytes(bytes(data))
    (directory / "00000000000000000001.seg.sealed").write_text("{}")  # a seal whose segment is gone
    reads: list[Path] = []
    real_scan = disk_buffer_module.recover_segment

    def counting(path: Path, qdir: Path) -> Any:
        reads.append(Path(path))
        return real_scan(path, qdir)

    disk_buffer_module.recover_segment = counting  # type: ignore[assignment]
    try:
        second = DiskBuffer(directory, max_bytes=64 * MiB)
        await second.start()
    finally:
        disk_buffer_module.recover_segment = real_scan  # type: ignore[assignment]
    try:
        assert reads == [open_one] and second.scanned_at_start == 1
        assert second.stats().events == stats.events == 34
        assert second.stats().bytes == disk_bytes(directory)
        assert not (directory / "00000000000000000001.seg.sealed").exists()
        assert seal_path(open_one).exists(), "a segment recovered at start is sealed for the next one"
        report = await second.recover(sealed[1])  # what the drain does on CorruptRecord
        assert len(report.quarantined_ranges) == 1 and second.stats().events == 33
        assert seal_path(sealed[1]).exists() and second.stats().bytes == disk_bytes(directory)
        await second.delete_segment(sealed[0])
        assert not sealed[0].exists() and not seal_path(sealed[0]).exists()
    finally:
        await second.stop()
    third = DiskBuffer(directory, max_bytes=64 * MiB)
    await third.start()
    try:
        assert third.scanned_at_start == 0 and third.stats().events == 23
    finally:
        await third.stop()


@pytest.mark.asyncio
async def test_a_seal_that_does_not_match_its_segment_is_ignored(tmp_path: Path) -> None:
    directory = tmp_path / "buffer"
    first = DiskBuffer(directory, max_bytes=64 * MiB)
    await first.start()
    await first.append(batch(0))
    await first.stop()
    (segment,) = directory.glob("*.seg")
    with segment.open("ab") as f:  # bytes the seal does not vouch for (a torn, unsynced append)
        f.write(b"\x00" * 7)
    second = DiskBuffer(directory, max_bytes=64 * MiB)
    await second.start()
    try:
        assert second.scanned_at_start == 1 and second.stats().events == 10
        assert second.stats().bytes == disk_bytes(directory)
    finally:
        await second.stop()
