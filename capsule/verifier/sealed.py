"""Verification of what encryption adds (spec 10.3, 10.6): the KEYSLOT chain and, without
the key, the sealed frames' place in the file."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.errors import CorruptError
from ..format.crypto import Keys, parse_keyslots
from ..format.frames import FileHeader, FrameHeader
from ..format.keyslots import attach

if TYPE_CHECKING:
    from pathlib import Path

    from ..format.file import ReadHandle
    from ..format.keys import PrivateKey
    from .check import VerifyReport


class KeyslotCheck:
    """10.3: KEYSLOT frames only in an encrypted file, the first opening it, each naming the
    previous one and the same file key; every COMMIT names the newest (6.1)."""

    def __init__(self, header: FileHeader) -> None:
        self.header = header
        self.at: int | None = None  # the newest KEYSLOT frame
        self.key_id: bytes | None = None

    def frame(self, fh: FrameHeader, payload: bytes, forked: bool) -> None:
        def bad(msg: str) -> CorruptError:
            return CorruptError(msg, offset=fh.offset, seq=fh.seq, check="keyslot")

        ks = parse_keyslots(payload, fh.offset, fh.seq)
        if not self.header.encrypted:
            raise bad("KEYSLOT frame in a capsule that is not encrypted")
        if self.at is None and fh.seq > (1 if forked else 0):
            raise bad("the first KEYSLOT frame must open the file (10.3)")
        if self.key_id is not None and ks.key_id != self.key_id:
            raise bad("a KEYSLOT frame names another file key than the first")
        if ks.prev != self.at:
            raise bad("KEYSLOT does not follow the previous one")
        self.key_id, self.at = ks.key_id, fh.offset

    def commit(self, keyslots: int | None, mac: bytes | None = None) -> tuple[str, str] | None:
        """What is wrong with a COMMIT's `keyslots` (or the presence of its `mac`, 10.7), or None."""
        if keyslots == self.at and (self.at is not None) == self.header.encrypted:
            if self.header.encrypted and mac is None:
                return ("commit-mac", "COMMIT of an encrypted capsule without a `mac`")
            return None
        if self.header.encrypted:
            return ("keyslot", "COMMIT does not name the latest KEYSLOT frame")
        return ("keyslot", "COMMIT of a capsule that is not encrypted names a KEYSLOT frame")


KEYLESS = ("encrypted, checked without its key: header, frames, chain, commits, Merkle roots, key slots and "
           "signatures were checked; contents, ids and tables were not (give --identity or --passphrase-env to "
           "check them too)")


def keys_for(identity: PrivateKey | None, passphrase: bytes | str | None) -> Keys:
    """The keys a verify uses: those given, else the innermost ``capsule.unlocking`` block's."""
    if identity is None and passphrase is None:
        from ..handle.entry import default_keys

        return default_keys()
    return Keys.of(identity, passphrase)


def unseal_for_verify(h: ReadHandle, path: Path, rep: VerifyReport, keys: Keys, deep: bool) -> bool:
    """Open an encrypted file's key when one is given, else mark the handle keyless (10.6);
    returns whether contents can be checked (``deep``)."""
    header = attach(h, identity=keys.identity, passphrase=keys.passphrase, keyless=True, where=path)
    rep.encrypted = header.encrypted
    if h.keyless:
        rep.contents_checked = False
        return False
    return deep


def keyless_error(path: Path, rep: Any, walk: Callable[[ReadHandle, Any], None]) -> dict[str, Any] | None:
    """13.3 with a key that failed to unlock (``failed``): the frames are walked as without a
    key (``walk`` checks them into ``rep``, a fresh report), and the first failure of that walk
    is the one to name: a damaged frame before the KEYSLOT, or the KEYSLOT's own header, fails
    the unlock under another name and at another offset than the frame's. None when the walk
    finds nothing (a wrong key, a slot's contents): ``failed`` is then the failure."""
    from ..format.file import ReadHandle

    h = ReadHandle(path)
    try:
        unseal_for_verify(h, path, rep, Keys(), False)
        walk(h, rep)
    except CorruptError:
        return None
    finally:
        h.close()
    first = rep.first_error
    return first if first is not None and first.get("offset") is not None else None


def sealed_frame(fh: FrameHeader) -> bool:
    """10.6: a frame read without the key whose payload stays sealed."""
    return bool(fh.flags & C.FFLAG_AEAD)


__all__ = ["KEYLESS", "KeyslotCheck", "keyless_error", "keys_for", "sealed_frame", "unseal_for_verify"]
