"""Avro source stage: wire-compatible with Apache Flume's AvroSource.

Avro RPC over Netty framing with the Avro handshake (:mod:`agents.avro_codec`):
``append`` and ``appendBatch`` of ``AvroFlumeEvent`` answer a ``Status``. The same
delivery contract as the Thrift source: ``OK`` only once every event of the call is
durable, ``FAILED`` when nothing could be made durable; a call the pipeline refuses
(a topic not allowed, a limit) answers ``UNKNOWN``, Avro's Status having no ``ERROR``.
Flume's clients raise ``EventDeliveryException`` for anything but ``OK``.

``compression = "deflate"`` is Flume's ``compression-type = deflate``: the whole
connection, both ways, is one zlib stream (Netty's ``JZlibDecoder``/``JZlibEncoder(6)``
below the framing), each reply flushed (``Z_SYNC_FLUSH``), as Flume's client and server
do it. Inflating is bounded: never more than the call still needs, plus 64 KiB. With TLS
too, Flume puts the zlib stream *outside* TLS (its pipeline: inflater, deflater, then the
SslHandler), so then the listener is plain TCP and TLS runs inside the inflated stream
(:class:`TlsInside`, an ``ssl.SSLObject`` over memory BIOs), as Flume's client expects.

Limits, each a setting of ``[source.avro]``: a pack's buffers and their bytes
(``max_buffers``, ``max_frame_bytes``: checked from each length prefix, before the bytes
are read), events per call, headers per event, header and event bytes (answered
``UNKNOWN``); a connection whose handshake has not matched within ``handshake_timeout``,
or that failed it three times, is closed (``handshake``). Connection hygiene (idle,
slowloris, ``max_connections``, TLS) is every source's (:mod:`agents.source_base`).
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from typing import Any, Final

from agents import avro_codec as codec
from agents.source_base import Handler, Hangup, StreamSource
from core.errors import FrameError
from core.metrics import Metrics
from core.settings import AvroSettings

MAX_FAILED_HANDSHAKES: Final = 3
_INFLATE_STEP: Final = 65_536


class AvroSource(StreamSource):
    """Listens for Flume's Avro clients (SDK, avro-client, AvroSink); hands each call's events on."""

    name = "avro"
    section = "source.avro"

    def __init__(self, settings: AvroSettings, handler: Handler, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(settings, handler, metrics, **kwargs)
        #: handshakes answered, by match (BOTH, CLIENT, NONE)
        self.handshakes: dict[str, int] = {"BOTH": 0, "CLIENT": 0, "NONE": 0}

    def describe(self) -> str:
        return f"Avro RPC, compression {self.settings.compression}, {super().describe()}"

    def _listen_ssl(self) -> ssl.SSLContext | None:
        # with deflate, TLS is inside the zlib stream (Flume's order): the listener stays plain
        return None if self.settings.compression == "deflate" else self._ssl

    async def _serve(self, reader: Any, writer: Any) -> None:
        s: AvroSettings = self.settings
        if s.compression == "deflate":
            reader, writer = Inflating(reader), Deflating(writer)
            if self._ssl is not None:
                tls = TlsInside(reader, writer, self._ssl)
                try:
                    async with asyncio.timeout(s.frame_timeout or None):
                        await tls.handshake()
                except TimeoutError:
                    raise Hangup("handshake", f"no TLS handshake within {s.frame_timeout:g}s") from None
                reader, writer = tls, tls
        session = codec.Session()
        loop = asyncio.get_running_loop()
        handshake_by = loop.time() + s.handshake_timeout if s.handshake_timeout else None
        while self.listening:
            if session.remote is None:
                try:
                    async with asyncio.timeout_at(handshake_by):
                        serial, payload = await self._read_pack(reader)
                except TimeoutError:
                    raise Hangup("handshake", f"no handshake within {s.handshake_timeout:g}s") from None
            else:
                serial, payload = await self._read_pack(reader)
            connected = session.remote is not None
            request = codec.decode(payload, session, s)
            del payload
            if not connected and request.prefix:
                self._count_handshake(request.prefix)
            await self._send(writer, codec.pack(serial, await self._answer(request, session)))

    def _count_handshake(self, prefix: bytes) -> None:
        match = ("BOTH", "CLIENT", "NONE")[prefix[0] // 2]  # the enum index, zigzag
        self.handshakes[match] += 1

    async def _answer(self, request: codec.Request, session: codec.Session) -> bytes:
        if request.kind == "handshake":
            if session.failed_handshakes >= MAX_FAILED_HANDSHAKES:
                raise Hangup("handshake", f"{session.failed_handshakes} handshakes named no protocol we know")
            return codec.handshake_only(request)
        if request.kind == "ping":
            return codec.handshake_only(request)
        if request.kind == "unknown":
            return codec.error_reply(request, f"no message named {request.method!r} in AvroSourceProtocol")
        if request.refused is not None:
            self.refuse(request.count, request.refused.reason, request.refused)
            return codec.reply(request, codec.AVRO_UNKNOWN)
        return codec.reply(request, codec.avro_status(await self.submit(request.events)))

    async def _read_pack(self, reader: Any) -> tuple[int, bytes]:
        """The next pack's serial and its buffers joined: ``idle_timeout`` to its first byte,
        then ``frame_timeout`` to its last; each length checked before its bytes are read."""
        s: AvroSettings = self.settings

        async def rest(head: bytes) -> tuple[int, bytes]:
            serial, count = codec.read_pack_header(head + await reader.readexactly(7), s)
            left: int = s.max_frame_bytes
            parts = []
            for _ in range(count):
                n = codec.read_buffer_length(await reader.readexactly(4), left)
                left -= n
                parts.append(await reader.readexactly(n))
            return serial, parts[0] if count == 1 else b"".join(parts)

        return await self._read_call(lambda: reader.readexactly(1), rest)


class Inflating:
    """A reader of a zlib stream over ``raw`` (a StreamReader): ``readexactly`` of what it inflates."""

    def __init__(self, raw: asyncio.StreamReader) -> None:
        self._raw = raw
        self._z = zlib.decompressobj()
        self._buf = bytearray()

    async def readexactly(self, n: int) -> bytes:
        buf, z = self._buf, self._z
        while len(buf) < n:
            if z.unconsumed_tail:
                data = z.unconsumed_tail
            elif z.eof:  # the client ended its stream: as good as closing the connection
                raise asyncio.IncompleteReadError(bytes(buf), n)
            else:
                data = await self._raw.read(_INFLATE_STEP)
                if not data:
                    raise asyncio.IncompleteReadError(bytes(buf), n)
            try:
                buf += z.decompress(data, max(n - len(buf), _INFLATE_STEP))
            except zlib.error as exc:
                raise FrameError(f"not a deflate (zlib) stream: {exc}") from None
        out = bytes(buf[:n])
        del buf[:n]
        return out

    async def read_some(self) -> bytes:
        """What is inflated next (at most about 64 KiB); b"" at the end of the stream."""
        if not self._buf:
            try:
                first = await self.readexactly(1)  # inflates a step into the buffer
            except asyncio.IncompleteReadError:
                return b""
            self._buf[:0] = first
        out = bytes(self._buf)
        self._buf.clear()
        return out


class Deflating:
    """A writer of a zlib stream over ``raw`` (a StreamWriter), each write flushed whole."""

    def __init__(self, raw: asyncio.StreamWriter) -> None:
        self._raw = raw
        self._z = zlib.compressobj(6)

    def write(self, data: bytes) -> None:
        self._raw.write(self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH))

    @property
    def transport(self) -> Any:
        """The socket's: what a write leaves unsent is there (this keeps nothing back)."""
        return self._raw.transport

    async def drain(self) -> None:
        await self._raw.drain()


class TlsInside:
    """TLS (server side) over another stream's reader and writer: an ``ssl.SSLObject`` on
    memory BIOs. For deflate with TLS, where Flume puts TLS inside the zlib stream."""

    def __init__(self, reader: Inflating, writer: Deflating, ctx: ssl.SSLContext) -> None:
        self._reader, self._writer = reader, writer
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._buf = bytearray()

    def _flush(self) -> None:
        out = self._outgoing.read()
        if out:
            self._writer.write(out)

    async def _feed(self, n: int) -> None:
        self._flush()
        data = await self._reader.read_some()
        if not data:
            raise asyncio.IncompleteReadError(bytes(self._buf), n)
        self._incoming.write(data)

    async def handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._feed(0)
            except ssl.SSLError as exc:
                raise FrameError(f"TLS inside the deflate stream: {exc}") from None
        self._flush()
        await self._writer.drain()

    async def readexactly(self, n: int) -> bytes:
        buf = self._buf
        while len(buf) < n:
            try:
                chunk = self._tls.read(_INFLATE_STEP)
            except ssl.SSLWantReadError:
                await self._feed(n)
                continue
            except ssl.SSLError as exc:
                raise FrameError(f"TLS inside the deflate stream: {exc}") from None
            if not chunk:  # close_notify
                raise asyncio.IncompleteReadError(bytes(buf), n)
            buf += chunk
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def write(self, data: bytes) -> None:
        self._tls.write(data)
        self._flush()

    @property
    def transport(self) -> Any:
        return self._writer.transport

    async def drain(self) -> None:
        await self._writer.drain()
