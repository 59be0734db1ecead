"""Search over one open capsule: vector, lexical and hybrid (spec 16).

Theory of operation
-------------------
A :class:`Searcher` belongs to one :class:`~capsule.format.store.Store` (one handle) and follows
its snapshot. The vector index starts from the newest snapshot blob the INDEX names (16.2) and
catches up by inserting, in commit order, every memory with an embedding in the frames after that
blob; with no usable blob it starts empty and inserts everything. A blob that fails any check is
reported (``doubt``, a log warning, ``capsule search`` prints it) and the index is rebuilt from the
records: never silently. The lexical catalog (BM25, ``catalog``) loads the same way from its own
snapshot blobs (16.8), or is rebuilt from the records, lazily; its hits carry no record, which is
read through the store when used.

Filters become boolean masks over the indexed entries; the vector search scans exactly when few
entries pass and otherwise filters inside the graph walk, so a selective filter cannot starve the
result. Every result is scored exactly and ties go to the smaller record id. Dead records (dropped
by a revert), expired ones (time + ttl <= now) and filtered-out ones are never returned.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.clock import iso
from ..core.errors import CorruptError, DataError, UsageError
from ..core.lazy import lazy
from ..format import canonical as canon
from ..format.batch import Item
from ..format.blob import read_blob
from ..format.commit import decode_records_payload
from ..format.frames import parse_frame_header, raw_payload
from ..format.records import decode_record, parse_meta, parse_tags, parse_time_arg
from ..format.records import record_id as content_id
from ..format.scan import payload_head, read_frame_at
from ..format.store import Store
from ..state.liveness import fold_of
from ..state.validtime import parse_valid_at
from . import fusion as fusion_mod
from .browse import browse
from .catalog import KIND_CODES, LEXICAL_KINDS, Catalog, LexicalIndex, rid_at
from .embed import Embedder, get_embedder
from .entries import check_ids_distinct, entries_disagree
from .fusion import Ranking, Results, fuse_rrf, fuse_weighted, parse_fusion, plan
from .lexsnap import BLOB_TYPE as LEX_BLOB
from .params import first_params, index_params, same_value
from .params import params_of as _params_of
from .validview import ValidView
from .vindex import BLOB_TYPE, TIER_NAMES, TIERS, Entry, VectorIndex, VectorParams

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")

log = logging.getLogger("capsule")
MODES = ("auto", "vector", "lexical", "hybrid")
_SCAN_KINDS = frozenset({"memory", "note", "decision", "vindex"})
_PARAM_KINDS = frozenset({"memory", "vindex"})


def _may_fix_params(kind: str, value: dict[str, Any]) -> bool:
    return kind == "vindex" or value.get("embedding") is not None


@dataclass(frozen=True, slots=True)
class Filter:
    """What a result must satisfy. Times are int ns, ``since`` and ``until`` inclusive."""

    tags: tuple[str, ...] = ()  # all of these
    any_tags: tuple[str, ...] = ()  # at least one of these
    tiers: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    since: int | None = None
    until: int | None = None
    meta: tuple[tuple[str, bytes], ...] = ()  # key -> canonical bytes of the wanted value
    valid_at: int | None = None  # 13.6: the valid-time view at this time (ttl judged then, not now)
    #: 7.7.1, 16.4.1: records redacted after the view's commit (live in it): never a result,
    #: and in no window but their own, so their words raise no neighbour's score
    hidden: frozenset[bytes] = frozenset()

    @classmethod
    def build(cls, *, tags: Any = None, any_tags: Any = None, tier: Any = None, kind: Any = None,
              since: Any = None, until: Any = None, meta: Mapping[str, Any] | None = None,
              valid_at: Any = None, hidden: Iterable[bytes] = ()) -> Filter:
        def strs(v: Any, what: str) -> tuple[str, ...]:
            if v is None:
                return ()
            if isinstance(v, str):
                return (v,)
            if not isinstance(v, Iterable) or not all(isinstance(x, str) for x in v):
                raise UsageError(f"{what} must be a string or a list of strings")
            return tuple(v)

        tiers = strs(tier, "tier")
        for t in tiers:
            if t not in TIERS:
                raise UsageError(f"tier must be one of {', '.join(TIERS)}, not {t!r}")
        kinds = strs(kind, "kind")
        for k in kinds:
            if k not in KIND_CODES:
                raise UsageError(f"kind must be one of {', '.join(LEXICAL_KINDS)} (the searchable kinds), not {k!r}")

        def when(v: Any, what: str) -> int | None:
            if v is None:
                return None
            if isinstance(v, int) and not isinstance(v, bool):
                return v
            if isinstance(v, str):
                return parse_time_arg(v, what)
            raise UsageError(f"{what} must be int ns or an ISO-8601 string")

        try:  # filter values get the same normalisation (NFC...) as stored tags and meta
            norm = parse_meta(dict(meta or {}))
            all_of, any_of = parse_tags(strs(tags, "tags")), parse_tags(strs(any_tags, "any_tags"))
        except DataError as e:
            raise UsageError(f"filter: {e}") from None
        return cls(all_of, any_of, tiers, kinds, when(since, "since"), when(until, "until"),
                   tuple((k, canon.pack(v)) for k, v in sorted(norm.items())),
                   None if valid_at is None else parse_valid_at(valid_at), frozenset(hidden))


class Hit:
    """One result. ``id`` and ``score`` are immediate; record fields load on first use."""

    __slots__ = ("id", "score", "_rec", "_view", "_store")

    def __init__(self, rid: bytes, score: float, rec: Any, store: Store) -> None:
        self.id: str = rid.hex()
        self.score = score
        self._rec = rec  # None: read from the capsule (and checked against its id) on first use
        self._view = rec
        self._store = store

    @property
    def record(self) -> Any:
        """The whole record (with its embedding), read from the capsule if needed."""
        if self._rec is None:
            st = self._store
            if st.closed:
                # Ids are content addresses and the file only grows: a fresh reader
                # finds the same record (and checks it against its id).
                st = Store.open_reader(st.path, st.clock)
                try:
                    rec = st.get(bytes.fromhex(self.id))
                finally:
                    st.h.close()
            else:
                rec = st.get(bytes.fromhex(self.id))
            if rec is None:
                # the index named an id the capsule does not hold: a forged or stale snapshot
                raise CorruptError(f"the search index names record {self.id}, which is not in the capsule",
                                   check="vindex")
            self._rec = rec
        return self._rec

    @property
    def _r(self) -> Any:
        return self._view if self._view is not None else self.record

    @property
    def kind(self) -> str:
        return str(self._r.kind)

    @property
    def text(self) -> str:
        r = self._r
        return str(r.summary if r.kind == "decision" else r.text)

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(getattr(self._r, "tags", ()))

    @property
    def meta(self) -> dict[str, Any]:
        return dict(getattr(self._r, "meta", None) or {})

    @property
    def time(self) -> int:
        return int(self._r.time)

    def to_dict(self) -> dict[str, Any]:
        """16.7: the JSON shape ``capsule search --json`` prints."""
        return {"id": self.id, "score": self.score, "kind": self.kind, "text": self.text, "tags": list(self.tags),
                "meta": _jsonable(self.meta), "time": iso(self.time)}

    def __repr__(self) -> str:
        return f"Hit({self.id[:12]}, {self.score:.4f})"


class Searcher:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.vi: VectorIndex | None = None
        self.params: VectorParams | None = None
        self._vpos = 0  # file offset the vector index has absorbed records up to
        self.lex = LexicalIndex(store, self._scan, self._lexical_doubt)  # loaded on first use
        self.snapshot_count = 0  # vectors in the newest snapshot blob
        self.doubt: str | None = None  # why a snapshot blob was not used
        self.notice: str | None = None  # how the last search departed from what was asked (auto mode)
        self._gone: tuple[tuple[int, int], np.ndarray] | None = None  # labels of dead ids, per snapshot
        self._vouched: set[int] = set()  # snapshot labels whose memories were read and agree (16.3)
        self.pending_vectors = 0  # committed through this handle since the newest snapshot
        self._cfg_pos = C.HEADER_SIZE  # config(): scanned for a first embedding up to here
        self.valid = ValidView(store)  # 13.6, read on first use

    # --- reading records ------------------------------------------------------------
    def _scan(self, pos: int, kinds: frozenset[str] = _SCAN_KINDS,
              want: Callable[[str, dict[str, Any]], bool] | None = None, end: int | None = None,
              ) -> Iterator[tuple[bytes, Any]]:
        """Records of ``kinds`` in the committed frames from ``pos`` on (up to ``end``), in commit order:
        RECORDS frames only, each checked against its own chain link (4.2), hopping from header to
        header, so a damaged snapshot blob, never read here, cannot stop a rebuild from the records."""
        snap, h = self.store.snap, self.store.h
        seq: int | None = None
        while pos < (snap.end if end is None else end):
            fh = parse_frame_header(h.pread(pos, C.FRAME_HEADER_SIZE), pos, expect_seq=seq,
                                    max_frame_len=snap.header.max_frame_len)
            if fh.end > snap.end:
                raise CorruptError("frame runs past the last commit", offset=pos, seq=fh.seq, check="frame-length")
            if fh.ftype == C.FT_RECORDS:
                prev = snap.header.chain_seed if pos == C.HEADER_SIZE else None
                fh, payload, _, _ = read_frame_at(h, pos, max_frame=snap.header.max_frame_len, seq=fh.seq,
                                                  prev_chain=prev)
                for value, data in decode_records_payload(raw_payload(fh, payload), fh.offset, fh.seq):
                    kind = value.get("kind") if isinstance(value, dict) else None
                    if not isinstance(kind, str):
                        raise CorruptError("record without a kind", offset=fh.offset, seq=fh.seq, check="record")
                    if kind in kinds and (want is None or (isinstance(value, dict) and want(kind, value))):
                        rid = content_id(kind, data)
                        yield rid, decode_record(value, rid)
            pos, seq = fh.end, fh.seq + 1

    def _blob_params(self) -> tuple[VectorParams, int] | None:
        ref = self.store.snap.blobs.get(BLOB_TYPE)
        if ref is None:
            return None
        h = self.store.h
        try:
            raw = payload_head(h, ref.offset, min(ref.size + 4096, 8192), self.store.snap.header.max_frame_len)
            hl = struct.unpack_from("<H", raw, 0)[0]
            return VectorIndex.peek(raw[2 + hl :])
        except (struct.error, ValueError, CorruptError):
            return None

    def config(self) -> VectorParams | None:
        """16.1: the vector parameters in force: what the INDEX (9.2 `vectors`) or a snapshot
        says, else the first vindex record (or embedding) in the records the INDEX does not cover."""
        if self.params is None:
            snap = self.store.snap
            said = index_params(snap.vectors)
            got = self._blob_params() if said is None or said[1] is None else (said[1], 0)
            start = self._cfg_pos if said is None else max(self._cfg_pos, said[0])
            if got is not None:
                self.params = got[0]
            elif start < snap.end and ({"vindex", "memory"} & set(snap.kinds)):
                # 16.1: the first vindex record, or else the defaults with the first
                # embedding's dimension (with no vindex record in the file at all).
                want_vindex = "vindex" in snap.kinds
                # only a vindex record or a memory holding an embedding can fix them: the
                # rest of a text capsule's tail is never built into record objects
                for _, rec in self._scan(start, _PARAM_KINDS, _may_fix_params):
                    if rec.kind == "vindex":
                        self.params = _params_of(rec)
                        break
                    if not want_vindex and rec.kind == "memory" and rec.embedding is not None:
                        self.params = VectorParams(dim=len(rec.embedding))
                        break
                else:
                    self._cfg_pos = snap.end  # none so far: resume from here next time
        return self.params

    def index_value(self, items: Sequence[Item]) -> dict[str, int | str]:
        """9.2 `vectors` for an INDEX after ``items`` (this commit's records); ``{}``: none fixed."""
        p = self.config() or first_params(items)
        return {} if p is None else p.to_value()

    def dead(self) -> set[bytes]:
        snap = self.store.snap
        if "revert" not in snap.kinds:
            return set()
        if self.lex.cat is not None or LEX_BLOB in snap.blobs:
            # the lexical snapshot carries the dead ids before it (16.8): no scan of history
            return self.docs().dead
        return fold_of(self.store).dead  # 13.1: only the revert records are read, once per commit

    # --- the vector index ------------------------------------------------------------
    def vectors(self) -> VectorIndex | None:
        """Load the newest snapshot (once) and insert what came after it."""
        snap = self.store.snap
        if self.vi is None and self._vpos == 0:
            self._vpos = C.HEADER_SIZE
            ref = snap.blobs.get(BLOB_TYPE)
            if ref is not None:
                try:
                    blob, after, check = read_blob(self.store.h, ref, snap.header.max_frame_len, snap.end)
                    try:
                        vi = VectorIndex.decode(blob, where=ref.offset)
                    finally:
                        check()  # 3.4: nothing derived from the blob is used unless its hash holds
                    if len(vi) > snap.kinds.get("memory", 0):
                        raise CorruptError("vector index snapshot: more vectors than memories",
                                           offset=ref.offset, check="vindex")
                    check_ids_distinct(vi.ids.tobytes(), where=ref.offset)
                    self.vi, self.params, self._vpos = vi, vi.params, after
                    self.snapshot_count = len(vi)
                except CorruptError as e:
                    self.doubt = f"{e}; rebuilt the vector index from the records"
                    log.warning("capsule %s: %s", self.store.path, self.doubt)
        if self._vpos < snap.end:
            try:
                self._catch_up()
            except BaseException:
                # Cut short (Ctrl-C, an error) between inserting entries and noting them, the graph
                # may hold entries twice over on the next catch-up (a close then snapshotted it, and
                # verify refused the file for ever): what this handle built is dropped, loaded again
                # from the snapshot when next asked.
                self.vi, self._vpos, self.snapshot_count, self._gone, self._vouched = None, 0, 0, None, set()
                raise
        return self.vi

    def _catch_up(self) -> None:
        end = self.store.snap.end
        entries: list[Entry] = []
        vecs: list[np.ndarray] = []

        def flush() -> None:
            if entries and self.vi is not None:
                self.vi.add(entries, np.stack(vecs))
            entries.clear()
            vecs.clear()

        # 16.1: only memories with an embedding are entries: the others are not made into objects
        for rid, rec in self._scan(self._vpos, want=lambda kind, v: kind != "memory" or "embedding" in v):
            if rec.kind == "vindex":
                if self.params is None:
                    self.params = _params_of(rec)
                continue
            if rec.kind != "memory" or rec.embedding is None:
                continue
            if self.vi is None:
                # 16.1: a file with embeddings but no vindex record (a 1.0 writer's) uses
                # the defaults with the dimension of its first embedding.
                self.params = self.params or VectorParams(dim=len(rec.embedding))
                self.vi = VectorIndex(self.params)
            if len(rec.embedding) != self.vi.params.dim:
                continue  # 16.1: another dimension is not indexed
            entries.append(Entry.of(rid, rec))
            vecs.append(rec.embedding)
            if len(entries) >= 4096:
                flush()
        flush()
        self._vpos = end

    # --- the lexical index -------------------------------------------------------------
    def docs(self) -> Catalog:
        """The lexical catalog (16.4, 16.8), caught up with the snapshot."""
        return self.lex.get()

    def _lexical_doubt(self, why: str) -> None:
        self.doubt = why if not self.doubt else f"{self.doubt}; {why}"
        log.warning("capsule %s: %s", self.store.path, why)

    # --- filters ------------------------------------------------------------------------
    def _mask(self, n: int, dead: np.ndarray, times: np.ndarray, ttls: np.ndarray, tiers: np.ndarray,
              tag_mask: Any, kinds: np.ndarray | None, flt: Filter, now: int, meta_of: Any) -> np.ndarray:
        """Which of ``n`` entries may be returned. ``dead`` holds positions of dead
        records; ``tag_mask(tag)`` gives the entries carrying a tag."""
        m = np.ones(n, bool)
        m[dead] = False
        has_ttl = ttls > 0
        if has_ttl.any():
            m &= ~(has_ttl & (ttls <= now - times))  # 7.1: expired at time + ttl (a sum past 2^63 would wrap)
        if flt.tiers:
            m &= np.isin(tiers, [TIERS[t] for t in flt.tiers])
        if flt.kinds:
            if kinds is None:
                m &= "memory" in flt.kinds
            else:
                m &= np.isin(kinds, [KIND_CODES[k] for k in flt.kinds if k in KIND_CODES])
        if flt.since is not None:
            m &= times >= flt.since
        if flt.until is not None:
            m &= times <= flt.until
        for t in flt.tags:
            m &= tag_mask(t)
        if flt.any_tags:
            anym = np.zeros(n, bool)
            for t in flt.any_tags:
                anym |= tag_mask(t)
            m &= anym
        if flt.meta:
            needles = tuple(canon.pack(k) + v for k, v in flt.meta)
            for i in np.flatnonzero(m).tolist():
                meta = meta_of(i, needles)
                m[i] = all(k in meta and same_value(meta[k], v) for k, v in flt.meta)
        return m

    def _vector_mask(self, vi: VectorIndex, flt: Filter, now: int) -> np.ndarray | None:
        t = flt.valid_at  # 13.6: the labels the view hides stand for the dead ones
        dead = set() if t is not None else self.dead()
        if not (t is not None or flt.tags or flt.any_tags or flt.tiers or flt.kinds or flt.since is not None
                or flt.until is not None or flt.meta or dead or vi.has_ttl):
            return None
        meta_of = None
        if flt.meta:

            def meta_of(i: int, needles: tuple[bytes, ...] = ()) -> Mapping[str, Any]:
                return self._meta(vi.ids[i], needles)

        if t is not None:
            gone = np.flatnonzero(self.valid.hides(vi, len(vi), lambda: np.frombuffer(vi.ids.tobytes(), "S32"), t))
        else:
            key = (self.store.snap.end, len(vi))
            if self._gone is None or self._gone[0] != key:
                self._gone = (key, vi.labels_in(dead))
            gone = self._gone[1]
        return self._mask(len(vi), gone, vi.times, vi.ttls, vi.tiers, vi.tag_mask, None, flt, now, meta_of)

    # --- the searches --------------------------------------------------------------------
    def vector_search(self, q: Any, k: int, flt: Filter, now: int, ef: int) -> list[tuple[bytes, float, Any]]:
        vi = self.vectors()
        if vi is None:
            return []
        qv = vi.prepare(q)
        mask = self._vector_mask(vi, flt, now)
        found = vi.search(qv, k, mask, ef)
        # 16.3: a snapshot entry is used only once the memory it names agrees with it
        fresh = [lab for lab, _ in found if lab < self.snapshot_count and lab not in self._vouched]
        why = entries_disagree(vi, fresh, self.store.get) if fresh else None
        if why is not None:
            ref = self.store.snap.blobs[BLOB_TYPE]
            self._drop_snapshot(CorruptError(f"vector index snapshot: {why}", offset=ref.offset, check="vindex"))
            return self.vector_search(q, k, flt, now, ef)
        self._vouched.update(fresh)
        return [(vi.ids[label], score, None) for label, score in found]

    def _drop_snapshot(self, e: CorruptError) -> None:
        """Stop using the snapshot (16.2, 16.3): rebuild from the records, and say why."""
        self.doubt = f"{e}; rebuilt the vector index from the records"
        log.warning("capsule %s: %s", self.store.path, self.doubt)
        self.vi, self._vpos, self.snapshot_count, self._gone, self._vouched = None, C.HEADER_SIZE, 0, None, set()

    def lexical_search(self, query: str, k: int, flt: Filter, now: int) -> list[tuple[bytes, float, Any]]:
        try:
            return self._lexical_search(query, k, flt, now)
        except CorruptError as e:
            if e.check != "lexical" or self.lex.cat is None or self.lex.cat.snapshot is None:
                raise
            self.lex.rebuild(e)  # a bound failed in what this query read (16.8)
            return self._lexical_search(query, k, flt, now)

    def _lexical_search(self, query: str, k: int, flt: Filter, now: int) -> list[tuple[bytes, float, Any]]:
        d = self.docs()
        cand, scores = d.scores(query, flt.hidden)
        if len(cand) == 0:
            return []
        m = self.catalog_mask(d, cand, flt, now)
        cand, scores = cand[m], scores[m]
        ids = d.column("ids", cand)
        return [(rid_at(ids, i), s, None) for i, s in _top(scores, ids, k)]

    def catalog_mask(self, d: Catalog, cand: np.ndarray, flt: Filter, now: int) -> np.ndarray:
        """Which catalog documents at ``cand`` (positions ascending) may be returned (16.6)."""
        ids = d.column("ids", cand) if flt.meta else cand[:0]  # meta filters read the records (by id)
        gone = d.dead_mask(cand)
        if flt.hidden:
            gone = gone | d.id_mask(cand, flt.hidden)
        if flt.valid_at is not None:  # 13.6 (1): T filters memories only; a note or decision stays as dead as it is
            mem = d.column("kind", cand) == KIND_CODES["memory"]
            gone = np.where(mem, self.valid.hides(d, d.n, lambda: d.column("ids", np.arange(d.n)),
                                                  flt.valid_at)[cand], gone)
        return self._mask(len(cand), np.flatnonzero(gone), d.column("time", cand),
                          d.column("ttl", cand), d.column("tier", cand), lambda t: d.tag_mask(t, cand),
                          d.column("kind", cand), flt, now, lambda j, nd=(): self._meta(rid_at(ids, j), nd))

    def _meta(self, rid: bytes, needles: tuple[bytes, ...] = ()) -> Mapping[str, Any]:
        """A record's meta, read through the store (checked against its id); ``{}`` undecoded when its
        bytes (its id checked) lack a needle: a wanted key and value side by side, as a canonical map holds them."""
        if needles and (loc := self.store.locate(rid)) is not None:
            raw, bounds = self.store.frame_slots(loc[0])
            data = raw[bounds[loc[1]] : bounds[loc[1] + 1]] if loc[1] + 1 < len(bounds) else b""
            if not all(n in data for n in needles) and any(content_id(k, data) == rid for k in ("memory", "note", "decision")):
                return {}  # a meta filter over 200k candidates decoded every one (11 s)
        rec = self.store.get(rid)
        if rec is None:
            raise CorruptError(f"the search index names record {rid.hex()}, which is not in the capsule",
                               check="vindex")
        return getattr(rec, "meta", None) or {}


def _top(scores: np.ndarray, ids: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The best ``k`` (index, score) by score, ties by id (``S32``), exactly: every tie at the cut is considered."""
    idx = np.arange(len(scores))
    if len(scores) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        idx = np.flatnonzero(scores >= kth)
    # S32 order is byte order for ids of one width; the primary key is the last one
    order = idx[np.lexsort((ids[idx], -scores[idx]))][:k]
    return [(int(i), float(scores[i])) for i in order]


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


fuse = fuse_rrf  # 16.6 for files of minor <= 3 (the name this module always exported)


def search(s: Searcher, query: str | None = None, *, vector: Any = None, k: int = 10, mode: str = "auto",
           ef: int = 64, embedder: str | Embedder | None = None, now: int | None = None, fusion: str | None = None,
           lexical_weight: float | None = None, **filters: Any) -> Results[Hit]:
    """See :meth:`Capsule.search`."""
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if type(k) is not int or not 1 <= k <= 10_000:
        raise UsageError("k must be an integer in 1..10000")
    if type(ef) is not int or not 1 <= ef <= 100_000:
        raise UsageError("ef must be an integer in 1..100000")
    fusion_mod.check_query_text(query)
    fusion, lexical_weight = parse_fusion(fusion, lexical_weight)
    flt = Filter.build(**filters)
    st = s.store
    st.check_open()
    if flt.valid_at is not None:
        now = flt.valid_at  # 13.6: a ttl ends a memory's window at time + ttl, judged at the valid time
    elif now is None:
        now = st.snap.commit.time if st.pinned and st.snap.commit else st.clock()
    text = query or ""
    s.notice = None
    if vector is None and not text.strip():  # nothing to rank by: list, newest first
        if fusion is not None or lexical_weight is not None:
            raise UsageError("fusion and lexical weight apply to hybrid search, which needs a query")
        return Results((Hit(rid, score, rec, st) for rid, score, rec in browse(s, k, flt, now)),
                       Ranking("list", why="no query text or vector: the records passing the filters, "
                                           "newest first"))
    if vector is not None and mode != "lexical":
        fusion_mod.check_query_vector(vector)
    cfg = s.config() if vector is None and mode in ("auto", "hybrid") else None
    name = embedder or (cfg.embedder if cfg is not None else "")
    how = plan(mode, minor=st.snap.header.minor, text=bool(text.strip()), vector=vector is not None,
               embedder=name if isinstance(name, str) else name.name, has_vectors=cfg is not None,
               fusion=fusion, lexical_weight=lexical_weight)
    if how.mode == "hybrid" and not text.strip():
        raise UsageError("hybrid search needs a query text (for its lexical half)")
    w, deep = how.lexical_weight, max(50, 4 * k)
    # 16.6: a lexical weight of 1 is the lexical ranking: the query is not even embedded
    if how.mode != "lexical" and w != 1.0 and vector is None:
        try:
            vector = _embed_query(s, text, embedder)
        except UsageError as e:
            if mode != "auto":
                raise
            # auto on a host without the capsule's embedder: words still work
            s.notice = f"searched by words only: {e}"
            how = Ranking("lexical", why=f"auto: {s.notice}")
    if how.mode == "lexical" or w == 1.0:
        got = s.lexical_search(text, k, flt, now)
    elif how.mode == "vector":
        got = s.vector_search(vector, k, flt, now, ef)
    elif w is None:  # 16.6: reciprocal rank
        got = fuse_rrf([s.vector_search(vector, deep, flt, now, ef), s.lexical_search(text, deep, flt, now)], k)
    else:
        lex = s.lexical_search(text, deep, flt, now) if w > 0.0 else []
        got = fuse_weighted(lex, s.vector_search(vector, deep, flt, now, ef), w, k)
    return Results((Hit(rid, score, rec, st) for rid, score, rec in got), how)


def _embed_query(s: Searcher, text: str, embedder: str | Embedder | None) -> np.ndarray:
    p = s.config()
    if p is None:
        raise UsageError("this capsule has no vectors: use --mode lexical (or add memories with embeddings)")
    name = embedder or p.embedder
    if not name:
        raise UsageError("this capsule's vectors came from the agent, not a named embedder: pass the query as a "
                         "vector (--vector), or name the embedder that made them (--embedder)")
    asked = embedder if isinstance(embedder, str) else getattr(embedder, "name", None)
    if embedder is not None and p.embedder and asked != p.embedder:  # 16.5: unlike vectors, whatever the dim
        raise UsageError(f"this capsule's vectors were made by {p.embedder}; a query embedded by {asked} would "
                         f"not be comparable (name {p.embedder}, or pass a query vector)")
    e = get_embedder(name)
    if e.dim != p.dim:
        raise UsageError(f"embedder {e.name} gives {e.dim}-dimensional vectors; this capsule's have {p.dim}")
    # 16.5: a model that embeds queries unlike stored texts (e5's "query: ") has embed_query
    run = getattr(e, "embed_query", None)
    out: np.ndarray = np.asarray(run([text]) if callable(run) else e.embed([text]), np.float32)[0]
    return out


__all__ = ["Filter", "Hit", "Ranking", "Results", "Searcher", "fuse", "search", "TIER_NAMES"]
