"""Drain stage: closed buffer segments back into Kafka, each event to its own topic.

Runs from a Faust timer while the supervisor says Kafka is up. Segments go oldest
first, in chunks of ``drain.batch_events``. Progress is recorded durably in
``<buffer>/drain.progress`` (JSON, written to a temp file, fsynced, renamed, the
directory fsynced) *before* a chunk is sent (``inflight``) and *after* Kafka
acknowledged it (``offset``), so a restart resumes where it stopped; the events of a
chunk that was in flight at a crash may reach Kafka twice, and are counted in
``spillway_duplicates_total`` (once).

Progress names the segment *and its size*: recovery only ever cuts bytes out of a
segment, so a rewrite always changes its size, and progress recorded before a rewrite
never points into a file it no longer describes. Progress that does not match its
segment starts that segment over from its beginning (the events already sent are
counted as duplicates); it never skips. A segment is read up to the size the buffer
recorded for it (a segment that ends early was damaged, and is recovered, never taken
as finished), and deleted only when every byte of it was read and every event in it
acknowledged, archived or set aside; progress is cleared after the delete, so a crash
in between resends nothing.

Events Kafka refuses for good (:class:`~core.errors.SinkRefused`: a topic it does not
have with auto-create off, a record over its size limit, a topic this client may not
write) go to ``<buffer>/undeliverable/<segment name>`` (segment files, fsynced, that
``spillway buffer`` and ``spillway replay`` read), with one log line per topic and
reason, and the drain goes on with the rest: one poison event never stalls it or parks
Kafka.

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
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from agents.disk_buffer import DiskBuffer
from agents.records import Delivery, Record
from agents.segments import (
    FILE_HEADER,
    HEADER_LEN,
    encode_records,
    fsync_dir,
    iter_chunks,
    make_dirs,
    shift_offset,
)
from agents.supervisor import Supervisor
from core.errors import BufferError, CorruptRecord, SinkRefused
from core.metrics import Metrics
from core.ratelog import Throttled
from core.settings import DrainSettings

logger = logging.getLogger(__name__)

PROGRESS_FILE = "drain.progress"
UNDELIVERABLE_DIR = "undeliverable"


class Sender(Protocol):
    async def send_within(self, records: Sequence[Record], timeout: float) -> Delivery: ...  # noqa: ASYNC109


@dataclass(frozen=True, slots=True)
class Progress:
    """Where the drain stands in one segment.

    ``size``: the segment's size when this was recorded (None in files written before
    it was kept: such progress matches no segment). ``events``: events of the segment
    before ``offset`` already gone (sent, archived or set aside).
    """

    segment: str
    offset: int
    size: int | None = None
    events: int = 0
    inflight_end: int | None = None
    inflight_events: int = 0

    def matches(self, name: str, size: int) -> bool:
        return self.segment == name and self.size == size and HEADER_LEN <= self.offset <= size


def read_progress(directory: Path) -> Progress | None:
    try:
        doc = orjson.loads((directory / PROGRESS_FILE).read_bytes())
        size = doc.get("size")
        return Progress(doc["segment"], int(doc["offset"]), None if size is None else int(size),
                        int(doc.get("events", 0)), doc.get("inflight_end"), int(doc.get("inflight_events", 0)))
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
        fh.write(orjson.dumps({"segment": progress.segment, "offset": progress.offset, "size": progress.size,
                               "events": progress.events, "inflight_end": progress.inflight_end,
                               "inflight_events": progress.inflight_events}))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(directory)


def set_aside(directory: Path, segment: Path, refused: Sequence[tuple[Record, SinkRefused]]) -> Path:
    """Append records Kafka refuses for good to ``directory/<segment name>`` (a segment file), fsynced."""
    make_dirs(directory)
    target = directory / segment.name
    new = not target.exists()
    with open(target, "ab") as fh:
        if new:
            fh.write(FILE_HEADER)
        fh.write(encode_records([rec for rec, _ in refused]))
        fh.flush()
        os.fsync(fh.fileno())
    if new:
        fsync_dir(directory)
    return target


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
    refused: int = 0  # events Kafka refuses for good (set aside, or for replay: reported)


def _chunks(path: Path, start: int, size: int, end: int | None) -> Iterator[tuple[int, int, list[Record]]]:
    """(first offset, end offset, records) in chunks of at most ``size`` records."""
    return iter_chunks(path, start, end, size)


def _ramp(window: int) -> Iterator[int]:
    """Chunks in each window of a segment: 1, 2, 4, ... up to ``window``. The first window is read
    while nothing is in flight, so it is small; each after it is read while the one before is sent."""
    n = 1
    while True:
        yield n
        n = min(2 * n, max(1, window))


def archive(archive_dir: Path, segment: Path, records: Sequence[Record]) -> None:
    """Append records to ``<archive>/<segment name>.gz`` (a gzip of a segment file) and fsync."""
    make_dirs(archive_dir)
    target = archive_dir / (segment.name + ".gz")
    new = not target.exists()
    with open(target, "ab") as raw:
        with gzip.GzipFile(fileobj=raw, mode="ab") as gz:
            if new:
                gz.write(FILE_HEADER)
            gz.write(encode_records(records))
        raw.flush()
        os.fsync(raw.fileno())
    if new:  # the new file's directory entry too: else a power cut can take it, and what it archived
        fsync_dir(archive_dir)


def _settled(task: asyncio.Future[Any]) -> None:
    """A read-ahead left behind: retrieve its outcome so nothing is reported as lost."""
    if not task.cancelled():
        task.exception()


async def drain_segment(path: Path, sender: Sender, *, start: int = HEADER_LEN, end: int | None = None,
                        batch_events: int = 2000, window: int = 1,
                        timeout: float = 5.0, limiter: RateLimiter | None = None,  # noqa: ASYNC109
                        keep: Callable[[Record], bool] | None = None,
                        archive_before_ms: int | None = None, archive_dir: Path | None = None,
                        on_chunk: Callable[[int, int, int, int], None] | None = None,
                        before_chunk: Callable[[int, int, int], None] | None = None,
                        on_refused: Callable[[Sequence[tuple[Record, SinkRefused]]], None] | None = None,
                        dry_run: bool = False, counts: dict[str, int] | None = None,
                        deadline: float | None = None,
                        chunks: Iterator[tuple[int, int, list[Record]]] | None = None) -> SegmentResult:
    """Send one segment's events from ``start`` to Kafka, each to its own topic.

    ``keep`` filters (replay's --topic/--since/--until; the rest is skipped);
    events received before ``archive_before_ms`` go to ``archive_dir`` instead.
    ``end``: the size the buffer recorded (the frames must reach it exactly, else
    CorruptRecord). Chunks of ``batch_events`` go out ``window`` at a time (the first windows
    of a segment 1, 2, 4, ... chunks), concurrently (Kafka keeps each partition's order: they
    are submitted in file order), while the next window is read ahead. ``before_chunk(first,
    end, n)`` runs before a window is sent, ``on_chunk(end, sent, archived, refused)`` after
    the window (or its longest acknowledged prefix of chunks) is acknowledged (running totals). Records Kafka refuses
    for good go to ``on_refused`` (once the rest of their chunk is acknowledged) and the
    drain goes on. Stops at the first chunk Kafka does not acknowledge (``complete=False``,
    ``error`` set; ``sent`` then also counts what the window got acknowledged after the
    acknowledged prefix: it goes again), or when the monotonic clock passes ``deadline``
    (``complete=False``, no error: call again to go on). ``chunks``: ``(first, end, records)``
    from elsewhere than the segment (replay's Flume files, :mod:`agents.flume_files`), sent the same way.
    """
    sent = archived = skipped = refused = 0
    if chunks is None:
        chunks = _chunks(path, start, batch_events, end)

    sizes = _ramp(window)

    def read_ahead() -> asyncio.Future[list[tuple[int, int, list[Record]]]]:
        return asyncio.ensure_future(asyncio.to_thread(lambda n: list(itertools.islice(chunks, n)), next(sizes)))

    if deadline is not None and time.monotonic() > deadline:
        return SegmentResult(sent, archived, skipped, False)
    ahead: asyncio.Future[list[tuple[int, int, list[Record]]]] | None = read_ahead()
    while True:
        if ahead is None:  # out of time: no window was read ahead for nothing
            return SegmentResult(sent, archived, skipped, False)
        items = await ahead
        if not items:
            return SegmentResult(sent, archived, skipped, True, refused=refused)
        last = deadline is not None and time.monotonic() > deadline
        ahead = None
        first, window_end = items[0][0], items[-1][1]
        old: list[Record] = []
        batches: list[tuple[int, list[Record]]] = []  # (end offset, records to send) per chunk
        for _, chunk_end, records in items:
            if keep is not None:
                kept = [r for r in records if keep(r)]
                skipped += len(records) - len(kept)
                records = kept
            if archive_before_ms is not None and any(r.timestamp_ms < archive_before_ms for r in records):
                old.extend(r for r in records if r.timestamp_ms < archive_before_ms)
                records = [r for r in records if r.timestamp_ms >= archive_before_ms]
            if counts is not None:
                for r in records:
                    counts[r.topic] = counts.get(r.topic, 0) + 1
            batches.append((chunk_end, records))
        if dry_run:
            sent += sum(len(records) for _, records in batches)
            ahead = None if last else read_ahead()
            continue
        if before_chunk is not None:
            await asyncio.to_thread(before_chunk, first, window_end, sum(len(r) for _, r in batches))
        if old and archive_dir is not None:
            await asyncio.to_thread(archive, archive_dir, path, old)
            archived += len(old)
        if limiter is not None:
            await limiter.take(sum(len(records) for _, records in batches))
        # The next window is read while this one is in flight, and only from here: a reader
        # thread decoding holds the GIL for most of each switch interval, and each of the
        # progress file's syscalls above would wait that long to get it back (timed: writing
        # the progress took 10-40 ms a window with the read started before it, 6 ms after).
        ahead = None if last else read_ahead()
        deliveries = await asyncio.gather(*(sender.send_within(records, timeout) for _, records in batches
                                            if records))
        done = iter(deliveries)
        prefix_end = None
        for i, (chunk_end, records) in enumerate(batches):
            delivery = next(done) if records else Delivery()
            if delivery.unacked:
                later = [next(done) for _, rest in batches[i + 1:] if rest]
                again = sum(len(r) for _, r in batches[i + 1:] if r) - sum(
                    len(d.unacked) + len(d.refused) for d in later)
                acked = len(records) - len(delivery.unacked) - len(delivery.refused)
                if prefix_end is not None and on_chunk is not None:
                    await asyncio.to_thread(on_chunk, prefix_end, sent, archived, refused)
                if ahead is not None:
                    ahead.add_done_callback(_settled)
                return SegmentResult(sent + acked + again, archived, skipped, False, delivery.error, refused)
            if delivery.refused and on_refused is not None:
                await asyncio.to_thread(on_refused, delivery.refused)
            refused += len(delivery.refused)
            sent += len(records) - len(delivery.refused)
            prefix_end = chunk_end
        if on_chunk is not None:
            await asyncio.to_thread(on_chunk, window_end, sent, archived, refused)


class Drain:
    """The drain timer's worker: one segment at a time, oldest first, to the
    highest-priority Kafka cluster that is up (``sink``: the supervisor's DrainSender)."""

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
        self.undeliverable_total = 0  # events set aside since start
        self._checked_crash = False
        self._throttled = Throttled(logger)
        #: False once the node stops taking events: the drain ends its round and returns
        self.running: Callable[[], bool] = lambda: True
        #: events of live calls taken so far (the node's count): the drain shares Kafka with them
        self.live_events: Callable[[], int] = lambda: 0
        self._live_mark = (time.monotonic(), 0)
        self._shared = RateLimiter(0)

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
            total = 0
            while True:
                await self.buffer.roll_if_due()
                if not self.supervisor.kafka_usable or not self.running():
                    return total
                await self.buffer.roll()
                # A round of about one timer interval (progress is durable at its end), then the
                # next round at once while there is work: the timer sleeps a whole interval after
                # each call, so returning to it after every round would idle half the time.
                deadline = time.monotonic() + max(0.2, self.settings.interval * 0.8)
                window, limiter = self._share()
                out_of_time = False
                for path in self.buffer.closed_segments():
                    if not self.supervisor.kafka_usable:
                        return total
                    result = await self._drain(path, deadline, window, limiter)
                    total += result.sent
                    if not result.complete:
                        out_of_time = result.error is None and time.monotonic() > deadline
                        break
                if not out_of_time:
                    return total

    def _share(self) -> tuple[int, RateLimiter]:
        """The window and the rate of the next round. With no live calls since the last round:
        the whole ``drain.window`` at ``drain.max_events_per_second``. With live calls flowing,
        one chunk at a time (live records do not queue behind a window in the partitions'
        lanes) at about ``drain.live_share`` times the live rate (at least 1,000 events/s)."""
        now, seen = time.monotonic(), self.live_events()
        then, before = self._live_mark
        self._live_mark = (now, seen)
        live_rate = (seen - before) / max(now - then, 1e-3)
        if live_rate < 1.0 or self.settings.live_share <= 0:
            return self.settings.window, self.limiter
        rate = max(live_rate * self.settings.live_share, 1000.0)
        self._shared.rate = min(rate, self.limiter.rate) if self.limiter.rate > 0 else rate
        return 1, self._shared

    @property
    def undeliverable_dir(self) -> Path:
        return self.directory / UNDELIVERABLE_DIR

    def _start_of(self, path: Path, size: int, progress: Progress | None) -> tuple[int, int]:
        """``(offset, events already gone)`` to resume ``path`` from, counting what a restart resends."""
        if progress is None or progress.segment != path.name:
            return HEADER_LEN, 0
        report = self.buffer.recovered.get(path)
        if (not progress.matches(path.name, size) and report is not None and report.kept_bytes == size
                and progress.matches(path.name, report.original_size)):
            # Start-up recovery cut damaged bytes out of this segment: the offsets after them moved
            # by exactly what was cut, so the progress moves with them (nothing resent, nothing skipped).
            logger.warning("drain: %s was rewritten by recovery; resuming at byte %d (was %d)", path.name,
                           shift_offset(progress.offset, report.removed), progress.offset)
            progress = Progress(path.name, shift_offset(progress.offset, report.removed), size, progress.events,
                                progress.inflight_end, progress.inflight_events)
        if not progress.matches(path.name, size):
            # Rewritten by recovery since (or written by an older version): offsets no longer
            # hold. Start over; what was sent before goes again, and is counted.
            resent = progress.events + progress.inflight_events
            self.metrics.duplicates.inc(resent)
            logger.warning("drain: recorded progress (byte %d of %s bytes) no longer matches %s (%d bytes): "
                           "starting it over; %d events already sent may reach Kafka twice",
                           progress.offset, progress.size, path.name, size, resent)
            return HEADER_LEN, 0
        if progress.inflight_end is not None and not self._checked_crash:
            # A chunk was in flight when the last run stopped: it may already be in Kafka.
            self.metrics.duplicates.inc(progress.inflight_events)
            logger.warning("drain: resuming %s at byte %d; %d events of the chunk in flight at the last "
                           "stop may reach Kafka twice", path.name, progress.offset, progress.inflight_events)
        return progress.offset, progress.events

    def _set_aside(self, path: Path, refused: Sequence[tuple[Record, SinkRefused]]) -> None:
        """In a thread: keep records Kafka refuses for good in undeliverable/, log once per topic and reason."""
        target = set_aside(self.undeliverable_dir, path, refused)
        per: dict[tuple[str, str], tuple[int, SinkRefused]] = {}
        for rec, why in refused:
            n, _ = per.get((rec.topic, why.reason), (0, why))
            per[(rec.topic, why.reason)] = (n + 1, why)
        for (topic, reason), (n, why) in per.items():
            self.metrics.undeliverable.labels(reason=reason).inc(n)
            self._throttled.log(logging.ERROR, f"undeliverable:{topic}:{reason}",
                                "drain: Kafka refuses %d event(s) for topic %s for good (%s); moved to %s. "
                                "Fix the cause (e.g. create the topic), then `spillway replay %s`",
                                n, topic, why, target, target)
        self.undeliverable_total += len(refused)

    async def _drain(self, path: Path, deadline: float | None = None, window: int | None = None,
                     limiter: RateLimiter | None = None) -> SegmentResult:
        size = self.buffer.segment_size(path)
        progress = await asyncio.to_thread(read_progress, self.directory)
        start, gone_before = self._start_of(path, size, progress)
        self._checked_crash = True
        if start == HEADER_LEN and gone_before == 0:
            logger.info("drain: starting %s (%d events)", path.name, self.buffer.segment_events(path))
        self.current = path.name
        max_age_ms = int(self.settings.max_age * 1000)
        directory = self.directory
        chunk = {"first": start, "gone": gone_before}  # the chunk being sent, events gone before it
        last = [0, 0, 0]  # sent, archived, refused noted so far

        def before(first: int, end: int, n: int) -> None:
            chunk["first"] = first
            write_progress(directory, Progress(path.name, first, size, chunk["gone"], end, n))

        def counted(end: int, sent: int, archived: int, refused: int) -> None:
            gone = (sent - last[0]) + (archived - last[1]) + (refused - last[2])
            chunk["gone"] += gone
            chunk["first"] = end  # a failure after this resumes here
            write_progress(directory, Progress(path.name, end, size, chunk["gone"]))
            self.buffer.note_drained(path, gone)
            self.metrics.drained.inc(sent - last[0])
            self.metrics.archived.inc(archived - last[1])
            self.drained_total += sent - last[0]
            last[:] = [sent, archived, refused]

        try:
            with segment_lock(path) as locked:
                if not locked:
                    logger.info("drain: %s is locked by a replay; skipping it for now", path.name)
                    return SegmentResult(0, 0, 0, False, "locked")
                result = await drain_segment(
                    path, self.sink, start=start, end=size, batch_events=self.settings.batch_events,
                    window=window or self.settings.window,
                    timeout=self.timeout, limiter=limiter or self.limiter,
                    archive_before_ms=int(time.time() * 1000) - max_age_ms,
                    archive_dir=self.settings.archive_directory, before_chunk=before, on_chunk=counted,
                    on_refused=lambda refused: self._set_aside(path, refused), deadline=deadline)
                if result.complete:
                    # Deleted while still locked, so a replay cannot take it in between; progress is
                    # cleared only after: a crash in between leaves progress naming a segment that
                    # no longer exists (names are never reused), never a segment without progress.
                    try:
                        await self.buffer.delete_segment(path)
                    except BufferError as exc:
                        logger.error("drain: %s", exc)
                        return SegmentResult(result.sent, result.archived, result.skipped, False, None)
                    await asyncio.to_thread(write_progress, self.directory, None)
        except CorruptRecord as exc:
            logger.error("drain: %s; recovering the segment", exc)
            await self._recover(path, size)
            return SegmentResult(0, 0, 0, False, None)
        finally:
            self.current = None
        if not result.complete and result.error is None:
            return result  # out of time for this tick; the next one resumes from the progress file
        if not result.complete:
            # Events of the failed chunk that Kafka did acknowledge will be sent again: counted
            # here, once, and the progress no longer says "in flight" (a restart counts nothing more).
            self.metrics.duplicates.inc(max(0, result.sent - last[0]))
            await asyncio.to_thread(write_progress, self.directory,
                                    Progress(path.name, chunk["first"], size, chunk["gone"]))
            return result  # the sender reported the failure to the supervisor
        logger.info("drain: %s done (%d sent, %d archived, %d undeliverable)", path.name, result.sent,
                    result.archived, result.refused)
        return result

    async def _recover(self, path: Path, size: int) -> None:
        """Quarantine damage found while draining, and carry the progress over the rewrite."""
        progress = await asyncio.to_thread(read_progress, self.directory)
        report = await self.buffer.recover(path)
        if report.quarantined_whole or not path.exists() or progress is None or not progress.matches(path.name, size):
            return
        offset = shift_offset(progress.offset, report.removed)
        await asyncio.to_thread(write_progress, self.directory,
                                Progress(path.name, offset, report.kept_bytes, progress.events))
