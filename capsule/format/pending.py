"""An append another process began and did not finish, finished by the next writer (8.3, 19.7).

Theory of operation: ``pull`` onto a copy appends bytes it has verified already (19.7),
commit by commit. A kill in the middle leaves a torn tail that is a prefix of them; the
next writer would drop it (8.3) and write a commit of its own, and the copy would have
left its remote for good (every later push and pull: "diverged"). So before the first
byte is appended, the puller writes those bytes to a journal beside the file,
``.NAME.append``, and fsyncs it (and the folder); it removes the journal once the last
byte is durable. The journal is a header, ``MAGIC || u64 start || u64 length ||
SHA-256(bytes)``, then the bytes, to go at offset ``start``.

A writer, once it holds the lock and before it reads the file, calls :func:`finish`:

- no journal: nothing to do (one failed ``stat``);
- a journal that does not check (header, length or digest), or that the file does not
  continue from ``start`` (the file holds nothing past ``start``, or all of the bytes, or
  other bytes there: the append never began, ended, or the file went on without it): it
  is removed and the file is left as it is, for the usual torn-tail rules;
- else the file's bytes past ``start`` are a proper prefix of the journal's: the rest is
  appended and fsynced, and the journal removed. The file is then what the finished pull
  would have left, and the reader that loads it checks every appended frame as usual.

Nothing else writes or reads the journal, and it is touched only under the writer's lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path

MAGIC = b"CAPSULE-APPEND\x00\x01"
_HEAD = struct.Struct("<16sQQ32s")
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


def write_journal(path: Path, start: int, length: int, read: Callable[[int, int], bytes]) -> Path:
    """Write (durably) the journal of an append of ``length`` bytes at ``start``;
    ``read(offset, n)`` gives the bytes, offsets counted from ``start``."""
    j = journal_path(path)
    tmp = j.with_name(j.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        digest, at = hashlib.sha256(), 0
        while at < length:
            data = read(at, min(_CHUNK, length - at))
            if not data:
                raise OSError(f"{path}: the bytes to append ended at {at} of {length}")
            digest.update(data)
            _pwrite_all(fd, data, _HEAD.size + at)
            at += len(data)
        _pwrite_all(fd, _HEAD.pack(MAGIC, start, length, digest.digest()), 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, j)
    _fsync_dir(j)
    return j


def remove_journal(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        journal_path(path).unlink()


def finish(path: Path, fd: int) -> int:
    """Finish an append the journal of ``path`` describes, through the writer's ``fd``
    (held under the lock); returns the bytes appended (0 when there was nothing to finish)."""
    j = journal_path(path)
    try:
        jfd = os.open(j, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return 0  # none (the common case), or not one we may read: nothing to finish
    done = 0
    try:
        head = os.pread(jfd, _HEAD.size, 0)
        size = os.fstat(fd).st_size
        if len(head) == _HEAD.size:
            magic, start, length, want = _HEAD.unpack(head)
            if magic == MAGIC and start < size < start + length and _continues(fd, jfd, start, size, length, want):
                log = logging.getLogger("capsule.recovery")
                try:
                    at = size
                    while at < start + length:
                        data = os.pread(jfd, min(_CHUNK, start + length - at), _HEAD.size + at - start)
                        _pwrite_all(fd, data, at)
                        at += len(data)
                    os.fsync(fd)
                except OSError as e:  # a full disk, say: the torn-tail rules (8.3) take it from here
                    log.warning("%s: could not finish an interrupted append (%s): its bytes are a torn tail", path, e)
                else:
                    done = start + length - size
                    log.warning("%s: finished an append that was interrupted (a pull killed midway): %d bytes "
                                "after the %d it had written", path, done, size - start)
    finally:
        os.close(jfd)
    j.unlink(missing_ok=True)  # finished now, or stale: never used twice
    return done


def _continues(fd: int, jfd: int, start: int, size: int, length: int, want: bytes) -> bool:
    """The journal checks (its bytes hash to ``want``) and the file's bytes past ``start``
    are its first ones."""
    digest, at = hashlib.sha256(), 0
    while at < length:
        data = os.pread(jfd, min(_CHUNK, length - at), _HEAD.size + at)
        if not data:
            return False
        if at < size - start:
            n = min(len(data), size - start - at)
            if os.pread(fd, n, start + at) != data[:n]:
                return False
        digest.update(data)
        at += len(data)
    return at == length and os.pread(jfd, 1, _HEAD.size + length) == b"" and digest.digest() == want


def _pwrite_all(fd: int, data: bytes, at: int) -> None:
    view = memoryview(data)
    while view:
        k = os.pwrite(fd, view, at)
        view, at = view[k:], at + k


__all__ = ["finish", "journal_path", "remove_journal", "write_journal"]
