"""Fuzzing the Thrift source's frame reader and decoder (hypothesis).

Whatever the bytes: the decoder returns a call or raises FrameError, in time and memory
bounded by the frame's size (never by a length the bytes claim); the connection loop ends
only with FrameError, a timeout hang-up or the client's end of stream; valid calls decode
to exactly what a Thrift client sent, unknown fields skipped, and the limits the decoder
checks as it goes refuse exactly what counting each decoded event would.

Examples per test come from the hypothesis profile: ``spillway`` (default, fast) or
``spillway-long`` (``SPILLWAY_HYPOTHESIS_PROFILE=spillway-long``).
"""

from __future__ import annotations

import asyncio
import io
import os
import struct
import tracemalloc
from typing import Any

import pytest
import thriftpy2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.thrift import TMessageType
from thriftpy2.transport import TMemoryBuffer

from agents.thrift_codec import _SERVICE, Codec, Status, ThriftFlumeEvent
from agents.thrift_source import ThriftSource, _Hangup
from core.errors import FrameError
from core.metrics import Metrics
from core.settings import Size, ThriftSettings

settings.register_profile("spillway", max_examples=100, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("spillway-long", max_examples=5_000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("SPILLWAY_HYPOTHESIS_PROFILE", "spillway"))
EXAMPLES = settings().max_examples

PROTOCOLS = ["compact", "binary"]
FACTORIES: dict[str, Any] = {"compact": TCompactProtocolFactory(), "binary": TBinaryProtocolFactory()}

# The same calls with extra fields a newer client might send: the decoder must skip them.
extended = thriftpy2.load_fp(io.StringIO("""
struct Inner { 1: optional i16 a, 2: optional list<bool> flags, 3: optional map<i32, string> m }
struct EventV2 {
  1: required map<string, string> headers,
  2: required binary body,
  3: optional list<map<string, i64>> extra,
  4: optional double ratio,
  5: optional bool flag,
  6: optional Inner inner,
  7: optional set<byte> bytes_,
}
service Flume2 {
  i32 append(1: EventV2 event, 2: optional i64 trace),
  i32 appendBatch(1: list<EventV2> events, 2: optional string note, 3: optional list<Inner> more),
}
"""), module_name="flume_extended_thrift")


def encode_call(protocol: str, name: str, seqid: int, service: Any = _SERVICE, **args: object) -> bytes:
    buf = TMemoryBuffer()
    proto = FACTORIES[protocol].get_protocol(buf)
    proto.write_message_begin(name, TMessageType.CALL, seqid)
    proto.write_struct(getattr(service, name + "_args")(**args))
    proto.write_message_end()
    return buf.getvalue()


def shape(e: Any) -> tuple[list[tuple[str, bytes]], bytes]:
    """An event as the source hands it on: (name, value bytes) pairs in order, and the body."""
    def name(k: str | bytes) -> str:
        return k if isinstance(k, str) else k.decode("utf-8", "replace")

    def value(v: str | bytes) -> bytes:
        return v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v

    return [(name(k), value(v)) for k, v in (e.headers or {}).items()], e.body or b""


def as_text(value: str | bytes) -> str | bytes:
    """What the decoder gives back for a Thrift string: text when valid UTF-8."""
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


# -- strategies ---------------------------------------------------------------------------------

header_texts = st.text(max_size=12) | st.binary(max_size=12)
events = st.builds(lambda h, b: ThriftFlumeEvent(headers=h, body=b),
                   st.dictionaries(st.text(max_size=12), header_texts, max_size=5), st.binary(max_size=64))
inners = st.builds(lambda a, f, m: extended.Inner(a=a, flags=f, m=m),
                   st.none() | st.integers(-2**15, 2**15 - 1), st.none() | st.lists(st.booleans(), max_size=4),
                   st.none() | st.dictionaries(st.integers(-2**31, 2**31 - 1), st.text(max_size=5), max_size=3))
events_v2 = st.builds(
    lambda e, extra, ratio, flag, inner, bs: extended.EventV2(headers=e.headers, body=e.body, extra=extra,
                                                              ratio=ratio, flag=flag, inner=inner, bytes_=bs),
    events, st.none() | st.lists(st.dictionaries(st.text(max_size=4), st.integers(-2**63, 2**63 - 1), max_size=2),
                                 max_size=3),
    st.none() | st.floats(allow_nan=False), st.none() | st.booleans(), st.none() | inners,
    st.none() | st.sets(st.integers(-128, 127), max_size=4))
# compact writes the seqid as an unsigned varint (thriftpy2 loops forever on a negative one)
seqids = {"compact": st.integers(0, 2**31 - 1), "binary": st.integers(-2**31, 2**31 - 1)}


@st.composite
def valid_frames(draw: st.DrawFn, protocol: str) -> bytes:
    seqid = draw(seqids[protocol])
    if draw(st.booleans()):
        return encode_call(protocol, "appendBatch", seqid, events=draw(st.lists(events, max_size=6)))
    return encode_call(protocol, "append", seqid, event=draw(events))


CLAIMS = [b"\xff\xff\xff\x7f", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00", b"\xff" * 12, b"\x0f\xff\xff\xff\x07",
          b"\x01\x7f\xff\xff\xff", b"\x9f", b"\xbb\xff\xff\xff\x07\x00", b"\x00"]


@st.composite
def mutated(draw: st.DrawFn, frame: bytes) -> bytes:
    """``frame`` with a few random edits: bit flips, new bytes, cuts, insertions, huge claims."""
    data = bytearray(frame)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "truncate", "claim"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:pos + draw(st.integers(1, 8))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "truncate":
            del data[pos:]
        else:
            claim = draw(st.sampled_from(CLAIMS))
            data[pos:pos + len(claim)] = claim
    return bytes(data)


def decode_or_frame_error(codec: Codec, frame: bytes) -> Any:
    try:
        return codec.decode(frame)
    except FrameError:
        return None


# -- the decoder --------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@given(frame=st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_raise_frame_error_only(protocol: str, frame: bytes) -> None:
    decode_or_frame_error(Codec(protocol), frame)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@given(data=st.data())
def test_mutated_valid_frames_decode_or_raise_frame_error_only(protocol: str, data: st.DataObject) -> None:
    frame = data.draw(mutated(data.draw(valid_frames(protocol))))
    call = decode_or_frame_error(Codec(protocol), frame)
    if call is not None:  # what decodes is well-formed
        assert call.name in ("append", "appendBatch")
        for headers, body in call.events:
            assert isinstance(body, bytes) and isinstance(headers, list)
            assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in headers)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@given(data=st.data())
@settings(max_examples=max(20, EXAMPLES // 3))
def test_decoding_allocates_in_proportion_to_the_frame_never_to_a_claimed_length(
        protocol: str, data: st.DataObject) -> None:
    frame = data.draw(mutated(data.draw(valid_frames(protocol))) | st.binary(max_size=256))
    codec = Codec(protocol)
    tracemalloc.start()
    try:
        decode_or_frame_error(codec, frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 + 400 * len(frame), f"{peak} bytes at peak for a frame of {len(frame)}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@given(data=st.data())
@settings(max_examples=max(20, EXAMPLES // 2))
def test_valid_calls_round_trip_with_their_seqid_headers_and_bodies(protocol: str, data: st.DataObject) -> None:
    codec = Codec(protocol)
    seqid = data.draw(seqids[protocol])
    batch = data.draw(st.lists(events, max_size=8))
    call = codec.decode(encode_call(protocol, "appendBatch", seqid, events=batch))
    assert (call.name, call.seqid) == ("appendBatch", seqid)
    assert call.events == [shape(e) for e in batch]
    # the reply carries the seqid back, as a Thrift client reads it
    reply = codec.reply(call, Status.OK)
    assert int.from_bytes(reply[:4], "big") == len(reply) - 4
    proto = FACTORIES[protocol].get_protocol(TMemoryBuffer(reply[4:]))
    assert proto.read_message_begin() == ("appendBatch", TMessageType.REPLY, seqid)
    result = _SERVICE.appendBatch_result()
    proto.read_struct(result)
    assert result.success == Status.OK


@pytest.mark.parametrize("protocol", PROTOCOLS)
@given(data=st.data())
@settings(max_examples=max(20, EXAMPLES // 2))
def test_unknown_fields_of_newer_clients_are_skipped(protocol: str, data: st.DataObject) -> None:
    codec = Codec(protocol)
    batch = data.draw(st.lists(events_v2, max_size=4))
    frame = encode_call(protocol, "appendBatch", 5, extended.Flume2, events=batch,
                        note=data.draw(st.none() | st.text(max_size=8)),
                        more=data.draw(st.none() | st.lists(inners, max_size=3)))
    call = codec.decode(frame)
    assert call.events == [shape(e) for e in batch]
    one = data.draw(events_v2)
    call = codec.decode(encode_call(protocol, "append", 6, extended.Flume2, event=one,
                                    trace=data.draw(st.none() | st.integers(-2**63, 2**63 - 1))))
    assert call.events == [shape(one)]


def reference_refusal(events: list[tuple[list[tuple[str, bytes]], bytes]], s: ThriftSettings) -> str | None:
    """The first limit a call breaks, counted event by event after decoding."""
    if len(events) > min(s.max_batch_events, s.max_inflight_events_per_connection):
        return "batch_too_large"
    for headers, body in events:
        header_bytes = sum(len(k) + len(v) for k, v in headers)
        if len(headers) > s.max_headers:
            return "too_many_headers"
        if header_bytes > s.max_header_bytes:
            return "headers_too_large"
        if header_bytes + len(body) > s.max_event_bytes:
            return "event_too_large"
    return None


limits = st.builds(ThriftSettings, max_batch_events=st.integers(1, 8), max_event_bytes=st.integers(0, 120).map(Size),
                   max_headers=st.integers(0, 6), max_header_bytes=st.integers(0, 60).map(Size),
                   max_inflight_events_per_connection=st.integers(1, 8))


@pytest.mark.parametrize("protocol", PROTOCOLS)
@given(data=st.data())
@settings(max_examples=max(20, EXAMPLES // 2))
def test_limits_checked_while_decoding_refuse_exactly_what_counting_each_event_would(
        protocol: str, data: st.DataObject) -> None:
    s = data.draw(limits)
    codec = Codec(protocol, s)
    batch = data.draw(st.lists(events_v2 if data.draw(st.booleans()) else events, max_size=8))
    call = codec.decode(encode_call(protocol, "appendBatch", 1, extended.Flume2, events=batch))
    assert call.events == [shape(e) for e in batch]
    assert (None if call.refused is None else call.refused.reason) == reference_refusal(call.events, s)


def test_thriftpy2_zero_width_element_bombs_are_refused_at_once() -> None:
    """Frames of a few bytes that made thriftpy2's readers loop 2^31 times (or build a huge
    varint) are refused without work."""
    name = b"appendBatch"
    binary = struct.pack("!iI", -2147418111, len(name)) + name + struct.pack("!i", 1)
    compact = bytes([0x82, 0x21, 0x01, len(name)]) + name
    bombs = {
        "binary": [binary + b"\x0f\x00\x01" + b"\x01" + struct.pack("!i", 2**31 - 1) + b"\x00",  # list of VOID
                   binary + b"\x0d\x00\x09" + b"\x01\x01" + struct.pack("!i", 2**31 - 1),  # unknown field: map
                   binary + b"\x0f\x00\x01\x0c" + struct.pack("!i", 2**31 - 1) + b"\x00" * 8],  # 2^31 structs
        "compact": [compact + b"\x19\x1c" + b"\x1b" + b"\xff\xff\xff\xff\x07" + b"\x00\x00\x00",  # map of STOP
                    compact + b"\x29\xf0" + b"\xff\xff\xff\xff\x07" + b"\x00",  # unknown field: list of STOP
                    bytes([0x82, 0x21]) + b"\xff" * 200_000 + b"\x01" + bytes([len(name)]) + name],  # varint
    }
    for protocol, frames in bombs.items():
        for frame in frames:
            with pytest.raises(FrameError):
                Codec(protocol).decode(frame)


# -- the connection loop: frame reader + decoder + answer ---------------------------------------


class _Writer:
    """A StreamWriter whose socket takes every reply at once."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.transport = self

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.out.append(data)

    async def drain(self) -> None:
        pass


async def _serve_stream(stream: bytes, protocol: str) -> tuple[BaseException | None, int]:
    async def handler(evs: Any) -> int:
        return int(Status.OK)

    s = ThriftSettings(protocol=protocol, max_frame_bytes=4096,  # type: ignore[arg-type]
                       idle_timeout=5.0, frame_timeout=5.0)  # type: ignore[arg-type]
    source = ThriftSource(s, handler, Metrics())
    source.listening = True
    reader = asyncio.StreamReader()
    reader.feed_data(stream)
    reader.feed_eof()
    writer = _Writer()
    try:
        await source._serve(reader, writer)  # type: ignore[arg-type]
    except (FrameError, asyncio.IncompleteReadError, _Hangup) as exc:
        return exc, len(writer.out)
    return None, len(writer.out)


@st.composite
def streams(draw: st.DrawFn, protocol: str) -> bytes:
    """Several length-prefixed frames, valid or mutated, or just bytes."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        frame = draw(valid_frames(protocol))
        if draw(st.booleans()):
            frame = draw(mutated(frame))
        length = len(frame) if draw(st.integers(0, 4)) else draw(st.integers(-2**31, 2**31 - 1))
        parts.append(struct.pack("!i", length) + frame)
    if draw(st.booleans()):
        parts.append(draw(st.binary(max_size=64)))
    return b"".join(parts)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@given(data=st.data())
@settings(max_examples=max(20, EXAMPLES // 2))
def test_the_connection_loop_ends_only_with_a_frame_error_or_the_clients_end_of_stream(
        protocol: str, data: st.DataObject) -> None:
    stream = data.draw(streams(protocol))
    exc, replies = asyncio.run(_serve_stream(stream, protocol))
    assert exc is not None and not isinstance(exc, _Hangup)  # all bytes are there: no timeout may fire


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_valid_frames_in_one_stream_are_each_answered(protocol: str) -> None:
    frames = [encode_call(protocol, "append", i, event=ThriftFlumeEvent(headers={"n": str(i)}, body=b"x"))
              for i in range(5)]
    stream = b"".join(struct.pack("!i", len(f)) + f for f in frames)
    exc, replies = asyncio.run(_serve_stream(stream, protocol))
    assert isinstance(exc, asyncio.IncompleteReadError) and replies == 5
