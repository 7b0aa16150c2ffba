"""A/B: worker configurations taking turns on one broker, under the healthy load or draining.

    .venv/bin/python -m bench.ab before=/path/to/a/worktree after=.
    .venv/bin/python -m bench.ab plain=.:SPILLWAY_PURE_PYTHON=1 compiled=.
    .venv/bin/python -m bench.ab l0=. l5=.:SPILLWAY_KAFKA_PRODUCER_LINGER_MS=5 --rounds 5
    .venv/bin/python -m bench.ab main=. flume=flume:memory
    .venv/bin/python -m bench.ab --scenario drain b2000=. b500=.:SPILLWAY_DRAIN_BATCH_EVENTS=500
    .venv/bin/python -m bench.ab --scenario drain_alone before=../wt-old after=.

Each configuration is ``name=checkout[:VAR=value,...]``: the worker runs from that checkout
(a ``git worktree`` of another commit, say) with those variables; ``name=flume:memory`` (or
``flume:file``) is Apache Flume's own agent as ``bench.run`` runs it, to take turns with
(``--scenario healthy`` only). The broker is warmed first as in ``bench.run``. Round after
round, each configuration gets a fresh worker and one scenario of ``bench.run``:

- ``healthy`` (the default): a 2 s warm-up, then ``--seconds`` of the load (2 processes × 4
  connections, appendBatch of 100 × 512 B): acked events/s, the worker's and the broker's CPU
  µs an event, the p99 latency;
- ``drain``: ``--backlog`` events buffered with Kafka unreachable, then drained while live load
  runs at ``--live-rate`` events/s for ``--seconds``: the drain's rate, the live rate, live p50
  and p99, the worker's CPU %;
- ``drain_alone``: the backlog drained with no live load: events/s, the worker's CPU µs an event.

On a shared machine one run says little: the rounds alternate so that a busy minute hits
every configuration alike, and the medians are what to compare.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import run as bench_run
from bench.run import Broker, Spillway, _cpu_seconds, flume_agent, free_port, load

Row = dict[str, float]


def parse(spec: str) -> dict[str, Any]:
    name, _, rest = spec.partition("=")
    checkout, _, variables = rest.partition(":")
    if not name or not checkout:
        raise SystemExit(f"bench.ab: {spec!r} is not name=checkout[:VAR=value,...]")
    if checkout == "flume":
        if variables not in ("memory", "file"):
            raise SystemExit(f"bench.ab: {spec!r}: flume:memory or flume:file")
        return {"name": name, "flume": variables}
    extra = dict(v.split("=", 1) for v in variables.split(",") if v)
    return {"name": name, "root": Path(checkout).resolve(), "extra": extra}


@contextmanager
def checkout(config: dict[str, Any]) -> Iterator[None]:
    """Workers started inside run from the configuration's checkout."""
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = str(config["root"])
    bench_run.ROOT = config["root"]  # the worker's cwd: `python -m topology.cli` imports from there
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        bench_run.ROOT = Path(bench_run.__file__).resolve().parent.parent


def healthy(work: Path, broker: Broker, config: dict[str, Any], args: argparse.Namespace) -> Row:
    if "flume" in config:
        got = flume_agent(work, broker.bootstrap, config["flume"], args.seconds, args)
        if got is None:
            raise SystemExit("bench.ab: Flume's libraries are missing (python -m devtools.flume fetch)")
        # the broker's CPU is not told apart from the agent's start-up here: left out
        return {"events/s": got["events_per_second"], "worker µs/event": got["server_cpu_us_per_event"],
                "p99 ms": got["latency_ms"]["p99"]}
    with checkout(config):
        w = Spillway(work, broker.bootstrap, extra=config["extra"]).start()
        try:
            load(w.thrift_port, 2, args)  # warm-up
            assert broker.proc is not None and w.proc is not None
            b0, t0 = _cpu_seconds(broker.proc.pid), time.monotonic()
            out = load(w.thrift_port, args.seconds, args, watch=w.proc.pid)
            elapsed = time.monotonic() - t0
            eps = out["events_per_second"]
            broker_us = (_cpu_seconds(broker.proc.pid) - b0) / elapsed / max(1, eps) * 1e6
            return {"events/s": eps, "worker µs/event": out["server_cpu_us_per_event"],
                    "broker µs/event": round(broker_us, 1), "p99 ms": out["latency_ms"]["p99"]}
        finally:
            w.stop()


def drain(work: Path, broker: Broker, config: dict[str, Any], args: argparse.Namespace) -> Row:
    with checkout(config):
        got = bench_run.drain_scenario(work, broker.bootstrap, args, args.backlog, live_rate=args.live_rate,
                                       extra=config["extra"])
    live = got["live"]
    return {"drained/s": got["drain_events_per_second_with_live_load"], "live/s": live["events_per_second"],
            "live p50 ms": live["latency_ms"]["p50"], "live p99 ms": live["latency_ms"]["p99"],
            "worker CPU %": live.get("server_cpu_percent", float("nan")), "duplicates": got["duplicates"]}


def drain_alone(work: Path, broker: Broker, config: dict[str, Any], args: argparse.Namespace) -> Row:
    with checkout(config):
        got = bench_run.drain_alone_scenario(work, broker.bootstrap, args, args.backlog, extra=config["extra"])
    return {"events/s": got["events_per_second"], "worker µs/event": got["cpu_us_per_event"],
            "worker CPU %": got["server_cpu_percent"], "duplicates": got["duplicates"]}


SCENARIOS = {"healthy": healthy, "drain": drain, "drain_alone": drain_alone}


def show(row: Row) -> str:
    return ", ".join(f"{k} {v:,.0f}" if abs(v) >= 1000 else f"{k} {v:g}" for k, v in row.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+", help="name=checkout[:VAR=value,...]")
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default="healthy")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--processes", type=int, default=2, help="the load generator's processes")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--backlog", type=int, default=800_000, help="drain scenarios: events buffered first")
    ap.add_argument("--live-rate", type=float, default=25_000, help="drain: the live load's events/s")
    ap.add_argument("--warmup", type=float, default=30.0,
                    help="seconds of produce load the broker gets before the first round (its JIT)")
    a = ap.parse_args(argv)
    configs = [parse(c) for c in a.configs]
    if a.scenario != "healthy" and any("flume" in c for c in configs):
        raise SystemExit("bench.ab: Flume's agent takes turns in --scenario healthy only")
    args = argparse.Namespace(seconds=a.seconds, processes=a.processes, connections=a.connections, batch=100,
                              size=512, protocol="compact", backlog=a.backlog, live_rate=a.live_rate)
    scenario = SCENARIOS[a.scenario]
    work = Path(tempfile.mkdtemp(prefix="spillway-ab-"))
    broker = Broker(work / "kafka", port=free_port(), controller_port=free_port(), heap="1g")
    broker.start(timeout=120)
    bench_run.warm_broker(work, broker.bootstrap, args, a.warmup)  # as bench.run: the first round meets a warm broker
    rows: dict[str, list[Row]] = {c["name"]: [] for c in configs}
    try:
        for n in range(a.rounds):
            for config in configs:
                place = work / f"{config['name']}-{n}"
                row = scenario(place, broker, config, args)
                shutil.rmtree(place, ignore_errors=True)
                rows[config["name"]].append(row)
                print(f"round {n + 1} {config['name']}: {show(row)}", flush=True)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"medians ({a.scenario}):")
    for name, got in rows.items():
        print(f"  {name}: {show({k: statistics.median(r[k] for r in got) for k in got[0]})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
