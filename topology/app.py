"""The one Faust app: channels, agents, timers. Read this file to see the pipeline.

    Thrift source ──► ingress ──► router agent ──► supervisor: Kafka sink, else disk buffer
                                                        ▲ outcomes
    probe timer (a parked Kafka) ──────────────────────┘
    drain timer: closed buffer segments ──► Kafka, each event to its own topic

Faust's own Kafka machinery is off (:class:`NoKafka`): an edge collector must start
and take events precisely when Kafka is down. The Kafka sink owns its producer.

The node's stages are built here, once, from the settings (``node``; nothing is started
or opened until the worker starts it). The web views (``topology/views.py``) and the CLI
commands (``topology/commands/``) register themselves with ``app`` when Faust's
autodiscovery imports them at start, so this module imports neither.
"""

from __future__ import annotations

import logging

import faust
from faust.app.base import BootStrategy

from agents.supervisor import Outcome
from agents.thrift_source import Status
from topology.errors import ConfigError
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
    autodiscover=["topology.views", "topology.commands"],
    origin="topology.app",
    store="memory://",
    topic_disable_leader=True,
)

#: source -> router: one Envelope per client call
ingress = app.channel()
#: sink outcomes -> supervisor
outcomes = app.channel()


class Node(Pipeline):
    """The node's stages, started with the worker (after agents, before timers fire)."""

    async def on_start(self) -> None:
        if config_error is not None:
            raise SystemExit(f"spillway: invalid configuration: {config_error}")
        await super().on_start()


#: every stage of this node, built from the settings; started and stopped by the worker
node = app.service(Node(settings, ingress, outcomes))


@app.agent(ingress)
async def router(calls: faust.StreamT[Envelope]) -> None:
    """Routes each call's events to their topics and hands them to the supervisor."""
    async for envelope in calls:
        try:
            node.dispatch(envelope)
        except Exception:  # dispatch answers every call itself; this is the last line of defence
            logger.exception("router agent: dispatch failed; answering FAILED")
            if not envelope.reply.done():
                envelope.reply.set_result(Status.FAILED)


@app.agent(outcomes)
async def supervisor(stream: faust.StreamT[Outcome]) -> None:
    """Applies the Kafka sink's outcomes to the failover state (parks a failing Kafka)."""
    async for outcome in stream:
        try:
            await node.kafka_supervisor.observe(outcome)
        except Exception:
            logger.exception("supervisor: could not apply %r", outcome)


@app.timer(interval=settings.failover.probe_interval)
async def probe() -> None:
    """Probes a parked Kafka when its penalty is over."""
    if not node.source.listening:  # not started yet, or stopping
        return
    try:
        await node.kafka_supervisor.tick()
    except Exception:
        logger.exception("probe timer: unexpected error")


@app.timer(interval=settings.drain.interval)
async def drain() -> None:
    """Drains closed buffer segments into Kafka while Kafka is up."""
    if not node.source.listening:
        return
    try:
        await node.drain.run_once()
    except Exception:
        logger.exception("drain timer: unexpected error")
