"""HTTP source stage: compatible with Apache Flume's HTTPSource and its JSONHandler.

``POST`` to ``path`` a JSON array of ``{"headers": {...}, "body": "..."}``, as Flume's
JSONHandler reads it: the body is text in the request's charset (UTF-8 by default), and
its bytes in that charset become the event's body. Also what senders without Flume use:
``Content-Type: application/x-ndjson`` (one event object per line) and
``Content-Encoding: gzip``.

Replies, the delivery contract in HTTP:

- ``200`` only once every event of the request is durable (Kafka ``acks=all`` or the
  fsynced disk buffer), with ``{"accepted": n}``;
- ``400`` with ``{"error": "..."}`` for malformed JSON, a refused topic or a limit;
- ``503`` with ``Retry-After`` when the call would answer ``FAILED`` (nothing made durable);
- ``413`` over ``max_body_bytes`` (before or after inflating), ``415`` for an encoding or
  charset we do not read, ``408`` for a body that does not arrive within ``frame_timeout``.

It listens on its own port (never the operations web port), on aiohttp, the server Faust's
web views run on. At most ``max_connections`` are open at once: one more is closed at once
(counted in ``spillway_source_connections_closed_total``, logged), aiohttp having no such cap.
A request's line and headers must arrive whole within ``idle_timeout`` of the connection
opening or of the previous reply: aiohttp's keep-alive timer, which a sender trickling
bytes does not reset (measured: cut at 2.1 s with a 2 s timeout).
Inflating is ours (aiohttp's own is off): bounded by ``max_body_bytes``
whatever the compressed bytes claim. Optional TLS as every source has it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import zlib
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final

import orjson
from aiohttp import web
from mode import Service

from agents.records import Event
from agents.source_base import ConnectionCounts, Handler, server_ssl_context
from agents.thrift_codec import Status
from core.metrics import Metrics
from core.ratelog import Throttled
from core.settings import HttpSettings

logger = logging.getLogger(__name__)

NDJSON: Final = frozenset(("application/x-ndjson", "application/ndjson", "application/jsonl",
                           "application/x-jsonlines"))
_READ_STEP: Final = 65_536


class _Guard(asyncio.Protocol):
    """One connection: aiohttp's protocol for it, behind the source's connection cap."""

    def __init__(self, source: HttpSource, make: Callable[[], asyncio.Protocol]) -> None:
        self.source = source
        self.make = make
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self.transport = transport
        src = self.source
        if len(src.guards) >= src.settings.max_connections or not src.listening:
            reason = "max_connections" if src.listening else "shutdown"
            src.count_closed(reason)
            src.throttled.log(logging.WARNING, reason, "http source: refusing a connection from %s (%d open, max %d)",
                              transport.get_extra_info("peername"), len(src.guards), src.settings.max_connections)
            transport.close()
            return
        src.guards[transport] = self
        src.open_gauge.inc()
        self.inner = self.make()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is None:
            return
        if self.source.guards.pop(self.transport, None) is not None:  # type: ignore[arg-type]
            self.source.open_gauge.dec()
        self.inner.connection_lost(exc)


class BadRequest(Exception):
    """A request answered 4xx: ``status``, ``reason`` (the refusal metric's label) and a message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


# -- pure: body -> events -----------------------------------------------------------------------


def inflate(body: bytes, limit: int) -> bytes:
    """A gzip body inflated, never past ``limit`` bytes (413 beyond it; 400 if it is not gzip)."""
    z = zlib.decompressobj(wbits=31)
    try:
        out = z.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(400, "bad_encoding", f"the body is not gzip: {exc}") from None
    if len(out) > limit:
        raise BadRequest(413, "too_large", f"the body inflates past {limit} bytes (max_body_bytes)")
    if not z.eof:
        raise BadRequest(400, "bad_encoding", "the gzip body is truncated")
    return out


def _text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):  # Gson reads numbers as strings too
        return str(value)
    raise BadRequest(400, "bad_json", f"{what} must be a string, got {type(value).__name__}")


def parse_events(text: str | bytes, charset: str, ndjson: bool, s: HttpSettings) -> list[Event]:
    """The events of a body (JSON array or NDJSON), checked against the limits; BadRequest else."""
    try:
        if ndjson:
            lines = text.splitlines() if isinstance(text, str) else text.splitlines()
            items = [orjson.loads(line) for line in lines if line.strip()]
        else:
            items = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, "bad_json", f"not JSON: {exc}") from None
    if not isinstance(items, list):
        raise BadRequest(400, "bad_json", "the body must be a JSON array of events (or NDJSON)")
    if len(items) > s.max_batch_events:
        raise BadRequest(400, "batch_too_large", f"{len(items)} events in one request (max {s.max_batch_events})")
    events: list[Event] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRequest(400, "bad_json", f"event {i} is not an object")
        raw_headers = item.get("headers") or {}
        if not isinstance(raw_headers, dict):
            raise BadRequest(400, "bad_json", f"event {i}: headers must be an object")
        if len(raw_headers) > s.max_headers:
            raise BadRequest(400, "too_many_headers", f"event {i}: {len(raw_headers)} headers (max {s.max_headers})")
        try:
            # header values are text, like every Flume header (UTF-8 in Kafka); the body takes the charset
            headers = [(k, _text(v, f"event {i}: header {k!r}").encode()) for k, v in raw_headers.items()]
            body = _text(item.get("body", ""), f"event {i}: body").encode(charset)
        except UnicodeEncodeError as exc:
            raise BadRequest(400, "bad_json", f"event {i}: not encodable in {charset}: {exc}") from None
        header_bytes = sum(len(k) + len(v) for k, v in headers)
        if header_bytes > s.max_header_bytes:
            raise BadRequest(400, "headers_too_large", f"event {i}: {header_bytes} header bytes "
                             f"(max {s.max_header_bytes})")
        if header_bytes + len(body) > s.max_event_bytes:
            raise BadRequest(400, "event_too_large", f"event {i}: {header_bytes + len(body)} bytes "
                             f"(max {s.max_event_bytes})")
        events.append((headers, body))
    return events


def decode_body(body: bytes, encoding: str, charset: str | None, content_type: str, s: HttpSettings) -> list[Event]:
    """Inflate (``Content-Encoding``), decode (the charset) and parse a request body."""
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        body = inflate(body, s.max_body_bytes)
    elif encoding not in ("", "identity"):
        raise BadRequest(415, "bad_encoding", f"Content-Encoding {encoding!r} (gzip or none)")
    charset = (charset or "utf-8").lower()
    try:
        text: str | bytes = body if charset in ("utf-8", "utf8") else body.decode(charset)
    except LookupError:
        raise BadRequest(415, "bad_encoding", f"unknown charset {charset!r}") from None
    except UnicodeDecodeError as exc:
        raise BadRequest(400, "bad_json", f"the body is not {charset}: {exc}") from None
    return parse_events(text, charset, content_type.lower() in NDJSON, s)


# -- the server ---------------------------------------------------------------------------------


class HttpSource(ConnectionCounts, Service):
    """Listens for HTTP senders (Flume's HTTPSource clients, curl, anything that POSTs JSON)."""

    name: ClassVar[str] = "http"
    section: ClassVar[str] = "source.http"

    def __init__(self, settings: HttpSettings, handler: Handler, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.handler = handler
        self.metrics = metrics
        self._runner: web.AppRunner | None = None
        self._throttled = Throttled(logger)
        self._received = metrics.received.labels(source=self.name)
        self._bad = metrics.bad_frames.labels(source=self.name)
        #: replies by HTTP status
        self.responses: collections.Counter[int] = collections.Counter()
        self.throttled = self._throttled
        self._init_counts()  # aiohttp's own closes are not counted
        self.guards: dict[asyncio.BaseTransport, _Guard] = {}  # the open connections
        self._listener: asyncio.Server | None = None
        self.port: int | None = None
        self.listening = False

    @property
    def open_connections(self) -> int:
        return len(self.guards)

    async def on_start(self) -> None:
        s = self.settings
        ssl_ctx = server_ssl_context(s, self.section)
        app = web.Application(client_max_size=s.max_body_bytes)
        app.router.add_post(s.path, self._post)
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False,
                                     keepalive_timeout=s.idle_timeout or 75.0, handle_signals=False)
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        # aiohttp's protocol for each connection, behind the guard (what TCPSite would listen with)
        self._listener = await asyncio.get_running_loop().create_server(
            lambda: _Guard(self, server), s.host, s.port, ssl=ssl_ctx, backlog=1024, reuse_port=s.reuse_port or None)
        self.port = self._listener.sockets[0].getsockname()[1]
        self.listening = True
        logger.info("http source listening on %s:%s%s (%s)", s.host, self.port, s.path,
                    "TLS" if ssl_ctx is not None else "plain HTTP")

    async def stop_intake(self) -> None:
        self.listening = False

    async def on_stop(self) -> None:
        self.listening = False
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()  # answers requests in flight first (aiohttp's shutdown_timeout)
            self._runner = None

    async def _read_body(self, request: web.Request) -> bytes:
        s = self.settings
        if request.content_length is not None and request.content_length > s.max_body_bytes:
            raise BadRequest(413, "too_large", f"a body of {request.content_length} bytes "
                             f"(max_body_bytes {s.max_body_bytes})")
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(s.frame_timeout or None):
                while chunk := await request.content.read(_READ_STEP):
                    size += len(chunk)
                    if size > s.max_body_bytes:
                        raise BadRequest(413, "too_large", f"a body over {s.max_body_bytes} bytes (max_body_bytes)")
                    parts.append(chunk)
        except TimeoutError:
            raise BadRequest(408, "frame_timeout", f"the body did not arrive within {s.frame_timeout:g}s") from None
        return b"".join(parts)

    async def _post(self, request: web.Request) -> web.Response:
        if not self.listening:
            return self._reply(503, {"error": "the server is stopping"}, retry=True)
        try:
            body = await self._read_body(request)
            events = decode_body(body, request.headers.get("Content-Encoding", ""), request.charset,
                                 request.content_type, self.settings)
        except BadRequest as exc:
            return self._refuse(request, exc)
        status = await self.submit(events)
        if status == Status.OK:
            return self._reply(200, {"accepted": len(events)})
        if status == Status.FAILED:
            return self._reply(503, {"error": "not durable anywhere now (Kafka down and the disk buffer full "
                                     "or failing); retry"}, retry=True)
        return self._reply(400, {"error": "refused: a topic not allowed, or one Kafka refuses for good"})

    async def submit(self, events: Sequence[Event]) -> int:
        self._received.inc(len(events))
        if not events:
            return int(Status.OK)
        return await self.handler(events)

    def _refuse(self, request: web.Request, exc: BadRequest) -> web.Response:
        if exc.reason in ("bad_json", "bad_encoding"):
            self._bad.inc()
        elif exc.reason in ("batch_too_large", "too_many_headers", "headers_too_large", "event_too_large",
                            "too_large"):
            self.metrics.refused.labels(reason=exc.reason).inc()
        self._throttled.log(logging.WARNING, exc.reason, "http source: %d for a request from %s: %s", exc.status,
                            request.remote, exc)
        return self._reply(exc.status, {"error": str(exc)})

    def _reply(self, status: int, doc: dict[str, Any], retry: bool = False) -> web.Response:
        self.responses[status] += 1
        headers = {"Retry-After": "1"} if retry else None
        return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json",
                            headers=headers)
