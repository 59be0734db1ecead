"""``beliefs``: what the agent holds at one commit (spec 13.5).

The document (``Beliefs.to_dict()``, ``capsule beliefs --json``), stable::

    {"state_root": hex, "records": int (live), "commit": {seq, commit, time, root} | null,
     "memories": {tier: {"count": int, "newest": [entry...]}} for scratch, working, validated,
     "decisions": {"count": int, "newest": [entry...]},
     "constraints": [{"id", "text", "scope", "since", "rule"?, "approvals": [...]}...],  # active
     "identity": {...} | null,
     "tasks_open": [task state...], "actions_in_doubt": [action state...],
     "limit": int}

An entry is the state document's dict (13.2) of that record; ``newest`` lists at
most ``limit`` records, newest first (by record time, then commit order).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

from ..core.errors import UsageError
from ..format.records import TIERS
from ._walk import commit_ref

DEFAULT_LIMIT = 10


@dataclass(frozen=True)
class Beliefs:
    doc: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.doc


def _newest(entries: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    # entries are in commit order; the later commit wins a tie. nlargest: O(n) for a small limit.
    order = heapq.nlargest(limit, range(len(entries)), key=lambda i: (_sortable(entries[i].get("time")), i))
    return [entries[i] for i in order]


def _sortable(t: str | None) -> str:
    """An ISO-8601 UTC time as ``iso`` writes it (fraction without trailing zeros, ``Z``)
    padded to nanoseconds, so times compare as text."""
    if not t:
        return ""
    head, _, frac = t[:-1].partition(".")
    return head + frac.ljust(9, "0")


def beliefs(cap: Any, *, limit: int = DEFAULT_LIMIT) -> Beliefs:
    """What ``cap`` (a capsule or a view of one) believes; ``limit`` newest per group."""
    if type(limit) is not int or limit < 0:
        raise UsageError("limit must be a non-negative integer")
    st = cap.state()
    d = st.to_dict()
    c = cap._store.snap.commit
    now = c.time if c is not None else 0  # a view is judged at its own commit's time
    queue = cap.tasks.queue().to_dict(now=now)
    from ..run.events import TERMINAL

    open_tasks = [t for t in queue.get("tasks", []) if t.get("status") not in TERMINAL]
    doc = {
        "state_root": d["state_root"],
        "records": d["records"],
        "commit": commit_ref(c),
        "memories": {t: {"count": len(d["memories"][t]), "newest": _newest(d["memories"][t], limit)}
                     for t in TIERS},
        "decisions": {"count": len(d["decisions"]), "newest": _newest(d["decisions"], limit)},
        "constraints": d["constraints"],
        "identity": d["identity"],
        "tasks_open": open_tasks,
        "actions_in_doubt": [a.to_dict() for a in cap.actions(in_doubt=True)],
        "limit": limit,
    }
    return Beliefs(doc)
