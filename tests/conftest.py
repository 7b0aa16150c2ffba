"""Fixtures: one real Kafka broker per session (never mocked, never skipped), workers per test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import TcpProxy, Worker, free_port

from devtools.kafka import Broker


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run long soak and chaos tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    deselected = [i for i in items if i.get_closest_marker("slow")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [i for i in items if not i.get_closest_marker("slow")]


@pytest.fixture(scope="session")
def kafka_proxy() -> Iterator[TcpProxy]:
    """A TCP proxy in front of the broker: everyone reaches Kafka through it, so a test can
    cut or stall the connection for real."""
    with TcpProxy(free_port()) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory, kafka_proxy: TcpProxy) -> Iterator[Broker]:
    """A real Apache Kafka broker (KRaft, single node) on free loopback ports, advertised
    through ``kafka_proxy``. If it cannot start, every test that needs it errors: it is never
    skipped."""
    broker = Broker(tmp_path_factory.mktemp("kafka"), port=kafka_proxy.upstream_port,
                    controller_port=free_port(), advertised_port=kafka_proxy.port,
                    heap=os.environ.get("KAFKA_HEAP", "512m"))
    broker.start(timeout=120)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def strict_proxy() -> Iterator[TcpProxy]:
    """The TCP proxy in front of ``strict_kafka``."""
    with TcpProxy(free_port()) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def strict_kafka(tmp_path_factory: pytest.TempPathFactory, strict_proxy: TcpProxy) -> Iterator[Broker]:
    """A second real broker with ``auto.create.topics.enable=false``, as production clusters
    run: a topic that was not created is refused for good (UNKNOWN_TOPIC_OR_PARTITION).
    Tests create their topics with :func:`helpers.create_topics`. Started on first use."""
    broker = Broker(tmp_path_factory.mktemp("kafka-strict"), port=strict_proxy.upstream_port,
                    controller_port=free_port(), advertised_port=strict_proxy.port,
                    heap=os.environ.get("KAFKA_HEAP", "384m"),
                    extra={"auto.create.topics.enable": "false"})
    broker.start(timeout=120)
    yield broker
    broker.stop()


@pytest.fixture
def strict_up(strict_kafka: Broker, strict_proxy: TcpProxy) -> Iterator[Broker]:
    """``strict_kafka``, restarted first if an earlier test left it stopped; the proxy passes."""
    strict_proxy.restore()
    if not strict_kafka.running:
        strict_kafka.start(timeout=120)
    yield strict_kafka
    strict_proxy.restore()


@pytest.fixture
def kafka_up(kafka: Broker, kafka_proxy: TcpProxy) -> Iterator[Broker]:
    """The session broker, restarted first if an earlier test left it stopped; the proxy passes."""
    kafka_proxy.restore()
    if not kafka.running:
        kafka.start(timeout=120)
    yield kafka
    kafka_proxy.restore()


@pytest.fixture
def make_worker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def make(bootstrap: str, name: str = "worker", start: bool = True, **env: str) -> Worker:
        w = Worker(tmp_path / name, bootstrap, env_extra=env)
        workers.append(w)
        return w.start() if start else w

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for w in workers:
        w.kill()
        if failed:
            print(f"\n--- {w.directory.name} log ---\n{w.log_tail(80)}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
