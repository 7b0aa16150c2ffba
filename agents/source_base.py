"""What every socket source shares: the listener, connection limits, timeouts, TLS, the
submit-and-await-reply path to the pipeline, and the count of closed connections.

A source is a mode ``Service`` owning its listening socket (:class:`StreamSource`); a
subclass gives its ``name`` (the ``source`` label of the metrics) and ``_serve``, the loop
of one connection: read a call, hand its events to the pipeline (:meth:`StreamSource.submit`),
write the reply. Each setting below comes from the source's own section
(``[source.thrift]``, ``[source.avro]``):

- at most ``max_connections`` at once; one more is closed at once (counted, logged);
- a connection silent for ``idle_timeout`` is closed, a call must arrive whole within
  ``frame_timeout`` of its first byte (slowloris), replies not read for ``idle_timeout``
  close it too (:meth:`StreamSource._read_call`, :meth:`StreamSource._send`);
- optional TLS (``tls_certfile``...), with client certificates when ``tls_verify_client``;
  the loop does the handshake (within ``frame_timeout``) before a connection reaches
  ``_accept``, so a failed handshake is neither counted nor logged here.

Every other closed connection is counted by reason in ``StreamSource.closed`` and in
``spillway_source_connections_closed_total{source,reason}``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Final, Protocol, TypeVar

from mode import Service

from agents.records import Event
from core.errors import ConfigError, FrameError
from core.metrics import Metrics
from core.ratelog import Throttled

logger = logging.getLogger(__name__)

#: What a source hands downstream: the events of one call; answers a (Thrift) Status.
Handler = Callable[[Sequence[Event]], Awaitable[int]]

#: Why the server closed a connection (the ``reason`` of ``StreamSource.closed``).
CLOSE_REASONS: Final = ("client_closed", "bad_frame", "idle_timeout", "frame_timeout", "write_timeout",
                        "max_connections", "shutdown", "handshake")
TLS_HANDSHAKE_TIMEOUT: Final = 30.0  # when frame_timeout is 0 (off)

T = TypeVar("T")


class TlsSettings(Protocol):
    """The TLS keys of every source's section."""

    @property
    def tls_certfile(self) -> str: ...
    @property
    def tls_keyfile(self) -> str: ...
    @property
    def tls_cafile(self) -> str: ...
    @property
    def tls_verify_client(self) -> bool: ...


class ListenerSettings(TlsSettings, Protocol):
    """The keys every socket source's section has: its TLS keys and these."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def idle_timeout(self) -> float: ...
    @property
    def frame_timeout(self) -> float: ...


# -- TLS ----------------------------------------------------------------------------------------


def server_ssl_context(s: TlsSettings, section: str = "source.thrift") -> ssl.SSLContext | None:
    """The TLS context of a source (TLS 1.2 at least), or None for plain TCP; errors name
    the key in ``section``."""
    if not s.tls_certfile:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(s.tls_certfile, s.tls_keyfile or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{section}.tls_certfile", f"cannot load the certificate and key: {exc}") from None
    if s.tls_verify_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cafile=s.tls_cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{section}.tls_cafile", f"cannot load the CA certificates: {exc}") from None
    return ctx


# -- the server ---------------------------------------------------------------------------------


class Hangup(Exception):
    """The server closes a connection for ``reason`` (one of CLOSE_REASONS)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConnectionCounts:
    """What every source counts of its connections: those open (``open_gauge``, the
    ``spillway_source_connections`` gauge) and those the server closed, by reason
    (CLOSE_REASONS), in ``closed`` (for /status) and in
    ``spillway_source_connections_closed_total{source,reason}``."""

    name: ClassVar[str]
    metrics: Metrics

    def _init_counts(self) -> None:
        self.open_gauge = self.metrics.connections.labels(source=self.name)
        #: closed connections by reason (CLOSE_REASONS)
        self.closed: collections.Counter[str] = collections.Counter()

    def count_closed(self, reason: str) -> None:
        self.closed[reason] += 1
        self.metrics.connections_closed.labels(source=self.name, reason=reason).inc()


class StreamSource(ConnectionCounts, Service):
    """Listens for clients of one protocol; hands each call's events to ``handler``."""

    #: the ``source`` label of the metrics and the name in /status and the logs
    name: ClassVar[str] = "source"
    #: the settings section, for error messages
    section: ClassVar[str] = "source"

    def __init__(self, settings: Any, handler: Handler, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.handler = handler
        self.metrics = metrics
        self._server: asyncio.Server | None = None
        self._ssl: ssl.SSLContext | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._throttled = Throttled(logging.getLogger(type(self).__module__))
        label = self.name
        self._received = metrics.received.labels(source=label)
        self._bad_frames = metrics.bad_frames.labels(source=label)
        self._init_counts()
        self.port: int | None = None
        self.listening = False

    # -- lifecycle --------------------------------------------------------------------------------

    def _listen_ssl(self) -> ssl.SSLContext | None:
        """The context the listener itself does TLS with (a subclass may do TLS elsewhere)."""
        return self._ssl

    def describe(self) -> str:
        """What the start-up log line says of this source, after ``listening on host:port``."""
        s = self.settings
        return "plain TCP" if self._ssl is None else (
            "TLS, client certificates required" if s.tls_verify_client else "TLS")

    async def on_start(self) -> None:
        s = self.settings
        self._ssl = server_ssl_context(s, self.section)
        listen_ssl = self._listen_ssl()
        # The loop does TLS from the first byte (``start_tls`` from the connection's task races
        # the loop's first read: uvloop can hand a ClientHello to the plain stream first).
        tls: dict[str, Any] = {} if listen_ssl is None else {
            "ssl": listen_ssl, "ssl_handshake_timeout": s.frame_timeout or TLS_HANDSHAKE_TIMEOUT}
        # reuse_port: several worker processes of one node share the port (node.processes)
        self._server = await asyncio.start_server(self._accept, s.host, s.port, backlog=1024,
                                                  reuse_port=getattr(s, "reuse_port", False) or None, **tls)
        self.port = self._server.sockets[0].getsockname()[1]
        self.listening = True
        logger.info("%s source listening on %s:%s (%s)", self.name, s.host, self.port, self.describe())

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

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    # -- one connection ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        s = self.settings
        name = self.name
        if len(self._connections) >= s.max_connections or not self.listening:
            reason = "max_connections" if self.listening else "shutdown"
            self.count_closed(reason)
            self._throttled.log(logging.WARNING, reason, "%s source: refusing a connection from %s "
                                "(%d open, max %d)", name, writer.get_extra_info("peername"),
                                len(self._connections), s.max_connections)
            writer.close()
            return
        self._connections[task] = writer
        self.open_gauge.inc()
        peer = writer.get_extra_info("peername")
        reason = "client_closed"
        try:
            await self._serve(reader, writer)
        except Hangup as exc:
            reason = exc.reason
            self._throttled.log(logging.INFO if reason == "idle_timeout" else logging.WARNING, reason,
                                "%s source: closing connection from %s: %s", name, peer, exc)
        except FrameError as exc:
            reason = "bad_frame"
            self._bad_frames.inc()
            self._throttled.log(logging.WARNING, reason, "%s source: closing connection from %s: %s",
                                name, peer, exc)
        except (asyncio.IncompleteReadError, OSError):
            pass  # the client went away: nothing was acknowledged for a partial call
        finally:
            if reason == "client_closed" and not self.listening:
                reason = "shutdown"
            self.count_closed(reason)
            self._connections.pop(task, None)
            self.open_gauge.dec()
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _read_call(self, first: Callable[[], Awaitable[bytes]], rest: Callable[[bytes], Awaitable[T]]) -> T:
        """The next call: ``idle_timeout`` for ``first()`` (its first byte), then
        ``frame_timeout`` for ``rest(first bytes)`` (the rest of it)."""
        s = self.settings
        phase = "idle_timeout"
        try:
            async with asyncio.timeout(s.idle_timeout or None) as deadline:
                head = await first()
                phase = "frame_timeout"
                deadline.reschedule(asyncio.get_running_loop().time() + s.frame_timeout if s.frame_timeout
                                    else None)
                return await rest(head)
        except TimeoutError:
            if phase == "idle_timeout":
                raise Hangup(phase, f"no call for {s.idle_timeout:g}s") from None
            raise Hangup(phase, f"a frame did not arrive whole within {s.frame_timeout:g}s") from None

    async def _send(self, writer: Any, data: bytes) -> None:
        """Writes a reply; a client that does not read it for ``idle_timeout`` is cut."""
        writer.write(data)
        if not writer.transport.get_write_buffer_size():
            return  # the socket took it all: nothing to wait for (the usual case)
        idle = self.settings.idle_timeout or None
        try:
            async with asyncio.timeout(idle):
                await writer.drain()
        except TimeoutError:
            raise Hangup("write_timeout", f"replies not read for {idle:g}s") from None

    # -- to the pipeline --------------------------------------------------------------------------

    async def submit(self, events: Sequence[Event]) -> int:
        """Hands one call's events to the pipeline; its Status once they are durable (or not)."""
        self._received.inc(len(events))
        if not events:
            return 0  # Status.OK: nothing to make durable
        return await self.handler(events)

    def refuse(self, n: int, reason: str, exc: Exception) -> None:
        """Counts and logs (rate-limited) a call over a limit, answered without reaching the pipeline."""
        self._received.inc(n)
        self.metrics.refused.labels(reason=reason).inc(n)
        self._throttled.log(logging.WARNING, reason, "%s source: refusing a call: %s", self.name, exc)
