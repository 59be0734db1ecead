"""Check a pulled tail from the local file's last commit on (spec 19.7): O(tail).

Theory of operation. A pull onto a local copy has proved, with one 32-byte probe,
that the remote holds the local last chain value at the local size (19.7), so the
remote file is the local committed bytes followed by a tail. The local bytes are the
local file's own, already read the way a writer reads them when it opens (6.3: the
last commit settles, its INDEX gives the Merkle frontier, the tables and the counts).
What is new is the tail, and this module checks it as a full verification would
check those frames (13.3), starting from the state at the local last commit instead
of from offset 64:

- every frame's header, length, seq and chain link (3.1, 4.2), from the local chain
  value and seq on;
- every record: codec, canonical form, schema, content id (5, 7), and no id already
  stored, in the tail or in the local file (7.0; by the local tables and the records
  since the local INDEX, 9.1);
- every COMMIT: the Merkle root from the local frontier, the record count, `prev`,
  `commits` and `index` (6.1);
- every INDEX: frontier, counts, kinds, `vectors`, checkpoint and keyset pointers, and
  its record tables: each one the previous INDEX named, or a TABLE frame of the tail
  that, with the other new ones, lists exactly the entries of the tables it replaces
  plus the records since the previous INDEX (so the tables in force stay complete
  without reading the ones kept, 9.2, 13.3);
- RECOVERY (8.3) and LINEAGE (15: never after seq 0) frames.

- a blob a tail INDEX names for the first time: its parts and SHA-256 (3.4) and, for a
  search snapshot, every bound a reader checks before using it (16.2, 16.8). Whether a
  search snapshot agrees with the records it covers is not proved to a reader (16.3)
  and is not checked here: ``capsule verify`` compares them.

What needs history this walk does not hold (a CHECKPOINT or KEYSET, whose state root
and keyset chain span the file; a `revert` or `vindex` record; a journal snapshot,
the fold of every action record; label tables; a table the previous INDEX did not
name; an encrypted file) raises :class:`NeedsWhole`, and the pull checks the whole
assembled file instead (13.3). Nothing here writes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from ..core import constants as C
from ..core.errors import CorruptError, DataError
from ..format.blob import BlobRef, read_blob
from ..format.commit import (
    decode_records_payload,
    parse_commit_payload,
    parse_index_payload,
    parse_recovery,
)
from ..format.frames import Merkle, parse_frame_header, raw_payload
from ..format.index import ENTRY_SIZE, Segment, SegmentRef, merge_inputs, prefixes_of
from ..format.records import decode_record, record_id
from ..format.scan import Reader, Snapshot, Source, segment
from ..run.journal_blob import JOURNAL_BLOB
from ..search.lexsnap import BLOB_TYPE as LEX_BLOB
from ..search.lexsnap import decode
from ..search.vindex import BLOB_TYPE as VINDEX_BLOB
from ..search.vindex import VectorIndex, VectorParams
from ..verifier import check as _registers_kinds  # noqa: F401  (7: kinds registered before decoding)
from ..verifier.fast import check_frame

#: record kinds whose checks read history (7.7 `after`, 7.7.1 targets, 16.1 parameters)
_WHOLE_KINDS = frozenset({"revert", "vindex"})


class NeedsWhole(Exception):
    """The tail holds something only a check of the whole file can judge."""


class Spliced:
    """The remote file as one source: the local committed bytes, then the downloaded tail
    (``tail`` holds bytes [split, ...) at its own offset 0)."""

    def __init__(self, local: Source, split: int, tail: Source) -> None:
        self.local, self.split, self.tail = local, split, tail
        # 10: read as the local file is (its key, or its structure only)
        self.crypt = getattr(local, "crypt", None)
        self.keyless = getattr(local, "keyless", False)

    def pread(self, offset: int, n: int) -> bytes:
        if n <= 0:
            return b""
        if offset >= self.split:
            return self.tail.pread(offset - self.split, n)
        head = self.local.pread(offset, min(n, self.split - offset))
        if offset + n <= self.split or len(head) < self.split - offset:
            return head
        return head + self.tail.pread(0, offset + n - self.split)

    def readinto(self, offset: int, buf: memoryview) -> int:
        data = self.pread(offset, len(buf))
        buf[: len(data)] = data
        return len(data)


@dataclass(frozen=True, slots=True)
class TailCheck:
    """What the checked file holds at its last commit."""

    records: int
    new_records: int
    commits: int
    seq: int
    root: str


def _bad(msg: str, offset: int, seq: int | None, check: str) -> CorruptError:
    return CorruptError(msg, offset=offset, seq=seq, check=check)


class _Walk:
    """The state at the local last commit, moved frame by frame through the tail."""

    def __init__(self, src: Source, snap: Snapshot) -> None:
        c = snap.commit
        assert c is not None  # head_of refuses a file without a commit
        self.src, self.snap = src, snap
        self.merkle = Merkle(snap.merkle.size, snap.merkle.peaks)
        self.records, self.kinds = snap.records, dict(snap.kinds)
        self.commits, self.prev_commit, self.committed_end = c.commits, c.offset, snap.end
        self.index: tuple[int | None, bytes | None] = (c.index, c.index_hash)
        self.table_refs: list[SegmentRef] = [s.ref for s in snap.segments]
        self.label_refs: list[SegmentRef] = [s.ref for s in snap.labels]
        self.local_tables: dict[int, Segment] = {s.ref.offset: s for s in snap.segments}
        self.blobs = set(snap.blobs.values())
        # records since the INDEX in force: id -> (frame offset, slot)
        self.since: dict[bytes, tuple[int, int]] = {k: v for k, v in snap.mem.items() if v[0] < snap.end}
        self.tail_ids: set[bytes] = set()
        self.tables: dict[int, tuple[int, bytes]] = {}  # TABLE frames of the tail: payload offset -> (len, hash)
        self.dim = 0  # the first embedding's dimension in the tail (16.1)
        self.new_records = 0
        self.root = c.root.hex()
        self._local_dim: int | None = None

    # --- records -------------------------------------------------------------------
    def records_frame(self, fh: Any, payload: bytes) -> None:
        raw = raw_payload(fh, payload)
        fr = check_frame(raw)  # 13.3 in bulk; None: the reference checks below name any failure
        if fr is not None:
            n = len(fr)
            ids = [fr.ids[32 * i : 32 * i + 32] for i in range(n)]
            kinds = fr.kinds or ["memory"] * n
            if fr.vectors and not self.dim:
                self.dim = fr.vectors[0][1]
        else:
            ids, kinds = [], []
            for slot, (value, data) in enumerate(decode_records_payload(raw, fh.offset, fh.seq)):
                kind = value.get("kind") if isinstance(value, dict) else None
                if not isinstance(kind, str):
                    raise _bad("record without a kind", fh.offset, fh.seq, "record")
                rid = record_id(kind, data)
                try:
                    rec = decode_record(value, rid)
                except DataError as e:
                    raise _bad(f"record {slot}: {e}", fh.offset, fh.seq, "record-schema") from e
                if kind == "memory" and not self.dim and rec.embedding is not None:
                    self.dim = len(rec.embedding)
                ids.append(rid)
                kinds.append(kind)
        if _WHOLE_KINDS.intersection(kinds):
            raise NeedsWhole("a revert or vindex record")
        self._no_duplicates(ids, fh)
        for slot, (rid, kind) in enumerate(zip(ids, kinds, strict=True)):
            self.since[rid] = (fh.offset, slot)
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
        self.records += len(ids)
        self.new_records += len(ids)

    def _no_duplicates(self, ids: list[bytes], fh: Any) -> None:
        """7.0: an id is stored once, in the tail and in the local file (whose tables and
        records since its INDEX list every id it holds)."""
        def dup(rid: bytes) -> CorruptError:
            return _bad(f"record {rid.hex()} appears twice", fh.offset, None, "duplicate-record")

        for rid in ids:
            if rid in self.tail_ids or rid in self.since:
                raise dup(rid)
            self.tail_ids.add(rid)
        prefixes = prefixes_of(ids)
        for seg in self.snap.segments:
            hit = seg.contains_many(prefixes, ids)
            if hit.any():
                seg.verify()  # 9.2: a table's "stored" is believed only once it hashes right
                raise dup(ids[int(hit.nonzero()[0][0])])

    # --- INDEX ---------------------------------------------------------------------
    def index_frame(self, fh: Any, payload: bytes) -> None:
        meta = parse_index_payload(payload, fh.offset, fh.seq)
        if meta.frontier != self.merkle.peaks or meta.records != self.records or meta.kinds != self.kinds:
            raise _bad("INDEX does not match the frames before it", fh.offset, fh.seq, "index")
        if meta.vectors is not None and meta.vectors != self._vectors():
            raise _bad("INDEX vector parameters do not match the records before it", fh.offset, fh.seq, "index")
        if meta.labels != self.label_refs:
            raise NeedsWhole("label tables changed")
        for ref in meta.blobs.values():
            if ref not in self.blobs:
                self._blob(ref, fh)
        if meta.checkpoint != self.snap.checkpoint or meta.keyset != self.snap.keyset:
            raise _bad("INDEX checkpoint or keyset pointer is wrong", fh.offset, fh.seq, "index")
        self._tables(meta.segments, fh)
        self.index = (fh.offset, hashlib.sha256(payload).digest())
        self.table_refs = list(meta.segments)
        self.since = {}

    def _blob(self, ref: BlobRef, fh: Any) -> None:
        """3.4 and the bounds of 16.2 / 16.8, the checks a reader makes before it uses a snapshot.
        Whether a search snapshot agrees with the records it covers is not proved to a reader
        (16.3) and is left to ``verify``; a journal head is used as it is (18.2), so it is not."""
        if ref.type == JOURNAL_BLOB:
            raise NeedsWhole("a journal snapshot, checked against every action record")
        try:
            blob, _, check = read_blob(self.src, ref, self.snap.header.max_frame_len, fh.offset)
            check()
            if ref.type == VINDEX_BLOB:
                VectorIndex.decode(blob, where=ref.offset)
            elif ref.type == LEX_BLOB:
                decode(blob.tobytes(), ref.offset).check_all()
        except CorruptError as e:
            at = e.offset if e.offset is not None else fh.offset
            raise _bad(e.message, at, None, e.check) from None
        self.blobs.add(ref)

    def _vectors(self) -> dict[str, Any]:
        """9.2 `vectors`: what the records before this INDEX fix (16.1)."""
        sv = self.snap.vectors
        if sv is None:
            raise NeedsWhole("vector parameters before the local INDEX")
        start, params = sv
        if params:
            return params
        if self._local_dim is None:
            self._local_dim = self._dim_since(start)
        dim = self._local_dim or self.dim
        return VectorParams(dim=dim).to_value() if dim else {}

    def _dim_since(self, start: int) -> int:
        """The first embedding's dimension among the local records after the INDEX in force
        (as few as a writer leaves between two INDEX frames, 9.3), 0 if none has one."""
        snap = self.snap
        if start >= snap.end:
            return 0
        c = snap.commit
        if c is None or c.index is None:
            raise NeedsWhole("no local INDEX")
        ih = parse_frame_header(self.src.pread(c.index, C.FRAME_HEADER_SIZE), c.index, expect_seq=None,
                                max_frame_len=snap.header.max_frame_len)
        if ih.end != start:
            raise NeedsWhole("the local INDEX is not where its vector parameters say")
        chain = self.src.pread(start - C.TRAILER_SIZE, C.TRAILER_SIZE)
        rd = Reader(self.src, start, snap.end, ih.seq + 1, chain, snap.header.max_frame_len)
        for fh, payload, _ in rd.frames():
            if fh.ftype != C.FT_RECORDS:
                continue
            raw = raw_payload(fh, payload)
            fr = check_frame(raw)
            if fr is not None:
                if fr.vectors:
                    return fr.vectors[0][1]
                continue
            for value, data in decode_records_payload(raw, fh.offset, fh.seq):
                kind = value.get("kind") if isinstance(value, dict) else None
                if kind == "vindex":
                    raise NeedsWhole("a vindex record after the local INDEX")
                if kind == "memory":
                    rec = decode_record(value, record_id(kind, data))
                    if rec.embedding is not None:
                        return len(rec.embedding)
        return 0

    def _tables(self, refs: list[SegmentRef], fh: Any) -> None:
        """9.2, 13.3: the tables in force list exactly the committed records. The ones the
        previous INDEX named did; a new one must list what it replaces plus the records since."""
        old = set(self.table_refs)
        new: list[Segment] = []
        for r in refs:
            if r in old:
                continue
            if self.tables.get(r.offset) != (r.count * ENTRY_SIZE, r.sha256):
                if r.offset < self.snap.end:
                    raise NeedsWhole("a local table the INDEX in force does not name")
                raise _bad("INDEX names a table that is not there", fh.offset, fh.seq, "index")
            new.append(segment(self.src, r))
        kept = set(refs)
        dropped = []
        for r in self.table_refs:
            if r in kept:
                continue
            seg = self.local_tables.get(r.offset) or segment(self.src, r)
            seg.verify()  # 9.2: never rewrite a damaged table under a fresh hash
            dropped.append(seg)
        if not _same_entries(new, dropped, self.since):
            raise _bad("the INDEX tables do not match the committed records", fh.offset, fh.seq, "index-table")

    # --- the rest ------------------------------------------------------------------
    def commit_frame(self, fh: Any, payload: bytes, chain: bytes) -> CorruptError | None:
        c = parse_commit_payload(payload, fh.offset, fh.seq, fh.end, chain)
        if c.root != self.merkle.root():
            return _bad("Merkle root does not match the frames", fh.offset, fh.seq, "merkle-root")
        if c.records != self.records:
            return _bad(f"COMMIT says {c.records} records, the frames hold {self.records}", fh.offset, fh.seq,
                        "record-count")
        if c.prev != self.prev_commit or c.commits != self.commits + 1:
            return _bad("COMMIT back-pointer or ordinal is wrong", fh.offset, fh.seq, "commit-prev")
        if (c.index, c.index_hash) != self.index:
            return _bad("COMMIT does not name the latest INDEX", fh.offset, fh.seq, "index")
        self.commits, self.prev_commit, self.committed_end = c.commits, fh.offset, fh.end
        self.root = c.root.hex()
        return None

    def frame(self, fh: Any, payload: bytes, chain: bytes) -> None:
        t = fh.ftype
        if t == C.FT_RECORDS:
            self.records_frame(fh, payload)
        elif t == C.FT_TABLE:
            self.tables[fh.payload_offset] = (fh.payload_len, hashlib.sha256(payload).digest())
        elif t == C.FT_INDEX:
            self.index_frame(fh, payload)
        elif t == C.FT_COMMIT:
            if (e := self.commit_frame(fh, payload, chain)) is not None:
                raise e
        elif t in (C.FT_CHECKPOINT, C.FT_KEYSET):
            raise NeedsWhole("a checkpoint or keyset")
        elif t == C.FT_RECOVERY:
            rv = parse_recovery(payload, fh.offset, fh.seq)
            if rv["offset"] != fh.offset or fh.offset != self.committed_end:  # 8.3
                raise _bad("RECOVERY does not stand where the dropped bytes began", fh.offset, fh.seq, "recovery")
        elif t == C.FT_LINEAGE:
            raise _bad("LINEAGE must be the first frame", fh.offset, fh.seq, "lineage")
        elif t & C.CRITICAL and t != C.FT_BLOB:
            raise _bad("unknown critical frame", fh.offset, fh.seq, "frame-type")


def _same_entries(new: list[Segment], dropped: list[Segment], since: dict[bytes, tuple[int, int]]) -> bool:
    """The new tables, each sorted with the right prefixes (9.1), hold exactly the entries
    of the dropped tables and of the records since the previous INDEX."""
    import numpy as np

    for seg in new:
        if len(seg.ids) > 1 and not bool(np.all(seg.ids[1:] > seg.ids[:-1])):
            return False
        heads = np.frombuffer(seg.ids.tobytes(), dtype=">u8").reshape(-1, 4)[:, 0]
        if not np.array_equal(heads.astype(np.uint64), seg.prefix):
            return False
    got = merge_inputs(new, {})
    want = merge_inputs(dropped, since)
    if len(got[0]) != len(want[0]):
        return False

    def rows(cols: tuple[Any, Any, Any]) -> Any:
        ids, frames, slots = cols
        order = np.argsort(np.frombuffer(ids.tobytes(), dtype="V32"), kind="stable")
        return np.frombuffer(ids.tobytes(), dtype="V32")[order], frames[order], slots[order]

    a, b = rows(got), rows(want)
    return all(bool(np.array_equal(x, y)) for x, y in zip(a, b, strict=True))


def check_tail(src: Source, snap: Snapshot, end: int) -> TailCheck:
    """Check the frames [snap.end, end) of ``src`` as 13.3 would, from the state ``snap``
    (the local last commit); ``end`` must be the end of a COMMIT. Raises CorruptError
    (offset, seq, check) for a bad tail and :class:`NeedsWhole` when only the whole file
    can judge it."""
    if getattr(snap.header, "encrypted", False):
        raise NeedsWhole("an encrypted capsule")  # 10: sealed payloads; the verifier knows how far it can see
    w = _Walk(src, snap)
    rd = Reader(src, snap.end, end, snap.next_seq, snap.chain, snap.header.max_frame_len)
    for fh, payload, leaf in rd.frames():
        w.frame(fh, payload, rd.chain)
        w.merkle.append(leaf)
    if w.committed_end != end:
        raise _bad("the tail does not end with a COMMIT", w.committed_end, None, "chain")
    return TailCheck(w.records, w.new_records, w.commits, rd.seq - 1, w.root)
