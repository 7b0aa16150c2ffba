"""Disk buffer segment files: the format, the record codec, scanning and recovery.

Pure and synchronous (no asyncio); the disk buffer, the drain and the ``buffer``
and ``replay`` commands call it (from a thread when inside the event loop).

Segment file = ``b"SPWSEG1\n"`` (8 bytes), then frames, big-endian::

    frame   = magic:u16 (0x5357) | payload_len:u32 | crc:u32 | payload
    payload = meta_len:u32 | meta (JSON, meta_len bytes) | body (the value, raw)

``crc`` is ``zlib.crc32`` over the 4 ``payload_len`` bytes then the payload.
A ``payload_len`` above ``MAX_RECORD_BYTES`` is refused before any allocation.

``meta`` = ``{"t": topic, "k": key | null, "h": [[name, value], ...], "ts": ms}``
and round-trips every byte: the key is its UTF-8 text when valid, else base64
with ``"kb": 1``; a header value likewise, as ``[name, base64, flags]`` with
``flags & 1``. ``flags & 2`` (and ``"tb": 1`` for the topic) mark a name that is
not valid Unicode (lone surrogates), stored as base64 of its surrogate-passed
UTF-8. Ordinary events never take these escapes.

Damage: a *torn tail* (an incomplete frame at end of file with nothing valid
after it, i.e. a crash mid-append, never acknowledged) is truncated. A *corrupt
range* runs from a bad frame to the next offset where a frame with the magic, a
sane length, a matching CRC and a decodable payload starts (resynchronising);
recovery copies the ranges (and a torn tail) to ``quarantine_dir/{segment}@{offset}.corrupt`` =
``b"SPWQRN1\n" (offset:u64 | length:u32 | bytes)*`` and rewrites the segment
without them. A file with a wrong header moves to quarantine whole
(``{segment}.badheader``); one holding only part of a header (torn at creation)
gets its header rewritten.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

import orjson

from agents.records import Record, new_record
from core.errors import CorruptRecord

logger = logging.getLogger(__name__)

FILE_HEADER: Final = b"SPWSEG1\n"
HEADER_LEN: Final = len(FILE_HEADER)
MAGIC: Final = 0x5357
FRAME_HEADER_LEN: Final = 10
MAX_RECORD_BYTES: Final = 64 * 1024 * 1024
QUARANTINE_HEADER: Final = b"SPWQRN1\n"
CHUNK_BYTES = 1024 * 1024  # read window; not Final so tests can shrink it

_MAGIC_BYTES: Final = MAGIC.to_bytes(2, "big")
_FRAME_HEAD = struct.Struct(">HII")
_HEAD = struct.Struct(">HIII")  # frame header + the payload's meta_len
_LENS = struct.Struct(">II")  # payload_len, meta_len: the CRC's first 8 bytes
_U32 = struct.Struct(">I")
_RANGE_HEAD = struct.Struct(">QI")

_OK, _END, _TORN, _BAD = range(4)


# -- codec --------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _as_text(data: bytes) -> tuple[str, int]:
    """``(text, 0)`` for valid UTF-8, else ``(base64, 1)``."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        return _b64(data), 1


def _escape_str(text: str) -> tuple[str, int]:
    """``(text, 0)``, or ``(base64 of its bytes, 1)`` when JSON cannot carry it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _b64(text.encode("utf-8", "surrogatepass")), 1
    return text, 0


def _escaped_meta(rec: Record) -> dict[str, Any]:
    """The meta of a record the fast path could not encode (binary bytes, bad str)."""
    topic, tb = _escape_str(rec.topic)
    meta: dict[str, Any] = {"t": topic, "k": None, "h": [], "ts": rec.timestamp_ms}
    if tb:
        meta["tb"] = 1
    if rec.key is not None:
        meta["k"], kb = _as_text(rec.key)
        if kb:
            meta["kb"] = 1
    for name, value in rec.headers:
        name_text, nb = _escape_str(name)
        value_text, vb = _as_text(value)
        flags = vb | nb << 1
        meta["h"].append([name_text, value_text, flags] if flags else [name_text, value_text])
    return meta


def _encode_into(parts: list[bytes], rec: Record) -> None:
    key = rec.key
    try:  # the fast path: every key and header value is UTF-8, every str is valid
        meta = orjson.dumps({"t": rec.topic, "k": None if key is None else key.decode(),
                             "h": [[n, v.decode()] for n, v in rec.headers], "ts": rec.timestamp_ms})
    except (UnicodeDecodeError, orjson.JSONEncodeError):
        meta = orjson.dumps(_escaped_meta(rec))
    value = rec.value
    payload_len = 4 + len(meta) + len(value)
    if payload_len > MAX_RECORD_BYTES:
        raise ValueError(f"record of {payload_len} bytes exceeds MAX_RECORD_BYTES={MAX_RECORD_BYTES}")
    crc = zlib.crc32(value, zlib.crc32(_LENS.pack(payload_len, len(meta)) + meta))
    parts += (_HEAD.pack(MAGIC, payload_len, crc, len(meta)), meta, value)


def encode_record(rec: Record) -> bytes:
    """One framed record. Raises ValueError when it exceeds MAX_RECORD_BYTES."""
    parts: list[bytes] = []
    _encode_into(parts, rec)
    return b"".join(parts)


def encode_records(recs: Iterable[Record]) -> bytes:
    """The frames of ``recs`` back to back, built with a single join."""
    parts: list[bytes] = []
    for rec in recs:
        _encode_into(parts, rec)
    return b"".join(parts)


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def decode_payload(payload: bytes) -> Record:
    """The record in a frame's payload (CRC already checked). Raises CorruptRecord."""
    try:
        if len(payload) < 4:
            raise ValueError("payload shorter than its meta length")
        (meta_len,) = _U32.unpack_from(payload)
        end = 4 + meta_len
        if end > len(payload):
            raise ValueError(f"meta length {meta_len} overruns payload of {len(payload)}")
        meta = orjson.loads(payload[4:end])
        if len(meta) == 4:  # {"t", "k", "h", "ts"}: no escapes, the common case in one pass
            try:
                headers = tuple([(name, value.encode()) for name, value in meta["h"]])
            except (ValueError, TypeError, AttributeError):
                headers = None  # an escaped entry ([name, value, flags]) or a bad one: the full path says
            if headers is not None:
                topic, key, ts = meta["t"], meta["k"], meta["ts"]
                if topic.__class__ is str and ts.__class__ is int and all(n.__class__ is str for n, _ in headers):
                    return Record(topic, None if key is None else key.encode(), headers, payload[end:], ts)
        return _decode_escaped(payload, meta, end)
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as exc:
        raise CorruptRecord(f"payload does not decode: {exc}") from exc


def _decode_escaped(payload: bytes, meta: Any, end: int) -> Record:
    """The general path of :func:`decode_payload`: every escape, every check."""
    topic = meta["t"]
    if meta.get("tb"):
        topic = _unb64(topic).decode("utf-8", "surrogatepass")
    key = meta["k"]
    if key is not None:
        key = _unb64(key) if meta.get("kb") else key.encode("utf-8")
    headers: list[tuple[str, bytes]] = []
    for entry in meta["h"]:
        name, value, flags = (*entry, 0) if len(entry) == 2 else entry
        if flags & 2:
            name = _unb64(name).decode("utf-8", "surrogatepass")
        if not isinstance(name, str):
            raise TypeError(f"header name {name!r}")
        headers.append((name, _unb64(value) if flags & 1 else value.encode("utf-8")))
    ts = meta["ts"]
    if not isinstance(topic, str) or type(ts) is not int:
        raise TypeError(f"bad topic or timestamp: {topic!r}, {ts!r}")
    return Record(topic, key, tuple(headers), bytes(payload[end:]), ts)


def parse_frame_header(head: bytes) -> tuple[int, int]:
    """``(payload_len, crc)`` of a 10-byte frame header; CorruptRecord if insane."""
    magic, length, crc = _FRAME_HEAD.unpack(head)
    if magic != MAGIC:
        raise CorruptRecord(f"bad frame magic 0x{magic:04x}")
    if length < 4 or length > MAX_RECORD_BYTES:
        raise CorruptRecord(f"frame length {length} outside 4..{MAX_RECORD_BYTES}")
    return length, crc


# -- reading ------------------------------------------------------------------


class _Window:
    """Random access to a file through one buffered window of CHUNK_BYTES."""

    __slots__ = ("_base", "_buf", "_f")

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._buf = b""
        self._base = 0

    def read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (fewer only at end of file)."""
        rel = offset - self._base
        if rel >= 0 and rel + n <= len(self._buf):
            return self._buf[rel : rel + n]
        self._f.seek(offset)
        self._buf, self._base = self._f.read(max(n, CHUNK_BYTES)), offset
        return self._buf if len(self._buf) <= n else self._buf[:n]


def _probe(w: _Window, off: int, size: int) -> tuple[int, bytes]:
    """Classify the frame at ``off``: (_OK, payload) | (_END|_TORN|_BAD, b"")."""
    remaining = size - off
    if remaining <= 0:
        return _END, b""
    if remaining < FRAME_HEADER_LEN:
        head = w.read(off, remaining)
        return (_TORN if _MAGIC_BYTES.startswith(head[:2]) else _BAD), b""
    head = w.read(off, FRAME_HEADER_LEN)
    try:
        length, crc = parse_frame_header(head)
    except CorruptRecord:
        return _BAD, b""
    if FRAME_HEADER_LEN + length > remaining:
        return _TORN, b""
    payload = w.read(off + FRAME_HEADER_LEN, length)
    if zlib.crc32(payload, zlib.crc32(head[2:6])) != crc:
        return _BAD, b""
    return _OK, payload


def _resync(w: _Window, start: int, size: int) -> int | None:
    """The next offset >= start where a valid, decodable frame begins."""
    pos = start
    while pos <= size - FRAME_HEADER_LEN:
        chunk = w.read(pos, CHUNK_BYTES)
        i = chunk.find(_MAGIC_BYTES)
        if i < 0:
            pos += max(len(chunk) - 1, 1)
            continue
        cand = pos + i
        status, payload = _probe(w, cand, size)
        if status == _OK:
            try:
                decode_payload(payload)
                return cand
            except CorruptRecord:
                pass
        pos = cand + 1
    return None


@contextlib.contextmanager
def _open_segment(path: Path | str, end: int | None) -> Iterator[tuple[BinaryIO, int]]:
    """The segment open for reading past its checked file header, and how far to read: its
    size, or ``end`` if smaller. CorruptRecord for a bad file header."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(HEADER_LEN) != FILE_HEADER:
            raise CorruptRecord("bad segment file header", segment=str(path), offset=0)
        yield f, size if end is None else min(size, end)


def iter_records(path: Path | str, start_offset: int = HEADER_LEN,
                 end: int | None = None) -> Iterator[tuple[int, int, Record]]:
    """Yield ``(offset, next_offset, record)`` for each frame from ``start_offset``.

    Reads in CHUNK_BYTES windows. Without ``end`` it stops quietly at a torn tail (an
    incomplete frame at end of file with nothing valid after it: a crash mid-append,
    never acknowledged). With ``end`` (the size the buffer recorded for a closed
    segment) it reads up to ``end`` and raises CorruptRecord unless the frames reach
    exactly that far: a closed segment that ends early, or in a torn frame, was damaged.
    Raises CorruptRecord(segment=..., offset=...) on a bad file header, a bad magic or
    length, a CRC mismatch, an undecodable payload, or a length running past the end
    with valid frames after.
    """
    seg = str(path)
    with _open_segment(path, end) as (f, size):
        w, off = _Window(f), max(start_offset, HEADER_LEN)
        while True:
            status, payload = _probe(w, off, size)
            if status == _END:
                if end is not None and off != end:
                    raise CorruptRecord(f"segment ends at byte {off}, the buffer recorded {end}",
                                        segment=seg, offset=off)
                return
            if status == _TORN:  # a damaged length must not hide the frames after it
                if size - off >= FRAME_HEADER_LEN and _resync(w, off + 1, size) is not None:
                    raise CorruptRecord("frame runs past end of file, valid frames follow", segment=seg, offset=off)
                if end is not None:
                    raise CorruptRecord(f"torn frame in a closed segment recorded as {end} bytes",
                                        segment=seg, offset=off)
                return
            if status == _BAD:
                raise CorruptRecord("bad frame (magic, length or CRC)", segment=seg, offset=off)
            try:
                rec = decode_payload(payload)
            except CorruptRecord as exc:
                raise CorruptRecord(str(exc), segment=seg, offset=off) from exc
            nxt = off + FRAME_HEADER_LEN + len(payload)
            yield off, nxt, rec
            off = nxt


_RUN_DONE, _RUN_MORE, _RUN_ODD = range(3)


def _decode_run(buf: bytes, pos: int, n: int, out: list[Record]) -> tuple[int, int]:
    """Decode up to ``n`` frames of ``buf`` from ``pos`` into ``out``, in one tight loop:
    ``(position after them, why it stopped)``. It stops (``_RUN_MORE``) at a frame not
    wholly in ``buf``, and (``_RUN_ODD``) at any frame it does not take as it is: damage, an
    escaped meta, a bad type. :func:`iter_chunks` hands those to :func:`iter_records`.

    The checks are :func:`_probe`'s and :func:`decode_payload`'s: magic, length, CRC, the
    meta's shape and types. Headers come out as lists, as aiokafka's batch builder takes them.
    """
    mv = memoryview(buf)
    size = len(buf)
    unpack, crc32, loads, append = _HEAD.unpack_from, zlib.crc32, orjson.loads, out.append
    while n > 0:
        if pos + 14 > size:
            return pos, _RUN_MORE
        magic, length, crc, meta_len = unpack(buf, pos)
        if magic != MAGIC or length < 4 or length > MAX_RECORD_BYTES:
            return pos, _RUN_ODD
        nxt = pos + FRAME_HEADER_LEN + length
        if nxt > size:
            return pos, _RUN_MORE
        meta_end = pos + 14 + meta_len
        if meta_end > nxt or crc32(mv[pos + FRAME_HEADER_LEN:nxt], crc32(mv[pos + 2:pos + 6])) != crc:
            return pos, _RUN_ODD
        try:
            meta = loads(mv[pos + 14:meta_end])
            if len(meta) != 4:  # "tb"/"kb": an escaped topic or key
                return pos, _RUN_ODD
            topic, key, ts, pairs = meta["t"], meta["k"], meta["ts"], meta["h"]
            headers = [(name, value.encode()) for name, value in pairs if name.__class__ is str]
            if key is not None:
                key = key.encode()
        except (ValueError, TypeError, KeyError, AttributeError):  # escaped headers ([n, v, flags]) too
            return pos, _RUN_ODD
        if topic.__class__ is not str or ts.__class__ is not int or len(headers) != len(pairs):
            return pos, _RUN_ODD
        append(new_record((topic, key, headers, buf[meta_end:nxt], ts)))
        pos = nxt
        n -= 1
    return pos, _RUN_DONE


def iter_chunks(path: Path | str, start_offset: int = HEADER_LEN, end: int | None = None,
                size: int = 2000) -> Iterator[tuple[int, int, list[Record]]]:
    """What :func:`iter_records` yields, in lists of at most ``size`` records:
    ``(first offset, end offset, records)``, with the same checks and the same errors.

    Frames are decoded a file block at a time by :func:`_decode_run` (the drain's hot path:
    no generator step, no window object, no per-frame slicing of the header); any frame it
    does not take (damage, an escaped meta, the end of the file) goes through
    :func:`iter_records`, so damage is found, and reported, in one place.
    """
    with _open_segment(path, end) as (f, limit):
        off = first = max(start_offset, HEADER_LEN)
        buf, base = b"", off
        chunk: list[Record] = []
        while True:
            pos, why = _decode_run(buf, off - base, size - len(chunk), chunk)
            off = base + pos
            if why == _RUN_MORE and base + len(buf) < limit:  # the next frame goes on past this block
                need = max(CHUNK_BYTES, _HEAD.size)  # at least a frame header and its meta length
                if len(buf) - pos >= _HEAD.size:
                    need = max(need, FRAME_HEADER_LEN + _HEAD.unpack_from(buf, pos)[1])
                f.seek(off)
                buf, base = f.read(min(need, limit - off)), off
                continue
            if why != _RUN_DONE:  # the end, or a frame for the careful reader
                one = next(iter_records(path, off, end), None)
                if one is None:
                    break
                chunk.append(one[2])
                off = one[1]
            if len(chunk) >= size:
                yield first, off, chunk
                chunk, first = [], off
    if chunk:
        yield first, off, chunk


# -- scanning -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentScan:
    """What a segment file holds. ``valid_bytes`` = header + every valid frame
    (the size after recovery); ``corrupt`` = (offset, length) ranges in file order."""

    path: Path
    header_ok: bool
    size: int
    valid_bytes: int
    events: int
    first_ts: int | None
    last_ts: int | None
    per_topic: Mapping[str, int]
    torn_tail_bytes: int
    corrupt: tuple[tuple[int, int], ...]

    @property
    def clean(self) -> bool:
        return self.header_ok and not self.torn_tail_bytes and not self.corrupt


def _scan(path: Path) -> tuple[SegmentScan, list[tuple[int, int]]]:
    """The scan plus the coalesced (offset, length) spans of valid frames."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        header = f.read(HEADER_LEN)
        if header != FILE_HEADER:
            torn_header = len(header) < HEADER_LEN and FILE_HEADER.startswith(header)
            scan = SegmentScan(path, False, size, 0, 0, None, None, {}, size if torn_header else 0,
                               () if torn_header else ((0, size),))
            return scan, []
        w, off = _Window(f), HEADER_LEN
        spans: list[tuple[int, int]] = []
        corrupt: list[tuple[int, int]] = []
        per_topic: dict[str, int] = {}
        events = torn = 0
        first_ts: int | None = None
        last_ts: int | None = None

        def add(ranges: list[tuple[int, int]], start: int, length: int) -> None:
            if ranges and sum(ranges[-1]) == start:
                ranges[-1] = (ranges[-1][0], ranges[-1][1] + length)
            else:
                ranges.append((start, length))

        while True:
            rel = off - w._base
            if 0 <= rel < len(w._buf):  # a run of clean frames in the window, in one tight loop
                recs: list[Record] = []
                pos, _ = _decode_run(w._buf, rel, size, recs)
                if recs:
                    add(spans, off, pos - rel)
                    events += len(recs)
                    for rec in recs:
                        per_topic[rec.topic] = per_topic.get(rec.topic, 0) + 1
                    first_ts = recs[0].timestamp_ms if first_ts is None else first_ts
                    last_ts = recs[-1].timestamp_ms
                    off = w._base + pos
            status, payload = _probe(w, off, size)  # the frame the run stopped at, with every check
            if status == _END:
                break
            if status == _OK:
                frame_len = FRAME_HEADER_LEN + len(payload)
                try:
                    rec = decode_payload(payload)
                except CorruptRecord:
                    add(corrupt, off, frame_len)
                else:
                    add(spans, off, frame_len)
                    events += 1
                    per_topic[rec.topic] = per_topic.get(rec.topic, 0) + 1
                    first_ts = rec.timestamp_ms if first_ts is None else first_ts
                    last_ts = rec.timestamp_ms
                off += frame_len
                continue
            nxt = None if size - off < FRAME_HEADER_LEN else _resync(w, off + 1, size)
            if nxt is None:
                if status == _TORN:
                    torn = size - off
                else:
                    add(corrupt, off, size - off)
                break
            add(corrupt, off, nxt - off)
            off = nxt
    valid = HEADER_LEN + sum(length for _, length in spans)
    scan = SegmentScan(path, True, size, valid, events, first_ts, last_ts, per_topic, torn, tuple(corrupt))
    return scan, spans


def scan_segment(path: Path | str) -> SegmentScan:
    """Read a whole segment (in chunks) and say what is valid, torn and corrupt."""
    return _scan(Path(path))[0]


# -- recovery -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What ``recover_segment`` did. ``quarantined_whole``: the file was moved to
    ``quarantine_file`` and no longer exists at ``path``."""

    path: Path
    kept_events: int
    kept_bytes: int
    first_ts: int | None
    torn_bytes_truncated: int
    quarantined_ranges: tuple[tuple[int, int], ...]
    quarantine_file: Path | None
    quarantined_whole: bool = False
    original_size: int = 0  # the file's size before recovery

    @property
    def removed(self) -> tuple[tuple[int, int], ...]:
        """Every (offset, length) range taken out of the file, in file order (a torn tail last)."""
        if not self.torn_bytes_truncated or self.quarantined_whole:
            return self.quarantined_ranges
        tail = (self.original_size - self.torn_bytes_truncated, self.torn_bytes_truncated)
        return (*self.quarantined_ranges, tail)


def shift_offset(offset: int, removed: Iterable[tuple[int, int]]) -> int:
    """Where byte ``offset`` of a file lands once the ``removed`` ranges are cut out.

    An offset inside a removed range maps to where that range was: the first byte after
    the kept data before it, so nothing after the range is skipped."""
    shift = 0
    for start, length in removed:
        if start >= offset:
            break
        if start + length > offset:
            return start - shift
        shift += length
    return offset - shift


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (created, renamed, removed files) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(directory: Path) -> None:
    """``mkdir -p`` that makes each directory it creates durable (its parent's entry fsynced):
    a file fsynced in a directory whose own entry was never fsynced can vanish in a power cut."""
    missing: list[Path] = []
    d = Path(directory)
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        fsync_dir(d.parent)


def _free_name(path: Path) -> Path:
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _copy(src: BinaryIO, dst: BinaryIO, offset: int, length: int) -> None:
    src.seek(offset)
    while length > 0:
        chunk = src.read(min(length, CHUNK_BYTES))
        if not chunk:
            raise OSError(f"{src.name} shrank while being copied")
        dst.write(chunk)
        length -= len(chunk)


def _write_quarantine(path: Path, ranges: tuple[tuple[int, int], ...], qdir: Path) -> Path:
    target = _free_name(qdir / f"{path.name}@{ranges[0][0]}.corrupt")
    with open(path, "rb") as src, open(target, "xb") as dst:
        dst.write(QUARANTINE_HEADER)
        for offset, length in ranges:
            dst.write(_RANGE_HEAD.pack(offset, length))
            _copy(src, dst, offset, length)
        dst.flush()
        os.fsync(dst.fileno())
    fsync_dir(qdir)
    return target


def _rewrite(path: Path, spans: list[tuple[int, int]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        dst.write(FILE_HEADER)
        for offset, length in spans:
            _copy(src, dst, offset, length)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def recover_segment(path: Path | str, quarantine_dir: Path | str) -> RecoveryReport:
    """Make a segment clean: truncate a torn tail, quarantine corrupt ranges or a
    file with a bad header. Raises only OSError, never for what the file holds."""
    path, qdir = Path(path), Path(quarantine_dir)
    scan, spans = _scan(path)
    if not scan.header_ok:
        if not scan.corrupt:  # empty or a prefix of the header: torn at creation
            with open(path, "r+b") as f:
                f.truncate(0)
                f.write(FILE_HEADER)
                f.flush()
                os.fsync(f.fileno())
            logger.warning("segment %s: torn file header (%d bytes) rewritten", path, scan.size)
            return RecoveryReport(path, 0, HEADER_LEN, None, scan.size, (), None, original_size=scan.size)
        make_dirs(qdir)
        target = _free_name(qdir / f"{path.name}.badheader")
        os.replace(path, target)
        fsync_dir(qdir)
        fsync_dir(path.parent)
        logger.warning("segment %s: bad file header, %d bytes moved to %s", path, scan.size, target)
        return RecoveryReport(path, 0, 0, None, 0, scan.corrupt, target, quarantined_whole=True,
                              original_size=scan.size)
    qfile = None
    # A torn tail is kept aside too: on the active segment it is an unacknowledged append cut
    # short, but on a closed one it is damage, and its bytes are evidence.
    aside = scan.corrupt + (((scan.size - scan.torn_tail_bytes, scan.torn_tail_bytes),) if scan.torn_tail_bytes else ())
    if aside:
        make_dirs(qdir)
        qfile = _write_quarantine(path, aside, qdir)
    if scan.corrupt:
        for offset, length in scan.corrupt:
            logger.warning("segment %s: corrupt range at offset %d (%d bytes) quarantined in %s",
                           path, offset, length, qfile)
        _rewrite(path, spans)
        logger.warning("segment %s: rewritten keeping %d events (%d bytes)", path, scan.events, scan.valid_bytes)
    elif scan.torn_tail_bytes:
        with open(path, "r+b") as f:
            f.truncate(scan.valid_bytes)
            os.fsync(f.fileno())
    if scan.torn_tail_bytes:
        logger.warning("segment %s: torn tail of %d bytes truncated at offset %d",
                       path, scan.torn_tail_bytes, scan.size - scan.torn_tail_bytes)
    return RecoveryReport(path, scan.events, scan.valid_bytes, scan.first_ts,
                          scan.torn_tail_bytes, scan.corrupt, qfile, original_size=scan.size)
