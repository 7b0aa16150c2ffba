"""Flume's interceptors, without sockets: each one and its defaults, the chain, the configuration."""

from __future__ import annotations

import asyncio
import re
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from agents.interceptors import Chain, build, machine_address, machine_name, uuid4s
from agents.router import Event, Router
from agents.thrift_source import Status
from core.errors import ConfigError
from core.loading import load_settings
from core.settings import (
    BufferSettings,
    HostInterceptorSettings,
    InterceptorSettings,
    RegexFilterInterceptorSettings,
    RemoveHeaderInterceptorSettings,
    RouterSettings,
    Settings,
    StaticInterceptorSettings,
    TimestampInterceptorSettings,
    UUIDInterceptorSettings,
)
from topology.pipeline import Envelope, Pipeline

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def ev(body: bytes = b"", **headers: str) -> Event:
    return ([(k, v.encode()) for k, v in headers.items()], body)


def run(settings: Any, *events: Event, received_ms: int = 1_700_000_000_123) -> list[Event]:
    return list(Chain([settings]).apply(list(events), received_ms))


def headers(event: Event) -> dict[str, bytes]:
    return dict(event[0])


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


# -- timestamp ---------------------------------------------------------------------------------


def test_timestamp_sets_the_receive_time_in_ms_as_decimal_text_and_replaces_an_existing_one_by_default() -> None:
    [a, b] = run(TimestampInterceptorSettings(), ev(topic="t"), ev(timestamp="1"), received_ms=1_700_000_000_123)
    assert headers(a) == {"topic": b"t", "timestamp": b"1700000000123"}
    assert b[0] == [("timestamp", b"1700000000123")]  # replaced, not doubled


def test_timestamp_keeps_an_existing_one_with_preserve_existing_and_takes_another_header_name() -> None:
    s = TimestampInterceptorSettings(header="ts", preserve_existing=True)
    [a, b] = run(s, ev(ts="1"), ev(timestamp="1"), received_ms=42)
    assert a[0] == [("ts", b"1")]
    assert headers(b) == {"timestamp": b"1", "ts": b"42"}


# -- host --------------------------------------------------------------------------------------


def test_host_sets_this_machines_ip_by_default_replacing_an_existing_one() -> None:
    [a, b] = run(HostInterceptorSettings(), ev(), ev(host="elsewhere"))
    address = machine_address()
    socket.inet_aton(address)  # an IPv4 address
    assert headers(a) == {"host": address.encode()}
    assert b[0] == [("host", address.encode())]


def test_host_sets_the_host_name_without_use_ip_and_keeps_an_existing_one_with_preserve_existing() -> None:
    [a] = run(HostInterceptorSettings(use_ip=False, header="node"), ev())
    assert headers(a) == {"node": machine_name().encode()}
    assert machine_name() not in ("", "localhost")
    [b] = run(HostInterceptorSettings(preserve_existing=True), ev(host="elsewhere"))
    assert b[0] == [("host", b"elsewhere")]


# -- static ------------------------------------------------------------------------------------


def test_static_sets_its_header_and_keeps_an_existing_one_by_default() -> None:
    s = StaticInterceptorSettings(key="dc", value="eu-1")
    [a, b] = run(s, ev(topic="t"), ev(dc="us-2"))
    assert headers(a) == {"topic": b"t", "dc": b"eu-1"}
    assert b[0] == [("dc", b"us-2")]


def test_static_replaces_an_existing_header_without_preserve_existing() -> None:
    [a] = run(StaticInterceptorSettings(key="dc", value="é", preserve_existing=False), ev(dc="us-2", x="y"))
    assert headers(a) == {"x": b"y", "dc": "é".encode()}


# -- remove_header -----------------------------------------------------------------------------


def test_remove_header_by_name_by_list_and_by_whole_name_regex() -> None:
    e = ev(topic="t", secret="s", a="1", b="2", c="3", x_trace="4", xx="5")
    [by_name] = run(RemoveHeaderInterceptorSettings(name="secret"), (list(e[0]), b""))
    assert list(headers(by_name)) == ["topic", "a", "b", "c", "x_trace", "xx"]
    [by_list] = run(RemoveHeaderInterceptorSettings(from_list=" a , b,c "), (list(e[0]), b""))
    assert list(headers(by_list)) == ["topic", "secret", "x_trace", "xx"]
    [by_regex] = run(RemoveHeaderInterceptorSettings(match_regex="x_.*|x"), (list(e[0]), b""))
    assert list(headers(by_regex)) == ["topic", "secret", "a", "b", "c", "xx"]  # the whole name must match


def test_remove_header_options_combine_and_a_separator_is_a_regex() -> None:
    s = RemoveHeaderInterceptorSettings(name="secret", from_list="a;b", list_separator=";", match_regex="x.*")
    [a] = run(s, ev(topic="t", secret="s", a="1", b="2", c="3", xx="5"))
    assert a[0] == [("topic", b"t"), ("c", b"3")]


def test_remove_header_leaves_an_event_without_those_headers_as_it_was() -> None:
    e = ev(b"body", topic="t")
    [a] = run(RemoveHeaderInterceptorSettings(match_regex="secret.*"), e)
    assert a == ([("topic", b"t")], b"body")


# -- uuid --------------------------------------------------------------------------------------


def test_uuid_gives_every_event_its_own_canonical_version_4_uuid_in_header_id() -> None:
    out = run(UUIDInterceptorSettings(), *[ev(topic="t") for _ in range(500)])
    ids = [headers(e)["id"].decode() for e in out]
    assert len(set(ids)) == 500
    for i in ids:
        assert UUID_RE.fullmatch(i) and str(uuid.UUID(i)) == i and uuid.UUID(i).version == 4


def test_uuid_keeps_an_existing_id_by_default_and_replaces_it_without_preserve_existing() -> None:
    [kept] = run(UUIDInterceptorSettings(), ev(id="mine"))
    assert kept[0] == [("id", b"mine")]
    [replaced] = run(UUIDInterceptorSettings(preserve_existing=False, header="eid", prefix="n1-"), ev(eid="mine"))
    [(name, value)] = replaced[0]
    assert name == "eid" and value.startswith(b"n1-") and UUID_RE.fullmatch(value[3:].decode())


@pytest.mark.parametrize("n", [1, 2, 3, 99, 1000])
@pytest.mark.parametrize("prefix", [b"", b"p", "ü-".encode()])
def test_uuid4s_makes_n_distinct_uuids_after_the_prefix(n: int, prefix: bytes) -> None:
    ids = uuid4s(n, prefix)
    assert len(ids) == n and len(set(ids)) == n
    for i in ids:
        assert i.startswith(prefix) and UUID_RE.fullmatch(i[len(prefix):].decode())


# -- regex_filter ------------------------------------------------------------------------------


def test_regex_filter_keeps_only_the_events_whose_body_matches_by_default_and_counts_the_rest() -> None:
    counted: list[tuple[str, int]] = []
    chain = Chain([TimestampInterceptorSettings(), RegexFilterInterceptorSettings(regex=r"ERROR|WARN")],
                  on_filtered=lambda label, n: counted.append((label, n)))
    out = chain.apply([ev(b"an ERROR here"), ev(b"all fine"), ev(b"WARN: disk"), ev(b"")], 1)
    assert [body for _, body in out] == [b"an ERROR here", b"WARN: disk"]  # found anywhere in the body
    assert counted == [("regex_filter[1]", 2)]
    assert chain.filter_labels() == ["regex_filter[1]"]


def test_regex_filter_with_exclude_events_drops_the_matching_events() -> None:
    out = run(RegexFilterInterceptorSettings(regex="^DEBUG", exclude_events=True), ev(b"DEBUG x"), ev(b"INFO y"))
    assert [body for _, body in out] == [b"INFO y"]


def test_regex_filter_reads_the_body_as_utf8_and_survives_bytes_that_are_not() -> None:
    out = run(RegexFilterInterceptorSettings(regex="café"), ev("le café".encode()), ev(b"\xff\xfe caf\xe9"))
    assert [body for _, body in out] == ["le café".encode()]


def test_a_filter_counts_nothing_when_it_keeps_every_event() -> None:
    counted: list[Any] = []
    chain = Chain([RegexFilterInterceptorSettings(regex=".")], on_filtered=lambda *a: counted.append(a))
    assert len(chain.apply([ev(b"x"), ev(b"y")], 1)) == 2
    assert counted == []


# -- the chain ---------------------------------------------------------------------------------


def test_interceptors_apply_in_order_each_seeing_what_the_previous_one_set() -> None:
    a: list[InterceptorSettings] = [StaticInterceptorSettings(key="topic", value="stamped"),
                                    RemoveHeaderInterceptorSettings(name="topic")]
    [e] = Chain(a).apply([ev(x="1")], 1)
    assert e[0] == [("x", b"1")]  # set, then removed
    [e] = Chain(list(reversed(a))).apply([ev(x="1", topic="client")], 1)
    assert e[0] == [("x", b"1"), ("topic", b"stamped")]  # removed, then set


def test_a_header_an_interceptor_sets_routes_the_event_and_travels_as_a_record_header() -> None:
    chain = Chain([StaticInterceptorSettings(key="topic", value="audit"), UUIDInterceptorSettings()])
    [rec] = Router(RouterSettings()).route(chain.apply([ev(b"b", key="k")], 7), 7)
    assert (rec.topic, rec.key) == ("audit", b"k")
    assert set(dict(rec.headers)) == {"key", "topic", "id"}


def test_a_filter_that_drops_everything_ends_the_chain_with_no_events() -> None:
    chain = Chain([RegexFilterInterceptorSettings(regex="never"), UUIDInterceptorSettings()])
    assert not chain.apply([ev(b"x")], 1)


def test_an_empty_chain_is_inactive_so_the_pipeline_skips_it() -> None:
    assert not Chain([]).active
    assert Chain([TimestampInterceptorSettings()]).active


def test_each_interceptor_is_labelled_by_its_type_and_place() -> None:
    assert build(UUIDInterceptorSettings(), 3).label == "uuid[3]"


# -- configuration -----------------------------------------------------------------------------


def test_the_interceptors_table_loads_in_order_with_flumes_defaults(tmp_path: Path) -> None:
    cfg = write(tmp_path, """
[[interceptors]]
type = "timestamp"
[[interceptors]]
type = "host"
[[interceptors]]
type = "static"
key = "dc"
value = "eu-1"
[[interceptors]]
type = "remove_header"
name = "secret"
[[interceptors]]
type = "uuid"
[[interceptors]]
type = "regex_filter"
regex = "ERROR"
""")
    s = load_settings(cfg, env={})
    assert s.interceptors == (
        TimestampInterceptorSettings(header="timestamp", preserve_existing=False),
        HostInterceptorSettings(header="host", use_ip=True, preserve_existing=False),
        StaticInterceptorSettings(key="dc", value="eu-1", preserve_existing=True),
        RemoveHeaderInterceptorSettings(name="secret", from_list="", list_separator=r"\s*,\s*", match_regex=""),
        UUIDInterceptorSettings(header="id", preserve_existing=True, prefix=""),
        RegexFilterInterceptorSettings(regex="ERROR", exclude_events=False),
    )
    flat = s.flat()
    assert flat["interceptors[0].type"] == "timestamp" and flat["interceptors[5].regex"] == "ERROR"
    assert s.origins["interceptors[2].key"] == str(cfg)
    assert s.origins["interceptors[2].preserve_existing"] == "default"


def test_no_interceptors_by_default() -> None:
    assert load_settings(env={}).interceptors == ()


@pytest.mark.parametrize("table, key", [
    ('type = "lowercase"', "interceptors[1].type"),
    ('header = "x"', "interceptors[1].type"),
    ('type = "timestamp"\nheadr = "x"', "interceptors[1].headr"),
    ('type = "timestamp"\npreserve_existing = "yes"', "interceptors[1].preserve_existing"),
    ('type = "timestamp"\nheader = ""', "interceptors[1].header"),
    ('type = "static"\nvalue = "v"', "interceptors[1].key"),
    ('type = "static"\nkey = "k"', "interceptors[1].value"),
    ('type = "static"\nkey = ""\nvalue = "v"', "interceptors[1].key"),
    ('type = "remove_header"', "interceptors[1].name"),
    ('type = "remove_header"\nmatch_regex = "("', "interceptors[1].match_regex"),
    ('type = "remove_header"\nfrom_list = "a"\nlist_separator = "x*"', "interceptors[1].list_separator"),
    ('type = "regex_filter"', "interceptors[1].regex"),
    ('type = "regex_filter"\nregex = "[unclosed"', "interceptors[1].regex"),
    ('type = "uuid"\nprefix = 3', "interceptors[1].prefix"),
])
def test_an_invalid_interceptor_fails_at_start_with_the_key_named(tmp_path: Path, table: str, key: str) -> None:
    cfg = write(tmp_path, f'[[interceptors]]\ntype = "uuid"\n[[interceptors]]\n{table}\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    assert err.value.key == key
    assert str(err.value).startswith(f"{key}: ")


def test_interceptors_must_be_an_array_of_tables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^interceptors: expected an array of tables"):
        load_settings(write(tmp_path, 'interceptors = "uuid"\n'), env={})
    with pytest.raises(ConfigError, match=r"^interceptors\[0\]: expected a table"):
        load_settings(write(tmp_path, 'interceptors = ["uuid"]\n'), env={})


def test_interceptors_are_not_set_from_the_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^SPILLWAY_INTERCEPTORS: "):
        load_settings(write(tmp_path, ""), env={"SPILLWAY_INTERCEPTORS": '[{"type": "uuid"}]'})


# -- in the pipeline ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_pipeline_applies_the_chain_before_routing_and_answers_ok_for_a_call_filtered_out_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(buffer=BufferSettings(directory=tmp_path / "buffer"),
                        interceptors=(RegexFilterInterceptorSettings(regex="keep"),
                                      StaticInterceptorSettings(key="topic", value="stamped")))
    p = Pipeline(settings, None, None)  # type: ignore[arg-type]
    assert p.metrics.registry.get_sample_value("spillway_events_filtered_total",
                                               {"interceptor": "regex_filter[0]"}) == 0
    delivered: list[Any] = []

    async def forward(batch: Any, after: int = -1) -> None:
        delivered.append(batch.records)
        batch.reply.set_result(Status.OK)

    monkeypatch.setattr(p.failover, "forward", forward)

    async def calls(*envelopes: Envelope) -> Any:
        for envelope in envelopes:
            yield envelope

    loop = asyncio.get_running_loop()
    dropped = Envelope([ev(b"drop me"), ev(b"and me")], 5, loop.create_future())
    await p.router.process(calls(dropped))  # the router agent's body
    assert dropped.reply.done() and dropped.reply.result() == Status.OK  # at once, nothing delivered
    assert delivered == []

    mixed = Envelope([ev(b"keep this"), ev(b"not this")], 5, loop.create_future())
    await p.router.process(calls(mixed))
    assert await asyncio.wait_for(mixed.reply, 5) == Status.OK
    [[rec]] = delivered
    assert (rec.topic, rec.value) == ("stamped", b"keep this")
    assert p.metrics.registry.get_sample_value("spillway_events_filtered_total",
                                               {"interceptor": "regex_filter[0]"}) == 3
