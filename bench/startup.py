"""Start-up time against the backlog (issue 12, target 7): ready within 2 s whatever is buffered.

    .venv/bin/python -m bench.startup                 # 1 GB and 5 GB sealed, 1 GB unsealed
    .venv/bin/python -m bench.startup --gb 1 --gb 5 --unsealed-gb 1

Builds one real 64 MiB segment with the disk buffer (512 B events, three headers), copies
it (with its seal) under new sequence numbers up to the size asked, then starts a real
worker on that buffer with Kafka unreachable (as in an outage) and measures the time from
the process start until the Thrift port accepts and until ``/ready`` answers ready.
``--unsealed-gb`` does the same with the seals removed: what every start cost before seals
(every closed segment scanned). Needs no broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from agents.disk_buffer import DiskBuffer, seal_path
from agents.records import Record
from bench.run import PY, ROOT, free_port

SEGMENT = 64 * 2**20


async def _one_segment(directory: Path) -> Path:
    buf = DiskBuffer(directory, max_bytes=2 * SEGMENT, segment_max_bytes=SEGMENT)
    await buf.start()
    now = int(time.time() * 1000)
    body = b"x" * 512
    batch = [Record(f"t{i % 3}", b"key-%d" % i, [("topic", b"t%d" % (i % 3)), ("seq", b"%d" % i)], body, now)
             for i in range(2000)]
    while len(list(directory.glob("*.seg"))) < 2:  # until the first segment is full and a second opened
        await buf.append(batch)
    await buf.stop()
    first, *rest = sorted(directory.glob("*.seg"))
    for extra in rest:
        seal_path(extra).unlink(missing_ok=True)
        extra.unlink()
    return first


def build(directory: Path, gigabytes: float, sealed: bool) -> tuple[int, int]:
    """A buffer directory of about ``gigabytes``; returns (segments, bytes)."""
    directory.mkdir(parents=True)
    template = asyncio.run(_one_segment(directory))
    meta = json.loads(seal_path(template).read_text())
    n = max(1, round(gigabytes * 2**30 / meta["size"]))
    seq = int(template.stem)
    for i in range(1, n):
        target = directory / f"{seq + i:020d}.seg"
        shutil.copyfile(template, target)
        shutil.copyfile(seal_path(template), seal_path(target))
    if not sealed:
        for seal in directory.glob("*.sealed"):
            seal.unlink()
    subprocess.run(["sync"], check=True)
    time.sleep(5)  # let the disk settle after writing gigabytes
    return n, n * meta["size"]


def measure(directory: Path, workdir: Path) -> dict[str, float]:
    thrift, web = free_port(), free_port()
    env = dict(os.environ, SPILLWAY_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",  # nothing there
               SPILLWAY_SOURCE_THRIFT_HOST="127.0.0.1", SPILLWAY_SOURCE_THRIFT_PORT=str(thrift),
               SPILLWAY_WEB_PORT=str(web), SPILLWAY_BUFFER_DIRECTORY=str(directory),
               SPILLWAY_DRAIN_ARCHIVE_DIRECTORY=str(workdir / "archive"))
    t0 = time.monotonic()
    log = workdir / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([PY, "-m", "topology.cli", "--datadir", str(workdir / "faust"), "--loglevel", "info",
                                 "worker"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    listening = ready = None
    try:
        while time.monotonic() - t0 < 600 and ready is None:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}")
            if listening is None:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", thrift)) == 0:
                        listening = time.monotonic() - t0
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web}/ready", timeout=2) as r:
                    if json.loads(r.read()).get("ready"):
                        ready = time.monotonic() - t0
                        listening = ready if listening is None else listening
            except OSError:
                pass
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(60)
    assert listening is not None and ready is not None, "never ready"
    stamps = [datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f") for line in log.read_text().splitlines()
              if line.startswith("[") and ("[^--Node]: Starting" in line or "spillway ready:" in line)]
    node = (stamps[1] - stamps[0]).total_seconds() if len(stamps) >= 2 else float("nan")
    return {"listening_s": round(listening, 2), "ready_s": round(ready, 2), "node_s": round(node, 3)}


def _drop_caches() -> None:
    """A cold page cache, as after a reboot (where the old start read every byte from disk)."""
    if os.access("/proc/sys/vm/drop_caches", os.W_OK):
        Path("/proc/sys/vm/drop_caches").write_text("3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, action="append", help="sealed backlog sizes (default 1 and 5)")
    ap.add_argument("--unsealed-gb", type=float, action="append", help="unsealed backlog sizes (default 1)")
    args = ap.parse_args()
    cases = [(g, True) for g in (args.gb or [1.0, 5.0])] + [(g, False) for g in (args.unsealed_gb or [1.0])]
    base = Path(tempfile.mkdtemp(prefix="spillway-startup-"))
    try:
        (base / "empty").mkdir()
        for _ in range(2):  # the reference: an empty buffer, cold then warm page cache
            _drop_caches()
            out = measure(base / "empty" / "buffer", base / "empty")
            print(f"empty buffer: thrift listening after {out['listening_s']} s, /ready after {out['ready_s']} s "
                  f"(the node's own start: {out['node_s']} s)", flush=True)
        for gigabytes, sealed in cases:
            work = base / f"{gigabytes:g}-{'sealed' if sealed else 'unsealed'}"
            n, size = build(work / "buffer", gigabytes, sealed)
            _drop_caches()
            out = measure(work / "buffer", work)
            print(f"{size / 2**30:.2f} GiB in {n} segments, {'sealed' if sealed else 'unsealed (no seals)'}: "
                  f"thrift listening after {out['listening_s']} s, /ready after {out['ready_s']} s "
                  f"(the node's own start, buffer to listening: {out['node_s']} s)", flush=True)
            shutil.rmtree(work)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
