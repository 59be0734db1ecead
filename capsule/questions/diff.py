"""``diff``: what changed between two commits of one capsule (spec 13.5).

The document (``Diff.to_dict()``, ``capsule diff --json``), stable::

    {"from": {seq, commit, time, root}, "to": {seq, commit, time, root},
     "added": {"count": int, "by_kind": {kind: int}, "by_tier": {tier: int}, "first": [node...]},
     "removed": {"count": int, "by_kind": {...}, "by_reason": {reason: int},
                 "first": [node + {"reason": "rolled back" | "expired" | "forgotten" | "redacted"
                                   | "superseded" | "promoted" | "demoted"}...]},
     "restored": {"count": int, "first": [node...]},                     # live again (7.7)
     "purged": {"count": int, "first": [node...]},   # redacted in between, bytes purged (15.1)
     "transient": {"count": int, "first": [node...]},   # committed and dropped in between
     "tier_changes": [{"text", "from": tier, "to": tier, "removed": id, "added": id}...],
     "lifecycle": [{"op", "event", "time", "records": [id...], "by": [id...], "evidence": [id...],
                    "reason", "actor"}...],          # 7.7.1 events in between: the first ``limit``
     "lifecycle_count": int,                                            # ... of this many
     "constraints": {"added": [{"id", "text", "scope", "time"}...], "revoked": [...]},  # in force at
                                                   # TO and not at FROM (or its rule changed); the reverse
     "identity": {"from": id | null, "to": id | null, "changes": [node...]},
     "checkpoints": [{"label", "seq", "time", "signers"}...],           # signed in between
     "actions": [{"key", "phase", "attempt", "ok", "time"}...],         # results and resolves
     "tasks_finished": [{"task", "op", "time"}...],                     # complete / fail / cancel
     "limit": int}

``from`` and ``to`` are what ``--at`` names (6.5). Only the frames between the two commits are
read (and, before them, the records holding a ``ttl``, 7.1, for expiry): a record is *added* when it is committed in
between and no revert in between leaves it dropped (one that does is *transient*: live at neither
end, so neither added nor removed), *removed* when a revert in between
drops it and none restores it (reason ``rolled back``) or a memory live at ``from`` whose
``time + ttl`` falls after ``from``'s commit time and at or before ``to``'s (reason ``expired``,
7.1), *restored* the reverse of a rollback. A record a lifecycle event dropped (7.7.1) is removed with
the op's reason (``forgotten``, ``superseded``, ...; a supersede's chain old -> new is its
``lifecycle`` entry); a redacted record is a node without time or text (``"redacted": true``). A tier change is a removed memory and an
added memory with the same text in another tier. ``first`` lists at most ``limit`` nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core import constants as C
from ..core.clock import iso
from ..core.errors import CorruptError, NotFound, Redacted, UsageError
from ..format.commit import CommitInfo, decode_records_payload
from ..format.frames import raw_payload
from ..format.kindwalk import walk
from ..format.records import record_id as content_id
from ..format.scan import Reader
from ..state.fold import EVENT_KINDS, dead_ids
from ..state.history import BeforeFirstCommit
from ._lifecycle import PAST, event_doc, kind_of, redacted, redacted_node
from ._walk import Source, commit_ref, ref

DEFAULT_LIMIT = 20
MAX_TIER_SCAN = 10_000  # added records read to match tier changes


@dataclass(frozen=True)
class Diff:
    doc: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.doc


def diff(cap: Source, a: str | int | CommitInfo | Source, b: str | int | CommitInfo | None = None, *,
         limit: int = DEFAULT_LIMIT) -> Diff:
    """What changed from the commit ``a`` names to the one ``b`` names (``b`` not before ``a``;
    None: the newest commit), or, with ``a`` another open capsule and no ``b``, from ``cap`` to that capsule, which must
    share its lineage (``diff_files``)."""
    if type(limit) is not int or limit < 0:
        raise UsageError("limit must be a non-negative integer")
    if hasattr(a, "_store"):
        if b is not None:
            raise UsageError("diff of two capsules takes no second point")
        from .diff_files import diff_files

        return Diff(diff_files(cap, a, limit=limit))  # type: ignore[arg-type]
    assert not hasattr(b, "_store")
    try:
        ca = a if isinstance(a, CommitInfo) else cap.resolve(a)
    except BeforeFirstCommit as e:
        # "what changed since yesterday" on a younger capsule: everything, from its first commit
        # when that commit holds no record (a new capsule's, a fork's LINEAGE), as it nearly always does
        if e.first is None:
            raise
        if e.first.records != 0:  # its first commit holds records (a `live` compaction's): say where it begins
            raise NotFound(f"{e}: this capsule begins at {iso(e.first.time)} with {e.first.records} records in its "
                           f"first commit (a compacted copy); --from {e.first.seq} starts there") from None
        ca = e.first
    if b is None:  # to the newest commit: "what changed since"
        cb = cap._store.snap.commit
        if cb is None:
            raise UsageError("the capsule has no commit")
    else:
        cb = b if isinstance(b, CommitInfo) else cap.resolve(b)
    if ca.seq > cb.seq:
        raise UsageError(f"--from {a} (seq {ca.seq}) is after --to {b} (seq {cb.seq})")
    store = cap._store
    snap = store.snap
    added: list[tuple[bytes, str, str | None]] = []  # (id, kind, tier of a memory)
    checkpoints = []
    rd = Reader(store.h, ca.end, cb.end, ca.seq + 1, ca.chain, snap.header.max_frame_len)
    for fh, payload, _ in rd.frames():
        if fh.ftype == C.FT_CHECKPOINT:
            ckf = store.read_checkpoint(fh.offset)
            checkpoints.append({"label": ckf.label, "seq": ckf.seq, "time": iso(ckf.time),
                                "signers": list(ckf.signers)})
        if fh.ftype != C.FT_RECORDS:
            continue
        for value, data in decode_records_payload(raw_payload(fh, payload), fh.offset, fh.seq):
            if not isinstance(value, dict) or not isinstance(kind := value.get("kind"), str):
                raise CorruptError("record without a kind", offset=fh.offset, seq=fh.seq, check="record")
            if kind in EVENT_KINDS:  # 13.1: never live, so never added; listed as events below
                continue
            # 7.1: the tier is omitted when "working"
            added.append((content_id(kind, data), kind, str(value.get("tier", "working")) if kind == "memory" else None))
    dropped: set[bytes] = set()
    back: set[bytes] = set()
    why_gone: dict[bytes, str] = {}  # 7.7.1: the op that dropped it, when a lifecycle event did
    life: list[dict[str, Any]] = []
    ident: list[dict[str, Any]] = []
    actions: list[dict[str, Any]] = []
    finished: list[dict[str, Any]] = []
    kinds = ("revert", "identity", "action", "task")
    for _, _, r in walk(store, kinds, start=ca, end=cb.end):
        k = r.kind
        if k == "revert":
            if r.op is not None:
                life.append(event_doc(r))
            for x in r.drop:
                dropped.add(x)
                back.discard(x)
                why_gone[x] = PAST[r.op] if r.op is not None else "rolled back"
            for x in r.restore:
                back.add(x)
                dropped.discard(x)
        elif k == "identity":
            ident.append(ref(r))
        elif k == "action" and r.phase != "intent":
            actions.append({"key": r.key, "phase": r.phase, "attempt": r.attempt, "ok": r.ok, "time": iso(r.time)})
        elif k == "task" and r.event.OP in ("complete", "fail", "cancel"):
            finished.append({"task": r.event.task, "op": r.event.OP, "time": iso(r.event.time)})
    new = {x for x, _, _ in added}
    removed = sorted(dropped - new)  # added and dropped in between: never seen at either end
    restored = sorted(back - new)
    dead_at: list[set[bytes]] = []  # the ids dead at FROM: one walk of the reverts before it, when asked

    def dead_then() -> set[bytes]:
        if not dead_at:
            dead_at.append(dead_ids(r for _, _, r in walk(store, ("revert",), end=ca.end)))
        return dead_at[0]

    if removed or restored:  # by the state at FROM: dropped and restored in between (or the
        # reverse) is no change at all, so neither removed nor restored
        then = dead_then()
        removed = [x for x in removed if x not in then]
        restored = [x for x in restored if x in then]
    # so neither added: a record committed in between that a revert in between holds dead is
    # *transient* (live at neither end), listed apart
    transient = [x for x, _, _ in added if x in dropped]
    added_ids: list[bytes] = []
    by_kind: dict[str, int] = {}
    by_tier: dict[str, int] = {}
    for x, kind, tier in added:
        if x in dropped:
            continue
        added_ids.append(x)
        by_kind[kind] = by_kind.get(kind, 0) + 1
        if tier is not None:
            by_tier[tier] = by_tier.get(tier, 0) + 1
    rem_nodes: list[dict[str, Any]] = []
    red = redacted(store)
    # 7.7.1, 15.1: a redacted id a compaction purged names no record here, so whether it was live
    # at FROM (removed) or committed in between (transient) is not in this file: counted apart
    purged = [x for x in removed if x in red and kind_of(store, x) is None]
    if purged:
        gone_ids = set(purged)
        removed = [x for x in removed if x not in gone_ids]
    rem_kind: dict[str, int] = {}
    changes: list[dict[str, Any]] = []
    added_mem: dict[str, Any] | None = None
    gone: dict[str, int] = {}

    def fetch(rid: bytes) -> Any:
        try:
            return cap.get(rid)
        except (Redacted, NotFound) as e:
            return e

    # read in file order, so each frame is decompressed once (in id order every get missed the
    # frame cache: 30 s for 120k records a rollback removed), then walk them in the order given
    got = {rid: fetch(rid) for rid in sorted(removed, key=lambda x: store.locate(x) or (-1, 0))}
    for rid in removed:
        try:
            if isinstance(rec := got[rid], (Redacted, NotFound)):
                raise rec
        except Redacted:  # 7.7.1: listed with its kind, its payload not shown
            kind = kind_of(store, rid) or "?"
            rem_kind[kind] = rem_kind.get(kind, 0) + 1
            reason = why_gone.get(rid, "rolled back")
            gone[reason] = gone.get(reason, 0) + 1
            if len(rem_nodes) < limit:
                rem_nodes.append({**redacted_node(rid, kind), "reason": reason})
            continue
        except NotFound:
            continue
        rem_kind[rec.kind] = rem_kind.get(rec.kind, 0) + 1
        reason = why_gone.get(rid, "rolled back")
        gone[reason] = gone.get(reason, 0) + 1
        if len(rem_nodes) < limit:
            rem_nodes.append({**ref(rec), "reason": reason})
        if rec.kind == "memory":
            if added_mem is None:  # the added memories by text, read once (bounded: a summary)
                recs = (cap.get(x) for x in added_ids[:MAX_TIER_SCAN] if x not in red)
                added_mem = {m.text: m for m in recs if m.kind == "memory"}
            m = added_mem.get(rec.text)
            if m is not None and m.tier != rec.tier:
                changes.append({"text": rec.text, "from": rec.tier, "to": m.tier, "removed": rec.id, "added": m.id})
    expired = _expired(store, ca, cb, set(removed), dead_then)
    for rec in expired:
        rem_kind["memory"] = rem_kind.get("memory", 0) + 1
        if len(rem_nodes) < limit:
            rem_nodes.append({**ref(rec), "reason": "expired"})
    reasons = {k: v for k, v in (("expired", len(expired)), *gone.items()) if v}
    first = [_node(cap, x, red) for x in added_ids[:limit]]
    ida, idb = _identity(store, ca), _identity(store, cb)
    cons_added, cons_revoked = _constraints(store, ca, cb, red)
    return Diff({
        "from": commit_ref(ca), "to": commit_ref(cb),
        "added": {"count": len(added_ids), "by_kind": dict(sorted(by_kind.items())),
                  "by_tier": dict(sorted(by_tier.items())), "first": first},
        "transient": {"count": len(transient), "first": [_node(cap, x, red) for x in transient[:limit]]},
        "removed": {"count": len(removed) + len(expired), "by_kind": dict(sorted(rem_kind.items())),
                    "by_reason": dict(sorted(reasons.items())), "first": rem_nodes},
        "restored": {"count": len(restored), "first": [_node(cap, x, red) for x in restored[:limit]]},
        "purged": {"count": len(purged), "first": [redacted_node(x) for x in purged[:limit]]},
        "tier_changes": changes,
        "lifecycle": life[:limit], "lifecycle_count": len(life),
        "constraints": {"added": cons_added, "revoked": cons_revoked},
        "identity": {"from": ida, "to": idb, "changes": ident},
        "checkpoints": checkpoints, "actions": actions, "tasks_finished": finished, "limit": limit,
    })


def _node(cap: Source, rid: bytes, red: Any) -> dict[str, Any]:
    return redacted_node(rid, kind_of(cap._store, rid)) if rid in red else ref(cap.get(rid))


def _expired(store: Any, ca: CommitInfo, cb: CommitInfo, removed: set[bytes],
             dead_then: Callable[[], set[bytes]]) -> list[Any]:
    """The memories live at ``ca`` whose ``time + ttl`` falls after ``ca``'s commit time and
    at or before ``cb``'s (7.1), live at ``cb`` too but for that (a rolled-back one is
    listed once, as rolled back). Only records holding a ``ttl`` field are decoded."""
    if "memory" not in store.snap.kinds or cb.time <= ca.time:
        return []
    hits = [r for _, _, r in walk(store, ("memory",), end=ca.end, field="ttl")
            if r.kind == "memory" and r.ttl is not None and ca.time < r.time + r.ttl <= cb.time]
    if not hits:
        return []
    dead_a = dead_then()
    return [r for r in hits if bytes.fromhex(r.id) not in dead_a and bytes.fromhex(r.id) not in removed]


def _in_force(store: Any, c: CommitInfo) -> dict[tuple[str, str], Any]:
    """The constraints active at commit ``c`` (7.3: the latest live record of each (scope,
    text) decides, liveness as 13.1), by (scope, text)."""
    if "constraint" not in store.snap.kinds:
        return {}
    rows = [r for _, _, r in walk(store, ("constraint", "revert"), end=c.end)]
    dead = dead_ids(r for r in rows if r.kind == "revert")
    active: dict[tuple[str, str], Any] = {}
    for r in rows:
        if r.kind == "constraint" and bytes.fromhex(r.id) not in dead:
            if r.status == "active":
                active[(r.scope, r.text)] = r
            else:
                active.pop((r.scope, r.text), None)
    return active


def _constraints(store: Any, ca: CommitInfo, cb: CommitInfo, red: Any
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rules in force at ``cb`` that were not at ``ca`` (or whose ``rule`` changed), and
    those in force at ``ca`` that are not at ``cb``, by the constraint fold at each end (13.5):
    a rule revoked, rolled back or restored in between counts; one added and dropped again
    in between, or asserted again while in force, does not. A redacted constraint (which
    7.7.1 does not allow, so only another writer's) is a node without its text."""
    a, b = _in_force(store, ca), _in_force(store, cb)

    def doc(r: Any) -> dict[str, Any]:
        if bytes.fromhex(r.id) in red:
            return redacted_node(bytes.fromhex(r.id), "constraint")
        return {"id": r.id, "text": r.text, "scope": r.scope, "time": iso(r.time)}

    added = [doc(r) for key, r in b.items() if key not in a or a[key].rule != r.rule]
    revoked = [doc(r) for key, r in a.items() if key not in b]
    return added, revoked


def _identity(store: Any, c: CommitInfo) -> str | None:
    """The identity in force at commit ``c``: the newest live identity record (7.5)."""
    rows = [r for _, _, r in walk(store, ("identity", "revert"), end=c.end)] if "identity" in store.snap.kinds else []
    dead = dead_ids(r for r in rows if r.kind == "revert")
    live = [r.id for r in rows if r.kind == "identity" and bytes.fromhex(r.id) not in dead]
    return live[-1] if live else None
