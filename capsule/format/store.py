"""The open file and its snapshot: every read a handle makes (spec 6, 9).

A :class:`Store` owns one file handle (a lock-free reader, or the locked writer)
and the :class:`~.scan.Snapshot` fixed at the last commit it saw. Reads go through
the snapshot's index (record id -> frame offset and slot) and check each record
against its content id, so a hit needs no table hash; "absent" is said only after
every index table verified. The commit writer (:mod:`.writer`) replaces
``snap`` once a commit is durable. A store knows bytes and records, not what
they mean: state, search and actions are built on top of it.

Threads: reads may run while another thread commits. Each read takes
``self.snap`` once and works on that snapshot only (the writer replaces it
with one assignment; it may extend the previous snapshot's in-memory id map in
place, so an entry past the snapshot's end is not yet committed for it and is
ignored). The small frame cache has its own lock.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..core import constants as C
from ..core.clock import Clock, iso
from ..core.errors import CorruptError, DataError, FileReplaced, NotFound, UsageError
from ..core.lazy import lazy
from . import canonical as canon
from .checkpoint import CheckpointFrame, parse_checkpoint
from .commit import CommitInfo, decode_records_payload, record_bounds
from .file import ReadHandle
from .frames import Merkle, raw_payload
from .index import merge_inputs, prefixes_of
from .records import decode_fast, decode_record
from .records import record_id as content_id
from .scan import Reader, Snapshot, load, read_commit_at, read_frame_at

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")

Mode = Literal["r", "a"]


@dataclass(frozen=True, slots=True)
class CommitRow:
    """One line of ``capsule log``."""

    commits: int
    seq: int
    offset: int
    end: int
    records: int
    time: int
    root: str

    def to_dict(self) -> dict[str, Any]:
        return {"commit": self.commits, "seq": self.seq, "offset": self.offset, "end": self.end,
                "records": self.records, "time": iso(self.time), "root": self.root}


class Store:
    """One open capsule file: handle, snapshot, record reads (no meaning attached)."""

    def __init__(self, path: Path, handle: ReadHandle, snap: Snapshot, mode: Mode, clock: Clock) -> None:
        self.path = path
        self._where = os.path.abspath(path)  # refresh() looks here, whatever the working directory then
        self.h = handle
        self.snap = snap
        self.mode: Mode = mode
        self.clock = clock
        self.pinned = False  # a view of an older commit never moves
        self._frame_cache: OrderedDict[int, tuple[bytes, Sequence[int]]] = OrderedDict()
        self._cache_lock = threading.Lock()
        # Writers: a handle that never committed writes no INDEX on close (the one
        # thing it may write is a vector snapshot of an index it built, 16.3).
        self.committed = False
        self.pending_recovery: list[tuple[int, bytes]] = []

    # --- the handle ---------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.h.fd < 0

    def check_open(self) -> None:
        if self.h.fd < 0:
            raise UsageError("capsule is closed")

    @classmethod
    def open_reader(cls, path: Path, clock: Clock) -> Store:
        """A lock-free reader at the newest commit (a reader that races a writer's
        append retries on a steady size)."""
        h = ReadHandle(path)
        try:
            return cls(path, h, load_stable(h, strict=False), "r", clock)
        except BaseException:
            h.close()
            raise

    # --- what the snapshot says ------------------------------------------------------
    @property
    def root(self) -> str:
        """Merkle root named by the last commit (hex)."""
        c = self.snap.commit
        return (c.root if c else Merkle().root()).hex()

    def locate(self, rid: bytes, snap: Snapshot | None = None) -> tuple[int, int] | None:
        """Where the record ``rid`` is stored, or None: the in-memory map since the INDEX,
        then each table, newest first (9.1)."""
        snap = self.snap if snap is None else snap
        loc = snap.mem.get(rid)
        if loc is not None and loc[0] < snap.end:  # past the end: a commit still being published
            return loc
        # A hit needs no table hash: get() checks the record against its id (9.2).
        for seg in reversed(snap.segments):
            loc = seg.find(rid)
            if loc is not None:
                return loc
        verify_tables(snap)  # 9.2: "absent" only once no table can have left it out
        return None

    def present(self, ids: Sequence[bytes], snap: Snapshot | None = None) -> np.ndarray:
        """Which of ``ids`` are committed (a writer's dedup, 7.0), as a bool array.

        A "yes" rests on a table's word, so that table's hash is checked first (9.2):
        a forged entry cannot make a writer drop a record. A "no" rests on the tables
        as they are (9.2 says why that is safe), so a writer's open hashes none.
        """
        snap = self.snap if snap is None else snap
        mem = snap.mem
        if len(ids) <= 16:  # a small commit: a binary search per table, no NumPy call per table
            few = []
            for rid in ids:
                loc = mem.get(rid)
                hit = loc is not None and loc[0] < snap.end
                for seg in snap.segments if not hit else ():
                    if seg.find(rid) is not None:
                        seg.verify()
                        hit = True
                        break
                few.append(hit)
            return np.array(few, dtype=bool)
        out = np.array([rid in mem and mem[rid][0] < snap.end for rid in ids], dtype=bool)
        if not snap.segments or len(ids) == 0:
            return out
        prefixes = prefixes_of(ids)
        for seg in snap.segments:
            hit = seg.contains_many(prefixes, ids) & ~out
            if hit.any():
                seg.verify()
                out |= hit
        return out

    def frame_slots(self, offset: int, snap: Snapshot | None = None) -> tuple[bytes, Sequence[int]]:
        """The raw payload of a RECORDS frame and the byte offsets of its records.

        Reading one record skips to its slot instead of decoding the whole
        (~1 MB) frame: the record itself is then canonical-checked and matched
        against its id, which is what makes the read trustworthy.
        """
        snap = self.snap if snap is None else snap
        with self._cache_lock:
            hit = self._frame_cache.get(offset)
            if hit is not None:
                self._frame_cache.move_to_end(offset)
                return hit
        if not C.HEADER_SIZE <= offset < snap.end:
            raise CorruptError("record location outside the file", offset=offset, check="index-location")
        prev = snap.header.chain_seed if offset == C.HEADER_SIZE else None
        fh, payload, _, _ = read_frame_at(self.h, offset, max_frame=snap.header.max_frame_len,
                                          prev_chain=prev)
        if fh.ftype != C.FT_RECORDS or fh.end > snap.end:
            raise CorruptError("record location is not a RECORDS frame", offset=offset, check="index-location")
        raw = raw_payload(fh, payload)
        bounds = record_bounds(raw, fh.offset, fh.seq)
        with self._cache_lock:
            self._frame_cache[offset] = (raw, bounds)
            if len(self._frame_cache) > 8:
                self._frame_cache.popitem(last=False)
        return raw, bounds

    def get(self, rid: bytes) -> Any | None:
        """The record with this content id, checked against its id; None when absent."""
        self.check_open()
        snap = self.snap
        loc = self.locate(rid, snap)
        if loc is None:
            return None
        raw, bounds = self.frame_slots(loc[0], snap)
        if loc[1] + 1 >= len(bounds):
            raise CorruptError("record slot outside its frame", offset=loc[0], check="index-location")
        data = raw[bounds[loc[1]] : bounds[loc[1] + 1]]
        rec = decode_fast(data)
        if rec is not None and rec.id == rid.hex():
            return rec
        try:
            value = canon.decode(data)
        except DataError as e:
            raise CorruptError(str(e), offset=loc[0], check="canonical") from None
        kind = value.get("kind") if isinstance(value, dict) else None
        if not isinstance(kind, str) or content_id(kind, data) != rid:
            raise CorruptError(f"record {rid.hex()} does not match its content id", offset=loc[0],
                               check="content-id")
        if canon.depth(value) > C.MAX_DEPTH:
            raise CorruptError("record nested too deeply", offset=loc[0], check="canonical")
        return decode_record(value, rid)

    def resolve_prefix(self, hexprefix: str, pending: Iterable[bytes] = ()) -> bytes:
        """The one record id starting with ``hexprefix`` (4 to 64 hex digits), by a range
        lookup in the index tables (9.1): history is never scanned. ``pending`` adds ids
        not yet committed (a transaction's own). The only code that knows the table layout
        besides ``index``: it ranges over the ``prefix`` column, reads the record of each
        entry whose ``id`` matches and takes the id from the record, which must be that id.

        Raises :class:`NotFound` when no record starts so, :class:`UsageError` when more do.
        """
        p = hexprefix.lower() if isinstance(hexprefix, str) else ""
        if not 4 <= len(p) <= 64 or p.strip("0123456789abcdef"):
            raise NotFound(f"{hexprefix!r} is not a record id or id prefix (4 to 64 hex digits)")
        if len(p) == 64:
            return bytes.fromhex(p)
        snap = self.snap
        found = {rid for rid, loc in snap.mem.copy().items() if loc[0] < snap.end and rid.hex().startswith(p)}
        found.update(rid for rid in pending if rid.hex().startswith(p) and not self._committed(rid, snap))
        head = p[:16]  # 9.1: the prefix column is the id's first 8 bytes, big-endian
        lo, hi = np.uint64(int(head.ljust(16, "0"), 16)), np.uint64(int(head.ljust(16, "f"), 16))
        ranges = [(seg, int(np.searchsorted(seg.prefix, lo, "left")), int(np.searchsorted(seg.prefix, hi, "right")))
                  for seg in snap.segments]
        in_tables = sum(j - i for _, i, j in ranges)
        # "none" and "several" are said only once every table verified (9.2), as for an absent id
        if len(p) <= 16 and len(found) + in_tables > 1:  # every entry in range is a distinct match
            verify_tables(snap)
            raise UsageError(f"id prefix {hexprefix!r} is ambiguous: {len(found) + in_tables} records start "
                             f"with it; give more digits")
        for seg, i, j in ranges:
            # Only entries whose own id matches are read (9.1: each lists its id): a range of a
            # hostile table may hold every entry, and a record read costs a frame (17.4).
            for k in range(i, j):
                key = seg.key(k)
                if len(found) > 1 or not key.hex().startswith(p):
                    continue
                if self._id_at(int(seg.frames[k]), int(seg.slots[k]), snap) != key:
                    verify_tables(snap)
                    raise CorruptError(f"index table entry {key.hex()} names another record",
                                       offset=int(seg.frames[k]), check="index-location")
                found.add(key)
        if len(found) == 1:
            return found.pop()
        verify_tables(snap)
        if found:
            raise UsageError(f"id prefix {hexprefix!r} is ambiguous: {len(found)} records start with it; "
                             f"give more digits")
        raise NotFound(f"no record with id prefix {hexprefix!r}")

    def slot_record(self, offset: int, slot: int, snap: Snapshot | None = None) -> tuple[bytes, dict[str, Any], str]:
        """The bytes, canonical value and kind of the record at a table location (its frame's
        chain link, its canonical form and its kind checked; its id is the caller's to check)."""
        raw, bounds = self.frame_slots(offset, snap)
        if slot + 1 >= len(bounds):
            raise CorruptError("record slot outside its frame", offset=offset, check="index-location")
        data = raw[bounds[slot] : bounds[slot + 1]]
        try:
            value = canon.decode(data)
        except DataError as e:
            raise CorruptError(str(e), offset=offset, check="canonical") from None
        kind = value.get("kind") if isinstance(value, dict) else None
        if not isinstance(kind, str):
            raise CorruptError("record without a kind", offset=offset, check="record")
        return data, value, kind

    def _id_at(self, offset: int, slot: int, snap: Snapshot) -> bytes:
        """The content id of the record at a table location (read, not taken from a table)."""
        data, _, kind = self.slot_record(offset, slot, snap)
        return content_id(kind, data)

    def _committed(self, rid: bytes, snap: Snapshot) -> bool:
        return bool(self.present([rid], snap)[0])


    def records(self, kind: str | None = None) -> Iterator[Any]:
        """Every committed record in commit order, each checked on the way."""
        self.check_open()
        snap = self.snap
        rd = Reader(self.h, C.HEADER_SIZE, snap.end, 0, snap.header.chain_seed, snap.header.max_frame_len)
        for fh, payload, _ in rd.frames():
            if fh.ftype != C.FT_RECORDS:
                continue
            for value, data in decode_records_payload(raw_payload(fh, payload), fh.offset, fh.seq):
                k = value.get("kind") if isinstance(value, dict) else None
                if kind is not None and k != kind:
                    continue
                if not isinstance(k, str):
                    raise CorruptError("record without a kind", offset=fh.offset, seq=fh.seq, check="record")
                yield decode_record(value, content_id(k, data))

    def all_ids(self) -> np.ndarray:
        """Sorted content ids of every committed record (``S32`` array), from the tables'
        id columns and the in-memory map: no record is read (9.1, 13.1)."""
        snap = self.snap
        verify_tables(snap)  # 9.2: every id rests on what the tables leave out
        # A copy (one atomic step) of the in-memory map, without a commit still being published.
        mem = {rid: loc for rid, loc in snap.mem.copy().items() if loc[0] < snap.end}
        ids, _, _ = merge_inputs(snap.segments, mem)
        return np.sort(ids, kind="stable")

    # --- commits -------------------------------------------------------------------
    def commits(self) -> Iterator[CommitInfo]:
        """Commits newest first, by walking COMMIT back-pointers."""
        c = self.snap.commit
        while c is not None:
            yield c
            if c.prev is None:
                return
            p = read_commit_at(self.h, c.prev, self.snap.header)
            if p.commits != c.commits - 1 or p.end > c.offset:
                raise CorruptError("commit back-pointer is inconsistent", offset=c.offset, check="commit-prev")
            c = p

    def log(self, limit: int | None = None) -> list[CommitRow]:
        """Every commit, oldest first; with ``limit``, only the newest ``limit`` (read back
        from the last commit, so the cost follows ``limit``, not the file's history)."""
        self.check_open()
        if limit is not None and (type(limit) is not int or limit < 0):
            raise UsageError("limit must be a non-negative integer")
        # one commit more than shown: the records column is the difference with the one before
        # (a limit past any file's commits is no limit: islice takes at most sys.maxsize)
        rows = list(islice(self.commits(), None if limit is None or limit >= 1 << 62 else limit + 1))
        if limit is not None and len(rows) > limit:
            before = rows.pop().records
        elif rows and rows[-1].commits != 1:
            raise CorruptError("commit chain ends early", offset=rows[-1].offset, check="commit-prev")
        else:
            before = 0
        rows.reverse()
        out = []
        for c in rows:
            out.append(CommitRow(c.commits, c.seq, c.offset, c.end, c.records - before, c.time, c.root.hex()))
            before = c.records
        return out

    def read_checkpoint(self, offset: int) -> CheckpointFrame:
        fh, payload, _, _ = read_frame_at(self.h, offset, max_frame=self.snap.header.max_frame_len)
        if fh.ftype != C.FT_CHECKPOINT:
            raise CorruptError("checkpoint pointer does not name a CHECKPOINT frame", offset=offset,
                               check="checkpoint")
        ck = parse_checkpoint(payload, offset, fh.seq)
        if ck.runtime is not None and self.h.crypt is not None:  # 10.2: the runtime blob is sealed
            ck = dataclasses.replace(ck, runtime=self.h.crypt.open_runtime(ck.runtime, offset))
        return ck

    def refresh(self) -> bool:
        """Readers: move the snapshot to the newest commit. True if it moved.

        Raises :class:`FileReplaced` (a UsageError) when the path now names another file (an in-place compaction or
        rekey, a pull, replaced it): this handle keeps reading the file it opened, which no
        writer appends to any more, so moving on means opening the path again."""
        self.check_open()
        if self.mode == "a" or self.pinned:
            return False
        fd = getattr(self.h, "fd", -1)
        try:  # the path as it was when opened: the working directory may have changed since
            now, mine = (os.stat(self._where), os.fstat(fd)) if fd >= 0 else (None, None)
        except OSError:
            now = mine = None  # the path is gone (or unreadable): nothing newer to move to
        if now is not None and mine is not None and (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
            raise FileReplaced(f"{self.path}: was replaced since this reader opened it (an in-place compaction, "
                               "rekey or pull): open it again to read the new file")
        size = self.h.size()
        if size == self.snap.end:
            return False
        snap = load(self.h, size, strict=False)
        if snap.end == self.snap.end:
            return False
        self.snap = snap
        with self._cache_lock:
            self._frame_cache.clear()
        return True

    def reinit_after_fork(self) -> None:
        """In a fork child: a lock another thread of the parent held stays held for ever."""
        self._cache_lock = threading.Lock()


def verify_tables(snap: Snapshot) -> None:
    """Before "absent" (or anything else resting on what a table leaves out), make sure
    no table was tampered with (9.2). Each table is hashed once per handle."""
    for seg in snap.segments:
        seg.verify()


def load_stable(h: ReadHandle, *, strict: bool = True) -> Snapshot:
    """Load; a reader that raced a writer's append retries on a steady size."""
    for _ in range(20):
        size = h.size()
        try:
            snap = load(h, size, strict=strict)
        except CorruptError:
            if h.size() != size:
                continue
            raise
        return snap
    return load(h, h.size(), strict=strict)

