"""Thrift source stage: wire-compatible with Apache Flume's ThriftSource.

Framed transport (a 4-byte big-endian length, then one Thrift message), compact
protocol by default, binary by setting; ``append`` and ``appendBatch`` answer a
``Status``. Each frame is read whole and decoded in memory with thriftpy2's
synchronous protocols (much faster than its asyncio protocols, see DESIGN).

Bad input never takes the server down: a length prefix over the cap is refused
before anything is allocated, a frame that does not decode closes that connection
(log line + ``spillway_bad_frames_total``), an event over a limit answers ERROR.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import thriftpy2
from mode import Service
from thriftpy2.protocol.binary import TBinaryProtocol
from thriftpy2.protocol.compact import TCompactProtocol
from thriftpy2.thrift import TMessageType

from topology.errors import FrameError, SourceError
from topology.metrics import Metrics
from topology.ratelog import Throttled
from topology.settings import ThriftSettings

logger = logging.getLogger(__name__)
flume = thriftpy2.load(str(Path(__file__).with_name("flume.thrift")), module_name="flume_thrift")
Status = flume.Status
ThriftFlumeEvent = flume.ThriftFlumeEvent
_SERVICE = flume.ThriftSourceProtocol
_METHODS = {"append", "appendBatch"}

#: What the source hands downstream: the events of one call; answers a Status.
Handler = Callable[[Sequence[Any]], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    seqid: int
    events: list[Any]


class FrameBuffer:
    """An in-memory transport that refuses to read past the frame.

    thriftpy2's own memory buffers return short reads silently (and its Cython
    binary protocol then mallocs whatever length the bytes claim); here a length
    is checked against the bytes actually left before anything is allocated.
    """

    __slots__ = ("_data", "_pos", "_out")

    def __init__(self, data: bytes = b"") -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._out: list[bytes] = []

    def read(self, size: int) -> bytes:
        end = self._pos + size
        if size < 0 or end > len(self._data):
            raise FrameError(f"a field claims {size} bytes, {len(self._data) - self._pos} are left in the frame")
        chunk = self._data[self._pos:end].tobytes()
        self._pos = end
        return chunk

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def write(self, data: bytes) -> None:
        self._out.append(bytes(data))

    def flush(self) -> None:
        pass

    def getvalue(self) -> bytes:
        return b"".join(self._out)


class Codec:
    """Decodes one framed call and encodes its reply, all in memory."""

    def __init__(self, protocol: str) -> None:
        self.protocol_class = TCompactProtocol if protocol == "compact" else TBinaryProtocol

    def decode(self, frame: bytes) -> Call:
        buf = FrameBuffer(frame)
        proto = self.protocol_class(buf)
        try:
            name, mtype, seqid = proto.read_message_begin()
            if mtype != TMessageType.CALL or name not in _METHODS:
                raise FrameError(f"unknown call {name!r} (type {mtype})")
            args = getattr(_SERVICE, name + "_args")()
            proto.read_struct(args)
            if buf.remaining:
                raise FrameError(f"{buf.remaining} bytes left over after the call")
        except FrameError:
            raise
        except Exception as exc:  # thriftpy2 raises many kinds on garbage; all mean the same here
            raise FrameError(f"frame does not decode: {type(exc).__name__}: {exc}") from exc
        if name == "append":
            events = [] if args.event is None else [args.event]
        else:
            events = args.events or []
        return Call(name, seqid, events)

    def reply(self, call: Call, status: int) -> bytes:
        buf = FrameBuffer()
        proto = self.protocol_class(buf)
        proto.write_message_begin(call.name, TMessageType.REPLY, call.seqid)
        proto.write_struct(getattr(_SERVICE, call.name + "_result")(success=status))
        proto.write_message_end()
        body = buf.getvalue()
        return len(body).to_bytes(4, "big") + body


class LimitError(SourceError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_limits(events: Sequence[Any], s: ThriftSettings) -> None:
    """Raise LimitError for a batch or an event over the configured limits."""
    if len(events) > s.max_batch_events:
        raise LimitError("batch_too_large", f"{len(events)} events in one call (max {s.max_batch_events})")
    for event in events:
        headers = event.headers or {}
        if len(headers) > s.max_headers:
            raise LimitError("too_many_headers", f"{len(headers)} headers (max {s.max_headers})")
        header_bytes = sum(len(k) + len(v) for k, v in headers.items())
        if header_bytes > s.max_header_bytes:
            raise LimitError("headers_too_large", f"{header_bytes} header bytes (max {s.max_header_bytes})")
        if header_bytes + len(event.body or b"") > s.max_event_bytes:
            raise LimitError("event_too_large", f"event of {header_bytes + len(event.body or b'')} bytes "
                             f"(max {s.max_event_bytes})")


class ThriftSource(Service):
    """Listens for Flume clients; hands each call's events to ``handler``."""

    def __init__(self, settings: ThriftSettings, handler: Handler, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.handler = handler
        self.metrics = metrics
        self.codec = Codec(settings.protocol)
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._throttled = Throttled(logger)
        self._received = metrics.received.labels(source="thrift")
        self.port: int | None = None
        self.listening = False

    async def on_start(self) -> None:
        s = self.settings
        self._server = await asyncio.start_server(self._accept, s.host, s.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        self.listening = True
        logger.info("thrift source listening on %s:%s (%s protocol)", s.host, self.port, s.protocol)

    async def stop_intake(self) -> None:
        """Stop accepting connections and new calls; calls already read finish and are answered."""
        self.listening = False
        if self._server is not None:
            self._server.close()

    async def on_stop(self) -> None:
        await self.stop_intake()
        # Closing a connection ends its read; a call already read is answered first.
        for writer in list(self._connections.values()):
            writer.transport.abort()
        if self._connections:
            _, pending = await asyncio.wait(list(self._connections), timeout=10)
            for task in pending:
                task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.settings.max_connections or not self.listening:
            self._throttled.log(logging.WARNING, "max_conn", "thrift source: refusing a connection "
                                "(%d open, max %d)", len(self._connections), self.settings.max_connections)
            writer.close()
            return
        self._connections[task] = writer
        self.metrics.connections.inc()
        peer = writer.get_extra_info("peername")
        try:
            await self._serve(reader, writer, peer)
        except FrameError as exc:
            self.metrics.bad_frames.inc()
            self._throttled.log(logging.WARNING, "bad_frame", "thrift source: closing connection from %s: %s",
                                peer, exc)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the client went away (or sat idle): nothing was acknowledged for a partial call
        finally:
            self._connections.pop(task, None)
            self.metrics.connections.dec()
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Any) -> None:
        s = self.settings
        idle = s.idle_timeout or None
        while self.listening:
            async with asyncio.timeout(idle):
                head = await reader.readexactly(4)
            size = int.from_bytes(head, "big", signed=True)
            if size <= 0 or size > s.max_frame_bytes:
                raise FrameError(f"frame length {size} outside 1..{s.max_frame_bytes}")
            async with asyncio.timeout(idle):
                frame = await reader.readexactly(size)
            call = self.codec.decode(frame)
            del frame
            status = await self.answer(call.events)
            writer.write(self.codec.reply(call, status))
            await writer.drain()

    async def answer(self, events: Sequence[Any]) -> int:
        """The Status for one call: checks limits, then asks the handler."""
        self._received.inc(len(events))
        try:
            check_limits(events, self.settings)
        except LimitError as exc:
            self.metrics.refused.labels(reason=exc.reason).inc(len(events))
            self._throttled.log(logging.WARNING, exc.reason, "thrift source: ERROR for a call: %s", exc)
            return Status.ERROR
        if not events:
            return Status.OK
        return await self.handler(events)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
