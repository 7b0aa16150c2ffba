"""Flume's interceptors: header stamps and filters applied to each call at the source.

As in Flume's ChannelProcessor, the ``[[interceptors]]`` of the configuration apply in order
to a call's events before anything else sees them: before routing, so a header they set can
name the topic or the key, and before the disk buffer, so what they set is stored with the
event and drained unchanged. Flume's built-ins, with Flume's defaults:

    timestamp      header ``timestamp`` = the call's receive time, ms since the epoch
    host           header ``host`` = this machine's IP address (or, use_ip false, its name)
    static         header ``key`` = ``value`` (an existing one is kept by default)
    remove_header  removes headers by name, by list or by regular expression
    uuid           header ``id`` = a random UUID: one stable id per event, for deduplication
    regex_filter   keeps only the events whose body matches (or, exclude_events, drops them)

Pure: no I/O, no awaits (the host's address is looked up once, when the chain is built).
A :class:`Chain` is built once from the settings and applied to each call's batch; the
per-event work is a scan of the event's few headers, and an empty chain is skipped.
Headers are changed in place (each event's header list belongs to its call); an interceptor
that filters returns a new list. Setting a header replaces every header of that name, as a
Flume event's header map would.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Callable, Sequence
from typing import Protocol

from agents.router import Event
from core.settings import (
    HostInterceptorSettings,
    InterceptorSettings,
    RegexFilterInterceptorSettings,
    RemoveHeaderInterceptorSettings,
    StaticInterceptorSettings,
    TimestampInterceptorSettings,
    UUIDInterceptorSettings,
)

#: called with an interceptor's label and how many events of a call it filtered out
OnFiltered = Callable[[str, int], None]


class Interceptor(Protocol):
    #: names it in metrics: ``<type>[<index in [[interceptors]]>]``, e.g. ``regex_filter[2]``
    label: str

    def __call__(self, events: Sequence[Event], received_ms: int) -> Sequence[Event]: ...


def _set(events: Sequence[Event], name: str, value: bytes, preserve_existing: bool) -> None:
    """Set header ``name`` to ``value`` in every event (keep an existing one if ``preserve_existing``)."""
    pair = (name, value)
    if preserve_existing:
        for headers, _ in events:
            for h in headers:
                if h[0] == name:
                    break
            else:
                headers.append(pair)
        return
    for headers, _ in events:
        for h in headers:
            if h[0] == name:
                _remove(headers, name)
                break
        headers.append(pair)


def _remove(headers: list[tuple[str, bytes]], name: str) -> None:
    """Remove every header ``name`` (in place: for a few headers, cheaper than a comprehension)."""
    i = len(headers)
    while i:
        i -= 1
        if headers[i][0] == name:
            del headers[i]


class Timestamp:
    def __init__(self, s: TimestampInterceptorSettings, label: str) -> None:
        self.label = label
        self.header, self.preserve_existing = s.header, s.preserve_existing

    def __call__(self, events: Sequence[Event], received_ms: int) -> Sequence[Event]:
        _set(events, self.header, b"%d" % received_ms, self.preserve_existing)
        return events


class Host:
    def __init__(self, s: HostInterceptorSettings, label: str) -> None:
        self.label = label
        self.header, self.preserve_existing = s.header, s.preserve_existing
        self.value = (machine_address() if s.use_ip else machine_name()).encode()

    def __call__(self, events: Sequence[Event], received_ms: int) -> Sequence[Event]:
        _set(events, self.header, self.value, self.preserve_existing)
        return events


class Static:
    def __init__(self, s: StaticInterceptorSettings, label: str) -> None:
        self.label = label
        self.header, self.value, self.preserve_existing = s.key, s.value.encode(), s.preserve_existing

    def __call__(self, events: Sequence[Event], received_ms: int) -> Sequence[Event]:
        _set(events, self.header, self.value, self.preserve_existing)
        return events


class RemoveHeader:
    """Removes the headers named ``name``, listed in ``from_list`` or whose whole name matches
    ``match_regex``; each header name's verdict is remembered, so a regex runs once a name."""

    def __init__(self, s: RemoveHeaderInterceptorSettings, label: str) -> None:
        self.label = label
        self.names = {s.name} if s.name else set()
        if s.from_list:
            self.names.update(n for n in re.split(s.list_separator, s.from_list.strip()) if n)
        self.match = re.compile(s.match_regex).fullmatch if s.match_regex else None
        self._verdicts: dict[str, bool] = {}

    def removes(self, name: str) -> bool:
        verdict = self._verdicts.get(name)
        if verdict is None:
            verdict = name in self.names or (self.match is not None and self.match(name) is not None)
            if len(self._verdicts) < 4096:  # bounded: header names are few, but clients choose them
                self._verdicts[name] = verdict
        return verdict

    def __call__(self, events: Sequence[Event], received_ms: int) -> Sequence[Event]:
        # backwards through each event's headers, deleting in place
        if self.match is None:  # names only: a set lookup a header
            names = self.names
            for headers, _ in events:
                i = len(headers)
                while i:
                    i -= 1
                    if headers[i][0] in names:
                        del headers[i]
            return events
        verdict, removes = self._verdicts.get, self.removes
        for headers, _ in events:
            i = len(headers)
            while i:
                i -= 1
                name = headers[i][0]
                removed = verdict(name)
                if removed or (removed is None and removes(name)):
                    del headers[i]
        return events


class UUID:
    def __init__(self, s: UUIDInterceptorSettings, label: str) -> None:
        self.label = label
        self.header, self.preserve_existing, self.prefix = s.header, s.preserve_existing, s.prefix.encode()

    def __call__(self, events: Sequence[Event], received_ms: int) -> Sequence[Event]:
        name = self.header
        preserve_existing = self.preserve_existing
        for (headers, _), value in zip(events, uuid4s(len(events), self.prefix), strict=True):
            for h in headers:
                if h[0] == name:
                    if not preserve_existing:
                        _remove(headers, name)
                        headers.append((name, value))
                    break
            else:
                headers.append((name, value))
        return events


class RegexFilter:
    """Flume's regex_filter: ``regex`` searched in the body decoded as UTF-8 (Python's ``re``
    syntax, close to Java's for common patterns)."""

    def __init__(self, s: RegexFilterInterceptorSettings, label: str, on_filtered: OnFiltered) -> None:
        self.label = label
        self.search = re.compile(s.regex).search
        self.exclude_events = s.exclude_events
        self.on_filtered = on_filtered

    def __call__(self, events: Sequence[Event], received_ms: int) -> Sequence[Event]:
        search = self.search
        if self.exclude_events:
            kept = [e for e in events if search(e[1].decode("utf-8", "replace")) is None]
        else:
            kept = [e for e in events if search(e[1].decode("utf-8", "replace")) is not None]
        if len(kept) != len(events):
            self.on_filtered(self.label, len(events) - len(kept))
        return kept


def _ignore(label: str, n: int) -> None:
    pass


def build(s: InterceptorSettings, index: int, on_filtered: OnFiltered = _ignore) -> Interceptor:
    """The interceptor ``s`` describes, ``index`` being its place in ``[[interceptors]]``."""
    label = f"{s.type}[{index}]"
    match s:
        case TimestampInterceptorSettings():
            return Timestamp(s, label)
        case HostInterceptorSettings():
            return Host(s, label)
        case StaticInterceptorSettings():
            return Static(s, label)
        case RemoveHeaderInterceptorSettings():
            return RemoveHeader(s, label)
        case UUIDInterceptorSettings():
            return UUID(s, label)
        case RegexFilterInterceptorSettings():
            return RegexFilter(s, label, on_filtered)
    raise TypeError(f"not interceptor settings: {s!r}")  # pragma: no cover


class Chain:
    """The configured interceptors, applied in order to a call's events."""

    def __init__(self, settings: Sequence[InterceptorSettings], on_filtered: OnFiltered = _ignore) -> None:
        self.interceptors = [build(s, i, on_filtered) for i, s in enumerate(settings)]
        #: false for an empty chain, which the caller then skips: an attribute, not ``__len__``,
        #: so the check costs a call tens of nanoseconds, not hundreds
        self.active = bool(self.interceptors)

    def filter_labels(self) -> list[str]:
        """The labels of the interceptors that can filter events out."""
        return [i.label for i in self.interceptors if isinstance(i, RegexFilter)]

    def apply(self, events: Sequence[Event], received_ms: int) -> Sequence[Event]:
        """The call's events after every interceptor, in order; maybe fewer, maybe none."""
        for interceptor in self.interceptors:
            events = interceptor(events, received_ms)
            if not events:
                break
        return events


# -- helpers -----------------------------------------------------------------------------------


_VERSION_4 = bytes(b & 0x0F | 0x40 for b in range(256))  # byte 6: version 4 in the high nibble
_VARIANT_RFC = bytes(b & 0x3F | 0x80 for b in range(256))  # byte 8: variant 10xx


def uuid4s(n: int, prefix: bytes = b"") -> list[bytes]:
    """``n`` random UUIDs (version 4, from ``os.urandom`` as :func:`uuid.uuid4`) in their canonical
    text form, each after ``prefix``: ``str(uuid.uuid4())`` costs microseconds an id, this a
    few hundred nanoseconds, the formatting done for the whole batch at once."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_VARIANT_RFC)
    # 40 characters an id: 8 groups of 4 hex digits, each followed by "-"; keep the dashes
    # after groups 2-5 (8-4-4-4-12), make the last one a separator, delete the others.
    # b"\xff" never occurs in hex digits nor in UTF-8 text (the prefix).
    text = bytearray(raw.hex("-", 2).encode() + b"-")
    text[39::40] = b"\xff" * n
    del text[34::40]  # after group 7 (the stride is 39 from here)
    del text[29::39]  # after group 6 (38)
    del text[4::38]  # after group 1 (37: 36 characters and the separator)
    if prefix:
        ids = (prefix + bytes(text).replace(b"\xff", b"\xff" + prefix)).split(b"\xff")
    else:
        ids = bytes(text).split(b"\xff")
    ids.pop()  # after the last separator: empty, or the prefix alone
    return ids


def machine_address() -> str:
    """This machine's IP address, as Java's ``InetAddress.getLocalHost()`` gives Flume: the address
    its host name resolves to; when that is a loopback address (``127.0.1.1`` on Debian), the
    address of the interface that routes outward (a UDP socket's connect sends nothing)."""
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        address = "127.0.0.1"
    if address.startswith("127."):
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the route
            address = s.getsockname()[0]
    return address


def machine_name() -> str:
    """This machine's fully qualified name (Java's ``getCanonicalHostName()``), or its host name
    when the lookup only says ``localhost``."""
    name = socket.getfqdn()
    return socket.gethostname() if name == "localhost" or name.startswith("localhost.") else name
