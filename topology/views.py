"""Web views: the status page (/), /health, /ready, /status, /status/history, /metrics.

``/status/history`` is a ring buffer of one :class:`Sample` a second over the last ten
minutes (rates of the pipeline's counters, buffer depth, whether Kafka takes live
traffic), kept by the :func:`sample_history` timer. ``/status`` carries the latest
sample as ``rates``. The page at ``/`` is ``status_page.html``: one self-contained file
(no external assets) that polls both every second.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import faust
from faust import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.supervisor import Failover
from core.ratelog import Throttled
from core.settings import KafkaSettings
from topology import app as topo
from topology.pipeline import Pipeline
from topology.processes import leftover_directories

logger = logging.getLogger(__name__)
app: faust.App = topo.app

HISTORY_SECONDS = 600
SAMPLE_INTERVAL = 1.0


# -- history: pure, one sample a second ----------------------------------------------------------

class Totals(NamedTuple):
    """The counters the history turns into rates."""

    received: float
    acked_kafka: float
    acked_disk: float
    drained: float


class Sample(NamedTuple):
    time: float  # wall clock, seconds since the epoch
    received_per_second: float
    acked_kafka_per_second: float
    acked_disk_per_second: float
    drained_per_second: float
    buffer_bytes: int
    buffer_events: int
    sink_up: int  # 1 while live traffic goes to Kafka, 0 while Kafka is parked


def totals(counters: dict[str, float]) -> Totals:
    """Sums the labelled samples of :meth:`Metrics.counters` into :class:`Totals`."""

    def total(name: str) -> float:
        return sum(v for k, v in counters.items() if k == name or k.startswith(name + "{"))

    return Totals(total("spillway_events_received_total"),
                  total("spillway_events_acked_total") - counters.get("spillway_events_acked_total{sink=disk}", 0.0),
                  counters.get("spillway_events_acked_total{sink=disk}", 0.0),
                  total("spillway_events_drained_total"))


class History:
    """The last ``seconds`` samples. Each rate is a counter's increase over the time elapsed
    since the previous observation, so a late timer tick gives the right rate, not a spike."""

    def __init__(self, seconds: int = HISTORY_SECONDS) -> None:
        self.samples: deque[Sample] = deque(maxlen=seconds)
        self._previous: tuple[float, Totals] | None = None

    def begin(self, mono: float, counts: Totals) -> None:
        """Set the baseline the first rates are measured from (once; later calls do nothing)."""
        if self._previous is None:
            self._previous = (mono, counts)

    def observe(self, wall: float, mono: float, counts: Totals, buffer_bytes: int, buffer_events: int,
                sink_up: bool) -> Sample | None:
        """Record one observation. Without a baseline (:meth:`begin`) the first one only sets it
        and returns None."""
        previous, self._previous = self._previous, (mono, counts)
        if previous is None or mono <= previous[0]:
            return None
        elapsed, before = mono - previous[0], previous[1]

        def rate(now: float, then: float) -> float:
            return round(max(0.0, now - then) / elapsed, 1)

        sample = Sample(round(wall, 3), rate(counts.received, before.received),
                        rate(counts.acked_kafka, before.acked_kafka), rate(counts.acked_disk, before.acked_disk),
                        rate(counts.drained, before.drained), buffer_bytes, buffer_events, int(sink_up))
        self.samples.append(sample)
        return sample

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def since(self, t: float) -> list[Sample]:
        """Samples strictly newer than ``t`` (wall clock), oldest first."""
        out: list[Sample] = []
        for s in reversed(self.samples):
            if s.time <= t:
                break
            out.append(s)
        out.reverse()
        return out


history = History()
_throttled = Throttled(logger, interval=60.0)
_sampler_failed = False  # the first failure is logged with its traceback, later ones throttled


def observe(p: Pipeline, h: History = history) -> Sample | None:
    wall, mono = time.time(), time.monotonic()
    # The counters start at zero with the pipeline, so the first sample counts what came in
    # before the timer's first tick.
    h.begin(mono - max(0.0, wall - p.started_at), Totals(0.0, 0.0, 0.0, 0.0))
    b = p.buffer.stats()
    return h.observe(wall, mono, totals(p.metrics.counters()), b.bytes, b.events,
                     p.failover.kafka_usable)


@app.timer(interval=SAMPLE_INTERVAL)
async def sample_history() -> None:
    """Adds one sample a second to :data:`history`; never raises (that would stop the worker)."""
    global _sampler_failed
    p = topo.node
    if not p.active:
        return
    try:
        observe(p)
    except Exception as exc:
        if not _sampler_failed:
            _sampler_failed = True
            logger.exception("status history: could not take a sample")
        else:
            _throttled.log(logging.ERROR, "sample", "status history: could not take a sample: %r", exc)


# -- views ---------------------------------------------------------------------------------------

def _load_page() -> str | None:
    try:
        return resources.files("topology").joinpath("status_page.html").read_text(encoding="utf-8")
    except OSError:
        logger.warning("status page: topology/status_page.html is not installed; / will answer 503")
        return None


STATUS_PAGE = _load_page()
NO_CACHE = {"Cache-Control": "no-store"}
OLDEST_AGE = "spillway_buffer_oldest_event_age_seconds"


@app.page("/")
async def status_page(self: web.View, request: web.Request) -> web.Response:
    if STATUS_PAGE is None:
        return self.text("status page not installed (topology/status_page.html); see /status\n", status=503)
    return self.html(STATUS_PAGE, headers=dict(NO_CACHE))


@app.page("/health")
async def health(self: web.View, request: web.Request) -> web.Response:
    return self.json({"status": "ok"})


@app.page("/ready")
async def ready(self: web.View, request: web.Request) -> web.Response:
    p = topo.node
    ok = p.listening and p.buffer.healthy
    # "source": every enabled source listens (each one's state is in /status "sources")
    return self.json({"ready": ok, "source": p.listening, "buffer": p.buffer.healthy},
                     status=200 if ok else 503)


def source_doc(src: Any, counters: dict[str, float]) -> dict[str, Any]:
    """One source in /status: where it listens and what it took."""
    label = f"source={src.name}"
    doc: dict[str, Any] = {
        "name": src.name, "port": src.port, "listening": src.listening,
        "tls": bool(src.settings.tls_certfile),
        "connections": int(counters.get(f"spillway_source_connections{{{label}}}", 0)),
        "received": int(counters.get(f"spillway_events_received_total{{{label}}}", 0)),
        "bad_frames": int(counters.get(f"spillway_bad_frames_total{{{label}}}", 0)),
        "closed": {reason: n for reason, n in sorted(src.closed.items())},
    }
    if src.name == "thrift":
        doc["protocol"] = src.settings.protocol
    if src.name == "avro":
        doc["compression"] = src.settings.compression
        doc["handshakes"] = dict(src.handshakes)
    if src.name == "http":
        doc["path"] = src.settings.path
        doc["responses"] = {str(code): n for code, n in sorted(src.responses.items())}
    return doc


def sink_doc(f: Failover, cluster: KafkaSettings, p: Pipeline, now: float) -> dict[str, Any]:
    return {"name": cluster.name, "state": f.state.value, "failures": f.failures,
            "penalty_seconds": round(f.current_penalty(now), 2),
            "parked_for_seconds": None if f.parked_since is None else round(now - f.parked_since, 1),
            "max_penalty_seconds": float(p.settings.failover.max_penalty),
            "bootstrap_servers": cluster.bootstrap_servers}


def status_document() -> dict[str, Any]:
    p = topo.node
    if not p.active and not p.should_stop:
        return {"state": "starting"}
    now = time.monotonic()
    sup = p.failover
    p.refresh_gauges()
    b = p.buffer.stats()
    counters = p.metrics.counters()
    latest = history.latest()

    def count(name: str) -> int:  # counters are whole numbers; JSON shows them as such
        return int(counters.get(name, 0))

    def summed(name: str) -> int:  # every label
        return int(sum(v for k, v in counters.items() if k == name or k.startswith(name + "{")))

    place = p.settings.process
    return {
        "state": "running" if p.active else "stopping",
        "ready": p.listening and p.buffer.healthy,
        "uptime_seconds": round(time.time() - p.started_at, 1),
        "process": {"index": place.index, "count": place.count, "pid": os.getpid(),
                    "web_port": p.settings.web.port, "drain_only": place.drain_only},
        "source": {"port": p.source.port, "protocol": p.settings.source.thrift.protocol,  # the Thrift source
                   "connections": summed("spillway_source_connections")},  # every source's
        "sources": [source_doc(src, counters) for src in p.sources],
        "sink": sink_doc(sup.failovers[0], p.settings.kafka, p, now),  # the primary
        "sinks": [sink_doc(f, cluster, p, now) for f, cluster in zip(sup.failovers, p.settings.kafka.clusters,
                                                                     strict=True)],
        "live": (lambda i: "disk" if i is None else p.settings.kafka.clusters[i].name)(sup.live()),
        "buffer": {"directory": str(p.settings.buffer.directory), "bytes": b.bytes, "events": b.events,
                   "segments": b.segments, "max_bytes": p.settings.buffer.max_bytes,
                   "oldest_event_age_seconds": round(counters.get(OLDEST_AGE, 0.0), 1),
                   "fsyncs": b.fsyncs, "quarantined_records": b.quarantined_records,
                   "durable": p.settings.buffer.fsync, "writer": "up" if p.buffer.healthy else "down",
                   "writer_restarts": p.buffer.writer_restarts},
        "undeliverable": {"directory": str(p.drain.undeliverable_dir),
                          "events_total": int(sum(v for k, v in counters.items()
                                                  if k.startswith("spillway_events_undeliverable_total")))},
        "drain": {"segment": p.drain.current, "drained_total": p.drain.drained_total,
                  "archived_total": count("spillway_events_archived_total"),
                  "max_age_seconds": float(p.settings.drain.max_age)},
        "counters": {
            "received": int(totals(counters).received),  # every source
            "acked_kafka": int(sum(v for k, v in counters.items() if k.startswith("spillway_events_acked_total")
                                   and not k.endswith("{sink=disk}"))),  # every cluster
            "acked_disk": count("spillway_events_acked_total{sink=disk}"),
            "drained": count("spillway_events_drained_total"),
            "refused": int(sum(v for k, v in counters.items() if k.startswith("spillway_events_refused_total"))),
            "failed": count("spillway_events_failed_total"),
            "bad_frames": summed("spillway_bad_frames_total"),  # every source
            "duplicates": count("spillway_duplicates_total"),
            "sink_errors": count("spillway_sink_errors_total"),
        },
        "rates": None if latest is None else latest._asdict(),
    }


# -- one view over N worker processes (node.processes) ----------------------------------------------

SIBLING_TIMEOUT = 1.0  # seconds a sibling has to answer /status; one that does not is listed as down


def process_summary(doc: dict[str, Any], index: int, web_port: int) -> dict[str, Any]:
    """One process's line in process 0's ``processes`` list, from its /status document."""
    if doc.get("state") not in ("running", "stopping"):
        return {"index": index, "web_port": web_port, "state": doc.get("state", "down"), "ready": False}
    sink = doc.get("sink", {})
    return {"index": index, "pid": doc.get("process", {}).get("pid"), "web_port": web_port,
            "state": doc["state"], "ready": bool(doc.get("ready")),
            "events_taken": doc["counters"]["received"],
            "buffered_events": doc["buffer"]["events"], "buffered_bytes": doc["buffer"]["bytes"],
            "drained": doc["drain"]["drained_total"], "duplicates": doc["counters"]["duplicates"],
            "kafka": sink.get("state"), "live": doc.get("live"),
            "connections": doc.get("source", {}).get("connections", 0)}


def process_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over the processes that answered."""
    up = [r for r in rows if "events_taken" in r]
    return {"processes": len(rows), "answering": len(up), "ready": sum(1 for r in up if r["ready"]),
            "events_taken": sum(r["events_taken"] for r in up),
            "buffered_events": sum(r["buffered_events"] for r in up),
            "buffered_bytes": sum(r["buffered_bytes"] for r in up),
            "drained": sum(r["drained"] for r in up), "duplicates": sum(r["duplicates"] for r in up)}


async def sibling_status(session: aiohttp.ClientSession, host: str, port: int) -> dict[str, Any]:
    """A sibling's /status, or ``{"state": "down", "error": ...}``: never raises."""
    try:
        async with session.get(f"http://{host}:{port}/status") as resp:
            doc: dict[str, Any] = await resp.json(content_type=None)
            return doc
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"state": "down", "error": f"{type(exc).__name__}: {exc}".rstrip(": ")}


async def with_processes(doc: dict[str, Any]) -> dict[str, Any]:
    """Process 0 of several: ``doc`` plus ``processes`` (each sibling's summary, fetched over
    loopback with a short timeout, and each drain-only child's while a directory a run with
    more processes left still holds segments) and ``processes_total``."""
    p = topo.node
    place, w = p.settings.process, p.settings.web
    if place.index != 0 or not w.port or "counters" not in doc:
        return doc
    leftovers = sorted(leftover_directories(Path(p.settings.buffer.directory), place.count))
    if place.count <= 1 and not leftovers:
        return doc
    host = "127.0.0.1" if w.host in ("0.0.0.0", "", "localhost") else ("::1" if w.host == "::" else w.host)
    indexes = [*range(1, place.count), *leftovers]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SIBLING_TIMEOUT)) as session:
        docs = await asyncio.gather(*(sibling_status(session, host, w.port + i) for i in indexes))
    rows = [process_summary(doc, 0, w.port)]
    for i, sibling in zip(indexes, docs, strict=True):
        row = process_summary(sibling, i, w.port + i)
        if i >= place.count:
            row["drain_only"] = True
        if "error" in sibling:
            row["error"] = sibling["error"]
        rows.append(row)
    return {**doc, "processes": rows, "processes_total": process_totals(rows)}


@app.page("/status")
async def status(self: web.View, request: web.Request) -> web.Response:
    """This process's status; on process 0 of several, with every process's summary (``processes``)."""
    return self.json(await with_processes(status_document()), headers=dict(NO_CACHE))


@app.page("/status/history")
async def status_history(self: web.View, request: web.Request) -> web.Response:
    """``{"interval_seconds", "window_seconds", "samples": [...]}``, oldest first; ``?since=T``
    (wall-clock seconds, the ``time`` of the last sample a client holds) returns only newer ones."""
    since = request.query.get("since")
    try:
        after = float(since) if since else 0.0
    except ValueError:
        return self.error(400, "since must be a number of seconds since the epoch")
    samples = history.since(after) if after else list(history.samples)
    return self.json({"interval_seconds": SAMPLE_INTERVAL, "window_seconds": HISTORY_SECONDS,
                      "samples": [s._asdict() for s in samples]}, headers=dict(NO_CACHE))


@app.page("/metrics")
async def metrics(self: web.View, request: web.Request) -> web.Response:
    p = topo.node
    p.refresh_gauges()
    body = generate_latest(p.metrics.registry)
    return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])
