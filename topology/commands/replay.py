"""``spillway replay PATH...``: segments, archives or directories of them back into Kafka.

The drain's own :func:`~agents.drain.drain_segment` does the sending, each event to
its own topic with its key and headers, through a :class:`~agents.kafka_sink.KafkaSink`
built from the settings. A segment is replayed under :func:`~agents.drain.segment_lock`:
one a running worker is draining is skipped (and counted), and the worker's drain
skips one a replay holds. Input files are only read, never changed or deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import click
from faust.cli import argument, option

from agents.drain import PROGRESS_FILE, RateLimiter, Sender, drain_segment, read_progress, segment_lock
from agents.kafka_auth import explain
from agents.kafka_sink import KafkaSink
from agents.records import Delivery, Record
from agents.segments import iter_records, scan_segment
from topology.app import app
from topology.commands.base import SpillwayCommand
from topology.commands.core import (
    CommandError,
    RecordFilter,
    ReplayTally,
    collect_segments,
    decompress,
    dumps,
    is_archive,
)
from core.errors import CorruptRecord

#: Kafka's default retention.ms (7 days): older record timestamps are deleted at its next retention check
OLD_MS = 7 * 86_400_000


class CountingSender:
    """Passes records to the sink and counts, per topic, those Kafka acknowledged.

    ``restamp``: send each record with the current time as its Kafka timestamp."""

    def __init__(self, sink: Sender | None, restamp: bool = False) -> None:
        self.sink = sink
        self.restamp = restamp
        self.acked: dict[str, int] = {}
        self.refused: dict[str, int] = {}  # "topic: Kafka's reason" -> events refused for good
        self.old = 0  # acknowledged with an original timestamp older than OLD_MS

    async def send_within(self, records: Sequence[Record],
                          timeout: float) -> Delivery:  # noqa: ASYNC109 - the Sender protocol
        if self.sink is None:
            raise RuntimeError("a dry run sends nothing")
        now = time.time_ns() // 1_000_000
        if self.restamp:
            records = [r._replace(timestamp_ms=now) for r in records]
        delivery = await self.sink.send_within(records, timeout)
        for rec in records:
            self.acked[rec.topic] = self.acked.get(rec.topic, 0) + 1
            self.old += rec.timestamp_ms < now - OLD_MS
        for rec in (*delivery.unacked, *(r for r, _ in delivery.refused)):
            self.acked[rec.topic] -= 1
            self.old -= rec.timestamp_ms < now - OLD_MS
        for rec, why in delivery.refused:
            key = f"{rec.topic}: {why}"
            self.refused[key] = self.refused.get(key, 0) + 1
        return delivery


def count_kept(path: Path, start: int, keep: RecordFilter) -> int:
    """Events from ``start`` that pass the filters (up to any corrupt record)."""
    n = 0
    with contextlib.suppress(CorruptRecord):
        for _, _, rec in iter_records(path, start):
            n += keep(rec)
    return n


class ProgressLine:
    """One self-rewriting line on stderr, only when stderr is a terminal."""

    def __init__(self, files: int, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.files = files
        self.index = 0
        self.size = 1
        self.done = 0

    def file(self, index: int, size: int) -> None:
        self.index, self.size = index, max(size, 1)
        self.show(0)

    def show(self, offset: int) -> None:
        if not self.enabled:
            return
        frac = min(offset / self.size, 1.0)
        bar = "#" * int(frac * 20)
        sys.stderr.write(f"\r\x1b[Kreplay: file {self.index}/{self.files} [{bar:<20}] {frac:4.0%}"
                         f"  {self.done} events sent")
        sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


class Replay:
    """One run of the command: the files, the filters, the sink, the tally."""

    def __init__(self, cmd: SpillwayCommand, files: list[Path], keep: RecordFilter, *, dry_run: bool,
                 sink: KafkaSink | None, rate: float, timeout: float, batch_events: int, restamp: bool) -> None:
        self.cmd = cmd
        self.files = files
        self.keep = keep
        self.dry_run = dry_run
        self.sink = sink
        self.sender = CountingSender(sink, restamp)
        self.limiter = RateLimiter(rate)
        self.timeout = timeout
        self.batch_events = batch_events
        self.tally = ReplayTally(dry_run)
        self.progress = ProgressLine(len(files), enabled=not dry_run)

    async def run(self) -> ReplayTally:
        with tempfile.TemporaryDirectory(prefix="spillway-replay-") as tmp:
            for i, path in enumerate(self.files, 1):
                ok = await self._file(i, path, Path(tmp))
                if not ok and self.sink is not None and not await self.sink.probe(self.sink.settings.request_timeout):
                    self.tally.not_attempted = [str(p) for p in self.files[i:]]
                    if self.tally.not_attempted:
                        self.cmd.err(f"Kafka stopped answering; {len(self.tally.not_attempted)} file(s) not attempted")
                    break
        self.progress.clear()
        if not self.dry_run:
            self.tally.add({topic: n for topic, n in self.sender.acked.items() if n})
            for what, n in self.sender.refused.items():
                self.tally.failed += n
                self.cmd.err(f"Kafka refuses {n} event(s) for good ({what}); they were not replayed. Fix the "
                             f"cause (e.g. create the topic), then replay these files again")
        if self.sender.old:
            self.cmd.err(f"warning: {self.sender.old} event(s) were sent with their original timestamps, older than "
                         f"7 days: a topic with Kafka's default retention.ms deletes them at its next retention "
                         f"check. Replay with --timestamp now to keep them.")
        return self.tally

    async def _file(self, index: int, path: Path, tmp: Path) -> bool:
        """Replay one file; False when Kafka did not acknowledge everything."""
        self.tally.files += 1
        if is_archive(path):
            try:
                segment = await asyncio.to_thread(decompress, path, tmp)
            except (OSError, EOFError, ValueError) as exc:
                self._error(path, f"cannot decompress: {exc}")
                return True
            try:
                return await self._segment(index, path, segment, contextlib.nullcontext(True))
            finally:
                segment.unlink(missing_ok=True)
        progress = await asyncio.to_thread(read_progress, path.parent)
        if progress is not None and progress.segment == path.name:  # drained tick by tick, lock released between
            await self._skip(path, path, f"a worker's drain is part way through it (byte {progress.offset}, "
                                         f"{PROGRESS_FILE})")
            return True
        return await self._segment(index, path, path, segment_lock(path))

    async def _skip(self, path: Path, segment: Path, why: str) -> None:
        try:
            events = (await asyncio.to_thread(scan_segment, segment)).events
        except FileNotFoundError:  # the drain finished it and deleted it meanwhile
            events = 0
        self.tally.locked[str(path)] = events
        self.cmd.err(f"skipping {path}: {why} ({events} events not replayed)")

    async def _segment(self, index: int, path: Path, segment: Path,
                       lock: contextlib.AbstractContextManager[bool]) -> bool:
        with lock as locked:
            if not locked:
                await self._skip(path, segment, "a running worker is draining it")
                return True
            self.progress.file(index, (await asyncio.to_thread(segment.stat)).st_size)
            chunk = {"first": 0, "sent_before": 0}
            counts: dict[str, int] = {}
            acked_before = sum(self.sender.acked.values())

            def before(first: int, end: int, n: int) -> None:
                chunk["first"] = first

            def after(end: int, sent: int, archived: int, refused: int) -> None:
                chunk["sent_before"] = sent
                self.progress.done = acked_before + sent
                self.progress.show(end)

            try:
                result = await drain_segment(
                    segment, self.sender, batch_events=self.batch_events, timeout=self.timeout,
                    limiter=self.limiter, keep=self.keep if self.keep.active else None, dry_run=self.dry_run,
                    counts=counts if self.dry_run else None, before_chunk=before, on_chunk=after)
            except CorruptRecord as exc:
                self._error(path, f"{exc}; the rest of the file was not replayed (see `spillway buffer verify`)")
                return True
        if self.dry_run:
            self.tally.add(counts)
        self.tally.skipped_by_filter += result.skipped
        if result.complete:
            return True
        acked_in_chunk = result.sent - chunk["sent_before"]
        failed = await asyncio.to_thread(count_kept, segment, chunk["first"], self.keep) - acked_in_chunk
        self.tally.failed += failed
        self.cmd.err(f"{path}: Kafka did not acknowledge {failed} event(s): {result.error}")
        return False

    def _error(self, path: Path, message: str) -> None:
        self.tally.errors[str(path)] = message
        self.progress.clear()
        self.cmd.err(f"{path}: {message}")


@app.command(
    argument("paths", nargs=-1, required=True, type=click.Path()),
    option("--topic", "topics", multiple=True, help="Replay only events of this topic (repeatable)."),
    option("--since", default=None,
           help="Only events received at or after this time: ISO-8601 (no offset: UTC) or epoch ms."),
    option("--until", default=None, help="Only events received before this time (same forms as --since)."),
    option("--dry-run", is_flag=True, default=False, help="Count events per topic; send nothing (no Kafka needed)."),
    option("--rate", type=click.FloatRange(min=0), default=0.0,
           help="At most this many events per second (0: no limit)."),
    option("--timeout", "chunk_timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
           help="Seconds to wait for Kafka to acknowledge one chunk of events."),
    option("--timestamp", "stamp", type=click.Choice(["original", "now"]), default="original",
           help="Kafka record timestamp: the event's receive time, or now (for events older than the topic's "
                "retention.ms, which Kafka would delete at once)."),
    option("--bootstrap-servers", default=None, help="Kafka to replay into (default: kafka.bootstrap_servers)."),
    option("--json", "as_json", is_flag=True, default=False, help="Print the summary as JSON."),
    base=SpillwayCommand,
)
async def replay(self: SpillwayCommand, paths: tuple[str, ...], topics: tuple[str, ...], since: str | None,
                 until: str | None, dry_run: bool, rate: float, chunk_timeout: float, stamp: str,
                 bootstrap_servers: str | None,
                 as_json: bool) -> int:
    """Replay buffer segments into Kafka, each event to its own topic with its key and headers.

    PATHS are segment files (*.seg), gzip'd archive segments (*.seg.gz, from
    drain.archive_directory) or directories of them (oldest name first). Files are
    only read. A segment that a running worker is draining is skipped and counted.
    Exit code: 0 all replayed, 1 something not replayed (not acknowledged, skipped,
    damaged), 2 bad arguments or configuration.
    """
    keep = RecordFilter.from_options(topics, since, until)
    files = await asyncio.to_thread(collect_segments, paths)
    if not files:
        raise CommandError(f"no *.seg or *.seg.gz files in {', '.join(paths)}", 0)
    sink: KafkaSink | None = None
    if dry_run:
        from topology.app import settings
        batch_events = settings.drain.batch_events
    else:
        settings = self.settings()
        batch_events = settings.drain.batch_events
        kafka = settings.kafka
        if bootstrap_servers:
            kafka = dataclasses.replace(kafka, bootstrap_servers=bootstrap_servers)
        sink = KafkaSink(kafka)
        await sink.start()
    try:
        if sink is not None and not await sink.probe(sink.settings.request_timeout):
            why = await explain(sink.settings, sink.settings.request_timeout)  # a refused password or certificate
            raise CommandError(f"Kafka at {sink.settings.bootstrap_servers} is not reachable"
                               f"{'' if why is None else f' ({why})'}; nothing replayed", 1)
        tally = await Replay(self, files, keep, dry_run=dry_run, sink=sink, rate=rate, timeout=chunk_timeout,
                             batch_events=batch_events, restamp=stamp == "now").run()
    finally:
        if sink is not None:
            await sink.stop()
    if as_json or self.json:
        self.out(dumps(tally.doc()))
    else:
        for line in tally.lines():
            self.out(line)
    return tally.exit_code
