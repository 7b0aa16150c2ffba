"""Flume's two Thrift calls, decoded strictly from the bytes of one frame: the hot path of
the Thrift source, in plain Python that mypyc compiles when spillway is installed (see
``setup.py``; :data:`agents.thrift_codec.COMPILED` says which one runs). Everything here is
typed for mypyc: native ints, bytes indexing, no dynamic attributes. The rules it keeps are
:mod:`agents.thrift_codec`'s.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, Protocol

from agents.records import Call, Event
from core.errors import FrameError, LimitError
from core.settings import ThriftSettings

_CALL: Final = 1  # _CALL

# -- shared by both protocols -------------------------------------------------------------------

_METHODS: Final = {b"append": "append", b"appendBatch": "appendBatch"}
_MAX_DEPTH: Final = 64

#: A protocol's event reader: the event at a position, and the position after it.
_ReadEvent = Callable[[bytes, int], tuple[Event, int]]

#: header names seen often: decoding them once saves a str per header per event
_NAMES: dict[bytes, str] = {}


def _name(raw: bytes) -> str:
    """A header name as text (Kafka header names are strings), remembered when short."""
    name = raw.decode("utf-8", "replace")
    if len(_NAMES) < 4096 and len(raw) <= 64:  # the cache must stay small, whatever clients send
        _NAMES[raw] = name
    return name


def _past_end(size: int, left: int) -> FrameError:
    return FrameError(f"a field claims {size} bytes, {left} are left in the frame")


def _too_many(n: int, left: int) -> FrameError:
    return FrameError(f"a collection claims {n} elements, {left} bytes are left")


def _events(read_event: _ReadEvent, data: bytes, pos: int, n: int,
            s: ThriftSettings) -> tuple[list[Event], LimitError | None, int]:
    """``n`` events from ``pos``, the first limit they break (see :class:`Codec`), and the
    position after them.

    An event takes at least as many bytes on the wire as its headers and body count, so one
    that takes no more than the smaller byte limit is within both; any other, or one with
    too many headers, is judged exactly by :func:`over_limit`.
    """
    refused: LimitError | None = None
    if n > min(s.max_batch_events, s.max_inflight_events_per_connection):
        refused = LimitError("batch_too_large", f"{n} events in one call (max {s.max_batch_events}, "
                             f"max in flight per connection {s.max_inflight_events_per_connection})")
    max_headers, within = s.max_headers, min(s.max_header_bytes, s.max_event_bytes)
    events: list[Event] = []
    append = events.append
    for _ in range(n):
        start = pos
        event, pos = read_event(data, pos)
        if (pos - start > within or len(event[0]) > max_headers) and refused is None:
            refused = over_limit(event, s)
        append(event)
    return events, refused, pos


class EventLimits(Protocol):
    """The per-event limits every source checks (``[source.thrift]``, ``[source.avro]``)."""

    @property
    def max_headers(self) -> int: ...
    @property
    def max_header_bytes(self) -> int: ...
    @property
    def max_event_bytes(self) -> int: ...


def over_limit(event: Event, s: EventLimits) -> LimitError | None:
    """Why one decoded event is over the source's limits, or None."""
    headers, body = event
    if len(headers) > s.max_headers:
        return LimitError("too_many_headers", f"{len(headers)} headers (max {s.max_headers})")
    header_bytes = 0
    for k, v in headers:
        header_bytes += len(k) + len(v)
    if header_bytes > s.max_header_bytes:
        return LimitError("headers_too_large", f"{header_bytes} header bytes (max {s.max_header_bytes})")
    if header_bytes + len(body) > s.max_event_bytes:
        return LimitError("event_too_large",
                          f"event of {header_bytes + len(body)} bytes (max {s.max_event_bytes})")
    return None


# -- compact protocol ---------------------------------------------------------------------------
#
# Sizes under 128 take one byte: the hot loop reads them inline and calls _compact_size
# for longer ones.

_C_STOP, _C_FALSE, _C_I64, _C_DOUBLE, _C_BINARY = 0, 2, 6, 7, 8
_C_LIST, _C_SET, _C_MAP, _C_STRUCT = 9, 10, 11, 12
_C_STRINGS: Final = 0x88  # a map's key and value types, both binary


def _compact_varint(data: bytes, pos: int, limit: int) -> tuple[int, int]:
    """The varint of at most ``limit`` bytes at ``pos``, and the position after it."""
    result = shift = 0
    end = pos + limit
    while pos < end:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
    raise FrameError(f"a varint runs over {limit} bytes")


def _compact_size(data: bytes, pos: int) -> tuple[int, int]:
    """A length or count (a varint of at most 5 bytes, under 2^31) at ``pos``, and the position after."""
    n, pos = _compact_varint(data, pos, 5)
    if n > 0x7FFFFFFF:
        raise FrameError(f"a length of {n} is over 2^31-1")
    return n, pos


def _compact_field(data: bytes, pos: int, fid: int) -> tuple[int, int, int]:
    """``(compact type, field id, position after)`` of a field header; type 0 ends the struct."""
    b = data[pos]
    ctype = b & 0x0F
    if ctype == _C_STOP:
        return 0, 0, pos + 1
    if ctype > _C_STRUCT:
        raise FrameError(f"unknown compact type {ctype}")
    if b >> 4:
        return ctype, fid + (b >> 4), pos + 1
    n, pos = _compact_varint(data, pos + 1, 3)  # the long form: a zigzag i16
    return ctype, (n >> 1) ^ -(n & 1), pos


def _compact_collection(data: bytes, pos: int) -> tuple[int, int, int]:
    """``(element type, count, position after)`` of a list or set header."""
    b = data[pos]
    ctype, n = b & 0x0F, b >> 4
    pos += 1
    if n == 15:
        n, pos = _compact_size(data, pos)
    if n and not _C_STOP < ctype <= _C_STRUCT:
        raise FrameError(f"a collection of unknown compact type {ctype}")
    if n > len(data) - pos:
        raise _too_many(n, len(data) - pos)
    return ctype, n, pos


def _compact_skip(data: bytes, pos: int, ctype: int, depth: int) -> int:
    """The position after one value (a bool in a collection is one byte; in a field header, none)."""
    if depth <= 0:
        raise FrameError("values nested too deep")
    if ctype <= 3:  # true, false, byte
        pos += 1
    elif ctype <= _C_I64:  # i16, i32, i64
        return _compact_varint(data, pos, 10)[1]
    elif ctype == _C_DOUBLE:
        pos += 8
    elif ctype == _C_BINARY:
        n, pos = _compact_size(data, pos)
        if pos + n > len(data):
            raise _past_end(n, len(data) - pos)
        pos += n
    elif ctype == _C_LIST or ctype == _C_SET:
        etype, n, pos = _compact_collection(data, pos)
        for _ in range(n):
            pos = _compact_skip(data, pos, etype, depth - 1)
    elif ctype == _C_MAP:
        n, pos = _compact_size(data, pos)
        if n:
            types = data[pos]
            ktype, vtype = types >> 4, types & 0x0F
            if not (_C_STOP < ktype <= _C_STRUCT and _C_STOP < vtype <= _C_STRUCT):
                raise FrameError(f"a map of unknown compact types 0x{types:02x}")
            pos += 1
            if n * 2 > len(data) - pos:
                raise _too_many(n, len(data) - pos)
            for _ in range(n):
                pos = _compact_skip(data, pos, ktype, depth - 1)
                pos = _compact_skip(data, pos, vtype, depth - 1)
    else:
        fid = 0
        while True:
            ftype, fid, pos = _compact_field(data, pos, fid)
            if not ftype:
                break
            if ftype > _C_FALSE:
                pos = _compact_skip(data, pos, ftype, depth - 1)
    if pos > len(data):
        raise FrameError("the frame ends inside a value")
    return pos


def _compact_event(data: bytes, pos: int) -> tuple[Event, int]:
    """The ThriftFlumeEvent at ``pos`` (its headers in wire order), and the position after it."""
    end = len(data)
    names = _NAMES
    headers: list[tuple[str, bytes]] = []
    body = b""
    fid = 0
    while True:
        b = data[pos]
        ctype = b & 0x0F
        if ctype == _C_STOP:
            return (headers, body), pos + 1
        if b >> 4:  # the short form (always, in Flume's encoding): a field id delta and the type
            fid += b >> 4
            pos += 1
        else:
            ctype, fid, pos = _compact_field(data, pos, fid)
        if fid == 1 and ctype == _C_MAP:
            headers = []
            n = data[pos]
            pos += 1
            if n > 0x7F:
                n, pos = _compact_size(data, pos - 1)
            if not n:
                continue
            if data[pos] != _C_STRINGS:
                raise FrameError("headers is not a map<string, string>")
            pos += 1
            if n * 2 > end - pos:
                raise _too_many(n, end - pos)
            append = headers.append
            for _ in range(n):
                klen = data[pos]
                pos += 1
                if klen > 0x7F:
                    klen, pos = _compact_size(data, pos - 1)
                k_end = pos + klen
                if k_end > end:
                    raise _past_end(klen, end - pos)
                raw = data[pos:k_end]
                vlen = data[k_end]
                pos = k_end + 1
                if vlen > 0x7F:
                    if data[pos] < 0x80:
                        vlen = (vlen & 0x7F) | data[pos] << 7
                        pos += 1
                    else:
                        vlen, pos = _compact_size(data, k_end)
                v_end = pos + vlen
                if v_end > end:
                    raise _past_end(vlen, end - pos)
                name = names.get(raw)
                append((_name(raw) if name is None else name, data[pos:v_end]))
                pos = v_end
        elif fid == 2 and ctype == _C_BINARY:
            n = data[pos]
            pos += 1
            if n > 0x7F:  # two bytes (a body under 16 KiB) inline, else the general reader
                if data[pos] < 0x80:
                    n = (n & 0x7F) | data[pos] << 7
                    pos += 1
                else:
                    n, pos = _compact_size(data, pos - 1)
            b_end = pos + n
            if b_end > end:
                raise _past_end(n, end - pos)
            body = data[pos:b_end]
            pos = b_end
        elif ctype > _C_STRUCT:
            raise FrameError(f"unknown compact type {ctype}")
        elif fid == 1 or fid == 2:
            raise FrameError(f"ThriftFlumeEvent field {fid} has compact type {ctype}")
        elif ctype > _C_FALSE:
            pos = _compact_skip(data, pos, ctype, _MAX_DEPTH - 2)


def compact_call(data: bytes, s: ThriftSettings) -> Call:
    if data[0] != 0x82 or data[1] & 0x1F != 1:
        raise FrameError(f"not a compact protocol message (0x{data[:2].hex()})")
    mtype = data[1] >> 5
    seqid, pos = _compact_varint(data, 2, 5)
    seqid &= 0xFFFFFFFF  # an i32 written unsigned; written back the same way
    n, pos = _compact_size(data, pos)
    if pos + n > len(data):
        raise _past_end(n, len(data) - pos)
    method = _METHODS.get(data[pos:pos + n])
    if mtype != _CALL or method is None:
        raise FrameError(f"unknown call {data[pos:pos + min(n, 64)]!r} (type {mtype})")
    pos += n
    batch = method == "appendBatch"
    events: list[Event] = []
    refused: LimitError | None = None
    fid = 0
    while True:
        ctype, fid, pos = _compact_field(data, pos, fid)
        if not ctype:
            break
        if fid == 1 and batch and ctype == _C_LIST:
            etype, n, pos = _compact_collection(data, pos)
            if n and etype != _C_STRUCT:
                raise FrameError(f"events is a list of compact type {etype}")
            events, refused, pos = _events(_compact_event, data, pos, n, s)
        elif fid == 1 and not batch and ctype == _C_STRUCT:
            events, refused, pos = _events(_compact_event, data, pos, 1, s)
        elif fid == 1:
            raise FrameError(f"argument 1 has compact type {ctype}")
        elif ctype > _C_FALSE:
            pos = _compact_skip(data, pos, ctype, _MAX_DEPTH - 1)
    if pos != len(data):
        raise FrameError(f"{len(data) - pos} bytes left over after the call")
    return Call(method, seqid, events, refused)


# -- binary protocol ----------------------------------------------------------------------------

_T_BOOL, _T_BYTE, _T_DOUBLE, _T_I16, _T_I32, _T_I64 = 2, 3, 4, 6, 8, 10
_T_STRING, _T_STRUCT, _T_MAP, _T_SET, _T_LIST = 11, 12, 13, 14, 15
_BINARY_TYPES: Final = frozenset((_T_BOOL, _T_BYTE, _T_DOUBLE, _T_I16, _T_I32, _T_I64, _T_STRING,
                                  _T_STRUCT, _T_MAP, _T_SET, _T_LIST))
_FIXED: Final = {_T_BOOL: 1, _T_BYTE: 1, _T_I16: 2, _T_I32: 4, _T_DOUBLE: 8, _T_I64: 8}
_BINARY_VERSION_1: Final = -2147418112  # 0x80010000 as a signed i32
_u32 = struct.Struct(">I").unpack_from  # lengths and counts: one over 2^31 never fits a frame
_i32 = struct.Struct(">i").unpack_from
_i16 = struct.Struct(">h").unpack_from


def _binary_type(data: bytes, pos: int) -> int:
    ttype = data[pos]
    if ttype not in _BINARY_TYPES:
        raise FrameError(f"unknown binary type {ttype}")
    return ttype


def _binary_skip(data: bytes, pos: int, ttype: int, depth: int) -> int:
    """The position after one value of type ``ttype``."""
    if depth <= 0:
        raise FrameError("values nested too deep")
    fixed = _FIXED.get(ttype)
    if fixed is not None:
        pos += fixed
    elif ttype == _T_STRING:
        (n,) = _u32(data, pos)
        pos += 4
        if pos + n > len(data):
            raise _past_end(n, len(data) - pos)
        pos += n
    elif ttype == _T_LIST or ttype == _T_SET:
        etype = _binary_type(data, pos)
        (n,) = _u32(data, pos + 1)
        pos += 5
        if n > len(data) - pos:
            raise _too_many(n, len(data) - pos)
        for _ in range(n):
            pos = _binary_skip(data, pos, etype, depth - 1)
    elif ttype == _T_MAP:
        ktype, vtype = _binary_type(data, pos), _binary_type(data, pos + 1)
        (n,) = _u32(data, pos + 2)
        pos += 6
        if n * 2 > len(data) - pos:
            raise _too_many(n, len(data) - pos)
        for _ in range(n):
            pos = _binary_skip(data, pos, ktype, depth - 1)
            pos = _binary_skip(data, pos, vtype, depth - 1)
    else:
        while data[pos]:
            pos = _binary_skip(data, pos + 3, _binary_type(data, pos), depth - 1)
        pos += 1
    if pos > len(data):
        raise FrameError("the frame ends inside a value")
    return pos


def _binary_event(data: bytes, pos: int) -> tuple[Event, int]:
    """The ThriftFlumeEvent at ``pos`` (its headers in wire order), and the position after it."""
    end = len(data)
    names = _NAMES
    u32 = _u32
    headers: list[tuple[str, bytes]] = []
    body = b""
    while True:
        ttype = data[pos]
        if not ttype:
            return (headers, body), pos + 1
        (fid,) = _i16(data, pos + 1)
        pos += 3
        if fid == 1 and ttype == _T_MAP:
            headers = []
            if data[pos] != _T_STRING or data[pos + 1] != _T_STRING:
                raise FrameError("headers is not a map<string, string>")
            (n,) = u32(data, pos + 2)
            pos += 6
            if n * 8 > end - pos:
                raise _too_many(n, end - pos)
            append = headers.append
            for _ in range(n):
                (klen,) = u32(data, pos)
                k_end = pos + 4 + klen
                if k_end > end:
                    raise _past_end(klen, end - pos - 4)
                raw = data[pos + 4:k_end]
                (vlen,) = u32(data, k_end)
                pos = k_end + 4
                v_end = pos + vlen
                if v_end > end:
                    raise _past_end(vlen, end - pos)
                name = names.get(raw)
                append((_name(raw) if name is None else name, data[pos:v_end]))
                pos = v_end
        elif fid == 2 and ttype == _T_STRING:
            (n,) = u32(data, pos)
            pos += 4
            b_end = pos + n
            if b_end > end:
                raise _past_end(n, end - pos)
            body = data[pos:b_end]
            pos = b_end
        elif ttype not in _BINARY_TYPES:
            raise FrameError(f"unknown binary type {ttype}")
        elif fid == 1 or fid == 2:
            raise FrameError(f"ThriftFlumeEvent field {fid} has binary type {ttype}")
        else:
            pos = _binary_skip(data, pos, ttype, _MAX_DEPTH - 2)


def binary_call(data: bytes, s: ThriftSettings) -> Call:
    (head,) = _i32(data, 0)
    if head >= 0 or head & -65536 != _BINARY_VERSION_1:
        raise FrameError(f"not a strict binary protocol message (0x{head & 0xFFFFFFFF:08x})")
    (n,) = _u32(data, 4)
    pos = 8 + n
    if pos > len(data):
        raise _past_end(n, len(data) - 8)
    method = _METHODS.get(data[8:pos])
    if head & 0xFF != _CALL or method is None:
        raise FrameError(f"unknown call {data[8:8 + min(n, 64)]!r} (type {head & 0xFF})")
    (seqid,) = _i32(data, pos)
    pos += 4
    batch = method == "appendBatch"
    events: list[Event] = []
    refused: LimitError | None = None
    while data[pos]:
        ttype = _binary_type(data, pos)
        (fid,) = _i16(data, pos + 1)
        pos += 3
        if fid == 1 and batch and ttype == _T_LIST:
            etype = _binary_type(data, pos)
            (n,) = _u32(data, pos + 1)
            pos += 5
            if n > len(data) - pos:
                raise _too_many(n, len(data) - pos)
            if n and etype != _T_STRUCT:
                raise FrameError(f"events is a list of binary type {etype}")
            events, refused, pos = _events(_binary_event, data, pos, n, s)
        elif fid == 1 and not batch and ttype == _T_STRUCT:
            events, refused, pos = _events(_binary_event, data, pos, 1, s)
        elif fid == 1:
            raise FrameError(f"argument 1 has binary type {ttype}")
        else:
            pos = _binary_skip(data, pos, ttype, _MAX_DEPTH - 1)
    if pos + 1 != len(data):
        raise FrameError(f"{len(data) - pos - 1} bytes left over after the call")
    return Call(method, seqid, events, refused)
