"""Benchmark: spillway against baselines measured in the same run, on the same broker.

    .venv/bin/python -m bench.run                 # the full comparison (about 5 minutes)
    .venv/bin/python -m bench.run --smoke         # a few seconds a scenario (CI: the harness can't rot)
    .venv/bin/python -m bench.run --long          # adds the >= 10 minute run for RSS drift

Starts its own Kafka broker (devtools/kafka.py) on free ports and its own workers; drives
load with bench/loadgen.py (Flume's protocol, compact, appendBatch of 100 × 512 B over three
topics, each event keyed). Scenarios:

- ``healthy``: Kafka acknowledges (acks=all) before the client is answered;
- ``healthy_2p``: the same against ``spillway worker --processes N`` (``--worker-processes``, 2):
  N workers share the Thrift port; server CPU and RSS are summed over the parent and its children;
- ``kafka_down``: the worker's Kafka is unreachable, the disk buffer (fsync) acknowledges;
- ``drain_alone``: a backlog drains into Kafka with no live load (events/s, CPU µs an event);
  ``drain_alone_2p`` the same with ``--processes N`` (each process fills and drains its own directory);
- ``drain``: a backlog in the buffer drains into Kafka while live load continues;
- baselines: a bare aiokafka producer with the same records (acks=all); Kafka's own Java
  ``ProducerPerformance``; Apache Flume 1.11's own agent (ThriftSource -> memory channel ->
  KafkaSink acks=all, and the same with a file channel), fed by the same load generator.

Before the first scenario the broker gets 30 s (``--warmup``) of produce load, a bare producer's
then a throwaway worker's (its JIT warm, so the first scenario meets the broker the later ones
do); spillway and Flume get 2 s of load before each measurement.

Prints a table, writes ``bench/results/<time>.json`` and appends a section to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools import flume
from devtools.flume import FLUME_VERSION
from devtools.kafka import KAFKA_VERSION, Broker, fetch

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- process sampling --------------------------------------------------------------------------------

def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _tree(pid: int) -> list[int]:
    """``pid`` and its children (the parent of ``--processes N`` and its workers), from /proc."""
    out = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def _sum(pids: list[int], measure: Any) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += measure(pid)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return total


@dataclass
class Proc:
    """A long-running process under test (a worker, a Flume agent)."""

    cmd: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def wait_port(port: int, timeout: float = 90.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on {port}")


@dataclass
class Spillway:
    workdir: Path
    bootstrap: str
    extra: dict[str, str] = field(default_factory=dict)
    thrift_port: int = field(default_factory=free_port)
    web_port: int = field(default_factory=free_port)
    proc: Proc | None = None
    processes: int = 1  # spillway worker --processes N

    @property
    def tree(self) -> list[int]:
        """The worker's pids: the one process, or the parent and its N children."""
        return _tree(self.proc.pid) if self.proc else []

    def start(self) -> Spillway:
        env = dict(os.environ)
        env.update({
            "SPILLWAY_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "SPILLWAY_SOURCE_THRIFT_HOST": "127.0.0.1",
            "SPILLWAY_SOURCE_THRIFT_PORT": str(self.thrift_port),
            "SPILLWAY_WEB_PORT": str(self.web_port),
            "SPILLWAY_BUFFER_DIRECTORY": str(self.workdir / "buffer"),
            "SPILLWAY_DRAIN_ARCHIVE_DIRECTORY": str(self.workdir / "archive"),
        })
        env.update(self.extra)
        self.workdir.mkdir(parents=True, exist_ok=True)
        more = ["--processes", str(self.processes)] if self.processes != 1 else []
        self.proc = Proc([PY, "-m", "topology.cli", "--datadir", str(self.workdir / "faust"), "--loglevel", "warn",
                          "worker", *more], env, self.workdir / "worker.log").start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                st = self.status()
                if st.get("state") == "running" and (
                        self.processes == 1 or st.get("processes_total", {}).get("ready") == self.processes):
                    return self
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"worker did not start; see {self.workdir / 'worker.log'}")

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/status", timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


# -- load --------------------------------------------------------------------------------------------

def load(port: int, seconds: float, args: argparse.Namespace, watch: int | None = None,
         rate: float = 0.0, tree: bool = False) -> dict[str, Any]:
    """Run the load generator against ``port`` (``rate`` events/s, 0: flat out); sample
    ``watch`` (a pid; ``tree``: with its children, summed) for CPU and RSS."""

    def pids() -> list[int]:
        return [] if not watch else _tree(watch) if tree else [watch]

    cmd = [PY, "-m", "bench.loadgen", "--port", str(port), "--seconds", str(seconds),
           "--processes", str(args.processes), "--connections", str(args.connections),
           "--batch", str(args.batch), "--size", str(args.size), "--protocol", args.protocol,
           "--rate", str(rate)]
    watched = pids()
    cpu0 = _sum(watched, _cpu_seconds)
    t0 = time.monotonic()
    peak = 0.0
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    gen = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    while gen.poll() is None:
        if watch:
            peak = max(peak, _sum(watched, _rss_mb))
        time.sleep(0.25)
    elapsed = time.monotonic() - t0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the generator and its processes, reaped
    out = json.loads(gen.stdout.read() if gen.stdout else "{}")
    gen_cpu = (children.ru_utime - children0.ru_utime) + (children.ru_stime - children0.ru_stime)
    out["loadgen_cpu_percent"] = round(100 * gen_cpu / elapsed)
    if watch:
        cpu = _sum(watched, _cpu_seconds) - cpu0
        out["server_cpu_percent"] = round(cpu / elapsed * 100)
        out["server_cpu_us_per_event"] = round(cpu / elapsed / max(1, out.get("events_per_second", 0)) * 1e6, 1)
        out["server_peak_rss_mb"] = round(max(peak, _sum(watched, _rss_mb)), 1)
        out["server_processes"] = len(watched)
    return out


def bare_aiokafka(bootstrap: str, seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    """A bare aiokafka producer, acks=all, idempotent, send() per record, many in flight."""
    code = f"""
import asyncio, json, time
from aiokafka import AIOKafkaProducer
async def main():
    p = AIOKafkaProducer(bootstrap_servers={bootstrap!r}, acks="all", enable_idempotence=True,
                         linger_ms=5, max_batch_size=1000000, max_request_size=1100000)
    await p.start()
    topics = ["base-a", "base-b", "base-c"]
    body = b"x" * {args.size}
    n = 0
    end = time.monotonic() + {seconds}
    t0 = time.monotonic()
    while time.monotonic() < end:
        futs = [await p.send(topics[i % 3], body, key=b"key-%d" % (i % 1000),
                             headers=[("topic", topics[i % 3].encode()), ("key", b"key-%d" % (i % 1000))])
                for i in range(5000)]
        await asyncio.gather(*futs)
        n += len(futs)
    el = time.monotonic() - t0
    await p.stop()
    print(json.dumps({{"events_per_second": round(n / el), "mb_per_second": round(n * {args.size} / el / 1e6, 2)}}))
asyncio.run(main())
"""
    out = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120)
    return json.loads(out.stdout.strip().splitlines()[-1])


JAVA_PRODUCER_PROPS = ["acks=all", "enable.idempotence=true", "linger.ms=5", "batch.size=262144",
                       "compression.type=none"]


def java_producer(bootstrap: str, seconds: float, args: argparse.Namespace, rate_hint: int) -> dict[str, Any]:
    """Kafka's own ProducerPerformance (kafka-tools), configured for throughput as Kafka documents."""
    libs = fetch()
    n = max(50_000, int(rate_hint * seconds))
    cmd = ["java", "-Xmx512m", "-cp", f"{libs}/*", "org.apache.kafka.tools.ProducerPerformance",
           "--topic", "base-java", "--num-records", str(n), "--record-size", str(args.size), "--throughput", "-1",
           "--producer-props", f"bootstrap.servers={bootstrap}", *JAVA_PRODUCER_PROPS]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    last = [line for line in out.stdout.splitlines() if "records sent" in line][-1]
    # "N records sent, X records/sec (Y MB/sec), A ms avg latency, M ms max latency, p50 ..."
    parts = last.split(",")
    rate = float(parts[1].split("records/sec")[0])
    return {"events_per_second": round(rate), "mb_per_second": round(rate * args.size / 1e6, 2), "line": last.strip(),
            "props": JAVA_PRODUCER_PROPS}


FLUME_CONF = """\
a1.sources = r1
a1.channels = c1
a1.sinks = k1
a1.sources.r1.type = thrift
a1.sources.r1.bind = 127.0.0.1
a1.sources.r1.port = {port}
a1.sources.r1.channels = c1
{channel}
a1.sinks.k1.type = org.apache.flume.sink.kafka.KafkaSink
a1.sinks.k1.channel = c1
a1.sinks.k1.kafka.bootstrap.servers = {bootstrap}
a1.sinks.k1.kafka.topic = flume-default
a1.sinks.k1.flumeBatchSize = 1000
a1.sinks.k1.kafka.producer.acks = all
a1.sinks.k1.kafka.producer.linger.ms = 5
a1.sinks.k1.kafka.producer.batch.size = 262144
"""
MEMORY_CHANNEL = """\
a1.channels.c1.type = memory
a1.channels.c1.capacity = 200000
a1.channels.c1.transactionCapacity = 10000"""
FILE_CHANNEL = """\
a1.channels.c1.type = file
a1.channels.c1.checkpointDir = {dir}/checkpoint
a1.channels.c1.dataDirs = {dir}/data
a1.channels.c1.capacity = 2000000
a1.channels.c1.transactionCapacity = 10000"""


def flume_libs() -> Path | None:
    try:
        return flume.fetch()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return None


def flume_agent(workdir: Path, bootstrap: str, channel: str, seconds: float,
                args: argparse.Namespace) -> dict[str, Any] | None:
    libs = flume_libs()
    if libs is None:
        return None
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    ch = MEMORY_CHANNEL if channel == "memory" else FILE_CHANNEL.format(dir=workdir)
    conf = workdir / "flume.conf"
    conf.write_text(FLUME_CONF.format(port=port, channel=ch, bootstrap=bootstrap))
    agent = Proc(["java", "-Xmx1g", "-cp", f"{libs}/*", "org.apache.flume.node.Application", "-n", "a1",
                  "-f", str(conf)], dict(os.environ), workdir / "flume.log").start()
    try:
        wait_port(port)
        time.sleep(1)
        load(port, 2, args)  # warm-up, as spillway's scenarios get (the JVM's JIT)
        out = load(port, seconds, args, watch=agent.pid)
        out["config"] = conf.read_text()
        return out
    finally:
        agent.stop()


# -- scenarios ---------------------------------------------------------------------------------------

def drain_scenario(work: Path, bootstrap: str, args: argparse.Namespace, backlog: int,
                   live_rate: float = 0.0, extra: dict[str, str] | None = None) -> dict[str, Any]:
    """Fill the buffer with ``backlog`` events (Kafka unreachable), then drain it with live load
    on, at ``live_rate`` events/s (half the healthy capacity; 0: flat out)."""
    fill_buffer(work / "drain", args, backlog)
    up = Spillway(work / "drain", bootstrap, extra=dict(extra or {})).start()
    try:
        start_events = counts(up)["buffered"]
        t0 = time.monotonic()
        live = load(up.thrift_port, args.seconds, args, watch=up.proc.pid if up.proc else None, rate=live_rate)
        drained_live = counts(up)["drained"]
        live_elapsed = time.monotonic() - t0
        while counts(up)["buffered"] > 0 and time.monotonic() - t0 < 1800:
            time.sleep(0.5)
        total = time.monotonic() - t0
        end = counts(up)
        return {"backlog_events": start_events,
                "drain_events_per_second_with_live_load": round(drained_live / live_elapsed),
                "drain_events_per_second_overall": round(end["drained"] / total),
                "live": live, "live_rate_asked": round(live_rate), "drain_seconds": round(total, 1),
                "duplicates": end["duplicates"]}
    finally:
        up.stop()


def counts(w: Spillway) -> dict[str, int]:
    """Events buffered, events drained and duplicates, over every process of ``--processes N``."""
    st = w.status()
    if w.processes > 1:
        t = st["processes_total"]
        return {"buffered": t["buffered_events"], "drained": t["drained"], "duplicates": t["duplicates"]}
    return {"buffered": st["buffer"]["events"], "drained": st["drain"]["drained_total"],
            "duplicates": st["counters"]["duplicates"]}


def fill_buffer(workdir: Path, args: argparse.Namespace, backlog: int, processes: int = 1) -> None:
    """Fill ``workdir``'s buffer with at least ``backlog`` events, Kafka unreachable."""
    down = Spillway(workdir, f"127.0.0.1:{free_port()}", processes=processes).start()
    try:
        t0 = time.monotonic()
        while counts(down)["buffered"] < backlog and time.monotonic() - t0 < 900:
            load(down.thrift_port, 5, args)
    finally:
        down.stop()


def drain_alone_scenario(work: Path, bootstrap: str, args: argparse.Namespace, backlog: int,
                         extra: dict[str, str] | None = None, processes: int = 1) -> dict[str, Any]:
    """Fill the buffer, then drain it into Kafka with no live load: events/s and the worker's CPU
    (with ``processes`` > 1: ``spillway worker --processes N``, each process draining its own
    directory, CPU summed over the parent and its children)."""
    workdir = work / ("drain-alone" if processes == 1 else f"drain-alone-{processes}p")
    fill_buffer(workdir, args, backlog, processes)
    up = Spillway(workdir, bootstrap, extra=dict(extra or {}), processes=processes).start()
    try:
        assert up.proc is not None
        start = counts(up)
        pids = up.tree
        cpu0, t0 = _sum(pids, _cpu_seconds), time.monotonic()
        while counts(up)["buffered"] > 0 and time.monotonic() - t0 < 1800:
            time.sleep(0.2)
        elapsed, cpu = time.monotonic() - t0, _sum(pids, _cpu_seconds) - cpu0
        end = counts(up)
        done = end["drained"] - start["drained"]
        return {"backlog_events": start["buffered"], "drained": done, "worker_processes": processes,
                "events_per_second": round(done / elapsed), "seconds": round(elapsed, 1),
                "server_cpu_percent": round(100 * cpu / elapsed),
                "cpu_us_per_event": round(1e6 * cpu / max(1, done), 1),
                "duplicates": end["duplicates"]}
    finally:
        up.stop()


def warm_broker(work: Path, bootstrap: str, args: argparse.Namespace, seconds: float) -> None:
    """The broker's own warm-up, so that the first scenario does not meet a colder broker than
    the later ones: a bare producer, then a throwaway worker under the benchmark's load (the
    same topics and records), ``seconds`` in all, not reported. A bare producer alone left the
    first worker round at 36k events/s and 23 broker CPU µs an event, the next at 64k and 7.5."""
    bare_aiokafka(bootstrap, max(1.0, seconds / 3), args)
    w = Spillway(work / "warm-up", bootstrap).start()
    try:
        load(w.thrift_port, max(1.0, seconds * 2 / 3), args)
    finally:
        w.stop()
    shutil.rmtree(work / "warm-up", ignore_errors=True)


def machine() -> dict[str, Any]:
    mem = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    return {"cores": os.cpu_count(), "memory_mb": mem, "python": platform.python_version(),
            "kafka": KAFKA_VERSION, "flume": FLUME_VERSION, "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few seconds a scenario; no Flume, small backlog")
    ap.add_argument("--long", action="store_true", help="add a >= 10 minute run for RSS drift")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--processes", type=int, default=2, help="the load generator's processes")
    ap.add_argument("--worker-processes", type=int, default=2, help="spillway's processes in healthy_2p")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--protocol", default="compact", choices=["compact", "binary"])
    ap.add_argument("--backlog", type=int, default=1_000_000)
    ap.add_argument("--no-flume", action="store_true")
    ap.add_argument("--warmup", type=float, default=30.0,
                    help="seconds of produce load the broker gets before the first scenario (its JIT)")
    ap.add_argument("--only", default="", help="comma list of scenarios to run")
    args = ap.parse_args(argv)
    if args.smoke:
        args.seconds, args.backlog, args.no_flume, args.warmup = 3.0, 20_000, True, 2.0
    only = set(filter(None, args.only.split(",")))

    def want(name: str) -> bool:
        return not only or name in only

    work = Path(tempfile.mkdtemp(prefix="spillway-bench-"))
    broker = Broker(work / "kafka", port=free_port(), controller_port=free_port(), heap="1g")
    results: dict[str, Any] = {"machine": machine(), "args": vars(args), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    broker.start(timeout=120)
    try:
        warm_broker(work, broker.bootstrap, args, args.warmup)
        if want("healthy"):
            w = Spillway(work / "healthy", broker.bootstrap).start()
            try:
                load(w.thrift_port, 2, args)  # warm-up: topics created, JIT of the broker warm
                results["healthy"] = load(w.thrift_port, args.seconds, args, watch=w.proc.pid if w.proc else None)
            finally:
                w.stop()
        if want("healthy_2p"):
            w = Spillway(work / "healthy-2p", broker.bootstrap, processes=args.worker_processes).start()
            try:
                load(w.thrift_port, 2, args)
                results["healthy_2p"] = load(w.thrift_port, args.seconds, args, watch=w.proc.pid if w.proc else None,
                                             tree=True)
                results["healthy_2p"]["worker_processes"] = args.worker_processes
                results["healthy_2p"]["events_taken_by_process"] = [
                    r.get("events_taken") for r in w.status().get("processes", [])]
            finally:
                w.stop()
        if want("kafka_down"):
            w = Spillway(work / "down", f"127.0.0.1:{free_port()}").start()
            try:
                results["kafka_down"] = load(w.thrift_port, args.seconds, args, watch=w.proc.pid if w.proc else None)
                buf = w.status()["buffer"]
                results["kafka_down"]["disk_bytes_per_event"] = round(buf["bytes"] / max(1, buf["events"]), 1)
            finally:
                w.stop()
        if want("aiokafka"):
            results["bare_aiokafka"] = bare_aiokafka(broker.bootstrap, args.seconds, args)
        if want("java"):
            hint = results.get("bare_aiokafka", {}).get("events_per_second", 200_000) * 3
            results["java_producer"] = java_producer(broker.bootstrap, args.seconds, args, hint)
        if not args.no_flume and want("flume"):
            results["flume_memory"] = flume_agent(work / "flume-mem", broker.bootstrap, "memory", args.seconds, args)
            results["flume_file"] = flume_agent(work / "flume-file", broker.bootstrap, "file", args.seconds, args)
        if want("drain_alone"):
            results["drain_alone"] = drain_alone_scenario(work, broker.bootstrap, args, args.backlog)
        if want("drain_alone_2p"):
            results["drain_alone_2p"] = drain_alone_scenario(work, broker.bootstrap, args, args.backlog,
                                                             processes=args.worker_processes)
        if want("drain"):
            half = results.get("healthy", {}).get("events_per_second", 0) / 2
            results["drain"] = drain_scenario(work, broker.bootstrap, args, args.backlog, live_rate=half)
        if args.long and want("long"):
            w = Spillway(work / "long", broker.bootstrap).start()
            try:
                samples = []
                for _ in range(20):
                    r = load(w.thrift_port, 30, args, watch=w.proc.pid if w.proc else None)
                    samples.append({"events_per_second": r["events_per_second"], "rss_mb": r["server_peak_rss_mb"]})
                results["long"] = {"samples": samples}
            finally:
                w.stop()
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(results, write=not args.smoke)
    return 0


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if not a or not b or not b.get("events_per_second"):
        return "-"
    return f"{a['events_per_second'] / b['events_per_second']:.2f}x"


def report(results: dict[str, Any], write: bool) -> None:
    rows = []
    for name in ("healthy", "healthy_2p", "kafka_down", "bare_aiokafka", "java_producer", "flume_memory", "flume_file"):
        r = results.get(name)
        if not r:
            continue
        lat = r.get("latency_ms", {})
        rows.append(f"| {name} | {r['events_per_second']:,} | {r.get('mb_per_second', '-')} | {lat.get('p50', '-')} | "
                    f"{lat.get('p99', '-')} | {lat.get('max', '-')} | {r.get('server_cpu_percent', '-')} | "
                    f"{r.get('server_cpu_us_per_event', '-')} | {r.get('loadgen_cpu_percent', '-')} | "
                    f"{r.get('server_peak_rss_mb', '-')} |")
    h = results.get("healthy")
    lines = [
        f"## {results['started']} — {results['machine']['cores']} cores, {results['machine']['memory_mb']} MB, "
        f"Python {results['machine']['python']}, Kafka {results['machine']['kafka']}",
        "",
        f"Load: {results['args']['processes']} processes × {results['args']['connections']} connections, "
        f"appendBatch of {results['args']['batch']} × {results['args']['size']} B ({results['args']['protocol']}), "
        f"{results['args']['seconds']} s a scenario.",
        "",
        "| scenario | acked events/s | MB/s | p50 ms | p99 ms | max ms | server CPU % | server CPU µs/event "
        "| load generator CPU % | server peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Ratios (spillway healthy / baseline): "
        f"java producer {_ratio(h, results.get('java_producer'))}, "
        f"bare aiokafka {_ratio(h, results.get('bare_aiokafka'))}, "
        f"flume memory channel {_ratio(h, results.get('flume_memory'))}, "
        f"flume file channel {_ratio(h, results.get('flume_file'))}; "
        f"kafka down / healthy {_ratio(results.get('kafka_down'), h)}.",
    ]
    p2 = results.get("healthy_2p")
    if p2:
        per = ", ".join(f"{n:,}" for n in p2.get("events_taken_by_process", []) if n is not None)
        lines += ["", f"healthy_2p / healthy {_ratio(p2, h)}: spillway worker --processes {p2['worker_processes']} "
                  f"(CPU and RSS summed over {p2.get('server_processes', '-')} processes: the parent and its "
                  f"workers; events taken by process: {per})."]
    down = results.get("kafka_down")
    if down and down.get("disk_bytes_per_event"):
        size = results['args']['size']
        lines += ["", f"Disk buffer: {down['disk_bytes_per_event']} bytes on disk per {size} B event "
                  "(body, topic, key, headers, receive time, framing and CRC)."]
    for name in ("drain_alone", "drain_alone_2p"):
        a = results.get(name)
        if not a:
            continue
        java = results.get("java_producer")
        vs = f"{a['events_per_second'] / java['events_per_second']:.2f}x" if java else "-"
        n = a.get("worker_processes", 1)
        who = "" if n == 1 else f", spillway worker --processes {n}, CPU summed over the parent and its workers"
        lines += ["", f"Drain alone (no live load{who}) of {a['backlog_events']:,} buffered events: "
                  f"{a['events_per_second']:,} events/s ({vs} Kafka's Java ProducerPerformance), {a['seconds']} s, "
                  f"server CPU {a['server_cpu_percent']} %, {a['cpu_us_per_event']} µs/event; "
                  f"duplicates {a['duplicates']}."]
    d = results.get("drain")
    if d:
        live = d["live"]["events_per_second"]
        asked = f" (asked: {d['live_rate_asked']:,}/s, half the healthy capacity)" if d.get("live_rate_asked") else ""
        lines += ["", f"Drain of {d['backlog_events']:,} buffered events with live load on: "
                  f"{d['drain_events_per_second_with_live_load']:,} events/s drained while live load ran at "
                  f"{live:,} events/s{asked}, live p99 {d['live'].get('latency_ms', {}).get('p99', '-')} ms "
                  f"(drain/live {d['drain_events_per_second_with_live_load'] / max(live, 1):.2f}x); "
                  f"whole backlog in {d['drain_seconds']} s; duplicates {d['duplicates']}."]
    if results.get("long"):
        lines += ["", "Long run (30 s samples): " + ", ".join(
            f"{s['events_per_second']:,}/s {s['rss_mb']} MB" for s in results["long"]["samples"])]
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / time.strftime("%Y%m%d-%H%M%S.json")).write_text(json.dumps(results, indent=2))
        bm = ROOT / "BENCHMARKS.md"
        if not bm.exists():
            bm.write_text("# Benchmarks\n\nAppended by `python -m bench.run`; newest last. See bench/run.py for "
                          "what each scenario does.\n\n")
        with open(bm, "a") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    sys.exit(main())
