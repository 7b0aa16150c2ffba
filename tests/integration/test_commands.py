"""The CLI commands (replay, buffer, send, check-config) run as real subprocesses of the
`spillway` CLI, against a real broker and, where they need one, a real worker."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, Status, TcpProxy, Worker, client, event, free_port, read_topic, unique

from agents.drain import Progress, archive, segment_lock, write_progress
from agents.records import Record
from agents.segments import FILE_HEADER, encode_records, iter_records
from devtools.kafka import Broker

NOW_MS = time.time_ns() // 1_000_000
T0 = NOW_MS // 1000 * 1000 - 3_600_000  # receive times of the segments written here: T0 + i seconds
OLD = 1_700_000_000_000  # 2023: older than Kafka's default retention (7 days)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def spillway(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `spillway ARGS...` (the real console entry point) and capture its output."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "topology.cli", *args], cwd=ROOT, env=full, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)


def records(topics: list[str], n: int, start: int = 0, t0: int = T0) -> list[Record]:
    """``n`` events over ``topics``, each keyed, with headers, received one second apart."""
    out = []
    for i in range(start, start + n):
        topic = topics[i % len(topics)]
        out.append(Record(topic, f"key-{i % 5}".encode(), (("topic", topic.encode()), ("seq", str(i).encode())),
                          f"body-{i}".encode(), t0 + i * 1000))
    return out


def write_segment(path: Path, recs: list[Record]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(FILE_HEADER + encode_records(recs))
    return path


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def values(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    return sorted(r.value for r in read_topic(bootstrap, topic, expected, settle=1.0))


# -- replay -----------------------------------------------------------------------


@pytest.mark.kafka
def test_replay_sends_each_buffered_event_to_its_own_topic_with_key_and_headers(
        kafka_up: Broker, kafka_proxy: TcpProxy, make_worker: Callable[..., Worker]) -> None:
    orders, clicks = unique("replay-orders"), unique("replay-clicks")
    w = make_worker(kafka_up.bootstrap)
    kafka_proxy.cut()  # Kafka unreachable: everything acknowledged goes to the disk buffer
    c = client(w.thrift_port)
    assert c.appendBatch([event(f"o{i}", topic=orders, key=f"user-{i % 3}", src="app") for i in range(30)]) == Status.OK
    assert c.appendBatch([event(f"c{i}", topic=clicks, key=f"page-{i}") for i in range(20)]) == Status.OK
    c.close()
    w.kill()
    kafka_proxy.restore()
    before = digest(w.buffer_dir)

    inspected = as_json(spillway("buffer", "inspect", "--json", str(w.buffer_dir)))
    assert inspected["total"]["per_topic"] == {orders: 30, clicks: 20}
    dry = spillway("replay", "--dry-run", "--json", str(w.buffer_dir))
    assert dry.returncode == 0, dry.stderr
    assert as_json(dry)["per_topic"] == inspected["total"]["per_topic"]

    done = spillway("replay", "--json", str(w.buffer_dir), env={"SPILLWAY_KAFKA_BOOTSTRAP_SERVERS": kafka_up.bootstrap})
    assert done.returncode == 0, done.stderr
    assert as_json(done)["per_topic"] == {orders: 30, clicks: 20} and as_json(done)["failed"] == 0
    got = read_topic(kafka_up.bootstrap, orders, 30, settle=1.0)
    assert sorted(r.value for r in got) == sorted(f"o{i}".encode() for i in range(30))
    for r in got:
        i = int(r.value[1:])
        assert r.key == f"user-{i % 3}".encode()
        assert dict(r.headers) == {"topic": orders.encode(), "key": f"user-{i % 3}".encode(), "src": b"app"}
    assert values(kafka_up.bootstrap, clicks, 20) == sorted(f"c{i}".encode() for i in range(20))
    assert digest(w.buffer_dir) == before  # the input files are neither changed nor deleted


@pytest.mark.kafka
def test_replay_sends_only_the_topics_and_receive_times_asked_for(kafka_up: Broker, tmp_path: Path) -> None:
    a, b = unique("filter-a"), unique("filter-b")
    write_segment(tmp_path / "00000000000000000001.seg", records([a, b], 40))
    # a's events are the even i; the window [T0+10s, T0+30s) holds i = 10..29
    proc = spillway("replay", "--json", "--topic", a, "--since", iso(T0 + 10_000), "--until", str(T0 + 30_000),
                    str(tmp_path), env={"SPILLWAY_KAFKA_BOOTSTRAP_SERVERS": kafka_up.bootstrap})
    assert proc.returncode == 0, proc.stderr
    summary = as_json(proc)
    assert summary["per_topic"] == {a: 10} and summary["skipped_by_filter"] == 30
    assert values(kafka_up.bootstrap, a, 10) == sorted(f"body-{i}".encode() for i in range(10, 30, 2))


@pytest.mark.kafka
def test_replay_skips_a_segment_that_a_worker_is_draining_and_says_so(kafka_up: Broker, tmp_path: Path) -> None:
    busy, free = unique("locked"), unique("unlocked")
    held = write_segment(tmp_path / "00000000000000000001.seg", records([busy], 5))
    write_segment(tmp_path / "00000000000000000002.seg", records([free], 7))
    resumed = write_segment(tmp_path / "00000000000000000003.seg", records([busy], 4))
    write_progress(tmp_path, Progress(resumed.name, 200))  # drained tick by tick: between ticks, not locked
    with segment_lock(held) as locked:  # what a running worker's drain holds
        assert locked
        proc = spillway("replay", "--json", str(tmp_path), env={"SPILLWAY_KAFKA_BOOTSTRAP_SERVERS": kafka_up.bootstrap})
    assert proc.returncode == 1
    assert f"skipping {held}: a running worker is draining it (5 events not replayed)" in proc.stderr
    summary = as_json(proc)
    assert f"skipping {resumed}: a worker's drain is part way through it (byte 200, drain.progress)" in proc.stderr
    assert summary["locked"] == {str(held): 5, str(resumed): 4} and summary["per_topic"] == {free: 7}
    assert values(kafka_up.bootstrap, free, 7) == sorted(f"body-{i}".encode() for i in range(7))
    assert held.exists()


@pytest.mark.kafka
def test_replay_of_a_gzip_archive_sends_its_events_to_their_topics(kafka_up: Broker, tmp_path: Path) -> None:
    topics = [unique("archived-a"), unique("archived-b")]
    segment = tmp_path / "00000000000000000042.seg"
    archive(tmp_path / "archive", segment, records(topics, 10))  # the drain's own archive writer,
    archive(tmp_path / "archive", segment, records(topics, 6, start=10))  # appending a second gzip member
    [gz] = (tmp_path / "archive").iterdir()
    assert gz.name == "00000000000000000042.seg.gz"
    proc = spillway("replay", "--json", str(gz), env={"SPILLWAY_KAFKA_BOOTSTRAP_SERVERS": kafka_up.bootstrap})
    assert proc.returncode == 0, proc.stderr
    assert as_json(proc)["per_topic"] == {topics[0]: 8, topics[1]: 8}
    assert values(kafka_up.bootstrap, topics[1], 8) == sorted(f"body-{i}".encode() for i in range(1, 16, 2))
    assert gz.exists()


@pytest.mark.kafka
def test_replay_warns_about_events_older_than_kafka_retention_and_timestamp_now_restamps_them(
        kafka_up: Broker, tmp_path: Path) -> None:
    kept, warned = unique("old-restamped"), unique("old-original")
    write_segment(tmp_path / "now" / "00000000000000000001.seg", records([kept], 3, t0=OLD))
    write_segment(tmp_path / "original" / "00000000000000000001.seg", records([warned], 2, t0=OLD))
    env = {"SPILLWAY_KAFKA_BOOTSTRAP_SERVERS": kafka_up.bootstrap}
    original = spillway("replay", str(tmp_path / "original"), env=env)
    assert original.returncode == 0, original.stderr
    assert "warning: 2 event(s) were sent with their original timestamps, older than 7 days" in original.stderr
    started = time.time_ns() // 1_000_000
    restamped = spillway("replay", "--timestamp", "now", "--since", str(OLD), str(tmp_path / "now"), env=env)
    assert restamped.returncode == 0 and "warning" not in restamped.stderr, restamped.stderr
    got = read_topic(kafka_up.bootstrap, kept, 3, settle=1.0)
    assert sorted(r.value for r in got) == [b"body-0", b"body-1", b"body-2"]
    assert all(r.timestamp >= started for r in got)  # Kafka's retention counts from now, not from 2023


@pytest.mark.kafka
def test_replay_counts_events_kafka_refuses_as_failed_exits_1_and_goes_on_with_the_next_file(
        kafka_up: Broker, tmp_path: Path) -> None:
    before, after = unique("before-refused"), unique("after-refused")
    write_segment(tmp_path / "00000000000000000001.seg", records([before], 4))
    write_segment(tmp_path / "00000000000000000002.seg", records(["not a topic!"], 5))  # Kafka has no such topic
    write_segment(tmp_path / "00000000000000000003.seg", records([after], 3))
    proc = spillway("replay", "--json", "--timeout", "1", str(tmp_path),
                    env={"SPILLWAY_KAFKA_BOOTSTRAP_SERVERS": kafka_up.bootstrap})
    assert proc.returncode == 1
    summary = as_json(proc)
    assert summary["per_topic"] == {before: 4, after: 3} and summary["failed"] == 5
    assert "Kafka refuses 5 event(s) for good (not a topic!: " in proc.stderr  # at once, not after a timeout
    assert values(kafka_up.bootstrap, after, 3) == sorted(f"body-{i}".encode() for i in range(3))


def test_replay_with_kafka_unreachable_exits_1_and_says_so(tmp_path: Path) -> None:
    write_segment(tmp_path / "00000000000000000001.seg", records(["t"], 3))
    dead = f"127.0.0.1:{free_port()}"
    proc = spillway("replay", str(tmp_path), "--bootstrap-servers", dead)
    assert proc.returncode == 1
    assert f"Kafka at {dead} is not reachable; nothing replayed" in proc.stderr


# -- buffer -----------------------------------------------------------------------


def test_buffer_ls_lists_each_segment_with_size_events_and_receive_times(tmp_path: Path) -> None:
    first = write_segment(tmp_path / "00000000000000000001.seg", records(["a", "b"], 4))
    write_segment(tmp_path / "00000000000000000002.seg", records(["a"], 3, start=4))
    listing = as_json(spillway("buffer", "ls", "--json", str(tmp_path)))
    assert [(Path(s["path"]).name, s["size"], s["events"]) for s in listing["segments"]] == [
        ("00000000000000000001.seg", first.stat().st_size, 4),
        ("00000000000000000002.seg", (tmp_path / "00000000000000000002.seg").stat().st_size, 3)]
    assert listing["segments"][0]["oldest"] == iso(T0)
    assert listing["segments"][1]["newest_ms"] == T0 + 6000
    assert listing["total"]["events"] == 7
    human = spillway("buffer", "ls", str(tmp_path), env={"SPILLWAY_BUFFER_DIRECTORY": "/nonexistent"})
    assert human.returncode == 0
    assert "00000000000000000002.seg" in human.stdout and "total: 2 file(s)" in human.stdout
    default_dir = spillway("buffer", "inspect", env={"SPILLWAY_BUFFER_DIRECTORY": str(tmp_path)})
    assert default_dir.returncode == 0 and "per topic, all files" in default_dir.stdout


def test_buffer_verify_reports_a_flipped_bit_and_a_torn_tail_and_exits_1(tmp_path: Path) -> None:
    clean = write_segment(tmp_path / "clean" / "00000000000000000001.seg", records(["v"], 10))
    ok = spillway("buffer", "verify", str(clean.parent))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verify: 1 file(s), 0 damaged" in ok.stdout

    damaged = write_segment(tmp_path / "bad" / "00000000000000000001.seg", records(["v"], 10))
    offsets = [off for off, _, _ in iter_records(damaged)]
    data = bytearray(damaged.read_bytes())
    data[offsets[4] + 20] ^= 0x01  # one flipped bit inside the fifth record
    damaged.write_bytes(bytes(data) + b"SW\x00\x00\x01")  # and an append cut short
    bad = spillway("buffer", "verify", "--json", str(damaged), str(clean))
    assert bad.returncode == 1
    report = {Path(f["path"]).parent.name: f for f in as_json(bad)["files"]}
    assert report["clean"]["ok"] and not report["bad"]["ok"]
    assert report["bad"]["corrupt"] == [{"offset": offsets[4], "length": offsets[5] - offsets[4]}]
    assert report["bad"]["torn_tail_bytes"] == 5 and report["bad"]["events"] == 9
    human = spillway("buffer", "verify", str(damaged))
    assert f"DAMAGED: corrupt range at offset {offsets[4]}" in human.stdout and "torn tail" in human.stdout


# -- send -------------------------------------------------------------------------


@pytest.mark.kafka
def test_send_generated_and_json_line_events_get_ok_land_in_kafka_and_a_refused_topic_exits_1(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    generated, lines_topic = unique("send-gen"), unique("send-lines")
    w = make_worker(kafka_up.bootstrap, SPILLWAY_SOURCE_THRIFT_PROTOCOL="binary")
    proc = spillway("send", "--port", str(w.thrift_port), "--protocol", "binary", "--count", "45", "--batch", "20",
                    "--topic", generated, "--size", "64")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(" OK\n") == 3 and "call 3: 5 event(s) OK" in proc.stdout
    got = read_topic(kafka_up.bootstrap, generated, 45, settle=1.0)
    assert len(got) == 45 and all(len(r.value) == 64 for r in got)

    lines = "\n".join([
        json.dumps({"headers": {"topic": lines_topic, "key": "k1", "src": "file"}, "body": "héllo"}),
        "",
        json.dumps({"headers": {"topic": lines_topic}, "body_base64": "AP8="}),
    ])
    # defaults from the settings (the environment here), events from stdin
    env = {"SPILLWAY_SOURCE_THRIFT_HOST": "127.0.0.1", "SPILLWAY_SOURCE_THRIFT_PORT": str(w.thrift_port),
           "SPILLWAY_SOURCE_THRIFT_PROTOCOL": "binary"}
    proc = spillway("send", "--file", "-", "--batch", "1", env=env, stdin=lines)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "call 2: 1 event(s) OK" in proc.stdout
    got = sorted(read_topic(kafka_up.bootstrap, lines_topic, 2, settle=1.0), key=lambda r: r.value)
    assert [r.value for r in got] == [b"\x00\xff", "héllo".encode()]
    assert got[1].key == b"k1" and dict(got[1].headers)["src"] == b"file"

    refused = spillway("send", "--count", "1", "--topic", "__internal", env=env)
    assert refused.returncode == 1 and "call 1: 1 event(s) ERROR" in refused.stdout
    bad_line = spillway("send", "--file", "-", env=env, stdin='{"body": 7}\n')
    assert bad_line.returncode == 2 and "line 1" in bad_line.stderr


# -- check-config, and what every command does without Kafka -------------------------


def test_check_config_prints_every_key_with_its_value_and_origin(tmp_path: Path) -> None:
    config = tmp_path / "spillway.toml"
    config.write_text('[kafka]\nclient_id = "edge-7"\n[buffer]\nmax_bytes = "2GiB"\n')
    proc = spillway("check-config", str(config), env={"SPILLWAY_WEB_PORT": "7001"})
    assert proc.returncode == 0, proc.stderr
    lines = {line.split(" = ")[0]: line for line in proc.stdout.splitlines() if " = " in line}
    assert lines["kafka.client_id"].split() == ["kafka.client_id", "=", '"edge-7"', "#", "file"]
    assert lines["buffer.max_bytes"].split()[2:] == [str(2 * 2**30), "#", "file"]
    assert lines["web.port"].split()[2:] == ["7001", "#", "env:SPILLWAY_WEB_PORT"]
    assert lines["router.default_topic"].split()[2:] == ['"events"', "#", "default"]
    doc = as_json(spillway("check-config", "--json", str(config)))
    assert doc["settings"]["kafka.client_id"] == {"value": "edge-7", "origin": "file"}


def test_check_config_names_the_bad_key_and_exits_2_even_when_the_loaded_config_is_invalid(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[source.thrift]\nprotocol = "json"\n')
    good = tmp_path / "good.toml"
    good.write_text("")
    env = {"SPILLWAY_CONFIG": str(bad)}
    proc = spillway("check-config", env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "source.thrift.protocol: must be one of 'compact', 'binary', got 'json'" in proc.stderr
    assert spillway("check-config", str(good), env=env).returncode == 0
    needs_settings = spillway("buffer", "ls", env=env)  # other commands refuse an invalid configuration
    assert needs_settings.returncode == 2 and "source.thrift.protocol" in needs_settings.stderr


def test_commands_run_without_starting_faust_or_touching_kafka(tmp_path: Path) -> None:
    write_segment(tmp_path / "00000000000000000001.seg", records(["t"], 3))
    with socket.socket() as trap:  # a "broker" that records any connection made to it
        trap.bind(("127.0.0.1", 0))
        trap.listen(8)
        trap.setblocking(False)
        env = {"SPILLWAY_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{trap.getsockname()[1]}"}
        for args in (["buffer", "verify", str(tmp_path)], ["replay", "--dry-run", str(tmp_path)]):
            proc = spillway(*args, env=env)
            assert proc.returncode == 0, proc.stderr
        with pytest.raises(BlockingIOError):
            trap.accept()
