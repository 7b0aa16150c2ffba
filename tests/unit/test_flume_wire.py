"""The fast decoder agrees with thriftpy2 on Flume's calls, and steps aside for anything else."""

from __future__ import annotations

import os

import pytest
from thriftpy2.protocol.binary import TBinaryProtocol
from thriftpy2.protocol.compact import TCompactProtocol
from thriftpy2.thrift import TMessageType

from agents.flume_wire import Unusual, decode_binary, decode_compact
from agents.thrift_source import ThriftFlumeEvent, _SERVICE

DECODERS = {"compact": (decode_compact, TCompactProtocol), "binary": (decode_binary, TBinaryProtocol)}


class Out:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, b: bytes) -> None:
        self.parts.append(bytes(b))

    def flush(self) -> None:
        pass


def encode(protocol: str, name: str, seqid: int, **args: object) -> bytes:
    out = Out()
    proto = DECODERS[protocol][1](out)
    proto.write_message_begin(name, TMessageType.CALL, seqid)
    proto.write_struct(getattr(_SERVICE, name + "_args")(**args))
    proto.write_message_end()
    return b"".join(out.parts)


def events(n: int) -> list[ThriftFlumeEvent]:
    return [ThriftFlumeEvent(headers={"topic": f"t{i % 3}", "key": f"k{i}", "é": "ü" * i}, body=os.urandom(i * 37))
            for i in range(n)]


@pytest.mark.parametrize("protocol", ["compact", "binary"])
@pytest.mark.parametrize("n", [0, 1, 14, 15, 16, 300])
def test_append_batch_decodes_like_thriftpy2(protocol: str, n: int) -> None:
    evs = events(n)
    name, seqid, out = DECODERS[protocol][0](encode(protocol, "appendBatch", 77, events=evs))
    assert (name, seqid) == ("appendBatch", 77)
    assert [(dict((k, v.decode()) for k, v in h), b) for h, b in out] == [(e.headers, e.body) for e in evs]


@pytest.mark.parametrize("protocol", ["compact", "binary"])
def test_append_decodes_one_event_and_large_seqids_survive(protocol: str) -> None:
    ev = ThriftFlumeEvent(headers={}, body=b"x")
    name, seqid, out = DECODERS[protocol][0](encode(protocol, "append", 2**31 - 1, event=ev))
    assert (name, seqid, out) == ("append", 2**31 - 1, [([], b"x")])


@pytest.mark.parametrize("protocol", ["compact", "binary"])
def test_anything_but_the_canonical_shape_is_unusual(protocol: str) -> None:
    dec = DECODERS[protocol][0]
    good = encode(protocol, "appendBatch", 1, events=events(3))
    for frame in (b"", good[:-1], good + b"\x00", good[: len(good) // 2], os.urandom(50),
                  encode(protocol, "append", 1, event=ThriftFlumeEvent(headers=None, body=None))):
        try:
            dec(frame)
        except Unusual:
            continue
        # the only frame the fast path may accept is one without optional parts, decoded right
        assert frame.endswith(b"\x00")


@pytest.mark.parametrize("protocol", ["compact", "binary"])
def test_every_truncation_and_bit_flip_is_either_unusual_or_consistent(protocol: str) -> None:
    dec = DECODERS[protocol][0]
    good = encode(protocol, "appendBatch", 5, events=events(4))
    for cut in range(len(good)):
        with pytest.raises(Unusual):
            dec(good[:cut])
    for i in range(len(good)):
        frame = bytearray(good)
        frame[i] ^= 0x41
        try:
            name, _, out = dec(bytes(frame))
        except Unusual:
            continue
        assert name in ("append", "appendBatch")
        assert sum(len(b) for _, b in out) <= len(frame)
