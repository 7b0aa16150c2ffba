"""Frames decoded in memory: Flume's calls in, replies out, garbage refused."""

from __future__ import annotations

import os

import pytest
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.thrift import TMessageType
from thriftpy2.transport import TMemoryBuffer

from agents.thrift_source import Codec, Status, ThriftFlumeEvent, _SERVICE, check_limits, LimitError
from core.errors import FrameError
from core.settings import ThriftSettings

FACTORIES = {"compact": TCompactProtocolFactory(), "binary": TBinaryProtocolFactory()}


def encode_call(protocol: str, name: str, seqid: int, **args: object) -> bytes:
    buf = TMemoryBuffer()
    proto = FACTORIES[protocol].get_protocol(buf)
    proto.write_message_begin(name, TMessageType.CALL, seqid)
    proto.write_struct(getattr(_SERVICE, name + "_args")(**args))
    proto.write_message_end()
    return buf.getvalue()


@pytest.mark.parametrize("protocol", ["compact", "binary"])
def test_append_batch_decodes_to_its_events_and_the_reply_carries_the_seqid(protocol: str) -> None:
    codec = Codec(protocol)
    events = [ThriftFlumeEvent(headers={"topic": "t", "n": str(i)}, body=b"\x00" * i) for i in range(5)]
    call = codec.decode(encode_call(protocol, "appendBatch", 42, events=events))
    assert (call.name, call.seqid) == ("appendBatch", 42)
    assert [dict(h)["n"] for h, _ in call.events] == [b"0", b"1", b"2", b"3", b"4"]
    assert [body for _, body in call.events] == [b"\x00" * i for i in range(5)]
    reply = codec.reply(call, Status.OK)
    assert int.from_bytes(reply[:4], "big") == len(reply) - 4
    proto = FACTORIES[protocol].get_protocol(TMemoryBuffer(reply[4:]))
    assert proto.read_message_begin() == ("appendBatch", TMessageType.REPLY, 42)
    result = _SERVICE.appendBatch_result()
    proto.read_struct(result)
    assert result.success == Status.OK


def test_append_decodes_to_one_event() -> None:
    call = Codec("compact").decode(encode_call("compact", "append", 1,
                                               event=ThriftFlumeEvent(headers={}, body=b"x")))
    assert call.events == [([], b"x")]


@pytest.mark.parametrize("protocol", ["compact", "binary"])
def test_garbage_and_truncated_frames_raise_frame_errors(protocol: str) -> None:
    codec = Codec(protocol)
    good = encode_call(protocol, "appendBatch", 1, events=[ThriftFlumeEvent(headers={"a": "b"}, body=b"x" * 100)])
    for frame in (b"", b"\x00", os.urandom(64), good[: len(good) // 2], good[:-3]):
        with pytest.raises(FrameError):
            codec.decode(frame)


def test_an_unknown_method_is_a_frame_error() -> None:
    frame = encode_call("compact", "append", 1, event=ThriftFlumeEvent(headers={}, body=b""))
    with pytest.raises(FrameError):
        Codec("compact").decode(frame.replace(b"append", b"appenX"))


def test_limits_refuse_oversize_batches_events_and_headers() -> None:
    s = ThriftSettings(max_batch_events=2, max_event_bytes=100, max_headers=2, max_header_bytes=20)
    ok = ([("a", b"b")], b"x")
    check_limits([ok, ok], s)
    for events, reason in [([ok] * 3, "batch_too_large"),
                           ([([], b"x" * 101)], "event_too_large"),
                           ([([("a", b"1"), ("b", b"2"), ("c", b"3")], b"")], "too_many_headers"),
                           ([([("a", b"y" * 30)], b"")], "headers_too_large")]:
        with pytest.raises(LimitError) as err:
            check_limits(events, s)
        assert err.value.reason == reason


def test_a_field_claiming_more_bytes_than_the_frame_holds_is_refused_before_allocating() -> None:
    import struct
    import tracemalloc

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
