"""Liveness (spec 13.1, 7.7.1): the one place a ``revert`` event changes the dead set.

Kept apart from the fold so that every reader of liveness (the fold, policies, the lexical
catalog, the verifier, the state root, the questions) shares it without importing the fold.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from ..format.commit import CommitInfo
from ..format.kindwalk import walk
from ..format.store import Store


def apply_revert(dead: set[bytes], redacted: set[bytes], rec: Any) -> None:
    """13.1: one ``revert`` event, in commit order: its ``drop`` ids die, then its
    ``restore`` ids live again, except a redacted id (7.7.1), which never does.
    ``redacted`` holds the ids redacted so far and gains this event's."""
    dead.update(rec.drop)
    if rec.op == "redact":
        redacted.update(rec.drop)
    if rec.restore:
        dead.difference_update([x for x in rec.restore if x not in redacted])


class LiveFold:
    """The liveness of one store (13.1, 7.7.1): the ids the ``revert`` events hold dead, the
    redacted ones (each with the redact event that named it first) and the events' own ids,
    folded once per store and then extended commit by commit.

    Reverts are found by :func:`~capsule.format.kindwalk.walk`, which reads only the RECORDS
    frames that can hold one, so a store that never held a revert costs nothing (9.2 ``kinds``)
    and a writer's new commit costs that commit's frames."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.end = 0  # the snapshot end folded up to
        self.last: CommitInfo | None = None  # the commit folded up to
        self.dead: set[bytes] = set()
        self.redacted: dict[bytes, Any] = {}  # id -> the redact event (a Revert) that named it first
        self._red: set[bytes] = set()  # the same ids, as apply_revert keeps them
        self.events: set[bytes] = set()  # the revert records' own ids: never live (13.1)

    def _reset(self) -> None:
        self.end, self.last = 0, None
        self.dead.clear()
        self.redacted.clear()
        self._red.clear()
        self.events.clear()

    def update(self, store: Store) -> LiveFold:
        snap = store.snap
        if snap.end == self.end:
            return self
        with self.lock:
            if snap.end == self.end:
                return self
            if snap.end < self.end:  # never for one store; a fresh fold is always right
                self._reset()
            if "revert" in snap.kinds:
                try:
                    for _, _, rec in walk(store, ("revert",), start=self.last, end=snap.end):
                        apply_revert(self.dead, self._red, rec)
                        self.events.add(bytes.fromhex(rec.id))
                        if rec.op == "redact":
                            for x in rec.drop:
                                self.redacted.setdefault(x, rec)
                except BaseException:
                    self._reset()  # a damaged frame (CorruptError): nothing half folded is kept
                    raise
            self.end, self.last = snap.end, snap.commit
        return self


_FOLDS: weakref.WeakKeyDictionary[Store, LiveFold] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def fold_of(store: Store) -> LiveFold:
    """The store's liveness fold, brought up to its snapshot (one walk per new commit)."""
    with _GUARD:
        f = _FOLDS.get(store)
        if f is None:
            f = _FOLDS[store] = LiveFold()
    return f.update(store)
