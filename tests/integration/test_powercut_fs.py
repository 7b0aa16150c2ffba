"""The power-cut filesystem (tests/powercut.py): what survives a cut is exactly what was fsynced.

Every test mounts a real FUSE filesystem (root, /dev/fuse, libfuse3): a mount that fails
makes the test fail, never skip."""

from __future__ import annotations

import errno
import fcntl
import gzip
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from powercut import STAGE_PREFIX, PowerCutFS, lazy_unmount


@pytest.fixture
def pcfs(tmp_path: Path) -> Iterator[PowerCutFS]:
    fs = PowerCutFS(tmp_path / "backing", tmp_path / "mnt")
    try:
        yield fs
    finally:
        fs.unmount()
        lazy_unmount(tmp_path / "mnt")  # whatever a failing test left behind


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create(path: Path, data: bytes = b"", fsync: bool = True, dir_fsync: bool = True) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        if data:
            os.pwrite(fd, data, 0)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if dir_fsync:
        fsync_dir(path.parent)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and directory (None) under ``root``, by relative path."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


def test_fsynced_bytes_survive_a_cut_and_unsynced_ones_do_not(pcfs: PowerCutFS) -> None:
    m = pcfs.mount()
    rng = random.Random(1)
    durable = rng.randbytes(200_000)
    create(m / "seg", durable)
    fd = os.open(m / "seg", os.O_RDWR)
    os.pwrite(fd, b"\xee" * 10_000, 50_000)  # overwrite inside the fsynced region
    os.pwrite(fd, b"\xff" * 30_000, 190_000)  # overwrite the tail and append past the end
    expected_now = durable[:50_000] + b"\xee" * 10_000 + durable[60_000:190_000] + b"\xff" * 30_000
    assert os.fstat(fd).st_size == 220_000
    assert (m / "seg").stat().st_size == 220_000
    assert (m / "seg").read_bytes() == expected_now  # read-your-writes
    assert (pcfs.backing / "seg").read_bytes() == durable  # only the durable state is in the backing store
    os.close(fd)

    stats = pcfs.cut()
    assert not os.path.ismount(m)
    assert stats == {"files_reverted": 1, "files_dropped": 0, "bytes_dropped": 40_000, "dirs_reverted": 0}
    pcfs.mount()
    assert (m / "seg").read_bytes() == durable  # back to its fsynced length and bytes
    assert (m / "seg").stat().st_size == len(durable)

    # a later fsync makes the newer bytes durable
    with open(m / "seg", "ab") as fh:
        fh.write(b"tail")
        fh.flush()
        os.fsync(fh.fileno())
    pcfs.cut()
    pcfs.mount()
    assert (m / "seg").read_bytes() == durable + b"tail"


def test_new_files_need_their_directory_fsynced(pcfs: PowerCutFS) -> None:
    m = pcfs.mount()
    create(m / "both", b"file and dir fsynced")
    create(m / "dir_only", b"dir fsynced, file never", fsync=False, dir_fsync=True)
    # the directory is not fsynced again after these two:
    create(m / "file_only", b"file fsynced, dir never", dir_fsync=False)
    create(m / "never", b"nothing fsynced", fsync=False, dir_fsync=False)
    assert sorted(os.listdir(m)) == ["both", "dir_only", "file_only", "never"]
    assert (m / "never").read_bytes() == b"nothing fsynced"

    stats = pcfs.cut()
    assert stats["files_dropped"] == 2  # file_only, never
    assert stats["files_reverted"] == 1  # dir_only (survives, empty)
    pcfs.mount()
    # the model: a file fsync never makes its directory entry durable (stricter than ext4)
    assert sorted(os.listdir(m)) == ["both", "dir_only"]
    assert (m / "both").read_bytes() == b"file and dir fsynced"
    assert (m / "dir_only").read_bytes() == b""  # its entry is durable, its data never was


@pytest.mark.parametrize("dir_fsync", [True, False])
def test_replace_is_undone_without_a_directory_fsync(pcfs: PowerCutFS, dir_fsync: bool) -> None:
    m = pcfs.mount()
    create(m / "state.json", b'{"old": 1}')
    with open(m / "state.tmp", "wb") as fh:  # the project's write-temp/fsync/replace/fsync-dir
        fh.write(b'{"new": 2}')
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(m / "state.tmp", m / "state.json")
    if dir_fsync:
        fsync_dir(m)
    assert os.listdir(m) == ["state.json"]
    assert (m / "state.json").read_bytes() == b'{"new": 2}'

    pcfs.cut()
    pcfs.mount()
    if dir_fsync:
        assert os.listdir(m) == ["state.json"]
        assert (m / "state.json").read_bytes() == b'{"new": 2}'
    else:  # undone: the old content is back, and the temp file's creation was never durable
        assert os.listdir(m) == ["state.json"]
        assert (m / "state.json").read_bytes() == b'{"old": 1}'


def test_undone_replace_brings_back_a_durable_source(pcfs: PowerCutFS) -> None:
    m = pcfs.mount()
    create(m / "path", b"old")
    create(m / "tmp", b"first")  # tmp's entry made durable, then it is rewritten and renamed
    with open(m / "tmp", "r+b") as fh:
        fh.write(b"second")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(m / "tmp", m / "path")
    pcfs.cut()
    pcfs.mount()
    assert sorted(os.listdir(m)) == ["path", "tmp"]
    assert (m / "path").read_bytes() == b"old"
    assert (m / "tmp").read_bytes() == b"second"  # its data fsync was kept


@pytest.mark.parametrize("dir_fsync", [True, False])
def test_unlink_needs_a_directory_fsync(pcfs: PowerCutFS, dir_fsync: bool) -> None:
    m = pcfs.mount()
    create(m / "victim", b"durable bytes")
    create(m / "other", b"x")
    os.unlink(m / "victim")
    if dir_fsync:
        fsync_dir(m)
    assert os.listdir(m) == ["other"]
    pcfs.cut()
    pcfs.mount()
    if dir_fsync:
        assert os.listdir(m) == ["other"]
    else:
        assert sorted(os.listdir(m)) == ["other", "victim"]
        assert (m / "victim").read_bytes() == b"durable bytes"


def test_an_unlinked_open_file_stays_readable(pcfs: PowerCutFS) -> None:
    m = pcfs.mount()
    data = os.urandom(300_000)
    create(m / "seg", data)
    with open(m / "seg", "rb") as fh:
        os.unlink(m / "seg")
        fsync_dir(m)
        assert os.listdir(m) == []
        assert fh.read() == data
        assert os.fstat(fh.fileno()).st_size == len(data)
        with open(f"/proc/self/fd/{fh.fileno()}", "ab") as w:  # still writable, never to be seen again
            w.write(b"more")
            w.flush()
            os.fsync(w.fileno())
            assert os.fstat(w.fileno()).st_size == len(data) + 4
        assert os.listdir(m) == []
    pcfs.cut()
    pcfs.mount()
    assert os.listdir(m) == []
    assert os.listdir(pcfs.backing) == []


def test_ftruncate_after_fsync_is_undone(pcfs: PowerCutFS) -> None:
    m = pcfs.mount()
    data = bytes(range(256)) * 40
    create(m / "f", data)
    fd = os.open(m / "f", os.O_RDWR)
    os.ftruncate(fd, 300)
    assert os.fstat(fd).st_size == 300
    assert os.pread(fd, 10_000, 0) == data[:300]
    os.ftruncate(fd, 5000)  # extending after a shrink reads zeros, not the old bytes
    assert os.pread(fd, 10_000, 0) == data[:300] + bytes(4700)
    os.truncate(m / "f", 1000)
    assert (m / "f").stat().st_size == 1000
    os.close(fd)
    pcfs.cut()
    pcfs.mount()
    assert (m / "f").read_bytes() == data

    # and made durable, a shrink then regrow lands in the backing store as zeros
    fd = os.open(m / "f", os.O_RDWR)
    os.ftruncate(fd, 100)
    os.ftruncate(fd, 400)
    os.pwrite(fd, b"end", 397)
    os.fsync(fd)
    os.close(fd)
    expect = data[:100] + bytes(297) + b"end"
    assert (pcfs.backing / "f").read_bytes() == expect
    pcfs.cut()
    pcfs.mount()
    assert (m / "f").read_bytes() == expect


def test_clean_unmount_keeps_everything(pcfs: PowerCutFS) -> None:
    m = pcfs.mount()
    create(m / "kept", b"a")
    (m / "sub" / "deeper").mkdir(parents=True)
    (m / "sub" / "deeper" / "f").write_bytes(b"nested, never fsynced")
    with open(m / "kept", "ab") as fh:
        fh.write(b"bc")
    (m / "renamed_from").write_bytes(b"r")
    os.replace(m / "renamed_from", m / "sub" / "renamed_to")
    create(m / "gone", b"g")
    os.unlink(m / "gone")
    before = tree(m)
    assert before == {"kept": b"abc", "sub": None, "sub/deeper": None, "sub/deeper/f": b"nested, never fsynced",
                      "sub/renamed_to": b"r"}
    pcfs.unmount()
    assert not os.path.ismount(m)
    assert tree(pcfs.backing) == before
    pcfs.unmount()  # idempotent
    pcfs.mount()
    assert tree(m) == before
    stats = pcfs.cut()  # nothing was pending
    assert stats == {"files_reverted": 0, "files_dropped": 0, "bytes_dropped": 0, "dirs_reverted": 0}
    pcfs.mount()
    assert tree(m) == before


def test_directories_follow_the_same_rules(pcfs: PowerCutFS) -> None:
    m = pcfs.mount()
    (m / "made").mkdir()
    (m / "q").mkdir()
    fsync_dir(m)
    create(m / "made" / "f", b"in a durable directory")
    (m / "volatile").mkdir()  # its parent is never fsynced after this
    create(m / "volatile" / "f", b"fsynced, and its directory too")
    assert os.listdir(m / "volatile") == ["f"]
    # a cross-directory rename, made durable from the destination's side
    create(m / "made" / "moved", b"moved")
    os.replace(m / "made" / "moved", m / "q" / "moved")
    fsync_dir(m / "q")
    # a cross-directory rename of which only the source directory is fsynced
    create(m / "made" / "half", b"half")
    os.replace(m / "made" / "half", m / "q" / "half")
    fsync_dir(m / "made")
    pcfs.cut()
    pcfs.mount()
    assert tree(m) == {"made": None, "made/f": b"in a durable directory", "q": None, "q/moved": b"moved"}


def test_flock_pread_pwrite_append_and_sizes(pcfs: PowerCutFS) -> None:
    m = pcfs.mount()
    create(m / "seg", b"HEADER")
    fd = os.open(m / "seg", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    other = os.open(m / "seg", os.O_RDONLY)
    with pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.flock(fd, fcntl.LOCK_UN)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(other)
    os.close(fd)

    fd = os.open(m / "seg", os.O_RDWR)
    assert os.pwrite(fd, b"0123456789", 100) == 10  # past the end: a hole of zeros
    assert os.fstat(fd).st_size == 110
    assert os.pread(fd, 20, 95) == bytes(5) + b"0123456789"
    assert os.pread(fd, 6, 0) == b"HEADER"
    assert os.pread(fd, 10, 200) == b""
    os.pwrite(fd, b"ab", 102)
    assert os.pread(fd, 10, 100) == b"01ab456789"
    os.close(fd)
    with open(m / "seg", "ab") as fh:  # O_APPEND writes land at the end
        fh.write(b"+")
    assert (m / "seg").read_bytes() == b"HEADER" + bytes(94) + b"01ab456789+"
    assert (m / "seg").stat().st_size == 111

    with open(m / "a.gz", "ab") as raw:  # the drain's archive: gzip members appended
        with gzip.GzipFile(fileobj=raw, mode="ab") as gz:
            gz.write(b"one ")
        raw.flush()
        os.fsync(raw.fileno())
    fsync_dir(m)
    with open(m / "a.gz", "ab") as raw:
        with gzip.GzipFile(fileobj=raw, mode="ab") as gz:
            gz.write(b"two")
        raw.flush()
        os.fsync(raw.fileno())
    with open(m / "a.gz", "ab") as raw:
        with gzip.GzipFile(fileobj=raw, mode="ab") as gz:
            gz.write(b" three (never fsynced)")
    assert gzip.decompress((m / "a.gz").read_bytes()) == b"one two three (never fsynced)"
    pcfs.cut()
    pcfs.mount()
    assert gzip.decompress((m / "a.gz").read_bytes()) == b"one two"
    assert (m / "seg").read_bytes() == b"HEADER"
    assert sorted(p.name for p in m.glob("*")) == ["a.gz", "seg"]


def test_random_appends_and_fsyncs_match_a_model(pcfs: PowerCutFS) -> None:
    """Several files, random appends, overwrites, truncates and fsyncs; the test keeps what
    each file held at its last fsync; after each cut the files must be exactly that."""
    m = pcfs.mount()
    rng = random.Random(20240611)
    names = [f"seg-{i:03d}" for i in range(6)]
    durable: dict[str, bytes] = {}
    for n in names:
        create(m / n)
        durable[n] = b""
    for _round in range(4):
        current = {n: bytearray(durable[n]) for n in names}
        fds = {n: os.open(m / n, os.O_RDWR) for n in names}
        for _ in range(400):
            n = rng.choice(names)
            fd, cur = fds[n], current[n]
            op = rng.random()
            if op < 0.55:  # append 1..100 KB
                data = rng.randbytes(rng.choice([1, 100, 1000, rng.randint(1, 100_000)]))
                os.pwrite(fd, data, len(cur))
                cur += data
            elif op < 0.70 and cur:  # overwrite somewhere, maybe past the end
                off = rng.randrange(len(cur))
                data = rng.randbytes(rng.randint(1, 20_000))
                os.pwrite(fd, data, off)
                cur[off:off + len(data)] = data
            elif op < 0.78:  # truncate (shrink or grow)
                size = rng.randint(0, len(cur) + 5000)
                os.ftruncate(fd, size)
                del cur[size:]
                cur.extend(bytes(size - len(cur)))
            else:
                os.fsync(fd)
                durable[n] = bytes(cur)
            assert os.fstat(fd).st_size == len(cur)
        for n in names:  # read-your-writes, in 1 MiB chunks as the drain reads
            with open(m / n, "rb") as fh:
                got = b"".join(iter(lambda: fh.read(1 << 20), b""))
            assert got == current[n], n
        os.kill(os.getpid(), 0)  # (the writer would be SIGKILLed here; its files are closed)
        for fd in fds.values():
            os.close(fd)
        pcfs.cut()
        pcfs.mount()
        for n in names:
            assert (m / n).read_bytes() == durable[n], n
        assert tree(pcfs.backing) == durable


def test_random_namespace_ops_match_a_model(pcfs: PowerCutFS) -> None:
    """Random creates, renames (replacing or not), unlinks, file and directory fsyncs in one
    directory; the test models the durable entries; after a cut the directory must hold them."""
    m = pcfs.mount()
    rng = random.Random(7)
    names = [f"f{i}" for i in range(8)]
    serial = 0
    # model: current entries name -> file id; per file id: current and durable bytes
    cur_entries: dict[str, int] = {}
    dur_entries: dict[str, int] = {}
    cur_data: dict[int, bytes] = {}
    dur_data: dict[int, bytes] = {}
    for _round in range(3):
        for _ in range(150):
            op = rng.random()
            free = [n for n in names if n not in cur_entries]
            used = list(cur_entries)
            if op < 0.25 and free:
                n = rng.choice(free)
                serial += 1
                data = rng.randbytes(rng.randint(0, 3000))
                fsync = rng.random() < 0.6
                create(m / n, data, fsync=fsync, dir_fsync=False)
                cur_entries[n] = serial
                cur_data[serial] = data
                dur_data[serial] = data if fsync else b""
            elif op < 0.40 and used:
                n = rng.choice(used)
                data = rng.randbytes(rng.randint(1, 2000))
                with open(m / n, "ab") as fh:
                    fh.write(data)
                    if rng.random() < 0.5:
                        fh.flush()
                        os.fsync(fh.fileno())
                        dur_data[cur_entries[n]] = cur_data[cur_entries[n]] + data
                cur_data[cur_entries[n]] += data
            elif op < 0.60 and used:
                src, dst = rng.choice(used), rng.choice(names)
                os.replace(m / src, m / dst)
                cur_entries[dst] = cur_entries.pop(src)
            elif op < 0.72 and used:
                n = rng.choice(used)
                os.unlink(m / n)
                del cur_entries[n]
            else:
                fsync_dir(m)
                dur_entries = dict(cur_entries)
            assert sorted(os.listdir(m)) == sorted(cur_entries)
        for n, ident in cur_entries.items():
            assert (m / n).read_bytes() == cur_data[ident], n
        pcfs.cut()
        pcfs.mount()
        expect = {n: dur_data[ident] for n, ident in dur_entries.items()}
        assert tree(m) == expect
        cur_entries = dict(dur_entries)
        cur_data = {ident: dur_data[ident] for ident in dur_entries.values()}


WRITER = textwrap.dedent("""
    import os, random, sys
    path = sys.argv[1]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.fsync(fd)
    dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    rng = random.Random(99)
    off = 0
    print("ready", flush=True)
    while True:
        for _ in range(rng.randint(1, 4)):
            data = rng.randbytes(rng.randint(1, 64 * 1024))
            os.pwrite(fd, data, off)
            off += len(data)
        os.fsync(fd)
        print(off, flush=True)
""")


def _writer_stream() -> tuple[bytes, list[int]]:
    rng = random.Random(99)
    out, marks = bytearray(), []
    while len(out) < 64 << 20:
        for _ in range(rng.randint(1, 4)):
            out += rng.randbytes(rng.randint(1, 64 * 1024))
        marks.append(len(out))
    return bytes(out), marks


def test_a_sigkilled_writer_keeps_exactly_an_fsync_point(pcfs: PowerCutFS, tmp_path: Path) -> None:
    m = pcfs.mount()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(m / "seg")], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    acked = 0
    t0 = time.monotonic()
    fsyncs = 0
    while fsyncs < 300:
        acked = int(proc.stdout.readline())
        fsyncs += 1
    elapsed = time.monotonic() - t0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    stats = pcfs.cut()
    pcfs.mount()
    got = (m / "seg").read_bytes()
    stream, marks = _writer_stream()
    assert len(got) >= acked, "an acknowledged fsync was lost"
    assert len(got) in marks, f"{len(got)} is not the length at an fsync"
    assert got == stream[:len(got)]
    assert stats["files_dropped"] == 0
    print(f"writer: {fsyncs} fsyncs of ~80 KB in {elapsed:.2f}s ({acked / elapsed / 1e6:.1f} MB/s)")
    assert fsyncs / elapsed > 100, "the filesystem is too slow for a real worker"


def test_a_stale_mount_is_cleared_and_double_mount_refused(tmp_path: Path) -> None:
    fs = PowerCutFS(tmp_path / "backing", tmp_path / "mnt")
    m = fs.mount()
    try:
        create(m / "f", b"durable")
        with pytest.raises(RuntimeError, match="already mounted"):
            fs.mount()
        assert fs._proc is not None
        fs._proc.kill()  # the daemon dies and leaves its mount behind
        fs._proc.wait()
        with pytest.raises(OSError) as info:
            os.stat(m)
        assert info.value.errno == errno.ENOTCONN
        fs2 = PowerCutFS(tmp_path / "backing", tmp_path / "mnt")
        with fs2 as m2:
            assert (m2 / "f").read_bytes() == b"durable"
        assert not os.path.ismount(m)
    finally:
        fs._proc = None
        lazy_unmount(m)


def test_a_daemon_that_cannot_mount_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'fuse: device not found, try modprobe fuse first' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    fs = PowerCutFS(tmp_path / "backing", tmp_path / "mnt")
    with pytest.raises(RuntimeError, match=r"exited \(3\) before mounting(.|\n)*device not found"):
        fs.mount()
    assert not os.path.ismount(tmp_path / "mnt")
    fs.unmount()  # nothing to do


def test_random_nested_namespace_survives_unmount_and_cut(pcfs: PowerCutFS, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random mkdir/rmdir, creates, appends, renames of files and directories across
    directories, unlinks, file and directory fsyncs. The mount must show the current tree
    at once; a clean unmount must keep exactly it; after a cut every surviving file must
    hold bytes it held at one of its fsyncs (never unsynced ones), and the daemon must
    report no internal error (with POWERCUT_CHECK=1 it checks after every directory fsync
    that the backing store is exactly its durable tree; cut() and unmount() raise on any
    internal error)."""
    monkeypatch.setenv("POWERCUT_CHECK", "1")
    m = pcfs.mount()
    rng = random.Random(int(os.environ.get("POWERCUT_SEED", "3")))
    durable_versions: set[bytes] = {b""}
    model: dict[str, bytes | None] = {}  # the current tree: relative path -> bytes (None: a directory)

    def under(top: str) -> list[str]:
        return [k for k in model if k == top or k.startswith(top + "/")]

    for phase in ("unmount", "cut"):
        for _ in range(300):
            op = rng.random()
            ds = [""] + [k for k, v in model.items() if v is None]
            fs = [k for k, v in model.items() if v is not None]
            parent = rng.choice(ds)
            if op < 0.12 and len(ds) < 12:
                p = os.path.join(parent, f"d{rng.randrange(4)}")
                if p not in model:
                    (m / p).mkdir()
                    model[p] = None
            elif op < 0.30:
                p = os.path.join(parent, f"f{rng.randrange(6)}")
                if p not in model:
                    data = rng.randbytes(rng.randint(0, 5000))
                    fsync = rng.random() < 0.5
                    create(m / p, data, fsync=fsync, dir_fsync=False)
                    model[p] = data
                    if fsync:
                        durable_versions.add(data)
            elif op < 0.42 and fs:
                p = rng.choice(fs)
                data = rng.randbytes(rng.randint(1, 3000))
                with open(m / p, "ab") as fh:
                    fh.write(data)
                    model[p] = model[p] + data  # type: ignore[operator]
                    if rng.random() < 0.5:
                        fh.flush()
                        os.fsync(fh.fileno())
                        durable_versions.add(model[p])  # type: ignore[arg-type]
            elif op < 0.55 and fs:
                src, dst = rng.choice(fs), os.path.join(parent, f"f{rng.randrange(6)}")
                if model.get(dst, b"") is not None:  # not onto a directory
                    os.replace(m / src, m / dst)
                    model[dst] = model.pop(src)
            elif op < 0.62 and len(ds) > 1:
                src, dst = rng.choice(ds[1:]), os.path.join(parent, f"d{rng.randrange(4)}")
                if dst not in model and not (dst + "/").startswith(src + "/"):
                    os.rename(m / src, m / dst)
                    for k in under(src):
                        model[dst + k[len(src):]] = model.pop(k)
            elif op < 0.70 and fs:
                p = rng.choice(fs)
                os.unlink(m / p)
                del model[p]
            elif op < 0.74 and len(ds) > 1:
                p = rng.choice(ds[1:])
                if under(p) == [p]:
                    (m / p).rmdir()
                    del model[p]
            else:
                fsync_dir(m / parent)
        assert tree(m) == model
        if phase == "unmount":
            pcfs.unmount()
            assert tree(pcfs.backing) == model
            pcfs.mount()
            assert tree(m) == model
            durable_versions.update(v for v in model.values() if v is not None)
        else:
            stats = pcfs.cut()
            assert stats["files_reverted"] + stats["files_dropped"] + stats["dirs_reverted"] > 0
            pcfs.mount()
            after = tree(m)
            assert not [p for p in after if STAGE_PREFIX in p]
            for p, data in after.items():
                assert data is None or data in durable_versions, f"{p} holds bytes never fsynced"
            assert tree(pcfs.backing) == after
