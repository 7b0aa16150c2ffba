"""Test helpers: a real spillway worker process, a Flume Thrift client, a Kafka reader, a TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.transport import TFramedTransportFactory

ROOT = Path(__file__).resolve().parent.parent
flume = thriftpy2.load(str(ROOT / "agents" / "flume.thrift"), module_name="flume_client_thrift")
Status = flume.Status
Event = flume.ThriftFlumeEvent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def event(body: bytes | str, **headers: str) -> Any:
    return Event(headers=headers, body=body.encode() if isinstance(body, str) else body)


def client(port: int, protocol: str = "compact", timeout_ms: int = 30_000) -> Any:
    factory = TCompactProtocolFactory() if protocol == "compact" else TBinaryProtocolFactory()
    return make_client(flume.ThriftSourceProtocol, "127.0.0.1", port, proto_factory=factory,
                       trans_factory=TFramedTransportFactory(), timeout=timeout_ms)


@dataclass
class Worker:
    """A real spillway worker process (``python -m topology.cli worker``)."""

    directory: Path
    bootstrap: str
    env_extra: dict[str, str] = field(default_factory=dict)
    thrift_port: int = field(default_factory=free_port)
    web_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    #: after ``worker`` (e.g. ``["--processes", "2"]``)
    args: list[str] = field(default_factory=list)

    @property
    def buffer_dir(self) -> Path:
        return self.directory / "buffer"

    @property
    def log_path(self) -> Path:
        return self.directory / "worker.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "SPILLWAY_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "SPILLWAY_SOURCE_THRIFT_HOST": "127.0.0.1",
            "SPILLWAY_SOURCE_THRIFT_PORT": str(self.thrift_port),
            "SPILLWAY_WEB_PORT": str(self.web_port),
            "SPILLWAY_BUFFER_DIRECTORY": str(self.buffer_dir),
            "SPILLWAY_DRAIN_ARCHIVE_DIRECTORY": str(self.directory / "archive"),
            "SPILLWAY_FAILOVER_TIMEOUT": "3s",
            "SPILLWAY_FAILOVER_MAX_PENALTY": "2s",
            "SPILLWAY_KAFKA_REQUEST_TIMEOUT": "3s",
            "SPILLWAY_DRAIN_INTERVAL": "0.5s",
        })
        env.update(self.env_extra)
        return env

    def start(self, timeout: float = 60.0) -> Worker:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "topology.cli", "--datadir", str(self.directory / "faust"),
             "--loglevel", "info", "worker", *self.args],
            cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                if self.get("/ready").get("ready"):
                    return self
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready in {timeout}s:\n{self.log_tail()}")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()

    def status(self) -> Any:
        return self.get("/status")

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 60.0,
               settle: float = 0.0) -> list[Any]:
    """Every record of ``topic`` from the beginning: stops at ``expected`` records (then waits
    ``settle`` seconds for extra ones) or at the timeout."""
    from aiokafka import AIOKafkaConsumer

    async def run() -> list[Any]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=None, isolation_level="read_committed")
        await consumer.start()
        out: list[Any] = []
        try:
            deadline = time.monotonic() + timeout
            settle_until: float | None = None
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    out.extend(records)
                if len(out) >= expected:
                    if settle_until is None:
                        settle_until = time.monotonic() + settle
                    if time.monotonic() >= settle_until:
                        break
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


def create_topics(bootstrap: str, *topics: str, partitions: int = 3, config: dict[str, str] | None = None) -> None:
    """Create topics with Kafka's admin API (for a broker with auto-create off)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(t, partitions, 1, topic_configs=config or {}) for t in topics])
        finally:
            await admin.close()

    asyncio.run(run())


class TcpProxy:
    """A TCP proxy on loopback, run in a thread, that can pass, cut or stall its connections."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.mode = "pass"  # pass | stall | slow | cut
        self.delay = 0.3
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close_all(stop=True), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _close_all(self, stop: bool = False) -> None:
        if stop and self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            writer.close()
            return
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    # hold the bytes while stalled: the peer sees silence (the proxy polls its mode)
                    while self.mode == "stall":  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                    if self.mode == "slow":  # a congested link: every chunk arrives late
                        await asyncio.sleep(self.delay)
                    if self.mode == "cut":
                        break
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """Close every connection and refuse new ones."""
        self.mode = "cut"
        asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(5)

    def stall(self) -> None:
        """Keep connections open and accept new ones, but pass no bytes."""
        self.mode = "stall"

    def slow(self, delay: float = 0.3) -> None:
        """Pass bytes, each chunk ``delay`` seconds late."""
        self.delay = delay
        self.mode = "slow"

    def restore(self) -> None:
        self.mode = "pass"


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


def wait_until(pred: Any, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


@dataclass
class CallResult:
    started: float
    latency: float
    status: int | None  # None: the connection failed (not acknowledged)
    events: list[tuple[str, bytes, bytes]]  # (topic, key, body)


class Load:
    """Several Flume clients in threads sending appendBatch over several topics until stopped.

    Every event body is unique, so an oracle can check each acknowledged one in Kafka."""

    def __init__(self, port: int, topics: list[str], clients: int = 4, batch: int = 50,
                 pause: float = 0.0, body_bytes: int = 64) -> None:
        self.port, self.topics, self.clients, self.batch = port, topics, clients, batch
        self.pause, self.body_bytes = pause, body_bytes
        self.results: list[CallResult] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _run(self, n: int) -> None:
        c = None
        seq = 0
        while not self._stop.is_set():
            if c is None:
                try:
                    c = client(self.port, timeout_ms=30_000)
                except Exception:
                    time.sleep(0.2)
                    continue
            evs = []
            for _ in range(self.batch):
                topic = self.topics[seq % len(self.topics)]
                key = f"k{seq % 13}".encode()
                body = f"c{n}-{seq}-".encode().ljust(self.body_bytes, b".")
                evs.append((topic, key, body))
                seq += 1
            t0 = time.monotonic()
            try:
                status = c.appendBatch([Event(headers={"topic": t, "key": k.decode(), "src": f"c{n}"}, body=b)
                                        for t, k, b in evs])
            except Exception:
                status = None
                with contextlib.suppress(Exception):
                    c.close()
                c = None
            with self._lock:
                self.results.append(CallResult(t0, time.monotonic() - t0, status, evs))
            if self.pause:
                time.sleep(self.pause)
        if c is not None:
            c.close()

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> Load:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return self

    def acked(self) -> dict[bytes, tuple[str, bytes]]:
        """body -> (topic, key) of every event whose call was answered OK."""
        return {b: (t, k) for r in self.results if r.status == Status.OK for t, k, b in r.events}

    def statuses(self) -> dict[Any, int]:
        out: dict[Any, int] = {}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out


def check_all_in_kafka(bootstrap: str, acked: dict[bytes, tuple[str, bytes]], timeout: float = 90.0) -> dict[str, int]:
    """The oracle: every acknowledged event is in the topic its header named, with its key and
    headers. Returns counts: expected, found, duplicates."""
    by_topic: dict[str, int] = {}
    for t, _ in acked.values():
        by_topic[t] = by_topic.get(t, 0) + 1
    seen: dict[bytes, int] = {}
    for topic, n in by_topic.items():
        for rec in read_topic(bootstrap, topic, n, timeout=timeout, settle=1.0):
            seen[rec.value] = seen.get(rec.value, 0) + 1
            if rec.value in acked:
                want_topic, want_key = acked[rec.value]
                assert rec.topic == want_topic and rec.key == want_key, rec
                assert dict(rec.headers)["topic"] == want_topic.encode()
    missing = [b for b in acked if b not in seen]
    assert not missing, f"{len(missing)} acknowledged events missing from Kafka, e.g. {missing[:3]}"
    return {"expected": len(acked), "found": len(seen), "duplicates": sum(v - 1 for v in seen.values())}


# -- the status page in Debian's headless chromium (scripts/install-chromium.sh) ------------------

CHROMIUM = Path("/usr/bin/chromium")


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run scripts/install-chromium.sh (as root)"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,900",
           "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, timeout=90, check=False)


def render(w: Worker, out: Path, name: str) -> tuple[str, Path]:
    """The page's DOM after its scripts ran for five (virtual) seconds, and a screenshot of it."""
    png = out / f"{name}.png"
    run = chromium(out / f"{name}-profile", "--enable-logging=stderr", f"--screenshot={png}", "--dump-dom",
                   f"http://127.0.0.1:{w.web_port}/")
    log = run.stderr.decode(errors="replace")
    assert run.returncode == 0, log[-2000:]
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line], console
    print(f"\nstatus page screenshot ({name}): {png}")
    return run.stdout.decode(), png


def text_of(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert m, f"no element #{element_id} in the rendered page"
    return m.group(1).strip()
