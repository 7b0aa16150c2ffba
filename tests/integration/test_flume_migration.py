"""Moving from Flume, end to end, with Apache Flume's own code (Maven Central, devtools/flume.py):

- a worker started from the file `spillway import-flume` wrote takes events from Flume's own
  Java RpcClient (Thrift) into the topics their headers name;
- files that Flume's own agent wrote (ThriftSource -> memory channel -> file_roll with
  sink.serializer = avro_event), one of them torn, in a directory that also holds a spillway
  segment, are replayed into the real broker, each event to its topic with its key and headers;
  a second run sends nothing twice, and the input files are never changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import fastavro
import pytest
from helpers import ROOT, Worker, free_port, read_topic, unique

from devtools import flume
from devtools.kafka import Broker

pytestmark = pytest.mark.kafka

DATA = ROOT / "tests" / "data" / "flume"
SENDER = (DATA / "FlumeSend.java").read_text()
BASE_MS = (int(time.time()) - 3600) * 1000  # the events' timestamp header: BASE_MS + their number


def spillway(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "topology.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def flume_send(port: int, first: int, count: int, topics: list[str]) -> None:
    """Events ``first`` .. ``first+count-1`` through Flume's own Thrift RpcClient."""
    r = flume.java(SENDER, "FlumeSend", str(port), str(first), str(count), ",".join(topics), str(BASE_MS))
    assert r.returncode == 0 and f"sent {count}" in r.stdout, r.stdout + r.stderr[-2000:]


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Flume agent exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"Flume agent not listening on {port}:\n{log.read_text()[-3000:]}")


def flume_spill(tmp: Path, rounds: list[tuple[int, int]], topics: list[str],
                codecs: tuple[str, ...] = ("null",)) -> dict[str, Path]:
    """Run Flume's own agent (Thrift source -> a memory channel per codec, replicating -> a
    file_roll avro_event sink per codec, or the TEXT serializer for "text") and feed it with
    Flume's own client; return each codec's directory of the files Flume wrote."""
    port = free_port()
    dirs = {codec: tmp / f"flume-spill-{codec}" for codec in codecs}
    lines = ["a1.sources = r1", f"a1.channels = {' '.join(f'c_{c}' for c in codecs)}",
             f"a1.sinks = {' '.join(f'k_{c}' for c in codecs)}",
             "a1.sources.r1.type = thrift", "a1.sources.r1.bind = 127.0.0.1", f"a1.sources.r1.port = {port}",
             f"a1.sources.r1.channels = {' '.join(f'c_{c}' for c in codecs)}"]
    for codec, directory in dirs.items():
        directory.mkdir()
        lines += [f"a1.channels.c_{codec}.type = memory", f"a1.channels.c_{codec}.capacity = 10000",
                  f"a1.channels.c_{codec}.transactionCapacity = 1000",
                  f"a1.sinks.k_{codec}.type = file_roll", f"a1.sinks.k_{codec}.channel = c_{codec}",
                  f"a1.sinks.k_{codec}.sink.directory = {directory}",
                  *([f"a1.sinks.k_{codec}.sink.serializer = TEXT"] if codec == "text" else [
                      f"a1.sinks.k_{codec}.sink.serializer = avro_event",
                      f"a1.sinks.k_{codec}.sink.serializer.compressionCodec = {codec}"]),
                  f"a1.sinks.k_{codec}.sink.rollInterval = 1", f"a1.sinks.k_{codec}.sink.batchSize = 100"]
    conf = tmp / "agent.properties"
    conf.write_text("\n".join(lines) + "\n")
    log = tmp / "agent.log"
    with open(log, "wb") as out:
        agent = subprocess.Popen(flume.agent_command(conf), stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        wait_port(port, agent, log)
        for first, count in rounds:
            flume_send(port, first, count, topics)
            time.sleep(1.5)  # a roll in between: several files
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
    return dirs


def blocks(path: Path) -> list[int]:
    with open(path, "rb") as fh:
        return [b.num_records for b in fastavro.block_reader(fh)]


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_replay_sends_flumes_own_spilled_files_to_their_topics_with_keys_and_headers(
        kafka_up: Broker, tmp_path: Path) -> None:
    topics = [unique("orders"), unique("clicks"), unique("audit")]
    dirs = flume_spill(tmp_path, [(0, 900), (900, 600)], topics, codecs=("null", "deflate", "snappy", "text"))
    env = {"SPILLWAY_KAFKA_BOOTSTRAP_SERVERS": kafka_up.bootstrap, "SPILLWAY_BUFFER_DIRECTORY": str(tmp_path / "buf")}
    for codec in ("deflate", "snappy"):  # the same events, compressed by Flume: read alike
        inspect = spillway("buffer", "inspect", "--json", str(dirs[codec]), env=env)
        assert inspect.returncode == 0, inspect.stdout + inspect.stderr
        total = json.loads(inspect.stdout)["total"]
        assert total["events"] == 1500 and total["per_topic"] == {t: 500 for t in topics}, (codec, total)
        assert {Path(f["path"]).name for f in json.loads(inspect.stdout)["segments"]} == {
            p.name for p in dirs[codec].iterdir()}
        with open(next(p for p in dirs[codec].iterdir() if p.stat().st_size > 200), "rb") as fh:
            assert fastavro.block_reader(fh).metadata["avro.codec"] == codec
    # Flume's TEXT serializer kept the bodies only: without --topic replay says why, with it the lines go there.
    text_topic = unique("legacy")
    listed = spillway("buffer", "ls", str(dirs["text"]), env=env)
    assert listed.returncode == 0 and "a Flume TEXT or HEADER_AND_TEXT file?" in listed.stderr, listed.stderr
    no_topic = spillway("replay", str(dirs["text"]), env=env)
    assert no_topic.returncode == 1 and "keep no headers" in no_topic.stderr, no_topic.stderr
    text = spillway("replay", "--topic", text_topic, str(dirs["text"]), env=env)
    assert text.returncode == 0 and "sent 1500 event(s)" in text.stdout, text.stdout + text.stderr
    lines = read_topic(kafka_up.bootstrap, text_topic, 1500, timeout=60, settle=0.5)
    assert sorted(r.value for r in lines) == sorted(f"event {i}".encode() for i in range(1500))
    assert all(r.key is None and not r.headers for r in lines)
    spill = dirs["null"]
    files = sorted((p for p in spill.iterdir() if p.stat().st_size > 0), key=lambda p: p.name)
    per_file = {p.name: blocks(p) for p in files}
    assert sum(map(sum, per_file.values())) == 1500, per_file
    # Tear the last block of the biggest file, as a power cut would (file_roll never fsyncs).
    torn = max(files, key=lambda p: sum(per_file[p.name]))
    assert len(per_file[torn.name]) >= 2, per_file
    lost = per_file[torn.name][-1]
    with open(torn, "r+b") as fh:
        fh.truncate(torn.stat().st_size - 25)
    # A spillway segment in the same directory: replayed too.
    seg_topic = unique("segment")
    from agents.records import Record
    from agents.segments import FILE_HEADER, encode_records

    (spill / "00000000000000000001.seg").write_bytes(FILE_HEADER + encode_records(
        [Record(seg_topic, b"sk", [("h", b"v")], b"from a segment", BASE_MS)]))
    before = digest(spill)

    first = spillway("replay", str(spill), env=env)
    assert first.returncode == 1, first.stdout + first.stderr  # the torn file
    assert "torn last block" in first.stderr and torn.name in first.stderr, first.stderr
    sent = 1500 - lost
    print(f"\nFlume wrote {len(files)} non-empty files per codec, blocks {per_file}; torn {torn.name}: "
          f"its last block of {lost} events; replayed {sent} + 1 segment event")
    assert f"sent {sent + 1} event(s)" in first.stdout, first.stdout + first.stderr

    got: dict[str, list] = {}
    for topic in topics:
        got[topic] = read_topic(kafka_up.bootstrap, topic, sent // 3, timeout=60, settle=1.0)
    assert sum(map(len, got.values())) == sent, {t: len(v) for t, v in got.items()}
    seqs = set()
    for topic, records in got.items():
        for rec in records:
            headers = {k: v.decode() for k, v in rec.headers}
            seq = int(headers["seq"])
            seqs.add(seq)
            assert topics[seq % 3] == topic == headers["topic"]
            assert rec.key == f"key-{seq}".encode() and headers["key"] == f"key-{seq}"
            assert headers["app"] == "flume-sdk" and rec.value == f"event {seq}".encode()
            assert rec.timestamp == BASE_MS + seq  # the timestamp header
    assert len(seqs) == sent  # no duplicates
    seg = read_topic(kafka_up.bootstrap, seg_topic, 1, timeout=30)
    assert [(r.key, r.value) for r in seg] == [(b"sk", b"from a segment")]

    # Second run: the whole files are skipped, the torn one resumes after what Kafka acknowledged.
    second = spillway("replay", "--json", str(spill), env=env)
    assert second.returncode == 1, second.stdout + second.stderr
    doc = json.loads(second.stdout)
    assert doc["per_topic"] == {seg_topic: 1}, doc  # only the segment (replay never records segments)
    assert len(doc["already_replayed"]) == len(files) - 1 and doc["resumed"] == {
        str(torn): per_file_sum_minus_last(per_file[torn.name])}, doc
    again = {t: read_topic(kafka_up.bootstrap, t, sent, timeout=5, settle=0.5) for t in topics}
    assert sum(map(len, again.values())) == sent  # nothing sent twice
    assert digest(spill) == before  # the input files are never changed


def per_file_sum_minus_last(counts: list[int]) -> int:
    return sum(counts[:-1])


@pytest.mark.parametrize("spelling", ["1.6", "1.7"])
def test_worker_from_imported_flume_config_takes_flume_sdk_events_into_their_topics(
        kafka_up: Broker, make_worker: Callable[..., Worker], tmp_path: Path, spelling: str) -> None:
    default = unique("events-default")
    props = (DATA / f"edge-{spelling}.properties").read_text().replace("topic = events-default",
                                                                      f"topic = {default}")
    assert default in props
    (tmp_path / "flume.properties").write_text(props)
    out = tmp_path / "spillway.toml"
    conv = spillway("import-flume", str(tmp_path / "flume.properties"), "-o", str(out), "--strict")
    assert conv.returncode == 0, conv.stderr
    checked = spillway("check-config", str(out))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    worker = make_worker(kafka_up.bootstrap, SPILLWAY_CONFIG=str(out))
    assert worker.status()  # up from the imported file
    topics = [unique("orders"), unique("clicks"), "-"]
    flume_send(worker.thrift_port, 0, 300, topics)
    for i, topic in enumerate([topics[0], topics[1], default]):
        records = read_topic(kafka_up.bootstrap, topic, 100, timeout=60, settle=0.5)
        assert len(records) == 100, (topic, len(records))
        seqs = sorted(int(dict(r.headers)["seq"]) for r in records)
        assert seqs == list(range(i, 300, 3))
        assert all(r.key == f"key-{int(dict(r.headers)['seq'])}".encode() for r in records)


def test_replay_of_a_directory_without_anything_readable_fails_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not Flume's, not spillway's\n")
    proc = spillway("replay", "--dry-run", str(tmp_path))
    assert proc.returncode == 1 and "nothing to replay" in proc.stderr, proc.stderr



def test_replay_progress_is_a_bar_on_a_terminal_plain_lines_elsewhere_and_json_with_json(tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    schema = fastavro.parse_schema({"type": "record", "name": "Event", "namespace": "org.apache.flume", "fields": [
        {"name": "headers", "type": {"type": "map", "values": "string"}}, {"name": "body", "type": "bytes"}]})
    for n in range(3):
        with open(tmp_path / f"1700000000000-{n + 1}", "wb") as fh:
            fastavro.writer(fh, schema, [{"headers": {"topic": "t"}, "body": b"x"}] * 2000)
    env = {**os.environ, "SPILLWAY_BUFFER_DIRECTORY": str(tmp_path / "buf")}
    args = [sys.executable, "-m", "topology.cli", "replay", "--dry-run", str(tmp_path)]
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, env=env, cwd=ROOT)
    os.close(follower)
    screen = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        screen += data
    assert proc.wait(60) == 0
    text = screen.decode(errors="replace")
    assert "replay: 100%" in text and "6.00k/6.00k" in text and "ev/s" in text, text
    plain = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert plain.returncode == 0 and "\r" not in plain.stderr
    assert plain.stderr.count(": events 2000") == 3, plain.stderr
    as_json = subprocess.run([*args, "--json"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    lines = [json.loads(line) for line in as_json.stderr.splitlines()]
    assert [(Path(d["file"]).name, d["events"]) for d in lines] == [(f"1700000000000-{n}", 2000) for n in (1, 2, 3)]
    assert json.loads(as_json.stdout)["total"] == 6000
