"""The lexical catalog of one searcher: snapshot segments, then what came after (spec 16.4, 16.8).

A :class:`Catalog` is the list of :class:`~.lexsnap.Segment` a searcher
scores: first the segments of the newest ``bm25`` snapshot blob (its base
blobs, then itself), loaded by :func:`load`, then segments built here from the
records committed after it. Those are merged like the snapshot's own (the
newest absorbs each newest older one no more than twice its size), so catching
up after every commit stays O(log n) segments. The catalog also folds the
``revert`` events (13.1), from the records themselves: the snapshot names the
revert records before it (read through the index, each checked against its
id, and counted against the capsule's), the catch-up reads those after it. So
a snapshot cannot bring back a record a rollback dropped.

Columns, tags and ids are read per candidate (positions ascending), never for
the whole catalog, and a hit's record is read from the capsule when it is used.

A writer does not read back what it has just written: the handle hands each
commit's record batch to :meth:`LexicalIndex.feed`, which keeps it, named by
the file range of its commit, until the catalog is needed (or the batches kept
reach FEED_BYTES); catching up then decodes from their bytes only the fields
the catalog needs (msgspec, in C), tokenizes all their texts at once
(``lexical.term_ids``) and reads from the file only the records between those
ranges. A commit so costs nothing here, and a bulk ingest one tokenizer pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.errors import CorruptError
from ..core.lazy import lazy
from ..format import canonical as canon
from ..format.batch import RecordBatch
from ..format.blob import BlobRef, read_blob
from ..format.commit import array_header
from ..format.records import decode_record
from ..format.store import Store
from ..state.liveness import apply_revert
from .lexical import TOKENIZER_ID, bm25
from .lexsnap import BLOB_TYPE, Doc, Segment, build, build_columns, decode, merge, peek
from .vindex import TIERS

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")

LEXICAL_KINDS = ("memory", "note", "decision")
_SCAN_KINDS = frozenset({*LEXICAL_KINDS, "revert"})
_BATCH = 16_384
FEED_BYTES = 1 << 25  # records this handle wrote make segments of at most this many bytes of records
FEED_CHUNK = 1 << 20  # and of at most this many records,
_DECODE = 1 << 16  # decoded this many at a time
KIND_CODES = {k: i for i, k in enumerate(LEXICAL_KINDS)}  # 16.8 `kind` column


def doc_of(rid: bytes, rec: Any) -> Doc:
    """16.4: what the catalog keeps of a memory, note or decision."""
    text = rec.summary + "\n" + rec.rationale if rec.kind == "decision" else rec.text
    return (rid, text, rec.time, getattr(rec, "ttl", None) or 0, TIERS[getattr(rec, "tier", "working")],
            KIND_CODES[rec.kind], tuple(getattr(rec, "tags", ())))


_FIELDS: Any = None


def _fields() -> Any:
    """A msgspec decoder of the fields of 7.1, 7.2 and 7.6 the catalog reads (others skipped)."""
    global _FIELDS
    if _FIELDS is None:
        import msgspec

        class Fields(msgspec.Struct, gc=False):
            kind: str
            time: int
            text: str = ""
            summary: str = ""
            rationale: str = ""
            tags: tuple[str, ...] = ()
            tier: str = "working"
            ttl: int = 0

        _FIELDS = msgspec.msgpack.Decoder(list[Fields])
    return _FIELDS


class Catalog:
    """Documents 0..n-1 in commit order, the revert records so far and the ids they hold dead."""

    def __init__(self, segs: list[Segment] | None = None, pos: int = C.HEADER_SIZE,
                 snapshot: BlobRef | None = None) -> None:
        self.segs: list[Segment] = segs or []
        self.reverts: list[bytes] = []  # ids of the revert records, in commit order
        self.dead: set[bytes] = set()
        self.redacted: set[bytes] = set()  # 7.7.1: never live again
        self.pos = pos  # file offset the catalog has absorbed records up to
        self.snapshot = snapshot  # the newest snapshot it holds (loaded or written)
        self.covered = self.n  # documents in that snapshot
        self._dead_arr: tuple[int, np.ndarray] | None = None
        self._dead_version = 0

    @property
    def n(self) -> int:
        return self.segs[-1].start + self.segs[-1].n if self.segs else 0

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.segs)

    # --- catching up ------------------------------------------------------------------
    def add(self, built: Sequence[Segment]) -> None:
        """Append the segments built from the next documents (commit order): one new
        segment, merged into the newest built ones."""
        if not built:
            return
        self.segs.append(merge(built))  # one merge for a whole catch-up
        _counter(self.segs)

    def revert(self, rid: bytes, rec: Any) -> None:
        """13.1: one revert event, in commit order."""
        self.reverts.append(rid)
        apply_revert(self.dead, self.redacted, rec)
        self._dead_version += 1

    # --- reading --------------------------------------------------------------------------
    def scores(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        return bm25(query, self.segs, self.n, self.tokens)

    def _split(self, cand: np.ndarray) -> list[tuple[Segment, slice]]:
        """The segments holding ``cand`` (positions ascending) and which part of it each holds."""
        if len(self.segs) == 1:
            return [(self.segs[0], slice(0, len(cand)))]
        cuts = np.searchsorted(cand, [s.start for s in self.segs] + [self.n]).tolist()
        return [(s, slice(a, b)) for s, a, b in zip(self.segs, cuts, cuts[1:], strict=False) if b > a]

    def column(self, name: str, cand: np.ndarray) -> np.ndarray:
        """A per-document column (``ids``, ``time``, ``ttl``, ``tier``, ``kind``) at ``cand``."""
        parts = [getattr(s, name)[cand[sl] - s.start] for s, sl in self._split(cand)]
        if not parts:
            return np.zeros(0, getattr(self.segs[0], name).dtype if self.segs else np.int64)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def tag_mask(self, tag: str, cand: np.ndarray) -> np.ndarray:
        key = tag.encode()
        got = [d.astype(np.int64) + s.start for s in self.segs if (d := s.tag_docs(key)) is not None]
        if not got:
            return np.zeros(len(cand), bool)
        have = np.concatenate(got)  # ascending: segments are in order
        at = np.searchsorted(have, cand)
        hit: np.ndarray = (at < len(have)) & (have[np.minimum(at, len(have) - 1)] == cand)
        return hit

    def dead_mask(self, cand: np.ndarray) -> np.ndarray:
        if not self.dead or not len(cand):
            return np.zeros(len(cand), bool)
        if self._dead_arr is None or self._dead_arr[0] != self._dead_version:
            self._dead_arr = (self._dead_version, np.array(sorted(self.dead), "S32"))
        return np.isin(self.column("ids", cand), self._dead_arr[1])


@dataclass(slots=True, eq=False)
class _Fed:
    """The catalog's part of the commits this handle wrote at file offsets start..end: the
    commits' record batches, kept as they were written (a reference, no work), until the
    catalog needs them or they hold FEED_BYTES; then their documents' fields (as columns),
    and from those, in bulk, segments (their starts relative to the first); and the
    reverts, in commit order."""

    start: int
    end: int
    held: list[tuple[RecordBatch, int]] = field(default_factory=list)  # a batch and its records then
    held_bytes: int = 0
    held_records: int = 0
    segs: list[Segment] = field(default_factory=list)
    reverts: list[tuple[bytes, Any]] = field(default_factory=list)
    ids: bytearray = field(default_factory=bytearray)
    texts: list[str] = field(default_factory=list)
    cols: list[list[np.ndarray]] = field(default_factory=lambda: [[], [], [], []])  # time, ttl, tier, kind
    tags: list[tuple[str, ...]] = field(default_factory=list)
    size: int = 0  # bytes of the records behind the texts not yet built

    @property
    def n(self) -> int:
        return (self.segs[-1].start + self.segs[-1].n if self.segs else 0) + len(self.texts)

    def hold(self, batch: RecordBatch) -> None:
        self.held.append((batch, len(batch)))  # only those: a batch never changes its first records
        self.held_bytes += len(batch.data)
        self.held_records += len(batch)
        if self.held_bytes >= FEED_BYTES:
            self.read()

    def read(self) -> None:
        """16.4 for the records held, from their encoded bytes (the writer's own, checked
        when they were made): the fields of the memories, notes and decisions (decoded by
        msgspec, nothing else) and the reverts' (id, drop, restore)."""
        for batch, count in self.held:
            self._take(batch, count)
        self.held, self.held_bytes, self.held_records = [], 0, 0

    def _take(self, batch: RecordBatch, count: int) -> None:
        kinds, codes = batch.kinds, batch.codes[:count]
        doc = {c for c, k in enumerate(kinds) if k in KIND_CODES}
        rev = {c for c, k in enumerate(kinds) if k == "revert"}
        for i in [i for i, c in enumerate(codes) if c in rev] if rev else ():
            a, b = batch.span(i)
            rec = decode_record(canon.decode(bytes(batch.data[a:b])), batch.rid(i))
            self.reverts.append((batch.rid(i), rec))
        if len(doc) == len(kinds):  # all of them (a bulk ingest): the batch as it is
            sel: Sequence[int] = range(count)
        else:
            sel = [i for i, c in enumerate(codes) if c in doc]
        nbytes = batch.span(count - 1)[1] if count else 0
        if nbytes + self.size < FEED_BYTES and len(sel) + len(self.texts) < min(FEED_CHUNK, _DECODE):
            self._decode(batch, sel)
            self.size += nbytes
            return
        ends = np.frombuffer(batch.ends, np.uint64)[:count].astype(np.int64)
        idx = np.asarray(sel, np.int64)
        size = np.cumsum(ends[idx] - np.concatenate(([0], ends))[idx])
        lo = 0
        while lo < len(idx):  # up to a segment's FEED_BYTES, FEED_CHUNK at a time, decoded _DECODE at a time
            hi = max(lo + 1, int(np.searchsorted(size, (size[lo - 1] if lo else 0) + FEED_BYTES - self.size)))
            hi = min(hi, lo + max(1, FEED_CHUNK - len(self.texts)), lo + _DECODE)
            self._decode(batch, sel[lo:hi])
            self.size += int(size[hi - 1] - (size[lo - 1] if lo else 0))
            if self.size >= FEED_BYTES or len(self.texts) >= FEED_CHUNK:
                self._segment()
            lo = hi

    def _decode(self, batch: RecordBatch, sel: Sequence[int]) -> None:
        if not len(sel):
            return
        first, last = sel[0], sel[-1]
        if last - first + 1 == len(sel):  # a run of records: one slice of the batch
            self.ids += batch.ids[32 * first : 32 * last + 32]
            raw = array_header(len(sel)) + batch.data[batch.span(first)[0] : batch.span(last)[1]]
        else:
            self.ids += b"".join(batch.ids[32 * i : 32 * i + 32] for i in sel)
            raw = array_header(len(sel)) + b"".join(batch.data.__getitem__(slice(*batch.span(i))) for i in sel)
        recs = _fields().decode(raw)
        m = len(recs)
        self.texts += [r.summary + "\n" + r.rationale if r.kind == "decision" else r.text for r in recs]
        time, ttl, tier, kind = self.cols
        time.append(np.fromiter((r.time for r in recs), np.int64, m))
        ttl.append(np.fromiter((r.ttl for r in recs), np.int64, m))
        tier.append(np.fromiter((TIERS[r.tier] for r in recs), np.uint8, m))
        kind.append(np.fromiter((KIND_CODES[r.kind] for r in recs), np.uint8, m))
        self.tags += [r.tags for r in recs]

    def _segment(self) -> None:
        """The documents read and not yet built, as one more segment."""
        if not self.texts:
            return
        start = self.n - len(self.texts)
        time, ttl, tier, kind = (np.concatenate(c) for c in self.cols)
        self.segs.append(build_columns(bytes(self.ids), self.texts, time, ttl, tier, kind, self.tags, start))
        _counter(self.segs)
        self.ids, self.texts, self.cols, self.tags, self.size = bytearray(), [], [[], [], [], []], [], 0

    def build(self) -> None:
        """Everything held, as segments."""
        self.read()
        self._segment()


def _counter(segs: list[Segment]) -> None:
    """9.3's binary counter: the newest segment absorbs each newest older one no more than
    twice its size (segments built here only: a snapshot's are kept as they are)."""
    while len(segs) >= 2 and segs[-2].ref is None and segs[-2].n <= 2 * segs[-1].n:
        segs[-2:] = [merge(segs[-2:])]


class LexicalIndex:
    """A searcher's catalog: loaded from the newest snapshot blob on first use, then
    caught up from the records after it; rebuilt from the records when the blob is
    unusable, and the doubt reported (16.8), never silently."""

    def __init__(self, store: Store, scan: Callable[..., Iterator[tuple[bytes, Any]]],
                 doubt: Callable[[str], None]) -> None:
        self.store = store
        self._scan = scan  # records of some kinds between two file offsets, in commit order
        self._doubt = doubt
        self.cat: Catalog | None = None
        self._fed: list[_Fed] = []  # commits written here that the catalog has not taken yet

    def get(self) -> Catalog:
        if self.cat is None:
            try:
                self.cat, why = load(self.store)
            except CorruptError as e:
                self.cat, why = Catalog(), f"{e}; rebuilt the lexical index from the records"
            if why:
                self._doubt(why)
        if self.cat.pos < self.store.snap.end:
            try:
                self._catch_up(self.cat)
            except CorruptError as e:
                if e.check != "lexical":
                    raise
                self.rebuild(e)
        return self.cat

    def rebuild(self, e: CorruptError) -> None:
        """16.8: a snapshot found bad in use is absent: rebuild from the records, and say so."""
        self._doubt(f"{e}; rebuilt the lexical index from the records")
        self.cat = Catalog()
        self._fed = []
        self._catch_up(self.cat)

    def feed(self, batch: RecordBatch, start: int, end: int) -> None:
        """The records of the commit this handle wrote at file offsets ``start`` .. ``end``
        (``batch``: exactly them, in order), so that catching up need not read them back."""
        if self.cat is not None and self.cat.pos > start:
            return
        last = self._fed[-1] if self._fed else None
        if last is None or last.end != start:
            self._fed.append(last := _Fed(start, start))
        last.hold(batch)
        last.end = end

    def fed_records(self) -> int:
        """Records this handle committed that wait here for the catalog."""
        return sum(f.n + f.held_records for f in self._fed)

    def _catch_up(self, d: Catalog) -> None:
        snap = self.store.snap
        fed, self._fed = self._fed, []
        parts: list[Segment] = []
        used = False

        def read(pos: int, end: int) -> None:
            """The records between two offsets, from the file."""
            batch: list[Doc] = []
            at = d.n + sum(s.n for s in parts)
            for rid, rec in self._scan(pos, _SCAN_KINDS, end=end):
                if rec.kind == "revert":
                    d.revert(rid, rec)
                    continue
                batch.append(doc_of(rid, rec))
                if len(batch) >= _BATCH:  # tokens and texts are held one batch at a time
                    parts.append(build(batch, at))
                    at, batch = at + len(batch), []
            if batch:
                parts.append(build(batch, at))

        for f in fed:
            if f.start < d.pos or f.end > snap.end:
                continue  # taken already (a snapshot written after it), or not visible here: read
            if f.start > d.pos:
                read(d.pos, f.start)
            try:
                f.build()
            except Exception:  # noqa: BLE001 - only a shortcut: these records are read from the file
                continue
            at = d.n + sum(s.n for s in parts)
            for seg in f.segs:
                seg.start += at
            parts += f.segs
            for r in f.reverts:
                d.revert(*r)
            d.pos, used = f.end, True
        if d.pos < snap.end:
            read(d.pos, snap.end)
        d.add(parts)
        d.pos = snap.end
        want = sum(snap.kinds.get(k, 0) for k in LEXICAL_KINDS)
        if (d.snapshot is not None or used) and (d.n != want or len(d.reverts) != snap.kinds.get("revert", 0)):
            # 16.8: the snapshot and the records after it are every searchable record and every
            # revert, once: a snapshot that leaves one out is not used
            raise CorruptError(f"lexical snapshot: it and the records after it hold {d.n} documents and "
                               f"{len(d.reverts)} reverts, the capsule {want} and {snap.kinds.get('revert', 0)}",
                               offset=d.snapshot.offset if d.snapshot else 0, check="lexical")


def rid_at(ids: np.ndarray, i: int) -> bytes:
    """The exact 32 bytes of ``ids[i]`` (indexing an S32 array drops trailing zero bytes)."""
    return ids[i : i + 1].tobytes()


def peek_covered(store: Store) -> int:
    """How many documents the newest snapshot blob says it covers (0: none usable), unchecked:
    for the writer's policy only, never for results."""
    ref = store.snap.blobs.get(BLOB_TYPE)
    if ref is None:
        return 0
    try:
        raw = store.h.pread(ref.offset + C.FRAME_HEADER_SIZE, min(ref.size + 4096, 8192))
        hl = int.from_bytes(raw[:2], "little")
        h = peek(raw[2 + hl :])
    except (OSError, ValueError):
        return 0
    if h is None or h.get("tokenizer") != TOKENIZER_ID:
        return 0
    start, docs = h.get("start"), h.get("docs")
    return start + docs if type(start) is int and type(docs) is int else 0


def lexical_due(store: Store, at_least: int) -> bool:
    """Whether ``at_least`` searchable records are not in the newest snapshot (a writer's
    policy, 16.8): counts and one header, no scan, nothing imported but this module."""
    return sum(store.snap.kinds.get(k, 0) for k in LEXICAL_KINDS) - peek_covered(store) >= at_least


def load(store: Store) -> tuple[Catalog, str | None]:
    """The catalog of the newest snapshot blob (16.8), or an empty one, and why a blob was not used.

    Every blob is hash-checked (3.4) and bounds-checked before anything derived
    from it is used. A blob of another tokenizer is not damage: it is passed over
    (the reason says so) and the catalog is rebuilt like one with no blob."""
    snap = store.snap
    ref = snap.blobs.get(BLOB_TYPE)
    if ref is None:
        return Catalog(), None
    h, mf = store.h, snap.header.max_frame_len
    checks = []
    try:
        buf, after, check = read_blob(h, ref, mf, snap.end)
        checks.append(check)
        head = peek(buf)
        if head is not None and head.get("tokenizer") != TOKENIZER_ID:
            check()
            return Catalog(), f"the lexical snapshot uses tokenizer {head.get('tokenizer')!r}, not " \
                              f"{TOKENIZER_ID!r}; rebuilt the lexical index from the records"
        top = decode(buf, ref.offset)
        segs: list[Segment] = []
        for b in top.base:
            # 16.8: each base blob lies wholly before the blob that names it
            bbuf, _, bcheck = read_blob(h, b, mf, ref.offset)
            checks.append(bcheck)
            bh = peek(bbuf)
            if bh is None or bh.get("tokenizer") != TOKENIZER_ID:
                raise CorruptError("lexical snapshot: a base blob has another tokenizer", offset=b.offset,
                                   check="lexical")
            seg = decode(bbuf, b.offset)
            seg.ref = b
            segs.append(seg)
        top.ref = ref
        segs.append(top)
    finally:
        for c in checks:
            c()  # 3.4: nothing derived from a blob is used unless its hash holds
    at = 0
    for s in segs:
        if s.start != at:
            raise CorruptError("lexical snapshot: its segments do not follow each other", offset=ref.offset,
                               check="lexical")
        at += s.n
    if at > sum(snap.kinds.get(k, 0) for k in LEXICAL_KINDS) or len(top.reverts) > snap.kinds.get("revert", 0):
        raise CorruptError("lexical snapshot: more documents or reverts than the capsule's records",
                           offset=ref.offset, check="lexical")
    cat = Catalog(segs, after, ref)
    last = (0, -1)
    for rid in top.reverts:
        # 13.1, 16.8: the dead ids come from the revert records themselves, in commit order
        loc = store.locate(rid)
        rec = store.get(rid) if loc is not None and loc > last else None
        if loc is None or rec is None or rec.kind != "revert":
            raise CorruptError(f"lexical snapshot: {rid.hex()[:16]} is not a revert record after the one before it",
                               offset=ref.offset, check="lexical")
        cat.revert(rid, rec)
        last = loc
    return cat, None


__all__ = ["Catalog", "KIND_CODES", "LEXICAL_KINDS", "LexicalIndex", "doc_of", "lexical_due", "load", "peek_covered",
           "rid_at"]
