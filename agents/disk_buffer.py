"""The disk buffer stage: durable, group-committed, budgeted segment files.

``append`` returns only once the records are written *and* fsynced. Callers put
``(bytes, count, future)`` on one bounded queue; one writer task takes all that
is queued, writes it with one ``pwrite`` and one ``fsync`` (off the loop, via
``asyncio.to_thread``) and resolves every future of that group.

Files in ``directory`` are ``{seq:020d}.seg`` (format: :mod:`agents.segments`),
oldest first. The last one may be *active* (open for append); all the others are
*closed* and immutable. Closing a segment (roll, stop) writes its *seal* beside it,
``{seq:020d}.seg.sealed``: its size, event count and first receive time, fsynced. On start a
segment whose seal matches its size is taken as the seal says, unread: start-up does not
grow with the backlog. Only a segment without a (matching) seal -- the one open at a crash
or power cut -- is recovered (scanned, torn tail cut) before the source listens. Damage in a
sealed segment is found by the drain, which checks every CRC and recovers the segment then.
All segments on disk are closed after start; the first append opens a new active segment. Sequence numbers never
go back: the next one is ``max(highest seen + 1, now in microseconds)``, so a
name is not reused even after the drain deleted every segment.

While it runs, the buffer holds an exclusive ``flock`` on ``directory/.lock`` (with its pid in
it): a second worker on the same directory stops at start, naming the directory and that pid.

A failed write or fsync fails that group's appends with BufferError and the
segment is truncated back to its last acknowledged byte (retried before the next
write while the disk refuses), so nothing unacknowledged looks acknowledged.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from agents.records import Record
from agents.segments import (
    FILE_HEADER,
    HEADER_LEN,
    RecoveryReport,
    encode_records,
    fsync_dir,
    make_dirs,
    recover_segment,
)
from core.errors import BufferError, BufferFull

__all__ = ["BufferStats", "DiskBuffer"]

logger = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
GROUP_MAX_BYTES: Final = 8 * MiB  # at most this much is taken from the queue for one commit
_SEGMENT_RE: Final = re.compile(r"(\d{20})\.seg")
_STOP: Final = object()
WRITER_RESTART_DELAY: Final = 1.0  # seconds before a writer that died is started again
WRITER_MAX_RESTARTS: Final = 5  # at most this many restarts ...
WRITER_RESTART_WINDOW: Final = 60.0  # ... within this many seconds


@dataclass(frozen=True, slots=True)
class BufferStats:
    """A snapshot: what is on disk and queued, plus counters since construction."""

    bytes: int
    events: int
    segments: int
    oldest_timestamp_ms: int | None
    pending_bytes: int
    appended_events: int
    fsyncs: int  # group-commit fsyncs of segment data
    quarantined_records: int  # corrupt ranges and bad files moved to quarantine


@dataclass(slots=True)
class _Segment:  # mutable accounting of one segment file
    path: Path
    size: int
    events: int  # still buffered (not noted as drained)
    first_ts: int | None
    drained: int = 0


@dataclass(slots=True)
class _Active:  # the segment open for append
    seg: _Segment
    fd: int
    first_write: float | None = None  # monotonic time of the first event written
    dirty: bool = False  # may hold bytes past seg.size from a failed write


@dataclass(slots=True)
class _Item:  # one append on its way to the writer
    data: bytes
    count: int
    first_ts: int
    future: asyncio.Future[None] = field(repr=False)
    settled: bool = False


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _create_segment(path: Path, fsync: bool) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _pwrite_all(fd, FILE_HEADER, 0)
        if fsync:
            os.fsync(fd)
            fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove(path: Path, fsync: bool) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    if fsync:
        fsync_dir(path.parent)


SEAL_SUFFIX: Final = ".sealed"
#: the file a running buffer holds an exclusive flock on (one worker per directory)
LOCK_FILE: Final = ".lock"


def _take_lock(directory: Path) -> int:
    """In a thread: lock ``directory`` for this process (its pid written in the lock file), or
    raise BufferError naming the directory and the pid that holds it."""
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise BufferError(f"the disk buffer {directory} is in use by another worker"
                          f"{f' (pid {holder})' if holder else ''}: each worker process needs its own "
                          "buffer.directory") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _release_lock(fd: int) -> None:
    os.close(fd)  # closing the last descriptor releases the flock


def seal_path(segment: Path) -> Path:
    return segment.with_name(segment.name + SEAL_SUFFIX)


def _write_seal(seg: _Segment) -> None:
    """In a thread: write ``seg``'s seal (temp file, fsync, rename). A seal lost in a power
    cut costs a scan at the next start, never an event, so the directory is not fsynced."""
    path = seal_path(seg.path)
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps({"size": seg.size, "events": seg.events, "first_ts": seg.first_ts}).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_seal(segment: Path, size: int) -> _Segment | None:
    """The segment as its seal describes it, or None: no seal, unreadable, or not this size."""
    try:
        meta = json.loads(seal_path(segment).read_bytes())
        if meta["size"] != size or not isinstance(meta["events"], int) or meta["events"] < 0:
            return None
        first_ts = meta["first_ts"]
        return _Segment(segment, size, meta["events"], int(first_ts) if first_ts is not None else None)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("disk buffer: ignoring the seal of %s (%s): scanning the segment", segment, exc)
        return None


def _unseal(segment: Path) -> None:
    seal_path(segment).unlink(missing_ok=True)


class DiskBuffer:
    """Durable spill buffer: ``await start()``, ``await append(records)``, ``await stop()``."""

    def __init__(self, directory: Path, *, max_bytes: int, segment_max_bytes: int = 64 * MiB,
                 segment_max_age: float = 60.0, fsync: bool = True, queue_size: int = 1024) -> None:
        self.directory = Path(directory)
        self.quarantine_dir = self.directory / "quarantine"
        self.max_bytes = max_bytes
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age = segment_max_age
        self.fsync = fsync
        self.appended_events = 0
        self.fsyncs = 0
        self.quarantined_records = 0
        #: segments that start-up recovery cut bytes out of (the drain carries its progress over)
        self.recovered: dict[Path, RecoveryReport] = {}
        self._queue_size = queue_size
        self._state: Literal["new", "running", "stopping", "stopped"] = "new"
        self._segments: dict[Path, _Segment] = {}  # oldest first; the active one last
        self._active: _Active | None = None
        self._next_seq = 0
        self._bytes = self._events = self._pending = 0
        self._queue: asyncio.Queue[_Item | object] = asyncio.Queue(queue_size)
        self._start_lock = asyncio.Lock()
        self._lock = asyncio.Lock()  # whoever touches the active segment holds it
        self._writer: asyncio.Task[None] | None = None
        self._inflight: list[_Item] = []
        self._sealed: str | None = None  # why nobody takes from the queue any more
        self._stop_task: asyncio.Task[None] | None = None
        self._restarts: list[float] = []  # monotonic times of recent writer restarts
        self._restart_handle: asyncio.TimerHandle | None = None
        self.writer_restarts = 0
        #: segments start-up had to read (no seal matching them): the one open at a crash
        self.scanned_at_start = 0
        self._lock_fd: int | None = None  # the flock on LOCK_FILE while started

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Recover every segment on disk (as closed) and start the writer. Idempotent."""
        async with self._start_lock:
            if self._state == "running":
                return
            if self._state == "stopping":
                raise BufferError("disk buffer is stopping")
            if self._lock_fd is None:
                await asyncio.to_thread(make_dirs, self.quarantine_dir)  # and the buffer directory
                self._lock_fd = await asyncio.to_thread(_take_lock, self.directory)
            try:
                segments, max_seq, quarantined = await asyncio.to_thread(self._load)
            except BaseException:
                self._unlock()
                raise
            self._segments = {s.path: s for s in segments}
            self._bytes = sum(s.size for s in segments)
            self._events = sum(s.events for s in segments)
            self._next_seq = max(max_seq + 1, time.time_ns() // 1000)
            self.quarantined_records += quarantined
            self._queue = asyncio.Queue(self._queue_size)
            self._sealed, self._pending, self._stop_task = None, 0, None
            self._start_writer()
            self._state = "running"
            logger.info("disk buffer %s: %d segments, %d events, %d bytes",
                        self.directory, len(segments), self._events, self._bytes)

    def _load(self) -> tuple[list[_Segment], int, int]:
        make_dirs(self.quarantine_dir)  # and the buffer directory itself, each durably
        for tmp in [*self.directory.glob("*.seg.tmp"), *self.directory.glob("*.seg.sealed.tmp")]:
            logger.warning("disk buffer: removing leftover %s", tmp)  # a rewrite or a seal cut short
            tmp.unlink()
        for seal in self.directory.glob("*.seg" + SEAL_SUFFIX):
            if not seal.with_name(seal.name[:-len(SEAL_SUFFIX)]).exists():
                seal.unlink()  # its segment was deleted (the seal goes first; a crash between)
        segments: list[_Segment] = []
        max_seq = quarantined = scanned = 0
        for path in sorted(self.directory.glob("*.seg")):
            match = _SEGMENT_RE.fullmatch(path.name)
            if match is None:
                logger.warning("disk buffer: ignoring unexpected file %s", path)
                continue
            max_seq = max(max_seq, int(match.group(1)))
            sealed = _read_seal(path, path.stat().st_size) if self.fsync else None
            if sealed is not None:
                segments.append(sealed)
                continue
            _unseal(path)
            scanned += 1
            report = recover_segment(path, self.quarantine_dir)
            quarantined += len(report.quarantined_ranges)
            if report.removed:
                self.recovered[path] = report
            if report.quarantined_whole:
                continue
            if report.kept_events == 0:
                _remove(path, self.fsync)
                continue
            seg = _Segment(path, report.kept_bytes, report.kept_events, report.first_ts)
            segments.append(seg)
            self._seal_quietly(seg)
        self.scanned_at_start = scanned
        return segments, max_seq, quarantined

    def _seal_quietly(self, seg: _Segment) -> None:
        """In a thread: seal a closed segment; a failure only means a scan at the next start."""
        if not self.fsync:  # unsynced segments may lose bytes the seal would vouch for
            return
        try:
            _write_seal(seg)
        except OSError as exc:
            logger.warning("disk buffer: cannot seal %s (%s): it will be scanned at the next start", seg.path, exc)

    async def stop(self) -> None:
        """Refuse new appends, write and fsync all that is queued, close. Idempotent.

        The flush runs shielded: cancelling ``stop()`` cancels the wait, not the flush.
        """
        if self._stop_task is None:
            if self._state != "running":
                return
            self._state = "stopping"
            self._stop_task = asyncio.create_task(self._shutdown(), name="disk-buffer-stop")
        await asyncio.shield(self._stop_task)

    async def _shutdown(self) -> None:
        if self._restart_handle is not None:
            self._restart_handle.cancel()
            self._restart_handle = None
        writer = self._writer
        if writer is not None and not writer.done():
            await self._queue.put(_STOP)
            await asyncio.wait([writer])
        self._seal("disk buffer stopped")
        async with self._lock:
            active = self._active
            if active is not None:
                try:
                    await self._close_active()
                except OSError:
                    logger.exception("disk buffer: closing %s failed; recovery checks it at next start",
                                     active.seg.path)
                    if self._active is not None:  # truncation failed: it is still open
                        self._active = None
                        await asyncio.to_thread(os.close, active.fd)
        self._state = "stopped"
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            _release_lock(fd)

    def _seal(self, reason: str, cause: BaseException | None = None) -> None:
        """Nobody takes from the queue any more: fail what is in flight or waits in it."""
        self._sealed = reason
        items, self._inflight = self._inflight, []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _Item):
                items.append(item)
        self._settle(items, reason, cause)

    def _start_writer(self) -> None:
        self._writer = asyncio.create_task(self._run(), name=f"disk-buffer-writer:{self.directory}")
        self._writer.add_done_callback(self._on_writer_done)

    @property
    def healthy(self) -> bool:
        """True while appends can be made durable: running, with a live writer (``/ready``)."""
        return self._state == "running" and not self._sealed and self._writer is not None and not self._writer.done()

    def _on_writer_done(self, task: asyncio.Task[None]) -> None:
        if self._state == "stopping" and not task.cancelled() and task.exception() is None:
            return
        exc = None if task.cancelled() else task.exception()
        logger.critical("disk buffer %s: the writer task DIED (%r); failing waiting appends, the buffer takes "
                        "nothing until it is restarted", self.directory, exc, exc_info=exc)
        self._seal("disk buffer writer died", exc)
        if self._state != "running":
            return
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < WRITER_RESTART_WINDOW]
        if len(self._restarts) >= WRITER_MAX_RESTARTS:
            logger.critical("disk buffer %s: the writer died %d times in %.0fs; not restarting it (the node "
                            "answers FAILED for what Kafka cannot take, /ready says 503); restart the worker",
                            self.directory, len(self._restarts), WRITER_RESTART_WINDOW)
            return
        self._restarts.append(now)
        self._restart_handle = asyncio.get_running_loop().call_later(WRITER_RESTART_DELAY, self._restart_writer)

    def _restart_writer(self) -> None:
        """Safe because a write either settled its appends or failed them: the active segment may
        hold bytes past its last acknowledged one, so it is truncated back before the next write."""
        self._restart_handle = None
        if self._state != "running" or not self._sealed:
            return
        if self._active is not None:
            self._active.dirty = True
        self._sealed = None
        self.writer_restarts += 1
        self._start_writer()
        logger.warning("disk buffer %s: writer restarted (restart %d)", self.directory, self.writer_restarts)

    # -- appending -------------------------------------------------------------------

    async def append(self, records: Sequence[Record]) -> None:
        """Return once ``records`` are written and fsynced.

        Raises BufferFull at the byte budget (nothing is written), BufferError when
        the disk fails or the buffer is not running, ValueError for a record larger
        than ``segments.MAX_RECORD_BYTES``.
        """
        if self._state != "running" or self._sealed:
            raise BufferError(self._sealed or f"disk buffer is {self._state}")
        if not records:
            return
        data = encode_records(records)
        if self._bytes + self._pending + len(data) > self.max_bytes:
            raise BufferFull(f"disk buffer budget of {self.max_bytes} bytes reached "
                             f"({self._bytes} on disk, {self._pending} pending)")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        item = _Item(data, len(records), records[0].timestamp_ms, future)
        self._pending += len(data)
        try:
            await self._queue.put(item)
        except BaseException:
            self._pending -= len(data)
            raise
        if self._sealed:  # put after the final sweep: nobody will take it
            self._settle([item], self._sealed)
        await future

    def _settle(self, items: list[_Item], error: str | None, cause: BaseException | None = None) -> None:
        """Resolve (``error`` None) or fail with BufferError(error) from ``cause``."""
        for item in items:
            if item.settled:
                continue
            item.settled = True
            self._pending -= len(item.data)
            if item.future.done():  # its caller was cancelled
                continue
            if error is None:
                item.future.set_result(None)
            else:
                exc = BufferError(error)
                exc.__cause__ = cause
                item.future.set_exception(exc)

    def _fail_write(self, items: list[_Item], exc: OSError) -> None:
        logger.error("disk buffer %s: write of %d events failed: %s",
                     self.directory, sum(item.count for item in items), exc)
        self._settle(items, f"disk buffer write failed: {exc}", exc)

    async def _run(self) -> None:
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is _STOP:
                return
            assert isinstance(first, _Item)
            batch, size = [first], len(first.data)
            while size < GROUP_MAX_BYTES and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is _STOP:
                    stop = True
                    break
                assert isinstance(nxt, _Item)
                batch.append(nxt)
                size += len(nxt.data)
            self._inflight = batch
            async with self._lock:
                await self._commit(batch)
            self._inflight = []

    async def _commit(self, batch: list[_Item]) -> None:
        """Write ``batch`` in runs that fit the active segment, one fsync a run."""
        i = 0
        while i < len(batch):
            run, run_bytes = [batch[i]], len(batch[i].data)
            try:
                active = self._active
                if active is not None and active.seg.events and (
                    active.seg.size + run_bytes > self.segment_max_bytes or self._aged(active)
                ):
                    await self._close_active()
                active = await self._ensure_active()
            except OSError as exc:  # no segment to write to: fail the rest of the group
                self._fail_write(batch[i:], exc)
                return
            for item in batch[i + 1 :]:
                if run_bytes + len(item.data) > self.segment_max_bytes - active.seg.size:
                    break
                run.append(item)
                run_bytes += len(item.data)
            i += len(run)
            data = run[0].data if len(run) == 1 else b"".join(item.data for item in run)
            try:
                await asyncio.to_thread(self._write_sync, active, data)
            except OSError as exc:
                self._fail_write(run, exc)
                continue
            seg, count = active.seg, sum(item.count for item in run)
            seg.size += len(data)
            seg.events += count
            if seg.first_ts is None:
                seg.first_ts = run[0].first_ts
            if active.first_write is None:
                active.first_write = time.monotonic()
            self._bytes += len(data)
            self._events += count
            self.appended_events += count
            self.fsyncs += int(self.fsync)
            self._settle(run, None)
            if seg.size >= self.segment_max_bytes:
                await self._close_active()

    def _write_sync(self, active: _Active, data: bytes) -> None:
        """In a thread: write at the last good offset and fsync; on failure truncate back."""
        if active.dirty:
            self._truncate_sync(active)
        try:
            _pwrite_all(active.fd, data, active.seg.size)
            if self.fsync:
                os.fsync(active.fd)
        except OSError:
            active.dirty = True
            try:
                self._truncate_sync(active)
            except OSError as exc:
                logger.error("disk buffer: cannot truncate %s back to %d bytes (will retry): %s",
                             active.seg.path, active.seg.size, exc)
            raise

    def _truncate_sync(self, active: _Active) -> None:
        os.ftruncate(active.fd, active.seg.size)
        if self.fsync:
            os.fsync(active.fd)
        active.dirty = False
        logger.warning("disk buffer: %s truncated back to %d bytes after a failed write",
                       active.seg.path, active.seg.size)

    async def _ensure_active(self) -> _Active:
        if self._active is None:
            path = self.directory / f"{self._next_seq:020d}.seg"
            self._next_seq += 1  # even if creating it fails: never retry a name
            fd = await asyncio.to_thread(_create_segment, path, self.fsync)
            self._active = _Active(_Segment(path, HEADER_LEN, 0, None), fd)
            self._adopt(self._active.seg)
        return self._active

    async def _close_active(self) -> None:
        """Close the active segment (it becomes immutable); drop it if it holds nothing."""
        active = self._active
        assert active is not None
        if active.dirty:
            await asyncio.to_thread(self._truncate_sync, active)
        self._active = None
        try:
            await asyncio.to_thread(os.close, active.fd)
        except OSError as exc:
            logger.warning("disk buffer: closing %s: %s", active.seg.path, exc)
        if active.seg.events == 0:
            self._forget(active.seg)
            await asyncio.to_thread(_remove, active.seg.path, self.fsync)
        else:
            await asyncio.to_thread(self._seal_quietly, active.seg)

    def _aged(self, active: _Active) -> bool:
        return active.first_write is not None and time.monotonic() - active.first_write >= self.segment_max_age

    # -- rolling, draining, accounting -----------------------------------------------

    async def roll(self) -> bool:
        """Close the active segment if it holds events; True if it did (the drain calls this first)."""
        return await self._roll(only_if_aged=False)

    async def roll_if_due(self) -> bool:
        """Close the active segment if it is older than ``segment_max_age``; True if it did."""
        return await self._roll(only_if_aged=True)

    async def _roll(self, only_if_aged: bool) -> bool:
        async with self._lock:
            active = self._active
            if active is None or not active.seg.events or (only_if_aged and not self._aged(active)):
                return False
            try:
                await self._close_active()
            except OSError as exc:
                raise BufferError(f"cannot close {active.seg.path}: {exc}") from exc
            return True

    def closed_segments(self) -> list[Path]:
        """Closed (immutable) segments, oldest first."""
        active = self._active.seg.path if self._active is not None else None
        return [path for path in self._segments if path != active]

    def segment_size(self, path: Path) -> int:
        """The size of a closed segment as the buffer wrote (or recovered) it: the drain reads exactly that far."""
        return self._closed(path).size

    def segment_events(self, path: Path) -> int:
        """Events of a closed segment still counted as buffered (after ``note_drained``)."""
        return self._closed(path).events

    def note_drained(self, path: Path, events: int) -> None:
        """Count ``events`` of a closed segment as gone (sent or archived)."""
        seg = self._closed(path)
        gone = max(0, min(events, seg.events))
        seg.events -= gone
        seg.drained += gone
        self._events -= gone

    async def delete_segment(self, path: Path) -> None:
        """Remove a closed segment from disk and from the accounting."""
        seg = self._closed(path)
        self._forget(seg)
        try:
            await asyncio.to_thread(_unseal, seg.path)  # first: a seal never outlives its segment's bytes
            await asyncio.to_thread(_remove, seg.path, self.fsync)
        except OSError as exc:
            self._adopt(seg)
            raise BufferError(f"cannot delete {seg.path}: {exc}") from exc

    async def recover(self, path: Path) -> RecoveryReport:
        """Repair a closed segment that fails to read (CorruptRecord); fix the accounting.

        Events already noted as drained stay drained; a segment left empty is deleted.
        """
        seg = self._closed(path)
        await asyncio.to_thread(_unseal, seg.path)  # the rewrite changes what the seal says
        report = await asyncio.to_thread(recover_segment, seg.path, self.quarantine_dir)
        self.quarantined_records += len(report.quarantined_ranges)
        self._forget(seg)
        if not report.quarantined_whole:
            seg.size, seg.first_ts = report.kept_bytes, report.first_ts
            seg.events = max(0, report.kept_events - seg.drained)
            self._adopt(seg)
            if report.kept_events == 0:
                await self.delete_segment(seg.path)
            else:
                await asyncio.to_thread(self._seal_quietly,
                                        _Segment(seg.path, report.kept_bytes, report.kept_events, report.first_ts))
        return report

    def _closed(self, path: Path) -> _Segment:
        seg = self._segments.get(Path(path))
        if seg is None or (self._active is not None and self._active.seg is seg):
            raise BufferError(f"{path} is not a closed segment of {self.directory}")
        return seg

    def _adopt(self, seg: _Segment) -> None:
        """Count a segment in, keeping the oldest-first order."""
        last = next(reversed(self._segments), None)
        self._segments[seg.path] = seg
        if last is not None and last > seg.path:
            self._segments = dict(sorted(self._segments.items()))
        self._bytes += seg.size
        self._events += seg.events

    def _forget(self, seg: _Segment) -> None:
        del self._segments[seg.path]
        self._bytes -= seg.size
        self._events -= seg.events

    def stats(self) -> BufferStats:
        oldest = next((s.first_ts for s in self._segments.values() if s.events), None)
        return BufferStats(self._bytes, self._events, len(self._segments), oldest, self._pending,
                           self.appended_events, self.fsyncs, self.quarantined_records)
