"""Deep verification in bulk: a RECORDS frame checked whole (spec 13.3; 5, 7.0, 7.1, 11).

Theory of operation. The reference walk (``check._walk``) decodes a RECORDS payload
with the canonical profile's checks in Python hooks, then builds a record object per
record (``decode_record``: ``Memory.from_value``, ``build``, ``parse_embedding``) and
compares its canonical map with the stored one: 25-80 us a record. This module proves
the same things of a whole frame of memories in a few calls into msgspec's C code:

1. The payload splits into its records' bytes (``list[Raw]``: one array and nothing
   after it) and decodes into typed structs whose fields are those of 7.1, declared in
   canonical key order and typed and bounded as 7.1 says: an int ``time`` in [0, 2^63),
   a ``ttl`` in [1, 2^63), tags of 1..256 code points, an f32 embedding of 1..65536
   dimensions, a flat ``meta`` of finite scalars.
2. Re-encoded with defaults omitted and map keys sorted, the structs give the payload
   back byte for byte. That is 5.2's "decode, re-encode, compare" and 7.1's "one
   encoding per record" at once: a spelled-out default, a key out of order or twice, a
   longer int, length or header form, a float32, all re-encode otherwise.
3. What re-encoding cannot see is checked over the frame: NFC of every string (5.1; on
   the frame's JSON text, as ``canonical.decode_bulk`` does), no -0.0 float, tags
   sorted and distinct, embeddings as long as their shape says, finite, without -0.0.
4. The content ids (5.3) are hashed in one loop.

A frame holding other records (another kind, a memory with a nested ``meta``) takes
the same path record by record: a memory as above, any other record through the
reference (``canonical.decode``, the depth bound, ``decode_record``), so only those
records cost what they always did.

The bulk path only ever *accepts*. A frame it has the least doubt about returns None
and the reference walk takes the whole frame, which accepts it or names the failure
as it always has: a check that fails, a record over 200 KB (it may hold a map over the
11 entry limit), a payload long enough to need its objects counted (11), a ``vindex``
or ``revert`` record (the walk acts on those), or a msgspec that spells a header
otherwise than the reference packer. So verdict and first error (offset, seq, check,
message) are the reference's whichever path ran, which ``tests/test_verify_fast.py``
checks on random capsules and random corruptions.

Nothing here allocates by a header: msgspec grows lists as it reads values and stops at
the end of the input, and a payload it accepts has kept every promise (11).
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import lt
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from ..core import constants as C
from ..core.errors import CorruptError, DataError, NonCanonicalError
from ..core.lazy import lazy
from ..format import canonical as canon
from ..format.commit import array_header, may_hold_too_many
from ..format.records import MAX_DIM, MAX_TAG_LEN, decode_fast, decode_record, record_id
from ..state.fold import EVENT_KINDS

if TYPE_CHECKING:
    import numpy as np

    from ..search.lexcheck import LexicalCheck
    from .vectors import VectorEntries
else:
    np = lazy("numpy")

_I63 = (1 << 63) - 1
_F64 = 1.7976931348623157e308  # the largest finite float64: NaN and the infinities fail either bound

_Time = Annotated[int, Meta(ge=0, le=_I63)]  # 7.0
_Ttl = Annotated[int, Meta(ge=1, le=_I63)]  # 7.1
_Tag = Annotated[str, Meta(min_length=1, max_length=MAX_TAG_LEN)]  # 7.1: code points of the stored form
_Scalar = str | int | bool | Annotated[float, Meta(ge=-_F64, le=_F64)] | None  # 5.1


class _Embedding(Struct, forbid_unknown_fields=True, gc=False):
    """7.1 ``embedding``: ``{data, dtype: "f32", shape: [d]}``, keys in canonical order."""

    data: bytes
    dtype: Literal["f32"]
    shape: tuple[Annotated[int, Meta(ge=1, le=MAX_DIM)]]


class _Memory(Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True, gc=False):
    """7.1 ``memory`` as stored: the field order is the canonical key order (5.1) and a
    field at its default is omitted on encoding, as 7.1 demands of the stored form."""

    embedding: _Embedding | None = None
    kind: Literal["memory"]
    meta: dict[str, _Scalar] = {}
    source: str | None = None
    tags: tuple[_Tag, ...] = ()
    text: str
    tier: Literal["scratch", "validated", "working"] = "working"
    time: _Time
    ttl: _Ttl | None = None
    valid_from: _Time | None = None  # 1.3; valid_from < valid_to checked beside the tags
    valid_to: _Time | None = None


#: False: every frame and table takes the reference walk (tests/test_verify_fast.py compares the two)
BULK = True
#: kinds the walk acts on beyond counting and indexing (16.1 parameters, 7.7 reverts): the
#: reference walk takes their frames
WALK_KINDS = EVENT_KINDS | {"vindex"}
#: a record this long may hold a map over MAX_MAP entries (11), which msgspec does not bound
_LONG = 2 * C.MAX_MAP
_NEG_ZERO = b"\xcb\x80\x00\x00\x00\x00\x00\x00\x00"  # -0.0 as float64, forbidden by 5.1
_MEMORY_ID = hashlib.sha256(C.RECORD_ID_TAG + b"memory\x00")  # 5.3, copied per record
_NOT_CONTAINER = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF))
_decoders: list[Any] = []


def _codecs() -> tuple[Any, Any, Any, Any, Any] | None:
    """(frame decoder, one-record decoder, splitter, sorting encoder, JSON encoder); None
    when msgspec spells a header form of the profile otherwise than the reference packer
    (``canonical._bulk_codecs`` probes it), since the bulk path would then refuse good frames."""
    enc, to_json, splitter, reference_too = canon._bulk_codecs()
    if reference_too:
        return None
    if not _decoders:
        _decoders.extend([msgspec.msgpack.Decoder(list[_Memory]), msgspec.msgpack.Decoder(_Memory)])
    return _decoders[0], _decoders[1], splitter, enc, to_json


#: what msgspec raises on bytes it does not take (RecursionError: nesting past its limit)
_DOUBT = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


@dataclass(slots=True)
class Frame:
    """What the walk needs of a RECORDS frame that passed every check of 13.3."""

    ids: bytes  # content ids, 32 bytes each, in slot order
    kinds: list[str] | None  # each record's kind; None when every one is a memory
    vectors: list[tuple[int, int]] = field(default_factory=list)  # (slot, dimension) of each embedding

    def __len__(self) -> int:
        return len(self.ids) // 32


def check_frame(raw: bytes) -> Frame | None:
    """The records of one RECORDS payload (after the codec) if every record passes 13.3's
    record checks (5, 7.0, 7.1, 11, 5.3); None when the reference walk must decide."""
    codecs = _codecs() if BULK else None
    if codecs is None or may_hold_too_many(raw):  # 11: a payload that long needs its objects counted
        return None
    frame_dec, one_dec, splitter, enc, to_json = codecs
    try:
        parts = splitter.decode(raw)
        n = len(parts)
        if not 0 < n <= C.MAX_RECORDS_PER_FRAME or max(map(len, parts)) > _LONG:
            return None
        try:
            mems: list[Any] = frame_dec.decode(raw)
        except msgspec.ValidationError:
            return _mixed(raw, parts, one_dec, enc, to_json)
        if enc.encode(mems) != raw or not _strings_ok(to_json.encode(mems)) or _NEG_ZERO in raw:
            return None
        ids = bytearray()
        new = _MEMORY_ID.copy
        for m, data in zip(mems, parts, strict=True):
            h = new()
            h.update(data)
            ids += h.digest()
            t = m.tags
            if len(t) > 1 and not all(map(lt, t, t[1:])):  # 7.1: sorted and distinct
                return None
            if m.valid_to is not None and m.valid_from is not None and not m.valid_from < m.valid_to:
                return None  # 7.1: the walk names the failure
        vectors = _vectors(mems, range(n))
    except _DOUBT:
        return None
    return None if vectors is None else Frame(bytes(ids), None, vectors)


def _mixed(raw: bytes, parts: Sequence[msgspec.Raw], one_dec: Any, enc: Any, to_json: Any) -> Frame | None:
    """A frame with records of other kinds: memories in C, the others by the reference."""
    if not raw.startswith(array_header(len(parts))):  # 5.1: the shortest array header
        return None
    ids = bytearray()
    kinds: list[str] = []
    mems: list[Any] = []
    slots: list[int] = []
    for slot, part in enumerate(parts):
        data = bytes(part)
        try:
            m = one_dec.decode(data)
        except msgspec.ValidationError:
            m = None
        kind = "memory" if m is not None else _reference(data)
        if kind is None or (m is None and kind == "memory" and b"\xa9embedding" in data):
            # a memory the typed decode refused (a nested meta: a LangGraph store item) whose
            # embedding this path would not count for the vector index (16.3): the reference walk
            return None
        if m is not None:
            if enc.encode(m) != data or _NEG_ZERO in data or (len(m.tags) > 1 and not _increasing(m.tags)) or (
                    m.valid_to is not None and m.valid_from is not None and not m.valid_from < m.valid_to):
                return None
            mems.append(m)
            slots.append(slot)
        kinds.append(kind)
        ids += record_id(kind, data)
    if mems and not _strings_ok(to_json.encode(mems)):
        return None
    vectors = _vectors(mems, slots)
    return None if vectors is None else Frame(bytes(ids), kinds, vectors)


def _reference(data: bytes) -> str | None:
    """The kind of one record of another kind, checked as the reference walk checks it
    (5.2, 11 depth, 7.0 and the kind's schema); None when it fails or is one the walk acts on.
    A kind with a checked-in-C reader (task events) takes it: the record it gives is the one
    the reference gives (a flat record, within the depth bound), or none, and then the reference decides."""
    rec = decode_fast(data)
    if rec is not None:
        return None if rec.kind in WALK_KINDS else rec.kind
    try:
        value = canon.decode(data)
    except NonCanonicalError:
        return None
    if len(data.translate(None, _NOT_CONTAINER)) > C.MAX_DEPTH and canon.depth(value) > C.MAX_DEPTH:
        return None  # 11: as decode_records_payload bounds it
    kind = value.get("kind") if isinstance(value, dict) else None
    if not isinstance(kind, str) or kind in WALK_KINDS:
        return None
    try:
        decode_record(value, b"")
    except DataError:
        return None
    return kind


def _increasing(tags: Sequence[str]) -> bool:
    """7.1: tags sorted by UTF-8 bytes (which is code point order) and distinct."""
    return all(map(lt, tags, tags[1:]))


def _strings_ok(text: bytes) -> bool:
    """5.1: every string of the records is NFC. ``text`` is their JSON: a string's
    characters sit between quotes, with which nothing composes or reorders, and escapes
    are ASCII, so the text is NFC exactly when each string is."""
    return text.isascii() or unicodedata.is_normalized("NFC", text.decode())


def _vectors(mems: Sequence[Any], slots: Sequence[int]) -> list[tuple[int, int]] | None:
    """(slot, dimension) of each memory with an embedding, or None if one is not d
    finite little-endian float32 without -0.0 (7.1)."""
    out: list[tuple[int, int]] = []
    data: list[bytes] = []
    for m, slot in zip(mems, slots, strict=True):
        e = m.embedding
        if e is not None:
            d = e.shape[0]
            if len(e.data) != 4 * d:
                return None
            out.append((slot, d))
            data.append(e.data)
    if data:
        bits = np.frombuffer(b"".join(data), dtype="<u4")
        # finite: the exponent is not all ones; and 0x80000000 is -0.0
        if bool(np.any((bits & 0x7F800000) == 0x7F800000)) or bool(np.any(bits == 0x80000000)):
            return None
    return out


def record_frame(fr: Frame, offset: int, ids: bytearray, locs: list[tuple[int, int]], kinds: dict[str, int],
                 lexical: LexicalCheck, vectors: VectorEntries) -> int:
    """Enter a checked frame into the walk's tallies as the reference walk enters its
    records one by one: ids and places, kind counts, the lexical and vector entries.
    Returns the dimension of its first embedding, 0 if it has none (16.1)."""
    n = len(fr)
    ids += fr.ids
    locs.extend(zip(repeat(offset, n), range(n), strict=True))
    if fr.kinds is None:
        kinds["memory"] = kinds.get("memory", 0) + n
    else:
        for k in fr.kinds:
            kinds[k] = kinds.get(k, 0) + 1
    lexical.records(fr.kinds or repeat("memory", n), fr.ids, offset)
    for slot, dim in fr.vectors:
        vectors.add(fr.ids[32 * slot : 32 * slot + 32], dim, offset, slot)
    return fr.vectors[0][1] if fr.vectors else 0


def tables_list(tids: np.ndarray, tframes: np.ndarray, tslots: np.ndarray, ids: bytes | bytearray,
                locs: Sequence[tuple[int, int]], n: int) -> bool | None:
    """13.3 in NumPy: whether the columns of the tables in force (``merge_inputs``) list
    exactly the first ``n`` committed records, whose ids are distinct (the walk checked),
    at their places. None when the tables hold more or fewer rows than ``n``: the
    walk's own comparison decides what a repeated row means."""
    if not BULK or len(tids) != n:
        return None
    want = np.frombuffer(bytes(ids[: 32 * n]), dtype="S32")
    wo, go = np.argsort(want, kind="stable"), np.argsort(tids, kind="stable")
    if not np.array_equal(want[wo], tids[go]):
        return False
    where = np.array(locs[:n], dtype=np.uint64).reshape(-1, 2)
    return bool(np.array_equal(where[wo, 0], tframes[go])
                and np.array_equal(where[wo, 1], tslots[go].astype(np.uint64)))


__all__ = ["WALK_KINDS", "Frame", "check_frame", "record_frame", "tables_list"]


def array_len(raw: bytes, offset: int, seq: int) -> int:
    """The record count in a RECORDS payload's array header (a structural check, 13.3)."""
    b = raw[:1]
    if b and 0x90 <= b[0] <= 0x9F:
        return b[0] & 0x0F
    if b == b"\xdc" and len(raw) >= 3:
        return int.from_bytes(raw[1:3], "big")
    if b == b"\xdd" and len(raw) >= 5:
        return int.from_bytes(raw[1:5], "big")
    raise CorruptError("RECORDS payload is not an array", offset=offset, seq=seq, check="records")

