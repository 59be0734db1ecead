"""The history a ``why`` or an ``audit`` reads once: approvals, constraints, identities
and reverts in commit order (one filtered walk), the checkpoints, and the keys an
approval's signature may check under (7.4)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from ..core.clock import iso
from ..format.commit import CommitInfo
from ..format.keys import PublicKey
from ..format.kindwalk import walk
from ..state import checkpoints as ck
from ..state.carried import carried_checkpoints, lineage_of
from ..state.fold import dead_ids
from ..state.kinds import approval_message
from ._walk import Source, checkpoint_after, checkpoint_ref, commit_holding, frame_seq

KINDS = ("approval", "constraint", "identity", "revert")


@dataclass
class Context:
    cap: Source
    anchor: int | None = None  # keyset index trust starts at (14.7), when asked
    rows: list[tuple[int, Any]] = field(default_factory=list)  # (frame offset, record) in commit order
    seqs: list[int] = field(default_factory=list)  # the frame seq of each row
    approvals: dict[bytes, list[Any]] = field(default_factory=dict)
    dead: set[bytes] = field(default_factory=set)
    keys: dict[str, bytes] = field(default_factory=dict)
    vouched: dict[str, bytes] = field(default_factory=dict)
    chain: list[tuple[int, dict[str, bytes]]] = field(default_factory=list)  # (KEYSET offset, its keys), oldest first
    lineage: Any = None  # the file's LINEAGE (15), when it is a fork, a compacted or a merged file

    @classmethod
    def load(cls, cap: Source, anchor: int | None = None, extra: tuple[str, ...] = ()) -> Context:
        """One walk for :data:`KINDS` and the ``extra`` kinds a question needs besides
        (kept in ``rows`` with the frame seq in ``seqs``)."""
        ctx = cls(cap, anchor)
        store = cap._store
        for off, seq, rec in walk(store, KINDS + extra):
            ctx.rows.append((off, rec))
            ctx.seqs.append(seq)
            if rec.kind == "approval":
                ctx.approvals.setdefault(rec.subject, []).append(rec)
            elif rec.kind == "identity":
                for raw in rec.keys:
                    ctx.keys[PublicKey(raw).key_id] = raw
        ctx.dead = dead_ids(r for _, r in ctx.rows if r.kind == "revert")
        ctx.lineage = lineage_of(store)
        ks = ck.keyset_in_force(store)
        if ks is not None:
            ctx.vouched = {k.key_id: k.raw for k in ks.keys}
            ctx.chain = [(kf.offset, {k.key_id: k.raw for k in kf.keyset.keys}) for kf in ck.keysets(store)]
            for _, keys in ctx.chain:  # a key rotated out since is still a key the capsule knows
                for kid, raw in keys.items():
                    ctx.keys.setdefault(kid, raw)
        return ctx

    def vouched_before(self, offset: int) -> dict[str, bytes]:
        """The keyset in force before the commit starting at ``offset`` (7.3.1: what an intent
        there was judged under), as key id -> raw key; empty when there was none."""
        i = bisect.bisect_left([o for o, _ in self.chain], offset)
        if i:
            return self.chain[i - 1][1]
        if self.chain and self.lineage is not None:
            # a copy (15.2): the parent's chain follows the records it inherited, so which keyset was
            # in force at one of them is the parent's to say; any of the chain it copied may have been
            return {kid: raw for _, keys in self.chain for kid, raw in keys.items()}
        return {}

    def approvals_of(self, rid: bytes, vouched: dict[str, bytes] | None = None) -> list[dict[str, Any]]:
        """7.4: ``signature_ok`` under a key an identity published or the keyset in force
        holds, or one an earlier keyset held (``key_known``: there is such a key to check it with);
        ``verified`` only under a key of ``vouched``: the keyset in force at the snapshot, or the
        one a caller names (``vouched_before``: the one an intent was judged under)."""
        out = []
        vouched = self.vouched if vouched is None else vouched
        for a in self.approvals.get(rid, []):
            member = vouched.get(a.approver)
            raw = member if member is not None else self.keys.get(a.approver)
            ok = raw is not None and PublicKey(raw).verify(approval_message(rid), a.signature)
            out.append({"id": a.id, "approver": a.approver, "time": iso(a.time), "signature_ok": ok,
                        "key_known": raw is not None, "verified": ok and member is not None,
                        "rolled_back": bytes.fromhex(a.id) in self.dead})
        return out

    def constraints_at(self, end: int) -> list[dict[str, Any]]:
        """The constraints active when the commit ending at ``end`` was made (7.3), with
        the reverts before it applied (7.7); ``rule`` when one carries a rule (7.3.1)."""
        before = [r for off, r in self.rows if off < end]
        dead = dead_ids(r for r in before if r.kind == "revert")
        active: dict[tuple[str, str], Any] = {}
        for r in before:
            if r.kind != "constraint" or bytes.fromhex(r.id) in dead:
                continue
            if r.status == "active":
                active[(r.scope, r.text)] = r
            else:
                active.pop((r.scope, r.text), None)
        return [{"id": r.id, "text": r.text, "scope": r.scope, "since": iso(r.time),
                 **({"rule": dict(r.rule)} if r.rule else {})} for _, r in sorted(active.items())]

    def located(self, rid: bytes) -> tuple[int, int, CommitInfo | None]:
        """(frame offset, frame seq, commit) of a committed record."""
        store = self.cap._store
        loc = store.locate(rid)
        assert loc is not None  # the caller read the record
        return loc[0], frame_seq(store, loc[0]), commit_holding(store, loc[0])

    def covered_by(self, offset: int) -> dict[str, Any] | None:
        """The first checkpoint covering the frame at ``offset`` (14.8): a CHECKPOINT frame after
        it, or a checkpoint the parent signed that this file carries (15.2, 13.4: it counts like
        one signed here) at a commit that holds the frame, whichever comes first."""
        store = self.cap._store
        own = checkpoint_after(store, offset)
        for cc in carried_checkpoints(store):
            if offset < cc.commit.end and (own is None or cc.commit.end <= own.offset):
                view = SimpleNamespace(body=cc.entry.body, body_raw=cc.entry.body_raw, sigs=cc.entry.sigs,
                                       label=cc.label, seq=cc.seq, time=cc.time, signers=cc.signers)
                ref = checkpoint_ref(self.cap, view, self.anchor)  # type: ignore[arg-type]
                return None if ref is None else {**ref, "carried": True}
        return checkpoint_ref(self.cap, own, self.anchor)
