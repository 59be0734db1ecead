"""A merged file against its two parents (spec 20.8): ``verify C --parent A --parent B``.

The proof is a recomputation, as for a compacted file (15.1). The LINEAGE names each
parent's last COMMIT read (file id, seq, root, chain); each given parent must hold that
COMMIT, and is read up to it. The merge plan (``capsule.merging.plan``) is made again from
the two, and the merged file passes when its LINEAGE's ancestor and `kept` are the
plan's, its first commits hold exactly the plan's inherited records (ids, in order, one
commit per group, at the group's time), and the commit after them holds exactly the
records the plan settles its conflicts with (built with that commit's `after`). Ids
suffice for "byte-identical": each file's records hash to their ids (5.3), which the
file's own verification (run first) checks. The parents may have grown since the merge, and
the merged file since it was written (an agent goes on with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..compaction.plan import commits
from ..core import constants as C
from ..core.errors import CapsuleError
from ..format.checkpoint import CommitRef
from ..format.crypto import KeyRequired, WrongKey
from ..handle.entry import open as open_capsule
from ..merging.plan import make_plan
from ..merging.sides import read_side

if TYPE_CHECKING:
    from .check import VerifyReport


def _refuse(rep: VerifyReport, message: str, offset: int | None = C.HEADER_SIZE, seq: int | None = 0) -> None:
    rep.ok = False
    rep.first_error = {"offset": offset, "seq": seq, "check": "lineage", "message": message}


def _ref(d: dict[str, Any]) -> CommitRef:
    return CommitRef(bytes.fromhex(d["parent"]), d["tree_size"], bytes.fromhex(d["root"]), bytes.fromhex(d["chain"]))


def _match(ref: CommitRef, paths: Sequence[Path], taken: set[int]) -> int | None:
    """Which given parent holds the COMMIT ``ref`` names (its file id, seq, root and chain)."""
    for i, p in enumerate(paths):
        if i in taken:
            continue
        try:
            side = read_side(p, upto=ref.tree_size)
        except (KeyRequired, WrongKey):
            raise  # 10: the caller must give the key, not be told the parents are wrong
        except CapsuleError:
            continue
        c = side.last
        if side.file_id == ref.parent and (c.root, c.chain) == (ref.root, ref.chain):
            return i
    return None


def check_merge(rep: VerifyReport, parents: Sequence[str | Path]) -> None:
    """20.8: the merged file ``rep`` verified is the merge of ``parents`` (two paths, any order)."""
    lin = rep.lineage
    if lin is None or "merge" not in lin:
        return _refuse(rep, "no merge LINEAGE: not a merged file (give one --parent for a fork or a compacted file)")
    paths = [Path(p) for p in parents]
    if len(paths) != 2:
        return _refuse(rep, f"a merged file has two parents; {len(paths)} given", None, None)
    refs = [_ref(lin), _ref(lin["merge"])]
    first = _match(refs[0], paths, set())
    second = _match(refs[1], paths, {first} if first is not None else set())
    for n, (ref, got) in enumerate(zip(refs, (first, second), strict=True)):
        if got is None:
            return _refuse(rep, f"neither {paths[0]} nor {paths[1]} is the {('first', 'second')[n]} parent this merge "
                              f"names (file id {ref.parent.hex()}, a COMMIT at seq {ref.tree_size} with its root and chain)")
    assert first is not None and second is not None
    try:
        plan = make_plan(read_side(paths[first], refs[0].tree_size), read_side(paths[second], refs[1].tree_size))
    except CapsuleError as e:
        return _refuse(rep, f"the parents do not merge: {e}")
    anc = lin["ancestor"]
    mine = (plan.ancestor.parent.hex(), plan.ancestor.tree_size, plan.ancestor.root.hex(), plan.ancestor.chain.hex())
    if mine != (anc["parent"], anc["tree_size"], anc["root"], anc["chain"]):
        return _refuse(rep, f"the LINEAGE names an ancestor (seq {anc['tree_size']}) that is not the parents' common "
                          f"commit (seq {plan.ancestor.tree_size})")
    if plan.kept != lin["kept"]:
        return _refuse(rep, f"the LINEAGE says {lin['kept']} records are inherited; the parents give {plan.kept}")
    return _check_layout(rep, plan)


def _check_layout(rep: VerifyReport, plan: Any) -> None:
    groups = plan.groups
    with open_capsule(rep.path) as new:
        snap = new._snap
        assert snap.commit is not None
        walk = commits(new._h, snap.header, snap.commit.end)
        prev_root = None
        for k, g in enumerate(groups, start=1):
            got = next(walk, None)
            if got is None:
                return _refuse(rep, f"the file ends before the {len(groups)} commits it inherits")
            if [r[0] for r in got.records] != [r[0] for r in g.records] or got.info.time != g.time:
                side = ("first", "second")[g.side]
                return _refuse(rep, f"commit {k} does not hold what the merge takes from the {side} parent's commit "
                                  f"{g.ordinal} (its new records, in order, at its time)", got.info.offset, got.info.seq)
            prev_root = got.info.root
        if not groups:
            got = next(walk, None)
            if got is None or got.records:
                return _refuse(rep, "a merge that inherits nothing opens with one empty commit")
            prev_root = got.info.root
        if plan.resolutions:
            got = next(walk, None)
            assert prev_root is not None
            want = [r[0] for r in plan.resolution_items(prev_root)]  # 7.7 `after`: the commit before
            if got is None or [r[0] for r in got.records] != want or got.info.time != plan.time:
                where = (got.info.offset, got.info.seq) if got is not None else (None, None)
                return _refuse(rep, f"the commit after the inherited ones does not hold the {len(want)} records the "
                                  "merge settles its conflicts with (20.6)", *where)
    return None


def verify_merge(path: str | Path, parents: Sequence[str | Path], **kw: Any) -> VerifyReport:
    """Verify the merged capsule ``path`` (every check of :func:`capsule.verify`, with ``kw``),
    then that it is exactly the merge of ``parents`` (spec 20.8).

    >>> import capsule
    >>> with capsule.create("p.capsule") as cap, cap.commit() as tx:
    ...     _ = tx.remember("shared")
    >>> capsule.fork("p.capsule", "q.capsule").close()
    >>> with capsule.open("q.capsule", "a") as cap, cap.commit() as tx:
    ...     _ = tx.remember("learned on the fork")
    >>> _ = capsule.merge("q.capsule", "p.capsule", "pq.capsule")
    >>> capsule.verify_merge("pq.capsule", ["p.capsule", "q.capsule"]).ok
    True
    """
    from .check import verify

    rep = verify(path, **{**kw, "policy": False})
    if rep.ok:
        check_merge(rep, parents)
    if rep.ok and kw.get("policy"):  # 7.3.1: the inherited intents are judged in the parents
        from ..format.crypto import Keys
        from .policy import check_policy

        check_policy(rep, Path(path), Keys.of(kw.get("identity"), kw.get("passphrase")),
                     tuple(Path(p) for p in parents))
    return rep


__all__ = ["check_merge", "verify_merge"]
