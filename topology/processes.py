"""``spillway worker --processes N``: N worker processes on one node, started and kept by one parent.

One Python process decodes Thrift and feeds the sink on one core. With ``--processes N``
(or ``[node] processes``; the flag wins) this small parent, which imports neither Faust nor
the stages, starts N children, each a plain ``spillway worker`` with the same arguments,
told its place by ``SPILLWAY_PROCESS_INDEX`` and ``SPILLWAY_PROCESS_COUNT``. The settings
loader (:func:`core.loading.for_process`) gives child i:

- every source port shared with the others (SO_REUSEPORT: the kernel spreads connections);
- web port ``web.port + i`` (/ready and /metrics per process; /status on process 0 lists all);
- its own ``buffer.directory/process-<i>`` and ``drain.archive_directory/process-<i>``;
  process 0 keeps the directories themselves, so going 1 -> N -> 1 keeps its backlog where it was.

The parent forwards SIGTERM and SIGINT to every child and waits for them: exit status 0 when
every child stopped cleanly. A child that dies unexpectedly is started again after a backoff
(1 s, doubling to 30 s; back to 1 s after a child ran a minute), logged. A child that failed
``GIVE_UP_AFTER`` times in a row, each time within a minute of its start (a setting it
refuses, a directory it cannot use), is not started again: the parent logs it and keeps the
others; once none is left running it exits with status 1, so what supervises the node
(systemd, honcho) sees the failure instead of a restart loop.

Nothing is left behind when N shrinks: a ``process-<k>`` directory with k >= N that still
holds segments gets a *drain-only* child (index k, no source listening, web port
``web.port + k``) that drains it into Kafka and exits once it is empty; it is not started
again after that clean exit. With N = 1 and no such directory there is no parent at all:
``spillway worker`` runs in this process exactly as before.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final

from core.errors import ConfigError
from core.loading import load_settings
from core.settings import Settings

logger = logging.getLogger("spillway.processes")

ROOT: Final = Path(__file__).resolve().parent.parent
#: Faust's options before the command that take a value (``--datadir D worker``)
_VALUE_OPTIONS: Final = frozenset({"-A", "--app", "-W", "--workdir", "-D", "--datadir", "-f", "--logfile",
                                   "-l", "--loglevel", "--blocking-timeout", "--console-port", "-L", "--loop"})
_PROCESS_DIR: Final = re.compile(r"process-(\d+)")
BACKOFF_FIRST: Final = 1.0
BACKOFF_MAX: Final = 30.0
STABLE_AFTER: Final = 60.0  # a child that ran this long starts its next restart at BACKOFF_FIRST
GIVE_UP_AFTER: Final = 5  # failures in a row, each within STABLE_AFTER of the start: not started again
STOP_DEADLINE: Final = 60.0  # seconds children have to stop after the signal, then they are killed
POLL: Final = 0.2


class ProcessesError(Exception):
    """A bad ``--processes`` on the command line."""


def split_processes(argv: Sequence[str]) -> tuple[int | None, list[str]] | None:
    """For ``[global options] worker [options]``: the ``--processes`` value (None: not given)
    and the arguments without it. None when the command is not ``worker``."""
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _VALUE_OPTIONS:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        break
    if i >= len(args) or args[i] != "worker":
        return None
    count: int | None = None
    out = args[:i + 1]
    rest = iter(args[i + 1:])
    for arg in rest:
        if arg == "--processes" or arg.startswith("--processes="):
            raw = arg.partition("=")[2] if "=" in arg else next(rest, "")
            try:
                count = int(raw)
            except ValueError:
                raise ProcessesError(f"--processes wants a whole number, not {raw!r}") from None
            if count < 1:
                raise ProcessesError("--processes must be at least 1")
            continue
        out.append(arg)
    return count, out


def leftover_directories(buffer_dir: Path, count: int) -> dict[int, Path]:
    """``process-<k>`` directories (k >= ``count``) that still hold segments, by k."""
    found: dict[int, Path] = {}
    try:
        entries = list(buffer_dir.iterdir())
    except FileNotFoundError:
        return found
    for entry in entries:
        match = _PROCESS_DIR.fullmatch(entry.name)
        if match and int(match.group(1)) >= count and entry.is_dir() and any(entry.glob("*.seg")):
            found[int(match.group(1))] = entry
    return dict(sorted(found.items()))


def describe_backlog(directory: Path) -> str:
    """What a leftover directory holds, from its segments' seals (no segment is read)."""
    segments = sorted(directory.glob("*.seg"))
    size = sum(p.stat().st_size for p in segments)
    events, unsealed = 0, 0
    for seg in segments:
        try:
            events += int(json.loads(seg.with_name(seg.name + ".sealed").read_bytes())["events"])
        except (OSError, ValueError, KeyError, TypeError):
            unsealed += 1
    more = f" (and {unsealed} segments without a seal)" if unsealed else ""
    return f"{events} events{more} in {len(segments)} segments, {size} bytes"


@dataclass
class Child:
    """One worker process the parent keeps."""

    index: int
    drain_only: bool = False
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None  # monotonic time of a scheduled restart
    finished: bool = False  # a drain-only child that emptied its directory and exited 0
    failures: int = 0  # exits in a row within STABLE_AFTER of the start
    given_up: bool = False  # failed GIVE_UP_AFTER times in a row: not started again
    returncode: int | None = None  # of the last exit

    @property
    def name(self) -> str:
        return f"process {self.index}" + (" (drain-only)" if self.drain_only else "")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM if the parent dies (PR_SET_PDEATHSIG), so none is orphaned."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class Parent:
    """Starts the children, restarts those that die, forwards the stop signals."""

    def __init__(self, args: Sequence[str], count: int, leftovers: Mapping[int, Path],
                 env: Mapping[str, str] | None = None) -> None:
        self.args = list(args)
        self.count = count
        self.env = dict(os.environ if env is None else env)
        self.children = [Child(i) for i in range(count)] + [Child(k, drain_only=True) for k in leftovers]
        self.stopping: int | None = None  # the signal that asked for the stop

    def child_env(self, child: Child) -> dict[str, str]:
        env = dict(self.env)
        env["SPILLWAY_PROCESS_INDEX"] = str(child.index)
        env["SPILLWAY_PROCESS_COUNT"] = str(self.count)
        env.pop("SPILLWAY_PROCESS_DRAIN_ONLY", None)
        if child.drain_only:
            env["SPILLWAY_PROCESS_DRAIN_ONLY"] = "1"
        path = env.get("PYTHONPATH", "")
        if str(ROOT) not in path.split(os.pathsep):
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), path]))
        return env

    def start(self, child: Child) -> None:
        child.proc = subprocess.Popen([sys.executable, "-m", "topology.cli", *self.args], env=self.child_env(child),
                                      preexec_fn=_die_with_parent)  # noqa: PLW1509 - the parent has no threads
        child.started, child.restart_at = time.monotonic(), None
        logger.info("%s started: pid %d", child.name, child.proc.pid)

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping is None:
            logger.info("%s: stopping %d processes", signal.Signals(signum).name,
                        sum(1 for c in self.children if c.proc is not None))
        self.stopping = signum
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signum)

    def _reap(self, child: Child, now: float) -> None:
        """``child`` exited: note it; unless stopping or done, schedule its restart."""
        assert child.proc is not None
        rc = child.returncode = child.proc.returncode
        pid, child.proc = child.proc.pid, None
        how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
        if self.stopping is not None:
            (logger.info if rc == 0 else logger.error)("%s (pid %d) %s", child.name, pid, how)
            return
        if child.drain_only and rc == 0:
            child.finished = True
            logger.info("%s (pid %d) drained its directory and exited; not started again", child.name, pid)
            return
        ran = now - child.started
        if ran >= STABLE_AFTER:
            child.backoff, child.failures = BACKOFF_FIRST, 0
        child.failures += 1
        if child.failures >= GIVE_UP_AFTER:
            child.given_up = True
            logger.error("%s (pid %d) %s after %.1fs, failure %d in a row within %.0fs of its start; "
                         "not starting it again (%d other process(es) still running)", child.name, pid, how, ran,
                         child.failures, STABLE_AFTER,
                         sum(1 for c in self.children if c.proc is not None))
            return
        child.restart_at = now + child.backoff
        logger.error("%s (pid %d) %s unexpectedly after %.1fs; starting it again in %.0fs",
                     child.name, pid, how, ran, child.backoff)
        child.backoff = min(BACKOFF_MAX, child.backoff * 2)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._signal)
        for child in self.children:
            self.start(child)
        deadline: float | None = None
        while True:
            now = time.monotonic()
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None:
                    self._reap(child, now)
                elif (child.proc is None and child.restart_at is not None and now >= child.restart_at
                      and self.stopping is None):
                    self.start(child)
            running = [c for c in self.children if c.proc is not None]
            if self.stopping is None and not running and all(c.finished or c.given_up for c in self.children):
                break  # every process gave up (or drained and finished): nothing left to keep
            if self.stopping is not None:
                if not running:
                    break
                deadline = deadline or now + STOP_DEADLINE
                if now >= deadline:
                    for child in running:
                        logger.error("%s (pid %d) did not stop within %.0fs; killing it", child.name,
                                     child.proc.pid if child.proc else -1, STOP_DEADLINE)
                        if child.proc is not None:
                            child.proc.kill()
            time.sleep(POLL)
        failed = [c for c in self.children if c.given_up or (c.returncode not in (0, None) and c.restart_at is None)]
        logger.info("all processes stopped%s", f"; {len(failed)} not cleanly" if failed else "")
        return 1 if failed else 0


def node_processes(settings: Settings, flag: int | None) -> int:
    return flag if flag is not None else settings.node.processes


def run_if_asked(argv: Sequence[str]) -> int | None:
    """``spillway [options] worker ...`` with more than one process (or leftover directories of a
    larger run): run the parent, return its exit status. None: run the worker in this process."""
    try:
        split = split_processes(argv)
    except ProcessesError as exc:
        raise SystemExit(f"spillway: {exc}") from None
    if split is None:  # not `worker`
        return None
    flag, args = split
    if "SPILLWAY_PROCESS_INDEX" in os.environ:  # already one of the children
        sys.argv[1:] = args
        return None
    try:
        settings = load_settings()
    except ConfigError:
        sys.argv[1:] = args
        return None  # the worker itself reports it, as without --processes
    count = node_processes(settings, flag)
    if any(a in ("--web-port", "-p") or a.startswith("--web-port=") for a in args) and count > 1:
        raise SystemExit("spillway: --web-port cannot be shared by several processes; set web.port "
                         "(SPILLWAY_WEB_PORT): process i serves web.port + i")
    leftovers = leftover_directories(settings.buffer.directory, count)
    if count == 1 and not leftovers:
        sys.argv[1:] = args  # without --processes, for Faust
        return None
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] spillway processes: %(message)s")
    for k, directory in leftovers.items():
        logger.warning("%s holds %s from a run with more processes; draining it (drain-only process %d, web "
                       "port %d)", directory, describe_backlog(directory), k, settings.web.port + k)
    logger.info("starting %d worker processes on %s (sources shared with SO_REUSEPORT, web ports %d..%d)",
                count, ", ".join(f"{src} port {port}" for src, port in _ports(settings)),
                settings.web.port, settings.web.port + count - 1)
    return Parent(args, count, leftovers).run()


def _ports(s: Settings) -> list[tuple[str, int]]:
    out = [("thrift", s.source.thrift.port)]
    if s.source.avro.enabled:
        out.append(("avro", s.source.avro.port))
    if s.source.http.enabled:
        out.append(("http", s.source.http.port))
    return out
