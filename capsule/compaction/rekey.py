"""``capsule.rekey``: change who can open an encrypted capsule (spec 10.3).

Adding a recipient or a passphrase appends a KEYSLOT frame holding every slot, the
new one wrapping the same file key: nothing else is rewritten, and the file stays
append-only. Removing one cannot work that way (the removed key already knows the
file key), so it compacts (15.1, policy ``history``) into a file under a new file
key that the removed recipient's slot is not given: it cannot read anything in the
new file, and so nothing written to it later.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core import constants as C
from ..core.clock import source_date_epoch
from ..core.errors import UsageError
from ..format.crypto import KeySlots, Slot, recipient_slot
from ..format.keys import PrivateKey, PublicKey
from ..handle.encrypting import Rekey
from ..handle.entry import open as open_capsule
from .rewrite import compact


def rekey(path: str | Path, *, identity: PrivateKey | None = None, passphrase: bytes | str | None = None,
          add: Sequence[PublicKey] = (), remove: Sequence[PublicKey] = (),
          new_passphrase: bytes | str | None = None, drop_passphrase: bool = False,
          out: str | Path | None = None, timeout: float | None = None,
          key: PrivateKey | Sequence[PrivateKey] | None = None) -> dict[str, Any]:
    """Add recipients or a passphrase (a KEYSLOT frame appended) or remove some (a compaction
    under a new file key, in place or to ``out``). ``identity`` / ``passphrase`` open the file.
    ``key`` signs a checkpoint of the rewritten head (the rewrite carries a parent's signatures
    only as 15.2 allows: ``compaction["not_carried"]`` names those it could not). ``out`` and
    ``key`` belong to a rewrite: an append writes to the file itself and signs nothing.
    Returns a report: what was done, the recipients (key ids) and whether a passphrase opens it."""
    if isinstance(new_passphrase, str):
        new_passphrase = new_passphrase.encode()
    if new_passphrase is not None and drop_passphrase:
        raise UsageError("set a new passphrase or drop it, not both")
    if not (add or remove or new_passphrase is not None or drop_passphrase):
        raise UsageError("nothing to change: add or remove a recipient, or set or drop the passphrase")
    gone = {p.raw for p in remove}
    if any(p.raw in gone for p in add):
        raise UsageError("a recipient cannot be both added and removed")
    replace = bool(remove) or drop_passphrase or new_passphrase is not None
    with open_capsule(path, "a", timeout=timeout, identity=identity, passphrase=passphrase) as cap:
        h = cap._h
        if h.crypt is None or h.keyslots is None:
            raise UsageError(f"{path}: is not encrypted (create an encrypted capsule with --encrypt)")
        old = h.keyslots
        if drop_passphrase and not old.has_passphrase:
            raise UsageError("no passphrase opens this capsule: there is none to drop")
        if not replace:
            if out is not None or key is not None:
                raise UsageError("adding a recipient appends a key slot to the file itself: -o and --key belong to a "
                                 "rewrite (--remove-recipient, or setting or dropping the passphrase)")
            have = set(old.recipients)
            new = [p for p in add if p.raw not in have]
            if not new:
                raise UsageError("every recipient given can open this capsule already")
            repro = source_date_epoch() is not None
            slots: list[Slot] = list(old.slots)
            fk, fid = h.crypt.file_key, h.crypt.file_id
            added = [recipient_slot(p, fk, fid, reproducible=repro) for p in new]
            xs = sorted([s for s in slots if s.type == "x25519"] + added, key=lambda s: s.recipient)
            ks = KeySlots(old.key_id, tuple(xs + [s for s in slots if s.type == "scrypt"]),
                          cap._snap.commit.keyslots if cap._snap.commit else None)
            cap._write_commit([], extra=[(C.FT_KEYSLOT, ks.encode())])
            h.keyslots = ks
            # 7.7.1, 10.3: the new key opens every frame, the bytes of records redacted and not yet
            # purged too (reads withhold them; a compaction removes them): said, so one compacts first
            from ..questions._lifecycle import kind_of, redacted

            held = sum(kind_of(cap._store, rid) is not None for rid in redacted(cap._store))
            return {**_report(str(path), "appended", ks.recipients, ks.has_passphrase), "redacted_unpurged": held}
        recipients = sorted({*(r for r in old.recipients if r not in gone), *(p.raw for p in add)})
        keeps_passphrase = new_passphrase is not None or (old.has_passphrase and not drop_passphrase)
    rep = compact(path, out, "history", key, timeout=timeout, identity=identity, passphrase=passphrase,
                  rekey=Rekey(tuple(add), tuple(remove), new_passphrase, drop_passphrase))
    return {**_report(rep["out"], "compacted", recipients, keeps_passphrase), "compaction": rep}


def _report(path: str, how: str, recipients: Sequence[bytes], passphrase: bool) -> dict[str, Any]:
    return {"path": path, "how": how, "recipients": [PublicKey(r).key_id for r in recipients],
            "passphrase": passphrase}


__all__ = ["rekey"]
