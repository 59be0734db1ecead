"""Canonical msgpack (spec section 5).

msgpack has no canonical form, so format v1 defines a profile modelled on
RFC 8949 section 4.2 and dCBOR: maps with text keys only, sorted by their UTF-8
bytes, no duplicates; shortest integer forms; floats only as float64, finite,
with -0.0 written as 0.0; all text NFC; bytes as bin; no ext types.

Decoding is "decode, then re-encode and compare": any byte sequence that does
not re-encode to itself is refused. That single rule rejects non-minimal ints,
duplicate keys (the duplicate collapses), float32, str8-for-fixstr and the
like; the hooks below catch what re-encoding alone would miss (key order is
preserved by dicts, NaN re-encodes to itself, and so on).
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from typing import Any

import msgpack

from ..core.constants import MAX_ARRAY, MAX_BIN, MAX_DEPTH, MAX_MAP, MAX_RECORD_OBJECTS, MAX_STR
from ..core.errors import NonCanonicalError

_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1

Value = Any  # None | bool | int | float | str | bytes | list[Value] | dict[str, Value]


def _nfc(s: str) -> str:
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise NonCanonicalError("text is not valid Unicode (lone surrogate or undecodable byte)") from None
    return unicodedata.normalize("NFC", s)


def normalize(obj: object, depth: int = 0) -> Value:
    """Return ``obj`` as the canonical value tree (5.1), or raise NonCanonicalError.

    Tuples become lists, text becomes NFC, map keys are sorted, -0.0 becomes 0.0.
    """
    if obj is None or obj is True or obj is False:
        return obj
    t = type(obj)
    if t is str:
        return _nfc(obj)  # type: ignore[arg-type]
    if t is int:
        if not _INT_MIN <= obj <= _INT_MAX:  # type: ignore[operator]
            raise NonCanonicalError("integer out of the 64-bit range (spec 5.1)")
        return obj
    if t is float:
        if not math.isfinite(obj):  # type: ignore[arg-type]
            raise NonCanonicalError("NaN and infinities are not allowed (spec 5.1)")
        return 0.0 if obj == 0.0 else obj
    if t is bytes or t is bytearray or t is memoryview:
        return bytes(obj)  # type: ignore[call-overload]
    if (t is dict or t is list or t is tuple) and depth >= MAX_DEPTH:
        raise NonCanonicalError(f"nesting deeper than {MAX_DEPTH} (spec 11)")
    if t is dict:
        items = []
        for k, v in obj.items():  # type: ignore[attr-defined]
            if type(k) is not str:
                raise NonCanonicalError(f"map key {k!r} is not text (spec 5.1)")
            items.append((_nfc(k), normalize(v, depth + 1)))
        items.sort(key=lambda kv: kv[0])
        for i in range(1, len(items)):
            if items[i][0] == items[i - 1][0]:
                raise NonCanonicalError(f"duplicate map key {items[i][0]!r} (spec 5.1)")
        return dict(items)
    if t is list or t is tuple:
        return [normalize(v, depth + 1) for v in obj]  # type: ignore[attr-defined]
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return normalize(int(obj), depth)
    if isinstance(obj, float):
        return normalize(float(obj), depth)
    if isinstance(obj, str):
        return normalize(str(obj), depth)
    raise NonCanonicalError(f"type {t.__name__} has no canonical encoding (spec 5.1)")


_tls = threading.local()


def pack(value: Value) -> bytes:
    """Encode an already-normalized value tree. Use :func:`encode` for anything else."""
    # A reused Packer (one per thread: it is not thread-safe) saves ~40% per call.
    try:
        packer = _tls.packer
    except AttributeError:
        packer = _tls.packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    return packer.pack(value)  # type: ignore[no-any-return]


def encode(obj: object, *, max_objects: int = MAX_RECORD_OBJECTS) -> bytes:
    """Canonical bytes of ``obj`` (spec 5), refusing what :func:`decode` would refuse (spec 11)."""
    raw = pack(normalize(obj))
    if len(raw) > max_objects and count_objects(raw, max_objects) > max_objects:
        raise NonCanonicalError(f"value holds more than {max_objects} msgpack objects (spec 11)")
    return raw


# --- counting objects (spec 11) ---------------------------------------------------
#
# Length limits bound bytes, not objects: the byte 0x80 decodes to a 64-byte
# dict, and msgpack builds the whole tree before any hook or check runs. So the
# objects are counted first, by walking the headers alone: a value's first byte
# says how many bytes follow it (scalars, str, bin, ext) or how many values
# (arrays, maps), and nothing is allocated. A value of N bytes holds at most N
# objects, so callers walk only bytes longer than their cap.

# For each first byte: bytes to step over (0: a length field follows, see _VAR)
# and the values it opens (arrays and maps; a map entry is two values).
_STEP = [0] * 256
_OPENS = [0] * 256
for _b in range(256):
    if _b <= 0x7F or _b >= 0xE0 or _b in (0xC0, 0xC2, 0xC3):  # fixint, nil, bool
        _STEP[_b] = 1
    elif _b <= 0x8F:  # fixmap
        _STEP[_b], _OPENS[_b] = 1, 2 * (_b & 0x0F)
    elif _b <= 0x9F:  # fixarray
        _STEP[_b], _OPENS[_b] = 1, _b & 0x0F
    elif _b <= 0xBF:  # fixstr
        _STEP[_b] = 1 + (_b & 0x1F)
for _b, _n in ((0xCA, 5), (0xCB, 9), (0xCC, 2), (0xCD, 3), (0xCE, 5), (0xCF, 9), (0xD0, 2), (0xD1, 3),
               (0xD2, 5), (0xD3, 9), (0xD4, 3), (0xD5, 4), (0xD6, 6), (0xD7, 10), (0xD8, 18)):
    _STEP[_b] = _n  # float, (u)int, fixext
# first byte -> (width of its length field, bytes after that field besides the
# payload, what the length counts: 0 payload bytes, 1 array values, 2 map entries)
_VAR = {0xC4: (1, 0, 0), 0xC5: (2, 0, 0), 0xC6: (4, 0, 0), 0xD9: (1, 0, 0), 0xDA: (2, 0, 0), 0xDB: (4, 0, 0),
        0xC7: (1, 1, 0), 0xC8: (2, 1, 0), 0xC9: (4, 1, 0), 0xDC: (2, 0, 1), 0xDD: (4, 0, 1), 0xDE: (2, 0, 2),
        0xDF: (4, 0, 2)}
del _b, _n


def count_objects(raw: bytes | memoryview, limit: int, pos: int = 0) -> int:
    """Objects in the msgpack value at ``pos`` as spec 11 counts them (every
    value once, map keys included), from its headers alone; the walk stops as
    soon as the count passes ``limit``. Truncated or malformed bytes end it
    early: :func:`decode` refuses those."""
    step, opens, var = _STEP, _OPENS, _VAR
    end = len(raw)
    need = 1  # values still to read
    n = 0
    while need and pos < end and n <= limit:
        b = raw[pos]
        n += 1
        need += opens[b] - 1
        s = step[b]
        if s:
            pos += s
            continue
        v = var.get(b)
        if v is None:  # 0xC1, never used
            break
        width, extra, what = v
        length = int.from_bytes(raw[pos + 1 : pos + 1 + width], "big")
        pos += 1 + width + extra
        if what == 0:
            pos += length
        else:
            need += what * length
    return n


def promises_fit(raw: bytes | memoryview, pos: int = 0) -> bool:
    """11: whether no array or map header at ``pos`` or inside promises more values
    than bytes remain (every value takes a byte at least), counting the values still
    owed to enclosing headers. msgpack sizes a list by its header before it reads a
    value, so ~5 KB of array headers made decode allocate ~76 MiB; this walks the
    headers alone, like :func:`count_objects`, and allocates nothing."""
    step, opens, var = _STEP, _OPENS, _VAR
    end = len(raw)
    need = 1  # values still to read
    while need:
        if need > end - pos:
            return False
        b = raw[pos]
        need += opens[b] - 1
        s = step[b]
        if s:
            pos += s
            continue
        v = var.get(b)
        if v is None:  # 0xC1, never used: decode refuses it
            return True
        width, extra, what = v
        length = int.from_bytes(raw[pos + 1 : pos + 1 + width], "big")
        pos += 1 + width + extra
        if what == 0:
            pos += length
        else:
            need += what * length
    return True


#: every byte but the first bytes of the array and map headers that can promise more than 15
#: values: what is left after deleting these is a cheap upper bound on how many such headers
_NOT_WIDE = bytes(b for b in range(256) if not 0xDC <= b <= 0xDF)


def check_promises(raw: bytes) -> None:
    """11: refuse, before msgpack sees them, headers that promise more values than bytes
    remain. A decoder caps one header at ``len(raw)`` values (:func:`max_array`), so
    nested headers can ask for at most (wide headers) x ``len(raw)`` list slots in all;
    past 2^16 of those (512 KiB of list) the headers are walked first."""
    if len(raw) > 256 and len(raw.translate(None, _NOT_WIDE)) * len(raw) > 1 << 16 and not promises_fit(raw):
        raise NonCanonicalError("an array or map promises more values than bytes remain (spec 11)")


def max_array(raw: bytes | memoryview) -> int:
    """11: the most entries an array in ``raw`` can hold (a value takes a byte at least)."""
    return min(MAX_ARRAY, len(raw))


def _check_scalar(v: object) -> None:
    t = type(v)
    if t is str:
        if not v.isascii() and not unicodedata.is_normalized("NFC", v):  # type: ignore[attr-defined,arg-type]
            raise NonCanonicalError("text is not NFC (spec 5.1)")
    elif t is float:
        if not math.isfinite(v) or (v == 0.0 and math.copysign(1.0, v) < 0):  # type: ignore[arg-type]
            raise NonCanonicalError("NaN, infinity or -0.0 (spec 5.1)")
    elif v is None or t is bool or t is int or t is bytes or t is list or t is dict:
        return
    else:
        raise NonCanonicalError(f"type {t.__name__} is outside the profile (spec 5.1)")


def _map_hook(d: dict[Any, Any]) -> dict[Any, Any]:
    prev: str | None = None
    for k, v in d.items():
        if type(k) is not str:
            raise NonCanonicalError("map key is not text (spec 5.1)")
        if prev is not None and not prev < k:
            raise NonCanonicalError(f"map keys not sorted at {k!r} (spec 5.1)")
        _check_scalar(k)
        _check_scalar(v)
        prev = k
    return d


def _list_hook(items: list[Any]) -> list[Any]:
    for v in items:
        _check_scalar(v)
    return items


def _no_ext(code: int, data: bytes) -> object:
    raise NonCanonicalError(f"ext type {code} is outside the profile (spec 5.1)")


def depth(v: Value, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a decoded value (0 for a scalar, 1 for a flat map or
    array), iteratively and stopping once it exceeds ``limit``."""
    if type(v) is not dict and type(v) is not list:
        return 0
    deepest = 0
    stack: list[tuple[Any, int]] = [(v, 1)]
    while stack:
        node, d = stack.pop()
        if d > deepest:
            deepest = d
            if deepest > limit:
                return deepest
        for x in node.values() if type(node) is dict else node:
            if type(x) is dict or type(x) is list:
                stack.append((x, d + 1))
    return deepest


# --- decoding many values at once (RECORDS payloads) -------------------------------------
#
# decode() checks key order, NFC and floats in Python hooks, one call per map and per
# value: at 100k records that is most of the time it takes to read them. decode_bulk()
# makes the same checks in C, as whole-payload comparisons, and hands any payload that
# does not pass them all to decode(), which accepts it or says why not:
#
# - re-encoding with the reference packer gives ``raw`` back (5.2: lengths, int forms,
#   float64 only, duplicate keys);
# - re-encoding with msgspec's packer, map keys sorted, gives ``raw`` back too: every key is
#   text and the keys of every map were already in code point (= UTF-8 byte) order;
# - no float64 in ``raw`` is NaN, an infinity or -0.0: after the first check every float is
#   0xCB + 8 bytes, so a bad one shows as one of those byte patterns (a str or bin holding
#   such bytes only costs the slow path);
# - the JSON text of the value (every str, key or value, between quotes, escapes being
#   ASCII) is NFC: a quote composes with nothing and reorders with nothing, so the text is
#   NFC only if each string is (an escape before a combining mark can only make a false
#   alarm, which costs the slow path).

_BAD_FLOAT = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]|\xcb\x80\x00\x00\x00\x00\x00\x00\x00")
_bulk: list[tuple[Any, ...]] = []


def _bulk_codecs() -> tuple[Any, ...]:
    """msgspec's sorting packer, its JSON writer and its array splitter; and whether the
    reference packer must check too (if msgspec ever spelled a header otherwise)."""
    if not _bulk:
        import msgspec

        # the header forms of the profile (5.1) at their bounds (maps up to map16, which is the
        # array code's): msgspec must write each as the reference packer does
        probe = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, -1, -32, -33, -128, -129,
                 -32768, -32769, -(2**31), -(2**31) - 1, -(2**63), 0.0, 1.5, 1e300, 5e-324, True, False, None, "",
                 "a" * 31, "a" * 32, "a" * 255, "a" * 256, "a" * 65535, "a" * 65536, b"", b"x" * 255, b"x" * 256,
                 b"x" * 65535, b"x" * 65536, [0] * 15, [0] * 16, [0] * 65535, [0] * 65536, {"a": None},
                 {f"{i:02}": True for i in range(15)}, {f"{i:02}": True for i in range(16)}]
        enc = msgspec.msgpack.Encoder(order="sorted")
        same = enc.encode(probe) == pack(probe)
        # one append of a whole set: two threads that both build one leave a usable list
        _bulk.append((enc, msgspec.json.Encoder(), msgspec.msgpack.Decoder(list[msgspec.Raw]), not same))
    return _bulk[0]


def decode_bulk(raw: bytes, *, max_bin: int = MAX_BIN) -> Value:
    """:func:`decode` for a large value whose objects the caller counted (spec 11): the
    same profile, checked by whole-value comparisons in C (see above)."""
    # 11: msgpack sizes lists by their headers. An array msgspec can split into its elements
    # (in C, allocating nothing a header promises) has every value each header promises, so
    # check_promises would pass it; anything else is walked as before.
    try:
        _bulk_codecs()[2].decode(raw)
    except Exception:  # noqa: BLE001 - not an array, or not well formed: the walk decides
        check_promises(raw)
    try:
        obj = msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True, ext_hook=_no_ext, timestamp=0,
                              max_str_len=MAX_STR, max_bin_len=max_bin, max_array_len=max_array(raw),
                              max_map_len=MAX_MAP, max_ext_len=0)
        if type(obj) is not list and type(obj) is not dict:
            raise ValueError("not a container")
        sorted_packer, to_json, _, reference_too = _bulk_codecs()
        if sorted_packer.encode(obj) != raw or _BAD_FLOAT.search(raw) is not None:
            raise ValueError("not canonical as it stands")
        if reference_too and pack(obj) != raw:
            raise ValueError("not canonical as it stands")
        text = to_json.encode(obj)
        if not text.isascii() and not unicodedata.is_normalized("NFC", text.decode()):
            raise ValueError("text not NFC")
    except Exception:  # noqa: BLE001 - any doubt: the exact check decides, and names the problem
        return decode(raw, max_bin=max_bin, max_objects=None)
    return obj


def split_array(raw: bytes) -> list[bytes]:
    """The encoded elements of a canonical array that :func:`decode_bulk` or
    :func:`decode` accepted: each element's stored bytes, without re-encoding it."""
    return [bytes(x) for x in _bulk_codecs()[2].decode(raw)]


def decode(raw: bytes, *, max_bin: int = MAX_BIN, max_objects: int | None = MAX_RECORD_OBJECTS) -> Value:
    """Decode canonical bytes, refusing anything outside the profile (spec 5.2).

    Every length and the number of objects are bounded before anything is
    allocated (spec 11), and the result must re-encode to exactly ``raw``.
    ``max_objects=None`` is for callers that counted the objects themselves.
    """
    # 11: "msgpack objects in one record or other canonical value"; N bytes hold at most N objects
    if max_objects is not None and len(raw) > max_objects and count_objects(raw, max_objects) > max_objects:
        raise NonCanonicalError(f"value holds more than {max_objects} msgpack objects (spec 11)")
    check_promises(raw)
    try:
        obj = msgpack.unpackb(
            raw,
            raw=False,
            use_list=True,
            strict_map_key=True,
            object_hook=_map_hook,
            list_hook=_list_hook,
            ext_hook=_no_ext,
            timestamp=0,
            max_str_len=MAX_STR,
            max_bin_len=max_bin,
            max_array_len=max_array(raw),
            max_map_len=min(MAX_MAP, len(raw) // 2),
            max_ext_len=0,
        )
    except NonCanonicalError:
        raise
    except msgpack.ExtraData as e:
        raise NonCanonicalError("trailing bytes after the value (spec 5.2)") from e
    except (ValueError, TypeError, msgpack.StackError, msgpack.FormatError) as e:
        # ValueError covers over-limit lengths, truncated input and bad UTF-8.
        raise NonCanonicalError(f"malformed msgpack: {str(e) or type(e).__name__} (spec 5.2)") from e
    _check_scalar(obj)
    if pack(obj) != raw:
        raise NonCanonicalError("bytes do not re-encode identically (spec 5.2)")
    return obj
