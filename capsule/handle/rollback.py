"""Rollback of a handle to a checkpoint: its own, or one its parent signed (spec 7.7, 15.2).

A rollback is a ``revert`` record (several of one commit past 2^18 ids, 11's record limit)
whose ``to`` names the checkpoint's hash (14.8): it drops
every id live now that was not live at the checkpoint and restores every id live then that is
not live now, so the state root equals the checkpoint's again (but for ids redacted since,
7.7.1, which stay gone). The checkpoint is found by label as a view is (14.9): the file's own
checkpoints first, then those a fork or a compacted file carries from its parent, whose state
this file still holds at the COMMIT the LINEAGE names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..core import constants as C
from ..core.errors import CorruptError, NotFound
from ..format.keys import PrivateKey
from ..format.kindwalk import walk
from ..questions._lifecycle import redacted
from ..state.carried import find_carried
from ..state.checkpoints import check_can_sign
from ..state.fold import fold_store
from ..state.stateroot import state_root_of

if TYPE_CHECKING:
    from .capsule import Capsule


#: ids in one rollback revert (at 34 bytes each, well under 11's 16 MiB record limit)
REVERT_IDS = 1 << 18


def rollback_label(to: str) -> str:
    """``rollback-to-<label>``, the label cut (at a character) to 14.8's 1024 bytes."""
    return ("rollback-to-" + to).encode()[:1024].decode("utf-8", "ignore")


def _unsigned_rollback(cap: Capsule, thash: bytes) -> bool:
    """Whether the newest commit holding records is a rollback to the checkpoint ``thash`` (a
    revert naming it in ``to``, 7.7) that no checkpoint followed: what a rollback killed between
    its revert and its checkpoint (two commits) leaves. Commits of derived data only (an INDEX or
    a snapshot a close wrote after the revert) are looked past."""
    ck = cap._snap.checkpoint
    commits = cap._store.commits()  # newest first
    c = next(commits, None)
    while c is not None:
        prev = next(commits, None)
        if ck is not None and ck[0] > (prev.end if prev is not None else 0):
            return False  # a checkpoint in this commit or after it
        if c.records != (prev.records if prev is not None else 0):
            return any(r.to == thash for _, _, r in walk(cap._store, ["revert"], start=prev))
        c = prev
    return False


def rollback_to(cap: Capsule, to: str, key: PrivateKey | Sequence[PrivateKey] | None) -> str | None:
    """:meth:`Capsule.rollback`, under the handle's lock."""
    own = cap.find_checkpoint(to)
    if own is not None:
        commit, thash, sroot, where = cap.commit_of(own), own.hash, own.body.state_root, own.offset
    else:
        carried = find_carried(cap._store, to)
        if carried is None:
            raise NotFound(f"no checkpoint labelled {to!r} (see `capsule checkpoints`)")
        commit, thash, sroot, where = carried.commit, carried.hash, carried.entry.body.state_root, C.HEADER_SIZE
    with cap.view(commit) as then:
        # the store's fold, not the handle's scrubbed state: a (forged) redacted revert still
        # applies (13.1), and only the payload is withheld from reads (7.7.1)
        then_ids = set(fold_store(then._store).live)
    if state_root_of(list(then_ids)) != sroot.hex():
        # checked before anything is written: the checkpoint and its records disagree
        raise CorruptError(f"checkpoint {to!r} does not match the records before it",
                           offset=where, check="checkpoint-state")
    now_ids = set(fold_store(cap._store).live)
    back = then_ids - now_ids - set(redacted(cap._store))  # 7.7.1: a redacted id stays gone
    if not back and now_ids <= then_ids:
        # already there (but for redactions): no revert. A rollback killed between its revert and
        # its checkpoint (two commits) left this state unsigned: with a key, the rerun signs it.
        if key is not None and _unsigned_rollback(cap, thash):
            check_can_sign(cap._store, rollback_label(to), key)
            cap.checkpoint(rollback_label(to), key=key)
        return None
    if key is not None:  # before the revert is written: a key that cannot sign leaves the file as it was
        check_can_sign(cap._store, rollback_label(to), key)
    drop, restore = sorted(now_ids - then_ids), sorted(back)
    with cap.commit() as tx:
        # 11: one record holds at most 16 MiB, about 490,000 ids: a larger rollback is several
        # reverts of one commit, each naming the checkpoint (7.7), drops first
        first, ids = None, drop + restore
        for i in range(0, len(ids), REVERT_IDS):
            part = ids[i : i + REVERT_IDS]
            nd = max(0, min(len(part), len(drop) - i))
            rid = tx._put_kind("revert", after=bytes.fromhex(cap.root), to=thash, drop=part[:nd], restore=part[nd:])
            first = first or rid
    if key is not None:  # its own commit, as the golden vectors (spec/vectors) were written
        cap.checkpoint(rollback_label(to), key=key)
    return first
