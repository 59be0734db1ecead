"""Entry points: create, open and fork a capsule (spec 2.5, 6.3, 8.3, 15)."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from time import time_ns
from typing import TYPE_CHECKING

from ..core import constants as C
from ..core.clock import Clock, default_clock, source_date_epoch
from ..core.errors import AlreadyExists, CapsuleError, CapsuleNotFound, DataError, UsageError
from ..format import canonical as canon
from ..format.checkpoint import Lineage
from ..format.crypto import FrameCipher
from ..format.file import ReadHandle, WriteHandle, fsync_dir, sweep_temporaries
from ..format.frames import FileHeader, Merkle, new_file_id
from ..format.keyslots import attach
from ..format.keyslots import settle as settle_keyslots
from ..format.records import _REGISTRY, encode_record
from ..format.scan import Snapshot
from ..format.store import Mode, load_stable
from ..questions._lifecycle import redacted
from ..state.fold import live_records
from ..state.stateroot import state_root_of
from .capsule import Capsule
from .encrypting import Keys, begin_file, like_parent, new_encryption
from .locking import open_writer

if TYPE_CHECKING:
    from ..format.keys import PrivateKey, PublicKey


_NO_KEYS = Keys()  # frozen: safe as a shared default
_KEYS: ContextVar[Keys] = ContextVar("capsule_keys", default=_NO_KEYS)  # noqa: B039


@contextlib.contextmanager
def unlocking(identity: PrivateKey | None = None, passphrase: bytes | str | None = None) -> Iterator[None]:
    """Within the block (this thread), encrypted capsules opened without a key of their own use
    these (spec 10): for calls that open files by path, such as :func:`pack` ``append=True``,
    :func:`compact`, exports and imports.

    >>> import capsule
    >>> key = capsule.generate_key()
    >>> capsule.create("sealed.capsule", recipients=[key.public_key]).close()
    >>> with capsule.unlocking(identity=key), capsule.open("sealed.capsule") as cap:
    ...     cap.encrypted
    True
    """
    token = _KEYS.set(Keys.of(identity, passphrase))
    try:
        yield
    finally:
        _KEYS.reset(token)


def default_keys() -> Keys:
    """The keys of the innermost :func:`unlocking` block of this thread (none outside one)."""
    return _KEYS.get()


def create(path: str | Path, *, clock: Clock | None = None, file_id: bytes | None = None,
           exist_ok: bool = False, lineage: bytes | None = None, timeout: float | None = None,
           recipients: Sequence[PublicKey | PrivateKey] = (), passphrase: bytes | str | None = None,
           identity: PrivateKey | None = None, scrypt_log_n: int | None = None,
           _encryption: tuple[FrameCipher, bytes] | None = None, _mode: int | None = None) -> Capsule:
    """Create a new, empty capsule and open it for writing.

    With ``SOURCE_DATE_EPOCH`` set (and no explicit ``file_id``/``clock``) the
    file id and every timestamp are fixed, so the same operations give
    byte-identical files wherever they run (2.5). With ``exist_ok`` an existing
    capsule is opened for writing instead (``timeout`` as for :func:`open`).

    >>> import capsule
    >>> with capsule.create("new.capsule") as cap:
    ...     cap.mode, len(cap), cap.commit_count
    ('a', 0, 1)
    >>> capsule.create("new.capsule", exist_ok=True).close()  # a rerun opens what is there

    Encryption at rest (spec 10): ``recipients`` (capsule public keys, as
    :func:`load_public_key` reads them) and/or ``passphrase`` each get a key slot; the
    contents are sealed and only the holder of a recipient's private key
    (``open(..., identity=)``) or the passphrase reads them. ``scrypt_log_n`` sets the
    passphrase's work factor (default 18). In reproducible mode the file key derives
    from ``identity`` or the passphrase (10.5).
    """
    p = Path(path)
    keys = Keys.of(identity, passphrase) if identity is not None or passphrase is not None else _KEYS.get()
    if exist_ok and p.exists():
        mode = _remove_abandoned(p)  # a killed create's empty file: made again (an agent restarting)
        if mode is None:
            return _open_made(p, clock, timeout, keys)
        _mode = mode if _mode is None else _mode
    clock = clock or default_clock()
    if file_id is None:
        file_id = new_file_id(source_date_epoch())
    if len(file_id) != 16:
        raise UsageError("file_id must be 16 bytes")
    enc = _encryption
    if enc is None and (recipients or passphrase is not None):  # only what this call names encrypts
        enc = new_encryption(file_id, recipients, Keys.of(identity or _KEYS.get().identity, passphrase),
                             scrypt_log_n)
    if not p.parent.exists():
        raise UsageError(f"{p.parent}: no such directory")
    if p.is_dir():
        raise UsageError(f"{p}: is a directory, not a capsule")
    try:
        # _mode (a fork: its parent's permission bits): born private, given that mode before a byte is written
        h = WriteHandle(p, create=True, mode=0o644 if _mode is None else 0o600)
        if _mode is not None:
            os.fchmod(h.fd, _mode & 0o777)
    except FileExistsError:
        if exist_ok:  # another process created it since the check above: open what it made
            return _open_made(p, clock, timeout, keys)
        mode = _remove_abandoned(p)  # a create killed before its header: nothing in it, nobody holds it
        if mode is None:
            raise AlreadyExists(f"{p}: already exists") from None
        return create(p, clock=clock, file_id=file_id, recipients=recipients, identity=identity,
                      passphrase=passphrase, scrypt_log_n=scrypt_log_n, lineage=lineage, timeout=timeout,
                      _encryption=_encryption, _mode=mode if _mode is None else _mode)
    try:
        # 10.3: the file key's slots are the first frame (after a LINEAGE) of the first commit
        header, sealing = begin_file(h, file_id, C.FORMAT_MINOR, enc, keys, plain=FileHeader(file_id))
        extra = [(C.FT_LINEAGE, lineage)] if lineage is not None else []
        extra += sealing
        snap = Snapshot(header, C.HEADER_SIZE, None, header.chain_seed, Merkle(), 0)
        cap = Capsule(p, h, snap, "a", clock)
        cap._write_commit([], extra=extra)
        fsync_dir(p)
    except BaseException:
        h.close()
        p.unlink(missing_ok=True)
        raise
    return cap


def _remove_abandoned(p: Path, min_age: float = 2.0) -> int | None:
    """Remove what a create killed between making the file and writing its header leaves: an
    empty regular file of this user's that nobody holds locked and nobody touched for ``min_age``
    seconds (a live creator holds its lock from the first moment, or is within those seconds of
    making it). Its permission bits are returned for the new file; None: it is not such a file.
    The lock is held while the name is checked to be that file and removed, so two processes
    cannot both take it (each sees the other's lock) nor remove a file made since."""
    import fcntl

    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_size or st.st_uid != os.geteuid()
                or time.time() - st.st_mtime < min_age):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            now = os.stat(p, follow_symlinks=False)
        except OSError:
            return None
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or now.st_size:
            return None
        p.unlink()
        return stat.S_IMODE(st.st_mode)
    except OSError:
        return None
    finally:
        os.close(fd)


def _open_made(p: Path, clock: Clock | None, timeout: float | None, keys: Keys) -> Capsule:
    """``create(exist_ok=True)`` on a file that exists: open it for writing. Another process
    may have just created it and not yet written its header and first commit (it holds the
    writer lock meanwhile): a file without a whole header is waited for, up to ``timeout``
    (default 2 s), before it is called what it then is."""
    wait = 2.0 if timeout is None else timeout
    deadline = time.monotonic() + wait
    whole = False  # a whole header was there when an open failed on it: once more, then it is the file's
    while True:
        try:
            return open(p, "a", clock=clock, timeout=wait, identity=keys.identity, passphrase=keys.passphrase)
        except CapsuleNotFound:  # another create(exist_ok) removed a killed create's empty file and is
            if time.monotonic() >= deadline:  # making it again (its keys may take a second to derive)
                raise
            time.sleep(0.01)
        except DataError as e:
            if getattr(e, "check", None) not in ("header-magic", "header-length") or time.monotonic() >= deadline:
                raise
            try:
                if p.stat().st_size >= C.HEADER_SIZE:
                    # the winner may have written its header between that read and this stat (CI saw
                    # "not a capsule (no header)" under load): read it once more before saying so
                    if whole:
                        raise
                    whole = True
                    continue
            except FileNotFoundError:
                raise e from None
            time.sleep(0.005)


def open(path: str | Path, mode: Mode = "r", *, clock: Clock | None = None, at: str | int | None = None,  # noqa: A001
         timeout: float | None = None, identity: PrivateKey | None = None,
         passphrase: bytes | str | None = None) -> Capsule:
    """Open a capsule: ``"r"`` a lock-free read-only snapshot, ``"a"`` the single writer.

    ``at`` opens a read-only view as of an earlier commit (see :meth:`Capsule.resolve`).
    ``timeout`` (writers): wait up to that many seconds for another writer to
    close, polling like SQLite's busy timeout, before raising :class:`Locked`.
    A writer that finds a torn tail truncates it durably and records a
    RECOVERY frame with its first commit (8.3). Damage before the last commit
    raises :class:`CorruptError` and is never repaired; an error about the bytes
    names the file. An encrypted capsule (spec 10) needs ``identity`` (the private
    key of a recipient) or ``passphrase``: without one, :class:`KeyRequired`; with one
    that opens no key slot, :class:`WrongKey` (both usage errors).

    >>> import capsule
    >>> capsule.create("w.capsule").close()
    >>> with capsule.open("w.capsule", "a", timeout=5.0) as cap:
    ...     with cap.commit() as tx:
    ...         rid = tx.remember("written by the one writer")
    >>> with capsule.open("w.capsule") as reader:  # lock-free, read-only
    ...     reader.get(rid).text, reader.mode
    ('written by the one writer', 'r')
    """
    if mode not in ("r", "a"):
        raise UsageError(f"mode must be 'r' or 'a', not {mode!r}")
    if timeout is not None and mode != "a":
        raise UsageError("timeout= is for writers (mode 'a'): readers take no lock")
    if at is not None:
        if mode != "r":
            raise UsageError("a view (at=...) is read-only; open it with mode 'r'")
        with open(path, "r", clock=clock, identity=identity, passphrase=passphrase) as cap:
            return cap.view(at)
    p = Path(path)
    if p.exists() and not p.is_file() and not p.is_dir():
        raise UsageError(f"{p}: not a regular file")
    # A reader never writes a timestamp, so it never needs SOURCE_DATE_EPOCH.
    clock = clock or (default_clock() if mode == "a" else time_ns)
    keys = Keys.of(identity, passphrase) if identity is not None or passphrase is not None else _KEYS.get()
    h: ReadHandle = open_writer(p, timeout) if mode == "a" else ReadHandle(p)
    try:
        attach(h, identity=keys.identity, passphrase=keys.passphrase, where=p)  # 10: the file key, if encrypted
        h.keys = keys
        # 9.2: a writer does not hash the index tables here; it hashes each table it
        # merges before rewriting it, so it never builds on a damaged one (8.2).
        snap = load_stable(h, strict=mode == "a")
        settle_keyslots(h, snap)  # 10.3: who reads it, as the last real commit says
        cap = Capsule(p, h, snap, mode, clock)
    except DataError as e:
        h.close()
        e.args = (f"{p}: {e}",)  # which file is not a capsule (offset, seq and check stay as they were)
        raise
    except BaseException:
        h.close()
        raise
    return cap


def fork(path: str | Path, out: str | Path, *, at: str | int | None = None, clock: Clock | None = None,
         identity: PrivateKey | None = None, passphrase: bytes | str | None = None) -> Capsule:
    """Write a new capsule holding the live state of ``path`` (at ``at``, default
    now), whose first commit starts with a LINEAGE frame naming the parent and
    the fork point (spec 15). Returns the new capsule open for writing.

    >>> import capsule
    >>> key = capsule.generate_key()
    >>> with capsule.create("parent.capsule") as cap:
    ...     with cap.commit() as tx:
    ...         _ = tx.remember("kept in the fork")
    ...     _ = cap.checkpoint("day-1", key=key)
    ...     with cap.commit() as tx:
    ...         _ = tx.remember("after the fork point")
    >>> with capsule.fork("parent.capsule", "child.capsule", at="day-1") as child:
    ...     [m.text for m in child.records(kind="memory")]
    ['kept in the fork']
    >>> capsule.verify("child.capsule", parent="parent.capsule").ok
    True
    >>> capsule.verify("child.capsule", trust=key.public_key).ok  # day-1's signature is carried (15.2)
    True
    """
    with open(path, "r", identity=identity, passphrase=passphrase) as src:
        if src._snap.commit is None:
            raise UsageError(f"{path}: has no commit to fork from")
        dest = Path(out)
        if dest.exists() or dest.is_symlink():
            raise AlreadyExists(f"{dest}: already exists")
        # Written whole under a temporary name, then linked to ``out`` (never replacing): a fork
        # killed midway left a file at ``out`` holding its LINEAGE and none of the parent's
        # state, which opened, verified and ran the parent's done effects again (15).
        # a killed fork's temporary file (and lock) of any name: unlocked and a minute old, it is
        # a dead writer's (a live one holds its flock), and it may be megabytes of records
        sweep_temporaries(dest.parent, ".*.fork-" + "[0-9a-f]" * 12 + "*")
        tmp = dest.parent / f".{dest.name}.fork-{secrets.token_hex(6)}"
        try:
            with src.view(at if at is not None else src._snap.commit) as view:
                _fork(src, view, path, tmp, clock).close()
            _link_new(tmp, dest)
            fsync_dir(dest)
        except CapsuleError as e:  # about the temporary file: name the one asked for
            if str(tmp) not in str(e):
                raise
            raise type(e)(str(e).replace(str(tmp), str(dest))) from None
        except OSError as e:
            if e.filename is None or str(tmp) not in str(e.filename):
                raise
            raise UsageError(f"{dest}: {e.strerror or e}") from None
        finally:
            tmp.unlink(missing_ok=True)
    return open(dest, "a", clock=clock, identity=identity, passphrase=passphrase)


def _link_new(tmp: Path, dest: Path) -> None:
    """Give ``tmp`` the name ``dest``, never replacing a file there: a hard link, or, where the
    file system has none (vfat, exFAT, some network and FUSE mounts), a rename after a check."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise AlreadyExists(f"{dest}: already exists") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            raise
        # the name reserved first (O_EXCL: another fork or file there wins), then renamed over
        try:
            os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        except FileExistsError:
            raise AlreadyExists(f"{dest}: already exists") from None
        try:
            os.rename(tmp, dest)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise


def _fork(src: Capsule, view: Capsule, path: str | Path, out: str | Path, clock: Clock | None) -> Capsule:
    from ..format.batch import RecordBatch
    from ..format.kindwalk import walk
    from .carry import carried_for, carry_snapshots, copy_keysets  # forks only: not at start-up

    c = view._snap.commit
    if c is None:
        raise UsageError(f"{path}: has no commit to fork from")
    every = list(view._store.records())  # the stored records: a redacted one is dead, never copied (7.7.1)
    live_then = {r.id for r in live_records(every)}
    red = redacted(view._store)  # 7.7.1: redacted since, though live then: never copied
    live = {x for x in live_then if bytes.fromhex(x) not in red} if red else live_then
    # 15: the journal and the task queue survive a fork. Action and task records a rollback made
    # dead are copied too, in their commit order, and dropped again by a revert in the same commit,
    # so the fork's live state and root are the parent's, no effect can run twice, and the fork's
    # queue is the parent's at the fork point (a task finished after a rollback's checkpoint stays
    # finished: 7.9 folds dead task records too)
    recs = [r for r in every if r.id in live or r.kind in ("action", "task")]
    # 15: so do the parent's action records after the fork point (its effects happened too: a
    # fork at an earlier checkpoint must not run them again), after those, dead the same way
    held = {r.id for r in recs}
    recs += [r for _, _, r in walk(src._store, ["action"], start=c) if r.id not in held]
    journal = sorted(bytes.fromhex(r.id) for r in recs if r.id not in live)
    # 15.2: carry the newest signed checkpoint whose state is the fork's (the one forked at,
    # or one an earlier commit or a rollback left equal), held by the fork's commit 2
    # (commit 1 when there is nothing to copy: the empty state is the first commit's)
    root = bytes.fromhex(view.state_root if live == live_then else state_root_of([bytes.fromhex(x) for x in live]))
    same = [k for k in view.checkpoints() if k.body.state_root == root][-1:]
    carried = carried_for(view, [(k, 2 if recs else 1) for k in same])
    lin = Lineage(view._snap.header.file_id, c.root, c.seq, c.chain,
                  view._snap.checkpoint[1] if view._snap.checkpoint else None, tuple(carried))
    sde = source_date_epoch()
    # 2.5: in reproducible mode a fork gets its own file id, derived from its parent and fork point
    fid = new_file_id() if sde is None or clock is not None else new_file_id(sde, lin.parent + lin.root)
    # 10.3: the fork of an encrypted capsule is encrypted for the same recipients, under its own file key
    enc = like_parent(src._h, fid, src._h.keys) if src._h.crypt is not None else None
    # a fork holds the parent's records: a private parent gives a private fork
    mode = stat.S_IMODE(os.stat(path).st_mode) | stat.S_IRUSR | stat.S_IWUSR
    new = create(out, clock=clock, file_id=fid, lineage=canon.pack(lin.to_value()), _encryption=enc, _mode=mode)
    try:
        items = []
        for rec in recs:
            rid, data = encode_record(rec)
            items.append((rid, rec.kind, data))
        if journal:
            rev = _REGISTRY["revert"].build(time=new.clock(), after=bytes.fromhex(new.root), drop=journal)
            rid, data = encode_record(rev)
            items.append((rid, "revert", data))
        if items:
            batch, start = RecordBatch(items), new._snap.end
            new._write_commit(batch)
            # 16.8: the lexical catalog takes the records from here, not read back from the file
            new._search.searcher().lex.feed(batch, start, new._snap.end)
        if carried:
            # 15.2: the carried signatures, and the checkpoints the fork signs later, verify
            # under the parent's keys; a fork that carries nothing picks its own first keyset
            copy_keysets(view, new)
        carry_snapshots(src, new, recs, view=view, complete=True)  # 16.3, 16.8: the first search loads
    except BaseException:
        new.close()
        raise
    return new


__all__ = ["create", "default_keys", "fork", "open", "unlocking"]
