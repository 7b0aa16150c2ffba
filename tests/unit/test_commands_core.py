"""The CLI commands' pure core (topology.commands.core): arguments, filters, discovery, event lines."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from agents.records import Record
from agents.segments import FILE_HEADER, encode_records, scan_segment
from topology.commands.core import (
    EXIT_OK,
    EXIT_PARTIAL,
    CommandError,
    RecordFilter,
    ReplayTally,
    collect_segments,
    damage,
    decompress,
    fmt_size,
    fmt_ts,
    generated_event,
    parse_event_line,
    parse_time,
    table,
    toml_value,
)

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def rec(topic: str, ts: int) -> Record:
    return Record(topic, None, (), b"x", ts)


def test_times_are_iso_8601_with_naive_ones_in_utc_or_epoch_milliseconds() -> None:
    assert parse_time("2023-11-14T22:13:20Z", "--since") == T0
    assert parse_time("2023-11-14T22:13:20.5", "--since") == T0 + 500
    assert parse_time("2023-11-15T00:13:20+02:00", "--since") == T0
    assert parse_time(str(T0), "--since") == T0
    with pytest.raises(CommandError, match="--until: expected an ISO-8601") as err:
        parse_time("yesterday", "--until")
    assert err.value.code == 2


def test_filter_keeps_the_asked_topics_received_from_since_until_before_until() -> None:
    keep = RecordFilter.from_options(["a"], str(T0), str(T0 + 10))
    assert keep.active
    assert [keep(rec("a", T0 - 1)), keep(rec("a", T0)), keep(rec("a", T0 + 9)), keep(rec("a", T0 + 10))] == [
        False, True, True, False]
    assert not keep(rec("b", T0))
    assert not RecordFilter.from_options([], None, None).active
    with pytest.raises(CommandError, match="--since must be earlier"):
        RecordFilter.from_options([], str(T0), str(T0))


def test_directories_expand_to_segments_and_archives_oldest_name_first(tmp_path: Path) -> None:
    for name in ("00000000000000000003.seg", "00000000000000000001.seg.gz", "00000000000000000002.seg",
                 "drain.progress", "00000000000000000004.seg.tmp"):
        (tmp_path / name).write_bytes(FILE_HEADER)
    (tmp_path / "quarantine").mkdir()
    (tmp_path / "quarantine" / "00000000000000000000.seg").write_bytes(FILE_HEADER)
    files = collect_segments([tmp_path, tmp_path / "00000000000000000002.seg"])
    assert [p.name for p in files] == ["00000000000000000001.seg.gz", "00000000000000000002.seg",
                                       "00000000000000000003.seg"]
    with pytest.raises(CommandError, match="no such file or directory"):
        collect_segments([tmp_path / "missing"])


def test_an_archive_decompresses_to_the_segment_it_holds(tmp_path: Path) -> None:
    recs = [rec("a", T0), rec("b", T0 + 1)]
    archive = tmp_path / "00000000000000000001.seg.gz"
    with gzip.open(archive, "wb") as f:
        f.write(FILE_HEADER + encode_records(recs[:1]))
    with open(archive, "ab") as raw, gzip.GzipFile(fileobj=raw, mode="ab") as f:  # a second member
        f.write(encode_records(recs[1:]))
    (tmp_path / "out").mkdir()
    segment = decompress(archive, tmp_path / "out")
    assert segment.name == "00000000000000000001.seg"
    assert dict(scan_segment(segment).per_topic) == {"a": 1, "b": 1}


def test_event_lines_carry_headers_and_a_text_or_base64_body() -> None:
    assert parse_event_line('{"headers": {"topic": "t"}, "body": "héllo"}', 1) == ({"topic": "t"}, "héllo".encode())
    assert parse_event_line(b'{"body_base64": "AP8="}', 2) == ({}, b"\x00\xff")
    assert parse_event_line("{}", 3) == ({}, b"")
    for line, message in [("nope", "line 4: not JSON"), ("[1]", "line 4: expected a JSON object"),
                          ('{"headers": {"n": 1}}', "string values"), ('{"body": 1}', "must be a string"),
                          ('{"body": "a", "body_base64": "YQ=="}', "not both"), ('{"bdy": "a"}', "unknown field"),
                          ('{"body_base64": "***"}', "not base64")]:
        with pytest.raises(CommandError, match=message):
            parse_event_line(line, 4)


def test_generated_events_have_the_asked_size_and_topic_header() -> None:
    headers, body = generated_event(7, 32, "topic", "orders")
    assert headers == {"topic": "orders"} and len(body) == 32 and body.startswith(b"spillway-send 7 ")
    assert generated_event(7, 4, "t", None) == ({}, b"spil")


def test_damage_names_corrupt_ranges_and_torn_tails(tmp_path: Path) -> None:
    good = encode_records([rec("a", T0)] * 3)
    seg = tmp_path / "s.seg"
    seg.write_bytes(FILE_HEADER + good)
    assert damage(scan_segment(seg)) == []
    frame = len(good) // 3
    data = bytearray(FILE_HEADER + good)
    data[8 + frame + 12] ^= 0xFF
    seg.write_bytes(bytes(data) + b"SW\x00")
    assert damage(scan_segment(seg)) == [f"corrupt range at offset {8 + frame} ({frame} bytes)",
                                         f"torn tail at offset {len(data)} (3 bytes)"]
    seg.write_bytes(b"garbage!" + good)
    assert damage(scan_segment(seg)) == ["bad file header"]


def test_replay_tally_exits_1_for_anything_not_replayed() -> None:
    tally = ReplayTally(dry_run=False)
    tally.add({"a": 2})
    tally.add({"a": 1, "b": 1})
    assert tally.total == 4 and tally.exit_code == EXIT_OK
    assert tally.lines()[:3] == ["replay: 0 file(s), sent 4 event(s)", "  a  3", "  b  1"]
    tally.locked["x.seg"] = 5
    assert tally.exit_code == EXIT_PARTIAL
    assert "not replayed, being drained by a running worker: 1 segment(s), 5 event(s)" in tally.lines()


def test_formatting_of_times_sizes_tables_and_setting_values() -> None:
    assert fmt_ts(T0) == "2023-11-14T22:13:20.000Z" and fmt_ts(None) == "-"
    assert fmt_size(512) == "512 B" and fmt_size(3 * 2**20) == "3.0 MiB"
    assert table(["name", "n"], [["a", 10], ["bbb", 2]]).splitlines() == ["name   n", "a     10", "bbb    2"]
    assert [toml_value(v) for v in (True, 5.0, "x", Path("var/b"), ("*", "a.*"))] == [
        "true", "5.0", '"x"', '"var/b"', '["*","a.*"]']
