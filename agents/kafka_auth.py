"""TLS and SASL from spillway to Kafka: the aiokafka client arguments of one cluster's
settings, and what went wrong when Kafka refuses them.

:func:`kafka_auth` gives the keyword arguments every aiokafka client of a cluster is built
with (the Kafka sink's producers, hence the probe, the drain and ``spillway replay``).
The password is read here, when a producer is built, from ``kafka.sasl_password`` or the
file ``kafka.sasl_password_file`` names (a mounted secret: a new producer reads it again).

aiokafka says only "Unable to bootstrap" when the broker refuses our credentials or
certificate; the cause goes to its log. :func:`explain` opens one connection of its own
with the same arguments and names the cause (:func:`cause_of`, pure), so the sink's
error, and the supervisor's one "Kafka is DOWN" line, say "authentication failed" or
"certificate not trusted" instead. :class:`KafkaAuthError` is a
:class:`~aiokafka.errors.KafkaConnectionError`: Kafka is parked and events go to the disk
buffer as in any outage, and the probe brings it back once the credentials work.
Like the sink, this module may import aiokafka's errors; nothing here logs a password.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.conn import create_conn
from aiokafka.helpers import create_ssl_context

from core.settings import KafkaSettings

#: the first four bytes of a TLS alert record (content type 21, version 3.x), read as a
#: Kafka frame's length by a client speaking plain Kafka to a TLS listener
_TLS_RECORD = 0x15_03


class KafkaAuthError(kafka_errors.KafkaConnectionError):
    """The broker refuses this client's credentials or certificate (or we refuse the broker's)."""

    def __str__(self) -> str:  # the words only (aiokafka's errors put their class name first)
        return str(self.args[0]) if self.args else type(self).__name__


def sasl_password(settings: KafkaSettings) -> str:
    """The SASL password: ``sasl_password``, else the content of ``sasl_password_file`` (one
    trailing line break dropped, as ``echo`` writes it)."""
    if settings.sasl_password_file:
        with open(settings.sasl_password_file, encoding="utf-8") as fh:
            return fh.read().rstrip("\r\n")
    return settings.sasl_password.reveal()


def _no_passphrase() -> str:
    raise ValueError("the private key is encrypted; give kafka.ssl_keyfile an unencrypted key")


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    """Verifies the broker against ``ssl_cafile`` (else the system's CAs) and its host name
    (unless ``ssl_check_hostname`` is false); presents ``ssl_certfile``/``ssl_keyfile`` if set."""
    context = create_ssl_context(cafile=settings.ssl_cafile or None)
    if settings.ssl_certfile:
        # a callable, so an encrypted key fails here instead of OpenSSL prompting on the terminal
        context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile or None, password=_no_passphrase)
    context.check_hostname = settings.ssl_check_hostname
    return context


def kafka_auth(settings: KafkaSettings) -> dict[str, Any]:
    """The security keyword arguments of an aiokafka client (producer, client) of this cluster."""
    protocol = settings.security_protocol
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = ssl_context(settings)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        kwargs.update(sasl_mechanism=settings.sasl_mechanism, sasl_plain_username=settings.sasl_username,
                      sasl_plain_password=sasl_password(settings))
    return kwargs


def cause_of(exc: BaseException, settings: KafkaSettings) -> str | None:
    """What a failed connection says about our security settings, in words; None when it is
    not about them (the broker is down, unreachable, slow...)."""
    cause = exc.__cause__
    if isinstance(exc, kafka_errors.SaslAuthenticationFailed | kafka_errors.IllegalSaslStateError):
        said = exc.args[0] if exc.args and isinstance(exc.args[0], str) else type(exc).__name__
        return (f"authentication failed: the broker refuses {settings.sasl_mechanism} user "
                f"{settings.sasl_username!r} ({said}); check kafka.sasl_username and the password")
    if isinstance(exc, kafka_errors.UnsupportedSaslMechanismError):
        return (f"authentication failed: the broker does not enable SASL mechanism {settings.sasl_mechanism} "
                "on this listener (check kafka.sasl_mechanism)")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"certificate not trusted: the broker's certificate fails verification "
                f"({exc.verify_message}; check kafka.ssl_cafile and kafka.ssl_check_hostname)")
    if isinstance(exc, kafka_errors.KafkaConnectionError) and isinstance(cause, ssl.SSLError):
        reason = cause.reason or str(cause)
        if "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason):
            if not settings.ssl_certfile:
                return ("certificate not trusted: the broker requires a client certificate "
                        f"(set kafka.ssl_certfile; {reason})")
            return (f"certificate not trusted: the broker refuses this client's certificate "
                    f"{settings.ssl_certfile} ({reason})")
        return f"TLS failed: the broker ends the TLS session ({reason})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc} (is kafka.security_protocol right for this listener?)"
    plain = settings.security_protocol in ("PLAINTEXT", "SASL_PLAINTEXT")
    if plain and isinstance(cause, asyncio.IncompleteReadError) and (cause.expected or 0) >> 16 == _TLS_RECORD:
        return (f"TLS expected: the broker answers in TLS, but kafka.security_protocol is "
                f"{settings.security_protocol} (use SSL or SASL_SSL)")
    return None


async def explain(settings: KafkaSettings, seconds: float) -> KafkaAuthError | None:
    """Connect once to each bootstrap server with the cluster's security settings; a
    :class:`KafkaAuthError` naming the cause if one of them refuses them, else None."""
    kwargs = kafka_auth(settings)
    for server in settings.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            continue
        try:
            async with asyncio.timeout(seconds):
                conn = await create_conn(host.strip("[]"), int(port), client_id=settings.client_id,
                                         request_timeout_ms=int(seconds * 1000), **kwargs)
        except (kafka_errors.KafkaError, OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            text = cause_of(exc, settings)
            if text is not None:
                err = KafkaAuthError(f"{server.strip()}: {text}")
                err.__cause__ = exc
                return err
            continue
        conn.close()
    return None
