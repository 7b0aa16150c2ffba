"""Flume's own spilled files: what a ``file_roll`` sink with ``sink.serializer = avro_event`` wrote.

Each is an Avro object container file (magic ``Obj\\x01``) of Flume's schema
``Event { headers: map<string>, body: bytes }``, named ``<seriesTimestampMillis>-<n>``,
with the codec Flume was configured for (``null``, ``deflate``, ``snappy``). Flume never
fsyncs them, so a file can end in a torn block, or hold damage: everything before the
first unreadable block is read, and the rest is reported (:attr:`FlumeFile.damage`),
never raised.

Each event becomes a :class:`~agents.records.Record` through the same
:class:`~agents.router.Router` as live traffic: the topic its ``topic`` header names
(``router.topic_header``), else ``router.default_topic``; the ``key`` header as its key;
every header a Kafka record header. Its timestamp is the ``timestamp`` header when that
is a number of milliseconds (Flume's timestamp interceptor), else the file's series
timestamp (its name), else the file's modification time.

:class:`ReplayLedger` records what a replay sent of each file (keyed by the file's Avro
sync marker, 16 random bytes Flume draws per file, and its name), so a second run skips
what the first sent; the input files are never changed.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
import orjson

from agents.records import Record
from agents.router import Router
from agents.segments import SegmentScan, fsync_dir
from core.errors import RoutingError

MAGIC = b"Obj\x01"
SERIES_NAME = re.compile(r"^(\d{10,})-\d+")
#: the codecs Flume's file_roll writes (AbstractAvroEventSerializer's compressionCodec)
CODECS = ("null", "deflate", "snappy")


def is_flume_file(path: Path) -> bool:
    """An Avro container file (Flume's avro_event serializer writes nothing else)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == MAGIC
    except OSError:
        return False


class NotFlumeFile(ValueError):
    """An Avro file that is not of Flume's Event schema, or an unreadable header."""


@dataclass
class FlumeFile:
    """One file: its header on open, then its events from any index on."""

    path: Path
    codec: str = "null"
    sync: str = ""
    size: int = 0
    fallback_ms: int = 0
    damage: str | None = None  # what stopped the read, with its offset; None when read to the end
    good_bytes: int = 0  # bytes of whole blocks read

    @classmethod
    def open(cls, path: Path) -> FlumeFile:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            try:
                reader = fastavro.block_reader(fh)
            except Exception as exc:  # noqa: BLE001 - fastavro's errors on a bad header vary
                raise NotFlumeFile(f"unreadable Avro header: {exc}") from None
            fields = _fields(reader.writer_schema)
            if not {"headers", "body"} <= fields:
                raise NotFlumeFile(f"not Flume's Event schema (fields: {', '.join(sorted(fields)) or 'none'})")
            codec = str(reader.metadata.get("avro.codec", "null"))
            sync = reader._header["sync"].hex()  # fastavro keeps the header as read; no public accessor
        m = SERIES_NAME.match(path.name)
        fallback = int(m.group(1)) if m else int(path.stat().st_mtime * 1000)
        return cls(path, codec, sync, size, fallback)

    @property
    def identity(self) -> str:
        return f"{self.sync}:{self.path.name}"

    def events(self, start: int = 0) -> Iterator[tuple[int, dict[str, str], bytes]]:
        """``(index, headers, body)`` from event ``start`` on; stops at the first damage (``damage`` set)."""
        self.damage = None
        index = 0
        with open(self.path, "rb") as fh:
            try:
                reader = fastavro.block_reader(fh)
                self.good_bytes = fh.tell()
                for block in reader:
                    n = block.num_records
                    if index + n <= start:
                        index += n
                        self.good_bytes = fh.tell()
                        continue
                    records = list(block)  # decode the whole block first: a damaged one yields nothing
                    skip = max(0, start - index)
                    for i, rec in enumerate(records[skip:], index + skip):
                        yield (i, *_event(rec))
                    index += n
                    self.good_bytes = fh.tell()
            except Exception as exc:  # noqa: BLE001 - fastavro raises ValueError, EOFError, IndexError... on bad bytes
                self.damage = (f"unreadable from byte {self.good_bytes} of {self.size} ({self.size - self.good_bytes}"
                               f" bytes: {'a torn last block' if _torn(exc) else 'damaged'}: {exc})")


def _torn(exc: BaseException) -> bool:
    return isinstance(exc, EOFError | IndexError) or "sync marker" in str(exc)


def _fields(schema: Any) -> set[str]:
    if isinstance(schema, dict) and schema.get("type") == "record":
        return {str(f.get("name")) for f in schema.get("fields", []) if isinstance(f, dict)}
    return set()


def _event(rec: Any) -> tuple[dict[str, str], bytes]:
    headers = rec.get("headers") or {}
    body = rec.get("body") or b""
    if isinstance(body, str):  # a schema that said string
        body = body.encode("utf-8")
    return dict(headers), bytes(body)


def timestamp_of(headers: dict[str, str], fallback_ms: int, header: str = "timestamp") -> int:
    value = headers.get(header)
    if value is not None and value.isdigit() and len(value) <= 16:
        return int(value)
    return fallback_ms


@dataclass
class Routed:
    """What routing a file's events gave: chunks to send, and the events it refused."""

    refused: dict[str, int] = field(default_factory=dict)  # reason -> events
    first_refused: int | None = None  # index of the first refused event


def record_chunks(f: FlumeFile | TextFile, router: Router, start: int, size: int,
                  routed: Routed) -> Iterator[tuple[int, int, list[Record]]]:
    """``(first index, end index, records)`` in chunks of ``size``, routed; refused events are counted
    in ``routed`` and left out (the shape :func:`~agents.drain.drain_segment` takes as ``chunks``).
    A :class:`TextFile`'s lines all go to its ``topic``, with no key and no headers."""
    chunk: list[Record] = []
    first = end = start
    pending = False
    topic = f.topic if isinstance(f, TextFile) else None
    for index, headers, body in f.events(start):
        if not pending:
            first, pending = index, True
        end = index + 1
        try:
            if topic is not None:
                router.check_topic(topic)
                rec = Record(topic, None, [], body, f.fallback_ms)
            else:
                rec = router.route([(list((k, v.encode("utf-8")) for k, v in headers.items()), body)],
                                   timestamp_of(headers, f.fallback_ms))[0]
        except RoutingError as exc:
            routed.refused[str(exc)] = routed.refused.get(str(exc), 0) + 1
            if routed.first_refused is None:
                routed.first_refused = index
            continue
        chunk.append(rec)
        if len(chunk) >= size:
            yield first, end, chunk
            chunk, pending = [], False
    if pending:
        yield first, end, chunk


@dataclass
class TextFile:
    """A file_roll file of the TEXT or HEADER_AND_TEXT serializer: one event a line, no headers
    to route by (HEADER_AND_TEXT's ``{k=v, ...}`` prefix is Java's Map.toString, not parseable
    back), so every line goes, whole, to ``topic``."""

    path: Path
    topic: str
    size: int = 0
    fallback_ms: int = 0
    identity: str = ""
    damage: str | None = None
    good_bytes: int = 0

    @classmethod
    def open(cls, path: Path, topic: str) -> TextFile:
        st = path.stat()
        with open(path, "rb") as fh:
            head = fh.read(65536)
        m = SERIES_NAME.match(path.name)
        fallback = int(m.group(1)) if m else int(st.st_mtime * 1000)
        digest = hashlib.sha256(head).hexdigest()[:32]
        return cls(path, topic, st.st_size, fallback, f"text:{digest}:{path.name}")

    def events(self, start: int = 0) -> Iterator[tuple[int, dict[str, str], bytes]]:
        """``(index, {}, line without its newline)``; a last line without a newline is kept."""
        with open(self.path, "rb") as fh:
            for index, line in enumerate(fh):
                if index >= start:
                    yield index, {}, line[:-1] if line.endswith(b"\n") else line
        self.good_bytes = self.size


def is_flume_text_name(path: Path) -> bool:
    """A name file_roll gives (``<seriesTimestampMillis>-<n>``, maybe with its extension)."""
    return SERIES_NAME.match(path.name) is not None


@dataclass(frozen=True, slots=True)
class FlumeScan:
    """A whole file, read once: for ``buffer ls/inspect/verify`` and a replay's totals."""

    events: int
    per_topic: dict[str, int]
    first_ts: int | None
    last_ts: int | None
    damage: str | None


def scan_file(f: FlumeFile, router: Router) -> FlumeScan:
    per_topic: dict[str, int] = {}
    first = last = None
    n = 0
    topic_header = router.settings.topic_header
    for _, headers, _ in f.events():
        n += 1
        topic = headers.get(topic_header) or router.settings.default_topic
        per_topic[topic] = per_topic.get(topic, 0) + 1
        if "timestamp" in headers:
            ts = timestamp_of(headers, -1)
            if ts >= 0:
                first = ts if first is None else min(first, ts)
                last = ts if last is None else max(last, ts)
    return FlumeScan(n, per_topic, first, last, f.damage)


class ReplayLedger:
    """What replays sent of each Flume file: ``{identity: {"events": n, "complete": bool}}``,
    rewritten durably (temp file, fsync, rename, directory fsync) after each acknowledged chunk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.doc: dict[str, dict[str, Any]] = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            self.doc = {}
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}: unreadable replay ledger ({exc}); move it aside to replay everything "
                             f"again") from None

    def done(self, f: FlumeFile | TextFile) -> tuple[int, bool]:
        entry = self.doc.get(f.identity) or {}
        return int(entry.get("events", 0)), bool(entry.get("complete", False))

    def record(self, f: FlumeFile | TextFile, events: int, complete: bool) -> None:
        self.doc[f.identity] = {"path": str(f.path.resolve()), "events": events, "complete": complete}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(self.doc, option=orjson.OPT_INDENT_2))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)



def on_progress(ledger: ReplayLedger | None, f: FlumeFile | TextFile, routed: Routed) -> Callable[[int], None]:
    """Record ``end`` (events acknowledged up to there) unless an event before it was refused."""

    def record(end: int) -> None:
        if ledger is None:
            return
        if routed.first_refused is not None:
            end = min(end, routed.first_refused)
        ledger.record(f, end, False)

    return record


__all__ = ["MAGIC", "FlumeFile", "FlumeScan", "NotFlumeFile", "ReplayLedger", "Routed", "TextFile",
           "as_segment_scan", "count_events", "is_flume_file", "is_flume_text_name", "record_chunks", "scan_file",
           "series_order", "timestamp_of"]


def count_events(f: FlumeFile | TextFile) -> int:
    """Events in the file's whole blocks (from the block headers; nothing decoded), or its lines."""
    if isinstance(f, TextFile):
        with open(f.path, "rb") as fh:
            return sum(1 for _ in fh)
    n = 0
    with open(f.path, "rb") as fh:
        try:
            for block in fastavro.block_reader(fh):
                n += block.num_records
        except Exception:  # noqa: BLE001 - the damage: events() reports it
            pass
    return n


def series_order(path: Path) -> tuple[int, int, str]:
    """Flume's file order: ``<seriesTimestampMillis>-<n>`` by number, other names after."""
    m = re.match(r"^(\d+)-(\d+)", path.name)
    return (int(m.group(1)), int(m.group(2)), path.name) if m else (1 << 62, 0, path.name)


def as_segment_scan(f: FlumeFile, scan: FlumeScan) -> SegmentScan:
    """A Flume file's scan in the shape ``spillway buffer`` reports for segments: a torn last
    block as a torn tail, other damage as a corrupt range to the end (Avro cannot resync past it)."""
    rest = f.size - f.good_bytes if scan.damage else 0
    torn = rest if scan.damage and "torn" in scan.damage else 0
    corrupt = ((f.good_bytes, rest),) if rest and not torn else ()
    return SegmentScan(f.path, True, f.size, f.good_bytes, scan.events, scan.first_ts, scan.last_ts,
                       scan.per_topic, torn, corrupt)
