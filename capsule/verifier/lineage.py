"""A compacted file against its parent (spec 15.1): ``verify NEW --parent OLD``.

The proof is a recomputation. The LINEAGE names the parent's last commit and the policy;
the parent's records up to that commit are walked (``compaction.plan``) and the policy's
selection made again. The compacted file passes when its inherited records (its first
`kept` ones) are exactly the selected ids, commit by commit and in order, under the same
commit times, and the counts and the Merkle root of the dropped ids are the LINEAGE's.
Ids suffice for "byte-identical": both files' records hash to their ids (5.3), which
each file's own verification checks. So every dropped id is one the policy drops in the
parent: dead, expired, redacted, or outside the policy, at that point. The checks a record's
place makes (7.7 `revert-after`) are made for inherited records in the parent, here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..compaction.plan import commits, make_plan, rows
from ..core import constants as C
from ..core.errors import CapsuleError
from ..format.crypto import Keys
from ..format.kindwalk import walk
from ..handle.entry import open as open_capsule
from ..questions._lifecycle import redacted
from ..state.history import commit_at_seq  # 15: by seq, never a label

if TYPE_CHECKING:
    from .check import VerifyReport


def inherited(lineage: dict[str, Any] | None) -> int:
    """15.1: how many records at the start of this file are inherited (its LINEAGE's `kept`)."""
    return int((lineage or {}).get("kept") or 0)


def check_parent(rep: VerifyReport, parent: Path, keys: Keys | None = None) -> None:
    """15: the fork point must be a commit of ``parent`` with the named root and chain;
    15.1: a compacted file must also hold exactly what its policy keeps of it."""
    lin = rep.lineage
    if lin is None:
        rep.ok = False
        rep.first_error = {"offset": None, "seq": None, "check": "lineage", "message": "no LINEAGE frame: not a fork"}
        return
    if lin.get("merge") is not None:  # 20.8
        rep.ok = False
        rep.first_error = {"offset": C.HEADER_SIZE, "seq": 0, "check": "lineage",
                           "message": "a merged file: give both parents (--parent A --parent B)"}
        return
    keys = keys or Keys()
    with open_capsule(parent, identity=keys.identity, passphrase=keys.passphrase) as par:
        ok = par.file_id == lin["parent"]
        if ok:
            try:
                c = commit_at_seq(par._store, lin["tree_size"])
                ok = c.root.hex() == lin["root"] and c.chain.hex() == lin["chain"]
            except CapsuleError:
                ok = False
    if not ok:
        rep.ok = False
        rep.first_error = {"offset": C.HEADER_SIZE, "seq": 0, "check": "lineage",
                           "message": f"{parent} is not the parent this compaction names (or its last commit "
                                      "differs)" if lin.get("policy") is not None else
                                      f"{parent} is not the parent this fork names (or the fork point differs)"}
    elif lin.get("policy") is not None:
        check_compacted(rep, parent, keys)
    else:
        try:
            _check_fork(rep, lin, parent, keys)
        except CapsuleError as e:  # the parent itself is damaged: it proves nothing
            _fail(rep, f"{parent}: {e}")


def _check_fork(rep: VerifyReport, lin: dict[str, Any], parent: Path, keys: Keys) -> None:
    """15: what a fork inherits is exactly the parent's live records at the fork point, but those
    the parent has redacted since (7.7.1), with the parent's journal.

    The inherited commit is the fork's first that holds records (the reference writes them in
    commit 2), or commit 1 when there was nothing to copy: the parent's state then was empty, or
    all of it is redacted since, and the fork's later commits are its own. A commit 2 holding a
    journal-only revert (no ``to``, no ``op``: only a fork or a merge writes one) is inherited
    whatever else. Every record a revert of the inherited commit drops must be the parent's,
    and every ``action`` record of the parent up to the fork point must be in the fork (the
    ones after it, copied too, are the parent's as it was when the fork was made: not checked).
    State roots are compared first (13.1: from the sorted id columns); live sets only when the
    roots differ."""
    with open_capsule(rep.path, identity=keys.identity, passphrase=keys.passphrase) as new, \
            open_capsule(parent, identity=keys.identity, passphrase=keys.passphrase) as par:
        done = list(new._store.commits())[::-1]  # oldest first
        i = next((k for k, c in enumerate(done) if c.records and k), 0)  # the first after commit 1 with records
        reverts = [r for _, _, r in walk(new._store, ["revert"], done[i - 1], done[i].end)] if i else []
        journal = any(r.to is None and r.op is None for r in reverts)
        point = commit_at_seq(par._store, lin["tree_size"])
        red = redacted(par._store)
        with par.view(point) as pv:
            theirs_root, theirs = pv.state_root, None
            if not (i and new_root(new, done[i]) == theirs_root):  # the common case: commit 2, equal
                if not journal and new_root(new, done[0]) == theirs_root:
                    i = 0  # nothing was live: commit 1, empty, is it
                else:
                    theirs = set(pv.state().live)
                    if not journal and all(x in red for x in theirs) and not done[0].records:
                        i, theirs = 0, None  # all of it redacted since: nothing was copied
        first = done[i]
        if theirs is not None:
            with new.view(first) as v:
                mine = set(v.state().live)
            extra = sorted(mine - theirs)
            if extra:
                return _fail(rep, f"record {extra[0].hex()} is live in the fork but was not live in {parent} at "
                                  "the fork point", first.offset, first.seq)
            lost = sorted(x for x in theirs - mine if x not in red)
            if lost:
                return _fail(rep, f"record {lost[0].hex()} was live in {parent} at the fork point and is not live "
                                  "in the fork (nor redacted in the parent given: a newer copy of it may have "
                                  "redacted it since)", first.offset, first.seq)
        drops = sorted({rid for r in (reverts if i else ()) for rid in r.drop})
        alien = [rid for rid, ok in zip(drops, par._store.present(drops), strict=True) if not ok] if drops else []
        if alien:
            return _fail(rep, f"record {alien[0].hex()} of the fork's first commit is not a record of {parent}",
                         first.offset, first.seq)
        acts = sorted({bytes.fromhex(r.id) for _, _, r in walk(par._store, ["action"], end=point.end)} - set(red))
        gone = [rid for rid, ok in zip(acts, new._store.present(acts), strict=True) if not ok] if acts else []
        if gone:
            return _fail(rep, f"action record {gone[0].hex()} of {parent} before the fork point is not in the fork: "
                              "its journal (7.8) must survive the fork", first.offset, first.seq)
    return None


def new_root(cap: Any, commit: Any) -> str:
    """The state root of ``cap`` at ``commit`` (13.1)."""
    with cap.view(commit) as v:
        return str(v.state_root)


def check_compacted(rep: VerifyReport, parent: Path, keys: Keys | None = None) -> None:
    """15.1: the compacted file ``rep`` verified holds exactly what its policy keeps of ``parent``."""
    lin = rep.lineage
    assert lin is not None and lin.get("policy") is not None
    try:
        _check(rep, lin, parent, keys or Keys())
    except CapsuleError as e:  # the parent itself is damaged: it proves nothing
        _fail(rep, f"{parent}: {e}")


def _fail(rep: VerifyReport, message: str, offset: int | None = C.HEADER_SIZE, seq: int | None = 0,
          check: str = "lineage") -> None:
    rep.ok = False
    rep.first_error = {"offset": offset, "seq": seq, "check": check, "message": message}


def _check(rep: VerifyReport, lin: dict[str, Any], parent: Path, keys: Keys) -> None:
    with open_capsule(parent, identity=keys.identity, passphrase=keys.passphrase) as par:
        c = commit_at_seq(par._store, lin["tree_size"])
        plan = make_plan(par._h, par._snap.header, c.end, lin["policy"])
    dropped = len(plan.ids) - plan.kept
    if (plan.kept, dropped) != (lin["kept"], lin["dropped"]):
        return _fail(rep, f"the lineage says {lin['kept']} kept and {lin['dropped']} dropped; policy "
                          f"{lin['policy']!r} on {parent} keeps {plan.kept} and drops {dropped}")
    if plan.dropped_root().hex() != lin["dropped_root"]:
        return _fail(rep, f"the dropped ids' Merkle root is not that of the ids policy {lin['policy']!r} drops "
                          f"in {parent}")
    if plan.bad_after is not None:
        rid = rows(plan.ids[plan.bad_after : plan.bad_after + 1])[0].hex()
        return _fail(rep, f"inherited revert {rid}: its `after` is not the root of the parent's commit before it",
                     check="revert-after")
    groups = plan.groups()  # 15.1 layout: (records, time) of each inherited commit
    kept = rows(plan.ids[plan.keep])
    with open_capsule(rep.path, identity=keys.identity, passphrase=keys.passphrase) as new:
        snap = new._snap
        assert snap.commit is not None
        seen = at = 0
        for got in commits(new._h, snap.header, snap.commit.end):
            k = seen = got.ordinal
            if k > len(groups):
                break
            n, t = groups[k - 1]
            if [r[0] for r in got.records] != kept[at : at + n] or got.info.time != t:
                what = f"of {parent}'s commit {k}" if lin["policy"] != "live" else f"of {parent}, group {k}"
                return _fail(rep, f"commit {k} does not hold what policy {lin['policy']!r} keeps {what} "
                                  "(its records, in order, at its time)", got.info.offset, got.info.seq)
            at += n
        if seen < len(groups):
            return _fail(rep, f"the file ends before the {len(groups)} commits it inherits from {parent}")
    return None


__all__ = ["check_compacted", "check_parent", "inherited"]
