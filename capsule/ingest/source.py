"""The files a command is handed: regular files only, read within a limit (spec 11).

A FIFO, a terminal or a device given where a file is expected blocks the open or
never ends, and a sparse or endless file grows memory until the process dies. So
an input is checked with ``stat`` before it is opened (opening some devices has
effects of its own), opened without blocking and checked again on the open
descriptor (it may have been swapped in between), and read in bounded chunks
against the limit that applies to it: more than the limit is an error, never a
truncation.
"""

from __future__ import annotations

import contextlib
import os
import stat
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..core.errors import AlreadyExists, InvalidRecordError, UsageError

CHUNK = 1 << 20


def size_text(n: int) -> str:
    """A limit as people write it: 16 MiB, 64 KiB, 100 bytes."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def check_regular(path: str | os.PathLike[str], what: str = "") -> None:
    """Refuse an existing path that is neither a regular file nor a folder, before
    anything opens it. A missing path passes: the caller's own error names it."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise UsageError(f"{what}{os.fspath(path)}: not a regular file")


def check_output(out: str | os.PathLike[str], source: str | os.PathLike[str], *, force: bool,
                 what: str = "the capsule being read") -> None:
    """Refuse an output path a write-then-rename would wrongly replace: a folder, a device
    such as /dev/null, a FIFO or a socket (the rename would put a plain file in its place),
    the ``source`` itself (also through a link), or, without ``force``, a file or a link that
    exists (with it, a link itself is replaced, its target never written); and a missing
    parent folder."""
    out = os.fspath(out)
    if not out:
        raise UsageError("the output path is empty")
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise UsageError(f"{out}: {e.strerror or e}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode) or (stat.S_ISLNK(st.st_mode) and os.path.isdir(out)):
            raise UsageError(f"{out}: is a directory")
        if stat.S_ISLNK(st.st_mode):  # /dev/stdout, /dev/fd/N: a link to a device is a device here
            with contextlib.suppress(OSError):
                st = os.stat(out)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise UsageError(f"{out}: is not a regular file; refusing to replace it (give a plain file's path)")
        if os.path.exists(out) and os.path.exists(source) and os.path.samefile(out, source):
            raise UsageError(f"{out}: is {what}")
        if not force:
            raise AlreadyExists(f"{out}: exists (use --force to replace it)")
    parent = os.path.dirname(out) or "."
    if not os.path.isdir(parent):
        raise UsageError(f"{out}: no such folder {parent}")


def open_regular(path: str | os.PathLike[str], what: str = "", *, nofollow: bool = False) -> BinaryIO:
    """Open a regular file for reading, or raise :class:`UsageError` without blocking.

    ``nofollow`` refuses a final symlink (a folder's file that was swapped for one
    after it was listed). OSError (missing, a folder, no permission) is the caller's.
    """
    check_regular(path, what)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (os.O_NOFOLLOW if nofollow else 0)
    # The file object owns the descriptor from the moment it exists (``open`` with an opener,
    # in C): with os.fdopen, a signal handled between its making the object and the return
    # dropped the object, which closed the descriptor, and the cleanup closed it again: the
    # EBADF of that second close replaced the KeyboardInterrupt (a pack interrupted by
    # SIGTERM said "could not be read again (Bad file descriptor)" about a file, exit 1).
    f = open(path, "rb", opener=lambda p, _flags: os.open(p, flags))  # noqa: SIM115 (returned open)
    try:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise UsageError(f"{what}{os.fspath(path)}: not a regular file")
        # O_NONBLOCK means nothing for a regular file's reads; the descriptor is one.
        return f
    except BaseException:
        f.close()
        raise


def too_large(what: str, limit: int, which: str) -> InvalidRecordError:
    return InvalidRecordError(f"{what}: larger than {size_text(limit)}, the limit of {which} (spec 11)")


def read_limited(f: BinaryIO, limit: int, what: str, which: str) -> bytes:
    """Everything ``f`` holds, if that is at most ``limit`` bytes; read in chunks, so
    an endless stream costs ``limit`` bytes of memory before it is refused.
    ``what`` names the input in the error, ``which`` the limit ("one record")."""
    buf = bytearray()
    while True:
        chunk = f.read(min(CHUNK, limit + 1 - len(buf)))
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise too_large(what, limit, which)


def read_regular(path: str | os.PathLike[str], limit: int, which: str, what: str = "", *,
                 nofollow: bool = False) -> bytes:
    """A regular file's bytes, at most ``limit`` of them (``what`` prefixes errors: "--runtime ").

    A file whose size already says it is too large is refused before a byte is read.
    """
    with open_regular(path, what, nofollow=nofollow) as f:
        name = f"{what}{os.fspath(path)}"
        if os.fstat(f.fileno()).st_size > limit:
            raise too_large(name, limit, which)
        return read_limited(f, limit, name, which)




def undecodable(name: str) -> bool:
    """A name the file system gave with a byte that is not UTF-8 (kept as a surrogate): no text
    of a record can hold it (5.1)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False




TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")
FOLDER_UNREAD = "a folder it could not list"  # a skip's reason: --prune keeps what is under it


def text_files(src: Path, skip: Callable[[str, str], None], warn: Callable[[str], None]) -> list[tuple[str, Path]]:
    """A folder's text files as (relative POSIX path, path to open), in sorted order.

    The walk never descends into a symlinked folder, and a symlinked file is read
    only if it resolves inside the folder (its target is what gets opened): pack
    never reads outside the folder it was given. ``skip(rel, why)`` hears of each file (and
    folder, "rel/") left out; ``warn`` of the files of other types.
    """
    root = src.resolve()
    found: list[tuple[str, Path]] = []
    other: dict[str, int] = {}  # suffix -> files of a type pack does not read (hidden ones aside)

    def unread(e: OSError) -> None:  # a folder the walk cannot list: said, and --prune keeps its chunks
        rel = Path(e.filename).relative_to(src).as_posix() if e.filename else "?"
        skip(f"{rel}/", f"{FOLDER_UNREAD} ({e.strerror or e})")

    for top, dirs, names in os.walk(src, onerror=unread):  # followlinks=False
        for d in dirs:  # said, as a symlinked file that leaves the folder is (it was dropped in silence)
            q = Path(top, d)
            with contextlib.suppress(OSError):  # a name too long to stat: the walk says what it cannot list
                if q.is_symlink() and not any(part.startswith(".") for part in q.relative_to(src).parts):
                    skip(f"{q.relative_to(src).as_posix()}/", "a symlink to a folder (not followed)")
        for name in names:
            p = Path(top, name)
            if p.suffix.lower() not in TEXT_SUFFIXES:
                if not any(part.startswith(".") for part in p.relative_to(src).parts):
                    key = p.suffix.lower() or "no extension"
                    other[key] = other.get(key, 0) + 1
                continue
            rel = p.relative_to(src).as_posix()
            if not rel.isascii() and undecodable(rel):  # meta holds text (5.1): the name could not be stored
                skip(rel, "its name is not UTF-8 (rename it)")
                continue
            try:
                link = p.is_symlink()
            except OSError as e:  # a folder that lists but does not let its entries be seen (r--)
                skip(rel, f"cannot be read ({e.strerror or e})")
                continue
            if link:
                try:
                    real = p.resolve(strict=True)
                except (OSError, RuntimeError):  # dangling, or a loop
                    skip(rel, "a symlink to nothing")
                    continue
                if not real.is_relative_to(root):
                    skip(rel, "a symlink that leaves the folder")
                    continue
                p = real
            found.append((rel, p))
    if other:
        n = sum(other.values())
        warn(f"ignored {n} {'file' if n == 1 else 'files'} of other types ({', '.join(sorted(other))}); "
             f"in a folder pack reads {', '.join(TEXT_SUFFIXES)}")
    kept: list[tuple[str, Path]] = []
    taken: set[str] = set()
    for rel, p in sorted(found):  # chunks are filed under the NFC name (5.1): two names, one path
        key = unicodedata.normalize("NFC", rel)
        if key in taken:
            skip(rel, "another file's name in another Unicode form (the same in NFC): rename one")
            continue
        taken.add(key)
        kept.append((rel, p))
    return kept


__all__ = ["FOLDER_UNREAD", "TEXT_SUFFIXES", "check_regular", "open_regular", "read_limited", "read_regular",
           "size_text", "text_files", "too_large", "undecodable"]
