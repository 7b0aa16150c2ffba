"""The commands' pure core: arguments, segment discovery, filters, event lines, formatting.

No asyncio and no sockets; the command modules do the I/O and call these.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson

from agents.records import Record
from agents.segments import SegmentScan

EXIT_OK: Final = 0
EXIT_PARTIAL: Final = 1  # some events not acknowledged, a segment skipped or damaged
EXIT_USAGE: Final = 2  # bad arguments or configuration

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class CommandError(Exception):
    """Stops a command: the message goes to stderr, ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# -- arguments ------------------------------------------------------------------


def parse_time(text: str, option: str) -> int:
    """Epoch milliseconds from an ISO-8601 datetime (no offset: UTC) or from digits (epoch ms)."""
    value = text.strip()
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{option}: expected an ISO-8601 datetime (e.g. 2024-05-01T12:00:00Z) "
                           f"or epoch milliseconds, got {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """replay's filters: topics (empty: every topic), receive time in ``[since, until)``."""

    topics: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None

    @classmethod
    def from_options(cls, topics: Iterable[str], since: str | None, until: str | None) -> RecordFilter:
        since_ms = None if since is None else parse_time(since, "--since")
        until_ms = None if until is None else parse_time(until, "--until")
        if since_ms is not None and until_ms is not None and since_ms >= until_ms:
            raise CommandError("--since must be earlier than --until")
        return cls(frozenset(topics), since_ms, until_ms)

    @property
    def active(self) -> bool:
        return bool(self.topics) or self.since_ms is not None or self.until_ms is not None

    def __call__(self, rec: Record) -> bool:
        if self.topics and rec.topic not in self.topics:
            return False
        if self.since_ms is not None and rec.timestamp_ms < self.since_ms:
            return False
        return self.until_ms is None or rec.timestamp_ms < self.until_ms


def is_archive(path: Path) -> bool:
    """A gzip'd segment (the drain's archive files are ``<segment>.gz``)."""
    return path.name.endswith(".gz")


def _is_segment_name(name: str) -> bool:
    return name.endswith(".seg") or name.endswith(".seg.gz")


def collect_segments(paths: Sequence[str | Path]) -> list[Path]:
    """The files to read: files as given, directories expanded to their ``*.seg`` and
    ``*.seg.gz`` files (not recursively), oldest name first; duplicates dropped."""
    out: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted((p for p in path.iterdir() if p.is_file() and _is_segment_name(p.name)),
                           key=lambda p: p.name)
        elif path.is_file():
            found = [path]
        else:
            raise CommandError(f"{path}: no such file or directory")
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


def decompress(path: Path, directory: Path) -> Path:
    """Write the segment inside the gzip file ``path`` to ``directory``; return its path.

    Raises OSError (gzip.BadGzipFile), EOFError or zlib.error on a damaged archive."""
    target = directory / (path.name[:-3] if path.name.endswith(".gz") else path.name + ".seg")
    with gzip.open(path, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
    return target


# -- send's event lines -----------------------------------------------------------


def parse_event_line(line: str | bytes, lineno: int) -> tuple[dict[str, str], bytes]:
    """``{"headers": {...}, "body": "text"}`` (or ``"body_base64"``) → (headers, body)."""
    where = f"line {lineno}"
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise CommandError(f"{where}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CommandError(f"{where}: expected a JSON object like {{\"headers\": {{}}, \"body\": \"...\"}}")
    unknown = set(doc) - {"headers", "body", "body_base64"}
    if unknown:
        raise CommandError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    headers = doc.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise CommandError(f"{where}: \"headers\" must be an object of string values")
    if "body" in doc and "body_base64" in doc:
        raise CommandError(f"{where}: give \"body\" or \"body_base64\", not both")
    if "body_base64" in doc:
        if not isinstance(doc["body_base64"], str):
            raise CommandError(f"{where}: \"body_base64\" must be a string")
        try:
            body = base64.b64decode(doc["body_base64"], validate=True)
        except binascii.Error as exc:
            raise CommandError(f"{where}: \"body_base64\" is not base64: {exc}") from None
    else:
        text = doc.get("body", "")
        if not isinstance(text, str):
            raise CommandError(f"{where}: \"body\" must be a string (UTF-8 text; use \"body_base64\" for bytes)")
        body = text.encode("utf-8")
    return headers, body


def generated_event(i: int, size: int, topic_header: str, topic: str | None) -> tuple[dict[str, str], bytes]:
    """The ``i``-th event of ``send --count``: a body of ``size`` bytes that names it."""
    headers = {topic_header: topic} if topic else {}
    body = f"spillway-send {i} ".encode().ljust(size, b".")[:size]
    return headers, body


# -- formatting -------------------------------------------------------------------


def fmt_ts(ms: int | None) -> str:
    if ms is None:
        return "-"
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fmt_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Plain aligned columns; numbers right-aligned."""
    cells = [list(headers)] + [[str(c) for c in row] for row in rows]
    numeric = [all(re.fullmatch(r"-?[\d,]+", r[i]) for r in cells[1:]) and len(cells) > 1
               for i in range(len(headers))]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True))
             .rstrip() for r in cells]
    return "\n".join(lines)


def toml_value(value: Any) -> str:
    """A setting's value as it would be written in the TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, tuple):
        value = list(value)
    return orjson.dumps(value).decode()


def dumps(doc: Any) -> str:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str).decode()


# -- reports ----------------------------------------------------------------------


def scan_doc(path: Path, scan: SegmentScan, size: int, per_topic: bool) -> dict[str, Any]:
    """One file of ``buffer ls``/``inspect`` (JSON form)."""
    doc: dict[str, Any] = {"path": str(path), "size": size, "events": scan.events,
                           "oldest": fmt_ts(scan.first_ts), "newest": fmt_ts(scan.last_ts),
                           "oldest_ms": scan.first_ts, "newest_ms": scan.last_ts, "clean": scan.clean}
    if per_topic:
        doc["per_topic"] = dict(sorted(scan.per_topic.items()))
    return doc


def damage(scan: SegmentScan) -> list[str]:
    """What ``buffer verify`` says is wrong with a file (empty: clean)."""
    out: list[str] = []
    if not scan.header_ok:
        out.append("bad file header" if scan.corrupt else f"torn file header ({scan.size} bytes)")
        return out
    for offset, length in scan.corrupt:
        out.append(f"corrupt range at offset {offset} ({length} bytes)")
    if scan.torn_tail_bytes:
        out.append(f"torn tail at offset {scan.size - scan.torn_tail_bytes} ({scan.torn_tail_bytes} bytes)")
    return out


@dataclass
class ReplayTally:
    """What a replay did, for its summary and exit code."""

    dry_run: bool
    files: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)
    skipped_by_filter: int = 0
    failed: int = 0
    locked: dict[str, int] = field(default_factory=dict)  # path -> events not replayed
    errors: dict[str, str] = field(default_factory=dict)  # path -> what went wrong
    not_attempted: list[str] = field(default_factory=list)
    already: dict[str, int] = field(default_factory=dict)  # Flume file -> events a former replay sent whole
    resumed: dict[str, int] = field(default_factory=dict)  # Flume file -> events a former replay sent first

    def add(self, counts: Mapping[str, int]) -> None:
        for topic, n in counts.items():
            self.per_topic[topic] = self.per_topic.get(topic, 0) + n

    @property
    def total(self) -> int:
        return sum(self.per_topic.values())

    @property
    def exit_code(self) -> int:
        partial = self.failed or self.locked or self.errors or self.not_attempted
        return EXIT_PARTIAL if partial else EXIT_OK

    def doc(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "files": self.files, "total": self.total,
                "per_topic": dict(sorted(self.per_topic.items())), "skipped_by_filter": self.skipped_by_filter,
                "failed": self.failed, "locked": self.locked, "errors": self.errors,
                "not_attempted": self.not_attempted, "already_replayed": self.already, "resumed": self.resumed}

    def lines(self) -> list[str]:
        verb = "would send" if self.dry_run else "sent"
        out = [f"replay: {self.files} file(s), {verb} {self.total} event(s)"]
        width = max(map(len, self.per_topic), default=0)
        out += [f"  {topic.ljust(width)}  {n}" for topic, n in sorted(self.per_topic.items())]
        out.append(f"skipped by filters: {self.skipped_by_filter}")
        if not self.dry_run:
            out.append(f"failed (not acknowledged by Kafka): {self.failed}")
        if self.locked:
            out.append(f"not replayed, being drained by a running worker: {len(self.locked)} segment(s), "
                       f"{sum(self.locked.values())} event(s)")
        if self.errors:
            out.append(f"files with errors: {len(self.errors)}")
        if self.not_attempted:
            out.append(f"not attempted (Kafka unreachable): {len(self.not_attempted)} file(s)")
        if self.already:
            out.append(f"skipped, replayed before (--force to send again): {len(self.already)} Flume file(s), "
                       f"{sum(self.already.values())} event(s)")
        if self.resumed:
            out.append(f"resumed after what a former replay sent: {len(self.resumed)} Flume file(s), "
                       f"{sum(self.resumed.values())} event(s) not sent again")
        return out
