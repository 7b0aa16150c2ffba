"""Loading the settings: one TOML file, environment overrides, one typed, validated, frozen object
(the dataclasses of :mod:`core.settings`).

Load order for every key: the default below, then one file (the one ``SPILLWAY_CONFIG``
names, else ``./spillway.toml`` when the current directory has one, else the commented
defaults shipped in the package, :data:`DEFAULT_CONFIG`), then ``SPILLWAY_<SECTION>_<KEY>``
from the environment (upper case, dots to underscores: ``source.thrift.port`` is
``SPILLWAY_SOURCE_THRIFT_PORT``). A bad value, an unknown key, or a ``SPILLWAY_*``
variable that is no setting (:data:`NOT_SETTINGS` lists the project's other variables)
fails at start with a :class:`~core.errors.ConfigError` that names it, and the nearest key.

``[kafka.producer]`` passes further settings to the cluster's aiokafka producers
(:class:`ProducerSettings`); the flat names those settings had before it are aliases
(:data:`KAFKA_ALIASES`). Settings that would break the promise are refused.

Durations take seconds as a number or a string with a unit (``250ms``, ``5s``,
``10m``, ``2h``, ``7d``); sizes take bytes as a number or a string with a unit
(``64MiB``, ``10GB``).

``[[interceptors]]`` is an array of tables, each with a ``type`` (Flume's built-ins:
:data:`INTERCEPTOR_TYPES`) and that type's keys; it is set in the file only (no
environment override) and its keys are named ``interceptors[<index>].<key>``.

A password (``kafka.sasl_password``) is a :class:`Secret`: ``repr``, ``str`` and
:meth:`Settings.flat` (check-config) show ``********``, and no error message shows it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import ssl
import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import orjson

from core.errors import ConfigError
from core.settings import (
    DEFAULT_CONFIG,
    INTERCEPTOR_REQUIRED,
    INTERCEPTOR_TYPES,
    LOCAL_CONFIG,
    NOT_LOADED,
    PRODUCER_RANGES,
    TOPIC_RE,
    AvroSettings,
    Duration,
    HttpSettings,
    InterceptorSettings,
    KafkaSettings,
    ProcessPlace,
    ProducerSettings,
    RemoveHeaderInterceptorSettings,
    Secret,
    Settings,
    Size,
    ThriftSettings,
    WebSettings,
)

_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_UNITS_B = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
            "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_duration(value: Any, key: str) -> Duration:
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d)?\s*", value)
        if not m:
            raise ConfigError(key, f"expected a duration like '5s', '250ms' or '7d', got {value!r}")
        seconds = float(m.group(1)) * _UNITS_S[m.group(2) or "s"]
    else:
        raise ConfigError(key, f"expected a duration, got {value!r}")
    if seconds < 0:
        raise ConfigError(key, "must not be negative")
    return Duration(seconds)


def parse_size(value: Any, key: str) -> Size:
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a size, got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+)\s*([a-zA-Z]*)\s*", value)
        if not m or m.group(2).lower() not in _UNITS_B:
            raise ConfigError(key, f"expected a size like '64MiB' or 1048576, got {value!r}")
        size = int(m.group(1)) * _UNITS_B[m.group(2).lower()]
    else:
        raise ConfigError(key, f"expected a size, got {value!r}")
    if size < 0:
        raise ConfigError(key, "must not be negative")
    return Size(size)


def _coerce(tp: Any, value: Any, key: str, from_env: bool) -> Any:
    if tp is Secret:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got a {type(value).__name__} (value not shown: a secret)")
        return Secret(value)
    if tp is Duration:
        return parse_duration(value, key)
    if tp is Size:
        return parse_size(value, key)
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if tp is bool:
        if from_env and isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp is int or tp is float:  # a TOML number, or its text in the environment
        kinds, what = (int, "an integer") if tp is int else (int | float, "a number")
        if from_env and isinstance(value, str):
            try:
                value = tp(value)
            except ValueError:
                raise ConfigError(key, f"expected {what}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ConfigError(key, f"expected {what}, got {value!r}")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(key, f"expected a path, got {value!r}")
        return Path(value)
    if origin is tuple:
        if from_env and isinstance(value, str):
            value = _env_list(value, key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"expected a list of strings, got {value!r}")
        return tuple(value)
    raise ConfigError(key, f"unsupported setting type {tp!r}")  # pragma: no cover


def _env_list(value: str, key: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(key, f"invalid JSON list: {exc}") from None
        return parsed  # type: ignore[no-any-return]
    return [part.strip() for part in value.split(",") if part.strip()]


def _build(cls: type, table: Mapping[str, Any], prefix: str, origin: str,
           env: Mapping[str, str], origins: dict[str, str]) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(prefix.rstrip(".") or "<root>", "expected a table")
    renamed: dict[str, str] = {}
    if cls is KafkaSettings:
        table, env, renamed = _kafka_table(table, prefix, env)
    elif cls is ProducerSettings:
        table = _producer_table(table, prefix)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name not in NOT_LOADED}
    for name in table:
        if name not in known:
            raise ConfigError(f"{prefix}{name}", "unknown key" + _nearest(name, known, _HINTS))
    kwargs: dict[str, Any] = {}
    for name in known:
        key = f"{prefix}{name}"
        tp = hints[name]
        if cls is Settings and name == "interceptors":
            kwargs[name] = _build_interceptors(table.get(name, []), origin, env, origins)
            continue
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, table.get(name, {}), f"{key}.", origin, env, origins)  # type: ignore[arg-type]
            continue
        element = _table_array_of(tp)
        if element is not None:  # an array of tables: from the file only, no environment overrides
            items = table.get(name, [])
            if not isinstance(items, list):
                raise ConfigError(key, "expected an array of tables ([[...]])")
            kwargs[name] = tuple(_build(element, item, f"{key}[{i}].", origin, {}, origins)
                                 for i, item in enumerate(items))
            origins[key] = origin if name in table else "default"
            continue
        env_name = _env_name(key)
        if env_name in env:
            kwargs[name] = _coerce(tp, env[env_name], key, from_env=True)
            origins[key] = f"env:{env_name}"
        elif name in table:
            kwargs[name] = _coerce(tp, table[name], key, from_env=False)
            origins[key] = origin
        else:
            origins[key] = "default"
    origins.update(renamed)
    return cls(**kwargs)


def _env_name(key: str) -> str:
    return "SPILLWAY_" + key.upper().replace(".", "_")


def _nearest(name: str, candidates: typing.Iterable[str], hints: Mapping[str, str] | None = None) -> str:
    """``"; did you mean X?"`` for the candidate closest to a misspelt name, else ``""``."""
    if hints and name in hints:
        return f"; did you mean {hints[name]}?"
    # compared without the prefix all share, which would make any two names look alike
    stripped = {c.removeprefix("SPILLWAY_"): c for c in candidates}
    close = difflib.get_close_matches(name.removeprefix("SPILLWAY_"), sorted(stripped), n=1, cutoff=0.6)
    return f"; did you mean {stripped[close[0]]}?" if close else ""


# -- [kafka.producer]: aliases, refusals ---------------------------------------------------------


def _ms(value: Any, key: str) -> int:
    return round(parse_duration(value, key) * 1000)


def _as_is(value: Any, key: str) -> Any:
    return value


#: ``kafka.<old name>`` -> (``kafka.producer.<key>``, the old value in that key's unit): the names
#: these settings had before ``[kafka.producer]``, kept working. Setting both names is an error.
KAFKA_ALIASES: Mapping[str, tuple[str, Callable[[Any, str], Any]]] = {
    "compression": ("compression_type", _as_is),
    "linger": ("linger_ms", _ms),
    "max_batch_bytes": ("max_batch_size", parse_size),
    "request_timeout": ("request_timeout_ms", _ms),
    "metadata_max_age": ("metadata_max_age_ms", _ms),
}

#: aiokafka producer arguments ``[kafka.producer]`` refuses, and why (the connection and security
#: ones are flat ``kafka.*`` keys: :func:`_refuse_producer_key`)
PRODUCER_REFUSED: Mapping[str, str] = {
    "key_serializer": "not settable: spillway sends each event's key and body as the client sent them",
    "value_serializer": "not settable: spillway sends each event's key and body as the client sent them",
    "partitioner": "not settable: spillway picks the partition itself (murmur2 of the key, as Java's client)",
    "transactional_id": "not settable: spillway's producers are idempotent, not transactional",
    "transaction_timeout_ms": "not settable: spillway's producers are idempotent, not transactional",
    "api_version": "not settable: aiokafka ignores it; the protocol version is agreed with each broker",
    "loop": "not a setting",
}
#: Flume's (Java's) names that are no close spelling of ours
_HINTS: Mapping[str, str] = {"batch": "max_batch_size", "batch_size": "max_batch_size",
                             "batch.size": "max_batch_size"}
#: aiokafka's name -> ours, for the security settings
_SECURITY_NAMES: Mapping[str, str] = {"sasl_plain_username": "sasl_username", "sasl_plain_password": "sasl_password",
                                      "ssl_context": "ssl_cafile"}


def _refuse_producer_key(name: str, value: Any, key: str, cluster: str, from_env: bool) -> bool:
    """Raise for a ``[kafka.producer]`` key that would break the promise or lives elsewhere;
    True for one accepted as a no-op (``acks = "all"``, ``enable_idempotence = true``), False
    for any other key. ``key`` is what the message names; ``cluster`` the cluster's prefix."""
    if name == "acks":
        if str(value).strip().lower() not in ("all", "-1"):
            raise ConfigError(key, f"must be all (-1), got {value!r}: a client is told OK only for events "
                              "every in-sync replica has (acks=all)")
        return True
    if name == "enable_idempotence":
        if _coerce(bool, value, key, from_env) is not True:
            raise ConfigError(key, "must be true: without idempotence a retried batch can be written twice "
                              "or out of order")
        return True
    def flat(name: str) -> str:  # the cluster's own key for it, as the user wrote this one
        return _env_name(cluster + name) if from_env else cluster + name

    if name in ("bootstrap_servers", "client_id"):
        raise ConfigError(key, f"is a connection setting, not a producer one: set {flat(name)}")
    if "kerberos" in name or "oauth" in name:
        raise ConfigError(key, f"not supported: {flat('sasl_mechanism')} is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    if name == "security_protocol" or name.startswith(("ssl_", "sasl_")):
        target = flat(_SECURITY_NAMES.get(name, name))
        raise ConfigError(key, f"is a security setting, not a producer one: set {target}")
    if name in PRODUCER_REFUSED:
        raise ConfigError(key, PRODUCER_REFUSED[name])
    return False


def _producer_table(table: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``[kafka.producer]`` without its no-op keys; raise for a refused one."""
    if not isinstance(table, Mapping):
        raise ConfigError(prefix.rstrip("."), "expected a table")
    cluster = prefix.removesuffix("producer.")
    return {name: value for name, value in table.items()
            if not _refuse_producer_key(name, value, f"{prefix}{name}", cluster, from_env=False)}


def _kafka_table(table: Mapping[str, Any], prefix: str,
                 env: Mapping[str, str]) -> tuple[dict[str, Any], Mapping[str, str], dict[str, str]]:
    """One cluster's table and environment with the alias keys (:data:`KAFKA_ALIASES`) moved to
    their ``producer.`` keys; and the origins of the values moved from the environment."""
    if not isinstance(table, Mapping):
        raise ConfigError(prefix.rstrip("."), "expected a table")
    table = dict(table)
    producer = table.get("producer", {})
    if not isinstance(producer, Mapping):
        raise ConfigError(f"{prefix}producer", "expected a table ([kafka.producer])")
    producer = dict(producer)
    hints = typing.get_type_hints(ProducerSettings)
    moved_env: dict[str, str] = {}
    renamed: dict[str, str] = {}
    for old, (new, convert) in KAFKA_ALIASES.items():
        old_key, new_key = f"{prefix}{old}", f"{prefix}producer.{new}"
        if old in table:
            if new in producer:
                raise ConfigError(old_key, f"and {new_key} are one setting: set {new_key} only")
            producer[new] = _coerce(hints[new], convert(table.pop(old), old_key), old_key, from_env=False)
        old_env, new_env = _env_name(old_key), _env_name(new_key)
        if old_env in env:
            if new_env in env:
                raise ConfigError(old_env, f"and {new_env} are one setting: set {new_env} only")
            moved_env[new_env] = str(_coerce(hints[new], convert(env[old_env], old_key), old_key, from_env=False))
            renamed[new_key] = f"env:{old_env}"
    table["producer"] = producer
    return table, ({**env, **moved_env} if moved_env else env), renamed


# -- the environment ------------------------------------------------------------------------------

#: ``SPILLWAY_*`` variables that are no setting: the one place that lets them pass the check
#: of the environment (:func:`_check_environment`)
NOT_SETTINGS: frozenset[str] = frozenset({
    "SPILLWAY_CONFIG",                # the configuration file
    "SPILLWAY_KAFKA_CACHE",           # devtools: where Kafka's and Flume's jars are kept
    "SPILLWAY_KAFKA_FAST_JIT",        # devtools: a test broker that starts faster
    "SPILLWAY_PURE_PYTHON",           # the Thrift decoder in plain Python, not mypyc's build (setup.py)
    "SPILLWAY_CHAOS_ROUNDS", "SPILLWAY_CHAOS_SEED", "SPILLWAY_CHAOS_FAULTS", "SPILLWAY_CHAOS_RECORD",  # tests
    "SPILLWAY_FUZZ_FRAMES", "SPILLWAY_FUZZ_CONNECTIONS", "SPILLWAY_FUZZ_PROTOCOL", "SPILLWAY_FUZZ_SEED",
    "SPILLWAY_HYPOTHESIS_PROFILE",
})
#: set by the parent of N worker processes (topology/processes.py) for each child: no key of
#: the file, but they shape the settings (:func:`process_place`, :func:`for_process`)
PROCESS_VARIABLES: frozenset[str] = frozenset({
    "SPILLWAY_PROCESS_INDEX", "SPILLWAY_PROCESS_COUNT", "SPILLWAY_PROCESS_DRAIN_ONLY"})


def _environment_names(cls: type = Settings, prefix: str = "") -> tuple[set[str], dict[str, str]]:
    """The variable of every setting the environment can set; and those of the keys set in
    the file only (arrays of tables), each with its key."""
    names: set[str] = set()
    file_only: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name in NOT_LOADED:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            inner, inner_file_only = _environment_names(hints[f.name], f"{key}.")
            names |= inner
            file_only.update(inner_file_only)
        elif _table_array_of(hints[f.name]) is not None or (cls is Settings and f.name == "interceptors"):
            file_only[_env_name(key)] = key
        else:
            names.add(_env_name(key))
    if cls is KafkaSettings:
        names |= {_env_name(f"{prefix}{old}") for old in KAFKA_ALIASES}
    return names, file_only


def _check_environment(env: Mapping[str, str]) -> None:
    """Refuse a ``SPILLWAY_*`` variable that is no setting (a typo would otherwise be ignored),
    naming it and the nearest one; never its value (it may be a secret)."""
    names, file_only = _environment_names()
    for var in sorted(env):
        if not var.startswith("SPILLWAY_") or var in names or var in NOT_SETTINGS or var in PROCESS_VARIABLES:
            continue
        if var in file_only:
            raise ConfigError(var, f"[[{file_only[var]}]] is set in the configuration file only")
        producer_key = var.removeprefix(_env_name("kafka.producer."))
        if producer_key != var and _refuse_producer_key(producer_key.lower(), env[var], var, "kafka.", from_env=True):
            continue
        raise ConfigError(var, "is no spillway setting" + _nearest(var, names | NOT_SETTINGS))


def _table_array_of(tp: Any) -> type | None:
    """The dataclass of a ``tuple[SomeSettings, ...]`` field (an array of tables), else None."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if args and dataclasses.is_dataclass(args[0]):
            return args[0]  # type: ignore[return-value]
    return None


def _validate_kafka(k: KafkaSettings) -> None:
    names: set[str] = set()
    for i, cluster in enumerate(k.clusters):
        key = "kafka" if i == 0 else f"kafka.secondary[{i - 1}]"
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", cluster.name):
            raise ConfigError(f"{key}.name", f"{cluster.name!r}: letters, digits, '.', '_' or '-' only")
        if cluster.name in names or cluster.name == "disk":
            raise ConfigError(f"{key}.name", f"{cluster.name!r} is already the name of another sink")
        names.add(cluster.name)
        if i and cluster.secondary:
            raise ConfigError(f"{key}.secondary", "a secondary cluster has no secondaries of its own")
        if not cluster.bootstrap_servers.strip():
            raise ConfigError(f"{key}.bootstrap_servers", "must name at least one broker")
        if not 1 <= cluster.producers <= 64:
            raise ConfigError(f"{key}.producers", "must be between 1 and 64")
        _validate_kafka_security(cluster, key)
        _validate_producer(cluster.producer, f"{key}.producer")


def _validate_producer(p: ProducerSettings, prefix: str) -> None:
    for name, (low, high) in PRODUCER_RANGES.items():
        value = getattr(p, name)
        if not low <= value <= high:
            raise ConfigError(f"{prefix}.{name}", f"must be between {low} and {high}, got {value}")
    if p.max_request_size and p.max_request_size < p.max_batch_size:
        raise ConfigError(f"{prefix}.max_request_size", f"must be at least max_batch_size ({p.max_batch_size}) "
                          "or 0 (max_batch_size + 4 KiB, at least 1 MiB)")


def _validate_kafka_security(k: KafkaSettings, key: str) -> None:
    """TLS and SASL of one cluster: what its protocol needs is set, nothing it would ignore is,
    every file can be read. No message shows a password."""
    sasl = k.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")
    tls = k.security_protocol in ("SSL", "SASL_SSL")
    if not sasl:
        for name in ("sasl_username", "sasl_password", "sasl_password_file"):
            if getattr(k, name):
                raise ConfigError(f"{key}.{name}", f"is set but {key}.security_protocol is {k.security_protocol} "
                                  "(no SASL: it would not be used)")
    if not tls:
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(k, name):
                raise ConfigError(f"{key}.{name}", f"is set but {key}.security_protocol is {k.security_protocol} "
                                  "(no TLS: it would not be used)")
    if sasl:
        if not k.sasl_username:
            raise ConfigError(f"{key}.sasl_username", f"is required with security_protocol {k.security_protocol}")
        if k.sasl_password and k.sasl_password_file:
            raise ConfigError(f"{key}.sasl_password_file", "sasl_password is set too: set one of them")
        if not k.sasl_password and not k.sasl_password_file:
            raise ConfigError(f"{key}.sasl_password", f"is required with security_protocol {k.security_protocol} "
                              "(or sasl_password_file)")
        if k.sasl_password_file:
            _readable(f"{key}.sasl_password_file", k.sasl_password_file)
            try:
                with open(k.sasl_password_file, encoding="utf-8") as fh:
                    empty = not fh.read().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{key}.sasl_password_file", f"cannot be read: {type(exc).__name__}") from None
            if empty:
                raise ConfigError(f"{key}.sasl_password_file", f"{k.sasl_password_file} is empty")
    if not tls:
        return
    if k.ssl_keyfile and not k.ssl_certfile:
        raise ConfigError(f"{key}.ssl_keyfile", f"is set but {key}.ssl_certfile is not")
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if getattr(k, name):
            _readable(f"{key}.{name}", getattr(k, name))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if k.ssl_cafile:
        try:
            ctx.load_verify_locations(cafile=k.ssl_cafile)
        except ssl.SSLError as exc:
            raise ConfigError(f"{key}.ssl_cafile", f"CA certificates do not load: {exc}") from None
    if k.ssl_certfile:
        def no_passphrase() -> str:
            raise ConfigError(f"{key}.ssl_keyfile", "the private key is encrypted: give an unencrypted key")

        try:
            ctx.load_cert_chain(k.ssl_certfile, k.ssl_keyfile or None, password=no_passphrase)
        except ssl.SSLError as exc:
            raise ConfigError(f"{key}.ssl_certfile", f"certificate and key do not load: {exc}") from None


def _readable(key: str, path: str) -> None:
    if not os.path.isfile(path):
        raise ConfigError(key, f"no such file: {path}")
    if not os.access(path, os.R_OK):
        raise ConfigError(key, f"not readable: {path}")


def _build_interceptors(value: Any, origin: str, env: Mapping[str, str],
                        origins: dict[str, str]) -> tuple[InterceptorSettings, ...]:
    if "SPILLWAY_INTERCEPTORS" in env:
        raise ConfigError("SPILLWAY_INTERCEPTORS", "[[interceptors]] is set in the configuration file only")
    if not isinstance(value, list):
        raise ConfigError("interceptors", "expected an array of tables ([[interceptors]])")
    out: list[InterceptorSettings] = []
    for i, table in enumerate(value):
        prefix = f"interceptors[{i}]"
        if not isinstance(table, Mapping):
            raise ConfigError(prefix, "expected a table")
        kind = table.get("type")
        if not isinstance(kind, str) or kind not in INTERCEPTOR_TYPES:
            raise ConfigError(f"{prefix}.type", f"must be one of {', '.join(map(repr, INTERCEPTOR_TYPES))}, "
                              f"got {kind!r}")
        for key in INTERCEPTOR_REQUIRED.get(kind, ()):
            if key not in table:
                raise ConfigError(f"{prefix}.{key}", f"is required for a {kind} interceptor")
        item = _build(INTERCEPTOR_TYPES[kind], table, f"{prefix}.", origin, {}, origins)
        _validate_interceptor(item, prefix)
        out.append(item)
    return tuple(out)


def _validate_interceptor(item: InterceptorSettings, prefix: str) -> None:
    for key in ("header", "key"):
        if getattr(item, key, None) == "":
            raise ConfigError(f"{prefix}.{key}", "must name a header")
    if isinstance(item, RemoveHeaderInterceptorSettings) and not (item.name or item.from_list or item.match_regex):
        raise ConfigError(f"{prefix}.name", "a remove_header interceptor needs name, from_list or match_regex")
    for key in ("regex", "match_regex", "list_separator"):
        pattern = getattr(item, key, None)
        if pattern is None:
            continue
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{prefix}.{key}", f"not a valid regular expression: {exc}") from None
        if key == "list_separator" and compiled.match(""):
            raise ConfigError(f"{prefix}.{key}", "must not match an empty string")


def _validate(s: Settings) -> None:
    r = s.router
    if not TOPIC_RE.match(r.default_topic) or r.default_topic.startswith("__"):
        raise ConfigError("router.default_topic", f"{r.default_topic!r} is not a valid topic name")
    if not r.topic_allowed(r.default_topic):
        raise ConfigError("router.default_topic", "is not matched by router.allowed_topics")
    if not r.allowed_topics:
        raise ConfigError("router.allowed_topics", "must list at least one pattern")
    for key, port in (("source.thrift.port", s.source.thrift.port), ("source.avro.port", s.source.avro.port),
                      ("source.http.port", s.source.http.port), ("web.port", s.web.port)):
        if not 0 <= port <= 65535:
            raise ConfigError(key, f"{port} is not a TCP port")
    if s.source.thrift.max_frame_bytes < 64:
        raise ConfigError("source.thrift.max_frame_bytes", "must be at least 64")
    _validate_thrift(s.source.thrift)
    if s.source.avro.enabled:
        _validate_avro(s.source.avro)
    if s.source.http.enabled:
        _validate_http(s.source.http, s.web)
    if s.kafka.max_batch_bytes > 1_000_000 and s.source.thrift.max_event_bytes > 1_000_000:
        raise ConfigError("source.thrift.max_event_bytes", "must fit Kafka's default message.max.bytes")
    _validate_kafka(s.kafka)
    if s.failover.timeout <= 0:
        raise ConfigError("failover.timeout", "must be positive")
    for key, value in (("drain.batch_events", s.drain.batch_events), ("drain.window", s.drain.window)):
        if value < 1:
            raise ConfigError(key, "must be at least 1")
    if s.drain.live_share < 0:
        raise ConfigError("drain.live_share", "must be 0 (off) or more")
    if s.buffer.max_bytes < s.source.thrift.max_event_bytes:
        raise ConfigError("buffer.max_bytes", "must hold at least one event")
    if s.node.processes < 1:
        raise ConfigError("node.processes", "must be at least 1")


def _validate_thrift(t: ThriftSettings) -> None:
    for key, value in (("max_connections", t.max_connections),
                       ("max_inflight_events_per_connection", t.max_inflight_events_per_connection)):
        if value < 1:
            raise ConfigError(f"source.thrift.{key}", "must be at least 1")
    _validate_tls(t, "source.thrift")


def _validate_avro(a: AvroSettings) -> None:
    for key in ("max_buffers", "max_batch_events", "max_headers", "max_connections"):
        if getattr(a, key) < 1:
            raise ConfigError(f"source.avro.{key}", "must be at least 1")
    if a.max_frame_bytes < 64:
        raise ConfigError("source.avro.max_frame_bytes", "must be at least 64")
    _validate_tls(a, "source.avro")


def _validate_http(h: HttpSettings, web: WebSettings) -> None:
    for key in ("max_batch_events", "max_headers"):
        if getattr(h, key) < 1:
            raise ConfigError(f"source.http.{key}", "must be at least 1")
    if not h.path.startswith("/"):
        raise ConfigError("source.http.path", f"{h.path!r} must start with '/'")
    if h.port and h.port == web.port:
        raise ConfigError("source.http.port", "is the operations web port (web.port); the HTTP source needs its own")
    _validate_tls(h, "source.http")


def _validate_tls(t: ThriftSettings | AvroSettings | HttpSettings, section: str) -> None:
    if t.tls_keyfile and not t.tls_certfile:
        raise ConfigError(f"{section}.tls_keyfile", f"is set but {section}.tls_certfile is not")
    if t.tls_verify_client and not t.tls_certfile:
        raise ConfigError(f"{section}.tls_verify_client", f"needs {section}.tls_certfile (TLS)")
    if t.tls_verify_client and not t.tls_cafile:
        raise ConfigError(f"{section}.tls_cafile", "must name the CA file that signs client certificates "
                          f"when {section}.tls_verify_client is true")
    if t.tls_cafile and not t.tls_verify_client:
        raise ConfigError(f"{section}.tls_cafile", f"is set but {section}.tls_verify_client is false "
                          "(client certificates would not be checked)")
    for key in ("tls_certfile", "tls_keyfile", "tls_cafile"):
        path = getattr(t, key)
        if path and not os.path.isfile(path):
            raise ConfigError(f"{section}.{key}", f"no such file: {path}")
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"{section}.{key}", f"not readable: {path}")
    if t.tls_certfile:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(t.tls_certfile, t.tls_keyfile or None)
        except ssl.SSLError as exc:
            raise ConfigError(f"{section}.tls_certfile", f"certificate and key do not load: {exc}") from None
        if t.tls_cafile:
            try:
                ctx.load_verify_locations(cafile=t.tls_cafile)
            except ssl.SSLError as exc:
                raise ConfigError(f"{section}.tls_cafile", f"CA certificates do not load: {exc}") from None


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """The file to read: ``SPILLWAY_CONFIG``, else ``./spillway.toml`` if there is one, else
    the defaults shipped in the package."""
    env = os.environ if env is None else env
    if env.get("SPILLWAY_CONFIG"):
        return Path(env["SPILLWAY_CONFIG"])
    return Path(LOCAL_CONFIG) if os.path.isfile(LOCAL_CONFIG) else DEFAULT_CONFIG


def load_settings(path: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None) -> Settings:
    """Load, override and validate the settings; raise ConfigError naming the key."""
    env = os.environ if env is None else env
    _check_environment(env)
    path = Path(path) if path is not None else config_path(env)
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("SPILLWAY_CONFIG", f"no configuration file at {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    origins: dict[str, str] = {}
    built: Settings = _build(Settings, table, "", str(path), env, origins)
    settings = dataclasses.replace(built, origins=origins)
    _validate(settings)
    return for_process(settings, process_place(env))


# -- one of several worker processes -------------------------------------------------------------

def process_dir(base: Path, index: int) -> Path:
    """Process ``index``'s own directory under a shared one: process 0 keeps ``base`` itself
    (going from 1 to N processes and back keeps its backlog where it was)."""
    return base if index == 0 else base / f"process-{index}"


def process_place(env: Mapping[str, str]) -> ProcessPlace:
    """This process's place, from the variables the parent sets (none: the only process)."""

    def number(name: str, default: int, low: int) -> int:
        raw = env.get(name, "")
        try:
            value = int(raw) if raw else default
        except ValueError:
            raise ConfigError(name, f"{raw!r} is not a whole number") from None
        if value < low:
            raise ConfigError(name, f"must be at least {low}")
        return value

    place = ProcessPlace(number("SPILLWAY_PROCESS_INDEX", 0, 0), number("SPILLWAY_PROCESS_COUNT", 1, 1),
                         env.get("SPILLWAY_PROCESS_DRAIN_ONLY", "") in ("1", "true"))
    if place.index >= place.count and not place.drain_only:
        raise ConfigError("SPILLWAY_PROCESS_INDEX",
                          f"{place.index} is not below SPILLWAY_PROCESS_COUNT ({place.count})")
    return place


def for_process(s: Settings, place: ProcessPlace) -> Settings:
    """The settings of process ``place.index``: its own web port (web.port + index), buffer and
    archive directories (:func:`process_dir`); every source port shared with SO_REUSEPORT when
    the node runs more than one process."""
    if place == ProcessPlace():
        return s
    i, shared = place.index, place.count > 1
    src = s.source
    return dataclasses.replace(
        s, process=place,
        web=dataclasses.replace(s.web, port=s.web.port + i if s.web.port else 0),
        buffer=dataclasses.replace(s.buffer, directory=process_dir(s.buffer.directory, i)),
        drain=dataclasses.replace(s.drain, archive_directory=process_dir(s.drain.archive_directory, i)),
        source=dataclasses.replace(
            src, thrift=dataclasses.replace(src.thrift, reuse_port=src.thrift.reuse_port or shared),
            avro=dataclasses.replace(src.avro, reuse_port=src.avro.reuse_port or shared),
            http=dataclasses.replace(src.http, reuse_port=src.http.reuse_port or shared)))
