"""Thrift source stage: wire-compatible with Apache Flume's ThriftSource.

Framed transport (a 4-byte big-endian length, then one Thrift message), compact
protocol by default, binary by setting; ``append`` and ``appendBatch`` answer a
``Status``. Each frame is read whole, then decoded in memory by a strict decoder
written for Flume's two calls (:mod:`agents.thrift_codec`), which checks the limits
below as it goes (compiled by mypyc where the install could).

Bad input never takes the server down: a length prefix over the cap is refused
before anything is allocated, a frame that does not decode closes that connection
(log line + ``spillway_bad_frames_total``), an event over a limit answers ERROR.
Connection hygiene (``max_connections``, ``idle_timeout``, ``frame_timeout``, TLS) is
every source's (:mod:`agents.source_base`); calls on a connection run one at a time (see
``agents.thrift_codec.Codec`` for what that means for ``max_inflight_events_per_connection``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agents.records import Event  # noqa: F401 - re-exported for callers
from agents.source_base import (  # noqa: F401 - re-exported for callers
    CLOSE_REASONS,
    TLS_HANDSHAKE_TIMEOUT,
    Handler,
    StreamSource,
    server_ssl_context,
)
from agents.source_base import Hangup as _Hangup
from agents.thrift_codec import (  # noqa: F401 - the codec's names, re-exported for callers
    _SERVICE,
    COMPILED,
    Call,
    Codec,
    LimitError,
    Status,
    ThriftFlumeEvent,
    flume,
)
from core.errors import FrameError
from core.metrics import Metrics
from core.settings import ThriftSettings

__all__ = ["CLOSE_REASONS", "Handler", "Status", "ThriftSource", "_Hangup", "now_ms", "server_ssl_context"]


class ThriftSource(StreamSource):
    """Listens for Flume's Thrift clients; hands each call's events to ``handler``."""

    name = "thrift"
    section = "source.thrift"

    def __init__(self, settings: ThriftSettings, handler: Handler, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(settings, handler, metrics, **kwargs)
        self.codec = Codec(settings.protocol, settings)

    def describe(self) -> str:
        decoder = "compiled decoder" if COMPILED else "plain Python decoder"
        return f"{self.settings.protocol} protocol, {decoder}, {super().describe()}"

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes:
        """The next frame: ``idle_timeout`` to its first byte, then ``frame_timeout`` to its last."""
        limit = self.settings.max_frame_bytes

        async def rest(head: bytes) -> bytes:
            head += await reader.readexactly(3)
            size = int.from_bytes(head, "big", signed=True)
            if size <= 0 or size > limit:
                raise FrameError(f"frame length {size} outside 1..{limit}")
            return await reader.readexactly(size)

        return await self._read_call(lambda: reader.readexactly(1), rest)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while self.listening:
            frame = await self._read_frame(reader)
            call = self.codec.decode(frame)
            del frame
            status = await self.answer(call)
            await self._send(writer, self.codec.reply(call, status))

    async def answer(self, call: Call) -> int:
        """The Status for one call: ERROR if over a limit, else the handler's."""
        if call.refused is not None:
            self.refuse(len(call.events), call.refused.reason, call.refused)
            return Status.ERROR
        return await self.submit(call.events)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
