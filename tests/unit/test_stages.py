"""The stages over their channels, with sinks that fail on command: which stage answers a call,
what goes on to the next cluster or the disk, and that a stage's failure answers FAILED at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agents.disk_buffer import DiskBuffer
from agents.ingress import RouterStage
from agents.kafka_stage import KafkaStage
from agents.records import Batch, Delivery, Envelope, Record
from agents.router import Router
from agents.spill import SpillStage
from agents.supervisor import DrainSender, Outcome, Supervisor
from agents.thrift_source import Status
from core.errors import SinkRefused
from core.metrics import Metrics
from core.settings import Duration, FailoverSettings, RouterSettings


class FakeSink:
    """A Kafka cluster that acknowledges, times out, or refuses a topic, on command."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.down = False
        self.refuse: set[str] = set()
        self.got: list[Record] = []

    async def send_within(self, records: Sequence[Record], timeout: float, *, whole: bool = False) -> Delivery:  # noqa: ASYNC109
        if self.down:
            return Delivery(list(records), "KafkaConnectionError")
        refused = [(r, SinkRefused("nope", topic=r.topic, reason="unknown_topic")) for r in records
                   if r.topic in self.refuse]
        if refused:
            return Delivery(refused=refused)
        self.got.extend(records)
        return Delivery()

    async def probe(self, timeout: float) -> bool:  # noqa: ASYNC109
        return not self.down


class Channel:
    """An in-memory channel: what a stage sends is processed by the stage behind it."""

    def __init__(self) -> None:
        self.stage: Any = None

    async def send(self, *, value: Any) -> None:
        await self.stage(value)


class Node:
    def __init__(self, tmp_path: Path, clusters: int) -> None:
        self.metrics = Metrics()
        self.sinks = [FakeSink(f"c{i}") for i in range(clusters)]
        self.outcomes: list[Outcome] = []

        async def report(outcome: Outcome) -> None:
            self.outcomes.append(outcome)
            await self.supervisor.observe(outcome)

        self.supervisor = Supervisor(FailoverSettings(timeout=Duration(1.0)), self.sinks, self.metrics, report)
        self.buffer = DiskBuffer(tmp_path / "buffer", max_bytes=1 << 26)
        self.stages = [KafkaStage(i, s, self.supervisor, self.metrics, 1.0)  # type: ignore[arg-type]
                       for i, s in enumerate(self.sinks)]
        self.spill_stage = SpillStage(self.buffer, self.metrics)
        channels = [Channel() for _ in self.sinks]
        for channel, stage in zip(channels, self.stages, strict=True):
            channel.stage = stage.deliver
        spill = Channel()
        spill.stage = self.spill_stage.spill
        self.supervisor.connect(channels, spill)
        self.router = RouterStage(Router(RouterSettings()), self.supervisor, self.metrics)

    async def call(self, *topics: str) -> int:
        now = int(time.time() * 1000)
        events = [([("topic", t.encode())], f"{t}-{i}".encode()) for i, t in enumerate(topics)]
        envelope = Envelope(events, now, asyncio.get_running_loop().create_future())
        batch = self.router.route(envelope)
        if batch is not None:
            await self.supervisor.forward(batch)
        return await asyncio.wait_for(envelope.reply, 5)

    def acked(self, sink: str) -> float:
        return self.metrics.registry.get_sample_value("spillway_events_acked_total", {"sink": sink}) or 0.0


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> Any:
    nodes: list[Node] = []

    async def make(clusters: int = 2) -> Node:
        n = Node(tmp_path / str(len(nodes)), clusters)
        await n.buffer.start()
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        await n.buffer.stop()


@pytest.mark.asyncio
async def test_primary_down_sends_calls_to_the_secondary_and_none_to_disk(node: Any) -> None:
    n = await node(2)
    assert await n.call("a", "b") == Status.OK
    n.sinks[0].down = True
    assert await n.call("a", "b") == Status.OK  # answered by the secondary, not the disk
    assert [o.sink for o in n.outcomes] == ["c0"] and not n.supervisor.failovers[0].kafka_usable
    assert await n.call("c") == Status.OK  # the primary is parked: straight to the secondary
    assert (n.acked("c0"), n.acked("c1"), n.acked("disk")) == (2, 3, 0)
    assert n.buffer.stats().events == 0


@pytest.mark.asyncio
async def test_every_cluster_down_sends_calls_to_disk_and_the_primary_takes_them_back(node: Any) -> None:
    n = await node(2)
    n.sinks[0].down = n.sinks[1].down = True
    assert await n.call("a") == Status.OK
    assert await n.call("b", "c") == Status.OK
    assert n.acked("disk") == 3 and n.buffer.stats().events == 3
    assert n.supervisor.first_up() is None and n.metrics.sink_up._value.get() == 0
    n.sinks[0].down = False
    for f in n.supervisor.failovers:
        f.parked_until = 0.0  # the penalty is over
    await n.supervisor.tick()
    assert n.supervisor.live() == 0 and n.supervisor.first_up() is n.sinks[0]  # live traffic and the drain
    assert await n.call("d") == Status.OK and n.acked("c0") == 1


@pytest.mark.asyncio
async def test_the_primarys_return_is_logged_with_the_events_the_disk_took_meanwhile(
        node: Any, caplog: pytest.LogCaptureFixture) -> None:
    n = await node(1)
    n.sinks[0].down = True
    assert await n.call("a") == Status.OK  # fails in Kafka, goes on to the disk: the outage begins
    assert await n.call("b", "c") == Status.OK  # straight to the disk while Kafka is parked
    n.sinks[0].down = False
    n.supervisor.failovers[0].parked_until = 0.0
    with caplog.at_level("WARNING", logger="agents.supervisor"):
        await n.supervisor.tick()
    back = [r.getMessage() for r in caplog.records if "is BACK" in r.getMessage()]
    assert len(back) == 1 and f"; {int(n.acked('disk'))} events were buffered to disk meanwhile" in back[0]
    assert n.acked("disk") == 3


@pytest.mark.asyncio
async def test_a_topic_kafka_refuses_answers_error_and_parks_nobody(node: Any) -> None:
    n = await node(2)
    n.sinks[0].refuse = {"bad"}
    assert await n.call("good", "bad") == Status.ERROR
    assert n.outcomes == [] and n.supervisor.live() == 0
    assert await n.call("good") == Status.OK and n.acked("c0") == 1


@pytest.mark.asyncio
async def test_a_stage_that_fails_unexpectedly_answers_that_call_failed_and_the_next_call_works(
        node: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    n = await node(1)
    real = n.sinks[0].send_within

    async def broken(*args: Any, **kwargs: Any) -> Delivery:
        raise RuntimeError("bug")

    monkeypatch.setattr(n.sinks[0], "send_within", broken)
    assert await n.call("a") == Status.FAILED
    monkeypatch.setattr(n.sinks[0], "send_within", real)
    assert await n.call("a") == Status.OK


@pytest.mark.asyncio
async def test_an_unforeseen_routing_error_answers_that_call_failed_at_once_and_the_next_call_is_routed(
        node: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    n = await node(1)
    real = n.router.router.route
    monkeypatch.setattr(n.router.router, "route", lambda events, ms: 1 / 0)  # a bug, not a RoutingError
    envelope = Envelope([([("topic", b"t")], b"x")], 0, asyncio.get_running_loop().create_future())
    assert n.router.route(envelope) is None
    assert envelope.reply.done() and envelope.reply.result() == Status.FAILED  # at once
    assert n.metrics.registry.get_sample_value("spillway_router_errors_total") == 1
    monkeypatch.setattr(n.router.router, "route", real)
    assert await n.call("t") == Status.OK


@pytest.mark.asyncio
async def test_the_agent_bodies_never_wait_on_a_sink_and_every_batch_is_answered(node: Any) -> None:
    n = await node(1)

    async def stream(items: list[Batch]) -> Any:
        for item in items:
            yield item

    loop = asyncio.get_running_loop()
    now = int(time.time() * 1000)
    batches = [Batch([Record("t", None, (), b"%d" % i, now)], loop.create_future(), 1) for i in range(50)]
    await asyncio.wait_for(n.spill_stage.process(stream(batches)), 1)  # returns before any fsync is awaited
    statuses = await asyncio.gather(*(b.reply for b in batches))
    assert statuses == [Status.OK] * 50 and n.buffer.fsyncs < 50  # they shared fsyncs


@pytest.mark.asyncio
async def test_the_drain_sends_to_the_highest_priority_cluster_up_and_reports_its_failure(node: Any) -> None:
    n = await node(2)
    sender = DrainSender(n.supervisor)
    now = int(time.time() * 1000)
    recs = [Record("t", None, (), b"x", now)]
    assert (await sender.send_within(recs, 1)).ok and n.sinks[0].got == recs
    n.sinks[0].down = True
    assert (await sender.send_within(recs, 1)).unacked == recs  # the chunk fails; the drain retries it
    assert [o.sink for o in n.outcomes] == ["c0"]
    assert (await sender.send_within(recs, 1)).ok and n.sinks[1].got == recs  # the primary is parked
    n.sinks[1].down = True
    await sender.send_within(recs, 1)
    assert (await sender.send_within(recs, 1)).error == "no Kafka cluster is up"
