"""The router agent's body: whatever goes wrong routing one call, that call is answered at once
and the next one is routed as usual."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agents.thrift_source import Status
from topology.pipeline import Envelope, Pipeline
from topology.settings import BufferSettings, Settings


@pytest.mark.asyncio
async def test_an_unforeseen_routing_error_answers_that_call_failed_at_once_and_the_next_call_is_routed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = Pipeline(Settings(buffer=BufferSettings(directory=tmp_path / "buffer")), None, None)  # type: ignore[arg-type]
    delivered: list[Any] = []

    async def deliver(records: Any) -> int:
        delivered.append(records)
        return Status.OK

    monkeypatch.setattr(p.kafka_supervisor, "deliver", deliver)
    real_route = p.router.route
    monkeypatch.setattr(p.router, "route", lambda events, ms: 1 / 0)  # a bug, not a RoutingError
    loop = asyncio.get_running_loop()
    bad = Envelope([([("topic", b"t")], b"x")], 0, loop.create_future())
    p.dispatch(bad)
    assert bad.reply.done() and bad.reply.result() == Status.FAILED  # at once: no 40 s guard waited out
    assert p.metrics.registry.get_sample_value("spillway_router_errors_total") == 1

    monkeypatch.setattr(p.router, "route", real_route)
    good = Envelope([([("topic", b"t")], b"y")], 0, loop.create_future())
    p.dispatch(good)
    assert await asyncio.wait_for(good.reply, 5) == Status.OK
    assert len(delivered) == 1
