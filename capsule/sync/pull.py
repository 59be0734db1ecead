"""``pull``: fetch a remote capsule into a new file or onto a local prefix (spec 19.7).

Nothing unverified ever enters the destination. A new file is downloaded under a
temporary name beside it, checked (every segment's SHA-256, then a full
``verify``, with the trust anchor when given) and linked into place, never over
an existing file. Onto an existing file, the remote must extend it (its chain value
at the local last commit's end); only the tail is downloaded, into a temporary file
of its own, and checked from the local last commit on (:mod:`.tail`: O(tail), the
local bytes are not read again); a tail holding what only the whole file can judge
(a checkpoint, a journal snapshot, ...) is checked with the local committed bytes as
one file in a temporary copy instead. Only then, under
the local writer's lock, is the tail appended commit by commit as a writer would
(6.4: the frames before an INDEX, then the INDEX to the COMMIT, one fsync each), so
an interrupted pull leaves the last commit intact and a torn tail that the next
pull, finding it equal to the bytes it is about to write, completes (19.7).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import constants as C
from ..core.errors import CapsuleError, CorruptError, UsageError
from ..format.crypto import WrongKey
from ..format.file import ReadHandle, WriteHandle, fsync_dir, sweep_temporaries
from ..format.pending import journal_path, pwrite_all, remove_journal, write_journal
from ..format.scan import Reader, Snapshot, Source
from ..handle.entry import default_keys
from ..handle.locking import open_writer
from ..verifier.check import verify
from ._errors import Diverged, RemoteCorrupt, RemoteNotFound, SyncError
from .head import read_head, remote_has
from .manifest import Manifest
from .prefix import Head, extends, load_head
from .push import diverged
from .remote import Remote
from .tail import NeedsWhole, Spliced, check_tail

Progress = Callable[[str, int, int], None]


class RemoteUntrusted(SyncError):
    """With a trust anchor: the remote's new records are not covered by an anchored signature."""


@dataclass(frozen=True)
class PullResult:
    """What a pull did. ``bytes`` counts every capsule byte downloaded."""

    url: str
    path: str
    status: str  # "created", "pulled", "up-to-date" or "ahead" (the local file is newer: push it)
    generation: int
    bytes: int
    commits: int
    seq: int
    root: str
    records: int
    signed_prefix: dict[str, Any] | None = None
    skipped: list[str] = field(default_factory=list)
    #: what was checked before writing (19.7): "file" (the whole result), "tail" (the new
    #: bytes from the local last commit on), None when nothing was written
    checked: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "path": self.path, "status": self.status, "generation": self.generation,
                "bytes": self.bytes, "commits": self.commits, "seq": self.seq, "root": self.root,
                "records": self.records, "signed_prefix": self.signed_prefix, "skipped_manifests": self.skipped,
                "checked": self.checked}


def pull(url: str, path: str | Path, *, trust: Any = None, storage_options: dict[str, Any] | None = None,
         progress: Progress | None = None, timeout: float | None = None) -> PullResult:
    """Pull the remote capsule at ``url`` into ``path`` (a new file, or one the remote extends).

    ``trust`` (a public key, a keyset or a keyset hash, as :func:`capsule.verify` takes)
    refuses a remote whose new records are not covered by a checkpoint signed by
    anchored keys. ``timeout``: seconds to wait for the local writer's lock.

    >>> import capsule.sync
    >>> _ = capsule.sync.push("example.capsule", "memory://doctest/pulled")
    >>> capsule.sync.pull("memory://doctest/pulled", "copy.capsule").status
    'created'
    """
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():  # named before anything is read, not as the hidden temporary name
        raise UsageError(f"{p}: no such folder {parent}")
    remote = Remote(url, storage_options)
    rh = read_head(remote)
    m = rh.manifest
    if m is None:
        if rh.skipped:  # manifests there, none readable: damage, not an empty URL
            raise RemoteCorrupt(f"{remote.shown}: no manifest there can be read: {rh.skipped[0]}"
                                + (f" (and {len(rh.skipped) - 1} more)" if len(rh.skipped) > 1 else ""),
                                check="remote-manifest")
        raise RemoteNotFound(f"{remote.shown}: no capsule was pushed there (no manifest)")
    # a pull killed (kill -9) left its temporary file, up to the capsule's size: one nobody holds
    # (each pull flocks its own) and nobody touched for a minute is removed, as merge does (20.7)
    hex12 = "[0-9a-f]" * 12  # secrets.token_hex(6): a file of another name is none of ours
    for pattern in (f".{glob.escape(p.name)}.pull-{hex12}", f".{glob.escape(p.name)}.pull-{hex12}.lock"):
        sweep_temporaries(p.parent if str(p.parent) else Path("."), pattern)  # a lock file left alone too
    j = journal_path(p)  # and the journal a pull killed while writing it began (19.7)
    sweep_temporaries(j.parent, f"{glob.escape(j.name)}.tmp-{hex12}")
    try:
        if not (p.exists() or p.is_symlink()):
            res = _pull_new(remote, m, p, trust, progress)
        else:
            res = _pull_onto(remote, m, p, trust, progress, timeout)
    except CapsuleError as e:  # name the file the user gave, not the hidden temporary checked in its stead
        temp = re.compile("(?:" + re.escape(str(p.parent / f".{p.name}.pull-")) + "|" + re.escape(f".{p.name}.pull-")
                          + ")[0-9a-f]{12}")
        e.args = tuple(temp.sub(lambda _m: str(p), a) if isinstance(a, str) else a for a in e.args)
        if isinstance(getattr(e, "message", None), str):
            e.message = temp.sub(lambda _m: str(p), e.message)  # type: ignore[attr-defined]
        raise
    status, gen, got, commits, seq, root, records, signed, checked = res
    return PullResult(remote.shown, str(p), status, gen, got, commits, seq, root, records, signed,
                      skipped=rh.skipped, checked=checked)


def _hold(path: Path) -> int:
    """A descriptor holding ``path``'s flock while a pull lives: sweep_temporaries passes over it."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a name of our own, just made: nobody else holds it
    return fd


def _pull_new(remote: Remote, m: Manifest, p: Path, trust: Any,
              progress: Progress | None) -> tuple[Any, ...]:
    tmp = p.parent / f".{p.name}.pull-{secrets.token_hex(6)}"
    held: list[int] = []
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        held.append(_hold(tmp))
        try:
            got = _download(remote, m, 0, fd, 0, progress)
            os.fsync(fd)
        finally:
            os.close(fd)
        rep = _check(remote, m, tmp, trust, 0, 0, progress)
        try:
            os.link(tmp, p)  # never replaces a file that appeared meanwhile
        except FileExistsError:
            raise SyncError(f"{p}: appeared while it was being pulled; pull again to extend it") from None
        fsync_dir(p)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        for h in held:
            os.close(h)
    return "created", m.generation, got, m.commits, m.seq, m.root, rep.records, rep.signed_prefix, "file"


def _pull_onto(remote: Remote, m: Manifest, p: Path, trust: Any, progress: Progress | None,
               timeout: float | None) -> tuple[Any, ...]:
    # 19.7: a journal's bytes were checked by the pull that wrote it, maybe without the key (a
    # key-less pull checks structure only): a pull given the key checks the tail itself, so it
    # drops such a journal (under the lock) rather than append what it has not authenticated
    keys = default_keys()
    keyed = (keys.identity is not None or keys.passphrase is not None) and _encrypted(p)  # a plain copy: no key
    wh = open_writer(p, timeout, finish=not keyed)
    try:
        try:
            head, snap = load_head(wh, p)
        except WrongKey as e:  # 10.3: a recipient added since has its slot in the remote's tail only
            raise WrongKey(f"{e} (if the key was added as a recipient after the copy was made, its slot is in "
                           "the remote's new bytes only: pull once without it, then use it, or pull into a "
                           "new file with it)") from None
        # the key opened the copy: it checks the tail itself, and sets the journal aside once that
        # passed (below): a download that fails first leaves it, so a later pull can still finish it
        stale = keyed and journal_path(p).exists()
        if head.file_id != m.file_id:
            raise Diverged(f"{remote.shown} holds another capsule (file id {m.file_id}, {p} is {head.file_id}); "
                           f"pull it into a new file", local=head.summary(), remote=m.summary(), common=None)
        chain = bytes.fromhex(m.chain)
        done = (m.generation, wh.finished, head.commits, head.seq, head.root, head.records, None, None)
        if m.size == head.size and chain == head.chain:  # pulled, when what was left was a killed pull's
            if stale:  # nothing of the remote's is past the local commit: the journal's bytes are no one's
                remove_journal(p)
            return ("pulled" if wh.finished else "up-to-date", *done)
        if m.size < head.size and extends(wh, head, m.size, m.seq + 1, chain):
            return ("ahead", *done)
        if m.size < head.size or not remote_has(remote, m, head.size, head.chain):
            raise diverged(wh, head, remote, m, str(p), "pull into a new file to keep both")
        # 19.7: only the tail is downloaded, into a file of its own; the local bytes stay where they are
        tmp = p.parent / f".{p.name}.pull-{secrets.token_hex(6)}"
        whole: Path | None = None
        th: ReadHandle | None = None
        held: list[int] = []
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
            held.append(_hold(tmp))
            try:
                got = _download(remote, m, head.size, fd, 0, progress)
            finally:
                os.close(fd)
            th = ReadHandle(tmp)
            th.crypt, th.keyless = wh.crypt, wh.keyless  # 10: the tail reads as the local file does
            src: Source = Spliced(wh, head.size, th)
            checked = "tail"
            try:
                records, signed = _check_tail(remote, m, src, snap, trust, progress)
            except NeedsWhole:
                checked = "file"
                # something only the whole file can judge (a checkpoint, a new snapshot blob):
                # check a temporary copy of local bytes + tail as one file, as 19.7 allows
                whole = p.parent / f".{p.name}.pull-{secrets.token_hex(6)}"
                _assemble(wh.fd, th, head.size, m.size, whole, held)
                rep = _check(remote, m, whole, trust, head.size, head.records, progress)
                records, signed = rep.records, rep.signed_prefix
            if stale:
                logging.getLogger("capsule.recovery").warning(
                    "%s: set aside an interrupted pull's journal: this pull checked the tail with the key", p)
                remove_journal(p)
            # 19.7: the verified bytes go to a journal first, so a kill midway leaves a tail the
            # next writer finishes (format.pending) instead of dropping, which would diverge the copy
            try:
                write_journal(p, head.size, head.chain, m.size - head.size,
                              lambda off, n: src.pread(head.size + off, n))
            except OSError as e:  # a folder we may not write (the file through a link): as before, no journal
                logging.getLogger("capsule.recovery").warning(
                    "%s: no journal for this pull (%s): if it is killed midway, pull again before writing", p, e)
            _append(wh, src, head, m, p, progress)
            remove_journal(p)
        finally:
            if th is not None:
                th.close()
            for t in (tmp, whole):
                if t is not None:
                    with contextlib.suppress(FileNotFoundError):
                        t.unlink()
            for h in held:
                os.close(h)
        return "pulled", m.generation, got, m.commits, m.seq, m.root, records, signed, checked
    finally:
        wh.close()


def _encrypted(p: Path) -> bool:
    """Whether the local file's header says it is encrypted (10.1); False when it cannot say."""
    from ..format.frames import parse_header

    try:
        with open(p, "rb") as f:
            return parse_header(f.read(C.HEADER_SIZE)).encrypted
    except (OSError, CapsuleError):
        return False  # the writer's own open says what is wrong


def _check_tail(remote: Remote, m: Manifest, src: Source, snap: Snapshot, trust: Any,
                progress: Progress | None) -> tuple[int, dict[str, Any] | None]:
    """19.7: the tail checked from the local last commit on (:mod:`.tail`), O(tail)."""
    if progress is not None:
        progress("verify", 0, 1)
    try:
        t = check_tail(src, snap, m.size)
    except CorruptError as e:
        off = e.offset
        where = (f"{remote.shown}/{m.covering(off).name}" if off is not None and snap.end <= off < m.size
                 else f"{remote.shown}")
        raise RemoteCorrupt(f"{where}: refused: {e.check} at offset {off}: {e.message}", check=e.check) from None
    if (t.seq, t.root, t.commits) != (m.seq, m.root, m.commits):
        raise RemoteCorrupt(f"{remote.shown}: the segments do not make the commit the manifest names "
                            f"(commit {m.commits}, seq {m.seq}, root {m.root[:16]})", check="remote-manifest")
    if trust is not None:
        if not t.new_records:
            raise NeedsWhole("with an anchor, the whole file says what is signed (13.4)")
        # the tail holds no CHECKPOINT (that would have needed the whole file): nothing signs its records
        raise RemoteUntrusted(f"{remote.shown}: refused: {t.new_records} record(s) after the last checkpoint "
                              f"signed by the trusted key are not covered by its signature")
    return t.records, None


def _assemble(src_fd: int, tail: ReadHandle, local_size: int, size: int, path: Path, held: list[int]) -> None:
    """A temporary file holding the local committed bytes and the downloaded tail (its flock
    goes to ``held``)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    held.append(_hold(path))
    try:
        _copy(src_fd, fd, local_size)
        at = local_size
        while at < size:
            data = tail.pread(at - local_size, min(8 << 20, size - at))
            if not data:
                raise SyncError("the downloaded tail shrank while it was being checked")
            pwrite_all(fd, data, at)
            at += len(data)
    finally:
        os.close(fd)


def _download(remote: Remote, m: Manifest, start: int, fd: int, at: int, progress: Progress | None) -> int:
    """Write the remote's bytes [start, size) at ``at`` of ``fd`` (a pull's own temporary file, never
    the capsule): whole segments checked by their SHA-256; the one ``start`` cuts (if any) by ranged
    reads, checked by the chain. Written as they arrive, so memory does not grow with a segment
    (17.4: a hostile manifest may name a huge one); a segment that fails its check fails the pull."""
    got, total = 0, m.size - start

    def put(c: bytes) -> None:
        nonlocal at, got
        pwrite_all(fd, c, at)
        at += len(c)
        got += len(c)
        if progress is not None:
            progress("download", got, total)

    for seg in m.segments:
        if seg.end <= start:
            continue
        if seg.offset < start:
            pos = start - seg.offset
            while pos < seg.size:
                data = remote.read_range(seg.name, pos, min(seg.size, pos + _RANGE))
                if not data or len(data) != min(seg.size, pos + _RANGE) - pos:
                    raise RemoteCorrupt(f"{remote.shown}/{seg.name}: shorter than its manifest entry",
                                        check="remote-segment")
                put(data)
                pos += len(data)
            continue
        digest, n = hashlib.sha256(), 0
        for c in remote.chunks(seg.name, seg.size):
            n += len(c)
            if n > seg.size:
                break
            digest.update(c)
            put(c)
        if n != seg.size or digest.hexdigest() != seg.sha256:
            raise RemoteCorrupt(f"{remote.shown}/{seg.name}: its bytes do not match the manifest's SHA-256 "
                                "(a damaged or tampered object): refused; a copy holding these bytes mends "
                                "the remote with `capsule push FILE URL --check`", check="remote-segment")
    return got


_RANGE = 8 << 20  # bytes of one ranged read


def _check(remote: Remote, m: Manifest, tmp: Path, trust: Any, local_size: int, local_records: int,
           progress: Progress | None) -> Any:
    """Verify the assembled file (19.7): every check of 13.3, the manifest's claims, and the anchor."""
    if progress is not None:
        progress("verify", 0, 1)
    rep = verify(tmp, trust=trust)
    if not rep.ok:
        e = rep.first_error or {}
        off, check = e.get("offset"), str(e.get("check"))
        if check.startswith("trust") or off is None:
            raise RemoteUntrusted(f"{remote.shown}: refused: {e.get('message')} ({check})")
        where = (f"{remote.shown}/{m.covering(off).name}" if local_size <= off < m.size else
                 f"{remote.shown}" if off >= local_size else "the local file")
        raise RemoteCorrupt(f"{where}: refused: {check} at offset {off}: {e.get('message')}", check=check)
    if (rep.file_id, rep.last_seq, rep.root, rep.bytes, rep.torn_tail, rep.commits) != (
            m.file_id, m.seq, m.root, m.size, 0, m.commits):
        raise RemoteCorrupt(f"{remote.shown}: the segments do not make the commit the manifest names "
                            f"(commit {m.commits}, seq {m.seq}, root {m.root[:16]})", check="remote-manifest")
    # 10.6: without the key, record counts are a COMMIT's word: any new bytes count as new records
    grew = rep.records > local_records or (not rep.contents_checked and rep.bytes > local_size)
    if trust is not None and grew and (rep.unsigned or {}).get("records"):
        raise RemoteUntrusted(f"{remote.shown}: refused: {rep.unsigned['records']} record(s) after the last "  # type: ignore[index]
                              f"checkpoint signed by the trusted key are not covered by its signature")
    if trust is not None and not rep.contents_checked and rep.bytes > local_size and (rep.unsigned or {}).get("bytes"):
        # 10.6, 10.7: without the key a COMMIT's MAC cannot be checked, and a commit with no record
        # (a bucket writer's, MAC of zeros) would make the copy unreadable to every key holder:
        # with an anchor and no key, nothing past the signed commit is taken
        raise RemoteUntrusted(f"{remote.shown}: refused: {rep.unsigned['commits'] or 1} commit(s) after the last "  # type: ignore[index]
                              "checkpoint signed by the trusted key, and this encrypted capsule's commits cannot "
                              "be authenticated without its key: pull with -i KEY, or have the owner sign a "
                              "checkpoint as the last commit before pushing")
    return rep


def _append(wh: WriteHandle, src: Source, head: Head, m: Manifest, p: Path, progress: Progress | None) -> None:
    """Append the verified bytes [head.size, m.size) of ``src`` to the local file as a writer
    would (6.4). A torn tail there must be those very bytes (an interrupted pull)."""
    if head.torn and (head.torn > m.size - head.size
                      or wh.pread(head.size, head.torn) != src.pread(head.size, head.torn)):
        raise SyncError(f"{p}: a torn tail of {head.torn} bytes follows its last commit and is not the "
                        f"remote's (a write of its own was interrupted, or its newest commit is damaged: "
                        f"capsule verify says which); pull into a new file to follow the remote (a commit "
                        f"here would drop the tail with a RECOVERY record, and the copy would be its own)")
    rd = Reader(src, head.size, m.size, head.seq + 1, head.chain, head.header.max_frame_len)
    pending = head.size  # the first byte not yet written
    for fh, _, _ in rd.frames():
        if fh.ftype == C.FT_INDEX and fh.offset > pending:  # 6.4: frames before an INDEX durable first
            _write(wh, src, pending, fh.offset)
            pending = fh.offset
        if fh.ftype == C.FT_COMMIT:
            _write(wh, src, pending, fh.end)
            pending = fh.end
            if progress is not None:
                progress("append", fh.end - head.size, m.size - head.size)
    if pending != m.size:  # the check proved the last commit ends at m.size
        raise SyncError(f"{p}: the pulled tail does not end with a commit")


def _write(wh: WriteHandle, src: Source, a: int, b: int) -> None:
    at = a
    while at < b:
        data = src.pread(at, min(8 << 20, b - at))
        wh.append_at(at, data)
        at += len(data)
    wh.sync()


def _copy(src_fd: int, dst_fd: int, n: int) -> None:
    done = 0
    while done < n:
        try:
            k = os.copy_file_range(src_fd, dst_fd, n - done, done, done)
        except OSError:
            k = 0
        if k <= 0:  # not supported here: plain reads
            data = os.pread(src_fd, min(8 << 20, n - done), done)
            if not data:
                raise SyncError("the local file shrank while it was being pulled onto")
            pwrite_all(dst_fd, data, done)
            k = len(data)
        done += k

