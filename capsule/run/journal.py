"""The action journal without a scan: snapshot blobs and their catch-up (spec 7.8, 18).

Theory of operation
-------------------
A key's state is a fold of its ``action`` records in commit order (7.8). Folding
every action record of the file on each open is a scan of history, so the
folded states are persisted as BLOBs of type ``journal`` (3.4), written with
the INDEX frames (9.3) by the commit writer:

- a blob is one *segment*: the states of some keys, sorted by the SHA-256 of
  the key, so a key is found by a binary search and one small decode. Its
  header counts the action records it covers (``actions``: the first that many
  in commit order) and lists the older segments still in use; the newest blob
  the INDEX names is the *head*, and a key's state is the one in the newest
  segment holding it;
- a writer that writes an INDEX while action records lie after the head writes
  a new head holding the keys they changed. Segments are merged in tiers of
  ``FANOUT`` (a log-structured merge), so each state is rewritten O(log n)
  times and a lookup reads O(log n) segments;
- a reader loads the head and its older segments (each checked against its
  SHA-256 before anything in it is used) and folds the action records after
  them. With a head that covers every action record before the newest INDEX
  (``actions`` plus the action records after that INDEX equals the capsule's
  action count), only the frames after that INDEX are read: the ones every open
  replays anyway. Otherwise it reads from the head's first BLOB frame on; a
  head whose count does not add up, or any segment that fails a check, is
  ignored and the journal rebuilt from every action record (``doubt`` says why).

Nothing here decides what a key's state means: :func:`apply` is the fold of
7.8, shared by the scan and the snapshot, so both give the same states.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.errors import CorruptError, DataError, NonCanonicalError
from ..format import canonical as canon
from ..format.blob import BlobRef, read_blob
from ..format.commit import record_kinds
from ..format.frames import parse_frame_header, raw_payload
from ..format.records import decode_record, record_id
from ..format.scan import Reader, Snapshot, payload_head
from ..format.store import Store
from .journal_blob import (
    _HEAD,
    FANOUT,
    JOURNAL_BLOB,
    MAGIC,
    MAX_OLDER,
    ActionState,
    BadSnapshot,
    Segment,
    apply,
    encode_segment,
    key_hash,
    state_bytes,
)

if TYPE_CHECKING:
    import numpy as np
else:
    from ..core.lazy import lazy

    np = lazy("numpy")

def peek_actions(store: Store, ref: BlobRef, snap: Snapshot) -> int | None:
    """The ``actions`` a journal blob's header claims, read without checking the blob:
    enough for a writer to see that the head is current, never to answer a key."""
    try:
        fh = parse_frame_header(store.h.pread(ref.offset, C.FRAME_HEADER_SIZE), ref.offset, expect_seq=None,
                                max_frame_len=snap.header.max_frame_len)
        if fh.ftype != C.FT_BLOB or fh.end > snap.end or fh.payload_len < 2:
            return None
        body = payload_head(store.h, ref.offset, min(fh.payload_len, 4096), snap.header.max_frame_len)
        skip = 2 + int.from_bytes(body[:2], "little")
        magic, n = _HEAD.unpack_from(body, skip)
        h = canon.decode(body[skip + _HEAD.size : skip + _HEAD.size + n])
    except (DataError, struct.error, ValueError):
        return None
    v = h.get("actions") if magic == MAGIC and isinstance(h, dict) else None
    return v if type(v) is int else None


def load_segment(store: Store, ref: BlobRef, snap: Snapshot) -> Segment:
    """Read a journal blob and check it (3.4 and 18.1) before anything in it is used."""
    try:
        content, _, check = read_blob(store.h, ref, snap.header.max_frame_len, snap.end)
        check()
    except CorruptError as e:
        raise BadSnapshot(str(e)) from None
    return Segment(ref, content.tobytes())


# --- reading action records after a point ----------------------------------------------


def action_records(store: Store, start: int, snap: Snapshot, kind: str = "action") -> list[Any]:
    """The records of ``kind`` in the frames from ``start`` (a frame boundary) to the
    snapshot's end, in commit order. Only those records are decoded; the walk
    checks every chain link up to the snapshot's last COMMIT."""
    if start >= snap.end:
        return []
    h, hdr = store.h, snap.header
    prev = hdr.chain_seed if start == C.HEADER_SIZE else h.pread(start - C.TRAILER_SIZE, C.TRAILER_SIZE)
    first = parse_frame_header(h.pread(start, C.FRAME_HEADER_SIZE), start, expect_seq=None,
                               max_frame_len=hdr.max_frame_len)
    rd = Reader(h, start, snap.end, first.seq, prev, hdr.max_frame_len)
    out = []
    for fh, payload, _ in rd.frames():
        if fh.ftype != C.FT_RECORDS:
            continue
        for k, data in record_kinds(raw_payload(fh, payload), fh.offset, fh.seq):
            if k == kind:
                try:
                    value = canon.decode(data)
                except NonCanonicalError as e:
                    raise CorruptError(str(e), offset=fh.offset, seq=fh.seq, check="canonical") from None
                out.append(decode_record(value, record_id(k, data)))
    if rd.chain != snap.chain:
        raise CorruptError("chain does not reach the COMMIT", offset=snap.end, check="chain")
    return out


def decode_items(items: Sequence[tuple[bytes, str, bytes]]) -> list[Any]:
    """The action records among a commit's items, decoded (a record batch of a
    large ingest is searched by its kind column, not record by record)."""
    kinds, codes = getattr(items, "kinds", None), getattr(items, "codes", None)
    if isinstance(kinds, list) and codes is not None:
        if "action" not in kinds:
            return []
        code = kinds.index("action")
        found = [items[int(i)] for i in np.flatnonzero(np.asarray(codes, dtype=np.int64) == code)]
    else:
        found = [it for it in items if it[1] == "action"]
    return [decode_record(canon.decode(data), rid) for rid, _, data in found]


# --- the journal of one handle ------------------------------------------------------------


class JournalIndex:
    """The folded journal of one store's snapshot: segments, plus the states of keys
    changed after the head (``tail``). Callers hold the handle's lock."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.doubt: str | None = None  # why a snapshot was ignored, if one was
        self._bad: BlobRef | None = None  # a head found unusable: not tried again
        self._reset()
        self._pending: tuple[bytes, list[Segment], Segment] | None = None

    def _reset(self) -> None:
        self.at = -1  # the snapshot end the fold is current to (-1: not loaded)
        self.known = 0  # action records folded
        self.head: BlobRef | None = None
        self.segs: list[Segment] = []  # oldest first; the last is the head
        self.tail: dict[str, ActionState] = {}  # keys changed by action records after the head
        self.cache: dict[str, ActionState] = {}  # states read from segments

    # --- reading ---
    def sync(self) -> None:
        """Bring the fold up to the store's snapshot."""
        self.store.check_open()
        snap = self.store.snap
        if snap.end == self.at:
            return
        total = snap.kinds.get("action", 0)
        if self.at >= 0 and total == self.known:
            self.at = snap.end  # no action record since: nothing to fold
            return
        if self.at >= 0 and snap.blobs.get(JOURNAL_BLOB) == self.head and total > self.known:
            recs = action_records(self.store, self.at, snap)  # the frames since we looked: a reader refreshed
            if self.known + len(recs) == total:
                self._fold(recs)
                self.at = snap.end
                return
        self._load(snap)

    def _load(self, snap: Snapshot) -> None:
        self._reset()
        total = snap.kinds.get("action", 0)
        ref = snap.blobs.get(JOURNAL_BLOB)
        if total and ref is not None and ref != self._bad:
            try:
                if self._from_snapshot(snap, ref, total):
                    return
                self.doubt = (f"the journal snapshot at offset {ref.offset} does not cover the capsule's "
                              f"{total} action records: rebuilt from them")
            except BadSnapshot as e:
                self.doubt = f"the journal snapshot at offset {ref.offset} is unusable ({e}): rebuilt from the records"
            self._bad = ref
            self._reset()
        recs = action_records(self.store, C.HEADER_SIZE, snap) if total else []
        self._fold(recs)
        self.at = snap.end

    def _from_snapshot(self, snap: Snapshot, ref: BlobRef, total: int) -> bool:
        head = load_segment(self.store, ref, snap)
        segs = [load_segment(self.store, r, snap) for r in head.older] + [head]
        idx = snap.commit.index if snap.commit is not None else None
        starts = [idx] if idx is not None and idx > ref.offset else []
        for start in [*starts, ref.offset]:
            recs = action_records(self.store, start, snap)
            if head.actions + len(recs) == total:
                self.head, self.segs, self.known = ref, segs, head.actions
                self._fold(recs)
                self.at = snap.end
                return True
        return False

    def _fold(self, recs: Iterable[Any]) -> None:
        for rec in recs:
            st = self.tail.get(rec.key)
            if st is None:
                st = self._stored(rec.key).copy()
                self.cache.pop(rec.key, None)
            apply(st, rec)
            self.tail[rec.key] = st
            self.known += 1

    def _stored(self, key: str) -> ActionState:
        """The key's state in the newest segment holding it."""
        st = self.cache.get(key)
        if st is None:
            h = key_hash(key)
            for seg in reversed(self.segs):
                i = seg.find(h)
                if i is not None:
                    st = seg.state(i)
                    break
            else:
                st = ActionState(key)
            self.cache[key] = st
        return st

    def _guard(self, fn: Any, *args: Any) -> Any:
        """Run a read; a segment entry that fails its check makes the snapshot absent (18.2)."""
        try:
            return fn(*args)
        except BadSnapshot as e:
            snap = self.store.snap
            self.doubt = f"the journal snapshot is unusable ({e}): rebuilt from the records"
            self._bad = snap.blobs.get(JOURNAL_BLOB)
            self._reset()
            self._fold(action_records(self.store, C.HEADER_SIZE, snap))
            self.at = snap.end
            return fn(*args)

    def lookup(self, key: str) -> ActionState:
        """A key's state (``new`` when the journal has no record of it)."""
        self._guard(self.sync)
        return self._guard(self._lookup, key)  # type: ignore[no-any-return]

    def _lookup(self, key: str) -> ActionState:
        st = self.tail.get(key)
        return st if st is not None else self._stored(key)

    def states(self) -> dict[str, ActionState]:
        """Every key the journal holds (reads every entry: for listings)."""
        self._guard(self.sync)
        return self._guard(self._all)  # type: ignore[no-any-return]

    def _all(self) -> dict[str, ActionState]:
        out: dict[str, ActionState] = {}
        for seg in self.segs:
            for i in range(len(seg)):
                st = seg.state(i)
                out[st.key] = st
        out.update(self.tail)
        return out

    def in_doubt(self) -> list[ActionState]:
        """The in-doubt keys, from the segments' doubt lists and the tail: no full read."""
        self._guard(self.sync)
        return self._guard(self._in_doubt)  # type: ignore[no-any-return]

    def _in_doubt(self) -> list[ActionState]:
        keys = {st.key for st in self.tail.values() if st.status == "in-doubt"}
        for seg in self.segs:
            for i in seg.doubt.tolist():
                st = seg.state(i)
                if st.status != "in-doubt":
                    raise BadSnapshot("journal doubt list names an entry that is not in doubt")
                keys.add(st.key)
        out = [self.tail.get(k) or self._stored(k) for k in sorted(keys)]
        return [st for st in out if st.status == "in-doubt"]

    # --- writing (18.3) ---
    def blobs_at_index(self, items: Sequence[tuple[bytes, str, bytes]]) -> list[tuple[str, bytes]]:
        """Called by the commit writer when the commit it lays out writes an INDEX: a new
        head when action records (before it, or in ``items``) lie after the current head."""
        try:
            return self._blobs_at_index(items)
        except DataError as e:  # the commit goes ahead without a new head; readers catch up from the old one
            self.doubt = f"no journal snapshot written ({e})"
            self._pending = None
            return []

    def _blobs_at_index(self, items: Sequence[tuple[bytes, str, bytes]]) -> list[tuple[str, bytes]]:
        snap = self.store.snap
        acts = decode_items(items)
        total = snap.kinds.get("action", 0) + len(acts)
        if total == 0:
            return []
        ref = snap.blobs.get(JOURNAL_BLOB)
        if self.at < 0 and not acts and ref is not None and peek_actions(self.store, ref, snap) == total:
            return []  # the head is current (a hint only: readers check it before they use it)
        self._guard(self.sync)
        if self.head is not None and not self.tail and not acts:
            return []
        return self._guard(self._build, acts)  # type: ignore[no-any-return]

    def _build(self, acts: list[Any]) -> list[tuple[str, bytes]]:
        changed = {k: st.copy() for k, st in self.tail.items()}
        for rec in acts:
            st = changed.get(rec.key)
            if st is None:
                st = changed[rec.key] = self._lookup(rec.key).copy()
            apply(st, rec)
        new = sorted((key_hash(k), state_bytes(st), st.status == "in-doubt") for k, st in changed.items())
        keep, merged = _plan(self.segs, new)
        content = encode_segment(self.known + len(acts), [s.ref for s in keep if s.ref is not None], merged)
        self._pending = (hashlib.sha256(content).digest(), keep, Segment(None, content))
        return [(JOURNAL_BLOB, content)]

    def committed(self, items: Sequence[tuple[bytes, str, bytes]]) -> None:
        """After a durable commit: fold its action records; adopt the head it wrote."""
        pending, self._pending = self._pending, None
        if self.at < 0:
            return  # not loaded: the next read loads from the file
        try:
            self._fold(decode_items(items))
        except BadSnapshot as e:  # the commit is durable; the next read rebuilds from the records
            self.doubt = f"the journal snapshot is unusable ({e}): rebuilt from the records"
            self._bad = self.store.snap.blobs.get(JOURNAL_BLOB)
            self._reset()
            return
        snap = self.store.snap
        ref = snap.blobs.get(JOURNAL_BLOB)
        if pending is not None and ref is not None and ref.id == pending[0] and ref != self.head:
            keep, seg = pending[1], pending[2]
            seg.ref = ref
            self.head, self.segs, self.tail = ref, [*keep, seg], {}
        self.at = snap.end


def _tier(n: int) -> int:
    t = 0
    while n >= FANOUT:
        n //= FANOUT
        t += 1
    return t


def _plan(segs: list[Segment], new: list[tuple[bytes, bytes, bool]]) -> tuple[list[Segment],
                                                                             list[tuple[bytes, bytes, bool]]]:
    """18.3 (informative): the segments kept as they are, and the entries of the new head.

    The new entries are merged with the newest segments while those of their size
    tier or below number FANOUT - 1 (so FANOUT segments of one tier become one of the
    next), and while more than MAX_OLDER segments would be left."""
    keep = list(segs)
    size = len(new)
    while keep:
        t = _tier(size)
        run = 0
        while run < len(keep) and _tier(len(keep[-1 - run])) <= t:
            run += 1
        if run >= FANOUT - 1:
            take = run
        elif len(keep) > MAX_OLDER:
            take = 1
        else:
            break
        size += sum(len(s) for s in keep[len(keep) - take :])
        del keep[len(keep) - take :]
    merged_from = segs[len(keep) :]
    if not merged_from:
        return keep, new
    by_key: dict[bytes, tuple[bytes, bytes, bool]] = {}
    for s in merged_from:  # oldest first: a newer state replaces an older one
        for e in s.entries():
            by_key[e[0]] = e
    for e in new:
        by_key[e[0]] = e
    return keep, [by_key[k] for k in sorted(by_key)]
