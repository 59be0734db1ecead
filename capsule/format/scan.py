"""Finding the last commit, replaying what follows the index, torn-tail rules
(spec sections 6, 8 and 9). Works on any object with ``pread(offset, n)``.

Theory of operation (fast open, 6.3): the last 48 bytes of a cleanly committed
file are the COMMIT frame's tail locator and chain value, so a reader goes
tail -> COMMIT -> INDEX -> replays only the frames between the INDEX and the
COMMIT, checking every chain link and that the recomputed Merkle root equals
the one the COMMIT names. If the tail is not a valid COMMIT the file was torn
(or damaged): a structural scan from the start finds the last valid COMMIT. A
COMMIT-shaped frame *after* the first bad byte means the damage cannot come
from a crash (8.2): that is reported, never truncated.
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


def damage_is_not_a_crash(src: Source, stop: int, size: int, max_frame: int) -> bool:
    """8.2: can the bad bytes at ``stop`` be the torn tail of an interrupted append?

    A crashed writer leaves a *prefix* of what it meant to write, so every
    complete frame in a torn tail is valid and only the last one is cut short.
    The damage is therefore not a crash when (a) the frame at ``stop`` is
    complete (its header checks and it fits in the file) yet failed a check, or
    (b) a tail locator beyond ``stop`` points at a COMMIT frame that ends
    exactly where the locator's chain value ends.
    """
    if src.pread(stop, len(C.MAGIC)) == C.MAGIC:
        return True  # another capsule's header: files were joined, not torn
    header_ok = False
    try:
        fh = parse_frame_header(src.pread(stop, C.FRAME_HEADER_SIZE), stop, expect_seq=None,
                                max_frame_len=max_frame)
        if fh.end <= size:
            return True
        header_ok = True  # a valid header cut short by EOF: the shape of a tear
    except CorruptError:
        pass
    step = 1 << 20
    pos = stop
    while pos < size:
        chunk = src.pread(pos, min(step + C.TAIL_SIZE, size - pos))
        i = chunk.find(C.TAIL_MAGIC)
        while i != -1:
            loc = pos + i
            if loc + C.TAIL_SIZE <= size:
                (off,) = struct.unpack("<Q", src.pread(loc + 8, 8))
                if off == stop and not header_ok:
                    return True  # the locator vouches for a frame whose header is damaged
                if stop < off < loc:
                    try:
                        fh = parse_frame_header(src.pread(off, C.FRAME_HEADER_SIZE), off, expect_seq=None,
                                                max_frame_len=max_frame)
                        if fh.ftype == C.FT_COMMIT and fh.end == loc + C.TAIL_SIZE:
                            return True
                    except CorruptError:
                        pass
            i = chunk.find(C.TAIL_MAGIC, i + 1)
        pos += step
    return False


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
    off = tail_commit_offset(src, size)
    if off is not None:
        try:
            commit: CommitInfo | None = read_commit_at(src, off, header)
        except CorruptError:
            commit = None
        if commit is not None and commit.end == size:
            return replay(src, header, commit, strict=strict)  # clean file: the common, fast case
    commit = _last_commit_before(src, header, size)
    if commit is None:
        commit, err, stop = scan(src, header, size)
    else:
        # Walk the tail after that commit to find where the valid frames stop.
        rd = Reader(src, commit.end, size, commit.seq + 1, commit.chain, header.max_frame_len)
        err = None
        try:
            for _ in rd.frames():
                pass
        except CorruptError as e:
            err = e.with_traceback(None)  # no frame cycle keeping the snapshot alive
        stop = rd.pos
    if err is not None and damage_is_not_a_crash(src, stop, size, header.max_frame_len):
        raise err  # 8.2: report, never truncate
    snap = replay(src, header, commit, strict=strict)
    end = commit.end if commit else C.HEADER_SIZE
    if end < size:
        snap.torn = (end, size - end)
    return snap


def _last_commit_before(src: Source, header: FileHeader, size: int) -> CommitInfo | None:
    """Search backwards for the newest self-consistent COMMIT frame (6.2).

    A candidate is only a hint: :func:`replay` then walks real frame
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
