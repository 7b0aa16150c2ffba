"""A FUSE filesystem that simulates a power cut, for tests of fsync discipline.

``PowerCutFS(backing, mountpoint)`` mounts a pass-through view of the directory
``backing`` at ``mountpoint``. Everything a program does there is served at once
(read-your-writes, ``stat`` sizes, listings), but only what it made durable with
``fsync``/``fdatasync`` reaches ``backing``. ``cut()`` is the power cut: the daemon is
killed (its memory, the "page cache", dies with it) and the mount is lazily detached;
``mount()`` again then shows what a machine would find after the reboot. A clean
``unmount()`` writes everything back first, as a clean shutdown does.

The model (the daemon keeps ``backing`` equal to the durable state and holds every
volatile change in its memory):

* File content. A regular file's durable content is what it held at its last
  ``fsync`` or ``fdatasync`` (the two are the same here), or at mount time for files
  that were already in ``backing``, or empty for a file created since. ``write``,
  ``pwrite``, ``truncate``/``ftruncate`` and ``O_TRUNC`` after that are volatile: at
  the cut the file reverts to its durable bytes and length, whatever was overwritten,
  appended or cut off. An fsync makes durable only that file's data, size and bytes:
  never a directory entry.
* Directory entries. A directory's durable entries are the name -> file pairs it had
  at its own last fsync (``os.fsync`` on an ``O_RDONLY|O_DIRECTORY`` fd), or at mount.
  Creating (``O_CREAT``, ``mkdir``), removing (``unlink``, ``rmdir``) and renaming
  (``os.replace``) change only the current entries; at the cut each directory reverts
  to its durable entries. So: a file created, written and fsynced whose directory was
  never fsynced vanishes; a file created whose directory was fsynced but that was
  never fsynced itself comes back empty; an unlink not followed by a directory fsync
  is undone (the file is back with its durable content); ``os.replace(tmp, path)`` not
  followed by a directory fsync is undone (``path`` has its old content again, and
  ``tmp`` is back too if its creation had been made durable, else it is gone).
* This is stricter than ext4, whose journal commit at any fsync in practice also makes
  the fsynced file's own entry (and every other pending namespace change) durable:
  the model keeps only what POSIX promises, so it can only ever lose more than ext4
  would, never less. One departure from "each fsync names exactly what it makes
  durable", to stay within states a journaling filesystem can reach: a rename across
  directories is atomic when made durable from its destination's side. fsync of the
  destination directory makes the new entry durable and removes the old one with it
  (ext4, XFS). fsync of only the source directory makes just the removal durable: until
  the destination is fsynced too, the file is in neither directory after a cut (more
  loss than ext4 would show; fsync both, destination first, as agents/segments.py
  does).
* A directory created by ``mkdir`` is itself an entry of its parent: it and all it holds
  survive a cut only once the parent was fsynced after the ``mkdir``.
* What is not modelled: modes, owners and times are written straight through to
  ``backing`` (never lost at a cut; after a remount a file's mtime is the time of its
  last fsync); ``flock`` and POSIX locks are the kernel's own (``flock`` works, and no
  lock survives a cut or an unmount, as on a real disk); hard links (EPERM), symlinks
  and special files (ENOSYS) and xattrs (ENOTSUP) are refused, ``fallocate`` too (so
  ``posix_fallocate`` falls back to writing); entries of ``backing`` that are neither
  regular files nor directories are not shown. ``backing`` is written without host
  fsyncs: it is the durable state against the simulated cut (killing the daemon), not
  against a real crash of the host.
* A file unlinked while open stays readable, writable and ``fstat``-able through its
  open descriptors until closed (libfuse parks it as ``.fuse_hidden*``, which the
  daemon treats as the unlink itself: the name is never listed nor made durable).

Caching: the mount uses ``direct_io`` and no writeback cache, so every ``write``
reaches the daemon before it returns, every ``read`` is served by the daemon, and
every ``fsync`` reaches it. (A shared writable ``mmap`` is therefore refused with
ENODEV; a private read-only one works.) The daemon is single-threaded: operations are
served one at a time, in the order the kernel sends them.

Debugging: with ``POWERCUT_CHECK=1`` in its environment the daemon checks after every
directory fsync that ``backing`` is exactly its durable tree. Any internal error of the
daemon (an exception, answered to the program as EINVAL) makes ``cut()`` and
``unmount()`` raise RuntimeError with the daemon's log.

Processes: ``mount()`` starts ``python tests/powercut.py BACKING MOUNTPOINT`` (this
file) as a daemon and waits for the mount. It is controlled through its stdin/stdout:
``sync`` (write everything back, as at a clean unmount) and ``cut`` (report the
statistics, then exit at once, holding the lock that every filesystem operation
takes, so no operation is half-applied to ``backing``). When its controller goes
away without unmounting (the test process died), the daemon syncs, unmounts itself
lazily and exits, so no stale mount is left behind.

Must run as root (the mount is done with mount(2) directly); needs libfuse3
(Debian: ``fuse3 libfuse3-3``) and the ``mfusepy`` package. A mount that fails raises
RuntimeError with the daemon's output.
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

STAGE_PREFIX = ".powercut-stage-"
_CHECK = os.environ.get("POWERCUT_CHECK") == "1"  # check backing == durable state after each fsyncdir
HIDDEN_PREFIX = ".fuse_hidden"
_FSTYPE = "fuse.powercut"


# ---------------------------------------------------------------------------------
# The controller (runs in the test process)
# ---------------------------------------------------------------------------------


def _mounts_at(path: str) -> list[str]:
    """The filesystem types mounted at ``path`` (from /proc/self/mountinfo), innermost last."""
    path = os.path.realpath(path)
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) >= 5 and _unescape_mountinfo(fields[4]) == path:
                    found.append(right.split()[0])
    except OSError:
        pass
    return found


def _unescape_mountinfo(s: str) -> str:
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        s = s.replace(code, ch)
    return s


def lazy_unmount(mountpoint: Path | str) -> None:
    """Detach whatever FUSE filesystem is mounted at ``mountpoint`` (``fusermount3 -uz``,
    else ``umount -l``); a mountpoint with nothing mounted is fine."""
    path = os.path.abspath(mountpoint)
    for _ in range(8):  # mounts may be stacked
        if not _mounts_at(path):
            return
        done = False
        for cmd in (["fusermount3", "-uz", path], ["umount", "-l", path]):
            if shutil.which(cmd[0]) is None:
                continue
            if subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True).returncode == 0:
                done = True
                break
        if not done:
            raise RuntimeError(f"powercut: cannot unmount {path}: {_mounts_at(path)}")


class PowerCutFS:
    """A FUSE filesystem over ``backing`` mounted at ``mountpoint`` that forgets, at cut(), every write not
    yet fsynced."""

    def __init__(self, backing: Path, mountpoint: Path) -> None:
        self.backing = Path(backing).absolute()
        self.mountpoint = Path(mountpoint).absolute()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._buf = b""

    # -- public --------------------------------------------------------------------

    def mount(self, timeout: float = 20.0) -> Path:
        """Start the daemon and wait until ``mountpoint`` is mounted; returns ``mountpoint``.
        Callable again after cut() or unmount() to mount over what survived."""
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError(f"powercut: {self.mountpoint} is already mounted by this PowerCutFS")
        self._proc = None
        self._close()
        self._clear_stale()
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if not os.path.exists("/dev/fuse"):
            raise RuntimeError("powercut: /dev/fuse is missing (no FUSE in this kernel or container)")
        if os.geteuid() != 0:
            raise RuntimeError("powercut: must run as root (the daemon mounts with mount(2))")
        self._log = tempfile.TemporaryFile()
        self._buf = b""
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(self.backing), str(self.mountpoint)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, close_fds=True,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if _FSTYPE in _mounts_at(str(self.mountpoint)) and os.path.ismount(self.mountpoint):
                return self.mountpoint
            rc = self._proc.poll()
            if rc is not None:
                self._proc = None
                text = self._log_text()
                self._close()
                raise RuntimeError(f"powercut: the daemon exited ({rc}) before mounting {self.mountpoint}:\n{text}")
            if time.monotonic() > deadline:
                text = self._log_text()
                self._kill()
                raise RuntimeError(f"powercut: {self.mountpoint} not mounted after {timeout:.0f}s:\n{text}")
            time.sleep(0.01)

    def cut(self) -> dict[str, int]:
        """The power cut: every change not made durable is lost, then the mount is detached
        (lazily: processes may still hold files open on it; they get errors). Returns what
        was lost: ``files_reverted`` (files that survive with older content),
        ``files_dropped`` (files of the current namespace that vanish), ``bytes_dropped``
        (bytes written since their file's last fsync, plus the durable size of files that
        vanish), ``dirs_reverted`` (surviving directories whose entries change)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError("powercut: cut() on a filesystem that is not mounted")
        try:
            stats = json.loads(self._request("cut", timeout=30.0))
        finally:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self._proc = None
            lazy_unmount(self.mountpoint)
            self._close(check=True)
        if "error" in stats:
            raise RuntimeError(f"powercut: the daemon failed to count what the cut lost: {stats['error']}")
        return {k: int(v) for k, v in stats.items()}

    def unmount(self) -> None:
        """A clean unmount: everything written so far is kept (written back to ``backing``).
        Idempotent; fine on a filesystem that was cut. Files still open on the mount make it
        a lazy unmount: the daemon serves them up to 10 s more, then is killed (what they
        wrote after the unmount began may be lost)."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                self._request("sync", timeout=60.0)
                path = str(self.mountpoint)
                r = subprocess.run(["fusermount3", "-u", path], stdin=subprocess.DEVNULL, capture_output=True)
                if r.returncode != 0 and _FSTYPE in _mounts_at(path):
                    # busy (files still open): detach it; what they write from now on may be lost
                    lazy_unmount(path)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            self._proc = None
            if _FSTYPE in _mounts_at(str(self.mountpoint)):
                lazy_unmount(self.mountpoint)
            self._close(check=True)

    def __enter__(self) -> Path:
        return self.mount()

    def __exit__(self, *exc: object) -> None:
        self.unmount()

    # -- internals -----------------------------------------------------------------

    def _clear_stale(self) -> None:
        path = str(self.mountpoint)
        try:
            os.stat(path)
        except OSError as e:
            if e.errno in (errno.ENOTCONN, errno.EIO, errno.ECONNABORTED):
                lazy_unmount(path)  # a daemon died and left its mount behind
            elif e.errno != errno.ENOENT:
                raise
            return
        kinds = _mounts_at(path)
        if kinds:
            if all(k.startswith("fuse") for k in kinds):
                lazy_unmount(path)  # a leftover FUSE mount from an earlier run
            else:
                raise RuntimeError(f"powercut: {path} already has a non-FUSE mount: {kinds}")

    def _request(self, command: str, timeout: float) -> str:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(command.encode() + b"\n")
            proc.stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"powercut: the daemon is gone:\n{self._log_text()}") from None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"powercut: no answer to {command!r} in {timeout:.0f}s:\n{self._log_text()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"powercut: the daemon died during {command!r}:\n{self._log_text()}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        text = line.decode()
        if text.startswith("error"):
            raise RuntimeError(f"powercut: {command!r} failed in the daemon: {text}\n{self._log_text()}")
        return text

    def _log_text(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-8000:]

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        lazy_unmount(self.mountpoint)
        self._close()

    def _close(self, check: bool = False) -> None:
        """Forget the daemon's log; with ``check``, raise if it reports an internal error (an
        operation that failed with an exception, not an errno: a bug here, and the program on
        the mount was answered EINVAL)."""
        if self._log is None:
            return
        text = self._log_text() if check else ""
        self._log.close()
        self._log = None
        bad = [line for line in text.splitlines() if line.startswith(("powercut ERROR", "powercut CRITICAL"))]
        if bad:
            raise RuntimeError("powercut: the daemon had internal errors:\n" + text)


# ---------------------------------------------------------------------------------
# The daemon (runs as ``python tests/powercut.py BACKING MOUNTPOINT``)
# ---------------------------------------------------------------------------------


class _File:
    __slots__ = ("mode", "uid", "gid", "atime", "mtime", "ctime", "dlink", "clink", "nopen",
                 "data", "size", "dsize", "min_size", "lo", "hi", "dirty", "vbytes", "dmem")
    is_dir = False

    def __init__(self, mode: int, uid: int, gid: int, t: int, size: int = 0) -> None:
        self.mode, self.uid, self.gid = mode, uid, gid
        self.atime = self.mtime = self.ctime = t
        self.dlink: tuple[_Dir, str] | None = None  # its durable entry (at most one)
        self.clink: tuple[_Dir, str] | None = None  # its current entry (at most one)
        self.nopen = 0
        # current content: None means "the same as the durable content" (not loaded)
        self.data: bytearray | None = None
        self.size = size
        self.dsize = size  # durable size
        # changes since the last sync, relative to the durable content: the smallest size
        # the file had, and the range of bytes written ([lo, hi))
        self.min_size = size
        self.lo: int | None = None
        self.hi = 0
        self.dirty = False
        self.vbytes = 0  # bytes written since the last sync
        # the durable content when it is not in ``backing`` (the file is not reachable
        # from the root through durable entries); None when it is there
        self.dmem: bytearray | None = None

    def attrs(self) -> dict[str, int]:
        return {"st_mode": stat.S_IFREG | self.mode, "st_nlink": 1 if self.clink is not None else 0,
                "st_size": self.size, "st_blocks": (self.size + 511) // 512, "st_blksize": 4096,
                "st_uid": self.uid, "st_gid": self.gid,
                "st_atime": self.atime, "st_mtime": self.mtime, "st_ctime": self.ctime}


class _Dir:
    __slots__ = ("mode", "uid", "gid", "atime", "mtime", "ctime", "dlink", "clink", "nopen", "cur", "dur")
    is_dir = True

    def __init__(self, mode: int, uid: int, gid: int, t: int) -> None:
        self.mode, self.uid, self.gid = mode, uid, gid
        self.atime = self.mtime = self.ctime = t
        self.dlink: tuple[_Dir, str] | None = None
        self.clink: tuple[_Dir, str] | None = None
        self.nopen = 0
        self.cur: dict[str, _File | _Dir] = {}  # the entries now
        self.dur: dict[str, _File | _Dir] = {}  # the entries as of its last fsync

    def attrs(self) -> dict[str, int]:
        subdirs = sum(1 for n in self.cur.values() if n.is_dir)
        return {"st_mode": stat.S_IFDIR | self.mode, "st_nlink": 2 + subdirs, "st_size": 4096,
                "st_blocks": 8, "st_blksize": 4096, "st_uid": self.uid, "st_gid": self.gid,
                "st_atime": self.atime, "st_mtime": self.mtime, "st_ctime": self.ctime}


_Node = _File | _Dir


def _read_all(path: str) -> bytes:
    with open(path, "rb", buffering=0) as fh:
        return fh.read()


def _remove_backing(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def _make_ops(backing: str) -> Any:
    import mfusepy
    from mfusepy import FuseOSError

    def err(code: int) -> FuseOSError:
        return FuseOSError(code)

    class PowerCutOps(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True
        flag_nopath = True  # with flag_nullpath_ok: ops on open files get no path (we use fh)
        flag_nullpath_ok = True

        def __init__(self) -> None:
            self.backing = backing
            self._mutex = threading.Lock()
            st = os.stat(backing)
            self.root = _Dir(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)
            self.fhs: dict[int, tuple[_Node, int]] = {}
            # libfuse renames a file unlinked while open to <dir>/.fuse_hidden<n> (so that
            # fstat and friends still find it by path) and unlinks that name at its last
            # close: here such a rename is the unlink, and the hidden path an alias
            self.hidden: dict[str, _Node] = {}
            self._staging: dict[int, str] = {}  # id(node) -> where _sync_dir parked it in backing
            self.next_fh = 1
            self._scan(self.root, backing)

        # -- the durable state ------------------------------------------------------

        def _scan(self, d: _Dir, path: str) -> None:
            with os.scandir(path) as it:
                entries = list(it)
            for e in entries:
                st = e.stat(follow_symlinks=False)
                node: _Node
                if stat.S_ISDIR(st.st_mode):
                    node = _Dir(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)
                    self._scan(node, e.path)
                elif stat.S_ISREG(st.st_mode):
                    node = _File(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size)
                else:
                    continue
                node.dlink = node.clink = (d, e.name)
                d.cur[e.name] = node
                d.dur[e.name] = node

        def _bpath(self, node: _Node) -> str | None:
            """Where ``node`` is in ``backing``; None when it is not durably reachable."""
            parts = []
            seen: set[int] = set()
            while node is not self.root:
                staged = self._staging.get(id(node))
                if staged is not None:  # parked by the _sync_dir in progress
                    parts.reverse()
                    return os.path.join(staged, *parts)
                link = node.dlink
                if link is None or id(node) in seen:
                    return None
                seen.add(id(node))
                parts.append(link[1])
                node = link[0]
            parts.reverse()
            return os.path.join(self.backing, *parts)

        @staticmethod
        def _above(node: _Node, d: _Dir) -> bool:
            """Whether ``node`` is a durable ancestor of ``d``."""
            seen: set[int] = set()
            n: _Node = d
            while n.dlink is not None and id(n) not in seen:
                seen.add(id(n))
                n = n.dlink[0]
                if n is node:
                    return True
            return False

        @staticmethod
        def _alive(node: _Node) -> bool:
            return node.clink is not None or node.nopen > 0

        def _to_memory(self, node: _Node, path: str, needed: bool) -> None:
            """``node`` (at ``path`` in backing) is about to leave backing: keep in memory the
            durable content of every file in its durable subtree that may still be needed."""
            if node.is_dir:
                for name, child in node.dur.items():
                    self._to_memory(child, os.path.join(path, name), needed or self._alive(child))
            elif needed and node.dmem is None:
                node.dmem = bytearray(_read_all(path))

        def _materialize(self, node: _Node, path: str) -> None:
            """Write ``node`` and its durable subtree (held in memory) into backing at ``path``."""
            _remove_backing(path)
            if node.is_dir:
                os.mkdir(path, node.mode)
                os.chmod(path, node.mode)
                for name, child in node.dur.items():
                    self._materialize(child, os.path.join(path, name))
            else:
                if node.dmem is None:
                    raise RuntimeError(f"powercut internal error: the durable content of {path} is lost")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, node.mode)
                try:
                    _pwrite_all(fd, memoryview(node.dmem), 0)
                    os.fchmod(fd, node.mode)
                finally:
                    os.close(fd)
                node.dmem = None

        def _load(self, f: _File) -> bytearray:
            if f.data is None:
                if f.dmem is not None:
                    f.data = bytearray(f.dmem)
                else:
                    p = self._bpath(f)
                    if p is None:
                        raise err(errno.EIO)
                    f.data = bytearray(_read_all(p))
                    if len(f.data) != f.size:
                        raise err(errno.EIO)
            return f.data

        def _sync_file(self, f: _File) -> None:
            if not f.dirty:
                return
            p = self._bpath(f)
            assert f.data is not None
            if p is None:
                if f.dmem is None:
                    raise err(errno.EIO)
                dm = f.dmem
                if f.min_size < len(dm):
                    del dm[f.min_size:]
                if f.lo is not None and f.lo < f.size:
                    hi = min(f.hi, f.size)
                    if f.lo > len(dm):
                        dm.extend(bytes(f.lo - len(dm)))
                    dm[f.lo:hi] = memoryview(f.data)[f.lo:hi]
                if len(dm) < f.size:
                    dm.extend(bytes(f.size - len(dm)))
                elif len(dm) > f.size:
                    del dm[f.size:]
            else:
                fd = os.open(p, os.O_WRONLY)
                try:
                    bsize = f.dsize
                    if f.min_size < bsize:
                        os.ftruncate(fd, f.min_size)
                        bsize = f.min_size
                    if f.lo is not None and f.lo < f.size:
                        hi = min(f.hi, f.size)
                        _pwrite_all(fd, memoryview(f.data)[f.lo:hi], f.lo)
                        bsize = max(bsize, hi)
                    if bsize != f.size:
                        os.ftruncate(fd, f.size)
                finally:
                    os.close(fd)
            f.dsize = f.min_size = f.size
            f.lo, f.hi, f.dirty, f.vbytes = None, 0, False, 0
            if f.nopen == 0 and p is not None:
                f.data = None  # clean and closed: backing holds it

        def _sync_dir(self, d: _Dir) -> None:
            old, new = d.dur, d.cur
            if old == new:
                return
            dp = self._bpath(d)
            if dp is not None:
                for name, node in new.items():
                    if old.get(name) is not node and node.dlink is not None and self._above(node, d):
                        # d was durably inside ``node``: making ``node`` durable in d makes both a
                        # cycle that the root no longer reaches: all of it leaves backing
                        e, m = node.dlink
                        ep = self._bpath(e)
                        assert ep is not None
                        self._to_memory(node, os.path.join(ep, m), True)
                        _remove_backing(os.path.join(ep, m))
                        del e.dur[m]
                        node.dlink = None
                        dp = None
                        break
            in_new = {id(n) for n in new.values()}
            staged = self._staging
            kept = {}
            for name, node in old.items():  # entries that lose their durable name here
                if new.get(name) is node:
                    kept[name] = node
                    continue
                node.dlink = None
                if dp is not None:
                    p = os.path.join(dp, name)
                    if id(node) in in_new:  # renamed within d: park it
                        sp = os.path.join(dp, f"{STAGE_PREFIX}{id(node)}")
                        os.rename(p, sp)
                        staged[id(node)] = sp
                    else:
                        self._to_memory(node, p, self._alive(node))
                        _remove_backing(p)
            d.dur = kept
            try:
                self._gain(d, dp, new, kept, staged)
            finally:
                staged.clear()

        def _gain(self, d: _Dir, dp: str | None, new: dict[str, _Node], kept: dict[str, _Node],
                  staged: dict[int, str]) -> None:
            for name, node in new.items():  # entries that gain their durable name here
                if kept.get(name) is node:
                    continue
                src = staged.pop(id(node), None)
                if node.dlink is not None:  # durable in another directory: the rename, as a unit
                    e, m = node.dlink
                    del e.dur[m]
                    ep = self._bpath(e)
                    if ep is not None:
                        src = os.path.join(ep, m)
                node.dlink = (d, name)
                d.dur[name] = node
                if dp is not None:
                    dst = os.path.join(dp, name)
                    if src is not None:
                        _remove_backing(dst)
                        os.rename(src, dst)
                    else:
                        self._materialize(node, dst)
                elif src is not None:
                    self._to_memory(node, src, True)
                    _remove_backing(src)

        def check(self, what: str) -> None:
            """(POWERCUT_CHECK=1) Log an ERROR when ``backing`` is not exactly the durable tree."""
            want: dict[str, Any] = {}

            def walk(d: _Dir, rel: str) -> None:
                for name, n in d.dur.items():
                    p = os.path.join(rel, name)
                    if n.is_dir:
                        want[p] = None
                        walk(n, p)  # type: ignore[arg-type]
                    else:
                        want[p] = n.size if not n.dirty and n.data is None else n.dsize  # type: ignore[union-attr]
            walk(self.root, "")
            have: dict[str, Any] = {}
            for dp, dns, fns in os.walk(self.backing):
                for x in dns:
                    have[os.path.relpath(os.path.join(dp, x), self.backing)] = None
                for x in fns:
                    p = os.path.join(dp, x)
                    have[os.path.relpath(p, self.backing)] = os.path.getsize(p)
            if want != have:
                import logging
                logging.getLogger("powercut").error("after %s: backing %s != durable %s", what,
                                                     sorted(set(have.items()) - set(want.items())),
                                                     sorted(set(want.items()) - set(have.items())))

        def sync_all(self) -> None:
            """Make everything durable, as a clean shutdown does."""
            dirs: list[_Dir] = []
            files: list[_File] = []
            todo = [self.root]
            while todo:
                d = todo.pop(0)
                dirs.append(d)
                for n in d.cur.values():
                    if n.is_dir:
                        todo.append(n)  # type: ignore[arg-type]
                    else:
                        files.append(n)  # type: ignore[arg-type]
            for f in files:
                self._sync_file(f)
            for d in dirs:
                self._sync_dir(d)

        def stats(self) -> dict[str, int]:
            files: dict[int, _File] = {}
            current: dict[int, _File] = {}
            dirs_reverted = 0
            todo = [self.root]
            while todo:
                d = todo.pop()
                if d.cur != d.dur and self._bpath(d) is not None:
                    dirs_reverted += 1
                for n in d.cur.values():
                    if n.is_dir:
                        todo.append(n)  # type: ignore[arg-type]
                    else:
                        current[id(n)] = n  # type: ignore[assignment]
            files.update(current)
            for node, _ in self.fhs.values():
                if not node.is_dir:
                    files[id(node)] = node  # type: ignore[assignment]
            todo = [self.root]
            while todo:  # files durable but no longer in the namespace (undone unlinks)
                d = todo.pop()
                for n in d.dur.values():
                    if n.is_dir:
                        todo.append(n)  # type: ignore[arg-type]
                    else:
                        files[id(n)] = n  # type: ignore[assignment]
            reverted = dropped = nbytes = 0
            for key, f in files.items():
                nbytes += f.vbytes
                survives = self._bpath(f) is not None
                if survives and f.dirty:
                    reverted += 1
                if key in current and not survives:
                    dropped += 1
                    nbytes += f.dsize
            return {"files_reverted": reverted, "files_dropped": dropped, "bytes_dropped": nbytes,
                    "dirs_reverted": dirs_reverted}

        # -- namespace helpers ----------------------------------------------------

        def _lookup(self, path: str) -> _Node:
            node: _Node = self.root
            if path == "/":
                return node
            if HIDDEN_PREFIX in path:
                hidden = self.hidden.get(path)
                if hidden is not None:
                    return hidden
            for part in path[1:].split("/"):
                if not node.is_dir:
                    raise err(errno.ENOTDIR)
                nxt = node.cur.get(part)  # type: ignore[union-attr]
                if nxt is None:
                    raise err(errno.ENOENT)
                node = nxt
            return node

        def _parent(self, path: str) -> tuple[_Dir, str]:
            head, _, name = path.rpartition("/")
            d = self._lookup(head or "/")
            if not d.is_dir:
                raise err(errno.ENOTDIR)
            return d, name  # type: ignore[return-value]

        def _node(self, path: str | None, fh: int | None) -> _Node:
            if fh is not None and fh in self.fhs:
                return self.fhs[fh][0]
            if path is None:
                raise err(errno.EBADF)
            return self._lookup(path)

        def _file(self, fh: int) -> tuple[_File, int]:
            entry = self.fhs.get(fh)
            if entry is None or entry[0].is_dir:
                raise err(errno.EBADF)
            return entry  # type: ignore[return-value]

        def _new_fh(self, node: _Node, flags: int) -> int:
            fh = self.next_fh
            self.next_fh += 1
            self.fhs[fh] = (node, flags)
            node.nopen += 1
            return fh

        @staticmethod
        def _touch(d: _Dir) -> None:
            d.mtime = d.ctime = time.time_ns()

        def _ctx(self) -> tuple[int, int]:
            uid, gid, _ = mfusepy.fuse_get_context()
            return uid, gid

        def _truncate(self, f: _File, length: int) -> None:
            if length == f.size:
                return
            data = self._load(f)
            if length < f.size:
                del data[length:]
                f.min_size = min(f.min_size, length)
            else:
                data.extend(bytes(length - f.size))
            f.size = length
            f.dirty = True
            f.mtime = f.ctime = time.time_ns()

        # -- operations -------------------------------------------------------------

        def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int]:
            with self._mutex:
                return self._node(path, fh).attrs()

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(self.backing)
            return {k: getattr(sv, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                                 "f_files", "f_ffree", "f_favail", "f_flag", "f_namemax")}

        def create(self, path: str, mode: int, flags: int) -> int:
            with self._mutex:
                d, name = self._parent(path)
                node = d.cur.get(name)
                if node is not None:
                    if flags & os.O_EXCL:
                        raise err(errno.EEXIST)
                    if node.is_dir:
                        raise err(errno.EISDIR)
                    if flags & os.O_TRUNC:
                        self._truncate(node, 0)  # type: ignore[arg-type]
                    return self._new_fh(node, flags)
                uid, gid = self._ctx()
                f = _File(stat.S_IMODE(mode), uid, gid, time.time_ns())
                f.data = bytearray()
                f.dmem = bytearray()  # durable content of a new file: empty
                f.clink = (d, name)
                d.cur[name] = f
                self._touch(d)
                return self._new_fh(f, flags)

        def open(self, path: str, flags: int) -> int:
            with self._mutex:
                node = self._lookup(path)
                if node.is_dir:
                    raise err(errno.EISDIR)
                if flags & os.O_TRUNC:
                    self._truncate(node, 0)  # type: ignore[arg-type]
                return self._new_fh(node, flags)

        def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
            with self._mutex:
                f, _ = self._file(fh)
                if f.data is not None:
                    return bytes(memoryview(f.data)[offset:offset + size])
                if f.dmem is not None:
                    return bytes(memoryview(f.dmem)[offset:offset + size])
                p = self._bpath(f)
                if p is None:
                    raise err(errno.EIO)
                fd = os.open(p, os.O_RDONLY)
                try:
                    return os.pread(fd, min(size, max(0, f.size - offset)), offset)
                finally:
                    os.close(fd)

        def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
            with self._mutex:
                f, flags = self._file(fh)
                buf = self._load(f)
                if flags & os.O_APPEND:
                    offset = len(buf)
                if offset > len(buf):
                    buf.extend(bytes(offset - len(buf)))
                end = offset + len(data)
                buf[offset:end] = data
                f.size = len(buf)
                if f.lo is None or offset < f.lo:
                    f.lo = offset
                if end > f.hi:
                    f.hi = end
                f.dirty = True
                f.vbytes += len(data)
                f.mtime = f.ctime = time.time_ns()
                return len(data)

        def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
            with self._mutex:
                node = self._node(path, fh)
                if node.is_dir:
                    raise err(errno.EISDIR)
                self._truncate(node, length)  # type: ignore[arg-type]
                return 0

        def fsync(self, path: str | None, datasync: int, fh: int) -> int:
            with self._mutex:
                f, _ = self._file(fh)
                try:
                    self._sync_file(f)
                except OSError as e:  # in backing: not the caller's error
                    raise RuntimeError(f"powercut internal error in fsync: {e!r}") from e
                return 0

        def flush(self, path: str | None, fh: int) -> int:
            return 0

        def release(self, path: str | None, fh: int) -> int:
            with self._mutex:
                entry = self.fhs.pop(fh, None)
                if entry is not None:
                    f = entry[0]
                    f.nopen -= 1
                    if (f.nopen == 0 and not f.dirty and f.data is not None  # type: ignore[union-attr]
                            and self._bpath(f) is not None):
                        f.data = None  # type: ignore[union-attr]
                return 0

        def opendir(self, path: str) -> int:
            with self._mutex:
                node = self._lookup(path)
                if not node.is_dir:
                    raise err(errno.ENOTDIR)
                return self._new_fh(node, 0)

        def releasedir(self, path: str | None, fh: int) -> int:
            with self._mutex:
                entry = self.fhs.pop(fh, None)
                if entry is not None:
                    entry[0].nopen -= 1
                return 0

        def readdir(self, path: str | None, fh: int) -> list[Any]:
            with self._mutex:
                d = self._node(path, fh)
                if not d.is_dir:
                    raise err(errno.ENOTDIR)
                out: list[Any] = [(".", stat.S_IFDIR, 0), ("..", stat.S_IFDIR, 0)]
                out.extend((name, stat.S_IFDIR if n.is_dir else stat.S_IFREG, 0)
                           for name, n in d.cur.items())  # type: ignore[union-attr]
                return out

        def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
            with self._mutex:
                d = self._node(path, fh)
                if d.is_dir:
                    try:
                        self._sync_dir(d)  # type: ignore[arg-type]
                    except OSError as e:  # in backing: not the caller's error
                        raise RuntimeError(f"powercut internal error in fsyncdir: {e!r}") from e
                    if _CHECK:
                        self.check(f"fsyncdir {self._bpath(d)}")
                return 0

        def mkdir(self, path: str, mode: int) -> int:
            with self._mutex:
                d, name = self._parent(path)
                if name in d.cur:
                    raise err(errno.EEXIST)
                uid, gid = self._ctx()
                sub = _Dir(stat.S_IMODE(mode), uid, gid, time.time_ns())
                sub.clink = (d, name)
                d.cur[name] = sub
                self._touch(d)
                return 0

        def unlink(self, path: str) -> int:
            with self._mutex:
                if self.hidden.pop(path, None) is not None:
                    return 0
                d, name = self._parent(path)
                node = d.cur.get(name)
                if node is None:
                    raise err(errno.ENOENT)
                if node.is_dir:
                    raise err(errno.EISDIR)
                del d.cur[name]
                node.clink = None
                self._touch(d)
                return 0

        def rmdir(self, path: str) -> int:
            with self._mutex:
                d, name = self._parent(path)
                node = d.cur.get(name)
                if node is None:
                    raise err(errno.ENOENT)
                if not node.is_dir:
                    raise err(errno.ENOTDIR)
                if node.cur:  # type: ignore[union-attr]
                    raise err(errno.ENOTEMPTY)
                del d.cur[name]
                node.clink = None
                self._touch(d)
                return 0

        def rename(self, old: str, new: str, flags: int = 0) -> int:
            with self._mutex:
                if flags & ~1:  # only RENAME_NOREPLACE
                    raise err(errno.EINVAL)
                sd, sn = self._parent(old)
                node = sd.cur.get(sn)
                if node is None:
                    raise err(errno.ENOENT)
                dd, dn = self._parent(new)
                if sd is dd and sn == dn:
                    return 0
                if dn.startswith(HIDDEN_PREFIX) and not node.is_dir:  # libfuse hiding an open file
                    if dn in dd.cur or new in self.hidden:
                        raise err(errno.EEXIST)
                    del sd.cur[sn]
                    node.clink = None
                    self.hidden[new] = node
                    self._touch(sd)
                    return 0
                if node.is_dir:  # not into itself
                    up: _Dir | None = dd
                    while up is not None:
                        if up is node:
                            raise err(errno.EINVAL)
                        up = up.clink[0] if up.clink is not None else None
                target = dd.cur.get(dn)
                if target is not None:
                    if flags & 1:
                        raise err(errno.EEXIST)
                    if node.is_dir and not target.is_dir:
                        raise err(errno.ENOTDIR)
                    if not node.is_dir and target.is_dir:
                        raise err(errno.EISDIR)
                    if target.is_dir and target.cur:  # type: ignore[union-attr]
                        raise err(errno.ENOTEMPTY)
                    target.clink = None
                del sd.cur[sn]
                dd.cur[dn] = node
                node.clink = (dd, dn)
                node.ctime = time.time_ns()
                self._touch(sd)
                self._touch(dd)
                return 0

        def _meta(self, path: str | None, fh: int | None, fn: Any) -> int:
            with self._mutex:
                node = self._node(path, fh)
                fn(node)
                node.ctime = time.time_ns()
                p = self._bpath(node)
                if p is not None:  # metadata is written through (not modelled as volatile)
                    os.chmod(p, node.mode)
                    os.chown(p, node.uid, node.gid)
                    os.utime(p, ns=(node.atime, node.mtime))
                return 0

        def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
            def fn(n: _Node) -> None:
                n.mode = stat.S_IMODE(mode)
            return self._meta(path, fh, fn)

        def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> int:
            def fn(n: _Node) -> None:
                if uid != -1:
                    n.uid = uid
                if gid != -1:
                    n.gid = gid
            return self._meta(path, fh, fn)

        def utimens(self, path: str | None, times: tuple[int, int] | None = None, fh: int | None = None) -> int:
            def fn(n: _Node) -> None:
                now = time.time_ns()
                n.atime, n.mtime = times if times is not None else (now, now)
            return self._meta(path, fh, fn)

        def destroy(self, path: str) -> None:
            with self._mutex:
                self.sync_all()

    class PowerCutFuse(mfusepy.FUSE):  # type: ignore[misc]
        """mfusepy's FUSE, passing the open file (fh) to truncate/chmod/chown/utimens and the
        flags to rename, which it drops for libfuse 3 (with nullpath_ok they get no path)."""

        @staticmethod
        def _fh(fip: Any) -> int | None:
            return fip.contents.fh if fip else None

        @staticmethod
        def _path(path: bytes | None) -> str | None:
            return None if path is None else path.decode("utf-8", "surrogateescape")

        def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
            return self.operations.truncate(self._path(path), length, self._fh(fip))

        def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
            return self.operations.chmod(self._path(path), mode, self._fh(fip))

        def chown_fuse_3(self, path: bytes | None, uid: int, gid: int, fip: Any) -> int:
            uid = -1 if uid == 0xFFFFFFFF else uid
            gid = -1 if gid == 0xFFFFFFFF else gid
            return self.operations.chown(self._path(path), uid, gid, self._fh(fip))

        def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
            times = None
            if buf:
                ts = buf.contents
                times = (mfusepy.time_of_timespec(ts.actime, use_ns=True),
                         mfusepy.time_of_timespec(ts.modtime, use_ns=True))
            return self.operations.utimens(self._path(path), times, self._fh(fip))

        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            return self.operations.rename(self._path(old), self._path(new), flags)

    return PowerCutOps(), PowerCutFuse


def _control(ops: Any, mountpoint: str) -> None:
    """Serve the controller's commands on stdin; answers on stdout."""
    out = sys.stdout.buffer
    for raw in sys.stdin.buffer:
        cmd = raw.strip().decode()
        if cmd == "cut":
            ops._mutex.acquire()  # never released: no operation runs, half-done or new
            try:
                reply = json.dumps(ops.stats())
            except Exception as e:  # still cut
                reply = json.dumps({"error": repr(e)})
            out.write(reply.encode() + b"\n")
            out.flush()
            os._exit(0)
        elif cmd == "sync":
            try:
                with ops._mutex:
                    ops.sync_all()
                out.write(b"ok\n")
            except Exception as e:
                out.write(f"error {e!r}\n".encode())
            out.flush()
        elif cmd == "stats":
            with ops._mutex:
                out.write(json.dumps(ops.stats()).encode() + b"\n")
            out.flush()
        else:
            out.write(f"error unknown command {cmd!r}\n".encode())
            out.flush()
    # the controller is gone without unmounting (its process died): clean up after it
    with ops._mutex:
        ops.sync_all()
    subprocess.run(["fusermount3", "-uz", mountpoint], stdin=subprocess.DEVNULL, capture_output=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python tests/powercut.py BACKING MOUNTPOINT", file=sys.stderr)
        return 2
    import logging
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="powercut %(levelname)s %(name)s: %(message)s")
    backing, mountpoint = (os.path.abspath(a) for a in argv)
    ops, fuse_cls = _make_ops(backing)
    threading.Thread(target=_control, args=(ops, mountpoint), daemon=True, name="powercut-control").start()
    try:
        fuse_cls(ops, mountpoint, foreground=True, nothreads=True, direct_io=True,
                 fsname="powercut", subtype="powercut")
    except BaseException as e:
        print(f"powercut: {e!r}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)
    sys.stderr.flush()
    os._exit(0)  # not a normal exit: the control thread is blocked reading stdin


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
