"""TLS on the Thrift source, against a real worker and a real broker.

A throwaway PKI is made per test with the ``openssl`` command-line tool: a CA, a server
certificate for 127.0.0.1, a client certificate from that CA and one from another CA.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import Status, Worker, client, event, flume, read_topic, unique
from thriftpy2.protocol import TCompactProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.transport import TFramedTransportFactory

from agents.thrift_source import server_ssl_context
from core.errors import ConfigError
from core.loading import load_settings
from devtools.kafka import Broker

pytestmark = pytest.mark.kafka


@dataclass
class Pki:
    dir: Path

    def __getattr__(self, name: str) -> str:  # pki.ca_pem -> ".../ca.pem"
        return str(self.dir / name.replace("_", "."))


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(d: Path, name: str, ca: str, cn: str, ext: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    (d / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """CA ``ca``, server ``server`` (SAN 127.0.0.1), clients ``client`` (by ca) and ``stranger``
    (by another CA, ``other``)."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command-line tool is needed to make test certificates")
    d = tmp_path / "pki"
    d.mkdir()
    for ca in ("ca", "other"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN=spillway test {ca}",
                 cwd=d)
    _issue(d, "server", "ca", "127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _issue(d, "client", "ca", "client", "extendedKeyUsage=clientAuth\n")
    _issue(d, "stranger", "other", "client", "extendedKeyUsage=clientAuth\n")
    return Pki(d)


def tls_env(pki: Pki, verify_client: bool = False) -> dict[str, str]:
    env = {"SPILLWAY_SOURCE_THRIFT_TLS_CERTFILE": pki.server_pem,
           "SPILLWAY_SOURCE_THRIFT_TLS_KEYFILE": pki.server_key}
    if verify_client:
        env |= {"SPILLWAY_SOURCE_THRIFT_TLS_VERIFY_CLIENT": "true", "SPILLWAY_SOURCE_THRIFT_TLS_CAFILE": pki.ca_pem}
    return env


def tls_client(port: int, pki: Pki, cert: str | None = None) -> Any:
    """A Flume client (thriftpy2, framed compact) over TLS that checks the server's certificate."""
    ctx = ssl.create_default_context(cafile=pki.ca_pem)
    if cert is not None:
        ctx.load_cert_chain(getattr(pki, f"{cert}_pem"), getattr(pki, f"{cert}_key"))
    return make_client(flume.ThriftSourceProtocol, "127.0.0.1", port, proto_factory=TCompactProtocolFactory(),
                       trans_factory=TFramedTransportFactory(), timeout=10_000, ssl_context=ctx)


def refused(call: Callable[[], Any]) -> bool:
    """True when the call fails at the connection (never answered)."""
    try:
        call()
    except Exception:  # TTransportException, ssl.SSLError, ConnectionResetError...: all mean refused
        return True
    return False


def closed_by_server(s: socket.socket) -> bool:
    """Read to the end: a TLS alert may come first, then the server closes (or resets)."""
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True  # a socket.timeout (the server kept it open) raises instead


def test_a_tls_client_is_served_and_its_event_lands_in_kafka(
        kafka_up: Broker, make_worker: Callable[..., Worker], pki: Pki) -> None:
    topic = unique("tls")
    w = make_worker(kafka_up.bootstrap, **tls_env(pki))
    c = tls_client(w.thrift_port, pki)
    assert c.append(event("over tls", topic=topic, key="k")) == Status.OK
    assert c.appendBatch([event(f"b{i}", topic=topic) for i in range(20)]) == Status.OK
    for i in range(20):  # fresh connections, each sending its ClientHello at once
        fresh = tls_client(w.thrift_port, pki)
        assert fresh.append(event(f"fresh{i}", topic=topic)) == Status.OK
        fresh.close()
    got = read_topic(kafka_up.bootstrap, topic, 41, settle=0.5)
    assert sorted(r.value for r in got) == sorted([b"over tls"] + [f"b{i}".encode() for i in range(20)]
                                                  + [f"fresh{i}".encode() for i in range(20)])
    assert "TLS" in w.log_tail(200)


def test_a_plain_tcp_client_on_the_tls_port_fails_and_the_server_stays_up(
        kafka_up: Broker, make_worker: Callable[..., Worker], pki: Pki) -> None:
    topic = unique("tls-plain")
    w = make_worker(kafka_up.bootstrap, **tls_env(pki))
    good = tls_client(w.thrift_port, pki)
    assert good.append(event("before", topic=topic)) == Status.OK
    for _ in range(5):
        assert refused(lambda: client(w.thrift_port, timeout_ms=5_000).append(event("plain", topic=topic)))
    # a raw frame of garbage, and a connection that says nothing: closed, nothing else happens
    with socket.create_connection(("127.0.0.1", w.thrift_port), timeout=10) as s:
        s.sendall(struct.pack("!i", 100) + b"\x00" * 100)
        assert closed_by_server(s)
    assert good.append(event("after", topic=topic)) == Status.OK
    assert tls_client(w.thrift_port, pki).append(event("new", topic=topic)) == Status.OK
    got = read_topic(kafka_up.bootstrap, topic, 3, settle=1.0)
    assert sorted(r.value for r in got) == [b"after", b"before", b"new"]


def test_with_client_verification_only_a_certificate_from_the_ca_gets_in(
        kafka_up: Broker, make_worker: Callable[..., Worker], pki: Pki) -> None:
    topic = unique("mtls")
    w = make_worker(kafka_up.bootstrap, **tls_env(pki, verify_client=True))
    assert refused(lambda: tls_client(w.thrift_port, pki).append(event("no cert", topic=topic)))
    assert refused(lambda: tls_client(w.thrift_port, pki, cert="stranger").append(event("other ca", topic=topic)))
    assert refused(lambda: client(w.thrift_port, timeout_ms=5_000).append(event("plain", topic=topic)))
    c = tls_client(w.thrift_port, pki, cert="client")
    assert c.append(event("trusted", topic=topic)) == Status.OK
    assert c.append(event("trusted again", topic=topic)) == Status.OK
    got = read_topic(kafka_up.bootstrap, topic, 2, settle=1.5)
    assert sorted(r.value for r in got) == [b"trusted", b"trusted again"]


# -- settings: checked at load, the key named ---------------------------------------------------


def _load(tmp_path: Path, **env: str) -> Any:
    cfg = tmp_path / "spillway.toml"
    cfg.write_text("")
    return load_settings(cfg, env={f"SPILLWAY_SOURCE_THRIFT_{k.upper()}": v for k, v in env.items()})


def test_tls_settings_are_checked_at_load_with_the_key_named(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    cases = [
        ({"tls_certfile": str(tmp_path / "missing.pem")}, "source.thrift.tls_certfile"),
        ({"tls_certfile": pki.server_pem, "tls_keyfile": str(tmp_path / "missing.key")}, "source.thrift.tls_keyfile"),
        ({"tls_keyfile": pki.server_key}, "source.thrift.tls_keyfile"),
        ({"tls_certfile": str(tmp_path / "junk.pem"), "tls_keyfile": pki.server_key}, "source.thrift.tls_certfile"),
        ({"tls_certfile": pki.server_pem, "tls_keyfile": pki.client_key}, "source.thrift.tls_certfile"),
        ({"tls_certfile": pki.server_pem, "tls_keyfile": pki.server_key, "tls_verify_client": "true"},
         "source.thrift.tls_cafile"),
        ({"tls_certfile": pki.server_pem, "tls_keyfile": pki.server_key, "tls_cafile": pki.ca_pem},
         "source.thrift.tls_cafile"),
        ({"tls_verify_client": "true", "tls_cafile": pki.ca_pem}, "source.thrift.tls_verify_client"),
        ({"tls_certfile": pki.server_pem, "tls_keyfile": pki.server_key, "tls_verify_client": "true",
          "tls_cafile": str(tmp_path / "junk.pem")}, "source.thrift.tls_cafile"),
    ]
    for env, key in cases:
        with pytest.raises(ConfigError) as err:
            _load(tmp_path, **env)
        assert err.value.key == key, (env, err.value)
    s = _load(tmp_path, tls_certfile=pki.server_pem, tls_keyfile=pki.server_key, tls_verify_client="true",
              tls_cafile=pki.ca_pem).source.thrift
    ctx = server_ssl_context(s)
    assert ctx is not None and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert server_ssl_context(_load(tmp_path).source.thrift) is None  # default: plain TCP
