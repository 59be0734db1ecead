"""A RECORDS frame of plain memories straight to state entries, checked in C (5.1, 7.1, 11).

Theory of operation: nearly every frame of a large capsule holds memories only, with text,
tags and a flat meta of text, integers, booleans and nil. msgspec decodes such a payload into
typed structs whose declared types and constraints are the 7.1 schema (types, ranges, tier,
tag length, no unknown field), then one re-encoding with the keys sorted must give the payload
back byte for byte. That comparison is the canonical check of 5.2 for these records: key order,
duplicate keys, shortest int and header forms, defaults omitted (a struct does not write a
default, so a default spelled out re-encodes shorter), tags sorted and distinct (tags decode
as a set, which the encoder writes sorted: a repeat collapses, an unsorted list reorders).
What is left is checked here: NFC text, through the JSON text of the records as
``canonical.decode_bulk`` does; a frame's record and object counts (11); an embedding's
length against its shape (its floats are checked by the caller, in bulk).

A frame this does not accept in full (any other kind, a float or container in meta, a very
large record, a doubt of any sort) returns None and goes the exact way, which accepts it or
raises the reader's error. So the result is what the exact way gives, or nothing.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from ..core import constants as C
from ..core.constants import RECORD_ID_TAG
from ..format.commit import check_objects
from ..format.records import MAX_DIM, MAX_TAG_LEN

_INT63 = (1 << 63) - 1
#: a record longer than this may hold a map past MAX_MAP (two bytes an entry at least) or
#: more objects than MAX_RECORD_OBJECTS; it goes the exact way, which counts
_MAX_FAST_RECORD = 2 * C.MAX_MAP

Plain = str | int | bool | None  # values json and msgspec write alike


class _Embedding(msgspec.Struct, forbid_unknown_fields=True):
    data: bytes
    dtype: Literal["f32"]
    shape: Annotated[list[Annotated[int, Meta(ge=1, le=MAX_DIM)]], Meta(min_length=1, max_length=1)]


class _Memory(msgspec.Struct, tag_field="kind", tag="memory", omit_defaults=True, forbid_unknown_fields=True):
    """7.1 as ``Memory.from_value`` checks it, for memories whose meta is flat and plain."""

    text: str
    time: Annotated[int, Meta(ge=0, le=_INT63)]
    tags: set[Annotated[str, Meta(min_length=1, max_length=MAX_TAG_LEN)]] = set()
    meta: dict[str, Plain] = {}
    tier: Literal["working", "scratch", "validated"] = "working"
    ttl: Annotated[int, Meta(gt=0, le=_INT63)] | UnsetType = UNSET
    source: str | UnsetType = UNSET
    embedding: _Embedding | UnsetType = UNSET
    valid_from: Annotated[int, Meta(ge=0, le=_INT63)] | UnsetType = UNSET  # 1.3; from < to checked below
    valid_to: Annotated[int, Meta(ge=0, le=_INT63)] | UnsetType = UNSET


_codecs: list[tuple[Any, ...]] = []


def _get() -> tuple[Any, ...]:
    if not _codecs:  # two threads may both build them: each gets a whole set
        import hashlib

        _codecs.append((msgspec.msgpack.Decoder(list[_Memory]), msgspec.msgpack.Encoder(order="sorted"),
                        msgspec.msgpack.Decoder(list[msgspec.Raw]), msgspec.json.Encoder(),
                        hashlib.sha256(RECORD_ID_TAG + b"memory\x00")))
    return _codecs[0]


def memory_frame(raw: bytes, offset: int, seq: int, iso: Any, dims: list[bytes]
                 ) -> tuple[list[bytes], list[dict[str, Any]]] | None:
    """The ids and state entries of the records of a RECORDS payload of plain memories, in
    order, or None when the payload is anything else (the caller then decodes it the exact way).
    Embedding bytes are appended to ``dims`` for the caller's bulk float check."""
    dec, enc, split, to_json, id_hash = _get()
    try:
        mems = dec.decode(raw)
        if not mems or len(mems) > C.MAX_RECORDS_PER_FRAME or enc.encode(mems) != raw:
            return None
        text = to_json.encode(mems)  # 5.1: NFC (see canonical.decode_bulk)
        if not text.isascii() and not unicodedata.is_normalized("NFC", text.decode()):
            return None
        parts = split.decode(raw)
    except (msgspec.DecodeError, msgspec.EncodeError, ValueError):
        return None
    lens = list(map(len, parts))
    if max(lens) > _MAX_FAST_RECORD:
        return None
    head = len(raw) - sum(lens)
    if len(raw) - head > C.MAX_RECORD_OBJECTS:  # 11: as decode_records_payload counts them
        bounds = [head]
        for n in lens:
            bounds.append(bounds[-1] + n)
        check_objects(raw, bounds, offset, seq)
    copy = id_hash.copy
    rids = []
    for part in parts:
        h = copy()
        h.update(part)
        rids.append(h.digest())
    if (b"\xa9embedding" not in raw and b"\xa6source" not in raw and b"\xa3ttl" not in raw
            and b"\xaavalid_from" not in raw and b"\xa8valid_to" not in raw):
        # none of the optional fields (their keys' bytes appear nowhere): the common frame, in
        # one pass. Keys in sorted order, as to_json_bytes writes them.
        times = iso.many([m.time for m in mems])
        return rids, [{"id": rid.hex(), "kind": "memory", "meta": m.meta, "tags": sorted(m.tags), "text": m.text,
                       "tier": m.tier, "time": t} for m, rid, t in zip(mems, rids, times, strict=True)]
    out = []
    floats = []
    for m, rid in zip(mems, rids, strict=True):
        d: dict[str, Any]
        emb = m.embedding
        if emb is not UNSET:
            if len(emb.data) != 4 * emb.shape[0]:
                return None
            floats.append(emb.data)
            d = {"embedding_dim": emb.shape[0], "id": rid.hex(), "kind": "memory", "meta": m.meta}
        else:
            d = {"id": rid.hex(), "kind": "memory", "meta": m.meta}
        if m.source is not UNSET:
            d["source"] = m.source
        d["tags"] = sorted(m.tags)
        d["text"] = m.text
        d["tier"] = m.tier
        d["time"] = iso(m.time)
        if m.ttl is not UNSET:
            d["ttl"] = m.ttl
        vf, vt = m.valid_from, m.valid_to
        if vf is not UNSET:
            if vt is not UNSET and not vf < vt:
                return None  # 7.1: the exact way names the failure
            d["valid_from"] = iso(vf)
        if vt is not UNSET:
            d["valid_to"] = iso(vt)
        out.append(d)
    dims.extend(floats)
    return rids, out

