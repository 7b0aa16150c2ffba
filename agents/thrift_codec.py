"""Flume's Thrift calls, decoded strictly in memory; their replies encoded.

The IDL (``flume.thrift``, Flume's own file) is loaded by thriftpy2, which serves clients
and tests; the replies (a few fixed bytes, the seqid, the Status) are written here, equal
byte for byte to thriftpy2's. Untrusted frames are never read by thriftpy2:
its in-memory transports return short reads silently, its Cython binary protocol
mallocs whatever length the bytes claim, a 30-byte frame claiming 2^31 zero-width
elements kept its readers busy for minutes, and its generic readers cost ~25 µs an
event. So one decoder (:mod:`agents.thrift_wire`, compiled by mypyc at install where it
can be) reads Flume's two calls, in each protocol::

    appendBatch(1: list<ThriftFlumeEvent> events)   append(1: ThriftFlumeEvent event)
    ThriftFlumeEvent { 1: map<string,string> headers, 2: binary body }

It is strict: every length and count is checked against the bytes left in the frame
before anything is sliced or allocated, every element takes at least one byte, varints
are at most 5 bytes (10 for a skipped i64), nesting is at most 64 deep, and a frame
that is not exactly one call (bytes left over, an unknown method or type) is refused
with :class:`FrameError`. Decoding costs O(frame bytes) time and memory, whatever the
bytes claim. It is fast on Flume's canonical encoding: each event's fields are read
with index arithmetic in one loop, sizes under 128 inline; whatever else valid Thrift
allows (unknown fields of newer clients, other field orders, long-form field headers)
takes the same loop's rarer branches. Reading a frame past its end raises IndexError
(or struct.error) from a bytes index, turned into FrameError.

The source's limits are checked in the same pass (:func:`_events`): a call over one is
still decoded to its end (a malformed frame is a bad frame whatever it claims), then
answered ERROR with the first limit it breaks (``Call.refused``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import struct
from pathlib import Path
from types import ModuleType
from typing import Final

import thriftpy2
from thriftpy2.thrift import TMessageType

from agents.records import Call, Event
from agents.thrift_wire import EventLimits, over_limit
from core.errors import FrameError, LimitError
from core.settings import ThriftSettings

__all__ = ["COMPILED", "Call", "Codec", "Event", "EventLimits", "LimitError", "Status", "ThriftFlumeEvent", "flume",
           "over_limit"]

flume = thriftpy2.load(str(Path(__file__).with_name("flume.thrift")), module_name="flume_thrift")
Status = flume.Status
ThriftFlumeEvent = flume.ThriftFlumeEvent
_SERVICE = flume.ThriftSourceProtocol

logger = logging.getLogger(__name__)


def _load_wire() -> ModuleType:
    """:mod:`agents.thrift_wire` as mypyc compiled it at install, unless
    ``SPILLWAY_PURE_PYTHON`` is set or the source changed since the build (a checkout being
    worked on; 2 s of slack for the files of one install): then its plain Python, from the
    source file."""
    from agents import thrift_wire

    source = Path(__file__).with_name("thrift_wire.py")
    compiled = not thrift_wire.__file__ or not thrift_wire.__file__.endswith(".py")
    if not compiled:
        return thrift_wire
    why = "SPILLWAY_PURE_PYTHON is set" if os.environ.get("SPILLWAY_PURE_PYTHON") else (
        "agents/thrift_wire.py changed since it was compiled (scripts/setup.sh compiles it again)"
        if source.exists() and source.stat().st_mtime > Path(thrift_wire.__file__).stat().st_mtime + 2 else "")
    if not why:
        return thrift_wire
    logger.info("thrift decoder: plain Python, since %s", why)
    spec = importlib.util.spec_from_file_location("agents._thrift_wire_source", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


thrift_wire = _load_wire()
#: the decoder is mypyc's compiled build of :mod:`agents.thrift_wire` (else its plain Python)
COMPILED: Final = not (thrift_wire.__file__ or "").endswith(".py")


# -- the codec ----------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _compact_reply(name: str, seqid: int, status: int) -> bytes:
    """``name``'s reply message: its result struct holds field 0, the i32 Status (zigzag)."""
    return (b"\x82\x41" + _varint(seqid & 0xFFFFFFFF) + _varint(len(name)) + name.encode()
            + b"\x05\x00" + _varint(status << 1) + b"\x00")


_REPLY_HEAD: Final = struct.Struct(">iI")
_I32: Final = struct.Struct(">i")


def _binary_reply(name: str, seqid: int, status: int) -> bytes:
    return (_REPLY_HEAD.pack(-2147418112 | TMessageType.REPLY, len(name)) + name.encode()
            + _I32.pack(seqid) + b"\x08\x00\x00" + _I32.pack(status) + b"\x00")


class Codec:
    """Decodes one framed call, checking ``limits`` as it goes, and encodes its reply.

    The limits: events in one call, headers per event, header bytes (the characters of the
    names and the bytes of the values) and event bytes (those and the body). In-flight events per connection: a
    connection's calls are processed one at a time (the next frame is not read before the
    current call is answered), so its events awaiting acknowledgement are those of one
    call. A call with more events than ``max_inflight_events_per_connection`` is therefore
    refused like an oversize batch: the effective per-call cap is the smaller of that and
    ``max_batch_events``.
    """

    def __init__(self, protocol: str, limits: ThriftSettings | None = None) -> None:
        self.protocol = protocol
        self.limits = limits if limits is not None else ThriftSettings()
        self._read = thrift_wire.compact_call if protocol == "compact" else thrift_wire.binary_call
        self._reply = _compact_reply if protocol == "compact" else _binary_reply

    def decode(self, frame: bytes) -> Call:
        """The call in ``frame``, its events as ``(headers, body)`` pairs; FrameError (only) for
        anything that is not exactly one of Flume's calls."""
        try:
            return self._read(frame, self.limits)
        except FrameError:
            raise
        except (IndexError, struct.error):
            raise FrameError("the frame ends inside a value") from None
        except Exception as exc:  # a safety net: the decoder checks everything it reads
            raise FrameError(f"frame does not decode: {type(exc).__name__}: {exc}") from exc

    def reply(self, call: Call, status: int) -> bytes:
        """The framed reply to ``call``: a few fixed bytes, the seqid and the Status, written here
        (thriftpy2 took about 20 µs a call for them; the tests compare the two byte for byte)."""
        body = self._reply(call.name, call.seqid, status)
        return len(body).to_bytes(4, "big") + body
