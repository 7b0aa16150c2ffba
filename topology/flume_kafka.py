"""KafkaSinks, in Flume 1.6 and 1.7+ spelling, as ``[kafka]`` / ``[[kafka.secondary]]`` tables:
bootstrap servers, topic and topic header (for the router), acks (always all here),
batch size, ``kafka.producer.*`` into ``[kafka.producer]`` and the security keys (PEM files
from Java stores, with the commands; passwords never written out). Part of
:mod:`topology.flume_import`. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from core.settings import TOPIC_RE, ProducerSettings
from topology.flume_toml import PropertyReader, Table, flume_bool, keystore_commands, pem_paths, suggest


def _word(value: str) -> str:
    return value.strip().lower()


#: Java's name of a [kafka.producer] key where it is not the key with "." for "_"
_JAVA_NAMES: Mapping[str, str] = {"max_batch_size": "batch.size"}
#: kafka.producer.<Java name> -> [kafka.producer] key (issue 10's table), parse: from the settings themselves
_PRODUCER_KEYS: Mapping[str, tuple[str, Callable[[str], Any]]] = {
    _JAVA_NAMES.get(f.name, f.name.replace("_", ".")): (f.name, int if f.type in ("int", "Size") else _word)
    for f in fields(ProducerSettings)}
#: producer keys that need nothing here, and why
_PRODUCER_NEEDLESS: Mapping[str, str] = {
    "key.serializer": "spillway sends the key header's bytes as the record key",
    "value.serializer": "spillway sends the event body's bytes as the record value",
    "retries": "spillway's producer retries until failover.timeout, then the next cluster or the disk buffer",
    "max.in.flight.requests.per.connection": "spillway's producer is idempotent, which keeps order",
    "buffer.memory": "spillway holds no events in memory that are not acknowledged",
}
_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

_KAFKA_SINK_KEYS = ("type", "channel", "brokerList", "topic", "requiredAcks", "batchSize",
                    "kafka.bootstrap.servers", "kafka.topic", "flumeBatchSize", "kafka.flumeBatchSize",
                    "useFlumeEventFormat", "defaultPartitionId", "partitionIdHeader", "allowTopicOverride",
                    "topicHeader", "timestampHeader")


@dataclass
class KafkaSinkTables:
    """One KafkaSink's ``[kafka]``-shaped table and its producer table, and what it says for the router."""

    name: str
    prefix: str
    kafka: Table
    producer: Table
    default_topic: tuple[str, str] | None = None  # (topic, cited property)
    topic_header: tuple[str, str] | None = None


class KafkaSinks(PropertyReader):
    """Converts each KafkaSink into a :class:`KafkaSinkTables` (``kafka_sinks``, by priority)."""

    kafka_sinks: list[KafkaSinkTables]

    def kafka_sink(self, name: str, prefix: str, rank: int, prio: str) -> None:
        header = "kafka" if rank == 0 else "kafka.secondary"
        sink = KafkaSinkTables(name, prefix, Table(header, array=rank > 0),
                          Table("kafka.producer" if rank == 0 else "kafka.secondary.producer"))
        where = f"{prefix}type" + (f" ({prio})" if prio else "")
        sink.kafka.comments.append(f"KafkaSink {name!r}: " + ("the primary cluster" if rank == 0 else
                                   f"failover cluster {rank}, tried after the ones above") + f"  [{where}]")
        if rank > 0:
            label = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or f"kafka{rank}"
            sink.kafka.set("name", label, f"{prefix[:-1]} (the sink's name)")
        self.get(prefix + "channel")
        servers = self.pick(prefix, "kafka.bootstrap.servers", "brokerList")
        if servers is not None:
            sink.kafka.set("bootstrap_servers", ",".join(s.strip() for s in servers[0].split(",")), servers[1])
        else:
            self.unconverted(prefix + "kafka.bootstrap.servers", "required by Flume and missing "
                             "(or brokerList in 1.6)")
        topic = self.pick(prefix, "kafka.topic", "topic")
        if topic is None:
            sink.default_topic = ("default-flume-topic", f"{prefix}kafka.topic is unset: Flume's default")
        elif "%{" in topic[0]:
            self.unconverted(topic[1], f"{topic[0]!r}: a topic made from headers is not supported; spillway "
                             "takes the topic from one header (router.topic_header), else router.default_topic")
        elif not TOPIC_RE.match(topic[0]) or topic[0].startswith("__"):
            self.unconverted(topic[1], f"{topic[0]!r} is not a valid Kafka topic name")
        else:
            sink.default_topic = topic
        acks = self.pick(prefix, "kafka.producer.acks", "requiredAcks")
        if acks is None:
            self.note(prefix + "kafka.producer.acks", "unset: Flume waited for the leader only (acks=1); spillway "
                      "always waits for all in-sync replicas (acks=all)")
        elif acks[0].lower() not in ("all", "-1"):
            self.note(acks[1], f"acks={acks[0]} is weaker than all: upgraded, spillway always waits for all "
                      "in-sync replicas")
        batch = self.pick(prefix, "flumeBatchSize", "batchSize")
        if batch is None and self.get(prefix + "kafka.flumeBatchSize") is not None:
            self.note(prefix + "kafka.flumeBatchSize", "Flume itself ignores this key (it reads flumeBatchSize, "
                      "as the User Guide's property table says); taken as flumeBatchSize")
            batch = (self.props[prefix + "kafka.flumeBatchSize"], prefix + "kafka.flumeBatchSize")
        if batch is not None and self.int_value(batch[1], batch[0]) is not None:
            self.note(batch[1].split(" ")[0], f"{batch[0]} events a sink transaction took from the channel: not "
                      "needed, each client call goes to Kafka as one batch and concurrent calls share Kafka record "
                      "batches (kafka.producer.max_batch_size bounds one in bytes)")
        self.kafka_routing(prefix, sink)
        self.kafka_producer(prefix, sink)
        for rest in self.component_keys(prefix + "kafka."):
            key = f"{prefix}kafka.{rest}"
            known = ("bootstrap.servers", "topic", "flumeBatchSize")
            if key not in self.used and not rest.startswith("producer.") and not suggest(rest, known):
                self.unconverted(key, "Flume 1.6 passed kafka.* to its old Scala producer; spillway has no such "
                                 "setting (1.7+ producer settings are kafka.producer.*)")
        self.check_unknown(prefix, _KAFKA_SINK_KEYS, "KafkaSink")
        self.kafka_sinks.append(sink)

    def pick(self, prefix: str, new: str, old: str) -> tuple[str, str] | None:
        """The 1.7+ key, else the 1.6 one: (value, cited property)."""
        value = self.get(prefix + new)
        legacy = self.get(prefix + old)
        if value is not None:
            if legacy is not None:
                self.note(prefix + old, f"Flume 1.6 spelling, overridden by {prefix}{new}")
            return value, prefix + new
        if legacy is not None:
            return legacy, f"{prefix}{old} (Flume 1.6 spelling)"
        return None

    def kafka_routing(self, prefix: str, sink: KafkaSinkTables) -> None:
        header = self.get(prefix + "topicHeader")
        if header is not None:
            sink.topic_header = (header, prefix + "topicHeader")
        allow = self.get(prefix + "allowTopicOverride")
        if allow is not None and not flume_bool(allow):
            self.unconverted(prefix + "allowTopicOverride", "false: Flume sent every event to the sink's topic; "
                             "spillway always honours the topic header (router.allowed_topics can refuse others)")
        flume_format = self.get(prefix + "useFlumeEventFormat")
        if flume_format is not None and flume_bool(flume_format):
            self.unconverted(prefix + "useFlumeEventFormat", "spillway writes the body as the record value and "
                             "the headers as Kafka record headers, not Flume's Avro event format")
        for key in ("partitionIdHeader", "defaultPartitionId"):
            if self.get(prefix + key) is not None:
                self.unconverted(prefix + key, "fixed partitions are not supported: records are partitioned by "
                                 "their key, like Kafka's Java client")
        if self.get(prefix + "timestampHeader") is not None:
            self.unconverted(prefix + "timestampHeader", "the record timestamp is the time spillway received the "
                             "event, not a header")
        for rest in self.component_keys(prefix + "header."):
            self.note(prefix + "header." + rest, "not needed: spillway sends every event header as a Kafka "
                      "record header")

    def kafka_producer(self, prefix: str, sink: KafkaSinkTables) -> None:
        pp = prefix + "kafka.producer."
        secret = ("set SPILLWAY_KAFKA_SASL_PASSWORD, or kafka.sasl_password_file" if sink.kafka.header == "kafka"
                  else "set sasl_password_file (or sasl_password) in this table")
        for rest in self.component_keys(pp):
            key = pp + rest
            if key in self.used:
                continue
            value = self.get(key) or ""
            if rest in _PRODUCER_KEYS:
                name, parse = _PRODUCER_KEYS[rest]
                try:
                    sink.producer.set(name, parse(value), key)
                except ValueError:
                    self.unconverted(key, f"{value!r} is not an integer")
            elif rest == "client.id":
                sink.kafka.set("client_id", value, key)
            elif rest == "enable.idempotence":
                if not flume_bool(value):
                    self.note(key, "false: upgraded, spillway's producer is always idempotent")
            elif rest in _PRODUCER_NEEDLESS:
                self.note(key, f"not needed: {_PRODUCER_NEEDLESS[rest]}")
            elif rest == "security.protocol":
                if value.upper() in _SECURITY_PROTOCOLS:
                    sink.kafka.set("security_protocol", value.upper(), key)
                else:
                    self.unconverted(key, f"{value!r} is not one of {', '.join(_SECURITY_PROTOCOLS)}")
            elif rest == "sasl.mechanism":
                if value.upper() in _SASL_MECHANISMS:
                    sink.kafka.set("sasl_mechanism", value.upper(), key)
                else:
                    self.unconverted(key, f"SASL mechanism {value!r} is not supported (spillway has "
                                     f"{', '.join(_SASL_MECHANISMS)}; no Kerberos/GSSAPI)")
            elif rest == "sasl.jaas.config":
                user = re.search(r'username\s*=\s*"([^"]*)"', value)
                if user and re.search(r"(Plain|Scram)LoginModule", value):
                    sink.kafka.set("sasl_username", user.group(1), f"{key} (username)")
                    sink.kafka.comments.append(f"sasl_password: from {key}, not copied here: {secret}")
                    self.note(key, "the password is not written out: set it in the environment or a file")
                else:
                    self.unconverted(key, "only PlainLoginModule/ScramLoginModule with username and password "
                                     "convert")
            elif rest in ("ssl.truststore.location", "ssl.keystore.location"):
                self.kafka_store(pp, rest, value, sink)
            elif rest in ("ssl.truststore.type", "ssl.keystore.type", "ssl.truststore.password",
                          "ssl.keystore.password", "ssl.key.password"):
                self.used.add(key)  # used by kafka_store's commands
            elif rest == "ssl.disableTLSHostnameVerification":
                if flume_bool(value):
                    sink.kafka.set("ssl_check_hostname", False, key)
            else:
                self.unconverted(key, "no such producer setting in spillway ([kafka.producer] has "
                                 f"{', '.join(k for k, _ in _PRODUCER_KEYS.values())})")

    def kafka_store(self, pp: str, rest: str, location: str, sink: KafkaSinkTables) -> None:
        trust = rest.startswith("ssl.truststore")
        kind = "truststore" if trust else "keystore"
        store_type = self.props.get(f"{pp}ssl.{kind}.type", "JKS").strip()
        env = f"FLUME_KAFKA_{kind.upper()}_PASSWORD"
        _, cert, key = pem_paths(location)
        cmds = keystore_commands(location, store_type, env, with_key=not trust)
        if trust:
            sink.kafka.set("ssl_cafile", cert, f"{pp}{rest}, as PEM (see the commands above)")
        else:
            sink.kafka.set("ssl_certfile", cert, f"{pp}{rest}, as PEM")
            sink.kafka.set("ssl_keyfile", key, f"{pp}{rest}, as PEM")
        sink.kafka.comments += [f"Kafka TLS: PEM files from the Java {kind} {location} ({pp}{rest}), with its "
                                f"password in {env}:", f"  read -rs {env} && export {env}",
                                *(f"  {cmd}" for cmd in cmds)]
