"""A real, single-node Apache Kafka broker (KRaft) on loopback, for development and tests.

The broker is Apache Kafka's own, resolved from Maven Central with Maven
(``devtools/kafka-pom.xml``) and cached under ``~/.cache/spillway`` (or
``$SPILLWAY_KAFKA_CACHE``). Nothing here is mocked.

    python -m devtools.kafka fetch             # resolve and cache the jars
    python -m devtools.kafka run               # foreground (the Procfile's kafka: line)
    python -m devtools.kafka start|stop|status # background, with a pid file

Options (all commands): ``--port`` (9092), ``--controller-port`` (9093),
``--data-dir`` (var/kafka), ``--heap`` (512m).

Secured listeners, for tests of TLS and SASL (:class:`Broker`'s ``sasl_ssl_port`` and
``ssl_port``): a ``SASL_SSL`` listener (SCRAM-SHA-512, its users created by
``kafka-storage format --add-scram``) and an ``SSL`` listener that requires a client
certificate (``ssl.client.auth=required``), both beside the ``PLAINTEXT`` one.
:func:`make_certificates` makes what they need with openssl; :meth:`Broker.tool` runs one
of Kafka's own tools (``set_scram_password`` is ``kafka-configs --alter --add-config``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

KAFKA_VERSION = "4.1.1"
POM = Path(__file__).with_name("kafka-pom.xml")

LOG4J2 = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.state.name = state.change.logger
logger.state.level = warn
"""


def cache_dir() -> Path:
    root = os.environ.get("SPILLWAY_KAFKA_CACHE") or Path.home() / ".cache" / "spillway"
    return Path(root) / f"kafka-{KAFKA_VERSION}"


def fetch() -> Path:
    """Resolve Kafka's jars from Maven Central once; return the folder holding them."""
    libs = cache_dir() / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None:
        raise SystemExit("kafka: Maven (mvn) is needed to fetch Apache Kafka from Maven Central")
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        "mvn", "-q", "-B", "-f", str(POM),
        f"-Dkafka.version={KAFKA_VERSION}",
        "dependency:copy-dependencies", f"-DoutputDirectory={tmp}",
    ]
    print(f"kafka: fetching Apache Kafka {KAFKA_VERSION} from Maven Central ...", file=sys.stderr)
    subprocess.run(cmd, check=True)
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.write_text(KAFKA_VERSION)
    return libs


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class Broker:
    """One KRaft broker+controller process. ``start`` formats storage on first use."""

    data_dir: Path
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    log_level: str = "WARN"
    #: the port clients are told to use (a TCP proxy in front of the broker, in tests)
    advertised_port: int | None = None
    extra: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    #: a SASL_SSL listener (SCRAM-SHA-512) on this port, beside PLAINTEXT
    sasl_ssl_port: int | None = None
    #: an SSL listener on this port that requires a client certificate signed by ``ssl_truststore``
    ssl_port: int | None = None
    #: PEM: the broker's private key (unencrypted PKCS#8) followed by its certificate chain
    ssl_keystore: Path | None = None
    #: PEM: the CA certificates the broker trusts for client certificates
    ssl_truststore: Path | None = None
    #: SCRAM-SHA-512 users (name -> password), created when the storage is formatted
    scram_users: dict[str, str] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port or self.port}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        assert self.sasl_ssl_port is not None, "no SASL_SSL listener"
        return f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        assert self.ssl_port is not None, "no SSL listener"
        return f"127.0.0.1:{self.ssl_port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.advertised_port or self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str((self.data_dir / "logs").resolve()),
            "num.partitions": "3",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        props.update(self._secured_props())
        props.update(self.extra)
        self.config_path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.properties").write_text(LOG4J2.format(level=self.log_level))

    def _secured_props(self) -> dict[str, str]:
        """The SASL_SSL and SSL listeners (none unless their ports are set)."""
        secured = {name: port for name, port in (("SASL_SSL", self.sasl_ssl_port), ("SSL", self.ssl_port))
                   if port is not None}
        if not secured:
            return {}
        if self.ssl_keystore is None or self.ssl_truststore is None:
            raise ValueError("a secured listener needs ssl_keystore and ssl_truststore")
        plain = f"PLAINTEXT://127.0.0.1:{self.advertised_port or self.port}"
        extra = ",".join(f"{name}://127.0.0.1:{port}" for name, port in secured.items())
        props = {
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port},{extra}",
            "advertised.listeners": f"{plain},{extra}",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
                                              + ",".join(f"{name}:{name}" for name in secured),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(Path(self.ssl_keystore).resolve()),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(Path(self.ssl_truststore).resolve()),
        }
        if "SASL_SSL" in secured:
            props["sasl.enabled.mechanisms"] = "SCRAM-SHA-512"
            props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;")
        if "SSL" in secured:
            props["listener.name.ssl.ssl.client.auth"] = "required"
        return props

    def _java(self, libs: Path, main: str, *args: str) -> list[str]:
        return [
            "java", f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1" if os.environ.get("SPILLWAY_KAFKA_FAST_JIT") else "-Xshare:auto",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp", f"{libs}/*", main, *args,
        ]

    def prepare(self) -> list[str]:
        """Write the config, format storage if new; return the command that runs the broker."""
        libs = fetch()
        self._write_config()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            scram = [arg for name, password in self.scram_users.items()
                     for arg in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")]
            subprocess.run(
                self._java(libs, "kafka.tools.StorageTool", "format", f"--cluster-id={_cluster_id()}",
                           "-c", str(self.config_path), "--ignore-formatted", *scram),
                check=True, stdout=subprocess.DEVNULL,
            )
        return self._java(libs, "kafka.Kafka", str(self.config_path))

    def tool(self, main: str, *args: str, heap: str = "128m") -> subprocess.CompletedProcess[str]:
        """Run one of Kafka's own command-line tools (its main class, e.g.
        ``kafka.admin.ConfigCommand``) from the same jars; raises when it exits non-zero."""
        cmd = ["java", f"-Xmx{heap}", "-cp", f"{fetch()}/*", main, *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True)

    def set_scram_password(self, name: str, password: str) -> None:
        """Create or change a SCRAM-SHA-512 user, as ``kafka-configs --alter --add-config`` does
        (over the PLAINTEXT listener)."""
        self.tool("kafka.admin.ConfigCommand", "--bootstrap-server", self.bootstrap, "--alter",
                  "--add-config", f"SCRAM-SHA-512=[password={password}]", "--entity-type", "users",
                  "--entity-name", name)

    def start(self, timeout: float = 90.0) -> None:
        cmd = self.prepare()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        (self.data_dir / "broker.pid").write_text(str(self.proc.pid))
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"kafka exited with {self.proc.returncode}; see {self.log_path}")
            if asyncio.run(serves_metadata(self.bootstrap)):
                return
            time.sleep(0.3)
        raise TimeoutError(f"kafka did not serve metadata on {self.bootstrap} in {timeout}s")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean shutdown."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass(frozen=True)
class Certificates:
    """Test certificates made by :func:`make_certificates` (PEM files in ``directory``)."""

    directory: Path

    @property
    def ca(self) -> Path:
        """The CA that signs the broker's and the client's certificates."""
        return self.directory / "ca.pem"

    @property
    def broker_keystore(self) -> Path:
        """The broker's key, certificate (SAN 127.0.0.1, localhost) and the CA: ``ssl.keystore.type=PEM``."""
        return self.directory / "broker-keystore.pem"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"

    @property
    def rogue_ca(self) -> Path:
        """A second CA nobody trusts."""
        return self.directory / "rogue-ca.pem"

    @property
    def rogue_client_cert(self) -> Path:
        """A client certificate signed by the rogue CA: the broker does not trust it."""
        return self.directory / "rogue-client.pem"

    @property
    def rogue_client_key(self) -> Path:
        return self.directory / "rogue-client.key"


def make_certificates(directory: Path, days: int = 2) -> Certificates:
    """With openssl: a CA, a broker certificate for 127.0.0.1/localhost, a client certificate,
    and a second (rogue) CA with a client certificate of its own. Keys are unencrypted RSA."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    def ca(name: str) -> None:
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
                "-days", str(days), "-subj", f"/CN=spillway test {name}",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def cert(name: str, signer: str, extensions: str) -> None:
        (directory / f"{name}.ext").write_text(extensions)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{signer}.pem", "-CAkey", f"{signer}.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", str(days), "-extfile", f"{name}.ext")

    ca("ca")
    ca("rogue-ca")
    cert("broker", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    cert("client", "ca", "extendedKeyUsage=clientAuth\n")
    cert("rogue-client", "rogue-ca", "extendedKeyUsage=clientAuth\n")
    certs = Certificates(directory)
    certs.broker_keystore.write_text("".join((directory / name).read_text()
                                             for name in ("broker.key", "broker.pem", "ca.pem")))
    return certs


async def serves_metadata(bootstrap: str) -> bool:
    """True when the broker answers a metadata request listing at least one broker."""
    import logging

    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaError

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # "unable to connect" is the expected answer here

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000,
                            metadata_max_age_ms=1000, connections_max_idle_ms=5000)
    try:
        await asyncio.wait_for(client.bootstrap(), 5)
        return bool(client.cluster.brokers())
    except (TimeoutError, KafkaError, OSError):
        return False
    finally:
        await client.close()


def _pid_alive(pid: int) -> bool:
    """True when ``pid`` is a running Kafka broker (a stale pid file may name anything else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.kafka", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["fetch", "run", "start", "stop", "status"])
    ap.add_argument("--port", type=int, default=int(os.environ.get("KAFKA_PORT", 9092)))
    ap.add_argument("--controller-port", type=int, default=int(os.environ.get("KAFKA_CONTROLLER_PORT", 9093)))
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("KAFKA_DATA_DIR", "var/kafka")))
    ap.add_argument("--heap", default=os.environ.get("KAFKA_HEAP", "512m"))
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    broker = Broker(args.data_dir, args.port, args.controller_port, args.heap, args.log_level)
    pidfile = args.data_dir / "broker.pid"

    if args.command == "fetch":
        print(fetch())
    elif args.command == "run":
        cmd = broker.prepare()
        os.execvp(cmd[0], cmd)
    elif args.command == "start":
        if pidfile.exists() and _pid_alive(int(pidfile.read_text())):
            print(f"kafka: already running (pid {pidfile.read_text()})")
            return 0
        broker.start()
        pid = broker.proc.pid if broker.proc else "?"
        print(f"kafka: serving on {broker.bootstrap} (pid {pid}, log {broker.log_path})")
    elif args.command == "stop":
        if not pidfile.exists():
            return 0
        pid = int(pidfile.read_text())
        if _pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            for _ in range(300):
                if not _pid_alive(pid):
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)
    elif args.command == "status":
        ok = asyncio.run(serves_metadata(broker.bootstrap))
        print("up" if ok else "down")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
