"""The long fuzz run (opt-in: ``--run-slow``): a million random and mutated frames against a
running worker, over several connections in parallel, from raw sockets.

It checks that the server stays up (a normal client still gets OK afterwards, the process is
alive) and that its memory stays bounded (VmRSS sampled during the run). Knobs:
``SPILLWAY_FUZZ_FRAMES`` (default 1000000), ``SPILLWAY_FUZZ_CONNECTIONS`` (default 8),
``SPILLWAY_FUZZ_PROTOCOL`` (compact | binary), ``SPILLWAY_FUZZ_SEED``.

    SPILLWAY_FUZZ_FRAMES=100000 .venv/bin/pytest tests/integration/test_fuzz_long.py --run-slow
"""

from __future__ import annotations

import multiprocessing
import os
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import pytest
from helpers import Event, Status, Worker, client, event, unique
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.thrift import TMessageType
from thriftpy2.transport import TMemoryBuffer

from agents.thrift_source import _SERVICE
from devtools.kafka import Broker

FRAMES = int(os.environ.get("SPILLWAY_FUZZ_FRAMES", "1000000"))
CONNECTIONS = int(os.environ.get("SPILLWAY_FUZZ_CONNECTIONS", "8"))
PROTOCOL = os.environ.get("SPILLWAY_FUZZ_PROTOCOL", "compact")
SEED = int(os.environ.get("SPILLWAY_FUZZ_SEED", str(time.time_ns() % 2**32)))
RSS_GROWTH_LIMIT_MB = 64
# ~1,000 frames/s on a 2-core machine (each hostile frame costs the server a connection)
pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(max(600, FRAMES // 200))]
FACTORY = TCompactProtocolFactory() if PROTOCOL == "compact" else TBinaryProtocolFactory()
CLAIMS = [b"\xff\xff\xff\x7f", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00", b"\xff" * 12, b"\x0f\xff\xff\xff\x07",
          b"\x01\x7f\xff\xff\xff", b"\x9f", b"\xbb\xff\xff\xff\x07\x00", b"\x00", b"\x19\x1c\x1b\xff\xff\xff\xff\x07"]


def encode(name: str, seqid: int, **args: object) -> bytes:
    buf = TMemoryBuffer()
    proto = FACTORY.get_protocol(buf)
    proto.write_message_begin(name, TMessageType.CALL, seqid)
    proto.write_struct(getattr(_SERVICE, name + "_args")(**args))
    proto.write_message_end()
    return buf.getvalue()


def valid_bodies(topic: str, rnd: random.Random, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        evs = [Event(headers={"topic": topic, "key": f"k{rnd.randrange(100)}", "h": "v" * rnd.randrange(20)},
                     body=rnd.randbytes(rnd.randrange(200))) for _ in range(rnd.randrange(1, 6))]
        out.append(encode("appendBatch", i, events=evs) if i % 3 else encode("append", i, event=evs[0]))
    return out


def mutate(data: bytes, rnd: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rnd.randrange(1, 5)):
        op = rnd.randrange(6)
        pos = rnd.randrange(max(len(out), 1))
        if op == 0 and out:
            out[pos] ^= 1 << rnd.randrange(8)
        elif op == 1 and out:
            out[pos] = rnd.randrange(256)
        elif op == 2:
            del out[pos:pos + rnd.randrange(1, 9)]
        elif op == 3:
            out[pos:pos] = rnd.randbytes(rnd.randrange(1, 9))
        elif op == 4:
            del out[pos:]
        else:
            claim = rnd.choice(CLAIMS)
            out[pos:pos + len(claim)] = claim
    return bytes(out)


def hostile(corpus: list[bytes], rnd: random.Random) -> tuple[str, bytes]:
    """One hostile frame, length prefix included."""
    r = rnd.random()
    if r < 0.55:
        body = mutate(rnd.choice(corpus), rnd)
        return "mutated", struct.pack("!i", len(body)) + body
    if r < 0.75:
        body = rnd.randbytes(rnd.randrange(1, 300))
        return "random", struct.pack("!i", len(body)) + body
    if r < 0.85:  # a lying length prefix: huge, negative, zero, or longer than what follows
        body = rnd.choice(corpus)
        length = rnd.choice([2**31 - 1, -1, 0, 16_384_001, len(body) + rnd.randrange(1, 1000),
                             rnd.randrange(2**32) - 2**31])
        return "bad_length", struct.pack("!i", length) + body
    if r < 0.95:  # a valid frame cut short
        body = rnd.choice(corpus)
        return "truncated", (struct.pack("!i", len(body)) + body)[:rnd.randrange(1, len(body) + 4)]
    body = rnd.choice(corpus)  # a valid call, then garbage on the same connection
    junk = rnd.randbytes(rnd.randrange(1, 64))
    return "valid_then_junk", struct.pack("!i", len(body)) + body + struct.pack("!i", len(junk)) + junk


def read_replies_until_closed(s: socket.socket) -> int:
    """How many replies the server sends before it closes the connection."""
    buf = b""
    replies = 0
    try:
        while chunk := s.recv(65536):
            buf += chunk
            while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                buf = buf[4 + int.from_bytes(buf[:4], "big"):]
                replies += 1
    except ConnectionResetError:
        pass
    return replies


def fuzz_client(port: int, frames: int, seed: int, topic: str) -> Counter[str]:
    """One client process: ``frames`` frames, each hostile one on a connection of its own
    (the server closes it), valid calls on one long-lived connection. Returns counts."""
    rnd = random.Random(seed)
    corpus = valid_bodies(topic, rnd, 200)
    counts: Counter[str] = Counter()
    valid_sock: socket.socket | None = None
    while counts["frames"] < frames:
        if rnd.random() < 0.05:  # a valid call on a long-lived connection: must be answered
            if valid_sock is None:
                valid_sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            body = rnd.choice(corpus)
            valid_sock.sendall(struct.pack("!i", len(body)) + body)
            size = int.from_bytes(valid_sock.recv(4, socket.MSG_WAITALL), "big")
            if len(valid_sock.recv(size, socket.MSG_WAITALL)) != size or not size:
                raise AssertionError("a valid call was not answered")
            counts.update(("frames", "valid"))
            continue
        kind, data = hostile(corpus, rnd)
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
        except OSError:
            counts["connect_errors"] += 1
            time.sleep(0.01)
            continue
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)  # nothing more: the server answers or closes, never waits
            counts["hostile_answered"] += read_replies_until_closed(s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed first (a bad length prefix is refused before the rest arrives)
        finally:
            s.close()
        counts.update(("frames", kind, "connections"))
        counts["frames"] += kind == "valid_then_junk"
    if valid_sock is not None:
        valid_sock.close()
    return counts


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_million_hostile_frames_leave_the_server_up_with_bounded_memory(
        kafka_up: Broker, make_worker: Callable[..., Worker], capsys: pytest.CaptureFixture[str]) -> None:
    topic = unique("fuzz")
    # Only the fuzz topic is allowed: a mutated topic header cannot create topics in the broker.
    w = make_worker(kafka_up.bootstrap, SPILLWAY_SOURCE_THRIFT_PROTOCOL=PROTOCOL,
                    SPILLWAY_ROUTER_ALLOWED_TOPICS=f'["{topic}"]', SPILLWAY_ROUTER_DEFAULT_TOPIC=topic,
                    SPILLWAY_SOURCE_THRIFT_FRAME_TIMEOUT="10s")
    assert w.proc is not None
    pid = w.proc.pid
    normal = client(w.thrift_port, PROTOCOL)
    assert normal.append(event("before", topic=topic)) == Status.OK

    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set() and w.proc.poll() is None:  # type: ignore[union-attr]
            samples.append((time.monotonic(), rss_kb(pid)))
            time.sleep(0.25)

    # a normal client calling every second during the attack (well within idle_timeout)
    normal_calls: list[tuple[int | None, float]] = []

    def call_normally() -> None:
        n = 0
        while not done.wait(1.0):
            t = time.monotonic()
            try:
                status = normal.append(event(f"during {n}", topic=topic))
            except Exception:
                status = None
            normal_calls.append((status, time.monotonic() - t))
            n += 1

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    caller = threading.Thread(target=call_normally, daemon=True)
    caller.start()
    t0 = time.monotonic()
    per_client = -(-FRAMES // CONNECTIONS)
    stats: Counter[str] = Counter()
    try:
        # client processes, not threads: the clients' Python must not be the bottleneck
        with ProcessPoolExecutor(CONNECTIONS, mp_context=multiprocessing.get_context("spawn")) as pool:
            for counts in pool.map(fuzz_client, [w.thrift_port] * CONNECTIONS, [per_client] * CONNECTIONS,
                                   [SEED + i for i in range(CONNECTIONS)], [topic] * CONNECTIONS):
                stats.update(counts)
    finally:
        done.set()
        sampler.join()
        caller.join()
    seconds = time.monotonic() - t0

    assert w.proc.poll() is None, "the worker died"
    assert normal.append(event("after", topic=topic)) == Status.OK  # the long-lived client is still served
    assert client(w.thrift_port, PROTOCOL).append(event("new", topic=topic)) == Status.OK
    counters = w.status()["counters"]
    rss = [kb for _, kb in samples]
    warm = [kb for ts, kb in samples if ts - t0 > min(10.0, seconds / 10)] or rss
    growth_mb = (max(warm) - warm[0]) / 1024
    slowest = max((dt for _, dt in normal_calls), default=0.0)
    kinds = {k: v for k, v in stats.items()
             if k not in ("frames", "connections", "connect_errors", "hostile_answered")}
    with capsys.disabled():
        print(f"\nlong fuzz ({PROTOCOL}, seed {SEED}): {stats['frames']} frames sent in {seconds:.0f}s "
              f"({stats['frames'] / seconds:,.0f}/s) by {CONNECTIONS} parallel clients over {stats['connections']} "
              f"connections ({stats['connect_errors']} connect errors), {stats['hostile_answered']} hostile frames "
              f"answered; kinds {kinds}; server counters: bad_frames {counters['bad_frames']:.0f}, received "
              f"{counters['received']:.0f}, refused {counters['refused']:.0f}, acked "
              f"{counters['acked_kafka'] + counters['acked_disk']:.0f}; RSS min {min(rss) / 1024:.0f} MB, max "
              f"{max(rss) / 1024:.0f} MB, growth after warm-up {growth_mb:.1f} MB ({len(rss)} samples); "
              f"a normal client's {len(normal_calls)} calls during the run: "
              f"{dict(Counter(st for st, _ in normal_calls))}, slowest {slowest:.2f}s")
    assert normal_calls and all(st == Status.OK for st, _ in normal_calls), "a normal client was disturbed"
    assert stats["frames"] >= FRAMES
    assert counters["bad_frames"] > stats["frames"] / 4
    assert growth_mb < RSS_GROWTH_LIMIT_MB, f"RSS grew by {growth_mb:.0f} MB during the run"
