"""The web views and the status page, against a real worker and a real broker.

The page is rendered in Debian's headless chromium (``scripts/install-chromium.sh``); a
missing chromium fails these tests, it never skips them.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import Status, TcpProxy, Worker, client, event, render, text_of, unique, wait_until
from prometheus_client.parser import text_string_to_metric_families

from devtools.kafka import Broker

pytestmark = pytest.mark.kafka

OPERATOR_METRICS = {
    "spillway_events_received_total": "counter",
    "spillway_events_acked_total": "counter",
    "spillway_buffer_size_bytes": "gauge",
    "spillway_buffer_events": "gauge",
    "spillway_buffer_oldest_event_age_seconds": "gauge",
    "spillway_sink_up": "gauge",
    "spillway_duplicates_total": "counter",
}
SAMPLE_FIELDS = {"time", "received_per_second", "acked_kafka_per_second", "acked_disk_per_second",
                 "drained_per_second", "buffer_bytes", "buffer_events", "sink_up"}


@pytest.fixture
def worker(kafka_up: Broker, make_worker: Callable[..., Worker]) -> Worker:
    return make_worker(kafka_up.bootstrap)


def http(w: Worker, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, whatever the status."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{w.web_port}{path}", timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def send(w: Worker, topic: str, batches: int, size: int) -> int:
    c = client(w.thrift_port)
    try:
        for i in range(batches):
            batch = [event(f"{topic}-{i}-{j}", topic=topic, key=f"k{j}") for j in range(size)]
            assert c.appendBatch(batch) == Status.OK
    finally:
        c.close()
    return batches * size


def scrape(w: Worker) -> dict[str, float]:
    """/metrics parsed as Prometheus text: ``name{k=v,...}`` -> value."""
    code, ctype, body = http(w, "/metrics")
    assert code == 200 and ctype.startswith("text/plain"), (code, ctype)
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def samples(w: Worker, since: float | None = None) -> list[dict[str, Any]]:
    doc = w.get("/status/history" + (f"?since={since}" if since is not None else ""))
    return list(doc["samples"])


# -- the page's checks -------------------------------------------------------------------------

def assert_is_a_real_screenshot(png: Path) -> None:
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 900)
    assert len(data) > 40_000, f"screenshot of {len(data)} bytes: the page looks blank"


def assert_charts_drawn(dom: str) -> None:
    for chart in ("chart-throughput", "chart-buffer"):
        m = re.search(rf'<svg[^>]*id="{chart}"[^>]*>(.*?)</svg>', dom, re.S)
        assert m, f"no #{chart}"
        assert 'class="series"' in m.group(1), f"#{chart} has no line drawn"
        assert "collecting samples" not in m.group(1)


# -- tests ----------------------------------------------------------------------------------------

def test_health_answers_ok_while_the_worker_runs(worker: Worker) -> None:
    code, ctype, body = http(worker, "/health")
    assert code == 200 and ctype.startswith("application/json")
    assert json.loads(body) == {"status": "ok"}


def test_ready_answers_200_only_once_the_thrift_source_accepts_connections(
        kafka_up: Broker, make_worker: Callable[..., Worker]) -> None:
    w = make_worker(kafka_up.bootstrap, start=False)
    starter = threading.Thread(target=w.start, daemon=True)
    starter.start()
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            code, _, body = http(w, "/ready")
        except OSError:  # the web server is not up yet
            time.sleep(0.05)
            continue
        seen.append(code)
        if code == 200:
            assert json.loads(body) == {"ready": True, "source": True, "buffer": True}
            with socket.create_connection(("127.0.0.1", w.thrift_port), timeout=2):
                pass  # the source listens at the moment /ready says so
            break
        assert code == 503 and json.loads(body)["ready"] is False
        time.sleep(0.05)
    starter.join(60)
    assert seen and seen[-1] == 200, seen


def test_status_reports_sink_buffer_drain_and_counters_consistent_with_events_sent(worker: Worker) -> None:
    before = worker.status()
    assert set(before) >= {"state", "uptime_seconds", "source", "sink", "buffer", "drain", "counters", "rates"}
    assert before["state"] == "running"
    assert set(before["sink"]) >= {"state", "failures", "penalty_seconds", "parked_for_seconds"}
    assert set(before["buffer"]) >= {"bytes", "events", "segments", "max_bytes", "oldest_event_age_seconds"}
    assert set(before["drain"]) >= {"segment", "drained_total", "archived_total"}
    assert set(before["counters"]) >= {"received", "acked_kafka", "acked_disk", "refused", "failed",
                                       "bad_frames", "duplicates"}

    sent = send(worker, unique("views-status"), batches=5, size=40)

    after = worker.status()
    moved = {k: after["counters"][k] - before["counters"][k] for k in ("received", "acked_kafka", "acked_disk")}
    assert moved == {"received": sent, "acked_kafka": sent, "acked_disk": 0}
    sink = after["sink"]
    assert (sink["state"], sink["penalty_seconds"], sink["parked_for_seconds"]) == ("up", 0, None)
    assert after["buffer"]["events"] == 0 and after["buffer"]["oldest_event_age_seconds"] == 0
    assert after["counters"]["failed"] == after["counters"]["refused"] == 0
    # the rates of the next samples account for the burst, and /status carries the latest one
    wait_until(lambda: sum(s["received_per_second"] for s in samples(worker)) > 0, 5, what="a sample with the burst")
    rates = worker.status()["rates"]
    assert set(rates) == SAMPLE_FIELDS and rates["sink_up"] == 1 and rates["buffer_events"] == 0


def test_metrics_expose_the_operator_names_and_move_with_events(worker: Worker) -> None:
    code, _, body = http(worker, "/metrics")
    assert code == 200
    families = {f.name: f.type for f in text_string_to_metric_families(body)}
    for name, kind in OPERATOR_METRICS.items():
        family = name.removesuffix("_total")
        assert families.get(family) == kind, f"{name} ({kind}) missing from /metrics"
    before = scrape(worker)
    assert before["spillway_sink_up"] == 1

    sent = send(worker, unique("views-metrics"), batches=3, size=50)

    after = scrape(worker)
    received = "spillway_events_received_total{source=thrift}"
    acked = "spillway_events_acked_total{sink=kafka}"
    assert after[received] - before.get(received, 0) == sent
    assert after[acked] - before.get(acked, 0) == sent
    assert after["spillway_buffer_size_bytes"] == after["spillway_buffer_events"] == 0
    assert after["spillway_duplicates_total"] == 0


def test_status_history_gains_one_sample_a_second_and_serves_only_newer_ones(worker: Worker) -> None:
    first = wait_until(lambda: samples(worker), 5, what="a first sample")
    time.sleep(3.2)
    later = samples(worker)
    assert 2 <= len(later) - len(first) <= 5, (len(first), len(later))
    times = [s["time"] for s in later]
    assert times == sorted(set(times))
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(0.5 < g < 3.0 for g in gaps), gaps  # a busy machine delays a tick, never doubles one
    assert all(set(s) == SAMPLE_FIELDS and s["sink_up"] == 1 for s in later)
    newer = samples(worker, since=later[-2]["time"])
    assert [s["time"] for s in newer][:1] == [later[-1]["time"]]
    assert http(worker, "/status/history?since=yesterday")[0] == 400


def test_status_page_renders_in_chromium_with_kafka_up(worker: Worker, tmp_path: Path) -> None:
    code, ctype, body = http(worker, "/")
    assert code == 200 and ctype.startswith("text/html")
    external = re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import""", body)
    assert external is None, f"the page must not load external assets: {external}"
    topic = unique("views-page-up")
    for _ in range(4):
        send(worker, topic, batches=5, size=100)
        time.sleep(0.7)

    dom, png = render(worker, tmp_path, "sink-up")

    assert text_of(dom, "sink-state") == "up"
    assert text_of(dom, "sink-route") == "live events → Kafka"
    assert text_of(dom, "buffer-events") == "0"
    assert text_of(dom, "counter-received") == "2,000"
    assert_charts_drawn(dom)
    assert_is_a_real_screenshot(png)


def test_status_page_shows_kafka_parked_with_events_buffered_and_the_penalty(
        kafka_up: Broker, kafka_proxy: TcpProxy, make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    w = make_worker(kafka_up.bootstrap)
    topic = unique("views-page-parked")
    send(w, topic, batches=5, size=100)  # some live traffic to Kafka first
    time.sleep(1.5)
    kafka_proxy.cut()
    for _ in range(6):
        send(w, topic, batches=2, size=100)  # answered OK from the disk buffer
        time.sleep(0.4)
    st = wait_until(lambda: (s := w.status())["sink"]["state"] == "parked" and s, 10, what="Kafka parked")
    assert st["buffer"]["events"] > 0 and st["counters"]["acked_disk"] > 0

    dom, png = render(w, tmp_path, "sink-parked")

    assert text_of(dom, "sink-state") == "parked"
    assert text_of(dom, "sink-route") == "live events → disk buffer"
    assert "next probe in" in dom
    assert text_of(dom, "buffer-events") == f"{w.status()['buffer']['events']:,}"
    assert text_of(dom, "drain-state") == "waiting for Kafka"
    assert 'class="parked"' in dom, "the charts shade the time Kafka was parked"
    assert_charts_drawn(dom)
    assert_is_a_real_screenshot(png)
