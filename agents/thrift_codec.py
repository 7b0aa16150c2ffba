"""Decoding and encoding Flume's calls, all in memory, strictly.

Flume's canonical encoding takes the fast path (:mod:`agents.flume_wire`); anything else
(extra fields of newer clients, other field orders) the strict general decoder here
(``_Wire``): every length and count is checked against the bytes left in the frame
before anything is allocated, and unknown fields are skipped under the same rules.
thriftpy2's own readers are not used on untrusted bytes: its in-memory transports
return short reads silently, its Cython binary protocol mallocs whatever length the
bytes claim, and a 30-byte frame claiming 2^31 zero-width elements kept it busy for
minutes. thriftpy2 still loads the IDL and encodes the replies.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import thriftpy2
from thriftpy2.protocol.binary import TBinaryProtocol
from thriftpy2.protocol.compact import TCompactProtocol
from thriftpy2.thrift import TMessageType

from agents.flume_wire import Unusual, decode_binary, decode_compact
from agents.router import from_thrift
from core.errors import FrameError, SourceError
from core.settings import ThriftSettings

flume = thriftpy2.load(str(Path(__file__).with_name("flume.thrift")), module_name="flume_thrift")
Status = flume.Status
ThriftFlumeEvent = flume.ThriftFlumeEvent
_SERVICE = flume.ThriftSourceProtocol


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    seqid: int
    events: list[Any]


# -- the strict decoder -------------------------------------------------------------------------
#
# thriftpy2's readers trust what the bytes claim: a list header of 2^31 elements of a type
# that takes no bytes (binary: an unknown type id; compact: type 0 in a map) spins the event
# loop for minutes on a 30-byte frame, and a compact varint has no length bound (quadratic
# time on a long run of 0xff). So frames are decoded here, for exactly Flume's IDL: every
# length and count is checked against the bytes left before it is used, every element takes
# at least one byte, varints are at most 10 bytes, nesting at most 64 deep, unknown fields
# are skipped under the same rules. Decoding costs O(frame bytes) time and memory, whatever
# the bytes claim.

_T_BOOL, _T_BYTE, _T_DOUBLE, _T_I16, _T_I32, _T_I64 = 2, 3, 4, 6, 8, 10
_T_STRING, _T_STRUCT, _T_MAP, _T_SET, _T_LIST = 11, 12, 13, 14, 15
_BINARY_TYPES: Final = frozenset((_T_BOOL, _T_BYTE, _T_DOUBLE, _T_I16, _T_I32, _T_I64, _T_STRING,
                                  _T_STRUCT, _T_MAP, _T_SET, _T_LIST))
_C_STOP, _C_TRUE, _C_FALSE, _C_BINARY, _C_LIST, _C_SET, _C_MAP, _C_STRUCT = 0, 1, 2, 8, 9, 10, 11, 12
_MAX_DEPTH: Final = 64
_METHODS: Final = {b"append": "append", b"appendBatch": "appendBatch"}
_I8, _I16, _I32 = struct.Struct(">b"), struct.Struct(">h"), struct.Struct(">i")
_BINARY_VERSION_1: Final = -2147418112  # 0x80010000 as a signed i32
_FIXED: Final = {_T_BOOL: 1, _T_BYTE: 1, _T_I16: 2, _T_I32: 4, _T_DOUBLE: 8, _T_I64: 8}


def _text(data: bytes) -> str | bytes:
    """A Thrift ``string`` as thriftpy2 gives it: text when valid UTF-8, else the bytes."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


class _Wire:
    """A cursor over one frame; the protocol subclasses decode Flume's calls from it."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, size: int) -> bytes:
        pos = self.pos
        end = pos + size
        if size < 0 or end > len(self.data):
            raise FrameError(f"a field claims {size} bytes, {len(self.data) - pos} are left in the frame")
        self.pos = end
        return self.data[pos:end]

    def byte(self) -> int:
        pos = self.pos
        if pos >= len(self.data):
            raise FrameError("the frame ends inside a field")
        self.pos = pos + 1
        return self.data[pos]

    def count(self, n: int, per_element: int) -> int:
        """A collection's element count, refused if its elements cannot fit in what is left."""
        if n < 0 or n * per_element > len(self.data) - self.pos:
            raise FrameError(f"a collection claims {n} elements, {len(self.data) - self.pos} bytes are left")
        return n

    def read_call(self) -> Call:
        name, mtype, seqid = self.message_begin()
        method = _METHODS.get(name)
        if mtype != TMessageType.CALL or method is None:
            raise FrameError(f"unknown call {name[:64]!r} (type {mtype})")
        events = self.read_args(method == "appendBatch")
        if self.remaining:
            raise FrameError(f"{self.remaining} bytes left over after the call")
        return Call(method, seqid, events)

    def message_begin(self) -> tuple[bytes, int, int]:
        raise NotImplementedError

    def read_args(self, batch: bool) -> list[Any]:
        raise NotImplementedError


class _CompactWire(_Wire):
    __slots__ = ()

    def varint(self, limit: int) -> int:
        data, pos, end = self.data, self.pos, len(self.data)
        result = shift = 0
        for _ in range(limit):
            if pos >= end:
                raise FrameError("the frame ends inside a varint")
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                self.pos = pos
                return result
            shift += 7
        raise FrameError(f"a varint runs over {limit} bytes")

    def size(self) -> int:
        pos = self.pos
        if pos < len(self.data) and self.data[pos] < 0x80:  # the common case: one byte
            self.pos = pos + 1
            return self.data[pos]
        n = self.varint(5)
        if n > 0x7FFFFFFF:
            raise FrameError(f"a length of {n} is over 2^31-1")
        return n

    def blob(self) -> bytes:
        """A length-prefixed ``binary``/``string``."""
        return self.take(self.size())

    def message_begin(self) -> tuple[bytes, int, int]:
        proto_id, ver_type = self.byte(), self.byte()
        if proto_id != 0x82 or ver_type & 0x1F != 1:
            raise FrameError(f"not a compact protocol message (0x{proto_id:02x} 0x{ver_type:02x})")
        seqid = self.varint(5) & 0xFFFFFFFF  # an i32 written unsigned; written back the same way
        return self.take(self.size()), ver_type >> 5, seqid

    def field(self, last: int) -> tuple[int, int]:
        """``(compact type, field id)``; type 0 is the struct's end."""
        b = self.byte()
        ctype = b & 0x0F
        if ctype == _C_STOP:
            return 0, 0
        if ctype > _C_STRUCT:
            raise FrameError(f"unknown compact type {ctype}")
        delta = b >> 4
        if delta:
            return ctype, last + delta
        n = self.varint(3)
        return ctype, (n >> 1) ^ -(n & 1)

    def collection(self) -> tuple[int, int]:
        b = self.byte()
        ctype, n = b & 0x0F, b >> 4
        if n == 15:
            n = self.size()
        if n and not _C_STOP < ctype <= _C_STRUCT:
            raise FrameError(f"a collection of unknown compact type {ctype}")
        return ctype, self.count(n, 1)

    def skip(self, ctype: int, depth: int) -> None:
        """Skip one value (a bool in a collection is one byte; in a field header, none)."""
        if depth <= 0:
            raise FrameError("values nested too deep")
        if ctype <= 3:  # true, false, byte
            self.take(1)
        elif ctype <= 6:  # i16, i32, i64
            self.varint(10)
        elif ctype == 7:
            self.take(8)
        elif ctype == _C_BINARY:
            self.blob()
        elif ctype == _C_LIST or ctype == _C_SET:
            etype, n = self.collection()
            for _ in range(n):
                self.skip(etype, depth - 1)
        elif ctype == _C_MAP:
            n = self.size()
            if n:
                types = self.byte()
                ktype, vtype = types >> 4, types & 0x0F
                if not (_C_STOP < ktype <= _C_STRUCT and _C_STOP < vtype <= _C_STRUCT):
                    raise FrameError(f"a map of unknown compact types 0x{types:02x}")
                for _ in range(self.count(n, 2)):
                    self.skip(ktype, depth - 1)
                    self.skip(vtype, depth - 1)
        else:
            self.skip_struct(depth - 1)

    def skip_struct(self, depth: int) -> None:
        last = 0
        while True:
            ctype, last = self.field(last)
            if not ctype:
                return
            if ctype > _C_FALSE:
                self.skip(ctype, depth)

    def string_map(self) -> dict[Any, Any]:
        n = self.size()
        if not n:
            return {}
        if self.byte() != 0x88:
            raise FrameError("headers is not a map<string, string>")
        out = {}
        blob = self.blob
        for _ in range(self.count(n, 2)):
            key = _text(blob())
            out[key] = _text(blob())
        return out

    def event(self) -> Any:
        headers: dict[Any, Any] = {}
        body = b""
        last = 0
        while True:
            ctype, last = self.field(last)
            if not ctype:
                return ThriftFlumeEvent(headers=headers, body=body)
            if last == 1 and ctype == _C_MAP:
                headers = self.string_map()
            elif last == 2 and ctype == _C_BINARY:
                body = self.blob()
            elif last in (1, 2):
                raise FrameError(f"ThriftFlumeEvent field {last} has compact type {ctype}")
            elif ctype > _C_FALSE:
                self.skip(ctype, _MAX_DEPTH - 2)

    def read_args(self, batch: bool) -> list[Any]:
        events: list[Any] = []
        last = 0
        while True:
            ctype, last = self.field(last)
            if not ctype:
                return events
            if last == 1 and batch and ctype == _C_LIST:
                etype, n = self.collection()
                if n and etype != _C_STRUCT:
                    raise FrameError(f"events is a list of compact type {etype}")
                events = [self.event() for _ in range(n)]
            elif last == 1 and not batch and ctype == _C_STRUCT:
                events = [self.event()]
            elif last == 1:
                raise FrameError(f"argument 1 has compact type {ctype}")
            elif ctype > _C_FALSE:
                self.skip(ctype, _MAX_DEPTH - 1)


class _BinaryWire(_Wire):
    __slots__ = ()

    def i32(self) -> int:
        pos = self.pos
        if pos + 4 > len(self.data):
            raise FrameError("the frame ends inside an i32")
        self.pos = pos + 4
        return int(_I32.unpack_from(self.data, pos)[0])

    def blob(self) -> bytes:
        """A length-prefixed ``binary``/``string``."""
        return self.take(self.i32())

    def message_begin(self) -> tuple[bytes, int, int]:
        head = self.i32()
        if head >= 0 or head & -65536 != _BINARY_VERSION_1:
            raise FrameError(f"not a strict binary protocol message (0x{head & 0xFFFFFFFF:08x})")
        name = self.take(self.i32())
        return name, head & 0xFF, self.i32()

    def field(self) -> tuple[int, int]:
        """``(type, field id)``; type 0 is the struct's end."""
        ttype = self.byte()
        if not ttype:
            return 0, 0
        if ttype not in _BINARY_TYPES:
            raise FrameError(f"unknown binary type {ttype}")
        pos = self.pos
        if pos + 2 > len(self.data):
            raise FrameError("the frame ends inside a field header")
        self.pos = pos + 2
        return ttype, int(_I16.unpack_from(self.data, pos)[0])

    def elem_type(self) -> int:
        ttype = self.byte()
        if ttype not in _BINARY_TYPES:
            raise FrameError(f"a collection of unknown binary type {ttype}")
        return ttype

    def skip(self, ttype: int, depth: int) -> None:
        if depth <= 0:
            raise FrameError("values nested too deep")
        fixed = _FIXED.get(ttype)
        if fixed is not None:
            self.take(fixed)
        elif ttype == _T_STRING:
            self.blob()
        elif ttype == _T_LIST or ttype == _T_SET:
            etype = self.elem_type()
            for _ in range(self.count(self.i32(), 1)):
                self.skip(etype, depth - 1)
        elif ttype == _T_MAP:
            ktype, vtype = self.elem_type(), self.elem_type()
            for _ in range(self.count(self.i32(), 2)):
                self.skip(ktype, depth - 1)
                self.skip(vtype, depth - 1)
        else:
            self.skip_struct(depth - 1)

    def skip_struct(self, depth: int) -> None:
        while True:
            ttype, _ = self.field()
            if not ttype:
                return
            self.skip(ttype, depth)

    def string_map(self) -> dict[Any, Any]:
        if self.elem_type() != _T_STRING or self.elem_type() != _T_STRING:
            raise FrameError("headers is not a map<string, string>")
        out = {}
        blob = self.blob
        for _ in range(self.count(self.i32(), 8)):
            key = _text(blob())
            out[key] = _text(blob())
        return out

    def event(self) -> Any:
        headers: dict[Any, Any] = {}
        body = b""
        while True:
            ttype, fid = self.field()
            if not ttype:
                return ThriftFlumeEvent(headers=headers, body=body)
            if fid == 1 and ttype == _T_MAP:
                headers = self.string_map()
            elif fid == 2 and ttype == _T_STRING:
                body = self.blob()
            elif fid in (1, 2):
                raise FrameError(f"ThriftFlumeEvent field {fid} has binary type {ttype}")
            else:
                self.skip(ttype, _MAX_DEPTH - 2)

    def read_args(self, batch: bool) -> list[Any]:
        events: list[Any] = []
        while True:
            ttype, fid = self.field()
            if not ttype:
                return events
            if fid == 1 and batch and ttype == _T_LIST:
                etype = self.elem_type()
                n = self.count(self.i32(), 1)
                if n and etype != _T_STRUCT:
                    raise FrameError(f"events is a list of binary type {etype}")
                events = [self.event() for _ in range(n)]
            elif fid == 1 and not batch and ttype == _T_STRUCT:
                events = [self.event()]
            elif fid == 1:
                raise FrameError(f"argument 1 has binary type {ttype}")
            else:
                self.skip(ttype, _MAX_DEPTH - 1)


class _ReplyBuffer:
    """Where thriftpy2 writes a reply."""

    __slots__ = ("_out",)

    def __init__(self) -> None:
        self._out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._out.append(bytes(data))

    def flush(self) -> None:
        pass

    def getvalue(self) -> bytes:
        return b"".join(self._out)


class Codec:
    """Decodes one framed call and encodes its reply, all in memory."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self._wire: type[_Wire] = _CompactWire if protocol == "compact" else _BinaryWire
        self._writer = TCompactProtocol if protocol == "compact" else TBinaryProtocol
        self._fast = decode_compact if protocol == "compact" else decode_binary

    def decode(self, frame: bytes) -> Call:
        """The call in ``frame``, its events as ``(headers, body)`` pairs; FrameError (only) for
        anything else. Flume's canonical encoding takes the fast path (agents/flume_wire.py);
        anything else (extra fields, other field orders) the general strict decoder below."""
        try:
            name, seqid, events = self._fast(frame)
            return Call(name, seqid, events)
        except Unusual:
            pass
        try:
            call = self._wire(frame).read_call()
        except FrameError:
            raise
        except Exception as exc:  # a safety net: the decoder checks everything it reads
            raise FrameError(f"frame does not decode: {type(exc).__name__}: {exc}") from exc
        return Call(call.name, call.seqid, [from_thrift(e) for e in call.events])

    def reply(self, call: Call, status: int) -> bytes:
        buf = _ReplyBuffer()
        proto = self._writer(buf)
        proto.write_message_begin(call.name, TMessageType.REPLY, call.seqid)
        proto.write_struct(getattr(_SERVICE, call.name + "_result")(success=status))
        proto.write_message_end()
        body = buf.getvalue()
        return len(body).to_bytes(4, "big") + body


# -- limits -------------------------------------------------------------------------------------


class LimitError(SourceError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_limits(events: Sequence[Any], s: ThriftSettings) -> None:
    """Raise LimitError for a batch or an event over the configured limits.

    In-flight events per connection: a connection's calls are processed one at a time (the
    next frame is not read before the current call is answered), so its events awaiting
    acknowledgement are those of one call. A call with more events than
    ``max_inflight_events_per_connection`` is therefore refused like an oversize batch: the
    effective per-call cap is the smaller of that and ``max_batch_events``.
    """
    cap = min(s.max_batch_events, s.max_inflight_events_per_connection)
    if len(events) > cap:
        raise LimitError("batch_too_large", f"{len(events)} events in one call (max {s.max_batch_events}, "
                         f"max in flight per connection {s.max_inflight_events_per_connection})")
    max_headers, max_header_bytes, max_event_bytes = s.max_headers, s.max_header_bytes, s.max_event_bytes
    for headers, body in events:
        if len(headers) > max_headers:
            raise LimitError("too_many_headers", f"{len(headers)} headers (max {max_headers})")
        header_bytes = 0
        for k, v in headers:
            header_bytes += len(k) + len(v)
        if header_bytes > max_header_bytes:
            raise LimitError("headers_too_large", f"{header_bytes} header bytes (max {max_header_bytes})")
        if header_bytes + len(body) > max_event_bytes:
            raise LimitError("event_too_large", f"event of {header_bytes + len(body)} bytes (max {max_event_bytes})")
