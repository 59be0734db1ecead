"""``diff A B``: what changed from one capsule to another that shares its lineage (spec 13.5).

Theory of operation: two files share lineage when one is a fork of the other (its LINEAGE
frame, 15, names the other's file id and a commit the other holds: same seq, root and chain),
when both are forks of one parent (their LINEAGE frames name the same file id), or when they
have the same file id (two copies that diverged; their common ancestor is the newest commit seq
both hold with the same Merkle root, 6.1, which fixes every frame before it). Anything else is a
usage error: a diff of unrelated files would list everything as added and removed.

Records are compared by state, not by history: *added* is live at B and not at A, *removed* live
at A and not at B, each with a reason (``rolled back``: B holds it and a rollback drops it; ``journal only``:
an action B holds dead in its journal, as a fork copies the parent's, 15; or
the op's past tense when a lifecycle event did, 7.7.1: ``forgotten``, ``redacted``..., a record B
redacted shown without its payload;
``expired``: a memory whose ``time + ttl`` is past B's commit time but not A's; ``superseded``:
an identity B replaced; ``not in B``: A committed it after the two diverged). Constraints and the
identity are the two state documents compared. Checkpoints, action results and finished tasks are
the events B holds that A does not: read from B's frames after the common ancestor only; so are
the lifecycle events (7.7.1), read from B's reverts.

The document (``Diff.to_dict()``, ``capsule diff A B --json``) is the one-file diff's (``diff``),
with ``from``/``to`` the last commits of A and B and besides::

    "lineage": {"relation": "same-file" | "b-forks-a" | "a-forks-b" | "siblings",
                "ancestor": {"in": "a" | "b" | "both", "file_id", "seq", "root"} | null}

``ancestor`` is null for siblings (their common ancestor is in the parent, which neither holds).
"""

from __future__ import annotations

from typing import Any

from ..core.clock import iso
from ..core.errors import NotFound, UsageError
from ..format.checkpoint import Lineage
from ..format.commit import CommitInfo
from ..format.kindwalk import walk
from ..format.records import TIERS, parse_iso_time
from ..state.carried import lineage_of as _lineage
from ..state.history import commit_at_seq
from ._lifecycle import PAST, event_doc, redacted, redacted_node
from ._walk import Source, commit_ref, ref


def lineage_of(cap: Source) -> Lineage | None:
    """The LINEAGE frame of a fork (always seq 0, 15), or None."""
    return _lineage(cap._store)


def _fork_point(parent: Source, lin: Lineage) -> CommitInfo | None:
    """The parent's commit a LINEAGE names, if the parent holds it (15)."""
    try:
        c = commit_at_seq(parent._store, lin.tree_size)  # by seq: a label may spell the number
    except (NotFound, UsageError):
        return None
    return c if (c.seq, c.root, c.chain) == (lin.tree_size, lin.root, lin.chain) else None


def _common(a: Source, b: Source) -> CommitInfo | None:
    """Two copies of one file: the newest commit seq both hold with the same root."""
    roots = {row.seq: row.root for row in a._store.log(None)}
    best = None
    for row in b._store.log(None):
        if roots.get(row.seq) == row.root:
            best = row.seq
    return None if best is None else commit_at_seq(b._store, best)


def relate(a: Source, b: Source) -> tuple[str, dict[str, Any] | None, CommitInfo | None]:
    """(relation, ancestor document, the commit of B that events are read after; None: all of B)."""
    fa, fb = a._store.snap.header.file_id, b._store.snap.header.file_id
    la, lb = lineage_of(a), lineage_of(b)

    def anc(where: str, fid: bytes, c: CommitInfo) -> dict[str, Any]:
        return {"in": where, "file_id": fid.hex(), "seq": c.seq, "root": c.root.hex()}

    if fa == fb:
        c = _common(a, b)
        if c is None:
            raise UsageError("the two capsules have the same file id but no commit in common")
        return "same-file", anc("both", fa, c), c
    if lb is not None and lb.parent == fa:
        c = _fork_point(a, lb)
        if c is None:
            raise UsageError("B names A as its parent but A does not hold the fork point (15)")
        return "b-forks-a", anc("a", fa, c), None  # all of B is after the fork point
    if la is not None and la.parent == fb:
        c = _fork_point(b, la)
        if c is None:
            raise UsageError("A names B as its parent but B does not hold the fork point (15)")
        return "a-forks-b", anc("b", fb, c), c
    if la is not None and lb is not None and la.parent == lb.parent:
        return "siblings", None, None
    raise UsageError("the two capsules share no lineage (neither is a fork or a copy of the other)")


def _memories(st: Any) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for t in TIERS for m in st.memories[t]}


def _expired(m: dict[str, Any], now: int) -> bool:
    ttl = m.get("ttl")
    return ttl is not None and parse_iso_time(m["time"]) + ttl <= now  # 7.1


def diff_files(a: Source, b: Source, *, limit: int) -> dict[str, Any]:
    """The two-file diff document (see the module docstring)."""
    relation, ancestor, start = relate(a, b)
    ca, cb = a._store.snap.commit, b._store.snap.commit
    ta, tb = (ca.time if ca else 0), (cb.time if cb else 0)
    sa, sb = a.state(), b.state()  # type: ignore[attr-defined]
    ma, mb = _memories(sa), _memories(sb)
    live_a = {x for x in sa.live if not (x.hex() in ma and _expired(ma[x.hex()], ta))}
    live_b = {x for x in sb.live if not (x.hex() in mb and _expired(mb[x.hex()], tb))}
    added = sorted(live_b - live_a)
    removed = sorted(live_a - live_b)
    dead_b, life = _dead(a, b)
    red_b = redacted(b._store)
    ident_b = (sb.identity or {}).get("id")
    rem_nodes: list[dict[str, Any]] = []
    rem_kind: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    for rid in removed:
        h = rid.hex()
        rec = a.get(rid)
        if rid in dead_b:
            reason = dead_b[rid]  # 7.7.1: the op's past tense, else a rollback
        elif h in mb and _expired(mb[h], tb):
            reason = "expired"
        elif rec.kind == "identity" and h != ident_b and b._store.locate(rid) is not None:
            reason = "superseded"
        else:
            reason = "not in B"
        rem_kind[rec.kind] = rem_kind.get(rec.kind, 0) + 1
        by_reason[reason] = by_reason.get(reason, 0) + 1
        if len(rem_nodes) < limit:  # 7.7.1: what B redacted is shown as redacted, whatever A holds
            rem_nodes.append({**(redacted_node(rid, rec.kind) if rid in red_b else ref(rec)), "reason": reason})
    kind_b = {x["id"]: k for k, xs in (("decision", sb.decisions), ("note", sb.notes),
                                       ("constraint", sb.constraints.values())) for x in xs}
    add_kind: dict[str, int] = {}
    add_tier: dict[str, int] = {}
    for rid in added:
        m = mb.get(rid.hex())
        if m is not None:
            add_kind["memory"] = add_kind.get("memory", 0) + 1
            add_tier[m["tier"]] = add_tier.get(m["tier"], 0) + 1
        else:
            k = kind_b.get(rid.hex()) or b.get(rid).kind  # a task, an action...: read by id
            add_kind[k] = add_kind.get(k, 0) + 1
    gone = {ma[x.hex()]["text"]: ma[x.hex()] for x in removed if x.hex() in ma}
    changes = []
    for rid in added:
        m = mb.get(rid.hex())
        old = gone.get(m["text"]) if m is not None else None
        if m is not None and old is not None and old["tier"] != m["tier"]:
            changes.append({"text": m["text"], "from": old["tier"], "to": m["tier"], "removed": old["id"],
                            "added": m["id"]})
    # 13.5 as a one-file diff has it: by (scope, text), a rule asserted again (another record,
    # the same rule) no change, one whose `rule` changed added
    con_a = {(c["scope"], c["text"]): c for c in sa.to_dict()["constraints"]}
    con_b = {(c["scope"], c["text"]): c for c in sb.to_dict()["constraints"]}

    def con(c: dict[str, Any]) -> dict[str, Any]:
        return {"id": c["id"], "text": c["text"], "scope": c["scope"], "time": c["since"]}

    def changed(k: tuple[str, str]) -> bool:
        if k not in con_a:
            return True
        ia, ib = con_a[k]["id"], con_b[k]["id"]
        return bool(ia != ib and a.get(ia).rule != b.get(ib).rule)

    ida, idb = (sa.identity or {}).get("id"), ident_b
    events = _events(a, b, start)
    return {
        "from": commit_ref(ca), "to": commit_ref(cb), "lineage": {"relation": relation, "ancestor": ancestor},
        "added": {"count": len(added), "by_kind": dict(sorted(add_kind.items())),
                  "by_tier": dict(sorted(add_tier.items())), "first": [ref(b.get(x)) for x in added[:limit]]},
        "removed": {"count": len(removed), "by_kind": dict(sorted(rem_kind.items())),
                    "by_reason": dict(sorted(by_reason.items())), "first": rem_nodes},
        "restored": {"count": 0, "first": []},
        "tier_changes": changes,
        "lifecycle": life[:limit], "lifecycle_count": len(life),
        "constraints": {"added": [con(c) for k, c in con_b.items() if changed(k)],
                        "revoked": [con(c) for k, c in con_a.items() if k not in con_b]},
        "identity": {"from": ida, "to": idb,
                     "changes": [ref(b.get(idb))] if idb is not None and idb != ida else []},
        **events, "limit": limit,
    }


def _dead(a: Source, b: Source) -> tuple[dict[bytes, str], list[dict[str, Any]]]:
    """The ids B's reverts hold dead, each with why (7.7.1: the op of the event that dropped it
    last, or ``rolled back``), and B's lifecycle events A does not hold."""
    from ..state.liveness import apply_revert

    dead: set[bytes] = set()
    red: set[bytes] = set()
    why: dict[bytes, str] = {}
    life: list[dict[str, Any]] = []
    held = a._store.locate
    for _, _, r in walk(b._store, ("revert",)):
        apply_revert(dead, red, r)
        for x in r.drop:
            # 15: the revert of a fork's first commit (no `to`, no `op`) keeps the parent's journal
            # dead in the fork; those actions were not rolled back, B's journal still answers them
            why[x] = PAST[r.op] if r.op is not None else "rolled back" if r.to is not None else "journal only"
        if r.op is not None and held(bytes.fromhex(r.id)) is None:
            life.append(event_doc(r))
    return {x: why.get(x, "rolled back") for x in dead}, life


def _events(a: Source, b: Source, start: CommitInfo | None) -> dict[str, Any]:
    """Checkpoints, action results and finished tasks B holds and A does not (after ``start``)."""
    after = -1 if start is None else start.seq
    checkpoints = [{"label": k.label, "seq": k.seq, "time": iso(k.time), "signers": list(k.signers)}
                   for k in b.checkpoints() if k.seq > after]
    actions: list[dict[str, Any]] = []
    finished: list[dict[str, Any]] = []
    held = a._store.locate
    for _, _, r in walk(b._store, ("action", "task"), start=start):
        if held(bytes.fromhex(r.id)) is not None:
            continue  # copied by the fork, or committed before the two diverged
        if r.kind == "action" and r.phase != "intent":
            actions.append({"key": r.key, "phase": r.phase, "attempt": r.attempt, "ok": r.ok, "time": iso(r.time)})
        elif r.kind == "task" and r.event.OP in ("complete", "fail", "cancel"):
            finished.append({"task": r.event.task, "op": r.event.OP, "time": iso(r.event.time)})
    return {"checkpoints": checkpoints, "actions": actions, "tasks_finished": finished}
