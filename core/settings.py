"""Settings: the typed, frozen objects every stage is built from, one dataclass a section.

:mod:`core.loading` builds them from one TOML file and the environment, and validates them.
Durations (:data:`Duration`) are seconds, sizes (:data:`Size`) bytes. ``[kafka.producer]``
(:class:`ProducerSettings`) passes further settings to a cluster's aiokafka producers;
``[[interceptors]]`` are Flume's built-ins (:data:`INTERCEPTOR_TYPES`).

A password (``kafka.sasl_password``) is a :class:`Secret`: ``repr``, ``str`` and
:meth:`Settings.flat` (check-config) show ``********``, and no error message shows it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

#: the commented defaults, shipped in the package (``spillway init`` copies it)
DEFAULT_CONFIG = Path(__file__).resolve().with_name("spillway.toml")
#: the file read from the current directory when ``SPILLWAY_CONFIG`` names none
LOCAL_CONFIG = "spillway.toml"

Duration = typing.NewType("Duration", float)
Size = typing.NewType("Size", int)

TOPIC_RE = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
#: how a secret that is set is shown (check-config, /status, repr, logs)
REDACTED = "********"


class Secret:
    """A setting never shown in clear: ``repr`` and ``str`` give ``'********'`` (or ``''``
    when empty), :meth:`reveal` gives the value to whoever needs it (the Kafka client).
    Immutable and compared by value; not a dataclass, so the loader takes it as one value."""

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str = "") -> None:
        object.__setattr__(self, "_value", value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Secret is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __str__(self) -> str:
        return REDACTED if self._value else ""

    def __repr__(self) -> str:
        return repr(str(self))


#: the largest millisecond or byte count Kafka's protocol carries (int32)
_INT32 = 2**31 - 1


@dataclass(frozen=True, slots=True)
class ProducerSettings:
    """``[kafka.producer]``: further settings of a cluster's aiokafka producers, by aiokafka's
    names (Flume's ``kafka.producer.*`` with ``_`` for ``.``: ``linger.ms`` is ``linger_ms``).

    ``acks`` is always all and idempotence always on (the promise: :func:`_refuse_producer_key`);
    the connection and security settings are flat ``kafka.*`` keys, shared with the drain,
    the probes and ``spillway replay``."""

    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    #: extra wait to grow a batch; concurrent calls already share batches
    linger_ms: int = 0
    #: one Kafka record batch (keep <= the broker's message.max.bytes)
    max_batch_size: Size = Size(1_000_000)
    #: the largest request; 0: max_batch_size + 4 KiB, at least 1 MiB
    max_request_size: Size = Size(0)
    #: one produce request's timeout; also bounds a producer's start and stop and a probe
    request_timeout_ms: int = 5_000
    metadata_max_age_ms: int = 30_000
    #: the wait before a failed request is retried
    retry_backoff_ms: int = 100
    #: close a connection idle this long; 0: never
    connections_max_idle_ms: int = 540_000

    def request_size(self) -> int:
        """``max_request_size`` as aiokafka takes it (0 resolved)."""
        return self.max_request_size or max(self.max_batch_size + 4096, 1_048_576)


#: key -> (lowest, highest) for the producer's numbers
PRODUCER_RANGES: Mapping[str, tuple[int, int]] = {
    "linger_ms": (0, _INT32),
    "max_batch_size": (1, _INT32),
    "max_request_size": (0, _INT32),
    "request_timeout_ms": (1, _INT32),
    "metadata_max_age_ms": (0, _INT32),
    "retry_backoff_ms": (0, _INT32),
    "connections_max_idle_ms": (0, _INT32),
}


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """One Kafka cluster: ``[kafka]`` is the primary; each ``[[kafka.secondary]]`` table has the
    same keys (its own ``name``, its own ``producer`` table, no further ``secondary``) and is
    tried, in order, after it. A secondary inherits nothing from ``[kafka]``: what it does not
    set has the default."""

    name: str = "kafka"
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "spillway"
    producers: int = 1
    #: TLS and SASL to this cluster (agents/kafka_auth.py builds the client's arguments)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str = ""
    sasl_password: Secret = Secret()
    #: a file holding the password (a mounted secret), instead of sasl_password
    sasl_password_file: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_check_hostname: bool = True
    producer: ProducerSettings = field(default_factory=ProducerSettings)
    secondary: tuple[KafkaSettings, ...] = ()

    @property
    def clusters(self) -> tuple[KafkaSettings, ...]:
        """Every cluster by priority: this one, then its secondaries."""
        return (self, *self.secondary)

    # The names of the producer settings before [kafka.producer] (KAFKA_ALIASES), in their units.

    @property
    def request_timeout(self) -> Duration:
        return Duration(self.producer.request_timeout_ms / 1000)

    @property
    def linger(self) -> Duration:
        return Duration(self.producer.linger_ms / 1000)

    @property
    def metadata_max_age(self) -> Duration:
        return Duration(self.producer.metadata_max_age_ms / 1000)

    @property
    def max_batch_bytes(self) -> Size:
        return self.producer.max_batch_size

    @property
    def compression(self) -> str:
        return self.producer.compression_type


@dataclass(frozen=True, slots=True)
class ThriftSettings:
    host: str = "0.0.0.0"
    port: int = 4141
    protocol: Literal["compact", "binary"] = "compact"
    max_frame_bytes: Size = Size(16_384_000)
    max_batch_events: int = 10_000
    max_event_bytes: Size = Size(1_000_000)
    max_headers: int = 64
    max_header_bytes: Size = Size(16_384)
    max_connections: int = 1024
    idle_timeout: Duration = Duration(300.0)
    frame_timeout: Duration = Duration(30.0)
    max_inflight_events_per_connection: int = 100_000
    tls_certfile: str = ""
    tls_keyfile: str = ""
    tls_cafile: str = ""
    tls_verify_client: bool = False
    #: listen with SO_REUSEPORT (several processes share the port); set by itself with node.processes > 1
    reuse_port: bool = False


@dataclass(frozen=True, slots=True)
class AvroSettings:
    """Flume's AvroSource (Avro RPC over Netty framing, the Avro handshake): what Flume's SDK
    clients, ``flume-ng avro-client`` and every upstream ``AvroSink`` speak."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = 41414
    compression: Literal["none", "deflate"] = "none"
    max_frame_bytes: Size = Size(16_384_000)
    max_buffers: int = 65_536
    max_batch_events: int = 10_000
    max_event_bytes: Size = Size(1_000_000)
    max_headers: int = 64
    max_header_bytes: Size = Size(16_384)
    max_connections: int = 1024
    idle_timeout: Duration = Duration(300.0)
    frame_timeout: Duration = Duration(30.0)
    handshake_timeout: Duration = Duration(30.0)
    tls_certfile: str = ""
    tls_keyfile: str = ""
    tls_cafile: str = ""
    tls_verify_client: bool = False
    #: listen with SO_REUSEPORT (several processes share the port); set by itself with node.processes > 1
    reuse_port: bool = False


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Flume's HTTPSource with its JSONHandler: POST a JSON array of {"headers", "body"} events."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = 8090
    path: str = "/"
    max_body_bytes: Size = Size(16_384_000)
    max_batch_events: int = 10_000
    max_event_bytes: Size = Size(1_000_000)
    max_headers: int = 64
    max_header_bytes: Size = Size(16_384)
    max_connections: int = 1024
    idle_timeout: Duration = Duration(75.0)
    frame_timeout: Duration = Duration(30.0)
    tls_certfile: str = ""
    tls_keyfile: str = ""
    tls_cafile: str = ""
    tls_verify_client: bool = False
    #: listen with SO_REUSEPORT (several processes share the port); set by itself with node.processes > 1
    reuse_port: bool = False


@dataclass(frozen=True, slots=True)
class SourceSettings:
    thrift: ThriftSettings = field(default_factory=ThriftSettings)
    avro: AvroSettings = field(default_factory=AvroSettings)
    http: HttpSettings = field(default_factory=HttpSettings)


@dataclass(frozen=True, slots=True)
class RouterSettings:
    topic_header: str = "topic"
    key_header: str = "key"
    default_topic: str = "events"
    allowed_topics: tuple[str, ...] = ("*",)

    def topic_allowed(self, topic: str) -> bool:
        return any(fnmatch.fnmatchcase(topic, pattern) for pattern in self.allowed_topics)


@dataclass(frozen=True, slots=True)
class BufferSettings:
    directory: Path = Path("var/buffer")
    max_bytes: Size = Size(10 * 2**30)
    segment_max_bytes: Size = Size(64 * 2**20)
    segment_max_age: Duration = Duration(60.0)
    fsync: bool = True


@dataclass(frozen=True, slots=True)
class FailoverSettings:
    timeout: Duration = Duration(5.0)
    max_penalty: Duration = Duration(30.0)
    probe_interval: Duration = Duration(0.5)


@dataclass(frozen=True, slots=True)
class DrainSettings:
    interval: Duration = Duration(1.0)
    max_age: Duration = Duration(7 * 86400.0)
    archive_directory: Path = Path("var/archive")
    max_events_per_second: int = 200_000
    batch_events: int = 2_000
    #: chunks of batch_events in flight at once (and read ahead): progress is fsynced once a window
    window: int = 8
    #: with live calls flowing, the drain sends about this many events per live event (one
    #: chunk at a time); 0: no sharing, the drain runs as if there were no live traffic
    live_share: float = 1.5
    timeout: Duration = Duration(30.0)
    #: the drain sends through producers of its own (one more connection per cluster): live
    #: calls never wait in the drain's requests or behind its batches; false: it shares the live ones
    own_producer: bool = True


@dataclass(frozen=True, slots=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 6066


# -- Flume's interceptors (applied in order by agents/interceptors.py) ---------------------------


@dataclass(frozen=True, slots=True)
class TimestampInterceptorSettings:
    """Sets ``header`` to the call's receive time in ms since the epoch, as decimal text."""

    type: Literal["timestamp"] = "timestamp"
    header: str = "timestamp"
    preserve_existing: bool = False


@dataclass(frozen=True, slots=True)
class HostInterceptorSettings:
    """Sets ``header`` to this machine's IP address (``use_ip``) or its host name."""

    type: Literal["host"] = "host"
    header: str = "host"
    use_ip: bool = True
    preserve_existing: bool = False


@dataclass(frozen=True, slots=True)
class StaticInterceptorSettings:
    """Sets header ``key`` to ``value`` (both required)."""

    type: Literal["static"] = "static"
    key: str = ""
    value: str = ""
    preserve_existing: bool = True


@dataclass(frozen=True, slots=True)
class RemoveHeaderInterceptorSettings:
    """Removes the header ``name``, those listed in ``from_list`` (split by the regular expression
    ``list_separator``) and those whose whole name matches ``match_regex``: at least one of the three."""

    type: Literal["remove_header"] = "remove_header"
    name: str = ""
    from_list: str = ""
    list_separator: str = r"\s*,\s*"
    match_regex: str = ""


@dataclass(frozen=True, slots=True)
class UUIDInterceptorSettings:
    """Sets ``header`` to ``prefix`` + a random UUID (version 4): a stable id for each event."""

    type: Literal["uuid"] = "uuid"
    header: str = "id"
    preserve_existing: bool = True
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class RegexFilterInterceptorSettings:
    """Keeps only the events whose body (as UTF-8) ``regex`` finds, or drops them (``exclude_events``)."""

    type: Literal["regex_filter"] = "regex_filter"
    regex: str = ""
    exclude_events: bool = False


InterceptorSettings = (TimestampInterceptorSettings | HostInterceptorSettings | StaticInterceptorSettings
                       | RemoveHeaderInterceptorSettings | UUIDInterceptorSettings | RegexFilterInterceptorSettings)

#: ``type`` -> its settings
INTERCEPTOR_TYPES: Mapping[str, type[InterceptorSettings]] = {
    "timestamp": TimestampInterceptorSettings,
    "host": HostInterceptorSettings,
    "static": StaticInterceptorSettings,
    "remove_header": RemoveHeaderInterceptorSettings,
    "uuid": UUIDInterceptorSettings,
    "regex_filter": RegexFilterInterceptorSettings,
}

#: keys a type cannot do without (remove_header needs one of its three options instead)
INTERCEPTOR_REQUIRED: Mapping[str, tuple[str, ...]] = {"static": ("key", "value"), "regex_filter": ("regex",)}


@dataclass(frozen=True, slots=True)
class NodeSettings:
    #: worker processes on this node (``spillway worker --processes N`` wins over it)
    processes: int = 1


@dataclass(frozen=True, slots=True)
class ProcessPlace:
    """Which of the node's worker processes this one is: told by the parent process
    (``topology/processes.py``) in ``SPILLWAY_PROCESS_INDEX``/``_COUNT``/``_DRAIN_ONLY``,
    never read from the file."""

    index: int = 0
    count: int = 1
    #: drains a buffer directory a run with more processes left behind; its sources do not listen
    drain_only: bool = False


#: fields of :class:`Settings` that are no key of the file nor of the environment
NOT_LOADED: frozenset[str] = frozenset({"origins", "process"})


@dataclass(frozen=True, slots=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    source: SourceSettings = field(default_factory=SourceSettings)
    router: RouterSettings = field(default_factory=RouterSettings)
    buffer: BufferSettings = field(default_factory=BufferSettings)
    failover: FailoverSettings = field(default_factory=FailoverSettings)
    drain: DrainSettings = field(default_factory=DrainSettings)
    web: WebSettings = field(default_factory=WebSettings)
    node: NodeSettings = field(default_factory=NodeSettings)
    #: ``[[interceptors]]``, in the order they apply
    interceptors: tuple[InterceptorSettings, ...] = ()
    #: where each key's value came from: "default", the file's path, or "env:NAME"
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: this process's place among the node's worker processes (from the environment, not the file)
    process: ProcessPlace = field(default_factory=ProcessPlace, compare=False)

    def flat(self) -> dict[str, Any]:
        """Every key as ``section.key`` → value (for check-config and /status)."""
        out: dict[str, Any] = {}

        def walk(obj: Any, prefix: str) -> None:
            for f in dataclasses.fields(obj):
                if f.name in NOT_LOADED:
                    continue
                value = getattr(obj, f.name)
                if dataclasses.is_dataclass(value):
                    walk(value, f"{prefix}{f.name}.")
                elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
                    for i, item in enumerate(value):
                        walk(item, f"{prefix}{f.name}[{i}].")
                else:
                    out[f"{prefix}{f.name}"] = str(value) if isinstance(value, Secret) else value

        walk(self, "")
        return out
