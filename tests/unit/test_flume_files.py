"""Reading Flume's file_roll avro_event files (agents/flume_files.py): every codec Flume writes,
torn and damaged tails read up to the damage and never raised, routing by the router's rules,
and the replay ledger. (Files Flume's own agent wrote: tests/integration/test_flume_migration.py.)"""

from __future__ import annotations

import io
from pathlib import Path

import fastavro
import pytest

from agents.flume_files import (
    FlumeFile,
    NotFlumeFile,
    ReplayLedger,
    Routed,
    TextFile,
    count_events,
    is_flume_file,
    record_chunks,
    scan_file,
    series_order,
    timestamp_of,
)
from agents.router import Router
from core.settings import RouterSettings

#: FlumeEventAvroEventSerializer's schema, as Flume writes it in the file header
SCHEMA = fastavro.parse_schema({"type": "record", "name": "Event", "namespace": "org.apache.flume",
                                "fields": [{"name": "headers", "type": {"type": "map", "values": "string"}},
                                           {"name": "body", "type": "bytes"}]})


def events(n: int, start: int = 0) -> list[dict]:
    return [{"headers": {"topic": f"t{i % 3}", "key": f"k{i}", "timestamp": str(1_800_000_000_000 + i)},
             "body": f"body {i}".encode()} for i in range(start, start + n)]


def write(path: Path, recs: list[dict], codec: str = "null", sync_interval: int = 400) -> list[int]:
    """Write like Flume (a block per sync interval); return the events per block."""
    buf = io.BytesIO()
    fastavro.writer(buf, SCHEMA, recs, codec=codec, sync_interval=sync_interval)
    path.write_bytes(buf.getvalue())
    with open(path, "rb") as fh:
        return [b.num_records for b in fastavro.block_reader(fh)]


def read_all(path: Path) -> tuple[list[tuple[int, dict, bytes]], str | None]:
    f = FlumeFile.open(path)
    got = list(f.events())
    return got, f.damage


@pytest.mark.parametrize("codec", ["null", "deflate", "snappy"])
def test_every_codec_flume_writes_reads_back_headers_and_bodies(codec: str, tmp_path: Path) -> None:
    path = tmp_path / "1800000000000-1"
    recs = events(500)
    write(path, recs, codec)
    assert is_flume_file(path)
    f = FlumeFile.open(path)
    assert f.codec == codec and len(f.sync) == 32 and f.fallback_ms == 1800000000000
    got = list(f.events())
    assert f.damage is None
    assert [(h, b) for _, h, b in got] == [(r["headers"], r["body"]) for r in recs]
    assert [i for i, _, _ in got] == list(range(500))


def test_reading_from_an_event_index_skips_exactly_that_many(tmp_path: Path) -> None:
    path = tmp_path / "f"
    per_block = write(path, events(300))
    assert len(per_block) > 3
    got = list(FlumeFile.open(path).events(start=per_block[0] + 3))
    assert [i for i, _, _ in got] == list(range(per_block[0] + 3, 300))
    assert got[0][2] == f"body {per_block[0] + 3}".encode()


@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_a_torn_tail_at_any_byte_is_read_up_to_the_last_whole_block(codec: str, tmp_path: Path) -> None:
    path = tmp_path / "whole"
    per_block = write(path, events(200), codec)
    data = path.read_bytes()
    with open(path, "rb") as fh:
        blocks = list(fastavro.block_reader(fh))
    whole_end = blocks[-1].offset  # where the last block starts (fastavro: a block's offset and size span it whole)
    cut_path = tmp_path / "torn"
    cut_path.write_bytes(data[:whole_end])
    assert read_all(cut_path) == (read_all(path)[0][:sum(per_block[:-1])], None)  # a whole block is no damage
    for cut in range(whole_end + 1, len(data)):
        cut_path.write_bytes(data[:cut])
        got, damage = read_all(cut_path)
        assert len(got) == sum(per_block[:-1]), cut
        assert damage is not None and "torn last block" in damage, (cut, damage)
        assert f"from byte {whole_end} of {cut}" in damage
        assert count_events(FlumeFile.open(cut_path)) == len(got)


def test_a_damaged_block_in_the_middle_stops_there_and_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "f"
    per_block = write(path, events(300), "deflate")
    with open(path, "rb") as fh:
        third = list(fastavro.block_reader(fh))[2]
    data = bytearray(path.read_bytes())
    data[third.offset + third.size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    got, damage = read_all(path)
    assert len(got) == sum(per_block[:2])
    assert damage is not None and f"of {len(data)}" in damage


def test_an_avro_file_of_another_schema_is_not_taken_for_flumes(tmp_path: Path) -> None:
    path = tmp_path / "other.avro"
    schema = fastavro.parse_schema({"type": "record", "name": "R", "fields": [{"name": "x", "type": "int"}]})
    with open(path, "wb") as fh:
        fastavro.writer(fh, schema, [{"x": 1}])
    assert is_flume_file(path)
    with pytest.raises(NotFlumeFile, match="not Flume's Event schema"):
        FlumeFile.open(path)
    (tmp_path / "head").write_bytes(b"Obj\x01\x02")
    with pytest.raises(NotFlumeFile):
        FlumeFile.open(tmp_path / "head")
    assert not is_flume_file(tmp_path / "head2")


def test_events_are_routed_by_the_router_and_bad_topics_counted_not_sent(tmp_path: Path) -> None:
    path = tmp_path / "1800000000000-2"
    recs = events(10)
    recs[4]["headers"]["topic"] = "bad topic!"
    del recs[5]["headers"]["topic"]
    del recs[6]["headers"]["timestamp"]
    write(path, recs)
    routed = Routed()
    router = Router(RouterSettings(default_topic="fallback"))
    chunks = list(record_chunks(FlumeFile.open(path), router, 0, 4, routed))
    records = [r for _, _, chunk in chunks for r in chunk]
    assert [(first, end) for first, end, _ in chunks] == [(0, 4), (4, 9), (9, 10)]  # 4 refused, left out
    assert len(records) == 9 and routed.first_refused == 4 and sum(routed.refused.values()) == 1
    by_key = {r.key: r for r in records}
    assert by_key[b"k5"].topic == "fallback" and by_key[b"k0"].topic == "t0"
    assert by_key[b"k0"].timestamp_ms == 1_800_000_000_000 and by_key[b"k6"].timestamp_ms == 1_800_000_000_000
    assert dict(by_key[b"k1"].headers) == {"topic": b"t1", "key": b"k1", "timestamp": b"1800000000001"}
    scan = scan_file(FlumeFile.open(path), router)
    assert scan.events == 10 and scan.per_topic == {"t0": 4, "t1": 2, "t2": 2, "bad topic!": 1, "fallback": 1}


def test_the_ledger_survives_a_reload_and_keys_by_the_files_sync_marker(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, events(5))
    write(b, events(5))
    ledger = ReplayLedger(tmp_path / "state" / "ledger.json")
    fa, fb = FlumeFile.open(a), FlumeFile.open(b)
    assert fa.sync != fb.sync
    ledger.record(fa, 3, False)
    ledger.record(fb, 5, True)
    again = ReplayLedger(tmp_path / "state" / "ledger.json")
    assert again.done(FlumeFile.open(a)) == (3, False) and again.done(FlumeFile.open(b)) == (5, True)
    write(a, events(5))  # the same name, a new file (a new sync marker): not the one replayed
    assert again.done(FlumeFile.open(a)) == (0, False)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="unreadable replay ledger"):
        ReplayLedger(tmp_path / "bad.json")


def test_timestamp_header_and_file_order() -> None:
    assert timestamp_of({"timestamp": "1700000000123"}, 5) == 1700000000123
    assert timestamp_of({"timestamp": "soon"}, 5) == 5 and timestamp_of({}, 7) == 7
    names = [Path("1700000000000-10"), Path("1700000000000-2"), Path("1600000000000-3"), Path("x")]
    assert [p.name for p in sorted(names, key=series_order)] == [
        "1600000000000-3", "1700000000000-2", "1700000000000-10", "x"]


def test_a_text_file_sends_each_line_whole_to_its_one_topic(tmp_path: Path) -> None:
    path = tmp_path / "1800000000000-3"
    path.write_bytes(b"plain\n{host=a, topic=x} with headers\n\nlast without newline")
    f = TextFile.open(path, "legacy")
    routed = Routed()
    chunks = list(record_chunks(f, Router(RouterSettings()), 1, 2, routed))
    assert [(a, b) for a, b, _ in chunks] == [(1, 3), (3, 4)]
    records = [r for _, _, c in chunks for r in c]
    assert [r.value for r in records] == [b"{host=a, topic=x} with headers", b"", b"last without newline"]
    assert {(r.topic, r.key, tuple(r.headers), r.timestamp_ms) for r in records} == {
        ("legacy", None, (), 1_800_000_000_000)}
    assert count_events(f) == 4 and f.identity.startswith("text:")
    bad = Routed()
    assert [c for _, _, c in record_chunks(TextFile.open(path, "__internal"), Router(RouterSettings()), 0, 9, bad)
            ] == [[]]
    assert sum(bad.refused.values()) == 4 and bad.first_refused == 0
