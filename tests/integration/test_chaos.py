"""Chaos rounds with an oracle that proves the promise: a call answered OK is never lost.

One worker takes a rate-limited Flume load (3 clients, 3,000 events/s in total, batches of
50-100, every event unique and carrying ``topic``, ``key``, ``src``, ``seq``, ``round`` and a
non-ASCII ``note`` header) while the harness injects one real fault per round. The broker is
the session's *strict* broker (auto-create off; the chaos topics are created first), so a
poison event is a real permanent refusal.

Each round: a second of steady load, the fault, its repair (the *fault end*), then recovery
is measured: seconds from the fault end until a call is answered OK again (a round fails if
that takes over 60 s) and until ``/status`` shows an empty buffer (fails over 120 s). Faults
(fault end in brackets):

- ``broker_kill`` SIGKILL the broker, restart it [it serves metadata again];
  ``broker_pause`` SIGSTOP/SIGCONT [SIGCONT]; ``proxy_cut``/``proxy_stall``/``proxy_slow``
  the TCP proxy in front of Kafka cuts, holds or delays every byte [pass again].
- ``worker_kill_kafka_up``/``worker_kill_kafka_down`` SIGKILL the worker, with Kafka up or
  cut for a few seconds [the worker is started again; Kafka is restored ~1 s after].
- ``budget_exhausted`` a round of its own: the worker restarts with a 1 MiB
  ``buffer.max_bytes``, Kafka is cut until calls answer FAILED [Kafka restored]; then it
  restarts with the normal budget.
- ``disk_full`` Kafka cut and a filler file takes every free byte of the buffer's ext4
  filesystem [filler removed, Kafka restored].
- ``power_cut_outage``/``power_cut_drain`` the buffer on :class:`powercut.PowerCutFS` (a FUSE
  filesystem that forgets every write not yet fsynced): SIGKILL the worker and cut the power,
  while events are going to disk (Kafka cut) or while the drain sends them back (Kafka up, a
  slowed drain, a poison event in the backlog) [remounted over what survived and the worker
  started on it].
- ``bitflip_drained``/``bitflip_undrained`` a few thousand events buffered (Kafka cut), the
  worker killed, restarted with a slow drain and killed again with ``drain.progress`` inside a
  segment; 1-3 bits flipped in one frame of that closed segment, before the drain's offset or
  after it [the worker started with normal settings]. The acknowledged events of the damaged
  frame are the one legitimate loss: counted as ``damaged``, not ``lost``.
- ``poison`` during an outage, a call with 20 good events and one for a topic that does not
  exist [Kafka restored]; the call is answered OK (disk), the drain must move the poison
  event to ``<buffer>/undeliverable/`` and deliver the rest.

Disks: the buffer sits on a real ext4 filesystem on a loop device made by the test (disk-full
is a real ENOSPC, bit flips hit real files). Only the power-cut rounds put the buffer on
PowerCutFS (a second buffer directory, its backing directory on the same ext4): the worker
restarts onto it for the round (with an empty ext4 buffer behind it) and back onto ext4 after.
Not the whole run, because PowerCutFS holds every unsynced write in its daemon's memory, so a
full backing disk refuses no ``write()`` the way ext4 does (disk_full must hit a kernel
filesystem), and every other fault then runs without a Python FUSE daemon in the write path.
Needs root (loop device, mounts) and FUSE (libfuse3, mfusepy), as CI has.

The oracle: after the last round the load stops, the buffer empties, and each topic is read
once from the beginning with a real consumer. Per round (the round a call was answered in):
lost = acknowledged - found (Kafka, or ``undeliverable/`` for poison) - damaged; every record
is checked for topic, key, every header and the body; duplicates are extra copies of
acknowledged events. Unacknowledged calls (FAILED, ERROR, a broken connection) are not
expected; their events may appear. The figures are printed (and recorded) before the test
asserts. A failed round stops the run; the oracle still reads what the rounds so far left.

CI runs 10 rounds (always with a power cut, a bit flip and a poison round; the rest drawn by
the seed). Knobs: ``SPILLWAY_CHAOS_ROUNDS`` (default 10), ``SPILLWAY_CHAOS_SEED`` (replay),
``SPILLWAY_CHAOS_FAULTS=a,b,...`` (run exactly these faults, in order), and
``SPILLWAY_CHAOS_RECORD=1`` (append the summary to RELIABILITY.md). The long run::

    SPILLWAY_CHAOS_ROUNDS=100 SPILLWAY_CHAOS_RECORD=1 .venv/bin/python -m pytest tests/integration/test_chaos.py -s
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chaos_support import (
    Audit,
    ChaosLoad,
    EventSpace,
    Node,
    audit,
    ext4_loop,
    fill,
    flip_bits,
    frames,
    p50_max,
    read_progress,
    segments,
    status_name,
)
from helpers import ROOT, Status, TcpProxy, Worker, create_topics, unique, wait_until

from agents.segments import HEADER_LEN
from devtools.kafka import Broker

ROUNDS = int(os.environ.get("SPILLWAY_CHAOS_ROUNDS", "10"))
# A round takes 10-40 s (a killed broker restarts slowly, a bit flip restarts the worker
# three times); failed rounds stop the run, so this bounds a run that keeps passing.
pytestmark = [pytest.mark.kafka, pytest.mark.timeout(ROUNDS * 120 + 600)]

POWER_CUTS = ["power_cut_outage", "power_cut_drain"]
BITFLIPS = ["bitflip_drained", "bitflip_undrained"]
FAULTS = ["broker_kill", "broker_pause", "proxy_cut", "proxy_stall", "proxy_slow", "worker_kill_kafka_up",
          "worker_kill_kafka_down", "budget_exhausted", "disk_full", *POWER_CUTS, *BITFLIPS, "poison"]

RATE = 3000.0  # events/s, all clients together
CLIENTS = 3
BATCH = (50, 100)
DISK_MB = 256  # the ext4 filesystem the buffer sits on
BUFFER_MAX = "96MiB"  # a broker restart (~15 s at ~1.4 MB/s) fits several times over
SMALL_BUDGET = "1MiB"  # budget_exhausted's round
OK_LIMIT = 60.0  # seconds after a fault's end: answering OK again, or the round fails
EMPTY_LIMIT = 120.0  # ... and an empty buffer
WARM = 1.0
ROUND_FIGURES = {"round", "fault", "seconds", "to_ok_s", "to_empty_s", "acknowledged", "lost", "duplicates", "damaged",
                 "undeliverable", "failure", "worker_counted_duplicates", "calls"}
POISON_CLIENT = 90  # the client id of the harness's own poison calls

# Where the duplicates of each fault come from. The summary puts the worker's own count
# (spillway_duplicates_total, summed across restarts) next to the measured figure: what the
# worker counted is a late ack, a resent drain chunk or a segment started over; what it could
# not count is an ack lost with the connection, or a late ack in a process that was then killed.
LATE_ACK = ("late acks: live batches Kafka had not acknowledged within failover.timeout went to disk, then "
            "Kafka took them after all (the producer retried them) and the drain sent the disk copy too")
LOST_ACK = ("acks lost with the connection: Kafka wrote a live batch whose response never came back, so it "
            "went to disk as well (the worker cannot know: not counted)")
INFLIGHT = "the drain chunk in flight at the kill, sent again on restart (drain.progress inflight)"
REWRITE = ("start-up recovery rewrote the damaged segment, so its drain started over: the part already drained "
           "was sent again")
KILLED = "late acks in a worker that was then killed (not counted)"
CAUSES = {
    "broker_kill": f"{LATE_ACK}; {LOST_ACK}", "broker_pause": LATE_ACK, "proxy_cut": f"{LOST_ACK}; {LATE_ACK}",
    "proxy_stall": LATE_ACK, "proxy_slow": LATE_ACK,
    "worker_kill_kafka_up": "none expected: calls in flight at the kill were never answered, so not acknowledged",
    "worker_kill_kafka_down": f"{LOST_ACK}; {KILLED}", "budget_exhausted": f"{LOST_ACK}; {LATE_ACK}",
    "disk_full": f"{LOST_ACK}; {LATE_ACK}", "power_cut_outage": f"{LOST_ACK}; {KILLED}",
    "power_cut_drain": f"{INFLIGHT}; {LOST_ACK}", "bitflip_drained": f"{REWRITE}; {INFLIGHT}; {LOST_ACK}",
    "bitflip_undrained": f"{INFLIGHT}; {LOST_ACK}", "poison": f"{LOST_ACK}; {LATE_ACK}",
}


@dataclass
class RoundResult:
    index: int
    fault: str
    fault_end: float | None = None
    to_ok: float | None = None
    to_empty: float | None = None
    seconds: float = 0.0
    failure: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ctx:
    broker: Broker
    proxy: TcpProxy
    node: Node
    load: ChaosLoad
    rng: random.Random
    disk: Path  # the ext4 mount
    pc_mountpoint: Path
    tag: str
    pc: Any = None
    damaged: dict[tuple[int, int], int] = field(default_factory=dict)
    poison: dict[tuple[int, int], int] = field(default_factory=dict)
    buffers: set[Path] = field(default_factory=set)

    def hold(self) -> float:
        """How long a fault lasts: past failover.timeout (3 s), so live events spill to disk."""
        return self.rng.uniform(3.5, 7.0)

    def powercut(self) -> Any:
        if self.pc is None:
            from powercut import PowerCutFS  # tests/powercut.py

            backing = self.disk / "powercut-backing"
            backing.mkdir(exist_ok=True)
            self.pc = PowerCutFS(backing, self.pc_mountpoint)
            self.pc.mount()
        return self.pc


def now() -> float:
    return time.monotonic()


def wait_ok(ctx: Ctx, since: float, timeout: float = OK_LIMIT) -> float | None:
    """Answer time of the first OK call at or after ``since`` (None: none within ``timeout``)."""
    deadline = since + timeout
    while True:
        t = ctx.load.first_ok_after(since)
        if t is not None or now() > deadline:
            return t
        time.sleep(0.05)


def wait_empty(ctx: Ctx, since: float, timeout: float = EMPTY_LIMIT) -> float | None:
    deadline = since + timeout
    while now() <= deadline:
        if ctx.node.buffer_events() == 0:
            return now()
        time.sleep(0.2)
    return None


def wait_buffered(ctx: Ctx, events: int, timeout: float = 30.0) -> int:
    def enough() -> int:
        n = ctx.node.buffer_events() or 0
        return n if n >= events else 0

    return int(wait_until(enough, timeout, interval=0.1, what=f"{events} events in the buffer"))


# -- the faults: each a generator that sets rr.fault_end and yields once the fault is over;
# what follows the yield (restarts back to normal settings) runs after recovery is measured.


def f_broker_kill(ctx: Ctx, rr: RoundResult) -> Iterator[None]:
    ctx.broker.kill()
    time.sleep(ctx.hold())
    t = now()
    ctx.broker.start(timeout=120)
    rr.detail["broker_restart_s"] = round(now() - t, 1)
    rr.fault_end = now()
    yield


def f_broker_pause(ctx: Ctx, rr: RoundResult) -> Iterator[None]:
    ctx.broker.signal(signal.SIGSTOP)
    try:
        time.sleep(ctx.hold())
    finally:
        ctx.broker.signal(signal.SIGCONT)
    rr.fault_end = now()
    yield


def f_proxy(mode: str) -> Callable[[Ctx, RoundResult], Iterator[None]]:
    def fault(ctx: Ctx, rr: RoundResult) -> Iterator[None]:
        if mode == "cut":
            ctx.proxy.cut()
        elif mode == "stall":
            ctx.proxy.stall()
        else:
            delay = ctx.rng.uniform(0.05, 0.5)
            rr.detail["delay_s"] = round(delay, 2)
            ctx.proxy.slow(delay)
        try:
            time.sleep(ctx.hold())
        finally:
            ctx.proxy.restore()
        rr.fault_end = now()
        yield

    return fault


def f_worker_kill_kafka_up(ctx: Ctx, rr: RoundResult) -> Iterator[None]:
    ctx.node.kill()
    rr.fault_end = now()
    ctx.node.start()
    yield


def f_worker_kill_kafka_down(ctx: Ctx, rr: RoundResult) -> Iterator[None]:
    ctx.proxy.cut()
    try:
        time.sleep(ctx.hold())
        ctx.node.kill()
        rr.fault_end = now()
        ctx.node.start()
        time.sleep(ctx.rng.uniform(0.5, 1.5))
    finally:
        ctx.proxy.restore()
    yield


def f_budget_exhausted(ctx: Ctx, rr: RoundResult) -> Iterator[None]:
    ctx.node.restart(SPILLWAY_BUFFER_MAX_BYTES=SMALL_BUDGET)
    if wait_ok(ctx, now(), 30) is None:
        raise AssertionError("not answering OK after the restart with a small budget")
    failed = ctx.node.counter("failed")
    ctx.proxy.cut()
    try:
        wait_until(lambda: ctx.node.status() is not None and ctx.node.counter("failed") > failed, 60,
                   interval=0.1, what="calls answered FAILED at the budget")
        time.sleep(ctx.rng.uniform(1.0, 2.5))
    finally:
        ctx.proxy.restore()
    rr.fault_end = now()
    ctx.node.status()
    rr.detail["failed_events"] = ctx.node.counter("failed") - failed
    yield
    ctx.node.restart()


def f_disk_full(ctx: Ctx, rr: RoundResult) -> Iterator[None]:
    failed = ctx.node.counter("failed")
    ctx.proxy.cut()
    filler = None
    try:
        filler = fill(ctx.disk)
        rr.detail["filler_mib"] = round(filler.stat().st_size / 2**20, 1)
        time.sleep(ctx.hold())
    finally:
        if filler is not None:
            filler.unlink()
        ctx.proxy.restore()
    rr.fault_end = now()
    ctx.node.status()
    rr.detail["failed_events"] = ctx.node.counter("failed") - failed
    yield


def f_power_cut(during: str) -> Callable[[Ctx, RoundResult], Iterator[None]]:
    def fault(ctx: Ctx, rr: RoundResult) -> Iterator[None]:
        node, proxy, rng = ctx.node, ctx.proxy, ctx.rng
        pc = ctx.powercut()
        buf = ctx.pc_mountpoint / "buffer"
        ctx.buffers.add(buf)
        on_pc = {"SPILLWAY_BUFFER_DIRECTORY": str(buf)}
        slow = {"SPILLWAY_DRAIN_MAX_EVENTS_PER_SECOND": "2000", "SPILLWAY_DRAIN_BATCH_EVENTS": "200"}
        node.restart(**on_pc, **(slow if during == "drain" else {}))
        if wait_ok(ctx, now(), 30) is None:
            raise AssertionError("not answering OK after the restart onto PowerCutFS")
        proxy.cut()
        try:
            if during == "outage":
                rr.detail["buffered"] = wait_buffered(ctx, rng.randint(1000, 6000))
                time.sleep(rng.uniform(0.0, 1.0))
            else:  # a poison event in the backlog too: what the drain sets aside must survive the cut
                send_poison(ctx, rr)
                backlog = rr.detail["buffered"] = wait_buffered(ctx, 6000)
                proxy.restore()
                left = int(backlog * rng.uniform(0.3, 0.9))  # cut with this much still to drain

                def draining() -> bool:
                    n = node.buffer_events()
                    return n is not None and n <= left and read_progress(buf) is not None

                wait_until(draining, 60, interval=0.05, what=f"the drain down to {left} events")
            rr.detail["buffer_events_at_cut"] = node.buffer_events()
            rr.detail["progress_at_cut"] = read_progress(buf)
            node.kill()
            rr.detail["cut"] = pc.cut()
            pc.mount()
            rr.fault_end = now()
            mark, _ = node.log_lines()
            node.start(**on_pc)
            rr.detail["recovered_at_start"] = node.recovered(mark)
            if during == "outage":
                time.sleep(rng.uniform(0.5, 1.5))
        finally:
            proxy.restore()
        yield
        node.restart()  # back onto ext4

    return fault


def f_bitflip(where: str) -> Callable[[Ctx, RoundResult], Iterator[None]]:
    def fault(ctx: Ctx, rr: RoundResult) -> Iterator[None]:
        node, proxy, rng = ctx.node, ctx.proxy, ctx.rng
        buf = node.buffer_dir
        proxy.cut()
        try:
            rr.detail["buffered"] = wait_buffered(ctx, rng.randint(3000, 6000))
            node.kill()
        finally:
            proxy.restore()
        node.start(SPILLWAY_DRAIN_MAX_EVENTS_PER_SECOND="400", SPILLWAY_DRAIN_BATCH_EVENTS="40")

        def partly_drained() -> bool:
            p = read_progress(buf)
            if p is None or not (buf / p["segment"]).exists():
                return False
            return HEADER_LEN + 40_000 < int(p["offset"]) < (buf / p["segment"]).stat().st_size - 40_000

        wait_until(partly_drained, 60, interval=0.05, what="drain.progress inside a segment")
        time.sleep(rng.uniform(0.0, 1.0))
        node.kill()
        progress = read_progress(buf)
        assert progress is not None
        seg = buf / progress["segment"]
        drained_end = int(progress["offset"])
        inflight_end = int(progress.get("inflight_end") or drained_end)
        if where == "drained":
            candidates = [(seg, f) for f in frames(seg) if f[1] <= drained_end]
        else:
            candidates = [(seg, f) for f in frames(seg) if f[0] >= max(drained_end, inflight_end)]
            for later in (s for s in segments(buf) if s.name > seg.name):
                if candidates:
                    break
                candidates = [(later, f) for f in frames(later)]
        if not candidates:
            raise AssertionError(f"no {where} frame to flip (progress {progress})")
        path, (off, nxt, _) = candidates[rng.randrange(len(candidates))]
        bits = sorted(rng.sample(range(off * 8, nxt * 8), rng.randint(1, 3)))
        hit = {b // 8 for b in bits}
        damaged = []
        for f_off, f_nxt, rec in frames(path):
            if any(f_off <= b < f_nxt for b in hit):
                who = ctx.load.space.parse(rec.value)
                if who is not None:
                    ctx.damaged[who] = rr.index
                    damaged.append(f"c{who[0]}/{who[1]}")
        quarantined_before = len(list((buf / "quarantine").glob("*")))
        flip_bits(path, bits)
        rr.detail.update(progress=progress, segment=path.name, frame=[off, nxt], bits=bits, damaged_events=damaged)
        rr.fault_end = now()
        mark, _ = node.log_lines()
        node.start()
        rr.detail["recovered_at_start"] = node.recovered(mark)
        yield
        rr.detail["quarantine_files_added"] = len(list((buf / "quarantine").glob("*"))) - quarantined_before

    return fault


def send_poison(ctx: Ctx, rr: RoundResult) -> None:
    """With Kafka parked (cut): one call of 20 good events and, in the middle, one for a topic
    that does not exist (auto-create is off). Answered OK, it is on disk; the drain must move
    the poison event to undeliverable/ and deliver the rest."""
    wait_until(lambda: ctx.node.sink_state() == "parked", 30, interval=0.1, what="Kafka parked")
    topic = f"{ctx.tag}-poison-{rr.index}"
    n = 21

    def mark(seq0: int) -> None:
        who = (POISON_CLIENT, seq0 + n // 2)
        ctx.load.space.overrides[who] = topic
        ctx.poison[who] = rr.index

    call = ctx.load.call(POISON_CLIENT, n, before=mark)
    rr.detail.update(poison_topic=topic, poison_call=status_name(call.status))
    if call.status != Status.OK:
        raise AssertionError(f"the poison call was answered {status_name(call.status)} during the outage "
                             "(expected OK: the disk buffer takes it)")


def f_poison(ctx: Ctx, rr: RoundResult) -> Iterator[None]:
    ctx.proxy.cut()
    try:
        send_poison(ctx, rr)
        time.sleep(ctx.rng.uniform(1.0, 3.0))
    finally:
        ctx.proxy.restore()
    rr.fault_end = now()
    yield


FAULT_FUNCS: dict[str, Callable[[Ctx, RoundResult], Iterator[None]]] = {
    "broker_kill": f_broker_kill, "broker_pause": f_broker_pause, "proxy_cut": f_proxy("cut"),
    "proxy_stall": f_proxy("stall"), "proxy_slow": f_proxy("slow"),
    "worker_kill_kafka_up": f_worker_kill_kafka_up, "worker_kill_kafka_down": f_worker_kill_kafka_down,
    "budget_exhausted": f_budget_exhausted, "disk_full": f_disk_full,
    "power_cut_outage": f_power_cut("outage"), "power_cut_drain": f_power_cut("drain"),
    "bitflip_drained": f_bitflip("drained"), "bitflip_undrained": f_bitflip("undrained"), "poison": f_poison,
}
assert set(FAULT_FUNCS) == set(FAULTS)


def make_plan(rounds: int, rng: random.Random) -> list[str]:
    """A power cut, a bit flip and a poison round always; the rest cycles through every kind
    (shuffled), so a long run covers them evenly."""
    explicit = os.environ.get("SPILLWAY_CHAOS_FAULTS")
    if explicit:
        plan = [f.strip() for f in explicit.split(",") if f.strip()]
        unknown = set(plan) - set(FAULTS)
        assert not unknown, f"unknown faults {unknown}; known: {FAULTS}"
        return plan
    required = [rng.choice(POWER_CUTS), rng.choice(BITFLIPS), "poison"]
    if rounds <= len(required):
        plan = required[:rounds]
    else:
        rest: list[str] = []
        first = [f for f in FAULTS if f not in required]
        rng.shuffle(first)
        rest += first
        while len(rest) < rounds - len(required):
            more = list(FAULTS)
            rng.shuffle(more)
            rest += more
        plan = required + rest[:rounds - len(required)]
    rng.shuffle(plan)
    return plan


def run_round(ctx: Ctx, rr: RoundResult) -> None:
    ctx.load.round = rr.index
    time.sleep(WARM)
    gen = FAULT_FUNCS[rr.fault](ctx, rr)
    next(gen)
    assert rr.fault_end is not None
    ok_at = wait_ok(ctx, rr.fault_end)
    if ok_at is None:
        rr.failure = f"not answering OK within {OK_LIMIT:.0f}s of the fault's end"
        return
    rr.to_ok = round(ok_at - rr.fault_end, 2)
    empty_at = wait_empty(ctx, rr.fault_end)
    if empty_at is None:
        st = ctx.node.status()
        rr.failure = (f"buffer not empty {EMPTY_LIMIT:.0f}s after the fault's end "
                      f"(buffer {st and st['buffer']}, sink {st and st['sink']['state']})")
        return
    rr.to_empty = round(empty_at - rr.fault_end, 2)
    next(gen, None)  # back to normal settings
    t = now()
    if wait_ok(ctx, t) is None:
        rr.failure = "not answering OK after the round's clean-up restart"
    elif wait_empty(ctx, t) is None:
        rr.failure = "buffer not empty after the round's clean-up restart"


def repair(ctx: Ctx) -> None:
    """After a failed round: everything back up, best effort, so the oracle can still read."""
    with contextlib.suppress(Exception):
        ctx.proxy.restore()
    with contextlib.suppress(Exception):
        ctx.broker.signal(signal.SIGCONT)
    with contextlib.suppress(Exception):
        if not ctx.broker.running:
            ctx.broker.start(timeout=120)
    with contextlib.suppress(Exception):
        if not ctx.node.running:
            ctx.node.start(**({} if ctx.node.buffer_dir == Path(ctx.node.base_env["SPILLWAY_BUFFER_DIRECTORY"])
                              else {"SPILLWAY_BUFFER_DIRECTORY": str(ctx.node.buffer_dir)}))


def interesting(lines: list[str]) -> list[str]:
    keep = ("ERROR", "WARNING", "Traceback", "rror", "quarantin", "undeliverable", "poison")
    return [ln for ln in lines if any(k in ln for k in keep)][-25:]


def test_chaos_rounds_lose_nothing_acknowledged(strict_up: Broker, strict_proxy: TcpProxy,
                                               make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    seed = int(os.environ.get("SPILLWAY_CHAOS_SEED", str(time.time_ns() % 10**6)))
    rng = random.Random(seed)
    plan = make_plan(ROUNDS, rng)
    print(f"\nchaos: {len(plan)} rounds, seed {seed}: {', '.join(plan)}")
    tag = unique("chaos").replace("-", "")
    topics = [f"{tag}-{t}" for t in "abcd"]
    create_topics(strict_up.bootstrap, *topics)
    started = now()
    results: list[RoundResult] = []
    with ext4_loop(tmp_path / "disk.img", tmp_path / "disk", DISK_MB) as disk:
        env = {"SPILLWAY_BUFFER_DIRECTORY": str(disk / "buffer"), "SPILLWAY_BUFFER_MAX_BYTES": BUFFER_MAX,
               "SPILLWAY_BUFFER_SEGMENT_MAX_BYTES": "4MiB", "SPILLWAY_DRAIN_MAX_EVENTS_PER_SECOND": "50000"}
        w = make_worker(strict_up.bootstrap, start=False, **env)
        node = Node(w, env)
        space = EventSpace(tag, topics)
        load = ChaosLoad(w.thrift_port, space, clients=CLIENTS, rate=RATE, batch=BATCH, seed=seed)
        ctx = Ctx(strict_up, strict_proxy, node, load, rng, disk, tmp_path / "powercut", tag)
        ctx.buffers.add(disk / "buffer")
        final: dict[str, Any] = {}
        try:
            node.start()
            load.start()
            if wait_ok(ctx, now(), 30) is None:
                raise AssertionError(f"the worker never answered OK:\n{w.log_tail()}")
            for i, fault in enumerate(plan, 1):
                rr = RoundResult(i, fault)
                ctx.rng = random.Random(seed * 1000 + i)  # a round's draws do not depend on earlier rounds
                mark, _ = node.log_lines()
                node.status()
                dup0 = node.counter("duplicates")
                t0 = now()
                try:
                    run_round(ctx, rr)
                except Exception as exc:  # a fault that could not be applied or repaired
                    rr.failure = rr.failure or f"{type(exc).__name__}: {exc}"
                rr.seconds = round(now() - t0, 1)
                node.status()
                rr.detail["worker_counted_duplicates"] = node.counter("duplicates") - dup0
                rr.detail["calls"] = load.statuses(i)
                if rr.failure:
                    rr.detail["log"] = interesting(node.log_lines(mark)[1])
                results.append(rr)
                print(f"chaos: round {i}/{len(plan)} {fault}: {rr.seconds}s, to OK {rr.to_ok}s, "
                      f"to empty {rr.to_empty}s, calls {rr.detail['calls']}"
                      + (f"\n  FAILED: {rr.failure}\n  " + "\n  ".join(rr.detail.get("log", [])) if rr.failure
                         else ""))
                if rr.failure:
                    break
        finally:
            load.stop()
            try:
                if any(r.failure for r in results):
                    repair(ctx)
                final_empty = wait_empty(ctx, now(), EMPTY_LIMIT) if node.running else None
                final["buffer_empty_at_end"] = final_empty is not None
                if final_empty is None:
                    st = node.status()
                    final["buffer_at_end"] = st and st["buffer"]
                final["audit"] = audit(load, strict_up.bootstrap, topics,
                                       [b / "undeliverable" for b in sorted(ctx.buffers)], ctx.damaged, ctx.poison)
            finally:
                node.kill()
                if ctx.pc is not None:
                    with contextlib.suppress(Exception):
                        ctx.pc.unmount()
    a: Audit = final["audit"]
    summary = summarize(seed, plan, results, load, a, node, minutes=(now() - started) / 60)
    summary["buffer_empty_at_end"] = final["buffer_empty_at_end"]
    print("chaos: " + json.dumps({k: v for k, v in summary.items() if k != "per_round"}, indent=1,
                                 ensure_ascii=False))
    for r in summary["per_round"]:
        print(f"chaos: round {r['round']} {r['fault']}: acknowledged {r['acknowledged']}, lost {r['lost']}, "
              f"duplicates {r['duplicates']} (worker counted {r.get('worker_counted_duplicates')}), damaged "
              f"{r['damaged']}, undeliverable {r['undeliverable']}, to OK {r['to_ok_s']}s, to empty "
              f"{r['to_empty_s']}s" + (f", FAILED: {r['failure']}" if r["failure"] else ""))
        extra = {k: v for k, v in r.items() if k not in ROUND_FIGURES}
        if extra:
            print(f"       {json.dumps(extra, ensure_ascii=False)}")
    if os.environ.get("SPILLWAY_CHAOS_RECORD"):
        record(summary)
    failures = [f"round {r.index} {r.fault}: {r.failure}" for r in results if r.failure]
    assert not failures, failures
    assert len(results) == len(plan)
    assert not a.short_reads, a.short_reads
    assert a.wrong_count == 0, f"{a.wrong_count} records differ from what was sent: {a.wrong}"
    assert summary["lost"] == 0, f"{summary['lost']} acknowledged events lost: {a.lost_examples}"
    assert final["buffer_empty_at_end"], final
    assert summary["calls"]["ok"] > summary["calls_total"] / 2, "most calls must be answered OK"


def summarize(seed: int, plan: list[str], results: list[RoundResult], load: ChaosLoad, a: Audit, node: Node,
              minutes: float) -> dict[str, Any]:
    kind_of = {r.index: r.fault for r in results}

    def total(d: dict[int, int]) -> int:
        return sum(d.values())

    def by_kind(d: dict[int, int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for r, n in d.items():
            k = kind_of.get(r, "after the last round")
            out[k] = out.get(k, 0) + n
        return out

    acked = total(a.acked)
    calls = load.statuses()
    kinds: dict[str, Any] = {}
    for kind in dict.fromkeys(plan):
        rs = [r for r in results if r.fault == kind]
        if not rs:
            continue
        k_acked = sum(a.acked.get(r.index, 0) for r in rs)
        k_dups = sum(a.duplicates.get(r.index, 0) for r in rs)
        kinds[kind] = {
            "rounds": len(rs), "acknowledged": k_acked,
            "lost": sum(a.lost.get(r.index, 0) for r in rs),
            "damaged": sum(a.damaged.get(r.index, 0) for r in rs),
            "damaged_missing": sum(a.damaged_missing.get(r.index, 0) for r in rs),
            "undeliverable": sum(a.undeliverable.get(r.index, 0) for r in rs),
            "duplicates": k_dups, "duplicate_pct": round(100 * k_dups / max(1, k_acked), 3),
            "worker_counted_duplicates": sum(r.detail.get("worker_counted_duplicates", 0) for r in rs),
            "to_ok_s": p50_max([r.to_ok for r in rs]), "to_empty_s": p50_max([r.to_empty for r in rs]),
            "cause_of_duplicates": CAUSES[kind],
        }
    rounds = [{
        "round": r.index, "fault": r.fault, "seconds": r.seconds, "to_ok_s": r.to_ok, "to_empty_s": r.to_empty,
        "acknowledged": a.acked.get(r.index, 0), "lost": a.lost.get(r.index, 0),
        "duplicates": a.duplicates.get(r.index, 0), "damaged": a.damaged.get(r.index, 0),
        "undeliverable": a.undeliverable.get(r.index, 0), "failure": r.failure,
        **{k: v for k, v in r.detail.items() if k != "log"},
    } for r in results]
    dups = total(a.duplicates)
    return {
        "rounds": len(results), "planned": len(plan), "seed": seed,
        "faults": {k: plan[:len(results)].count(k) for k in FAULTS if k in plan[:len(results)]},
        "calls_total": sum(calls.values()), "calls": calls,
        "acknowledged": acked, "found": total(a.found), "lost": total(a.lost), "lost_by_kind": by_kind(a.lost),
        "damaged": total(a.damaged), "damaged_missing": total(a.damaged_missing),
        "undeliverable": total(a.undeliverable),
        "duplicates": dups, "duplicate_pct": round(100 * dups / max(1, acked), 3),
        "worker_counted_duplicates": node.counter("duplicates"),
        "wrong_records": a.wrong_count, "unacknowledged_found": a.unacked_found, "foreign_records": a.foreign,
        "good_events_in_undeliverable": a.good_in_undeliverable, "records_read": a.records_read,
        "minutes": round(minutes, 1), "by_kind": kinds, "per_round": rounds,
        "lost_examples": a.lost_examples, "wrong_examples": a.wrong, "short_reads": a.short_reads,
        "undeliverable_errors": a.undeliverable_errors[:10],
    }


def record(summary: dict[str, Any]) -> None:
    """Append a run to RELIABILITY.md: the figures, a table by kind of fault, the rounds."""
    path = ROOT / "RELIABILITY.md"
    s = summary
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            commit = f", commit {head.stdout.strip()}" + (" with uncommitted changes" if dirty.stdout.strip() else "")
    lost_by_kind = ", ".join(f"{k} {v:,}" for k, v in s["lost_by_kind"].items())
    lines = [f"\n## {time.strftime('%Y-%m-%d %H:%M')}: {s['rounds']} rounds, seed {s['seed']}{commit}\n",
             f"- calls: {s['calls_total']:,} ({s['calls']['ok']:,} OK, {s['calls']['failed']:,} FAILED, "
             f"{s['calls']['error']:,} ERROR, {s['calls']['broken']:,} broken connections)",
             f"- acknowledged events: {s['acknowledged']:,}; **lost (measured): {s['lost']:,}**"
             + (f" ({lost_by_kind})" if s["lost"] else ""),
             f"- damaged by bit flips (the one legitimate loss): {s['damaged']} events, of which "
             f"{s['damaged_missing']} missing from Kafka",
             f"- poison events moved to undeliverable/: {s['undeliverable']}",
             f"- duplicates: {s['duplicates']:,} ({s['duplicate_pct']} % of acknowledged; the worker counted "
             f"{s['worker_counted_duplicates']:,} possible)",
             f"- records that differ from what was sent: {s['wrong_records']}; {s['minutes']} minutes\n",
             "| fault | rounds | acknowledged | lost | damaged | undeliverable | duplicates (%) | worker counted "
             "| to first OK p50 / max (s) | to empty buffer p50 / max (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for kind, k in s["by_kind"].items():
        lines.append(f"| {kind} | {k['rounds']} | {k['acknowledged']:,} | {k['lost']:,} | {k['damaged']} | "
                     f"{k['undeliverable']} | {k['duplicates']:,} ({k['duplicate_pct']}) | "
                     f"{k['worker_counted_duplicates']:,} | "
                     f"{k['to_ok_s']['p50']} / {k['to_ok_s']['max']} | "
                     f"{k['to_empty_s']['p50']} / {k['to_empty_s']['max']} |")
    lines.append("\nWhere the duplicates come from:\n")
    causes: dict[str, list[str]] = {}
    for kind, k in s["by_kind"].items():
        causes.setdefault(k["cause_of_duplicates"], []).append(kind)
    lines += [f"- {', '.join(ks)}: {cause}" for cause, ks in causes.items()]
    lines.append("\n<details><summary>rounds</summary>\n\n```json")
    lines += [json.dumps(r, ensure_ascii=False) for r in s["per_round"]]
    lines.append("```\n</details>\n")
    with open(path, "a") as fh:
        fh.write("\n".join(lines))
