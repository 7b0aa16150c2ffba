"""``spillway send``: a Flume-protocol test client (generated events or JSON lines).

Speaks exactly what Flume's ``ThriftRpcClient`` speaks (framed transport, compact or
binary protocol, ``append`` for batches of one, ``appendBatch`` otherwise), so it
works against spillway or a Flume agent. Prints each call's ``Status``.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import IO, Any

import click
from faust.cli import option
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TException
from thriftpy2.transport import TFramedTransportFactory

from agents.thrift_source import flume
from topology.app import app
from topology.commands.base import SpillwayCommand
from topology.commands.core import EXIT_OK, EXIT_PARTIAL, CommandError, generated_event, parse_event_line

Event = tuple[dict[str, str], bytes]
STATUS_NAMES: dict[int, str] = dict(flume.Status._VALUES_TO_NAMES)


def file_events(stream: IO[bytes], topic_header: str, topic: str | None) -> Iterator[Event]:
    """JSON lines → events; ``topic`` fills in the topic header where a line has none."""
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        headers, body = parse_event_line(line, lineno)
        if topic and topic_header not in headers:
            headers[topic_header] = topic
        yield headers, body


def batches(events: Iterable[Event], size: int) -> Iterator[list[Event]]:
    batch: list[Event] = []
    for ev in events:
        batch.append(ev)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class Client:
    """One framed Thrift connection to a ThriftSource; blocking (run it in a thread)."""

    def __init__(self, host: str, port: int, protocol: str, timeout: float) -> None:
        factory = TCompactProtocolFactory() if protocol == "compact" else TBinaryProtocolFactory()
        self.where = f"{host}:{port} ({protocol})"
        try:
            self.client: Any = make_client(flume.ThriftSourceProtocol, host, port, proto_factory=factory,
                                           trans_factory=TFramedTransportFactory(), timeout=int(timeout * 1000))
        except (TException, OSError) as exc:
            raise CommandError(f"cannot connect to {self.where}: {exc}", EXIT_PARTIAL) from None

    def call(self, events: list[Event]) -> int:
        evs = [flume.ThriftFlumeEvent(headers=h, body=b) for h, b in events]
        return int(self.client.append(evs[0]) if len(evs) == 1 else self.client.appendBatch(evs))

    def close(self) -> None:
        self.client.close()


def run_calls(cmd: SpillwayCommand, client: Client, events: Iterable[Event], batch: int,
              stop: threading.Event) -> dict[str, int]:
    """Send ``events`` in calls of ``batch`` until done or ``stop``; print each call; count calls per status."""
    counts = {"OK": 0, "FAILED": 0, "ERROR": 0, "NO ANSWER": 0}
    sent = 0
    try:
        for n, chunk in enumerate(batches(events, batch), 1):
            if stop.is_set():
                break
            try:
                status = STATUS_NAMES.get(client.call(chunk), "UNKNOWN")
            except (TException, OSError) as exc:
                counts["NO ANSWER"] += 1
                cmd.out(f"call {n}: {len(chunk)} event(s) NO ANSWER ({exc or type(exc).__name__})")
                break
            counts[status] = counts.get(status, 0) + 1
            sent += len(chunk) if status == "OK" else 0
            cmd.out(f"call {n}: {len(chunk)} event(s) {status}")
    finally:
        calls = sum(counts.values())
        cmd.out(f"send: {calls} call(s) to {client.where}, {sent} event(s) acknowledged; "
                + ", ".join(f"{k} {v}" for k, v in counts.items() if v or k == "OK"))
    return counts


def open_input(file: str) -> IO[bytes]:
    if file == "-":
        return sys.stdin.buffer
    try:
        return open(file, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise CommandError(f"--file: {exc}") from None


@app.command(
    option("--host", default=None, help="Source host (default: source.thrift.host; 0.0.0.0 means this machine)."),
    option("--port", type=click.IntRange(1, 65535), default=None, help="Source port (default: source.thrift.port)."),
    option("--protocol", type=click.Choice(["compact", "binary"]), default=None,
           help="Thrift protocol (default: source.thrift.protocol)."),
    option("--count", type=click.IntRange(min=1), default=None,
           help="Generate this many events (default 1 when no --file)."),
    option("--batch", type=click.IntRange(min=1), default=100, help="Events per call (1: append, else appendBatch)."),
    option("--topic", default=None, help="Topic header of generated events (and of file lines without one)."),
    option("--size", type=click.IntRange(min=0), default=100, help="Body bytes of each generated event."),
    option("--file", "file", default=None,
           help='JSON lines {"headers": {...}, "body": "text"} (or "body_base64"); "-" reads stdin.'),
    option("--timeout", "call_timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
           help="Seconds to wait for each call's answer."),
    base=SpillwayCommand,
)
async def send(self: SpillwayCommand, host: str | None, port: int | None, protocol: str | None, count: int | None,
               batch: int, topic: str | None, size: int, file: str | None, call_timeout: float) -> int:
    """Send events to a Flume ThriftSource (spillway's or Flume's) and print each call's status.

    Generates --count events, or reads JSON lines from --file PATH (PATH "-" is
    stdin), and sends them in calls of --batch events. Prints OK, FAILED,
    ERROR (or NO ANSWER) for each call, then a summary. Exit code: 0 only if
    every call answered OK, 1 otherwise, 2 for bad arguments or input.
    """
    if count is not None and file is not None:
        raise CommandError("give --count or --file, not both")
    from topology.app import config_error, settings

    if config_error is not None and (host is None or port is None or protocol is None):
        self.settings()  # a default is needed from an invalid configuration: say so
    thrift = settings.source.thrift
    topic_header = settings.router.topic_header
    host = host or thrift.host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    port = port or thrift.port
    protocol = protocol or thrift.protocol
    stream = open_input(file) if file is not None else None
    events: Iterable[Event] = (
        file_events(stream, topic_header, topic) if stream is not None
        else (generated_event(i, size, topic_header, topic) for i in range(count or 1)))

    stop = threading.Event()

    def work() -> dict[str, int]:
        client = Client(host, port, protocol, call_timeout)
        try:
            return run_calls(self, client, events, batch, stop)
        finally:
            client.close()
            if stream is not None and stream is not sys.stdin.buffer:
                stream.close()

    try:
        counts = await asyncio.to_thread(work)
    except asyncio.CancelledError:  # Ctrl-C: the thread stops after the call in flight
        stop.set()
        raise
    return EXIT_OK if sum(counts.values()) == counts["OK"] else EXIT_PARTIAL
