"""Finding the last commit, replaying what follows the index, torn-tail rules
(spec sections 6, 8 and 9). Works on any object with ``pread(offset, n)``.

Theory of operation (fast open, 6.3): the last 48 bytes of a cleanly committed
file are the COMMIT frame's tail locator and chain value, so a reader goes
tail -> COMMIT -> INDEX -> replays only the frames between the INDEX and the
COMMIT, checking every chain link and that the recomputed Merkle root equals
the one the COMMIT names. If the tail is not a COMMIT that checks by itself, the
newest COMMIT reached by following frame lengths from offset 64 is the candidate.
A COMMIT is trusted only at a frame boundary: a record can carry a whole COMMIT
(chain value, locator, INDEX) that checks by itself, so a locator found by
searching the bytes proves nothing. The tail COMMIT is a frame because a file
ends where a write ended (a string inside a payload ends before its frame does),
unless following lengths from offset 64 shows it inside one (:func:`locate`).

That COMMIT is only a candidate (8.1). A writer fsyncs each commit once, after
writing all of it, and a disk may persist the sectors of that write in any
order, so after a power loss a COMMIT can be whole while frames before it are
zeros or garbage. The candidate therefore counts only if it *settles*: its
replay from its INDEX checks (:func:`settle`). That covers every frame since
the previous COMMIT, because a writer fsyncs the frames before an INDEX
before it writes the INDEX (6.4). If the candidate does not settle it was
never durable: the last commit is the one before it and everything after that
one is a torn tail. Bytes before the previous commit's end were fsynced before
the candidate was written, so a failure there is damage (8.2); so is a frame
header after the last commit that passes its CRC but says something
impossible (the writer wrote it), and a COMMIT after the bad bytes that shows
they were durable. Damage is reported, never truncated.
"""

from __future__ import annotations

import hashlib
import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from ..core import constants as C
from ..core.errors import CorruptError
from .blob import BlobRef
from .commit import (
    CommitInfo,
    IndexMeta,
    decode_records_payload,
    parse_commit_payload,
    parse_index_payload,
    record_kinds,
)
from .crypto import unseal
from .frames import (
    FileHeader,
    FrameHeader,
    Merkle,
    check_frame_body,
    parse_frame_header,
    parse_header,
    raw_payload,
)
from .index import ENTRY_SIZE, Segment, SegmentRef
from .records import record_id


class Source(Protocol):
    def pread(self, offset: int, n: int) -> bytes: ...


@dataclass
class Snapshot:
    """Everything a reader knows about one committed prefix of the file."""

    header: FileHeader
    end: int  # committed length
    commit: CommitInfo | None
    chain: bytes
    merkle: Merkle
    next_seq: int
    segments: list[Segment] = field(default_factory=list)
    mem: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    records: int = 0
    frames_since_index: int = 0
    torn: tuple[int, int] | None = None  # (offset, length) of an ignored torn tail
    checkpoint: tuple[int, bytes] | None = None  # latest CHECKPOINT frame (offset, hash)
    keyset: int | None = None  # latest KEYSET frame offset
    labels: list[Segment] = field(default_factory=list)  # label tables (14.9)
    label_mem: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # labels since the INDEX
    blobs: dict[str, BlobRef] = field(default_factory=dict)  # newest blob of each type (9.2)
    #: 9.2 (1.2) `vectors` of the INDEX in force: (offset of the first frame after that INDEX,
    #: the map), so the vector parameters need no read of the records before it (16.1).
    vectors: tuple[int, dict[str, int | str]] | None = None

    @property
    def commits(self) -> int:
        return self.commit.commits if self.commit else 0


class Reader:
    """Sequential, bounded, chunked reading of frames with chain checking."""

    CHUNK = 1 << 20

    def __init__(self, src: Source, pos: int, end: int, seq: int, chain: bytes, max_frame: int) -> None:
        self.src, self.pos, self.end, self.seq, self.chain, self.max_frame = src, pos, end, seq, chain, max_frame
        self._buf = b""
        self._buf_at = pos

    def _read(self, off: int, n: int) -> bytes:
        b0 = off - self._buf_at
        if b0 >= 0 and b0 + n <= len(self._buf):
            return self._buf[b0 : b0 + n]
        have = self._buf[b0:] if 0 <= b0 < len(self._buf) else b""  # what is buffered is not read again
        at = off + len(have)
        want = min(max(n - len(have), self.CHUNK), self.end - at)
        self._buf = have + self.src.pread(at, want) if have else self.src.pread(at, want)
        self._buf_at = off
        return self._buf[:n]

    def frames(self) -> Iterator[tuple[FrameHeader, bytes, bytes]]:
        """Yield (header, stored payload, leaf hash); raise CorruptError at the first bad frame."""
        while self.pos < self.end:
            off = self.pos
            if self.end - off < C.FRAME_OVERHEAD:
                raise CorruptError("truncated frame", offset=off, seq=self.seq, check="frame-truncated")
            fh = parse_frame_header(self._read(off, C.FRAME_HEADER_SIZE), off, expect_seq=self.seq,
                                    max_frame_len=self.max_frame)
            if fh.end > self.end:
                raise CorruptError("frame runs past the end of the file", offset=off, seq=self.seq,
                                   check="frame-truncated")
            body = self._read(fh.payload_offset, fh.payload_len + C.TRAILER_SIZE)
            payload, trailer = body[: fh.payload_len], body[fh.payload_len :]
            self.chain, leaf = check_frame_body(fh, payload, trailer, self.chain)
            self.pos = fh.end
            self.seq += 1
            fh, payload = unseal(self.src, fh, payload)  # 10.2: after the chain, which covers stored bytes
            yield fh, payload, leaf


def read_frame_at(src: Source, offset: int, *, max_frame: int, seq: int | None = None,
                  prev_chain: bytes | None = None) -> tuple[FrameHeader, bytes, bytes, bytes]:
    """Read one frame in isolation and check its chain link against the 32 bytes
    before it (or ``prev_chain``). Returns (header, payload, chain, leaf)."""
    if prev_chain is None:
        prev_chain = src.pread(offset - C.TRAILER_SIZE, C.TRAILER_SIZE)
    fh = parse_frame_header(src.pread(offset, C.FRAME_HEADER_SIZE), offset, expect_seq=seq, max_frame_len=max_frame)
    size = getattr(src, "size", None)
    if size is not None and fh.end > size():
        # 11: never allocate from a length the file cannot back
        raise CorruptError("frame runs past the end of the file", offset=offset, seq=fh.seq, check="frame-truncated")
    body = src.pread(fh.payload_offset, fh.payload_len + C.TRAILER_SIZE)
    if len(body) != fh.payload_len + C.TRAILER_SIZE:
        raise CorruptError("frame runs past the end of the file", offset=offset, seq=fh.seq, check="frame-truncated")
    payload, trailer = body[: fh.payload_len], body[fh.payload_len :]
    chain, leaf = check_frame_body(fh, payload, trailer, prev_chain)
    fh, payload = unseal(src, fh, payload)  # 10.2
    return fh, payload, chain, leaf


def payload_head(src: Source, offset: int, n: int, max_frame: int) -> bytes:
    """Up to ``n`` leading payload bytes of the frame at ``offset``, unchecked (a peek for
    policy, never for results): read in place, or opened whole when the frame is sealed (10.2)."""
    if getattr(src, "crypt", None) is None:
        return src.pread(offset + C.FRAME_HEADER_SIZE, n)
    return read_frame_at(src, offset, max_frame=max_frame)[1][:n]


def read_commit_at(src: Source, offset: int, header: FileHeader, *, prev_chain: bytes | None = None) -> CommitInfo:
    if offset == C.HEADER_SIZE:
        prev_chain = header.chain_seed
    fh, payload, chain, _ = read_frame_at(src, offset, max_frame=header.max_frame_len, prev_chain=prev_chain)
    if fh.ftype != C.FT_COMMIT:
        raise CorruptError("expected a COMMIT frame", offset=offset, seq=fh.seq, check="commit")
    return parse_commit_payload(payload, offset, fh.seq, fh.end, chain)


def tail_commit_offset(src: Source, size: int) -> int | None:
    """6.2: the tail locator, if the file ends with one."""
    if size < C.HEADER_SIZE + C.FRAME_OVERHEAD + C.TAIL_LOCATOR_SIZE:
        return None
    tail = src.pread(size - C.TAIL_SIZE, C.TAIL_LOCATOR_SIZE)
    if len(tail) != C.TAIL_LOCATOR_SIZE:  # the file shrank since ``size`` (a writer cutting a torn tail)
        return None
    magic, off = struct.unpack("<8sQ", tail)
    if magic != C.TAIL_MAGIC or not C.HEADER_SIZE <= off < size:
        return None
    return int(off)


#: 8.2: the checks a frame can fail when a power loss left its bytes missing or
#: garbage. A header that passes its CRC but fails any other check is the
#: writer's own header saying something impossible: damage.
TEAR_CHECKS = frozenset({"frame-header-crc", "frame-truncated", "chain"})
_HOP_CHUNK = 1 << 16


def hop(src: Source, pos: int, end: int, seq: int | None, max_frame: int) -> Iterator[FrameHeader]:
    """Follow frame lengths from the frame boundary ``pos`` (8.1), reading only headers.

    Yields each header that passes its checks (3.1), the last one possibly
    running past ``end``, and stops quietly at one that fails its CRC. Every
    header it yields stands at a real frame boundary if ``pos`` does: a
    COMMIT-shaped byte string inside a payload is stepped over, never landed
    on. A header that passes its CRC but fails another check is raised."""
    buf, at, want = b"", pos, _HOP_CHUNK
    while pos + C.FRAME_OVERHEAD <= end:
        i = pos - at
        if i + C.FRAME_HEADER_SIZE > len(buf):  # small frames: a chunk of them; large ones: a header each
            buf, at, i = src.pread(pos, min(want, end - pos)), pos, 0
        try:
            fh = parse_frame_header(buf[i : i + C.FRAME_HEADER_SIZE], pos, expect_seq=seq, max_frame_len=max_frame)
        except CorruptError as e:
            if e.check in TEAR_CHECKS:
                return
            raise
        yield fh
        if fh.end > end:
            return
        pos, seq = fh.end, fh.seq + 1
        want = _HOP_CHUNK if fh.total_len < _HOP_CHUNK // 4 else C.FRAME_HEADER_SIZE


def damage_is_not_a_crash(src: Source, stop: int, size: int, max_frame: int,
                          last: tuple[int, int] | None = None, *, check: str | None = None,
                          seq: int | None = None) -> bool:
    """8.2: can the bad bytes at ``stop``, after the last commit, be a torn tail?

    ``last`` is (offset, ordinal) of the last commit that checks (None: no
    commit), ``check`` the check the frame at ``stop`` failed and ``seq`` the
    seq expected there. A writer fsyncs every commit before it writes the
    next, so a power loss leaves at most one commit unsettled, and the sectors
    of its one write may be missing or garbage in any order: a frame after the
    last commit whose bytes do not check is, by itself, the shape of a tear.
    It is damage when (a) a frame header there passes its CRC but fails
    another check (:data:`TEAR_CHECKS`); (b) the bytes at ``stop`` are another
    capsule's header (files were joined); or (c) a later COMMIT shows the bad
    bytes were durable: it names a predecessor other than ``last`` (so the
    commit after ``last`` was acknowledged), or its INDEX lies after ``stop``
    (the frames before an INDEX are made durable before it is written, 6.4).
    Such a COMMIT counts only where it is certainly a frame, not bytes a record
    carries: reached by following frame lengths from ``stop`` (:func:`hop`), or
    the COMMIT ending exactly at the end of the file when that walk stopped
    at a header failing its CRC before reaching it (a string inside a payload
    ends before the frame holding it, 6.4). Its payload must parse (6.1); its
    chain link is not needed.
    """
    if check is not None and check not in TEAR_CHECKS:
        return True
    if src.pread(stop, len(C.MAGIC)) == C.MAGIC:
        return True  # another capsule's header: files were joined, not torn
    want = (last[0], last[1] + 1) if last is not None else (None, 1)
    reached, over = stop, None  # where following frame lengths stopped; a frame running past the end
    try:
        for fh in hop(src, stop, size, seq, max_frame):
            if fh.end > size:
                over = fh.offset
                break
            if fh.ftype == C.FT_COMMIT and _later_commit(_commit_payload(src, fh), want, stop):
                return True
            reached = fh.end
    except CorruptError:
        return True  # (a), after the bad bytes: the writer's own header says something impossible
    off = tail_commit_offset(src, size)
    if off is None or off < (reached if over is None else over + 1):
        return False  # no tail COMMIT, or following frame lengths stepped over it
    try:
        fh = parse_frame_header(src.pread(off, C.FRAME_HEADER_SIZE), off, expect_seq=None, max_frame_len=max_frame)
    except CorruptError:
        return False
    c = _commit_payload(src, fh) if fh.ftype == C.FT_COMMIT and fh.end == size else None
    if c is None or (over is not None and not _reaches(src, parse_header(src.pread(0, C.HEADER_SIZE)), c,
                                                       c.offset, after=over + 1)):
        return False  # a frame that runs past the end holds it, and nothing vouches for it as a frame
    return _later_commit(c, want, stop)


def _later_commit(c: CommitInfo | None, want: tuple[int | None, int], stop: int) -> bool:
    """8.2 (c): a COMMIT after the bad bytes at ``stop`` that proves them durable:
    it names another predecessor than the last commit (so that commit's
    successor was acknowledged), or its INDEX lies after ``stop`` (a writer
    makes the frames before an INDEX durable before it writes the INDEX, 6.4)."""
    if c is None:
        return False
    return (c.prev, c.commits) != want or (c.index is not None and c.index > stop)


def _commit_payload(src: Source, fh: FrameHeader) -> CommitInfo | None:
    try:
        return parse_commit_payload(src.pread(fh.payload_offset, fh.payload_len), fh.offset, fh.seq, fh.end, b"")
    except CorruptError:
        return None


def load(src: Source, size: int, *, strict: bool = True) -> Snapshot:
    """Open the committed prefix of a file of ``size`` bytes (6.3, 8.1-8.2).

    The COMMIT the tail locator names, when it checks by itself and ends at
    ``size``, is a frame as far as a power loss goes (6.4: the file ends where
    a write ended), so it is trusted unless a cheap check or, before damage is
    reported on its word, following frame lengths from offset 64 shows it to
    be bytes inside a payload. Otherwise the last commit is found only among
    COMMITs reached by following frame lengths from offset 64."""
    header = parse_header(src.pread(0, C.HEADER_SIZE))
    off = tail_commit_offset(src, size)
    tail: CommitInfo | None = None
    if off is not None:
        try:
            tail = read_commit_at(src, off, header)
        except CorruptError:
            tail = None
    if tail is not None and tail.end == size:
        try:
            snap, tear = settle(src, header, tail, strict=strict)
            _judge(src, header, snap, tear, size)
            if anchored(src, header, snap.commit) or locate(src, header, tail) != "inside":
                return snap
        except CorruptError:
            if locate(src, header, tail) != "inside":
                raise  # 8.2: report, never truncate
    return _load_from_start(src, header, size, strict)


def _judge(src: Source, header: FileHeader, snap: Snapshot, tear: Stop | None, size: int) -> None:
    """8.2: raise if the bytes after the last commit are damage, else mark them a torn tail."""
    if snap.end >= size:
        return
    if tear is None:
        tear = walk(src, header, snap.end, size, snap.next_seq, snap.chain)
    last = (snap.commit.offset, snap.commit.commits) if snap.commit else None
    if tear is not None and damage_is_not_a_crash(src, tear.offset, size, header.max_frame_len, last,
                                                  check=tear.error.check, seq=tear.seq):
        raise tear.error  # 8.2: report, never truncate
    snap.torn = (snap.end, size - snap.end)


def _load_from_start(src: Source, header: FileHeader, size: int, strict: bool) -> Snapshot:
    """8.1 with no tail COMMIT to trust: the newest COMMIT that checks by itself
    among those reached by following frame lengths from offset 64 (:func:`hop`);
    COMMIT-shaped bytes inside payloads are never reached."""
    commits = array("q")
    for fh in hop(src, C.HEADER_SIZE, size, 0, header.max_frame_len):
        if fh.ftype == C.FT_COMMIT and fh.end <= size:
            commits.append(fh.offset)
    cand: CommitInfo | None = None
    for off in reversed(commits):
        try:
            cand = read_commit_at(src, off, header)
            break
        except CorruptError:
            continue
    if cand is None:  # no COMMIT checks by itself (an interrupted create)
        snap, tear = replay(src, header, None, strict=strict), None
    else:
        snap, tear = settle(src, header, cand, strict=strict)
    _judge(src, header, snap, tear, size)
    return snap


def locate(src: Source, header: FileHeader, c: CommitInfo) -> str:
    """Where ``c`` stands, by following frame lengths from offset 64: "frame";
    "inside" (a frame starting before it runs over it, and no predecessor after
    that frame's start reaches it: bytes in a payload); or "unknown" (a header
    failing its CRC stops the walk first)."""
    for fh in hop(src, C.HEADER_SIZE, c.end, 0, header.max_frame_len):
        if fh.offset == c.offset:
            return "frame"
        if fh.end > c.offset:
            # a forged length (its CRC recomputed) can cover real frames: two that check say otherwise
            return "frame" if _reaches(src, header, c, c.offset, after=fh.offset + 1) else "inside"
    return "unknown"


def anchored(src: Source, header: FileHeader, c: CommitInfo | None) -> bool:
    """Cheap evidence that ``c``, a commit that settled, is a frame and not bytes in
    a payload. :func:`replay` checked that the last COMMIT on its path is the
    predecessor ``c`` names; when c's own commit wrote its INDEX, following frame
    lengths from the predecessor's end must land on that INDEX."""
    if c is None or c.index is None or (c.prev is not None and c.index < c.prev):
        return True  # replayed from offset 64, or from an INDEX before the predecessor
    return _reaches(src, header, c, c.index)


def _reaches(src: Source, header: FileHeader, c: CommitInfo, target: int, *, after: int = C.HEADER_SIZE) -> bool:
    """Whether the COMMIT ``c`` names as predecessor (at or after ``after``) checks by
    itself, is one commit earlier, and following frame lengths from its end (from
    offset 64 for a first commit) lands exactly on ``target``."""
    start, seq = C.HEADER_SIZE, 0
    if c.prev is not None:
        if c.prev < after:
            return False
        try:
            p = read_commit_at(src, c.prev, header)
        except CorruptError:
            return False
        if p.commits != c.commits - 1 or p.end > target:
            return False
        start, seq = p.end, p.seq + 1
    elif c.commits != 1 or after > C.HEADER_SIZE:
        return False
    for fh in hop(src, start, c.end, seq, header.max_frame_len):
        if fh.offset >= target:
            return fh.offset == target
    return False


@dataclass(frozen=True)
class Stop:
    """Where a walk of frames stopped: the error, its offset, the seq expected there."""

    error: CorruptError
    offset: int
    seq: int


def walk(src: Source, header: FileHeader, pos: int, end: int, seq: int, chain: bytes, *,
         until: CommitInfo | None = None) -> Stop | None:
    """Check frames from ``pos`` to ``end`` in sequence (3.1, 4.2); None if all do.

    With ``until`` (the COMMIT ending at ``end``), any other COMMIT on the way
    is damage: the writer's own bytes say ``until`` skipped a commit."""
    rd = Reader(src, pos, end, seq, chain, header.max_frame_len)
    other: FrameHeader | None = None
    bad: CorruptError | None = None
    try:
        for fh, payload, _ in rd.frames():
            if until is not None and fh.ftype == C.FT_COMMIT and fh.offset != until.offset:
                other = fh
                break
            if fh.ftype == C.FT_COMMIT:
                # 8.2: its chain link checks, so these are the writer's bytes: a COMMIT that
                # does not parse is damage, never a tear to truncate
                try:
                    parse_commit_payload(payload, fh.offset, fh.seq, fh.end, rd.chain)
                except CorruptError as e:
                    bad = e.with_traceback(None)
                    break
    except CorruptError as e:
        return Stop(e.with_traceback(None), rd.pos, rd.seq)  # no frame cycle keeping the snapshot alive
    if bad is not None:
        raise bad
    if other is not None:
        raise CorruptError("a COMMIT lies between a commit and the one it names as prev", offset=other.offset,
                           seq=other.seq, check="commit-prev")
    return None


def settle(src: Source, header: FileHeader, c: CommitInfo, *, strict: bool = True) -> tuple[Snapshot, Stop | None]:
    """8.1: the snapshot at the last commit, given the newest COMMIT ``c`` that checks by itself.

    ``c`` counts only if it *settles*: its replay (6.3 steps 4-6) checks every
    frame from its INDEX on, which covers every frame since the previous COMMIT
    (a writer makes the frames before an INDEX durable before writing it, 6.4).
    If it does not settle, ``c`` was never durable: the snapshot is at the
    previous commit, and the second value says where the valid frames after
    it stop. Anything wrong before the previous commit's end, or in a commit
    whose every frame checks, is damage: raised (8.2).
    """
    try:
        return replay(src, header, c, strict=strict), None
    except CorruptError as e:
        failed = e.with_traceback(None)
    prev = _prev_commit(src, header, c)
    if prev is None:
        stop = walk(src, header, C.HEADER_SIZE, c.end, 0, header.chain_seed, until=c)
    else:
        stop = walk(src, header, prev.end, c.end, prev.seq + 1, prev.chain, until=c)
    if stop is None:
        raise failed  # every byte since the previous commit is as written: a failed check is damage
    return replay(src, header, prev, strict=strict), stop


def _prev_commit(src: Source, header: FileHeader, c: CommitInfo) -> CommitInfo | None:
    """The COMMIT ``c`` names as its predecessor. It was durable before ``c`` was
    written, so it must check (8.2): a failure raises."""
    if c.prev is None:
        if c.commits != 1:
            raise CorruptError("COMMIT names no predecessor but is not the first", offset=c.offset, seq=c.seq,
                               check="commit-prev")
        return None
    p = read_commit_at(src, c.prev, header)
    if p.commits != c.commits - 1 or p.end > c.offset:
        raise CorruptError("commit back-pointer is inconsistent", offset=c.offset, seq=c.seq, check="commit-prev")
    return p


def replay(src: Source, header: FileHeader, commit: CommitInfo | None, *, strict: bool = True) -> Snapshot:
    """Rebuild reader state at ``commit`` from its INDEX and the frames after it (6.3, 9.2)."""
    if commit is None:
        return Snapshot(header, C.HEADER_SIZE, None, header.chain_seed, Merkle(), 0)
    segments: list[Segment] = []
    kinds: dict[str, int] = {}
    records = 0
    if commit.index is not None:
        prev = header.chain_seed if commit.index == C.HEADER_SIZE else None
        fh, payload, chain, leaf = read_frame_at(src, commit.index, max_frame=header.max_frame_len, prev_chain=prev)
        if fh.ftype != C.FT_INDEX or hashlib.sha256(payload).digest() != commit.index_hash:
            raise CorruptError("COMMIT points at a frame that is not its INDEX", offset=commit.index,
                               seq=fh.seq, check="index")
        meta: IndexMeta = parse_index_payload(payload, fh.offset, fh.seq)
        merkle = Merkle(meta.tree_size, meta.frontier)
        merkle.append(leaf)
        vectors = None if meta.vectors is None else (fh.end, meta.vectors)
        segments = [segment(src, r) for r in meta.segments]
        kinds, records = dict(meta.kinds), meta.records
        ckpt, keyset = meta.checkpoint, meta.keyset
        labels = [segment(src, r) for r in meta.labels]
        blobs = meta.blobs
        pos, seq = fh.end, fh.seq + 1
    else:
        pos, seq, chain, merkle = C.HEADER_SIZE, 0, header.chain_seed, Merkle()
        ckpt, keyset, labels, blobs = None, None, [], {}
        vectors = None
    snap = Snapshot(header, commit.end, commit, chain, merkle, seq, segments, {}, kinds, records,
                    checkpoint=ckpt, keyset=keyset, labels=labels, blobs=blobs, vectors=vectors)
    rd = Reader(src, pos, commit.end, seq, chain, header.max_frame_len)
    start, before = pos, None  # the last COMMIT on the path before ``commit``
    crypt = getattr(src, "crypt", None)
    chain_before = chain  # the chain value before the frame in hand
    for fh, payload, leaf in rd.frames():
        if fh.ftype == C.FT_COMMIT and fh.offset != commit.offset:
            before = fh.offset
        if fh.offset == commit.offset:
            if merkle.root() != commit.root:
                raise CorruptError("Merkle root does not match the COMMIT", offset=fh.offset, seq=fh.seq,
                                   check="merkle-root")
            if crypt is not None:
                crypt.check_commit(commit, chain_before)  # 10.7: a key holder wrote all history before it
        elif fh.ftype == C.FT_RECORDS:
            add_records(snap, fh, payload, strict)
        elif fh.ftype == C.FT_CHECKPOINT:
            from .checkpoint import parse_checkpoint

            ck = parse_checkpoint(payload, fh.offset, fh.seq)
            snap.checkpoint = (fh.offset, ck.hash)
            snap.label_mem[label_key(ck.body.label)] = (fh.offset, 0)
        elif fh.ftype == C.FT_KEYSET:
            snap.keyset = fh.offset
        merkle.append(leaf)
        snap.frames_since_index += 1
        chain_before = rd.chain
    if rd.chain != commit.chain:
        raise CorruptError("chain does not reach the COMMIT", offset=commit.offset, check="chain")
    if before != (commit.prev if commit.prev is not None and commit.prev >= start else None):
        # 6.1, 8.1: the predecessor a COMMIT names is the last COMMIT on its path (if the path reaches it)
        raise CorruptError("the COMMIT before this one is not the one it names", offset=commit.offset,
                           seq=commit.seq, check="commit-prev")
    if snap.records != commit.records:
        raise CorruptError(f"COMMIT says {commit.records} records, replay found {snap.records}",
                           offset=commit.offset, seq=commit.seq, check="record-count")
    snap.chain, snap.next_seq = rd.chain, rd.seq
    return snap


def label_key(label: str) -> bytes:
    """14.9: the table key of a checkpoint label."""
    return hashlib.sha256(C.LABEL_TAG + label.encode()).digest()


def segment(src: Source, ref: SegmentRef) -> Segment:
    """A table in place (mapped when the source can), not hashed until it is relied on (9.2)."""
    size = ref.count * ENTRY_SIZE
    if getattr(src, "crypt", None) is not None:
        # 10.2: a sealed table is opened whole (its frame starts one header before its payload)
        # No chain hash here (a plain table is not hashed either until relied on, 9.2): the
        # AEAD tag authenticates these bytes as a key holder wrote them, at this place (10.2).
        at = ref.offset - C.FRAME_HEADER_SIZE
        fh = parse_frame_header(src.pread(at, C.FRAME_HEADER_SIZE), at, expect_seq=None,
                                max_frame_len=C.MAX_FRAME_LEN_CEILING)
        size_of = getattr(src, "size", None)
        if fh.ftype != C.FT_TABLE or (size_of is not None and fh.end > size_of()):
            raise CorruptError("INDEX names a table that is not there", offset=at, check="index")
        fh, plain = unseal(src, fh, src.pread(fh.payload_offset, fh.payload_len))
        if len(plain) != size:
            raise CorruptError("INDEX names a table that is not there", offset=at, check="index")
        return Segment(ref, plain)
    view = getattr(src, "view", None)
    buf = view(ref.offset, size) if view else src.pread(ref.offset, size)
    return Segment(ref, buf)


def add_records(snap: Snapshot, fh: FrameHeader, payload: bytes, strict: bool = True) -> None:
    """Index a RECORDS frame's ids. ``strict`` (writers) checks the canonical
    profile too, so a writer never appends after damaged records; readers skip
    that here because every read of a record's content checks it anyway."""
    raw = raw_payload(fh, payload)
    if strict:
        pairs = []
        for value, data in decode_records_payload(raw, fh.offset, fh.seq):
            kind = value.get("kind") if isinstance(value, dict) else None
            if not isinstance(kind, str):
                raise CorruptError("record without a kind", offset=fh.offset, seq=fh.seq, check="record")
            pairs.append((kind, data))
    else:
        pairs = record_kinds(raw, fh.offset, fh.seq)
    for slot, (kind, data) in enumerate(pairs):
        rid = record_id(kind, data)
        snap.mem[rid] = (fh.offset, slot)
        snap.kinds[kind] = snap.kinds.get(kind, 0) + 1
        snap.records += 1
