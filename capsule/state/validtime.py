"""The valid-time view: what was true in the world at time T, as known at a commit (spec 13.6, 1.3).

Theory of operation: a memory may bound when its fact is true (7.1 ``valid_from``,
``valid_to``; a ``ttl`` also ends it at ``time + ttl``), and a ``supersede`` event
(7.7.1) whose replacements all carry a ``valid_from`` says the old fact stopped being
true then (a world change), while one without says the old fact was wrong (a
correction). So the view at T holds the live memories whose window contains T plus the
memories superseded by a world change whose window, cut at the replacement's
``valid_from``, contains T; every other record is as the commit's state has it.

Only the records that can change the view are read: a memory holding one of the three
keys and the ``revert`` events (a RECORDS frame whose payload holds none of their
fixstr encodings, 5.1, is not split). :class:`ValidTime` keeps what it read and reads
only the frames after it on the next :meth:`ValidTime.update`, so a searcher following a
growing file pays for each frame once. Everything is a function of the committed bytes
up to the snapshot and of T: no clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.errors import CorruptError, UsageError
from ..core.lazy import lazy
from ..format import canonical as canon
from ..format.commit import decode_records_payload
from ..format.frames import raw_payload
from ..format.records import Memory, decode_record, parse_time_arg, record_id
from ..format.scan import Reader
from .fold import State, fold_store
from .liveness import apply_revert

if TYPE_CHECKING:
    import numpy as np

    from ..format.store import Store
else:
    np = lazy("numpy")

#: an upper bound no int64 time reaches: an open end
OPEN_END = 1 << 64
_I63 = 1 << 63
#: fixstr encodings (5.1) of the keys and kind a record that matters here must hold
_NEEDLES = (b"\xaavalid_from", b"\xa8valid_to", b"\xa3ttl", b"\xa6revert")


_CODECS: list[tuple[Any, Any]] = []


def _codecs() -> tuple[Any, Any]:
    """(decoder of what the view needs of each record, splitter); msgspec loads on first use."""
    if not _CODECS:
        import msgspec

        class Facts(msgspec.Struct, gc=False):
            """Unknown fields are skipped: the stricter check is the reader's, which every
            other read of the record makes."""

            kind: str
            time: int = 0
            ttl: int | None = None
            valid_from: int | None = None
            valid_to: int | None = None

        _CODECS.append((msgspec.msgpack.Decoder(list[Facts]), msgspec.msgpack.Decoder(list[msgspec.Raw])))
    return _CODECS[0]


def window(m: Memory) -> tuple[int, int]:
    """13.6: the half-open world-time window ``[lo, hi)`` of a memory's own fields."""
    hi = OPEN_END if m.valid_to is None else m.valid_to
    if m.ttl is not None:
        hi = min(hi, m.time + m.ttl)
    return (0 if m.valid_from is None else m.valid_from), hi


class ValidTime:
    """What the valid-time view needs of a snapshot, read incrementally (see the module doc)."""

    def __init__(self) -> None:
        self.end = 0  # file offset read up to (0: nothing yet)
        self._seq = 0
        self._chain = b""
        self.bounds: dict[bytes, tuple[int, int]] = {}  # memory id -> its own window, when bounded
        self.starts: dict[bytes, int] = {}  # memory id -> valid_from (a replacement's cut)
        self.dead: set[bytes] = set()  # 13.1, through apply_revert
        self.redacted: set[bytes] = set()  # 7.7.1: never shown
        self.superseded: dict[bytes, tuple[bytes, ...]] = {}  # id -> `by` of the last event that dropped it
        self._split: Split | None = None

    def update(self, store: Store) -> ValidTime:
        """Read the committed frames after what was read, up to ``store``'s snapshot."""
        store.check_open()
        snap = store.snap
        if self.end == 0:
            self.end, self._seq, self._chain = C.HEADER_SIZE, 0, snap.header.chain_seed
        if snap.end <= self.end:
            return self
        rd = Reader(store.h, self.end, snap.end, self._seq, self._chain, snap.header.max_frame_len)
        for fh, payload, _ in rd.frames():
            if fh.ftype != C.FT_RECORDS:
                continue
            raw = raw_payload(fh, payload)
            if any(n in raw for n in _NEEDLES) and not self._bulk(raw):
                self._exact(raw, fh.offset, fh.seq)
        self.end, self._seq, self._chain = rd.pos, rd.seq, rd.chain
        self._split = None
        return self

    def _exact(self, raw: bytes, offset: int, seq: int) -> None:
        """One RECORDS payload, record by record, as every reader decodes it (raises its errors)."""
        for value, data in decode_records_payload(raw, offset, seq):
            kind = value.get("kind") if type(value) is dict else None
            if kind != "memory" and kind != "revert":
                if type(kind) is not str:
                    raise CorruptError("record without a kind", offset=offset, seq=seq, check="record")
                continue
            rid = record_id(kind, data)
            rec = decode_record(value, rid)
            if kind == "revert":
                self._revert(rec)
            elif rec.valid_from is not None or rec.valid_to is not None or rec.ttl is not None:
                self._bound(rid, window(rec), rec.valid_from)

    def _bulk(self, raw: bytes) -> bool:
        """One RECORDS payload read in C, only the fields this needs (msgspec); False when it
        has any doubt (the exact way then decides). Reverts are decoded the exact way."""
        import msgspec

        facts, split = _codecs()
        try:
            recs = facts.decode(raw)
            parts = split.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return False
        if len(recs) != len(parts):
            return False
        found = []
        for r, part in zip(recs, parts, strict=True):
            if r.kind == "revert":
                found.append((r, part))
            elif r.kind == "memory" and (r.valid_from is not None or r.valid_to is not None or r.ttl is not None):
                vf, vt, ttl = r.valid_from, r.valid_to, r.ttl
                if not (0 <= r.time < _I63 and (vf is None or 0 <= vf < _I63) and (vt is None or 0 <= vt < _I63)
                        and (vf is None or vt is None or vf < vt) and (ttl is None or 0 < ttl < _I63)):
                    return False  # 7.1: the exact way names the failure
                found.append((r, part))
        for r, part in found:
            data = bytes(part)
            if r.kind == "revert":
                value = canon.decode(data)
                self._revert(decode_record(value, record_id("revert", data)))
            else:
                hi = OPEN_END if r.valid_to is None else r.valid_to
                if r.ttl is not None:
                    hi = min(hi, r.time + r.ttl)
                self._bound(record_id("memory", data), (r.valid_from or 0, hi), r.valid_from)
        return True

    def _bound(self, rid: bytes, win: tuple[int, int], start: int | None) -> None:
        self.bounds[rid] = win
        if start is not None:
            self.starts[rid] = start

    def _revert(self, rec: object) -> None:
        op, by = getattr(rec, "op", None), getattr(rec, "by", ())
        for x in rec.drop:  # type: ignore[attr-defined]
            if op == "supersede":
                self.superseded[x] = by
            else:
                self.superseded.pop(x, None)
        apply_revert(self.dead, self.redacted, rec)

    def cut(self, rid: bytes) -> int | None:
        """When a dead memory stopped being true because a world change superseded it
        (the smallest ``valid_from`` of the replacements), or None: it is not shown."""
        by = self.superseded.get(rid)
        if by is None or rid not in self.dead or rid in self.redacted:
            return None
        starts = [self.starts.get(b) for b in by]
        if None in starts:
            return None  # a replacement without a valid_from: a correction (13.6)
        return min(starts)  # type: ignore[type-var]

    def holds(self, rid: bytes, t: int) -> bool:
        """Whether the memory ``rid`` (read by :meth:`update`) is in the view at ``t``."""
        lo, hi = self.bounds.get(rid, (0, OPEN_END))
        if rid in self.dead:
            c = self.cut(rid)
            if c is None:
                return False
            hi = min(hi, c)
        return lo <= t < hi

    def split(self) -> Split:
        """The facts as arrays, kept until the next :meth:`update`: the ids hidden at every
        time, and the others that may be hidden with their windows (a superseded memory's
        cut at its replacement's ``valid_from``)."""
        if self._split is None:
            always: list[bytes] = []
            wins: list[tuple[bytes, int, int]] = []
            for rid in self.dead:
                c = self.cut(rid)
                if c is None:
                    always.append(rid)
                    continue
                a, b = self.bounds.get(rid, (0, OPEN_END))
                wins.append((rid, a, min(b, c)))
            wins.extend((rid, a, b) for rid, (a, b) in self.bounds.items() if rid not in self.dead)
            wid = [w[0] for w in wins]
            lo = [w[1] for w in wins]
            hi = [w[2] for w in wins]
            u64 = (1 << 64) - 1  # every T is below 2^63: an open end still lies beyond it
            self._split = Split(always, wid, np.array(always, "S32"), np.array(wid, "S32"),
                                np.array(lo, np.uint64), np.minimum(np.array(hi, object), u64).astype(np.uint64))
        return self._split

    def hidden(self, t: int) -> frozenset[bytes]:
        """The ids a reader of the view at ``t`` treats as dead, in place of the dead set of
        13.1: the dead ids but the superseded memories true at ``t``, and the memories whose
        own window leaves ``t`` out. A non-memory id is in it exactly when it is dead."""
        sp = self.split()
        out = (sp.window_ids[i] for i in np.flatnonzero(~sp.holds(t)).tolist())
        return frozenset(sp.always).union(out)


@dataclass(frozen=True, slots=True)
class Split:
    """:meth:`ValidTime.split`: ``always`` (and ``always_arr``, ``S32``) hidden at every time;
    ``window_ids`` (``window_arr``) hidden at T unless ``lo <= T < hi``."""

    always: list[bytes]
    window_ids: list[bytes]
    always_arr: np.ndarray
    window_arr: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def holds(self, t: int) -> np.ndarray:
        """Which of ``window_ids`` the view at ``t`` holds."""
        tt = np.uint64(t)
        return (self.lo <= tt) & (tt < self.hi)  # type: ignore[no-any-return]


def parse_valid_at(v: object, name: str = "valid_at") -> int:
    """A ``valid_at`` as the caller gives it: int ns or an ISO-8601 time (no zone: UTC);
    ``name`` is what an error calls it (the CLI's ``--valid-at``)."""
    if type(v) is int and 0 <= v < 1 << 63:
        return v
    if isinstance(v, str) and not v.strip().lstrip("-").isdigit():
        return parse_time_arg(v, name)
    raise UsageError(f"{name} {v!r} is not an ISO-8601 time or non-negative integer nanoseconds")


def valid_time(store: Store) -> ValidTime:
    """The valid-time facts of ``store``'s snapshot, read in one pass."""
    return ValidTime().update(store)


def fold_at(store: Store, valid_at: object) -> State:
    """The state at ``store``'s snapshot with the memories of the view at ``valid_at``."""
    t = parse_valid_at(valid_at)
    return fold_store(store, (t, valid_time(store).hidden(t)))


def records_at(store: Store, kind: str | None, valid_at: object) -> Iterator[Any]:
    """``store.records(kind)`` with only the memories of the view at ``valid_at`` (13.6)."""
    hide = valid_time(store).hidden(parse_valid_at(valid_at))
    for rec in store.records(kind):
        if rec.kind != "memory" or bytes.fromhex(rec.id) not in hide:
            yield rec


__all__ = ["OPEN_END", "Split", "ValidTime", "fold_at", "parse_valid_at", "records_at", "valid_time", "window"]
