"""Background tasks a stage starts and must never lose: kept, logged when they fail, awaited at stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class TaskSet:
    """Holds a reference to every task it spawns until the task ends; logs any that fails."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("%s: a background task failed: %r", self.name, exc, exc_info=exc)

    async def wait(self, timeout: float) -> set[asyncio.Task[Any]]:  # noqa: ASYNC109
        """Wait for the tasks running now; return those still running at the timeout."""
        if not self.tasks:
            return set()
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        return pending

    def __len__(self) -> int:
        return len(self.tasks)
