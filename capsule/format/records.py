"""Record kinds, their canonical form and content ids (spec sections 5.3 and 7).

A record on disk is one canonical msgpack map holding ``kind``, ``time`` (int
nanoseconds UTC) and the kind's own fields, flat, so the field names are also
the JSONL names. Its content id is SHA-256(tag || kind || 0x00 || bytes) over
the stored bytes (5.3). Kinds live in a registry; a reader that meets a kind it
does not know keeps it as a :class:`GenericRecord` (still content-checked).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..core.constants import MAX_MAP, MAX_RECORD_BYTES, MAX_RECORD_OBJECTS, RECORD_ID_TAG
from ..core.errors import InvalidRecordError, NonCanonicalError, UsageError
from ..core.lazy import lazy
from . import canonical as canon

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")

TIERS = ("scratch", "working", "validated")
MAX_TAG_LEN = 256
MAX_DIM = 65536


_ID_PREFIX: dict[str, Any] = {}


def record_id(kind: str, data: bytes) -> bytes:
    """5.3: content id over the stored canonical bytes."""
    h = _ID_PREFIX.get(kind)
    if h is None:
        if len(_ID_PREFIX) > 1024:
            _ID_PREFIX.clear()
        h = _ID_PREFIX[kind] = hashlib.sha256(RECORD_ID_TAG + kind.encode() + b"\x00")
    h = h.copy()
    h.update(data)
    return h.digest()


class Record(Protocol):
    kind: ClassVar[str]
    time: int
    id: str

    def to_value(self) -> dict[str, Any]: ...


_REGISTRY: dict[str, type[Any]] = {}


#: The kinds this version of the spec defines (7); any other kind is an application kind (12.3).
SPEC_KINDS = frozenset({"memory", "decision", "constraint", "approval", "identity", "note", "revert",
                        "action", "task", "vindex"})


def register_kind(cls: type[Any]) -> type[Any]:
    """Register a record class under its ``kind`` (style rule 6)."""
    _REGISTRY[cls.kind] = cls
    return cls


def kinds() -> list[str]:
    return sorted(_REGISTRY)


def input_kinds() -> list[str]:
    """Kinds a user may put directly (internal event kinds excluded)."""
    return sorted(k for k, c in _REGISTRY.items() if not getattr(c, "INTERNAL", False))


# --- validators (parse_* return the canonical value or raise) ---------------------


def parse_time(v: object, name: str = "time") -> int:
    if type(v) is not int or v < 0 or v >= 1 << 63:
        raise InvalidRecordError(f"{name} must be an integer of nanoseconds in 0..2^63-1 (1970 to 2262), "
                                 f"not {_shown(v)}")
    return v


# the time of day after the date's separator ("T", "t" or a space): hh[:mm[:ss[.fff]]] (or
# without the colons), then a zone: "Z" or +-hh[:mm] (ISO 8601 offsets have no seconds); a
# fraction goes after the seconds only, with either decimal mark ISO 8601 allows
_CLOCK = re.compile(r"(\d\d(?::?\d\d(?::?\d\d)?)?)([.,]\d+)?(Z|[+-]\d\d(?::?\d\d)?)?", re.ASCII)  # digits 0-9 only


def parse_iso_time(v: str) -> int:
    """An ISO-8601 time (``2026-01-05T09:30:00.123456789Z``; no zone means UTC) as
    int ns, keeping all nine fractional digits (``datetime`` keeps only six)."""
    from datetime import UTC, datetime

    text = v.strip()
    bad = InvalidRecordError(f"time {v!r} is not an ISO-8601 time or integer nanoseconds")
    frac_ns = 0
    sep = next((i for i, ch in enumerate(text) if ch in "Tt "), -1)
    if sep >= 0:
        m = _CLOCK.fullmatch(text, sep + 1)
        if m is None:  # a fraction of an hour or a minute, seconds in an offset, a second fraction...
            raise InvalidRecordError(f"{bad} (hh:mm:ss.fff, then Z or +hh:mm)")
        clock, frac, zone = m.groups()
        if frac is not None:
            if frac and len(clock.replace(":", "")) != 6:
                raise InvalidRecordError(f"{bad} (a fraction goes after the seconds: hh:mm:ss.fff)")
            if len(frac) - 1 > 9:
                raise InvalidRecordError(f"time {v!r} has more than nanosecond precision")
            frac_ns = int(frac[1:].ljust(9, "0"))
        text = f"{text[:sep]}T{clock}{'+00:00' if zone == 'Z' else zone or ''}"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise bad from None
    if dt.microsecond:  # never: a fraction was taken apart above (a date alone holds none)
        raise bad
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    ns = (delta.days * 86400 + delta.seconds) * 1_000_000_000 + frac_ns
    if not 0 <= ns < 1 << 63:  # 7.0: int ns in [0, 2^63)
        raise InvalidRecordError(f"time {v!r} is outside 1970-01-01 .. 2262-04-11 (nanoseconds since 1970 in 63 bits)")
    return ns


def parse_time_arg(v: str, name: str) -> int:
    """:func:`parse_iso_time` for an option or argument (``--since`` ...): a one-line
    :class:`UsageError` naming it and saying why (out of range, too precise, not a time)."""
    try:
        return parse_iso_time(v)
    except InvalidRecordError as e:
        msg = str(e)
        why = next((w for w in ("is outside 1970-01-01 .. 2262-04-11", "has more than nanosecond precision")
                    if w in msg), "is not an ISO-8601 time")
        raise UsageError(f"{name} {v!r} {why}") from None


def parse_text(v: object, name: str = "text") -> str:
    if not isinstance(v, str):
        raise InvalidRecordError(f"{name} must be a string")
    try:
        return canon._nfc(v)
    except NonCanonicalError:
        raise InvalidRecordError(f"{name} is not valid Unicode (lone surrogate or undecodable byte)") from None


def parse_tags(v: object) -> tuple[str, ...]:
    if type(v) is list or type(v) is tuple:
        # fast path: short ASCII tags need no NFC work
        for t in v:
            if type(t) is not str or not 0 < len(t) <= MAX_TAG_LEN or not t.isascii():
                break
        else:
            return tuple(sorted(set(v)))
    if isinstance(v, str) or not isinstance(v, Sequence):
        raise InvalidRecordError("tags must be a list of strings")
    out = set()
    for t in v:
        s = parse_text(t, "tag") if isinstance(t, str) else ""
        # 7.1: the limit holds for the stored (NFC) form, which is what a reader checks;
        # NFC can lengthen a string (U+0958 becomes two code points), so checking the
        # input alone would let a writer store a tag its own reader refuses.
        if not s or len(s) > MAX_TAG_LEN:
            raise InvalidRecordError(f"tag {t!r} must be a non-empty string of at most {MAX_TAG_LEN} chars")
        out.add(s)
    return tuple(sorted(out))


def parse_meta(v: object) -> dict[str, Any]:
    if type(v) is dict:
        # fast path: a flat map of ASCII text keys and simple values is canonical once sorted
        for k, x in v.items():
            t = type(x)
            if type(k) is not str or not k.isascii():
                break
            if t is str:
                if not x.isascii():
                    break
            elif t is int:
                if not -(1 << 63) <= x < 1 << 64:
                    break
            elif t is not bool and x is not None:
                break
        else:
            return {k: v[k] for k in sorted(v)}
    if not isinstance(v, Mapping):
        raise InvalidRecordError("meta must be a map with string keys")
    try:
        norm = canon.normalize(dict(v), 1)  # meta sits one level below the record map
    except NonCanonicalError as e:
        raise InvalidRecordError(f"meta: {e}") from e
    return norm  # type: ignore[no-any-return]


def parse_embedding(v: object) -> np.ndarray | None:
    """Embeddings are float32 vectors, stored little-endian (spec 7.1)."""
    if v is None:
        return None
    if isinstance(v, Mapping):  # the stored form
        if set(v) != {"data", "dtype", "shape"} or v["dtype"] != "f32":
            raise InvalidRecordError("embedding must be {data, dtype: 'f32', shape: [d]}")
        shape = v["shape"]
        data = v["data"]
        if (not isinstance(shape, list) or len(shape) != 1 or type(shape[0]) is not int
                or not isinstance(data, bytes) or len(data) != 4 * shape[0]):
            raise InvalidRecordError("embedding shape does not match its data")
        arr = np.frombuffer(data, dtype="<f4")
    elif isinstance(v, np.ndarray):
        if v.dtype.kind not in "fiu":
            raise InvalidRecordError(f"embedding must hold numbers, not {v.dtype}")
        with np.errstate(over="ignore", invalid="ignore"):
            arr = v.astype(np.float32)
    else:
        if isinstance(v, str | bytes) or not isinstance(v, Sequence):
            raise InvalidRecordError("embedding must be a list of numbers")
        for x in v:
            if type(x) is not float and type(x) is not int and not isinstance(x, np.floating | np.integer):
                raise InvalidRecordError(f"embedding must be a list of numbers, found {type(x).__name__}")
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                arr = np.asarray(v, dtype=np.float32)
        except (TypeError, ValueError, OverflowError) as e:
            raise InvalidRecordError(f"embedding must be a list of numbers: {e}") from e
    if arr.ndim != 1 or not 1 <= arr.shape[0] <= MAX_DIM:
        raise InvalidRecordError(f"embedding must be one vector of 1..{MAX_DIM} numbers")
    if not np.isfinite(arr).all():
        raise InvalidRecordError("embedding contains NaN, infinity or a value beyond float32 range")
    arr = arr.astype("<f4", copy=True)
    arr[arr == 0] = 0.0  # -0.0 -> 0.0, as everywhere in the profile
    arr.flags.writeable = False
    return arr


# --- kinds -----------------------------------------------------------------------


@register_kind
@dataclass(frozen=True, slots=True, eq=False)
class Memory:
    """Something the agent knows (spec 7.1).

    >>> m = Memory(text="the deploy key rotates on Fridays", tags=("ops",), time=0)
    >>> m.tier
    'working'
    """

    kind: ClassVar[str] = "memory"
    FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"kind", "time", "text", "tags", "meta", "embedding", "tier", "ttl", "source", "valid_from", "valid_to"}
    )
    text: str
    time: int = 0
    tags: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)
    embedding: np.ndarray | None = None
    tier: str = "working"
    ttl: int | None = None
    source: str | None = None
    valid_from: int | None = None  # 1.3: world time, when the fact starts being true (inclusive)
    valid_to: int | None = None  # 1.3: world time, when it stops being true (exclusive)
    id: str = field(default="", compare=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Memory) and self.to_value() == other.to_value()

    def __hash__(self) -> int:
        return hash(canon.pack(self.to_value()))

    @classmethod
    def build(
        cls,
        text: object,
        *,
        time: int,
        tags: object = (),
        meta: object = None,
        embedding: object = None,
        tier: object = "working",
        ttl: object = None,
        source: object = None,
        valid_from: object = None,
        valid_to: object = None,
    ) -> Memory:
        """Validate user input into a canonical Memory (raises InvalidRecordError)."""
        v = memory_value(text, time=time, tags=tags, meta=meta, embedding=embedding, tier=tier, ttl=ttl,
                         source=source, valid_from=valid_from, valid_to=valid_to)
        return cls(text=v["text"], time=v["time"], tags=tuple(v.get("tags", ())), meta=v.get("meta", {}),
                   embedding=parse_embedding(v.get("embedding")), tier=v.get("tier", "working"), ttl=v.get("ttl"),
                   source=v.get("source"), valid_from=v.get("valid_from"), valid_to=v.get("valid_to"))

    def to_value(self) -> dict[str, Any]:
        """The canonical map (keys in sorted order; defaults omitted, spec 7.1)."""
        v: dict[str, Any] = {}
        if self.embedding is not None:
            e = self.embedding
            v["embedding"] = {"data": e.tobytes(), "dtype": "f32", "shape": [int(e.shape[0])]}
        v["kind"] = "memory"
        if self.meta:
            v["meta"] = self.meta
        if self.source is not None:
            v["source"] = self.source
        if self.tags:
            v["tags"] = list(self.tags)
        v["text"] = self.text
        if self.tier != "working":
            v["tier"] = self.tier
        v["time"] = self.time
        if self.ttl is not None:
            v["ttl"] = self.ttl
        if self.valid_from is not None:
            v["valid_from"] = self.valid_from
        if self.valid_to is not None:
            v["valid_to"] = self.valid_to
        return v

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (embedding as a list of floats)."""
        d: dict[str, Any] = {"id": self.id, "kind": "memory", "time": self.time, "text": self.text,
                             "tags": list(self.tags), "meta": dict(self.meta), "tier": self.tier}
        if self.embedding is not None:
            d["embedding"] = [float(x) for x in self.embedding]
        if self.ttl is not None:
            d["ttl"] = self.ttl
        if self.source is not None:
            d["source"] = self.source
        if self.valid_from is not None:
            d["valid_from"] = self.valid_from
        if self.valid_to is not None:
            d["valid_to"] = self.valid_to
        return d

    @classmethod
    def from_value(cls, v: Mapping[str, Any], rid: str = "") -> Memory:
        """Parse a stored map; every default must be omitted (spec 7.1)."""
        extra = set(v) - cls.FIELDS
        if extra:
            raise InvalidRecordError(f"unknown memory field(s): {', '.join(sorted(extra))}")
        if "text" not in v:
            raise InvalidRecordError("memory needs text")
        m = cls.build(
            v["text"], time=v.get("time", -1), tags=v.get("tags", ()), meta=v.get("meta"),
            embedding=v.get("embedding"), tier=v.get("tier", "working"), ttl=v.get("ttl"),
            source=v.get("source"), valid_from=v.get("valid_from"), valid_to=v.get("valid_to"),
        )
        if m.to_value() != v:
            # e.g. tier "working" spelled out, unsorted tags, empty meta present
            raise NonCanonicalError("memory record is not in canonical form (spec 7.1)")
        return cls(m.text, m.time, m.tags, m.meta, m.embedding, m.tier, m.ttl, m.source, m.valid_from, m.valid_to,
                   rid)


@dataclass(frozen=True, slots=True)
class GenericRecord:
    """A record of a kind this reader does not know (12.3): kept, not interpreted."""

    kind_name: str
    value: Mapping[str, Any]
    id: str = field(default="", compare=False)

    @property
    def kind(self) -> str:
        return self.kind_name

    @property
    def time(self) -> int:
        t = self.value.get("time", 0)
        return t if type(t) is int else 0

    def to_value(self) -> dict[str, Any]:
        """The canonical map to store (5.1, 12.3): keys sorted, text NFC, ``kind`` and ``time`` checked.

        An application kind (``letta.tool``, ``lg.checkpoint``) is written this way; a kind this
        library knows is refused, since its own class validates its fields.
        """
        if not isinstance(self.value, Mapping):
            raise InvalidRecordError("a record must be a map")
        if type(self.kind_name) is not str or not self.kind_name:
            raise InvalidRecordError("a record's kind must be non-empty text")
        if self.kind_name in _REGISTRY:
            raise InvalidRecordError(f"kind {self.kind_name!r} is built in: write it with its own class, "
                                     "not GenericRecord")
        value = canon.normalize(dict(self.value))
        assert isinstance(value, dict)
        if value.setdefault("kind", self.kind_name) != self.kind_name:
            raise InvalidRecordError(f"value says kind {value['kind']!r}, record says {self.kind_name!r}")
        parse_time(value.get("time"), "a record's `time`")  # 7.0: every kind has one
        return dict(sorted(value.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **{k: (v.hex() if isinstance(v, bytes) else v) for k, v in self.value.items()}}


def memory_value(
    text: object,
    *,
    time: int,
    tags: object = (),
    meta: object = None,
    embedding: object = None,
    tier: object = "working",
    ttl: object = None,
    source: object = None,
    valid_from: object = None,
    valid_to: object = None,
) -> dict[str, Any]:
    """The canonical map of a memory built straight from user input (the write
    hot path: same checks as :meth:`Memory.build`, no dataclass in between)."""
    v: dict[str, Any] = {}
    if embedding is not None:
        e = parse_embedding(embedding)
        assert e is not None
        v["embedding"] = {"data": e.tobytes(), "dtype": "f32", "shape": [int(e.shape[0])]}
    v["kind"] = "memory"
    if meta:
        v["meta"] = parse_meta(meta)
    elif meta is not None and not isinstance(meta, Mapping):
        raise InvalidRecordError("meta must be a map with string keys")
    if source is not None:
        v["source"] = parse_text(source, "source")
    if tags:
        v["tags"] = list(parse_tags(tags))
    elif tags is not None and not isinstance(tags, Sequence | set):
        raise InvalidRecordError("tags must be a list of strings")
    v["text"] = text if type(text) is str and text.isascii() else parse_text(text)
    if tier != "working":
        if tier not in TIERS:
            raise InvalidRecordError(f"tier must be one of {', '.join(TIERS)}, not {tier!r}")
        v["tier"] = tier
    v["time"] = parse_time(time)
    if ttl is not None:
        # 7.1: like every time, an int64 of nanoseconds (a larger one overflowed msgpack and
        # the int64 ttl column of the vector index: found by fuzzing)
        if type(ttl) is not int or not 0 < ttl <= (1 << 63) - 1:
            raise InvalidRecordError("ttl must be a positive integer of nanoseconds, at most 2^63 - 1")
        v["ttl"] = ttl
    # 7.1 (1.3): world time, int ns like every time; the window is [valid_from, valid_to)
    if valid_from is not None:
        v["valid_from"] = parse_time(valid_from, "valid_from")
    if valid_to is not None:
        v["valid_to"] = parse_time(valid_to, "valid_to")
        if valid_from is not None and not v["valid_from"] < v["valid_to"]:
            raise InvalidRecordError("valid_from must be before valid_to")
    return v


def _check_size(data: bytes) -> bytes:
    """11: a writer never writes a record its readers refuse."""
    if len(data) > MAX_RECORD_BYTES:
        raise InvalidRecordError(f"record is {len(data)} bytes, over the {MAX_RECORD_BYTES} limit")
    # N bytes hold at most N objects: only longer records are counted
    if len(data) > MAX_RECORD_OBJECTS and canon.count_objects(data, MAX_RECORD_OBJECTS) > MAX_RECORD_OBJECTS:
        raise InvalidRecordError(f"record holds more than {MAX_RECORD_OBJECTS} msgpack objects, over the limit")
    # A map over MAX_MAP entries needs 2 bytes an entry, an array over MAX_ARRAY 1: only a
    # record this long can break those limits, and the reader's own decode is the check
    # (a meta of 100,001 keys was written, and then no open could read the file).
    if len(data) > 2 * MAX_MAP:
        try:
            canon.decode(data)
        except NonCanonicalError as e:
            raise InvalidRecordError(f"record over a reader's limit: {e}") from None
    return data


def encode_value(kind: str, value: dict[str, Any]) -> tuple[bytes, bytes]:
    """(content id, canonical bytes) of an already-canonical record map."""
    data = _check_size(canon.pack(value))
    return record_id(kind, data), data


def encode_record(rec: Any) -> tuple[bytes, bytes]:
    """Return (content id, canonical bytes) of a record object."""
    t = getattr(rec, "time", None)
    if type(t) is int and not 0 <= t < 1 << 63:  # 7.0: never write what a reader refuses (a bumped time)
        raise InvalidRecordError(f"{rec.kind} record time {t} is outside 0 .. 2^63 - 1 nanoseconds")
    data = _check_size(canon.pack(rec.to_value()))
    return record_id(rec.kind, data), data


#: kind -> (its fixstr needle, a decoder of one stored record's bytes into its record object,
#: id included, that checks in C what the exact way checks, or returns None to leave the record
#: to the exact way, which then accepts it or raises); for kinds a file holds many of (``revert``)
_FAST: dict[str, tuple[bytes, Callable[[bytes], Any]]] = {}


def kind_needle(kind: str) -> bytes:
    """The canonical encoding of ``kind`` as a string (5.1: fixstr or str8): every record of that
    kind holds these bytes."""
    raw = kind.encode()
    return bytes([0xA0 | len(raw)]) + raw if len(raw) < 32 else b"\xd9" + bytes([len(raw)]) + raw


def register_fast(kind: str, decode: Callable[[bytes], Any]) -> None:
    _FAST[kind] = (kind_needle(kind), decode)


def decode_fast(data: bytes, kinds: Collection[str] | None = None) -> Any | None:
    """The record the stored bytes ``data`` hold, through a registered fast decoder (of one of
    ``kinds``), or None: then the exact way (``canonical.decode`` + :func:`decode_record`) decides."""
    for kind, (needle, dec) in _FAST.items():
        if (kinds is None or kind in kinds) and needle in data:
            rec = dec(data)
            if rec is not None:
                return rec
    return None


def decode_record(value: object, rid: bytes) -> Any:
    """Turn a decoded canonical map into a record object (7, 12.3)."""
    if not isinstance(value, dict) or type(value.get("kind")) is not str:
        raise InvalidRecordError("a record must be a map with a text `kind`")
    parse_time(value.get("time"), "a record's `time`")  # 7.0: int ns in [0, 2^63) for every kind
    kind = value["kind"]
    cls = _REGISTRY.get(kind)
    if cls is None:
        return GenericRecord(kind, value, rid.hex())
    return cls.from_value(value, rid.hex())


def record_from_input(obj: Mapping[str, Any], *, time: int) -> Any:
    """Build a record from user input (a JSONL line): ``kind`` defaults to memory."""
    kind = obj.get("kind", "memory")
    cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None or getattr(cls, "INTERNAL", False):
        # internal kinds (revert) are written only by the operations that own them
        raise InvalidRecordError(f"unknown record kind {kind!r} (known: {', '.join(input_kinds())})")
    fields = {k: v for k, v in obj.items() if k != "kind"}
    extra = set(fields) - (cls.FIELDS - {"kind"})
    if extra:
        raise InvalidRecordError(f"unknown {kind} field(s): {', '.join(sorted(extra))}")
    if kind == "memory" and "text" not in fields:  # other kinds say what they need in build()
        raise InvalidRecordError("memory needs text")
    t = parse_when(fields.pop("time", time))
    if kind == "memory":  # 7.1 (1.3): the world-time bounds take the forms `time` takes
        for name in ("valid_from", "valid_to"):
            if fields.get(name) is not None:
                fields[name] = parse_when(fields[name])
    return cls.build(time=t, **fields)


def parse_when(t: object) -> object:
    """A time as JSONL gives it: int ns, an integral float, or an ISO-8601 string, as int
    ns; anything else is returned for the field's validator to refuse."""
    if isinstance(t, float) and math.isfinite(t) and t == int(t):
        return int(t)
    if isinstance(t, str):
        return parse_iso_time(t)
    return t


def _shown(v: object) -> str:
    """A bad value for an error message: short, and never str() of an int too long to print."""
    if type(v) is int and v.bit_length() > 64:
        return f"an integer of {v.bit_length()} bits"
    return repr(v)[:40]
