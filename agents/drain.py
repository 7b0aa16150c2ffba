"""Drain stage: closed buffer segments back into Kafka, each event to its own topic.

Runs from a Faust timer while the supervisor says Kafka is up. Segments go oldest
first, in chunks of ``drain.batch_events``. Progress is recorded durably in
``<buffer>/drain.progress`` (JSON, written to a temp file, fsynced, renamed)
*before* a chunk is sent (``inflight``) and *after* Kafka acknowledged it
(``offset``), so a restart resumes where it stopped; the events of a chunk that
was in flight at a crash may reach Kafka twice, and are counted in
``spillway_duplicates_total``. A segment is deleted only when every event in it
was acknowledged (or archived).

Events older than ``drain.max_age`` go to ``drain.archive_directory`` instead,
as gzip-compressed segment files (``<segment>.gz``) that ``replay`` reads.

The same :func:`drain_segment` serves the ``replay`` command. A segment being
drained is locked (``flock``) so a replay never sends it at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gzip
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson

from agents.disk_buffer import DiskBuffer
from agents.records import Record
from agents.segments import FILE_HEADER, HEADER_LEN, encode_records, iter_records
from agents.supervisor import Outcome, Supervisor
from topology.errors import BufferError, CorruptRecord
from topology.metrics import Metrics
from topology.ratelog import Throttled
from topology.settings import DrainSettings

logger = logging.getLogger(__name__)

PROGRESS_FILE = "drain.progress"


class Sender(Protocol):
    async def send_within(self, records: Sequence[Record], timeout: float) -> tuple[list[Record], str | None]: ...


@dataclass(frozen=True, slots=True)
class Progress:
    segment: str
    offset: int
    inflight_end: int | None = None
    inflight_events: int = 0


def read_progress(directory: Path) -> Progress | None:
    try:
        doc = orjson.loads((directory / PROGRESS_FILE).read_bytes())
        return Progress(doc["segment"], int(doc["offset"]), doc.get("inflight_end"), int(doc.get("inflight_events", 0)))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("drain: unreadable %s (%s); starting segments from their beginning", PROGRESS_FILE, exc)
        return None


def write_progress(directory: Path, progress: Progress | None) -> None:
    """Durably record progress (None: no segment in progress)."""
    path = directory / PROGRESS_FILE
    if progress is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(orjson.dumps({"segment": progress.segment, "offset": progress.offset,
                               "inflight_end": progress.inflight_end,
                               "inflight_events": progress.inflight_events}))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def segment_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive, non-blocking lock on a segment; yields False if someone else holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


class RateLimiter:
    """At most ``rate`` events per second on average (0: unlimited)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next = time.monotonic()

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self._next = max(self._next, now) + n / self.rate
        delay = self._next - now - n / self.rate
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass(frozen=True, slots=True)
class SegmentResult:
    sent: int
    archived: int
    skipped: int
    complete: bool
    error: str | None = None


def _chunks(path: Path, start: int, size: int) -> Iterator[tuple[int, int, list[Record]]]:
    """(first offset, end offset, records) in chunks of at most ``size`` records."""
    chunk: list[Record] = []
    first = end = start
    for offset, next_offset, rec in iter_records(path, start):
        if not chunk:
            first = offset
        chunk.append(rec)
        end = next_offset
        if len(chunk) >= size:
            yield first, end, chunk
            chunk = []
    if chunk:
        yield first, end, chunk


def archive(archive_dir: Path, segment: Path, records: Sequence[Record]) -> None:
    """Append records to ``<archive>/<segment name>.gz`` (a gzip of a segment file) and fsync."""
    archive_dir.mkdir(parents=True, exist_ok=True)
    target = archive_dir / (segment.name + ".gz")
    new = not target.exists()
    with open(target, "ab") as raw:
        with gzip.GzipFile(fileobj=raw, mode="ab") as gz:
            if new:
                gz.write(FILE_HEADER)
            gz.write(encode_records(records))
        raw.flush()
        os.fsync(raw.fileno())


async def drain_segment(path: Path, sender: Sender, *, start: int = HEADER_LEN, batch_events: int = 2000,
                        timeout: float = 5.0, limiter: RateLimiter | None = None,
                        keep: Callable[[Record], bool] | None = None,
                        archive_before_ms: int | None = None, archive_dir: Path | None = None,
                        on_chunk: Callable[[int, int, int], None] | None = None,
                        before_chunk: Callable[[int, int, int], None] | None = None,
                        dry_run: bool = False, counts: dict[str, int] | None = None,
                        deadline: float | None = None) -> SegmentResult:
    """Send one segment's events from ``start`` to Kafka, each to its own topic.

    ``keep`` filters (replay's --topic/--since/--until; the rest is skipped);
    events received before ``archive_before_ms`` go to ``archive_dir`` instead.
    ``before_chunk(first, end, n)`` runs before a chunk is sent, ``on_chunk(end,
    sent, archived)`` after it is acknowledged. Stops at the first chunk Kafka does
    not acknowledge (``complete=False``, ``error`` set), or when the monotonic clock
    passes ``deadline`` (``complete=False``, no error: call again to go on).
    """
    sent = archived = skipped = 0
    chunks = _chunks(path, start, batch_events)
    while True:
        if deadline is not None and time.monotonic() > deadline:
            return SegmentResult(sent, archived, skipped, False)
        item = await asyncio.to_thread(next, chunks, None)
        if item is None:
            return SegmentResult(sent, archived, skipped, True)
        first, end, records = item
        if keep is not None:
            kept = [r for r in records if keep(r)]
            skipped += len(records) - len(kept)
            records = kept
        old: list[Record] = []
        if archive_before_ms is not None:
            old = [r for r in records if r.timestamp_ms < archive_before_ms]
            if old:
                records = [r for r in records if r.timestamp_ms >= archive_before_ms]
        if counts is not None:
            for r in records:
                counts[r.topic] = counts.get(r.topic, 0) + 1
        if dry_run:
            sent += len(records)
            continue
        if before_chunk is not None:
            await asyncio.to_thread(before_chunk, first, end, len(records))
        if old and archive_dir is not None:
            await asyncio.to_thread(archive, archive_dir, path, old)
            archived += len(old)
        if records:
            if limiter is not None:
                await limiter.take(len(records))
            left, error = await sender.send_within(records, timeout)
            if error is not None:
                return SegmentResult(sent + len(records) - len(left), archived, skipped, False, error)
            sent += len(records)
        if on_chunk is not None:
            await asyncio.to_thread(on_chunk, end, sent, archived)


class Drain:
    """The drain timer's worker: one segment at a time, oldest first."""

    def __init__(self, settings: DrainSettings, buffer: DiskBuffer, sink: Sender, supervisor: Supervisor,
                 metrics: Metrics, timeout: float | None = None) -> None:
        self.settings = settings
        self.buffer = buffer
        self.sink = sink
        self.supervisor = supervisor
        self.metrics = metrics
        self.timeout = timeout if timeout is not None else settings.timeout
        self.limiter = RateLimiter(settings.max_events_per_second)
        self._lock = asyncio.Lock()
        self.current: str | None = None
        self.drained_total = 0
        self._checked_crash = False
        self._throttled = Throttled(logger)

    @property
    def directory(self) -> Path:
        return self.buffer.directory

    async def run_once(self) -> int:
        """Drain while Kafka is up and closed segments remain; return events sent."""
        if self._lock.locked():
            return 0
        try:
            return await self._run_once()
        except (OSError, BufferError) as exc:
            # A full or failing disk (progress file, archive, rolling): retried next tick.
            self._throttled.log(logging.ERROR, "disk", "drain: disk error, retrying: %s", exc)
            return 0

    async def _run_once(self) -> int:
        async with self._lock:
            await self.buffer.roll_if_due()
            if not self.supervisor.failover.kafka_usable:
                return 0
            await self.buffer.roll()
            total = 0
            # Work for about one timer interval, then let the timer call again: progress is durable.
            deadline = time.monotonic() + max(0.2, self.settings.interval * 0.8)
            for path in self.buffer.closed_segments():
                if not self.supervisor.failover.kafka_usable:
                    break
                result = await self._drain(path, deadline)
                total += result.sent
                if not result.complete:
                    break
            return total

    async def _drain(self, path: Path, deadline: float | None = None) -> SegmentResult:
        progress = await asyncio.to_thread(read_progress, self.directory)
        start = HEADER_LEN
        if progress is not None and progress.segment == path.name:
            start = progress.offset
            if progress.inflight_end is not None and not self._checked_crash:
                # A chunk was in flight when the last run stopped: it may already be in Kafka.
                self.metrics.duplicates.inc(progress.inflight_events)
                logger.warning("drain: resuming %s at byte %d; %d events of the chunk in flight at the last "
                               "stop may reach Kafka twice", path.name, start, progress.inflight_events)
        self._checked_crash = True
        if start == HEADER_LEN and progress is None:
            logger.info("drain: starting %s (%d events)", path.name, self.buffer.segment_events(path))
        self.current = path.name
        max_age_ms = int(self.settings.max_age * 1000)
        directory = self.directory

        def before(first: int, end: int, n: int) -> None:
            write_progress(directory, Progress(path.name, first, end, n))

        def after(end: int, sent: int, archived: int) -> None:
            write_progress(directory, Progress(path.name, end))

        last = [0, 0]

        def counted(end: int, sent: int, archived: int) -> None:
            after(end, sent, archived)
            self.buffer.note_drained(path, (sent - last[0]) + (archived - last[1]))
            self.metrics.drained.inc(sent - last[0])
            self.metrics.archived.inc(archived - last[1])
            self.drained_total += sent - last[0]
            last[0], last[1] = sent, archived

        try:
            with segment_lock(path) as locked:
                if not locked:
                    logger.info("drain: %s is locked by a replay; skipping it for now", path.name)
                    return SegmentResult(0, 0, 0, False, "locked")
                result = await drain_segment(
                    path, self.sink, start=start, batch_events=self.settings.batch_events, timeout=self.timeout,
                    limiter=self.limiter, archive_before_ms=int(time.time() * 1000) - max_age_ms,
                    archive_dir=self.settings.archive_directory, before_chunk=before, on_chunk=counted,
                    deadline=deadline)
                if result.complete:
                    # Deleted while still locked, so a replay cannot take it in between.
                    await asyncio.to_thread(write_progress, self.directory, None)
                    try:
                        await self.buffer.delete_segment(path)
                    except BufferError as exc:
                        logger.error("drain: %s", exc)
        except CorruptRecord as exc:
            # Damage since start-up recovery: quarantine it the same way; records before it keep
            # their offsets, so the recorded progress stays valid and the next tick goes on.
            logger.error("drain: %s; recovering the segment", exc)
            await self.buffer.recover(path)
            return SegmentResult(0, 0, 0, False, None)
        finally:
            self.current = None
        if not result.complete and result.error is None:
            return result  # out of time for this tick; the next one resumes from the progress file
        if not result.complete:
            # Events of the failed chunk that Kafka did acknowledge will be sent again.
            self.metrics.duplicates.inc(max(0, result.sent - last[0]))
            await self.supervisor.report(Outcome(False, 0, f"drain: {result.error}"))
            return result
        logger.info("drain: %s done (%d sent, %d archived)", path.name, result.sent, result.archived)
        return result
