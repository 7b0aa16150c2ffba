"""Counters and gauges, in Prometheus form (``/metrics``) and as JSON (``/status``).

Names follow what a Vector or Fluent Bit operator expects:
``spillway_events_received_total{source}``, ``spillway_events_acked_total{sink}``, ...
Stages increment per batch, never per event.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

disable_created_metrics()  # no *_created series beside every counter


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.received = Counter("spillway_events_received", "Events received from clients",
                                ["source"], registry=r)
        self.acked = Counter("spillway_events_acked", "Events acknowledged to clients, by where they are durable",
                             ["sink"], registry=r)
        self.refused = Counter("spillway_events_refused", "Events answered ERROR (invalid input)",
                               ["reason"], registry=r)
        self.failed = Counter("spillway_events_failed", "Events answered FAILED (nowhere durable; client retries)",
                              registry=r)
        self.bad_frames = Counter("spillway_bad_frames", "Connections closed for a malformed, truncated or oversize "
                                  "frame, by source", ["source"], registry=r)
        self.connections_closed = Counter("spillway_source_connections_closed",
                                          "Connections a source closed, by source and reason", ["source", "reason"],
                                          registry=r)
        self.connections = Gauge("spillway_source_connections", "Open client connections, by source", ["source"],
                                 registry=r)
        self.sink_errors = Counter("spillway_sink_errors", "Kafka send failures and timeouts (batches)",
                                   registry=r)
        self.sink_up = Gauge("spillway_sink_up", "1 while live traffic goes to a Kafka cluster, 0 while every "
                             "cluster is parked (live traffic goes to the disk buffer)", registry=r)
        self.kafka_up = Gauge("spillway_kafka_up", "Per Kafka cluster (sink): 1 while it takes traffic, 0 while "
                              "it is parked", ["sink"], registry=r)
        self.duplicates = Counter("spillway_duplicates", "Events that may reach Kafka twice (a late ack of a "
                                  "spilled batch, or a drain resumed after a crash)", registry=r)
        self.drained = Counter("spillway_events_drained", "Events sent from the disk buffer to Kafka",
                               registry=r)
        self.archived = Counter("spillway_events_archived", "Buffered events older than drain.max_age, archived",
                                registry=r)
        self.buffer_bytes = Gauge("spillway_buffer_size_bytes", "Bytes in the disk buffer", registry=r)
        self.buffer_events = Gauge("spillway_buffer_events", "Events in the disk buffer", registry=r)
        self.buffer_segments = Gauge("spillway_buffer_segments", "Segment files in the disk buffer", registry=r)
        self.buffer_oldest_age = Gauge("spillway_buffer_oldest_event_age_seconds",
                                       "Age of the oldest buffered event", registry=r)
        self.buffer_max_bytes = Gauge("spillway_buffer_max_bytes", "The disk buffer's byte budget (buffer.max_bytes)",
                                      registry=r)
        self.quarantined = Counter("spillway_buffer_quarantined_records",
                                   "Buffer records that failed their CRC and were moved aside", registry=r)

        self.undeliverable = Counter("spillway_events_undeliverable", "Buffered events Kafka refuses for good "
                                     "(unknown topic, too large, not authorised), moved to undeliverable/",
                                     ["reason"], registry=r)
        self.filtered = Counter("spillway_events_filtered", "Events an interceptor (regex_filter) dropped; "
                                "their call is still answered OK, as in Flume", ["interceptor"], registry=r)
        self.router_errors = Counter("spillway_router_errors", "Calls answered FAILED because routing failed "
                                     "unexpectedly (a bug: see the log)", registry=r)
        self.buffer_writer_restarts = Counter("spillway_buffer_writer_restarts", "Times the disk buffer's writer "
                                              "task died and was restarted", registry=r)
        for reason in ("topic", "batch_too_large", "event_too_large", "too_many_headers", "headers_too_large",
                       "unknown_topic", "too_large", "not_authorized", "invalid_topic", "policy"):
            self.refused.labels(reason=reason)  # present from the start, at 0
        self.acked.labels(sink="disk")  # each Kafka cluster's label is created by its sink

    def counters(self) -> dict[str, float]:
        """Every sample as ``name{labels}`` → value, for /status."""
        out: dict[str, float] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out
