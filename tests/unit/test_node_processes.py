"""The pure parts of ``--processes N``: the command line, each process's settings, leftover
directories, the buffer directory lock; the parent's give-up rule, with tiny commands for children."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agents.disk_buffer import DiskBuffer
from core.errors import BufferError, ConfigError
from core.loading import load_settings
from core.settings import DEFAULT_CONFIG
from topology.processes import GIVE_UP_AFTER, Child, Parent, ProcessesError, leftover_directories, split_processes


def test_processes_flag_is_taken_out_of_the_worker_arguments() -> None:
    assert split_processes(["--datadir", "d", "worker", "--processes", "3", "-l", "info"]) == (
        3, ["--datadir", "d", "worker", "-l", "info"])
    assert split_processes(["worker", "--processes=2"]) == (2, ["worker"])
    assert split_processes(["--datadir", "worker", "worker"]) == (None, ["--datadir", "worker", "worker"])
    assert split_processes(["check-config"]) is None
    with pytest.raises(ProcessesError, match="at least 1"):
        split_processes(["worker", "--processes", "0"])
    with pytest.raises(ProcessesError, match="whole number"):
        split_processes(["worker", "--processes", "two"])


def test_each_process_gets_its_web_port_directories_and_a_shared_source_port() -> None:
    env = {"SPILLWAY_BUFFER_DIRECTORY": "/b", "SPILLWAY_DRAIN_ARCHIVE_DIRECTORY": "/a", "SPILLWAY_WEB_PORT": "7000"}
    one = load_settings(DEFAULT_CONFIG, env=env)
    assert (one.buffer.directory, one.web.port, one.source.thrift.reuse_port) == (Path("/b"), 7000, False)
    first = load_settings(DEFAULT_CONFIG, env={**env, "SPILLWAY_PROCESS_INDEX": "0", "SPILLWAY_PROCESS_COUNT": "3"})
    assert (first.buffer.directory, first.drain.archive_directory, first.web.port) == (Path("/b"), Path("/a"), 7000)
    third = load_settings(DEFAULT_CONFIG, env={**env, "SPILLWAY_PROCESS_INDEX": "2", "SPILLWAY_PROCESS_COUNT": "3"})
    assert third.buffer.directory == Path("/b/process-2")
    assert third.drain.archive_directory == Path("/a/process-2")
    assert third.web.port == 7002
    assert third.source.thrift.reuse_port and third.source.avro.reuse_port and third.source.http.reuse_port
    assert third.source.thrift.port == one.source.thrift.port
    assert load_settings(DEFAULT_CONFIG, env={"SPILLWAY_NODE_PROCESSES": "4"}).node.processes == 4
    with pytest.raises(ConfigError, match="SPILLWAY_PROCESS_INDEX"):
        load_settings(DEFAULT_CONFIG, env={"SPILLWAY_PROCESS_INDEX": "3", "SPILLWAY_PROCESS_COUNT": "2"})
    with pytest.raises(ConfigError, match="node.processes"):
        load_settings(DEFAULT_CONFIG, env={"SPILLWAY_NODE_PROCESSES": "0"})


def test_only_directories_of_higher_processes_with_segments_are_left_over(tmp_path: Path) -> None:
    for k in (1, 2, 3):
        (tmp_path / f"process-{k}").mkdir()
    (tmp_path / "process-1" / "00000000000000000001.seg").write_bytes(b"x")
    (tmp_path / "process-3" / "00000000000000000001.seg").write_bytes(b"x")
    (tmp_path / "process-2" / "quarantine").mkdir()  # no segment: nothing to drain
    assert leftover_directories(tmp_path, 1) == {1: tmp_path / "process-1", 3: tmp_path / "process-3"}
    assert leftover_directories(tmp_path, 2) == {3: tmp_path / "process-3"}
    assert leftover_directories(tmp_path / "missing", 1) == {}


@pytest.mark.asyncio
async def test_a_second_buffer_on_one_directory_is_refused_until_the_first_stops(tmp_path: Path) -> None:
    first = DiskBuffer(tmp_path, max_bytes=2**20)
    await first.start()
    second = DiskBuffer(tmp_path, max_bytes=2**20)
    with pytest.raises(BufferError, match=rf"{tmp_path} is in use by another worker \(pid \d+\)"):
        await second.start()
    await first.stop()
    await second.start()  # released at stop
    await second.stop()


class QuickParent(Parent):
    """The parent's loop with children that are a tiny command (fails at once unless its index is
    in ``healthy``, which runs until stopped) and short backoffs."""

    def __init__(self, count: int, healthy: set[int]) -> None:
        super().__init__([], count, {}, env={})
        self.healthy = healthy
        self.starts: list[int] = []
        for child in self.children:
            child.backoff = 0.01

    def start(self, child: Child) -> None:
        self.starts.append(child.index)
        code = "import time; time.sleep(60)" if child.index in self.healthy else "raise SystemExit(3)"
        child.proc = subprocess.Popen([sys.executable, "-c", code])
        child.started, child.restart_at = time.monotonic(), None


def test_a_child_failing_at_every_start_is_given_up_and_the_parent_exits_1_once_none_is_left(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # keep pytest's own handlers
    parent = QuickParent(2, healthy=set())
    caplog.set_level(logging.ERROR, "spillway.processes")
    assert parent.run() == 1
    assert parent.starts.count(0) == parent.starts.count(1) == GIVE_UP_AFTER  # started again until given up
    assert all(c.given_up for c in parent.children)
    assert sum("not starting it again" in r.getMessage() for r in caplog.records) == 2


def test_the_others_keep_running_when_one_child_is_given_up() -> None:
    parent = QuickParent(2, healthy={0})
    runner = threading.Thread(target=parent.run)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(signal, "signal", lambda *a: None)  # run() is not in the main thread here
        runner.start()
        deadline = time.monotonic() + 30
        while not parent.children[1].given_up and time.monotonic() < deadline:
            time.sleep(0.05)
        assert parent.children[1].given_up and parent.starts.count(1) == GIVE_UP_AFTER
        assert runner.is_alive() and parent.children[0].proc is not None  # process 0 still runs
        assert parent.children[0].proc.poll() is None
        parent._signal(signal.SIGTERM, None)
        runner.join(30)
    assert not runner.is_alive()
    assert parent.starts.count(0) == 1


def test_the_totals_over_processes_sum_what_each_took_buffered_and_drained() -> None:
    from topology.views import process_summary, process_totals

    def doc(received: int, buffered: int, drained: int, duplicates: int) -> dict[str, object]:
        return {"state": "running", "ready": True, "counters": {"received": received, "duplicates": duplicates},
                "buffer": {"events": buffered, "bytes": buffered * 600}, "drain": {"drained_total": drained},
                "sink": {"state": "up"}, "source": {"connections": 2}}

    rows = [process_summary(doc(10, 3, 7, 0), 0, 8000), process_summary(doc(5, 4, 11, 1), 1, 8001),
            process_summary({"state": "down"}, 2, 8002)]
    totals = process_totals(rows)
    assert totals["answering"] == 2 and totals["processes"] == 3
    assert (totals["events_taken"], totals["buffered_events"], totals["drained"], totals["duplicates"]) == (
        15, 7, 18, 1)
