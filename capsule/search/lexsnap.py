"""The lexical catalog in segments, and its snapshot blob (spec 16.4, 16.8, type ``bm25``).

Theory of operation
-------------------
The lexical catalog (16.4) holds one document per memory, note and decision,
in commit order. It is kept as a list of :class:`Segment`: contiguous runs of
documents, each with its own column arrays (id, time, ttl, token count, tier,
kind), its own sorted term dictionary with postings (document positions
ascending, term frequencies) and its own tag dictionary. A segment is either
built here from records (:func:`build`, :func:`merge`) or read from a snapshot
blob (:func:`decode`).

A blob is small (16.8): the postings are Elias-Fano blocks (``lexcodec``), one
per term, found from the dictionary's document frequencies, and the columns
are bytes where they can be. Decoding a blob costs a hash, the columns and the
dictionary (a few NumPy passes over arrays of one entry per document or term);
a query decodes only the blocks of its own terms, and a merge decodes every
block of the segments it absorbs, all at once.

A segment of a 1.4 file also keeps each memory's session key (the canonical
bytes of ``meta["session"]``: a sorted table of the distinct keys and, for the
documents that have one, an index into it), which the context window of 16.4.1
needs; a file before 1.4 ranks with tokenizer 1 and no window, and its blob has
the 1.2 layout (``CAPLEX02``) without them.

A snapshot blob is one segment plus the list of earlier ``bm25`` blobs (its
``base``) holding the documents before it, so a writer appends the documents
since the newest snapshot as a new segment instead of rewriting the catalog.
Segments are merged like the index tables (9.3): the new one absorbs each
newest older one no more than twice its size, so a catalog of n documents has
at most log2(n) segments and each document is rewritten O(log n) times.

Scores do not depend on how the catalog is cut: BM25 needs the document count,
the token total and each term's document frequency over the whole catalog,
which are sums over segments, and a document's score is summed over the query
terms in sorted order whichever segment holds it (16.4).

A blob is untrusted input (17.4). :func:`decode` checks every bound that an
array access depends on before returning; the blocks a query reads are checked
when they are decoded (positions in range and ascending, term frequencies
consistent), so loading stays O(documents + dictionary). Whether the content
matches the records is checked by the verifier, which rebuilds the segment.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING

from ..core.errors import CorruptError, NonCanonicalError
from ..core.lazy import lazy
from ..format import canonical as canon
from ..format.blob import BlobRef, part_count
from . import lexcodec as lc
from .tokenize import TOKENIZER_1, TOKENIZERS, Tokenizer

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")

BLOB_TYPE = "bm25"  # 16.8
MAGIC = b"CAPLEX02"  # 16.8: the 1.2 layout (tokenizer 1, no session keys)
MAGIC_3 = b"CAPLEX03"  # 16.8 (1.4): with the documents' session keys (16.4.1)
#: 16.8: earlier blobs one snapshot may build on (the same cap as index tables, 11)
MAX_BASE = 64
#: 16.8: every count and offset of a snapshot is a u32
MAX_COUNT = (1 << 32) - 1
_KEYS = frozenset({"base", "docs", "escapes", "post_bytes", "reverts", "start", "tag_bytes", "tag_post_bytes",
                   "tags", "term_bytes", "terms", "tokenizer", "tokens", "ttls"})
_KEYS_3 = _KEYS | {"session_bytes", "session_docs", "sessions"}
_PART_MIN = 66  # 9.2: frame overhead + the part header's length word
_TIER_KINDS = 3  # 16.8 `tk`: tier + 3 * kind

#: One document as the catalog needs it: id, text, time, ttl (0: none), tier code, kind code, tags
#: and session key (16.4.1: the canonical bytes of a memory's ``meta["session"]``, or None).
Doc = tuple[bytes, str, int, int, int, int, tuple[str, ...], bytes | None]


def _bad(msg: str, where: int) -> CorruptError:
    return CorruptError(f"lexical snapshot: {msg}", offset=where, check="lexical")


def _pad(n: int) -> int:
    return (n + 7) & ~7


def _excl(a: np.ndarray) -> np.ndarray:
    """[0, a0, a0 + a1, ...] (int64): offsets from sizes."""
    out = np.zeros(len(a) + 1, np.int64)
    np.cumsum(a, out=out[1:])
    return out


@dataclass(slots=True, eq=False)
class Dictionary:
    """Sorted distinct strings (a segment's terms or tags), each with its posting list.

    The lists are held decoded (``docs``, ``tf``: back to back in string order,
    string i's at ``pos[i] .. pos[i + 1] - 1``) or coded (``region``: the 16.8
    blocks back to back, block i at bytes ``at[i] .. at[i + 1] - 1``)."""

    text: bytes  # the strings' UTF-8, sorted, back to back
    off: np.ndarray  # int64 [k + 1]: string i is text[off[i] : off[i + 1]]
    df: np.ndarray  # int64 [k]: documents holding each string
    extra: np.ndarray | None  # int64 [k]: its tf summed, minus df (terms); None for tags
    pos: np.ndarray  # int64 [k + 1]: offsets of the lists in docs / tf
    docs: np.ndarray | None = None  # uint32 [sum df]: positions, ascending per string
    tf: np.ndarray | None = None  # uint32 [sum df]
    region: np.ndarray | None = None  # uint8: the coded blocks
    at: np.ndarray | None = None  # int64 [k + 1]
    _strs: list[bytes] | None = field(default=None, repr=False)

    @classmethod
    def decoded(cls, strs: Sequence[bytes], df: np.ndarray, extra: np.ndarray | None, docs: np.ndarray,
                tf: np.ndarray) -> Dictionary:
        text, off = _table(strs)
        return cls(text, off, df, extra, _excl(df), docs.astype(np.uint32), tf.astype(np.uint32),
                   _strs=list(strs))

    def strings(self) -> list[bytes]:
        if self._strs is None:
            o = self.off.tolist()
            self._strs = [self.text[o[i] : o[i + 1]] for i in range(len(o) - 1)]
        return self._strs

    def find(self, key: bytes) -> int:
        """Binary search; the index of ``key`` or -1. A string is compared by its first
        ``len(key) + 1`` bytes, which order it against ``key`` as the whole string would, so a
        long string in a hostile file costs no more to pass than a short one."""
        text, off, span = self.text, self.off, len(key) + 1
        lo, hi = 0, len(off) - 1
        while lo < hi:
            mid = (lo + hi) >> 1
            a = off.item(mid)
            if text[a : min(off.item(mid + 1), a + span)] < key:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(off) - 1:
            a = off.item(lo)
            if text[a : min(off.item(lo + 1), a + span)] == key:
                return lo
        return -1

    def one(self, i: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """String ``i``'s positions and tf (a coded block is decoded and checked: CodeError)."""
        if self.docs is not None and self.tf is not None:
            a, b = self.pos.item(i), self.pos.item(i + 1)
            return self.docs[a:b], self.tf[a:b]
        assert self.region is not None and self.at is not None
        return lc.decode_one(self.region[self.at.item(i) : self.at.item(i + 1)], n, self.df.item(i),
                             0 if self.extra is None else self.extra.item(i))

    def lists(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Every list, decoded and checked (CodeError); kept decoded from then on."""
        if self.docs is None:
            assert self.region is not None
            self.docs, self.tf = lc.decode_blocks(self.region, n, self.df, self.extra)
        assert self.tf is not None
        return self.docs, self.tf

    def coded(self, n: int) -> bytes:
        """16.8: the blocks, back to back."""
        if self.region is not None:
            return self.region.tobytes()
        assert self.docs is not None and self.tf is not None
        return lc.encode_blocks(n, self.pos, self.docs, None if self.extra is None else self.tf)


@dataclass(slots=True, eq=False)
class Sessions:
    """16.4.1: the session keys of a segment's documents: the distinct keys, sorted and back
    to back (key i is ``text[off[i] : off[i + 1]]``), and the positions of the documents
    that have one (ascending) with each one's key index."""

    text: bytes
    off: np.ndarray  # int64 [s + 1]
    doc: np.ndarray  # int64 [m]
    ix: np.ndarray  # int64 [m]

    @classmethod
    def of(cls, keys: Sequence[bytes | None] | dict[int, bytes]) -> Sessions:
        """From each document's key or None, or from {document: key} for those that have one
        (ascending: most documents have none, and a million Nones need not be listed)."""
        if isinstance(keys, dict):
            doc, have = list(keys), list(keys.values())
        else:
            doc = [i for i, k in enumerate(keys) if k is not None]
            have = [k for k in keys if k is not None]
        table = sorted(set(have))
        rank = {k: i for i, k in enumerate(table)}
        text, off = _table(table)
        return cls(text, off, np.array(doc, np.int64), np.fromiter(map(rank.__getitem__, have), np.int64, len(doc)))

    def keys(self) -> list[bytes]:
        o = self.off.tolist()
        return [self.text[o[i] : o[i + 1]] for i in range(len(o) - 1)]


@dataclass(slots=True, eq=False)
class Segment:
    """Documents ``start .. start + n - 1`` of the catalog, with their postings."""

    start: int
    ids: np.ndarray  # S32 [n]
    time: np.ndarray  # int64 [n]
    ttl: np.ndarray  # int64 [n], 0 when none
    lens: np.ndarray  # int64 [n]: tokens per document
    tier: np.ndarray  # uint8 [n]
    kind: np.ndarray  # uint8 [n]
    terms: Dictionary
    tags: Dictionary
    tokens: int
    ref: BlobRef | None = None  # the blob it was read from; None when built here
    checked: bool = True  # every block and dictionary order known good (built here, or check_all)
    base: tuple[BlobRef, ...] = ()
    reverts: tuple[bytes, ...] = ()  # a blob's: the ids of the revert records before it, in commit order (16.8)
    tokenizer: str = TOKENIZER_1  # 16.4: what its terms come from
    sessions: Sessions | None = None  # 16.4.1 (1.4): its documents' session keys; None: not kept (CAPLEX02)

    @property
    def n(self) -> int:
        return len(self.ids)

    def _where(self) -> int:
        return self.ref.offset if self.ref else 0

    def postings(self, term: bytes) -> tuple[np.ndarray, np.ndarray] | None:
        """(positions in this segment, term frequencies) of ``term``, or None."""
        i = self.terms.find(term)
        if i < 0:
            return None
        try:
            return self.terms.one(i, self.n)  # 16.8: a reader checks what it reads before using it
        except lc.CodeError as e:
            raise _bad(f"postings of a term: {e}", self._where()) from None

    def tag_docs(self, tag: bytes) -> np.ndarray | None:
        i = self.tags.find(tag)
        if i < 0:
            return None
        try:
            return self.tags.one(i, self.n)[0]
        except lc.CodeError as e:
            raise _bad(f"postings of a tag: {e}", self._where()) from None

    def check_all(self) -> None:
        """Every bound and order of 16.8 over the whole segment (a writer merging a
        segment read from the file checks it first; a query checks only what it reads)."""
        if self.checked:
            return
        for d, name in ((self.terms, "terms"), (self.tags, "tags")):
            strs = d.strings()
            if any(a >= b for a, b in zip(strs, strs[1:], strict=False)):
                raise _bad(f"{name} are not sorted and distinct", self._where())
        keys = self.sessions.keys() if self.sessions is not None else []
        if any(a >= b for a, b in zip(keys, keys[1:], strict=False)):
            raise _bad("session keys are not sorted and distinct", self._where())
        for d, name in ((self.terms, "terms"), (self.tags, "tags")):
            try:
                d.lists(self.n)
            except lc.CodeError as e:
                raise _bad(f"postings of the {name}: {e}", self._where()) from None
        self.checked = True


def _table(strings: Sequence[bytes]) -> tuple[bytes, np.ndarray]:
    off = np.zeros(len(strings) + 1, np.int64)
    if strings:
        off[1:] = np.cumsum(np.fromiter(map(len, strings), np.int64, len(strings)))
    return b"".join(strings), off


def _postings(sid: np.ndarray, doc: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                            np.ndarray]:
    """From each occurrence's string (0..k-1) and document (0..n-1): per string its document
    count and its tf summed minus that, and the (position, tf) pairs, positions ascending
    per string."""
    if not n or not len(sid):
        z = np.zeros(k, np.int64)
        return z, z.copy(), np.zeros(0, np.int64), np.zeros(0, np.int64)
    s = np.multiply(sid, n, dtype=np.int64)  # in place from here: one array an occurrence, not three
    s += doc
    s.sort()
    first = np.empty(len(s), bool)
    first[0] = True
    np.not_equal(s[1:], s[:-1], out=first[1:])
    at = np.flatnonzero(first)
    del first
    key = s[at]
    tf = np.diff(at, append=len(s))
    del s, at
    bounds = np.searchsorted(key, np.arange(k + 1, dtype=np.int64) * n)  # every string occurs: no empty list
    df = np.diff(bounds)
    extra = np.add.reduceat(tf - 1, bounds[:-1]) if k else np.zeros(0, np.int64)
    key -= np.repeat(np.arange(k, dtype=np.int64) * n, df)
    return df, extra, key, tf


def build(docs: Sequence[Doc], start: int = 0, tok: Tokenizer | None = None, sessions: bool = False) -> Segment:
    """16.4: the segment of ``docs`` (in catalog order) starting at position ``start``, its
    terms from ``tok`` (tokenizer 1 by default), with the session keys when ``sessions``
    (16.4.1; a Doc of 7 fields has none)."""
    n = len(docs)
    return build_columns(b"".join(d[0] for d in docs), [d[1] for d in docs],
                         np.fromiter((d[2] for d in docs), np.int64, n), np.fromiter((d[3] for d in docs), np.int64, n),
                         np.fromiter((d[4] for d in docs), np.uint8, n), np.fromiter((d[5] for d in docs), np.uint8, n),
                         [d[6] for d in docs], start, tok,
                         [d[7] if len(d) > 7 else None for d in docs] if sessions else None)


def build_columns(ids: bytes | bytearray | memoryview, texts: Sequence[str], time: np.ndarray, ttl: np.ndarray, tier: np.ndarray,
                  kind: np.ndarray, tag_lists: Sequence[Sequence[str]], start: int = 0, tok: Tokenizer | None = None,
                  sessions: Sequence[bytes | None] | dict[int, bytes] | None = None) -> Segment:
    """:func:`build` from columns: ids back to back, texts, times, ttls (0: none), tier and
    kind codes, tags, and (1.4) each document's session key or None (or {document: key})."""
    n = len(texts)
    tok = tok or TOKENIZERS[TOKENIZER_1]
    terms, tid, lens = tok.term_ids(texts)
    df, extra, pdoc, ptf = _postings(tid, np.repeat(np.arange(n, dtype=np.int64), lens), n, len(terms))
    del tid
    tags = sorted(set(chain.from_iterable(tag_lists)))
    flat = list(chain.from_iterable(tag_lists))
    gid = {t: i for i, t in enumerate(tags)}
    gdf, _, gdoc, gtf = _postings(np.fromiter(map(gid.__getitem__, flat), np.int64, len(flat)),
                                  np.repeat(np.arange(n, dtype=np.int64), np.fromiter(map(len, tag_lists), np.int64, n)),
                                  n, len(tags))
    return Segment(
        start=start, ids=np.frombuffer(ids, "S32") if n else np.zeros(0, "S32"), time=time, ttl=ttl, lens=lens,
        tier=tier, kind=kind, terms=Dictionary.decoded(terms, df, extra, pdoc, ptf),
        tags=Dictionary.decoded([t.encode() for t in tags], gdf, None, gdoc, gtf), tokens=int(lens.sum()),
        tokenizer=tok.id, sessions=None if sessions is None else Sessions.of(sessions),
    )


def _merge_dicts(segs: Sequence[Segment], ds: Sequence[Dictionary], start: int) -> Dictionary:
    """The union of the segments' dictionaries, each string's lists in segment order."""
    strs = [d.strings() for d in ds]
    union = sorted(set(chain.from_iterable(strs)))
    rank = {t: i for i, t in enumerate(union)}
    # one group per (segment, string): sorted by string, then segment, they give the merged lists
    g_rank = np.concatenate([np.fromiter(map(rank.__getitem__, st), np.int64, len(st)) for st in strs])
    g_seg = np.concatenate([np.full(len(st), i, np.int64) for i, st in enumerate(strs)])
    lists = [d.lists(s.n) for d, s in zip(ds, segs, strict=True)]
    base = _excl(np.array([len(x[0]) for x in lists], np.int64))
    g_src = np.concatenate([d.pos[:-1] + base[i] for i, d in enumerate(ds)])
    g_len = np.concatenate([d.df for d in ds])
    order = np.lexsort((g_seg, g_rank))
    sel = lc._runs(g_src[order], g_len[order])
    docs = np.concatenate([x[0].astype(np.int64) + (s.start - start) for x, s in zip(lists, segs, strict=True)])[sel]
    tf = np.concatenate([x[1] for x in lists])[sel]
    k = len(union)
    df = np.bincount(g_rank, weights=g_len, minlength=k).astype(np.int64)
    extra = None
    if ds[0].extra is not None:
        extra = np.bincount(g_rank, weights=np.concatenate([d.extra for d in ds if d.extra is not None]),
                            minlength=k).astype(np.int64)
    return Dictionary.decoded(union, df, extra, docs, tf)


def _merge_sessions(segs: Sequence[Segment], start: int) -> Sessions | None:
    """The session keys of consecutive segments as one table (16.4.1), as Sessions.of would make it."""
    if segs[0].sessions is None:
        return None
    tables = [s.sessions.keys() for s in segs if s.sessions is not None]
    union = sorted(set(chain.from_iterable(tables)))
    rank = {k: i for i, k in enumerate(union)}
    docs, ixs = [], []
    for s, table in zip(segs, tables, strict=True):
        assert s.sessions is not None
        docs.append(s.sessions.doc.astype(np.int64) + (s.start - start))
        ixs.append(np.fromiter(map(rank.__getitem__, table), np.int64, len(table))[s.sessions.ix.astype(np.int64)])
    text, off = _table(union)
    return Sessions(text, off, np.concatenate(docs), np.concatenate(ixs))


def merge(segs: Sequence[Segment]) -> Segment:
    """One segment holding the documents of consecutive ``segs``, as :func:`build` would make it."""
    if len(segs) == 1:
        return segs[0]
    start = segs[0].start
    if len({s.tokenizer for s in segs}) != 1 or len({s.sessions is None for s in segs}) != 1:
        raise ValueError("segments of different tokenizers or layouts do not merge")
    if not sum(s.n for s in segs):
        return build([], start, TOKENIZERS[segs[0].tokenizer], segs[0].sessions is not None)
    cat = np.concatenate
    return Segment(
        start=start, ids=cat([s.ids for s in segs]), time=cat([s.time for s in segs]).astype(np.int64),
        ttl=cat([s.ttl for s in segs]).astype(np.int64), lens=cat([s.lens for s in segs]).astype(np.int64),
        tier=cat([s.tier for s in segs]).astype(np.uint8), kind=cat([s.kind for s in segs]).astype(np.uint8),
        terms=_merge_dicts(segs, [s.terms for s in segs], start), tags=_merge_dicts(segs, [s.tags for s in segs], start),
        tokens=sum(s.tokens for s in segs), tokenizer=segs[0].tokenizer, sessions=_merge_sessions(segs, start),
    )


# --- the blob -------------------------------------------------------------------------

def _sections(h: dict[str, int]) -> list[tuple[str, int]]:
    """16.8: the sections in order and their sizes in bytes (with the session sections when
    the header has their counts: CAPLEX03)."""
    n, t, g = h["docs"], h["terms"], h["tags"]
    ses = [("ses_doc", 4 * h["session_docs"]), ("ses_ix", 4 * h["session_docs"]), ("ses_len", h["sessions"]),
           ("ses_text", h["session_bytes"])] if "sessions" in h else []
    return [("ids", 32 * n), ("time", 8 * n), ("tk", n), ("len", n), ("ttl_doc", 4 * h["ttls"]),
            ("ttl", 8 * h["ttls"]), *ses, ("term_len", t), ("term_df", t), ("term_extra", t),
            ("term_text", h["term_bytes"]), ("postings", h["post_bytes"]), ("tag_len", g), ("tag_df", g),
            ("tag_text", h["tag_bytes"]), ("tag_postings", h["tag_post_bytes"]), ("escapes", 4 * h["escapes"]),
            ("reverts", 32 * h["reverts"])]


_SMALL = ("len", "term_len", "term_df", "term_extra", "tag_len", "tag_df")  # 16.8: the escapes, in this order
_SMALL_3 = (*_SMALL, "ses_len")  # CAPLEX03: then the session keys' lengths


def encode(seg: Segment, base: Sequence[BlobRef], reverts: Sequence[bytes]) -> bytes:
    """16.8: the snapshot blob of ``seg`` on top of the ``base`` blobs, naming the revert
    records before it (in commit order)."""
    return b"".join(encode_parts(seg, base, reverts))


def _view(a: np.ndarray, dtype: str | None = None) -> memoryview:
    """The bytes of ``a`` (as ``dtype``), without a copy when it is stored so already."""
    return memoryview(np.ascontiguousarray(a, dtype)).cast("B")  # type: ignore[arg-type]


def encode_parts(seg: Segment, base: Sequence[BlobRef], reverts: Sequence[bytes]) -> list[bytes | memoryview]:
    """:func:`encode` as pieces to be written back to back: the segment's big columns are
    viewed where they lie, not copied (F22)."""
    if len(base) > MAX_BASE:
        raise ValueError("too many base snapshots")
    n, terms, tags, ses = seg.n, seg.terms, seg.tags, seg.sessions
    assert terms.extra is not None
    small = [lc.small_encode(v) for v in (seg.lens, np.diff(terms.off), terms.df, terms.extra, np.diff(tags.off),
                                            tags.df, *([] if ses is None else [np.diff(ses.off)]))]
    escapes = np.concatenate([e for _, e in small]).astype("<u4")
    has_ttl = np.flatnonzero(seg.ttl > 0)
    post, tag_post = terms.coded(n), tags.coded(n)
    head: dict[str, object] = {
        "base": [[r.offset, r.parts, r.size, r.id] for r in base], "docs": n, "escapes": len(escapes),
        "post_bytes": len(post), "reverts": len(reverts), "start": seg.start, "tag_bytes": len(tags.text),
        "tag_post_bytes": len(tag_post), "tags": len(tags.df), "term_bytes": len(terms.text),
        "terms": len(terms.df), "tokenizer": seg.tokenizer, "tokens": seg.tokens, "ttls": len(has_ttl),
    }
    ses_parts: list[bytes] = []
    if ses is not None:
        head |= {"session_bytes": len(ses.text), "session_docs": len(ses.doc), "sessions": len(ses.off) - 1}
        ses_parts = [ses.doc.astype("<u4").tobytes(), ses.ix.astype("<u4").tobytes(), small[6][0], ses.text]
    header = canon.pack(dict(sorted(head.items())))  # 5.1: keys in byte order
    out: list[bytes | memoryview] = [MAGIC if ses is None else MAGIC_3, struct.pack("<I", len(header)), header, bytes(-(12 + len(header)) % 8)]
    tk = seg.tier.astype(np.uint8) + _TIER_KINDS * seg.kind.astype(np.uint8)
    parts: list[bytes | memoryview] = [_view(seg.ids), _view(seg.time, "<i8"), tk.astype(np.uint8).tobytes(), small[0][0],
             has_ttl.astype("<u4").tobytes(), seg.ttl[has_ttl].astype("<i8").tobytes(), *ses_parts, small[1][0],
             small[2][0], small[3][0], terms.text, post, small[4][0], small[5][0], tags.text, tag_post,
             escapes.tobytes(), b"".join(reverts)]
    for raw in parts:
        out += [raw, bytes(-len(raw) % 8)]
    return out


def peek(head: bytes | memoryview | np.ndarray) -> dict[str, object] | None:
    """The header of a snapshot (the first bytes suffice), unchecked; None when unreadable."""
    raw = memoryview(head).cast("B")  # type: ignore[arg-type]
    if len(raw) < 12 or bytes(raw[:8]) not in (MAGIC, MAGIC_3):
        return None
    hlen = struct.unpack_from("<I", raw, 8)[0]
    if 12 + hlen > len(raw):
        return None
    try:
        h = canon.decode(bytes(raw[12 : 12 + hlen]))
    except NonCanonicalError:
        return None
    return h if isinstance(h, dict) else None


def layout(blob: bytes | np.ndarray, where: int = 0) -> tuple[dict[str, object], dict[str, tuple[int, int]]]:
    """The checked header and where each section lies (offset, size) (16.8)."""
    buf = np.frombuffer(blob, np.uint8)
    if len(buf) < 12 or buf[:8].tobytes() not in (MAGIC, MAGIC_3):
        raise _bad("bad magic", where)
    keys = _KEYS if buf[:8].tobytes() == MAGIC else _KEYS_3
    hlen = int(buf[8:12].view("<u4")[0])
    if 12 + hlen > len(buf):
        raise _bad("header length out of range", where)
    try:
        h = canon.decode(buf[12 : 12 + hlen].tobytes())
    except NonCanonicalError as e:
        raise _bad(str(e), where) from None
    if not isinstance(h, dict) or set(h) != keys or not isinstance(h["tokenizer"], str):
        raise _bad("header fields are wrong", where)
    if any(type(h[k]) is not int or not 0 <= h[k] <= MAX_COUNT for k in keys - {"base", "tokenizer", "tokens"}):
        raise _bad("a count is out of range", where)
    if type(h["tokens"]) is not int or h["tokens"] < 0:
        raise _bad("token total out of range", where)
    pos = _pad(12 + hlen)
    where_is: dict[str, tuple[int, int]] = {}
    for name, size in _sections(h):
        if pos + size > len(buf):
            raise _bad(f"section {name} runs past the blob", where)
        where_is[name] = (pos, size)
        pos = _pad(pos + size)
    if pos != len(buf):
        raise _bad("blob has trailing bytes", where)
    return h, where_is


def decode(blob: bytes | np.ndarray, where: int = 0) -> Segment:
    """Read a snapshot and check its bounds (16.8); CorruptError on any doubt.

    The tokenizer is not checked here: a caller compares ``peek(blob)["tokenizer"]``
    first (another tokenizer is not damage, the blob is just not usable)."""
    h, at = layout(blob, where)
    small_names = _SMALL_3 if "sessions" in h else _SMALL
    base = _parse_base(h["base"], where)
    buf = np.frombuffer(blob, np.uint8)
    n, tokens = h["docs"], h["tokens"]
    assert isinstance(n, int) and isinstance(tokens, int)

    def sec(name: str) -> np.ndarray:
        a, size = at[name]
        return buf[a : a + size]

    try:
        # 16.8: the escapes are the values of the small ints' 255 bytes, in section order
        raw_small = [sec(name) for name in small_names]
        cuts = _excl(np.array([lc.small_escapes(b) for b in raw_small], np.int64))
        esc = sec("escapes").view("<u4")
        if cuts[-1] != len(esc):
            raise lc.CodeError("the escapes are not those of the small ints")
        lens, term_len, df, extra, tag_len, tag_df, *ses_len = (lc.small_decode(b, esc[cuts[i] : cuts[i + 1]])
                                                                for i, b in enumerate(raw_small))
        term_off, tag_off = _excl(term_len), _excl(tag_len)
        if (len(term_len) and int(term_len.min()) < 1) or term_off[-1] != h["term_bytes"] \
                or (len(tag_len) and int(tag_len.min()) < 1) or tag_off[-1] != h["tag_bytes"]:
            raise lc.CodeError("string lengths do not add up to their section")
        for d in (df, tag_df):
            if len(d) and (int(d.min()) < 1 or int(d.max()) > n):
                raise lc.CodeError("a document frequency is out of range")
        if int(lens.sum()) != tokens or int(df.sum()) + int(extra.sum()) != tokens:
            raise lc.CodeError("token total is not the sum of the document lengths and of the term frequencies")
        term_at, tag_at = _excl(lc.block_sizes(n, df, extra)), _excl(lc.block_sizes(n, tag_df))
        if term_at[-1] != h["post_bytes"] or tag_at[-1] != h["tag_post_bytes"]:
            raise lc.CodeError("posting blocks do not fill their section")
    except lc.CodeError as e:
        raise _bad(str(e), where) from None
    tk, ttl_doc, ttl_val = sec("tk"), sec("ttl_doc").view("<u4"), sec("ttl").view("<i8")
    if n and int(tk.max()) >= _TIER_KINDS * _TIER_KINDS:
        raise _bad("tier or kind out of range", where)
    if len(ttl_doc) and (int(ttl_doc[-1]) >= n or bool(np.any(ttl_doc[1:] <= ttl_doc[:-1]))
                         or int(ttl_val.min()) < 1):
        raise _bad("ttl out of range", where)
    ttl = np.zeros(n, np.int64)
    ttl[ttl_doc] = ttl_val
    raw_reverts = sec("reverts").tobytes()
    sessions = None
    if ses_len:
        ses_off, ses_doc, ses_ix = _excl(ses_len[0]), sec("ses_doc").view("<u4"), sec("ses_ix").view("<u4")
        if (len(ses_len[0]) and int(ses_len[0].min()) < 1) or ses_off[-1] != h["session_bytes"]:
            raise _bad("session key lengths do not add up to their section", where)
        if len(ses_doc) and (int(ses_doc[-1]) >= n or bool(np.any(ses_doc[1:] <= ses_doc[:-1]))
                             or int(ses_ix.max()) >= len(ses_len[0])):
            raise _bad("session keys out of range", where)
        sessions = Sessions(sec("ses_text").tobytes(), ses_off, ses_doc.astype(np.int64), ses_ix.astype(np.int64))
    return Segment(
        start=h["start"], ids=sec("ids").view("S32"), time=sec("time").view("<i8"), ttl=ttl, lens=lens,  # type: ignore[arg-type]
        tier=tk % _TIER_KINDS, kind=tk // _TIER_KINDS,
        terms=Dictionary(sec("term_text").tobytes(), term_off, df, extra, _excl(df), region=sec("postings"),
                         at=term_at),
        tags=Dictionary(sec("tag_text").tobytes(), tag_off, tag_df, None, _excl(tag_df), region=sec("tag_postings"),
                        at=tag_at),
        tokens=tokens, checked=False, base=base,
        reverts=tuple(raw_reverts[i : i + 32] for i in range(0, len(raw_reverts), 32)),
        tokenizer=str(h["tokenizer"]), sessions=sessions,
    )


def _parse_base(v: object, where: int) -> tuple[BlobRef, ...]:
    if not isinstance(v, list) or len(v) > MAX_BASE:
        raise _bad("base list is malformed", where)
    out: list[BlobRef] = []
    for e in v:
        if (not isinstance(e, list) or len(e) != 4 or any(type(x) is not int for x in e[:3])
                or not isinstance(e[3], bytes) or len(e[3]) != 32):
            raise _bad("base entry is malformed", where)
        at, parts, size, bid = e
        # 16.8: oldest first, each a whole blob before the next (checked against the file by the reader)
        if size < 0 or parts != part_count(size) or (out and at < out[-1].offset + out[-1].size + _PART_MIN * out[-1].parts):
            raise _bad("base entry is out of range", where)
        out.append(BlobRef(BLOB_TYPE, at, parts, size, bid))
    return tuple(out)


__all__ = ["BLOB_TYPE", "Dictionary", "Doc", "MAGIC", "MAGIC_3", "Segment", "Sessions", "build", "build_columns", "decode",
           "encode", "layout", "merge", "peek"]
