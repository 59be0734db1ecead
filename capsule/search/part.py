"""The search side of a capsule handle: its Searcher and when to snapshot (spec 16.1, 16.3, 16.8).

The handle delegates every search call here. This part decides when the vector
index and the lexical catalog are written back as BLOB snapshots (after a
commit past a threshold, on close, on demand) and fixes the vector index
parameters with the first embedding. It writes only through the
``write_blob`` callback the handle gives it, so a snapshot is one more commit
of the handle's own writer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core import constants as C
from ..core.errors import CapsuleError, InvalidRecordError, UsageError
from ..format.batch import RecordBatch
from ..format.frames import parse_frame_header, raw_payload
from ..format.index import plan_merge
from ..format.records import _REGISTRY, encode_record
from ..format.scan import read_frame_at
from ..format.store import Store
from ..format.writer import Item
from . import lexsnap
from .catalog import LEXICAL_KINDS, peek_covered
from .engine import Hit, Searcher
from .engine import search as run_search
from .fusion import Results
from .vindex import BLOB_TYPE, VectorIndex, VectorParams

#: writer policy (16.3): snapshot on close when this many vectors are not in the newest one
#: (or, past 1,024, a quarter of its count, up to CLOSE_BUILD_MAX / 2: each snapshot is a whole copy,
#: so sessions of a few hundred vectors each would grow the file with the square of its vectors),
SNAPSHOT_ON_CLOSE = 256
#: and after a commit once the unsnapshotted vectors reach max(this, the snapshot's size).
SNAPSHOT_EVERY = 16_384
#: Close builds an index nobody loaded this session only when this few vectors need inserting.
CLOSE_BUILD_MAX = 16_384
#: A session that committed vectors counts those not in the newest snapshot on close (other
#: sessions' too) when the frames after the snapshot are at most this many bytes.
CLOSE_COUNT_BYTES = 32 << 20  # about 40 ms of reading, at most, on a close
#: 16.8 writer policy: a lexical snapshot on close when this many searchable records are
#: not in the newest one (the session committed or searched),
LEX_SNAPSHOT_ON_CLOSE = 256
#: and after a commit once this many are not, while the catalog is loaded; so a reader
#: catches up at most about this many records (tens of ms) before its first query.
LEX_SNAPSHOT_EVERY = 4096
#: and after a commit once this many that other sessions committed are not, even with the catalog
#: not loaded: a writer that is killed writes no segment on close, so sessions that never close
#: cleanly would otherwise leave every new process more and more to tokenize.
LEX_CATCH_UP_MAX = 2 * LEX_SNAPSHOT_EVERY
#: A handle keeps what it commits for the catalog (16.8) until it writes a snapshot; it writes
#: one after a commit once this many records wait (so that memory stays bounded).
LEX_FED_MAX = 1 << 18


class SearchPart:
    def __init__(self, store: Store, write_blob: Callable[[tuple[str, Any]], Any]) -> None:
        self.store = store
        self._write_blob = write_blob
        self._s: Searcher | None = None
        self._peeked: tuple[int | None, int] | None = None  # (the newest lexical blob's offset, what it covers)
        self.defaults: VectorParams | None = None  # configure_vectors() before the first embedding

    @property
    def loaded(self) -> Searcher | None:
        """The searcher if this handle made one (nothing is built to answer this)."""
        return self._s

    def searcher(self) -> Searcher:
        self.store.check_open()
        if self._s is None:
            self._s = Searcher(self.store)
        return self._s

    def search(self, query: str | None, **kw: Any) -> Results[Hit]:
        return run_search(self.searcher(), query, **kw)

    def config(self) -> VectorParams | None:
        return self.searcher().config()

    def check_configure(self, want: VectorParams, dim: int | None) -> VectorParams | None:
        """The parameters already fixed (if they agree with ``want``), else None."""
        have = self.config()
        if have is None:
            return None
        same = want if dim is not None else VectorParams(want.space, have.dim, want.M, want.ef_construction,
                                                         want.seed, want.embedder)
        if have != same:
            raise UsageError(f"this capsule's vector index is already fixed: {have.space}, dim {have.dim}, "
                             f"M {have.M}, ef_construction {have.ef_construction}, seed {have.seed}")
        return have

    def params_for(self, dim: int, pending: VectorParams | None, want: VectorParams | None,
                   clock: Callable[[], int]) -> tuple[VectorParams | None, Item | None]:
        """16.1: the first embedding fixes the index; later ones must match it.

        For a commit adding an embedding of ``dim``: the parameters this commit
        fixes (None when they were fixed before) and the ``vindex`` record to write
        with it when one is needed."""
        have = pending or self.config()
        if have is not None:
            if have.dim != dim:
                raise InvalidRecordError(f"embedding has dimension {dim}, but this capsule's vectors have "
                                         f"{have.dim} (fixed by its first embedding)")
            return None, None
        base = want or self.defaults
        if base is None:
            # 16.1: no vindex record needed; the defaults and this dimension govern.
            return VectorParams(dim=dim), None
        have = VectorParams(base.space, dim, base.M, base.ef_construction, base.seed, base.embedder)
        # the clock is read only for the record that needs a time (7: every reading of an
        # injected clock is part of the file's bytes)
        cfg = _REGISTRY["vindex"].build(time=clock(), dim=dim, space=have.space, M=have.M,
                                      ef_construction=have.ef_construction, seed=have.seed, embedder=have.embedder)
        rid, data = encode_record(cfg)
        return have, (rid, "vindex", data)

    def committed(self, vectors: int, params: VectorParams | None,
                  fed: tuple[RecordBatch, int, int] | None = None) -> BaseException | None:
        """After a commit that added ``vectors`` embeddings: snapshot at the threshold (16.3).
        ``fed``: the records it wrote and where (16.8: the lexical catalog takes them from
        there, not from the file).

        Returns the error of a failed snapshot: the commit before it is durable,
        only the optional snapshot failed (an I/O error also poisons the writer,
        so the next commit says so)."""
        s = self.searcher() if vectors or fed else self._s
        if s is None:
            return None
        if params is not None and s.params is None:
            s.params = params
        if fed is not None and not vectors and s.params is None and s._cfg_pos == fed[1] \
                and "vindex" not in fed[0].kinds:
            s._cfg_pos = fed[2]  # 16.1: a commit of no embedding and no vindex record fixes nothing
        s.pending_vectors += vectors
        try:
            if fed is not None:
                s.lex.feed(*fed)
            if s.vi is not None and s.pending_vectors >= max(SNAPSHOT_EVERY, s.snapshot_count):
                s.vectors()
                self.write_snapshot()
            if (s.lex.cat is not None and self.lexical_pending() >= LEX_SNAPSHOT_EVERY) \
                    or s.lex.fed_records() >= LEX_FED_MAX \
                    or (fed is not None and self.lexical_pending() - s.lex.fed_records() >= LEX_CATCH_UP_MAX):
                # the last: writers that never close cleanly (killed) leave no segment on close,
                # so without it every new process would tokenize more and more (16.8); what this
                # session committed itself waits for its close (a bulk ingest writes one segment)
                self.write_lexical()
        except (CapsuleError, OSError) as e:
            return e.with_traceback(None)
        return None

    def on_close(self) -> None:
        """16.3, 16.8: snapshots of the vector index and the lexical catalog, so the next
        open need not insert or tokenize much."""
        s = self._s
        if (self.store.committed or (s is not None and s.lex.cat is not None)) \
                and self.lexical_pending() >= lexical_close_due(self._covered()):
            self.write_lexical()
        if s is None:
            return
        if s.vi is None and s.pending_vectors > 0:
            # Not loaded this session: bring it up only if that is cheap; a larger catch-up is
            # left to the first search or build_index(). What is pending counts every session's
            # vectors since the snapshot (sessions of 100 each never reached 256 on their own).
            base = (s._blob_params() or (None, 0))[1]
            due = snapshot_due(base)
            cheap = s.pending_vectors >= due and self.store.snap.kinds.get("memory", 0) - base <= CLOSE_BUILD_MAX
            if cheap or due <= (vectors_after_snapshot(self.store) or 0) <= CLOSE_BUILD_MAX:
                s.vectors()
        if s.vi is not None:
            s.vectors()
            if len(s.vi) - s.snapshot_count >= snapshot_due(s.snapshot_count):
                self.write_snapshot(reload=False)

    def build(self) -> int:
        vi = self.searcher().vectors()
        return 0 if vi is None else len(vi)

    def info(self) -> dict[str, Any]:
        s = self.searcher()
        p = s.config()
        ref = self.store.snap.blobs.get(BLOB_TYPE)
        lref = self.store.snap.blobs.get(lexsnap.BLOB_TYPE)
        d = s.lex.cat
        return {"vectors": None if p is None else {**p.to_value(), "embedder": p.embedder},
                "lexical": {"indexed": None if d is None else d.n,
                            "snapshot": None if lref is None else {
                                "offset": lref.offset, "bytes": lref.size, "parts": lref.parts,
                                "sha256": lref.id.hex(), "documents": peek_covered(self.store) or None}},
                "indexed": None if s.vi is None else len(s.vi),
                "snapshot": None if ref is None else {"offset": ref.offset, "bytes": ref.size, "parts": ref.parts,
                                                      "sha256": ref.id.hex(),
                                                      "vectors": s.snapshot_count if s.vi is not None
                                                      else (s._blob_params() or (None, None))[1]},
                "doubt": s.doubt, "notice": s.notice}

    def save(self, full: bool = False) -> bool:
        """Snapshots of what the newest ones lack (16.3; 16.8 from LEX_SNAPSHOT_ON_CLOSE
        records on, or any with ``full``: fewer are caught up in no time); True if one was written."""
        s = self.searcher()
        wrote = self.write_lexical() if self.lexical_pending() >= (1 if full else LEX_SNAPSHOT_ON_CLOSE) else False
        vi = s.vectors()
        if vi is not None and (len(vi) != s.snapshot_count or BLOB_TYPE not in self.store.snap.blobs):
            self.write_snapshot()
            wrote = True
        return wrote

    def _covered(self) -> int:
        d = self._s.lex.cat if self._s is not None else None
        if d is not None:
            return d.covered
        ref = self.store.snap.blobs.get(lexsnap.BLOB_TYPE)
        at = None if ref is None else ref.offset
        if self._peeked is None or self._peeked[0] != at:  # one header read per new snapshot, not per commit
            self._peeked = (at, peek_covered(self.store))
        return self._peeked[1]

    def lexical_pending(self) -> int:
        """Searchable records not in the newest lexical snapshot (no scan: counts and one header)."""
        return sum(self.store.snap.kinds.get(k, 0) for k in LEXICAL_KINDS) - self._covered()

    def write_lexical(self) -> bool:
        """16.8: append the records since the newest snapshot as a new segment blob.

        The new segment absorbs each newest older snapshot segment no more than
        twice its size (9.3's binary counter) and names the rest as its base, so a
        snapshot rewrites O(log n) segments, never the whole catalog. Segments taken
        from the file are checked whole before they are merged (16.8)."""
        s = self.searcher()
        d = s.docs()
        if d.n == d.covered:
            return False
        kept = [x for x in d.segs if x.ref is not None]
        new = lexsnap.merge([x for x in d.segs if x.ref is None])
        k = plan_merge([x.n for x in kept], new.n)
        k = max(k, len(kept) - lexsnap.MAX_BASE)
        for x in kept[len(kept) - k :]:
            x.check_all()
        head = lexsnap.merge([*kept[len(kept) - k :], new])
        base = kept[: len(kept) - k]
        blob = lexsnap.encode_parts(head, [x.ref for x in base if x.ref is not None], d.reverts)
        self._write_blob((lexsnap.BLOB_TYPE, blob))
        ref = self.store.snap.blobs[lexsnap.BLOB_TYPE]
        head.ref, head.checked = ref, True
        d.segs = [*base, head]
        d.snapshot, d.covered, d.pos = ref, d.n, self.store.snap.end
        return True

    def write_snapshot(self, *, reload: bool = True) -> None:
        s = self._s
        assert s is not None and s.vi is not None
        parts = s.vi.encode_parts()  # written as pieces, never joined to be copied into BLOB parts (F22)
        self._write_blob((BLOB_TYPE, parts))
        if not reload:  # closing: nothing will search this handle again
            s.snapshot_count = len(s.vi)
            return
        # Continue from the blob as a reader would load it: the graph's level
        # generator restarts there too, so writer and readers stay identical (7).
        blob = b"".join(parts)
        del parts
        s.vi = VectorIndex.decode(blob)
        s.snapshot_count, s.pending_vectors = len(s.vi), 0
        s._vpos = self.store.snap.end


def lexical_close_due(covered: int) -> int:
    """16.8 writer policy: pending searchable records that make a close write a lexical segment.
    Past 1,024 covered, a quarter of them, up to LEX_SNAPSHOT_EVERY: every segment is a new blob
    and an INDEX naming it (its tables merged as 9.3 says), so sessions of a few hundred records
    each would otherwise add a snapshot and a table every other close; a reader then tokenizes
    at most LEX_SNAPSHOT_EVERY records (tens of ms) before its first query."""
    return max(LEX_SNAPSHOT_ON_CLOSE, min(covered // 4, LEX_SNAPSHOT_EVERY))


def snapshot_due(count: int) -> int:
    """16.3's close policy: vectors not in a snapshot of ``count`` that make a new one due. At
    most half of CLOSE_BUILD_MAX, so that sessions of up to that many vectors each cannot step
    over the window [due, CLOSE_BUILD_MAX] in which a close may still load the index."""
    return max(SNAPSHOT_ON_CLOSE, min(count // 4, CLOSE_BUILD_MAX // 2))


def vectors_after_snapshot(store: Store) -> int | None:
    """About how many memories with an embedding the frames after the newest vector snapshot
    hold (every one before it when there is none), or None when those frames pass
    CLOSE_COUNT_BYTES. A count of the field's key in each RECORDS payload: a hint for the close
    policy, never for what is indexed (a text holding those bytes counts too)."""
    snap = store.snap
    ref = snap.blobs.get(BLOB_TYPE)
    pos = C.HEADER_SIZE if ref is None else ref.offset  # its BLOB frames are hopped over, not read
    n, seq, read = 0, None, 0
    try:
        while pos < snap.end:
            fh = parse_frame_header(store.h.pread(pos, C.FRAME_HEADER_SIZE), pos, expect_seq=seq,
                                    max_frame_len=snap.header.max_frame_len)
            if fh.ftype == C.FT_RECORDS:
                read += fh.end - pos
                if read > CLOSE_COUNT_BYTES:
                    return None
                prev = snap.header.chain_seed if pos == C.HEADER_SIZE else None
                fh, payload, _, _ = read_frame_at(store.h, pos, max_frame=snap.header.max_frame_len, seq=fh.seq,
                                                  prev_chain=prev)
                n += raw_payload(fh, payload).count(b"\xa9embedding")
            pos, seq = fh.end, fh.seq + 1
    except CapsuleError:  # damage is verify's to report: a hint has no answer then
        return None
    return n


__all__ = ["SearchPart", "SNAPSHOT_EVERY", "SNAPSHOT_ON_CLOSE", "CLOSE_BUILD_MAX"]
