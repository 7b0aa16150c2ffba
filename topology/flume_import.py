"""A Flume agent's properties as a spillway TOML file (``spillway import-flume``).

Pure: properties text in, TOML text and findings out; no I/O, no Faust. What converts:

- the Thrift source (``bind``, ``port``, ``protocol``; ``ssl`` with a keystore becomes
  ``source.thrift.tls_certfile``/``tls_keyfile``, with the keytool/openssl commands that
  turn the keystore into those PEM files written as comments);
- KafkaSinks, in Flume 1.6 (``brokerList``, ``topic``, ``requiredAcks``, ``batchSize``)
  and 1.7+ spelling (``kafka.bootstrap.servers``, ``kafka.topic``, ``kafka.producer.acks``,
  ``flumeBatchSize``), ``kafka.producer.*`` into ``[kafka.producer]`` and the security keys;
- the failover sink group: priorities order the Kafka clusters (``[kafka]``, then each
  ``[[kafka.secondary]]``), ``maxpenalty`` becomes ``failover.max_penalty``, a file_roll
  sink's ``sink.directory`` is where the old spilled files are (to replay) and where the
  disk buffer goes (``<sink.directory>/spillway``);
- Flume's interceptors that spillway has (``[[interceptors]]``);
- memory and file channels, reported as what they mean here.

The KafkaSink part is :mod:`topology.flume_kafka`; the properties parser, the tables and
their rendering are :mod:`topology.flume_toml`. Everything else is a :class:`Finding`:
``unconverted`` (the property and why: a sink type spillway lacks, a load_balance group,
Morphline, an unknown or misspelt key) or a ``note`` (what a converted value means here,
e.g. acks upgraded to all). Secrets
(keystore and SASL passwords) are never written out: the TOML says which environment
variable to set instead.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import PurePosixPath

from topology.flume_kafka import KafkaSinks, KafkaSinkTables
from topology.flume_toml import (
    AGENT_KEYS,
    Conversion,
    Finding,
    FlumeImportError,
    SeveralAgents,
    Table,
    agents_in,
    flume_bool,
    keystore_commands,
    parse_properties,
    pem_paths,
    render,
    split_names,
    suggest,
)

__all__ = ["Conversion", "Finding", "FlumeImportError", "SeveralAgents", "convert", "parse_properties"]

_KAFKA_SINK_TYPES = {"org.apache.flume.sink.kafka.kafkasink"}
_FILE_ROLL_TYPES = {"file_roll", "org.apache.flume.sink.rollingfilesink"}
_THRIFT_SOURCE_TYPES = {"thrift", "org.apache.flume.source.thriftsource"}

_THRIFT_KEYS = ("type", "channels", "bind", "port", "protocol", "threads", "ssl", "keystore", "keystore-password",
                "keystore-type", "exclude-protocols", "include-protocols", "exclude-cipher-suites",
                "include-cipher-suites", "kerberos", "agent-principal", "agent-keytab", "interceptors",
                "selector.type")
_FILE_ROLL_KEYS = ("type", "channel", "sink.directory", "sink.pathManager", "sink.pathManager.extension",
                   "sink.pathManager.prefix", "sink.rollInterval", "sink.serializer", "sink.batchSize",
                   "sink.serializer.compressionCodec", "sink.serializer.syncIntervalBytes")
_MEMORY_CHANNEL_KEYS = ("type", "capacity", "transactionCapacity", "keep-alive", "byteCapacityBufferPercentage",
                        "byteCapacity")
_FILE_CHANNEL_KEYS = ("type", "checkpointDir", "useDualCheckpoints", "backupCheckpointDir", "dataDirs",
                      "transactionCapacity", "checkpointInterval", "maxFileSize", "minimumRequiredSpace",
                      "capacity", "keep-alive", "use-log-replay-v1", "use-fast-replay", "checkpointOnClose")
_GROUP_KEYS = ("sinks", "processor.type", "processor.maxpenalty", "processor.backoff", "processor.selector",
               "processor.selector.maxTimeOut")

#: Flume interceptor type (alias or builder class, lower case) -> spillway type
_INTERCEPTOR_TYPES: Mapping[str, str] = {
    "timestamp": "timestamp", "org.apache.flume.interceptor.timestampinterceptor$builder": "timestamp",
    "host": "host", "org.apache.flume.interceptor.hostinterceptor$builder": "host",
    "static": "static", "org.apache.flume.interceptor.staticinterceptor$builder": "static",
    "remove_header": "remove_header", "org.apache.flume.interceptor.removeheaderinterceptor$builder": "remove_header",
    "regex_filter": "regex_filter",
    "org.apache.flume.interceptor.regexfilteringinterceptor$builder": "regex_filter",
    "org.apache.flume.sink.solr.morphline.uuidinterceptor$builder": "uuid",
}
#: spillway type -> Flume property -> (spillway key, kind)
_INTERCEPTOR_KEYS: Mapping[str, Mapping[str, tuple[str, str]]] = {
    "timestamp": {"headerName": ("header", "str"), "header": ("header", "str"),
                  "preserveExisting": ("preserve_existing", "bool")},
    "host": {"hostHeader": ("header", "str"), "useIP": ("use_ip", "bool"),
             "preserveExisting": ("preserve_existing", "bool")},
    "static": {"key": ("key", "str"), "value": ("value", "str"), "preserveExisting": ("preserve_existing", "bool")},
    "remove_header": {"withName": ("name", "str"), "fromList": ("from_list", "str"),
                      "fromListSeparator": ("list_separator", "str"), "matching": ("match_regex", "str")},
    "uuid": {"headerName": ("header", "str"), "preserveExisting": ("preserve_existing", "bool"),
             "prefix": ("prefix", "str")},
    "regex_filter": {"regex": ("regex", "str"), "excludeEvents": ("exclude_events", "bool")},
}


class Converter(KafkaSinks):
    """One agent's properties into tables and findings."""

    def __init__(self, props: Mapping[str, str], agent: str, source_name: str = "flume.properties") -> None:
        super().__init__(props, agent)
        self.source_name = source_name
        self.thrift = Table("source.thrift")
        self.router = Table("router")
        self.failover = Table("failover")
        self.buffer = Table("buffer")
        self.interceptors: list[Table] = []
        self.kafka_sinks: list[KafkaSinkTables] = []
        self.replay_directories: list[str] = []
        self.closing: list[str] = []

    # -- the agent

    def convert(self) -> Conversion:
        declared = {kind: split_names(self.get(self.a + kind) or "") for kind in AGENT_KEYS}
        if not any(declared[k] for k in ("sources", "sinks", "channels")):
            raise FlumeImportError(f"agent {self.agent!r} declares no sources, sinks or channels")
        for name in declared["configfilters"]:
            self.unconverted(f"{self.a}configfilters.{name}", "config filters (secrets from outside the file) "
                             "are not converted: put the value in the TOML or a SPILLWAY_* variable")
        self.channels(declared["channels"])
        self.sources(declared["sources"])
        self.sinks(declared["sinks"], declared["sinkgroups"])
        self.stray(declared)
        for key in sorted(k for k in self.used if "${" in self.props.get(k, "")):
            self.findings.append(Finding(key, "copied as written: Flume replaces ${...} with an environment "
                                         "variable only when started with -DpropertiesImplementation="
                                         "org.apache.flume.node.EnvVarResolverProperties; spillway does not "
                                         "(override the key with its SPILLWAY_* variable instead)", "note"))
        return self.result()

    def stray(self, declared: Mapping[str, list[str]]) -> None:
        """Properties of undeclared components, and agent keys Flume does not know."""
        for key in sorted(self.props):
            if key in self.used or not key.startswith(self.a):
                continue
            parts = key[len(self.a):].split(".")
            kind = parts[0]
            if kind in AGENT_KEYS and len(parts) > 1:
                listed = declared.get(kind, [])
                if parts[1] not in listed:
                    self.unconverted(key, f"{parts[1]!r} is not listed in {self.a}{kind}"
                                     f"{suggest(parts[1], listed)}; Flume ignores it")
                    continue
            self.unconverted(key, f"unknown agent property{suggest(kind, AGENT_KEYS)}; Flume ignores it")

    # -- channels

    def channels(self, names: list[str]) -> None:
        for name in names:
            prefix = f"{self.a}channels.{name}."
            kind = (self.get(prefix + "type") or "").lower()
            if kind in ("memory", "org.apache.flume.channel.memorychannel"):
                capacity = self.get(prefix + "capacity") or "100"
                tx = self.get(prefix + "transactionCapacity") or "100"
                self.note(prefix + "capacity", f"memory channel {name!r} held up to {capacity} events in RAM, "
                          "lost in a crash; spillway holds none: a client is answered OK only once its events "
                          "are in Kafka or fsynced on disk, and the disk buffer is bounded by buffer.max_bytes")
                self.note(prefix + "transactionCapacity", f"Flume failed, forever, a batch over {tx} events; "
                          "spillway takes batches up to source.thrift.max_batch_events (10000 by default)")
                for key in ("byteCapacity", "byteCapacityBufferPercentage", "keep-alive"):
                    if self.get(prefix + key) is not None:
                        self.note(prefix + key, "a memory channel limit: nothing is held in memory here "
                                  "(buffer.max_bytes bounds the disk buffer)")
                self.check_unknown(prefix, _MEMORY_CHANNEL_KEYS, "memory channel")
            elif kind in ("file", "org.apache.flume.channel.file.filechannel"):
                capacity = self.get(prefix + "capacity") or "1000000"
                data = self.get(prefix + "dataDirs") or "~/.flume/file-channel/data"
                self.note(prefix + "capacity", f"file channel {name!r} held up to {capacity} events on disk; "
                          "spillway's disk buffer takes over only when Kafka is down, bounded by buffer.max_bytes")
                self.note(prefix + "dataDirs", f"spillway does not read a file channel's logs ({data}): let Flume "
                          "empty the channel (stop its source, wait until the sinks drained it) before switching")
                for key in _FILE_CHANNEL_KEYS:
                    if key not in ("type", "capacity", "dataDirs") and self.get(prefix + key) is not None:
                        self.note(prefix + key, "a file channel setting: no equivalent needed here")
                self.check_unknown(prefix, _FILE_CHANNEL_KEYS, "file channel")
            elif kind:
                self.unconverted(prefix + "type", f"channel type {kind!r} has no equivalent: spillway keeps "
                                 "nothing in a channel (Kafka or the fsynced disk buffer)")
                for rest in self.component_keys(prefix):
                    self.used.add(prefix + rest)
            else:
                self.unconverted(prefix + "type", f"channel {name!r} has no type (Flume refuses it)")

    # -- sources

    def sources(self, names: list[str]) -> None:
        thrift_done = False
        for name in names:
            prefix = f"{self.a}sources.{name}."
            kind = (self.get(prefix + "type") or "").lower()
            if kind in _THRIFT_SOURCE_TYPES and not thrift_done:
                self.thrift_source(prefix)
                thrift_done = True
                continue
            if kind in _THRIFT_SOURCE_TYPES:
                why = "a second Thrift source: spillway has one Thrift listener"
            elif kind:
                why = f"source type {kind!r}: spillway takes Flume's Thrift protocol only (ThriftSource)"
            else:
                why = f"source {name!r} has no type (Flume refuses it)"
            self.unconverted(prefix + "type", why)
            for rest in self.component_keys(prefix):
                self.used.add(prefix + rest)

    def thrift_source(self, prefix: str) -> None:
        t = self.thrift
        self.get(prefix + "channels")
        bind = self.get(prefix + "bind")
        if bind is not None:
            t.set("host", bind, f"{prefix}bind")
        else:
            self.unconverted(prefix + "bind", "required by Flume and missing; spillway listens on 0.0.0.0")
        port = self.get(prefix + "port")
        if port is not None:
            number = self.int_value(prefix + "port", port)
            if number is not None:
                t.set("port", number, f"{prefix}port")
        else:
            self.unconverted(prefix + "port", "required by Flume and missing; spillway listens on 4141")
        protocol = self.get(prefix + "protocol")
        if protocol is not None:
            if protocol.lower() in ("compact", "binary"):
                t.set("protocol", protocol.lower(), f"{prefix}protocol")
            else:
                self.unconverted(prefix + "protocol", f"{protocol!r}: Flume and spillway take compact or binary")
        else:
            t.set("protocol", "compact", f"{prefix}protocol is unset: Flume's default")
        threads = self.get(prefix + "threads")
        if threads is not None:
            self.note(prefix + "threads", "not needed: spillway serves every connection on one event loop, "
                      "up to source.thrift.max_connections")
        self.thrift_tls(prefix)
        selector = self.get(prefix + "selector.type")
        if selector is not None and selector.lower() != "replicating":
            self.unconverted(prefix + "selector.type", f"channel selector {selector!r}: spillway routes by the "
                             "topic header, not by channel")
        for rest in self.component_keys(prefix + "selector."):
            if prefix + "selector." + rest not in self.used:
                self.unconverted(prefix + "selector." + rest, "channel selectors are not converted")
        self.interceptor_chain(prefix)
        self.check_unknown(prefix, _THRIFT_KEYS, "ThriftSource")

    def thrift_tls(self, prefix: str) -> None:
        ssl = self.get(prefix + "ssl")
        keystore = self.get(prefix + "keystore")
        password = self.get(prefix + "keystore-password")
        store_type = self.get(prefix + "keystore-type") or "JKS"
        for key in ("exclude-protocols", "include-protocols", "exclude-cipher-suites", "include-cipher-suites"):
            if self.get(prefix + key) is not None:
                self.unconverted(prefix + key, "spillway takes Python's TLS defaults (TLS 1.2 and later, "
                                 "its cipher suites); there is no setting for this")
        if self.get(prefix + "kerberos") is not None and flume_bool(self.props[prefix + "kerberos"]):
            self.unconverted(prefix + "kerberos", "Kerberos (SASL) on the Thrift source is not supported")
        for key in ("agent-principal", "agent-keytab"):
            if self.get(prefix + key) is not None:
                self.unconverted(prefix + key, "Kerberos on the Thrift source is not supported")
        if ssl is None or not flume_bool(ssl):
            for key, value in (("keystore", keystore), ("keystore-password", password)):
                if value is not None:
                    self.note(prefix + key, "ssl is not true: Flume does not use it, nor does spillway")
            return
        if keystore is None:
            self.unconverted(prefix + "ssl", "TLS with Flume's global keystore (-Djavax.net.ssl.keyStore): name "
                             "the PEM files in source.thrift.tls_certfile and tls_keyfile by hand")
            return
        _, cert, key = pem_paths(keystore)
        env = "FLUME_KEYSTORE_PASSWORD"
        self.thrift.set("tls_certfile", cert, f"{prefix}keystore, as PEM (see the commands above)")
        self.thrift.set("tls_keyfile", key, f"{prefix}keystore, as PEM")
        self.thrift.comments += [
            f"TLS ({prefix}ssl = true): spillway reads PEM files, not a Java keystore. Make them from",
            f"{keystore} ({prefix}keystore-type = {store_type}) with the keystore's password",
            f"({prefix}keystore-password, not copied here) in the environment:",
            f"  read -rs {env} && export {env}",
            *(f"  {cmd}" for cmd in keystore_commands(keystore, store_type, env)),
        ]
        if password is not None:
            self.note(prefix + "keystore-password", f"not written out: set {env} for the commands in "
                      "[source.thrift]'s comments; spillway's PEM key file is unencrypted (mode 600)")

    # -- interceptors

    def interceptor_chain(self, prefix: str) -> None:
        chain = split_names(self.get(prefix + "interceptors") or "")
        for name in chain:
            ip = f"{prefix}interceptors.{name}."
            raw = self.get(ip + "type")
            kind = _INTERCEPTOR_TYPES.get((raw or "").lower())
            if kind is None:
                why = ("Morphline is not supported" if raw and "morphline" in raw.lower()
                       else f"interceptor type {raw!r}: spillway has timestamp, host, static, remove_header, "
                            "uuid and regex_filter" if raw else f"interceptor {name!r} has no type")
                self.unconverted(ip + "type", why)
                for rest in self.component_keys(ip):
                    self.used.add(ip + rest)
                continue
            table = Table("interceptors", array=True)
            table.set("type", kind, f"{ip}type = {raw}")
            keys = _INTERCEPTOR_KEYS[kind]
            for flume_key, (key, how) in keys.items():
                value = self.get(ip + flume_key)
                if value is None:
                    continue
                if how == "bool":
                    if value.lower() not in ("true", "false"):
                        self.note(ip + flume_key, f"{value!r} is not true or false: Flume reads it as false")
                    table.set(key, flume_bool(value), f"{ip}{flume_key}")
                else:
                    table.set(key, self.props[ip + flume_key], f"{ip}{flume_key}")
            if not self.interceptor_fits(kind, ip, table):
                continue
            self.check_unknown(ip, keys, f"{kind} interceptor")
            self.interceptors.append(table)
        for rest in self.component_keys(prefix + "interceptors."):
            key = prefix + "interceptors." + rest
            if key not in self.used:
                iname = rest.split(".")[0]
                self.unconverted(key, f"interceptor {iname!r} is not listed in {prefix}interceptors"
                                 f"{suggest(iname, chain)}; Flume ignores it")

    def interceptor_fits(self, kind: str, ip: str, table: Table) -> bool:
        """Fill in Flume's defaults spillway does not share; False (reported) when it cannot apply."""
        keys = {item[0] for item in table.items}
        if kind == "static":
            for key in ("key", "value"):
                if key not in keys:
                    table.set(key, key, f"{ip}{key} is unset: Flume's default")
        if kind == "regex_filter" and "regex" not in keys:
            table.set("regex", ".*", f"{ip}regex is unset: Flume's default")
        if kind == "remove_header" and not keys & {"name", "from_list", "match_regex"}:
            self.unconverted(ip + "type", "a remove_header interceptor without withName, fromList or matching "
                             "removes nothing in Flume; left out")
            return False
        for key, value, cite in table.items:
            if key in ("regex", "match_regex", "list_separator"):
                try:
                    re.compile(value)
                except re.error as exc:
                    self.unconverted(cite, f"{value!r} is not a regular expression Python reads ({exc}); "
                                     "the interceptor is left out")
                    return False
        return True

    # -- sinks

    def sinks(self, names: list[str], groups: list[str]) -> None:
        order, group_cite = self.sink_order(names, groups)
        kafka_rank = 0
        saw_buffer = False
        for name in order:
            prefix = f"{self.a}sinks.{name}."
            kind = (self.get(prefix + "type") or "").lower()
            if kind in _KAFKA_SINK_TYPES:
                if saw_buffer:
                    self.note(prefix + "type", "this KafkaSink had a lower priority than the file_roll sink: "
                              "spillway always tries every Kafka cluster before the disk buffer")
                self.kafka_sink(name, prefix, kafka_rank, group_cite.get(name, ""))
                kafka_rank += 1
            elif kind in _FILE_ROLL_TYPES:
                self.file_roll(prefix, saw_buffer)
                saw_buffer = True
            else:
                why = (f"sink type {kind!r}: spillway's sinks are Kafka clusters and its disk buffer" if kind
                       else f"sink {name!r} has no type (Flume refuses it)")
                self.unconverted(prefix + "type", why)
                for rest in self.component_keys(prefix):
                    self.used.add(prefix + rest)
        if not self.kafka_sinks:
            self.findings.append(Finding(f"{self.a}sinks", "no KafkaSink: [kafka] keeps spillway's defaults"))

    def sink_order(self, names: list[str], groups: list[str]) -> tuple[list[str], dict[str, str]]:
        """The sinks by priority (the failover group's, else as listed), and each one's priority cite."""
        cites: dict[str, str] = {}
        grouped: list[str] = []
        for group in groups:
            gp = f"{self.a}sinkgroups.{group}."
            members = split_names(self.get(gp + "sinks") or "")
            processor = (self.get(gp + "processor.type") or "default").lower()
            if processor == "load_balance":
                self.unconverted(gp + "processor.type", "a load_balance group: spillway sends to the "
                                 "highest-priority Kafka cluster that is up (failover), never spreads load; "
                                 "its sinks are taken in the order listed")
                for key in ("processor.backoff", "processor.selector", "processor.selector.maxTimeOut"):
                    self.get(gp + key)
            elif processor != "failover" and processor != "default":
                self.unconverted(gp + "processor.type", f"sink processor {processor!r} is not supported")
            prios: list[tuple[int, int, str]] = []
            for i, member in enumerate(members):
                if member not in names:
                    self.unconverted(gp + "sinks", f"{member!r} is not listed in {self.a}sinks")
                    continue
                raw = self.get(f"{gp}processor.priority.{member}")
                prio = -(i + 1)
                if raw is not None:
                    value = self.int_value(f"{gp}processor.priority.{member}", raw)
                    if value is not None:
                        prio = value
                        cites[member] = f"{gp}processor.priority.{member} = {value}"
                elif processor == "failover":
                    self.note(f"{gp}processor.priority.{member}", "unset: Flume ranks it by its place in the "
                              "group's list, after the sinks that have a priority")
                if any(p == prio for p, _, _ in prios):
                    self.unconverted(f"{gp}processor.priority.{member}", f"priority {prio} is taken by another "
                                     "sink: Flume drops one of the two; spillway keeps both, in the order listed")
                prios.append((prio, -i, member))
            grouped += [m for _, _, m in sorted(prios, reverse=True)]
            if processor == "failover":
                penalty = self.get(gp + "processor.maxpenalty")
                if penalty is not None:
                    ms = self.int_value(gp + "processor.maxpenalty", penalty)
                    if ms is not None:
                        self.failover.set("max_penalty", f"{ms}ms", f"{gp}processor.maxpenalty (ms)")
                else:
                    self.failover.set("max_penalty", "30000ms", f"{gp}processor.maxpenalty is unset: Flume's default")
            self.check_unknown(gp, (*_GROUP_KEYS, *(f"processor.priority.{m}" for m in members)), "sink group")
        loose = [n for n in names if n not in grouped]
        if len(loose) > 1 or (loose and grouped):
            self.findings.append(Finding(f"{self.a}sinks", f"sinks outside a failover group ({' '.join(loose)}) "
                                         "shared their channel's events in Flume; here they are failover "
                                         "targets after the group's, in the order listed", "note"))
        return grouped + loose, cites

    def file_roll(self, prefix: str, second: bool) -> None:
        self.get(prefix + "channel")
        directory = self.get(prefix + "sink.directory")
        serializer = self.get(prefix + "sink.serializer") or "TEXT"
        for key in ("sink.serializer.compressionCodec", "sink.serializer.syncIntervalBytes"):
            if self.get(prefix + key) is not None:
                self.note(prefix + key, "how Flume wrote its files: replay reads the null, deflate and snappy "
                          "codecs; the disk buffer's segments are not compressed")
        for key in ("sink.pathManager", "sink.pathManager.extension", "sink.pathManager.prefix",
                    "sink.rollInterval", "sink.batchSize"):
            if self.get(prefix + key) is not None:
                self.note(prefix + key, "a file_roll setting: the disk buffer rolls its segments by "
                          "buffer.segment_max_bytes and buffer.segment_max_age")
        self.check_unknown(prefix, _FILE_ROLL_KEYS, "file_roll sink")
        if directory is None:
            self.unconverted(prefix + "sink.directory", "required by Flume and missing")
            return
        self.replay_directories.append(directory)
        avro = serializer.lower() in ("avro_event", "org.apache.flume.serialization.flumeeventavroeventserializer"
                                      "$builder")
        if not second:
            self.buffer.set("directory", str(PurePosixPath(directory) / "spillway"),
                            f"{prefix}sink.directory, in a folder of its own (the old files stay to replay)")
            self.buffer.comments += [
                f"The disk buffer takes the file_roll sink's place in the failover group ({prefix[:-1]}):",
                "it is fsynced, and drained back into Kafka, each event to its own topic.",
            ]
        how = (f"spillway replay {shlex.quote(directory)}" if avro else
               f"spillway replay --topic TOPIC {shlex.quote(directory)}")
        self.closing += [f"Flume's spilled files in {directory} ({prefix}sink.serializer = {serializer}):",
                         f"  {how}"]
        if avro:
            self.note(prefix + "sink.directory", f"the old spilled files to replay: `{how}` sends each event "
                      "to the topic its header names, with its key and headers")
        else:
            self.note(prefix + "sink.serializer", f"{serializer}: Flume kept no headers in these files, so their "
                      f"topics are lost; replay them with --topic (`{how}`)")

    # -- the result

    def result(self) -> Conversion:
        tables: list[Table] = [self.thrift]
        primary = self.kafka_sinks[0] if self.kafka_sinks else None
        if primary is not None:
            if primary.default_topic is not None:
                self.router.set("default_topic", *primary.default_topic)
            if primary.topic_header is not None:
                self.router.set("topic_header", *primary.topic_header)
            self.router.set("key_header", "key",
                            f"{primary.prefix[:-1]}: Flume's KafkaSink keys records by this header")
            for other in self.kafka_sinks[1:]:
                for attr, what in (("default_topic", "topic"), ("topic_header", "topicHeader")):
                    mine, theirs = getattr(other, attr), getattr(primary, attr)
                    if mine is not None and (theirs is None or mine[0] != theirs[0]):
                        self.unconverted(mine[1], f"differs from the primary sink's {what}: spillway has one "
                                         f"router for every cluster, and keeps {primary.name!r}'s")
        tables += [self.router]
        for sink in self.kafka_sinks:
            tables += [sink.kafka, sink.producer]
        tables += [self.failover, self.buffer, *self.interceptors]
        preamble = [f"spillway configuration for Flume agent {self.agent!r} of {self.source_name},",
                    "written by `spillway import-flume`. Each key cites the Flume property it came from;",
                    "every other key keeps spillway's default (`spillway init` writes them all, documented).",
                    "Check it with: spillway check-config THIS_FILE"]
        body = render(tables, preamble)
        if self.closing:
            body += "\n" + "\n".join(f"# {line}" for line in ["Then replay what Flume spilled:", *self.closing]) + "\n"
        return Conversion(self.agent, body, self.findings, self.replay_directories)


def convert(text: str, agent: str | None = None, source_name: str = "flume.properties") -> Conversion:
    """Convert one agent of a Flume properties text. Raises :class:`FlumeImportError` when the file
    names no agent, several without ``agent``, or not ``agent``."""
    props = parse_properties(text)
    found = agents_in(props)
    if not found:
        raise FlumeImportError("no Flume agent in this file (no <agent>.sources, .sinks or .channels)")
    if agent is None:
        if len(found) > 1:
            raise SeveralAgents(found)
        agent = found[0]
    elif agent not in found:
        raise FlumeImportError(f"no agent {agent!r} in this file{suggest(agent, found)}; it has: {', '.join(found)}")
    return Converter(props, agent, source_name).convert()
