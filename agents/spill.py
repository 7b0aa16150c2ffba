"""The disk-buffer agent's body (Flume's file_roll failover, made durable): each call's batch
that reaches the spill channel is appended to the buffer in a task of its own, so concurrent
calls share one fsync (group commit), and the call is answered ``OK`` once that fsync
covers it; ``FAILED`` at the budget (back-pressure) or when the disk fails."""

from __future__ import annotations

import logging

from agents.disk_buffer import DiskBuffer
from agents.records import Batch
from agents.supervisor import settle
from agents.tasks import TaskSet
from agents.thrift_source import Status
from core.errors import BufferError, BufferFull
from core.metrics import Metrics
from core.ratelog import Throttled

logger = logging.getLogger(__name__)


class SpillStage:
    def __init__(self, buffer: DiskBuffer, metrics: Metrics) -> None:
        self.buffer = buffer
        self.metrics = metrics
        self.tasks = TaskSet("disk buffer")
        self._throttled = Throttled(logger)

    async def process(self, batches: object) -> None:
        """The agent body: never waits on the disk, never raises."""
        async for batch in batches:  # type: ignore[attr-defined]
            self.tasks.spawn(self.spill(batch))

    async def spill(self, batch: Batch) -> None:
        try:
            await self.buffer.append(batch.records)
        except BufferFull:
            self._throttled.log(logging.WARNING, "full", "disk buffer full: answering FAILED (back-pressure)")
            settle(batch, Status.FAILED, self.metrics)
        except BufferError as exc:
            self._throttled.log(logging.ERROR, "disk", "disk buffer cannot write: %s; answering FAILED", exc)
            settle(batch, Status.FAILED, self.metrics)
        except Exception:
            logger.exception("disk buffer stage: unexpected error; answering FAILED")
            settle(batch, Status.FAILED, self.metrics)
        else:
            settle(batch, Status.OK, self.metrics, "disk")
