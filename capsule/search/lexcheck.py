"""Deep verification of lexical snapshots against the records they cover (spec 13.3, 16.8).

The verifier walks the file once; it tells a :class:`LexicalCheck` where each
searchable record lies and which records are reverts (``record``), and how
many of each precede each BLOB frame (``blob_frame``). When an INDEX names a ``bm25`` blob, ``check`` decodes
it, checks every bound and order of 16.8, that its base blobs are the earlier
snapshots holding the documents before it, that it covers exactly the
searchable records and names exactly the revert records before its first
BLOB frame, and then rebuilds its segment from those records with the tokenizer
it names (and its session keys, CAPLEX03) and compares bytes: a writer's
snapshot is a function of the records (16.8), so anything else is the writer's
fault. Each blob is rebuilt once, so verification costs what writing the
snapshots cost. A blob of a tokenizer this verifier cannot run (an unknown
name, or tokenizer 2 without its stemmer) is checked for its bounds only.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from itertools import repeat
from typing import Any

import msgpack
import msgspec

from ..core import constants as C
from ..core.errors import CorruptError
from ..format import canonical as canon
from ..format.blob import BlobRef, read_blob
from ..format.frames import raw_payload
from ..format.scan import Source, read_frame_at
from .catalog import KIND_CODES
from .lexsnap import BLOB_TYPE, Doc, Segment, build, decode, encode, peek
from .tokenize import available
from .vindex import TIERS


class LexicalCheck:
    def __init__(self, h: Source, max_frame: int, seed: bytes | None = None) -> None:
        self.h = h
        self.max_frame = max_frame
        self.seed = seed  # 4.2: the chain value before frame 0 (the file's chain seed)
        self._frames = array("q")  # per searchable record, in commit order: its RECORDS frame
        self._slots = array("q")  # and its slot there
        self._ids = bytearray()  # and its id
        self._reverts: list[bytes] = []  # ids of the revert records, in commit order
        self._marks: dict[int, tuple[int, int]] = {}  # BLOB frame -> searchable records, reverts before it
        self._done: dict[BlobRef, Segment] = {}

    def record(self, kind: str, rid: bytes, frame: int, slot: int) -> None:
        if kind == "revert":
            self._reverts.append(rid)
        elif kind in KIND_CODES:
            self._frames.append(frame)
            self._slots.append(slot)
            self._ids += rid

    def records(self, kinds: Iterable[str], ids: bytes, frame: int) -> None:
        """:meth:`record` for every record of one RECORDS frame, slot by slot (``ids``: 32
        bytes each); a frame of searchable records only is entered in one step."""
        kinds = list(kinds)
        if all(k in KIND_CODES for k in set(kinds)):
            self._frames.extend(repeat(frame, len(kinds)))
            self._slots.extend(range(len(kinds)))
            self._ids += ids
            return
        for slot, kind in enumerate(kinds):
            self.record(kind, ids[32 * slot : 32 * slot + 32], frame, slot)

    def blob_frame(self, offset: int) -> None:
        self._marks[offset] = (len(self._frames), len(self._reverts))

    def check(self, ref: BlobRef, blob: object) -> None:
        """16.8 for a blob whose SHA-256 (3.4) has been checked; CorruptError (``lexical``) if it fails."""
        if ref in self._done:
            return
        raw = memoryview(blob).cast("B").tobytes() if not isinstance(blob, bytes) else blob  # type: ignore[arg-type]
        head = peek(raw)
        seg = decode(raw, ref.offset)
        seg.ref = ref
        seg.check_all()
        tok = available(head.get("tokenizer")) if head is not None else None
        if tok is None:
            self._done[ref] = seg  # a tokenizer not run here: its bounds are all this verifier can check
            return

        def bad(msg: str) -> CorruptError:
            return CorruptError(f"lexical snapshot: {msg}", offset=ref.offset, check="lexical")

        at = 0
        for i, b in enumerate(seg.base):
            if b not in self._done:
                try:
                    bblob, _, bcheck = read_blob(self.h, b, self.max_frame, ref.offset)
                    bcheck()
                except CorruptError as e:
                    raise bad(f"base blob {i}: {e.message}") from None
                self.check(b, bblob)
            prev = self._done[b]
            if prev.start != at or prev.base != seg.base[:i]:
                raise bad("its base blobs are not the snapshots before it")
            at += prev.n
        before, reverts = self._marks.get(ref.offset, (-1, 0))
        if seg.start != at or seg.start + seg.n != before:
            raise bad(f"it covers documents {seg.start}..{seg.start + seg.n - 1}, but {before} searchable records "
                      "precede it")
        if list(seg.reverts) != self._reverts[:reverts]:
            raise bad("it does not name the revert records before it")
        again = build(self._docs(seg.start, seg.start + seg.n), seg.start, tok, seg.sessions is not None)
        if encode(again, seg.base, seg.reverts) != raw:
            raise bad("it does not match the records it covers")
        self._done[ref] = seg

    def _docs(self, lo: int, hi: int) -> list[Doc]:
        """The searchable records lo..hi-1, read again. The walk has checked each one's
        bytes, id and schema, so here the frame is only unpacked, not checked again: into
        the few fields a document takes (msgspec, in C), or, for a frame whose other
        records have fields of other types, as plain maps."""
        out: list[Doc] = []
        cur, fast = -1, True
        values: list[Any] = []
        ids, frames, slots = self._ids, self._frames, self._slots
        for j in range(lo, hi):
            frame = frames[j]
            if frame != cur:
                prev = self.seed if frame == C.HEADER_SIZE else None
                fh, payload, _, _ = read_frame_at(self.h, frame, max_frame=self.max_frame, prev_chain=prev)
                raw = raw_payload(fh, payload)
                try:
                    values, fast = _FIELDS.decode(raw), True
                except (msgspec.DecodeError, msgspec.ValidationError):
                    values, fast = msgpack.unpackb(raw, raw=False), False
                cur = frame
            rid = bytes(ids[32 * j : 32 * j + 32])
            out.append(_doc_fields(rid, values[slots[j]]) if fast else _doc(rid, values[slots[j]]))
        return out


class _Fields(msgspec.Struct, gc=False):
    """What a document takes of a stored record (its other fields are skipped)."""

    kind: str
    time: int = 0
    text: str = ""
    summary: str = ""
    rationale: str = ""
    ttl: int = 0
    tier: str = "working"
    tags: tuple[str, ...] = ()
    meta: dict[str, Any] = {}


_FIELDS = msgspec.msgpack.Decoder(list[_Fields])


def _doc_fields(rid: bytes, v: _Fields) -> Doc:
    """:func:`_doc` of a record decoded into :class:`_Fields`."""
    kind = v.kind
    if kind == "decision":
        return rid, v.summary + "\n" + v.rationale, v.time, 0, TIERS["working"], KIND_CODES[kind], (), None
    if kind == "note":
        return rid, v.text, v.time, 0, TIERS["working"], KIND_CODES[kind], (), None
    meta = v.meta
    session = canon.pack(canon.normalize(meta["session"])) if "session" in meta else None
    return rid, v.text, v.time, v.ttl, TIERS[v.tier], KIND_CODES[kind], v.tags, session


def _doc(rid: bytes, v: dict[str, Any]) -> Doc:
    """catalog.doc_of over a stored map whose schema is known good (7.1, 7.2, 7.6)."""
    kind = v["kind"]
    if kind == "decision":
        return (rid, v["summary"] + "\n" + v.get("rationale", ""), v["time"], 0, TIERS["working"], KIND_CODES[kind],
                (), None)
    if kind == "note":
        return rid, v["text"], v["time"], 0, TIERS["working"], KIND_CODES[kind], (), None
    meta = v.get("meta") or {}
    # 16.4.1: the key is the value's canonical bytes; a stored value decodes to one that encodes back to them (5.2)
    session = canon.pack(canon.normalize(meta["session"])) if "session" in meta else None
    return (rid, v["text"], v["time"], v.get("ttl") or 0, TIERS[v.get("tier", "working")], KIND_CODES[kind],
            tuple(v.get("tags", ())), session)


__all__ = ["BLOB_TYPE", "LexicalCheck"]
