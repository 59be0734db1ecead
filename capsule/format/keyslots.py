"""Finding an encrypted file's key slots and opening its file key (spec 10.3, 6.1).

Every COMMIT of an encrypted file names the newest KEYSLOT frame (`keyslots`), so
a reader finds the slots in two reads, flat in history. A file whose tail is torn
(no COMMIT at the end) is searched from the start by frame headers alone, as 8.1
finds its last commit. The first KEYSLOT frame is written with the file and names
the file key for good: a later one must carry the same key id (10.3), so a slot
appended by someone without the key cannot hand a reader another key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..core import constants as C
from ..core.errors import CorruptError
from .crypto import FrameCipher, KeySlots, WrongKey, parse_keyslots, unlock
from .frames import FileHeader, parse_header
from .scan import Snapshot, hop, read_commit_at, read_frame_at, tail_commit_offset

if TYPE_CHECKING:
    from .file import ReadHandle
    from .keys import PrivateKey


def _slots_at(h: ReadHandle, header: FileHeader, offset: int) -> KeySlots:
    prev = header.chain_seed if offset == C.HEADER_SIZE else None
    fh, payload, _, _ = read_frame_at(h, offset, max_frame=header.max_frame_len, prev_chain=prev)
    if fh.ftype != C.FT_KEYSLOT:
        raise CorruptError("COMMIT `keyslots` does not name a KEYSLOT frame", offset=offset, check="keyslot")
    return parse_keyslots(payload, fh.offset, fh.seq)


def find_keyslots(h: ReadHandle, header: FileHeader) -> KeySlots:
    """The newest KEYSLOT frame of the file, checked against the first (10.3)."""
    size = h.size()
    first: int | None = None
    newest: int | None = None
    off = tail_commit_offset(h, size)
    if off is not None:
        try:
            c = read_commit_at(h, off, header)
            newest = c.keyslots if c.end == size else None
        except CorruptError:
            newest = None
    found: list[int] = []
    for fh in hop(h, C.HEADER_SIZE, size, 0, header.max_frame_len):
        if fh.end > size:
            break
        if fh.ftype == C.FT_KEYSLOT:
            found.append(fh.offset)
            if newest is not None:
                break  # the first is enough: the COMMIT named the newest
        elif fh.seq >= 2 and newest is not None:
            break  # 10.3: the first KEYSLOT is frame 0, or 1 after a LINEAGE
    if not found:
        raise CorruptError("encrypted capsule without a KEYSLOT frame", offset=C.HEADER_SIZE, check="keyslot")
    first = found[0]
    base = _slots_at(h, header, first)
    if newest is None:
        newest = found[-1]
    if newest == first:
        return base
    ks = _slots_at(h, header, newest)
    if ks.key_id != base.key_id:
        raise CorruptError("a KEYSLOT frame names another file key than the first", offset=newest, check="keyslot")
    return ks


def attach(h: ReadHandle, *, identity: PrivateKey | None = None, passphrase: bytes | None = None,
           keyless: bool = False, where: str | Path = "") -> FileHeader:
    """Read the header; for an encrypted file, open its file key and give ``h`` the frame
    cipher (or mark it ``keyless`` for a structural check). Returns the header."""
    header = parse_header(h.pread(0, C.HEADER_SIZE))
    if not header.encrypted:
        return header
    if keyless and identity is None and passphrase is None:
        h.keyless = True
        return header
    label = f"{os.fspath(where)}: " if where else ""
    ks = find_keyslots(h, header)
    try:
        key = unlock(ks, header.file_id, identity=identity, passphrase=passphrase, where=label)
    except WrongKey:
        # the newest slots came from the tail COMMIT, which may be a forgery past the last real
        # commit (checked only once the file key reads the history): try every KEYSLOT frame
        key = _any_slot(h, header, identity, passphrase, label)
    h.crypt, h.keyslots = FrameCipher(key, header.file_id), None  # settle() names the slots
    return header


def _any_slot(h: ReadHandle, header: FileHeader, identity: PrivateKey | None, passphrase: bytes | None,
              label: str) -> bytes:
    err: WrongKey | None = None
    size = h.size()
    for fh in hop(h, C.HEADER_SIZE, size, 0, header.max_frame_len):
        if fh.ftype != C.FT_KEYSLOT or fh.end > size:
            continue
        try:
            return unlock(_slots_at(h, header, fh.offset), header.file_id, identity=identity,
                          passphrase=passphrase, where=label)
        except WrongKey as e:
            err = e
        except CorruptError:
            continue
    raise err if err is not None else WrongKey(f"{label}no key slot opens with the key given")


def settle(h: ReadHandle, snap: Snapshot) -> None:
    """10.3: once the last commit is settled (and, 10.7, authenticated), the slots that say who
    reads the file are those of the KEYSLOT frame that commit names, never one past it: a frame
    appended by someone without the key could otherwise enrol them in a fork or compaction."""
    if h.crypt is None or snap.commit is None:
        return
    at = snap.commit.keyslots
    if at is None:
        raise CorruptError("COMMIT of an encrypted capsule names no KEYSLOT frame", offset=snap.commit.offset,
                           check="keyslot")
    ks = _slots_at(h, snap.header, at)
    if ks.key_id != h.crypt.key_id:
        raise CorruptError("the KEYSLOT frame the last commit names holds another file key", offset=at,
                           check="keyslot")
    h.keyslots = ks


__all__ = ["attach", "find_keyslots", "settle"]
