"""A/B: worker configurations taking turns under the healthy load, on one broker.

    .venv/bin/python -m bench.ab before=/path/to/a/worktree after=.
    .venv/bin/python -m bench.ab plain=.:SPILLWAY_PURE_PYTHON=1 compiled=.
    .venv/bin/python -m bench.ab l0=. l5=.:SPILLWAY_KAFKA_PRODUCER_LINGER_MS=5 --rounds 5

Each configuration is ``name=checkout[:VAR=value,...]``: the worker runs from that checkout
(a ``git worktree`` of another commit, say) with those variables; ``name=flume:memory`` (or
``flume:file``) is Apache Flume's own agent as ``bench.run`` runs it, to take turns with. Round after round, each
configuration gets a fresh worker, a 2 s warm-up and ``--seconds`` of the load of
``bench.run`` (2 processes × 4 connections, appendBatch of 100 × 512 B). On a shared
machine one run says little: the rounds alternate so that a busy minute hits every
configuration alike, and the medians are what to compare. Prints acked events/s, the
worker's and the broker's CPU µs an event, and the p99 latency, per round and as medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import run as bench_run
from bench.run import Broker, Spillway, _cpu_seconds, flume_agent, free_port, load


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


def one(work: Path, broker: Broker, config: dict[str, Any], args: argparse.Namespace, n: int) -> tuple[float, ...]:
    if "flume" in config:
        got = flume_agent(work / f"{config['name']}-{n}", broker.bootstrap, config["flume"], args.seconds, args)
        if got is None:
            raise SystemExit("bench.ab: Flume's libraries are missing (python -m devtools.flume fetch)")
        # the broker's CPU is not told apart from the agent's start-up here: left out
        return got["events_per_second"], got["server_cpu_us_per_event"], float("nan"), got["latency_ms"]["p99"]
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = str(config["root"])
    bench_run.ROOT = config["root"]  # the worker's cwd: `python -m topology.cli` imports from there
    try:
        w = Spillway(work / f"{config['name']}-{n}", broker.bootstrap, extra=config["extra"]).start()
        try:
            load(w.thrift_port, 2, args)  # warm-up
            assert broker.proc is not None and w.proc is not None
            b0, t0 = _cpu_seconds(broker.proc.pid), time.monotonic()
            out = load(w.thrift_port, args.seconds, args, watch=w.proc.pid)
            elapsed = time.monotonic() - t0
            eps = out["events_per_second"]
            broker_us = (_cpu_seconds(broker.proc.pid) - b0) / elapsed / max(1, eps) * 1e6
            return eps, out["server_cpu_us_per_event"], round(broker_us, 1), out["latency_ms"]["p99"]
        finally:
            w.stop()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        bench_run.ROOT = Path(bench_run.__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+", help="name=checkout[:VAR=value,...]")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--processes", type=int, default=2, help="the load generator's processes")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--warmup", type=float, default=30.0,
                    help="seconds of produce load the broker gets before the first round (its JIT)")
    a = ap.parse_args(argv)
    configs = [parse(c) for c in a.configs]
    args = argparse.Namespace(seconds=a.seconds, processes=a.processes, connections=a.connections, batch=100,
                              size=512, protocol="compact")
    work = Path(tempfile.mkdtemp(prefix="spillway-ab-"))
    broker = Broker(work / "kafka", port=free_port(), controller_port=free_port(), heap="1g")
    broker.start(timeout=120)
    bench_run.warm_broker(work, broker.bootstrap, args, a.warmup)  # as bench.run: the first round meets a warm broker
    rows: dict[str, list[tuple[float, ...]]] = {c["name"]: [] for c in configs}
    try:
        for n in range(a.rounds):
            for config in configs:
                row = one(work, broker, config, args, n)
                rows[config["name"]].append(row)
                print(f"round {n + 1} {config['name']}: {row[0]:,.0f} events/s, worker {row[1]} µs/event, "
                      f"broker {row[2]} µs/event, p99 {row[3]} ms", flush=True)
    finally:
        broker.stop()
    print("medians:")
    for name, got in rows.items():
        med = [statistics.median(r[i] for r in got) for i in range(4)]  # nan: not measured
        print(f"  {name}: {med[0]:,.0f} events/s, worker {med[1]:.1f} µs/event, broker {med[2]:.1f} µs/event, "
              f"p99 {med[3]:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
