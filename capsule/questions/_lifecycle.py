"""Redaction on the read paths (spec 7.7.1): which ids are redacted and by which event, for
a store and for the views made from it, and the placeholders reads give in their place.

Theory of operation: the liveness fold itself (dead ids, redacted ids, event ids, extended
commit by commit) is ``state/liveness.py``'s :func:`fold_of`, shared with the state root.

A view (``Capsule.view``, ``--at``) fixed before a redaction still must not show the
redacted payload (7.7.1: reads never return it before compaction), so the view's store
*inherits* the redacted set of the handle it came from (:func:`inherit`): its liveness is
the view's own, its redactions those the file holds now.

:class:`RedactedRecord` is what ``Capsule.records`` yields in place of a redacted record:
its id and kind, ``redacted=True``, no payload.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..core.clock import iso
from ..format.store import Store
from ..state.fold import State
from ..state.liveness import fold_of

_GUARD = threading.Lock()
_INHERITED: weakref.WeakKeyDictionary[Store, Mapping[bytes, Any]] = weakref.WeakKeyDictionary()


def dead_ids(store: Store) -> set[bytes]:
    """13.1: the ids revert events hold dead at the store's snapshot (do not mutate)."""
    return fold_of(store).dead


def redacted(store: Store) -> Mapping[bytes, Any]:
    """7.7.1: redacted id -> the redact event, at the snapshot (a view: what the file it came
    from held when the view was made, too). Empty and free when no revert was ever written."""
    inh = _INHERITED.get(store)
    if "revert" not in store.snap.kinds:
        return inh or {}
    f = fold_of(store)
    if not inh:
        return f.redacted
    with f.lock:  # another thread may be extending it
        return {**inh, **f.redacted}


def redaction(store: Store, rid: bytes) -> Any:
    """The redact event that names ``rid`` at the store (as :func:`redacted` has it), or None:
    two lookups, never the merged copy :func:`redacted` makes for a view (one ``get`` of a view
    over many redactions would cost them all)."""
    ev = fold_of(store).redacted.get(rid) if "revert" in store.snap.kinds else None
    if ev is None:
        inh = _INHERITED.get(store)
        ev = inh.get(rid) if inh else None
    return ev


def inherit(child: Store, parent: Store) -> None:
    """A view of ``parent`` hides what ``parent`` holds redacted, even from before the redaction."""
    red = redacted(parent)
    if red:
        f = fold_of(parent)
        with f.lock:
            copy = dict(red)
        with _GUARD:
            _INHERITED[child] = copy


def describe(rid: bytes, event: Any) -> str:
    """One line: which record was redacted, when, by whom and why."""
    who = f" by {event.actor}" if event.actor else ""
    why = f": {event.reason}" if event.reason else ""
    return f"record {rid.hex()} was redacted at {iso(event.time)}{who}{why} (event {event.id[:12]})"


@dataclass(frozen=True, slots=True)
class RedactedRecord:
    """A redacted record as reads show it (7.7.1): id and kind, no payload."""

    id: str
    kind: str
    redacted: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "redacted": True}


def scrub(records: Iterable[Any], red: Mapping[bytes, Any]) -> Iterator[Any]:
    """``records`` with each redacted one replaced by its :class:`RedactedRecord`."""
    if not red:
        yield from records
        return
    for rec in records:
        yield RedactedRecord(rec.id, rec.kind) if bytes.fromhex(rec.id) in red else rec


#: 7.7.1: what a removed record's reason (``diff``) or mark (``why``) says, per op
PAST = {"forget": "forgotten", "redact": "redacted", "supersede": "superseded", "promote": "promoted",
        "demote": "demoted"}


def event_doc(ev: Any) -> dict[str, Any]:
    """A lifecycle event as the questions' documents carry it."""
    return {"op": ev.op, "event": ev.id, "time": iso(ev.time), "records": [x.hex() for x in ev.drop],
            "by": [x.hex() for x in ev.by], "evidence": [x.hex() for x in ev.evidence], "reason": ev.reason,
            "actor": ev.actor}


def kind_of(store: Store, rid: bytes) -> str | None:
    """A stored record's kind (not its payload), read at the store: a redacted record's too."""
    rec = store.get(rid)
    return None if rec is None else str(rec.kind)


def redacted_node(rid: bytes, kind: str | None = None) -> dict[str, Any]:
    """A node (``_walk.ref``'s shape) for a redacted record: no time, no text."""
    return {"id": rid.hex(), "kind": kind, "time": None, "summary": "[redacted]", "redacted": True}


def scrub_state(state: State, red: Mapping[bytes, Any]) -> State:
    """A state whose memories, decisions or notes include a redacted record (a view from before
    the redaction): each such entry becomes ``{"id", "kind", "redacted": true}`` in place. The
    state root and the live set are the view's own (13.1): only the payload is withheld."""
    if not red:
        return state
    hit = False

    def fix(rows: list[dict[str, Any]], kind: str) -> None:
        nonlocal hit
        for i, d in enumerate(rows):
            if bytes.fromhex(d["id"]) in red:
                rows[i] = {"id": d["id"], "kind": kind, "redacted": True}
                hit = True

    for rows in state.memories.values():
        fix(rows, "memory")
    fix(state.decisions, "decision")
    fix(state.notes, "note")
    if hit:
        state.special_meta = None  # to_json then looks at every value (13.2)
    return state


__all__ = ["PAST", "RedactedRecord", "dead_ids", "describe", "event_doc", "fold_of", "inherit", "kind_of",
           "redacted", "redacted_node", "redaction", "scrub", "scrub_state"]
