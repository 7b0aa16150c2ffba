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
web views run on. Inflating is ours (aiohttp's own is off): bounded by ``max_body_bytes``
whatever the compressed bytes claim. Optional TLS as every source has it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import zlib
from collections.abc import Sequence
from typing import Any, ClassVar, Final

import orjson
from aiohttp import web
from mode import Service

from agents.records import Event
from agents.source_base import Handler, server_ssl_context
from agents.thrift_codec import Status
from core.metrics import Metrics
from core.ratelog import Throttled
from core.settings import HttpSettings

logger = logging.getLogger(__name__)

NDJSON: Final = frozenset(("application/x-ndjson", "application/ndjson", "application/jsonl",
                           "application/x-jsonlines"))
_READ_STEP: Final = 65_536


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


class HttpSource(Service):
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
        self.closed: collections.Counter[str] = collections.Counter()  # connections are aiohttp's
        self.port: int | None = None
        self.listening = False
        self.open_connections = 0

    async def on_start(self) -> None:
        s = self.settings
        ssl_ctx = server_ssl_context(s, self.section)
        app = web.Application(client_max_size=s.max_body_bytes)
        app.router.add_post(s.path, self._post)
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False,
                                     keepalive_timeout=s.idle_timeout or 75.0, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.port, ssl_context=ssl_ctx, backlog=1024,
                           reuse_port=s.reuse_port or None)
        await site.start()
        server = getattr(site, "_server", None)
        self.port = server.sockets[0].getsockname()[1] if server is not None and server.sockets else s.port
        self.listening = True
        logger.info("http source listening on %s:%s%s (%s)", s.host, self.port, s.path,
                    "TLS" if ssl_ctx is not None else "plain HTTP")

    async def stop_intake(self) -> None:
        self.listening = False

    async def on_stop(self) -> None:
        self.listening = False
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
