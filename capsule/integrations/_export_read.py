"""The read side of export: every committed record of a capsule view, in commit order, with
the commit that made it durable and whether it is live (spec 6.1, 7.7.1, 13.1).

Theory of operation: one sequential pass over the frames of the view (the same ``Reader``
``Store.records`` uses, so every frame's chain and every record's content id and canonical
form are checked on the way), one RECORDS frame decoded at a time. A frame belongs to the
first commit whose COMMIT frame comes after it, found by bisecting the commit offsets that
``log`` lists (a few ints per commit). Liveness is the shared fold (``state.liveness``): the
dead set and the revert events' own ids. Nothing but the current frame's records is held,
so memory does not grow with the capsule.

A redacted record (7.7.1) is never returned with its payload: it comes as a
``RedactedRecord`` (id and kind), whatever view it was read from.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.errors import CorruptError, DataError, UsageError
from ..format.commit import decode_records_payload
from ..format.frames import raw_payload
from ..format.kindwalk import walk
from ..format.records import _REGISTRY, decode_record
from ..format.records import record_id as content_id
from ..format.scan import Reader
from ..questions._lifecycle import RedactedRecord, redacted
from ..state.liveness import fold_of

if TYPE_CHECKING:
    from ..handle.capsule import Capsule

#: 13.1: kinds that are events, never live
EVENT_KINDS = frozenset({"revert"})


@dataclass(frozen=True, slots=True)
class Entry:
    """One committed record as export sees it."""

    rec: Any  # a typed record (Memory, Decision, ...), a GenericRecord, or a RedactedRecord
    rid: bytes
    seq: int  # the seq of the COMMIT frame that made it durable (as ``capsule log`` shows it)
    commit_time: int
    live: bool
    redacted: bool


def known_kinds(cap: Capsule) -> list[str]:
    """Every kind this reader knows, and every kind the file holds (a newer writer's too)."""
    # the registry fills as the kinds' modules load; a capsule handle loads the state kinds,
    # the run kinds are loaded here so that `--kind task` is known before any task is read
    from ..run import actions, tasks  # noqa: F401
    from ..state import kinds  # noqa: F401

    return sorted(set(_REGISTRY) | set(cap.kinds()))


def check_kinds(cap: Capsule, kinds: Collection[str] | None) -> frozenset[str] | None:
    """The kinds asked for, each known (UsageError names an unknown one and the known ones)."""
    if kinds is None:
        return None
    want = frozenset([kinds] if isinstance(kinds, str) else kinds)
    if not want:
        return None
    known = known_kinds(cap)
    for k in sorted(want):
        if k not in known:
            raise UsageError(f"unknown kind {k!r} (known: {', '.join(known)})")
    return want


def agent_of(cap: Capsule) -> str | None:
    """The agent id of the view's current identity (7.5: the latest live identity record),
    or None when it has none. Only frames that can hold an identity are read."""
    store = cap._store
    f = fold_of(store)
    red = redacted(store)
    agent: str | None = None
    for _, _, rec in walk(store, ("identity",)):
        rid = bytes.fromhex(rec.id)
        if rid not in f.dead and rid not in red and isinstance(getattr(rec, "agent_id", None), str):
            agent = rec.agent_id
    return agent or None


def entries(cap: Capsule, kinds: frozenset[str] | None = None, *, history: bool = False,
            tick: Callable[[int], None] | None = None) -> Iterator[Entry]:
    """The view's records in commit order: the live ones (13.1), or with ``history`` every
    committed record (dead ones and revert events too), each marked ``live``. ``tick(n)`` is
    called with each frame's record count once the frame is read (for a progress bar)."""
    store = cap._store
    store.check_open()
    snap = store.snap
    log = store.log()
    ends = [row.offset for row in log]  # a commit covers the frames before its COMMIT frame
    f = fold_of(store)
    dead, events = f.dead, f.events
    red = redacted(store)
    rd = Reader(store.h, C.HEADER_SIZE, snap.end, 0, snap.header.chain_seed, snap.header.max_frame_len)
    for fh, payload, _ in rd.frames():
        if fh.ftype != C.FT_RECORDS:
            continue
        i = bisect_right(ends, fh.offset)
        if i >= len(ends):
            break  # after the last commit of the view: not committed (a torn tail is never read)
        row = log[i]
        pairs = decode_records_payload(raw_payload(fh, payload), fh.offset, fh.seq)
        if tick is not None:
            tick(len(pairs))
        for value, data in pairs:
            k = value.get("kind") if isinstance(value, dict) else None
            if not isinstance(k, str):
                raise CorruptError("record without a kind", offset=fh.offset, seq=fh.seq, check="record")
            if kinds is not None and k not in kinds:
                continue
            rid = content_id(k, data)
            live = k not in EVENT_KINDS and rid not in dead and rid not in events
            if not live and not history:
                continue
            if rid in red:
                yield Entry(RedactedRecord(rid.hex(), k), rid, row.seq, row.time, live, True)
                continue
            try:
                rec = decode_record(value, rid)
            except CorruptError:
                raise
            except DataError as e:  # a record that does not fit its kind: where it is, as the reader says
                raise CorruptError(f"record {rid.hex()}: {e}", offset=fh.offset, seq=fh.seq,
                                   check="record-schema") from None
            yield Entry(rec, rid, row.seq, row.time, live, False)


__all__ = ["EVENT_KINDS", "Entry", "agent_of", "check_kinds", "entries", "known_kinds"]
