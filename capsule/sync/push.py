"""``push``: ship the committed tail of a local capsule to a remote (spec 19.6).

Order of operations, each step safe to interrupt (19.4): read the remote's newest
manifest; prove it names a prefix of the local file (:mod:`.prefix`); write the new
segment (the tail after the remote's last commit, merged with the newest small
segments, 19.5) under its content-derived name; then create the next generation's
manifest with a create-only write. Until that write the remote is unchanged (a
killed push leaves only objects no manifest names); the write itself either creates
the whole manifest or fails because another push created that generation first.
The local file is opened read-only and only bytes up to its last commit are read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..format.file import ReadHandle
from ._errors import Diverged, RemoteCorrupt, RemoteMoved, SyncError
from .head import RemoteHead, read_head, remote_has
from .manifest import MAX_GENERATION, Manifest, Segment, manifest_name, plan_segments, segment_name
from .prefix import Head, commits_of, describe, extends, head_of, last_common
from .remote import Remote

Progress = Callable[[str, int, int], None]
CHUNK = 8 << 20


@dataclass(frozen=True)
class PushResult:
    """What a push did. ``bytes`` counts every byte written to the store."""

    url: str
    status: str  # "pushed" or "up-to-date"
    generation: int
    bytes: int
    tail_bytes: int  # new capsule bytes (after the remote's last commit)
    merged_bytes: int  # bytes re-sent to merge small segments (19.5)
    segments: int
    commits: int
    seq: int
    root: str
    skipped: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # segments ``check`` found damaged and wrote again

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "status": self.status, "generation": self.generation, "bytes": self.bytes,
                "tail_bytes": self.tail_bytes, "merged_bytes": self.merged_bytes, "segments": self.segments,
                "commits": self.commits, "seq": self.seq, "root": self.root, "skipped_manifests": self.skipped,
                "repaired_segments": self.repaired}


def push(path: str | Path, url: str, *, as_name: str | None = None,
         storage_options: dict[str, Any] | None = None, progress: Progress | None = None,
         check: bool = False) -> PushResult:
    """Push the committed part of the capsule at ``path`` to ``url`` (any fsspec URL).

    Ships only the tail after the remote's last commit, after proving the remote is a
    prefix of the local file. Raises :class:`~capsule.sync.Diverged` when the two went
    their own ways (push beside it with ``as_name``), :class:`~capsule.sync.RemoteMoved`
    when another push published first. ``progress(stage, done, total)`` is called with
    stage "upload" (bytes) and "publish". ``check`` also reads back every segment the remote's
    manifest names and writes again, from the local file's same bytes, any that is damaged or
    missing (19.3: a segment's name fixes its bytes), so a remote no pull could take is mended.

    >>> import capsule.sync
    >>> capsule.sync.push("example.capsule", "memory://doctest/agent").status
    'pushed'
    """
    p = Path(path)
    remote = Remote(url, storage_options)
    with contextlib.suppress(OSError):  # a local store's files: no more open than the capsule (ReadHandle says why not)
        remote.file_mode = (stat.S_IMODE(os.stat(p).st_mode) & 0o666) | 0o600
    if as_name is not None:
        remote = remote.sibling(as_name)
    h = ReadHandle(p)
    try:
        head = head_of(h, p)
        rh = read_head(remote)
        start, old = _base(h, p, head, remote, rh)
        if start == 0:
            _check_whole(h, p, head)
        repaired = _repair(h, remote, old) if check else []
        fixed = sum(s.size for s in old if s.name in repaired)  # bytes sent again (--json "bytes": all moved)
        if start == head.size:
            m = rh.manifest
            assert m is not None
            return PushResult(remote.shown, "up-to-date", m.generation, fixed, 0, 0, len(m.segments), head.commits,
                              head.seq, head.root, rh.skipped, repaired)
        gen = rh.top + 1
        if gen > MAX_GENERATION:  # 19.2: no reader would ever take it, so a "pushed" would be a lie
            raise RemoteCorrupt(f"{remote.shown}: {manifest_name(rh.top)} leaves no generation to publish "
                                f"(at most {MAX_GENERATION}); remove it or push elsewhere", check="remote-manifest")
        spans, keep = plan_segments(old, (start, head.size))
        (a, b), = spans[keep:]  # every merged span ends at the local last commit
        name = segment_name(a, head.chain)
        digest = hashlib.sha256()
        remote.write(name, _chunks(h, a, b, digest, progress))
        segs = (*old[:keep], Segment(name, a, b - a, digest.hexdigest()))
        m = Manifest(gen, rh.prev(), head.file_id, head.size, head.commits, head.seq, head.commit_offset,
                     head.chain.hex(), head.root, segs)
        data = m.encode()
        if progress is not None:
            progress("publish", 0, 1)
        try:
            remote.create(manifest_name(gen), data)
        except FileExistsError:
            raise RemoteMoved(f"{remote.shown}: remote moved: another push published generation {gen} while this "
                              f"one ran; nothing was lost: pull (or push again) to see where it stands") from None
        return PushResult(remote.shown, "pushed", gen, (b - a) + len(data) + fixed, head.size - start, start - a,
                          len(segs), head.commits, head.seq, head.root, rh.skipped, repaired)
    finally:
        h.close()


def _base(h: ReadHandle, p: Path, head: Head, remote: Remote, rh: RemoteHead) -> tuple[int, tuple[Segment, ...]]:
    """Where the tail to ship starts and the segments kept: prove the remote is a prefix."""
    m = rh.manifest
    if m is None:
        return 0, ()
    if m.file_id != head.file_id:
        raise Diverged(f"{remote.shown} holds another capsule (file id {m.file_id}, {p} is {head.file_id}): "
                       f"push with --as NEWNAME to put it beside", local=head.summary(), remote=m.summary(),
                       common=None)
    chain = bytes.fromhex(m.chain)
    if m.size == head.size and chain == head.chain:
        return head.size, m.segments
    if m.size < head.size and extends(h, head, m.size, m.seq + 1, chain):
        return m.size, m.segments
    if m.size > head.size:
        try:
            ahead = remote_has(remote, m, head.size, head.chain)
        except RemoteCorrupt as e:  # not something this shorter file could mend (push --check)
            raise RemoteCorrupt(f"{e.message}; {p} is behind the remote (remote {describe(m.summary())}, local "
                                f"{describe(head.summary())}), so only a copy holding the remote's last commit "
                                "can mend it", offset=e.offset, seq=e.seq, check=e.check) from None
        if ahead:
            raise SyncError(f"{remote.shown} is ahead of {p} (remote {describe(m.summary())}, local "
                            f"{describe(head.summary())}): pull first")
    raise diverged(h, head, remote, m, str(p), "push with --as NEWNAME to put the local copy beside it")


def diverged(h: ReadHandle, head: Head, remote: Remote, m: Manifest, local_name: str, hint: str) -> Diverged:
    """19.6: name both last commits and the last one they share."""
    common = last_common(commits_of(h, head), lambda end, chain: remote_has(remote, m, end, chain))
    c = None if common is None else common.summary()
    return Diverged(f"{local_name} and {remote.shown} have diverged: local at {describe(head.summary())}, remote "
                    f"at {describe(m.summary())}, last common {describe(c)}; {hint}",
                    local=head.summary(), remote=m.summary(), common=c)


def _check_whole(h: ReadHandle, p: Path, head: Head) -> None:
    """A first push ships every byte: check every frame's link first (3.1, 4.2), as a pull of it
    will (19.7), so a file damaged before its last INDEX (which an open does not read, 6.3) is
    never published for every pull to refuse. A later push ships bytes ``extends`` checked."""
    from ..core import constants as C
    from ..core.errors import CorruptError
    from ..format.scan import walk

    stop = walk(h, head.header, C.HEADER_SIZE, head.size, 0, head.header.chain_seed)
    if stop is not None:
        e = stop.error
        raise CorruptError(f"{p}: {e.message}; nothing was pushed (`capsule verify` names the damage)",
                           offset=e.offset if e.offset is not None else stop.offset, seq=e.seq, check=e.check)


def _repair(h: ReadHandle, remote: Remote, segs: tuple[Segment, ...]) -> list[str]:
    """Read back each segment; write again, from the local file, one whose bytes do not match
    its entry (or that cannot be read). The local bytes are the segment's: ``_base`` proved the
    remote a prefix of the file through the chain, and their SHA-256 is checked before writing."""
    from ._errors import RemoteError

    fixed: list[str] = []
    for seg in segs:
        digest, size = hashlib.sha256(), 0
        try:
            for b in remote.chunks(seg.name, seg.size):
                digest.update(b)
                size += len(b)
        except (RemoteError, RemoteCorrupt):
            size = -1  # unreadable, or missing (RemoteCorrupt "missing")
        if size == seg.size and digest.hexdigest() == seg.sha256:
            continue
        mine = hashlib.sha256()
        for _ in _chunks(h, seg.offset, seg.end, mine, None):  # hashed as read
            pass
        if mine.hexdigest() != seg.sha256:
            raise SyncError(f"{h.path}: its bytes {seg.offset}..{seg.end} are not the segment {seg.name} the remote "
                            "names: not repaired")
        remote.write(seg.name, _chunks(h, seg.offset, seg.end, hashlib.sha256(), None))
        fixed.append(seg.name)
    return fixed


def _chunks(h: ReadHandle, a: int, b: int, digest: Any, progress: Progress | None) -> Iterator[bytes]:
    at = a
    while at < b:
        data = h.pread(at, min(CHUNK, b - at))
        if not data:
            raise SyncError(f"{h.path}: shrank while being pushed (at offset {at})")
        digest.update(data)
        at += len(data)
        if progress is not None:
            progress("upload", at - a, b - a)
        yield data
