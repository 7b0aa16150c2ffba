"""The HTTP source (Flume's HTTPSource + JSONHandler), with curl and raw sockets, against a
real broker: JSON arrays and NDJSON, gzip, charsets; 200 only when durable (from Kafka or
the disk), 503 + Retry-After when nothing can be made durable, 400/413 for bad input, and
a slow or huge sender never stops the server from serving others."""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import TcpProxy, Worker, free_port, read_topic, unique

from devtools.kafka import Broker

pytestmark = pytest.mark.kafka


def http_worker(make_worker: Callable[..., Worker], bootstrap: str, **env: str) -> tuple[Worker, str]:
    w = make_worker(bootstrap, start=False, **env)
    while (port := free_port()) in (w.thrift_port, w.web_port):
        pass
    w.env_extra |= {"SPILLWAY_SOURCE_HTTP_ENABLED": "true", "SPILLWAY_SOURCE_HTTP_HOST": "127.0.0.1",
                    "SPILLWAY_SOURCE_HTTP_PORT": str(port)}
    w.start()
    return w, f"http://127.0.0.1:{port}/"


def curl(url: str, body: bytes, tmp: Path, *headers: str, timeout: float = 60,
         extra: tuple[str, ...] = ()) -> tuple[int, dict[str, str], Any]:
    """POST ``body`` with curl: (status, response headers, parsed JSON body)."""
    if shutil.which("curl") is None:
        pytest.fail("curl is needed for the HTTP source tests")
    data = tmp / f"body-{time.monotonic_ns()}"
    data.write_bytes(body)
    args = ["curl", "-sS", "-X", "POST", "--data-binary", f"@{data}", "-D", "-", "-o", str(data) + ".out",
            "--max-time", str(timeout), *extra]
    for h in headers:
        args += ["-H", h]
    r = subprocess.run([*args, url], capture_output=True, text=True, timeout=timeout + 10)
    assert r.returncode == 0, r.stderr
    blocks = [b for b in r.stdout.replace("\r", "").split("\n\n") if b.startswith("HTTP/")]
    lines = blocks[-1].splitlines()  # the last response (after any 100 Continue)
    status = int(lines[0].split()[1])
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if ":" in x)}
    out = Path(str(data) + ".out").read_bytes()
    return status, hdrs, json.loads(out) if out else None


def events(topic: str, n: int, **extra: str) -> list[dict[str, Any]]:
    return [{"headers": {"topic": topic, "seq": str(i), **extra}, "body": f"évènement {i}"} for i in range(n)]


def test_json_arrays_land_in_the_topic_their_header_names_with_headers_and_utf8_bodies(
        kafka_up: Broker, make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    w, url = http_worker(make_worker, kafka_up.bootstrap)
    topic = unique("http-json")
    status, _, doc = curl(url, json.dumps(events(topic, 300, app="web")).encode(), tmp_path,
                          "Content-Type: application/json")
    assert (status, doc) == (200, {"accepted": 300})
    got = read_topic(kafka_up.bootstrap, topic, 300, settle=1.0)
    assert len(got) == 300
    for r in got:
        h = dict(r.headers)
        assert h["topic"] == topic.encode() and h["app"] == b"web"
        assert r.value == f"évènement {int(h['seq'])}".encode()
    # the body in the request's charset, as Flume's JSONHandler reads it
    latin = unique("http-latin1")
    body = json.dumps([{"headers": {"topic": latin}, "body": "café"}], ensure_ascii=False).encode("latin-1")
    assert curl(url, body, tmp_path, "Content-Type: application/json; charset=ISO-8859-1")[0] == 200
    [r] = read_topic(kafka_up.bootstrap, latin, 1, settle=0.5)
    assert r.value == "café".encode("latin-1")
    st = w.status()
    [http] = [s for s in st["sources"] if s["name"] == "http"]
    assert http["received"] == 301 and http["responses"] == {"200": 2}
    assert st["counters"]["acked_kafka"] == 301


def test_ndjson_and_gzip_as_senders_without_flume_send_them(
        kafka_up: Broker, make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    _, url = http_worker(make_worker, kafka_up.bootstrap)
    topic = unique("http-ndjson")
    lines = "\n".join(json.dumps(e) for e in events(topic, 50)) + "\n"
    assert curl(url, lines.encode(), tmp_path, "Content-Type: application/x-ndjson")[:1] == (200,)
    gz = gzip.compress(json.dumps(events(topic, 50, part="gz")).encode())
    status, _, doc = curl(url, gz, tmp_path, "Content-Type: application/json", "Content-Encoding: gzip")
    assert (status, doc) == (200, {"accepted": 50})
    got = read_topic(kafka_up.bootstrap, topic, 100, settle=1.0)
    assert len(got) == 100 and sum(dict(r.headers).get("part") == b"gz" for r in got) == 50


def test_bad_input_gets_4xx_with_a_reason_and_the_server_keeps_serving(
        kafka_up: Broker, make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    w, url = http_worker(make_worker, kafka_up.bootstrap, SPILLWAY_SOURCE_HTTP_MAX_BODY_BYTES="100000",
                         SPILLWAY_SOURCE_HTTP_MAX_BATCH_EVENTS="100", SPILLWAY_ROUTER_ALLOWED_TOPICS="ok-*",
                         SPILLWAY_ROUTER_DEFAULT_TOPIC="ok-default")
    topic = unique("ok-http")
    cases = [
        (b"{not json", (), 400),
        (b'{"headers": {}, "body": "an object, not an array"}', (), 400),
        (b'[{"headers": {"topic": 5.5, "n": [1]}, "body": "x"}]', (), 400),
        (json.dumps(events(topic, 101)).encode(), (), 400),                       # over max_batch_events
        (json.dumps(events("__consumer_offsets", 1)).encode(), (), 400),          # a refused topic
        (json.dumps(events("not-allowed", 1)).encode(), (), 400),
        (b"[" + b'{"body": "' + b"x" * 200_000 + b'"}]', (), 413),                # over max_body_bytes
        (gzip.compress(b"[" + b" " * 5_000_000 + b"]"), ("Content-Encoding: gzip",), 413),  # inflates past it
        (b"\x1f\x8b garbage", ("Content-Encoding: gzip",), 400),
        (b"[]", ("Content-Encoding: br",), 415),
    ]
    for body, headers, expected in cases:
        status, _, doc = curl(url, body, tmp_path, "Content-Type: application/json", *headers)
        assert status == expected and isinstance(doc["error"], str) and doc["error"], (body[:60], status, doc)
    assert curl(url, json.dumps(events(topic, 3)).encode(), tmp_path)[0] == 200
    assert len(read_topic(kafka_up.bootstrap, topic, 3, settle=1.0)) == 3
    [http] = [s for s in w.status()["sources"] if s["name"] == "http"]
    assert http["responses"] == {"200": 1, "400": 7, "413": 2, "415": 1}


def test_with_kafka_unreachable_200_comes_from_the_disk_and_a_full_budget_answers_503(
        kafka_up: Broker, kafka_proxy: TcpProxy, make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    w, url = http_worker(make_worker, kafka_up.bootstrap, SPILLWAY_BUFFER_MAX_BYTES="20000",
                         SPILLWAY_SOURCE_THRIFT_MAX_EVENT_BYTES="3000")
    topic = unique("http-outage")
    body = json.dumps([{"headers": {"topic": topic}, "body": "x" * 1000} for _ in range(5)]).encode()
    kafka_proxy.cut()
    try:
        status, _, doc = curl(url, body, tmp_path)  # parks Kafka, then the disk takes it
        assert (status, doc) == (200, {"accepted": 5})
        assert w.status()["counters"]["acked_disk"] == 5
        seen_503 = None
        for _ in range(10):
            status, hdrs, doc = curl(url, body, tmp_path)
            if status == 503:
                seen_503 = (hdrs, doc)
                break
            assert status == 200
        assert seen_503 is not None, "the budget never filled"
        assert seen_503[0].get("retry-after") == "1" and "retry" in seen_503[1]["error"], seen_503
        accepted = w.status()["counters"]["acked_disk"]
    finally:
        kafka_proxy.restore()
    got = read_topic(kafka_up.bootstrap, topic, accepted, timeout=60, settle=2.0)
    assert len(got) >= accepted  # every event answered 200 drains to Kafka


def test_a_slow_sender_is_cut_at_the_frame_timeout_while_others_are_served(
        kafka_up: Broker, make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    w, url = http_worker(make_worker, kafka_up.bootstrap, SPILLWAY_SOURCE_HTTP_FRAME_TIMEOUT="2s")
    port = int(url.rsplit(":", 1)[1].strip("/"))
    topic = unique("http-slow")
    slow = socket.create_connection(("127.0.0.1", port), timeout=10)
    slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[")
    t0 = time.monotonic()
    assert curl(url, json.dumps(events(topic, 2)).encode(), tmp_path)[0] == 200  # served meanwhile
    assert time.monotonic() - t0 < 2
    reply = slow.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408") and 1.5 < time.monotonic() - t0 < 6
    slow.close()
    assert len(read_topic(kafka_up.bootstrap, topic, 2, settle=0.5)) == 2


def test_over_tls_curl_is_served_and_plain_http_on_that_port_is_not(
        kafka_up: Broker, make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", "server.key", "-out", "server.pem", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], cwd=tmp_path, check=True, capture_output=True)
    _, url = http_worker(make_worker, kafka_up.bootstrap,
                         SPILLWAY_SOURCE_HTTP_TLS_CERTFILE=str(tmp_path / "server.pem"),
                         SPILLWAY_SOURCE_HTTP_TLS_KEYFILE=str(tmp_path / "server.key"))
    topic = unique("http-tls")
    status, _, doc = curl(url.replace("http://", "https://"), json.dumps(events(topic, 4)).encode(), tmp_path,
                          "Content-Type: application/json", extra=("--cacert", str(tmp_path / "server.pem")))
    assert (status, doc) == (200, {"accepted": 4})
    assert len(read_topic(kafka_up.bootstrap, topic, 4, settle=0.5)) == 4
    r = subprocess.run(["curl", "-sS", "--max-time", "10", "-X", "POST", "--data", "[]", url], capture_output=True)
    assert r.returncode != 0  # a plain request on the TLS port gets no HTTP answer


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed ``sock`` (reading past any reply), or ``seconds`` + 1."""
    t0 = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - t0 < seconds:
        try:
            if not sock.recv(65536):
                return time.monotonic() - t0
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - t0
    return seconds + 1


def _post_raw(sock: socket.socket, body: bytes) -> bytes:
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    return sock.recv(65536)


def test_connections_are_capped_and_one_trickling_its_headers_is_cut_while_others_are_served(
        kafka_up: Broker, make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    w, url = http_worker(make_worker, kafka_up.bootstrap, SPILLWAY_SOURCE_HTTP_MAX_CONNECTIONS="3",
                         SPILLWAY_SOURCE_HTTP_IDLE_TIMEOUT="1s", SPILLWAY_SOURCE_HTTP_FRAME_TIMEOUT="1s")
    port = int(url.rsplit(":", 1)[1].strip("/"))
    topic = unique("http-guard")
    body = json.dumps(events(topic, 1)).encode()
    # a keep-alive sender that answers in time keeps its connection across requests
    steady = socket.create_connection(("127.0.0.1", port), timeout=10)
    for _ in range(3):
        assert _post_raw(steady, body).startswith(b"HTTP/1.1 200")
        time.sleep(0.5)
    # one trickling its request line and headers, a byte every 0.3 s, never finishing them
    trickle = socket.create_connection(("127.0.0.1", port), timeout=10)
    t0 = time.monotonic()
    header = b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 100
    cut_after = None
    for i in range(len(header)):
        try:
            trickle.sendall(header[i:i + 1])
        except OSError:
            cut_after = time.monotonic() - t0
            break
        time.sleep(0.3)
        if _closed_within(trickle, 0.01) < 0.01:
            cut_after = time.monotonic() - t0
            break
    assert cut_after is not None and 0.8 < cut_after < 4  # idle_timeout: 1 s, trickled bytes do not reset it
    trickle.close()
    steady.close()
    # at most three at once; a fourth is closed at once
    others = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    assert _post_raw(others[0], body).startswith(b"HTTP/1.1 200")  # those in are served
    fourth = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert _closed_within(fourth, 3) < 1
    fourth.close()
    assert _post_raw(others[1], body).startswith(b"HTTP/1.1 200")
    for s in others:
        s.close()
    time.sleep(0.3)
    assert curl(url, body, tmp_path)[0] == 200  # a freed slot is taken again
    closed = w.get("/metrics")
    assert 'spillway_source_connections_closed_total{reason="max_connections",source="http"} 1.0' in closed
    assert "refusing a connection" in w.log_tail(200)
    assert len(read_topic(kafka_up.bootstrap, topic, 6, settle=0.5)) == 6  # 3 steady, 2 others, curl
