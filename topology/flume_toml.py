"""The parts of ``spillway import-flume`` that are not about any one Flume component: the
properties parser, the findings, the TOML tables and their rendering with a cited comment per
key, the keystore-to-PEM commands, and :class:`PropertyReader` (reading properties while
remembering which were read, so every other one can be reported). Pure: no I/O.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

from jproperties import Properties  # type: ignore[import-untyped]

#: the agent-level keys Flume reads
AGENT_KEYS = ("sources", "sinks", "channels", "sinkgroups", "configfilters")


class FlumeImportError(Exception):
    """The file cannot be converted at all (not properties, no such agent, several agents)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing said about a Flume property: ``unconverted`` (with --strict, exit 1) or a ``note``."""

    prop: str
    reason: str
    kind: Literal["unconverted", "note"] = "unconverted"

    def line(self) -> str:
        return f"{self.prop}: {self.reason}"


@dataclass
class Table:
    """One TOML table of the output: its items cite the Flume property each came from."""

    header: str
    array: bool = False
    comments: list[str] = field(default_factory=list)
    items: list[tuple[str, Any, str]] = field(default_factory=list)

    def set(self, key: str, value: Any, cite: str) -> None:
        self.items = [item for item in self.items if item[0] != key]
        self.items.append((key, value, cite))


@dataclass
class Conversion:
    agent: str
    toml: str
    findings: list[Finding]
    replay_directories: list[str]

    @property
    def unconverted(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == "unconverted"]

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == "note"]


# -- properties -----------------------------------------------------------------------------------


def parse_properties(text: str) -> dict[str, str]:
    """A java.util.Properties text (``=``, ``:`` or blanks between key and value, ``#``/``!``
    comments, ``\\`` line continuations and escapes); the last of a repeated key wins, as in Java."""
    props = Properties()
    try:
        props.load(text)
    except Exception as exc:  # jproperties raises its own ParseError and others on bad escapes
        raise FlumeImportError(f"not a Java properties file: {exc}") from None
    return {str(k): str(v.data) for k, v in props.items()}


def agents_in(props: Mapping[str, str]) -> list[str]:
    """The agent names a file configures (``<agent>.sources`` / ``.sinks`` / ``.channels`` ...)."""
    names = {key.split(".", 1)[0] for key in props if key.count(".") >= 1 and key.split(".")[1] in AGENT_KEYS}
    return sorted(names)


def split_names(value: str) -> list[str]:
    return value.split()


def flume_bool(value: str) -> bool:
    """Flume's Context.getBoolean: Java's Boolean.parseBoolean (``true`` in any case, else false)."""
    return value.strip().lower() == "true"


def suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _quote(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_quote(v) for v in value) + "]"
    text = str(value)
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def render(tables: Iterable[Table], preamble: Iterable[str]) -> str:
    lines = [f"# {line}" if line else "#" for line in preamble]
    for table in tables:
        if not table.items and not table.comments:
            continue
        lines.append("")
        lines += [f"# {c}" if c else "#" for c in table.comments]
        if not table.items:
            continue
        lines.append(f"[[{table.header}]]" if table.array else f"[{table.header}]")
        cells = [(f"{key} = {_quote(value)}", cite) for key, value, cite in table.items]
        width = max(len(text) for text, _ in cells)
        lines += [f"{text.ljust(width)}  # {cite}" if cite else text for text, cite in cells]
    return "\n".join(lines) + "\n"


# -- the components -------------------------------------------------------------------------------

class SeveralAgents(FlumeImportError):
    def __init__(self, agents: list[str]) -> None:
        super().__init__(f"this file configures {len(agents)} agents: {', '.join(agents)}; pick one with --agent")
        self.agents = agents


def pem_paths(keystore: str) -> tuple[str, str, str]:
    """(PKCS12 file, certificate PEM, key PEM) next to a keystore."""
    path = PurePosixPath(keystore)
    stem = path.with_suffix("") if path.suffix else path
    return f"{stem}.p12", f"{stem}.cert.pem", f"{stem}.key.pem"


def keystore_commands(keystore: str, store_type: str, password_env: str, *, with_key: bool = True) -> list[str]:
    """The commands that turn a Java keystore into the PEM files spillway reads (password from
    the environment variable ``password_env``, never written out)."""
    p12, cert, key = pem_paths(keystore)
    out: list[str] = []
    if store_type.upper() != "PKCS12":
        out.append(f"keytool -importkeystore -srckeystore {shlex.quote(keystore)} -srcstoretype {store_type.upper()} "
                   f"-srcstorepass:env {password_env} -destkeystore {shlex.quote(p12)} -deststoretype PKCS12 "
                   f"-deststorepass:env {password_env}")
    else:
        p12 = keystore
    out.append(f"openssl pkcs12 -in {shlex.quote(p12)} -passin env:{password_env} -nokeys "
               f"-out {shlex.quote(cert)}")
    if with_key:
        out.append(f"openssl pkcs12 -in {shlex.quote(p12)} -passin env:{password_env} -nocerts -nodes "
                   f"-out {shlex.quote(key)} && chmod 600 {shlex.quote(key)}")
    return out



class PropertyReader:
    """Reads one agent's properties, remembering which it read and what it found."""

    def __init__(self, props: Mapping[str, str], agent: str) -> None:
        self.props = props
        self.agent = agent
        self.a = f"{agent}."
        self.used: set[str] = set()
        self.findings: list[Finding] = []

    def get(self, key: str) -> str | None:
        """A property by its full key (marked as read)."""
        if key in self.props:
            self.used.add(key)
            return self.props[key].strip()
        return None

    def unconverted(self, prop: str, reason: str) -> None:
        self.used.add(prop)
        self.findings.append(Finding(prop, reason))

    def note(self, prop: str, reason: str) -> None:
        self.used.add(prop)
        self.findings.append(Finding(prop, reason, "note"))

    def component_keys(self, prefix: str) -> list[str]:
        return sorted(k[len(prefix):] for k in self.props if k.startswith(prefix))

    def check_unknown(self, prefix: str, known: Iterable[str], what: str) -> None:
        """Every property under ``prefix`` not read yet: unknown, with the nearest known key."""
        known = list(known)
        for rest in self.component_keys(prefix):
            key = prefix + rest
            if key in self.used:
                continue
            self.unconverted(key, f"unknown {what} property{suggest(rest, known)}; Flume ignores it too")

    def int_value(self, key: str, value: str) -> int | None:
        try:
            return int(value)
        except ValueError:
            self.unconverted(key, f"{value!r} is not an integer (Flume refuses it too)")
            return None
