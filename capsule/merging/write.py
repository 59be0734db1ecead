"""``capsule.merge``: two parents into a new file, then one link (spec 20.7).

Theory of operation. The plan (``plan.py``) is made first, entirely: the LINEAGE frame at
seq 0 names both parents, the ancestor and how many records are inherited. The new
file is then written like a compacted one, through compaction's writer (a ``Capsule``
over a temporary file whose commits are synced once, at the end): the LINEAGE and the
first inherited commit, every inherited commit with its parent commit's time and the
records' stored bytes (nothing is decoded or re-encoded), the merge's own records
(20.6), one fresh INDEX with its tables and journal snapshot, the writer's snapshots on
close and, with ``key``, a checkpoint labelled ``merge``. Only then is the temporary
file linked to the output name (``os.link`` never replaces a file; ``force`` renames
over it instead) and the folder synced. So a crash at any point leaves no output, or
a complete one (and perhaps a stray ``.NAME.merge-RANDOM``).

The parents are read as lock-free readers and never written; the snapshot each was
opened at is what is merged.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compaction.rewrite import _SyncAtEnd, close_written
from ..core import constants as C
from ..core.clock import iso, source_date_epoch
from ..core.errors import AlreadyExists, UsageError
from ..format import canonical as canon
from ..format.batch import RecordBatch
from ..format.crypto import FrameCipher, Keys
from ..format.file import WriteHandle, fsync_dir, sweep_temporaries
from ..format.frames import Merkle
from ..format.keys import PrivateKey
from ..format.records import decode_record
from ..format.scan import Snapshot
from ..handle.capsule import Capsule
from ..handle.encrypting import begin_file, new_encryption
from ..search.part import SNAPSHOT_ON_CLOSE
from .conflicts import Conflict
from .plan import MergePlan, make_plan
from .sides import Side, read_side

#: the label of the checkpoint ``key=`` signs over the merged head
LABEL = "merge"
_EMB_KEY = b"\xa9embedding"  # a memory's `embedding` key as canonical msgpack spells it (7.1)


@dataclass(frozen=True)
class MergeReport:
    """What :func:`merge` did (or, with ``dry_run``, would do). Sides are named as the caller
    named them: ``a`` the first argument, ``b`` the second."""

    a: str
    b: str
    out: str
    dry_run: bool
    relation: str  # "copies", "fork" or "siblings" (20.2)
    ancestor: dict[str, Any]
    file_id: str
    records: int  # inherited records written
    only_a: int
    only_b: int
    shared: int
    dropped: int  # redacted records not copied (7.7.1)
    commits: int  # inherited commits
    conflicts: tuple[Conflict, ...] = ()
    resolutions: int = 0  # records the merge wrote itself (20.6)
    signed: bool = False
    bytes: int | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "out": self.out, "dry_run": self.dry_run, "relation": self.relation,
                "ancestor": self.ancestor, "file_id": self.file_id, "records": self.records,
                "only_a": self.only_a, "only_b": self.only_b, "shared": self.shared, "dropped": self.dropped,
                "commits": self.commits, "conflicts": [c.to_dict() for c in self.conflicts],
                "resolutions": self.resolutions, "signed": self.signed, "bytes": self.bytes,
                "seconds": self.seconds}


def _check_paths(a: Path, b: Path, out: Path, force: bool) -> None:
    for p in (a, b):
        if p.is_dir():
            raise UsageError(f"{p}: is a directory, not a capsule")
        if not p.is_file():
            raise UsageError(f"{p}: no such capsule file")
    if a.resolve() == b.resolve() or os.path.samefile(a, b):
        raise UsageError(f"{a} and {b} are the same file: nothing to merge")
    if out.exists() or out.is_symlink():
        if any(out.exists() and os.path.samefile(out, p) for p in (a, b)):
            raise UsageError(f"{out} is one of the parents: a merge writes a new file and never overwrites a parent")
        if not force:
            raise AlreadyExists(f"{out}: already exists (merge -o writes a new file; --force replaces it)")
        if not out.is_file():
            raise UsageError(f"{out}: not a regular file")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent}: no such directory")


def merge(a_path: str | Path, b_path: str | Path, out_path: str | Path, *,
          key: PrivateKey | Sequence[PrivateKey] | None = None, dry_run: bool = False,
          force: bool = False) -> MergeReport:
    """Merge two capsules with a common ancestor into a new file ``out_path`` (spec 20).

    The parents are copies of one capsule that diverged (one file id, a common commit
    prefix), a fork and its parent, or two forks of one parent at one commit. Records are
    united by content id; the new file's LINEAGE names both parents' last commits and the
    ancestor, and ``capsule.verify_merge(out, a, b)`` proves it. What both changed
    differently (identity, a constraint, a memory's successor, a task, an action key) is
    settled by 20.5 and reported in ``conflicts``. ``merge(a, b)`` and ``merge(b, a)``
    write the same bytes. ``dry_run`` writes nothing; ``key`` signs a checkpoint
    labelled ``merge``; ``force`` replaces an existing ``out_path`` (never a parent).

    >>> import capsule
    >>> with capsule.create("m.capsule") as cap:
    ...     with cap.commit() as tx:
    ...         _ = tx.remember("shared")
    >>> capsule.fork("m.capsule", "m2.capsule").close()
    >>> with capsule.open("m2.capsule", "a") as cap:
    ...     with cap.commit() as tx:
    ...         _ = tx.remember("learned on the fork")
    >>> rep = capsule.merge("m.capsule", "m2.capsule", "m3.capsule")
    >>> rep.relation, rep.conflicts
    ('fork', ())
    """
    t0 = time.perf_counter()
    a, b, out = Path(a_path), Path(b_path), Path(out_path)
    _check_paths(a, b, out, force)
    plan = make_plan(read_side(a), read_side(b))
    fid = plan.file_id(source_date_epoch())
    conflicts = tuple(plan.conflicts)
    size = None
    if not dry_run:
        ids = _publish(plan, fid, out, key, force)
        by: dict[int, list[str]] = {}
        for r, rid in zip(plan.resolutions, ids, strict=True):
            by.setdefault(r.conflict, []).append(rid.hex())
        conflicts = tuple(c if i not in by else Conflict(c.kind, c.subject, c.a, c.b, c.resolution, c.winner,
                                                         tuple(by[i])) for i, c in enumerate(conflicts))
        size = out.stat().st_size
    anc = plan.ancestor.to_dict()
    del anc["checkpoint"]
    return MergeReport(str(a), str(b), str(out), dry_run, plan.relation, anc, fid.hex(), plan.kept,
                       plan.counts["only_a"], plan.counts["only_b"], plan.counts["shared"], len(plan.dropped),
                       len(plan.groups), conflicts, len(plan.resolutions), key is not None and not dry_run, size,
                       round(time.perf_counter() - t0, 3), {"time": iso(plan.time)})


def _publish(plan: MergePlan, fid: bytes, out: Path, key: PrivateKey | Sequence[PrivateKey] | None,
             force: bool) -> list[bytes]:
    # a merge killed before its link left its temporary file (and lock file): a dead one goes
    sweep_temporaries(out.parent, f".{glob.escape(out.name)}.merge-*")
    tmp = out.parent / f".{out.name}.merge-{secrets.token_hex(6)}"
    try:
        ids = _write(plan, fid, tmp, key)
        if force:
            os.replace(tmp, out)
        else:
            try:
                os.link(tmp, out)  # never replaces: an output that appeared meanwhile still refuses
            except FileExistsError:
                raise AlreadyExists(f"{out}: already exists (merge -o writes a new file)") from None
            tmp.unlink()
        fsync_dir(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ids


def sealed_like(p1: Side, p2: Side, fid: bytes) -> tuple[FrameCipher, bytes] | None:
    """10.3, 20.7: when a parent is encrypted, the merged file is too, for the readers *both*
    encrypted parents admit (the recipients they share; the passphrase when each has a slot
    for it): a key removed from one parent must not read its later records in a merge. The
    file key is new (random, so only reproducible mode, 10.5, gives byte-identical merges)."""
    slots = [s.keyslots for s in (p1, p2) if s.keyslots is not None]
    if not slots:
        return None
    from ..format.keys import PublicKey

    recipients = sorted(set.intersection(*(set(ks.recipients) for ks in slots)))
    keys = next((s.keys for s in (p1, p2) if s.keys is not None), None) or Keys()
    passphrase = keys.passphrase if all(ks.has_passphrase for ks in slots) else None
    if all(ks.has_passphrase for ks in slots) and passphrase is None:
        raise UsageError("both parents open with a passphrase: give it (--passphrase-env VAR) so the merged "
                         "file keeps it")
    if not recipients and passphrase is None:
        raise UsageError("no recipient (and no passphrase) opens both parents: the merged file would have no "
                         "reader; rekey the parents to a common recipient first")
    return new_encryption(fid, [PublicKey(r) for r in recipients], Keys(keys.identity, passphrase))


def _write(plan: MergePlan, fid: bytes, tmp: Path, key: PrivateKey | Sequence[PrivateKey] | None) -> list[bytes]:
    lin = canon.pack(plan.lineage().to_value())
    now = [plan.groups[0].time if plan.groups else plan.time]
    enc = sealed_like(plan.first, plan.second, fid)
    h = _SyncAtEnd(tmp, create=True, mode=0o600)
    try:
        # the mode both parents allow (a private parent gives a private merge), set before a byte is written
        with contextlib.suppress(OSError):
            os.fchmod(h.fd, (stat.S_IMODE(os.stat(plan.first.path).st_mode) & stat.S_IMODE(
                os.stat(plan.second.path).st_mode) | stat.S_IRUSR | stat.S_IWUSR) & 0o777)  # no set-id bits
        # 10.3: a merge of an encrypted parent is encrypted for the readers both parents admit
        header, lin_extra = begin_file(h, fid, plan.minor(), enc)
        cap = Capsule(tmp, h, Snapshot(header, C.HEADER_SIZE, None, header.chain_seed, Merkle(), 0), "a",
                      lambda: now[0])
    except BaseException:
        h.close()
        raise
    mems: list[Any] = []
    ids: list[bytes] = []
    try:
        groups = plan.groups or []
        for i, g in enumerate(groups):
            now[0] = g.time
            batch, start = RecordBatch(g.records), cap._snap.end
            cap._write_commit(batch, extra=[(C.FT_LINEAGE, lin), *lin_extra] if i == 0 else [], defer_index=True)
            cap._search.searcher().lex.feed(batch, start, cap._snap.end)  # 16.8, as compaction does
            mems += [decode_record(canon.decode(d), rid) for rid, kind, d in g.records
                     if kind == "memory" and _EMB_KEY in d]
        now[0] = plan.time
        if not groups:
            cap._write_commit([], extra=[(C.FT_LINEAGE, lin), *lin_extra], defer_index=True)
        if plan.resolutions:
            assert cap._snap.commit is not None
            items = plan.resolution_items(cap._snap.commit.root)  # 7.7 `after`: the commit before
            ids = [rid for rid, _, _ in items]
            batch, start = RecordBatch(items), cap._snap.end
            cap._write_commit(batch, defer_index=True)
            cap._search.searcher().lex.feed(batch, start, cap._snap.end)
        cap._write_commit([], force_index=True)  # one fresh INDEX, its tables and the journal snapshot
        if len(mems) >= SNAPSHOT_ON_CLOSE:
            from ..handle.carry import carry_snapshots

            # 16.3: built here once, not by every reader; never taken over from a parent, whose
            # newest graph depends on what it wrote after the commit merged (the file is the plan's alone)
            carry_snapshots(cap, cap, mems)
        if key is not None:
            cap.checkpoint(LABEL, key=key)
    except BaseException:
        WriteHandle.close(h)  # no snapshots, no fsync: the temporary file is removed
        raise
    close_written(cap)  # the writer's snapshots on close (16.3, 16.8), then the one fsync
    return ids


__all__ = ["LABEL", "MergeReport", "merge"]
