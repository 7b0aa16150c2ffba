"""spillway as a user installs it: the wheel ``pip wheel .`` builds, installed into a fresh
venv, run from an empty directory far from the checkout.

The venv is made without pip and gets the pinned dependencies by one ``.pth`` line naming
the project venv's site-packages (a path line adds that directory only: its ``.pth`` files,
the editable install of the checkout among them, are not run), so it needs no index; the
wheel goes in with ``pip --python VENV install --no-deps``. Every check first proves that
``core``, ``agents`` and ``topology`` import from the venv, never from the checkout.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import TcpProxy, free_port, read_topic, unique, wait_until

from devtools.kafka import Broker

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGES = ("core", "agents", "topology", "devtools")


@dataclass
class Install:
    wheel: Path
    venv: Path

    @property
    def site(self) -> Path:
        return self.venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"

    def env(self, **extra: str) -> dict[str, str]:
        """The user's environment: no PYTHONPATH, none of the test run's SPILLWAY_* settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_") and k != "PYTHONPATH"}
        env.update(extra)
        return env

    def run(self, *args: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / "spillway"), *args], cwd=cwd, env=self.env(**env),
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    base = tmp_path_factory.mktemp("install")
    # Build from a copy, so the build leaves nothing in the checkout (build/, *.egg-info).
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "var", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "tests", "bench",
        "*.so"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base / "dist"), str(src)],
                   check=True, cwd=base, timeout=300)
    (wheel,) = (base / "dist").glob("spillway-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    install = Install(wheel, venv)
    (install.site / "spillway-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, env=install.env(), cwd=base, timeout=120)
    return install


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_the_wheel_holds_every_module_and_data_file_of_the_packages(installed: Install) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    source = {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    assert len(source) > 40
    assert source - names == set()
    assert {"topology/commands/check_config.py", "topology/commands/init.py", "core/spillway.toml",
            "agents/flume.thrift", "topology/status_page.html", "devtools/kafka-pom.xml"} <= names
    # the Thrift decoder compiled by mypyc, next to its plain Python source
    assert {"agents/thrift_wire.py", f"agents/thrift_wire{sysconfig.get_config_var('EXT_SUFFIX')}"} <= names


def test_installed_packages_import_from_the_venv_not_the_checkout(installed: Install, empty: Path) -> None:
    code = "import core, agents, topology, devtools; print(*(m.__file__ for m in (core, agents, topology, devtools)))"
    out = subprocess.run([str(installed.venv / "bin" / "python"), "-c", code], cwd=empty, env=installed.env(),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(installed.site / pkg / "__init__.py") for pkg in PACKAGES]


def test_help_and_check_config_work_from_an_empty_directory(installed: Install, empty: Path) -> None:
    helped = installed.run("--help", cwd=empty)
    assert helped.returncode == 0, helped.stderr
    for command in ("worker", "check-config", "init", "send", "replay", "buffer"):
        assert f"  {command} " in helped.stdout
    checked = installed.run("check-config", cwd=empty)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines()[0] == f"# {installed.site / 'core' / 'spillway.toml'}: valid"
    assert 'kafka.producer.linger_ms = 0' in checked.stdout


def test_init_writes_a_commented_config_the_commands_then_read(installed: Install, empty: Path) -> None:
    first = installed.run("init", cwd=empty)
    assert first.returncode == 0, first.stderr
    written = (empty / "spillway.toml").read_text()
    assert written == (installed.site / "core" / "spillway.toml").read_text()
    assert written.count("\n#") > 50  # commented: every key says what it does
    again = installed.run("init", cwd=empty)
    assert (again.returncode, again.stderr.strip()) == (2, "spillway init: spillway.toml exists; --force overwrites it")
    (empty / "spillway.toml").write_text(written.replace("port = 6066", "port = 7123"))
    checked = installed.run("check-config", cwd=empty)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines()[0] == "# spillway.toml: valid"
    assert "web.port = 7123" in checked.stdout


def test_a_misspelt_variable_stops_the_installed_worker_naming_it(installed: Install, empty: Path) -> None:
    proc = installed.run("--datadir", str(empty / "faust"), "worker", cwd=empty, timeout=60,
                         SPILLWAY_KAFKA_BOOTSTRAP_SERVER="kafka-1:9092", SPILLWAY_WEB_PORT=str(free_port()),
                         SPILLWAY_SOURCE_THRIFT_PORT=str(free_port()))
    assert proc.returncode != 0
    assert ("SPILLWAY_KAFKA_BOOTSTRAP_SERVER: is no spillway setting; did you mean "
            "SPILLWAY_KAFKA_BOOTSTRAP_SERVERS?") in proc.stdout + proc.stderr


def test_a_foreign_agents_package_on_the_path_does_not_shadow_spillways(installed: Install, empty: Path,
                                                                        tmp_path: Path) -> None:
    """`agents` (and `core`, `devtools`) are also other PyPI projects' import names."""
    foreign = tmp_path / "foreign"
    for name in ("agents", "core", "devtools"):
        (foreign / name).mkdir(parents=True)
        (foreign / name / "__init__.py").write_text(f"raise ImportError('the other {name} project')\n")
    plain = subprocess.run([str(installed.venv / "bin" / "python"), "-c", "import agents"], cwd=empty,
                           env=installed.env(PYTHONPATH=str(foreign)), capture_output=True, text=True)
    assert "the other agents project" in plain.stderr  # they do shadow spillway's for a plain import
    checked = installed.run("check-config", cwd=empty, PYTHONPATH=str(foreign))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"# {installed.site / 'core' / 'spillway.toml'}: valid")


@pytest.fixture
def installed_worker(installed: Install, empty: Path,
                     kafka_up: Broker) -> Iterator[tuple[Install, Path, dict[str, str]]]:
    assert installed.run("init", cwd=empty).returncode == 0
    env = {"SPILLWAY_KAFKA_BOOTSTRAP_SERVERS": kafka_up.bootstrap, "SPILLWAY_SOURCE_THRIFT_HOST": "127.0.0.1",
           "SPILLWAY_SOURCE_THRIFT_PORT": str(free_port()), "SPILLWAY_WEB_PORT": str(free_port()),
           "SPILLWAY_FAILOVER_TIMEOUT": "2s", "SPILLWAY_FAILOVER_MAX_PENALTY": "2s",
           "SPILLWAY_BUFFER_SEGMENT_MAX_AGE": "1s", "SPILLWAY_DRAIN_INTERVAL": "0.5s",
           "SPILLWAY_KAFKA_PRODUCER_REQUEST_TIMEOUT_MS": "3000"}
    yield installed, empty, env


def health(web_port: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False



@pytest.mark.kafka
def test_installed_worker_starts_with_kafka_unreachable_acknowledges_and_delivers_when_it_is_back(
        installed_worker: tuple[Install, Path, dict[str, str]], kafka_up: Broker, kafka_proxy: TcpProxy) -> None:
    installed, cwd, env = installed_worker
    topic = unique("installed")
    kafka_proxy.cut()  # Kafka unreachable from the start
    log = open(cwd / "worker.log", "wb")
    worker = subprocess.Popen([str(installed.venv / "bin" / "spillway"), "--loglevel", "info", "worker"],
                              cwd=cwd, env=installed.env(**env), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    log.close()
    try:
        t0 = time.monotonic()
        wait_until(lambda: health(env["SPILLWAY_WEB_PORT"]) or worker.poll() is not None, 90, what="/health")
        assert worker.poll() is None, (cwd / "worker.log").read_text()
        started = time.monotonic() - t0
        wait_until(lambda: "thrift source listening" in (cwd / "worker.log").read_text(), 30, what="the source")
        assert "compiled decoder" in (cwd / "worker.log").read_text()  # the wheel's mypyc build runs
        sent = installed.run("send", "--count", "40", "--batch", "10", "--topic", topic, cwd=cwd, timeout=120, **env)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        # four calls, each answered OK while Kafka is unreachable: durable on disk
        assert [line for line in sent.stdout.splitlines() if line.startswith("call ")] == [
            f"call {n}: 10 event(s) OK" for n in range(1, 5)]
        assert "40 event(s) acknowledged" in sent.stdout
        assert list((cwd / "var" / "buffer").iterdir()), "the events went to the buffer under the cwd"
        kafka_proxy.restore()
        got = read_topic(kafka_up.bootstrap, topic, 40, timeout=90)
        assert {bytes(r.value).split()[1] for r in got} == {str(i).encode() for i in range(40)}  # every one
        print(f"installed worker: /health after {started:.1f}s with Kafka unreachable; 40 acked, {len(got)} in Kafka")
    finally:
        kafka_proxy.restore()
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
