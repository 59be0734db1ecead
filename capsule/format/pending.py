"""An append another process began and did not finish, finished by the next writer (8.3, 19.7).

Theory of operation: ``pull`` onto a copy appends bytes it has verified already (19.7),
commit by commit. A kill in the middle leaves a torn tail that is a prefix of them; the
next writer would drop it (8.3) and write a commit of its own, and the copy would have
left its remote for good (every later push and pull: "diverged"). So before the first
byte is appended, the puller writes those bytes to a journal beside the file,
``.NAME.append``, and fsyncs it (and the folder); it removes the journal once the last
byte is durable. The journal is a header, ``MAGIC || u64 start || u64 length ||
chain || SHA-256(bytes)``, then the bytes, to go at offset ``start``, where the COMMIT
whose chain value (its last 32 bytes, 4.2) is ``chain`` ends.

A writer, once it holds the lock and before it reads the file, calls :func:`finish`:

- no journal: nothing to do (one failed ``open``);
- a journal that is not a regular file of this user's, writable by nobody else (a folder
  shared with others, like /tmp, must not let them choose bytes for this file), is
  ignored and left alone;
- a journal that does not check (header, its size against ``length``, the chain value
  the file holds before ``start``, the digest), or that the file does not continue from
  ``start`` (the file holds nothing past ``start``, or all of the bytes, or other bytes
  there: the append never began, ended, or the file went on without it): it is removed
  and the file is left as it is, for the usual torn-tail rules;
- else the file past ``start`` is the start of the journal (at each journal frame that
  begins before the file's end, that frame's header or zeros, a page a power loss never
  wrote back): the journal's bytes are written from ``start`` and fsynced, and the journal
  removed. The file is then what the finished pull would have left, and the reader that
  loads it checks every appended frame as usual.

Nothing else writes or reads the journal, and it is touched only under the writer's lock.
Whatever happens to the journal, a writer goes on: :func:`finish` never raises; it costs at
most the journal's own size, which is the tail being finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import stat
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from ..core import constants as C

MAGIC = b"CAPSULE-APPEND\x00\x01"
_HEAD = struct.Struct("<16sQQ32s32s")
_CHUNK = 8 << 20


def journal_path(path: Path) -> Path:
    """Where the journal of ``path`` lives: beside the real file (a link and its target agree)."""
    real = Path(os.path.realpath(path))
    return real.with_name(f".{real.name}.append")


def _fsync_dir(p: Path) -> None:
    fd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_journal(path: Path, start: int, chain: bytes, length: int, read: Callable[[int, int], bytes]) -> Path:
    """Write (durably) the journal of an append of ``length`` bytes at ``start``, where the
    COMMIT with chain value ``chain`` ends; ``read(offset, n)`` gives the bytes, offsets
    counted from ``start``."""
    j = journal_path(path)
    # a name of its own, created here (O_EXCL): nothing another user planted receives the bytes
    tmp = j.with_name(f"{j.name}.tmp-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        digest, at = hashlib.sha256(), 0
        while at < length:
            data = read(at, min(_CHUNK, length - at))
            if not data:
                raise OSError(f"{path}: the bytes to append ended at {at} of {length}")
            digest.update(data)
            pwrite_all(fd, data, _HEAD.size + at)
            at += len(data)
        pwrite_all(fd, _HEAD.pack(MAGIC, start, length, chain, digest.digest()), 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, j)
        _fsync_dir(j)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return j


def torn_fate(path: str | Path) -> str:
    """What the next writer does with a torn tail of ``path`` (for a message): finishes it when an
    interrupted pull's journal is there (it may still find the journal unusable), else truncates it."""
    return ("finishes it (an interrupted pull's journal continues it, 19.7)" if journal_path(Path(path)).exists()
            else "truncates it")


def remove_journal(path: Path) -> None:
    with contextlib.suppress(OSError):
        journal_path(path).unlink()


def finish(path: Path, fd: int) -> int:
    """Finish an append the journal of ``path`` describes, through the writer's ``fd``
    (held under the lock); returns the bytes appended (0 when there was nothing to finish).
    Never raises: a journal it cannot use leaves the file to the torn-tail rules (8.3)."""
    log = logging.getLogger("capsule.recovery")
    try:
        j = journal_path(path)
        jfd = os.open(j, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return 0  # none (the common case), or not one we may read: nothing to finish
    done, stale = 0, False
    try:
        st = os.fstat(jfd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            log.warning("%s: ignored %s: not a regular file of this user's that only they can write", path, j)
            return 0
        stale = True
        head = os.pread(jfd, _HEAD.size, 0)
        size = os.fstat(fd).st_size
        if len(head) != _HEAD.size:
            return 0
        magic, start, length, chain, want = _HEAD.unpack(head)
        if magic != MAGIC or st.st_size != _HEAD.size + length or not 32 <= start < size < start + length:
            return 0  # not one, or stale: the append never began, or ended
        if (os.pread(fd, 32, start - 32) != chain or not _frames_fit(jfd, length)
                or not _continues(fd, jfd, start, size, length, want)):
            log.warning("%s: removed %s: it does not continue the bytes after the last commit (the torn-tail "
                        "rules apply, 8.3)", path, j)
            return 0
        try:
            at = start  # all of it: the bytes already there may have holes (see _continues)
            while at < start + length:
                data = os.pread(jfd, min(_CHUNK, start + length - at), _HEAD.size + at - start)
                if not data:
                    raise OSError("the journal ended early")
                pwrite_all(fd, data, at)
                at += len(data)
            os.fsync(fd)
        except OSError as e:  # a full disk, say: the torn-tail rules (8.3) take it from here
            log.warning("%s: could not finish an interrupted append (%s): its bytes are a torn tail", path, e)
        else:
            done = start + length - size
            log.warning("%s: finished an append that was interrupted (a pull killed midway): %d bytes after the "
                        "%d it had written", path, done, size - start)
    except OSError as e:
        log.warning("%s: could not read %s (%s): left to the torn-tail rules", path, j, e)
    finally:
        os.close(jfd)
        if stale:  # finished now, or stale: never used twice
            with contextlib.suppress(OSError):
                j.unlink()
    return done


def _frames_fit(jfd: int, length: int) -> bool:
    """The journal's bytes are whole frames (3.1: each header passes its CRC and its length
    leads to the next), ending at ``length``: a walk of the headers alone, before any byte is
    hashed, so a journal that only claims a length (a sparse file) costs a read or two."""
    at = 0
    while at < length:
        raw = os.pread(jfd, C.FRAME_HEADER_SIZE, _HEAD.size + at)
        if len(raw) != C.FRAME_HEADER_SIZE or zlib.crc32(raw[:28]) != int.from_bytes(raw[28:], "little"):
            return False
        total, _, _, _, _, plen, *_ = C.FRAME_HEADER_STRUCT.unpack(raw)
        if total != C.FRAME_OVERHEAD + plen:
            return False
        at += total
    return at == length


def _continues(fd: int, jfd: int, start: int, size: int, length: int, want: bytes) -> bool:
    """The journal checks (its bytes hash to ``want``) and the file past ``start`` is the start
    of it: at each of the journal's frames that begins before the file's end, the file holds
    that frame's header, or zeros (a page a power loss never wrote back: those bytes were not
    yet committed, 8.2). Any other bytes there mean the file went on without the journal."""
    at = 0
    while at < min(length, size - start):
        want_head = os.pread(jfd, C.FRAME_HEADER_SIZE, _HEAD.size + at)
        got = os.pread(fd, min(C.FRAME_HEADER_SIZE, size - start - at), start + at)
        if got != want_head[: len(got)] and got.strip(b"\0"):
            return False
        at += C.FRAME_HEADER_STRUCT.unpack(want_head)[0]
    digest, at = hashlib.sha256(), 0
    while at < length:
        data = os.pread(jfd, min(_CHUNK, length - at), _HEAD.size + at)
        if not data:
            return False
        digest.update(data)
        at += len(data)
    return at == length and os.pread(jfd, 1, _HEAD.size + length) == b"" and digest.digest() == want


def pwrite_all(fd: int, data: bytes, at: int) -> None:
    """``data`` at ``at`` of ``fd``, whatever short writes the system makes."""
    view = memoryview(data)
    while view:
        k = os.pwrite(fd, view, at)
        view, at = view[k:], at + k


__all__ = ["finish", "journal_path", "pwrite_all", "remove_journal", "write_journal"]
