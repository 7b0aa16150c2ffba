"""Fuzzing the disk buffer's record codec and segment reader (hypothesis).

Whatever a segment file holds: ``decode_payload`` returns a record or raises CorruptRecord;
``iter_records`` yields records then stops or raises CorruptRecord, and ``iter_chunks`` (the
drain's fast reader) yields the same records in chunks and fails at the same offset; ``scan_segment`` never
raises; ``recover_segment`` leaves a file that reads clean; all in time and memory bounded
by the file's size. Any record (binary keys and header values, any Unicode, lone
surrogates included) round-trips exactly.
"""

from __future__ import annotations

import itertools
import os
import shutil
import struct
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents import segments
from agents.records import Record
from agents.segments import (
    FILE_HEADER,
    FRAME_HEADER_LEN,
    HEADER_LEN,
    decode_payload,
    encode_record,
    encode_records,
    iter_chunks,
    iter_records,
    parse_frame_header,
    recover_segment,
    scan_segment,
)
from core.errors import CorruptRecord

settings.register_profile("spillway", max_examples=100, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("spillway-long", max_examples=5_000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("SPILLWAY_HYPOTHESIS_PROFILE", "spillway"))
EXAMPLES = settings().max_examples
SECONDS_PER_FILE = 2.0  # "never hangs": a few KB must scan in far less

# -- strategies ---------------------------------------------------------------------------------

any_text = st.text(st.characters() | st.characters(categories=["Cs"]), max_size=16)  # lone surrogates too
records = st.builds(Record, topic=any_text, key=st.none() | st.binary(max_size=16),
                    headers=st.lists(st.tuples(any_text, st.binary(max_size=16)), max_size=4).map(tuple),
                    value=st.binary(max_size=64), timestamp_ms=st.integers(0, 2**63 - 1))
json_scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
                | st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
# meta shaped like the real one, with any value where a field should be
metas = st.fixed_dictionaries({"t": json_values, "k": json_values, "h": json_values | st.lists(
    st.lists(json_values, max_size=4), max_size=3), "ts": json_values},
    optional={"tb": json_values, "kb": json_values}) | json_values


def payload_of(meta: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(meta)) + meta + body


@st.composite
def mutated(draw: st.DrawFn, data: bytes, keep: int = 0) -> bytes:
    """``data`` with a few random edits after its first ``keep`` bytes."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "truncate", "claim"]))
        pos = draw(st.integers(keep, max(len(out) - 1, keep)))
        if op == "flip" and pos < len(out):
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and pos < len(out):
            out[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del out[pos:pos + draw(st.integers(1, 12))]
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=12))
        elif op == "truncate":
            del out[pos:]
        else:
            out[pos:pos + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x03\xff\xff\xff", b"\x00\x00\x00\x00",
                                                     b"\x53\x57\x00\x00"]))
    return bytes(out)


@st.composite
def segment_files(draw: st.DrawFn) -> bytes:
    """A segment: valid records, then edits; or a header and random bytes; or anything."""
    kind = draw(st.sampled_from(["mutated", "random", "frames_of_garbage", "anything"]))
    if kind == "mutated":
        body = encode_records(draw(st.lists(records, min_size=1, max_size=6)))
        return draw(mutated(FILE_HEADER + body, keep=draw(st.sampled_from([0, len(FILE_HEADER)]))))
    if kind == "random":
        return FILE_HEADER + draw(st.binary(max_size=1024))
    if kind == "frames_of_garbage":  # well-framed, right CRC, payloads that do not decode
        out = bytearray(FILE_HEADER)
        for payload in draw(st.lists(st.binary(min_size=4, max_size=64), max_size=4)):
            crc = zlib.crc32(payload, zlib.crc32(struct.pack(">I", len(payload))))
            out += struct.pack(">HII", segments.MAGIC, len(payload), crc) + payload
        return bytes(out)
    return draw(st.binary(max_size=256))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz-segments")


_case = itertools.count()


def _fresh(workdir: Path) -> Path:
    d = workdir / f"case-{next(_case)}"
    d.mkdir()
    return d


# -- the codec ----------------------------------------------------------------------------------


@given(payload=st.binary(max_size=512))
def test_decode_payload_of_arbitrary_bytes_raises_only_corrupt_record(payload: bytes) -> None:
    try:
        decode_payload(payload)
    except CorruptRecord:
        pass


@given(meta=metas, body=st.binary(max_size=16), cut=st.integers(0, 3))
def test_decode_payload_of_any_json_meta_raises_only_corrupt_record(meta: object, body: bytes, cut: int) -> None:
    raw = orjson.dumps(meta)
    for m in (raw, raw[:-cut] if cut else raw + b"}"):
        try:
            rec = decode_payload(payload_of(m, body))
        except CorruptRecord:
            continue
        assert isinstance(rec.topic, str) and isinstance(rec.value, bytes)
        assert all(isinstance(n, str) and isinstance(v, bytes) for n, v in rec.headers)


@given(data=st.data())
def test_decode_payload_of_mutated_valid_payloads_raises_only_corrupt_record(data: st.DataObject) -> None:
    frame = encode_record(data.draw(records))
    payload = data.draw(mutated(frame[FRAME_HEADER_LEN:]))
    try:
        decode_payload(payload)
    except CorruptRecord:
        pass


@given(rec=records)
def test_any_record_round_trips_exactly(rec: Record) -> None:
    frame = encode_record(rec)
    length, crc = parse_frame_header(frame[:FRAME_HEADER_LEN])
    payload = frame[FRAME_HEADER_LEN:]
    assert len(payload) == length
    assert zlib.crc32(payload, zlib.crc32(frame[2:6])) == crc
    assert decode_payload(payload) == rec


@given(recs=st.lists(records, max_size=5))
def test_records_written_to_a_segment_read_back_in_order(workdir: Path, recs: list[Record]) -> None:
    path = _fresh(workdir) / "s.seg"
    path.write_bytes(FILE_HEADER + encode_records(recs))
    assert [r for _, _, r in iter_records(path)] == recs
    scan = scan_segment(path)
    assert scan.clean and scan.events == len(recs)


# -- segment files ------------------------------------------------------------------------------


def _timed_scan(path: Path) -> tuple[list[Record], BaseException | None, segments.SegmentScan]:
    t0 = time.monotonic()
    got: list[Record] = []
    error: BaseException | None = None
    try:
        for _, _, rec in iter_records(path):
            got.append(rec)
    except CorruptRecord as exc:
        error = exc
    scan = scan_segment(path)
    assert time.monotonic() - t0 < SECONDS_PER_FILE, "reading a small segment took too long"
    return got, error, scan


@given(data=st.data())
@settings(max_examples=max(30, EXAMPLES // 2))
def test_reading_any_segment_file_yields_records_or_corrupt_record_and_never_hangs(
        workdir: Path, data: st.DataObject) -> None:
    content = data.draw(segment_files())
    chunk = data.draw(st.sampled_from([11, 64, 1024 * 1024]))
    path = _fresh(workdir) / "s.seg"
    path.write_bytes(content)
    saved, segments.CHUNK_BYTES = segments.CHUNK_BYTES, chunk
    try:
        got, error, scan = _timed_scan(path)
    finally:
        segments.CHUNK_BYTES = saved
    assert scan.size == len(content)
    if error is None:  # a clean read: the scan agrees, up to a torn tail
        assert scan.header_ok and not scan.corrupt and scan.events == len(got)
    assert scan.valid_bytes <= scan.size


def _plain(rec: Record) -> Record:
    return rec._replace(headers=tuple(rec.headers))  # the fast reader's headers are lists


@given(data=st.data())
@settings(max_examples=max(30, EXAMPLES // 2))
def test_chunked_reading_of_any_segment_file_yields_what_reading_record_by_record_yields(
        workdir: Path, data: st.DataObject) -> None:
    content = data.draw(segment_files())
    block = data.draw(st.sampled_from([11, 64, 1024 * 1024]))
    size = data.draw(st.integers(1, 4))
    end = data.draw(st.none() | st.just(len(content)) | st.integers(0, len(content) + 8))
    path = _fresh(workdir) / "s.seg"
    path.write_bytes(content)
    saved, segments.CHUNK_BYTES = segments.CHUNK_BYTES, block
    try:
        one: list[tuple[int, int, Record]] = []
        error: CorruptRecord | None = None
        try:
            for off, nxt, rec in iter_records(path, HEADER_LEN, end):
                one.append((off, nxt, _plain(rec)))
        except CorruptRecord as exc:
            error = exc
        chunks: list[tuple[int, int, list[Record]]] = []
        chunk_error: CorruptRecord | None = None
        try:
            for first, last, recs in iter_chunks(path, HEADER_LEN, end, size):
                chunks.append((first, last, [_plain(r) for r in recs]))
        except CorruptRecord as exc:
            chunk_error = exc
    finally:
        segments.CHUNK_BYTES = saved
    assert (None if chunk_error is None else (chunk_error.offset, str(chunk_error))) == (
        None if error is None else (error.offset, str(error)))
    flat = [r for _, _, recs in chunks for r in recs]
    assert flat == [r for _, _, r in one][:len(flat)]
    # every chunk is full but the last, which (after an error) never comes out half-read
    assert all(len(recs) == size for _, _, recs in chunks[:-1])
    assert len(flat) == len(one) if error is None else len(one) - len(flat) < size
    i = 0
    for first, last, recs in chunks:
        assert (first, last) == (one[i][0], one[i + len(recs) - 1][1])
        i += len(recs)


@given(data=st.data())
@settings(max_examples=max(30, EXAMPLES // 2))
def test_scanning_with_the_fast_runs_says_what_scanning_frame_by_frame_says(
        workdir: Path, data: st.DataObject) -> None:
    content = data.draw(segment_files())
    path = _fresh(workdir) / "s.seg"
    path.write_bytes(content)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(segments, "CHUNK_BYTES", data.draw(st.sampled_from([11, 64, 1024 * 1024])))
        fast = segments._scan(path)
        m.setattr(segments, "_decode_run", lambda buf, pos, n, out: (pos, segments._RUN_ODD))
        careful = segments._scan(path)
    assert fast == careful


@given(data=st.data())
@settings(max_examples=max(30, EXAMPLES // 2))
def test_recovery_of_any_segment_file_leaves_one_that_reads_clean(workdir: Path, data: st.DataObject) -> None:
    content = data.draw(segment_files())
    d = _fresh(workdir)
    path = d / "s.seg"
    path.write_bytes(content)
    before = scan_segment(path)
    report = recover_segment(path, d / "quarantine")
    if report.quarantined_whole:
        assert not path.exists() and report.quarantine_file is not None and report.quarantine_file.exists()
    else:
        got, error, after = _timed_scan(path)
        assert error is None and after.clean
        assert after.events == before.events == report.kept_events == len(got)
        # (a file torn inside its header gets a fresh header)
        assert path.stat().st_size == report.kept_bytes == (before.valid_bytes if before.header_ok else HEADER_LEN)
    shutil.rmtree(d)


@given(data=st.data())
@settings(max_examples=max(20, EXAMPLES // 4))
def test_scanning_allocates_in_proportion_to_the_file_never_to_a_claimed_length(
        workdir: Path, data: st.DataObject) -> None:
    content = data.draw(segment_files())
    path = _fresh(workdir) / "s.seg"
    path.write_bytes(content)
    saved, segments.CHUNK_BYTES = segments.CHUNK_BYTES, 4096  # the read window: a constant
    tracemalloc.start()
    try:
        _timed_scan(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        segments.CHUNK_BYTES = saved
    # a frame header may claim up to MAX_RECORD_BYTES (64 MiB); nothing near that is allocated
    assert peak < 64 * 1024 + 3 * 4096 + 64 * len(content), f"{peak} bytes at peak for a file of {len(content)}"
