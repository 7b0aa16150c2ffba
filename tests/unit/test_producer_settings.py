"""``[kafka.producer]``: aiokafka's producer settings passed through, their old flat names as
aliases, the settings that would break the promise refused, each error naming the key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agents.kafka_sink import KafkaSink
from core.errors import ConfigError
from core.loading import load_settings
from core.settings import DEFAULT_CONFIG, KafkaSettings, ProducerSettings, Settings, Size


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    p = tmp_path / "s.toml"
    p.write_text(text)
    return load_settings(p, env=env or {})


def refused(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return str(info.value)


EVERY_KEY = """[kafka.producer]
compression_type = "zstd"
linger_ms = 7
max_batch_size = "512KiB"
max_request_size = 2000000
request_timeout_ms = 4500
metadata_max_age_ms = 60000
retry_backoff_ms = 250
connections_max_idle_ms = 0
acks = "all"
enable_idempotence = true
"""


def test_the_shipped_file_sets_the_table_and_none_of_the_old_names() -> None:
    text = DEFAULT_CONFIG.read_text()
    assert "[kafka.producer]" in text
    s = load_settings(DEFAULT_CONFIG, env={})
    assert s.kafka.producer == ProducerSettings()
    assert s.origins["kafka.producer.linger_ms"] == str(DEFAULT_CONFIG)
    flat = s.flat()
    assert {"kafka.producer.compression_type", "kafka.producer.linger_ms", "kafka.producer.max_batch_size",
            "kafka.producer.request_timeout_ms", "kafka.producer.metadata_max_age_ms"} <= set(flat)
    # one name for one setting: check-config and /status print the table's names only
    assert not {"kafka.compression", "kafka.linger", "kafka.max_batch_bytes", "kafka.request_timeout",
                "kafka.metadata_max_age"} & set(flat)


def test_every_table_key_reaches_the_aiokafka_producer(tmp_path: Path) -> None:
    s = load(tmp_path, EVERY_KEY)
    p = s.kafka.producer
    assert p == ProducerSettings(compression_type="zstd", linger_ms=7, max_batch_size=Size(524288),
                                 max_request_size=Size(2000000), request_timeout_ms=4500,
                                 metadata_max_age_ms=60000, retry_backoff_ms=250, connections_max_idle_ms=0)

    async def build() -> dict[str, object]:
        producer = KafkaSink(s.kafka)._build()
        try:
            acc, sender, client = producer._message_accumulator, producer._sender, producer.client
            return {"codec": producer._compression_type, "linger": acc._linger_time, "batch": acc._batch_size,
                    "request": producer._max_request_size, "timeout": producer._request_timeout_ms,
                    "metadata": client._metadata_max_age_ms, "backoff": client._retry_backoff,
                    "idle": client._connections_max_idle_ms, "acks": sender._acks,
                    "idempotent": producer._txn_manager is not None, "client_id": client._client_id}
        finally:
            await producer.stop()

    got = asyncio.run(build())
    assert got == {"codec": "zstd", "linger": 0.007, "batch": 524288, "request": 2000000, "timeout": 4500,
                   "metadata": 60000, "backoff": 0.25, "idle": None, "acks": -1, "idempotent": True,
                   "client_id": "spillway"}


def test_max_request_size_0_is_the_batch_plus_4_kib_and_at_least_1_mib(tmp_path: Path) -> None:
    assert ProducerSettings().request_size() == 1_048_576
    assert load(tmp_path, "[kafka.producer]\nmax_batch_size = 2000000\nmax_request_size = 0\n"
                          "[source.thrift]\nmax_event_bytes = 1000000\n").kafka.producer.request_size() == 2_004_096


@pytest.mark.parametrize("old, value, new, expected", [
    ("compression", '"lz4"', "compression_type", "lz4"),
    ("linger", '"5ms"', "linger_ms", 5),
    ("max_batch_bytes", '"256KiB"', "max_batch_size", 262144),
    ("request_timeout", '"3s"', "request_timeout_ms", 3000),
    ("metadata_max_age", '"1m"', "metadata_max_age_ms", 60000),
])
def test_an_old_name_is_an_alias_of_its_table_key(tmp_path: Path, old: str, value: str, new: str,
                                                  expected: object) -> None:
    from_file = load(tmp_path, f"[kafka]\n{old} = {value}\n")
    assert getattr(from_file.kafka.producer, new) == expected
    assert from_file.origins[f"kafka.producer.{new}"] == str(tmp_path / "s.toml")
    env_name = f"SPILLWAY_KAFKA_{old.upper()}"
    from_env = load(tmp_path, "", {env_name: value.strip('"')})
    assert getattr(from_env.kafka.producer, new) == expected
    assert from_env.origins[f"kafka.producer.{new}"] == f"env:{env_name}"


def test_the_old_names_still_read_in_their_units() -> None:
    k = KafkaSettings(producer=ProducerSettings(request_timeout_ms=2500, linger_ms=4, metadata_max_age_ms=9000))
    assert (k.request_timeout, k.linger, k.metadata_max_age) == (2.5, 0.004, 9.0)
    assert (k.max_batch_bytes, k.compression) == (1_000_000, "none")


def test_setting_a_value_by_both_names_names_both(tmp_path: Path) -> None:
    msg = refused(tmp_path, '[kafka]\nlinger = "5ms"\n[kafka.producer]\nlinger_ms = 5\n')
    assert msg == "kafka.linger: and kafka.producer.linger_ms are one setting: set kafka.producer.linger_ms only"
    msg = refused(tmp_path, "", {"SPILLWAY_KAFKA_REQUEST_TIMEOUT": "3s",
                                 "SPILLWAY_KAFKA_PRODUCER_REQUEST_TIMEOUT_MS": "3000"})
    assert msg.startswith("SPILLWAY_KAFKA_REQUEST_TIMEOUT: and SPILLWAY_KAFKA_PRODUCER_REQUEST_TIMEOUT_MS are one")


def test_the_environment_overrides_the_file_whichever_name_each_uses(tmp_path: Path) -> None:
    s = load(tmp_path, "[kafka.producer]\nlinger_ms = 9\n", {"SPILLWAY_KAFKA_LINGER": "2ms"})
    assert s.kafka.producer.linger_ms == 2


def test_a_bad_alias_value_names_the_alias(tmp_path: Path) -> None:
    assert refused(tmp_path, '[kafka]\nlinger = "soon"\n').startswith("kafka.linger: expected a duration")
    assert refused(tmp_path, '[kafka]\ncompression = "brotli"\n').startswith("kafka.compression: must be one of")


@pytest.mark.parametrize("value", ['"all"', "-1", '"-1"', '"ALL"'])
def test_acks_all_is_accepted_and_changes_nothing(tmp_path: Path, value: str) -> None:
    assert load(tmp_path, f"[kafka.producer]\nacks = {value}\n").kafka.producer == ProducerSettings()


@pytest.mark.parametrize("value", ["1", "0", '"1"', '"0"', '"leader"'])
def test_acks_other_than_all_is_refused_naming_the_key(tmp_path: Path, value: str) -> None:
    msg = refused(tmp_path, f"[kafka.producer]\nacks = {value}\n")
    assert msg.startswith("kafka.producer.acks: must be all (-1)")
    assert "acks=all" in msg


def test_idempotence_off_is_refused_and_on_is_accepted(tmp_path: Path) -> None:
    msg = refused(tmp_path, "[kafka.producer]\nenable_idempotence = false\n")
    assert msg.startswith("kafka.producer.enable_idempotence: must be true")
    assert load(tmp_path, "[kafka.producer]\nenable_idempotence = true\n").kafka.producer == ProducerSettings()
    assert refused(tmp_path, '[kafka.producer]\nenable_idempotence = "no"\n').startswith(
        "kafka.producer.enable_idempotence: expected true or false")


@pytest.mark.parametrize("key, points_to", [
    ("security_protocol", "kafka.security_protocol"),
    ("sasl_mechanism", "kafka.sasl_mechanism"),
    ("sasl_plain_username", "kafka.sasl_username"),
    ("sasl_plain_password", "kafka.sasl_password"),
    ("ssl_cafile", "kafka.ssl_cafile"),
    ("ssl_context", "kafka.ssl_cafile"),
    ("bootstrap_servers", "kafka.bootstrap_servers"),
    ("client_id", "kafka.client_id"),
])
def test_a_connection_or_security_key_in_the_table_points_to_its_flat_key(tmp_path: Path, key: str,
                                                                          points_to: str) -> None:
    msg = refused(tmp_path, f'[kafka.producer]\n{key} = "hunter2-secret"\n')
    assert msg.startswith(f"kafka.producer.{key}: is a ")
    assert msg.endswith(f"set {points_to}")
    assert "hunter2" not in msg  # a value is never repeated: it may be a password


@pytest.mark.parametrize("key", ["partitioner", "key_serializer", "value_serializer", "transactional_id",
                                 "transaction_timeout_ms", "api_version", "sasl_kerberos_service_name",
                                 "sasl_oauth_token_provider"])
def test_an_aiokafka_argument_that_is_not_exposed_is_refused_with_why(tmp_path: Path, key: str) -> None:
    msg = refused(tmp_path, f'[kafka.producer]\n{key} = "x"\n')
    assert msg.startswith(f"kafka.producer.{key}: not ")


@pytest.mark.parametrize("line, message", [
    ("linger_ms = -1", "kafka.producer.linger_ms: must be between 0 and 2147483647, got -1"),
    ("request_timeout_ms = 0", "kafka.producer.request_timeout_ms: must be between 1 and 2147483647, got 0"),
    ("max_batch_size = 0", "kafka.producer.max_batch_size: must be between 1 and 2147483647, got 0"),
    ("metadata_max_age_ms = 3000000000", "kafka.producer.metadata_max_age_ms: must be between 0 and 2147483647"),
    ('linger_ms = "5ms"', "kafka.producer.linger_ms: expected an integer, got '5ms'"),
    ("retry_backoff_ms = true", "kafka.producer.retry_backoff_ms: expected an integer, got True"),
    ('compression_type = "brotli"', "kafka.producer.compression_type: must be one of 'none', 'gzip', 'snappy'"),
    ('max_batch_size = "lots"', "kafka.producer.max_batch_size: expected a size"),
    ("max_request_size = 1000", "kafka.producer.max_request_size: must be at least max_batch_size (1000000)"),
])
def test_a_bad_value_names_the_key(tmp_path: Path, line: str, message: str) -> None:
    assert refused(tmp_path, f"[kafka.producer]\n{line}\n").startswith(message)


@pytest.mark.parametrize("line, message", [
    ("lingr_ms = 5", "kafka.producer.lingr_ms: unknown key; did you mean linger_ms?"),
    ('"linger.ms" = 5', "kafka.producer.linger.ms: unknown key; did you mean linger_ms?"),
    ('"batch.size" = 5', "kafka.producer.batch.size: unknown key; did you mean max_batch_size?"),
    ('compression.type = "lz4"', "kafka.producer.compression: unknown key; did you mean compression_type?"),
    ("frobnicate = 1", "kafka.producer.frobnicate: unknown key"),
])
def test_an_unknown_key_fails_naming_it_and_the_nearest(tmp_path: Path, line: str, message: str) -> None:
    assert refused(tmp_path, f"[kafka.producer]\n{line}\n") == message


def test_the_table_itself_must_be_a_table(tmp_path: Path) -> None:
    assert refused(tmp_path, '[kafka]\nproducer = "fast"\n').startswith("kafka.producer: expected a table")


SECONDARY = """[kafka.producer]
linger_ms = 3
[[kafka.secondary]]
name = "dr"
bootstrap_servers = "dr:9092"
request_timeout = "2s"
[kafka.secondary.producer]
compression_type = "gzip"
[[kafka.secondary]]
name = "far"
bootstrap_servers = "far:9092"
"""


def test_a_secondary_has_its_own_table_and_inherits_nothing(tmp_path: Path) -> None:
    s = load(tmp_path, SECONDARY)
    primary, dr, far = s.kafka.clusters
    assert primary.producer == ProducerSettings(linger_ms=3)
    assert dr.producer == ProducerSettings(compression_type="gzip", request_timeout_ms=2000)
    assert far.producer == ProducerSettings()  # like every other key of a secondary: the default
    assert s.origins["kafka.secondary[0].producer.request_timeout_ms"] == str(tmp_path / "s.toml")


def test_a_secondary_refuses_what_the_primary_refuses_naming_its_own_key(tmp_path: Path) -> None:
    base = '[[kafka.secondary]]\nname = "dr"\n'
    assert refused(tmp_path, base + "[kafka.secondary.producer]\nacks = 1\n").startswith(
        "kafka.secondary[0].producer.acks: must be all")
    assert refused(tmp_path, base + '[kafka.secondary.producer]\nsasl_plain_password = "x"\n').endswith(
        "set kafka.secondary[0].sasl_password")
    assert refused(tmp_path, base + 'linger = "1ms"\n[kafka.secondary.producer]\nlinger_ms = 1\n').startswith(
        "kafka.secondary[0].linger: and kafka.secondary[0].producer.linger_ms are one setting")
    assert refused(tmp_path, base + "[kafka.secondary.producer]\nlinger_ms = -5\n").startswith(
        "kafka.secondary[0].producer.linger_ms: must be between")
