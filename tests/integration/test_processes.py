"""``spillway worker --processes N``: several real worker processes on one Thrift port (SO_REUSEPORT),
each with its own buffer directory and web port, one parent; against the real session broker."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Load, TcpProxy, Worker, check_all_in_kafka, render, text_of, unique, wait_until

from devtools.kafka import Broker

pytestmark = pytest.mark.kafka

FAST = {"SPILLWAY_BUFFER_SEGMENT_MAX_AGE": "1s", "SPILLWAY_FAILOVER_TIMEOUT": "2s"}


@pytest.fixture
def make_node(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Worker]]:
    """Workers started as ``spillway worker --processes N`` (a parent and its children)."""
    nodes: list[Worker] = []

    def make(bootstrap: str, processes: int, name: str = "node", start: bool = True, **env: str) -> Worker:
        w = Worker(tmp_path / name, bootstrap, env_extra={**FAST, **env}, args=["--processes", str(processes)])
        nodes.append(w)
        return w.start() if start else w

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for w in nodes:
        w.kill()  # the parent's process group: its children too
        if failed:
            print(f"\n--- {w.directory.name} log ---\n{w.log_tail(120)}")


def processes(w: Worker) -> list[dict[str, Any]]:
    return list(w.status()["processes"])


def polled(w: Worker) -> list[dict[str, Any]]:
    """``processes(w)`` for a wait: [] while process 0 is slow to answer (a loaded machine)."""
    try:
        return processes(w)
    except (OSError, ValueError, KeyError):
        return []


def all_ready(w: Worker, n: int) -> bool:
    rows = polled(w)
    return len(rows) == n and all(r["ready"] for r in rows)


def all_buffer(w: Worker) -> bool:
    rows = polled(w)
    return len(rows) > 1 and all(r.get("buffered_events", 0) > 0 for r in rows)


def segments(directory: Path) -> int:
    return len(list(directory.glob("*.seg")))


def test_two_processes_share_the_thrift_port_and_every_acked_event_reaches_kafka(
        kafka_up: Broker, make_node: Callable[..., Worker], tmp_path: Path) -> None:
    node = make_node(kafka_up.bootstrap, 2)
    wait_until(lambda: all_ready(node, 2), 30, what="both processes ready")
    rows = processes(node)
    assert [r["web_port"] for r in rows] == [node.web_port, node.web_port + 1]
    assert rows[0]["pid"] != rows[1]["pid"]
    topics = [unique("procs-a"), unique("procs-b")]
    load = Load(node.thrift_port, topics, clients=12, batch=50).start()
    time.sleep(4)
    load.stop()
    acked = load.acked()
    assert len(acked) > 1000, load.statuses()
    counts = check_all_in_kafka(kafka_up.bootstrap, acked)
    assert counts["found"] >= len(acked)
    rows = processes(node)
    taken = [r["events_taken"] for r in rows]
    print(f"events taken by process: {taken}, acked {len(acked)}, {counts}")
    assert all(n > 0 for n in taken), f"one process took no connection: {taken}"
    assert sum(taken) >= len(acked)
    assert node.status()["processes_total"]["events_taken"] == sum(taken)
    # /ready and /metrics stay per process
    assert node.get("/ready")["ready"]
    assert "spillway_events_received_total" in node.get("/metrics")
    dom, _ = render(node, tmp_path, "processes")  # the status page lists both
    table = dom.split('id="processes"', 1)[1].split("</table>", 1)[0]
    assert table.count("<tr>") == 4, table  # head, two processes, total
    assert f">{node.web_port + 1}</a>" in table and "2 of 2 answering" in table
    assert node.stop(timeout=60) == 0  # a clean stop of every child


def test_a_killed_child_is_restarted_and_retrying_clients_lose_nothing(
        kafka_up: Broker, make_node: Callable[..., Worker]) -> None:
    node = make_node(kafka_up.bootstrap, 2)
    wait_until(lambda: all_ready(node, 2), 30, what="both processes ready")
    victim = processes(node)[1]["pid"]
    load = Load(node.thrift_port, [unique("procs-kill")], clients=8, batch=50).start()
    time.sleep(2)
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    down = wait_until(lambda: (rows := polled(node)) and rows[1]["state"] == "down" and node.status(), 5,
                      what="process 0 lists process 1 as down")
    assert down["processes_total"]["answering"] == 1 and down["processes"][0]["ready"]
    wait_until(lambda: all_ready(node, 2) and polled(node)[1]["pid"] != victim, 40,
               what="process 1 restarted and ready")
    restarted_in = time.monotonic() - t0
    time.sleep(2)
    load.stop()
    acked = load.acked()
    statuses = load.statuses()
    print(f"restarted in {restarted_in:.1f}s, calls by status {statuses}, acked {len(acked)}")
    assert None in statuses, "no call failed: the kill hit nobody"
    counts = check_all_in_kafka(kafka_up.bootstrap, acked)
    assert counts["found"] >= len(acked)
    log = node.log_path.read_text()
    assert f"(pid {victim}) was killed by SIGKILL unexpectedly" in log
    assert node.stop(timeout=60) == 0


def test_kafka_down_each_process_buffers_in_its_own_directory_then_both_drain(
        kafka_up: Broker, kafka_proxy: TcpProxy, make_node: Callable[..., Worker], tmp_path: Path) -> None:
    node = make_node(kafka_up.bootstrap, 2)
    wait_until(lambda: all_ready(node, 2), 30, what="both processes ready")
    kafka_proxy.cut()
    load = Load(node.thrift_port, [unique("procs-down")], clients=12, batch=50).start()
    wait_until(lambda: all_buffer(node), 40, what="both processes buffer")
    load.stop()
    rows = processes(node)
    assert all(r["live"] == "disk" for r in rows), rows
    wait_until(lambda: segments(node.buffer_dir) and segments(node.buffer_dir / "process-1"), 20,
               what="segments in buffer/ and buffer/process-1/")
    buffered = [r["buffered_events"] for r in rows]
    kafka_proxy.restore()
    wait_until(lambda: (rows := polled(node)) and all(r.get("buffered_events") == 0 for r in rows), 60,
               what="both drained")
    acked = load.acked()
    counts = check_all_in_kafka(kafka_up.bootstrap, acked)
    print(f"buffered by process {buffered}, acked {len(acked)}, {counts}")
    assert counts["found"] >= len(acked)
    total = node.status()["processes_total"]
    assert total["drained"] >= sum(buffered), (total, buffered)
    dom, _ = render(node, tmp_path, "processes-drained")  # the page's total row: what both drained
    assert text_of(dom, "processes-drained") == f"{total['drained']:,}"
    assert text_of(dom, "processes-duplicates") == f"{total['duplicates']:,}"
    assert node.stop(timeout=60) == 0


def test_going_back_to_one_process_drains_what_process_1_left(
        kafka_up: Broker, kafka_proxy: TcpProxy, make_node: Callable[..., Worker]) -> None:
    two = make_node(kafka_up.bootstrap, 2)
    wait_until(lambda: all_ready(two, 2), 30, what="both processes ready")
    kafka_proxy.cut()
    load = Load(two.thrift_port, [unique("procs-shrink")], clients=12, batch=50).start()
    wait_until(lambda: all_buffer(two), 40, what="both processes buffer")
    load.stop()
    left = processes(two)[1]["buffered_events"]
    assert two.stop(timeout=60) == 0
    assert segments(two.buffer_dir / "process-1") > 0
    one = Worker(two.directory, kafka_up.bootstrap, env_extra=dict(FAST), thrift_port=two.thrift_port,
                 web_port=two.web_port, args=["--processes", "1"])
    try:
        one.start()  # Kafka still cut: the drain-only child holds process-1's events, and /status shows it
        rows = wait_until(lambda: (st := one.status()).get("processes") and len(st["processes"]) == 2
                          and "buffered_events" in st["processes"][1] and st["processes"], 30,
                          what="the drain-only child in /status")
        assert rows[1]["drain_only"] and rows[1]["index"] == 1 and rows[1]["buffered_events"] == left
        assert rows[1]["web_port"] == two.web_port + 1 and not rows[1]["ready"]
        kafka_proxy.restore()
        wait_until(lambda: segments(one.buffer_dir / "process-1") == 0 and segments(one.buffer_dir) == 0, 60,
                   what="process-1 and process 0 drained")
        counts = check_all_in_kafka(kafka_up.bootstrap, load.acked())
        log = one.log_path.read_text()
        assert "from a run with more processes; draining it" in log
        wait_until(lambda: "drained its directory and exited; not started again" in one.log_path.read_text(), 20,
                   what="the drain-only child exits")
        print(f"process-1 left {left} events; {counts}")
        assert one.get("/ready")["ready"]  # process 0 goes on alone
        assert "processes" not in one.status()
        assert one.stop(timeout=60) == 0
    finally:
        one.kill()


def test_a_second_worker_on_the_same_buffer_directory_stops_naming_it(
        kafka_up: Broker, make_node: Callable[..., Worker], tmp_path: Path) -> None:
    first = Worker(tmp_path / "first", kafka_up.bootstrap).start()
    try:
        second = Worker(tmp_path / "second", kafka_up.bootstrap,
                        env_extra={"SPILLWAY_BUFFER_DIRECTORY": str(first.buffer_dir)})
        with pytest.raises(RuntimeError) as exc:
            second.start(timeout=40)
        pid = first.proc.pid if first.proc else -1
        message = str(exc.value)
        assert f"the disk buffer {first.buffer_dir} is in use by another worker (pid {pid})" in message
        assert second.proc is not None and second.proc.returncode != 0
        assert first.get("/ready")["ready"]  # the first one goes on
        assert (first.buffer_dir / ".lock").read_text().strip() == str(pid)
    finally:
        first.kill()
    # the lock goes with the process that held it: a worker starts on that directory again
    again = Worker(tmp_path / "second", kafka_up.bootstrap,
                   env_extra={"SPILLWAY_BUFFER_DIRECTORY": str(first.buffer_dir)}).start()
    try:
        assert again.get("/ready")["ready"]
    finally:
        again.kill()
