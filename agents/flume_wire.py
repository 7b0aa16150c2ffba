"""A fast path for decoding Flume's two calls, in both Thrift protocols.

thriftpy2's generic protocols cost ~25 µs an event in pure Python (a function call
per byte read, a spec lookup per field), which made decoding the largest share of the
source's profile. Flume's calls have one fixed shape::

    appendBatch(1: list<ThriftFlumeEvent> events)   append(1: ThriftFlumeEvent event)
    ThriftFlumeEvent { 1: map<string,string> headers, 2: binary body }

so this module reads exactly that shape from the frame with index arithmetic. It is
strict: any deviation (another field, a type that is not the IDL's, a length past the
frame's end) raises :class:`Unusual` and the caller falls back to thriftpy2's own
decoder, which handles (or refuses) everything else. Every length is checked against
the bytes left before anything is sliced, so no allocation is driven by a claimed
length. An event comes out as ``(headers, body)`` with headers a list of
``(name: str, value: bytes)`` pairs, in wire order, ready to be Kafka record headers.
"""

from __future__ import annotations

import struct
from typing import Final

Event = tuple[list[tuple[str, bytes]], bytes]

_CALL: Final = 1
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_I16 = struct.Struct(">h")


class Unusual(Exception):
    """The frame is not Flume's canonical shape; decode it the slow, general way."""


#: header names seen often: decoding them once saves a str per header per event
_NAMES: dict[bytes, str] = {}


def _name(raw: bytes) -> str:
    name = _NAMES.get(raw)
    if name is None:
        name = raw.decode("utf-8", "replace")  # Kafka header names are UTF-8 strings
        if len(_NAMES) < 4096 and len(raw) <= 64:  # short names only: the cache must stay small
            _NAMES[raw] = name
    return name


# -- compact protocol ------------------------------------------------------------------------------

def _varint(data: bytes, pos: int) -> tuple[int, int]:
    b = data[pos]  # IndexError past the end -> Unusual (caught by the caller)
    if b < 0x80:
        return b, pos + 1
    result = b & 0x7F
    shift = 7
    pos += 1
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 35:
            raise Unusual("varint too long")


def _compact_event(data: bytes, pos: int, end: int) -> tuple[Event, int]:
    headers: list[tuple[str, bytes]] = []
    body = b""
    last = 0
    while True:
        fb = data[pos]
        pos += 1
        if fb == 0:
            return (headers, body), pos
        delta, ftype = fb >> 4, fb & 0x0F
        if delta == 0:
            raise Unusual("long-form field header")
        fid = last + delta
        last = fid
        if fid == 1 and ftype == 11:  # map<string,string>
            size, pos = _varint(data, pos)
            if size:
                if data[pos] != 0x88:
                    raise Unusual("map of other types")
                pos += 1
                if size > (end - pos) // 2:
                    raise Unusual("map larger than the frame")
                for _ in range(size):
                    n, pos = _varint(data, pos)
                    k_end = pos + n
                    if k_end > end:
                        raise Unusual("header name past the frame")
                    k = data[pos:k_end]
                    n, pos = _varint(data, k_end)
                    v_end = pos + n
                    if v_end > end:
                        raise Unusual("header value past the frame")
                    headers.append((_name(k), data[pos:v_end]))
                    pos = v_end
        elif fid == 2 and ftype == 8:  # binary
            n, pos = _varint(data, pos)
            b_end = pos + n
            if b_end > end:
                raise Unusual("body past the frame")
            body = data[pos:b_end]
            pos = b_end
        else:
            raise Unusual(f"field {fid} of type {ftype}")


def decode_compact(data: bytes) -> tuple[str, int, list[Event]]:
    """(method, seqid, events) of a compact-protocol Flume call, or raise Unusual."""
    try:
        end = len(data)
        if data[0] != 0x82 or data[1] & 0x1F != 1 or data[1] >> 5 != _CALL:
            raise Unusual("not a compact CALL")
        seqid, pos = _varint(data, 2)
        seqid &= 0xFFFFFFFF  # a varint32 on the wire; never echo more than 32 bits
        n, pos = _varint(data, pos)
        name = data[pos:pos + n]
        pos += n
        events: list[Event] = []
        fb = data[pos]
        pos += 1
        if name == b"appendBatch":
            if fb != 0x19:
                raise Unusual("appendBatch without its list")
            lh = data[pos]
            pos += 1
            if lh & 0x0F != 12:
                raise Unusual("list of other types")
            count = lh >> 4
            if count == 15:
                count, pos = _varint(data, pos)
            if count > end - pos:
                raise Unusual("list larger than the frame")
            for _ in range(count):
                ev, pos = _compact_event(data, pos, end)
                events.append(ev)
        elif name == b"append":
            if fb != 0x1C:
                raise Unusual("append without its event")
            ev, pos = _compact_event(data, pos, end)
            events.append(ev)
        else:
            raise Unusual("another method")
        if data[pos] != 0 or pos + 1 != end:
            raise Unusual("more after the call")
        return name.decode(), seqid, events
    except IndexError:
        raise Unusual("frame ends early") from None


# -- binary protocol -------------------------------------------------------------------------------

def _binary_event(data: bytes, pos: int, end: int) -> tuple[Event, int]:
    headers: list[tuple[str, bytes]] = []
    body = b""
    u32 = _U32.unpack_from
    while True:
        ftype = data[pos]
        if ftype == 0:
            return (headers, body), pos + 1
        (fid,) = _I16.unpack_from(data, pos + 1)
        pos += 3
        if fid == 1 and ftype == 13:  # map
            if data[pos] != 11 or data[pos + 1] != 11:
                raise Unusual("map of other types")
            (size,) = u32(data, pos + 2)
            pos += 6
            if size > (end - pos) // 8:
                raise Unusual("map larger than the frame")
            for _ in range(size):
                (n,) = u32(data, pos)
                k_end = pos + 4 + n
                if k_end > end:
                    raise Unusual("header name past the frame")
                k = data[pos + 4:k_end]
                (n,) = u32(data, k_end)
                v_end = k_end + 4 + n
                if v_end > end:
                    raise Unusual("header value past the frame")
                headers.append((_name(k), data[k_end + 4:v_end]))
                pos = v_end
        elif fid == 2 and ftype == 11:  # binary
            (n,) = u32(data, pos)
            b_end = pos + 4 + n
            if b_end > end:
                raise Unusual("body past the frame")
            body = data[pos + 4:b_end]
            pos = b_end
        else:
            raise Unusual(f"field {fid} of type {ftype}")


def decode_binary(data: bytes) -> tuple[str, int, list[Event]]:
    """(method, seqid, events) of a strict binary-protocol Flume call, or raise Unusual."""
    try:
        end = len(data)
        (version,) = _U32.unpack_from(data, 0)
        if version != 0x80010000 | _CALL:
            raise Unusual("not a strict binary CALL")
        (n,) = _U32.unpack_from(data, 4)
        name = data[8:8 + n]
        pos = 8 + n
        (seqid,) = _I32.unpack_from(data, pos)
        pos += 4
        events: list[Event] = []
        ftype = data[pos]
        (fid,) = _I16.unpack_from(data, pos + 1)
        pos += 3
        if name == b"appendBatch":
            if (ftype, fid) != (15, 1) or data[pos] != 12:
                raise Unusual("appendBatch without its list")
            (count,) = _U32.unpack_from(data, pos + 1)
            pos += 5
            if count > end - pos:
                raise Unusual("list larger than the frame")
            for _ in range(count):
                ev, pos = _binary_event(data, pos, end)
                events.append(ev)
        elif name == b"append":
            if (ftype, fid) != (12, 1):
                raise Unusual("append without its event")
            ev, pos = _binary_event(data, pos, end)
            events.append(ev)
        else:
            raise Unusual("another method")
        if data[pos] != 0 or pos + 1 != end:
            raise Unusual("more after the call")
        return name.decode(), seqid, events
    except (IndexError, struct.error):
        raise Unusual("frame ends early") from None
