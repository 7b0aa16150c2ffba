"""TLS and SASL settings to Kafka: validation that names the key, a password never shown,
the aiokafka arguments they give, and how a refused connection is put into words."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from aiokafka import errors as kafka_errors

from agents.kafka_auth import cause_of, kafka_auth, sasl_password
from core.errors import ConfigError
from core.loading import load_settings
from core.settings import KafkaSettings, Secret, Settings
from devtools.kafka import Certificates, make_certificates

PASSWORD = "s3cr3t-Pa55"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def load(tmp_path: Path, kafka: str, env: dict[str, str] | None = None) -> Settings:
    cfg = tmp_path / "s.toml"
    cfg.write_text("[kafka]\n" + kafka)
    return load_settings(cfg, env=env or {})


def sasl_ssl(certs: Certificates, extra: str = "") -> str:
    return (f'security_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "alice"\n'
            f'ssl_cafile = "{certs.ca}"\n{extra}')


def test_plaintext_is_the_default_and_passes_no_credentials() -> None:
    k = KafkaSettings()
    assert (k.security_protocol, k.sasl_mechanism, k.ssl_check_hostname) == ("PLAINTEXT", "PLAIN", True)
    assert kafka_auth(k) == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_gives_aiokafka_the_mechanism_the_user_the_password_and_a_verifying_context(
        tmp_path: Path, certs: Certificates) -> None:
    s = load(tmp_path, sasl_ssl(certs, f'sasl_password = "{PASSWORD}"\n'))
    kwargs = kafka_auth(s.kafka)
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == (
        "SCRAM-SHA-512", "alice", PASSWORD)
    ctx = kwargs["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname is True
    assert len(ctx.get_ca_certs()) == 1


def test_ssl_with_a_client_certificate_and_no_hostname_check(tmp_path: Path, certs: Certificates) -> None:
    s = load(tmp_path, f'security_protocol = "SSL"\nssl_cafile = "{certs.ca}"\nssl_certfile = "{certs.client_cert}"\n'
                       f'ssl_keyfile = "{certs.client_key}"\nssl_check_hostname = false\n')
    kwargs = kafka_auth(s.kafka)
    assert set(kwargs) == {"security_protocol", "ssl_context"}
    assert kwargs["ssl_context"].check_hostname is False
    assert kwargs["ssl_context"].verify_mode is ssl.CERT_REQUIRED  # the certificate is still verified


def test_the_password_can_come_from_the_environment(tmp_path: Path, certs: Certificates) -> None:
    s = load(tmp_path, sasl_ssl(certs), env={"SPILLWAY_KAFKA_SASL_PASSWORD": PASSWORD})
    assert sasl_password(s.kafka) == PASSWORD
    assert s.origins["kafka.sasl_password"] == "env:SPILLWAY_KAFKA_SASL_PASSWORD"


def test_the_password_file_is_read_without_its_line_break_each_time_a_client_is_built(
        tmp_path: Path, certs: Certificates) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    s = load(tmp_path, sasl_ssl(certs, f'sasl_password_file = "{secret}"\n'))
    assert kafka_auth(s.kafka)["sasl_plain_password"] == PASSWORD
    secret.write_text("rotated")
    assert kafka_auth(s.kafka)["sasl_plain_password"] == "rotated"


def test_the_password_is_never_shown_in_repr_str_or_the_flat_settings(tmp_path: Path, certs: Certificates) -> None:
    s = load(tmp_path, sasl_ssl(certs, f'sasl_password = "{PASSWORD}"\n'))
    assert PASSWORD not in repr(s) and PASSWORD not in str(s) and PASSWORD not in repr(s.kafka)
    assert PASSWORD not in f"{s.kafka.sasl_password}" and PASSWORD not in repr(s.kafka.sasl_password)
    flat = s.flat()
    assert flat["kafka.sasl_password"] == "********"
    assert PASSWORD not in repr(flat)
    assert Settings().flat()["kafka.sasl_password"] == ""  # unset: shown as empty
    assert s.kafka.sasl_password == Secret(PASSWORD) and s.kafka.sasl_password.reveal() == PASSWORD


def test_a_secondary_cluster_has_its_own_security_settings(tmp_path: Path, certs: Certificates) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(f'[kafka]\nbootstrap_servers = "a:9092"\n[[kafka.secondary]]\nname = "dr"\n'
                   f'bootstrap_servers = "b:9093"\n{sasl_ssl(certs, f"sasl_password = {PASSWORD!r}")}\n')
    s = load_settings(cfg, env={})
    primary, dr = s.kafka.clusters
    assert primary.security_protocol == "PLAINTEXT" and dr.security_protocol == "SASL_SSL"
    assert kafka_auth(dr)["sasl_plain_password"] == PASSWORD
    assert s.flat()["kafka.secondary[0].sasl_password"] == "********"
    assert PASSWORD not in repr(s)


@pytest.mark.parametrize(("kafka", "key", "words"), [
    ('security_protocol = "SASL_SSL"\nsasl_password = "x"\n', "kafka.sasl_username", "is required"),
    ('security_protocol = "SASL_PLAINTEXT"\nsasl_username = "u"\n', "kafka.sasl_password", "is required"),
    ('security_protocol = "SASL_PLAINTEXT"\nsasl_username = "u"\nsasl_password = "x"\n'
     'sasl_password_file = "/etc/hostname"\n', "kafka.sasl_password_file", "set one of them"),
    ('security_protocol = "SASL_PLAINTEXT"\nsasl_username = "u"\nsasl_password_file = "/no/such/file"\n',
     "kafka.sasl_password_file", "no such file"),
    ('security_protocol = "SASL_SSL"\nsasl_mechanism = "GSSAPI"\n', "kafka.sasl_mechanism", "must be one of"),
    ('security_protocol = "TLS"\n', "kafka.security_protocol", "must be one of"),
    ('sasl_username = "u"\n', "kafka.sasl_username", "security_protocol is PLAINTEXT"),
    ('sasl_password = "x"\n', "kafka.sasl_password", "security_protocol is PLAINTEXT"),
    ('security_protocol = "SASL_PLAINTEXT"\nsasl_username = "u"\nsasl_password = "x"\nssl_cafile = "/etc/hostname"\n',
     "kafka.ssl_cafile", "no TLS"),
    ('security_protocol = "SSL"\nssl_cafile = "/no/ca.pem"\n', "kafka.ssl_cafile", "no such file"),
    ('security_protocol = "SSL"\nssl_keyfile = "/etc/hostname"\n', "kafka.ssl_keyfile", "ssl_certfile is not"),
    ('security_protocol = "SSL"\nssl_cafile = "/etc/hostname"\n', "kafka.ssl_cafile", "do not load"),
    ('security_protocol = "SSL"\nssl_check_hostname = "no"\n', "kafka.ssl_check_hostname", "true or false"),
])
def test_a_bad_security_setting_fails_at_start_naming_the_key(tmp_path: Path, kafka: str, key: str,
                                                              words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, kafka)
    assert info.value.key == key
    assert words in str(info.value)


def test_an_empty_or_unreadable_password_file_fails_without_showing_it(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("\n")
    base = f'security_protocol = "SASL_PLAINTEXT"\nsasl_username = "u"\nsasl_password_file = "{secret}"\n'
    with pytest.raises(ConfigError, match="is empty"):
        load(tmp_path, base)
    secret.write_bytes(b"\xff\xfe" + PASSWORD.encode())
    with pytest.raises(ConfigError) as info:
        load(tmp_path, base)
    assert info.value.key == "kafka.sasl_password_file" and PASSWORD not in str(info.value)


def test_a_password_of_the_wrong_type_is_refused_without_its_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, 'security_protocol = "SASL_PLAINTEXT"\nsasl_username = "u"\nsasl_password = 987654321\n')
    assert info.value.key == "kafka.sasl_password" and "987654321" not in str(info.value)


def test_a_certificate_and_key_that_do_not_match_or_an_encrypted_key_are_refused(
        tmp_path: Path, certs: Certificates) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f'security_protocol = "SSL"\nssl_certfile = "{certs.client_cert}"\n'
                       f'ssl_keyfile = "{certs.rogue_client_key}"\n')
    assert info.value.key == "kafka.ssl_certfile" and "do not load" in str(info.value)
    encrypted = tmp_path / "encrypted.key"
    import subprocess

    subprocess.run(["openssl", "pkey", "-in", str(certs.client_key), "-aes256", "-passout", "pass:pw",
                    "-out", str(encrypted)], check=True, capture_output=True)
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f'security_protocol = "SSL"\nssl_certfile = "{certs.client_cert}"\n'
                       f'ssl_keyfile = "{encrypted}"\n')
    assert info.value.key == "kafka.ssl_keyfile" and "encrypted" in str(info.value)


# -- the cause of a refused connection, in words --------------------------------------------------

SCRAM = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="alice",
                      sasl_password=Secret(PASSWORD))


def refused_by_tls(reason: str) -> kafka_errors.KafkaConnectionError:
    exc = kafka_errors.KafkaConnectionError("Connection at 127.0.0.1:9094 closed")
    tls = ssl.SSLError(1, f"[SSL: {reason}] alert")
    tls.reason = reason  # type: ignore[misc]
    exc.__cause__ = tls
    return exc


def test_a_wrong_password_reads_authentication_failed() -> None:
    text = cause_of(kafka_errors.SaslAuthenticationFailed("invalid credentials with SASL mechanism SCRAM-SHA-512"),
                    SCRAM)
    assert text is not None and text.startswith("authentication failed") and "'alice'" in text
    assert PASSWORD not in text
    text = cause_of(kafka_errors.UnsupportedSaslMechanismError("x"), SCRAM)
    assert text is not None and text.startswith("authentication failed") and "sasl_mechanism" in text


def test_an_untrusted_certificate_reads_certificate_not_trusted() -> None:
    broker = ssl.SSLCertVerificationError(1, "certificate verify failed")
    broker.verify_message = "self-signed certificate in certificate chain"
    text = cause_of(broker, SCRAM)
    assert text is not None and text.startswith("certificate not trusted: the broker's certificate")
    mtls = KafkaSettings(security_protocol="SSL", ssl_certfile="/etc/client.pem")
    text = cause_of(refused_by_tls("SSLV3_ALERT_CERTIFICATE_UNKNOWN"), mtls)
    assert text is not None and text.startswith("certificate not trusted: the broker refuses this client's")
    text = cause_of(refused_by_tls("SSLV3_ALERT_BAD_CERTIFICATE"), KafkaSettings(security_protocol="SSL"))
    assert text is not None and "requires a client certificate" in text


def test_plain_kafka_spoken_to_a_tls_listener_is_named() -> None:
    exc = kafka_errors.KafkaConnectionError("closed")
    exc.__cause__ = asyncio.IncompleteReadError(b"\x15\x03\x03", 0x15030300)
    text = cause_of(exc, KafkaSettings())
    assert text is not None and "TLS expected" in text


def test_an_outage_is_not_taken_for_a_security_problem() -> None:
    assert cause_of(ConnectionRefusedError(111, "Connect call failed"), SCRAM) is None
    assert cause_of(kafka_errors.KafkaConnectionError("Connection at h:1 closed"), SCRAM) is None
    assert cause_of(TimeoutError(), SCRAM) is None
