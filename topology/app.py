"""The one Faust app: channels, agents, timers. Read this file to see the pipeline.

Faust's own Kafka machinery is off (:class:`NoKafka`): an edge collector must start
and take events precisely when Kafka is down. The Kafka sink owns its producer.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from faust.app.base import BootStrategy

from agents.supervisor import Outcome
from topology.errors import ConfigError
from agents.thrift_source import Status
from topology.pipeline import Envelope, Pipeline
from topology.settings import Settings, load_settings

logger = logging.getLogger(__name__)

try:
    settings = load_settings()
    config_error: ConfigError | None = None
except ConfigError as exc:  # reported when the worker starts, so CLI commands still run
    settings, config_error = Settings(), exc


class NoKafka(BootStrategy):
    enable_kafka = False


class SpillwayApp(faust.App):
    BootStrategy = NoKafka


app = SpillwayApp(
    "spillway",
    broker=f"kafka://{settings.kafka.bootstrap_servers.split(',')[0]}",
    web_host=settings.web.host,
    web_port=settings.web.port,
    web_in_thread=False,
    autodiscover=False,
    store="memory://",
    topic_disable_leader=True,
)

#: source -> router: one Envelope per client call
ingress = app.channel()
#: sink outcomes -> supervisor
outcomes = app.channel()

pipeline: Pipeline | None = None


@app.service
class Node(Pipeline):
    """The node's stages, started with the worker (after agents, before timers fire)."""

    def __init__(self, **kwargs: Any) -> None:
        global pipeline
        if config_error is not None:
            raise SystemExit(f"spillway: invalid configuration: {config_error}")
        super().__init__(settings, ingress, outcomes, **kwargs)
        pipeline = self


@app.agent(ingress)
async def router(calls: faust.StreamT[Envelope]) -> None:
    """Routes each call's events to their topics and hands them to the supervisor."""
    async for envelope in calls:
        if pipeline is not None:
            pipeline.dispatch(envelope)
        elif not envelope.reply.done():
            envelope.reply.set_result(Status.FAILED)  # not wired yet: never drop a call silently


@app.agent(outcomes)
async def supervisor(stream: faust.StreamT[Outcome]) -> None:
    """Applies the Kafka sink's outcomes to the failover state (parks a failing Kafka)."""
    async for outcome in stream:
        if pipeline is not None:
            try:
                await pipeline.kafka_supervisor.observe(outcome)
            except Exception:
                logger.exception("supervisor: could not apply %r", outcome)


@app.timer(interval=settings.failover.probe_interval)
async def probe() -> None:
    """Probes a parked Kafka when its penalty is over."""
    if pipeline is not None:
        try:
            await pipeline.kafka_supervisor.tick()
        except Exception:
            logger.exception("probe timer: unexpected error")


@app.timer(interval=settings.drain.interval)
async def drain() -> None:
    """Drains closed buffer segments into Kafka while Kafka is up."""
    if pipeline is not None:
        try:
            await pipeline.drain.run_once()
        except Exception:
            logger.exception("drain timer: unexpected error")


from topology import commands, views  # noqa: E402,F401  - registers the CLI commands and web views
