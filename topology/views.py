"""Web views: /health, /ready, /status, /metrics."""

from __future__ import annotations

import time
from typing import Any

from faust import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from topology import app as topo

app = topo.app


@app.page("/health")
async def health(self: web.View, request: web.Request) -> web.Response:
    return self.json({"status": "ok"})


@app.page("/ready")
async def ready(self: web.View, request: web.Request) -> web.Response:
    p = topo.pipeline
    ok = p is not None and p.source.listening
    return self.json({"ready": ok}, status=200 if ok else 503)


def status_document() -> dict[str, Any]:
    p = topo.pipeline
    if p is None:
        return {"state": "starting"}
    now = time.monotonic()
    f = p.supervisor.failover
    p.refresh_gauges()
    b = p.buffer.stats()
    counters = p.metrics.counters()
    return {
        "state": "running" if p.source.listening else "stopping",
        "uptime_seconds": round(time.time() - p.started_at, 1),
        "source": {"port": p.source.port, "protocol": p.settings.source.thrift.protocol,
                   "connections": counters.get("spillway_source_connections", 0)},
        "sink": {"state": f.state.value, "failures": f.failures,
                 "penalty_seconds": round(f.current_penalty(now), 2),
                 "bootstrap_servers": p.settings.kafka.bootstrap_servers},
        "buffer": {"directory": str(p.settings.buffer.directory), "bytes": b.bytes, "events": b.events,
                   "segments": b.segments, "max_bytes": p.settings.buffer.max_bytes,
                   "oldest_event_age_seconds": counters.get("spillway_buffer_oldest_event_age_seconds", 0),
                   "fsyncs": b.fsyncs, "quarantined_records": b.quarantined_records},
        "drain": {"segment": p.drain.current, "drained_total": p.drain.drained_total,
                  "archived_total": counters.get("spillway_events_archived_total", 0)},
        "counters": {
            "received": counters.get("spillway_events_received_total{source=thrift}", 0),
            "acked_kafka": counters.get("spillway_events_acked_total{sink=kafka}", 0),
            "acked_disk": counters.get("spillway_events_acked_total{sink=disk}", 0),
            "refused": sum(v for k, v in counters.items() if k.startswith("spillway_events_refused_total")),
            "failed": counters.get("spillway_events_failed_total", 0),
            "bad_frames": counters.get("spillway_bad_frames_total", 0),
            "duplicates": counters.get("spillway_duplicates_total", 0),
        },
    }


@app.page("/status")
async def status(self: web.View, request: web.Request) -> web.Response:
    return self.json(status_document())


@app.page("/metrics")
async def metrics(self: web.View, request: web.Request) -> web.Response:
    p = topo.pipeline
    if p is None:
        return self.bytes(b"", content_type="text/plain", status=503)
    p.refresh_gauges()
    body = generate_latest(p.metrics.registry)
    return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])
