"""Chaos rounds with an oracle: real faults while Flume clients send, then every event that
was answered OK must be in Kafka, in the topic its header named.

CI runs a short version (``SPILLWAY_CHAOS_ROUNDS``, default 10). The long version::

    SPILLWAY_CHAOS_ROUNDS=100 SPILLWAY_CHAOS_RECORD=1 .venv/bin/pytest tests/integration/test_chaos.py -s

records its result in RELIABILITY.md. ``SPILLWAY_CHAOS_SEED`` replays a given sequence.

The worker's buffer lives on its own small tmpfs, so "disk full" is a real ENOSPC: a filler
file takes the free space, then is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.kafka import Broker
from helpers import ROOT, Load, Status, TcpProxy, Worker, check_all_in_kafka, unique, wait_until

ROUNDS = int(os.environ.get("SPILLWAY_CHAOS_ROUNDS", "10"))
# A round takes seconds to a minute (a killed broker restarts slowly): room for every round.
pytestmark = [pytest.mark.kafka, pytest.mark.timeout(ROUNDS * 60 + 600)]

FAULTS = ["broker_kill", "broker_pause", "proxy_cut", "proxy_stall", "proxy_slow", "worker_kill_kafka_up",
          "worker_kill_kafka_down", "budget_exhausted", "disk_full"]


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """A size-limited filesystem of its own (we run as root here; CI too)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with a filler file."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: nothing left to flush on close
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * (1 << 16))
    return filler


def sink_up(w: Worker) -> bool:
    with contextlib.suppress(OSError, ValueError):
        return bool(w.status()["sink"]["state"] == "up")
    return False


def inject(fault: str, rng: random.Random, broker: Broker, proxy: TcpProxy, w: Worker, disk: Path) -> None:
    """One fault, held a few seconds while the load runs, then repaired."""
    hold = rng.uniform(2.0, 5.0)
    if fault == "broker_kill":
        broker.kill()
        time.sleep(hold)
        broker.start()
    elif fault == "broker_pause":
        broker.signal(signal.SIGSTOP)
        time.sleep(hold)
        broker.signal(signal.SIGCONT)
    elif fault == "proxy_cut":
        proxy.cut()
        time.sleep(hold)
        proxy.restore()
    elif fault == "proxy_stall":
        proxy.stall()
        time.sleep(hold)
        proxy.restore()
    elif fault == "proxy_slow":
        proxy.slow(rng.uniform(0.05, 0.5))
        time.sleep(hold)
        proxy.restore()
    elif fault in ("worker_kill_kafka_up", "worker_kill_kafka_down"):
        if fault.endswith("down"):
            proxy.cut()
            time.sleep(hold)
        w.kill()
        w.start()
        time.sleep(1)
        proxy.restore()
    elif fault == "budget_exhausted":
        failed = w.status()["counters"]["failed"]
        proxy.cut()
        wait_until(lambda: w.status()["counters"]["failed"] > failed, 90, what="the budget to be reached")
        proxy.restore()
    elif fault == "disk_full":
        proxy.cut()
        filler = fill(disk)
        time.sleep(hold)
        filler.unlink()
        proxy.restore()
    else:  # pragma: no cover
        raise AssertionError(fault)


def test_chaos_rounds_lose_nothing_acknowledged(kafka_up: Broker, kafka_proxy: TcpProxy,
                                               make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    rounds = ROUNDS
    seed = int(os.environ.get("SPILLWAY_CHAOS_SEED", str(time.time_ns() % 10**6)))
    rng = random.Random(seed)
    print(f"\nchaos: {rounds} rounds, seed {seed}")
    plan = (FAULTS * (rounds // len(FAULTS) + 1))[:rounds] if rounds >= len(FAULTS) else []
    rng.shuffle(plan)
    plan = plan or [rng.choice(FAULTS) for _ in range(rounds)]
    topics = [unique(f"chaos-{t}") for t in "abcd"]
    with tmpfs(tmp_path / "disk", 96) as disk:
        w = make_worker(kafka_up.bootstrap, SPILLWAY_BUFFER_DIRECTORY=str(disk / "buffer"),
                        SPILLWAY_BUFFER_MAX_BYTES="48MiB", SPILLWAY_BUFFER_SEGMENT_MAX_BYTES="4MiB",
                        SPILLWAY_DRAIN_MAX_EVENTS_PER_SECOND="50000")
        load = Load(w.thrift_port, topics, clients=3, batch=100, body_bytes=256).start()
        started = time.monotonic()
        try:
            for i, fault in enumerate(plan):
                t0 = time.monotonic()
                inject(fault, rng, kafka_up, kafka_proxy, w, disk)
                wait_until(lambda: sink_up(w), 120, what=f"Kafka back after {fault}")
                print(f"chaos: round {i + 1}/{rounds} {fault}: {time.monotonic() - t0:.1f}s, "
                      f"statuses so far {load.statuses()}")
        finally:
            load.stop()
        wait_until(lambda: w.status()["buffer"]["events"] == 0, 300, what="the buffer to drain")
        acked = load.acked()
        counts = check_all_in_kafka(kafka_up.bootstrap, acked, timeout=180)
        statuses = load.statuses()
    summary = {
        "rounds": rounds, "seed": seed, "faults": {f: plan.count(f) for f in FAULTS},
        "calls": sum(statuses.values()), "calls_ok": statuses.get(Status.OK, 0),
        "calls_failed": statuses.get(Status.FAILED, 0), "calls_broken": statuses.get(None, 0),
        "events_acknowledged": len(acked), "lost": 0, "duplicates": counts["duplicates"],
        "duplicate_rate": round(counts["duplicates"] / max(1, len(acked)), 6),
        "minutes": round((time.monotonic() - started) / 60, 1),
    }
    print("chaos: " + json.dumps(summary))
    assert summary["calls_ok"] > 0
    if os.environ.get("SPILLWAY_CHAOS_RECORD"):
        record(summary)


def record(summary: dict[str, object]) -> None:
    path = ROOT / "RELIABILITY.md"
    if not path.exists():
        path.write_text("# Reliability\n\nResults of the chaos harness (tests/integration/test_chaos.py), newest "
                        "last. Reproduce with:\n\n    SPILLWAY_CHAOS_ROUNDS=100 SPILLWAY_CHAOS_RECORD=1 "
                        ".venv/bin/pytest tests/integration/test_chaos.py -s\n\n(add `SPILLWAY_CHAOS_SEED=<seed>` "
                        "to replay the same sequence of faults).\n")
    with open(path, "a") as fh:
        fh.write(f"\n## {time.strftime('%Y-%m-%d %H:%M')}\n\n```json\n{json.dumps(summary, indent=2)}\n```\n")
