"""The one module that touches the file system (style rule 2).

Everything else works on bytes. The writer path is: ``pwrite`` the batch,
``fsync`` once, and only then report the commit. Any I/O error poisons the
writer (design 6): after a failed fsync the kernel may have dropped the dirty
pages and cleared the error, so retrying on the same descriptor can "succeed"
over lost data. A poisoned writer refuses further writes; reopening recovers
from the last commit that is really on disk.

A writer belongs to the process that opened it. A child made by ``fork()``
inherits the descriptor but not the parent's idea of where the file ends: a
commit from the child and the parent's next one would land at the same offset,
one silently replacing an acknowledged other. So every write checks the pid the
handle was opened by, and ``close`` in another process only drops its
descriptor: the lock and its sidecar stay the parent's. The flock lives on the
open file, which the child would share: right after the fork the child's
descriptor is pointed at a new, read-only open file of the same inode, so a
child that outlives a killed parent holds no lock.

The module-level ``_write``/``_fsync``/``_ftruncate`` indirections exist so
fault-injection tests can make each call fail in turn.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import socket
import stat
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import CapsuleNotFound, Locked, UsageError, WriterPoisoned

_write = os.write
_pwrite = os.pwrite
_JOIN_MAX = 1 << 20  # parts up to this many bytes in all go out in one write
# fdatasync flushes the data and the metadata needed to read it back (the file
# size included), which is all a commit needs; it skips the mtime update that
# makes fsync ~20% slower per append here. Platforms without it use fsync.
_fsync = getattr(os, "fdatasync", os.fsync)
_ftruncate = os.ftruncate


#: this process's pid, kept current in fork children by the hook below: every write
#: checks it, and ``os.getpid()`` is a system call.
_pid = os.getpid()


#: every writer of this process that holds its flock: a fork child lets go of them (below)
_writers: weakref.WeakSet[WriteHandle] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()
    # The flock lives on the open file the child shares: were the parent killed, a child still
    # running would hold the writer's role it may not use, and every restart would be refused
    # naming the dead pid. The child's descriptor is pointed at a new open file of the same inode
    # (read-only: a child only reads), which holds no lock; the parent's stays locked.
    for w in list(_writers):
        with contextlib.suppress(OSError):
            w.detach_lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


STALE_AFTER = 60.0  # seconds untouched before a writer's unlocked temporary file counts as dead


def sweep_temporaries(folder: Path, pattern: str, *, min_age: float = STALE_AFTER, now: float | None = None,
                      ) -> list[Path]:
    """Remove the temporary files (``pattern``, a glob in ``folder``) that a killed merge or
    compaction left, with their lock files; returns those removed.

    A temporary file is its writer's own file, flocked while it lives (WriteHandle): one this
    process can flock that nobody has touched for ``min_age`` seconds is a dead writer's. A
    live one is locked, or was created a moment ago and is not locked yet: both are left."""
    import time as _time

    now = _time.time() if now is None else now
    gone: list[Path] = []
    for p in folder.glob(pattern):
        if p.name.endswith(".lock"):
            if p.is_file() and not p.with_name(p.name[:-5]).exists() and now - _mtime(p) >= min_age:
                with contextlib.suppress(OSError):  # the lock file of a temporary removed before
                    p.unlink()
            continue
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < min_age:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its writer lives
            p.unlink(missing_ok=True)  # removed while locked: no writer can take it up meanwhile
            lock_path(p).unlink(missing_ok=True)
            gone.append(p)
        finally:
            os.close(fd)
    return gone


def _mtime(p: Path) -> float:
    try:
        return p.lstat().st_mtime
    except OSError:
        return float("inf")


def fsync_dir(path: Path) -> None:
    """A new or renamed file is durable only once its directory entry is (6.4)."""
    fd = os.open(path.parent or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


if TYPE_CHECKING:
    from .crypto import FrameCipher, KeySlots


class ReadHandle:
    """Read-only access bounded by a fixed size: the reader's snapshot.

    Opened O_RDONLY; nothing here can write (a file opened for reading is
    never written).
    """

    #: 10: the file's frame cipher once a key opened it; ``keyless``: an encrypted file
    #: read for its structure only (sealed payloads are handed on as stored)
    crypt: FrameCipher | None = None
    keyless = False
    keyslots: KeySlots | None = None  # the slots the key came from (10.3)
    keys: Any = None  # format.crypto.Keys: what opened it, to wrap a new file's key for the same readers

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer (audit F21); the
            # flag means nothing for a regular file, which is all we accept below.
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as e:
            raise CapsuleNotFound(f"{path}: no such capsule") from e
        except IsADirectoryError as e:
            raise UsageError(f"{path}: is a directory, not a capsule") from e
        except PermissionError as e:
            raise UsageError(f"{path}: permission denied") from e
        mode = os.fstat(self.fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(self.fd)
            what = "is a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise UsageError(f"{path}: {what}, not a capsule")
        self._map: mmap.mmap | None = None
        self._map_len = 0

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def pread(self, offset: int, n: int) -> bytes:
        if n <= 0:
            return b""
        out = os.pread(self.fd, n, offset)
        while len(out) < n:  # pread may return short on some file systems
            more = os.pread(self.fd, n - len(out), offset + len(out))
            if not more:
                break
            out += more
        return out

    def readinto(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset`` without an intermediate copy (large blobs)."""
        done, n = 0, len(buf)
        while done < n:
            got = os.preadv(self.fd, [buf[done:]], offset + done)
            if got <= 0:
                break
            done += got
        return done

    def view(self, offset: int, n: int) -> memoryview:
        """Zero-copy view of committed bytes (for index tables), via mmap."""
        end = offset + n
        if self._map is None or end > self._map_len:
            size = self.size()
            if end > size:
                raise ValueError("view beyond end of file")
            # Map through a descriptor of our own: mmap keeps a dup() of the fd it
            # is given, and a dup of the writer's descriptor would hold its flock
            # for as long as any table view lives. The path may no longer name our
            # file (moved, or replaced by a rename): then the bytes are read from our
            # own descriptor instead, a copy but never another file's.
            try:
                fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                return memoryview(self.pread(offset, n))
            try:
                mine, theirs = os.fstat(self.fd), os.fstat(fd)
                if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
                    return memoryview(self.pread(offset, n))
                self._map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
            self._map_len = size
        return memoryview(self._map)[offset:end]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        # mmaps stay alive while numpy views reference them; GC releases them.
        self._map = None


class WriteHandle(ReadHandle):
    """The single writer: an exclusive flock plus append-only writes."""

    _lock_file: tuple[Path, bytes] | None = None  # the FILE.lock this writer made, and what it wrote

    def __init__(self, path: Path, *, create: bool = False, mode: int = 0o644, finish: bool = True) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        if create:
            flags |= os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        try:
            self.fd = os.open(path, flags, mode)
        except FileNotFoundError as e:
            if create:  # its folder is missing, or a file system that makes no files there (/proc)
                why = e.strerror if path.parent.is_dir() else f"no folder {path.parent}"
                raise CapsuleNotFound(f"{path}: cannot create it: {why}") from e
            raise CapsuleNotFound(f"{path}: no such capsule") from e
        except FileExistsError:
            raise
        except IsADirectoryError as e:
            raise UsageError(f"{path}: is a directory, not a capsule") from e
        except PermissionError as e:
            raise UsageError(f"{path}: permission denied for writing") from e
        if not stat.S_ISREG(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            self.fd = -1
            raise UsageError(f"{path}: not a regular file, not a capsule")
        self._map = None
        self._map_len = 0
        self.poisoned: BaseException | None = None
        self.finished = 0  # bytes of an interrupted pull's append this open finished (19.7)
        self.pid = _pid  # the process this writer belongs to (see the module docstring)
        # A file this call just created (O_EXCL) is ours: a create(exist_ok=True) that lost the
        # race may hold its lock a moment, probing for a header; wait that out (2 s at most)
        if create:
            self._lock(wait=2.0)
        else:
            self._lock()
        if not create and finish:  # (a keyed pull discards a journal it did not authenticate: sync.pull)
            from .pending import finish as finish_append

            try:
                self.finished = finish_append(path, self.fd)  # a killed pull's append, finished before any read (19.7)
            except BaseException:
                self.close()  # never keep the lock of a handle that was not returned
                raise

    def _lock(self, wait: float = 0.0) -> None:
        import time

        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() < deadline:
                    time.sleep(0.002)
                    continue
                pid, host = next((info for p in self._sidecars() if (info := _read_lock_info(p))[0]), (None, None))
                os.close(self.fd)
                self.fd = -1
                who = f"pid {pid} on {host}" if pid else "another process"
                raise Locked(f"{self.path}: locked by {who} (one writer at a time)", pid=pid, host=host) from None
        # The lock is on the inode opened above. If the path was renamed over meanwhile (an
        # in-place compaction, 15.1, whose holder let go of the old file just now), this lock
        # guards a file nobody will read again: let go and report it as held, so a waiting
        # writer (open_writer) opens the path again.
        st = os.fstat(self.fd)
        try:
            now = os.stat(self.path)
            same = (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
        except FileNotFoundError:
            same = False
        if not same:
            os.close(self.fd)
            self.fd = -1
            raise Locked(f"{self.path}: replaced while its writer lock was taken (compacted?); open it again")
        # Best effort: name the holder for the next writer's error message. The flock is
        # ours, so whatever stands at the lock path is replaced, never written through: a
        # symlink planted there must not make us overwrite its target (audit F19).
        mine = f"{os.getpid()} {socket.gethostname()}\n".encode()
        for lp in self._sidecars():  # beside the real file; in a read-only folder, beside the link
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lp)
                fd = os.open(lp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except OSError:
                continue
            try:
                os.write(fd, mine)
            finally:
                os.close(fd)
            self._lock_file = (lp, mine)  # close removes this file, and only while it is still ours
            break
        _writers.add(self)

    def detach_lock(self) -> None:
        """In a fork child: this descriptor becomes a new, read-only open file of the same inode,
        so the child no longer shares (and holds) the parent's flock."""
        if self.fd < 0:
            return
        proc = f"/proc/self/fd/{self.fd}"
        fresh = os.open(proc if os.path.exists(proc) else self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            a, b = os.fstat(fresh), os.fstat(self.fd)
            if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
                os.dup2(fresh, self.fd, inheritable=False)
        finally:
            os.close(fresh)

    def _sidecars(self) -> list[Path]:
        """Where FILE.lock goes (6.5): beside the file the path names, so writers through a
        symbolic link and through the real path name the same holder; then beside the path."""
        real, given = lock_path(Path(os.path.realpath(self.path))), lock_path(self.path)
        return [real] if real == given else [real, given]

    @property
    def forked(self) -> bool:
        """True in a process other than the one that opened this writer (a fork child)."""
        return _pid != self.pid

    def check_owner(self) -> None:
        """6.5: one writer, in one process; a fork child inherits the handle, not the role."""
        if _pid != self.pid:
            raise UsageError(f"{self.path}: this writer was opened by pid {self.pid}; a forked child "
                             f"(pid {_pid}) must not write through it: open its own handle")

    def _check(self) -> None:
        if _pid != self.pid:
            self.check_owner()
        if self.poisoned is not None:
            raise WriterPoisoned(
                f"{self.path}: an earlier failed or interrupted write ({self.poisoned}) poisoned this writer; "
                "reopen to recover"
            )

    def append_at(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` (the current end of the committed file)."""
        self.append_parts(offset, (data,))

    def append_parts(self, offset: int, parts: Sequence[bytes | bytearray | memoryview]) -> int:
        """Write ``parts`` back to back from ``offset`` (the current end of the committed
        file); the number of bytes written. One write each, not one joined copy: a commit of
        a million records holds its frames once (F22)."""
        self._check()
        if len(parts) > 1 and sum(map(len, parts)) <= _JOIN_MAX:
            parts = (b"".join(parts),)  # a small commit: one write call
        at = offset
        try:
            for part in parts:
                view = memoryview(part)
                pos = 0
                while pos < len(view):
                    n = _pwrite(self.fd, view[pos:], at + pos)
                    if n <= 0:
                        raise OSError(errno.EIO, "short write")
                    pos += n
                at += pos
        except OSError as e:
            self.poisoned = e.with_traceback(None)
            # Nothing since the last commit was synced: cut the partial write
            # back off (best effort), so a failed write leaves the file as it was.
            with contextlib.suppress(OSError):
                _ftruncate(self.fd, offset)
                _fsync(self.fd)
            raise WriterPoisoned(f"{self.path}: write failed: {e.strerror or e}") from e
        return at - offset

    def sync(self) -> None:
        self._check()
        try:
            _fsync(self.fd)
        except OSError as e:
            self.poisoned = e.with_traceback(None)  # never retry fsync on the same descriptor (design 6)
            raise WriterPoisoned(f"{self.path}: fsync failed: {e}") from e

    def truncate(self, size: int) -> None:
        self._check()
        try:
            _ftruncate(self.fd, size)
        except OSError as e:
            self.poisoned = e.with_traceback(None)
            raise WriterPoisoned(f"{self.path}: truncate failed: {e}") from e
        self._map = None

    def close(self) -> None:
        if self.fd >= 0 and not self.forked:  # a fork child leaves the parent's lock file alone
            if self._lock_file is not None:
                lp, mine = self._lock_file
                with contextlib.suppress(OSError):
                    # the path as it was at lock time, never recomputed (a link retargeted since
                    # would name another file), and only our own: a file with other contents is
                    # someone else's
                    fd = os.open(lp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                    try:
                        ours = os.read(fd, 512) == mine
                    finally:
                        os.close(fd)
                    if ours:
                        os.unlink(lp)
            # The flock lives on the open file, which a fork child shares while it lives: the
            # owner releases it outright, so a child still running never keeps the writer's
            # role (6.5). A child closing its copy only closes it: the parent's lock stays.
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        super().close()


def _read_lock_info(p: Path) -> tuple[int | None, str | None]:
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None, None
            parts = os.read(fd, 512).decode("utf-8", "replace").split()
        finally:
            os.close(fd)
        return int(parts[0]), parts[1][:255]
    except (OSError, ValueError, IndexError):
        return None, None
