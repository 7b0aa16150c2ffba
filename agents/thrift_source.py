"""Thrift source stage: wire-compatible with Apache Flume's ThriftSource.

Framed transport (a 4-byte big-endian length, then one Thrift message), compact
protocol by default, binary by setting; ``append`` and ``appendBatch`` answer a
``Status``. Each frame is read whole, then decoded in memory by a strict decoder
written for Flume's two calls (:mod:`agents.thrift_codec`), which checks the limits
below as it goes; replies are encoded by thriftpy2.

Bad input never takes the server down: a length prefix over the cap is refused
before anything is allocated, a frame that does not decode closes that connection
(log line + ``spillway_bad_frames_total``), an event over a limit answers ERROR.
Connection hygiene, each a setting: at most ``max_connections`` at once, a
connection silent for ``idle_timeout`` is closed, a frame must arrive whole within
``frame_timeout`` of its first byte (slowloris), replies not read for
``idle_timeout`` close it too; calls on a connection run one at a time (see
``agents.thrift_codec.Codec`` for what that means for ``max_inflight_events_per_connection``).
Optional TLS (``tls_certfile``...), with client certificates when
``tls_verify_client``; the loop does the handshake (within ``frame_timeout``) before a
connection reaches ``_accept``, so a failed handshake is neither counted nor logged here.
Every other closed connection is counted by reason in ``ThriftSource.closed``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from mode import Service

from agents.records import Event
from agents.thrift_codec import (  # noqa: F401 - the codec's names, re-exported for callers
    _SERVICE, Call, Codec, LimitError, Status, ThriftFlumeEvent, flume,
)
from core.errors import ConfigError, FrameError
from core.metrics import Metrics
from core.ratelog import Throttled
from core.settings import ThriftSettings

logger = logging.getLogger(__name__)

#: What the source hands downstream: the events of one call; answers a Status.
Handler = Callable[[Sequence[Event]], Awaitable[int]]

#: Why the server closed a connection (the ``reason`` of ``ThriftSource.closed``).
CLOSE_REASONS: Final = ("client_closed", "bad_frame", "idle_timeout", "frame_timeout", "write_timeout",
                        "max_connections", "shutdown")
TLS_HANDSHAKE_TIMEOUT: Final = 30.0  # when frame_timeout is 0 (off)


# -- TLS ----------------------------------------------------------------------------------------


def server_ssl_context(s: ThriftSettings) -> ssl.SSLContext | None:
    """The TLS context of the source (TLS 1.2 at least), or None for plain TCP."""
    if not s.tls_certfile:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(s.tls_certfile, s.tls_keyfile or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("source.thrift.tls_certfile", f"cannot load the certificate and key: {exc}") from None
    if s.tls_verify_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cafile=s.tls_cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("source.thrift.tls_cafile", f"cannot load the CA certificates: {exc}") from None
    return ctx


# -- the server ---------------------------------------------------------------------------------


class _Hangup(Exception):
    """The server closes a connection for ``reason`` (one of CLOSE_REASONS)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ThriftSource(Service):
    """Listens for Flume clients; hands each call's events to ``handler``."""

    def __init__(self, settings: ThriftSettings, handler: Handler, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.handler = handler
        self.metrics = metrics
        self.codec = Codec(settings.protocol, settings)
        self._server: asyncio.Server | None = None
        self._ssl: ssl.SSLContext | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._throttled = Throttled(logger)
        self._received = metrics.received.labels(source="thrift")
        # A labelled counter of closed connections, when Metrics has one; always counted here.
        self._closed_metric = getattr(metrics, "connections_closed", None)
        #: closed connections by reason (CLOSE_REASONS)
        self.closed: collections.Counter[str] = collections.Counter()
        self.port: int | None = None
        self.listening = False

    async def on_start(self) -> None:
        s = self.settings
        self._ssl = server_ssl_context(s)
        # The loop does TLS from the first byte (``start_tls`` from the connection's task races
        # the loop's first read: uvloop can hand a ClientHello to the plain stream first).
        tls: dict[str, Any] = {} if self._ssl is None else {
            "ssl": self._ssl, "ssl_handshake_timeout": s.frame_timeout or TLS_HANDSHAKE_TIMEOUT}
        self._server = await asyncio.start_server(self._accept, s.host, s.port, backlog=1024, **tls)
        self.port = self._server.sockets[0].getsockname()[1]
        self.listening = True
        mode = "plain TCP" if self._ssl is None else (
            "TLS, client certificates required" if s.tls_verify_client else "TLS")
        logger.info("thrift source listening on %s:%s (%s protocol, %s)", s.host, self.port, s.protocol, mode)

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

    def _count_closed(self, reason: str) -> None:
        self.closed[reason] += 1
        if self._closed_metric is not None:
            self._closed_metric.labels(reason=reason).inc()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        s = self.settings
        if len(self._connections) >= s.max_connections or not self.listening:
            reason = "max_connections" if self.listening else "shutdown"
            self._count_closed(reason)
            self._throttled.log(logging.WARNING, reason, "thrift source: refusing a connection from %s "
                                "(%d open, max %d)", writer.get_extra_info("peername"), len(self._connections),
                                s.max_connections)
            writer.close()
            return
        self._connections[task] = writer
        self.metrics.connections.inc()
        peer = writer.get_extra_info("peername")
        reason = "client_closed"
        try:
            await self._serve(reader, writer)
        except _Hangup as exc:
            reason = exc.reason
            self._throttled.log(logging.INFO if reason == "idle_timeout" else logging.WARNING, reason,
                                "thrift source: closing connection from %s: %s", peer, exc)
        except FrameError as exc:
            reason = "bad_frame"
            self.metrics.bad_frames.inc()
            self._throttled.log(logging.WARNING, reason, "thrift source: closing connection from %s: %s",
                                peer, exc)
        except (asyncio.IncompleteReadError, OSError):
            pass  # the client went away: nothing was acknowledged for a partial call
        finally:
            if reason == "client_closed" and not self.listening:
                reason = "shutdown"
            self._count_closed(reason)
            self._connections.pop(task, None)
            self.metrics.connections.dec()
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes:
        """The next frame: ``idle_timeout`` to its first byte, then ``frame_timeout`` to its last."""
        s = self.settings
        phase = "idle_timeout"
        try:
            async with asyncio.timeout(s.idle_timeout or None) as deadline:
                head = await reader.readexactly(1)
                phase = "frame_timeout"
                deadline.reschedule(asyncio.get_running_loop().time() + s.frame_timeout if s.frame_timeout
                                    else None)
                head += await reader.readexactly(3)
                size = int.from_bytes(head, "big", signed=True)
                if size <= 0 or size > s.max_frame_bytes:
                    raise FrameError(f"frame length {size} outside 1..{s.max_frame_bytes}")
                return await reader.readexactly(size)
        except TimeoutError:
            if phase == "idle_timeout":
                raise _Hangup(phase, f"no call for {s.idle_timeout:g}s") from None
            raise _Hangup(phase, f"a frame did not arrive whole within {s.frame_timeout:g}s") from None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        idle = self.settings.idle_timeout or None
        while self.listening:
            frame = await self._read_frame(reader)
            call = self.codec.decode(frame)
            del frame
            status = await self.answer(call)
            writer.write(self.codec.reply(call, status))
            try:
                async with asyncio.timeout(idle):
                    await writer.drain()
            except TimeoutError:
                raise _Hangup("write_timeout", f"replies not read for {idle:g}s") from None

    async def answer(self, call: Call) -> int:
        """The Status for one call: ERROR if over a limit, else the handler's."""
        events = call.events
        self._received.inc(len(events))
        if call.refused is not None:
            exc = call.refused
            self.metrics.refused.labels(reason=exc.reason).inc(len(events))
            self._throttled.log(logging.WARNING, exc.reason, "thrift source: ERROR for a call: %s", exc)
            return Status.ERROR
        if not events:
            return Status.OK
        return await self.handler(events)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
