"""Settings: defaults, file, environment overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.loading import load_settings, parse_duration, parse_size
from core.settings import DEFAULT_CONFIG, Settings


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


def test_the_shipped_file_holds_the_documented_defaults() -> None:
    s = load_settings(DEFAULT_CONFIG, env={})
    assert s.flat() == Settings().flat()
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert (s.source.thrift.host, s.source.thrift.port, s.source.thrift.protocol) == ("0.0.0.0", 4141, "compact")
    assert (s.router.topic_header, s.router.key_header, s.router.default_topic) == ("topic", "key", "events")
    assert s.router.allowed_topics == ("*",)
    assert s.buffer.directory == Path("var/buffer")
    assert s.drain.max_age == 7 * 86400
    assert s.web.port == 6066


def test_environment_overrides_a_key_and_says_where_each_value_came_from(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[source.thrift]\nport = 5000\n[router]\ndefault_topic = "x"\n')
    s = load_settings(cfg, env={"SPILLWAY_SOURCE_THRIFT_PORT": "6000", "SPILLWAY_KAFKA_BOOTSTRAP_SERVERS": "h:1",
                                "SPILLWAY_ROUTER_ALLOWED_TOPICS": "x,app.*", "SPILLWAY_BUFFER_FSYNC": "false"})
    assert s.source.thrift.port == 6000
    assert s.kafka.bootstrap_servers == "h:1"
    assert s.router.allowed_topics == ("x", "app.*")
    assert s.buffer.fsync is False
    assert s.origins["source.thrift.port"] == "env:SPILLWAY_SOURCE_THRIFT_PORT"
    assert s.origins["router.default_topic"] == str(cfg)
    assert s.origins["web.port"] == "default"


def test_spillway_config_names_another_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, "[web]\nport = 7070\n")
    assert load_settings(env={"SPILLWAY_CONFIG": str(cfg)}).web.port == 7070


@pytest.mark.parametrize("text, env, key", [
    ('[source.thrift]\nprotocol = "json"\n', {}, "source.thrift.protocol"),
    ('[buffer]\nmax_bytes = "lots"\n', {}, "buffer.max_bytes"),
    ('[failover]\ntimeout = "soon"\n', {}, "failover.timeout"),
    ('[kafka]\nbootstrap = "x"\n', {}, "kafka.bootstrap"),
    ("", {"SPILLWAY_WEB_PORT": "http"}, "web.port"),
    ("", {"SPILLWAY_WEB_PORT": "70000"}, "web.port"),
    ('[router]\ndefault_topic = "__x"\n', {}, "router.default_topic"),
    ('[router]\nallowed_topics = ["app.*"]\n', {}, "router.default_topic"),
    ("[source.thrift]\nport = true\n", {}, "source.thrift.port"),
])
def test_an_invalid_value_fails_with_the_key_named(tmp_path: Path, text: str, env: dict[str, str],
                                                   key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), env=env)
    assert err.value.key == key
    assert key in str(err.value)


def test_a_file_that_is_not_toml_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[kafka\n"), env={})


def test_durations_and_sizes_take_units() -> None:
    assert parse_duration("250ms", "k") == 0.25
    assert parse_duration("7d", "k") == 604800
    assert parse_duration(3, "k") == 3.0
    assert parse_size("64MiB", "k") == 64 * 2**20
    assert parse_size("10GB", "k") == 10 * 10**9
    with pytest.raises(ConfigError):
        parse_size("-1", "k")


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.web = None  # type: ignore[misc,assignment]
