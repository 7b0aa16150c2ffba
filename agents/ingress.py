"""The router agent's body (Flume's interceptors and channel selector): each client call that
comes in through the ingress channel goes through the interceptor chain, is routed (topic
and key by header) and handed, as one batch with its reply, to the sink stage the
supervisor says is live.

A call with a refused event is answered ``ERROR`` whole; an unforeseen error answers that
call ``FAILED`` at once (logged, counted); either way the next call is routed as usual.
"""

from __future__ import annotations

import logging

from agents.interceptors import Chain
from agents.records import Batch, Envelope
from agents.router import Router
from agents.supervisor import Supervisor, settle
from agents.thrift_source import Status
from core.errors import RoutingError
from core.metrics import Metrics
from core.ratelog import Throttled

logger = logging.getLogger(__name__)


class RouterStage:
    def __init__(self, router: Router, supervisor: Supervisor, metrics: Metrics,
                 interceptors: Chain | None = None) -> None:
        self.router = router
        self.interceptors = interceptors
        self.supervisor = supervisor
        self.metrics = metrics
        self._throttled = Throttled(logger)

    async def process(self, calls: object) -> None:
        """The agent body: never raises, answers every call it cannot pass on."""
        async for envelope in calls:  # type: ignore[attr-defined]
            batch = self.route(envelope)
            if batch is None:
                continue
            try:
                await self.supervisor.forward(batch)
            except Exception:
                logger.exception("router: could not hand a call to its sink; answering FAILED")
                settle(batch, Status.FAILED, self.metrics)

    def route(self, envelope: Envelope) -> Batch | None:
        """The call's batch, or None once the call was answered (ERROR or FAILED)."""
        events = envelope.events
        try:
            chain = self.interceptors
            if chain is not None and chain.active:  # Flume's interceptors, in order; they may filter events out
                events = chain.apply(events, envelope.received_ms)
            records = self.router.route(events, envelope.received_ms)
        except RoutingError as exc:
            self.metrics.refused.labels(reason="topic").inc(len(events))
            self._throttled.log(logging.WARNING, "route", "router: ERROR for a call: %s", exc)
            _answer(envelope, Status.ERROR)
            return None
        except Exception:  # a bug must cost this call a retry, never the router agent
            self.metrics.router_errors.inc()
            self.metrics.failed.inc(len(events))
            logger.exception("router: unexpected error routing a call of %d events; answering FAILED", len(events))
            _answer(envelope, Status.FAILED)
            return None
        if not records:  # every event was filtered out: nothing to make durable (Flume answers OK)
            _answer(envelope, Status.OK)
            return None
        return Batch(records, envelope.reply, len(records))


def _answer(envelope: Envelope, status: int) -> None:
    if not envelope.reply.done():
        envelope.reply.set_result(status)
