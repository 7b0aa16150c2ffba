"""The one Faust app: channels, agents, timers. Read this file to see a Flume agent.

    Thrift source ─► ingress ─► router agent ─► kafka-<primary> agent ─► kafka-<secondary> agents ─► spill
     (Flume's source)          (interceptors,     (a KafkaSink each, by priority; what one cluster      (disk-buffer
                                topic by header)    does not acknowledge goes on to the next one up)      agent: fsync)
                                                          │ outcomes
                                                          ▼
                           supervisor agent (Flume's failover sink processor): parks a failing
                           cluster, the probe timer brings it back; says which stage is live
    drain timer: closed buffer segments ─► the highest-priority cluster up, each event to its topic

Faust's own Kafka machinery is off (:class:`NoKafka`): an edge collector must start
and take events precisely when Kafka is down. The Kafka sink owns its producer.

The node's stages are built here, once, from the settings (``node``; nothing is started
or opened until the worker starts it). The web views (``topology/views.py``) and the CLI
commands (``topology/commands/``) register themselves with ``app`` when Faust's
autodiscovery imports them at start, so this module imports neither.
"""

from __future__ import annotations

import logging
import os
import signal

import faust
from faust.app.base import BootStrategy

from agents.supervisor import Outcome
from core import heap
from core.errors import ConfigError
from core.loading import load_settings
from core.settings import Settings
from topology.pipeline import Pipeline

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
#: router or a higher-priority cluster -> each Kafka sink stage, in priority order: one Batch per call
kafka = [app.channel() for _ in settings.kafka.clusters]
#: -> the disk-buffer stage, when no cluster takes the call
spill = app.channel()
#: Kafka sink stages -> supervisor: one Outcome per batch that failed (or succeeded after failures)
outcomes = app.channel()


class Node(Pipeline):
    """The node's stages, started with the worker (after agents, before timers fire)."""

    async def on_start(self) -> None:
        if config_error is not None:
            raise SystemExit(f"spillway: invalid configuration: {config_error}")
        await super().on_start()
        heap.settle()  # the collector tuned for records in flight (core/heap.py)

    async def on_started(self) -> None:
        # A backlog left by the last run starts draining now, not a timer interval later (the
        # timer's first tick); the drain's lock keeps this and the timer's rounds apart.
        self.add_future(drain_once())


#: every stage of this node, built from the settings; started and stopped by the worker
node = Node(settings, ingress, outcomes, kafka, spill)
app.service(node)  # type: ignore[arg-type]  # faust's stub wants a class; it takes an instance too

# The stages, each a Faust agent over its channel (bodies in agents/; none of them raises).
router = app.agent(ingress, name="router")(node.router.process)
kafka_sinks = [app.agent(channel, name=f"kafka-{stage.name}")(stage.process)
               for channel, stage in zip(kafka, node.kafka_stages, strict=True)]
disk_buffer = app.agent(spill, name="disk-buffer")(node.spill.process)


@app.agent(outcomes, name="supervisor")
async def supervisor(stream: faust.StreamT[Outcome]) -> None:
    """Applies the Kafka sinks' outcomes to their failover states (parks a failing cluster)."""
    async for outcome in stream:
        try:
            await node.failover.observe(outcome)
        except Exception:
            logger.exception("supervisor: could not apply %r", outcome)


@app.timer(interval=settings.failover.probe_interval)
async def probe() -> None:
    """Probes each parked Kafka cluster whose penalty is over."""
    if not node.active:  # not started yet, or stopping
        return
    try:
        await node.failover.tick()
    except Exception:
        logger.exception("probe timer: unexpected error")


@app.timer(interval=settings.drain.interval)
async def drain() -> None:
    """Drains closed buffer segments into Kafka while Kafka is up (a drain-only node: then stops)."""
    await drain_once()


async def drain_once() -> None:
    """One call of the drain, from the timer or as the node starts."""
    if not node.active:
        return
    try:
        await node.drain.run_once()
        if node.drained:
            logger.info("%s is drained; this drain-only process stops", settings.buffer.directory)
            os.kill(os.getpid(), signal.SIGTERM)  # the worker's own clean stop (exit status 0)
    except Exception:
        logger.exception("drain timer: unexpected error")
