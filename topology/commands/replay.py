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
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import orjson
from faust.cli import argument, option

from agents.drain import PROGRESS_FILE, RateLimiter, Sender, drain_segment, read_progress, segment_lock
from agents.flume_files import (
    FlumeFile,
    NotFlumeFile,
    ReplayLedger,
    Routed,
    TextFile,
    count_events,
    is_flume_file,
    is_flume_text_name,
    on_progress,
    record_chunks,
    series_order,
)
from agents.kafka_auth import explain
from agents.kafka_sink import KafkaSink
from agents.records import Delivery, Record
from agents.router import Router
from agents.segments import iter_records, scan_segment
from core import heap
from core.errors import CorruptRecord
from core.settings import Settings
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

#: where a replay records which Flume files it sent (in buffer.directory, next to the segments)
FLUME_LEDGER = "flume-replayed.json"

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
                 sink: KafkaSink | None, rate: float, timeout: float, batch_events: int, restamp: bool,
                 flume: FlumeReplay | None = None) -> None:
        self.cmd = cmd
        self.flume = flume
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
        if self.flume is not None and path in self.flume.files:
            return await self.flume.replay(self, path)
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

            def after(end: int, sent: int, archived: int, refused: int) -> None:  # after each acknowledged chunk
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


def _opens(path: Path) -> bool:
    try:
        FlumeFile.open(path)
    except (NotFlumeFile, OSError):
        return False
    return True


class FlumeReplay:
    """Replay's part for Flume's own ``file_roll``/``avro_event`` files (:mod:`agents.flume_files`):
    the same sender, filters and rate as segments, events routed by the router's rules, and a
    ledger so a file replayed whole is skipped next time (unless ``force``)."""

    def __init__(self, files: Sequence[Path], router: Router, ledger: ReplayLedger | None, *, force: bool,
                 as_json: bool, text_files: Sequence[Path] = (), text_topic: str | None = None) -> None:
        self.files = set(files) | set(text_files)
        self.text_files = set(text_files)
        self.text_topic = text_topic
        self.router = router
        self.ledger = ledger
        self.force = force
        self.as_json = as_json
        self.bar: Any = None
        self.started = time.monotonic()
        self.sent = 0

    def open_bar(self, total: int) -> None:
        if sys.stderr.isatty() and not self.as_json:
            from tqdm import tqdm

            size = shutil.get_terminal_size()  # a terminal that reports no size (0 x 0) would hide the bar
            self.bar = tqdm(total=total, unit="ev", unit_scale=True, desc="replay", file=sys.stderr,
                            ncols=size.columns or 100, nrows=size.lines or 24, mininterval=0.2)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def say(self, cmd: SpillwayCommand, path: Path, **doc: Any) -> None:
        """A file's outcome: a JSON line (--json) or a plain line, when no progress bar is drawn."""
        if self.bar is not None:
            return
        rate = self.sent / max(time.monotonic() - self.started, 1e-3)
        if self.as_json:
            click.echo(orjson.dumps({"file": str(path), **doc, "events_per_second": round(rate, 1)}), err=True)
        else:
            cmd.err(f"{path}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in doc.items())
                    + (f" ({rate:.0f} events/s sent so far)" if self.sent else ""))

    async def replay(self, run: Replay, path: Path) -> bool:
        cmd, tally = run.cmd, run.tally
        f: FlumeFile | TextFile
        if path in self.text_files:
            if self.text_topic is None:
                run._error(path, "neither a segment nor an Avro file: a file_roll TEXT or HEADER_AND_TEXT file? "
                                 "Those keep no headers to route by; give --topic T (once) to send its lines to T")
                return True
            try:
                f = await asyncio.to_thread(TextFile.open, path, self.text_topic)
            except OSError as exc:
                run._error(path, f"cannot read: {exc}")
                return True
        else:
            try:
                f = await asyncio.to_thread(FlumeFile.open, path)
            except (NotFlumeFile, OSError) as exc:
                run._error(path, f"not a Flume avro_event file: {exc}")
                return True
        start, complete = (0, False)
        if self.ledger is not None and not self.force:
            start, complete = self.ledger.done(f)
        if complete:
            tally.already[str(path)] = start
            self.say(cmd, path, skipped=f"replayed before ({start} events; --force sends it again)")
            return True
        routed = Routed()
        keep = run.keep
        # --topic names a TEXT file's topic rather than filtering it
        filtered = keep.since_ms is not None or keep.until_ms is not None or (
            bool(keep.topics) and not isinstance(f, TextFile))
        record = on_progress(self.ledger if not (run.dry_run or filtered) else None, f, routed)
        counts: dict[str, int] = {}
        acked_before = sum(run.sender.acked.values())
        last = [start]

        def after(end: int, sent: int, archived: int, refused: int) -> None:  # after each acknowledged chunk
            if refused == 0:
                record(end)
            if self.bar is not None:
                self.bar.update(end - last[0])
            last[0] = end
            self.sent = acked_before + sent

        read = [start]

        def tracked() -> Iterator[tuple[int, int, list[Record]]]:
            for first, end, records in record_chunks(f, self.router, start, run.batch_events, routed):
                read[0] = end
                yield first, end, records

        chunks = tracked()
        result = await drain_segment(
            path, run.sender, batch_events=run.batch_events, timeout=run.timeout, limiter=run.limiter,
            keep=run.keep if run.keep.active else None, dry_run=run.dry_run,
            counts=counts if run.dry_run else None, on_chunk=after, chunks=chunks)
        if run.dry_run:
            tally.add(counts)
            if self.bar is not None:
                self.bar.update(read[0] - start)
            last[0] = read[0]
        tally.skipped_by_filter += result.skipped
        for why, n in routed.refused.items():
            tally.failed += n
            cmd.err(f"{path}: {n} event(s) not replayed: {why}")
        if start:
            tally.resumed[str(path)] = start
        if not result.complete:
            whole = await asyncio.to_thread(count_events, f)
            failed = max(0, whole - last[0])
            tally.failed += failed
            cmd.err(f"{path}: Kafka did not acknowledge {failed} event(s): {result.error}")
            return False
        if f.damage is not None:
            run._error(path, f"{f.damage}; the {last[0] - start} event(s) before it were "
                                f"{'read' if run.dry_run else 'replayed'}, the rest was not")
        elif not routed.refused and self.ledger is not None and not run.dry_run and not filtered:
            await asyncio.to_thread(self.ledger.record, f, last[0], True)
        self.say(cmd, path, events=last[0] - start, **({"resumed_at": start} if start else {}),
                 **({"damage": f.damage} if f.damage else {}))
        return True


def _is_segment_file(path: Path) -> bool:
    return path.name.endswith((".seg", ".seg.gz"))


def collect_inputs(paths: Sequence[str]) -> tuple[list[Path], list[Path], list[Path]]:
    """(every file to replay, the Flume avro_event files, the Flume text files among them):
    directories expanded to their segments and archives (by name), Flume's avro_event files
    (by their Avro magic) and other files named as file_roll names them (``<millis>-<n>``:
    its TEXT or HEADER_AND_TEXT serializer); a file given by name is a text file when it is
    neither a segment nor an Avro file."""
    files = collect_segments(paths)
    flume = [p for p in files if is_flume_file(p)]
    text = [p for p in files if not _is_segment_file(p) and p not in flume]
    seen = {p.resolve() for p in files}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted((p for p in path.iterdir() if p.is_file() and p.resolve() not in seen
                            and (is_flume_file(p) or is_flume_text_name(p))), key=series_order)
            files += found
            flume += [p for p in found if is_flume_file(p)]
            text += [p for p in found if p not in flume]
    return files, flume, text


@app.command(
    argument("paths", nargs=-1, required=True, type=click.Path()),
    option("--topic", "topics", multiple=True,
           help="Replay only events of this topic (repeatable); for Flume's TEXT/HEADER_AND_TEXT files, which keep "
                "no headers, the one topic their lines go to."),
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
    option("--force", is_flag=True, default=False,
           help="Send Flume files a replay already sent whole (recorded in <buffer.directory>/" + FLUME_LEDGER + ")."),
    option("--json", "as_json", is_flag=True, default=False, help="Print the summary as JSON."),
    base=SpillwayCommand,
)
async def replay(self: SpillwayCommand, paths: tuple[str, ...], topics: tuple[str, ...], since: str | None,
                 until: str | None, dry_run: bool, rate: float, chunk_timeout: float, stamp: str,
                 bootstrap_servers: str | None, force: bool,
                 as_json: bool) -> int:
    """Replay buffer segments into Kafka, each event to its own topic with its key and headers.

    PATHS are segment files (*.seg), gzip'd archive segments (*.seg.gz, from
    drain.archive_directory), Flume's own file_roll files written with
    sink.serializer = avro_event (recognised by their Avro magic; each event goes to
    the topic its header names, with its key and headers; --since/--until read its
    timestamp header), or directories of them (oldest name first). Files are only
    read. A segment that a running worker is draining is skipped and counted. A Flume
    file replayed whole is recorded in <buffer.directory>/flume-replayed.json and
    skipped by the next run (--force: send it again); one cut short resumes after the
    events Kafka acknowledged. Flume's TEXT and HEADER_AND_TEXT files kept no headers:
    their lines go, whole, to the one --topic given (required for them).
    Exit code: 0 all replayed, 1 something not replayed (not acknowledged, skipped,
    damaged), 2 bad arguments or configuration.
    """
    keep = RecordFilter.from_options(topics, since, until)
    heap.settle()  # chunks of records in flight, as in the worker's drain (core/heap.py)
    files, flume_files, text_files = await asyncio.to_thread(collect_inputs, paths)
    if not files:
        raise CommandError(f"nothing to replay in {', '.join(paths)}: no *.seg or *.seg.gz files and no Flume "
                           f"avro_event files (a file_roll sink's TEXT or HEADER_AND_TEXT files kept no headers)", 1)
    sink: KafkaSink | None = None
    settings: Settings
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
        flume = None
        if flume_files or text_files:
            try:
                ledger = await asyncio.to_thread(ReplayLedger, settings.buffer.directory / FLUME_LEDGER)
            except ValueError as exc:
                raise CommandError(str(exc), 2) from None
            flume = FlumeReplay(flume_files, Router(settings.router), ledger, force=force, as_json=as_json,
                                text_files=text_files, text_topic=topics[0] if len(topics) == 1 else None)
            flume.open_bar(sum(await asyncio.to_thread(lambda: [count_events(FlumeFile.open(p))
                                                                 for p in flume_files if _opens(p)])))
        try:
            tally = await Replay(self, files, keep, dry_run=dry_run, sink=sink, rate=rate, timeout=chunk_timeout,
                                 batch_events=batch_events, restamp=stamp == "now", flume=flume).run()
        finally:
            if flume is not None:
                flume.close()
    finally:
        if sink is not None:
            await sink.stop()
    if as_json or self.json:
        self.out(dumps(tally.doc()))
    else:
        for line in tally.lines():
            self.out(line)
    return tally.exit_code
