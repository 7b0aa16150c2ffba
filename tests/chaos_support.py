"""Support for the chaos harness (tests/integration/test_chaos.py): a real ext4 filesystem on
a loop device, a rate-limited Flume load whose every event can be regenerated and checked,
the worker seen across restarts, segment surgery (bit flips, drain progress), and the
oracle that turns what Kafka and the buffer's ``undeliverable/`` hold into per-round figures.

Nothing here is specific to one fault; the faults themselves live in the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import subprocess
import threading
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import Event, Status, Worker, client, read_topic

from agents.segments import iter_records

# -- a real filesystem --------------------------------------------------------------


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True)


@contextlib.contextmanager
def ext4_loop(image: Path, mountpoint: Path, size_mb: int) -> Iterator[Path]:
    """An ext4 filesystem of ``size_mb`` MiB in ``image`` (a sparse file), on a loop device,
    mounted at ``mountpoint`` (needs root). No reserved blocks, so "full" means full for root
    too. Unmounted and detached on the way out, even after a failure."""
    image.parent.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as fh:
        fh.truncate(size_mb * 1024 * 1024)
    _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image))
    dev = _run("losetup", "--find", "--show", str(image)).stdout.strip()
    try:
        _run("mount", "-t", "ext4", dev, str(mountpoint))
        try:
            yield mountpoint
        finally:
            for attempt in range(20):
                if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.25)
                if attempt == 19:
                    subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)
    finally:
        for _ in range(20):
            if subprocess.run(["losetup", "-d", dev], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        image.unlink(missing_ok=True)


def fill(disk: Path) -> Path:
    """Take every free byte of the filesystem at ``disk`` with a filler file."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: nothing left to flush on close
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * (1 << 16))
    return filler


# -- events that can be regenerated ---------------------------------------------------

NOTE = "ünïcødé €—日本語"  # a non-ASCII header value on every event


class EventSpace:
    """Every event the harness sends is a pure function of (client, seq, round sent in), plus
    a table of overridden topics (poison events); its body starts ``tag|client|seq|`` so a
    record read back names the event it claims to be, and every other byte can be checked."""

    def __init__(self, tag: str, topics: list[str]) -> None:
        self.tag = tag
        self.prefix = tag.encode()
        self.topics = topics
        self.pattern = random.Random(tag).randbytes(4096)  # every byte value, bodies are binary
        self.overrides: dict[tuple[int, int], str] = {}

    def topic(self, c: int, seq: int) -> str:
        return self.overrides.get((c, seq)) or self.topics[(seq * 31 + c) % len(self.topics)]

    def make(self, c: int, seq: int, sent_round: int) -> tuple[str, str, dict[str, str], bytes]:
        """(topic, key, headers, body) of event ``seq`` of client ``c``."""
        topic = self.topic(c, seq)
        key = f"k{(seq * 7 + c) % 17}"
        headers = {"topic": topic, "key": key, "src": f"c{c}", "seq": str(seq), "round": str(sent_round),
                   "note": f"{NOTE} {seq % 1000}"}
        off, n = (seq * 131) % 2048, 48 + (seq * 7919 + c * 104729) % 320
        body = b"%s|%d|%d|%s" % (self.prefix, c, seq, self.pattern[off:off + n])
        return topic, key, headers, body

    def event(self, c: int, seq: int, sent_round: int) -> Any:
        _, _, headers, body = self.make(c, seq, sent_round)
        return Event(headers=headers, body=body)

    def parse(self, body: bytes) -> tuple[int, int] | None:
        parts = body.split(b"|", 3)
        if len(parts) < 4 or parts[0] != self.prefix:
            return None
        try:
            return int(parts[1]), int(parts[2])
        except ValueError:
            return None

    def mismatch(self, c: int, seq: int, sent_round: int, topic: str, key: bytes | None,
                 headers: Iterable[tuple[str, bytes]], body: bytes) -> str | None:
        """What differs between a record read back and the event that was sent (None: nothing)."""
        want_topic, want_key, want_headers, want_body = self.make(c, seq, sent_round)
        if topic != want_topic:
            return f"topic {topic!r}, sent to {want_topic!r}"
        if key != want_key.encode():
            return f"key {key!r}, sent {want_key!r}"
        got = sorted((n, bytes(v)) for n, v in headers)
        want = sorted((n, v.encode()) for n, v in want_headers.items())
        if got != want:
            return f"headers {got}, sent {want}"
        if body != want_body:
            return f"body differs ({len(body)} bytes, sent {len(want_body)})"
        return None


# -- the load --------------------------------------------------------------------------


@dataclass(slots=True)
class Call:
    client: int
    seq0: int
    n: int
    sent_round: int
    round: int  # the round the call was answered in: its events are counted there
    status: int | None  # None: the connection broke (not acknowledged)
    t0: float
    t1: float


class ChaosLoad:
    """``clients`` Flume clients in threads, each sending appendBatch calls of ``batch``
    (min, max) events, rate-limited to ``rate`` events/s in total (a client that fell behind
    does not burst to catch up). The harness sets :attr:`round`; every call is recorded with
    the round it was sent in and the round it was answered in."""

    def __init__(self, port: int, space: EventSpace, *, clients: int = 3, rate: float = 3000.0,
                 batch: tuple[int, int] = (50, 100), seed: int = 0, timeout_ms: int = 20_000) -> None:
        self.port, self.space, self.clients, self.rate, self.batch = port, space, clients, rate, batch
        self.seed, self.timeout_ms = seed, timeout_ms
        self.round = 1
        self.calls: list[Call] = []
        self.call_of_seq: dict[int, array[int]] = {}
        self._next_seq: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # bookkeeping shared by the clients and the harness's own calls
    def _reserve(self, c: int, n: int) -> int:
        with self._lock:
            seq0 = self._next_seq.get(c, 0)
            self._next_seq[c] = seq0 + n
            return seq0

    def _record(self, call: Call) -> None:
        with self._lock:
            idx = len(self.calls)
            self.calls.append(call)
            seqs = self.call_of_seq.setdefault(call.client, array("q"))
            if len(seqs) < call.seq0 + call.n:
                seqs.extend([-1] * (call.seq0 + call.n - len(seqs)))
            for s in range(call.seq0, call.seq0 + call.n):
                seqs[s] = idx

    def call(self, c: int, n: int, conn: Any | None = None, before: Any = None) -> Call:
        """One appendBatch of ``n`` events of client ``c`` (``before(seq0)`` runs first, e.g. to
        set overrides); a fresh connection unless ``conn`` is given."""
        seq0 = self._reserve(c, n)
        if before is not None:
            before(seq0)
        sent_round = self.round
        events = [self.space.event(c, s, sent_round) for s in range(seq0, seq0 + n)]
        t0 = time.monotonic()
        own = conn is None
        status: int | None = None
        try:
            if own:
                conn = client(self.port, timeout_ms=self.timeout_ms)
            status = conn.appendBatch(events)
        except Exception:
            status = None
        finally:
            if own and conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        call = Call(c, seq0, n, sent_round, self.round, status, t0, time.monotonic())
        self._record(call)
        return call

    def _run(self, c: int) -> None:
        rng = random.Random(self.seed * 1000 + c)
        per_client = self.rate / self.clients
        conn = None
        next_at = time.monotonic()
        while not self._stop.is_set():
            if conn is None:
                try:
                    conn = client(self.port, timeout_ms=self.timeout_ms)
                except Exception:
                    self._stop.wait(0.2)
                    continue
            n = rng.randint(*self.batch)
            seq0 = self._reserve(c, n)
            sent_round = self.round
            events = [self.space.event(c, s, sent_round) for s in range(seq0, seq0 + n)]
            t0 = time.monotonic()
            try:
                status: int | None = conn.appendBatch(events)
            except Exception:
                status = None
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
            t1 = time.monotonic()
            self._record(Call(c, seq0, n, sent_round, self.round, status, t0, t1))
            next_at = max(next_at + n / per_client, t1)
            if next_at > t1:
                self._stop.wait(next_at - t1)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def start(self) -> ChaosLoad:
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True, name=f"chaos-client-{c}")
                         for c in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def first_ok_after(self, t: float) -> float | None:
        """Answer time of the first call answered OK at or after ``t``."""
        with self._lock:
            calls = self.calls[-2000:]
        times = [c.t1 for c in calls if c.status == Status.OK and c.t1 >= t]
        return min(times) if times else None

    def statuses(self, rnd: int | None = None) -> dict[str, int]:
        with self._lock:
            calls = list(self.calls)
        out = {"ok": 0, "failed": 0, "error": 0, "broken": 0}
        for c in calls:
            if rnd is None or c.round == rnd:
                out[status_name(c.status)] += 1
        return out


def status_name(status: int | None) -> str:
    return {Status.OK: "ok", Status.FAILED: "failed", Status.ERROR: "error", None: "broken"}.get(status, "error")


# -- the worker across restarts --------------------------------------------------------


class Node:
    """The worker under test, with its counters summed across restarts (best effort: the
    counters are sampled just before each kill or stop) and its environment per start."""

    COUNTERS = ("duplicates", "failed", "acked_disk", "acked_kafka", "drained")

    def __init__(self, worker: Worker, base_env: dict[str, str]) -> None:
        self.w = worker
        self.base_env = dict(base_env)
        self._base: dict[str, int] = dict.fromkeys(self.COUNTERS, 0)
        self._last: dict[str, int] = dict.fromkeys(self.COUNTERS, 0)

    def status(self) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            st = self.w.status()
            if isinstance(st, dict) and "counters" in st:
                self._last = {k: int(st["counters"].get(k, 0)) for k in self.COUNTERS}
                return st
        return None

    def counter(self, name: str) -> int:
        return self._base[name] + self._last[name]

    def _bank(self) -> None:
        self.status()
        for k in self.COUNTERS:
            self._base[k] += self._last[k]
        self._last = dict.fromkeys(self.COUNTERS, 0)

    def buffer_events(self) -> int | None:
        st = self.status()
        return None if st is None else int(st["buffer"]["events"])

    def sink_state(self) -> str | None:
        st = self.status()
        return None if st is None else str(st["sink"]["state"])

    @property
    def buffer_dir(self) -> Path:
        return Path(self.w.env_extra.get("SPILLWAY_BUFFER_DIRECTORY", str(self.w.buffer_dir)))

    @property
    def running(self) -> bool:
        return self.w.proc is not None and self.w.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, the whole process group."""
        self._bank()
        self.w.kill()

    def stop(self) -> None:
        """SIGTERM: a clean stop (calls in flight answered, buffer fsynced)."""
        self._bank()
        self.w.stop(timeout=60)

    def start(self, **env: str) -> None:
        """Start with the base environment plus ``env`` (this start only)."""
        self.w.env_extra = {**self.base_env, **env}
        self.w.start(timeout=90)
        self.status()

    def restart(self, **env: str) -> None:
        self.stop()
        self.start(**env)

    def recovered(self, since: int) -> str | None:
        """What the worker's start-up found in its buffer ("N segments, M events, B bytes"), from
        its log after line ``since``."""
        for line in self.log_lines(since)[1]:
            m = re.search(r"disk buffer \S+: (\d+ segments, \d+ events, \d+ bytes)", line)
            if m:
                return m.group(1)
        return None

    def log_lines(self, since: int = 0) -> tuple[int, list[str]]:
        """Lines of the worker log from line ``since`` on, and the new line count."""
        try:
            lines = self.w.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return since, []
        return len(lines), lines[since:]


# -- segments ------------------------------------------------------------------------------


def read_progress(buffer: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((buffer / "drain.progress").read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def segments(buffer: Path) -> list[Path]:
    return sorted(buffer.glob("[0-9]" * 20 + ".seg"))


def frames(path: Path) -> list[tuple[int, int, Any]]:
    """(offset, next offset, record) of every frame of a clean segment."""
    return list(iter_records(path))


def flip_bits(path: Path, bits: list[int]) -> None:
    """XOR the given bit positions (absolute, in bits from the file start), then fsync."""
    with open(path, "r+b", buffering=0) as fh:
        for bit in bits:
            fh.seek(bit // 8)
            b = fh.read(1)[0]
            fh.seek(bit // 8)
            fh.write(bytes([b ^ (1 << (bit % 8))]))
        os.fsync(fh.fileno())


def records_under(directory: Path) -> tuple[list[Any], list[str]]:
    """Every record of every segment file below ``directory`` (and what could not be read)."""
    out: list[Any] = []
    errors: list[str] = []
    if not directory.is_dir():
        return out, errors
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        try:
            out.extend(rec for _, _, rec in iter_records(path))
        except Exception as exc:  # a file that is not a clean segment: say so
            errors.append(f"{path.name}: {exc}")
    return out, errors


# -- reading Kafka -------------------------------------------------------------------------


def topic_record_count(bootstrap: str, topic: str) -> int:
    """end - beginning offsets summed over the topic's partitions (no transactions here, so
    every offset is a record)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        await consumer.start()
        try:
            cluster = await consumer._client.fetch_all_metadata()  # topics() does not keep it
            parts = cluster.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            if not tps:
                return 0
            begin = await consumer.beginning_offsets(tps)
            end = await consumer.end_offsets(tps)
            return sum(end[tp] - begin[tp] for tp in tps)
        finally:
            await consumer.stop()

    return asyncio.run(run())


def read_whole_topic(bootstrap: str, topic: str) -> tuple[list[Any], int]:
    """Every record of ``topic`` (helpers.read_topic up to the topic's end offsets), and how
    many the end offsets say there are."""
    total = topic_record_count(bootstrap, topic)
    if total == 0:
        return [], 0
    return read_topic(bootstrap, topic, total, timeout=120 + total / 5000, settle=0.0), total


# -- the oracle ----------------------------------------------------------------------------


@dataclass
class Audit:
    """What was acknowledged against what was found, per round (the round a call was answered in)."""

    acked: dict[int, int] = field(default_factory=dict)
    found: dict[int, int] = field(default_factory=dict)
    lost: dict[int, int] = field(default_factory=dict)
    duplicates: dict[int, int] = field(default_factory=dict)
    damaged: dict[int, int] = field(default_factory=dict)  # by the round of the flip
    damaged_missing: dict[int, int] = field(default_factory=dict)
    undeliverable: dict[int, int] = field(default_factory=dict)
    lost_examples: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)  # records that differ from what was sent
    wrong_count: int = 0
    unacked_found: int = 0
    foreign: int = 0  # records of other runs or not ours
    good_in_undeliverable: int = 0
    undeliverable_errors: list[str] = field(default_factory=list)
    short_reads: list[str] = field(default_factory=list)
    records_read: int = 0


def audit(load: ChaosLoad, bootstrap: str, topics: list[str], undeliverable_dirs: list[Path],
          damaged: dict[tuple[int, int], int], poison: dict[tuple[int, int], int]) -> Audit:
    """``damaged``: (client, seq) -> round of the flip; ``poison``: (client, seq) -> round."""
    space = load.space
    calls = load.calls
    out = Audit()
    kafka_count: dict[int, bytearray] = {c: bytearray(len(s)) for c, s in load.call_of_seq.items()}
    undeliv_count: dict[tuple[int, int], int] = {}

    def check(rec: Any, where: str) -> tuple[int, int] | None:
        who = space.parse(rec.value)
        if who is None or who[0] not in load.call_of_seq or who[1] >= len(load.call_of_seq[who[0]]):
            out.foreign += 1
            return None
        c, seq = who
        idx = load.call_of_seq[c][seq]
        if idx < 0:
            out.foreign += 1
            return None
        call = calls[idx]
        bad = space.mismatch(c, seq, call.sent_round, rec.topic, rec.key, rec.headers, rec.value)
        if bad is not None:
            out.wrong_count += 1
            if len(out.wrong) < 20:
                out.wrong.append(f"{where}: c{c} seq {seq} (round {call.round}): {bad}")
        return c, seq

    for topic in topics:
        recs, total = read_whole_topic(bootstrap, topic)
        if len(recs) < total:
            out.short_reads.append(f"{topic}: read {len(recs)} of {total}")
        out.records_read += len(recs)
        for rec in recs:
            who = check(rec, f"kafka {topic}")
            if who is not None:
                counts = kafka_count[who[0]]
                counts[who[1]] = min(255, counts[who[1]] + 1)
        del recs
    for d in undeliverable_dirs:
        recs, errors = records_under(d)
        out.undeliverable_errors += [f"{d}: {e}" for e in errors]
        for rec in recs:
            who = check(rec, f"undeliverable {d}")
            if who is not None:
                undeliv_count[who] = undeliv_count.get(who, 0) + 1
                if who not in poison:
                    out.good_in_undeliverable += 1

    def add(d: dict[int, int], r: int, n: int = 1) -> None:
        d[r] = d.get(r, 0) + n

    for call in calls:
        counts = kafka_count[call.client]
        if call.status != Status.OK:
            out.unacked_found += sum(1 for s in range(call.seq0, call.seq0 + call.n) if counts[s])
            continue
        r = call.round
        add(out.acked, r, call.n)
        for s in range(call.seq0, call.seq0 + call.n):
            k = counts[s]
            who = (call.client, s)
            if who in poison:
                u = undeliv_count.get(who, 0)
                copies = k + u
                if u:
                    add(out.undeliverable, r)
            else:
                copies = k
            if who in damaged:
                add(out.damaged, damaged[who])
                if not copies:
                    add(out.damaged_missing, damaged[who])
                    continue
            if copies:
                add(out.found, r)
                if copies > 1:
                    add(out.duplicates, r, copies - 1)
            else:
                add(out.lost, r)
                if len(out.lost_examples) < 20:
                    where = "undeliverable/" if who in poison else space.topic(*who)
                    out.lost_examples.append(f"round {r}: c{call.client} seq {s} (call of {call.n} answered "
                                             f"at t={call.t1:.2f}, expected in {where})")
    return out


# -- figures ---------------------------------------------------------------------------


def p50_max(values: list[float]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"p50": None, "max": None}
    return {"p50": round(statistics.median(vals), 2), "max": round(max(vals), 2)}
