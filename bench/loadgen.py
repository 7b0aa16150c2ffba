"""Flume-protocol load generator: several processes, each with a few connections, sending
``appendBatch`` calls of N events × S bytes over a few topics, each event with a key.

Each connection encodes a handful of distinct batches once (thriftpy2, the client side of
Flume's IDL) and sends them in turn, so the generator's own CPU stays small and the
server is what is measured. Prints one JSON document: calls by status, events
acknowledged, call latencies (p50/p99/max).

    python -m bench.loadgen --port 4141 --seconds 10 --processes 2 --connections 4
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

import thriftpy2
from thriftpy2.protocol.binary import TBinaryProtocol
from thriftpy2.protocol.compact import TCompactProtocol
from thriftpy2.thrift import TMessageType

ROOT = Path(__file__).resolve().parent.parent
flume = thriftpy2.load(str(ROOT / "agents" / "flume.thrift"), module_name="flume_bench_thrift")


class _Out:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(bytes(data))

    def flush(self) -> None:
        pass


def encode_batch(events: list[Any], protocol: str, seqid: int = 0) -> bytes:
    out = _Out()
    proto = (TCompactProtocol if protocol == "compact" else TBinaryProtocol)(out)  # type: ignore[arg-type]
    proto.write_message_begin("appendBatch", TMessageType.CALL, seqid)
    proto.write_struct(flume.ThriftSourceProtocol.appendBatch_args(events=events))
    proto.write_message_end()
    body = b"".join(out.parts)
    return struct.pack("!i", len(body)) + body


def make_batches(n_batches: int, batch: int, size: int, topics: list[str], tag: str, protocol: str) -> list[bytes]:
    frames = []
    for b in range(n_batches):
        events = []
        for i in range(batch):
            seq = b * batch + i
            body = f"{tag}-{seq}-".encode().ljust(size, b"x")[:size]
            events.append(flume.ThriftFlumeEvent(
                headers={"topic": topics[seq % len(topics)], "key": f"key-{seq % 1000}"}, body=body))
        frames.append(encode_batch(events, protocol))
    return frames


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return bytes(buf)


def _status(reply: bytes, protocol: str) -> int:
    class _In:
        def __init__(self, data: bytes) -> None:
            self.data, self.pos = data, 0

        def read(self, n: int) -> bytes:
            chunk = self.data[self.pos:self.pos + n]
            self.pos += n
            return chunk

    proto = (TCompactProtocol if protocol == "compact" else TBinaryProtocol)(_In(reply))  # type: ignore[arg-type]
    proto.read_message_begin()
    result = flume.ThriftSourceProtocol.appendBatch_result()
    proto.read_struct(result)
    return int(result.success)


def _worker(args: argparse.Namespace, index: int, queue: Any) -> None:
    import selectors

    frames = make_batches(8, args.batch, args.size, args.topics.split(","), f"p{index}", args.protocol)
    socks = [socket.create_connection((args.host, args.port)) for _ in range(args.connections)]
    sel = selectors.DefaultSelector()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    events_ok = 0
    started: dict[socket.socket, float] = {}
    turn = 0
    end = time.monotonic() + args.seconds
    for s in socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(frames[turn % len(frames)])
        turn += 1
        started[s] = time.monotonic()
        sel.register(s, selectors.EVENT_READ)
    while started:
        for key, _ in sel.select(timeout=30):
            s = key.fileobj  # type: ignore[assignment]
            head = _recv_exact(s, 4)  # type: ignore[arg-type]
            reply = _recv_exact(s, struct.unpack("!i", head)[0])  # type: ignore[arg-type]
            now = time.monotonic()
            latencies.append(now - started.pop(s))  # type: ignore[arg-type]
            st = _status(reply, args.protocol)
            statuses[st] = statuses.get(st, 0) + 1
            if st == 0:
                events_ok += args.batch
            if now < end:
                s.sendall(frames[turn % len(frames)])  # type: ignore[attr-defined]
                turn += 1
                started[s] = time.monotonic()  # type: ignore[index]
            else:
                sel.unregister(s)
                s.close()  # type: ignore[attr-defined]
    queue.put({"latencies": latencies, "statuses": statuses, "events_ok": events_ok})


def run(args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(args, i, queue)) for i in range(args.processes)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    results = [queue.get(timeout=args.seconds + 120) for _ in procs]
    elapsed = time.monotonic() - t0
    for p in procs:
        p.join(30)
    lat = sorted(x for r in results for x in r["latencies"])
    statuses: dict[str, int] = {}
    for r in results:
        for k, v in r["statuses"].items():
            name = {0: "OK", 1: "FAILED", 2: "ERROR", 3: "UNKNOWN"}.get(int(k), str(k))
            statuses[name] = statuses.get(name, 0) + v
    events_ok = sum(r["events_ok"] for r in results)

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else 0.0

    return {
        "seconds": round(elapsed, 2), "calls": len(lat), "statuses": statuses, "events_acked": events_ok,
        "events_per_second": round(events_ok / elapsed),
        "mb_per_second": round(events_ok * args.size / elapsed / 1e6, 2),
        "latency_ms": {"p50": pct(0.50), "p99": pct(0.99), "max": round(lat[-1] * 1000, 2) if lat else 0.0},
        "batch": args.batch, "size": args.size, "processes": args.processes, "connections": args.connections,
        "protocol": args.protocol,
    }


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=4141)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--connections", type=int, default=4, help="per process")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--topics", default="bench-a,bench-b,bench-c")
    ap.add_argument("--protocol", choices=["compact", "binary"], default="compact")
    return ap


if __name__ == "__main__":
    json.dump(run(parser().parse_args()), sys.stdout)
    print()
