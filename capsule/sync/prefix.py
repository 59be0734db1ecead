"""Is one copy a prefix of the other? (spec 19.6). Works on any ``pread`` source.

Two copies of a capsule agree up to a commit exactly when they hold the same chain
value at that commit's end (4.2: the chain value covers every byte before it). A
push proves the remote is a prefix of the local file by finding the remote's chain
value at the same offset in the local file *and* walking the local frames from
there to the local last commit, chain link by chain link (O(tail)): the walk lands
on the local file's own last chain value, so (SHA-256 being collision resistant) the
offset is a real frame boundary of the local file and the bytes before it are the
remote's. When the copies differ, the last commit both hold is found by binary
search over the local commits, probing 32 bytes of the other side per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..core import constants as C
from ..core.errors import CorruptError, DataError
from ..format.file import ReadHandle
from ..format.frames import FileHeader, Merkle
from ..format.scan import (
    Snapshot,
    Source,
    anchored,
    hop,
    locate,
    read_commit_at,
    tail_commit_offset,
    walk,
)
from ..format.store import load_stable


@dataclass(frozen=True, slots=True)
class Head:
    """A copy's last commit: where it ends and what it names."""

    file_id: str
    size: int  # the committed length (the last COMMIT's end)
    commits: int
    seq: int
    commit_offset: int
    chain: bytes
    root: str
    records: int
    header: FileHeader
    torn: int = 0  # bytes of torn tail after the last commit (8.1), never shipped

    def summary(self) -> dict[str, object]:
        return {"commits": self.commits, "seq": self.seq, "root": self.root}


def head_of(h: ReadHandle, path: Path) -> Head:
    """The committed head of an open local file; a file with no commit is refused."""
    return load_head(h, path)[0]


def load_head(h: ReadHandle, path: Path) -> tuple[Head, Snapshot]:
    """The committed head and the reader's snapshot at it (6.3: read from the last INDEX on,
    never the whole history); a file with no commit is refused."""
    try:
        header = _attach(h, path)
        snap = load_stable(h, strict=False) if h.crypt is not None or not header.encrypted else _sealed_head(h, header)
    except CorruptError as e:
        if not str(e).startswith(f"{path}: "):
            e.args = (f"{path}: {e}",)  # which file (a push's local capsule, a pull's copy): offset and check stay
        raise
    c = snap.commit
    if c is None:
        raise DataError(f"{path}: holds no commit (an interrupted create): nothing to sync")
    return Head(snap.header.file_id.hex(), snap.end, c.commits, c.seq, c.offset, snap.chain, c.root.hex(),
                snap.records, snap.header, snap.torn[1] if snap.torn else 0), snap


def _attach(h: ReadHandle, path: Path) -> FileHeader:
    """10: sync moves bytes: an encrypted file is read with the key of ``capsule.unlocking``
    when there is one, else for its structure only (its sealed frames stay as stored)."""
    from ..format.keyslots import attach
    from ..handle.entry import default_keys

    keys = default_keys()
    return attach(h, identity=keys.identity, passphrase=keys.passphrase, keyless=True, where=path)


def _sealed_head(h: ReadHandle, header: FileHeader) -> Snapshot:
    """10.6: the last commit of an encrypted file read without its key. Its INDEX is sealed, so
    the commit is taken from the tail locator (or, after a crash, the newest COMMIT reached by
    following frame lengths), checked by its chain link and found where frame lengths lead: what
    a keyless verify proves of it. The remote checks the whole file again (19.7)."""
    size = h.size()
    off = tail_commit_offset(h, size)

    def candidates() -> Iterator[int]:
        if off is not None:
            yield off  # the usual case: flat in history, as 6.3
        for fh in reversed(list(hop(h, C.HEADER_SIZE, size, 0, header.max_frame_len))):
            if fh.ftype == C.FT_COMMIT and fh.end <= size and fh.offset != off:
                yield fh.offset

    for at in candidates():
        try:
            c = read_commit_at(h, at, header)
        except CorruptError:
            continue
        if c.end <= size and (anchored(h, header, c) or locate(h, header, c) == "frame"):
            snap = Snapshot(header, c.end, c, c.chain, Merkle(), c.seq + 1, records=c.records)
            if c.end < size:
                snap.torn = (c.end, size - c.end)
            return snap
    return Snapshot(header, C.HEADER_SIZE, None, header.chain_seed, Merkle(), 0)


def extends(src: Source, head: Head, at: int, seq: int, chain: bytes) -> bool:
    """Whether the file behind ``head`` holds, at ``at``, the end of a commit whose COMMIT
    frame has seq ``seq - 1`` and chain value ``chain``: the 32 bytes before ``at`` are
    ``chain`` and the frames from ``at`` check, link by link, up to the file's last
    commit (19.6). O(head.size - at)."""
    if at > head.size or at < C.HEADER_SIZE + C.FRAME_OVERHEAD:
        return False
    if src.pread(at - C.TRAILER_SIZE, C.TRAILER_SIZE) != chain:
        return False
    if at == head.size:
        return chain == head.chain and seq == head.seq + 1
    try:
        return walk(src, head.header, at, head.size, seq, chain) is None
    except CorruptError:
        return False


@dataclass(frozen=True, slots=True)
class CommitMark:
    commits: int
    seq: int
    end: int
    chain: bytes
    root: str

    def summary(self) -> dict[str, object]:
        return {"commits": self.commits, "seq": self.seq, "root": self.root}


def commits_of(src: Source, head: Head) -> list[CommitMark]:
    """Every commit of the file, oldest first, by the COMMITs' back-pointers (6.1)."""
    out: list[CommitMark] = []
    off: int | None = head.commit_offset
    while off is not None:
        c = read_commit_at(src, off, head.header)
        out.append(CommitMark(c.commits, c.seq, c.end, c.chain, c.root.hex()))
        off = c.prev
        if len(out) > head.commits:
            raise CorruptError("COMMIT back-pointers loop", offset=c.offset, seq=c.seq, check="commit-prev")
    out.reverse()
    return out


def last_common(marks: list[CommitMark], other_has: Callable[[int, bytes], bool]) -> CommitMark | None:
    """The newest commit in ``marks`` that the other copy also holds (``other_has(end,
    chain)``). Holding a commit implies holding every earlier one, so binary search."""
    lo, hi, best = 0, len(marks) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if other_has(marks[mid].end, marks[mid].chain):
            best, lo = marks[mid], mid + 1
        else:
            hi = mid - 1
    return best


def describe(m: dict[str, object] | None) -> str:
    if m is None:
        return "none"
    return f"commit {m['commits']} (seq {m['seq']}, root {str(m['root'])[:16]})"
