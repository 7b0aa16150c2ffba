"""Scale-out across two spillway nodes: with Flume's own client-side failover and load
balancing (``FailoverRpcClient``, ``LoadBalancingRpcClient`` round-robin with backoff) over
the Avro source, and behind HAProxy (Debian's package, TCP mode) with Thrift clients that
reconnect and retry. Kafka is unreachable for the first part, so both nodes spill to their disk
buffers; one node is SIGKILLed mid-stream. Every batch the client was told OK for must be
in Kafka once Kafka is back and the killed node has restarted and drained; duplicates are
measured and reported, not hidden."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Status, TcpProxy, Worker, client, event, free_port, read_topic, unique, wait_until

from devtools import flume
from devtools.kafka import Broker

pytestmark = pytest.mark.kafka

BATCH = 50

#: args: client.type, port1, port2, batches, topic. Prints "OK <b>" per acknowledged batch,
#: "RETRY <b> <why>" per EventDeliveryException (the same batch is sent again).
SENDER = r"""
import java.util.*;
import org.apache.flume.Event;
import org.apache.flume.EventDeliveryException;
import org.apache.flume.api.RpcClient;
import org.apache.flume.api.RpcClientFactory;
import org.apache.flume.event.EventBuilder;

public class ScaleOutSend {
  public static void main(String[] a) throws Exception {
    Properties p = new Properties();
    p.setProperty("client.type", a[0]);
    p.setProperty("hosts", "h1 h2");
    p.setProperty("hosts.h1", "127.0.0.1:" + a[1]);
    p.setProperty("hosts.h2", "127.0.0.1:" + a[2]);
    p.setProperty("max-attempts", "2");
    p.setProperty("host-selector", "round_robin");
    p.setProperty("backoff", "true");
    p.setProperty("maxBackoff", "5000");
    p.setProperty("batch-size", "50");
    p.setProperty("connect-timeout", "5000");
    p.setProperty("request-timeout", "15000");
    RpcClient client = RpcClientFactory.getInstance(p);
    int batches = Integer.parseInt(a[3]);
    for (int b = 0; b < batches; b++) {
      List<Event> batch = new ArrayList<>();
      for (int i = 0; i < 50; i++) {
        Map<String, String> h = new HashMap<>();
        h.put("topic", a[4]);
        h.put("seq", Integer.toString(b * 50 + i));
        batch.add(EventBuilder.withBody(("e" + (b * 50 + i)).getBytes(), h));
      }
      for (int attempt = 0; ; attempt++) {
        try {
          client.appendBatch(batch);
          System.out.println("OK " + b);
          break;
        } catch (EventDeliveryException e) {
          System.out.println("RETRY " + b + " " + e.getMessage());
          if (attempt > 100) { System.out.println("GAVEUP " + b); break; }
          Thread.sleep(200);
        }
      }
      System.out.flush();
      Thread.sleep(20);
    }
    client.close();
    System.out.println("DONE");
  }
}
"""


@pytest.mark.parametrize("client_type", ["default_failover", "default_loadbalance"])
def test_flumes_failover_and_load_balancing_clients_lose_nothing_when_a_node_is_killed(
        kafka_up: Broker, kafka_proxy: TcpProxy, make_worker: Callable[..., Worker], client_type: str) -> None:
    nodes: list[Worker] = []
    ports: list[int] = []
    for i in range(2):
        w = make_worker(kafka_up.bootstrap, name=f"node{i}", start=False)
        taken = {w.thrift_port, w.web_port, *ports, *(p for n in nodes for p in (n.thrift_port, n.web_port))}
        while (port := free_port()) in taken:
            pass
        w.env_extra |= {"SPILLWAY_SOURCE_AVRO_ENABLED": "true", "SPILLWAY_SOURCE_AVRO_HOST": "127.0.0.1",
                        "SPILLWAY_SOURCE_AVRO_PORT": str(port)}
        nodes.append(w.start())
        ports.append(port)
    topic, batches = unique(f"scale-{client_type}"), 120
    flume.compile_java(SENDER, "ScaleOutSend")
    kafka_proxy.cut()  # both nodes spill: the killed node's buffer must drain after its restart
    try:
        proc = subprocess.Popen(["java", "-Xmx256m", "-cp", f"{flume.compile_java(SENDER, 'ScaleOutSend')}:"
                                 f"{flume.classpath()}", "ScaleOutSend", client_type, str(ports[0]), str(ports[1]),
                                 str(batches), topic], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        acked: list[int] = []
        retries = 0
        killed_at = None
        assert proc.stdout is not None
        timer = threading.Timer(300, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                word, _, rest = line.strip().partition(" ")
                if word == "OK":
                    acked.append(int(rest))
                    if len(acked) == 40 and killed_at is None:
                        nodes[0].kill()  # SIGKILL, mid-stream
                        killed_at = len(acked)
                elif word == "RETRY":
                    retries += 1
                elif word == "GAVEUP":
                    raise AssertionError(f"the client gave up on batch {rest}")
        finally:
            timer.cancel()
        assert proc.wait(30) == 0 and killed_at == 40
        assert sorted(acked) == list(range(batches))  # every batch acknowledged in the end
        on_disk = nodes[1].status()["counters"]["acked_disk"]
        assert on_disk > 0
    finally:
        kafka_proxy.restore()
    nodes[0].start()  # the killed node comes back on its own buffer and drains it
    expected = batches * BATCH
    got = read_topic(kafka_up.bootstrap, topic, expected, timeout=120, settle=3.0)
    seqs = [int(dict(r.headers)["seq"]) for r in got]
    missing = set(range(expected)) - set(seqs)
    duplicates = len(seqs) - len(set(seqs))
    wait_until(lambda: nodes[0].status()["counters"]["drained"] > 0, 60, what="the restarted node's drain")
    drained = [n.status()["counters"]["drained"] for n in nodes]
    print(f"\n{client_type}: {expected} events acknowledged, {len(seqs)} records in Kafka, "
          f"{len(missing)} missing, {duplicates} duplicates ({100 * duplicates / expected:.2f} %), "
          f"{retries} EventDeliveryExceptions seen by the sender; drained after the outage: killed node "
          f"{drained[0]:.0f}, other node {drained[1]:.0f}")
    assert not missing
    assert drained[0] > 0 and drained[1] > 0  # each node's buffer went to Kafka, the killed one's too


HAPROXY = """
global
    maxconn 2000
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch
frontend thrift
    bind 127.0.0.1:{port}
    default_backend spillway
backend spillway
    balance roundrobin
    server node0 127.0.0.1:{p0} check inter 500ms fall 2 rise 2
    server node1 127.0.0.1:{p1} check inter 500ms fall 2 rise 2
"""


def test_two_nodes_behind_haproxy_with_retrying_thrift_clients_lose_nothing_when_a_node_is_killed(
        kafka_up: Broker, kafka_proxy: TcpProxy, make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.fail("HAProxy (Debian's haproxy package) is needed: scripts/setup.sh installs it")
    nodes = [make_worker(kafka_up.bootstrap, name=f"node{i}") for i in range(2)]
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(HAPROXY.format(port=port, p0=nodes[0].thrift_port, p1=nodes[1].thrift_port))
    proxy = subprocess.Popen([haproxy, "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    topic, batches, per_connection = unique("haproxy"), 120, 4
    acked: list[int] = []
    errors = 0
    try:
        wait_until(lambda: _connects(port), 10, what="HAProxy listening")
        kafka_proxy.cut()  # both nodes spill: the killed node's buffer must drain after its restart
        try:
            c = None
            for b in range(batches):
                batch = [event(f"e{b * BATCH + i}", topic=topic, seq=str(b * BATCH + i)) for i in range(BATCH)]
                if b == 30:  # SIGKILL at a moment of its own, likely inside a call
                    killer = threading.Timer(0.5, nodes[0].kill)
                    killer.start()
                if b == 60:  # spilling calls can outrun the timer: the node is dead before the last half
                    killer.join()
                for _attempt in range(100):
                    try:
                        if c is None:
                            c = client(port, timeout_ms=15_000)
                        status = c.appendBatch(batch)
                    except Exception:  # reset, refused, timed out: reconnect and send the batch again
                        status = None
                    if status == Status.OK:
                        acked.append(b)
                        break
                    errors += 1
                    with contextlib.suppress(Exception):
                        c.close()  # type: ignore[union-attr]
                    c = None
                    time.sleep(0.2)
                else:
                    raise AssertionError(f"batch {b} never acknowledged")
                if b % per_connection == per_connection - 1 and c is not None:  # new connections spread the load
                    c.close()
                    c = None
        finally:
            kafka_proxy.restore()
        assert acked == list(range(batches)) and nodes[0].proc is not None and nodes[0].proc.poll() is not None
        nodes[0].start()  # back on its own buffer: drains it
        expected = batches * BATCH
        got = read_topic(kafka_up.bootstrap, topic, expected, timeout=120, settle=3.0)
        seqs = [int(dict(r.headers)["seq"]) for r in got]
        missing = set(range(expected)) - set(seqs)
        duplicates = len(seqs) - len(set(seqs))
        wait_until(lambda: nodes[0].status()["counters"]["drained"] > 0, 60, what="the restarted node's drain")
        drained = [n.status()["counters"]["drained"] for n in nodes]
        print(f"\nhaproxy: {expected} events acknowledged, {len(seqs)} records in Kafka, {len(missing)} missing, "
              f"{duplicates} duplicates ({100 * duplicates / expected:.2f} %), {errors} failed attempts retried; "
              f"drained after the outage: killed node {drained[0]:.0f}, other node {drained[1]:.0f}")
        assert not missing
        assert drained[0] > 0 and drained[1] > 0
    finally:
        proxy.terminate()
        proxy.wait(10)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
