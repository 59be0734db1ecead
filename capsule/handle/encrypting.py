"""Encryption at rest for handles: keys in, key slots out (spec 10).

``Keys`` is what a caller hands over to read or write an encrypted capsule (an
identity, a passphrase). :func:`new_encryption` sets up a new file: its file key,
frame cipher and first KEYSLOT frame. :func:`like_parent` does the same for a file
written from another (a fork, a compacted file): a new file key, wrapped for the
parent's recipients, except those removed, plus those added, so a removed
recipient cannot read the new file (10.3).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core import constants as C
from ..core.clock import source_date_epoch
from ..core.errors import UsageError
from ..format.crypto import (
    SCRYPT_LOG_N_DEFAULT,
    FrameCipher,
    Keys,
    KeySlots,
    key_id,
    new_file_key,
    passphrase_slot,
    recipient_slot,
    reproducible_secret,
)
from ..format.frames import FileHeader

if TYPE_CHECKING:
    from pathlib import Path

    from ..format.file import ReadHandle
    from ..format.keys import PrivateKey, PublicKey


def _public(recipients: Iterable[PublicKey | PrivateKey]) -> list[PublicKey]:
    from ..format.keys import PrivateKey, PublicKey

    out: dict[bytes, PublicKey] = {}
    for r in recipients:
        pub = r.public_key if isinstance(r, PrivateKey) else r
        if not isinstance(pub, PublicKey):
            raise UsageError("a recipient is a capsule PublicKey (capsule.load_public_key(path))")
        out[pub.raw] = pub
    return [out[k] for k in sorted(out)]  # 10.3: slots in the order of the recipients' key bytes


def new_encryption(file_id: bytes, recipients: Sequence[PublicKey | PrivateKey], keys: Keys,
                   log_n: int | None = None) -> tuple[FrameCipher, bytes]:
    """A new file's frame cipher and first KEYSLOT payload (10.1, 10.3-10.5)."""
    pubs = _public(recipients)  # ``keys.identity`` only seeds reproducible mode (10.5): it is no recipient
    if not pubs and keys.passphrase is None:
        raise UsageError("an encrypted capsule needs at least one recipient or a passphrase")
    # CAPSULE_SCRYPT_LOG_N: a lighter work factor for tests and throwaway files (10.4 bounds it)
    env = os.environ.get("CAPSULE_SCRYPT_LOG_N", "").strip() if keys.passphrase is not None else ""
    if log_n is None and env and not (env.isascii() and env.isdigit() and len(env.lstrip("0")) <= 4):  # a typo
        raise UsageError(f"CAPSULE_SCRYPT_LOG_N={env[:40]!r}: a small whole number is needed (scrypt's log2 N, "
                         "10.4)")
    n = log_n if log_n is not None else int(env) if env else SCRYPT_LOG_N_DEFAULT
    repro = source_date_epoch() is not None
    secret = reproducible_secret(keys.identity, keys.passphrase, file_id, n) if repro else None
    fk = new_file_key(file_id, reproducible_secret=secret,
                      readers=([p.raw for p in pubs], keys.passphrase is not None))
    slots = [recipient_slot(p, fk, file_id, reproducible=repro) for p in pubs]
    if keys.passphrase is not None:
        slots.append(passphrase_slot(keys.passphrase, fk, file_id, log_n=n, reproducible=repro))
    return FrameCipher(fk, file_id), KeySlots(key_id(fk, file_id), tuple(slots), None).encode()


def encrypted_header(file_id: bytes, minor: int = C.FORMAT_MINOR) -> FileHeader:
    return FileHeader(file_id, minor=minor, flags=C.HFLAG_ENCRYPTED, aead_alg=C.AEAD_CHACHA20_POLY1305)


@dataclass(frozen=True)
class Rekey:
    """Who opens a file written from another: recipients added and removed, a passphrase set
    (``new_passphrase``, replacing any) or dropped (10.3)."""

    add: Sequence[PublicKey] = ()
    remove: Sequence[PublicKey] = ()
    new_passphrase: bytes | None = None
    drop_passphrase: bool = False


def like_parent(parent: ReadHandle, file_id: bytes, keys: Keys, *, add: Sequence[PublicKey] = (),
                remove: Sequence[PublicKey] = (), new_passphrase: bytes | None = None,
                drop_passphrase: bool = False) -> tuple[FrameCipher, bytes] | None:
    """Encryption for a file written from ``parent`` (None when the parent is plain): a new file
    key for the parent's recipients minus ``remove`` plus ``add``, and its passphrase slot when the
    passphrase is known (10.3)."""
    slots = parent.keyslots
    if parent.crypt is None or slots is None:
        if add or remove or new_passphrase is not None or drop_passphrase:
            raise UsageError("the capsule is not encrypted: create an encrypted one with --encrypt")
        return None
    if new_passphrase is not None or drop_passphrase:
        keys = Keys(keys.identity, new_passphrase)
        slots = KeySlots(slots.key_id, tuple(s for s in slots.slots if s.type != "scrypt"), slots.prev)
    from ..format.keys import PublicKey

    gone = {p.raw for p in remove}
    missing = gone - set(slots.recipients)
    if missing:
        raise UsageError(f"{len(missing)} of the recipients to remove cannot open this capsule anyway")
    pubs = [PublicKey(r) for r in slots.recipients if r not in gone] + list(add)
    if not pubs and keys.passphrase is None:
        raise UsageError("no recipient and no passphrase would be left: nobody could open the new file")
    if slots.has_passphrase and keys.passphrase is None:
        raise UsageError("this capsule also opens with a passphrase: give it (--passphrase-env VAR) so the new "
                         "file keeps it")
    log_n = next((s.log_n for s in parent.keyslots.slots if s.type == "scrypt"), None) if parent.keyslots else None
    return new_encryption(file_id, pubs, Keys(keys.identity if keys.identity and keys.identity.public_key.raw
                                                   not in gone else None, keys.passphrase), log_n)


def begin_file(h: ReadHandle, file_id: bytes, minor: int, enc: tuple[FrameCipher, bytes] | None,
               keys: Keys | None = None, *, plain: FileHeader | None = None
               ) -> tuple[FileHeader, list[tuple[int, bytes]]]:
    """Write a new file's header on ``h`` (``plain``, or one made for ``minor``; encrypted with
    ``enc``: its cipher then seals every frame ``h`` writes) and return it with the frames its
    first commit must hold after any LINEAGE: the KEYSLOT frame of an encrypted file (10.3)."""
    if enc is not None:
        header = encrypted_header(file_id, minor)
    else:
        header = plain if plain is not None else FileHeader(file_id, minor=minor)
    extra: list[tuple[int, bytes]] = []
    if enc is not None:
        from ..format.crypto import parse_keyslots

        h.crypt, h.keyslots, h.keys = enc[0], parse_keyslots(enc[1], 0, 0), keys
        extra.append((C.FT_KEYSLOT, enc[1]))
    h.append_at(0, header.encode())  # type: ignore[attr-defined]
    return header, extra


def reopen(path: Path, src: ReadHandle) -> ReadHandle:
    """A second handle on the same file, reading with the first one's key (views)."""
    from ..format.file import ReadHandle

    dst = ReadHandle(path)
    dst.crypt, dst.keyless, dst.keyslots, dst.keys = src.crypt, src.keyless, src.keyslots, src.keys
    return dst


__all__ = ["Keys", "Rekey", "begin_file", "encrypted_header", "like_parent", "new_encryption", "reopen"]
