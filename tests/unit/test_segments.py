"""The segment format, codec, scanning and recovery (agents.segments), no asyncio."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest

from agents import segments
from agents.records import Record
from agents.segments import (
    FILE_HEADER,
    FRAME_HEADER_LEN,
    HEADER_LEN,
    QUARANTINE_HEADER,
    decode_payload,
    encode_record,
    encode_records,
    iter_records,
    parse_frame_header,
    recover_segment,
    scan_segment,
    shift_offset,
)
from core.errors import CorruptRecord


def rec(i: int, topic: str = "events", body: bytes | None = None) -> Record:
    return Record(topic, f"k{i}".encode(), (("topic", topic.encode()), ("n", str(i).encode())),
                  body if body is not None else b"body-%d" % i, 1_700_000_000_000 + i)


def write_segment(path: Path, records: list[Record], tail: bytes = b"") -> list[int]:
    """Write a segment; return the offset of every frame."""
    offsets, data = [], bytearray(FILE_HEADER)
    for r in records:
        offsets.append(len(data))
        data += encode_record(r)
    path.write_bytes(bytes(data) + tail)
    return offsets


def read_all(path: Path) -> list[Record]:
    return [r for _, _, r in iter_records(path)]


ODD_RECORDS = [
    Record("events", b"\xff\xfe\x00key", (("h", b"\x80\x81"), ("plain", b"text"), ("", b"")), b"", 1),
    Record("t.é-ü", None, (), b"\x00" * 10, 2**53),
    Record("events", "ключ".encode(), (("naïve", "värde".encode()), ("bin", bytes(range(256)))), b"v", 0),
    Record("events", b"", (("\udcff-lone-surrogate", b"\xc3"),), b"x" * 1000, 7),
]


@pytest.mark.parametrize("record", ODD_RECORDS, ids=range(len(ODD_RECORDS)))
def test_record_round_trips_exactly_with_binary_keys_headers_and_empty_body(record: Record) -> None:
    frame = encode_record(record)
    length, crc = parse_frame_header(frame[:FRAME_HEADER_LEN])
    assert length == len(frame) - FRAME_HEADER_LEN
    assert crc == zlib.crc32(frame[2:6] + frame[FRAME_HEADER_LEN:])
    assert decode_payload(frame[FRAME_HEADER_LEN:]) == record


def test_encode_records_is_the_concatenation_of_single_frames() -> None:
    assert encode_records(ODD_RECORDS) == b"".join(encode_record(r) for r in ODD_RECORDS)
    assert encode_records([]) == b""


@pytest.mark.parametrize("meta", [b"{}", b"null", b"[1]", b"{not json", b'{"t":"a","k":"!!","kb":1,"h":[],"ts":1}',
                                  b'{"t":"a","k":null,"h":[[1,"x"]],"ts":1}', b'{"t":"a","k":null,"h":[],"ts":"1"}'])
def test_payload_with_bad_meta_raises_corrupt_record(meta: bytes) -> None:
    with pytest.raises(CorruptRecord):
        decode_payload(struct.pack(">I", len(meta)) + meta + b"body")


def test_payload_whose_meta_length_overruns_it_raises_corrupt_record() -> None:
    for payload in (b"", b"\x00\x00", b"\x00\x00\x00\x09{}"):
        with pytest.raises(CorruptRecord):
            decode_payload(payload)


def test_iter_records_yields_offsets_and_records_in_order(tmp_path: Path) -> None:
    path = tmp_path / "a.seg"
    records = [rec(i) for i in range(20)]
    offsets = write_segment(path, records)
    got = list(iter_records(path))
    assert [r for _, _, r in got] == records
    assert [o for o, _, _ in got] == offsets
    assert [n for _, n, _ in got] == [*offsets[1:], path.stat().st_size]
    assert [r for _, _, r in iter_records(path, offsets[5])] == records[5:]


def test_iter_records_reads_through_tiny_chunks_and_records_larger_than_a_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments, "CHUNK_BYTES", 7)
    path = tmp_path / "a.seg"
    records = [rec(i, body=b"z" * (i * 13)) for i in range(30)]
    write_segment(path, records)
    assert read_all(path) == records
    assert scan_segment(path).events == 30


def test_scan_counts_events_per_topic_and_first_and_last_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "a.seg"
    write_segment(path, [rec(1, "a"), rec(2, "b"), rec(3, "a")])
    scan = scan_segment(path)
    assert scan.clean and scan.events == 3 and scan.valid_bytes == path.stat().st_size
    assert dict(scan.per_topic) == {"a": 2, "b": 1}
    assert (scan.first_ts, scan.last_ts) == (rec(1).timestamp_ms, rec(3).timestamp_ms)


def test_torn_tail_is_truncated_on_recovery_kept_aside_and_the_rest_kept(tmp_path: Path) -> None:
    path, qdir = tmp_path / "a.seg", tmp_path / "q"
    records = [rec(i) for i in range(3)]
    partial = encode_record(rec(99))[:-5]
    write_segment(path, records, tail=partial)
    assert read_all(path) == records  # the reader stops quietly at a torn tail
    assert scan_segment(path).torn_tail_bytes == len(partial)

    report = recover_segment(path, qdir)

    assert report.kept_events == 3
    assert report.torn_bytes_truncated == len(partial)
    assert report.quarantined_ranges == ()
    # the torn bytes are evidence (on a closed segment they are damage): kept in quarantine
    assert report.quarantine_file is not None and report.quarantine_file.read_bytes().endswith(partial)
    assert report.removed == ((report.kept_bytes, len(partial)),)
    assert path.stat().st_size == report.kept_bytes
    assert read_all(path) == records
    assert scan_segment(path).clean


def test_torn_frame_header_at_the_end_is_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "a.seg"
    write_segment(path, [rec(1)], tail=encode_record(rec(2))[:4])
    report = recover_segment(path, tmp_path / "q")
    assert (report.kept_events, report.torn_bytes_truncated) == (1, 4)


def test_flipped_bit_in_a_middle_record_is_quarantined_and_its_neighbours_kept(tmp_path: Path) -> None:
    path, qdir = tmp_path / "00000000000000000007.seg", tmp_path / "q"
    records = [rec(i) for i in range(5)]
    offsets = write_segment(path, records)
    data = bytearray(path.read_bytes())
    data[offsets[2] + 30] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptRecord) as info:
        read_all(path)
    assert info.value.offset == offsets[2] and info.value.segment == str(path)
    bad_range = (offsets[2], offsets[3] - offsets[2])
    assert scan_segment(path).corrupt == (bad_range,)

    report = recover_segment(path, qdir)

    assert report.kept_events == 4
    assert report.quarantined_ranges == (bad_range,)
    assert report.quarantine_file is not None and report.quarantine_file.exists()
    assert report.quarantine_file.parent == qdir
    assert f"{path.name}@{offsets[2]}" in report.quarantine_file.name
    quarantined = report.quarantine_file.read_bytes()
    assert quarantined.startswith(QUARANTINE_HEADER)
    assert struct.unpack(">QI", quarantined[8:20]) == bad_range
    assert quarantined[20:] == bytes(data[offsets[2] : offsets[3]])
    assert read_all(path) == records[:2] + records[3:]
    assert scan_segment(path).clean
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_length_prefix_is_resynchronised_past_not_read_as_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "a.seg"
    records = [rec(i) for i in range(4)]
    offsets = write_segment(path, records)
    data = bytearray(path.read_bytes())
    data[offsets[1] + 2 : offsets[1] + 6] = struct.pack(">I", 1_000_000)  # sane, but past EOF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptRecord) as info:
        read_all(path)  # the reader must not stop there as if it were the end
    assert info.value.offset == offsets[1]
    report = recover_segment(path, tmp_path / "q")
    assert report.kept_events == 3 and report.torn_bytes_truncated == 0
    assert report.quarantined_ranges == ((offsets[1], offsets[2] - offsets[1]),)
    assert read_all(path) == [records[0], *records[2:]]


def test_garbage_at_the_end_is_quarantined_not_silently_dropped(tmp_path: Path) -> None:
    path = tmp_path / "a.seg"
    offsets = write_segment(path, [rec(1), rec(2)], tail=b"\x00" * 64)
    end = path.stat().st_size - 64
    report = recover_segment(path, tmp_path / "q")
    assert report.kept_events == 2 and report.quarantined_ranges == ((end, 64),)
    assert offsets and read_all(path) == [rec(1), rec(2)]


def test_wrong_file_header_is_quarantined_whole(tmp_path: Path) -> None:
    path, qdir = tmp_path / "a.seg", tmp_path / "q"
    content = b"NOTASEG\n" + encode_record(rec(1))
    path.write_bytes(content)
    with pytest.raises(CorruptRecord):
        read_all(path)

    report = recover_segment(path, qdir)

    assert report.quarantined_whole and report.kept_events == 0
    assert not path.exists()
    assert report.quarantine_file is not None and report.quarantine_file.read_bytes() == content


def test_file_torn_inside_its_header_gets_a_fresh_header(tmp_path: Path) -> None:
    path = tmp_path / "a.seg"
    path.write_bytes(FILE_HEADER[:3])
    report = recover_segment(path, tmp_path / "q")
    assert not report.quarantined_whole and report.kept_events == 0
    assert path.read_bytes() == FILE_HEADER


def test_clean_segment_is_left_untouched_by_recovery(tmp_path: Path) -> None:
    path = tmp_path / "a.seg"
    write_segment(path, [rec(1), rec(2)])
    before = path.stat()
    report = recover_segment(path, tmp_path / "q")
    assert (report.kept_events, report.torn_bytes_truncated, report.quarantined_ranges) == (2, 0, ())
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    assert not (tmp_path / "q").exists()


def test_four_gigabyte_length_prefix_is_refused_without_allocating(tmp_path: Path) -> None:
    head = struct.pack(">HII", segments.MAGIC, 0xFFFFFFFF, 0)
    with pytest.raises(CorruptRecord):
        parse_frame_header(head)
    path = tmp_path / "a.seg"
    write_segment(path, [rec(1)], tail=head + b"\x00" * 32 + encode_record(rec(2)))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptRecord):
            read_all(path)
        scan = scan_segment(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * segments.CHUNK_BYTES
    assert scan.events == 2 and len(scan.corrupt) == 1
    assert scan.corrupt[0][0] > HEADER_LEN


def test_closed_segment_read_to_its_recorded_size_refuses_a_torn_or_short_end(tmp_path: Path) -> None:
    path = tmp_path / "a.seg"
    records = [rec(i) for i in range(3)]
    write_segment(path, records)
    size = path.stat().st_size
    assert [r for _, _, r in iter_records(path, end=size)] == records
    with open(path, "r+b") as f:  # damage: the last frame loses its end
        f.truncate(size - 5)
    assert len(read_all(path)) == 2  # without the recorded size it looks like a crash's torn tail
    with pytest.raises(CorruptRecord):
        list(iter_records(path, end=size))
    frames = [end for _, end, _ in iter_records(path)]
    with open(path, "r+b") as f:  # cut exactly at a frame boundary: still short of the recorded size
        f.truncate(frames[-1])
    with pytest.raises(CorruptRecord):
        list(iter_records(path, end=size))


def test_shift_offset_maps_progress_across_removed_ranges() -> None:
    removed = ((100, 50), (300, 20))
    assert shift_offset(80, removed) == 80
    assert shift_offset(100, removed) == 100  # the next frame began where the damage did
    assert shift_offset(120, removed) == 100  # inside damage: resume where it was cut out
    assert shift_offset(150, removed) == 100
    assert shift_offset(310, removed) == 250
    assert shift_offset(400, removed) == 330
