"""``spillway buffer ls|inspect|verify [PATH...]``: what the disk buffer holds, and whether it is intact.

Reads segment files (and gzip'd archive segments) with
:func:`~agents.segments.scan_segment`; never changes them (recovery is the
worker's job at start). Works with or without a running worker.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import click
from faust.cli import argument, option

from agents.flume_files import FlumeFile, as_segment_scan, is_flume_file, scan_file
from agents.router import Router
from agents.segments import SegmentScan, scan_segment
from core.settings import RouterSettings
from topology.app import app
from topology.commands.base import SpillwayCommand
from topology.commands.core import (
    EXIT_OK,
    EXIT_PARTIAL,
    CommandError,
    damage,
    decompress,
    dumps,
    fmt_size,
    fmt_ts,
    is_archive,
    scan_doc,
    table,
)


def scan_files(files: list[Path], router: Router | None = None) -> list[tuple[Path, SegmentScan | None, str | None]]:
    """(path, scan or None, error) for each file; archives are scanned decompressed, Flume's
    avro_event files read with :mod:`agents.flume_files` (topics as ``router`` would route them)."""
    out: list[tuple[Path, SegmentScan | None, str | None]] = []
    router = router or Router(RouterSettings())
    with tempfile.TemporaryDirectory(prefix="spillway-buffer-") as tmp:
        for path in files:
            try:
                if is_flume_file(path):
                    flume = FlumeFile.open(path)
                    out.append((path, as_segment_scan(flume, scan_file(flume, router)), None))
                elif is_archive(path):
                    segment = decompress(path, Path(tmp))
                    try:
                        out.append((path, scan_segment(segment), None))
                    finally:
                        segment.unlink(missing_ok=True)
                else:
                    out.append((path, scan_segment(path), None))
            except FileNotFoundError:
                out.append((path, None, "gone (drained or deleted while listing)"))
            except (OSError, EOFError, ValueError) as exc:  # NotFlumeFile is a ValueError
                out.append((path, None, f"cannot read: {exc}"))
    return out


def _found_in_directories(files: list[Path], paths: tuple[str, ...]) -> list[Path]:
    """Those of ``files`` found in a directory, not named on the command line."""
    given = {Path(p).resolve() for p in paths}
    return [p for p in files if p.resolve() not in given]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def listing(scans: list[tuple[Path, SegmentScan | None, str | None]], per_topic: bool) -> dict[str, Any]:
    files: list[dict[str, Any]] = []
    totals: dict[str, int] = {}
    for path, scan, error in scans:
        if scan is None:
            files.append({"path": str(path), "size": _size(path), "error": error})
            continue
        files.append(scan_doc(path, scan, _size(path), per_topic))
        for topic, n in scan.per_topic.items():
            totals[topic] = totals.get(topic, 0) + n
    ok = [s for _, s, _ in scans if s is not None]
    firsts = [s.first_ts for s in ok if s.first_ts is not None]
    lasts = [s.last_ts for s in ok if s.last_ts is not None]
    total: dict[str, Any] = {"files": len(files), "size": sum(f["size"] for f in files),
                             "events": sum(s.events for s in ok),
                             "oldest": fmt_ts(min(firsts, default=None)), "newest": fmt_ts(max(lasts, default=None))}
    if per_topic:
        total["per_topic"] = dict(sorted(totals.items()))
    return {"segments": files, "total": total}


def verification(scans: list[tuple[Path, SegmentScan | None, str | None]]) -> dict[str, Any]:
    files: list[dict[str, Any]] = []
    for path, scan, error in scans:
        if scan is None:
            files.append({"path": str(path), "ok": False, "problems": [error]})
            continue
        files.append({"path": str(path), "ok": scan.clean, "events": scan.events, "problems": damage(scan),
                      "header_ok": scan.header_ok, "torn_tail_bytes": scan.torn_tail_bytes,
                      "corrupt": [{"offset": o, "length": n} for o, n in scan.corrupt]})
    return {"files": files, "damaged": sum(not f["ok"] for f in files)}


@app.command(
    argument("action", type=click.Choice(["ls", "inspect", "verify"])),
    argument("paths", nargs=-1, type=click.Path()),
    option("--json", "as_json", is_flag=True, default=False, help="Print machine-readable JSON."),
    base=SpillwayCommand,
)
async def buffer(self: SpillwayCommand, action: str, paths: tuple[str, ...], as_json: bool) -> int:
    """List, inspect or verify disk buffer segments (also *.seg.gz archives and Flume's avro_event files).

    \b
    ls      each segment: size, events, oldest and newest receive time
    inspect the same, plus event counts per topic and totals
    verify  check every record's CRC; report torn tails and corrupt
            ranges per file; exit 1 if any file is damaged

    PATHS are directories (their *.seg and *.seg.gz files, and Flume's file_roll
    avro_event files, known by their Avro magic) or files; the default is
    buffer.directory. Files are only read. Times are UTC; for a Flume file, the
    oldest and newest of its timestamp headers.
    """
    if not paths:
        directory = self.settings().buffer.directory
        if not directory.is_dir():
            raise CommandError(f"no buffer directory at {directory} (buffer.directory)")
        paths = (str(directory),)
    from topology.app import settings
    from topology.commands.replay import collect_inputs

    files, _, text = await asyncio.to_thread(collect_inputs, paths)
    for path in await asyncio.to_thread(_found_in_directories, text, paths):
        files.remove(path)
        self.err(f"{path}: not an Avro file: a Flume TEXT or HEADER_AND_TEXT file? It keeps no headers; "
                 f"`spillway replay --topic T {path}` sends its lines to T")
    scans = await asyncio.to_thread(scan_files, files, Router(settings.router))
    as_json = as_json or self.json
    if action == "verify":
        doc = verification(scans)
        if as_json:
            self.out(dumps(doc))
        else:
            for f in doc["files"]:
                state = "ok" if f["ok"] else "DAMAGED: " + "; ".join(f["problems"])
                self.out(f"{f['path']}: {state}")
            self.out(f"verify: {len(doc['files'])} file(s), {doc['damaged']} damaged")
        return EXIT_PARTIAL if doc["damaged"] else EXIT_OK
    doc = listing(scans, per_topic=action == "inspect")
    code = EXIT_PARTIAL if any("error" in f for f in doc["segments"]) else EXIT_OK
    if as_json:
        self.out(dumps(doc))
        return code
    rows = [[f["path"], fmt_size(f["size"]), f.get("events", "?"), f.get("oldest", "-"), f.get("newest", "-")]
            for f in doc["segments"]]
    self.out(table(["segment", "size", "events", "oldest", "newest"], rows))
    t = doc["total"]
    self.out(f"total: {t['files']} file(s), {fmt_size(t['size'])}, {t['events']} events, "
             f"oldest {t['oldest']}, newest {t['newest']}")
    if action == "inspect":
        for f in doc["segments"]:
            if f.get("per_topic"):
                self.out(f"\n{f['path']}")
                self.out(table(["  topic", "events"], [[f"  {k}", v] for k, v in f["per_topic"].items()]))
        self.out("\nper topic, all files")
        self.out(table(["  topic", "events"], [[f"  {k}", v] for k, v in t["per_topic"].items()]))
    for f in doc["segments"]:
        if "error" in f:
            self.err(f"{f['path']}: {f['error']}")
    return code
