"""The action journal's snapshot blob, sans-IO: the fold of 7.8 and the segment codec (spec 18.1).

A key's state (:class:`ActionState`) is the fold (:func:`apply`) of its action
records in commit order. A *segment* (the content of a ``journal`` BLOB) holds
the folded states of some keys, sorted by the SHA-256 of the key so that one key
is a binary search and one small decode away; :class:`Segment` checks every bound
of 18.1 when it parses a segment and each entry's fields and key hash when it
decodes that entry, so nothing in a segment is used unchecked. How segments are
found, merged and caught up is :mod:`.journal`'s business.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.errors import DataError, NonCanonicalError
from ..format import canonical as canon
from ..format.blob import BlobRef, part_count

if TYPE_CHECKING:
    import numpy as np
else:
    from ..core.lazy import lazy

    np = lazy("numpy")

JOURNAL_BLOB = "journal"  # 18: the BLOB type (3.4)
MAGIC = b"CAPJRNL1"
KEY_TAG = b"capsule/v1/action-key\x00"  # 18.1: key hash domain tag
FANOUT = 4  # 18.3: segments of one size tier merged at a time (informative)
MAX_OLDER = 63  # 18.1: older segments one head may list
_HEAD = struct.Struct("<8sI")
STATUSES = ("new", "in-doubt", "done", "failed", "not-done")
_FIELDS = frozenset({"attempt", "by", "error", "finished", "key", "started", "status", "value", "what"})


@dataclass
class ActionState:
    """What the journal says about one key."""

    key: str
    status: str = "new"  # new | in-doubt | done | failed | not-done
    attempt: int = 0
    what: str = ""
    value: Any = None
    error: str = ""
    by: str = ""
    started: int | None = None
    finished: int | None = None

    def copy(self) -> ActionState:
        return ActionState(**vars(self))

    def to_dict(self) -> dict[str, Any]:
        from ..core.clock import iso

        return {"key": self.key, "status": self.status, "attempt": self.attempt, "what": self.what,
                "value": _jsonable(self.value), "error": self.error or None, "by": self.by or None,
                "started": None if self.started is None else iso(self.started),
                "finished": None if self.finished is None else iso(self.finished)}


def _jsonable(v: Any) -> Any:
    """Stored values as JSON: bytes become hex."""
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def apply(st: ActionState, rec: Any) -> None:
    """Fold one journal record into a key's state (7.8)."""
    if rec.phase == "intent":
        st.status, st.attempt, st.what = "in-doubt", rec.attempt, rec.what or st.what
        st.started, st.finished, st.value, st.error, st.by = rec.time, None, None, "", ""
    elif rec.attempt == st.attempt:
        if rec.phase == "result" or rec.ok:
            st.status = "done" if rec.ok else "failed"
            st.value, st.error, st.by, st.finished = rec.value, rec.error, rec.by or "fn", rec.time
        else:  # resolve, not done: the next call may run it again
            st.status, st.by, st.finished = "not-done", rec.by, rec.time


def key_hash(key: str) -> bytes:
    """18.1: where a key sorts in a segment."""
    return hashlib.sha256(KEY_TAG + key.encode()).digest()


# --- one entry: a key's folded state as a canonical map (18.1) ------------------------


def state_bytes(st: ActionState) -> bytes:
    v: dict[str, Any] = {"attempt": st.attempt}
    if st.by:
        v["by"] = st.by
    if st.error:
        v["error"] = st.error
    if st.finished is not None:
        v["finished"] = st.finished
    v["key"] = st.key
    if st.started is not None:
        v["started"] = st.started
    v["status"] = st.status
    if st.value is not None:
        v["value"] = st.value
    if st.what:
        v["what"] = st.what
    return canon.pack(v)


class BadSnapshot(DataError):
    """A journal segment failed a check (18.2): the snapshot is absent, rebuild."""


def parse_state(data: bytes) -> ActionState:
    """18.1: one entry, strictly: unknown fields, missing ones and spelled-out defaults refused."""
    try:
        v = canon.decode(data)
    except NonCanonicalError as e:
        raise BadSnapshot(f"journal entry: {e}") from None
    if not isinstance(v, dict) or not {"attempt", "key", "status"} <= set(v) <= _FIELDS:
        raise BadSnapshot("journal entry fields are wrong")
    a, key, status = v["attempt"], v["key"], v["status"]
    if type(a) is not int or not 0 <= a < 1 << 31 or not isinstance(key, str) or status not in STATUSES:
        raise BadSnapshot("journal entry key, status or attempt is malformed")
    for name in ("by", "error", "what"):
        if name in v and (not isinstance(v[name], str) or not v[name]):
            raise BadSnapshot(f"journal entry {name} is malformed")
    for name in ("started", "finished"):
        if name in v and (type(v[name]) is not int or not 0 <= v[name] < 1 << 63):
            raise BadSnapshot(f"journal entry {name} is malformed")
    if "value" in v and v["value"] is None:
        raise BadSnapshot("journal entry spells out a nil value")
    return ActionState(key, status, a, v.get("what", ""), v.get("value"), v.get("error", ""), v.get("by", ""),
                       v.get("started"), v.get("finished"))


# --- one segment: a journal blob (18.1) ----------------------------------------------


def encode_segment(actions: int, older: Sequence[BlobRef], entries: Sequence[tuple[bytes, bytes, bool]]) -> bytes:
    """The content of a journal blob; ``entries`` are (key hash, state bytes, in doubt), sorted by hash."""
    head = canon.pack({"actions": actions, "count": len(entries), "doubt": sum(e[2] for e in entries),
                       "older": [[r.offset, r.parts, r.size, r.id] for r in older]})
    offs = np.zeros(len(entries) + 1, "<u8")
    if entries:
        np.cumsum([len(e[1]) for e in entries], out=offs[1:])
    doubt = np.array([i for i, e in enumerate(entries) if e[2]], "<u4")
    return b"".join([_HEAD.pack(MAGIC, len(head)), head, b"".join(e[0] for e in entries), offs.tobytes(),
                     doubt.tobytes(), *(e[1] for e in entries)])


class Segment:
    """A parsed, hash-checked journal blob: binary search by key hash, entries decoded on demand."""

    __slots__ = ("ref", "actions", "older", "keys", "count", "offs", "doubt", "states")

    def __init__(self, ref: BlobRef | None, content: bytes) -> None:
        self.ref = ref  # None until the commit writing it is durable
        bad = BadSnapshot
        if len(content) < _HEAD.size:
            raise bad("journal blob is shorter than its header")
        magic, n = _HEAD.unpack_from(content)
        if magic != MAGIC or n == 0 or _HEAD.size + n > len(content):
            raise bad("journal blob header is malformed")
        try:
            h = canon.decode(content[_HEAD.size : _HEAD.size + n])
        except NonCanonicalError as e:
            raise bad(f"journal blob header: {e}") from None
        if not isinstance(h, dict) or set(h) != {"actions", "count", "doubt", "older"}:
            raise bad("journal blob header fields are wrong")
        count, nd, older = h["count"], h["doubt"], h["older"]
        if any(type(x) is not int or x < 0 for x in (h["actions"], count, nd)) or nd > count:
            raise bad("journal blob counts are malformed")
        at = _HEAD.size + n
        fixed = 32 * count + 8 * (count + 1) + 4 * nd
        if at + fixed > len(content):
            raise bad("journal blob is shorter than its sections")
        self.actions = int(h["actions"])
        self.older = _older(older, ref)
        self.keys = content[at : at + 32 * count]
        self.count = int(count)
        self.offs = np.frombuffer(content, "<u8", count + 1, at + 32 * count)
        self.doubt = np.frombuffer(content, "<u4", nd, at + 32 * count + 8 * (count + 1))
        self.states = memoryview(content)[at + fixed :]
        keys = np.frombuffer(content, np.uint8, 32 * count, at).reshape(count, 32)
        # 18.1: keys strictly ascending, offsets non-decreasing from 0 to the end, doubt
        # indexes strictly ascending below count: every bound a lookup relies on
        if count > 1 and not _ascending(keys):
            raise bad("journal blob keys are not sorted")
        if self.offs[0] != 0 or int(self.offs[-1]) != len(self.states) or bool(np.any(np.diff(self.offs.astype(
                np.int64)) <= 0)):
            raise bad("journal blob offsets are malformed")
        if nd and (int(self.doubt[-1]) >= count or bool(np.any(np.diff(self.doubt.astype(np.int64)) <= 0))):
            raise bad("journal blob doubt list is malformed")
        self.ref = ref

    def __len__(self) -> int:
        return self.count

    def key(self, i: int) -> bytes:
        return self.keys[32 * i : 32 * i + 32]

    def find(self, h: bytes) -> int | None:
        """Binary search of the sorted key hashes."""
        lo, hi = 0, self.count
        while lo < hi:
            mid = (lo + hi) // 2
            k = self.key(mid)
            if k < h:
                lo = mid + 1
            elif k > h:
                hi = mid
            else:
                return mid
        return None

    def raw(self, i: int) -> bytes:
        return bytes(self.states[int(self.offs[i]) : int(self.offs[i + 1])])

    def state(self, i: int) -> ActionState:
        st = parse_state(self.raw(i))
        if key_hash(st.key) != self.key(i):
            raise BadSnapshot(f"journal entry {st.key!r} is filed under another key")
        return st

    def entries(self) -> Iterator[tuple[bytes, bytes, bool]]:
        """Every entry, checked (a merge never carries a bad entry into a new head)."""
        doubt = set(self.doubt.tolist())
        for i in range(self.count):
            in_doubt = self.state(i).status == "in-doubt"
            if in_doubt != (i in doubt):
                raise BadSnapshot("journal doubt list does not match the entries")
            yield self.key(i), self.raw(i), in_doubt


def _ascending(keys: np.ndarray) -> bool:
    """Rows of a (n, 32) uint8 array in strictly ascending byte order."""
    a, b = keys[:-1], keys[1:]
    diff = a != b
    first = np.argmax(diff, axis=1)  # the first differing byte of each neighbouring pair
    rows = np.arange(len(a))
    return bool(diff.any(axis=1).all() and np.all(a[rows, first] < b[rows, first]))


def _older(v: object, ref: BlobRef | None) -> list[BlobRef]:
    if not isinstance(v, list) or len(v) > MAX_OLDER:
        raise BadSnapshot("journal blob older list is malformed")
    out: list[BlobRef] = []
    for e in v:
        if (not isinstance(e, list) or len(e) != 4 or any(type(x) is not int for x in e[:3])
                or not isinstance(e[3], bytes) or len(e[3]) != 32):
            raise BadSnapshot("journal blob older entry is malformed")
        at, parts, size, sha = e
        # 18.1: older segments lie before this one, oldest first, each a whole blob
        if (at < C.HEADER_SIZE or (ref is not None and at >= ref.offset) or size < 0
                or parts != part_count(size) or (out and at <= out[-1].offset)):
            raise BadSnapshot("journal blob older entry is out of range")
        out.append(BlobRef(JOURNAL_BLOB, at, parts, size, sha))
    return out
