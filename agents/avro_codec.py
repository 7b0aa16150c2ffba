"""Flume's Avro RPC, decoded strictly in memory; its replies encoded. Pure: no sockets.

What Flume's ``AvroSource`` speaks (Avro's ``NettyServer`` + ``SpecificResponder``), and
so every Flume SDK client (``NettyAvroRpcClient``, failover, load balancing),
``flume-ng avro-client`` and every upstream ``AvroSink``:

- **Netty framing** (:func:`read_pack_header`, :func:`pack`): a pack is a 4-byte serial
  (the client matches the reply by it), a 4-byte buffer count, then each buffer as a
  4-byte length and its bytes, all big-endian. The buffers joined are one Avro message.
- **The Avro handshake**, once per connection: the first request starts with a
  ``HandshakeRequest`` (the client's protocol MD5, maybe its protocol text, the MD5 it
  believes the server has). The reply starts with a ``HandshakeResponse``: ``BOTH`` when
  both hashes are known, ``CLIENT`` (plus our protocol) when the client guessed our hash
  wrong, ``NONE`` (plus our protocol) when we do not know the client's protocol: that
  request is not answered further and the client sends it again with its protocol text.
- **A call**: call metadata (``map<bytes>``), the message name (``""`` is a handshake
  ping), the request parameters in the client's protocol; the reply is metadata, an error
  flag and the response (the ``Status`` enum: ``OK``, ``FAILED``, ``UNKNOWN``) or an error
  string (``union {string}``).

The protocol is ``AvroSourceProtocol`` (Flume's ``flume-ng-sdk/src/main/avro/flume.avdl``);
``flume.avpr`` beside this file is its JSON exactly as Flume's Java renders it, so its MD5
is the one Flume's clients send and the handshake takes the one-round-trip ``BOTH`` path.
A client with another rendering of it (another Avro library) is served too: its request
schemas are resolved to ours (Avro schema resolution, by fastavro).

The records (handshake, metadata, events) are read and written by fastavro; the framing
and the handshake logic are here. Strict: every read is bounded by the bytes there are
(fastavro raises on a short read), a request must be exactly one message (bytes left over
are an error), anything that does not decode raises :class:`FrameError`. Limits
(:class:`AvroLimits`) are checked per call: events in a batch (against the block count
before any event is decoded), then per event header count, header bytes and event bytes;
a call over one is answered ``UNKNOWN`` (:attr:`Request.refused`).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from agents.records import Event
from agents.thrift_codec import LimitError, Status, over_limit
from core.errors import FrameError

__all__ = ["PROTOCOL_MD5", "PROTOCOL_TEXT", "AvroLimits", "FrameError", "LimitError", "Request", "Session",
           "avro_status", "decode", "encode_request", "pack", "read_pack_header", "reply"]

#: AvroSourceProtocol exactly as Flume 1.11's Java renders it (``Protocol.toString()``)
PROTOCOL_TEXT: Final = Path(__file__).with_name("flume.avpr").read_text(encoding="utf-8").strip()
PROTOCOL_MD5: Final = hashlib.md5(PROTOCOL_TEXT.encode("utf-8")).digest()
_NAMESPACE: Final = "org.apache.flume.source.avro"

#: Avro's Status symbols, by index (what goes on the wire)
AVRO_OK, AVRO_FAILED, AVRO_UNKNOWN = 0, 1, 2
STATUS_NAMES: Final = ("OK", "FAILED", "UNKNOWN")

_MD5 = {"type": "fixed", "name": "MD5", "namespace": "org.apache.avro.ipc", "size": 16}
HANDSHAKE_REQUEST: Final = parse_schema({
    "type": "record", "name": "HandshakeRequest", "namespace": "org.apache.avro.ipc", "fields": [
        {"name": "clientHash", "type": _MD5},
        {"name": "clientProtocol", "type": ["null", "string"]},
        {"name": "serverHash", "type": "MD5"},
        {"name": "meta", "type": ["null", {"type": "map", "values": "bytes"}]}]})
HANDSHAKE_RESPONSE: Final = parse_schema({
    "type": "record", "name": "HandshakeResponse", "namespace": "org.apache.avro.ipc", "fields": [
        {"name": "match", "type": {"type": "enum", "name": "HandshakeMatch", "symbols": ["BOTH", "CLIENT", "NONE"]}},
        {"name": "serverProtocol", "type": ["null", "string"]},
        {"name": "serverHash", "type": ["null", _MD5]},
        {"name": "meta", "type": ["null", {"type": "map", "values": "bytes"}]}]})
_META: Final = parse_schema({"type": "map", "values": "bytes"})
_STRING: Final = parse_schema("string")

MAX_PROTOCOL_TEXT: Final = 65_536  # a client's protocol text in its handshake
MAX_KNOWN_PROTOCOLS: Final = 32  # foreign renderings of the protocol remembered (by MD5)
MESSAGES: Final = ("append", "appendBatch")


class AvroLimits(Protocol):
    """The keys of ``[source.avro]`` the codec checks."""

    @property
    def max_frame_bytes(self) -> int: ...
    @property
    def max_buffers(self) -> int: ...
    @property
    def max_batch_events(self) -> int: ...
    @property
    def max_event_bytes(self) -> int: ...
    @property
    def max_headers(self) -> int: ...
    @property
    def max_header_bytes(self) -> int: ...


def avro_status(status: int) -> int:
    """The Avro Status for a pipeline (Thrift) Status: ERROR, which Avro's enum lacks, is UNKNOWN."""
    if status == Status.OK:
        return AVRO_OK
    return AVRO_FAILED if status == Status.FAILED else AVRO_UNKNOWN


# -- Netty framing ------------------------------------------------------------------------------


def read_pack_header(header: bytes, limits: AvroLimits) -> tuple[int, int]:
    """``(serial, buffer count)`` of an 8-byte pack header; FrameError over ``max_buffers``."""
    serial = int.from_bytes(header[:4], "big", signed=True)
    count = int.from_bytes(header[4:8], "big", signed=True)
    if not 1 <= count <= limits.max_buffers:
        raise FrameError(f"a pack of {count} buffers (1..{limits.max_buffers})")
    return serial, count


def read_buffer_length(header: bytes, left: int) -> int:
    """The length of a buffer from its 4-byte prefix, within the ``left`` bytes the pack may still take."""
    n = int.from_bytes(header, "big", signed=True)
    if n < 0 or n > left:
        raise FrameError(f"a buffer of {n} bytes; the pack may take {max(left, 0)} more (max_frame_bytes)")
    return n


def pack(serial: int, payload: bytes) -> bytes:
    """One pack of one buffer, as Avro's NettyFrameEncoder writes it."""
    return (serial.to_bytes(4, "big", signed=True) + b"\x00\x00\x00\x01"
            + len(payload).to_bytes(4, "big") + payload)


# -- protocols and the handshake ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Remote:
    """A client's protocol: the writer schema of each of its messages' parameters."""

    md5: bytes
    requests: Mapping[str, Any]
    ours: bool = False


def _request_schema(message: str, params: list[Any], named: dict[str, Any]) -> Any:
    return parse_schema({"type": "record", "name": f"{message}_request", "namespace": _NAMESPACE,
                         "fields": params}, named_schemas=named)


def _remote_of(text: str, md5: bytes, ours: bool = False) -> Remote:
    """The parameter schemas of a protocol's JSON text; FrameError if it is not a protocol
    with Flume's messages."""
    try:
        proto = json.loads(text)
        namespace = proto.get("namespace", "")
        named: dict[str, Any] = {}
        for t in proto.get("types", []):
            t = dict(t)
            if "." not in t["name"] and "namespace" not in t and namespace:
                t["namespace"] = namespace
            parse_schema(t, named_schemas=named)
        requests: dict[str, Any] = {}
        for name, message in proto.get("messages", {}).items():
            if name in MESSAGES:
                params = [dict(p, type=_qualify(p["type"], namespace)) for p in message["request"]]
                requests[name] = _request_schema(name, params, named)
    except FrameError:
        raise
    except Exception as exc:
        raise FrameError(f"the client's protocol does not parse: {type(exc).__name__}: {exc}") from None
    if not requests:
        raise FrameError("the client's protocol has neither append nor appendBatch")
    return Remote(md5, requests, ours)


def _qualify(t: Any, namespace: str) -> Any:
    """A type with its bare named references qualified by the protocol's namespace."""
    if isinstance(t, str):
        primitive = t in ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
        return t if primitive or "." in t or not namespace else f"{namespace}.{t}"
    if isinstance(t, list):
        return [_qualify(x, namespace) for x in t]
    if isinstance(t, dict) and t.get("type") in ("array", "map"):
        key = "items" if t["type"] == "array" else "values"
        return dict(t, **{key: _qualify(t[key], namespace)})
    return t


OURS: Final = _remote_of(PROTOCOL_TEXT, PROTOCOL_MD5, ours=True)
_known: dict[bytes, Remote] = {}  # foreign renderings seen, by MD5 (bounded)


def _read(fo: io.BytesIO, schema: Any, reader: Any = None, **kwargs: Any) -> Any:
    """One record by fastavro (typed Any: what it returns depends on the schema)."""
    return schemaless_reader(fo, schema, reader, **kwargs)


def _encode(schema: Any, record: Any) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, schema, record)
    return out.getvalue()


_BOTH: Final = _encode(HANDSHAKE_RESPONSE, {"match": "BOTH", "serverProtocol": None, "serverHash": None,
                                            "meta": None})


def _handshake_response(match: str) -> bytes:
    if match == "BOTH":
        return _BOTH
    return _encode(HANDSHAKE_RESPONSE, {"match": match, "serverProtocol": PROTOCOL_TEXT,
                                        "serverHash": PROTOCOL_MD5, "meta": None})


def _handshake(fo: io.BytesIO, session: Session) -> tuple[Remote | None, bytes]:
    """Reads a HandshakeRequest: the client's protocol (None if unknown) and the response."""
    request = _read(fo, HANDSHAKE_REQUEST)
    client_hash, text = request["clientHash"], request["clientProtocol"]
    remote = OURS if client_hash == PROTOCOL_MD5 else _known.get(client_hash)
    if remote is None and text is not None:
        if len(text) > MAX_PROTOCOL_TEXT:
            raise FrameError(f"a client protocol of {len(text)} characters (max {MAX_PROTOCOL_TEXT})")
        remote = _remote_of(text, client_hash)
        if len(_known) < MAX_KNOWN_PROTOCOLS:
            _known[client_hash] = remote
    if request["serverHash"] == PROTOCOL_MD5:
        match = "BOTH" if remote is not None else "NONE"
    else:
        match = "CLIENT" if remote is not None else "NONE"
    return remote, _handshake_response(match)


# -- calls --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Session:
    """One connection's state: the client's protocol once a handshake matched."""

    remote: Remote | None = None
    failed_handshakes: int = 0


@dataclass(slots=True)
class Request:
    """One decoded request.

    ``kind``: ``handshake`` (it did not match: answer ``prefix`` alone), ``ping`` (a
    handshake ping), ``call`` (``method`` with ``events``, or ``refused`` by a limit) or
    ``unknown`` (a message we do not have: answer an error).
    """

    kind: Literal["handshake", "ping", "call", "unknown"]
    prefix: bytes = b""  # the handshake response, on a connection's first request
    method: str = ""
    events: list[Event] = field(default_factory=list)
    refused: LimitError | None = None
    count: int = 0  # the events the call carries (those a refused batch claims, undecoded)


#: header names seen often, cleaned once (see :func:`_name`)
_NAMES: dict[str, str] = {}


def _name(raw: str) -> str:
    """A header name fit for a Kafka header key (no lone surrogates), remembered when short."""
    name = _NAMES.get(raw)
    if name is None:
        name = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        if len(_NAMES) < 4096 and len(raw) <= 64:
            _NAMES[raw] = name
    return name


def _event(e: Mapping[str, Any]) -> Event:
    return ([(_name(k), v.encode("utf-8", "surrogateescape")) for k, v in e["headers"].items()], e["body"])


def _first_block_count(data: bytes, pos: int) -> int:
    """The item count of the array block at ``pos`` (a zigzag varint; negative: a sized block)."""
    result = shift = 0
    for i in range(pos, min(pos + 10, len(data))):
        b = data[i]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return abs((result >> 1) ^ -(result & 1))
        shift += 7
    raise FrameError("the events array's count does not decode")


def decode(payload: bytes, session: Session, limits: AvroLimits) -> Request:
    """The request in ``payload`` (the buffers of one pack, joined); FrameError (only) for
    anything that is not exactly one request of this protocol."""
    try:
        return _decode(payload, session, limits)
    except FrameError:
        raise
    except Exception as exc:  # fastavro: EOFError on a short read, ValueError, UnicodeError, ...
        raise FrameError(f"the request does not decode: {type(exc).__name__}: {exc}") from None


def _decode(payload: bytes, session: Session, limits: AvroLimits) -> Request:
    fo = io.BytesIO(payload)
    prefix = b""
    remote = session.remote
    if remote is None:
        remote, prefix = _handshake(fo, session)
        if remote is None:
            session.failed_handshakes += 1
            return Request("handshake", prefix)  # the client resends with its protocol
        session.remote = remote
    _read(fo, _META)  # call metadata: nothing we use
    method = _read(fo, _STRING)
    if method == "":
        if fo.tell() != len(payload):
            raise FrameError(f"{len(payload) - fo.tell()} bytes left over after a handshake ping")
        return Request("ping", prefix)
    writer = remote.requests.get(method)
    if writer is None:
        return Request("unknown", prefix, method=method[:64])
    reader = OURS.requests[method]
    if remote.ours and method == "appendBatch":
        n = _first_block_count(payload, fo.tell())
        if n > limits.max_batch_events:
            return Request("call", prefix, method, [], LimitError(
                "batch_too_large", f"{n} events in one call (max {limits.max_batch_events})"), n)
    params = _read(fo, writer, None if remote.ours else reader,
                               handle_unicode_errors="surrogateescape")
    if fo.tell() != len(payload):
        raise FrameError(f"{len(payload) - fo.tell()} bytes left over after the request")
    raw = params["events"] if method == "appendBatch" else (params["event"],)
    if len(raw) > limits.max_batch_events:
        return Request("call", prefix, method, [], LimitError(
            "batch_too_large", f"{len(raw)} events in one call (max {limits.max_batch_events})"), len(raw))
    events = [_event(e) for e in raw]
    refused: LimitError | None = None
    for ev in events:
        refused = over_limit(ev, limits)
        if refused is not None:
            break
    return Request("call", prefix, method, events, refused, len(events))


# -- replies ------------------------------------------------------------------------------------

_NO_META: Final = b"\x00"  # an empty map


def reply(request: Request, status: int) -> bytes:
    """The response payload to a call: the Avro ``status`` (``AVRO_OK``...)."""
    return request.prefix + _NO_META + b"\x00" + bytes((status * 2,))  # no error; the enum index, zigzag


def error_reply(request: Request, message: str) -> bytes:
    """An error response (Avro's ``union {string}`` of system errors): the client raises it."""
    return request.prefix + _NO_META + b"\x01\x00" + _encode(_STRING, message)


def handshake_only(request: Request) -> bytes:
    """The reply to a request whose handshake did not match, or to a ping."""
    return request.prefix


# -- for clients and tests ----------------------------------------------------------------------

_EVENT_SCHEMA: Final = OURS.requests


def encode_request(method: str, events: list[tuple[Mapping[str, str], bytes]], handshake: bool = True,
                   client_protocol: str | None = None, client_hash: bytes = PROTOCOL_MD5,
                   server_hash: bytes = PROTOCOL_MD5) -> bytes:
    """A request as Flume's client writes it (with the handshake, for a connection's first)."""
    out = io.BytesIO()
    if handshake:
        schemaless_writer(out, HANDSHAKE_REQUEST, {"clientHash": client_hash, "clientProtocol": client_protocol,
                                                   "serverHash": server_hash, "meta": None})
    schemaless_writer(out, _META, {})
    schemaless_writer(out, _STRING, method)
    records = [{"headers": dict(h), "body": b} for h, b in events]
    if method == "appendBatch":
        schemaless_writer(out, _EVENT_SCHEMA["appendBatch"], {"events": records})
    elif method == "append":
        schemaless_writer(out, _EVENT_SCHEMA["append"], {"event": records[0]})
    return out.getvalue()


def decode_reply(payload: bytes, handshake: bool = True) -> tuple[str | None, str | None]:
    """``(handshake match, status name or error text)`` of a reply, as a client reads it."""
    fo = io.BytesIO(payload)
    match = None
    if handshake:
        match = _read(fo, HANDSHAKE_RESPONSE)["match"]
        if match == "NONE":
            return match, None
    _read(fo, _META)
    if fo.read(1) == b"\x01":
        fo.read(1)
        return match, "error: " + _read(fo, _STRING)
    index = _read(fo, parse_schema("int"))
    return match, STATUS_NAMES[index]
