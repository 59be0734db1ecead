"""Lifecycle verbs of a transaction: forget, redact, supersede, promote, demote (spec 7.7.1).

Theory of operation: each verb is one ``revert`` record with an ``op`` (the event), written
in the same commit as the replacement it names. :meth:`LifecycleMethods.lifecycle` is the one
checked entry point; the verbs build the replacement and call it. Every check runs before
anything joins the batch, so an error (one line: the id and what is wrong) leaves the
transaction as it was, and the ``with`` block it ends writes nothing.

What the checks read: the committed dead and redacted sets (``questions._lifecycle``, cached
per snapshot end, so a verb costs a walk of the commits since the last one it saw), the
records themselves (one ``get`` each), and this block's own records and events: an id added
earlier in the block is live, one an earlier event of the block dropped is dead.

>>> with cap.commit() as tx:
...     old = tx.remember("the staging db is db-stg-1", tags=["ops"])
>>> with cap.commit() as tx:
...     new = tx.supersede(old, "the staging db is db-stg-2", reason="migrated", actor="ops-bot")
>>> [m["text"] for m in cap.state().memories["working"]], cap.get(new).tags
(['the staging db is db-stg-2'], ('ops',))
>>> with cap.commit() as tx:
...     top = tx.promote(new, "validated", evidence=[old], reason="checked by hand")
...     _ = tx.redact(old, reason="held a password")
>>> cap.get(top).tier, [r.kind for r in cap.records() if getattr(r, "redacted", False)]
('validated', ['memory'])
>>> try:
...     cap.get(old)
... except capsule.Redacted as e:
...     print(str(e).split(" at ")[0])
record ... was redacted
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..core.errors import InvalidRecordError, NotFound, Redacted, UsageError
from ..format import canonical as canon
from ..format.records import _REGISTRY, SPEC_KINDS, TIERS, decode_record, encode_record
from ..format.store import Store
from ..questions._lifecycle import describe, fold_of, redacted, redaction
from ..state.kinds import LIFECYCLE_OPS, parse_id

if TYPE_CHECKING:
    from ..format.batch import RecordBatch
    from ..search.vindex import VectorParams
    from .capsule import Capsule

#: 7.7.1: what each op may name (the dropped records; a replacement is always a memory).
#: ``forget`` and ``redact`` may also name a record of an application kind (12.3), see may_target.
TARGETS = {"forget": ("memory", "note", "decision"), "redact": ("memory", "note", "decision"),
           "supersede": ("memory",), "promote": ("memory",), "demote": ("memory",)}
APP_KIND_OPS = ("forget", "redact")


def may_target(op: str, kind: str) -> bool:
    """7.7.1: may a ``op`` event name a record of ``kind`` in its ``drop``?"""
    return kind in TARGETS[op] or (op in APP_KIND_OPS and kind not in SPEC_KINDS)


def check_readable(store: Store, rid: bytes) -> None:
    """Raise :class:`Redacted` (a :class:`NotFound`) for a redacted id (7.7.1)."""
    ev = redaction(store, rid)
    if ev is not None:
        raise Redacted(describe(rid, ev), event=ev.id)


def check_purged(store: Store, record_id: object, found: bytes | None = None) -> None:
    """Redacted records whose bytes a compaction purged (15.1) still answer a prefix: before a
    lookup fails (``found`` None), raise :class:`Redacted` when ``record_id`` (an id, or a prefix
    of exactly one purged id) names one, so its redact event says when, who and why, and
    :class:`UsageError` when a prefix names several; after it found ``found`` by a prefix, raise
    :class:`UsageError` when a purged id starts with it too (ambiguous, as it was before the
    compaction). Else return."""
    if not isinstance(record_id, str) or (found is not None and len(record_id.strip()) == 64):
        return
    p = record_id.strip().lower()
    red = redacted(store) if 4 <= len(p) <= 64 else {}
    hits = [rid for rid in red if rid != found and rid.hex().startswith(p) and store.get(rid) is None]
    if found is not None and hits:
        raise UsageError(f"id prefix {record_id!r} is ambiguous: a record and {len(hits)} redacted one(s) whose "
                         "bytes a compaction purged start with it; give more digits")
    if len(hits) > 1:
        raise UsageError(f"id prefix {record_id!r} is ambiguous: {len(hits)} redacted records whose bytes a "
                         "compaction purged start with it; give more digits")
    if hits:
        check_readable(store, hits[0])


class _Pending:
    """This block's lifecycle events, over the committed dead and redacted sets; every check
    is a dict lookup, so a block of many events (``pack --append``) stays linear."""

    def __init__(self, store: Store) -> None:
        f = fold_of(store)
        self.dead, self.redacted = f.dead, f.redacted  # committed; never mutated here
        self.events: list[Any] = []
        self.now: dict[bytes, bool] = {}  # id -> dead after this block's events (those they name)
        self.red: set[bytes] = set()  # redacted by this block's events
        self.dropped_at: dict[bytes, int] = {}  # id -> batch position of the last event of this block dropping it
        self.event_pos: list[int] = []  # each event's batch position, as ``events``
        self.last: dict[bytes, int] = {}  # the batch's ids -> last position (``_in_block``)
        self.index: dict[bytes, int] = {}  # the batch's ids -> first position (``_in_block``)
        self.indexed = 0

    def apply(self, rev: Any, pos: int) -> None:
        """13.1 with sticky redaction (7.7.1), for one event of this block, at batch position ``pos``."""
        self.events.append(rev)
        self.event_pos.append(pos)
        for x in rev.drop:
            self.now[x] = True
            self.dropped_at[x] = pos
            if rev.op == "redact":
                self.red.add(x)
        for x in rev.restore:
            if not self.is_redacted(x):
                self.now[x] = False

    def is_redacted(self, rid: bytes) -> bool:
        return rid in self.redacted or rid in self.red

    def readded(self, rid: bytes) -> bool:
        """Added in this block after the last event of the block that dropped it (7.7: a re-add
        makes it live; the writer restores it there, ``restores``). Needs ``_in_block`` first."""
        i = self.last.get(rid)
        return i is not None and i > self.dropped_at.get(rid, -1)

    def is_dead(self, rid: bytes, readded: bool) -> bool:
        if self.is_redacted(rid):
            return True
        if readded:
            return False
        dead = self.now.get(rid)
        return dead if dead is not None else rid in self.dead

    def restores(self, batch: RecordBatch, dead: Collection[bytes], redacted: Collection[bytes]
                 ) -> list[tuple[int, list[bytes]]]:
        """7.7 in batch order: a record added while dead (``dead``: at the last commit; or dropped
        by an earlier event of this block) is live again through a restore-only revert, which must
        stand before the next event that drops it (13.1, 7.7: an event drops only live ids). Returns
        (batch position, ids): a revert restoring ids goes before that position (``len(batch)``:
        at the end), as few as the events allow. A re-add of a redacted id is refused (7.7.1)."""
        import numpy as np

        interest = set(self.dropped_at)
        raw = bytes(batch.ids)
        if dead:  # set lookups: O(batch), whatever the size of the dead set
            interest.update(rid for i in range(0, len(raw), 32) if (rid := raw[i : i + 32]) in dead)
        if not interest:
            return []
        ids = np.frombuffer(raw, dtype="S32")
        adds = np.flatnonzero(np.isin(ids, np.array(list(interest), dtype="S32"))).tolist()
        at = dict(zip(self.event_pos, self.events, strict=True))
        live = {x: x not in dead for x in interest}
        pending: dict[bytes, None] = {}  # re-added, not yet restored (ordered)
        red_now: set[bytes] = set()  # redacted by the events of this block so far
        out: list[tuple[int, list[bytes]]] = []
        for j in sorted(set(adds).union(at)):
            rev = at.get(j)
            if rev is None:  # an add
                x = raw[32 * j : 32 * j + 32]
                if not live[x]:
                    if x in redacted or x in red_now:
                        from ..core.errors import UsageError

                        raise UsageError(f"record {x.hex()} was redacted: its bytes are not stored again (7.7.1)")
                    live[x] = True
                    pending[x] = None
                continue
            if need := [x for x in rev.drop if x in pending]:
                out.append((j, need))
                for x in need:
                    del pending[x]
            for x in rev.drop:
                if x in live:
                    live[x] = False
                if rev.op == "redact":
                    red_now.add(x)
            for x in rev.restore:  # the event restores it, as dead before it: no revert of ours too
                if x in live and x not in red_now:
                    pending.pop(x, None)
                    live[x] = True
        if pending:
            out.append((len(batch), list(pending)))
        return out


def _a(kind: str) -> str:
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"


class LifecycleMethods:
    """``lifecycle`` and the verbs over it: a mixin of :class:`~capsule.handle.transaction.Transaction`."""

    _lc: _Pending | None = None
    _links: dict[bytes, set[bytes]] | None = None  # promote/demote links (copies), built on first redact
    _linked = 0  # this block's events already in _links
    #: the id (hex) of the last lifecycle event this transaction added (a verb returns the new id)
    last_event: str | None = None

    if TYPE_CHECKING:  # what the transaction provides
        _cap: Capsule
        _batch: RecordBatch
        _vconfig: VectorParams | None
        _vectors: int

        _resolve: Callable[..., Any]
        put: Callable[[Any], str]
        remember: Callable[..., str]

    # --- what the checks read ---------------------------------------------------------------
    def _pending(self) -> _Pending:
        if self._lc is None:
            self._lc = _Pending(self._cap._store)
        return self._lc

    def _id(self, v: Any, op: str) -> bytes:
        try:
            return parse_id(self._resolve(v, op), op)
        except InvalidRecordError as e:
            if isinstance(v, str):  # as `why` says it: a prefix is an id too
                raise UsageError(f"{op}: {v[:80]!r} is not a record id or id prefix (4 to 64 hex digits)") from None
            raise UsageError(str(e)) from None

    def _in_block(self, rid: bytes) -> int | None:
        """The index of ``rid``'s first occurrence in this block's batch, or None (an index of
        the batch's ids, extended by what was added since the last call)."""
        p, batch = self._pending(), self._batch
        n = len(batch)
        if n < p.indexed:  # the batch was cut back (a refused call): index it again
            p.index, p.last, p.indexed = {}, {}, 0
        for i in range(p.indexed, n):
            r = batch.rid(i)
            p.index.setdefault(r, i)
            p.last[r] = i
        p.indexed = n
        return p.index.get(rid)

    def _record(self, rid: bytes, op: str) -> tuple[Any, bool]:
        """(the record, whether this block added it); :class:`NotFound` when neither the file
        nor the block holds it."""
        i = self._in_block(rid)
        if i is not None:
            a, b = self._batch.span(i)
            return decode_record(canon.decode(bytes(self._batch.data[a:b])), rid), True
        rec = self._cap._store.get(rid)
        if rec is None:
            raise NotFound(f"{op}: no record {rid.hex()}")
        return rec, False

    # --- the one checked entry point ----------------------------------------------------------
    def lifecycle(self, op: str, drop: Any, by: Any = (), evidence: Any = (), reason: str = "",
                  actor: str = "") -> str:
        """Write lifecycle event ``op`` (7.7.1): the records ``drop`` leave the live state,
        replaced by ``by`` (memories already added, in this block or before). Ids are hex,
        bytes or unique prefixes (>= 4 hex digits). Returns the event's id (hex).

        Refused with one line (:class:`UsageError`, :class:`NotFound` for an unknown id),
        nothing added: a kind the op may not name, a dead target (forget, supersede,
        promote, demote), a redacted one, a wrong number of ids. A replacement whose exact
        bytes are stored but dead is restored by the event.

        >>> with cap.commit() as tx: n = tx.note("call the vendor")
        >>> with cap.commit() as tx: ev = tx.lifecycle("forget", [n[:8]], reason="done")
        >>> cap.get(ev).op, cap.state().notes
        ('forget', [])
        """
        if op not in LIFECYCLE_OPS:
            raise UsageError(f"unknown lifecycle op {op!r}: choose from {', '.join(LIFECYCLE_OPS)}")
        drops = [self._id(x, op) for x in _ids(drop)]
        bys = [self._id(x, op) for x in _ids(by)]
        evs = [self._id(x, f"{op} evidence") for x in _ids(evidence)]
        if not drops:
            raise UsageError(f"{op}: name at least one record")
        if op in ("forget", "redact") and bys:
            raise UsageError(f"{op}: names no replacement")
        if op in ("promote", "demote") and (len(drops) != 1 or len(bys) != 1):
            raise UsageError(f"{op}: replaces exactly one memory by one")
        if op == "supersede" and not bys:
            raise UsageError("supersede: name the replacement memory")
        for name, xs in (("record", drops), ("replacement", bys), ("evidence", evs)):
            if len(set(xs)) != len(xs):
                raise UsageError(f"{op}: a {name} is named twice")
        p = self._pending()
        olds = []
        store = self._cap._store
        # in file order, so a long drop list decompresses each frame once, not once per id
        for rid in sorted(drops, key=lambda x: store.locate(x) or (-1, 0)) if len(drops) > 1 else drops:
            rec, pending = self._record(rid, op)
            if not may_target(op, rec.kind):
                *head, last = TARGETS[op]
                allowed = f"{', '.join(head)} or {last}" if head else last
                raise UsageError(f"{op}: {rid.hex()} is {_a(rec.kind)}; only a {allowed} can be {_done(op)}")
            if p.is_redacted(rid):
                raise UsageError(f"{op}: {rid.hex()} is already redacted")
            if op != "redact" and p.is_dead(rid, pending and p.readded(rid)):
                raise UsageError(f"{op}: {rid.hex()} is not live (forgotten, superseded, promoted or demoted to a "
                                  "new id, or rolled back: why() names by what)")
            olds.append(rec)
        restore = []
        for rid in bys:
            if rid in drops:
                raise UsageError(f"{op}: {rid.hex()} cannot replace itself")
            rec, _ = self._record(rid, op)
            if rec.kind != "memory":
                raise UsageError(f"{op}: the replacement {rid.hex()} is {_a(rec.kind)}, not a memory")
            if p.is_redacted(rid):
                raise UsageError(f"{op}: the replacement {rid.hex()} is redacted")
            if p.is_dead(rid, False):  # stored but dead (re-added in this block or not): 7.7's rule,
                restore.append(rid)  # live again through this event, not through a re-add revert
        for rid in evs:
            self._record(rid, f"{op} evidence")
        if op in ("promote", "demote"):
            new, _ = self._record(bys[0], op)
            up = TIERS.index(new.tier) - TIERS.index(olds[0].tier)
            if up == 0 or (up > 0) != (op == "promote"):
                raise UsageError(f"{op}: {drops[0].hex()} is {olds[0].tier}, the replacement {new.tier}: "
                                 f"not a {op}")
        try:
            rev = _REGISTRY["revert"].build(time=self._cap.clock(), after=bytes.fromhex(self._cap.root),
                                            drop=drops, restore=restore, op=op, by=bys, evidence=evs,
                                            reason=reason, actor=actor)
        except InvalidRecordError as e:
            raise UsageError(f"{op}: {e}") from None
        rid, data = encode_record(rev)
        while self._in_block(rid) is not None:  # the same event earlier in this block (a fixed clock: forget,
            if rev.time + 1 >= 1 << 63:  # re-add, forget): a ns later, or 7.0 drops it
                raise UsageError(f"{op}: the same event is in this commit already, at the clock's last nanosecond")
            rev = dataclasses.replace(rev, time=rev.time + 1)
            rid, data = encode_record(rev)
        self._batch.add(rid, "revert", data)
        p.apply(rev, len(self._batch) - 1)
        self.last_event = rid.hex()
        return self.last_event

    # --- the verbs ------------------------------------------------------------------------------
    def forget(self, record_id: str | bytes, *, reason: str = "", actor: str = "") -> str:
        """A memory, note, decision or application record (12.3) leaves the live state; history keeps it. Returns the event id.

        >>> with cap.commit() as tx: m = tx.remember("the printer is on floor 2")
        >>> with cap.commit() as tx: _ = tx.forget(m, reason="moved")
        >>> cap.state().memories["working"], cap.get(m).text
        ([], 'the printer is on floor 2')
        """
        return self.lifecycle("forget", [record_id], reason=reason, actor=actor)

    def redact(self, record_id: str | bytes, *, reason: str = "", actor: str = "") -> str:
        """Like :meth:`forget` (a dead but not yet redacted record may be redacted too), and
        its payload is never read again: ``get`` raises :class:`Redacted`, ``records`` yields
        a placeholder, the next compaction purges the bytes. The event also names every copy
        of the payload under another tier (:meth:`copies`: promoted or demoted, live or not)
        not yet redacted. Returns the event id.

        >>> with cap.commit() as tx: m = tx.remember("the root password is hunter2")
        >>> with cap.commit() as tx: _ = tx.redact(m, reason="a secret", actor="alice")
        >>> [r.to_dict() for r in cap.records(kind="memory")] == [{"id": m, "kind": "memory", "redacted": True}]
        True
        """
        rid = self._id(record_id, "redact")
        copies = [x for x in self.copies(rid) if x != rid and not self._pending().is_redacted(x) and self._has(x)]
        return self.lifecycle("redact", [rid, *copies], reason=reason, actor=actor)

    def _has(self, rid: bytes) -> bool:
        """Whether the file or this block holds ``rid`` (a compaction may have dropped a copy a
        kept promote event still names: nothing of it is left to redact)."""
        return self._in_block(rid) is not None or self._cap._store.get(rid) is not None

    def copies(self, record_id: str | bytes) -> list[bytes]:
        """The records holding ``record_id``'s payload under another tier: those a chain of
        ``promote`` and ``demote`` events (committed, or earlier in this block) links to it, in
        either direction (7.7.1: each is the same memory with another tier, so another id), the
        record itself first. :meth:`redact` names them all: redacting only the id ``put``
        returned would leave the secret live in its promoted copy, and a copy that was
        promoted away would keep it in history past the next compaction."""
        from ..format.kindwalk import walk

        rid = record_id if isinstance(record_id, bytes) else self._id(record_id, "redact")
        # the links of the committed events, once per transaction (its snapshot is fixed), then
        # those of this block's events not yet taken: many redactions in one block stay linear
        if self._links is None:
            self._links, self._linked = {}, 0
            self._link([r for _, _, r in walk(self._cap._store, ["revert"])])
        pending = self._pending().events
        self._link(pending[self._linked :])
        self._linked = len(pending)
        links = self._links
        out, todo = [rid], [rid]
        seen = {rid}
        while todo:
            for x in sorted(links.get(todo.pop(), ())):
                if x not in seen:
                    seen.add(x)
                    out.append(x)
                    todo.append(x)
        return out

    def _link(self, events: Iterable[Any]) -> None:
        assert self._links is not None
        for ev in events:
            if ev.op in ("promote", "demote"):
                for a in ev.drop:
                    for b in ev.by:
                        self._links.setdefault(a, set()).add(b)
                        self._links.setdefault(b, set()).add(a)

    def supersede(self, old_id: str | bytes, text: str, *, tags: Any = None, meta: Mapping[str, Any] | None = None,
                  embedding: Any = None, tier: str | None = None, ttl: int | None = None,
                  source: str | None = None, reason: str = "", actor: str = "", evidence: Any = (),
                  **more: Any) -> str:
        """A new memory replaces the live memory ``old_id``; returns the new memory's id.

        The new memory takes ``tags``, ``meta``, ``tier`` and ``source`` from the old one
        unless given; never its ``embedding`` (it describes the old text) or its ``ttl``;
        its time is now (or ``time=``). Other memory fields pass through ``more``.

        >>> with cap.commit() as tx: old = tx.remember("lunch is at noon", tags=["office"], tier="scratch")
        >>> with cap.commit() as tx: new = tx.supersede(old, "lunch is at 12:30")
        >>> m = cap.get(new); m.text, m.tags, m.tier
        ('lunch is at 12:30', ('office',), 'scratch')
        """
        rid = self._id(old_id, "supersede")
        self._check_target("supersede", rid)  # before the replacement joins the batch
        old, _ = self._record(rid, "supersede")
        start, vconfig, vectors = len(self._batch), self._vconfig, self._vectors
        try:
            new = self.remember(text, tags=old.tags if tags is None else tags, meta=old.meta if meta is None else meta,
                                embedding=embedding, tier=old.tier if tier is None else tier, ttl=ttl,
                                source=old.source if source is None else source, **more)
            if bytes.fromhex(new) == rid:
                raise UsageError(f"supersede: the new memory is {rid.hex()} itself (nothing changed)")
            self.lifecycle("supersede", [rid], by=[new], evidence=evidence, reason=reason, actor=actor)
        except BaseException:
            self._cut(start, vconfig, vectors)  # all or nothing: the replacement leaves the batch too
            raise
        return new

    def promote(self, record_id: str | bytes, tier: str, *, evidence: Any = (), reason: str = "",
                actor: str = "") -> str:
        """The live memory moves to a higher ``tier`` (scratch -> working -> validated): the
        same memory with that tier, a new id (the tier is content). Returns the new id. A
        lower tier is a demotion, written as such; the same tier is an error.

        >>> with cap.commit() as tx: m = tx.remember("tests pass on main", tier="scratch")
        >>> with cap.commit() as tx: v = tx.promote(m, "validated", reason="CI green")
        >>> cap.get(v).tier, cap.get(v).text, [e.op for e in cap.records(kind="revert")]
        ('validated', 'tests pass on main', ['promote'])
        """
        rid = self._id(record_id, "promote")
        if tier not in TIERS:
            raise UsageError(f"promote: tier must be one of {', '.join(TIERS)}, not {tier!r}")
        self._check_target("promote", rid)
        old, _ = self._record(rid, "promote")
        if tier == old.tier:
            raise UsageError(f"promote: {rid.hex()} is already {tier}")
        op = "promote" if TIERS.index(tier) > TIERS.index(old.tier) else "demote"
        start, vconfig, vectors = len(self._batch), self._vconfig, self._vectors
        try:
            new = self.put(dataclasses.replace(old, tier=tier))
            self.lifecycle(op, [rid], by=[new], evidence=evidence, reason=reason, actor=actor)
        except BaseException:
            self._cut(start, vconfig, vectors)
            raise
        return new

    def demote(self, record_id: str | bytes, tier: str, *, evidence: Any = (), reason: str = "",
               actor: str = "") -> str:
        """:meth:`promote` to a lower tier (validated -> working -> scratch); a higher one is refused."""
        rid = self._id(record_id, "demote")
        self._check_target("demote", rid)
        old, _ = self._record(rid, "demote")
        if tier not in TIERS:
            raise UsageError(f"demote: tier must be one of {', '.join(TIERS)}, not {tier!r}")
        if tier == old.tier:
            raise UsageError(f"demote: {rid.hex()} is already {tier}")
        if TIERS.index(tier) > TIERS.index(old.tier):
            raise UsageError(f"demote: {rid.hex()} is {old.tier}; {tier} is higher (use promote)")
        return self.promote(rid, tier, evidence=evidence, reason=reason, actor=actor)

    def _cut(self, start: int, vconfig: VectorParams | None, vectors: int) -> None:
        """Undo a verb's additions to the batch (its event, if any, is never among them: every
        check runs before the event joins the batch)."""
        self._batch.truncate(start)
        self._vconfig, self._vectors = vconfig, vectors
        if self._lc is not None and self._lc.indexed > start:
            self._lc.index, self._lc.last, self._lc.indexed = {}, {}, 0

    def _check_target(self, op: str, rid: bytes) -> None:
        """The checks of :meth:`lifecycle` on a verb's target, before its replacement is built."""
        rec, pending = self._record(rid, op)
        if not may_target(op, rec.kind):
            raise UsageError(f"{op}: {rid.hex()} is {_a(rec.kind)}; only a memory can be {_done(op)}")
        p = self._pending()
        if p.is_redacted(rid):
            raise UsageError(f"{op}: {rid.hex()} is already redacted")
        if p.is_dead(rid, pending and p.readded(rid)):
            raise UsageError(f"{op}: {rid.hex()} is not live (forgotten, superseded, promoted or demoted to a "
                              "new id, or rolled back: why() names by what)")


def _ids(v: Any) -> list[Any]:
    if v is None:
        return []
    if isinstance(v, str | bytes):
        return [v]
    if not isinstance(v, Iterable):
        raise UsageError(f"expected record ids, not {type(v).__name__}")
    return list(v)


def _done(op: str) -> str:
    return {"forget": "forgotten", "redact": "redacted", "supersede": "superseded", "promote": "promoted",
            "demote": "demoted"}[op]


__all__ = ["APP_KIND_OPS", "LifecycleMethods", "TARGETS", "check_readable", "may_target"]
