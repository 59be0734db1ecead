"""Compaction: a new file from a plan, then one rename (spec 15.1, 6.4).

Theory of operation. The source stays locked as its writer from the first read to the
rename, so nothing commits to it meanwhile (6.5). The plan (``plan.py``) is computed
first, entirely: the LINEAGE frame at seq 0 names what is kept and dropped and which
parent checkpoints stay valid, so it must be known before the first byte is written.
Then the parent is walked a second time and each copied commit becomes one commit of
the new file, with the parent's commit time and the kept records' stored bytes (no
record is decoded or re-encoded). No INDEX is written on the way; one fresh INDEX with
its tables and the journal snapshot ends the file, then the writer's usual snapshots
on close (16.3, 16.8), so no stale derived data is carried over.

The new file is written under a temporary name in the destination's folder and is
synced once, at the end: it is nobody's file until the rename, so a crash before the
rename leaves the source as it was (and a stray temporary file), and the rename is
atomic, so a reader sees the old file or the new one. A reader that had the old file
open keeps its inode and reads it to the end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..core import constants as C
from ..core.clock import source_date_epoch
from ..core.errors import AlreadyExists, CapsuleError, CorruptError, UsageError, WriterPoisoned
from ..format import canonical as canon
from ..format.batch import RecordBatch
from ..format.checkpoint import Lineage
from ..format.crypto import FrameCipher
from ..format.file import WriteHandle, fsync_dir, sweep_temporaries
from ..format.frames import Merkle, new_file_id
from ..format.keys import PrivateKey
from ..format.records import decode_record
from ..format.scan import Snapshot
from ..handle.capsule import Capsule
from ..handle.encrypting import Rekey, begin_file, like_parent
from ..handle.entry import open as open_capsule
from ..search.part import SNAPSHOT_ON_CLOSE
from .plan import _EMB_KEY, POLICIES, Plan, commits, make_plan

#: the label of the checkpoint ``key=`` signs over the compacted head
LABEL = "compact"



#: the random part of a temporary file's name (secrets.token_hex(6)): only such names are swept
_HEX12 = "[0-9a-f]" * 12

def _mode_of(parent: Path, fd: int, *, owner: bool = True) -> None:
    """Give the new file the parent's permission bits (never set-id or sticky bits) and, with
    ``owner`` (in place: the file keeps its name), its owner and group where this process may;
    a private capsule (0600) compacted or rekeyed stays private, never replaced by a
    world-readable one (the temporary file is born 0600, so none is readable meanwhile)."""
    try:
        st = os.stat(parent)
    except OSError:
        return
    os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o777)
    if owner:
        try:  # only root may give a file away ...
            os.fchown(fd, st.st_uid, st.st_gid)
        except OSError:
            with contextlib.suppress(OSError):  # ... a group of one's own is fine
                os.fchown(fd, -1, st.st_gid)


class _SyncAtEnd(WriteHandle):
    """The temporary file's writer: each commit's fsync is deferred to one at the end.

    Nothing reads the temporary file before the rename, so its commits need no
    durability one by one (10k commits must not cost 10k fsyncs); the rename comes
    only after :meth:`close` made every byte durable."""

    def sync(self) -> None:
        self._check()

    def durable(self) -> None:
        super().sync()

    def close(self) -> None:
        if self.fd >= 0 and not self.forked and self.poisoned is None:
            try:
                self.durable()
            except WriterPoisoned:
                super().close()
                raise
        super().close()


def _carry() -> tuple[Any, Any, Any]:
    """The carried-checkpoint seam (15.2): ``carried_for``, ``copy_keysets`` and
    ``carry_snapshots`` when built."""
    try:
        from ..handle.carry import carried_for, carry_snapshots, copy_keysets
    except ImportError:
        return None, None, None
    return carried_for, copy_keysets, carry_snapshots


def _vectors_worth_it(plan: Plan) -> bool:
    """16.3 on close, for the compacted file: a vector snapshot is written (the parent's graph
    when it holds exactly the kept entries, else one built here, whatever its size: built once
    now, not by every process that searches the compacted file); only then are the kept
    memories with an embedding decoded to check or build it."""
    return plan.embedded_kept >= SNAPSHOT_ON_CLOSE


def compact(path: str | Path, out: str | Path | None = None, keep: str = "history",
            key: PrivateKey | Sequence[PrivateKey] | None = None,
            *, timeout: float | None = None, progress: Callable[[int, int], None] | None = None,
            identity: PrivateKey | None = None, passphrase: bytes | str | None = None,
            rekey: Rekey | None = None) -> dict[str, Any]:
    """Compact ``path`` under a policy (spec 15.1) and return a report (counts, bytes, rate).

    ``keep``: ``"history"`` (every record but redacted payloads; old index tables and
    snapshots go), ``"checkpoints"`` (what the signed checkpoints' states and the live
    state need) or ``"live"`` (the live state only). Whatever the policy the action
    journal, the task events and the lifecycle events stay, byte for byte. ``out``
    writes a new file (refused if it exists); without it the file is replaced in place
    (temporary file, fsync, rename, fsync of the folder). ``key`` signs a checkpoint of
    the compacted head. ``timeout``: wait that long for another writer, as :func:`open`.
    An encrypted capsule (``identity`` or ``passphrase`` open it) compacts into one
    encrypted under a new file key for the same recipients (``rekey`` changes them, 10.3).

    >>> import capsule
    >>> with capsule.create("c.capsule") as cap:
    ...     with cap.commit() as tx:
    ...         rid = tx.remember("the printer is on floor 2")
    ...     with cap.commit() as tx:
    ...         _ = tx.forget(rid)
    >>> capsule.compact("c.capsule", "c2.capsule", keep="live")["dropped"]
    1
    >>> capsule.verify("c2.capsule", parent="c.capsule").ok
    True
    """
    if keep not in POLICIES:
        raise UsageError(f"unknown compaction policy {keep!r}: one of {', '.join(POLICIES)}")
    src_path = Path(path)
    # in place through a symlink: replace the file it names, not the link (which would leave
    # the real file uncompacted beside a new one that only the link reaches)
    dest = Path(out) if out is not None else Path(os.path.realpath(src_path))
    if out is not None and (dest.exists() or dest.is_symlink()):
        raise AlreadyExists(f"{dest}: already exists (-o names a new file, never replaced)")
    if not dest.parent.is_dir():
        raise UsageError(f"{dest.parent}: no such directory")
    with open_capsule(src_path, "a", timeout=timeout, identity=identity,
                      passphrase=passphrase) as src:  # the writer lock, held to the rename (6.5)
        return _compact(src, src_path, dest, out is None, keep, key, progress, rekey)


def compact_handle(cap: Capsule, out: str | Path | None = None, keep: str = "history",
                   key: PrivateKey | Sequence[PrivateKey] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """:meth:`Capsule.compact`: a writer handle is the source (its lock is the one held) and,
    compacted in place, is closed after (its file was replaced); a reader takes the lock."""
    if cap.mode != "a":
        return compact(cap.path, out, keep, key, progress=progress)
    h = cap._store.h
    if isinstance(h, WriteHandle):
        h.check_owner()  # 6.5: a fork child inherits the writer, not its role (in place, the parent's file)
    if keep not in POLICIES:
        raise UsageError(f"unknown compaction policy {keep!r}: one of {', '.join(POLICIES)}")
    dest = Path(out) if out is not None else Path(os.path.realpath(cap.path))  # as compact()
    if out is not None and (dest.exists() or dest.is_symlink()):
        raise AlreadyExists(f"{dest}: already exists (-o names a new file, never replaced)")
    # The handle's commit lock, held from the plan to the rename (and the close): another
    # thread's commit waits, then finds the handle closed, instead of landing in the old file
    # after the plan was made, where the rename would lose it (its effect to run again).
    if cap._tx_owner == threading.get_ident():
        raise UsageError("compact: a commit is open on this capsule in this thread; compact after it")
    with cap._cv:  # the Condition on cap._lock
        if out is None:
            # 7.8: an effect in flight in another thread has its intent committed and its result
            # not yet: the result would be lost with the old file, and the key left in doubt. (A
            # copy to -o is a copy as of now: the handle goes on and writes the result.)
            cap._actions.drain("compact")
        cap._check_open()
        cap._compacting = out is None
        try:
            rep = _compact(cap, cap.path, dest, out is None, keep, key, progress)
        finally:
            cap._compacting = False
        if out is None:
            cap.close()
    return rep


def _compact(src: Capsule, src_path: Path, dest: Path, in_place: bool, keep: str,
             key: PrivateKey | Sequence[PrivateKey] | None,
             progress: Callable[[int, int], None] | None, rekey: Rekey | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    snap = src._snap
    if snap.commit is None:
        raise UsageError(f"{src_path}: has no commit to compact")
    before = snap.commit.end
    torn = max(0, os.stat(src_path).st_size - before)
    if torn and in_place:
        # 8.2, 8.3: a writer that drops bytes after the last commit records them (RECOVERY); this
        # one would replace the file and leave no trace of them, nor of the damage they may be
        raise UsageError(f"{src_path}: {torn} bytes after its last commit (an interrupted write, or damage to "
                         "the newest commit: capsule verify says which); compacting in place would drop them "
                         "without the RECOVERY record a writer leaves: compact to a new file (-o NEW), which "
                         "keeps this one, or let any write record them first")
    plan = make_plan(src._h, snap.header, before, keep)
    carried_for, copy_keysets, carry_snapshots = _carry()
    carried = tuple(carried_for(src, plan.pairs)) if carried_for is not None and plan.pairs else ()
    lin = Lineage(snap.header.file_id, plan.last.root, plan.last.seq, snap.commit.chain, plan.checkpoint,
                  carried, keep, plan.kept, len(plan.ids) - plan.kept, plan.dropped_root())
    sde = source_date_epoch()
    # 2.5: reproducible mode derives the id from the parent, its last commit and the policy
    fid = new_file_id(sde, lin.parent + lin.root + keep.encode()) if sde is not None else new_file_id()
    # 10.3: an encrypted parent gives an encrypted file under a new file key (a removed recipient reads nothing)
    r = rekey or Rekey()
    enc = like_parent(src._h, fid, src._h.keys, add=r.add, remove=r.remove, new_passphrase=r.new_passphrase,
                      drop_passphrase=r.drop_passphrase)
    if in_place:
        # A compaction killed before its rename left its temporary file; only a holder of
        # this lock writes one in place, so any unlocked one is a dead compactor's.
        sweep_temporaries(dest.parent, f".{glob.escape(dest.name)}.compact-*", min_age=0)
        # so are a killed pull's copies of this file and its journal's temporary file (a pull onto it holds this lock; a live one
        # holds its own flock, which the sweep passes over): they hold what a purge removes (17.3)
        sweep_temporaries(dest.parent, f".{glob.escape(dest.name)}.pull-{_HEX12}", min_age=0)
        sweep_temporaries(dest.parent, f".{glob.escape(dest.name)}.append.tmp-{_HEX12}", min_age=0)
    else:  # -o: nobody's lock covers the new name; a dead writer's (untouched a while) goes
        sweep_temporaries(dest.parent, f".{glob.escape(dest.name)}.compact-*")
    tmp = dest.parent / f".{dest.name}.compact-{secrets.token_hex(6)}"
    try:
        _write(src, plan, lin, fid, tmp, key, (copy_keysets, carry_snapshots), progress, enc, in_place)
        if in_place:
            os.replace(tmp, dest)
        else:
            try:
                os.link(tmp, dest)  # never replaces: -o onto a path that appeared meanwhile still refuses
            except FileExistsError:
                raise AlreadyExists(f"{dest}: already exists (-o names a new file, never replaced)") from None
            tmp.unlink()
        fsync_dir(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    after = dest.stat().st_size
    secs = time.perf_counter() - t0
    n = len(plan.ids)
    # 15.2: signed states the new file does not carry (their labels go): under `live` the earlier
    # ones, and always those the parent itself carried (a carried signature names its own parent)
    kept_hashes = {c.hash for c in carried}
    why = [{"label": c.label, "why": plan.unkept.get(c.hash) or "its signatures are not a threshold of a keyset "
            "of the file's chain, or it is older than the newest 1,024 carried"}
           for c in src.checkpoints() if c.hash not in kept_hashes]
    why += [{"label": c.label, "why": "the parent carried it from its own parent, and a carried signature is "
             "not carried again"} for c in src.carried_checkpoints() if c.hash not in kept_hashes]
    return {"path": str(src_path), "out": str(dest), "policy": keep, "records": n, "kept": plan.kept,
            "dropped": n - plan.kept, "dropped_root": lin.dropped_root.hex() if lin.dropped_root else None,
            "commits": len(plan.groups()), "carried": len(carried),
            "not_carried": [w["label"] for w in why], "not_carried_why": why,
            "signed": key is not None, "torn_tail_bytes": torn,
            "bytes_before": before, "bytes_after": after, "seconds": round(secs, 3),
            "records_per_s": round(n / secs) if secs > 0 else None}


def _write(src: Capsule, plan: Plan, lin: Lineage, fid: bytes, tmp: Path,
           key: PrivateKey | Sequence[PrivateKey] | None,
           carry: tuple[Any, Any], progress: Callable[[int, int], None] | None,
           enc: tuple[FrameCipher, bytes] | None = None, in_place: bool = True) -> None:
    copy_keysets, carry_snapshots = carry
    mems: list[Any] | None = [] if carry_snapshots is not None and _vectors_worth_it(plan) else None
    now = [plan.times[0]]
    h = _SyncAtEnd(tmp, create=True, mode=0o600)  # nobody else may open it before it has the parent's mode
    try:
        _mode_of(src.path, h.fd, owner=in_place)  # -o: a new file is its maker's
        # 15.1: minor 3 (LINEAGE's compaction keys), or the parent's when higher: it ranks as the parent did (12.8)
        minor = max(3, src._snap.header.minor)
        header, sealing = begin_file(h, fid, minor, enc, src._h.keys)  # 10.3: KEYSLOT after the LINEAGE
        cap = Capsule(tmp, h, Snapshot(header, C.HEADER_SIZE, None, header.chain_seed, Merkle(), 0), "a",
                      lambda: now[0])
    except BaseException:
        h.close()
        raise
    total, done = len(plan.ids), 0
    groups, written = plan.groups(), 0  # 15.1 layout: (records, time) of each inherited commit
    held: list[tuple[bytes, str, bytes]] = []

    def flush() -> None:
        nonlocal held, written
        while written < len(groups) and len(held) >= groups[written][0]:
            n, now[0] = groups[written]  # 15.1: the parent's commit time
            items, held = held[:n], held[n:]
            extra = [(C.FT_LINEAGE, canon.pack(lin.to_value()))] if written == 0 else []
            if written == 0:
                extra += sealing
            batch, start = RecordBatch(items), cap._snap.end
            cap._write_commit(batch, extra=extra, defer_index=True)
            if len(batch):  # 16.8: the lexical catalog takes the records from here, not from the file
                cap._search.searcher().lex.feed(batch, start, cap._snap.end)
            written += 1

    try:
        snap = src._snap
        assert snap.commit is not None
        for c in commits(src._h, snap.header, snap.commit.end):
            if c.ordinal > plan.copied:
                break
            keep = plan.kept_of(c.ordinal).tolist()
            items = [r for r, k in zip(c.records, keep, strict=True) if k]
            if mems is not None:
                mems += [decode_record(canon.decode(d), rid) for rid, kind, d in items
                         if kind == "memory" and _EMB_KEY in d]
            held += items
            flush()
            done += len(c.records)
            if progress is not None:
                progress(done, total)
        assert written == len(groups) and not held, "the plan's layout holds every kept record"
        now[0] = plan.last.time
        if copy_keysets is not None:
            # 15.2: the parent's keyset chain (none: nothing is written), so carried checkpoints
            # verify and the file goes on under its parent's keys even when it carries nothing;
            # a chain that does not check (14.6) is refused before a frame is written, and
            # only matters when carried signatures need it
            try:
                copy_keysets(src, cap)
            except CorruptError:
                if lin.carried:
                    raise
        cap._write_commit([], force_index=True)  # one fresh INDEX, its tables and the journal snapshot
        if mems is not None:
            carry_snapshots(src, cap, mems, complete=True)  # 16.3, 16.8: the parent's graph when it fits, else built
        if key is not None:
            cap.checkpoint(LABEL, key=key)
    except BaseException:
        WriteHandle.close(h)  # no snapshots, no fsync: the temporary file is removed
        raise
    close_written(cap)


def close_written(cap: Capsule) -> None:
    """Close a file a rewrite wrote (its snapshots on close, 16.3 and 16.8, then the one fsync);
    a failure there fails the rewrite."""
    cap.close()
    if cap.close_error is not None:
        raise cap.close_error if isinstance(cap.close_error, CapsuleError | OSError) else CapsuleError(
            str(cap.close_error))


__all__ = ["LABEL", "compact", "compact_handle"]
