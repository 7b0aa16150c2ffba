"""Secured Kafka: TLS and SASL from spillway to a real broker.

One broker for the module (devtools.kafka) serves three listeners: PLAINTEXT (the tests read
back and administer through it), SASL_SSL with SCRAM-SHA-512 (users made by Kafka's own
``kafka-storage format --add-scram``) and SSL requiring a client certificate. The
certificates are made with openssl. Workers are real worker processes; the password must
never appear in check-config, /status or the logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, Status, Worker, client, event, free_port, read_topic, unique, wait_until

from agents.records import Record
from agents.segments import FILE_HEADER, encode_records
from devtools.kafka import Broker, Certificates, make_certificates

pytestmark = pytest.mark.kafka

ALICE = "alice-Pa55-w0rd"
BOB_OLD, BOB_NEW = "bob-old-Pa55", "bob-new-Pa55"
WRONG = "not-alices-Pa55"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("kafka-certs"))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, certs: Certificates) -> Iterator[Broker]:
    """One real broker with PLAINTEXT, SASL_SSL (SCRAM-SHA-512) and SSL (client certificates required)."""
    broker = Broker(tmp_path_factory.mktemp("kafka-secured"), port=free_port(), controller_port=free_port(),
                    heap=os.environ.get("KAFKA_SECURED_HEAP", "256m"), sasl_ssl_port=free_port(),
                    ssl_port=free_port(), ssl_keystore=certs.broker_keystore, ssl_truststore=certs.ca,
                    scram_users={"alice": ALICE, "bob": BOB_OLD})
    broker.start(timeout=120)
    yield broker
    broker.stop()


def sasl_env(certs: Certificates, user: str = "alice", password: str | None = ALICE,
             cafile: Path | None = None, **extra: str) -> dict[str, str]:
    env = {"SPILLWAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SPILLWAY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "SPILLWAY_KAFKA_SASL_USERNAME": user, "SPILLWAY_KAFKA_SSL_CAFILE": str(cafile or certs.ca), **extra}
    if password is not None:
        env["SPILLWAY_KAFKA_SASL_PASSWORD"] = password
    return env


def ssl_env(certs: Certificates, cert: Path, key: Path) -> dict[str, str]:
    return {"SPILLWAY_KAFKA_SECURITY_PROTOCOL": "SSL", "SPILLWAY_KAFKA_SSL_CAFILE": str(certs.ca),
            "SPILLWAY_KAFKA_SSL_CERTFILE": str(cert), "SPILLWAY_KAFKA_SSL_KEYFILE": str(key)}


def send(w: Worker, topic: str, calls: int, per_call: int, tag: str = "e") -> list[bytes]:
    """``calls`` appendBatch calls of ``per_call`` events; every one must be answered OK."""
    c = client(w.thrift_port)
    bodies: list[bytes] = []
    try:
        for i in range(calls):
            batch = [f"{tag}-{i}-{j}".encode() for j in range(per_call)]
            assert c.appendBatch([event(b, topic=topic) for b in batch]) == Status.OK
            bodies.extend(batch)
    finally:
        c.close()
    return bodies


def in_kafka(broker: Broker, topic: str, expected: int) -> list[bytes]:
    """What ``topic`` holds, read over the PLAINTEXT listener."""
    return sorted(r.value for r in read_topic(broker.bootstrap, topic, expected, timeout=60, settle=1.0))


def lines_with(w: Worker, text: str) -> list[str]:
    return [line for line in w.log_path.read_text(errors="replace").splitlines() if text in line]


def assert_alive_and_parked(w: Worker) -> dict[str, Any]:
    assert w.proc is not None and w.proc.poll() is None, "the worker exited"
    st = w.status()
    assert st["sink"]["state"] == "parked" and st["live"] == "disk"
    return st


def test_events_are_acknowledged_by_kafka_over_sasl_ssl_with_scram(
        secured: Broker, certs: Certificates, make_worker: Callable[..., Worker]) -> None:
    w = make_worker(secured.sasl_ssl_bootstrap, **sasl_env(certs))
    topic = unique("sasl-ssl")
    bodies = send(w, topic, calls=4, per_call=50)
    st = w.status()
    assert (st["counters"]["acked_kafka"], st["counters"]["acked_disk"]) == (200, 0)
    assert st["sink"]["state"] == "up"
    assert in_kafka(secured, topic, 200) == sorted(bodies)
    assert ALICE not in json.dumps(st) and ALICE not in w.get("/metrics")
    assert ALICE not in w.log_path.read_text(errors="replace")


def test_events_are_acknowledged_by_kafka_over_ssl_with_a_client_certificate(
        secured: Broker, certs: Certificates, make_worker: Callable[..., Worker]) -> None:
    w = make_worker(secured.ssl_bootstrap, **ssl_env(certs, certs.client_cert, certs.client_key))
    topic = unique("mtls")
    bodies = send(w, topic, calls=4, per_call=50)
    st = w.status()
    assert (st["counters"]["acked_kafka"], st["counters"]["acked_disk"]) == (200, 0)
    assert in_kafka(secured, topic, 200) == sorted(bodies)


def test_a_wrong_password_parks_kafka_buffers_the_events_says_why_and_recovers_once_kafka_accepts_it(
        secured: Broker, certs: Certificates, make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    """bob's password (from a file, as a mounted secret) is not the one the broker has; then the
    broker is given that password (kafka-configs --alter) and the worker recovers by itself."""
    secret = tmp_path / "bob.password"
    secret.write_text(BOB_NEW + "\n")
    w = make_worker(secured.sasl_ssl_bootstrap, **sasl_env(certs, user="bob", password=None,
                                                           SPILLWAY_KAFKA_SASL_PASSWORD_FILE=str(secret)))
    topic = unique("wrong-password")
    bodies = send(w, topic, calls=5, per_call=20)
    st = assert_alive_and_parked(w)
    assert (st["counters"]["acked_kafka"], st["counters"]["acked_disk"]) == (0, 100)
    time.sleep(8)  # several probes fail meanwhile (failover.max_penalty is 2s here)
    st = assert_alive_and_parked(w)
    assert st["sink"]["failures"] >= 3
    cause = lines_with(w, "authentication failed")
    print(f"\nlines naming the cause after {st['uptime_seconds']}s:", len(cause), *cause, sep="\n  ")
    assert 1 <= len(cause) <= 3, cause
    assert any("Kafka 'kafka' is DOWN" in line for line in cause)
    assert not lines_with(w, "Traceback")
    assert BOB_NEW not in w.log_path.read_text(errors="replace") and BOB_NEW not in json.dumps(st)

    secured.set_scram_password("bob", BOB_NEW)
    t0 = time.monotonic()
    wait_until(lambda: (s := w.status())["sink"]["state"] == "up" and s["counters"]["drained"] == 100,
               timeout=60, what="Kafka back and the buffer drained")
    print(f"back and drained {time.monotonic() - t0:.1f}s after the broker took bob's password")
    assert lines_with(w, "Kafka 'kafka' is BACK")
    live = send(w, topic, calls=1, per_call=20, tag="live")
    st = w.status()
    assert (st["counters"]["acked_kafka"], st["counters"]["acked_disk"]) == (20, 100)
    assert in_kafka(secured, topic, 120) == sorted(bodies + live)


@pytest.mark.parametrize("case", ["broker refuses our client certificate", "we do not trust the broker"])
def test_an_untrusted_certificate_parks_kafka_buffers_the_events_and_says_why(
        secured: Broker, certs: Certificates, make_worker: Callable[..., Worker], case: str) -> None:
    if case == "broker refuses our client certificate":
        w = make_worker(secured.ssl_bootstrap, **ssl_env(certs, certs.rogue_client_cert, certs.rogue_client_key))
        words = "certificate not trusted: the broker refuses this client's certificate"
    else:
        w = make_worker(secured.sasl_ssl_bootstrap, **sasl_env(certs, cafile=certs.rogue_ca))
        words = "certificate not trusted: the broker's certificate fails verification"
    bodies = send(w, unique("untrusted"), calls=3, per_call=10)
    time.sleep(5)  # probes fail meanwhile
    st = assert_alive_and_parked(w)
    assert (st["counters"]["acked_kafka"], st["counters"]["acked_disk"]) == (0, len(bodies))
    cause = lines_with(w, words)
    print(f"\n{case}: lines naming the cause:", len(cause), *cause, sep="\n  ")
    assert 1 <= len(cause) <= 3 and any("is DOWN" in line for line in cause), cause
    assert not lines_with(w, "Traceback")


# -- the commands: check-config never shows the password; replay uses the same settings ----------

def spillway(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "topology.cli", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=120)


def test_check_config_shows_the_password_as_stars_in_text_and_json(certs: Certificates) -> None:
    env = sasl_env(certs, SPILLWAY_KAFKA_BOOTSTRAP_SERVERS="broker:9094")
    text = spillway("check-config", env=env)
    assert text.returncode == 0, text.stderr
    assert ALICE not in text.stdout + text.stderr
    line = next(line for line in text.stdout.splitlines() if line.startswith("kafka.sasl_password "))
    assert '"********"' in line and "env:SPILLWAY_KAFKA_SASL_PASSWORD" in line
    doc = spillway("check-config", "--json", env=env)
    assert ALICE not in doc.stdout + doc.stderr
    assert json.loads(doc.stdout)["settings"]["kafka.sasl_password"]["value"] == "********"
    bad = spillway("check-config", env={**env, "SPILLWAY_KAFKA_SASL_PASSWORD_FILE": "/etc/hostname"})
    assert bad.returncode == 2 and "kafka.sasl_password_file" in bad.stderr
    assert ALICE not in bad.stdout + bad.stderr


def test_replay_sends_over_sasl_ssl_and_names_a_refused_password(
        secured: Broker, certs: Certificates, tmp_path: Path) -> None:
    topic = unique("replay-sasl")
    now = time.time_ns() // 1_000_000
    recs = [Record(topic, None, (("topic", topic.encode()),), f"r-{i}".encode(), now + i) for i in range(50)]
    segment = tmp_path / "00000000000000000001.seg"
    segment.write_bytes(FILE_HEADER + encode_records(recs))
    env = {"SPILLWAY_KAFKA_BOOTSTRAP_SERVERS": secured.sasl_ssl_bootstrap, "SPILLWAY_KAFKA_REQUEST_TIMEOUT": "5s"}

    refused = spillway("replay", str(segment), env={**env, **sasl_env(certs, password=WRONG)})
    assert refused.returncode == 1, refused.stderr
    assert "authentication failed" in refused.stderr and "nothing replayed" in refused.stderr
    assert WRONG not in refused.stdout + refused.stderr

    done = spillway("replay", "--json", str(segment), env={**env, **sasl_env(certs)})
    assert done.returncode == 0, done.stderr
    assert ALICE not in done.stdout + done.stderr
    assert in_kafka(secured, topic, 50) == sorted(r.value for r in recs)
