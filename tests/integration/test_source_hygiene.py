"""Connection hygiene of the Thrift source, against a real worker and a real broker:
idle and slowloris connections are cut, connections are capped, a client pipelining
frames without reading replies cannot grow the server's memory."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest
from helpers import Event, Status, Worker, client, event, read_topic, unique, wait_until
from thriftpy2.protocol import TCompactProtocolFactory
from thriftpy2.thrift import TMessageType
from thriftpy2.transport import TMemoryBuffer

from agents.thrift_source import _SERVICE
from devtools.kafka import Broker

pytestmark = pytest.mark.kafka


def frame_of(name: str, seqid: int, **args: object) -> bytes:
    """One framed compact call, as a Flume client sends it."""
    buf = TMemoryBuffer()
    proto = TCompactProtocolFactory().get_protocol(buf)
    proto.write_message_begin(name, TMessageType.CALL, seqid)
    proto.write_struct(getattr(_SERVICE, name + "_args")(**args))
    proto.write_message_end()
    body = buf.getvalue()
    return struct.pack("!i", len(body)) + body


def read_reply_status(s: socket.socket) -> int:
    def exactly(n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = s.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed by the server")
            out += chunk
        return out

    body = exactly(int.from_bytes(exactly(4), "big"))
    proto = TCompactProtocolFactory().get_protocol(TMemoryBuffer(body))
    name, _, _ = proto.read_message_begin()
    result = getattr(_SERVICE, name + "_result")()
    proto.read_struct(result)
    return int(result.success)


def seconds_until_closed(s: socket.socket, limit: float) -> float:
    """How long until the server closes ``s`` (EOF or reset); fails after ``limit`` seconds."""
    t0 = time.monotonic()
    s.settimeout(limit)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {limit}s") from None
    return time.monotonic() - t0


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    topic = unique("idle")
    w = make_worker(kafka_up.bootstrap, SPILLWAY_SOURCE_THRIFT_IDLE_TIMEOUT="1s")
    busy = client(w.thrift_port)
    silent = socket.create_connection(("127.0.0.1", w.thrift_port), timeout=10)
    connected = time.monotonic()
    after_a_call = socket.create_connection(("127.0.0.1", w.thrift_port), timeout=10)
    after_a_call.sendall(frame_of("append", 1, event=event("one call, then silence", topic=topic)))
    assert read_reply_status(after_a_call) == Status.OK
    # a client calling more often than the timeout is never cut
    stop = threading.Event()
    statuses: list[int] = []

    def keep_calling() -> None:
        while not stop.is_set():
            statuses.append(busy.append(event("busy", topic=topic)))
            time.sleep(0.3)

    t = threading.Thread(target=keep_calling)
    t.start()
    try:
        seconds_until_closed(silent, 10)
        assert 0.9 < time.monotonic() - connected < 5
        assert seconds_until_closed(after_a_call, 10) < 5
        time.sleep(1.5)
    finally:
        stop.set()
        t.join()
    assert statuses and set(statuses) == {Status.OK}
    assert "no call for 1s" in w.log_tail(200)
    silent.close()
    after_a_call.close()


def test_a_client_dribbling_a_frame_is_cut_after_the_frame_timeout_though_never_idle(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    topic = unique("slowloris")
    w = make_worker(kafka_up.bootstrap, SPILLWAY_SOURCE_THRIFT_FRAME_TIMEOUT="2s",
                    SPILLWAY_SOURCE_THRIFT_IDLE_TIMEOUT="1.5s")
    frame = frame_of("append", 1, event=event("x" * 100, topic=topic))
    s = socket.create_connection(("127.0.0.1", w.thrift_port), timeout=10)
    t0 = time.monotonic()
    sent = 0
    closed_after: float | None = None
    try:
        for byte in frame:  # one byte every 0.4 s: never idle for the 1.5 s idle timeout
            s.sendall(bytes([byte]))
            sent += 1
            time.sleep(0.4)
    except (BrokenPipeError, ConnectionResetError):
        closed_after = time.monotonic() - t0
    if closed_after is None:
        closed_after = time.monotonic() - t0 + seconds_until_closed(s, 1)
    s.close()
    assert sent < len(frame), "the whole frame was accepted"
    assert 1.5 < closed_after < 6, closed_after
    assert "did not arrive whole within 2s" in w.log_tail(200)
    # the call was never answered, nothing of it written; other clients are served
    assert client(w.thrift_port).append(event("normal", topic=topic)) == Status.OK
    assert [r.value for r in read_topic(kafka_up.bootstrap, topic, 1, settle=1.0)] == [b"normal"]


def test_over_max_connections_a_new_connection_is_closed_at_once_and_a_freed_slot_is_reused(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    topic = unique("maxconn")
    w = make_worker(kafka_up.bootstrap, SPILLWAY_SOURCE_THRIFT_MAX_CONNECTIONS="5")
    clients = [client(w.thrift_port) for _ in range(5)]
    for c in clients:
        assert c.append(event("in", topic=topic)) == Status.OK
    for _ in range(3):
        extra = socket.create_connection(("127.0.0.1", w.thrift_port), timeout=10)
        extra.sendall(frame_of("append", 1, event=event("sixth", topic=topic)))
        assert seconds_until_closed(extra, 5) < 1
        extra.close()
    for c in clients:  # the five keep working
        assert c.appendBatch([event("still in", topic=topic)] * 3) == Status.OK
    clients.pop().close()

    def a_new_client_gets_in() -> bool:
        try:
            c = client(w.thrift_port, timeout_ms=5_000)
            ok = c.append(event("reused slot", topic=topic)) == Status.OK
        except Exception:  # closed at once: the slot is not free yet
            return False
        clients.append(c)
        return ok

    wait_until(a_new_client_gets_in, 10, what="a freed slot")
    extra = socket.create_connection(("127.0.0.1", w.thrift_port), timeout=10)
    assert seconds_until_closed(extra, 5) < 1  # full again
    extra.close()
    for c in clients:
        c.close()
    assert len(read_topic(kafka_up.bootstrap, topic, 21, settle=1.0)) == 21
    assert "refusing a connection" in w.log_tail(200)


def test_a_call_over_the_in_flight_limit_per_connection_answers_error(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    topic = unique("inflight")
    w = make_worker(kafka_up.bootstrap, SPILLWAY_SOURCE_THRIFT_MAX_INFLIGHT_EVENTS_PER_CONNECTION="100")
    c = client(w.thrift_port)
    assert c.appendBatch([event("x", topic=topic)] * 101) == Status.ERROR
    assert c.appendBatch([event("y", topic=topic)] * 100) == Status.OK
    assert {r.value for r in read_topic(kafka_up.bootstrap, topic, 100, settle=1.0)} == {b"y"}


def test_a_client_pipelining_frames_without_reading_replies_does_not_grow_server_memory(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    """Calls on a connection are processed one at a time: the server reads the next frame only
    after answering the current one, so 50 pipelined frames of 4 MB each (200 MB) are never
    held at once; the kernel's socket buffers and the stream's 64 KiB limit hold the rest."""
    topic = unique("pipeline")
    w = make_worker(kafka_up.bootstrap)
    assert w.proc is not None
    frames, per_frame, body = 50, 8_000, b"p" * 500
    warm = client(w.thrift_port)
    assert warm.appendBatch([Event(headers={"topic": topic}, body=body)] * per_frame) == Status.OK
    baseline = rss_kb(w.proc.pid)
    frame = frame_of("appendBatch", 7, events=[Event(headers={"topic": topic}, body=body)] * per_frame)
    assert len(frame) > 4_000_000
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(rss_kb(w.proc.pid))  # type: ignore[union-attr]
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    s = socket.create_connection(("127.0.0.1", w.thrift_port), timeout=120)
    try:
        for _ in range(frames):  # no reply is read until every frame is sent
            s.sendall(frame)
        statuses = [read_reply_status(s) for _ in range(frames)]
    finally:
        done.set()
        sampler.join()
        s.close()
    assert statuses == [Status.OK] * frames
    growth_mb = (max(samples) - baseline) / 1024
    print(f"\npipelined {frames} x {len(frame) / 1e6:.1f} MB: RSS baseline {baseline / 1024:.0f} MB, "
          f"max {max(samples) / 1024:.0f} MB (+{growth_mb:.0f} MB), {len(samples)} samples")
    assert growth_mb < 80, f"RSS grew by {growth_mb:.0f} MB for {frames * len(frame) / 1e6:.0f} MB pipelined"
    assert warm.append(event("after", topic=topic)) == Status.OK
