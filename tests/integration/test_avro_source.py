"""Flume's Avro RPC source against Flume's own Java code and a real broker.

The clients are Flume 1.11's, from Maven Central (:mod:`devtools.flume`): the SDK's default
``RpcClient`` (``NettyAvroRpcClient``), with and without ``compression-type = deflate``, and
Flume's own agent with an ``AvroSink`` pointed at spillway (the tiered setup, spillway as
the collector). Every event must land in the topic its header names, with its headers.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Worker, free_port, read_topic, unique

from agents import avro_codec as codec
from devtools import flume
from devtools.kafka import Broker

pytestmark = pytest.mark.kafka

#: Sends ``count`` events with Flume's SDK client: args port, none|deflate, append|batch, count, topic
#: [tls] (``ssl = true``, trusting any certificate).
#: Each event: headers topic, seq, note (non-ASCII); body "body-<seq>" plus a 0xff byte.
#: Prints "sent <n>" or "EventDeliveryException <message>" (exit 3).
AVRO_SEND = r"""
import java.nio.charset.StandardCharsets;
import java.util.*;
import org.apache.flume.Event;
import org.apache.flume.EventDeliveryException;
import org.apache.flume.api.RpcClient;
import org.apache.flume.api.RpcClientFactory;
import org.apache.flume.event.EventBuilder;

public class AvroSend {
  public static void main(String[] a) throws Exception {
    Properties p = new Properties();
    p.setProperty("client.type", "default");
    p.setProperty("hosts", "h1");
    p.setProperty("hosts.h1", "127.0.0.1:" + a[0]);
    p.setProperty("batch-size", "100");
    p.setProperty("request-timeout", "20000");
    if (a.length > 5 && a[5].equals("tls")) {
      p.setProperty("ssl", "true");
      p.setProperty("trust-all-certs", "true");
    }
    if (a[1].equals("deflate")) {
      p.setProperty("compression-type", "deflate");
      p.setProperty("compression-level", "6");
    }
    int count = Integer.parseInt(a[3]);
    RpcClient client = RpcClientFactory.getInstance(p);
    try {
      List<Event> batch = new ArrayList<>();
      for (int i = 0; i < count; i++) {
        Map<String, String> h = new HashMap<>();
        h.put("topic", a[4]);
        h.put("seq", Integer.toString(i));
        h.put("note", "caf\u00e9 \u2713");
        byte[] text = ("body-" + i).getBytes(StandardCharsets.UTF_8);
        byte[] body = Arrays.copyOf(text, text.length + 1);
        body[text.length] = (byte) 0xff;
        Event e = EventBuilder.withBody(body, h);
        if (a[2].equals("append")) client.append(e); else batch.add(e);
      }
      if (!batch.isEmpty()) client.appendBatch(batch);
      System.out.println("sent " + count);
    } catch (EventDeliveryException e) {
      System.out.println("EventDeliveryException " + e.getMessage() + " / " + e.getCause());
      System.exit(3);
    } finally {
      client.close();
    }
  }
}
"""


def other_port(*taken: int) -> int:
    """A free port that is none of ``taken`` (a worker's own ports are picked the same way)."""
    while (port := free_port()) in taken:
        pass
    return port


def avro_worker(make_worker: Callable[..., Worker], bootstrap: str, name: str = "worker",
                **env: str) -> tuple[Worker, int]:
    w = make_worker(bootstrap, name=name, start=False, **env)
    port = other_port(w.thrift_port, w.web_port)
    w.env_extra |= {"SPILLWAY_SOURCE_AVRO_ENABLED": "true", "SPILLWAY_SOURCE_AVRO_HOST": "127.0.0.1",
                    "SPILLWAY_SOURCE_AVRO_PORT": str(port)}
    return w.start(), port


def avro_send(port: int, compression: str, mode: str, count: int, topic: str,
              tls: bool = False) -> subprocess.CompletedProcess[str]:
    return flume.java(AVRO_SEND, "AvroSend", str(port), compression, mode, str(count), topic,
                      *(["tls"] if tls else []), timeout=180)


def check_landed(bootstrap: str, topic: str, count: int) -> None:
    got = read_topic(bootstrap, topic, count, settle=1.0)
    assert len(got) == count
    seqs = set()
    for r in got:
        h = dict(r.headers)
        assert h["topic"] == topic.encode() and h["note"] == "café ✓".encode()
        assert r.value == f"body-{int(h['seq'])}".encode() + b"\xff"
        seqs.add(int(h["seq"]))
    assert seqs == set(range(count))


@pytest.mark.parametrize("compression", ["none", "deflate"])
@pytest.mark.parametrize("mode", ["append", "batch"])
def test_flume_sdk_client_events_land_in_their_topic_with_their_headers(
        kafka_up: Broker, make_worker: Callable[..., Worker], compression: str, mode: str) -> None:
    w, port = avro_worker(make_worker, kafka_up.bootstrap, SPILLWAY_SOURCE_AVRO_COMPRESSION=compression)
    topic = unique(f"avro-{mode}-{compression}")
    count = 20 if mode == "append" else 450  # the client splits 450 into batches of 100
    r = avro_send(port, compression, mode, count, topic)
    assert r.returncode == 0 and r.stdout.strip() == f"sent {count}", r.stdout + r.stderr[-3000:]
    check_landed(kafka_up.bootstrap, topic, count)
    st = w.status()
    [avro] = [s for s in st["sources"] if s["name"] == "avro"]
    assert avro["received"] == count and avro["compression"] == compression
    assert avro["handshakes"]["BOTH"] == 1 and avro["handshakes"]["NONE"] == 0  # Flume's MD5 is ours
    assert st["counters"]["acked_kafka"] == count and st["counters"]["failed"] == 0
    metrics = w.get("/metrics")
    assert f'spillway_events_received_total{{source="avro"}} {count}.0' in metrics


def test_a_refused_topic_raises_event_delivery_exception_in_flumes_client_and_the_server_keeps_serving(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    w, port = avro_worker(make_worker, kafka_up.bootstrap, SPILLWAY_ROUTER_ALLOWED_TOPICS="allowed-*",
                          SPILLWAY_ROUTER_DEFAULT_TOPIC="allowed-default")
    r = avro_send(port, "none", "batch", 5, "__consumer_offsets")
    assert r.returncode == 3 and "EventDeliveryException" in r.stdout and "UNKNOWN" in r.stdout, r.stdout
    r = avro_send(port, "none", "append", 1, unique("not-allowed"))
    assert r.returncode == 3 and "UNKNOWN" in r.stdout, r.stdout
    topic = unique("allowed-avro")
    r = avro_send(port, "none", "batch", 10, topic)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    check_landed(kafka_up.bootstrap, topic, 10)
    assert w.status()["counters"]["refused"] == 6


@pytest.mark.parametrize("compression", ["none", "deflate"])
def test_flumes_sdk_client_over_tls_is_served_and_a_plain_client_on_the_tls_port_is_not(
        kafka_up: Broker, make_worker: Callable[..., Worker], tmp_path: Path, compression: str) -> None:
    """With deflate too, Flume's client puts TLS inside the deflate stream: so must the server."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", "server.key", "-out", "server.pem", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], cwd=tmp_path, check=True, capture_output=True)
    w, port = avro_worker(make_worker, kafka_up.bootstrap,
                          SPILLWAY_SOURCE_AVRO_TLS_CERTFILE=str(tmp_path / "server.pem"),
                          SPILLWAY_SOURCE_AVRO_TLS_KEYFILE=str(tmp_path / "server.key"),
                          SPILLWAY_SOURCE_AVRO_COMPRESSION=compression)
    topic = unique("avro-tls")
    r = avro_send(port, compression, "batch", 120, topic, tls=True)
    assert r.returncode == 0 and r.stdout.strip() == "sent 120", r.stdout + r.stderr[-3000:]
    check_landed(kafka_up.bootstrap, topic, 120)
    r = avro_send(port, compression, "append", 1, unique("avro-plain-on-tls"))
    assert r.returncode == 3 and "EventDeliveryException" in r.stdout
    [avro] = [s for s in w.status()["sources"] if s["name"] == "avro"]
    assert avro["tls"] is True and avro["received"] == 120


def test_flume_ng_avro_client_streams_a_file_with_a_header_file(
        kafka_up: Broker, make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    """``flume-ng avro-client -H host -p port -F file -R headerFile``: Flume's own CLI
    (``org.apache.flume.client.avro.AvroCLIClient``), one event per line, in batches of 5."""
    w, port = avro_worker(make_worker, kafka_up.bootstrap)
    topic = unique("avro-cli")
    lines = [f"line {i} ✓" for i in range(53)]
    (tmp_path / "events.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "headers.properties").write_text(f"topic={topic}\nsource=cli\n")
    r = subprocess.run(["java", "-Xmx256m", "-cp", flume.classpath(), "org.apache.flume.client.avro.AvroCLIClient",
                        "-H", "127.0.0.1", "-p", str(port), "-F", str(tmp_path / "events.txt"),
                        "-R", str(tmp_path / "headers.properties")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    got = read_topic(kafka_up.bootstrap, topic, len(lines), settle=1.0)
    assert sorted(x.value.decode() for x in got) == sorted(lines)
    assert all(dict(x.headers) == {"topic": topic.encode(), "source": b"cli"} for x in got)
    [avro] = [s for s in w.status()["sources"] if s["name"] == "avro"]
    assert avro["received"] == len(lines)


FLUME_AGENT = """
a1.sources = r1
a1.channels = c1
a1.sinks = k1
a1.sources.r1.type = seq
a1.sources.r1.totalEvents = {count}
a1.sources.r1.batchSize = 50
a1.sources.r1.channels = c1
a1.sources.r1.interceptors = i1 i2
a1.sources.r1.interceptors.i1.type = static
a1.sources.r1.interceptors.i1.key = topic
a1.sources.r1.interceptors.i1.value = {topic}
a1.sources.r1.interceptors.i2.type = static
a1.sources.r1.interceptors.i2.key = tier
a1.sources.r1.interceptors.i2.value = edge-agent
a1.channels.c1.type = memory
a1.channels.c1.capacity = 10000
a1.channels.c1.transactionCapacity = 200
a1.sinks.k1.type = avro
a1.sinks.k1.channel = c1
a1.sinks.k1.hostname = 127.0.0.1
a1.sinks.k1.port = {port}
a1.sinks.k1.batch-size = 100
a1.sinks.k1.compression-type = {compression}
"""


@pytest.mark.parametrize("compression", ["none", "deflate"])
def test_flumes_own_agent_with_an_avro_sink_lands_every_event_in_its_topic(
        kafka_up: Broker, make_worker: Callable[..., Worker], tmp_path: Path, compression: str) -> None:
    w, port = avro_worker(make_worker, kafka_up.bootstrap, SPILLWAY_SOURCE_AVRO_COMPRESSION=compression)
    topic, count = unique("tiered"), 1000
    conf = tmp_path / "agent.properties"
    conf.write_text(FLUME_AGENT.format(count=count, topic=topic, port=port, compression=compression))
    log = open(tmp_path / "agent.log", "wb")
    agent = subprocess.Popen(flume.agent_command(conf), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        got = read_topic(kafka_up.bootstrap, topic, count, timeout=120, settle=2.0)
    finally:
        agent.terminate()
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
        log.close()
    assert len(got) == count, (tmp_path / "agent.log").read_text()[-3000:]
    assert {r.value for r in got} == {str(i).encode() for i in range(count)}  # the seq source's bodies
    assert all(dict(r.headers) == {"topic": topic.encode(), "tier": b"edge-agent"} for r in got)
    [avro] = [s for s in w.status()["sources"] if s["name"] == "avro"]
    assert avro["received"] == count and avro["handshakes"]["BOTH"] >= 1


# -- bad input, against the real worker -----------------------------------------------------------


def _raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def _roundtrip(s: socket.socket, serial: int, payload: bytes) -> bytes:
    s.sendall(codec.pack(serial, payload))
    head = _exactly(s, 8)
    assert struct.unpack(">i", head[:4])[0] == serial
    out = b""
    for _ in range(struct.unpack(">i", head[4:])[0]):
        out += _exactly(s, struct.unpack(">i", _exactly(s, 4))[0])
    return out


def _exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed by the server")
        out += chunk
    return out


def _closed_by_server(s: socket.socket, limit: float = 10.0) -> float:
    t0 = time.monotonic()
    s.settimeout(limit)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {limit}s") from None
    return time.monotonic() - t0


def test_garbage_oversize_packs_and_limits_close_or_refuse_only_that_connection(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    w, port = avro_worker(make_worker, kafka_up.bootstrap, SPILLWAY_SOURCE_AVRO_MAX_FRAME_BYTES="4096",
                          SPILLWAY_SOURCE_AVRO_MAX_BUFFERS="8", SPILLWAY_SOURCE_AVRO_MAX_BATCH_EVENTS="10",
                          SPILLWAY_SOURCE_AVRO_MAX_HEADERS="4")
    topic = unique("avro-limits")
    keeper = _raw(port)  # a well-behaved client, served throughout
    reply = _roundtrip(keeper, 1, codec.encode_request("append", [({"topic": topic}, b"first")]))
    assert codec.decode_reply(reply) == ("BOTH", "OK")
    bad = [
        b"GET / HTTP/1.1\r\n\r\n",                                           # not a pack (buffer count)
        struct.pack(">ii", 1, 1_000_000),                                   # too many buffers
        struct.pack(">iii", 1, 1, 2**31 - 1),                               # a buffer over max_frame_bytes
        struct.pack(">iii", 1, 2, 4000) + b"x" * 4000 + struct.pack(">i", 200),  # the pack over it
        codec.pack(1, b"\xff" * 40),                                        # a handshake that does not decode
        codec.pack(1, codec.encode_request("append", [({}, b"x")]) + b"trailing"),  # bytes left over
    ]
    for frame in bad:
        s = _raw(port)
        s.sendall(frame)
        assert _closed_by_server(s) < 5
        s.close()
    # limits: answered UNKNOWN, the connection stays open
    over = [codec.encode_request("appendBatch", [({"topic": topic}, b"x")] * 11, handshake=False),
            codec.encode_request("append", [({"topic": topic, "a": "1", "b": "2", "c": "3", "d": "4"}, b"x")],
                                 handshake=False)]
    for payload in over:
        assert codec.decode_reply(_roundtrip(keeper, 2, payload), handshake=False) == (None, "UNKNOWN")
    reply = _roundtrip(keeper, 3, codec.encode_request("append", [({"topic": topic}, b"last")], handshake=False))
    assert codec.decode_reply(reply, handshake=False) == (None, "OK")
    got = read_topic(kafka_up.bootstrap, topic, 2, settle=1.0)
    assert sorted(r.value for r in got) == [b"first", b"last"]
    [avro] = [s for s in w.status()["sources"] if s["name"] == "avro"]
    assert avro["bad_frames"] == len(bad) and avro["closed"]["bad_frame"] == len(bad)


def test_a_handshake_that_never_matches_and_a_slowloris_client_are_cut(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    w, port = avro_worker(make_worker, kafka_up.bootstrap, SPILLWAY_SOURCE_AVRO_HANDSHAKE_TIMEOUT="3s",
                          SPILLWAY_SOURCE_AVRO_FRAME_TIMEOUT="1.5s", SPILLWAY_SOURCE_AVRO_IDLE_TIMEOUT="60s")
    # an unknown client hash without its protocol: NONE each time; the third such closes it
    s = _raw(port)
    unknown = codec.encode_request("append", [({}, b"x")], client_hash=b"\x01" * 16)
    for _ in range(2):
        assert codec.decode_reply(_roundtrip(s, 7, unknown))[0] == "NONE"
    s.sendall(codec.pack(8, unknown))
    assert _closed_by_server(s) < 5
    # connected, but never a handshake: cut at handshake_timeout though the idle timeout is 60 s
    s = _raw(port)
    assert 1.5 < _closed_by_server(s, 20) < 8
    # a pack dribbled a byte a second: cut at the frame timeout
    s = _raw(port)
    payload = codec.pack(1, codec.encode_request("append", [({}, b"x" * 50)]))
    t0 = time.monotonic()
    s.settimeout(0.2)
    for byte in payload[:20]:
        try:
            s.send(bytes([byte]))
        except OSError:
            break
        try:
            if s.recv(1) == b"":
                break
        except TimeoutError:
            pass
        time.sleep(0.8)
    assert time.monotonic() - t0 < 8
    [avro] = [x for x in w.status()["sources"] if x["name"] == "avro"]
    assert avro["closed"].get("handshake", 0) == 2 and avro["closed"].get("frame_timeout", 0) == 1
    assert avro["handshakes"]["NONE"] == 3
