"""Failover time: steady Flume load, the broker SIGKILLed, how long calls wait and when the
disk buffer answers. Default settings (failover.timeout 5 s).

    .venv/bin/python -m bench.failover_time
"""
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import Load, Status, Worker, free_port  # noqa: E402

from devtools.kafka import Broker  # noqa: E402

d = Path(tempfile.mkdtemp(prefix="spillway-failover-"))
b = Broker(d / "kafka", port=free_port(), controller_port=free_port())
b.start()
w = Worker(d / "w", b.bootstrap, env_extra={"SPILLWAY_FAILOVER_TIMEOUT": "5s", "SPILLWAY_KAFKA_REQUEST_TIMEOUT": "5s",
                                            "SPILLWAY_FAILOVER_MAX_PENALTY": "30s"})
w.start()
load = Load(w.thrift_port, ["fa", "fb"], clients=4, batch=100).start()
time.sleep(4)
b.kill()
t_kill = time.monotonic()
time.sleep(12)
load.stop()
after = [r for r in load.results if r.started + r.latency >= t_kill]
ok_after = [r for r in after if r.status == Status.OK]
first_ok = min(r.started + r.latency for r in ok_after if r.started >= t_kill) - t_kill
print(f"calls finishing after the kill: {len(after)}, OK {len(ok_after)}, statuses {load.statuses()}")
print(f"max latency of a call in flight at or after the kill: {max(r.latency for r in after):.2f}s")
print(f"first OK (from disk) for a call started after the kill: {first_ok:.2f}s")
late = [r.latency for r in after if r.started > t_kill + 6]
print(f"p50 latency of calls started >6s after the kill: {statistics.median(late) * 1000:.1f} ms")
w.kill()
b.stop()
shutil.rmtree(d, ignore_errors=True)
