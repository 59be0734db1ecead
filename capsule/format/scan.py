"""Finding the last commit, replaying what follows the index, torn-tail rules
(spec sections 6, 8 and 9). Works on any object with ``pread(offset, n)``.

Theory of operation (fast open, 6.3): the last 48 bytes of a cleanly committed
file are the COMMIT frame's tail locator and chain value, so a reader goes
tail -> COMMIT -> INDEX -> replays only the frames between the INDEX and the
COMMIT, checking every chain link and that the recomputed Merkle root equals
the one the COMMIT names. If the tail is not a COMMIT that checks by itself, a
backward search finds the newest one that does.

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
from .frames import (
    FileHeader,
    FrameHeader,
    Merkle,
    check_frame_body,
    parse_frame_header,
    parse_header,
    raw_payload,
)
from .index import Segment, SegmentRef
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
        want = min(max(n, self.CHUNK), self.end - off)
        self._buf = self.src.pread(off, want)
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
    return fh, payload, chain, leaf


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
    magic, off = struct.unpack("<8sQ", tail)
    if magic != C.TAIL_MAGIC or not C.HEADER_SIZE <= off < size:
        return None
    return int(off)


#: 8.2: the checks a frame can fail when a power loss left its bytes missing or
#: garbage. A header that passes its CRC but fails any other check is the
#: writer's own header saying something impossible: damage.
TEAR_CHECKS = frozenset({"frame-header-crc", "frame-truncated", "chain"})


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
    Such a COMMIT is found by following frame lengths from ``stop`` through
    headers that pass their CRC, or through a tail locator at or after
    ``stop`` that points at a COMMIT header ending where the locator's chain
    value ends; either way its payload must parse (6.1), read without its
    chain link.
    """
    if check is not None and check not in TEAR_CHECKS:
        return True
    if src.pread(stop, len(C.MAGIC)) == C.MAGIC:
        return True  # another capsule's header: files were joined, not torn
    want = (last[0], last[1] + 1) if last is not None else (None, 1)
    pos = stop
    while pos + C.FRAME_OVERHEAD <= size:
        try:
            fh = parse_frame_header(src.pread(pos, C.FRAME_HEADER_SIZE), pos, expect_seq=seq,
                                    max_frame_len=max_frame)
        except CorruptError as e:
            if e.check not in TEAR_CHECKS:
                return True
            break
        if fh.end > size:
            break
        if fh.ftype == C.FT_COMMIT and _later_commit(_commit_payload(src, fh), want, stop):
            return True
        pos, seq = fh.end, fh.seq + 1
    step = 1 << 20
    pos = stop
    while pos < size:
        chunk = src.pread(pos, min(step + C.TAIL_SIZE, size - pos))
        i = chunk.find(C.TAIL_MAGIC)
        while i != -1:
            loc = pos + i
            if loc + C.TAIL_SIZE <= size:
                (off,) = struct.unpack("<Q", src.pread(loc + 8, 8))
                if stop <= off < loc and _later_commit(_commit_mark(src, off, loc, max_frame), want, stop):
                    return True
            i = chunk.find(C.TAIL_MAGIC, i + 1)
        pos += step
    return False


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


def _commit_mark(src: Source, off: int, loc: int, max_frame: int) -> CommitInfo | None:
    """The COMMIT a tail locator at ``loc`` names, read without its chain link (8.2 c)."""
    try:
        fh = parse_frame_header(src.pread(off, C.FRAME_HEADER_SIZE), off, expect_seq=None, max_frame_len=max_frame)
    except CorruptError:
        return None
    if fh.ftype != C.FT_COMMIT or fh.end != loc + C.TAIL_SIZE:
        return None
    return _commit_payload(src, fh)


def scan(src: Source, header: FileHeader, size: int) -> tuple[CommitInfo | None, CorruptError | None, int]:
    """Structural scan from the start: (last valid commit, first error, where it stopped)."""
    rd = Reader(src, C.HEADER_SIZE, size, 0, header.chain_seed, header.max_frame_len)
    last: CommitInfo | None = None
    try:
        for fh, payload, _leaf in rd.frames():
            if fh.ftype == C.FT_COMMIT:
                last = parse_commit_payload(payload, fh.offset, fh.seq, fh.end, rd.chain)
    except CorruptError as e:
        return last, e.with_traceback(None), rd.pos
    return last, None, rd.pos


def load(src: Source, size: int, *, strict: bool = True) -> Snapshot:
    """Open the committed prefix of a file of ``size`` bytes (6.3, 8.1-8.2)."""
    header = parse_header(src.pread(0, C.HEADER_SIZE))
    cand: CommitInfo | None = None
    off = tail_commit_offset(src, size)
    if off is not None:
        try:
            cand = read_commit_at(src, off, header)
        except CorruptError:
            cand = None
        if cand is not None and cand.end != size:
            cand = None
    if cand is None:
        cand = _last_commit_before(src, header, size)
    tear: Stop | None = None
    if cand is None:
        # No COMMIT checks by itself (an interrupted create): walk from the start.
        commit, _, _ = scan(src, header, size)
        snap = replay(src, header, commit, strict=strict)
        if snap.end < size:
            tear = walk(src, header, snap.end, size, snap.next_seq, snap.chain)
    else:
        snap, tear = settle(src, header, cand, strict=strict)
        if tear is None and snap.end < size:
            # Bytes after a settled commit (it was found by the backward search).
            tear = walk(src, header, snap.end, size, snap.next_seq, snap.chain)
    if snap.end < size:
        last = (snap.commit.offset, snap.commit.commits) if snap.commit else None
        if tear is not None and damage_is_not_a_crash(src, tear.offset, size, header.max_frame_len, last,
                                                      check=tear.error.check, seq=tear.seq):
            raise tear.error  # 8.2: report, never truncate
        snap.torn = (snap.end, size - snap.end)
    return snap


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
    try:
        for fh, _, _ in rd.frames():
            if until is not None and fh.ftype == C.FT_COMMIT and fh.offset != until.offset:
                other = fh
                break
    except CorruptError as e:
        return Stop(e.with_traceback(None), rd.pos, rd.seq)  # no frame cycle keeping the snapshot alive
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


def _last_commit_before(src: Source, header: FileHeader, size: int) -> CommitInfo | None:
    """Search backwards for the newest self-consistent COMMIT frame (6.2).

    A candidate is only a hint: :func:`settle` then walks real frame
    boundaries from a trusted start to it and checks its Merkle root, so a
    COMMIT-shaped byte string inside a payload can never be accepted.
    """
    step = 1 << 20
    hi = size
    while hi > C.HEADER_SIZE:
        lo = max(C.HEADER_SIZE, hi - step)
        chunk = src.pread(lo, hi - lo + C.TAIL_LOCATOR_SIZE)
        i = chunk.rfind(C.TAIL_MAGIC)
        while i != -1:
            loc = lo + i
            if loc + C.TAIL_SIZE <= size:
                (off,) = struct.unpack("<Q", src.pread(loc + 8, 8))
                if C.HEADER_SIZE <= off < loc:
                    try:
                        c = read_commit_at(src, off, header)
                    except CorruptError:
                        c = None
                    if c is not None and c.end == loc + C.TAIL_SIZE:
                        return c
            i = chunk.rfind(C.TAIL_MAGIC, 0, i)
        hi = lo
    return None


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
        segments = [segment(src, r) for r in meta.segments]
        kinds, records = dict(meta.kinds), meta.records
        ckpt, keyset = meta.checkpoint, meta.keyset
        labels = [segment(src, r) for r in meta.labels]
        blobs = meta.blobs
        pos, seq = fh.end, fh.seq + 1
    else:
        pos, seq, chain, merkle = C.HEADER_SIZE, 0, header.chain_seed, Merkle()
        ckpt, keyset, labels, blobs = None, None, [], {}
    snap = Snapshot(header, commit.end, commit, chain, merkle, seq, segments, {}, kinds, records,
                    checkpoint=ckpt, keyset=keyset, labels=labels, blobs=blobs)
    rd = Reader(src, pos, commit.end, seq, chain, header.max_frame_len)
    for fh, payload, leaf in rd.frames():
        if fh.offset == commit.offset:
            if merkle.root() != commit.root:
                raise CorruptError("Merkle root does not match the COMMIT", offset=fh.offset, seq=fh.seq,
                                   check="merkle-root")
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
    if rd.chain != commit.chain:
        raise CorruptError("chain does not reach the COMMIT", offset=commit.offset, check="chain")
    if snap.records != commit.records:
        raise CorruptError(f"COMMIT says {commit.records} records, replay found {snap.records}",
                           offset=commit.offset, seq=commit.seq, check="record-count")
    snap.chain, snap.next_seq = rd.chain, rd.seq
    return snap


def label_key(label: str) -> bytes:
    """14.9: the table key of a checkpoint label."""
    return hashlib.sha256(C.LABEL_TAG + label.encode()).digest()


def segment(src: Source, ref: SegmentRef) -> Segment:
    view = getattr(src, "view", None)
    buf = view(ref.offset, ref.count * 52) if view else src.pread(ref.offset, ref.count * 52)
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
