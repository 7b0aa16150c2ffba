"""Frames decoded in memory: Flume's calls in, limits checked, replies out, garbage refused."""

from __future__ import annotations

import os
import struct
import tracemalloc
from typing import Any

import pytest
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.thrift import TMessageType
from thriftpy2.transport import TMemoryBuffer

from agents.records import Call
from agents.thrift_codec import _SERVICE, Codec, Status, ThriftFlumeEvent
from core.errors import FrameError
from core.settings import Size, ThriftSettings

PROTOCOLS = ["compact", "binary"]
FACTORIES: dict[str, Any] = {"compact": TCompactProtocolFactory(), "binary": TBinaryProtocolFactory()}


def encode_call(protocol: str, name: str, seqid: int, **args: object) -> bytes:
    buf = TMemoryBuffer()
    proto = FACTORIES[protocol].get_protocol(buf)
    proto.write_message_begin(name, TMessageType.CALL, seqid)
    proto.write_struct(getattr(_SERVICE, name + "_args")(**args))
    proto.write_message_end()
    return buf.getvalue()


def events(n: int) -> list[ThriftFlumeEvent]:
    return [ThriftFlumeEvent(headers={"topic": f"t{i % 3}", "key": f"k{i}", "é": "ü" * i}, body=os.urandom(i * 37))
            for i in range(n)]


# -- Flume's calls ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_append_batch_decodes_to_its_events_and_the_reply_carries_the_seqid(protocol: str) -> None:
    codec = Codec(protocol)
    evs = [ThriftFlumeEvent(headers={"topic": "t", "n": str(i)}, body=b"\x00" * i) for i in range(5)]
    call = codec.decode(encode_call(protocol, "appendBatch", 42, events=evs))
    assert (call.name, call.seqid, call.refused) == ("appendBatch", 42, None)
    assert [dict(h)["n"] for h, _ in call.events] == [b"0", b"1", b"2", b"3", b"4"]
    assert [body for _, body in call.events] == [b"\x00" * i for i in range(5)]
    reply = codec.reply(call, Status.OK)
    assert int.from_bytes(reply[:4], "big") == len(reply) - 4
    proto = FACTORIES[protocol].get_protocol(TMemoryBuffer(reply[4:]))
    assert proto.read_message_begin() == ("appendBatch", TMessageType.REPLY, 42)
    result = _SERVICE.appendBatch_result()
    proto.read_struct(result)
    assert result.success == Status.OK


def thriftpy2_reply(protocol: str, name: str, seqid: int, status: int) -> bytes:
    """The reply as thriftpy2 writes it (what spillway's replies were until they were written by hand)."""
    buf = TMemoryBuffer()
    proto = FACTORIES[protocol].get_protocol(buf)
    proto.write_message_begin(name, TMessageType.REPLY, seqid)
    proto.write_struct(getattr(_SERVICE, name + "_result")(success=status))
    proto.write_message_end()
    body = buf.getvalue()
    return len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_replies_are_thriftpy2s_byte_for_byte(protocol: str) -> None:
    seqids = [0, 1, 127, 128, 16_383, 16_384, 2**21, 2**28, 2**31 - 1]
    seqids += [2**31, 2**32 - 1] if protocol == "compact" else [-1, -(2**31)]  # as each decoder reads them
    codec = Codec(protocol)
    for name in ("append", "appendBatch"):
        for seqid in seqids:
            for status in (Status.OK, Status.FAILED, Status.ERROR, Status.UNKNOWN):
                assert codec.reply(Call(name, seqid, []), status) == thriftpy2_reply(protocol, name, seqid, status)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("n", [0, 1, 14, 15, 16, 300])
def test_append_batch_decodes_like_thriftpy2(protocol: str, n: int) -> None:
    evs = events(n)
    call = Codec(protocol).decode(encode_call(protocol, "appendBatch", 77, events=evs))
    assert (call.name, call.seqid) == ("appendBatch", 77)
    assert [(dict((k, v.decode()) for k, v in h), b) for h, b in call.events] == [(e.headers, e.body) for e in evs]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_append_decodes_one_event_and_large_seqids_survive(protocol: str) -> None:
    call = Codec(protocol).decode(encode_call(protocol, "append", 2**31 - 1,
                                              event=ThriftFlumeEvent(headers={}, body=b"x")))
    assert (call.name, call.seqid, call.events) == ("append", 2**31 - 1, [([], b"x")])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_event_without_its_fields_decodes_empty(protocol: str) -> None:
    call = Codec(protocol).decode(encode_call(protocol, "append", 1, event=ThriftFlumeEvent(headers=None, body=None)))
    assert call.events == [([], b"")]


# -- garbage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_garbage_and_truncated_frames_raise_frame_errors(protocol: str) -> None:
    codec = Codec(protocol)
    good = encode_call(protocol, "appendBatch", 1, events=[ThriftFlumeEvent(headers={"a": "b"}, body=b"x" * 100)])
    for frame in (b"", b"\x00", os.urandom(64), good[: len(good) // 2], good[:-3]):
        with pytest.raises(FrameError):
            codec.decode(frame)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_anything_but_exactly_one_call_is_a_frame_error(protocol: str) -> None:
    codec = Codec(protocol)
    good = encode_call(protocol, "appendBatch", 1, events=events(3))
    for frame in (b"", good[:-1], good + b"\x00", good[: len(good) // 2], os.urandom(50)):
        with pytest.raises(FrameError):
            codec.decode(frame)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_truncation_is_a_frame_error_and_every_bit_flip_one_or_a_consistent_call(protocol: str) -> None:
    codec = Codec(protocol)
    good = encode_call(protocol, "appendBatch", 5, events=events(4))
    for cut in range(len(good)):
        with pytest.raises(FrameError):
            codec.decode(good[:cut])
    for i in range(len(good)):
        frame = bytearray(good)
        frame[i] ^= 0x41
        try:
            call = codec.decode(bytes(frame))
        except FrameError:
            continue
        assert call.name in ("append", "appendBatch")
        assert sum(len(b) for _, b in call.events) <= len(frame)


def test_an_unknown_method_is_a_frame_error() -> None:
    frame = encode_call("compact", "append", 1, event=ThriftFlumeEvent(headers={}, body=b""))
    with pytest.raises(FrameError):
        Codec("compact").decode(frame.replace(b"append", b"appenX"))


def test_a_field_claiming_more_bytes_than_the_frame_holds_is_refused_before_allocating() -> None:
    frame = struct.pack("!iI", -2147418111, 11) + b"appendBatch" + struct.pack("!i", 1)
    frame += struct.pack("!bh", 15, 1) + struct.pack("!bi", 12, 1)  # events: list<struct> of one
    frame += struct.pack("!bh", 11, 2) + struct.pack("!i", 2_000_000_000) + b"xx"  # body claims 2 GB
    tracemalloc.start()
    try:
        with pytest.raises(FrameError, match="claims 2000000000 bytes"):
            Codec("binary").decode(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


# -- limits, checked as the call is decoded -----------------------------------------------------

LIMITS = ThriftSettings(max_batch_events=2, max_event_bytes=Size(100), max_headers=2, max_header_bytes=Size(20))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_limits_refuse_oversize_batches_events_and_headers(protocol: str) -> None:
    codec = Codec(protocol, LIMITS)
    ok = ThriftFlumeEvent(headers={"a": "b"}, body=b"x")
    assert codec.decode(encode_call(protocol, "appendBatch", 1, events=[ok, ok])).refused is None
    for evs, reason in [([ok] * 3, "batch_too_large"),
                        ([ThriftFlumeEvent(headers={}, body=b"x" * 101)], "event_too_large"),
                        ([ThriftFlumeEvent(headers={"a": "1", "b": "2", "c": "3"}, body=b"")], "too_many_headers"),
                        ([ThriftFlumeEvent(headers={"a": "y" * 30}, body=b"")], "headers_too_large")]:
        call = codec.decode(encode_call(protocol, "appendBatch", 9, events=evs))
        assert call.refused is not None and call.refused.reason == reason
        # a refused call is still decoded whole: answered ERROR with its seqid, its events counted
        assert (call.name, call.seqid, len(call.events)) == ("appendBatch", 9, len(evs))
    call = codec.decode(encode_call(protocol, "append", 3, event=ThriftFlumeEvent(headers={}, body=b"x" * 101)))
    assert call.refused is not None and call.refused.reason == "event_too_large"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_limits_hold_to_the_byte(protocol: str) -> None:
    codec = Codec(protocol, LIMITS)

    def refused(headers: dict[str, str], body: bytes) -> str | None:
        call = codec.decode(encode_call(protocol, "append", 1, event=ThriftFlumeEvent(headers=headers, body=body)))
        return None if call.refused is None else call.refused.reason

    assert refused({"a": "b"}, b"x" * 98) is None  # 2 header bytes + 98: exactly max_event_bytes
    assert refused({"a": "b"}, b"x" * 99) == "event_too_large"
    assert refused({"a": "y" * 19}, b"") is None  # exactly max_header_bytes
    assert refused({"a": "y" * 20}, b"") == "headers_too_large"
    assert refused({"a": "1", "b": "2"}, b"x" * 96) is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_first_limit_broken_is_the_one_reported(protocol: str) -> None:
    codec = Codec(protocol, LIMITS)
    evs = [ThriftFlumeEvent(headers={}, body=b"ok"),
           ThriftFlumeEvent(headers={"a": "1", "b": "2", "c": "3"}, body=b""),
           ThriftFlumeEvent(headers={}, body=b"x" * 500)]
    call = codec.decode(encode_call(protocol, "appendBatch", 1, events=evs[:2]))
    assert call.refused is not None and call.refused.reason == "too_many_headers"
    call = codec.decode(encode_call(protocol, "appendBatch", 1, events=evs[::-1][:2]))
    assert call.refused is not None and call.refused.reason == "event_too_large"
    call = codec.decode(encode_call(protocol, "appendBatch", 1, events=evs))  # 3 events: the batch first
    assert call.refused is not None and call.refused.reason == "batch_too_large"


def test_the_in_flight_limit_per_connection_caps_a_call_like_the_batch_limit() -> None:
    codec = Codec("compact", ThriftSettings(max_batch_events=10, max_inflight_events_per_connection=3))
    evs = [ThriftFlumeEvent(headers={}, body=b"")] * 4
    call = codec.decode(encode_call("compact", "appendBatch", 1, events=evs))
    assert call.refused is not None and call.refused.reason == "batch_too_large"
    assert codec.decode(encode_call("compact", "appendBatch", 1, events=evs[:3])).refused is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_call_over_a_limit_that_does_not_decode_is_still_a_frame_error(protocol: str) -> None:
    codec = Codec(protocol, LIMITS)
    frame = encode_call(protocol, "appendBatch", 1, events=[ThriftFlumeEvent(headers={}, body=b"x")] * 3)
    with pytest.raises(FrameError):
        codec.decode(frame[:-2])
    with pytest.raises(FrameError):
        codec.decode(frame + b"\x00")
