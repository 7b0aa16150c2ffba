"""The Kafka sink agent's body: one cluster's stage in the failover sink group.

Each call's batch that reaches this stage is submitted to the cluster at once (batches of
concurrent calls share Kafka record batches) and awaited in a task of its own, so the
agent never waits on Kafka. Acknowledged: the call is answered ``OK`` here. Refused for
good: ``ERROR``, and Kafka stays up. Not acknowledged within ``failover.timeout``: the
outcome goes to the supervisor (which parks this cluster) and what Kafka did not
acknowledge goes on to the next live stage (a lower-priority cluster, else the disk).
"""

from __future__ import annotations

import logging

from agents.kafka_sink import KafkaSink
from agents.records import Batch
from agents.supervisor import Outcome, Supervisor, settle
from agents.tasks import TaskSet
from agents.thrift_source import Status
from core.metrics import Metrics
from core.ratelog import Throttled

logger = logging.getLogger(__name__)


class KafkaStage:
    def __init__(self, index: int, sink: KafkaSink, supervisor: Supervisor, metrics: Metrics,
                 timeout: float) -> None:
        self.index = index
        self.sink = sink
        self.name = sink.name
        self.supervisor = supervisor
        self.metrics = metrics
        self.timeout = timeout
        self.tasks = TaskSet(f"kafka sink {sink.name}")
        self._throttled = Throttled(logger)

    async def process(self, batches: object) -> None:
        """The agent body: never waits on Kafka, never raises."""
        async for batch in batches:  # type: ignore[attr-defined]
            self.tasks.spawn(self.deliver(batch))

    async def deliver(self, batch: Batch) -> None:
        try:
            await self._deliver(batch)
        except Exception:  # a stage's failure answers the call FAILED at once
            logger.exception("kafka sink %s: unexpected error; answering FAILED", self.name)
            settle(batch, Status.FAILED, self.metrics)

    async def _deliver(self, batch: Batch) -> None:
        records = batch.records
        delivery = await self.sink.send_within(records, self.timeout, whole=True)
        if delivery.unacked:
            await self.supervisor.report(Outcome(self.name, False, len(delivery.unacked),
                                                 delivery.error or "not acknowledged"))
        if delivery.refused:
            self._refuse(batch, delivery.refused[0])
            return
        if not delivery.unacked:
            if self.supervisor.failovers[self.index].failures:
                await self.supervisor.report(Outcome(self.name, True, len(records)))
            settle(batch, Status.OK, self.metrics, self.name)
            return
        acked = len(records) - len(delivery.unacked)
        await self.supervisor.forward(batch.rest(delivery.unacked, self.name, acked), after=self.index)

    def _refuse(self, batch: Batch, first: tuple[object, object]) -> None:
        """Kafka refuses part of the call for good: ``ERROR`` whole; nothing goes to disk (the
        client must fix the call), and events of it already in Kafka stay there."""
        record, refusal = first
        reason = getattr(refusal, "reason", "refused")
        self.metrics.refused.labels(reason=reason).inc(batch.total)
        self._throttled.log(logging.WARNING, f"refused:{reason}",
                            "Kafka refuses topic %s for good (%s): answering ERROR for a call of %d events; "
                            "Kafka stays up for everyone else", getattr(record, "topic", "?"), refusal, batch.total)
        settle(batch, Status.ERROR, self.metrics)
