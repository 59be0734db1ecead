"""The bulk encoder: memories from JSON text or dicts straight to canonical bytes (spec 5, 7.1).

Theory of operation: the reference path (``records.record_from_input``, then
``Memory.build`` and ``canonical.pack``) checks every field of every record in
Python, which is most of what ingesting costs. Most ingested records are
memories of one plain shape: text, tags, a flat ``meta``, perhaps a time,
tier, ttl, source or embedding. For exactly that shape this module lets
msgspec do the work in C: JSON is decoded and type-checked into
:class:`_Memory`, whose fields are declared in canonical key order (5.1), the
few rules msgspec cannot express (int and tag ranges, NFC, -0.0) are checked in
Python, and the struct is encoded back to msgpack in C with defaults omitted
(7.1) and map keys sorted by code point, which is UTF-8 byte order (5.1).

The fast path only ever *accepts*: anything outside the shape, or anything it
has the least doubt about, returns None and the caller takes the reference
path, which accepts it with the reference's rules or refuses it with the
reference's message. So a record encodes to the same bytes, and an error reads
the same, whichever path took it (tests/test_fast_ingest.py checks both on
random records against ``canonical.pack``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from ..core.clock import Clock
from ..core.constants import MAX_MAP, RECORD_ID_TAG
from ..core.errors import DataError, InvalidRecordError
from .batch import RecordBatch
from .records import (
    MAX_TAG_LEN,
    TIERS,
    encode_record,
    parse_embedding,
    parse_meta,
    parse_tags,
    parse_text,
    record_from_input,
    record_id,
)

_I63 = 1 << 63


class _Memory(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True, gc=False):
    """A memory as JSONL gives it; the field order is the canonical key order (5.1)."""

    embedding: list[Any] | None = None  # turned into {data, dtype, shape} before encoding
    kind: Literal["memory"] | UnsetType = UNSET  # set to "memory" before encoding
    meta: dict[str, str | int | bool | float | None] = {}  # flat; anything deeper is the reference's
    source: str | None = None
    tags: list[str] = []
    text: str
    tier: Literal["scratch", "validated", "working"] = "working"
    time: int | UnsetType = UNSET
    ttl: int | None = None
    valid_from: int | None = None  # 1.3; an ISO-8601 string goes the reference way
    valid_to: int | None = None


_DECODE = msgspec.json.Decoder(_Memory)
_ID_PREFIX = hashlib.sha256(RECORD_ID_TAG + b"memory\x00")  # 5.3, copied per record
_ENCODE = msgspec.msgpack.Encoder(order="deterministic")
_SCALARS = (str, int, bool, float, type(None))
# A float64 that 5.1 forbids: -0.0, or an exponent of all ones (infinity, NaN). msgspec
# writes every float as 0xCB + 8 bytes; a match elsewhere (inside a str) costs only speed.
_BAD_FLOAT = re.compile(rb"\xcb(?:\x80\x00{7}|[\x7f\xff][\xf0-\xff])", re.DOTALL)
# A record this long may break a reader's object or entry limits (11): the reference checks.
_LONG = 2 * MAX_MAP


def _unicode(m: _Memory) -> bool:
    """Normalise the strings of a record that is not all ASCII to NFC, as the
    reference does; False when one of them is not valid Unicode, or two meta
    keys collide after NFC (the reference names the problem)."""
    try:
        m.text = parse_text(m.text)
        if m.source is not None:
            m.source = parse_text(m.source, "source")
        if m.tags:
            m.tags = list(parse_tags(m.tags))
        if m.meta:
            m.meta = parse_meta(m.meta)
    except InvalidRecordError:
        return False
    return True


def _finish(m: _Memory, now: int, ascii_only: bool) -> tuple[bytes, int] | None:
    """(canonical bytes, embedding dimension or 0) of a decoded memory, or None for the
    reference path."""
    t = m.time
    if t is UNSET:
        m.time = now
    elif not 0 <= t < _I63:
        return None
    if m.ttl is not None and not 0 < m.ttl < _I63:
        return None
    vf, vt = m.valid_from, m.valid_to
    if vf is not None or vt is not None:  # 7.1: times, from < to; the reference names a failure
        if (vf is not None and not 0 <= vf < _I63) or (vt is not None and not 0 <= vt < _I63):
            return None
        if vf is not None and vt is not None and not vf < vt:
            return None
    if ascii_only:
        tags = m.tags
        if tags:
            for tag in tags:
                if not 0 < len(tag) <= MAX_TAG_LEN:
                    return None
            if len(tags) == 2:  # the common case, without a set and a sort
                a, b = tags
                m.tags = [a, b] if a < b else [b, a] if b < a else [a]
            elif len(tags) > 2:
                m.tags = sorted(set(tags))
    elif not _unicode(m):
        return None
    dim = 0
    if m.embedding is not None:
        try:
            e = parse_embedding(m.embedding)
        except InvalidRecordError:
            return None
        assert e is not None
        dim = int(e.shape[0])
        m.embedding = {"data": e.tobytes(), "dtype": "f32", "shape": [dim]}  # type: ignore[assignment]
    m.kind = "memory"
    try:
        data = _ENCODE.encode(m)
    except (OverflowError, TypeError, ValueError, UnicodeEncodeError):
        return None  # an int beyond 64 bits, a str subclass, a lone surrogate ...
    if (b"\xcb" in data and _BAD_FLOAT.search(data)) or len(data) > _LONG:
        return None
    return data, dim


def memory_from_json(raw: bytes, now: int) -> tuple[bytes, int] | None:
    """(canonical bytes, embedding dimension or 0) of the memory one JSON text holds,
    or None for the reference path.

    ``now`` is its time when it gives none. Only a JSON object of the plain memory
    shape is taken; anything else, valid or not, returns None.
    """
    try:
        m = _DECODE.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    return _finish(m, now, raw.isascii() and b"\\u" not in raw)


def memory_from_dict(d: object, now: int) -> tuple[bytes, int] | None:
    """(canonical bytes, embedding dimension or 0) of a memory given as a plain ``dict``,
    or None for the reference path.

    Every value must be of an exact builtin type (``str``, ``int`` ...): msgspec
    would take a subclass, and the reference may read it differently.
    """
    if type(d) is not dict:
        return None
    try:
        m = _Memory(**d)
    except TypeError:  # an unknown field, no text, a key that is not a str
        return None
    if m.kind is not UNSET and (type(m.kind) is not str or m.kind != "memory"):
        return None
    text, tags, meta, source, tier = m.text, m.tags, m.meta, m.source, m.tier
    if type(text) is not str or (m.time is not UNSET and type(m.time) is not int):
        return None
    if (source is not None and type(source) is not str) or (m.ttl is not None and type(m.ttl) is not int):
        return None
    if (m.valid_from is not None and type(m.valid_from) is not int) or (
            m.valid_to is not None and type(m.valid_to) is not int):
        return None
    if type(tier) is not str or tier not in TIERS:
        return None
    if tier == "working":  # omit_defaults compares a str default by identity: a "working" built at run
        m.tier = "working"  # time (json.loads) would be written out, not canonical (7.1); the literal is not
    ascii_only = text.isascii() and (source is None or source.isascii())
    if type(tags) is not list:
        if type(tags) is not tuple:
            return None
        m.tags = tags = list(tags)
    for tag in tags:
        if type(tag) is not str:
            return None
        ascii_only = ascii_only and tag.isascii()
    if type(meta) is not dict:
        return None
    for k, v in meta.items():
        if type(k) is not str or type(v) not in _SCALARS:
            return None
        if not k.isascii() or (type(v) is str and not v.isascii()):
            ascii_only = False
    return _finish(m, now, ascii_only)


def loads(text: str | bytes, where: str = "") -> Any:
    """One JSON value, with the reference's errors (``where`` prefixes them: "line 3: ")."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:  # some e.msg end "... at" / "starting at": the column completes them
        msg = e.msg.removesuffix(" starting at").removesuffix(" at")
        raise InvalidRecordError(f"{where}invalid JSON: {msg} at column {e.colno}") from None
    except RecursionError:
        raise InvalidRecordError(f"{where}JSON nested too deeply") from None
    except ValueError as e:  # an int longer than Python converts (4300 digits): never a 64-bit int (5.1)
        raise InvalidRecordError(f"{where}invalid JSON: {e.args[0].split(':')[0]}") from None


def decode_json(raw: bytes, where: str = "") -> Any:
    """One JSON value from UTF-8 bytes: msgspec's decoder when it takes the text
    (it then gives what ``json.loads`` gives), ``json.loads`` otherwise (NaN,
    lone surrogate escapes, numbers beyond float range, errors)."""
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return loads(raw.decode("utf-8"), where)


def encode_input(obj: object, now: int, prepare: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
                 ) -> tuple[str, bytes, int]:
    """(kind, canonical bytes, embedding dimension or 0) of a record given as a map, as
    one JSON object (``str`` or ``bytes``) or as a record object: the fast path where it
    applies, the reference path otherwise, with the reference's errors (DataError).

    ``now`` is the time of a record given without one; ``prepare`` rewrites a map
    before the reference path reads it (the transaction resolves id prefixes there).
    """
    fast = _fast(obj, now)
    if fast is not None:
        return "memory", *fast
    return _reference(obj, now, prepare)


def _fast(obj: object, now: int) -> tuple[bytes, int] | None:
    t = type(obj)
    if t is bytes:
        return memory_from_json(obj, now)  # type: ignore[arg-type]
    if t is dict:
        return memory_from_dict(obj, now)
    if t is str:
        return memory_from_json(obj.encode("utf-8", "surrogatepass"), now)  # type: ignore[attr-defined]
    if isinstance(obj, bytearray | memoryview):
        return memory_from_json(bytes(obj), now)
    return None


def _reference(obj: object, now: int, prepare: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None,
               ) -> tuple[str, bytes, int]:
    """What ``Transaction.put_value`` (a map or JSON text) or ``put`` (a record) does."""
    if isinstance(obj, bytes | bytearray | memoryview | str):
        try:
            obj = loads(obj if isinstance(obj, str) else bytes(obj).decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidRecordError("not UTF-8 text") from None
    elif not isinstance(obj, Mapping) and hasattr(obj, "to_value"):
        return _encoded(obj)
    if not isinstance(obj, Mapping):
        raise InvalidRecordError("a record must be a JSON object")
    if prepare is not None:
        obj = prepare(obj)
    try:
        rec = record_from_input(obj, time=now)
    except TypeError as e:
        raise InvalidRecordError(f"missing or bad field: {e}") from e
    return _encoded(rec)


def encode_many(batch: RecordBatch, records: Iterable[object], clock: Clock, *,
                prepare: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
                on_vector: Callable[[int], None] | None = None, names: Callable[[int], str] | None = None,
                ) -> None:
    """Encode every record of ``records`` (as :func:`encode_input` takes them) into ``batch``.

    ``clock()`` is read once per record, as ``put_value`` reads it. ``on_vector(d)``
    is called before a record with a d-dimensional embedding is added. A record the
    reference refuses raises :class:`InvalidRecordError` named by ``names(i)`` (its
    position from 0; default "record i+1"); the records before it stay in ``batch``.
    """
    # The hot loop, flattened: per record a decode or a dict check, a few field checks,
    # an encode and a hash, all but the checks in C.
    batch.check_open()
    mcode = batch.code("memory")
    ids, data, ends, codes = batch.ids, batch.data, batch.ends, batch.codes
    mid = _ID_PREFIX.copy
    decode, finish, from_dict = _DECODE.decode, _finish, memory_from_dict
    i = -1
    for i, obj in enumerate(records):
        now = clock()
        try:
            if type(obj) is bytes:
                try:
                    m = decode(obj)
                except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                    fast = None
                else:
                    fast = finish(m, now, obj.isascii() and b"\\u" not in obj)
            elif type(obj) is dict:
                fast = from_dict(obj, now)
            else:
                fast = _fast(obj, now)
            if fast is not None:
                rec, dim = fast
                kind, code = "memory", mcode
            else:
                kind, rec, dim = _reference(obj, now, prepare)
                code = batch.code(kind)
        except DataError as e:
            raise InvalidRecordError(f"{names(i) if names is not None else f'record {i + 1}'}: {e}") from None
        if dim and on_vector is not None:
            try:
                on_vector(dim)
            except DataError as e:
                raise InvalidRecordError(f"{names(i) if names is not None else f'record {i + 1}'}: {e}") from None
        if code == mcode:
            h = mid()
            h.update(rec)
            ids += h.digest()
        else:
            ids += record_id(kind, rec)
        data += rec
        ends.append(len(data))
        codes.append(code)


def _encoded(rec: Any) -> tuple[str, bytes, int]:
    """The reference: a record object's kind, canonical bytes and embedding dimension."""
    _, data = encode_record(rec)
    emb = getattr(rec, "embedding", None) if rec.kind == "memory" else None
    return rec.kind, data, (0 if emb is None else len(emb))


__all__ = ["decode_json", "encode_input", "encode_many", "loads", "memory_from_dict", "memory_from_json"]
