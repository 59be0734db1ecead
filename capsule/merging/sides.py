"""The two parents of a merge and their common ancestor (spec 20.1, 20.2).

Theory of operation. A parent is read once, as a lock-free reader, up to the last
COMMIT its snapshot saw (or, for ``verify --parent``, up to the COMMIT a merged file's
LINEAGE names), through compaction's walk (``compaction.plan.commits``), which checks
what a reader checks plus every COMMIT's Merkle root and record count. So a damaged
parent is refused with its first bad frame before anything is written. The walk keeps
every record as stored bytes (id, kind, bytes); nothing is decoded here.

The parents are put in their canonical order (20.1): by file id, then by the chain
value of their last COMMIT. Everything after depends only on that order, never on
which path the caller named first, which is why ``merge(A, B)`` and ``merge(B, A)``
write the same bytes.

The ancestor (20.2) is found from the bytes alone: copies of one file share their
commits up to the last COMMIT that has the same chain value in both (a chain value
covers every byte before it, 4.2); a fork names its parent's COMMIT in its LINEAGE
(15); two forks of one parent at one COMMIT name the same one. Anything else is
refused: a merge without a common ancestor would be a union of strangers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..compaction.plan import Commit, commits
from ..core.errors import DataError, UsageError
from ..format.checkpoint import CommitRef, Lineage
from ..format.commit import CommitInfo
from ..format.crypto import Keys, KeySlots
from ..format.frames import FileHeader
from ..handle.entry import open as open_capsule


@dataclass
class Side:
    """One parent, read: its path, header, LINEAGE (if any) and every COMMIT with its records."""

    path: Path
    header: FileHeader
    lineage: Lineage | None
    commits: list[Commit]
    checkpoint: bytes | None  # hash of its newest checkpoint up to its last COMMIT (15's `checkpoint`)
    keyslots: KeySlots | None = None  # 10.3: who opens it, when it is encrypted
    keys: Keys | None = None  # what opened it
    vectors: Any = None  # 16.1: its vector parameters (VectorParams), or None

    @property
    def file_id(self) -> bytes:
        return self.header.file_id

    @property
    def last(self) -> CommitInfo:
        return self.commits[-1].info

    @property
    def ref(self) -> CommitRef:
        """20.3: how the merged file's LINEAGE names this parent (its last COMMIT read)."""
        c = self.last
        return CommitRef(self.file_id, c.seq, c.root, c.chain, self.checkpoint)

    @property
    def order(self) -> tuple[bytes, bytes]:
        """20.1: the canonical order of the parents: file id, then the last COMMIT's chain value."""
        return (self.file_id, self.last.chain)

    def ids(self) -> set[bytes]:
        return {rid for c in self.commits for rid, _, _ in c.records}


def read_side(path: str | Path, upto: int | None = None) -> Side:
    """Read ``path`` up to its last COMMIT (or the COMMIT whose seq is ``upto``)."""
    p = Path(path)
    with open_capsule(p) as cap:
        snap = cap._snap
        if snap.commit is None:
            raise DataError(f"{p}: holds no commit")
        own: list[Lineage] = []
        got: list[Commit] = []
        checkpoint: bytes | None = None
        try:
            for c in commits(cap._h, snap.header, snap.commit.end, own):
                got.append(c)
                if c.checkpoints:
                    checkpoint = c.checkpoints[-1].hash
                if upto is not None and c.info.seq >= upto:
                    break
        except DataError as e:
            e.args = (f"{p}: {e}",)
            raise
        if upto is not None and got[-1].info.seq != upto:
            raise DataError(f"{p}: holds no COMMIT at seq {upto}")
        return Side(p, snap.header, own[0] if own else None, got, checkpoint, cap._h.keyslots, cap._h.keys,
                    cap.vector_config())


def in_order(a: Side, b: Side) -> tuple[Side, Side]:
    """20.1: the two parents in canonical order; refuses one capsule given twice."""
    if a.order == b.order:
        raise UsageError(f"{a.path} and {b.path} are the same capsule at the same commit: nothing to merge")
    return (a, b) if a.order < b.order else (b, a)


def _holds(side: Side, ref: CommitRef) -> CommitInfo | None:
    """The COMMIT of ``side`` a LINEAGE names (15: seq, root and chain), if it holds it."""
    for c in side.commits:
        if c.info.seq == ref.tree_size:
            return c.info if (c.info.root, c.info.chain) == (ref.root, ref.chain) else None
    return None


def _parents(lin: Lineage | None) -> list[CommitRef]:
    """The COMMITs a LINEAGE names as parents: a fork's or compacted file's one, a merged file's two."""
    if lin is None:
        return []
    return [lin.first] + ([lin.merge] if lin.merge is not None else [])


def ancestor(s1: Side, s2: Side) -> tuple[CommitRef, str]:
    """20.2: the common ancestor COMMIT of two parents and how they are related:
    ``"copies"`` (one file id, a common prefix), ``"fork"`` (one names the other in its
    LINEAGE) or ``"siblings"`` (both forks of one parent at one COMMIT)."""
    if s1.file_id == s2.file_id:
        common: CommitInfo | None = None
        for c1, c2 in zip(s1.commits, s2.commits, strict=False):
            if c1.info.chain != c2.info.chain:
                break
            common = c1.info
        if common is None:
            raise DataError(f"{s1.path} and {s2.path} share a file id but no commit: not copies of one capsule")
        for x, y in ((s1, s2), (s2, s1)):
            if common.chain == x.last.chain:
                raise UsageError(f"nothing to merge: {y.path} holds every commit of {x.path} (it is an "
                                 f"earlier state of it); use {y.path}")
        return CommitRef(s1.file_id, common.seq, common.root, common.chain), "copies"
    for child, par in ((s2, s1), (s1, s2)):
        # a merge of two copies names their file id twice (parent and merge): the ancestor is
        # the named COMMIT the other parent holds (the newest, should it hold both)
        refs = [ref for ref in _parents(child.lineage) if ref.parent == par.file_id]
        held = [c for ref in refs if (c := _holds(par, ref)) is not None]
        if held:
            c = max(held, key=lambda c: c.seq)
            return CommitRef(par.file_id, c.seq, c.root, c.chain), "fork"
        if refs:
            at = " and ".join(dict.fromkeys(str(ref.tree_size) for ref in refs))
            raise DataError(f"{child.path} descends from {par.path}'s file id at seq {at}, and {par.path} does "
                            "not hold that commit (its bytes there differ, or it is shorter): no common ancestor")
    l1, l2 = s1.lineage, s2.lineage
    if l1 is not None and l2 is not None and l1.merge is None and l2.merge is None and l1.parent == l2.parent:
        if (l1.tree_size, l1.root, l1.chain) == (l2.tree_size, l2.root, l2.chain):
            return CommitRef(l1.parent, l1.tree_size, l1.root, l1.chain), "siblings"
        raise DataError(f"{s1.path} and {s2.path} were forked from one parent at different commits (seq "
                        f"{l1.tree_size} and {l2.tree_size}): no common commit to merge from; merge each "
                        "with the parent instead")
    # 15.1, 10.3: a compaction or a rekey writes a new file (a new id) whose LINEAGE names the
    # old one: its forks and siblings share no ancestor with it any more
    why = "; ".join(f"{s.path} is a compacted or rekeyed file (its parent: {s.lineage.parent.hex()}): "
                    "merge before compacting or rekeying" for s in (s1, s2)
                    if s.lineage is not None and s.lineage.policy is not None)
    raise DataError(f"{s1.path} and {s2.path} have no common ancestor (file ids {s1.file_id.hex()} and "
                    f"{s2.file_id.hex()}, neither a copy nor a fork of the other): refusing to merge"
                    + (f"; {why}" if why else ""))


__all__ = ["Side", "ancestor", "in_order", "read_side"]
