"""What two parents disagree on, and how a merge settles it (spec 20.5).

Theory of operation. Records are facts, so a union of two sets of facts never conflicts:
what conflicts is a *single-valued* thing the state folds out of them (the current
identity, a constraint's status, what replaced a memory, a task's state, an action key's
state) when each side changed it and they ended in different places. "Changed it" means:
the record that decides it on that side is *own*, held by that side and not by the other
(a record both sides hold was there at the ancestor, or was written identically twice).
So conflicts are found from the two parents' records alone, without reading the ancestor.

Most conflicts need no record to settle: the merged file's fold already decides, by the
merged commit order (20.4), and the rule is "the later wins". Two need records, written
by the merge in its own commit after the inherited ones (20.6): two different outcomes
for one memory (a lifecycle event drops what the losing side put in its place) and an
action key done on one side and in doubt on the other (a `resolve` makes it done).
Every conflict is reported, settled or not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..format import canonical as canon
from ..format.records import _REGISTRY, decode_record, encode_record
from ..state.liveness import apply_revert

Item = tuple[bytes, str, bytes]
ACTOR = "capsule merge"  # 20.6: the `actor` of every lifecycle event a merge writes
_REPLACE = ("supersede", "promote", "demote")


@dataclass(frozen=True, slots=True)
class Conflict:
    """One thing the two parents changed differently (20.5). ``a`` and ``b`` say what each
    parent holds (in the order the caller named them), ``winner`` which one the merged file
    follows (``"a"``, ``"b"``, or None when neither), ``records`` the ids of the records the
    merge wrote to settle it (empty on a dry run, or when the merged fold already settles it)."""

    kind: str
    subject: str
    a: dict[str, Any]
    b: dict[str, Any]
    resolution: str
    winner: str | None = None
    records: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "a": self.a, "b": self.b,
                "resolution": self.resolution, "winner": self.winner, "records": list(self.records)}


@dataclass(frozen=True, slots=True)
class Resolution:
    """A record the merge writes (20.6), built once the `after` of its commit is known."""

    kind: str  # "revert" or "action"
    fields: dict[str, Any]
    conflict: int  # index of the conflict it settles

    def build(self, time: int, after: bytes) -> Item:
        extra = {"after": after} if self.kind == "revert" else {}
        rec = _REGISTRY[self.kind].build(time=time, **self.fields, **extra)
        rid, data = encode_record(rec)
        return rid, self.kind, data


@dataclass
class _Fold:
    """What one sequence of records folds to, for the single-valued things of 20.5."""

    dead: set[bytes] = field(default_factory=set)
    redacted: set[bytes] = field(default_factory=set)
    identity: Any = None
    constraints: dict[tuple[str, str], Any] = field(default_factory=dict)
    events: dict[bytes, list[Any]] = field(default_factory=dict)  # memory id -> lifecycle events naming it
    actions: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, Any] = field(default_factory=dict)
    action_keys: set[str] = field(default_factory=set)  # keys with an own action record
    task_ids: set[str] = field(default_factory=set)  # tasks with an own event


_KINDS = frozenset({"identity", "constraint", "revert", "action", "task"})


def _decoded(items: Iterable[Item], cache: dict[bytes, Any]) -> list[Any]:
    out = []
    for rid, kind, data in items:
        if kind in _KINDS:
            rec = cache.get(rid)
            if rec is None:
                rec = cache[rid] = decode_record(canon.decode(data), rid)
            out.append((rid, rec))
    return out


def _fold(items: Sequence[Item], own: set[bytes] | None, cache: dict[bytes, Any]) -> _Fold:
    """Fold ``items`` (in commit order). ``own``: the ids only this side holds, or None for the merge."""
    from ..run.actions import fold_actions
    from ..run.scheduler import fold as fold_tasks

    f = _Fold()
    recs = _decoded(items, cache)
    for rid, rec in recs:
        if rec.kind == "revert":
            apply_revert(f.dead, f.redacted, rec)
            if rec.op is not None and own is not None and rid in own:
                for m in rec.drop:
                    f.events.setdefault(m, []).append((rid, rec))
        elif rec.kind == "action" and own is not None and rid in own:
            f.action_keys.add(rec.key)
        elif rec.kind == "task" and own is not None and rid in own:
            f.task_ids.add(rec.event.task)
    for rid, rec in recs:  # 7.5, 7.3: the latest live record decides
        if rid in f.dead:
            continue
        if rec.kind == "identity":
            f.identity = (rid, rec)
        elif rec.kind == "constraint":
            f.constraints[(rec.scope, rec.text)] = (rid, rec)
    f.actions = fold_actions(rec for _, rec in recs if rec.kind == "action")
    f.tasks = fold_tasks(rec.event for _, rec in recs if rec.kind == "task").tasks
    return f


def _outcome(events: list[Any]) -> tuple[str, tuple[bytes, ...]]:
    """One side's last word on a memory: a redaction wins (it is sticky, 7.7.1), else the last event."""
    if any(rec.op == "redact" for _, rec in events):
        return ("redact", ())
    rec = events[-1][1]
    return (rec.op, tuple(sorted(rec.by)))


class Detector:
    """20.5 over the two parents (canonical order) and the merged order of their records."""

    def __init__(self, sides: Sequence[Sequence[Item]], merged: Sequence[Item], swap: bool) -> None:
        cache: dict[bytes, Any] = {}
        ids = [{rid for rid, _, _ in s} for s in sides]
        self.own = [ids[0] - ids[1], ids[1] - ids[0]]
        self.folds = [_fold(sides[i], self.own[i], cache) for i in (0, 1)]
        self.merged = _fold(merged, None, cache)
        self.pos = {rid: i for i, (rid, _, _) in enumerate(merged)}
        self.live = {rid for rid, kind, _ in merged if kind != "revert" and rid not in self.merged.dead}
        self.kinds = {rid: kind for rid, kind, _ in merged}
        self.swap = swap  # the caller named the canonical second parent first
        self.conflicts: list[tuple[str, str, dict[str, Any], dict[str, Any], str, int | None]] = []
        self.fixes: list[tuple[str, dict[str, Any], int]] = []  # (kind, fields, conflict index)

    def run(self) -> tuple[list[Conflict], list[Resolution]]:
        self._identity()
        self._constraints()
        self._lifecycle()
        self._tasks()
        self._actions()
        order = sorted(range(len(self.conflicts)), key=lambda i: self.conflicts[i][:2])
        rank = {old: new for new, old in enumerate(order)}
        out = []
        for i in order:
            kind, subject, x, y, resolution, win = self.conflicts[i]
            a, b = (y, x) if self.swap else (x, y)
            winner = None if win is None else "ab"[win ^ self.swap]
            out.append(Conflict(kind, subject, a, b, resolution, winner))
        fixes = sorted((Resolution(k, f, rank[c]) for k, f, c in self.fixes), key=lambda r: r.conflict)
        return out, fixes

    def _add(self, kind: str, subject: str, x: dict[str, Any], y: dict[str, Any], resolution: str,
             winner: int | None) -> int:
        self.conflicts.append((kind, subject, x, y, resolution, winner))
        return len(self.conflicts) - 1

    def _later(self, r0: bytes, r1: bytes) -> int:
        return 0 if self.pos.get(r0, -1) > self.pos.get(r1, -1) else 1

    def _identity(self) -> None:
        i0, i1 = (f.identity for f in self.folds)
        if i0 is None or i1 is None or i0[0] == i1[0] or i0[0] not in self.own[0] or i1[0] not in self.own[1]:
            return
        win = self._later(i0[0], i1[0])

        def show(x: Any) -> dict[str, Any]:
            return {"id": x[0].hex(), "agent_id": x[1].agent_id, "name": x[1].name, "model": x[1].model}

        self._add("identity", "identity", show(i0), show(i1),
                  "the identity written later in the merged order is current (7.5)", win)

    def _constraints(self) -> None:
        c0, c1 = (f.constraints for f in self.folds)
        for key in sorted(c0.keys() & c1.keys()):
            x, y = c0[key], c1[key]
            if x[0] == y[0] or x[0] not in self.own[0] or y[0] not in self.own[1]:
                continue
            if (x[1].status, x[1].rule) == (y[1].status, y[1].rule):
                continue
            win = self._later(x[0], y[0])

            def show(v: Any) -> dict[str, Any]:
                return {"id": v[0].hex(), "status": v[1].status, "rule": v[1].rule}

            self._add("constraint", f"{key[0]}: {key[1]}", show(x), show(y),
                      f"the record written later in the merged order decides: {(x, y)[win][1].status} (7.3)", win)

    def _successors(self, side: int, start: Iterable[bytes]) -> set[bytes]:
        """What ``side``'s own events put in place of ``start``, transitively, that is live in the merge."""
        seen: set[bytes] = set()
        todo = list(start)
        while todo:
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            for _, rec in self.folds[side].events.get(m, []):
                todo.extend(rec.by)
        return {m for m in seen if m in self.live}

    def _lifecycle(self) -> None:
        e0, e1 = (f.events for f in self.folds)
        gone: set[bytes] = set()  # dropped by a resolution already: never named twice (7.7.1)
        for m in sorted(e0.keys() & e1.keys()):
            o0, o1 = _outcome(e0[m]), _outcome(e1[m])
            if o0 == o1:
                continue
            ops = {o0[0], o1[0]}
            kind = ("redact" if "redact" in ops else "tier" if ops <= {"promote", "demote"}
                    else "forget" if "forget" in ops else "supersede")
            if "redact" in ops:
                win = 0 if o0[0] == "redact" else 1
            else:
                win = self._later(e0[m][-1][0], e1[m][-1][0])
            lose = 1 - win
            wins = self._successors(win, (o0, o1)[win][1]) - gone
            loses = self._successors(lose, (o0, o1)[lose][1]) - wins - gone

            def show(o: tuple[str, tuple[bytes, ...]], evs: list[Any]) -> dict[str, Any]:
                return {"op": o[0], "by": [x.hex() for x in o[1]], "event": evs[-1][0].hex()}

            if not loses:
                text = "the later outcome stands; nothing of the other is live"
            elif kind == "redact":
                text = "redaction wins (7.7.1): what the other side put in its place is redacted too"
            elif wins:
                text = "the later outcome stands: what the other side put in its place is superseded by it"
            else:
                text = "the later outcome stands: what the other side put in its place is forgotten"
            n = self._add(kind, m.hex(), show(o0, e0[m]), show(o1, e1[m]), text, win)
            if not loses:
                continue
            drop = sorted(loses)
            gone.update(drop)
            reason = f"merge: {m.hex()} has another outcome on the other parent"
            if kind == "redact":
                fields = {"op": "redact", "drop": drop}
            elif wins and all(self.kinds.get(x) == "memory" for x in (*drop, *wins)):
                fields = {"op": "supersede", "drop": drop, "by": sorted(wins)}
            else:
                fields = {"op": "forget", "drop": drop}
            self.fixes.append(("revert", {**fields, "reason": reason, "actor": ACTOR}, n))

    def _tasks(self) -> None:
        t0, t1 = (f.task_ids for f in self.folds)
        for t in sorted(t0 & t1):
            x, y = self.folds[0].tasks.get(t), self.folds[1].tasks.get(t)
            m = self.merged.tasks.get(t)
            sx, sy = (None if s is None else s.status for s in (x, y))
            twice = " (completed on both sides: the work may have run twice)" if sx == sy == "done" else ""
            self._add("task", t, {"status": sx}, {"status": sy},
                      f"the merged queue folds both sides' events in merged order: {m.status if m else None}{twice}",
                      None)

    def _actions(self) -> None:
        k0, k1 = (f.action_keys for f in self.folds)
        for k in sorted(k0 & k1):
            x, y = self.folds[0].actions[k], self.folds[1].actions[k]
            m = self.merged.actions[k]

            def show(s: Any) -> dict[str, Any]:
                return {"status": s.status, "attempt": s.attempt}

            st = {x.status, y.status}
            if st == {"done"}:
                self._add("action-twice", k, show(x), show(y), "done on both sides: the side effect may have "
                          f"happened twice; the merged journal says {m.status}", None)
            elif "done" in st:
                win = 0 if x.status == "done" else 1
                done, other = (x, y)[win], (x, y)[1 - win]
                if other.status == "in-doubt":
                    n = self._add("action-in-doubt", k, show(x), show(y), "done on one side, in doubt on the other: "
                                  "done, with the value of the side that finished it", win)
                else:  # not-done or failed there: the effect happened here, so it must never run again
                    n = self._add("action-done", k, show(x), show(y), f"done on one side, {other.status} on the "
                                  "other: done, with the value of the side that finished it", win)
                if m.status != "done":
                    self.fixes.append(("action", {"key": k, "phase": "resolve", "attempt": m.attempt, "ok": True,
                                                  "value": done.value, "by": "reconcile"}, n))
            elif x.status != y.status:
                self._add("action", k, show(x), show(y), f"the merged journal folds both: {m.status}", None)


__all__ = ["ACTOR", "Conflict", "Detector", "Resolution"]
