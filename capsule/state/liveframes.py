"""The RECORDS frames that hold a live record (13.1), for a fold that need not read the rest.

Theory of operation: an agent that runs for weeks forgets most of what it wrote, and its
state is a small part of its history. The state is a fold of the live records in commit
order, and which records are live is known before any record is read: every id and the
frame holding it are in the tables' columns and the in-memory map (9.1, 9.2), and the dead
ids and the events' own ids are the liveness fold of the reverts (``fold_of``, which reads
only the frames that can hold a revert). So the frames to read are those of the ids left,
in file order, which is commit order. That rests on what the tables leave out, so every
table is hashed first (9.2). Each frame read is checked against the chain value before it, and each record read as
``Store.get`` reads one (canonical form, content id).

When most records are live, reading every frame in order is cheaper than reading most of
them one by one: :func:`live_frames` then says None, and the fold reads the file in order.
Like any read that need not read them (``get``, ``list``), this one does not read the frames
that hold only dead records, so damage there is reported by ``verify``, which reads every byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..core.errors import CorruptError
from ..core.lazy import lazy
from ..format.store import verify_tables
from .liveness import fold_of

if TYPE_CHECKING:
    import numpy as np

    from ..format.store import Store
else:
    np = lazy("numpy")

#: read the live records one by one when the dead records and the events are at least this
#: share of all: decoding one record alone costs several times its share of a whole frame in C
DEAD_SHARE = 0.8

Plan = list[tuple[int, list[tuple[int, bytes]]]]  # (frame offset, [(slot, id)...]), in file order


def live_frames(store: Store) -> tuple[Plan, set[bytes]] | None:
    """The live records (13.1) by frame, in file order (commit order), each frame's by slot, and
    the dead set at the store's snapshot; None when reading every frame in order is the better
    way (no revert, or less than :data:`DEAD_SHARE` of the records dead or events)."""
    snap = store.snap
    if "revert" not in snap.kinds or not snap.segments:
        return None
    lf = fold_of(store)
    gone = lf.dead | lf.events
    if len(gone) < DEAD_SHARE * snap.records:
        return None
    verify_tables(snap)  # 9.2: the records left unread are those the tables do not name for a live id
    mem = {rid: loc for rid, loc in snap.mem.copy().items() if loc[0] < snap.end}
    ids = np.concatenate([*(s.ids.view("V32") for s in snap.segments), np.frombuffer(b"".join(mem), "V32")])
    frames = np.concatenate([*(s.frames for s in snap.segments),
                             np.fromiter((loc[0] for loc in mem.values()), np.uint64, len(mem))])
    slots = np.concatenate([*(s.slots for s in snap.segments),
                            np.fromiter((loc[1] for loc in mem.values()), np.uint32, len(mem))])
    # 9.2: one entry a record. The hashes say the tables are the writer's, not that the writer was
    # right: a table that named another record's id in place of a live one would hide it here
    if len(ids) != snap.records or len(np.unique(ids)) != len(ids):
        raise CorruptError("the index tables do not hold one entry for each committed record",
                           offset=snap.segments[-1].ref.offset, check="index-table")
    keep = np.flatnonzero(~np.isin(ids, np.frombuffer(b"".join(gone), "V32")))
    keep = keep[np.lexsort((slots[keep], frames[keep]))]
    raw = ids[keep].tobytes()
    plan: Plan = []
    for i, (f, slot) in enumerate(zip(frames[keep].tolist(), slots[keep].tolist(), strict=True)):
        rid = raw[32 * i : 32 * i + 32]
        if not plan or plan[-1][0] != f:
            plan.append((f, []))
        plan[-1][1].append((slot, rid))
    return plan, set(lf.dead)


def live_values(store: Store, plan: Plan) -> Iterator[tuple[bytes, str, dict[str, Any]]]:
    """(id, kind, canonical value) of each record the plan names, in its order, each checked as
    ``Store.get`` checks one: its frame's chain link, canonical form, depth, and its content id."""
    from ..core import constants as C
    from ..format import canonical as canon
    from ..format.records import record_id

    for offset, items in plan:
        for slot, rid in items:
            data, value, kind = store.slot_record(offset, slot)
            if record_id(kind, data) != rid:
                raise CorruptError(f"record {rid.hex()} does not match its content id", offset=offset,
                                   check="content-id")
            if canon.depth(value) > C.MAX_DEPTH:
                raise CorruptError("record nested too deeply", offset=offset, check="canonical")
            yield rid, kind, value


__all__ = ["live_frames", "live_values"]
