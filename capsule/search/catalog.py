"""The lexical catalog of one searcher: snapshot segments, then what came after (spec 16.4, 16.8).

A :class:`Catalog` is the list of :class:`~.lexsnap.Segment` a searcher scores: first the segments
of the newest ``bm25`` snapshot blob (its base blobs, then itself), loaded by :func:`load`, then
segments built here from the records committed after it. Those are merged like the snapshot's own
(the newest absorbs each newest older one no more than twice its size), so catching up after every
commit stays O(log n) segments. The catalog also folds the ``revert`` events (13.1), from the
records themselves: the snapshot names the revert records before it (read through the index, each
checked against its id, and counted against the capsule's), the catch-up reads those after it. So a
snapshot cannot bring back a record a rollback dropped.

Columns, tags and ids are read per candidate (positions ascending), never for
the whole catalog, and a hit's record is read from the capsule when it is used.

A writer does not read back what it has just written: the handle hands each commit's record batch
to :meth:`LexicalIndex.feed`, which keeps it, named by the file range of its commit, until the
catalog is needed (or the batches kept reach FEED_BYTES); catching up then decodes from their bytes
only the fields the catalog needs (msgspec, in C), tokenizes all their texts at once
(``lexical.term_ids``) and reads from the file only the records between those ranges. A commit so
costs nothing here, and a bulk ingest one tokenizer pass.

The file's header minor fixes its ranking rule (``lexical.rule_of``, 12.8): a
1.4 catalog also keeps each memory's session key, and from those (and the dead
ids) it makes the context window of 16.4.1 when it is first scored after a
change: every live memory's nearest live memory of its session on each side,
found by one sort of the documents that have a session.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.errors import CapsuleError, CorruptError
from ..core.lazy import lazy
from ..format import canonical as canon
from ..format.batch import RecordBatch
from ..format.blob import BlobRef, read_blob
from ..format.commit import array_header
from ..format.records import decode_record
from ..format.scan import payload_head
from ..format.store import Store
from ..state.liveness import apply_revert
from .lexical import RULE_1, Rule, Window, bm25, rule_of
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
_KIND, _TEXT, _TIME, _TTL, _TIER, _TAGS, _META = map(attrgetter, ("kind", "text", "time", "ttl", "tier", "tags",
                                                                   "meta"))


def session_of(rec: Any) -> bytes | None:
    """16.4.1: a memory's session key, the canonical bytes of ``meta["session"]``, or None."""
    meta = getattr(rec, "meta", None) if rec.kind == "memory" else None
    return canon.pack(canon.normalize(meta["session"])) if meta and "session" in meta else None


def doc_of(rid: bytes, rec: Any) -> Doc:
    """16.4: what the catalog keeps of a memory, note or decision."""
    text = rec.summary + "\n" + rec.rationale if rec.kind == "decision" else rec.text
    return (rid, text, rec.time, getattr(rec, "ttl", None) or 0, TIERS[getattr(rec, "tier", "working")],
            KIND_CODES[rec.kind], tuple(getattr(rec, "tags", ())), session_of(rec))


_FIELDS: dict[bool, Any] = {}


def _fields(meta: bool) -> Any:
    """A msgspec decoder of the fields of 7.1, 7.2 and 7.6 the catalog reads (others skipped);
    with ``meta``, each memory's meta values as their stored (canonical) bytes."""
    if meta not in _FIELDS:
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

        # built, not declared: the annotations of a class here are strings resolved in the module
        with_meta = msgspec.defstruct("WithMeta", [("meta", dict[str, msgspec.Raw], {})], bases=(Fields,), gc=False)
        _FIELDS[meta] = msgspec.msgpack.Decoder(list[with_meta] if meta else list[Fields])  # type: ignore[valid-type]
    return _FIELDS[meta]


class Catalog:
    """Documents 0..n-1 in commit order, the revert records so far and the ids they hold dead.
    ``rule`` (16.4): the file's; None until a LexicalIndex takes the catalog (then its file's)."""

    def __init__(self, segs: list[Segment] | None = None, pos: int = C.HEADER_SIZE,
                 snapshot: BlobRef | None = None, rule: Rule | None = None) -> None:
        self.rule = rule
        self.segs: list[Segment] = segs or []
        self.reverts: list[bytes] = []  # ids of the revert records, in commit order
        self.dead: set[bytes] = set()
        self.redacted: set[bytes] = set()  # 7.7.1: never live again
        self.pos = pos  # file offset the catalog has absorbed records up to
        self.snapshot = snapshot  # the newest snapshot it holds (loaded or written)
        self.covered = self.n  # documents in that snapshot
        self._dead_arr: tuple[int, np.ndarray] | None = None
        self._dead_version = 0
        self._sessions: dict[bytes, int] = {}  # 16.4.1: each session key met, numbered
        self._window: tuple[tuple[int, int, frozenset[bytes]], Window | None] | None = None

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
    def scores(self, query: str, hidden: Collection[bytes] = ()) -> tuple[np.ndarray, np.ndarray]:
        rule = self.rule or RULE_1
        return bm25(query, self.segs, self.n, self.tokens, rule.tok, self.window(hidden))

    def window(self, hidden: Collection[bytes] = ()) -> Window | None:
        """16.4.1: the context window of every document (None: each one alone), made again
        when documents are added or a revert changes which are live. ``hidden``: ids that
        are live here but redacted later (a view, 7.7.1): in no window but their own."""
        c = (self.rule or RULE_1).window
        if not c:
            return None
        extra = frozenset(h for h in hidden if h not in self.dead)
        key = (self.n, self._dead_version, extra)
        if self._window is None or self._window[0] != key:
            self._window = (key, self._make_window(c, extra))
        return self._window[1]

    def _make_window(self, c: int, hidden: frozenset[bytes] = frozenset()) -> Window | None:
        pos, gid = [], []
        for s in self.segs:
            ses = s.sessions
            if ses is None or not len(ses.doc):
                continue
            table = ses.keys()
            num = np.fromiter((self._sessions.setdefault(k, len(self._sessions)) for k in table), np.int64,
                              len(table))
            pos.append(ses.doc.astype(np.int64) + s.start)
            gid.append(num[ses.ix.astype(np.int64)])
        if not pos:
            return None
        p, g = np.concatenate(pos), np.concatenate(gid)
        if self.dead or hidden:  # a dead (or redacted, 7.7.1) document is in no window but its own
            live = ~(self.dead_mask(p) | self.id_mask(p, hidden))
            p, g = p[live], g[live]
        order = np.lexsort((p, g))  # each session's live documents in catalog order, back to back
        p, g = p[order], g[order]
        nbr = np.full((self.n, 2 * c), -1, np.int64)
        for k in range(1, c + 1):
            same = g[k:] == g[:-k]
            a, b = p[:-k][same], p[k:][same]  # a is k before b in their session
            nbr[b, k - 1] = a
            nbr[a, c + k - 1] = b
        lens = np.concatenate([s.lens for s in self.segs]).astype(np.int64)
        wlen = lens.copy()
        for j in range(2 * c):
            has = nbr[:, j] >= 0
            wlen[has] += lens[nbr[has, j]]
        return Window(nbr, wlen, int(wlen.sum()))

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

    def id_mask(self, cand: np.ndarray, ids: Collection[bytes]) -> np.ndarray:
        """Which documents at ``cand`` have one of ``ids`` (as raw bytes: ``S32`` sorts 3x slower)."""
        if not ids or not len(cand):
            return np.zeros(len(cand), bool)
        return np.isin(self.column("ids", cand).view("V32"), np.frombuffer(b"".join(ids), "V32"))

    def dead_mask(self, cand: np.ndarray) -> np.ndarray:
        if not self.dead or not len(cand):
            return np.zeros(len(cand), bool)
        if len(cand) * 64 < len(self.dead):  # a few documents: a set lookup each, not a sort of the dead
            raw = self.column("ids", cand).tobytes()  # whole ids: an S32 item drops trailing zero bytes
            return np.fromiter((raw[i : i + 32] in self.dead for i in range(0, len(raw), 32)), bool, len(cand))
        if self._dead_arr is None or self._dead_arr[0] != self._dead_version:
            self._dead_arr = (self._dead_version, np.frombuffer(b"".join(self.dead), "V32"))
        return np.isin(self.column("ids", cand).view("V32"), self._dead_arr[1])


@dataclass(slots=True, eq=False)
class _Fed:
    """The catalog's part of the commits this handle wrote at file offsets start..end: the
    commits' record batches, kept as they were written (a reference, no work), until the
    catalog needs them or they hold FEED_BYTES; then their documents' fields (as columns),
    and from those, in bulk, segments (their starts relative to the first); and the
    reverts, in commit order."""

    start: int
    end: int
    rule: Rule
    held: list[tuple[RecordBatch, int]] = field(default_factory=list)  # a batch and its records then
    held_bytes: int = 0
    held_records: int = 0
    segs: list[Segment] = field(default_factory=list)
    reverts: list[tuple[bytes, Any]] = field(default_factory=list)
    ids: bytearray = field(default_factory=bytearray)
    run: tuple[RecordBatch, int, int] | None = None  # or the ids are records a..b-1 of a sealed batch
    texts: list[str] = field(default_factory=list)
    cols: list[list[np.ndarray]] = field(default_factory=lambda: [[], [], [], []])  # time, ttl, tier, kind
    tags: list[tuple[str, ...]] = field(default_factory=list)
    sessions: dict[int, bytes] = field(default_factory=dict)  # 16.4.1 (a rule that keeps them): {text: key}
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
        # a copy (a view would pin the batch's size); for the whole batch, its ends are the sizes summed
        size = np.frombuffer(batch.ends, np.uint64)[:count].astype(np.int64)
        if not isinstance(sel, range):
            idx = np.asarray(sel, np.int64)
            size = np.cumsum(size[idx] - np.concatenate(([0], size))[idx])
            del idx
        lo = 0
        while lo < len(sel):  # up to a segment's FEED_BYTES, FEED_CHUNK at a time, decoded _DECODE at a time
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
            run = self.run
            if batch.sealed and not self.ids and (run is None or (run[0] is batch and run[2] == first)):
                # a written batch never changes again: its ids are viewed, not copied (F22)
                self.run = (batch, first if run is None else run[1], last + 1)
            else:
                self._own_ids()
                self.ids += batch.ids[32 * first : 32 * last + 32]
            raw = array_header(len(sel)) + batch.data[batch.span(first)[0] : batch.span(last)[1]]
        else:
            self._own_ids()
            self.ids += b"".join(batch.ids[32 * i : 32 * i + 32] for i in sel)
            raw = array_header(len(sel)) + b"".join(batch.data.__getitem__(slice(*batch.span(i))) for i in sel)
        recs = _fields(self.rule.sessions).decode(raw)
        del raw
        m = len(recs)
        # each field through map and attrgetter: C loops, no Python frame per record
        codes = np.fromiter(map(KIND_CODES.__getitem__, map(_KIND, recs)), np.uint8, m)
        if (codes == KIND_CODES["decision"]).any():  # a decision's text is its summary and rationale
            self.texts += [r.summary + "\n" + r.rationale if r.kind == "decision" else r.text for r in recs]
        else:
            self.texts += map(_TEXT, recs)
        time, ttl, tier, kind = self.cols
        time.append(np.fromiter(map(_TIME, recs), np.int64, m))
        ttl.append(np.fromiter(map(_TTL, recs), np.int64, m))
        tier.append(np.fromiter(map(TIERS.__getitem__, map(_TIER, recs)), np.uint8, m))
        kind.append(codes)
        self.tags += map(_TAGS, recs)
        if self.rule.sessions:  # 16.4.1: stored canonical, so the stored bytes are the key
            got = list(map(dict.get, map(_META, recs), repeat("session")))
            if got.count(None) != m:  # most ingests have none: no step per record
                memory = KIND_CODES["memory"]  # 16.4.1: only a memory has a session key
                base = len(self.texts) - m
                self.sessions.update((base + j, bytes(g)) for j, (g, c) in enumerate(zip(got, codes.tolist(),
                                     strict=True)) if g is not None and c == memory)

    def _own_ids(self) -> None:
        """The ids viewed so far, copied: what comes next is not their batch's next records."""
        if self.run is not None:
            batch, a, b = self.run
            self.ids += batch.ids[32 * a : 32 * b]
            self.run = None

    def _segment(self) -> None:
        """The documents read and not yet built, as one more segment."""
        if not self.texts:
            return
        start = self.n - len(self.texts)
        time, ttl, tier, kind = (np.concatenate(c) for c in self.cols)
        ids: bytearray | memoryview = self.ids
        if self.run is not None:
            batch, a, b = self.run
            ids, self.run = memoryview(batch.ids)[32 * a : 32 * b], None
        texts, tags, sessions = self.texts, self.tags, self.sessions
        # handed over before the build: the chunks' columns go now, the rest once built (F22)
        self.ids, self.texts, self.cols, self.tags, self.size = bytearray(), [], [[], [], [], []], [], 0
        self.sessions = {}
        seg = build_columns(ids, texts, time, ttl, tier, kind, tags, start, self.rule.tok,
                            sessions if self.rule.sessions else None)
        del texts, tags, sessions
        self.segs.append(seg)
        _counter(self.segs)

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
        self.rule = rule_of(store.snap.header.minor)  # 12.8: fixed when the file was created
        self.cat: Catalog | None = None
        self._fed: list[_Fed] = []  # commits written here that the catalog has not taken yet

    def get(self) -> Catalog:
        if self.cat is None:
            self.rule.tok.check()  # TokenizerUnavailable, before any doubt is raised about a blob
            try:
                self.cat, why = load(self.store, self.rule)
            except CorruptError as e:
                self.cat, why = Catalog(rule=self.rule), f"{e}; rebuilt the lexical index from the records"
            if why:
                self._doubt(why)
        if self.cat.rule is None:
            self.cat.rule = self.rule
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
        self.cat = Catalog(rule=self.rule)
        self._fed = []
        self._catch_up(self.cat)

    def feed(self, batch: RecordBatch, start: int, end: int) -> None:
        """The records of the commit this handle wrote at file offsets ``start`` .. ``end``
        (``batch``: exactly them, in order), so that catching up need not read them back."""
        if self.cat is not None and self.cat.pos > start:
            return
        last = self._fed[-1] if self._fed else None
        if last is None or last.end != start:
            self._fed.append(last := _Fed(start, start, self.rule))
        last.hold(batch)
        last.end = end

    def fed_records(self) -> int:
        """Records this handle committed that wait here for the catalog."""
        return sum(f.n + f.held_records for f in self._fed)

    def _catch_up(self, d: Catalog) -> None:
        snap = self.store.snap
        rule = d.rule or self.rule
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
                    parts.append(build(batch, at, rule.tok, rule.sessions))
                    at, batch = at + len(batch), []
            if batch:
                parts.append(build(batch, at, rule.tok, rule.sessions))

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
        raw = payload_head(store.h, ref.offset, min(ref.size + 4096, 8192), store.snap.header.max_frame_len)
        hl = int.from_bytes(raw[:2], "little")
        h = peek(raw[2 + hl :])
    except (OSError, ValueError, CapsuleError):
        return 0
    if h is None or not _usable(h, rule_of(store.snap.header.minor)):
        return 0
    start, docs = h.get("start"), h.get("docs")
    return start + docs if type(start) is int and type(docs) is int else 0


def lexical_due(store: Store, at_least: int) -> bool:
    """Whether ``at_least`` searchable records are not in the newest snapshot (a writer's
    policy, 16.8): counts and one header, no scan, nothing imported but this module."""
    return sum(store.snap.kinds.get(k, 0) for k in LEXICAL_KINDS) - peek_covered(store) >= at_least


def _usable(head: dict[str, object], rule: Rule) -> bool:
    """16.8: a snapshot of the file's tokenizer, with the session keys exactly when its rule has a window."""
    return head.get("tokenizer") == rule.tok.id and ("sessions" in head) == rule.sessions


def load(store: Store, rule: Rule) -> tuple[Catalog, str | None]:
    """The catalog of the newest snapshot blob (16.8), or an empty one, and why a blob was not used.

    Every blob is hash-checked (3.4) and bounds-checked before anything derived
    from it is used. A blob of another tokenizer (or layout) is not damage: it is
    passed over (the reason says so) and the catalog is rebuilt like one with no blob."""
    snap = store.snap
    ref = snap.blobs.get(BLOB_TYPE)
    if ref is None:
        return Catalog(rule=rule), None
    h, mf = store.h, snap.header.max_frame_len
    checks = []
    try:
        buf, after, check = read_blob(h, ref, mf, snap.end)
        checks.append(check)
        head = peek(buf)
        if head is not None and not _usable(head, rule):
            check()
            return Catalog(rule=rule), (
                f"the lexical snapshot uses tokenizer {head.get('tokenizer')!r}"
                f"{' with' if 'sessions' in head else ' without'} session keys, not {rule.tok.id!r}"
                f"{' with' if rule.sessions else ' without'}; rebuilt the lexical index from the records")
        top = decode(buf, ref.offset)
        segs: list[Segment] = []
        for b in top.base:
            # 16.8: each base blob lies wholly before the blob that names it
            bbuf, _, bcheck = read_blob(h, b, mf, ref.offset)
            checks.append(bcheck)
            bh = peek(bbuf)
            if bh is None or not _usable(bh, rule):
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
    cat = Catalog(segs, after, ref, rule)
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
           "rid_at", "session_of"]
