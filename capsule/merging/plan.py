"""What a merge writes, computed before a byte is written (spec 20.4-20.6).

Theory of operation. The two parents (``sides.py``, canonical order) are interleaved
commit by commit, like the merge step of a merge sort: of the two next commits the
earlier by commit time goes first, the first parent's on a tie. Each parent's own
commit order is kept, so every fold a parent's state is made of (liveness, 13.1; the
latest constraint and identity, 7.3, 7.5; the journal, 7.8; the queue, 7.9) sees that
parent's records in the order it wrote them. Each commit taken becomes one commit of the
merged file, at its time, holding its records not written before (a record both
parents hold is written once, where it comes first) and not redacted by either parent
(7.7.1: a merged file, like a fork, never copies a redacted record). Commits that add
nothing (the second copy of a shared prefix, derived data) add no commit.

The merge's own records (20.6) come in one commit after the inherited ones, at the
later of the parents' last commit times; a merge reads no clock, so its bytes are a
function of the parents alone, and of the order in which they are named not at all.
``verify --parent A --parent B`` (``verifier/merge.py``) runs this plan again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..core.errors import UsageError
from ..format.checkpoint import CommitRef, Lineage
from ..format.frames import new_file_id
from .conflicts import Conflict, Detector, Item, Resolution
from .sides import Side, ancestor, in_order

MERGE_ID_TAG = b"capsule/v1/merge-id\x00"  # 20.7


@dataclass
class Group:
    """One inherited commit of the merged file: which parent's commit it comes from, its time, its records."""

    side: int  # 0: the first parent (canonical order), 1: the second
    ordinal: int  # that parent's commit ordinal (1 = its first)
    time: int
    records: list[Item]


@dataclass
class MergePlan:
    first: Side
    second: Side
    swap: bool  # the caller named the second parent first
    ancestor: CommitRef
    relation: str
    groups: list[Group]
    dropped: list[bytes]  # 20.4: redacted ids neither copied (sorted)
    time: int  # the time of the merge's own commits
    conflicts: list[Conflict]
    resolutions: list[Resolution]
    counts: dict[str, int]  # records only in a, only in b, in both (the caller's order)

    @property
    def kept(self) -> int:
        return sum(len(g.records) for g in self.groups)

    def lineage(self) -> Lineage:
        """20.3: the first parent in the top-level keys, the second in `merge`, the ancestor, `kept`."""
        f = self.first.ref
        return Lineage(f.parent, f.root, f.tree_size, f.chain, f.checkpoint, (), None, self.kept,
                       merge=self.second.ref, ancestor=self.ancestor)

    def file_id(self, epoch: int | None) -> bytes:
        """20.7: derived from the two parents' last commits; in reproducible mode (2.5) through
        the fork rule with that basis."""
        basis = b"".join((self.first.file_id, self.first.last.chain, self.second.file_id, self.second.last.chain))
        if epoch is not None:
            return new_file_id(epoch, b"merge\x00" + basis)
        return hashlib.sha256(MERGE_ID_TAG + basis).digest()[:16]

    def minor(self) -> int:
        """20.7: the higher of the parents' minors, and at least 3 (the LINEAGE keys of 15.1)."""
        return max(3, self.first.header.minor, self.second.header.minor)

    def resolution_items(self, after: bytes) -> list[Item]:
        """20.6: the merge's own records, given the root of the commit before theirs."""
        return [r.build(self.time, after) for r in self.resolutions]


def _redacted(sides: tuple[Side, Side]) -> set[bytes]:
    """7.7.1: every id a `redact` event of either parent names (redaction is sticky, 13.1), of a
    kind a redaction may name: an event naming an action record (which 7.7.1 forbids and verify
    reports as `lifecycle-target`) never drops it from the journal (7.8)."""
    import msgspec

    from ..handle.lifecycle import may_target

    class _Rev(msgspec.Struct, gc=False):
        drop: list[bytes] = []
        op: str | None = None

    dec = msgspec.msgpack.Decoder(_Rev)
    out: set[bytes] = set()
    for s in sides:
        for c in s.commits:
            for _, kind, data in c.records:
                if kind == "revert" and b"redact" in data:
                    rev = dec.decode(data)
                    if rev.op == "redact":
                        out.update(rev.drop)
    kinds = {rid: kind for s in sides for c in s.commits for rid, kind, _ in c.records}
    return {x for x in out if x not in kinds or may_target("redact", kinds[x])}


def interleave(first: Side, second: Side, redacted: set[bytes]) -> list[Group]:
    """20.4: the two parents' commits, each parent's in its order, the earlier by time first
    (the first parent's on a tie); each with the records not written before nor redacted."""
    c = (first.commits, second.commits)
    at = [0, 0]
    seen: set[bytes] = set()
    groups: list[Group] = []
    while at[0] < len(c[0]) or at[1] < len(c[1]):
        side = 0 if at[1] >= len(c[1]) or (at[0] < len(c[0]) and c[0][at[0]].info.time <= c[1][at[1]].info.time) else 1
        com = c[side][at[side]]
        at[side] += 1
        recs = [r for r in com.records if r[0] not in seen and r[0] not in redacted]
        seen.update(r[0] for r in com.records)
        if recs:
            groups.append(Group(side, com.ordinal, com.info.time, recs))
    return groups


def make_plan(a: Side, b: Side) -> MergePlan:
    """20: the whole merge of parents ``a`` and ``b`` (either order gives the same plan, but for
    which side the report calls `a`)."""
    first, second = in_order(a, b)
    va, vb = first.vectors, second.vectors
    if va is not None and vb is not None and va.to_value() != vb.to_value():
        # 20.1: one vector index cannot hold both (16.1): refused, never merged silently
        raise UsageError(f"{first.path} and {second.path} fix different vector parameters ({va.to_value()} and "
                         f"{vb.to_value()}): their vectors cannot share one index; nothing to merge")
    anc, relation = ancestor(first, second)
    red = _redacted((first, second))
    groups = interleave(first, second, red)
    merged = [r for g in groups for r in g.records]
    flat = [[r for com in s.commits for r in com.records] for s in (first, second)]
    swap = first is not a
    conflicts, fixes = Detector(flat, merged, swap).run()
    # 20.4: what the merge's own `redact` events (20.6) name is in R too, so its bytes are never
    # copied; those events still name it (the conflicts and events are those of the first pass)
    also = {x for f in fixes if f.kind == "revert" and f.fields.get("op") == "redact" for x in f.fields["drop"]}
    if also - red:
        red |= also
        groups = interleave(first, second, red)
    ids = [{r[0] for r in f} for f in flat]
    only = [len(ids[0] - ids[1]), len(ids[1] - ids[0])]
    if swap:
        only.reverse()
    stored = ids[0] | ids[1]
    counts = {"only_a": only[0], "only_b": only[1], "shared": len(ids[0] & ids[1])}
    return MergePlan(first, second, swap, anc, relation, groups, sorted(stored & red),
                     max(first.last.time, second.last.time), conflicts, fixes, counts)


__all__ = ["Group", "MERGE_ID_TAG", "MergePlan", "interleave", "make_plan"]
