"""The Avro RPC codec and the Avro source's connection loop, with hypothesis fuzzing.

Whatever the bytes: a request decodes or raises FrameError, in memory bounded by its size
(never by a length or count the bytes claim); the connection loop (framing, handshake,
inflating) ends only with FrameError, a handshake hang-up or the client's end of stream;
valid requests decode to exactly what was sent; the handshake answers BOTH, CLIENT or
NONE as Avro's Java Responder does. Examples per test: the ``spillway`` hypothesis profile
(``SPILLWAY_HYPOTHESIS_PROFILE=spillway-long`` for more).
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import tracemalloc
import zlib
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents import avro_codec as codec
from agents.avro_source import AvroSource, Inflating
from agents.source_base import Hangup
from agents.thrift_codec import Status
from core.errors import FrameError
from core.metrics import Metrics
from core.settings import AvroSettings, Size

settings.register_profile("spillway", max_examples=100, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("spillway-long", max_examples=5_000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("SPILLWAY_HYPOTHESIS_PROFILE", "spillway"))
EXAMPLES = settings().max_examples

LIMITS = AvroSettings()
#: what Flume 1.11's Java computes for AvroSourceProtocol.PROTOCOL.getMD5() (measured with its SDK)
FLUME_PROTOCOL_MD5 = "86aadae2c45474c0fe93ffd0f2350a65"

texts = st.text(max_size=12)
headers = st.dictionaries(texts, texts, max_size=5)
events: st.SearchStrategy[list[tuple[Mapping[str, str], bytes]]] = st.lists(
    st.tuples(headers, st.binary(max_size=40)), min_size=1, max_size=8)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["append", "appendBatch"]))
    return codec.encode_request(method, draw(events), handshake=draw(st.booleans()))


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        if not out:
            break
        i = draw(st.integers(0, len(out) - 1))
        if kind == "flip":
            out[i] = draw(st.integers(0, 255))
        elif kind == "cut":
            del out[i:i + draw(st.integers(1, 8))]
        else:
            out[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(out)


def decode_or_frame_error(payload: bytes, session: codec.Session | None = None) -> Any:
    try:
        return codec.decode(payload, session or codec.Session(), LIMITS)
    except FrameError:
        return None


# -- the protocol and the handshake ---------------------------------------------------------------


def test_the_protocol_text_hashes_to_what_flumes_java_sends() -> None:
    assert codec.PROTOCOL_MD5.hex() == FLUME_PROTOCOL_MD5
    assert json.loads(codec.PROTOCOL_TEXT)["protocol"] == "AvroSourceProtocol"


def test_a_known_client_and_server_hash_match_both_and_the_call_follows() -> None:
    session = codec.Session()
    req = codec.decode(codec.encode_request("append", [({"topic": "t"}, b"x")]), session, LIMITS)
    assert req.kind == "call" and req.events == [([("topic", b"t")], b"x")] and session.remote is codec.OURS
    assert codec.decode_reply(codec.reply(req, codec.AVRO_OK)) == ("BOTH", "OK")
    # the handshake is once per connection
    req = codec.decode(codec.encode_request("append", [({}, b"y")], handshake=False), session, LIMITS)
    assert req.prefix == b"" and codec.decode_reply(codec.reply(req, codec.AVRO_FAILED), False) == (None, "FAILED")


def test_a_wrong_server_hash_matches_client_with_our_protocol() -> None:
    req = codec.decode(codec.encode_request("append", [({}, b"x")], server_hash=b"\x00" * 16),
                       codec.Session(), LIMITS)
    assert req.kind == "call" and codec.decode_reply(codec.reply(req, 0)) == ("CLIENT", "OK")


def test_an_unknown_client_gets_none_then_is_served_when_it_sends_its_protocol() -> None:
    session = codec.Session()
    foreign = json.dumps(json.loads(codec.PROTOCOL_TEXT), indent=2)  # another rendering: another MD5
    md5 = __import__("hashlib").md5(foreign.encode()).digest()
    req = codec.decode(codec.encode_request("appendBatch", [({"a": "1"}, b"x")], client_hash=md5),
                       session, LIMITS)
    assert req.kind == "handshake" and session.remote is None
    assert codec.decode_reply(codec.handshake_only(req))[0] == "NONE"
    req = codec.decode(codec.encode_request("appendBatch", [({"a": "1"}, b"x"), ({}, b"")], client_hash=md5,
                                            client_protocol=foreign), session, LIMITS)
    assert req.kind == "call" and req.events == [([("a", b"1")], b"x"), ([], b"")]
    assert session.remote is not None and session.remote.md5 == md5 and not session.remote.ours


def test_a_ping_an_unknown_message_and_a_bad_protocol_text() -> None:
    session = codec.Session()
    req = codec.decode(codec.encode_request("", []), session, LIMITS)
    assert req.kind == "ping" and codec.decode_reply(codec.handshake_only(req) + b"\x00\x00\x00") [0] == "BOTH"
    req = codec.decode(codec.encode_request("frobnicate", [], handshake=False), session, LIMITS)
    assert req.kind == "unknown"
    assert codec.decode_reply(codec.error_reply(req, "no such message"), False) == (None, "error: no such message")
    with pytest.raises(FrameError, match="protocol"):
        codec.decode(codec.encode_request("append", [({}, b"")], client_hash=b"\x02" * 16,
                                          client_protocol='{"protocol": "X", "messages": {}}'), codec.Session(), LIMITS)


def test_pipeline_statuses_map_to_avros() -> None:
    assert [codec.avro_status(s) for s in (Status.OK, Status.FAILED, Status.ERROR)] == [0, 1, 2]


# -- limits ---------------------------------------------------------------------------------------


def test_a_batch_over_the_limit_is_refused_from_its_count_before_any_event_is_decoded() -> None:
    s = AvroSettings(max_batch_events=10)
    payload = codec.encode_request("appendBatch", [({}, b"x")] * 11)
    req = codec.decode(payload[:-30], codec.Session(), s)  # a truncated tail is never read
    assert req.refused is not None and req.refused.reason == "batch_too_large" and req.events == []
    assert req.count == 11


@pytest.mark.parametrize(("event", "reason"), [
    (({f"h{i}": "v" for i in range(65)}, b""), "too_many_headers"),
    (({"h": "v" * 16_384}, b""), "headers_too_large"),
    (({"h": "v"}, b"x" * 1_000_000), "event_too_large"),
])
def test_events_over_a_limit_refuse_the_call(event: Any, reason: str) -> None:
    req = codec.decode(codec.encode_request("appendBatch", [({}, b"ok"), event]), codec.Session(), LIMITS)
    assert req.kind == "call" and req.refused is not None and req.refused.reason == reason


def test_pack_headers_and_buffer_lengths_are_checked_before_anything_is_read() -> None:
    s = AvroSettings(max_buffers=4)
    assert codec.read_pack_header(struct.pack(">ii", 9, 4), s) == (9, 4)
    for count in (0, 5, -1, 2**31 - 1):
        with pytest.raises(FrameError):
            codec.read_pack_header(struct.pack(">ii", 1, count), s)
    assert codec.read_buffer_length(struct.pack(">i", 100), 100) == 100
    for n in (101, -1, 2**31 - 1):
        with pytest.raises(FrameError):
            codec.read_buffer_length(struct.pack(">i", n), 100)


# -- fuzzing --------------------------------------------------------------------------------------


@given(payload=st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_frame_error_only(payload: bytes) -> None:
    decode_or_frame_error(payload)
    decode_or_frame_error(payload, codec.Session(remote=codec.OURS))


@given(data=st.data())
def test_mutated_valid_requests_decode_or_raise_frame_error_only(data: st.DataObject) -> None:
    payload = data.draw(mutated(data.draw(requests())))
    decode_or_frame_error(payload)
    decode_or_frame_error(payload, codec.Session(remote=codec.OURS))


@given(data=st.data())
@settings(max_examples=max(20, EXAMPLES // 3))
def test_decoding_allocates_in_proportion_to_the_request_never_to_a_claimed_length(data: st.DataObject) -> None:
    payload = data.draw(mutated(data.draw(requests())) | st.binary(max_size=256))
    tracemalloc.start()
    try:
        decode_or_frame_error(payload, codec.Session(remote=codec.OURS))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 + 400 * len(payload), f"{peak} bytes at peak for a request of {len(payload)}"


@given(evs=events, method=st.sampled_from(["append", "appendBatch"]))
def test_valid_requests_round_trip_with_their_headers_and_bodies(evs: Any, method: str) -> None:
    req = codec.decode(codec.encode_request(method, evs), codec.Session(), LIMITS)
    sent = evs if method == "appendBatch" else evs[:1]
    assert req.kind == "call" and req.method == method and req.refused is None
    assert [(dict(h), b) for h, b in req.events] == [({k: v.encode() for k, v in h.items()}, b) for h, b in sent]


# -- the connection loop --------------------------------------------------------------------------


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


async def _serve_stream(stream: bytes, compression: str = "none") -> tuple[BaseException | None, list[bytes]]:
    async def handler(evs: Any) -> int:
        return int(Status.OK)

    s = AvroSettings(enabled=True, compression=compression, max_frame_bytes=Size(4096),  # type: ignore[arg-type]
                     idle_timeout=5.0, frame_timeout=5.0, handshake_timeout=5.0)  # type: ignore[arg-type]
    source = AvroSource(s, handler, Metrics())
    source.listening = True
    reader = asyncio.StreamReader()
    reader.feed_data(zlib.compress(stream) if compression == "deflate" else stream)
    reader.feed_eof()
    writer = _Writer()
    try:
        await source._serve(reader, writer)  # type: ignore[arg-type]
    except (FrameError, asyncio.IncompleteReadError, Hangup) as exc:
        return exc, writer.out
    return None, writer.out


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    parts = []
    for i in range(draw(st.integers(0, 4))):
        payload = draw(requests())
        if draw(st.booleans()):
            payload = draw(mutated(payload))
        if draw(st.integers(0, 4)):
            parts.append(codec.pack(i, payload))
        else:
            parts.append(struct.pack(">ii", i, draw(st.integers(-2**31, 2**31 - 1))) + payload)
    if draw(st.booleans()):
        parts.append(draw(st.binary(max_size=64)))
    return b"".join(parts)


@pytest.mark.parametrize("compression", ["none", "deflate"])
@given(data=st.data())
@settings(max_examples=max(20, EXAMPLES // 2))
def test_the_connection_loop_ends_only_with_a_frame_error_a_handshake_hangup_or_end_of_stream(
        compression: str, data: st.DataObject) -> None:
    exc, _ = asyncio.run(_serve_stream(data.draw(streams()), compression))
    assert exc is not None and (not isinstance(exc, Hangup) or exc.reason == "handshake")


@pytest.mark.parametrize("compression", ["none", "deflate"])
def test_valid_packs_in_one_stream_are_each_answered_with_their_serial(compression: str) -> None:
    stream = codec.pack(100, codec.encode_request("append", [({"n": "0"}, b"x")]))
    stream += b"".join(codec.pack(100 + i, codec.encode_request("appendBatch", [({"n": str(i)}, b"x")] * 3,
                                                                 handshake=False)) for i in range(1, 5))
    exc, out = asyncio.run(_serve_stream(stream, compression))
    assert isinstance(exc, asyncio.IncompleteReadError)
    if compression == "deflate":
        out = [zlib.decompressobj().decompress(b"".join(out))]
    data = b"".join(out)
    serials = []
    while data:
        serial, count, n = struct.unpack(">iii", data[:12])
        assert count == 1
        serials.append(serial)
        status = codec.decode_reply(data[12:12 + n], handshake=serial == 100)[1]
        assert status == "OK"
        data = data[12 + n:]
    assert serials == [100, 101, 102, 103, 104]


def test_a_deflate_bomb_inflates_no_more_than_the_call_needs() -> None:
    async def run() -> int:
        reader = asyncio.StreamReader()
        reader.feed_data(zlib.compress(b"\x00" * 50_000_000, 9))  # ~50 KB claiming 50 MB
        reader.feed_eof()
        inflating = Inflating(reader)
        assert await inflating.readexactly(8) == b"\x00" * 8
        return len(inflating._buf)

    assert asyncio.run(run()) <= 65_536
    exc, _ = asyncio.run(_serve_stream(b"\x00" * 1_000_000, "deflate"))  # a pack header of 0 buffers
    assert isinstance(exc, FrameError)
