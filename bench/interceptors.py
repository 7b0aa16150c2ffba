"""What each interceptor costs an event: a microbenchmark, no Kafka, no sockets.

    .venv/bin/python -m bench.interceptors [--batch 100] [--body 512]

Each interceptor runs over fresh batches of events shaped like bench.loadgen's (``topic``,
``key`` and ``src`` headers, an ASCII body), the best of several rounds; the chain with all six
in a row last. An empty chain is not called at all (``Pipeline.dispatch`` checks
``Chain.active`` first), so it costs an event nothing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

from agents.interceptors import Chain
from agents.router import Event
from core.settings import (
    HostInterceptorSettings,
    InterceptorSettings,
    RegexFilterInterceptorSettings,
    RemoveHeaderInterceptorSettings,
    StaticInterceptorSettings,
    TimestampInterceptorSettings,
    UUIDInterceptorSettings,
)

CASES: list[tuple[str, list[InterceptorSettings]]] = [
    ("timestamp", [TimestampInterceptorSettings()]),
    ("host", [HostInterceptorSettings()]),
    ("static", [StaticInterceptorSettings(key="dc", value="eu-1")]),
    ("remove_header (name, present)", [RemoveHeaderInterceptorSettings(name="src")]),
    ("remove_header (match_regex, absent)", [RemoveHeaderInterceptorSettings(match_regex="x-.*")]),
    ("uuid", [UUIDInterceptorSettings()]),
    ("regex_filter (keeps all)", [RegexFilterInterceptorSettings(regex="seq")]),
    ("regex_filter (exclude, searches the whole body)", [RegexFilterInterceptorSettings(regex="ERROR",
                                                                                       exclude_events=True)]),
]
ALL: list[InterceptorSettings] = [
    TimestampInterceptorSettings(), HostInterceptorSettings(), StaticInterceptorSettings(key="dc", value="eu-1"),
    RemoveHeaderInterceptorSettings(name="src"), UUIDInterceptorSettings(), RegexFilterInterceptorSettings(regex="seq"),
]


def batches(count: int, size: int, body_bytes: int) -> list[list[Event]]:
    return [[([("topic", b"orders"), ("key", b"k%d" % (i % 13)), ("src", b"c1")],
              b"seq-%d-" % i + b"." * max(0, body_bytes - 12)) for i in range(size)] for _ in range(count)]


def ns_per_event(apply: Callable[[Sequence[Event], int], Sequence[Event]], size: int, body_bytes: int,
                 rounds: int = 15, count: int = 20) -> float:
    best = float("inf")
    for _ in range(rounds):
        # fresh headers (interceptors change them in place), few enough batches to stay in the CPU's
        # cache as a batch the decoder has just made does
        work = batches(count, size, body_bytes)
        t0 = time.perf_counter_ns()
        for events in work:
            apply(events, 1_700_000_000_000)
        best = min(best, (time.perf_counter_ns() - t0) / (count * size))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100, help="events a call (default 100)")
    parser.add_argument("--body", type=int, default=512, help="body bytes (default 512)")
    args = parser.parse_args()
    baseline = ns_per_event(lambda events, ms: events, args.batch, args.body)  # the loop alone
    print(f"{args.batch}-event batches, {args.body} B bodies; ns an event, the loop's own "
          f"{baseline:.0f} ns taken off")
    for name, settings in [*CASES, ("all six in a row", ALL)]:
        chain = Chain(settings)
        print(f"  {name:<50} {ns_per_event(chain.apply, args.batch, args.body) - baseline:>6.0f}")


if __name__ == "__main__":
    main()
